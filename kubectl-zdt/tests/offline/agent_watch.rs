//! The agent's cluster-mode watches against the scripted API server (a test double), replaying
//! the pod and EndpointSlice watch streams a real v1.36 cluster wrote during a
//! `kubectl rollout restart` of `webfast` (tests/fixtures/kube-proxy-v1.36/), with a dropped
//! watch and a compacted history (410 Gone) in the middle of the rollout.

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use crate::support::kube_double::{
    apiserver::ApiServer,
    fixture::{play, recorded_events, split_recording},
    rbac,
};
use kubectl_zdt::{
    agent::{
        api_watch::{self, ApiWatch},
        pods::PodIndex,
        serve::Gauges,
    },
    kernel::filter::Recorded,
    observation::{Kind, NodeName, Observation},
};
use serde_json::Value;
use tokio::sync::mpsc;

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    wait_for(what, Duration::from_secs(15), cond).await;
}

async fn wait_for(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    for _ in 0..limit.as_millis() / 25 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

struct Running {
    filter: Arc<Mutex<Recorded>>,
    pods: Arc<Mutex<PodIndex>>,
    gauges: Arc<Gauges>,
    rx: mpsc::Receiver<Observation>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn start_agent(server: &ApiServer, ttl: Duration) -> Running {
    start_agent_with(server.client("agent"), ttl)
}

fn start_agent_with(client: kube::Client, ttl: Duration) -> Running {
    let filter = Arc::new(Mutex::new(Recorded::default()));
    let pods = Arc::new(Mutex::new(PodIndex::new(ttl)));
    let gauges = Arc::new(Gauges::default());
    let (tx, rx) = mpsc::channel(1024);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watch = ApiWatch {
        client,
        node: NodeName("vm".into()),
        pods: pods.clone(),
        gauges: gauges.clone(),
        netns: None,
    };
    tokio::spawn(watch.run(filter.clone(), tx, async move {
        let _ = stopped.await;
    }));
    Running {
        filter,
        pods,
        gauges,
        rx,
        _stop: stop,
    }
}

fn drain(rx: &mut mpsc::Receiver<Observation>) -> Vec<Observation> {
    let mut out = Vec::new();
    while let Ok(o) = rx.try_recv() {
        out.push(o);
    }
    out
}

fn summary(obs: &[Observation]) -> Vec<(Kind, String, String)> {
    let mut s: Vec<_> = obs
        .iter()
        .map(|o| {
            (
                o.kind,
                o.ip.map(|i| i.to_string()).unwrap_or_default(),
                o.pod.as_deref().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    s.sort();
    s
}

/// How the API server misbehaves during the replay.
#[derive(Clone, Copy)]
enum Blip {
    None,
    /// Every watch drops after this many changes; the history is kept, so the watchers resume
    /// from their last resourceVersion.
    Disconnect(usize),
    /// The API server goes down (every watch drops), the changes in this range happen, the
    /// history is compacted past them, then it is back: resuming gets 410 Gone and the
    /// watchers relist.
    GoneDuring(usize, usize),
}

fn lists(server: &ApiServer, resource: &str) -> usize {
    server
        .calls()
        .iter()
        .filter(|c| c.resource == resource && c.verb == "list")
        .count()
}

/// The rollout as the agent on node `vm` reports it.
async fn rollout(blip: Blip) -> (Vec<Observation>, Running, ApiServer) {
    let server = ApiServer::start().await;
    let (initial, events) = split_recording();
    for object in &initial {
        play(&server, "ADDED", object);
    }
    let mut agent = start_agent(&server, Duration::from_secs(600));
    let g = agent.gauges.clone();
    wait_until("the watches are synced", || {
        g.api_synced.load(Ordering::Relaxed)
    })
    .await;
    let mut seen = drain(&mut agent.rx);
    let mut i = 0;
    while i < events.len() {
        match blip {
            Blip::Disconnect(at) if at == i => server.disconnect_watches(),
            Blip::GoneDuring(from, to) if from == i => {
                server.set_down(true);
                server.disconnect_watches();
                for (_, kind, object) in &events[from..to] {
                    play(&server, kind, object);
                }
                server.compact();
                server.set_down(false);
                wait_until("both watchers relisted", || {
                    lists(&server, "pods") >= 2 && lists(&server, "endpointslices") >= 2
                })
                .await;
                i = to;
                continue;
            }
            _ => {}
        }
        let (_, kind, object) = &events[i];
        play(&server, kind, object);
        tokio::time::sleep(Duration::from_millis(5)).await;
        i += 1;
    }
    // The last recorded change is the removal of 10.244.0.46 from the slice.
    let done = |obs: &[Observation]| {
        obs.iter().any(|o| {
            o.kind == Kind::EndpointRemoved && o.ip == Some("10.244.0.46".parse().unwrap())
        }) && obs.iter().filter(|o| o.kind == Kind::PodDeleting).count() == 2
    };
    for _ in 0..200 {
        seen.extend(drain(&mut agent.rx));
        if done(&seen) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    seen.extend(drain(&mut agent.rx));
    (seen, agent, server)
}

fn expected() -> Vec<(Kind, String, String)> {
    let old_a = ("10.244.0.47", "default/webfast-7759c99476-mbbl4");
    let old_b = ("10.244.0.46", "default/webfast-7759c99476-2lcjd");
    let new_a = ("10.244.0.48", "default/webfast-5554fb959f-97tzf");
    let new_b = ("10.244.0.49", "default/webfast-5554fb959f-jcf48");
    let mut e: Vec<(Kind, String, String)> = [
        // The initial state, as first seen (the converter's semantics: ready pods claim their
        // address).
        (Kind::PodReady, old_a),
        (Kind::EndpointReady, old_a),
        (Kind::PodReady, old_b),
        (Kind::EndpointReady, old_b),
        (Kind::PodReady, new_a),
        (Kind::EndpointReady, new_a),
        (Kind::PodDeleting, old_a),
        (Kind::EndpointTerminating, old_a),
        (Kind::EndpointRemoved, old_a),
        (Kind::PodReady, new_b),
        (Kind::EndpointReady, new_b),
        (Kind::PodDeleting, old_b),
        (Kind::EndpointTerminating, old_b),
        (Kind::EndpointRemoved, old_b),
        // The API's container status: every container of the old pods terminated.
        (Kind::ContainerTerminated, old_a),
        (Kind::ContainerTerminated, old_b),
    ]
    .into_iter()
    .map(|(k, (ip, pod))| (k, ip.to_owned(), pod.to_owned()))
    .collect();
    e.sort();
    e
}

#[tokio::test]
async fn a_real_rollout_yields_each_api_mark_once_per_pod_and_feeds_the_kernel_filter() {
    let (seen, agent, server) = rollout(Blip::None).await;
    assert_eq!(summary(&seen), expected());
    let deleting = seen.iter().find(|o| o.kind == Kind::PodDeleting).unwrap();
    assert_eq!(deleting.node.0, "vm");
    let name = deleting.pod.as_deref().unwrap().split_once('/').unwrap().1;
    let uid = recorded_events()
        .into_iter()
        .find(|e| e.2["metadata"]["name"] == name)
        .map(|e| e.2["metadata"]["uid"].as_str().unwrap().to_owned());
    assert_eq!(deleting.pod_uid, uid.map(Into::into), "the real pod's UID");
    let terminating = seen
        .iter()
        .find(|o| o.kind == Kind::EndpointTerminating)
        .unwrap();
    assert_eq!(terminating.service, Some("default/webfast".into()));
    assert_eq!(terminating.port, Some(8080));

    // Deleted pods stay watched (tombstones) so late kernel events are still attributed.
    let watched: Vec<String> = agent
        .filter
        .lock()
        .unwrap()
        .addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        watched,
        [
            "10.244.0.46/32",
            "10.244.0.47/32",
            "10.244.0.48/32",
            "10.244.0.49/32"
        ]
    );
    let mut late = Observation::new(Kind::Refused, jiff::Timestamp::now(), NodeName("vm".into()));
    late.ip = Some("10.244.0.47".parse().unwrap());
    agent.pods.lock().unwrap().attribute(&mut late);
    assert_eq!(
        late.pod.as_deref(),
        Some("default/webfast-7759c99476-mbbl4")
    );

    // The agent only read, and only what its ClusterRole allows.
    rbac::assert_all_allowed("ClusterRole", "zdt-agent", &server.calls());
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_its_resource_version_and_loses_or_repeats_nothing() {
    let (seen, _agent, server) = rollout(Blip::Disconnect(9)).await;
    assert_eq!(summary(&seen), expected());
    assert_eq!(
        lists(&server, "pods"),
        1,
        "resumed by resourceVersion, no relist"
    );
    assert!(seen.iter().all(|o| o.details.api().seen.is_none()));
}

/// Index of the recorded change with this resourceVersion.
fn at_version(events: &[(u64, String, Value)], kind: &str, rv: &str) -> usize {
    events
        .iter()
        .position(|e| e.2["kind"] == kind && e.2["metadata"]["resourceVersion"] == rv)
        .unwrap()
}

#[tokio::test]
async fn after_410_gone_the_relist_reports_what_changed_during_the_gap_once_and_says_so() {
    // The gap spans the whole life of 10.244.0.47's "terminating" state (slice versions 2068
    // to 2087) and its pod's deletion (2064 and on): the relist can only reveal that the
    // endpoint is gone and the pod is deleting, marked `seen: "relist"` (their time is when
    // the agent found out, an upper bound).
    let (_, events) = split_recording();
    let from = at_version(&events, "Pod", "2064");
    let to = at_version(&events, "EndpointSlice", "2087") + 1;
    let (seen, _agent, server) = rollout(Blip::GoneDuring(from, to)).await;
    let mut want = expected();
    want.retain(|(k, ip, _)| !(*k == Kind::EndpointTerminating && ip == "10.244.0.47"));
    assert_eq!(summary(&seen), want);
    let relisted: Vec<(Kind, String)> = seen
        .iter()
        .filter(|o| o.details.api().seen.as_deref() == Some("relist"))
        .map(|o| (o.kind, o.ip.unwrap().to_string()))
        .collect();
    assert!(
        relisted.contains(&(Kind::EndpointRemoved, "10.244.0.47".to_owned())),
        "{relisted:?}"
    );
    assert!(
        relisted.contains(&(Kind::PodDeleting, "10.244.0.47".to_owned())),
        "{relisted:?}"
    );
    assert!(
        lists(&server, "pods") >= 2,
        "the pod watcher relisted after 410"
    );
}

/// Loads the recording's objects from before the rollout; returns the first pod it deletes.
fn before_the_rollout(server: &ApiServer) -> String {
    let (initial, events) = split_recording();
    for object in &initial {
        play(server, "ADDED", object);
    }
    events
        .iter()
        .find(|e| e.1 == "DELETED")
        .map(|e| e.2["metadata"]["name"].as_str().unwrap().to_owned())
        .unwrap()
}

#[tokio::test]
async fn a_tombstone_expires_and_its_address_leaves_the_filter() {
    let server = ApiServer::start().await;
    let gone = before_the_rollout(&server);
    let agent = start_agent(&server, Duration::from_millis(500));
    let f = agent.filter.clone();
    wait_until("the old pods are watched", || {
        f.lock().unwrap().addresses.len() == 2
    })
    .await;
    server.remove("", "pods", "default", &gone);
    wait_until("the tombstone expired", || {
        !f.lock()
            .unwrap()
            .addresses
            .contains(&"10.244.0.47/32".parse().unwrap())
    })
    .await;
    assert!(
        f.lock()
            .unwrap()
            .addresses
            .contains(&"10.244.0.46/32".parse().unwrap())
    );
}

/// Clients of a Service dial its ClusterIP, and their kernel reports a failure (refused, reset,
/// timed out, given up) against that address: the filter must hold the Services' ClusterIPs
/// (both families) and external IPs, or no client on the node is ever seen fail. On a real
/// cluster TIMEOUT stayed 0 while the node's client saw 75-125 timeouts per rollout.
#[tokio::test]
async fn the_filter_holds_every_services_frontend_addresses_while_the_service_exists() {
    let server = ApiServer::start().await;
    server.put(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "uid": "svc-1"},
        "spec": {"clusterIP": "198.19.0.220", "clusterIPs": ["198.19.0.220", "fd00:19::dc"],
                 "externalIPs": ["198.19.1.5"], "ports": [{"port": 80}]},
    }));
    server.put(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "headless", "namespace": "default", "uid": "svc-2"},
        "spec": {"clusterIP": "None", "ports": [{"port": 80}]},
    }));
    let agent = start_agent(&server, Duration::from_secs(60));
    let f = agent.filter.clone();
    let has = |net: &str| f.lock().unwrap().addresses.contains(&net.parse().unwrap());
    wait_until("the Service's frontends are watched", || {
        has("198.19.0.220/32") && has("fd00:19::dc/128") && has("198.19.1.5/32")
    })
    .await;
    assert_eq!(
        f.lock().unwrap().addresses.len(),
        3,
        "a headless Service has none"
    );
    server.remove("", "services", "default", "web");
    wait_until("the deleted Service's frontends are not", || {
        f.lock().unwrap().addresses.is_empty()
    })
    .await;
}

