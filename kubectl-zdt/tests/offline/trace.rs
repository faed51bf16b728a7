//! `kubectl zdt trace deployment/webfast --restart --traffic 50` against the scripted API
//! server (a test double) replaying the real fast-exit rollout of the v1.36 fixture, with a
//! node agent for node `vm` (its API watches, journal and 127.0.0.1 endpoint; no eBPF here)
//! reached through the double's port-forward, and the traffic pod's log being the real
//! client's log of that rollout.

use crate::support::kube_double;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::support::kube_double::{
    apiserver::ApiServer,
    fixture::{client_log, play, split_recording},
    rbac,
};
use kubectl_zdt::{
    agent::{
        api_watch::ApiWatch,
        backlog::Backlog,
        pods::PodIndex,
        serve::{AgentServer, Gauges},
    },
    cluster::{
        self, NAMESPACE,
        connect::KubeArgs,
        trace::{self, TraceArgs},
        workload::WorkloadTarget,
    },
    observation::{Kind, NodeName},
    report::Format,
};
use serde_json::{Value, json};

fn deployment(generation: i64, observed: i64, updated: i64, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "webfast", "namespace": "default", "generation": generation},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "webfast"}},
                 "template": {"metadata": {"labels": {"app": "webfast"}},
                              "spec": {"containers": [{"name": "httpd", "image": "busybox"}]}}},
        "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated,
                   "availableReplicas": 2, "readyReplicas": 2}
    })
}

fn cluster_objects(server: &ApiServer) {
    server.put(deployment(1, 1, 2, 2));
    server.put(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "webfast", "namespace": "default"},
        "spec": {"selector": {"app": "webfast"}, "clusterIP": "10.96.138.224",
                 "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    }));
    server.put(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "zdt-agent", "namespace": NAMESPACE},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "zdt-agent"}},
                 "template": {"metadata": {"labels": {"app.kubernetes.io/name": "zdt-agent"}},
                              "spec": {"containers": [{"name": "agent", "image": "registry.local/zdt:e2e-1"}]}}}
    }));
    server.put(kube_double::agent_pod("vm"));
}

/// When the agent marked `pod`'s deletion (`pod_deleting`), waiting for its journal to have it.
async fn deletion_seen(journal: &Backlog, pod: &str) -> jiff::Timestamp {
    for _ in 0..1000 {
        let mark = journal.read(0, usize::MAX).lines.iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["kind"] == "pod_deleting" && v["pod"] == pod)
                .then(|| v["time"].as_str()?.parse().ok())
                .flatten()
        });
        if let Some(t) = mark {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the agent never marked {pod}'s deletion");
}

