//! EndpointSlice updates → `endpoint_terminating`, `endpoint_removed`, `endpoint_ready`: the
//! moments every node's kube-proxy is told to stop (or start) routing to a pod. Each agent
//! reports the endpoints of pods on its own node, so each transition is reported once in the
//! cluster, with the receiving agent's clock.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use jiff::Timestamp;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::observation::{Kind, NodeName, Observation};

/// Label naming the Service a slice belongs to.
const SERVICE_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint {
    ready: bool,
    terminating: bool,
    pod: Option<String>,
    pod_uid: Option<String>,
    node: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct Slice {
    service: Option<String>,
    port: Option<u16>,
    endpoints: BTreeMap<IpAddr, Endpoint>,
}

/// Last known endpoints per slice (`namespace/name`).
#[derive(Debug)]
pub struct EndpointIndex {
    node: NodeName,
    slices: BTreeMap<String, Slice>,
    pub synced: bool,
    /// A relist after a watch gap is in progress (see `PodIndex::relisting`).
    pub relisting: bool,
}

fn key_of(slice: &EndpointSlice) -> String {
    format!(
        "{}/{}",
        slice.metadata.namespace.as_deref().unwrap_or_default(),
        slice.metadata.name.as_deref().unwrap_or_default()
    )
}

fn parse(slice: &EndpointSlice) -> Slice {
    let ns = slice.metadata.namespace.clone().unwrap_or_default();
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_LABEL))
        .map(|s| format!("{ns}/{s}"));
    let port = slice
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok());
    let mut endpoints = BTreeMap::new();
    for ep in &slice.endpoints {
        let conditions = ep.conditions.as_ref();
        // Per the EndpointSlice API, a nil `ready` means ready, nil `terminating` means not.
        let e = Endpoint {
            ready: conditions.and_then(|c| c.ready).unwrap_or(true),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            pod: ep
                .target_ref
                .as_ref()
                .filter(|t| t.kind.as_deref() == Some("Pod"))
                .map(|t| {
                    format!(
                        "{}/{}",
                        t.namespace.as_deref().unwrap_or(&ns),
                        t.name.as_deref().unwrap_or_default()
                    )
                }),
            pod_uid: ep.target_ref.as_ref().and_then(|t| t.uid.clone()),
            node: ep.node_name.clone(),
        };
        for a in &ep.addresses {
            if let Ok(ip) = a.parse() {
                endpoints.insert(ip, e.clone());
            }
        }
    }
    Slice {
        service,
        port,
        endpoints,
    }
}

impl EndpointIndex {
    pub fn new(node: NodeName) -> Self {
        Self {
            node,
            slices: BTreeMap::new(),
            synced: false,
            relisting: false,
        }
    }

    fn mine(&self, ip: IpAddr, e: &Endpoint, on_node: &dyn Fn(IpAddr) -> bool) -> bool {
        match &e.node {
            Some(n) => *n == self.node.0,
            None => on_node(ip),
        }
    }

    fn observation(
        &self,
        kind: Kind,
        now: Timestamp,
        slice: &Slice,
        ip: IpAddr,
        e: &Endpoint,
    ) -> Observation {
        let mut o = Observation::new(kind, now, self.node.clone());
        o.ip = Some(ip);
        o.port = slice.port;
        o.service = slice.service.clone();
        o.pod = e.pod.clone();
        o.pod_uid = e.pod_uid.clone();
        let o = o
            .with_extra("ready", e.ready)
            .with_extra("terminating", e.terminating);
        if self.relisting {
            o.with_extra("seen", "relist")
        } else {
            o
        }
    }

    /// A slice was added or changed. `on_node` says whether an address without `nodeName`
    /// belongs to a pod on this node.
    pub fn apply(
        &mut self,
        slice: &EndpointSlice,
        now: Timestamp,
        on_node: &dyn Fn(IpAddr) -> bool,
    ) -> Vec<Observation> {
        let key = key_of(slice);
        let new = parse(slice);
        let old = self.slices.remove(&key).unwrap_or_default();
        let mut out = Vec::new();
        if self.synced {
            for (ip, e) in &new.endpoints {
                if !self.mine(*ip, e, on_node) {
                    continue;
                }
                let before = old.endpoints.get(ip);
                if e.terminating && !before.is_some_and(|b| b.terminating) {
                    out.push(self.observation(Kind::EndpointTerminating, now, &new, *ip, e));
                } else if !e.terminating && e.ready && !before.is_some_and(|b| b.ready) {
                    out.push(self.observation(Kind::EndpointReady, now, &new, *ip, e));
                }
            }
            for (ip, e) in &old.endpoints {
                if !new.endpoints.contains_key(ip) && self.mine(*ip, e, on_node) {
                    out.push(self.observation(Kind::EndpointRemoved, now, &old, *ip, e));
                }
            }
        }
        self.slices.insert(key, new);
        out
    }

    /// A slice was deleted: all its endpoints are removed.
    pub fn delete(
        &mut self,
        slice: &EndpointSlice,
        now: Timestamp,
        on_node: &dyn Fn(IpAddr) -> bool,
    ) -> Vec<Observation> {
        let Some(old) = self.slices.remove(&key_of(slice)) else {
            return Vec::new();
        };
        old.endpoints
            .iter()
            .filter(|(ip, e)| self.mine(**ip, e, on_node))
            .map(|(ip, e)| self.observation(Kind::EndpointRemoved, now, &old, *ip, e))
            .collect()
    }

    /// After a full relist: slices absent from it were deleted during the watch gap.
    pub fn resync(
        &mut self,
        present: &BTreeSet<String>,
        now: Timestamp,
        on_node: &dyn Fn(IpAddr) -> bool,
    ) -> Vec<Observation> {
        let gone: Vec<String> = self
            .slices
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for key in gone {
            if let Some(old) = self.slices.remove(&key)
                && self.synced
            {
                out.extend(
                    old.endpoints
                        .iter()
                        .filter(|(ip, e)| self.mine(**ip, e, on_node))
                        .map(|(ip, e)| self.observation(Kind::EndpointRemoved, now, &old, *ip, e)),
                );
            }
        }
        self.synced = true;
        self.relisting = false;
        out
    }

    /// `namespace/name` of a slice, as the index keys it.
    pub fn key(slice: &EndpointSlice) -> String {
        key_of(slice)
    }
}