/// A watch whose connection died silently (the node's conntrack entry for the API server's
/// ClusterIP flushed: no FIN, no RST, nothing more) must not leave the agent blind. On a real
/// node, `conntrack -F` did: the agent's watches stopped delivering and every later rollout
/// lost its deletions and endpoint changes for kube's default 290 s watch and 295 s read
/// timeouts. The agent asks for `WATCH_TIMEOUT` watches and its client gives up on a silent
/// connection after `API_READ_TIMEOUT` (each bounds the stall: the test fails only without both).
#[tokio::test]
async fn a_watch_whose_connection_went_silent_resumes_after_the_read_timeout() {
    let server = ApiServer::start().await;
    let gone = before_the_rollout(&server);
    let client = kube::Client::try_from(api_watch::client_config(server.config("agent"))).unwrap();
    let mut agent = start_agent_with(client, Duration::from_secs(60));
    let f = agent.filter.clone();
    wait_until("the old pods are watched", || {
        f.lock().unwrap().addresses.len() == 2
    })
    .await;
    wait_until("the three watches are open", || {
        server.calls().iter().filter(|c| c.verb == "watch").count() == 3
    })
    .await;
    drain(&mut agent.rx);
    server.stall_watches();
    server.remove("", "pods", "default", &gone);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s, rx) = (seen.clone(), Arc::new(Mutex::new(agent.rx)));
    wait_for(
        "the deletion is reported after the stall",
        api_watch::API_READ_TIMEOUT * 2,
        || {
            s.lock().unwrap().extend(drain(&mut rx.lock().unwrap()));
            s.lock().unwrap().iter().any(|o| {
                o.kind == Kind::PodDeleting && o.pod.as_deref().is_some_and(|p| p.ends_with(&gone))
            })
        },
    )
    .await;
}
