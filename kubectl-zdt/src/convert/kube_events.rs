//! Kubernetes watch events → API-level observations (`pod_deleting`, `pod_ready`,
//! `endpoint_ready`, `endpoint_terminating`, `endpoint_removed`).
//!
//! Input is parsed watch events (`{"type": "MODIFIED", "object": {...}}`, what `?watch=1` and
//! kube-rs' watcher deliver) with the instant they were received; the observation time is that
//! receipt time, because the API's own fields have 1 s precision (`deletionTimestamp` is even
//! `now + grace period`). Stateful: a mark is emitted on the transition, once per pod.
//! The cluster agent feeds the same types from its watches; the tests feed recorded streams.

use std::collections::{BTreeMap, HashMap, HashSet};

use jiff::Timestamp;
use serde::Deserialize;

use crate::observation::{Kind, NodeName, Observation, PodRef, PodUid, ReadinessProbe, ServiceRef};

/// One watch event.
#[derive(Debug, Clone, Deserialize)]
pub struct WatchEvent<T> {
    #[serde(rename = "type")]
    pub kind: String,
    pub object: T,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub deletion_timestamp: Option<String>,
    pub deletion_grace_period_seconds: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Pod {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    pub node_name: Option<String>,
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub ports: Vec<serde_json::Value>,
    pub readiness_probe: Option<Probe>,
}

/// A container probe (`readinessProbe`): its handler and timing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Probe {
    pub tcp_socket: Option<ProbePort>,
    pub http_get: Option<ProbePort>,
    pub grpc: Option<ProbePort>,
    pub exec: Option<serde_json::Value>,
    pub initial_delay_seconds: Option<u64>,
    pub period_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProbePort {
    /// A number or the name of a container port.
    pub port: Option<serde_json::Value>,
    pub path: Option<String>,
}

/// The serving container's readiness probe as the observation stream carries it
/// (`readiness_probe` on `pod_ready`, docs/observations.md): `{"type": "none"}` when the
/// container has none. A named port is resolved to its number where the container declares it.
fn readiness_probe(c: &Container) -> ReadinessProbe {
    let Some(p) = &c.readiness_probe else {
        return ReadinessProbe {
            kind: "none".to_owned(),
            port: None,
            path: None,
            initial_delay_s: None,
            period_s: None,
        };
    };
    let (kind, handler) = match (&p.tcp_socket, &p.http_get, &p.grpc, &p.exec) {
        (Some(h), _, _, _) => ("tcp_socket", Some(h)),
        (_, Some(h), _, _) => ("http_get", Some(h)),
        (_, _, Some(h), _) => ("grpc", Some(h)),
        (_, _, _, Some(_)) => ("exec", None),
        _ => ("unknown", None),
    };
    let port = handler
        .and_then(|h| h.port.clone())
        .map(|port| match &port {
            serde_json::Value::String(name) => c
                .ports
                .iter()
                .find(|cp| cp.get("name").and_then(|n| n.as_str()) == Some(name))
                .and_then(|cp| cp.get("containerPort").cloned())
                .unwrap_or(port),
            _ => port,
        });
    ReadinessProbe {
        kind: kind.to_owned(),
        port,
        path: handler.and_then(|h| h.path.clone()),
        initial_delay_s: Some(p.initial_delay_seconds.unwrap_or(0)),
        period_s: Some(p.period_seconds.unwrap_or(10)),
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    pub conditions: Vec<Condition>,
    pub container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ContainerStatus {
    pub name: String,
    pub state: ContainerState,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ContainerState {
    pub terminated: Option<Terminated>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Terminated {
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EndpointSlice {
    pub metadata: ObjectMeta,
    pub endpoints: Option<Vec<Endpoint>>,
    pub ports: Option<Vec<EndpointPort>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Endpoint {
    pub addresses: Vec<String>,
    pub conditions: EndpointConditions,
    pub target_ref: Option<TargetRef>,
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
pub struct EndpointConditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TargetRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EndpointPort {
    pub port: Option<u16>,
    pub protocol: Option<String>,
}

/// The Deployment behind a pod: its ReplicaSet is named `<deployment>-<pod-template-hash>`.
fn workload(meta: &ObjectMeta) -> Option<String> {
    let owner = meta.owner_references.first()?;
    match owner.kind.as_str() {
        "ReplicaSet" => match meta.labels.get("pod-template-hash") {
            Some(hash) => owner
                .name
                .strip_suffix(&format!("-{hash}"))
                .map(|d| format!("deployment/{d}")),
            None => Some(format!("replicaset/{}", owner.name)),
        },
        "StatefulSet" | "DaemonSet" | "Job" => Some(format!(
            "{}/{}",
            owner.kind.to_ascii_lowercase(),
            owner.name
        )),
        _ => None,
    }
}

/// The container serving the Service: the first that declares ports, else the first.
fn serving_container(p: &Pod) -> Option<&Container> {
    p.spec
        .containers
        .iter()
        .find(|c| !c.ports.is_empty())
        .or(p.spec.containers.first())
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .conditions
        .iter()
        .any(|c| c.kind == "Ready" && c.status == "True")
}

/// When every container of the pod had terminated, as far as the API can tell: after the
/// latest `finishedAt` (whole seconds, so the exit is at or after it) and before `received`.
/// Stamped at the middle of that interval with half its width as uncertainty.
fn terminated_between(p: &Pod, received: Timestamp) -> Option<(Timestamp, u64)> {
    let statuses = &p.status.container_statuses;
    if statuses.is_empty() {
        return None;
    }
    let mut latest: Option<Timestamp> = None;
    for c in statuses {
        let finished: Timestamp = c
            .state
            .terminated
            .as_ref()?
            .finished_at
            .as_deref()?
            .parse()
            .ok()?;
        latest = Some(latest.map_or(finished, |l| l.max(finished)));
    }
    let from = latest?.as_nanosecond();
    let to = received.as_nanosecond();
    // A finishedAt after the receipt means the kubelet's clock is ahead of the observer's: keep
    // the receipt, with the 1 s of finishedAt's precision as uncertainty.
    if from > to {
        return Some((received, 1_000_000_000));
    }
    let mid = Timestamp::from_nanosecond(from + (to - from) / 2).ok()?;
    Some((mid, u64::try_from((to - from) / 2).ok()?))
}

/// Pod watch → `pod_ready` (first seen ready, claims the IP), `pod_deleting` (first seen with a
/// deletionTimestamp: T_delete) and `container_terminated` (every container terminated: an
/// upper bound of T_exit when no node agent saw the exit).
#[derive(Debug)]
pub struct PodWatch {
    observer: NodeName,
    ready: HashSet<String>,
    deleting: HashSet<String>,
    terminated: HashSet<String>,
    /// Each pod's last known address: on v1.28 (kubernetes#125370) the update that gives a
    /// deleted pod its final phase carries no `podIP`; it comes back in the next one.
    last_ip: std::collections::HashMap<String, std::net::IpAddr>,
}

impl PodWatch {
    /// `observer` is the node whose clock stamps the receipt times.
    pub fn new(observer: NodeName) -> Self {
        Self {
            observer,
            ready: HashSet::new(),
            deleting: HashSet::new(),
            terminated: HashSet::new(),
            last_ip: std::collections::HashMap::new(),
        }
    }

    pub fn on_event(&mut self, received: Timestamp, event: &WatchEvent<Pod>) -> Vec<Observation> {
        let p = &event.object;
        let m = &p.metadata;
        let mut out = Vec::new();
        let ip = match p.status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()) {
            Some(ip) => {
                self.last_ip.insert(m.uid.clone(), ip);
                Some(ip)
            }
            None => self.last_ip.get(&m.uid).copied(),
        };
        if event.kind == "DELETED" {
            self.last_ip.remove(&m.uid);
        }
        let base = |kind| {
            let mut o = Observation::new(kind, received, self.observer.clone());
            o.pod = Some(PodRef::new(&m.namespace, &m.name));
            o.pod_uid = Some(m.uid.as_str().into());
            o.ip = ip;
            o
        };
        if event.kind != "DELETED"
            && is_ready(p)
            && m.deletion_timestamp.is_none()
            && self.ready.insert(m.uid.clone())
        {
            let mut o = base(Kind::PodReady);
            let api = o.details.api_mut();
            if let Some(c) = serving_container(p) {
                api.container = Some(c.name.clone());
                api.readiness_probe = Some(readiness_probe(c));
            }
            api.workload = workload(m).map(Into::into);
            out.push(o);
        }
        if m.deletion_timestamp.is_some() && self.deleting.insert(m.uid.clone()) {
            let mut o = base(Kind::PodDeleting);
            let api = o.details.api_mut();
            api.grace_period_s = m.deletion_grace_period_seconds;
            api.workload = workload(m).map(Into::into);
            // The template the pod was made from: one rollout retires one template.
            api.template_hash = ["pod-template-hash", "controller-revision-hash"]
                .iter()
                .find_map(|l| m.labels.get(*l))
                .cloned();
            // kubectl-zdt's own pods (the traffic loop) are the instrument, not a rollout.
            if m.labels
                .get("app.kubernetes.io/part-of")
                .map(String::as_str)
                == Some("kubectl-zdt")
            {
                api.instrument = Some(true);
            }
            api.container = serving_container(p).map(|c| c.name.clone());
            api.pod_node = p.spec.node_name.clone();
            out.push(o);
        }
        if let Some((t, unc)) = terminated_between(p, received)
            && self.terminated.insert(m.uid.clone())
        {
            let mut o = base(Kind::ContainerTerminated);
            o.time = t;
            o.uncertainty_ns = Some(unc);
            out.push(o);
        }
        out
    }
}

/// What the watch last knew about one endpoint.
#[derive(Debug, Clone)]
struct Known {
    ip: Option<std::net::IpAddr>,
    pod: Option<String>,
    pod_uid: Option<String>,
    terminating: bool,
    ready: bool,
}

/// EndpointSlice watch → `endpoint_ready`, `endpoint_terminating` (T_ep_terminating) and
/// `endpoint_removed` (T_ep_removed), with the Service (`namespace/name`) and target port.
#[derive(Debug)]
pub struct EndpointSliceWatch {
    observer: NodeName,
    /// Per slice (namespace/name), its endpoints by target UID (or address without one).
    slices: HashMap<String, BTreeMap<String, Known>>,
}

impl EndpointSliceWatch {
    pub fn new(observer: NodeName) -> Self {
        Self {
            observer,
            slices: HashMap::new(),
        }
    }

    pub fn on_event(
        &mut self,
        received: Timestamp,
        event: &WatchEvent<EndpointSlice>,
    ) -> Vec<Observation> {
        let s = &event.object;
        let m = &s.metadata;
        let service = m
            .labels
            .get("kubernetes.io/service-name")
            .map(|svc| format!("{}/{svc}", m.namespace));
        let port = s
            .ports
            .iter()
            .flatten()
            .find(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
            .and_then(|p| p.port);
        let mut now: BTreeMap<String, Known> = BTreeMap::new();
        if event.kind != "DELETED" {
            for e in s.endpoints.iter().flatten() {
                let ip = e.addresses.first().and_then(|a| a.parse().ok());
                let key = e
                    .target_ref
                    .as_ref()
                    .map(|t| t.uid.clone())
                    .or_else(|| e.addresses.first().cloned())
                    .unwrap_or_default();
                now.insert(
                    key,
                    Known {
                        ip,
                        pod: e
                            .target_ref
                            .as_ref()
                            .map(|t| format!("{}/{}", t.namespace, t.name)),
                        pod_uid: e
                            .target_ref
                            .as_ref()
                            .map(|t| t.uid.clone())
                            .filter(|u| !u.is_empty()),
                        terminating: e.conditions.terminating == Some(true),
                        ready: e.conditions.ready == Some(true),
                    },
                );
            }
        }
        let slice_key = format!("{}/{}", m.namespace, m.name);
        let before = self.slices.remove(&slice_key).unwrap_or_default();
        let obs = |kind, k: &Known| {
            let mut o = Observation::new(kind, received, self.observer.clone());
            o.ip = k.ip;
            o.port = port;
            o.pod = k.pod.as_deref().map(PodRef::from);
            o.pod_uid = k.pod_uid.as_deref().map(PodUid::from);
            o.service = service.as_deref().map(ServiceRef::parse);
            o
        };
        let mut out = Vec::new();
        for (key, k) in &now {
            let prev = before.get(key);
            if k.ready && prev.is_none_or(|p| !p.ready) {
                out.push(obs(Kind::EndpointReady, k));
            }
            if k.terminating && prev.is_none_or(|p| !p.terminating) {
                out.push(obs(Kind::EndpointTerminating, k));
            }
        }
        for (key, k) in &before {
            if !now.contains_key(key) {
                out.push(obs(Kind::EndpointRemoved, k));
            }
        }
        if event.kind != "DELETED" {
            self.slices.insert(slice_key, now);
        }
        out
    }
}

/// A recorded watch line: `{"received_ns": <realtime ns>, "event": <watch event>}` (the
/// format of the kube-proxy-v1.36 fixtures).
#[derive(Debug, Clone, Deserialize)]
pub struct Recorded<T> {
    pub received_ns: i128,
    pub event: WatchEvent<T>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "line {line}: not a recorded watch event ({source}); expected {{\"received_ns\": N, \"event\": {{\"type\": …, \"object\": …}}}}"
    )]
    Line {
        line: usize,
        source: serde_json::Error,
    },
    #[error("line {line}: received_ns {ns} is not a time")]
    Time { line: usize, ns: i128 },
}

/// Parses a recorded watch stream into (receipt time, event) pairs.
pub fn read_recorded<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<Vec<(Timestamp, WatchEvent<T>)>, RecordError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let r: Recorded<T> = serde_json::from_str(l).map_err(|source| RecordError::Line {
                line: i + 1,
                source,
            })?;
            let t = Timestamp::from_nanosecond(r.received_ns).map_err(|_| RecordError::Time {
                line: i + 1,
                ns: r.received_ns,
            })?;
            Ok((t, r.event))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, pod: serde_json::Value) -> WatchEvent<Pod> {
        serde_json::from_value(serde_json::json!({"type": kind, "object": pod})).unwrap()
    }

    #[test]
    fn a_pod_turning_ready_says_its_serving_containers_readiness_probe() {
        let ready = |containers: serde_json::Value| {
            let mut watch = PodWatch::new(NodeName("vm".into()));
            let lines = watch.on_event(
                "2026-12-06T18:24:18Z".parse().unwrap(),
                &event(
                    "MODIFIED",
                    serde_json::json!({
                        "metadata": {"name": "web-1", "namespace": "default", "uid": "u1"},
                        "spec": {"containers": containers},
                        "status": {"podIP": "198.18.0.9",
                                   "conditions": [{"type": "Ready", "status": "True"}]},
                    }),
                ),
            );
            assert_eq!(lines[0].kind, Kind::PodReady);
            (
                lines[0].other_fields().get("container").cloned(),
                lines[0].other_fields().get("readiness_probe").cloned(),
            )
        };
        let (container, probe) = ready(serde_json::json!([
            {"name": "sidecar"},
            {"name": "web", "ports": [{"name": "http", "containerPort": 8080}],
             "readinessProbe": {"httpGet": {"port": "http", "path": "/healthz"},
                                "initialDelaySeconds": 2, "periodSeconds": 3}},
        ]));
        assert_eq!(container, Some(serde_json::json!("web")));
        assert_eq!(
            probe,
            Some(
                serde_json::json!({"type": "http_get", "port": 8080, "path": "/healthz",
                                    "initial_delay_s": 2, "period_s": 3})
            )
        );
        let (_, probe) =
            ready(serde_json::json!([{"name": "web", "ports": [{"containerPort": 8080}]}]));
        assert_eq!(probe, Some(serde_json::json!({"type": "none"})));
        let (_, probe) = ready(serde_json::json!([
            {"name": "web", "readinessProbe": {"exec": {"command": ["true"]}}}
        ]));
        assert_eq!(
            probe,
            Some(serde_json::json!({"type": "exec", "initial_delay_s": 0, "period_s": 10}))
        );
    }

    #[test]
    fn a_v1_28_final_phase_update_without_pod_ip_keeps_the_pods_last_address() {
        let meta = serde_json::json!({
            "name": "web-1", "namespace": "default", "uid": "u1",
            "deletionTimestamp": "2026-12-06T18:24:18Z", "deletionGracePeriodSeconds": 5,
        });
        let mut watch = PodWatch::new(NodeName("vm".into()));
        let t: Timestamp = "2026-12-06T18:24:18.9Z".parse().unwrap();
        let deleting = watch.on_event(
            t,
            &event(
                "MODIFIED",
                serde_json::json!({"metadata": meta, "status": {"podIP": "198.18.0.202"}}),
            ),
        );
        assert_eq!(deleting[0].kind, Kind::PodDeleting);
        // kubernetes#125370: the update with the final phase has no podIP.
        let final_phase = watch.on_event(
            t + jiff::SignedDuration::from_millis(200),
            &event(
                "MODIFIED",
                serde_json::json!({"metadata": meta, "status": {
                    "phase": "Succeeded",
                    "containerStatuses": [{"name": "web", "state": {"terminated": {
                        "finishedAt": "2026-12-06T18:24:19Z"}}}],
                }}),
            ),
        );
        assert_eq!(final_phase.len(), 1);
        assert_eq!(final_phase[0].kind, Kind::ContainerTerminated);
        assert_eq!(final_phase[0].ip, Some("198.18.0.202".parse().unwrap()));
    }
}
