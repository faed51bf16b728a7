//! `kubectl zdt recommend`: the advice, applied to the timelines it was sized from, leaves no
//! pod with a positive gap (simulated rollouts of several workloads, any timeline; and the
//! recorded v1.36 rollouts); and the command on recorded files.

use std::{collections::BTreeMap, path::PathBuf};

use crate::support::recorded::{ROLLOUTS, convert};
use kubectl_zdt::{
    correlate::{
        self, Options as CorrelateOptions, Report,
        simulate::{self, PodPlan},
        time::WallNs,
    },
    observation::{Kind, Observation},
    recommend::{self, Options, PreStopVerdict, WorkloadKey},
};
use proptest::prelude::*;

const T0: WallNs = WallNs(1_795_310_205_000_000_000);
/// Rollouts of one workload are this far apart (more than the engine's 10 min split).
const ROLLOUT_EVERY_MS: i64 = 20 * 60 * 1_000;

type RawPod = (usize, usize, i64, Option<i64>, i64, Vec<Option<i64>>, usize);

/// 1–3 nodes; pods of `web` and `api`, each in one of three rollouts, any preStop, shutdown
/// speed and per-node kube-proxy delay, some nodes silent.
fn plans() -> impl Strategy<Value = (usize, Vec<PodPlan>)> {
    (1usize..4)
        .prop_flat_map(|nodes| {
            let pod = (
                0usize..2,
                0usize..3,
                0i64..5_000,
                prop::option::of(0i64..3_000),
                0i64..2_000,
                prop::collection::vec(prop::option::weighted(0.85, 0i64..3_000), nodes),
                0..nodes,
            );
            (Just(nodes), prop::collection::vec(pod, 1..10))
        })
        .prop_map(|(nodes, raw): (usize, Vec<RawPod>)| {
            let pods = raw
                .into_iter()
                .enumerate()
                .map(
                    |(i, (workload, rollout, delete, prestop, close, removals, node))| PodPlan {
                        name: format!("default/{}-5d8f7c9b6d-p{i:04}", ["web", "api"][workload]),
                        uid: format!("uid-{i}"),
                        ip: format!("10.244.0.{}", i + 10).parse().unwrap(),
                        node,
                        delete_ms: rollout as i64 * ROLLOUT_EVERY_MS + delete,
                        prestop_ms: prestop,
                        close_after_sigterm_ms: close,
                        exit_after_sigterm_ms: close + 5,
                        netns_after_exit_ms: 300,
                        removal_after_delete_ms: removals,
                        connect_every_ms: 5,
                    },
                )
                .collect();
            (nodes, pods)
        })
}

fn observe(nodes: usize, pods: &[PodPlan]) -> Vec<Observation> {
    simulate::observations(T0, &simulate::node_names(nodes), pods, "default/web", 8080)
}

fn key(workload: &str) -> WorkloadKey {
    WorkloadKey {
        namespace: Some("default".into()),
        workload: workload.into(),
    }
}

/// `(workload, pod, gap, refused in the window)` for every pod.
fn gaps(r: &Report) -> Vec<(String, Option<String>, Option<f64>, u64)> {
    r.rollouts
        .iter()
        .flat_map(|ro| {
            ro.pods.iter().map(|p| {
                (
                    ro.workload.clone(),
                    p.pod.clone().map(String::from),
                    p.gap_ms,
                    p.errors.unsafe_window,
                )
            })
        })
        .collect()
}

