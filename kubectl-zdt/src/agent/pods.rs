//! Which pod an address belongs to, on this node, including pods that are gone: a deleted pod
//! stays as a tombstone for the whole rollout (`ttl`), so a refused SYN or a reset that the
//! kernel reports after the pod object vanished is still attributed to it. Its changes are
//! kernel filter updates; the API-level observations come from `correlate::k8s_watch`.

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
    first_seen: Timestamp,
    gone_at: Option<Timestamp>,
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

/// Pods on this node by UID, by address and by network namespace.
#[derive(Debug)]
pub struct PodIndex {
    ttl: Duration,
    by_uid: BTreeMap<String, Entry>,
    by_ip: HashMap<IpAddr, Vec<String>>,
    by_netns: HashMap<u32, String>,
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
            netns: None,
            first_seen: now,
            gone_at: None,
        });
        if !ips.is_empty() {
            entry.ips = ips;
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
                && self.by_netns.get(&inum) == Some(&uid)
            {
                self.by_netns.remove(&inum);
                changes.unwatch_netns.push(inum);
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

    /// Fills `pod`/`pod_uid` of a kernel observation from its address, or else from its
    /// network namespace (listeners on wildcard addresses, signals, execs, exits, netns_gone).
    pub fn attribute(&self, o: &mut Observation) {
        if o.pod.is_some() {
            return;
        }
        let by_ip = o.ip.and_then(|ip| self.lookup(ip, o.time));
        let by_netns = || {
            let inum = u32::try_from(o.extra.get("netns")?.as_u64()?).ok()?;
            Some(&self.by_uid.get(self.by_netns.get(&inum)?)?.pod)
        };
        if let Some(p) = by_ip.or_else(by_netns) {
            o.pod = Some(p.pod.clone());
            o.pod_uid = Some(p.uid.clone());
        }
    }

    /// Live pods with their own network (not hostNetwork) whose namespace is not known yet.
    pub fn unresolved(&self) -> Vec<String> {
        self.by_uid
            .iter()
            .filter(|(_, e)| e.netns.is_none() && e.gone_at.is_none() && !e.ips.is_empty())
            .map(|(uid, _)| uid.clone())
            .collect()
    }

    /// Records pod `uid`'s network namespace; false when the pod is unknown or already had it.
    pub fn set_netns(&mut self, uid: &str, inum: u32) -> bool {
        let Some(e) = self.by_uid.get_mut(uid) else {
            return false;
        };
        if e.netns == Some(inum) {
            return false;
        }
        e.netns = Some(inum);
        self.by_netns.insert(inum, uid.to_owned());
        true
    }

    /// Network namespaces known (tombstones included).
    pub fn netns_len(&self) -> usize {
        self.by_netns.len()
    }

    /// Pods known, tombstones included.
    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    /// Whether `ip` belongs to a pod on this node (live or tombstone).
    pub fn holds(&self, ip: IpAddr) -> bool {
        self.by_ip.contains_key(&ip)
    }
}
