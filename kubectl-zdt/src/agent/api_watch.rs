//! The agent's Kubernetes watches (kube-runtime `watcher`s composed as one stream): pods on its
//! own node, EndpointSlices and Services. The watcher resumes from the last resourceVersion
//! after a disconnect and relists after 410 Gone; every relist is diffed against the last known
//! state (`PodIndex::resync`, `EndpointIndex::resync`), so a deletion that happened while the
//! watch was down is still reported, once.

use std::{
    collections::BTreeSet,
    future::Future,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use futures::{StreamExt as _, stream};
use jiff::Timestamp;
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use tokio::sync::mpsc::Sender;

use super::{
    endpoints::EndpointIndex,
    filter::AddressFilter,
    pods::{Changes, PodIndex},
    serve::Gauges,
};
use crate::observation::{NodeName, Observation};

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

/// EndpointSlice state and the relist in progress.
struct Slices {
    index: EndpointIndex,
    relist: Option<BTreeSet<String>>,
}

impl Slices {
    fn on_event(
        &mut self,
        event: watcher::Event<EndpointSlice>,
        now: Timestamp,
        pods: &PodIndex,
    ) -> Vec<Observation> {
        let on_node = |ip| pods.holds(ip);
        match event {
            watcher::Event::Init => {
                self.relist = Some(BTreeSet::new());
                self.index.relisting = self.index.synced;
                Vec::new()
            }
            watcher::Event::InitApply(s) => {
                if let Some(seen) = self.relist.as_mut() {
                    seen.insert(EndpointIndex::key(&s));
                }
                self.index.apply(&s, now, &on_node)
            }
            watcher::Event::InitDone => {
                let seen = self.relist.take().unwrap_or_default();
                self.index.resync(&seen, now, &on_node)
            }
            watcher::Event::Apply(s) => self.index.apply(&s, now, &on_node),
            watcher::Event::Delete(s) => self.index.delete(&s, now, &on_node),
        }
    }
}

/// The watches and the state they keep.
pub struct ApiWatch {
    pub client: Client,
    pub node: NodeName,
    pub pods: Arc<Mutex<PodIndex>>,
    pub gauges: Arc<Gauges>,
}

impl ApiWatch {
    /// Watches until `shutdown` or until the receiver is gone, sending API observations to `tx`
    /// and keeping `filter` equal to the addresses of this node's pods (tombstones included).
    pub async fn run(
        self,
        mut filter: impl AddressFilter,
        tx: Sender<Observation>,
        shutdown: impl Future<Output = ()>,
    ) {
        let pods_api: Api<Pod> = Api::all(self.client.clone());
        let slices_api: Api<EndpointSlice> = Api::all(self.client.clone());
        let services_api: Api<Service> = Api::all(self.client.clone());
        let on_this_node =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.node));
        let (services, services_writer) = reflector::store();
        let mut updates = stream::select_all([
            watcher(pods_api, on_this_node)
                .default_backoff()
                .map(|r| r.map_or_else(Update::Failed, |e| Update::Pod(Box::new(e))))
                .boxed(),
            watcher(slices_api, watcher::Config::default())
                .default_backoff()
                .map(|r| r.map_or_else(Update::Failed, |e| Update::Slice(Box::new(e))))
                .boxed(),
            watcher(services_api, watcher::Config::default())
                .default_backoff()
                .reflect(services_writer)
                .map(|r| r.map_or_else(Update::Failed, |_| Update::Service))
                .boxed(),
        ]);
        let mut slices = Slices {
            index: EndpointIndex::new(self.node.clone()),
            relist: None,
        };
        let mut pod_relist: Option<Vec<String>> = None;
        let mut expiry = tokio::time::interval(Duration::from_secs(1));
        tokio::pin!(shutdown);
        loop {
            let now = Timestamp::now();
            let (changes, mut observations) = tokio::select! {
                () = &mut shutdown => return,
                _ = expiry.tick() => (self.lock().expire(now), Vec::new()),
                update = updates.next() => match update {
                    None => return,
                    Some(Update::Pod(event)) => (self.on_pod(*event, now, &mut pod_relist), Vec::new()),
                    Some(Update::Slice(event)) => {
                        let obs = slices.on_event(*event, now, &self.lock());
                        (Changes::default(), obs)
                    }
                    Some(Update::Service) => (Changes::default(), Vec::new()),
                    Some(Update::Failed(e)) => {
                        tracing::warn!("Kubernetes watch failed (retrying with backoff): {e}");
                        (Changes::default(), Vec::new())
                    }
                },
            };
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
            {
                let index = self.lock();
                self.gauges
                    .watched_addresses
                    .store(filter.len() as u64, Ordering::Relaxed);
                self.gauges
                    .pods_known
                    .store(index.len() as u64, Ordering::Relaxed);
                self.gauges
                    .api_synced
                    .store(index.synced && slices.index.synced, Ordering::Relaxed);
            }
            observations.extend(changes.observations);
            for mut o in observations {
                if let Some(service) = o.service.as_deref()
                    && let Some((ns, name)) = service.split_once('/')
                    && let Some(svc) = services.get(&reflector::ObjectRef::new(name).within(ns))
                    && let Some(ip) = svc.spec.as_ref().and_then(|s| s.cluster_ip.clone())
                {
                    o = o.with_extra("cluster_ip", ip);
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

    fn on_pod(
        &self,
        event: watcher::Event<Pod>,
        now: Timestamp,
        relist: &mut Option<Vec<String>>,
    ) -> Changes {
        let mut index = self.lock();
        match event {
            watcher::Event::Init => {
                *relist = Some(Vec::new());
                index.relisting = index.synced;
                Changes::default()
            }
            watcher::Event::InitApply(p) => {
                if let (Some(seen), Some(uid)) = (relist.as_mut(), p.metadata.uid.clone()) {
                    seen.push(uid);
                }
                index.apply(&p, now)
            }
            watcher::Event::InitDone => index.resync(&relist.take().unwrap_or_default(), now),
            watcher::Event::Apply(p) => index.apply(&p, now),
            watcher::Event::Delete(p) => index.delete(&p, now),
        }
    }
}
