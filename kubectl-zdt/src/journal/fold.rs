//! Counters folded at a bounded rate: a storm of refused connections must not become a flood of
//! lines. Errors and new-flow counts of one key — (kind, pod, ip, port, reason, service) — are
//! folded into at most one line per interval, with `count` summed, so totals stay exact:
//!
//! - error kinds keep the first event's `time` and add `last_time` (the last event's);
//! - `flow_new` keeps its own meaning: `time` is the last flow, `first_time` the first;
//! - `peer_ip` / `peer_port` stay only when every folded event had the same one.
//!
//! A termination mark of a pod (or of its address) closes that pod's open folds first, so no
//! folded line spans a listener close, an exit or a dataplane removal seen on this node.

use std::{collections::HashMap, net::IpAddr};

use jiff::Timestamp;

use crate::observation::{Kind, Observation, format_time};

/// The kinds folded: per-connection counters. Everything else is a mark, stored verbatim.
pub fn is_counter(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Refused | Kind::Reset | Kind::ConnError | Kind::SynRetransmit | Kind::FlowNew
    )
}

/// Marks that bound an error's cause: folds of the same pod or address are closed before them.
fn closes_folds(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::ListenerClosed
            | Kind::Signal
            | Kind::Exec
            | Kind::Exit
            | Kind::NetnsGone
            | Kind::DataplaneRemoved
            | Kind::PodDeleting
            | Kind::EndpointTerminating
            | Kind::EndpointRemoved
            | Kind::ContainerTerminated
    )
}

/// Open folds beyond this many are all closed at once (a scan over many ports must not grow
/// memory without bound).
const MAX_OPEN: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    kind: Kind,
    pod: Option<String>,
    ip: Option<IpAddr>,
    port: Option<u16>,
    reason: Option<String>,
    service: Option<String>,
}

impl Key {
    fn of(o: &Observation) -> Self {
        Self {
            kind: o.kind,
            pod: o.pod.clone(),
            ip: o.ip,
            port: o.port,
            reason: o.reason.clone(),
            service: o.service.clone(),
        }
    }
}

struct Fold {
    first: Observation,
    count: u64,
    events: u64,
    /// Earliest and latest event time (for `flow_new`, of its `first_time` and `time`).
    min: Timestamp,
    max: Timestamp,
    peer_ip: Option<IpAddr>,
    peer_port: Option<u16>,
    /// Opened at (the first event's time): closed once the interval has passed.
    opened: Timestamp,
}

fn flow_first(o: &Observation) -> Timestamp {
    o.extra
        .get("first_time")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or(o.time)
        .min(o.time)
}

impl Fold {
    fn new(o: Observation) -> Self {
        let min = if o.kind == Kind::FlowNew {
            flow_first(&o)
        } else {
            o.time
        };
        Self {
            count: o.weight(),
            events: 1,
            min,
            max: o.time,
            peer_ip: o.peer_ip,
            peer_port: o.peer_port,
            opened: o.time,
            first: o,
        }
    }

    fn add(&mut self, o: &Observation) {
        self.count += o.weight();
        self.events += 1;
        let lo = if o.kind == Kind::FlowNew {
            flow_first(o)
        } else {
            o.time
        };
        self.min = self.min.min(lo);
        self.max = self.max.max(o.time);
        if self.peer_ip != o.peer_ip {
            self.peer_ip = None;
        }
        if self.peer_port != o.peer_port {
            self.peer_port = None;
        }
    }

    fn finish(self) -> Observation {
        if self.events == 1 {
            return self.first;
        }
        let mut o = self.first;
        o.count = Some(self.count);
        o.peer_ip = self.peer_ip;
        o.peer_port = self.peer_port;
        if o.kind == Kind::FlowNew {
            o.time = self.max;
            o.extra
                .insert("first_time".to_owned(), format_time(self.min).into());
        } else {
            o.time = self.min;
            o.extra
                .insert("last_time".to_owned(), format_time(self.max).into());
        }
        o
    }
}

/// The open folds.
pub struct Folder {
    interval_ns: i128,
    open: HashMap<Key, Fold>,
}

impl Folder {
    pub fn new(interval: std::time::Duration) -> Self {
        Self {
            interval_ns: interval.as_nanos() as i128,
            open: HashMap::new(),
        }
    }

    fn due(&self, f: &Fold, now: Timestamp) -> bool {
        now.as_nanosecond() - f.opened.as_nanosecond() >= self.interval_ns
    }

    /// Takes a counter observation; returns the folds it closed (at most one: its key's, when
    /// its interval is over).
    pub fn add(&mut self, o: Observation, out: &mut Vec<Observation>) {
        // Lines the agent already aggregated after a ring-buffer overflow carry their own
        // interval (`lost_since`): they are rare and stay as they are.
        if o.extra.contains_key("lost_since") {
            out.push(o);
            return;
        }
        let key = Key::of(&o);
        match self.open.get_mut(&key) {
            Some(f) if o.time.as_nanosecond() - f.opened.as_nanosecond() < self.interval_ns => {
                f.add(&o);
            }
            Some(_) => {
                let closed = self.open.insert(key, Fold::new(o));
                out.extend(closed.map(Fold::finish));
            }
            None => {
                if self.open.len() >= MAX_OPEN {
                    self.drain(out);
                }
                self.open.insert(key, Fold::new(o));
            }
        }
    }

