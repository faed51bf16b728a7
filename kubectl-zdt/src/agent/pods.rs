//! Which pod an address belongs to, on this node, including pods that are gone: a deleted pod
//! stays as a tombstone for the whole rollout (`ttl`), so a refused SYN or a reset that the
//! kernel reports after the pod object vanished is still attributed to it. Its changes are
//! kernel filter updates; the API-level observations come from `convert::kube_events`.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

use crate::observation::Observation;

/// A pod's identity as written on observations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// `namespace/name`.
    pub pod: String,
    pub uid: String,
}

#[derive(Clone, Debug)]
struct Entry {
    pod: PodRef,
    ips: Vec<IpAddr>,
    /// The pod's network namespace (inode), once found (`agent::pod_netns`).
    netns: Option<u32>,
    /// Ports the kubelet probes (readiness, liveness, startup: `tcpSocket`, `httpGet`, `grpc`).
    probe_ports: Vec<u16>,
    first_seen: Timestamp,
    /// The pod object's creationTimestamp: none of its processes ran before.
    created: Option<Timestamp>,
    gone_at: Option<Timestamp>,
}

/// The ports the kubelet probes in `spec`: `tcpSocket`, `httpGet` and `grpc` probes of every
/// container, a named port resolved through the container's ports.
fn probe_ports(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<u16> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let mut ports = Vec::new();
    for c in &spec.containers {
        let resolve = |p: &IntOrString| match p {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok()),
        };
        for probe in [&c.readiness_probe, &c.liveness_probe, &c.startup_probe]
            .into_iter()
            .flatten()
        {
            ports.extend(probe.tcp_socket.as_ref().and_then(|t| resolve(&t.port)));
            ports.extend(probe.http_get.as_ref().and_then(|h| resolve(&h.port)));
            ports.extend(probe.grpc.as_ref().and_then(|g| u16::try_from(g.port).ok()));
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Kernel filter changes an update implies.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Addresses to start reporting in the kernel.
    pub watch: Vec<IpNet>,
    /// Addresses to stop reporting.
    pub unwatch: Vec<IpNet>,
    /// Network namespaces to stop reporting (their pod's tombstone expired).
    pub unwatch_netns: Vec<u32>,
}

/// One pod's hold on a network-namespace inode number, from when the agent found it until the
/// namespace was seen to go (`netns_gone`) or its number was seen in another pod.
///
/// The kernel hands a dead namespace's inode number to the next namespace created: on a real
/// node most numbers were held by several pods within minutes. So a number names a pod only
/// between these two instants, never until the pod's tombstone expires.
#[derive(Clone, Debug)]
struct NetnsSpan {
    uid: String,
    /// When the pod's earliest process in the namespace started, if known: the number names
    /// this pod from then, not before (another pod's namespace may have had it until then).
    since: Option<Timestamp>,
    ended: Option<Timestamp>,
    /// A `netns_gone` was attributed to this span (each namespace dies once).
    gone_seen: bool,
}

/// Pods on this node by UID, by address and by network namespace.
#[derive(Debug)]
pub struct PodIndex {
    ttl: Duration,
    by_uid: BTreeMap<String, Entry>,
    by_ip: HashMap<IpAddr, Vec<String>>,
    /// Each inode number's holders, oldest first.
    by_netns: HashMap<u32, Vec<NetnsSpan>>,
}

fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

impl PodIndex {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            by_uid: BTreeMap::new(),
            by_ip: HashMap::new(),
            by_netns: HashMap::new(),
        }
    }

    /// A pod was added or changed (`now`: when the watch delivered it).
    pub fn apply(&mut self, pod: &Pod, now: Timestamp) -> Changes {
        let mut changes = Changes::default();
        let Some(uid) = pod.metadata.uid.clone() else {
            return changes;
        };
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        // hostNetwork pods share the node's address: nothing pod-specific to watch.
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let ips: Vec<IpAddr> = if host_network {
            Vec::new()
        } else {
            status
                .and_then(|s| s.pod_ips.as_ref())
                .map(|ips| ips.iter().filter_map(|i| i.ip.parse().ok()).collect())
                .unwrap_or_default()
        };
        let pod_ref = PodRef {
            pod: format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
            uid: uid.clone(),
        };
        let previous = self.by_uid.get(&uid).cloned();
        for ip in &ips {
            let owners = self.by_ip.entry(*ip).or_default();
            if !owners.contains(&uid) {
                owners.push(uid.clone());
                changes.watch.push(host(*ip));
            }
        }
        let mut entry = previous.clone().unwrap_or(Entry {
            pod: pod_ref,
            ips: Vec::new(),
            probe_ports: Vec::new(),
            netns: None,
            first_seen: now,
            created: None,
            gone_at: None,
        });
        entry.created = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| t.0.to_string().parse().ok())
            .or(entry.created);
        if !ips.is_empty() {
            entry.ips = ips;
        }
        if let Some(spec) = spec {
            entry.probe_ports = probe_ports(spec);
        }
        entry.gone_at = None;
        self.by_uid.insert(uid, entry);
        changes
    }

    /// A pod object is gone: it becomes a tombstone, still attributed and watched for the TTL.
    pub fn delete(&mut self, pod: &Pod, now: Timestamp) -> Changes {
        let changes = self.apply(pod, now);
        if let Some(e) = pod
            .metadata
            .uid
            .as_deref()
            .and_then(|u| self.by_uid.get_mut(u))
        {
            e.gone_at = Some(now);
        }
        changes
    }

    /// Live pods not in `present` (a full relist) were deleted while the watch was down: they
    /// become tombstones. Returns their UIDs.
    pub fn resync(&mut self, present: &[String], now: Timestamp) -> Vec<String> {
        let mut gone = Vec::new();
        for (uid, e) in &mut self.by_uid {
            if e.gone_at.is_none() && !present.contains(uid) {
                e.gone_at = Some(now);
                gone.push(uid.clone());
            }
        }
        gone
    }

    /// Drops tombstones older than the TTL and stops watching addresses no pod holds any more.
    pub fn expire(&mut self, now: Timestamp) -> Changes {
        let ttl = jiff::SignedDuration::try_from(self.ttl).unwrap_or(jiff::SignedDuration::MAX);
        let expired: Vec<String> = self
            .by_uid
            .iter()
            .filter(|(_, e)| e.gone_at.is_some_and(|g| now.duration_since(g) >= ttl))
            .map(|(uid, _)| uid.clone())
            .collect();
        let mut changes = Changes::default();
        for uid in expired {
            let Some(e) = self.by_uid.remove(&uid) else {
                continue;
            };
            if let Some(inum) = e.netns
                && let Some(spans) = self.by_netns.get_mut(&inum)
            {
                spans.retain(|s| s.uid != uid);
                if spans.is_empty() {
                    self.by_netns.remove(&inum);
                    changes.unwatch_netns.push(inum);
                }
            }
            for ip in e.ips {
                if let Some(owners) = self.by_ip.get_mut(&ip) {
                    owners.retain(|u| *u != uid);
                    if owners.is_empty() {
                        self.by_ip.remove(&ip);
                        changes.unwatch.push(host(ip));
                    }
                }
            }
        }
        changes
    }

    /// The pod that held `ip` at `at`: among the pods that ever had it here, the latest one
    /// first seen before `at` (addresses are reused after a pod is gone).
    pub fn lookup(&self, ip: IpAddr, at: Timestamp) -> Option<&PodRef> {
        let owners = self.by_ip.get(&ip)?;
        let entries = owners.iter().filter_map(|u| self.by_uid.get(u));
        entries
            .clone()
            .filter(|e| e.first_seen <= at)
            .max_by_key(|e| e.first_seen)
            .or_else(|| entries.min_by_key(|e| e.first_seen))
            .map(|e| &e.pod)
    }

    /// The span of `inum` a line at `at` belongs to: the latest holder that took the number
    /// before `at` (after the previous holder's end) and had not lost it by then. A
    /// `netns_gone` belongs to the oldest holder whose namespace was not yet seen to go: a
    /// number in two holders' hands means the older one's namespace is dead.
    fn span_at(&mut self, inum: u32, at: Timestamp, gone: bool) -> Option<&mut NetnsSpan> {
        let spans = self.by_netns.get_mut(&inum)?;
        if gone {
            return spans.iter_mut().find(|s| !s.gone_seen);
        }
        let mut pick = None;
        let mut prev_end: Option<Timestamp> = None;
        for (k, s) in spans.iter().enumerate() {
            if prev_end.is_none_or(|e| at > e)
                && s.since.is_none_or(|t| at >= t)
                && s.ended.is_none_or(|e| at <= e)
            {
                pick = Some(k);
            }
            prev_end = s.ended;
        }
        pick.map(move |k| &mut spans[k])
    }

    /// Fills `pod`/`pod_uid` of a kernel observation from its address, or else from its
    /// network namespace (listeners on wildcard addresses, signals, execs, exits, netns_gone).
    /// A `netns_gone` ends its pod's hold on the namespace's number.
    pub fn attribute(&mut self, o: &mut Observation) {
        let netns = o.details.kernel().netns.and_then(|n| u32::try_from(n).ok());
        let gone = o.kind == crate::observation::Kind::NetnsGone;
        let by_netns = match netns {
            Some(inum) => self.span_at(inum, o.time, gone).map(|span| {
                if gone {
                    span.gone_seen = true;
                    span.ended = Some(span.ended.map_or(o.time, |e| e.min(o.time)));
                }
                span.uid.clone()
            }),
            _ => None,
        };
        self.attribute_peer(o);
        if o.pod.is_some() {
            return;
        }
        let by_ip = o.ip.and_then(|ip| self.lookup(ip, o.time)).cloned();
        // A client's error names the server by its address; its namespace is the client's
        // (a pod of this node dialling a Service), not the pod the error is about.
        let client_side = matches!(
            o.kind,
            crate::observation::Kind::ConnError | crate::observation::Kind::SynRetransmit
        );
        let by_netns = by_netns
            .filter(|_| !client_side)
            .and_then(|uid| self.by_uid.get(&uid).map(|e| e.pod.clone()));
        if let Some(p) = by_ip.or(by_netns) {
            o.pod = Some(p.pod.into());
            o.pod_uid = Some(p.uid.into());
        }
    }

    /// Whether a kernel line that no pod holds now comes from a namespace whose number's last
    /// holder was seen to go before it: the kernel gave the number to a new pod the agent has
    /// not found yet ([`Waiting`]). Client-side lines name no pod by namespace anyway.
    pub fn awaits_holder(&self, o: &Observation) -> bool {
        use crate::observation::Kind;
        if o.pod.is_some()
            || matches!(
                o.kind,
                Kind::NetnsGone | Kind::ConnError | Kind::SynRetransmit
            )
        {
            return false;
        }
        let Some(inum) = o.details.kernel().netns.and_then(|n| u32::try_from(n).ok()) else {
            return false;
        };
        self.by_netns
            .get(&inum)
            .and_then(|spans| spans.last())
            .is_some_and(|last| last.gone_seen && last.ended.is_some_and(|e| o.time > e))
    }

    /// Pod `uid` as observations name it.
    pub fn pod_ref(&self, uid: &str) -> Option<PodRef> {
        self.by_uid.get(uid).map(|e| e.pod.clone())
    }

    /// Names the client of a failed connection (`peer_pod`, `peer_pod_uid`) when its address
    /// is one of this node's pods: a client pod's own node always knows it, so its client-side
    /// lines say who kept connecting.
    fn attribute_peer(&self, o: &mut Observation) {
        use crate::observation::Kind;
        if !matches!(
            o.kind,
            Kind::Refused | Kind::Reset | Kind::ConnError | Kind::SynRetransmit
        ) || o.details.kernel().peer_pod.is_some()
        {
            return;
        }
        if let Some(p) = o.peer_ip.and_then(|ip| self.lookup(ip, o.time)) {
            let (pod, uid) = (p.pod.clone(), p.uid.clone());
            let k = o.details.kernel_mut();
            k.peer_pod = Some(pod.into());
            k.peer_pod_uid = Some(uid.into());
        }
    }

    /// When pod `uid` was created (its creationTimestamp, else when this agent first saw it):
    /// none of its processes ran before.
    pub fn created(&self, uid: &str) -> Option<Timestamp> {
        self.by_uid
            .get(uid)
            .map(|e| e.created.unwrap_or(e.first_seen))
    }

    /// Whether the kubelet probes pod `uid` on `port`.
    pub fn probes_port(&self, uid: &str, port: u16) -> bool {
        self.by_uid
            .get(uid)
            .is_some_and(|e| e.probe_ports.contains(&port))
    }

    /// Live pods with their own network (not hostNetwork) whose namespace is not known yet.
    pub fn unresolved(&self) -> Vec<String> {
        self.by_uid
            .iter()
            .filter(|(_, e)| e.netns.is_none() && e.gone_at.is_none() && !e.ips.is_empty())
            .map(|(uid, _)| uid.clone())
            .collect()
    }

    /// Records pod `uid`'s network namespace, found at `now`; false when the pod is unknown or
    /// already had it. Another pod holding the same number lost it by `now`: its namespace is
    /// dead, the kernel gave the number to this one.
    pub fn set_netns(
        &mut self,
        uid: &str,
        inum: u32,
        now: Timestamp,
        since: Option<Timestamp>,
    ) -> bool {
        let Some(e) = self.by_uid.get_mut(uid) else {
            return false;
        };
        if e.netns == Some(inum) {
            return false;
        }
        e.netns = Some(inum);
        let spans = self.by_netns.entry(inum).or_default();
        for s in spans.iter_mut().filter(|s| s.ended.is_none()) {
            s.ended = Some(now);
        }
        spans.push(NetnsSpan {
            uid: uid.to_owned(),
            since,
            ended: None,
            gone_seen: false,
        });
        true
    }

    /// Network namespaces some pod holds now (a namespace seen to go is not counted).
    pub fn netns_len(&self) -> usize {
        self.by_netns
            .values()
            .filter(|spans| spans.iter().any(|s| s.ended.is_none()))
            .count()
    }

    /// Pods known, tombstones included.
    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    /// Pods that exist now (not tombstones).
    pub fn live(&self) -> usize {
        self.by_uid.values().filter(|e| e.gone_at.is_none()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    /// Whether `ip` belongs to a pod on this node (live or tombstone).
    pub fn holds(&self, ip: IpAddr) -> bool {
        self.by_ip.contains_key(&ip)
    }
}

/// Kernel lines of a namespace whose number's last holder was seen to go
/// ([`PodIndex::awaits_holder`]): the sandbox of a new pod got the number, and its first
/// processes (the app listening, often) run before the agent has found whose namespace it is
/// (it looks on every pod update and every second, `ApiWatch::resolve_netns`). Such a line
/// waits for the new holder and is named after it; after [`Waiting::HOLD`] it is left out
/// ([`Waiting::release`]).
#[derive(Debug, Default)]
pub struct Waiting {
    lines: Vec<(Observation, std::time::Instant)>,
}

impl Waiting {
    /// How long a line waits for its namespace's new holder.
    pub const HOLD: Duration = Duration::from_secs(5);

    /// An attributed line: out now, or held until its namespace's holder is found.
    pub fn admit(
        &mut self,
        index: &PodIndex,
        o: Observation,
        now: std::time::Instant,
    ) -> Option<Observation> {
        if index.awaits_holder(&o) {
            self.lines.push((o, now));
            None
        } else {
            Some(o)
        }
    }

    /// The held lines whose namespace's holder is known now, named after it; and the number of
    /// lines left out because no pod of this node took the number within [`Waiting::HOLD`], or
    /// the pod that took it started after them. Those are not this node's to report:
    /// on nodes that share one kernel (kind, several kubelets on one machine) namespace numbers
    /// are shared too, and a number one of this node's pods had went to another node's pod,
    /// whose own agent reports its lines; on a node of its own, a pod whose namespace the
    /// agent cannot find (nor its address) would not be watched at all without the reuse.
    pub fn release(
        &mut self,
        index: &mut PodIndex,
        now: std::time::Instant,
    ) -> (Vec<Observation>, u64) {
        let mut out = Vec::new();
        let mut left_out = 0;
        let mut kept = Vec::with_capacity(self.lines.len());
        for (mut o, since) in self.lines.drain(..) {
            index.attribute(&mut o);
            if o.pod.is_some() {
                out.push(o);
            } else if !index.awaits_holder(&o) || now.duration_since(since) >= Self::HOLD {
                // Older than the namespace of the pod that took the number, or no pod took it.
                left_out += 1;
            } else {
                kept.push((o, since));
            }
        }
        self.lines = kept;
        (out, left_out)
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::{Kind, NodeName};

    fn pod(name: &str, uid: &str, ip: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": uid},
            "status": {"podIPs": [{"ip": ip}]},
        }))
        .unwrap()
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn line(kind: Kind, t: Timestamp, inum: u32) -> Observation {
        Observation::new(kind, t, NodeName("vm".into())).with_extra("netns", inum)
    }

    fn owner(index: &mut PodIndex, kind: Kind, t: Timestamp, inum: u32) -> Option<String> {
        let mut o = line(kind, t, inum);
        index.attribute(&mut o);
        o.pod.map(String::from)
    }

    #[test]
    fn a_failed_connection_from_a_pod_of_this_node_names_that_pod_as_its_client() {
        let mut index = PodIndex::new(Duration::from_secs(600));
        index.apply(
            &pod("frontend-7d9f8c6b5d-abcde", "uid-fe", "198.18.0.20"),
            at(0),
        );
        let mut o = Observation::new(Kind::ConnError, at(1), NodeName("vm".into()));
        o.ip = Some("198.18.1.7".parse().unwrap());
        o.port = Some(8080);
        o.peer_ip = Some("198.18.0.20".parse().unwrap());
        o.peer_port = Some(40_000);
        index.attribute(&mut o);
        let k = o.details.kernel();
        assert_eq!(
            k.peer_pod.as_deref(),
            Some("default/frontend-7d9f8c6b5d-abcde")
        );
        assert_eq!(k.peer_pod_uid.as_deref(), Some("uid-fe"));
        // A client that is no pod of this node (the node itself, another node's pod): unnamed.
        let mut o = Observation::new(Kind::Refused, at(1), NodeName("vm".into()));
        o.peer_ip = Some("198.18.0.1".parse().unwrap());
        index.attribute(&mut o);
        assert!(o.details.kernel().peer_pod.is_none());
    }

    #[test]
    fn a_pod_was_created_at_its_creation_timestamp_else_when_first_seen() {
        let mut index = PodIndex::new(Duration::from_secs(600));
        let mut p = pod("web", "uid-web", "198.18.0.10");
        index.apply(&p, at(5));
        assert_eq!(index.created("uid-web"), Some(at(5)));
        p.metadata.creation_timestamp =
            serde_json::from_value(serde_json::json!(at(1).to_string())).unwrap();
        index.apply(&p, at(6));
        assert_eq!(index.created("uid-web"), Some(at(1)));
        assert_eq!(index.created("uid-other"), None);
    }

    #[test]
    fn a_namespace_number_the_kernel_gives_to_the_next_pod_names_the_next_pod_at_once() {
        let mut index = PodIndex::new(Duration::from_secs(600));
        index.apply(&pod("old", "uid-old", "198.18.0.10"), at(0));
        assert!(index.set_netns("uid-old", 4026532330, at(1), None));
        assert_eq!(
            owner(&mut index, Kind::Exit, at(2), 4026532330).as_deref(),
            Some("default/old")
        );
        index.delete(&pod("old", "uid-old", "198.18.0.10"), at(3));
        // The old pod's namespace goes; its tombstone stays for late refusals by address.
        assert_eq!(
            owner(&mut index, Kind::NetnsGone, at(4), 4026532330).as_deref(),
            Some("default/old")
        );
        // The next sandbox gets the same number before the agent has found whose it is: its
        // processes are not the dead pod's; they wait for the new holder.
        let mut waiting = Waiting::default();
        let start = std::time::Instant::now();
        let mut exec = line(Kind::Exec, at(5), 4026532330);
        index.attribute(&mut exec);
        assert_eq!(exec.pod, None);
        assert!(waiting.admit(&index, exec, start).is_none());
        index.apply(&pod("new", "uid-new", "198.18.0.11"), at(5));
        assert_eq!(
            waiting.release(&mut index, start),
            (vec![], 0),
            "not found yet"
        );
        assert!(index.set_netns("uid-new", 4026532330, at(6), None));
        let (released, _) = waiting.release(&mut index, start);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].pod.as_deref(), Some("default/new"));
        assert!(waiting.is_empty());
        assert_eq!(
            owner(&mut index, Kind::ListenerOpen, at(7), 4026532330).as_deref(),
            Some("default/new")
        );
        assert_eq!(index.live(), 1, "the tombstone is not a live pod");
        assert_eq!(index.len(), 2);
        assert_eq!(index.netns_len(), 1);
    }

    #[test]
    fn a_number_found_in_a_new_pod_before_the_old_namespace_was_seen_to_go_ends_the_old_hold() {
        let mut index = PodIndex::new(Duration::from_secs(600));
        index.apply(&pod("old", "uid-old", "198.18.0.10"), at(0));
        index.set_netns("uid-old", 7, at(1), None);
        index.apply(&pod("new", "uid-new", "198.18.0.11"), at(2));
        // The new pod's processes are found first (the rtnetlink notification is still queued).
        index.set_netns("uid-new", 7, at(3), None);
        assert_eq!(
            owner(&mut index, Kind::Exec, at(4), 7).as_deref(),
            Some("default/new")
        );
        // The namespace that went is the old pod's: a number in two hands means the older
        // holder's namespace is dead.
        assert_eq!(
            owner(&mut index, Kind::NetnsGone, at(5), 7).as_deref(),
            Some("default/old")
        );
        assert_eq!(
            owner(&mut index, Kind::Exit, at(6), 7).as_deref(),
            Some("default/new")
        );
        // The old pod's lines from before the handover are still its own.
        assert_eq!(
            owner(&mut index, Kind::Signal, at(2), 7).as_deref(),
            Some("default/old")
        );
    }

    #[test]
    fn the_ports_the_kubelet_probes_are_read_from_every_probe_named_ports_resolved() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u"},
            "spec": {"containers": [{
                "name": "web",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"tcpSocket": {"port": 8080}},
                "livenessProbe": {"httpGet": {"port": "http", "path": "/"}},
                "startupProbe": {"grpc": {"port": 9000}},
            }, {
                "name": "side",
                "readinessProbe": {"exec": {"command": ["true"]}},
            }]},
            "status": {"podIPs": [{"ip": "198.18.0.5"}]},
        }))
        .unwrap();
        let mut index = PodIndex::new(Duration::from_secs(60));
        index.apply(&pod, at(0));
        assert!(index.probes_port("u", 8080));
        assert!(index.probes_port("u", 9000));
        assert!(!index.probes_port("u", 80));
        assert!(!index.probes_port("other", 8080));
    }

    #[test]
    fn a_clients_error_is_never_filed_under_the_client_pod_by_its_namespace() {
        // The --traffic pod dials a ClusterIP; conntrack did not name the backend.
        let mut index = PodIndex::new(Duration::from_secs(60));
        index.apply(&pod("zdt-traffic-web", "uid-t", "198.18.0.44"), at(0));
        index.set_netns("uid-t", 9, at(1), None);
        let mut o = line(Kind::ConnError, at(2), 9);
        o.service = Some("198.19.0.236:80".into());
        index.attribute(&mut o);
        assert_eq!(o.pod, None);
        assert_eq!(
            owner(&mut index, Kind::Exec, at(3), 9).as_deref(),
            Some("default/zdt-traffic-web"),
            "its own process lines are still its own"
        );
    }

    #[test]
    fn an_expired_tombstone_releases_only_its_own_hold_on_a_reused_number() {
        let mut index = PodIndex::new(Duration::from_secs(60));
        index.apply(&pod("old", "uid-old", "198.18.0.10"), at(0));
        index.set_netns("uid-old", 7, at(1), None);
        index.delete(&pod("old", "uid-old", "198.18.0.10"), at(2));
        index.apply(&pod("new", "uid-new", "198.18.0.11"), at(3));
        index.set_netns("uid-new", 7, at(4), None);
        let changes = index.expire(at(100));
        assert!(changes.unwatch_netns.is_empty(), "{changes:?}");
        assert_eq!(
            owner(&mut index, Kind::Exec, at(101), 7).as_deref(),
            Some("default/new")
        );
    }

    #[test]
    fn only_lines_after_the_last_holder_went_wait_and_none_is_sent_unowned_after_the_hold() {
        let mut index = PodIndex::new(Duration::from_secs(600));
        index.apply(&pod("old", "uid-old", "198.18.0.10"), at(0));
        index.set_netns("uid-old", 7, at(1), None);
        let start = std::time::Instant::now();
        let mut waiting = Waiting::default();
        let mut admit = |index: &mut PodIndex, kind: Kind, t: Timestamp| {
            let mut o = line(kind, t, 7);
            index.attribute(&mut o);
            waiting
                .admit(index, o, start)
                .map(|o| o.pod.map(String::from))
        };
        // The holder is alive: its lines go out at once, named.
        assert_eq!(
            admit(&mut index, Kind::Exit, at(2)),
            Some(Some("default/old".into()))
        );
        assert!(admit(&mut index, Kind::NetnsGone, at(3)).is_some());
        // Before it went: still the old pod's. After: held. A client's error: never held.
        assert_eq!(
            admit(&mut index, Kind::Signal, at(2)),
            Some(Some("default/old".into()))
        );
        assert_eq!(admit(&mut index, Kind::ListenerOpen, at(4)), None);
        assert_eq!(admit(&mut index, Kind::ConnError, at(4)), Some(None));
        // A number nobody watches: out at once.
        let mut o = line(Kind::Exec, at(4), 8);
        index.attribute(&mut o);
        assert!(waiting.admit(&index, o, start).is_some());
        // No pod of this node takes the number: the held line is left out after the hold.
        assert_eq!(
            waiting.release(&mut index, start + Waiting::HOLD / 2),
            (vec![], 0)
        );
        assert_eq!(
            waiting.release(&mut index, start + Waiting::HOLD),
            (vec![], 1)
        );
        assert!(waiting.is_empty());
    }

    #[test]
    fn a_held_line_older_than_the_new_holders_processes_is_left_out() {
        // The number's last holder went at 3; lines at 4 and 6 wait; the next pod's earliest
        // process started at 5 (another namespace had the number in between: another node's
        // pod on a shared kernel): only the line at 6 is the new pod's, the other is left out.
        let mut index = PodIndex::new(Duration::from_secs(600));
        index.apply(&pod("old", "uid-old", "198.18.0.10"), at(0));
        index.set_netns("uid-old", 7, at(1), Some(at(0)));
        let _ = owner(&mut index, Kind::NetnsGone, at(3), 7);
        let start = std::time::Instant::now();
        let mut waiting = Waiting::default();
        for t in [4, 6] {
            let o = line(Kind::Signal, at(t), 7);
            assert!(waiting.admit(&index, o, start).is_none());
        }
        index.apply(&pod("new", "uid-new", "198.18.0.11"), at(5));
        index.set_netns("uid-new", 7, at(7), Some(at(5)));
        let (out, left_out) = waiting.release(&mut index, start);
        assert_eq!(left_out, 1, "the older line: another namespace's");
        let named: Vec<Option<&str>> = out.iter().map(|o| o.pod.as_deref()).collect();
        assert_eq!(named, [Some("default/new")]);
        assert!(waiting.is_empty(), "released at once, not after the hold");
    }
}
