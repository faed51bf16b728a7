//! The agent's Kubernetes watches (kube-runtime `watcher`s composed as one stream): pods on its
//! own node, EndpointSlices and Services. Objects become API-level observations through the
//! same converter `kubectl zdt analyze` uses on recorded streams (`convert::kube_events`);
//! this module adds what a live watch needs around it:
//!
//! - resume and relist: the watcher resumes from the last resourceVersion after a disconnect
//!   and relists after 410 Gone; a relist is diffed against the last known state, so an object
//!   deleted while the watch was down is still reported, once, marked `seen: "relist"` (its
//!   time is when the agent found out: an upper bound);
//! - scope: each agent reports the pods and endpoints on its own node, so every transition is
//!   reported once in the cluster, stamped by the clock of the node it concerns;
//! - the pod index (tombstones) and the kernel filter follow the pods.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    future::Future,
    net::IpAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use futures::{StreamExt as _, stream};
use ipnet::IpNet;
use jiff::Timestamp;
use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, ResourceExt as _,
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::mpsc::Sender;

use super::{
    capacity::CapacityWatch,
    netns_gone::NetnsGone,
    pod_netns::PodNetns,
    pods::{Changes, PodIndex},
    serve::Gauges,
};
use crate::kernel::filter::AddressFilter;
use crate::{
    convert::kube_events::{self, EndpointSliceWatch, PodWatch, WatchEvent},
    observation::{NodeName, Observation, ServiceName, ServiceRef},
};

/// How long a deleted pod's address stays attributed and watched: longer than any sane
/// terminationGracePeriodSeconds plus kube-proxy's propagation.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

enum Update {
    Pod(Box<watcher::Event<Pod>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
    /// Services only feed the reflector store.
    Service,
    Failed(watcher::Error),
}

/// A kube-rs object as the converter's watch event (the converter reads the API's JSON).
fn event<T: Serialize, U: DeserializeOwned>(kind: &str, object: &T) -> Option<WatchEvent<U>> {
    let object = serde_json::to_value(object)
        .and_then(serde_json::from_value)
        .inspect_err(|e| tracing::warn!("an object from the API did not convert: {e}"))
        .ok()?;
    Some(WatchEvent {
        kind: kind.to_owned(),
        object,
    })
}

/// One watched kind: the converter, the last known objects (for relist diffs) and the relist
/// in progress.
struct Tracked<K, C> {
    converter: C,
    known: BTreeMap<String, K>,
    relist: Option<BTreeSet<String>>,
    synced: bool,
    /// A relist after a gap is in progress: its observations get `seen: "relist"`.
    relisting: bool,
    /// Addresses of endpoints on this node (slices only).
    mine: HashSet<IpAddr>,
}

impl<K: Clone + kube::Resource, C> Tracked<K, C> {
    fn new(converter: C) -> Self {
        Self {
            converter,
            known: BTreeMap::new(),
            relist: None,
            synced: false,
            relisting: false,
            mine: HashSet::new(),
        }
    }

    fn key(object: &K) -> String {
        format!(
            "{}/{}",
            object.namespace().unwrap_or_default(),
            object.name_any()
        )
    }

    /// Turns a watcher event into (type, object) changes for the converter: a relist's
    /// objects are MODIFIED, and those it no longer holds are DELETED.
    fn changes(&mut self, e: watcher::Event<K>) -> Vec<(&'static str, K)> {
        match e {
            watcher::Event::Init => {
                self.relist = Some(BTreeSet::new());
                self.relisting = self.synced;
                Vec::new()
            }
            watcher::Event::InitApply(o) => {
                if let Some(seen) = self.relist.as_mut() {
                    seen.insert(Self::key(&o));
                }
                self.known.insert(Self::key(&o), o.clone());
                vec![("MODIFIED", o)]
            }
            watcher::Event::InitDone => {
                let seen = self.relist.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .known
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                gone.iter()
                    .filter_map(|k| self.known.remove(k))
                    .map(|o| ("DELETED", o))
                    .collect()
            }
            watcher::Event::Apply(o) => {
                self.known.insert(Self::key(&o), o.clone());
                vec![("MODIFIED", o)]
            }
            watcher::Event::Delete(o) => {
                self.known.remove(&Self::key(&o));
                vec![("DELETED", o)]
            }
        }
    }

