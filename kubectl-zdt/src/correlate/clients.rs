//! Who kept sending: each failed connection's client (the pod its node's agent named as the
//! peer, a pod the input gave that address, or the bare address) and how it reached the pod —
//! through the Service's virtual IP (kube-proxy's lag) or straight to the pod's address (an
//! ingress controller, a mesh, a headless Service or a client-side balancer with its own
//! endpoint list) — per rollout (docs/report-schema.md, Clients).

use std::{collections::BTreeMap, net::IpAddr};

use foldhash::HashMap;
use serde::Serialize;

use super::{
    model::{Cause, ClientReport, ErrorCounts, Rollout},
    rollout::workload_of_pod,
    time::{WallNs, ms},
};
use crate::observation::{Kind, Observation, PodRef};

/// How a client reached the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// It dialled the Service's ClusterIP: kube-proxy chose the pod.
    Service,
    /// It dialled the pod's own address: it keeps its own endpoint list.
    PodIp,
    /// Only the pod's side was seen, within the Service's routing.
    Unknown,
}

/// One failed connection (or an aggregated line of them) with its client.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientError {
    pub client: String,
    pub path: Path,
    pub cause: Cause,
    pub count: u64,
    pub t: WallNs,
}

/// What the input says about clients: the path each client socket took (from the client's own
/// kernel lines) and the pods that held each address.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    paths: HashMap<(IpAddr, u16), Path>,
    names: HashMap<IpAddr, PodRef>,
}

impl Clients {
    pub fn index(obs: &[Observation]) -> Self {
        let mut c = Self::default();
        for o in obs {
            c.add(o);
        }
        c
    }

    /// Folds in one line (a later line's word on a socket or an address replaces an earlier's).
    pub fn add(&mut self, o: &Observation) {
        if let Some(path) = explicit_path(o)
            && let (Some(ip), Some(port)) = (o.peer_ip, o.peer_port)
        {
            self.paths.insert((ip.to_canonical(), port), path);
        }
        if matches!(o.kind, Kind::PodReady | Kind::PodDeleting)
            && let (Some(ip), Some(pod)) = (o.ip, &o.pod)
        {
            self.names.insert(ip.to_canonical(), pod.clone());
        }
        // The client's node named it: the pod's side of its connections is the same client.
        if let (Some(ip), Some(pod)) = (o.peer_ip, &o.details.kernel().peer_pod) {
            self.names.insert(ip.to_canonical(), pod.clone());
        }
    }

    /// The client of a failed connection: `deployment/frontend -n shop` (its pod's workload),
    /// else `address 10.0.0.7`.
    pub fn client_of(&self, o: &Observation) -> String {
        let pod = o.details.kernel().peer_pod.clone().or_else(|| {
            o.peer_ip
                .and_then(|ip| self.names.get(&ip.to_canonical()).cloned())
        });
        // A v4 client of a dual-stack listener is seen as `::ffff:a.b.c.d`: one client.
        match (pod, o.peer_ip.map(|ip| ip.to_canonical())) {
            (Some(p), _) => {
                let (ns, w) = workload_of_pod(&p, None);
                ns.map_or(w.clone(), |ns| format!("{w} -n {ns}"))
            }
            (None, Some(ip)) => format!("address {ip}"),
            (None, None) => "unknown client".to_owned(),
        }
    }

    /// How the connection of `o` went: said by the client's own line, else by the client's line
    /// of the same connection.
    pub fn path_of(&self, o: &Observation) -> Path {
        explicit_path(o)
            .or_else(|| {
                o.peer_ip
                    .zip(o.peer_port)
                    .and_then(|(ip, port)| self.paths.get(&(ip.to_canonical(), port)).copied())
            })
            .unwrap_or(Path::Unknown)
    }
}