    /// Before a termination mark is stored: closes the folds of the same pod or address.
    pub fn before_mark(&mut self, mark: &Observation, out: &mut Vec<Observation>) {
        if !closes_folds(mark.kind) || (mark.pod.is_none() && mark.ip.is_none()) {
            return;
        }
        let touched = |k: &Key| {
            (mark.pod.is_some() && k.pod == mark.pod) || (mark.ip.is_some() && k.ip == mark.ip)
        };
        let keys: Vec<Key> = self.open.keys().filter(|k| touched(k)).cloned().collect();
        for k in keys {
            if let Some(f) = self.open.remove(&k) {
                out.push(f.finish());
            }
        }
    }

    /// Closes every fold whose interval has passed at `now`.
    pub fn close_due(&mut self, now: Timestamp, out: &mut Vec<Observation>) {
        let due: Vec<Key> = self
            .open
            .iter()
            .filter(|(_, f)| self.due(f, now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            if let Some(f) = self.open.remove(&k) {
                out.push(f.finish());
            }
        }
    }

    /// Closes everything (shutdown).
    pub fn drain(&mut self, out: &mut Vec<Observation>) {
        out.extend(self.open.drain().map(|(_, f)| f.finish()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::NodeName;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(1_790_000_000_000 + ms).unwrap()
    }

    fn refused(ms: i64, peer_port: u16) -> Observation {
        let mut o = Observation::new(Kind::Refused, at(ms), NodeName("n".into()));
        o.ip = Some("10.244.0.5".parse().unwrap());
        o.port = Some(8080);
        o.reason = Some("NO_SOCKET".into());
        o.peer_ip = Some("10.244.1.1".parse().unwrap());
        o.peer_port = Some(peer_port);
        o
    }

    #[test]
    fn a_storm_becomes_one_line_per_second_with_the_exact_total() {
        let mut f = Folder::new(std::time::Duration::from_secs(1));
        let mut out = Vec::new();
        // 5 000 refusals over 2.5 s, one every 0.5 ms.
        for i in 0..5_000 {
            f.add(refused(i / 2, 40_000 + (i % 100) as u16), &mut out);
        }
        f.drain(&mut out);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out.iter().map(Observation::weight).sum::<u64>(), 5_000);
        assert_eq!(out[0].time, at(0));
        assert_eq!(out[0].extra["last_time"], format_time(at(999)));
        assert_eq!(out[0].peer_port, None, "mixed peer ports are not kept");
        assert_eq!(out[0].peer_ip, Some("10.244.1.1".parse().unwrap()));
    }

    #[test]
    fn a_single_event_is_stored_as_it_came() {
        let mut f = Folder::new(std::time::Duration::from_secs(1));
        let mut out = Vec::new();
        f.add(refused(0, 1), &mut out);
        f.close_due(at(999), &mut out);
        assert!(out.is_empty(), "still open before its interval ends");
        f.close_due(at(1_000), &mut out);
        assert_eq!(out, [refused(0, 1)]);
    }

    #[test]
    fn the_listener_closing_splits_the_fold_so_no_line_spans_it() {
        let mut f = Folder::new(std::time::Duration::from_secs(1));
        let mut out = Vec::new();
        f.add(refused(0, 1), &mut out);
        f.add(refused(10, 2), &mut out);
        let mut close = Observation::new(Kind::ListenerClosed, at(20), NodeName("n".into()));
        close.ip = Some("10.244.0.5".parse().unwrap());
        f.before_mark(&close, &mut out);
        f.add(refused(30, 3), &mut out);
        f.drain(&mut out);
        let weights: Vec<u64> = out.iter().map(Observation::weight).collect();
        assert_eq!(weights, [2, 1]);
        assert_eq!(out[1].time, at(30));
    }

    #[test]
    fn flow_lines_keep_last_time_and_the_earliest_first_time() {
        let mut f = Folder::new(std::time::Duration::from_secs(1));
        let mut out = Vec::new();
        for (first, last, n) in [(0, 100, 3), (200, 400, 2)] {
            let mut o = Observation::new(Kind::FlowNew, at(last), NodeName("n".into()));
            o.ip = Some("10.244.0.5".parse().unwrap());
            o.count = Some(n);
            o = o.with_extra("first_time", format_time(at(first)));
            f.add(o, &mut out);
        }
        f.drain(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].time, out[0].count), (at(400), Some(5)));
        assert_eq!(out[0].extra["first_time"], format_time(at(0)));
    }
}
