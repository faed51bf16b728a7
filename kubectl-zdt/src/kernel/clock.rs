//! Monotonic → wall-clock conversion.
//!
//! `bpf_ktime_get_ns` is CLOCK_MONOTONIC of this node. The offset to CLOCK_REALTIME is measured
//! by reading REALTIME between two MONOTONIC reads; half the bracket width is the uncertainty.
//! The offset drifts when NTP slews the clock, so it is re-measured periodically. Monotonic times
//! of two nodes are never compared: each node's observations carry wall time and uncertainty.

use jiff::Timestamp;
use nix::time::{ClockId, clock_gettime};

/// A measured offset between CLOCK_MONOTONIC and CLOCK_REALTIME.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// realtime_ns − monotonic_ns.
    pub offset_ns: i128,
    /// Half-width of the measurement bracket.
    pub uncertainty_ns: u64,
}

fn now_ns(id: ClockId) -> i128 {
    // clock_gettime on MONOTONIC/REALTIME cannot fail on Linux.
    let ts = clock_gettime(id).unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
    i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec())
}

impl Clock {
    /// Measures the offset, keeping the tightest of a few brackets.
    pub fn measure() -> Self {
        let mut best = Clock {
            offset_ns: 0,
            uncertainty_ns: u64::MAX,
        };
        for _ in 0..16 {
            let m1 = now_ns(ClockId::CLOCK_MONOTONIC);
            let r = now_ns(ClockId::CLOCK_REALTIME);
            let m2 = now_ns(ClockId::CLOCK_MONOTONIC);
            let half = u64::try_from((m2 - m1) / 2).unwrap_or(u64::MAX);
            if half < best.uncertainty_ns {
                best = Clock {
                    offset_ns: r - (m1 + m2) / 2,
                    uncertainty_ns: half.max(1),
                };
            }
        }
        best
    }

    /// Wall time of a monotonic kernel timestamp.
    pub fn to_wall(&self, mono_ns: u64) -> Timestamp {
        let ns = i128::from(mono_ns) + self.offset_ns;
        Timestamp::from_nanosecond(ns).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    /// The current monotonic time, as `bpf_ktime_get_ns` would read it.
    pub fn monotonic_now_ns() -> u64 {
        u64::try_from(now_ns(ClockId::CLOCK_MONOTONIC)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converted_now_is_close_to_the_wall_clock() {
        let clock = Clock::measure();
        let wall = clock.to_wall(Clock::monotonic_now_ns());
        let diff = crate::observation::millis_between(Timestamp::now(), wall).abs();
        assert!(diff < 50.0, "conversion off by {diff} ms");
        assert!(clock.uncertainty_ns < 1_000_000, "{clock:?}");
    }
}