/// A client's own line names what it dialled: the Service (`service`) or the pod (`ip`).
pub(crate) fn explicit_path(o: &Observation) -> Option<Path> {
    if !matches!(o.kind, Kind::ConnError | Kind::SynRetransmit) {
        return None;
    }
    match (&o.service, o.ip) {
        (Some(_), _) => Some(Path::Service),
        (None, Some(_)) => Some(Path::PodIp),
        (None, None) => None,
    }
}

/// Per rollout: the clients' failed connections by cause, and for those dialling pods
/// directly how long after the pod's endpoint was removed they still did.
pub(crate) fn report(r: &Rollout) -> Vec<ClientReport> {
    struct Acc {
        errors: ErrorCounts,
        after_removed_ns: Option<(i64, String)>,
    }
    let mut by: BTreeMap<(String, Path), Acc> = BTreeMap::new();
    let pods = r.pods.iter().map(|p| {
        let removed = p
            .marks
            .ep_removed
            .as_ref()
            .or(p.marks.ep_terminating.as_ref());
        (&p.client_errors, p.pod.clone(), removed.map(|m| m.time))
    });
    let new = r
        .startup
        .iter()
        .map(|s| (&s.client_errors, s.pod.clone(), None));
    for (errors, pod, removed) in pods.chain(new) {
        for e in errors.iter().filter(|e| e.cause != Cause::Probe) {
            let a = by.entry((e.client.clone(), e.path)).or_insert(Acc {
                errors: ErrorCounts::default(),
                after_removed_ns: None,
            });
            a.errors.add(e.cause, e.count);
            if let Some(rm) = removed
                && e.path == Path::PodIp
                && e.cause == Cause::UnsafeWindow
            {
                let after = e.t - WallNs::from_timestamp(rm);
                let name = pod.as_ref().map_or("", PodRef::name).to_owned();
                if a.after_removed_ns
                    .as_ref()
                    .is_none_or(|(cur, _)| after > *cur)
                {
                    a.after_removed_ns = Some((after, name));
                }
            }
        }
    }
    by.into_iter()
        .map(|((client, path), a)| {
            let e = a.errors;
            let mut why: Vec<String> = Vec::new();
            match (&a.after_removed_ns, path) {
                (Some((after, pod)), _) if *after > 0 => why.push(format!(
                    "{client} kept connecting to {pod}'s pod IP directly for {} ms after its endpoint was removed: its own endpoint list lags; the preStop must cover it too",
                    ms(*after)
                )),
                (_, Path::PodIp) if e.unsafe_window > 0 => why.push(format!(
                    "{client} dialled the pods' addresses directly (its own endpoint list) and was refused after they stopped listening: the preStop must outlast its list's lag too"
                )),
                (_, Path::Service) if e.unsafe_window + e.after_netns_gone > 0 => why.push(format!(
                    "{client} connected through the Service's virtual IP: kube-proxy's lag, which the preStop covers"
                )),
                _ if e.unsafe_window > 0 => why.push(format!(
                    "{client} was refused while nodes still routed to terminating pods: the preStop covers it"
                )),
                _ => {}
            }
            if e.after_netns_gone > 0 {
                why.push(format!(
                    "{} of its connections timed out: SYNs to a pod whose network was gone (a stale route or endpoint list), which the preStop covers",
                    e.after_netns_gone
                ));
            }
            if e.at_exit > 0 {
                why.push(format!(
                    "{} established connections of {client} reset at the pod's exit (keep-alive): drain on SIGTERM — stop accepting, finish in-flight requests, close idle keep-alive connections — before exiting",
                    e.at_exit
                ));
            }
            if e.before_listening + e.after_ready > 0 {
                why.push(format!(
                    "{} of its connections went to new pods that could not serve yet: a readiness probe cures them",
                    e.before_listening + e.after_ready
                ));
            }
            ClientReport {
                client,
                path,
                errors: e,
                after_endpoint_removed_ms: a.after_removed_ns.as_ref().map(|(n, _)| ms(*n)),
                pod: a.after_removed_ns.map(|(_, p)| p),
                reason: why.join("; "),
            }
        })
        .collect()
}