proptest! {
    #![proptest_config(crate::support::cases(96))]

    #[test]
    fn each_workloads_advised_prestop_closes_every_gap_of_its_rollouts((nodes, pods) in plans()) {
        let obs = observe(nodes, &pods);
        let workloads = recommend::gather(&obs, 500);
        let recs = recommend::recommend(&workloads, &BTreeMap::new(), &Options::default());
        let mut fixed = pods.clone();
        let mut advised_workloads = Vec::new();
        for r in &recs {
            let Some(a) = &r.advised else { continue };
            advised_workloads.push(r.workload.clone());
            let prefix = format!("default/{}-", r.workload.trim_start_matches("deployment/"));
            for p in fixed.iter_mut().filter(|p| p.name.starts_with(&prefix)) {
                *p = p.with_prestop(i64::try_from(a.prestop_seconds).unwrap() * 1_000);
            }
        }
        let after = correlate::correlate(&observe(nodes, &fixed), &CorrelateOptions::default());
        for (workload, pod, gap, refused) in gaps(&after) {
            if !advised_workloads.contains(&workload) {
                continue;
            }
            prop_assert!(gap.is_none_or(|g| g <= 0.0), "{pod:?} of {workload} still has gap {gap:?}");
            prop_assert_eq!(refused, 0);
        }
    }

    #[test]
    fn the_distribution_counts_every_pod_with_a_measured_delay_of_its_workload((nodes, pods) in plans()) {
        let obs = observe(nodes, &pods);
        let report = correlate::correlate(&obs, &CorrelateOptions::default());
        let recs = recommend::recommend(&recommend::gather(&obs, 500), &BTreeMap::new(), &Options::default());
        for r in &recs {
            let measured: Vec<f64> = report
                .rollouts
                .iter()
                .filter(|ro| ro.workload == r.workload)
                .flat_map(|ro| &ro.pods)
                .filter_map(|p| p.propagation_ms)
                .collect();
            prop_assert_eq!(r.propagation.samples, measured.len());
            let rollouts = report.rollouts.iter().filter(|ro| ro.workload == r.workload).count();
            prop_assert_eq!(r.rollouts, rollouts);
            // The upper edges the advice uses are never below the measured values.
            let largest = measured.iter().copied().fold(f64::MIN, f64::max);
            prop_assert!(r.propagation.max_ms.is_none_or(|m| m >= largest));
        }
    }
}

fn recorded() -> Vec<Observation> {
    ROLLOUTS.iter().flat_map(|(d, s)| convert(d, s)).collect()
}

/// The rollout re-run with `d_ms` more preStop for the pods of `workload`: everything the pod
/// does after its SIGTERM (listener close, exit, the API's container_terminated, network gone)
/// and the errors its closed listener caused happen `d_ms` later; the API and every node's
/// dataplane do what they did.
fn with_prestop(obs: &[Observation], workload: &str, service: &str, d_ms: i64) -> Vec<Observation> {
    let pods: Vec<String> = obs
        .iter()
        .filter(|o| {
            o.kind == Kind::PodDeleting && o.details.api().workload.as_deref() == Some(workload)
        })
        .filter_map(|o| o.pod.clone().map(String::from))
        .collect();
    let shift = jiff::SignedDuration::from_millis(d_ms);
    obs.iter()
        .cloned()
        .map(|mut o| {
            let own = o
                .pod
                .as_deref()
                .is_some_and(|p| pods.iter().any(|q| q == p))
                && matches!(
                    o.kind,
                    Kind::Signal
                        | Kind::ListenerClosed
                        | Kind::Exit
                        | Kind::NetnsGone
                        | Kind::ContainerTerminated
                );
            let caused = matches!(
                o.kind,
                Kind::Refused | Kind::Reset | Kind::ConnError | Kind::SynRetransmit
            ) && o.service == Some(service.into());
            if own || caused {
                o.time = o.time.checked_add(shift).unwrap();
            }
            o
        })
        .collect()
}

#[test]
fn the_advice_applied_to_the_recorded_rollouts_leaves_no_gap() {
    let obs = recorded();
    let workloads = recommend::gather(&obs, 500);
    let keys: Vec<(&WorkloadKey, usize, usize)> = workloads
        .iter()
        .map(|w| (&w.key, w.rollouts, w.pods.len()))
        .collect();
    // The iptables- and nftables-mode restarts of `web` were recorded 31 s apart: two template
    // changes (56f48dd9cf, then 85d48b6885 retired), so two rollouts of two pods.
    assert_eq!(
        keys,
        [
            (&key("deployment/web"), 2, 4),
            (&key("deployment/webfast"), 1, 2)
        ]
    );
    let recs = recommend::recommend(&workloads, &BTreeMap::new(), &Options::default());
    let fast = &recs[1];
    // 994.670 ms measured (+ the API receipt's uncertainty) + 500 ms margin → 2 s.
    assert_eq!(fast.advised.as_ref().unwrap().prestop_seconds, 2);
    assert_eq!(fast.errors.unsafe_window, 12);
    let before = correlate::correlate(&obs, &CorrelateOptions::default());
    assert!(
        gaps(&before)
            .iter()
            .any(|(w, _, g, _)| w == "deployment/webfast" && g.is_some_and(|g| g > 0.0)),
        "the recording has an unsafe window to close"
    );
    let fixed = with_prestop(&obs, "deployment/webfast", "default/webfast", 2_000);
    let after = correlate::correlate(&fixed, &CorrelateOptions::default());
    let webfast: Vec<_> = gaps(&after)
        .into_iter()
        .filter(|(w, ..)| w == "deployment/webfast")
        .collect();
    assert_eq!(webfast.len(), 2);
    for (_, pod, gap, refused) in webfast {
        assert!(gap.is_some_and(|g| g <= 0.0), "{pod:?}: gap {gap:?}");
        assert_eq!(refused, 0, "{pod:?}");
    }
}

