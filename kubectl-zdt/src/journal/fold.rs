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

use crate::observation::{Kind, Observation, PodRef, ServiceRef, Time};

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

/// Hash of the fold key (kind, pod, ip, port, reason, service), so an event finds its fold
/// without building an owned key: the agent folds at the rate of a storm.
fn key_hash(o: &Observation) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (o.kind, &o.pod, o.ip, o.port, &o.reason, &o.service).hash(&mut h);
    h.finish()
}

/// The fold key, owned.
struct Key {
    kind: Kind,
    pod: Option<PodRef>,
    ip: Option<IpAddr>,
    port: Option<u16>,
    reason: Option<String>,
    service: Option<ServiceRef>,
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

    fn matches(&self, o: &Observation) -> bool {
        self.kind == o.kind
            && self.ip == o.ip
            && self.port == o.port
            && self.pod == o.pod
            && self.reason == o.reason
            && self.service == o.service
    }
}

/// A closed fold: the line to store (JSON) and its time.
#[derive(Debug)]
pub struct Closed {
    pub time: Timestamp,
    pub line: String,
}

struct Fold {
    key: Key,
    /// The first event's JSON: what is stored when nothing else folds in (most keys of a quiet
    /// second), so a single event is never copied into a second observation.
    line: String,
    /// The first event, parsed back from `line` once a second event folds in.
    first: Option<Observation>,
    count: u64,
    events: u64,
    /// Earliest and latest event time (for `flow_new`, of its `first_time` and `time`).
    min: Timestamp,
    max: Timestamp,
    /// The earliest `first_time` of folded `flow_new` lines.
    min_first: Option<Time>,
    peer_ip: Option<IpAddr>,
    peer_port: Option<u16>,
    /// Opened at (the first event's time): closed once the interval has passed.
    opened: Timestamp,
}

fn first_time(o: &Observation) -> Option<Time> {
    o.details.dataplane().first_time
}

impl Fold {
    fn new(o: &Observation, line: String) -> Self {
        Self {
            key: Key::of(o),
            line,
            first: None,
            count: o.weight(),
            events: 1,
            min: o.time,
            max: o.time,
            min_first: first_time(o),
            peer_ip: o.peer_ip,
            peer_port: o.peer_port,
            opened: o.time,
        }
    }

    fn add(&mut self, o: &Observation) {
        if self.first.is_none() {
            self.first = serde_json::from_str(&self.line).ok();
        }
        self.count += o.weight();
        self.events += 1;
        self.min = self.min.min(o.time);
        self.max = self.max.max(o.time);
        if let Some(f) = first_time(o)
            && self.min_first.is_none_or(|m| f < m)
        {
            self.min_first = Some(f);
        }
        if self.peer_ip != o.peer_ip {
            self.peer_ip = None;
        }
        if self.peer_port != o.peer_port {
            self.peer_port = None;
        }
    }

    fn finish(self) -> Closed {
        let Some(mut o) = self.first.filter(|_| self.events > 1) else {
            return Closed {
                time: self.opened,
                line: self.line,
            };
        };
        o.count = Some(self.count);
        o.peer_ip = self.peer_ip;
        o.peer_port = self.peer_port;
        if o.kind == Kind::FlowNew {
            o.time = self.max;
            let first = self.min_first.unwrap_or(Time(self.min)).min(Time(self.min));
            o.details.dataplane_mut().first_time = Some(first);
        } else {
            o.time = self.min;
            o.details.kernel_mut().last_time = Some(Time(self.max));
        }
        Closed {
            time: o.time,
            line: o.to_json_line(),
        }
    }
}

/// The open folds, and how many of them each address and pod has (so a mark about a pod
/// without open folds costs one lookup).
pub struct Folder {
    interval_ns: i128,
    open: HashMap<u64, Vec<Fold>>,
    len: usize,
    ips: HashMap<IpAddr, u32>,
    pods: HashMap<PodRef, u32>,
}

impl Folder {
    pub fn new(interval: std::time::Duration) -> Self {
        Self {
            interval_ns: interval.as_nanos() as i128,
            open: HashMap::new(),
            len: 0,
            ips: HashMap::new(),
            pods: HashMap::new(),
        }
    }

    fn track(&mut self, o: &Observation) {
        self.len += 1;
        if let Some(ip) = o.ip {
            *self.ips.entry(ip).or_default() += 1;
        }
        if let Some(p) = &o.pod {
            *self.pods.entry(p.clone()).or_default() += 1;
        }
    }

