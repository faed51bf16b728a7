//! The real rollout recorded on a v1.36 cluster (tests/fixtures/kube-proxy-v1.36/
//! rollout-restart-nftables-fast-exit): `webfast`, 2 replicas on node `vm`, PID 1 exits at
//! SIGTERM, no preStop.

use std::collections::BTreeSet;

use serde_json::Value;

use super::apiserver::ApiServer;

pub const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/kube-proxy-v1.36/rollout-restart-nftables-fast-exit"
);

/// (received_ns, type, object) of both streams, in the order the real host received them.
pub fn recorded_events() -> Vec<(u64, String, Value)> {
    let mut events = Vec::new();
    for file in ["pods-watch.jsonl", "endpointslices-watch.jsonl"] {
        let text = std::fs::read_to_string(format!("{FIXTURE}/{file}")).unwrap();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            events.push((
                v["received_ns"].as_u64().unwrap(),
                v["event"]["type"].as_str().unwrap().to_owned(),
                v["event"]["object"].clone(),
            ));
        }
    }
    events.sort_by_key(|e| e.0);
    events
}

/// The recording's initial state (each stream's leading ADDED events: what its initial list
/// returned) and the changes that followed.
pub fn split_recording() -> (Vec<Value>, Vec<(u64, String, Value)>) {
    let events = recorded_events();
    let mut initial = Vec::new();
    let mut rest = Vec::new();
    let mut changed_kinds = BTreeSet::new();
    for e in events {
        let kind = e.2["kind"].as_str().unwrap_or_default().to_owned();
        if e.1 == "ADDED" && !changed_kinds.contains(&kind) {
            initial.push(e.2);
        } else {
            changed_kinds.insert(kind);
            rest.push(e);
        }
    }
    (initial, rest)
}

pub fn play(server: &ApiServer, kind: &str, object: &Value) {
    let m = &object["metadata"];
    if kind == "DELETED" {
        let group = if object["kind"] == "Pod" {
            ""
        } else {
            "discovery.k8s.io"
        };
        let resource = if object["kind"] == "Pod" {
            "pods"
        } else {
            "endpointslices"
        };
        server.remove(
            group,
            resource,
            m["namespace"].as_str().unwrap(),
            m["name"].as_str().unwrap(),
        );
    } else {
        server.put(object.clone());
    }
}

/// The client's log during that rollout (2560 ok, 12 ECONNREFUSED, 1 ETIMEDOUT).
pub fn client_log() -> String {
    std::fs::read_to_string(format!("{FIXTURE}/client-requests.jsonl")).unwrap()
}
