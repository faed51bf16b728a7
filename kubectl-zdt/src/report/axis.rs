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

    /// Round tick spacing giving about `n` ticks.
    pub fn tick_ms(&self, n: usize) -> f64 {
        let raw = (self.to_ms - self.from_ms) / n.max(1) as f64;
        let pow = 10f64.powf(raw.log10().floor());
        [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * pow)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * pow)
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
