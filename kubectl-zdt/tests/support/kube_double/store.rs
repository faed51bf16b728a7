//! The double's object store and event log: what list, get and watch read.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Mutex,
};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::apiserver::Call;

#[derive(Clone, Debug)]
pub(super) struct Stored {
    /// (group, resource) e.g. ("", "pods"), ("apps", "daemonsets").
    pub key: (String, String),
    pub object: Value,
}

#[derive(Clone, Debug)]
pub(super) struct Event {
    pub rv: u64,
    pub key: (String, String),
    pub kind: &'static str,
    pub object: Value,
}

#[derive(Default)]
pub(super) struct State {
    pub rv: u64,
    /// Events before this version are forgotten: a watch from an older version gets 410.
    pub compacted: u64,
    /// (group, resource, namespace, name) → object.
    pub objects: BTreeMap<(String, String, String, String), Stored>,
    pub log: Vec<Event>,
    pub calls: Vec<Call>,
    /// Pod name → where its port-forward connects.
    pub forwards: HashMap<String, SocketAddr>,
    pub logs: HashMap<String, String>,
    /// While set, every request is answered 503 (an API server restarting).
    pub down: bool,
    /// `gitVersion` of `GET /version`; `None`: v1.31.0.
    pub git_version: Option<String>,
    /// How many times `GET /version` was asked.
    pub version_requests: usize,
    /// Resource → the message an admission webhook denies its writes with.
    pub denials: HashMap<String, String>,
}

/// (group, plural) of an object from its apiVersion and kind.
pub fn resource_of(object: &Value) -> (String, String) {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let group = api_version
        .rsplit_once('/')
        .map(|(g, _)| g.to_owned())
        .unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default().to_lowercase();
    let plural = match kind.as_str() {
        "endpointslice" => "endpointslices".to_owned(),
        k if k.ends_with('s') => format!("{k}es"),
        k => format!("{k}s"),
    };
    (group, plural)
}

pub(super) fn kind_of(resource: &str) -> &'static str {
    match resource {
        "pods" => "Pod",
        "services" => "Service",
        "nodes" => "Node",
        "namespaces" => "Namespace",
        "endpointslices" => "EndpointSlice",
        "daemonsets" => "DaemonSet",
        "deployments" => "Deployment",
        "statefulsets" => "StatefulSet",
        "replicasets" => "ReplicaSet",
        "serviceaccounts" => "ServiceAccount",
        "clusterroles" => "ClusterRole",
        "clusterrolebindings" => "ClusterRoleBinding",
        "roles" => "Role",
        _ => "Unknown",
    }
}

pub(super) fn put(
    state: &Mutex<State>,
    events: &broadcast::Sender<Event>,
    key: (String, String),
    mut object: Value,
) -> u64 {
    let mut s = state.lock().unwrap();
    s.rv += 1;
    let rv = s.rv;
    let ns = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let id = (key.0.clone(), key.1.clone(), ns, name.clone());
    let existed = s.objects.contains_key(&id);
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    if object["metadata"]["uid"].is_null() {
        object["metadata"]["uid"] = json!(format!("uid-{}-{name}-{rv}", key.1));
    }
    if object["metadata"]["creationTimestamp"].is_null() {
        object["metadata"]["creationTimestamp"] = json!("2026-11-22T01:00:00Z");
    }
    s.objects.insert(
        id,
        Stored {
            key: key.clone(),
            object: object.clone(),
        },
    );
    let event = Event {
        rv,
        key,
        kind: if existed { "MODIFIED" } else { "ADDED" },
        object,
    };
    s.log.push(event.clone());
    let _ = events.send(event);
    rv
}

pub(super) fn remove(
    state: &Mutex<State>,
    events: &broadcast::Sender<Event>,
    key: (String, String),
    namespace: &str,
    name: &str,
) -> Option<Value> {
    let mut s = state.lock().unwrap();
    let id = (
        key.0.clone(),
        key.1.clone(),
        namespace.to_owned(),
        name.to_owned(),
    );
    let mut stored = s.objects.remove(&id)?;
    s.rv += 1;
    let rv = s.rv;
    stored.object["metadata"]["resourceVersion"] = json!(rv.to_string());
    let event = Event {
        rv,
        key,
        kind: "DELETED",
        object: stored.object.clone(),
    };
    s.log.push(event.clone());
    let _ = events.send(event);
    Some(stored.object)
}
