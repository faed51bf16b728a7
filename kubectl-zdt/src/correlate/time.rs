//! Wall-clock instants as integer nanoseconds, so the core does exact arithmetic and ordering.
//!
//! Every time in an observation is already wall time (the agent converted its node's
//! `bpf_ktime_get_ns` with a measured offset); two nodes' times are comparable only up to both
//! nodes' uncertainty, which the marks carry next to the instant.

use std::ops::Sub;

use jiff::Timestamp;

/// Nanoseconds since the Unix epoch (fits `i64` until 2262).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallNs(pub i64);

impl WallNs {
    pub fn from_timestamp(t: Timestamp) -> Self {
        // Observations are RFC 3339 times of this century: always within i64 nanoseconds.
        Self(i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX))
    }

    pub fn to_timestamp(self) -> Timestamp {
        Timestamp::from_nanosecond(i128::from(self.0)).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    pub fn plus_ns(self, ns: i64) -> Self {
        Self(self.0.saturating_add(ns))
    }
}

impl Sub for WallNs {
    /// Signed difference in nanoseconds.
    type Output = i64;

    fn sub(self, rhs: Self) -> i64 {
        self.0.saturating_sub(rhs.0)
    }
}

/// Nanoseconds as milliseconds for reports (3 decimals survive JSON round trips unchanged).
pub fn ms(ns: i64) -> f64 {
    (ns as f64 / 1_000.0).round() / 1_000.0
}

/// Unsigned nanoseconds (uncertainties) as milliseconds.
pub fn ms_u(ns: u64) -> f64 {
    ms(i64::try_from(ns).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_survives_the_round_trip_to_nanoseconds() {
        let t: Timestamp = "2026-11-22T01:16:45.660197146Z".parse().unwrap();
        assert_eq!(WallNs::from_timestamp(t).to_timestamp(), t);
    }

    #[test]
    fn milliseconds_keep_microsecond_precision() {
        assert_eq!(ms(622_123_456), 622.123);
        assert_eq!(ms(-1_500_000), -1.5);
    }
}
