//! The shared time axis of a rollout's chart: from the first mark to the last, in milliseconds
//! from the first deletion (or the first thing seen when no deletion was).

use jiff::Timestamp;

use crate::correlate::{Rollout, time::WallNs};

#[derive(Clone, Copy, Debug)]
pub(crate) struct Axis {
    pub origin: WallNs,
    /// Milliseconds shown left of zero (before the first deletion).
    pub from_ms: f64,
    pub to_ms: f64,
}

/// Every instant a rollout's chart shows.
pub(crate) fn instants(r: &Rollout) -> Vec<Timestamp> {
    let mut out = Vec::new();
    for p in &r.pods {
        out.extend(p.marks.iter().map(|m| m.time));
        for d in &p.dataplane {
            out.extend(d.removed.iter().chain(&d.last_flow).map(|m| m.time));
        }
        out.extend(p.error_marks.iter().map(|e| e.time));
    }
    for s in &r.startup {
        out.extend(s.marks.iter().map(|m| m.time));
        out.extend(s.error_marks.iter().map(|e| e.time));
    }
    out
}

impl Axis {
    pub fn of(r: &Rollout) -> Self {
        let all = instants(r);
        let first = all.iter().min().copied().unwrap_or(r.start);
        let last = all.iter().max().copied().unwrap_or(r.end);
        let origin = r
            .pods
            .iter()
            .filter_map(|p| p.marks.delete.as_ref().map(|m| m.time))
            .min()
            .unwrap_or(first);
        let origin = WallNs::from_timestamp(origin);
        let from_ms = Self::ms_from(origin, first).min(0.0);
        let mut to_ms = Self::ms_from(origin, last).max(from_ms + 1.0);
        // A little room right of the last mark so it is not on the frame.
        to_ms += (to_ms - from_ms) * 0.03;
        Self {
            origin,
            from_ms,
            to_ms,
        }
    }

    fn ms_from(origin: WallNs, t: Timestamp) -> f64 {
        (WallNs::from_timestamp(t) - origin) as f64 / 1e6
    }

    pub fn ms(&self, t: Timestamp) -> f64 {
        Self::ms_from(self.origin, t)
    }

    /// Position of `t` in `[0, 1]`.
    pub fn fraction(&self, t: Timestamp) -> f64 {
        ((self.ms(t) - self.from_ms) / (self.to_ms - self.from_ms)).clamp(0.0, 1.0)
    }

    /// Column of `t` on a `width`-column axis.
    pub fn column(&self, t: Timestamp, width: usize) -> usize {
        ((self.fraction(t) * (width.saturating_sub(1)) as f64).round() as usize)
            .min(width.saturating_sub(1))
    }

    /// The unit tick labels are written in, for about `n` ticks: milliseconds up to steps of
    /// a minute, then minutes, hours, days (a span of years stays a few short labels).
    pub fn tick_unit(&self, n: usize) -> TickUnit {
        let raw = (self.to_ms - self.from_ms) / n.max(1) as f64;
        UNITS.into_iter().find(|(_, ms)| raw >= *ms).map_or(
            TickUnit {
                name: "ms",
                ms: 1.0,
            },
            |(name, ms)| TickUnit { name, ms },
        )
    }

    /// Round tick spacing (1, 2 or 5 times a power of ten of the tick unit) giving about `n`
    /// ticks, in ms.
    pub fn tick_ms(&self, n: usize) -> f64 {
        let unit = self.tick_unit(n).ms;
        let raw = (self.to_ms - self.from_ms) / n.max(1) as f64 / unit;
        let pow = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * pow)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * pow);
        step * unit
    }

    /// Tick positions in ms from the origin.
    pub fn ticks(&self, n: usize) -> Vec<f64> {
        let step = self.tick_ms(n);
        let mut t = (self.from_ms / step).ceil() * step;
        let mut out = Vec::new();
        while t <= self.to_ms {
            // `-0` is still zero.
            out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
            t += step;
        }
        out
    }

    pub fn fraction_of_ms(&self, ms: f64) -> f64 {
        ((ms - self.from_ms) / (self.to_ms - self.from_ms)).clamp(0.0, 1.0)
    }
}

/// What tick labels count in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct TickUnit {
    pub name: &'static str,
    pub ms: f64,
}

/// Units above the millisecond, largest first.
const UNITS: [(&str, f64); 3] = [("d", 86_400_000.0), ("h", 3_600_000.0), ("min", 60_000.0)];

impl TickUnit {
    /// `ms` in this unit, without the unit's name.
    pub fn label(&self, ms: f64) -> String {
        format!("{:.0}", ms / self.ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(to_ms: f64) -> Axis {
        Axis {
            origin: WallNs(0),
            from_ms: 0.0,
            to_ms,
        }
    }

    #[test]
    fn a_span_of_seconds_is_labelled_in_ms_and_one_of_years_in_days() {
        let short = axis(2_000.0);
        assert_eq!(short.tick_unit(6).name, "ms");
        assert_eq!(short.tick_ms(6), 500.0);
        // 9 223 372 036 855 ms (what a year-9999 time once made) → a few labels in days.
        let long = axis(9_223_372_036_855.0);
        let unit = long.tick_unit(6);
        assert_eq!(unit.name, "d");
        let labels: Vec<String> = long.ticks(6).iter().map(|t| unit.label(*t)).collect();
        assert!(labels.len() <= 7, "{labels:?}");
        assert!(labels.iter().all(|l| l.len() <= 6), "{labels:?}");
        assert_eq!(axis(3.0 * 3_600_000.0).tick_unit(6).name, "min");
    }
}