fn tempfile(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "zdt-recommend-{}-{}-{name}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the real binary; (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
        .arg("recommend")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn from_files_the_recorded_rollouts_are_judged_with_the_settings_they_ran_with() {
    let text: String = recorded().iter().map(|o| o.to_json_line() + "\n").collect();
    let file = tempfile("recorded.jsonl", &text);
    let f = file.to_str().unwrap();

    let (code, out, err) = cli(&["--from-file", f, "-o", "json", "--min-samples", "2"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "Recommendations");
    let fast = &v["workloads"][1];
    assert_eq!(fast["workload"], "deployment/webfast");
    // Offline the settings are what the pods were deleted with: grace 5 s, and no preStop mark
    // (nor SIGTERM: no node agent ran) so the preStop is unknown.
    assert_eq!(fast["current"]["source"], "observed");
    assert_eq!(fast["current"]["termination_grace_period_seconds"], 5);
    assert_eq!(fast["current"]["container"], "httpd");
    assert_eq!(fast["verdict"], "current_unknown", "{fast:#}");
    assert_eq!(fast["advised"]["prestop_seconds"], 2);
    assert_eq!(fast["propagation"]["samples"], 2);

    let (code, out, _) = cli(&["--from-file", f]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("deployment/webfast -n default") && out.contains("too few samples (n=2 < 5)"),
        "{out}"
    );

    let (code, wide, err) = cli(&["--from-file", f, "-o", "wide"]);
    assert_eq!(code, Some(0), "{err}");
    let header = wide.lines().next().unwrap();
    assert!(
        header.trim().starts_with("WORKLOAD")
            && header
                .trim()
                .ends_with("SAMPLES  LARGEST NEED  DRAIN  ERRORS"),
        "{wide}"
    );

    let (code, out, err) = cli(&["--from-file", f, "-o", "yaml", "deployment/webfast"]);
    assert_eq!(code, Some(0), "{err}");
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 1, "{out}");
    let spec = &docs[0]["spec"]["template"]["spec"];
    assert_eq!(docs[0]["kind"], "Deployment");
    assert_eq!(docs[0]["metadata"]["namespace"], "default");
    assert_eq!(spec["containers"][0]["name"], "httpd");
    assert_eq!(
        spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"],
        2
    );
    assert!(spec["terminationGracePeriodSeconds"].as_u64().unwrap() >= 2);
    assert!(out.contains("# ") && out.contains("margin 500 ms"), "{out}");

    let (code, out, err) = cli(&["--from-file", f, "deployment/nope"]);
    assert_eq!(code, Some(1));
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("kubectl-zdt: deployment/nope: no terminated pod of it in"),
        "{err}"
    );
    let _ = std::fs::remove_file(file);
}

