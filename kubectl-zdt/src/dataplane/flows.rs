//! The dataplane-agnostic truth: the last new connection this node routed to each backend,
//! from conntrack NEW events (netlink group NFNLGRP_CONNTRACK_NEW, what `conntrack -E -e NEW`
//! shows).
//!
//! A connection kube-proxy DNAT'ed has a reply tuple whose source is the backend (the pod
//! answers) while the original tuple's destination is the Service frontend. Flows are kept only
//! when they were DNAT'ed to a backend some dataplane of this node routes to, then aggregated per
//! (frontend, backend) and emitted at most once per `every`: one `flow_new` line with `count`,
//! the last flow's time, and `first_time`.

use std::{
    collections::{BTreeMap, HashSet},
    io,
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use jiff::Timestamp;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{
    NetfilterMessage, NetfilterMessageInner,
    conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple},
};
use netlink_sys::Socket;

use super::{
    model::{Backend, Protocol, ServiceAddr},
    nfnetlink,
    watcher::{Sink, Watched},
};
use crate::observation::{Kind, NodeName, Observation};

/// NFNLGRP_CONNTRACK_NEW (include/uapi/linux/netfilter/nfnetlink.h).
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
/// Distinct (frontend, backend) pairs kept between flushes; beyond this, new pairs are dropped
/// (a node routing to more than this many backends in one interval is far past any cluster's
/// size).
const MAX_PENDING: usize = 200_000;

/// One new connection as conntrack saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub protocol: Protocol,
    /// Original direction source: the client.
    pub client: SocketAddr,
    /// Original direction: where the client sent it (the Service frontend).
    pub frontend: SocketAddr,
    /// Reply direction source: who answers (the backend, after DNAT).
    pub backend: SocketAddr,
}

impl Flow {
    /// Was the connection's destination rewritten (DNAT), i.e. routed by a Service?
    pub fn dnatted(&self) -> bool {
        self.frontend != self.backend
    }
}

/// Decodes the flows in one datagram of conntrack events; anything else is skipped.
pub fn decode(datagram: &[u8]) -> Vec<Flow> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let Ok(msg) =
            super::guarded::decode(|| NetlinkMessage::<NetfilterMessage>::deserialize(rest))
        else {
            break;
        };
        let len = (msg.header.length as usize + 3) & !3;
        if let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
            ..
        }) = &msg.payload
        {
            out.extend(flow_of(attrs));
        }
        if len == 0 || len > rest.len() {
            break;
        }
        rest = &rest[len..];
    }
    out
}

fn flow_of(attrs: &[ConntrackAttribute]) -> Option<Flow> {
    let mut orig = None;
    let mut reply = None;
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = endpoints(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = endpoints(t),
            _ => {}
        }
    }
    let (proto, src, dst) = orig?;
    let (_, reply_src, _) = reply?;
    Some(Flow {
        protocol: Protocol::from_number(proto)?,
        client: src,
        frontend: dst,
        backend: reply_src,
    })
}

