//! `--since`, `--from`, `--to` → the query's time window. A time is RFC 3339
//! (`2026-11-22T03:00:00Z`) or a duration ago (`2h`, `30m`, `7d`).

use jiff::{SignedDuration, Timestamp};

/// When neither `--since` nor `--from` is given: the last hour.
pub const DEFAULT_SINCE: &str = "1h";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub since: Timestamp,
    pub until: Timestamp,
}

fn ago(now: Timestamp, s: &str) -> Option<Timestamp> {
    let d = crate::journal::parse_age(s).ok()?;
    now.checked_sub(SignedDuration::try_from(d).ok()?).ok()
}

fn instant(flag: &str, s: &str, now: Timestamp) -> Result<Timestamp, String> {
    s.parse::<Timestamp>().ok().or_else(|| ago(now, s)).ok_or_else(|| {
        format!(
            "{flag} {s:?}: not a time; use RFC 3339 like 2026-11-22T03:00:00Z or a duration ago like 2h"
        )
    })
}

/// The window the flags describe, at `now`. Errors are one line naming the flag.
pub fn resolve(
    since: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    now: Timestamp,
) -> Result<Window, String> {
    let until = match to {
        Some(t) => instant("--to", t, now)?,
        None => now,
    };
    let start = match (since, from) {
        (Some(_), Some(_)) => return Err("--since and --from both set: give one".to_owned()),
        (Some(s), None) => ago(now, s)
            .ok_or_else(|| format!("--since {s:?}: not a duration; use e.g. 90s, 30m, 2h or 7d"))?,
        (None, Some(f)) => instant("--from", f, now)?,
        (None, None) => ago(now, DEFAULT_SINCE).unwrap_or(now),
    };
    if start >= until {
        return Err(format!(
            "the window is empty: it starts at {start} and ends at {until}; check --since/--from and --to"
        ));
    }
    Ok(Window {
        since: start,
        until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-22T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn durations_count_back_from_now_and_times_are_rfc3339() {
        let w = resolve(Some("2h"), None, None, now()).unwrap();
        assert_eq!(w.since, "2026-11-22T10:00:00Z".parse().unwrap());
        assert_eq!(w.until, now());
        let w = resolve(None, Some("2026-11-21T23:00:00Z"), Some("1h"), now()).unwrap();
        assert_eq!(w.since, "2026-11-21T23:00:00Z".parse().unwrap());
        assert_eq!(w.until, "2026-11-22T11:00:00Z".parse().unwrap());
        let w = resolve(None, Some("7d"), None, now()).unwrap();
        assert_eq!(w.since, "2026-11-15T12:00:00Z".parse().unwrap());
        assert_eq!(
            resolve(None, None, None, now()).unwrap().since,
            "2026-11-22T11:00:00Z".parse().unwrap()
        );
    }

    #[test]
    fn bad_times_name_the_flag_and_the_fix() {
        let err = resolve(None, Some("yesterday"), None, now()).unwrap_err();
        assert_eq!(
            err,
            "--from \"yesterday\": not a time; use RFC 3339 like 2026-11-22T03:00:00Z or a duration ago like 2h"
        );
        let err = resolve(Some("2 fortnights"), None, None, now()).unwrap_err();
        assert!(
            err.starts_with("--since \"2 fortnights\": not a duration"),
            "{err}"
        );
        let err = resolve(None, Some("1h"), Some("2h"), now()).unwrap_err();
        assert!(err.starts_with("the window is empty"), "{err}");
        assert!(!err.contains('\n'));
    }
}
