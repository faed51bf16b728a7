//! `kubectl zdt history` end to end against the scripted API server (a test double), with four
//! real agent endpoints (in-memory journal + disk journal + `GET /history`) reached through its
//! port-forward:
//!
//! - nodes `node-a`, `node-b`, `node-c` hold two recorded rollouts of `shop/deployment/web`
//!   an hour apart (tests/fixtures/correlate `no-prestop` and `slow-node`, renamed so the two
//!   rollouts' pods differ, moved to 3 h and 2 h ago), pushed through each agent's journal the
//!   way the agent's producer loop pushes them;
//! - node `vm` records a rollout live: the agent's API watches follow the real v1.36 fast-exit
//!   rollout of `default/deployment/webfast` replayed through the double.

use crate::support::{self, kube_double};

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::support::kube_double::{
    apiserver::ApiServer,
    fixture::{play, split_recording},
    rbac,
};
use jiff::{SignedDuration, Timestamp};
use kubectl_zdt::{
    agent::{api_watch::ApiWatch, backlog::Backlog, pods::PodIndex, serve::Gauges},
    cluster::{
        self,
        connect::KubeArgs,
        history::{self, HistoryArgs, HistoryQuery},
    },
    correlate::{self, Options},
    observation::{Kind, NodeName, Observation},
    report::Format,
};

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-zdt");

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("zdt-history-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An agent's endpoint for `node` with a disk journal in `dir` (None: without --journal-dir).
async fn start_agent(server: &ApiServer, node: &str, dir: Option<&Path>) -> Arc<Backlog> {
    let journal = Backlog::new(100_000);
    if let Some(dir) = dir {
        let disk =
            kubectl_zdt::journal::Journal::open(kubectl_zdt::journal::Config::new(dir.join(node)))
                .unwrap();
        let disk = Arc::new(kubectl_zdt::journal::Shared::new(disk));
        journal.attach_disk(disk.clone());
        tokio::spawn(kubectl_zdt::agent::tick_journal(disk));
    }
    let addr = support::agent_endpoint(node, journal.clone(), Arc::new(Gauges::default())).await;
    server.forward(&format!("zdt-agent-{node}"), addr);
    server.put(kube_double::agent_pod(node));
    journal
}

/// A recorded rollout (a tests/fixtures/correlate file), its pod renamed, moved so that its
/// deletion happens at `deleted`, with the API's lines seen by the pod's node `node-a`.
fn recorded(file: &str, renames: &[(&str, &str)], deleted: Timestamp) -> Vec<Observation> {
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/correlate/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut obs: Vec<Observation> = text
        .lines()
        .map(|l| {
            let mut l = l.replace(r#""node":"api""#, r#""node":"node-a""#);
            for (from, to) in renames {
                l = l.replace(from, to);
            }
            serde_json::from_str(&l).unwrap()
        })
        .collect();
    let t0 = obs
        .iter()
        .find(|o| o.kind == Kind::PodDeleting)
        .unwrap()
        .time;
    let shift = deleted.duration_since(t0);
    for o in &mut obs {
        o.time = o.time.checked_add(shift).unwrap();
    }
    obs
}

fn renames(k: u32) -> Vec<(String, String)> {
    vec![
        (
            "web-7d4b9c8f6d-abcde".into(),
            format!("web-7d4b9c8f6d-r{k}aaa"),
        ),
        ("000000000001".into(), format!("0000000000{k}1")),
        (r#""10.244.1.10""#.into(), format!(r#""10.244.1.1{k}""#)),
        (r#""default/"#.into(), r#""shop/"#.into()),
    ]
}

fn rollout(file: &str, k: u32, deleted: Timestamp) -> Vec<Observation> {
    let r = renames(k);
    let pairs: Vec<(&str, &str)> = r.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    recorded(file, &pairs, deleted)
}

fn ago(minutes: i64) -> Timestamp {
    Timestamp::now() - SignedDuration::from_mins(minutes)
}

/// The node agent of `vm` recording the real fast-exit rollout through its API watches.
async fn record_live_rollout(server: &Arc<ApiServer>, journal: Arc<Backlog>) {
    let (initial, events) = split_recording();
    for object in &initial {
        play(server, "ADDED", object);
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let watch = ApiWatch {
        client: server.client("agent"),
        node: NodeName("vm".into()),
        pods: Arc::new(Mutex::new(PodIndex::new(Duration::from_secs(600)))),
        gauges: Arc::new(Gauges::default()),
        netns: None,
    };
    tokio::spawn(watch.run(
        kubectl_zdt::kernel::filter::Recorded::default(),
        tx,
        std::future::pending(),
    ));
    let sink = journal.clone();
    tokio::spawn(async move {
        while let Some(o) = rx.recv().await {
            sink.push(&o);
        }
    });
    // Give the watches their initial list, then replay at the recorded pace.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = std::time::Instant::now();
    for (received, kind, object) in &events {
        let due = Duration::from_nanos(received - events[0].0);
        tokio::time::sleep(due.saturating_sub(start.elapsed())).await;
        play(server, kind, object);
    }
    for _ in 0..100 {
        let seen = journal
            .read(0, usize::MAX)
            .lines
            .iter()
            .filter(|l| l.contains(r#""kind":"pod_deleting""#))
            .count();
        if seen == 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the agent did not record both deletions of the live rollout");
}

/// `kubectl-zdt --kubeconfig KUBECONFIG ARGS…` as a child, off the runtime's threads (the double
/// it talks to runs on them).
async fn cli(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    let kubeconfig = kubeconfig.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn args() -> HistoryArgs {
    HistoryArgs {
        namespaces: Default::default(),
        since: Some("4h".into()),
        from: None,
        to: None,
        pod: None,
        ip: Vec::new(),
        workload: None,
        nodes: Vec::new(),
        journal_dir: None,
        output: Format::Table,
        report: false,
        html: None,
        export: None,
        rollouts: false,
        margin_ms: 500,
    }
}

fn kube(server: &ApiServer, dir: &Path, namespace: Option<&str>) -> KubeArgs {
    KubeArgs {
        kubeconfig: Some(server.kubeconfig(dir, "user")),
        namespace: namespace.map(str::to_owned),
        ..KubeArgs::default()
    }
}

/// Lines as a comparable set (folding may have merged counters, so compare marks exactly).
fn marks(obs: &[Observation]) -> BTreeSet<String> {
    obs.iter()
        .filter(|o| !kubectl_zdt::journal::fold::is_counter(o.kind))
        .map(Observation::to_json_line)
        .collect()
}

fn weight_of(obs: &[Observation], kind: Kind) -> u64 {
    obs.iter()
        .filter(|o| o.kind == kind)
        .map(Observation::weight)
        .sum()
}

struct Cluster {
    server: Arc<ApiServer>,
    dir: PathBuf,
    r1: Vec<Observation>,
    r2: Vec<Observation>,
}

async fn cluster(name: &str) -> Cluster {
    let dir = tempdir(name);
    let server = Arc::new(ApiServer::start().await);
    let r1 = rollout("no-prestop.jsonl", 1, ago(180));
    let r2 = rollout("slow-node.jsonl", 2, ago(120));
    for node in ["node-a", "node-b", "node-c"] {
        let journal = start_agent(&server, node, Some(&dir)).await;
        for o in r1.iter().chain(&r2).filter(|o| o.node.0 == node) {
            journal.push(o);
        }
    }
    let vm = start_agent(&server, "vm", Some(&dir)).await;
    record_live_rollout(&server, vm).await;
    Cluster {
        server,
        dir,
        r1,
        r2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_every_nodes_journal_finds_the_rollouts_and_filters_narrow_it() {
    let c = cluster("list").await;
    let all = history::collect(&kube(&c.server, &c.dir, None), &args(), Timestamp::now())
        .await
        .unwrap();
    assert!(all.failures.is_empty(), "{:?}", all.failures);
    // Every mark of both recorded rollouts came back from the three nodes' journals, and the
    // counters with their exact totals.
    let expected: Vec<&Observation> = c.r1.iter().chain(&c.r2).collect();
    let expected: Vec<Observation> = expected.into_iter().cloned().collect();
    let got = marks(&all.observations);
    assert!(
        marks(&expected).is_subset(&got),
        "missing: {:?}",
        marks(&expected).difference(&got).collect::<Vec<_>>()
    );
    for kind in [Kind::Refused, Kind::SynRetransmit, Kind::FlowNew] {
        assert_eq!(
            weight_of(&all.observations, kind),
            weight_of(&expected, kind),
            "{kind}"
        );
    }
    assert!(all.observations.windows(2).all(|w| w[0].time <= w[1].time));

    // The listing ends with the three rollouts nobody traced, in time order.
    let text = history::render(&all, &args()).unwrap();
    let found = kubectl_zdt::history::rollouts::find(&all.observations, Duration::from_secs(600));
    let summary: Vec<(String, Option<String>, usize)> = found
        .iter()
        .map(|r| (r.workload.clone(), r.namespace.clone(), r.pods.len()))
        .collect();
    assert_eq!(
        summary,
        [
            ("deployment/web".to_owned(), Some("shop".to_owned()), 1),
            ("deployment/web".to_owned(), Some("shop".to_owned()), 1),
            (
                "deployment/webfast".to_owned(),
                Some("default".to_owned()),
                2
            ),
        ]
    );
    assert_eq!(
        found[0].errors,
        weight_of(&c.r1, Kind::Refused) + weight_of(&c.r1, Kind::SynRetransmit)
    );
    // (Shown with --nocapture: the README's examples.)
    let mut only = args();
    only.rollouts = true;
    eprintln!("{}", history::render(&all, &only).unwrap());
    assert!(text.contains("ROLLOUTS"), "{text}");
    assert!(
        text.contains("kubectl zdt history --report --workload deployment/web -n shop --from "),
        "{text}"
    );

    // --pod: that pod's lines, and the other nodes' lines about its address.
    let mut a = args();
    a.pod = Some("web-7d4b9c8f6d-r1aaa".into());
    let pod = history::collect(&kube(&c.server, &c.dir, Some("shop")), &a, Timestamp::now())
        .await
        .unwrap();
    eprintln!("{}", history::render(&pod, &a).unwrap());
    let nodes: BTreeSet<&str> = pod.observations.iter().map(|o| o.node.0.as_str()).collect();
    assert_eq!(nodes, ["node-a", "node-b", "node-c"].into());
    assert!(
        pod.observations
            .iter()
            .any(|o| o.kind == Kind::DataplaneRemoved && o.node.0 == "node-b")
    );
    assert!(
        pod.observations
            .iter()
            .all(|o| o.pod.as_deref() == Some("shop/web-7d4b9c8f6d-r1aaa")
                || o.ip == Some("10.244.1.11".parse().unwrap())),
        "only that pod"
    );
    assert_eq!(
        marks(&pod.observations),
        marks(
            &c.r1
                .iter()
                .filter(|o| o.kind != Kind::AgentStart)
                .cloned()
                .collect::<Vec<_>>()
        )
    );

    // --ip: the second rollout's pod only.
    let mut a = args();
    a.ip = vec!["10.244.1.12".parse().unwrap()];
    let by_ip = history::collect(&kube(&c.server, &c.dir, None), &a, Timestamp::now())
        .await
        .unwrap();
    assert!(!by_ip.observations.is_empty());
    assert!(
        by_ip
            .observations
            .iter()
            .all(|o| o.ip == Some("10.244.1.12".parse().unwrap()))
    );

    // --workload in -n default: the live rollout's pods (the two deleted, the two new), none
    // of shop's.
    let mut a = args();
    a.workload = Some("deployment/webfast".parse().unwrap());
    let wl = history::collect(
        &kube(&c.server, &c.dir, Some("default")),
        &a,
        Timestamp::now(),
    )
    .await
    .unwrap();
    let pods: BTreeSet<&str> = wl
        .observations
        .iter()
        .filter_map(|o| o.pod.as_deref())
        .collect();
    assert_eq!(
        pods,
        [
            "default/webfast-5554fb959f-97tzf",
            "default/webfast-5554fb959f-jcf48",
            "default/webfast-7759c99476-2lcjd",
            "default/webfast-7759c99476-mbbl4"
        ]
        .into()
    );
    assert_eq!(
        wl.observations
            .iter()
            .filter(|o| o.kind == Kind::PodDeleting)
            .count(),
        2
    );

    // --node and the time window.
    let mut a = args();
    a.nodes = vec!["node-b".into()];
    a.since = None;
    a.from = Some("150m".into());
    let b = history::collect(&kube(&c.server, &c.dir, None), &a, Timestamp::now())
        .await
        .unwrap();
    assert!(!b.observations.is_empty());
    assert!(
        b.observations
            .iter()
            .all(|o| o.node.0 == "node-b" && o.time >= ago(151))
    );
    assert_eq!(
        marks(&b.observations),
        marks(
            &c.r2
                .iter()
                .filter(|o| o.node.0 == "node-b")
                .cloned()
                .collect::<Vec<_>>()
        )
    );

    // Everything the user did is allowed by the shipped Role.
    let mut rules = rbac::rules("ClusterRole", "zdt-user");
    rules.extend(rbac::rules("Role", "zdt-user"));
    for call in c.server.calls().into_iter().filter(|c| c.user == "user") {
        assert!(
            rbac::allows(&rules, &call),
            "zdt-user does not allow `{}`",
            call.short()
        );
    }
    let _ = std::fs::remove_dir_all(&c.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_of_history_is_what_analyze_makes_of_the_exported_lines() {
    let c = cluster("report").await;
    let kubeconfig = c.server.kubeconfig(&c.dir, "user");
    let export = c.dir.join("export.jsonl");
    let export_arg = export.to_str().unwrap().to_owned();
    let exported = cli(
        &kubeconfig,
        &[
            "history",
            "--since",
            "4h",
            "--rollouts",
            "--export",
            &export_arg,
        ],
    )
    .await;
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let listing = String::from_utf8(exported.stdout).unwrap();
    assert!(listing.contains("deployment/webfast"), "{listing}");
    let reported = cli(
        &kubeconfig,
        &["history", "--since", "4h", "--report", "-o", "json"],
    )
    .await;
    assert!(
        reported.status.success(),
        "{}",
        String::from_utf8_lossy(&reported.stderr)
    );
    let analyzed = cli(&kubeconfig, &["analyze", &export_arg, "-o", "json"]).await;
    assert!(
        analyzed.status.success(),
        "{}",
        String::from_utf8_lossy(&analyzed.stderr)
    );
    assert_eq!(
        String::from_utf8(reported.stdout).unwrap(),
        String::from_utf8(analyzed.stdout).unwrap(),
        "history --report and analyze of the export differ"
    );

    // Folding did not change what the report says about the first recorded rollout: the same
    // gap, propagation, errors by cause and verdict as the unfolded recording.
    let mut a = args();
    a.workload = Some("deployment/web".parse().unwrap());
    a.since = None;
    a.from = Some("190m".into());
    a.to = Some("170m".into());
    let r1 = history::collect(&kube(&c.server, &c.dir, Some("shop")), &a, Timestamp::now())
        .await
        .unwrap();
    a.report = true;
    eprintln!("{}", history::render(&r1, &a).unwrap());
    let from_history = correlate::correlate(&r1.observations, &Options::default());
    let from_recording = correlate::correlate(&c.r1, &Options::default());
    let key = |r: &correlate::Report| {
        r.rollouts
            .iter()
            .flat_map(|r| &r.pods)
            .map(|p| serde_json::json!([p.pod, p.gap_ms, p.propagation_ms, p.errors, p.verdict]))
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&from_history), key(&from_recording));
    assert_eq!(from_history.rollouts.len(), 1);
    assert_eq!(from_history.rollouts[0].workload, "deployment/web");
    let _ = std::fs::remove_dir_all(&c.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_agent_is_named_the_others_answer_and_the_exit_is_non_zero() {
    let dir = tempdir("unreachable");
    let server = Arc::new(ApiServer::start().await);
    let a = start_agent(&server, "node-a", Some(&dir)).await;
    for o in rollout("no-prestop.jsonl", 1, ago(30))
        .iter()
        .filter(|o| o.node.0 == "node-a")
    {
        a.push(o);
    }
    start_agent(&server, "node-b", None).await; // no --journal-dir
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    server.forward("zdt-agent-node-c", closed); // nothing listens there any more
    server.put(kube_double::agent_pod("node-c"));

    let got = history::collect(&kube(&server, &dir, None), &args(), Timestamp::now())
        .await
        .unwrap();
    assert!(
        got.observations
            .iter()
            .any(|o| o.kind == Kind::PodDeleting && o.node.0 == "node-a")
    );
    assert_eq!(got.failures.len(), 2, "{:?}", got.failures);
    assert!(
        got.failures[0].starts_with("the agent on node node-b (zdt-agent-node-b) is not reachable"),
        "{}",
        got.failures[0]
    );
    assert!(
        got.failures[0].contains("keeps no journal"),
        "{}",
        got.failures[0]
    );
    assert!(
        got.failures[1].starts_with("the agent on node node-c (zdt-agent-node-c)"),
        "{}",
        got.failures[1]
    );
    // `fetch` (what `recommend` calls) refuses a history with a node missing.
    let client = server.client("user");
    let err = history::fetch(&client, &HistoryQuery::default(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, cluster::Error::AgentUnreachable { ref node, .. } if node == "node-b"),
        "{err}"
    );
    let only_a = history::fetch(
        &client,
        &HistoryQuery::default(),
        Some(&["node-a".to_owned()]),
    )
    .await
    .unwrap();
    assert!(!only_a.is_empty());

    // The command: node-a's lines on stdout, one line per failed node on stderr, exit 1.
    let kubeconfig = server.kubeconfig(&dir, "user");
    let out = cli(&kubeconfig, &["history", "--since", "1h"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("pod_deleting"), "{stdout}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("kubectl-zdt: "))
        .collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[1].contains("node-c") && lines[1].ends_with("(the other nodes' history is shown)"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_agents_and_bad_times_are_one_line_each() {
    let dir = tempdir("errors");
    let server = Arc::new(ApiServer::start().await);
    let kubeconfig = server.kubeconfig(&dir, "user");
    for (args, expected) in [
        (
            &["history"][..],
            "kubectl-zdt: kubectl-zdt's agents are not installed (no pods labelled app.kubernetes.io/name=zdt-agent in namespace zdt-system): run `kubectl zdt install`",
        ),
        (
            &["history", "--from", "yesterday"][..],
            "kubectl-zdt: --from \"yesterday\": not a time; use RFC 3339 like 2026-11-22T03:00:00Z or a duration ago like 2h",
        ),
        (
            &["history", "--since", "2 fortnights"][..],
            "kubectl-zdt: --since \"2 fortnights\": not a duration; use e.g. 90s, 30m, 2h or 7d",
        ),
    ] {
        let out = cli(&kubeconfig, args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            String::from_utf8(out.stderr).unwrap(),
            format!("{expected}\n"),
            "{args:?}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `recommend` reads the same journals (`GET /history` of every real agent endpoint, through
/// the double's port-forward): every workload whose rollouts `history` found is sized, from
/// the same pods, and the advice covers the slowest pod's measured need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommend_sizes_the_rollouts_found_in_the_agents_journals() {
    let c = cluster("recommend").await;
    let mut kube = kube(&c.server, &c.dir, None);
    kube.all_namespaces = true;
    let args = kubectl_zdt::recommend::RecommendArgs {
        workload: None,
        namespaces: Default::default(),
        from_file: Vec::new(),
        since: Some(jiff::SignedDuration::from_hours(4)),
        output: kubectl_zdt::recommend::Format::Json,
        margin_ms: 500,
        min_samples: 1,
        waste_threshold_ms: 2_000,
        server_version: None,
    };
    let answer = kubectl_zdt::recommend::from_cluster(&kube, &args)
        .await
        .unwrap();
    let all = history::collect(&kube, &args_since(4), Timestamp::now())
        .await
        .unwrap();
    let found = kubectl_zdt::history::rollouts::find(&all.observations, Duration::from_secs(600));
    let web = answer
        .workloads
        .iter()
        .find(|r| r.workload == "deployment/web")
        .unwrap_or_else(|| panic!("{answer:#?}"));
    let web_pods: usize = found
        .iter()
        .filter(|r| r.workload == "deployment/web")
        .map(|r| r.pods.len())
        .sum();
    assert_eq!(web.pods, web_pods, "{web:#?}");
    assert_eq!(web.propagation.samples, web_pods, "{web:#?}");
    let need = web
        .largest_needed_ms
        .into_iter()
        .chain(web.propagation.max_ms)
        .fold(0.0, f64::max);
    assert!(need > 0.0, "{web:#?}");
    let advised = web.advised.as_ref().unwrap_or_else(|| panic!("{web:#?}"));
    assert!(
        advised.prestop_seconds as f64 * 1e3 >= need + 500.0,
        "{advised:?} for a need of {need} ms"
    );
}

fn args_since(hours: u32) -> HistoryArgs {
    let mut a = args();
    a.since = Some(format!("{hours}h"));
    a
}
