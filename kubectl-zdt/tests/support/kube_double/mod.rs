//! Test doubles for the cluster tests: the scripted API server and the shipped RBAC rules.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the doubles"
)]

pub mod apiserver;
pub mod fixture;
mod portforward;
pub mod rbac;
mod request;
mod schema;
mod store;

/// A running, ready agent pod of the DaemonSet on `node`, as `kubectl zdt` finds agents.
pub fn agent_pod(node: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("zdt-agent-{node}"), "namespace": kubectl_zdt::cluster::NAMESPACE,
                     "labels": {"app.kubernetes.io/name": "zdt-agent"}},
        "spec": {"nodeName": node, "hostNetwork": true, "containers": [{"name": "agent"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    })
}