/// (protocol number, source, destination) of one tuple.
fn endpoints(tuple: &[Tuple]) -> Option<(u16, SocketAddr, SocketAddr)> {
    let (mut sip, mut dip, mut sport, mut dport, mut proto) = (None, None, None, None, None);
    for part in tuple {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => sip = Some(*a),
                        IPTuple::DestinationAddress(a) => dip = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(u16::from(u8::from(*n))),
                        ProtoTuple::SourcePort(n) => sport = Some(*n),
                        ProtoTuple::DestinationPort(n) => dport = Some(*n),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let (sip, dip): (IpAddr, IpAddr) = (sip?, dip?);
    Some((
        proto?,
        SocketAddr::new(sip, sport?),
        SocketAddr::new(dip, dport?),
    ))
}

/// New flows per (frontend, backend) since the last flush.
#[derive(Debug, Default)]
pub struct Aggregate {
    pending: BTreeMap<(ServiceAddr, Backend), Seen>,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    protocol: Protocol,
    first: Timestamp,
    last: Timestamp,
    count: u64,
    /// Was the backend watched when a flow was recorded?
    watched: bool,
}

impl Aggregate {
    /// Records a DNAT'ed flow seen at `time`. Whether its backend is watched is decided at
    /// flush: a backend added by a commit receives flows before the watcher's diff of that
    /// commit has published it, and a removed one's last flows are flushed after it left.
    pub fn record(&mut self, flow: Flow, time: Timestamp, watched: &HashSet<Backend>) {
        let backend = Backend(flow.backend);
        if !flow.dnatted() || self.pending.len() >= MAX_PENDING {
            return;
        }
        let seen = self
            .pending
            .entry((ServiceAddr(flow.frontend), backend))
            .or_insert(Seen {
                protocol: flow.protocol,
                first: time,
                last: time,
                count: 0,
                watched: false,
            });
        seen.last = time;
        seen.count += 1;
        seen.watched |= watched.contains(&backend);
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// One `flow_new` per (frontend, backend) seen since the last flush whose backend was
    /// watched then or is now.
    pub fn flush(&mut self, node: &NodeName, watched: &HashSet<Backend>) -> Vec<Observation> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .filter(|((_, backend), seen)| seen.watched || watched.contains(backend))
            .map(|((service, backend), seen)| {
                let mut o = Observation::new(Kind::FlowNew, seen.last, node.clone());
                o.ip = Some(backend.0.ip());
                o.port = Some(backend.0.port());
                o.service = Some(service.0.into());
                o.count = Some(seen.count);
                let d = o.details.dataplane_mut();
                d.first_time = Some(crate::observation::Time(seen.first));
                d.protocol = Some(seen.protocol.as_str().to_owned());
                o
            })
            .collect()
    }
}

/// The backends recent DNAT'ed connections went to, by (client, frontend): a client's error
/// toward a ClusterIP names the pod it really reached. Conntrack itself cannot be asked later:
/// it drops a connection reset before it was assured (a refused one) at once.
///
/// Client ports come back: an entry may be an earlier connection's from the same port, to a
/// pod long gone, while the NEW event of the connection that failed is still on its way to
/// the listener. So each entry keeps when its NEW event was read, and a lookup takes only an
/// entry read since a given time ([`DNAT_FRESH`] before the error).
#[derive(Debug, Default)]
pub struct DnatCache {
    map: std::collections::HashMap<(SocketAddr, SocketAddr), Remembered>,
    /// Keys in the order they were recorded, with the record's number: re-recording a key
    /// queues it again, and only its newest record's turn forgets it.
    order: std::collections::VecDeque<((SocketAddr, SocketAddr), u64)>,
    records: u64,
}

#[derive(Debug, Clone, Copy)]
struct Remembered {
    backend: SocketAddr,
    /// When the connection's NEW event was read.
    seen: Timestamp,
    record: u64,
}

/// Connections remembered; the oldest are forgotten first (a few seconds of a busy node).
const DNAT_CACHE: usize = 65_536;

/// How long before a client's error (or SYN retransmit) the NEW event of its own connection
/// can have been read: a connect given up after the client's connect timeout (1 s for many
/// clients, 3 s for others) or a retransmit a few seconds in. A lookup takes no older entry:
/// an older connection from the same client port may have gone to another pod. Conntrack is
/// asked instead (it still has a connection that was not refused), or the error waits for its
/// own NEW event.
pub const DNAT_FRESH: std::time::Duration = std::time::Duration::from_secs(5);

impl DnatCache {
    /// Remembers a DNAT'ed connection whose NEW event was read at `seen`.
    pub fn record(&mut self, flow: &Flow, seen: Timestamp) {
        if !flow.dnatted() {
            return;
        }
        let key = (flow.client, flow.frontend);
        self.records += 1;
        let record = self.records;
        self.map.insert(
            key,
            Remembered {
                backend: flow.backend,
                seen,
                record,
            },
        );
        self.order.push_back((key, record));
        while self.order.len() > DNAT_CACHE {
            let Some((old, record)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|r| r.record == record) {
                self.map.remove(&old);
            }
        }
    }

    /// The backend of the last connection `client` → `frontend` whose NEW event was read at
    /// or after `since`.
    pub fn backend_seen_since(
        &self,
        client: SocketAddr,
        frontend: SocketAddr,
        since: Timestamp,
    ) -> Option<SocketAddr> {
        self.map
            .get(&(client, frontend))
            .filter(|r| r.seen >= since)
            .map(|r| r.backend)
    }
}

pub type Dnat = std::sync::Arc<std::sync::Mutex<DnatCache>>;

/// Starts the conntrack NEW listener of the calling thread's network namespace.
pub fn spawn(
    node: NodeName,
    watched: Watched,
    dnat: Dnat,
    every: Duration,
    tx: Sink,
) -> io::Result<()> {
    let socket = nfnetlink::subscribe(NFNLGRP_CONNTRACK_NEW)?;
    thread::Builder::new()
        .name("zdt-conntrack".into())
        .spawn(move || run(&socket, &node, &watched, &dnat, every, &tx))?;
    Ok(())
}

fn run(
    socket: &Socket,
    node: &NodeName,
    watched: &Watched,
    dnat: &Dnat,
    every: Duration,
    tx: &Sink,
) {
    let mut buf = vec![0u8; 1 << 16];
    let mut agg = Aggregate::default();
    let mut deadline: Option<Instant> = None;
    loop {
        // Block without a timeout while nothing is pending: no CPU between flows.
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if let Err(e) = nfnetlink::set_receive_timeout(socket, timeout) {
            tracing::error!("conntrack listener stopped: {e}");
            return;
        }
        match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => {
                let time = Timestamp::now();
                let flows = decode(&buf[..n]);
                if let Ok(mut d) = dnat.lock() {
                    for f in &flows {
                        d.record(f, time);
                    }
                }
                if let Ok(w) = watched.read() {
                    for f in flows {
                        agg.record(f, time, &w);
                    }
                }
                if deadline.is_none() && !agg.is_empty() {
                    deadline = Some(Instant::now() + every);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                tracing::warn!(
                    "conntrack events overran the socket buffer: some flows were not seen"
                );
            }
            Err(e) => {
                tracing::error!("conntrack listener stopped: {e}");
                return;
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            deadline = None;
            let flushed = match watched.read() {
                Ok(w) => agg.flush(node, &w),
                Err(_) => return,
            };
            for o in flushed {
                if !tx.send(o) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(client: &str, frontend: &str, backend: &str) -> Flow {
        Flow {
            protocol: Protocol::Tcp,
            client: client.parse().unwrap(),
            frontend: frontend.parse().unwrap(),
            backend: backend.parse().unwrap(),
        }
    }

    #[test]
    fn the_dnat_cache_names_the_pod_a_client_reached_and_forgets_the_oldest_first() {
        let mut cache = DnatCache::default();
        let svc: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |s: i64| t0 + jiff::SignedDuration::from_secs(s);
        let of = |cache: &DnatCache, client: &str, frontend: SocketAddr| {
            cache.backend_seen_since(client.parse().unwrap(), frontend, Timestamp::MIN)
        };
        cache.record(
            &flow("10.244.1.5:40000", "10.96.0.10:80", "10.244.0.7:8080"),
            t0,
        );
        // A connection straight to a pod was not DNAT'ed: nothing to remember.
        cache.record(
            &flow("10.244.1.5:40001", "10.244.0.7:8080", "10.244.0.7:8080"),
            t0,
        );
        assert_eq!(
            of(&cache, "10.244.1.5:40000", svc),
            Some("10.244.0.7:8080".parse().unwrap())
        );
        assert_eq!(
            of(
                &cache,
                "10.244.1.5:40001",
                "10.244.0.7:8080".parse().unwrap()
            ),
            None
        );
        assert_eq!(of(&cache, "10.244.1.5:40002", svc), None);
        // The connection of 90 s ago is no answer for an error of now: its client port may
        // have come back for a connection that went elsewhere.
        let client: SocketAddr = "10.244.1.5:40000".parse().unwrap();
        assert_eq!(cache.backend_seen_since(client, svc, at(85)), None);
        // The port's next connection, to another pod, replaces it.
        cache.record(
            &flow("10.244.1.5:40000", "10.96.0.10:80", "10.244.0.9:8080"),
            at(90),
        );
        assert_eq!(
            cache.backend_seen_since(client, svc, at(85)),
            Some("10.244.0.9:8080".parse().unwrap())
        );
        for port in 0..DNAT_CACHE as u32 - 1 {
            let frontend = SocketAddr::new("10.96.0.11".parse().unwrap(), (port % 60_000) as u16);
            let c = SocketAddr::new("10.244.2.1".parse().unwrap(), (port / 60_000 + 1) as u16);
            cache.record(
                &Flow {
                    protocol: Protocol::Tcp,
                    client: c,
                    frontend,
                    backend: "10.244.0.8:80".parse().unwrap(),
                },
                at(91),
            );
        }
        // 40000's first record is the oldest in the queue, but its newest record is not: it
        // stays until that one's turn.
        assert_eq!(cache.map.len(), DNAT_CACHE, "bounded");
        assert_eq!(
            of(&cache, "10.244.1.5:40000", svc),
            Some("10.244.0.9:8080".parse().unwrap()),
            "re-recorded: kept"
        );
        cache.record(
            &flow("10.244.3.1:1", "10.96.0.12:80", "10.244.0.8:80"),
            at(92),
        );
        assert_eq!(cache.map.len(), DNAT_CACHE, "bounded");
        assert_eq!(
            of(&cache, "10.244.1.5:40000", svc),
            None,
            "the oldest went first"
        );
    }
    use netlink_packet_netfilter::{NetfilterProtoFamily, conntrack::Protocol as CtProto};

    /// A conntrack NEW event as the kernel sends it for a client → ClusterIP connection DNAT'ed
    /// to a pod.
    fn event(client: &str, frontend: &str, backend: &str) -> Vec<u8> {
        let (c, f, b): (SocketAddr, SocketAddr, SocketAddr) = (
            client.parse().unwrap(),
            frontend.parse().unwrap(),
            backend.parse().unwrap(),
        );
        let tuple = |src: SocketAddr, dst: SocketAddr| {
            vec![
                Tuple::Ip(vec![
                    IPTuple::SourceAddress(src.ip()),
                    IPTuple::DestinationAddress(dst.ip()),
                ]),
                Tuple::Proto(vec![
                    ProtoTuple::Protocol(CtProto::Tcp),
                    ProtoTuple::SourcePort(src.port()),
                    ProtoTuple::DestinationPort(dst.port()),
                ]),
            ]
        };
        let msg = ConntrackMessage::New(vec![
            ConntrackAttribute::CtaTupleOrig(tuple(c, f)),
            ConntrackAttribute::CtaTupleReply(tuple(b, c)),
        ]);
        crate::dataplane::nfnetlink::frame(NetfilterProtoFamily::IPv4, msg)
    }

    fn watched(backends: &[&str]) -> HashSet<Backend> {
        backends
            .iter()
            .map(|b| Backend(b.parse().unwrap()))
            .collect()
    }

    #[test]
    fn a_connection_to_a_cluster_ip_counts_for_the_pod_it_was_dnatted_to() {
        let mut datagram = event("198.19.1.2:40000", "10.96.0.10:80", "10.244.0.5:8080");
        datagram.extend(event(
            "198.19.1.2:40001",
            "10.96.0.10:80",
            "10.244.0.5:8080",
        ));
        let flows = decode(&datagram);
        assert_eq!(flows.len(), 2);
        assert_eq!(
            flows[0].backend,
            "10.244.0.5:8080".parse::<SocketAddr>().unwrap()
        );
        let mut agg = Aggregate::default();
        let t1: Timestamp = "2026-11-22T01:00:00.1Z".parse().unwrap();
        let t2: Timestamp = "2026-11-22T01:00:00.2Z".parse().unwrap();
        let w = watched(&["10.244.0.5:8080"]);
        agg.record(flows[0], t1, &w);
        agg.record(flows[1], t2, &w);
        let obs = agg.flush(&NodeName("n".into()), &w);
        assert_eq!(
            obs[0].to_json_line(),
            r#"{"kind":"flow_new","time":"2026-11-22T01:00:00.200000000Z","node":"n","ip":"10.244.0.5","port":8080,"count":2,"service":"10.96.0.10:80","first_time":"2026-11-22T01:00:00.100000000Z","protocol":"tcp"}"#
        );
        assert!(agg.is_empty());
    }

    #[test]
    fn a_backend_added_by_a_commit_gets_its_first_flows_before_the_diff_publishes_it() {
        let mut agg = Aggregate::default();
        let before_diff = watched(&[]);
        let flow = decode(&event("198.19.1.2:3", "10.96.0.10:80", "10.244.0.7:8080"))[0];
        agg.record(flow, Timestamp::now(), &before_diff);
        let after_diff = watched(&["10.244.0.7:8080"]);
        assert_eq!(agg.flush(&NodeName("n".into()), &after_diff).len(), 1);
    }

    #[test]
    fn flows_to_unwatched_or_not_dnatted_destinations_are_ignored() {
        let mut agg = Aggregate::default();
        let w = watched(&["10.244.0.5:8080"]);
        let now = Timestamp::now();
        // Straight to the pod IP: no Service routed it.
        agg.record(
            decode(&event("198.19.1.2:1", "10.244.0.5:8080", "10.244.0.5:8080"))[0],
            now,
            &w,
        );
        assert!(agg.is_empty());
        // DNAT'ed to a backend no dataplane of ours routes to, then or now.
        agg.record(
            decode(&event("198.19.1.2:2", "10.96.0.10:80", "10.244.0.6:8080"))[0],
            now,
            &w,
        );
        assert!(agg.flush(&NodeName("n".into()), &w).is_empty());
    }

    /// A conntrack event re-typed as each netfilter subsystem's messages, with each single
    /// bit flipped (twice, at two places): decoding never panics.
    #[test]
    fn no_event_with_damaged_bits_panics() {
        let original = event("198.18.0.9:40000", "198.19.0.10:80", "198.18.1.5:8080");
        let mut panics = 0;
        for ty in (0..12u16).flat_map(|sub| (0..16u16).map(move |t| sub << 8 | t)) {
            let mut bytes = original.clone();
            bytes[4..6].copy_from_slice(&ty.to_ne_bytes());
            for at in 16..bytes.len() {
                for bit in 0..8 {
                    bytes[at] ^= 1 << bit;
                    panics += usize::from(std::panic::catch_unwind(|| decode(&bytes)).is_err());
                    bytes[at] ^= 1 << bit;
                }
            }
        }
        assert_eq!(panics, 0);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = decode(&bytes);
        }
    }
}
