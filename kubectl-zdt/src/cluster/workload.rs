//! The workload `trace` follows: `deployment/NAME`, `statefulset/NAME` or `daemonset/NAME`,
//! the Services that select its pods, and when its rollout is complete.

use std::{collections::BTreeMap, fmt, str::FromStr};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    core::v1::Service,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject},
};
use serde_json::Value;

use super::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// The workload a command acts on, `kind/name` as given on the command line (checked: a kind
/// `trace` follows). Its text is what lines carry as their `workload`
/// ([`crate::observation::WorkloadRef`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadTarget {
    pub kind: WorkloadKind,
    pub name: String,
}

impl FromStr for WorkloadTarget {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (kind, name) = crate::observation::split_name(s).ok_or_else(|| {
            format!(
                "{s:?}: name the workload as deployment/NAME, statefulset/NAME or daemonset/NAME"
            )
        })?;
        let kind = match kind.to_ascii_lowercase().as_str() {
            "deployment" | "deployments" | "deploy" => WorkloadKind::Deployment,
            "statefulset" | "statefulsets" | "sts" => WorkloadKind::StatefulSet,
            "daemonset" | "daemonsets" | "ds" => WorkloadKind::DaemonSet,
            other => {
                return Err(format!(
                    "{other:?} is not a workload kind trace follows: use deployment, statefulset or daemonset"
                ));
            }
        };
        if name.is_empty() {
            return Err(format!("{s:?}: the workload name is missing"));
        }
        Ok(Self {
            kind,
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for WorkloadTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
            WorkloadKind::DaemonSet => "daemonset",
        };
        write!(f, "{kind}/{}", self.name)
    }
}

impl From<&WorkloadTarget> for crate::observation::WorkloadRef {
    fn from(w: &WorkloadTarget) -> Self {
        w.to_string().into()
    }
}

impl WorkloadTarget {
    pub fn resource(&self) -> ApiResource {
        match self.kind {
            WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
            WorkloadKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
            WorkloadKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
        }
    }

    pub fn api(&self, client: &Client, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), namespace, &self.resource())
    }

    /// The workload, or [`Error::WorkloadNotFound`].
    pub async fn get(&self, client: &Client, namespace: &str) -> Result<DynamicObject> {
        match self.api(client, namespace).get(&self.name).await {
            Ok(o) => Ok(o),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::WorkloadNotFound {
                workload: self.to_string(),
                namespace: namespace.to_owned(),
            }),
            Err(e) => Err(Error::api(format!("get {self} -n {namespace}"))(e)),
        }
    }
}

fn labels(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The labels of the workload's pods.
pub fn pod_labels(workload: &DynamicObject) -> BTreeMap<String, String> {
    labels(workload.data.pointer("/spec/template/metadata/labels"))
}

/// The workload's pod selector as a label selector string (`matchLabels` only).
pub fn selector(workload: &DynamicObject) -> String {
    labels(workload.data.pointer("/spec/selector/matchLabels"))
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Services whose selector matches the workload's pod labels.
pub async fn services(
    client: &Client,
    namespace: &str,
    workload: &WorkloadTarget,
    pod_labels: &BTreeMap<String, String>,
) -> Result<Vec<Service>> {
    let all = Api::<Service>::namespaced(client.clone(), namespace)
        .list(&Default::default())
        .await
        .map_err(Error::api(format!("list services -n {namespace}")))?;
    let selecting: Vec<Service> = all
        .items
        .into_iter()
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|sel| {
                    !sel.is_empty() && sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
                })
        })
        .collect();
    if selecting.is_empty() {
        return Err(Error::NoService {
            workload: workload.to_string(),
            namespace: namespace.to_owned(),
            labels: pod_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        });
    }
    Ok(selecting)
}