    /// Marks observations from a relist and ends the relist once it is done.
    fn finish(&mut self, done: bool, observations: &mut [Observation]) {
        if self.relisting {
            for o in observations.iter_mut() {
                o.details.api_mut().seen = Some("relist".to_owned());
            }
        }
        if done {
            self.synced = true;
            self.relisting = false;
        }
    }
}

/// The addresses clients dial to reach a Service: its ClusterIPs and external IPs. A client's
/// failure toward one (refused, reset, timed out, given up) is reported by the client's kernel
/// against the address it dialled, so the filter must hold them, not only pod addresses: without
/// them no client on the node was ever seen time out.
fn service_frontends(services: &[Arc<Service>]) -> HashSet<IpAddr> {
    services
        .iter()
        .filter_map(|s| s.spec.as_ref())
        .flat_map(|spec| {
            spec.cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .chain(spec.external_ips.iter().flatten())
        })
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .collect()
}

/// Brings `watched` to the Services' frontends now, recording the filter changes.
fn frontend_changes(
    watched: &mut HashSet<IpAddr>,
    services: &[Arc<Service>],
    changes: &mut Changes,
) {
    let now = service_frontends(services);
    changes
        .watch
        .extend(now.difference(watched).map(|ip| IpNet::from(*ip)));
    changes
        .unwatch
        .extend(watched.difference(&now).map(|ip| IpNet::from(*ip)));
    *watched = now;
}

/// How long the API server keeps each watch open before ending it (the watcher then resumes
/// from its last resourceVersion): a healthy watch is never silent for longer than this.
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(50);

/// How long the agent's client waits on a silent connection before it drops it. A watch whose
/// connection died without a FIN or RST (the node's conntrack entries for the API server's
/// ClusterIP flushed, a NAT or firewall forgetting it) would otherwise leave the agent blind to
/// every deletion until kube's default (295 s) ran out; longer than [`WATCH_TIMEOUT`], so only
/// a dead connection trips it.
pub const API_READ_TIMEOUT: Duration = Duration::from_secs(60);
const _: () = assert!(WATCH_TIMEOUT.as_secs() + 5 < API_READ_TIMEOUT.as_secs());

fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT.as_secs() as u32)
}

/// The agent's API client settings: kube's inferred config (in-cluster, or a kubeconfig) with
/// [`API_READ_TIMEOUT`].
pub fn client_config(mut config: kube::Config) -> kube::Config {
    config.read_timeout = Some(API_READ_TIMEOUT);
    config
}

/// The watches and the state they keep.
pub struct ApiWatch {
    pub client: Client,
    pub node: NodeName,
    pub pods: Arc<Mutex<PodIndex>>,
    pub gauges: Arc<Gauges>,
    /// Finds each pod's network namespace and registers it for `netns_gone` (None: addresses
    /// only, e.g. without hostPID).
    pub netns: Option<PodNamespaces>,
}

/// How pods' network namespaces are found and their removal watched.
pub struct PodNamespaces {
    pub resolver: PodNetns,
    pub gone: Option<NetnsGone>,
}