    fn close(&mut self, f: Fold, out: &mut Vec<Closed>) {
        self.len -= 1;
        if let Some(ip) = f.key.ip
            && let Some(n) = self.ips.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.ips.remove(&ip);
            }
        }
        if let Some(p) = &f.key.pod
            && let Some(n) = self.pods.get_mut(p)
        {
            *n -= 1;
            if *n == 0 {
                self.pods.remove(p);
            }
        }
        out.push(f.finish());
    }

    /// Takes a counter observation (`line`: its JSON, when the caller already made it); emits
    /// the fold it closed (its key's, when its interval is over). Events folded into an open
    /// fold are never serialized.
    pub fn add(&mut self, o: &Observation, line: Option<&str>, out: &mut Vec<Closed>) {
        let json = || line.map_or_else(|| o.to_json_line(), str::to_owned);
        // Lines the agent already aggregated after a ring-buffer overflow carry their own
        // interval (`lost_since`): they are rare and stay as they are.
        if o.details.kernel().lost_since.is_some() {
            out.push(Closed {
                time: o.time,
                line: json(),
            });
            return;
        }
        let h = key_hash(o);
        let interval = self.interval_ns;
        let bucket = self.open.entry(h).or_default();
        if let Some(i) = bucket.iter().position(|f| f.key.matches(o)) {
            if o.time.as_nanosecond() - bucket[i].opened.as_nanosecond() < interval {
                bucket[i].add(o);
                return;
            }
            let closed = std::mem::replace(&mut bucket[i], Fold::new(o, json()));
            // The new fold has the same key: the per-address and per-pod counts stay.
            out.push(closed.finish());
            return;
        }
        bucket.push(Fold::new(o, json()));
        self.track(o);
        if self.len > MAX_OPEN {
            self.drain(out);
        }
    }

    fn close_where(&mut self, out: &mut Vec<Closed>, pred: impl Fn(&Fold) -> bool) {
        let mut closed = Vec::new();
        self.open.retain(|_, bucket| {
            let mut i = 0;
            while i < bucket.len() {
                if pred(&bucket[i]) {
                    closed.push(bucket.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            !bucket.is_empty()
        });
        for f in closed {
            self.close(f, out);
        }
    }

    /// Before a termination mark is stored: closes the folds of the same pod or address.
    pub fn before_mark(&mut self, mark: &Observation, out: &mut Vec<Closed>) {
        if !closes_folds(mark.kind) {
            return;
        }
        let by_ip = mark.ip.is_some_and(|ip| self.ips.contains_key(&ip));
        let by_pod = mark.pod.as_ref().is_some_and(|p| self.pods.contains_key(p));
        if !by_ip && !by_pod {
            return;
        }
        self.close_where(out, |f| {
            (by_pod && f.key.pod == mark.pod) || (by_ip && f.key.ip == mark.ip)
        });
    }

    /// Closes every fold whose interval has passed at `now`.
    pub fn close_due(&mut self, now: Timestamp, out: &mut Vec<Closed>) {
        let (interval, now) = (self.interval_ns, now.as_nanosecond());
        self.close_where(out, |f| now - f.opened.as_nanosecond() >= interval);
    }

    /// Closes everything (shutdown).
    pub fn drain(&mut self, out: &mut Vec<Closed>) {
        self.close_where(out, |_| true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::NodeName;

    impl Folder {
        fn add_obs(&mut self, o: &Observation, out: &mut Vec<Closed>) {
            self.add(o, None, out);
        }
    }

    fn lines(out: Vec<Closed>) -> Vec<Observation> {
        out.into_iter()
            .map(|c| {
                let o: Observation = serde_json::from_str(&c.line).unwrap();
                assert_eq!(o.time, c.time);
                o
            })
            .collect()
    }

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
            f.add_obs(&refused(i / 2, 40_000 + (i % 100) as u16), &mut out);
        }
        f.drain(&mut out);
        let out = lines(out);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out.iter().map(Observation::weight).sum::<u64>(), 5_000);
        assert_eq!(out[0].time, at(0));
        assert_eq!(out[0].details.kernel().last_time, Some(Time(at(999))));
        assert_eq!(out[0].peer_port, None, "mixed peer ports are not kept");
        assert_eq!(out[0].peer_ip, Some("10.244.1.1".parse().unwrap()));
    }

    #[test]
    fn a_single_event_is_stored_as_it_came() {
        let mut f = Folder::new(std::time::Duration::from_secs(1));
        let mut out = Vec::new();
        f.add_obs(&refused(0, 1), &mut out);
        f.close_due(at(999), &mut out);
        assert!(out.is_empty(), "still open before its interval ends");
        f.close_due(at(1_000), &mut out);
        assert_eq!(lines(out), [refused(0, 1)]);
    }

    #[test]
    fn the_listener_closing_splits_the_fold_so_no_line_spans_it() {
        let mut f = Folder::new(std::time::Duration::from_secs(1));
        let mut out = Vec::new();
        f.add_obs(&refused(0, 1), &mut out);
        f.add_obs(&refused(10, 2), &mut out);
        let mut close = Observation::new(Kind::ListenerClosed, at(20), NodeName("n".into()));
        close.ip = Some("10.244.0.5".parse().unwrap());
        f.before_mark(&close, &mut out);
        f.add_obs(&refused(30, 3), &mut out);
        f.drain(&mut out);
        let out = lines(out);
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
            o.details.dataplane_mut().first_time = Some(Time(at(first)));
            f.add_obs(&o, &mut out);
        }
        f.drain(&mut out);
        let out = lines(out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].time, out[0].count), (at(400), Some(5)));
        assert_eq!(out[0].details.dataplane().first_time, Some(Time(at(0))));
    }
}