fn int(o: &DynamicObject, pointer: &str) -> i64 {
    o.data.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// The `rollout_start` line `trace` writes when it starts: the replicas the workload asks for
/// and its rolling-update settings (docs/observations.md), which the report's capacity is
/// judged against.
pub fn rollout_start(
    o: &DynamicObject,
    workload: &WorkloadTarget,
    namespace: &str,
    at: jiff::Timestamp,
) -> crate::observation::Observation {
    let mut line = crate::observation::Observation::new(
        crate::observation::Kind::RolloutStart,
        at,
        crate::observation::NodeName("kubectl-zdt".to_owned()),
    );
    let api = line.details.api_mut();
    api.workload = Some(workload.into());
    api.namespace = Some(namespace.to_owned());
    let strategy = match workload.kind {
        WorkloadKind::Deployment => "/spec/strategy",
        WorkloadKind::StatefulSet | WorkloadKind::DaemonSet => "/spec/updateStrategy",
    };
    let replicas = match workload.kind {
        WorkloadKind::DaemonSet => o.data.pointer("/status/desiredNumberScheduled"),
        _ => o.data.pointer("/spec/replicas"),
    };
    api.replicas = replicas.and_then(Value::as_u64);
    api.strategy = o
        .data
        .pointer(&format!("{strategy}/type"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let bound = |field: &str| {
        o.data
            .pointer(&format!("{strategy}/rollingUpdate/{field}"))
            .cloned()
    };
    api.max_unavailable = bound("maxUnavailable");
    api.max_surge = bound("maxSurge");
    line
}

/// Rollout progress as `kubectl rollout status` judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub desired: i64,
    pub updated: i64,
    pub available: i64,
    /// The controller has seen the latest spec.
    pub observed: bool,
}

impl Progress {
    pub fn of(kind: WorkloadKind, o: &DynamicObject) -> Self {
        let generation = o.metadata.generation.unwrap_or(0);
        let observed = int(o, "/status/observedGeneration") >= generation;
        match kind {
            WorkloadKind::Deployment => Self {
                desired: int(o, "/spec/replicas"),
                updated: int(o, "/status/updatedReplicas"),
                available: int(o, "/status/availableReplicas")
                    .min(int(o, "/status/replicas").max(0)),
                observed,
            },
            WorkloadKind::StatefulSet => Self {
                desired: int(o, "/spec/replicas"),
                updated: if o.data.pointer("/status/currentRevision")
                    == o.data.pointer("/status/updateRevision")
                {
                    int(o, "/status/updatedReplicas")
                } else {
                    int(o, "/status/updatedReplicas").min(int(o, "/spec/replicas") - 1)
                },
                available: int(o, "/status/availableReplicas"),
                observed,
            },
            WorkloadKind::DaemonSet => Self {
                desired: int(o, "/status/desiredNumberScheduled"),
                updated: int(o, "/status/updatedNumberScheduled"),
                available: int(o, "/status/numberAvailable"),
                observed,
            },
        }
    }

    /// Every replica updated and available (and, for Deployments, no old replica left:
    /// `status.replicas` counts old and new).
    pub fn complete(&self, kind: WorkloadKind, o: &DynamicObject) -> bool {
        let no_old = kind != WorkloadKind::Deployment || int(o, "/status/replicas") == self.desired;
        self.observed && self.updated >= self.desired && self.available >= self.desired && no_old
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(generation: i64, status: Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "generation": generation},
            "spec": {"replicas": 2}, "status": status
        }))
        .unwrap()
    }

    #[test]
    fn the_rollout_start_line_says_the_replicas_and_the_rolling_update_settings() {
        let o: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"replicas": 3, "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}}},
        }))
        .unwrap();
        let w: WorkloadTarget = "deployment/web".parse().unwrap();
        let line = rollout_start(&o, &w, "shop", jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(line.kind, crate::observation::Kind::RolloutStart);
        let extra = serde_json::Value::Object(line.other_fields());
        assert_eq!(
            extra,
            serde_json::json!({"workload": "deployment/web", "namespace": "shop", "replicas": 3,
                               "strategy": "RollingUpdate", "max_unavailable": "25%", "max_surge": 1})
        );
    }

    #[test]
    fn a_deployment_is_complete_only_once_its_old_replicas_are_gone() {
        let kind = WorkloadKind::Deployment;
        let rolling = deployment(
            2,
            serde_json::json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert!(
            !Progress::of(kind, &rolling).complete(kind, &rolling),
            "an old replica remains"
        );
        let stale = deployment(
            3,
            serde_json::json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert!(
            !Progress::of(kind, &stale).complete(kind, &stale),
            "the controller has not seen generation 3"
        );
        let done = deployment(
            2,
            serde_json::json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert!(Progress::of(kind, &done).complete(kind, &done));
    }
}
