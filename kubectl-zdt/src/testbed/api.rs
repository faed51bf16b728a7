//! The API server's side of a testbed rollout: the lines a cluster's watches give (a pod ready
//! or deleted, its endpoint ready, terminating or removed, the rollout's start with the
//! workload's strategy), stamped with the instant the testbed acted, and the agent's pod index
//! that files the kernel's lines under pods by address and network namespace, with the
//! kubelet's probes tagged as the agent does in cluster mode.

use std::{net::IpAddr, time::Duration};

use jiff::Timestamp;

use super::{kube_proxy::ServicePort, netns::Netns, node::PodHandle};
use crate::{
    agent::{pods::PodIndex, probes::KubeletProbes},
    observation::{Kind, NodeName, Observation},
};

/// The API's lines about one workload's pods, and the index of those pods.
pub struct Api {
    pub node: NodeName,
    pub workload: String,
    pub svc: ServicePort,
    /// The port the Service sends to on each pod.
    pub target_port: u16,
    index: Option<PodIndex>,
    pub lines: Vec<Observation>,
}

impl Api {
    pub fn new(workload: &str, svc: ServicePort, target_port: u16) -> Self {
        Self {
            node: NodeName(crate::agent::hostname()),
            workload: workload.to_owned(),
            svc,
            target_port,
            index: Some(PodIndex::new(Duration::from_secs(600))),
            lines: Vec::new(),
        }
    }

    fn uid(name: &str) -> String {
        format!("uid-{name}")
    }

    fn index(&mut self) -> &mut PodIndex {
        self.index
            .get_or_insert_with(|| PodIndex::new(Duration::from_secs(600)))
    }

    /// Makes `name` (a pod's API name, `<deployment>-<hash>-<5 chars>`) known to the index at
    /// `ip` in network namespace `ns`, with the pod spec's `containers[0]` fields `container`
    /// (e.g. a `readinessProbe`), as the agent's watch and `/proc` scan find it.
    pub fn known(&mut self, name: &str, ip: IpAddr, ns: &Netns, container: serde_json::Value) {
        let uid = Self::uid(name);
        let now = Timestamp::now();
        let mut c = serde_json::json!({"name": "app"});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), container.as_object()) {
            c.extend(extra.clone());
        }
        let object = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": uid},
            "spec": {"containers": [c]},
            "status": {"podIPs": [{"ip": ip.to_string()}]},
        }))
        .expect("a valid pod object");
        let inum = std::fs::metadata(ns.path())
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .expect("the namespace's bind mount");
        let index = self.index();
        index.apply(&object, now);
        assert!(index.set_netns(&uid, u32::try_from(inum).unwrap_or(u32::MAX), now, None));
    }

    /// A line of the API about pod `name` at `at`.
    pub fn line(&self, kind: Kind, name: &str, ip: IpAddr, at: Timestamp) -> Observation {
        let mut o = Observation::new(kind, at, self.node.clone());
        o.pod = Some(format!("default/{name}").into());
        o.pod_uid = Some(Self::uid(name).into());
        o.ip = Some(ip);
        o.with_extra("workload", self.workload.as_str())
    }

    /// Records `kind` about `pod` now; endpoint lines name the Service and its target port.
    pub fn record(&mut self, kind: Kind, pod: &PodHandle) -> Timestamp {
        let at = Timestamp::now();
        let mut o = self.line(kind, &pod.name, IpAddr::from(pod.ip), at);
        if matches!(
            kind,
            Kind::EndpointReady | Kind::EndpointTerminating | Kind::EndpointRemoved
        ) {
            o.port = Some(self.target_port);
            o.service = Some(self.svc.name.as_str().into());
        }
        if kind == Kind::PodDeleting {
            o = o.with_extra("grace_period_s", 30);
        }
        self.lines.push(o);
        at
    }

    /// The `rollout_start` line `trace` writes: the workload's replicas and strategy.
    pub fn rollout_start(
        &mut self,
        replicas: u64,
        max_unavailable: serde_json::Value,
        max_surge: serde_json::Value,
    ) {
        let o = Observation::new(Kind::RolloutStart, Timestamp::now(), self.node.clone())
            .with_extra("namespace", "default")
            .with_extra("workload", self.workload.as_str())
            .with_extra("replicas", replicas)
            .with_extra("max_unavailable", max_unavailable)
            .with_extra("max_surge", max_surge);
        self.lines.push(o);
    }

    /// The agent's lines filed under pods by the index, the kubelet's probes tagged by the
    /// node's own addresses (read in `node`, where the kubelet runs), then the API's lines.
    pub fn attribute(&mut self, node: &Netns, mut obs: Vec<Observation>) -> Vec<Observation> {
        obs.sort_by_key(|o| o.time);
        let index = self.index.take().expect("the pod index");
        let (mut obs, index) = node
            .run_in(move || {
                let mut index = index;
                let mut probes = KubeletProbes::new();
                for o in &mut obs {
                    index.attribute(o);
                    probes.tag(o, &index);
                }
                (obs, index)
            })
            .expect("the node's namespace");
        self.index = Some(index);
        obs.extend(self.lines.iter().cloned());
        obs
    }
}