#[test]
fn an_unreadable_file_is_one_line_and_a_failure() {
    let file = tempfile("garbage.jsonl", "not json\n");
    let (code, _, err) = cli(&["--from-file", file.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with("kubectl-zdt: no observation could be read from"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_file(file);
}

#[test]
fn verdicts_are_sorted_by_workload_and_none_is_invented_for_an_empty_input() {
    // The demo's standalone capture has no deletion: nothing to size.
    let obs = kubectl_zdt::correlate::input::parse_all(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/correlate/standalone-agent.jsonl"),
        )
        .unwrap(),
    )
    .0;
    let recs = recommend::recommend(
        &recommend::gather(&obs, 500),
        &BTreeMap::new(),
        &Options::default(),
    );
    assert!(
        recs.iter()
            .all(|r| r.advised.is_none() && r.verdict == PreStopVerdict::NoData),
        "{recs:#?}"
    );
}

#[test]
fn a_margin_over_an_hour_is_refused_in_one_line() {
    let (code, out, err) = cli(&["--from-file", "-", "--margin-ms", "18446744073709551615"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(out.is_empty());
    assert!(
        err.lines().next().unwrap().contains("is over an hour"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(crate::support::cases(64))]

    /// A patch that shortens the grace period can cause the outage it is meant to prevent:
    /// whatever the workload runs with now, the advised grace period is at least that, and at
    /// least the advised preStop.
    #[test]
    fn the_advice_never_lowers_the_current_grace_period(
        (nodes, pods) in plans(),
        grace in prop_oneof![0u64..120, any::<u64>()],
        prestop in prop_oneof![0u64..60, any::<u64>()],
    ) {
        use recommend::settings::{PreStop, Settings, SettingsSource};
        let workloads = recommend::gather(&observe(nodes, &pods), 500);
        let current: BTreeMap<WorkloadKey, Settings> = workloads
            .iter()
            .map(|w| {
                (
                    w.key.clone(),
                    Settings {
                        source: SettingsSource::Api,
                        container: Some("web".into()),
                        prestop: PreStop::SleepAction { seconds: prestop },
                        termination_grace_period_seconds: Some(grace),
                    },
                )
            })
            .collect();
        let options = Options { min_samples: 1, ..Options::default() };
        for r in recommend::recommend(&workloads, &current, &options) {
            let Some(a) = &r.advised else { continue };
            prop_assert!(a.termination_grace_period_seconds >= grace, "{a:?}");
            prop_assert!(a.termination_grace_period_seconds >= a.prestop_seconds, "{a:?}");
            let yaml = recommend::render::yaml(&recommend::Recommendations {
                api_version: "zdt.dev/v1",
                kind: "Recommendations",
                margin_ms: 500,
                min_samples: 1,
                waste_threshold_ms: 2_000,
                prestop_action: options.prestop,
                workloads: vec![r.clone()],
                warnings: Vec::new(),
            });
            prop_assert!(yaml.contains(&format!("terminationGracePeriodSeconds: {}", a.termination_grace_period_seconds)), "{yaml}");
        }
    }
}

/// The whole answer (no current settings known) and `workload`'s recommendation in it.
fn answer_for(
    workloads: &[recommend::WorkloadEvidence],
    workload: &str,
) -> (recommend::Recommendations, recommend::Recommendation) {
    let all = recommend::answer(workloads, &BTreeMap::new(), &Options::default(), Vec::new());
    let rec = all
        .workloads
        .iter()
        .find(|r| r.workload == workload)
        .unwrap_or_else(|| panic!("{workload}"))
        .clone();
    (all, rec)
}

/// A recorded stream under tests/fixtures (`real-cluster/…`, `correlate/…`).
fn fixture(name: &str) -> Vec<Observation> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let (obs, bad) = correlate::input::parse_all(&std::fs::read_to_string(path).unwrap());
    assert!(bad.is_empty(), "{name}: {bad:?}");
    obs
}

#[test]
fn a_workload_whose_new_pods_refused_before_listening_is_told_to_add_a_readiness_probe() {
    // The v1.23 `startup` rollout (tests/fixtures/real-cluster): no readiness probe, httpd
    // listening 3 s after the container started.
    let workloads = recommend::gather(&fixture("real-cluster/v1.23-startup-t1.jsonl"), 500);
    let startup = workloads
        .iter()
        .find(|w| w.key == key("deployment/startup"))
        .expect("deployment/startup");
    let a = startup.readiness.as_ref().expect("readiness advice");
    assert_eq!(a.before_listening, 386);
    let (all, rec) = answer_for(&workloads, "deployment/startup");
    assert_eq!(rec.readiness_probe.as_ref(), Some(a));
    let table = recommend::render::table(&all, false);
    assert!(
        table.contains(
            "  readiness probe: 386 connections refused by new pods before they listened"
        ),
        "{table}"
    );
    let yaml = recommend::render::yaml(&all);
    assert!(
        yaml.contains(r#"#   kubectl patch deployment/startup -n default --type=strategic -p '{"spec":{"template":{"spec":{"containers":[{"name":"web","readinessProbe""#),
        "{yaml}"
    );
}

#[test]
fn a_workload_whose_rollout_fell_below_its_replicas_is_told_the_strategy_that_keeps_them() {
    let workloads = recommend::gather(&fixture("correlate/capacity-drop.jsonl"), 500);
    let (all, rec) = answer_for(&workloads, "deployment/web");
    let s = rec.rollout_strategy.as_ref().expect("strategy advice");
    assert_eq!((s.desired, s.min_ready), (3, 2));
    let table = recommend::render::table(&all, false);
    assert!(
        table.contains(r#""rollingUpdate":{"maxUnavailable":0,"maxSurge":1}"#)
            && table.contains("  rollout strategy: ready endpoints fell to 2 of the 3 replicas"),
        "{table}"
    );
}