impl ApiWatch {
    /// Watches until `shutdown` or until the receiver is gone, sending API observations to `tx`
    /// and keeping `filter` equal to the addresses of this node's pods (tombstones included).
    pub async fn run(
        mut self,
        mut filter: impl AddressFilter,
        tx: Sender<Observation>,
        shutdown: impl Future<Output = ()>,
    ) {
        let on_this_node = watch_config().fields(&format!("spec.nodeName={}", self.node));
        let (services, services_writer) = reflector::store();
        let mut updates = stream::select_all([
            watcher(Api::<Pod>::all(self.client.clone()), on_this_node)
                .default_backoff()
                .map(|r| r.map_or_else(Update::Failed, |e| Update::Pod(Box::new(e))))
                .boxed(),
            watcher(
                Api::<EndpointSlice>::all(self.client.clone()),
                watch_config(),
            )
            .default_backoff()
            .map(|r| r.map_or_else(Update::Failed, |e| Update::Slice(Box::new(e))))
            .boxed(),
            watcher(Api::<Service>::all(self.client.clone()), watch_config())
                .default_backoff()
                .reflect(services_writer)
                .map(|r| r.map_or_else(Update::Failed, |_| Update::Service))
                .boxed(),
        ]);
        let mut pods = Tracked::<Pod, _>::new(PodWatch::new(self.node.clone()));
        let mut slices =
            Tracked::<EndpointSlice, _>::new(EndpointSliceWatch::new(self.node.clone()));
        let mut expiry = tokio::time::interval(Duration::from_secs(1));
        let mut frontends: HashSet<IpAddr> = HashSet::new();
        let mut capacity = CapacityWatch::default();
        tokio::pin!(shutdown);
        loop {
            let now = Timestamp::now();
            let mut changes = Changes::default();
            let observations = tokio::select! {
                () = &mut shutdown => return,
                _ = expiry.tick() => {
                    changes = self.lock().expire(now);
                    Vec::new()
                }
                update = updates.next() => match update {
                    None => return,
                    Some(Update::Pod(e)) => self.on_pods(&mut pods, *e, now, &mut changes),
                    Some(Update::Slice(e)) => self.on_slices(&mut slices, &mut capacity, *e, now),
                    Some(Update::Service) => {
                        frontend_changes(&mut frontends, &services.state(), &mut changes);
                        Vec::new()
                    }
                    Some(Update::Failed(e)) => {
                        self.gauges.metrics.watch_failed();
                        tracing::warn!("Kubernetes watch failed (retrying with backoff): {e}");
                        Vec::new()
                    }
                },
            };
            let already = self.resolve_netns(&mut filter, &changes);
            self.update_filter(&mut filter, &changes);
            self.gauges
                .api_synced
                .store(pods.synced && slices.synced, Ordering::Relaxed);
            for mut o in observations.into_iter().chain(already) {
                if let Some((ns, name)) = o
                    .service
                    .as_ref()
                    .and_then(ServiceRef::name)
                    .and_then(ServiceName::namespace_and_name)
                    && let Some(svc) = services.get(&reflector::ObjectRef::new(name).within(ns))
                    && let Some(ip) = svc.spec.as_ref().and_then(|s| s.cluster_ip.clone())
                {
                    o.details.api_mut().cluster_ip = Some(ip);
                }
                if tx.send(o).await.is_err() {
                    return;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PodIndex> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches the namespaces of pods found since the last call (their processes may start
    /// after the pod object appears: asked again on every update and every second until found)
    /// and stops watching those whose tombstone expired.
    /// Returns the listeners the pods found had already opened (`agent::listeners`).
    fn resolve_netns(
        &mut self,
        filter: &mut impl AddressFilter,
        changes: &Changes,
    ) -> Vec<Observation> {
        let mut already = Vec::new();
        let Some(ns) = self.netns.as_mut() else {
            return already;
        };
        for inum in &changes.unwatch_netns {
            if let Err(e) = filter.remove_netns(*inum) {
                tracing::warn!("{e}");
            }
            if let Some(gone) = &ns.gone {
                gone.forget(*inum);
            }
        }
        let unresolved = self
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unresolved();
        if unresolved.is_empty() {
            return already;
        }
        for (uid, found) in ns.resolver.find(&unresolved) {
            let now = Timestamp::now();
            let (created, pod) = {
                let mut index = self.pods.lock().unwrap_or_else(|p| p.into_inner());
                if !index.set_netns(&uid, found.inum, now, found.started) {
                    continue;
                }
                (index.created(&uid).unwrap_or(now), index.pod_ref(&uid))
            };
            if let Err(e) = filter.add_netns(found.inum) {
                tracing::warn!("{e}");
            }
            // Read after the probes watch the namespace: a listener opened since is the
            // kernel's to report (and one opened in between is reported twice, never missed).
            if let Some(proc_pid) = found.path.parent().and_then(|p| p.parent()) {
                already.extend(super::listeners::already_open(
                    proc_pid,
                    found.inum,
                    pod.as_ref(),
                    created,
                    Timestamp::now(),
                    &self.node,
                ));
            }
            if let Some(gone) = &ns.gone
                && let Err(e) = gone.watch(&found.path, found.inum)
            {
                tracing::debug!("netns_gone will not be reported for pod {uid}: {e:#}");
            }
        }
        already
    }

    fn update_filter(&self, filter: &mut impl AddressFilter, changes: &Changes) {
        for net in &changes.watch {
            if let Err(e) = filter.add(*net) {
                tracing::warn!("{e}");
            }
        }
        for net in &changes.unwatch {
            if let Err(e) = filter.remove(*net) {
                tracing::warn!("{e}");
            }
        }
        self.gauges
            .watched_addresses
            .store(filter.len() as u64, Ordering::Relaxed);
        self.gauges
            .watched_netns
            .store(filter.netns_len() as u64, Ordering::Relaxed);
        self.gauges
            .metrics
            .set_watched_addresses(filter.len() as u64);
        self.gauges
            .pods_known
            .store(self.lock().live() as u64, Ordering::Relaxed);
    }

    fn on_pods(
        &self,
        pods: &mut Tracked<Pod, PodWatch>,
        e: watcher::Event<Pod>,
        now: Timestamp,
        changes: &mut Changes,
    ) -> Vec<Observation> {
        let done = matches!(e, watcher::Event::InitDone);
        let mut out = Vec::new();
        let mut index = self.lock();
        for (kind, mut pod) in pods.changes(e) {
            let c = if kind == "DELETED" {
                // A pod deleted without our seeing its deletionTimestamp (a watch gap, a
                // forced delete) is still `pod_deleting`, now.
                if pod.metadata.deletion_timestamp.is_none() {
                    pod.metadata.deletion_timestamp = Some(Time(now));
                }
                index.delete(&pod, now)
            } else {
                index.apply(&pod, now)
            };
            changes.watch.extend(c.watch);
            changes.unwatch.extend(c.unwatch);
            if let Some(ev) = event::<_, kube_events::Pod>(kind, &pod) {
                out.extend(pods.converter.on_event(now, &ev));
            }
        }
        drop(index);
        pods.finish(done, &mut out);
        out
    }

    fn on_slices(
        &self,
        slices: &mut Tracked<EndpointSlice, EndpointSliceWatch>,
        capacity: &mut CapacityWatch,
        e: watcher::Event<EndpointSlice>,
        now: Timestamp,
    ) -> Vec<Observation> {
        let done = matches!(e, watcher::Event::InitDone);
        let mut out = Vec::new();
        for (kind, slice) in slices.changes(e) {
            // Every slice counts: a Service's capacity is all its endpoints, on any node.
            if let Some(dip) = capacity.slice(&slice, kind == "DELETED", &self.node.0, now) {
                self.gauges.metrics.capacity_dip(&dip);
            }
            // The EndpointSlice controller writes each endpoint's node: that, not the order in
            // which the pod and slice watches deliver, decides which agent reports it.
            let here = slice
                .endpoints
                .iter()
                .filter(|ep| ep.node_name.as_deref() == Some(self.node.0.as_str()))
                .flat_map(|ep| ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()));
            slices.mine.extend(here);
            if let Some(ev) = event::<_, kube_events::EndpointSlice>(kind, &slice) {
                out.extend(slices.converter.on_event(now, &ev));
            }
        }
        let index = self.lock();
        out.retain(|o| {
            o.ip.is_some_and(|ip| slices.mine.contains(&ip) || index.holds(ip))
        });
        drop(index);
        slices.finish(done, &mut out);
        out
    }
}