/// The node agent of node `vm` minus its kernel probes; its in-memory journal.
async fn start_agent(server: &ApiServer) -> Arc<Backlog> {
    let journal = Backlog::new(10_000);
    let gauges = Arc::new(Gauges::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    server.forward("zdt-agent-vm", listener.local_addr().unwrap());
    let endpoint = AgentServer {
        node: NodeName("vm".into()),
        journal: journal.clone(),
        gauges: gauges.clone(),
    };
    tokio::spawn(endpoint.serve(listener));
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let watch = ApiWatch {
        client: server.client("agent"),
        node: NodeName("vm".into()),
        pods: Arc::new(Mutex::new(PodIndex::new(Duration::from_secs(600)))),
        gauges,
        netns: None,
    };
    let filter = kubectl_zdt::kernel::filter::Recorded::default();
    tokio::spawn(watch.run(filter, tx, std::future::pending()));
    let pushed = journal.clone();
    tokio::spawn(async move {
        while let Some(o) = rx.recv().await {
            pushed.push(&o);
        }
    });
    journal
}

/// A traffic pod that gave up early: a few results, then its own error, exit code 1.
const FAILED_TRAFFIC_LOG: &str =
    "{\"ok\":3}\nkubectl-zdt: failed to connect to 10.96.138.224:80: Network is unreachable\n";

/// Plays the Deployment controller, the kubelets and the EndpointSlice controller: on the
/// restart, the recorded rollout; the traffic pod runs and logs what the real client logged
/// (or, with `traffic_fails`, [`FAILED_TRAFFIC_LOG`] and exits with 1).
fn script_cluster(server: &Arc<ApiServer>, journal: &Arc<Backlog>, traffic_fails: bool) {
    let server = server.clone();
    let journal = journal.clone();
    let mut changes = server.changes();
    tokio::spawn(async move {
        while let Ok(change) = changes.recv().await {
            let restarted = change.resource == "deployments"
                && change.object["spec"]["template"]["metadata"]["annotations"]
                    ["kubectl.kubernetes.io/restartedAt"]
                    .is_string();
            if change.resource == "pods"
                && change.kind == "ADDED"
                && change.object["metadata"]["name"] == "zdt-traffic-webfast"
            {
                let mut pod = change.object.clone();
                pod["spec"]["nodeName"] = json!("vm");
                pod["status"] = json!({"phase": "Running"});
                server.put(pod);
            }
            if restarted && change.object["metadata"]["generation"] == 1 {
                let (server, journal) = (server.clone(), journal.clone());
                let mut d = change.object.clone();
                tokio::spawn(async move {
                    d["metadata"]["generation"] = json!(2);
                    server.put(d.clone());
                    let (_, events) = split_recording();
                    let start = std::time::Instant::now();
                    for (received, kind, object) in &events {
                        // At the recorded pace, so the client's failures fall where they did.
                        let due = Duration::from_nanos(received - events[0].0);
                        tokio::time::sleep(due.saturating_sub(start.elapsed())).await;
                        play(&server, kind, object);
                    }
                    // The client's log, moved to the replay's time as the agent saw it: the
                    // first refusal came 1.3 ms after the recorder saw mbbl4's deletion, so the
                    // lines keep their distance to the agent's own mark of that deletion (a
                    // loaded machine delivers watch events late, and the agent stamps them on
                    // arrival).
                    let (recorded, _, _) = events
                        .iter()
                        .find(|(_, _, o)| {
                            o["metadata"]["name"] == "webfast-7759c99476-mbbl4"
                                && o["metadata"]["deletionTimestamp"].is_string()
                        })
                        .unwrap();
                    let seen = deletion_seen(&journal, "default/webfast-7759c99476-mbbl4").await;
                    let shift = seen.as_nanosecond() - i128::from(*recorded);
                    let log: String = client_log()
                        .lines()
                        .map(|l| {
                            let mut v: Value = serde_json::from_str(l).unwrap();
                            if let Some(t) = v["time_ns"].as_i64() {
                                v["time_ns"] = json!(i128::from(t) + shift);
                            }
                            v.to_string() + "\n"
                        })
                        .collect();
                    if traffic_fails {
                        server.set_log("zdt-traffic-webfast", FAILED_TRAFFIC_LOG);
                        let mut pod = server
                            .get("", "pods", "default", "zdt-traffic-webfast")
                            .unwrap();
                        pod["status"] = json!({"phase": "Failed", "containerStatuses": [{
                            "name": "traffic", "ready": false, "restartCount": 0,
                            "image": "zdt", "imageID": "",
                            "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]});
                        server.put(pod);
                    } else {
                        server.set_log("zdt-traffic-webfast", &log);
                    }
                    let mut done = deployment(2, 2, 2, 2);
                    done["spec"] = d["spec"].clone();
                    server.put(done);
                });
            }
        }
    });
}

fn args(restart: bool, traffic: Option<u32>, timeout: Duration) -> TraceArgs {
    TraceArgs {
        workload: "deployment/webfast".parse::<WorkloadTarget>().unwrap(),
        namespace: Default::default(),
        restart,
        traffic,
        traffic_image: None,
        timeout,
        settle: Duration::from_millis(500),
        output: Format::Table,
        html: None,
        save: None,
        margin_ms: 500,
    }
}

async fn run(
    server: &ApiServer,
    dir: &std::path::Path,
    args: TraceArgs,
) -> Result<trace::Traced, cluster::Error> {
    trace::trace(&user(server, dir), &args, &indicatif::ProgressBar::hidden()).await
}

fn user(server: &ApiServer, dir: &std::path::Path) -> KubeArgs {
    KubeArgs {
        kubeconfig: Some(server.kubeconfig(dir, "user")),
        ..KubeArgs::default()
    }
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "zdt-trace-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The cluster before the recorded rollout, its agent, and the script that plays the rollout
/// when the trace restarts it.
async fn scripted_rollout(traffic_fails: bool) -> (std::path::PathBuf, Arc<ApiServer>) {
    let dir = tempdir();
    let server = Arc::new(ApiServer::start().await);
    cluster_objects(&server);
    let (initial, _) = split_recording();
    for object in &initial {
        play(&server, "ADDED", object);
    }
    let journal = start_agent(&server).await;
    script_cluster(&server, &journal, traffic_fails);
    (dir, server)
}

#[tokio::test]
async fn trace_restarts_the_rollout_collects_the_agents_stream_and_reconciles_the_traffic_loop() {
    let (dir, server) = scripted_rollout(false).await;
    let mut changes = server.changes();
    let traffic_args = tokio::spawn(async move {
        while let Ok(change) = changes.recv().await {
            if change.resource == "pods"
                && change.kind == "ADDED"
                && change.object["metadata"]["name"] == "zdt-traffic-webfast"
            {
                return change.object["spec"]["containers"][0]["args"].clone();
            }
        }
        Value::Null
    });
    let traced = run(&server, &dir, args(true, Some(50), Duration::from_secs(30)))
        .await
        .unwrap();
    // The loop dials the Service's ClusterIP and port: no cluster DNS needed.
    assert_eq!(
        traffic_args.await.unwrap(),
        json!(["traffic", "--target", "10.96.138.224:80", "--rps", "50"])
    );
    assert_eq!(traced.traffic_problem, None);

    // The agent's API marks for both old pods came through port-forward.
    let deleting: BTreeSet<String> = traced
        .observations
        .iter()
        .filter(|o| o.kind == Kind::PodDeleting)
        .map(|o| o.pod.clone().unwrap().into())
        .collect();
    assert_eq!(
        deleting,
        [
            "default/webfast-7759c99476-2lcjd",
            "default/webfast-7759c99476-mbbl4"
        ]
        .map(String::from)
        .into()
    );
    // The traffic loop's log is the real client's: 2560 good, 12 refused, 1 timed out.
    assert_eq!(traced.traffic, Some((2573, 13)));
    let line = trace::reconcile(&traced).unwrap();
    assert!(
        line.starts_with("clients: 13 of 2573 requests failed (refused 12, reset 0, timed out 1)"),
        "{line}"
    );
    // The report is the correlation engine's, for the traced workload.
    let rollout = traced
        .report
        .rollouts
        .iter()
        .find(|r| r.workload == "deployment/webfast")
        .unwrap();
    assert_eq!(
        rollout.pods.len(),
        2,
        "{:?}",
        rollout.pods.iter().map(|p| &p.pod).collect::<Vec<_>>()
    );
    let text = kubectl_zdt::report::render(&traced.report, Format::Table).unwrap();
    assert_eq!(rollout.errors.total(), 13, "{text}");

    // Everything the user's `trace` did is allowed by the shipped ClusterRole and Role.
    let mut rules = rbac::rules("ClusterRole", "zdt-user");
    rules.extend(rbac::rules("Role", "zdt-user"));
    let calls: Vec<_> = server
        .calls()
        .into_iter()
        .filter(|c| c.user == "user")
        .collect();
    for call in &calls {
        assert!(
            rbac::allows(&rules, call),
            "zdt-user does not allow `{}`",
            call.short()
        );
    }
    let agent: Vec<_> = server
        .calls()
        .into_iter()
        .filter(|c| c.user == "agent")
        .collect();
    rbac::assert_all_allowed("ClusterRole", "zdt-agent", &agent);
    // The traffic pod is cleaned up.
    assert!(
        server
            .get("", "pods", "default", "zdt-traffic-webfast")
            .is_none()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_traffic_pod_that_fails_is_named_with_its_own_words_and_the_report_is_still_made() {
    let (dir, server) = scripted_rollout(true).await;
    let traced = run(&server, &dir, args(true, Some(50), Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(
        traced.traffic_problem.as_deref(),
        Some(
            "the traffic pod zdt-traffic-webfast failed: kubectl-zdt: failed to connect to \
             10.96.138.224:80: Network is unreachable; exit code 1: Error"
        )
    );
    // What it logged before failing still counts; the rollout is still reported.
    assert_eq!(traced.traffic, Some((3, 0)));
    assert_eq!(traced.report.rollouts.len(), 1);
    assert_eq!(traced.report.rollouts[0].workload, "deployment/webfast");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn trace_accepts_exactly_the_rates_the_traffic_pod_accepts() {
    use clap::Parser as _;
    use kubectl_zdt::cli::Cli;
    for (rps, ok) in [("0", false), ("1", true), ("10000", true), ("10001", false)] {
        let trace = Cli::try_parse_from(["kubectl-zdt", "trace", "deploy/web", "--traffic", rps]);
        let pod = Cli::try_parse_from([
            "kubectl-zdt",
            "traffic",
            "--target",
            "10.0.0.1:80",
            "--rps",
            rps,
        ]);
        assert_eq!(trace.is_ok(), ok, "trace --traffic {rps}");
        assert_eq!(pod.is_ok(), ok, "traffic --rps {rps}");
        if let Err(e) = trace {
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
            let first = e.to_string();
            let first = first.lines().next().unwrap();
            assert_eq!(
                first,
                format!(
                    "error: invalid value '{rps}' for '--traffic <RPS>': {rps} is not in 1..=10000"
                )
            );
        }
    }
}

#[tokio::test]
async fn a_workload_without_a_service_or_that_does_not_exist_is_one_clear_error() {
    let dir = tempdir();
    let server = ApiServer::start().await;
    let err = run(&server, &dir, args(false, None, Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, cluster::Error::WorkloadNotFound { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "deployment/webfast not found in namespace default (use -n NAMESPACE, or check `kubectl get deployment/webfast -n default`)"
    );

    server.put(deployment(1, 1, 2, 2));
    let err = run(&server, &dir, args(false, None, Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(matches!(err, cluster::Error::NoService { .. }), "{err}");
    assert!(err.to_string().contains("labels app=webfast"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_rollout_that_never_completes_is_reported_as_stuck_with_its_progress() {
    let dir = tempdir();
    let server = Arc::new(ApiServer::start().await);
    cluster_objects(&server);
    start_agent(&server).await;
    // Nobody plays the controller: the restart is accepted but nothing rolls.
    let err = run(&server, &dir, args(true, None, Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert!(matches!(err, cluster::Error::RolloutStuck { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("did not complete within 2 s: 2 of 2 pods updated"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn workload_names_follow_kubectl() {
    assert_eq!(
        "deploy/web".parse::<WorkloadTarget>().unwrap().to_string(),
        "deployment/web"
    );
    assert_eq!(
        "sts/db".parse::<WorkloadTarget>().unwrap().to_string(),
        "statefulset/db"
    );
    assert!(
        "pod/web"
            .parse::<WorkloadTarget>()
            .unwrap_err()
            .contains("deployment, statefulset or daemonset")
    );
    assert!("web".parse::<WorkloadTarget>().is_err());
}
