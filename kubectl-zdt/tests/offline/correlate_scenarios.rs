//! Golden scenarios: the classic rollout cases as observation streams
//! (tests/fixtures/correlate/<case>.jsonl, what agents and the API watch would write), each
//! correlated and checked for the facts that matter, and the whole JSON report compared with
//! tests/fixtures/correlate/<case>.report.json (`ZDT_BLESS=1` rewrites those after a deliberate
//! change; review the diff).

use std::path::{Path, PathBuf};

use kubectl_zdt::correlate::{
    self, Basis, Options, PodReport, Report, RoutingState, Verdict, input,
};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/correlate")
}

fn analyze(case: &str) -> Report {
    let text = std::fs::read_to_string(dir().join(format!("{case}.jsonl"))).unwrap();
    let (obs, problems) = input::parse_all(&text);
    assert!(problems.is_empty(), "{case}: {problems:?}");
    let report = correlate::correlate(&obs, &Options::default());
    let json = serde_json::to_string_pretty(&report).unwrap() + "\n";
    let golden = dir().join(format!("{case}.report.json"));
    if std::env::var_os("ZDT_BLESS").is_some() {
        std::fs::write(&golden, &json).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    assert_eq!(
        json,
        expected,
        "{case}: report differs from {} (ZDT_BLESS=1 to accept)",
        golden.display()
    );
    report
}

fn only_pod(r: &Report) -> &PodReport {
    assert_eq!(r.rollouts.len(), 1);
    assert_eq!(r.rollouts[0].pods.len(), 1, "{:#?}", r.rollouts[0].pods);
    &r.rollouts[0].pods[0]
}

#[test]
fn no_prestop_pod_closes_at_sigterm_and_node_b_routes_to_it_for_588_ms() {
    let r = analyze("no-prestop");
    let p = only_pod(&r);
    assert_eq!(p.gap_ms, Some(588.0));
    assert_eq!(p.gap_basis, Basis::Measured);
    assert_eq!(p.propagation_ms, Some(620.0));
    assert_eq!(p.worst_node.as_ref().map(|n| n.0.as_str()), Some("node-b"));
    // 4 single refusals + one aggregated line of 5, all between 32 ms and 620 ms.
    assert_eq!(p.errors.unsafe_window, 9);
    // Two retransmitted SYNs after the namespace went away at 400 ms.
    assert_eq!(p.errors.after_netns_gone, 2);
    assert_eq!(p.verdict, Verdict::Unsafe);
    let w = p.unsafe_window.as_ref().expect("window");
    assert_eq!(w.duration_ms, 588.0);
    let advice = r.advice.as_ref().unwrap();
    // p99 of one propagation (620 ms + 0.06 ms uncertainty) + 500 ms margin → 2 s.
    assert_eq!(advice.prestop_seconds, 2);
    // Drain SIGTERM → exit was 5 ms: 2 s + 5 ms + 0.5 s → 3 s, but the pod was deleted with
    // 30 s: a patch never shortens the grace period (it could cut a drain the data missed).
    assert_eq!(advice.termination_grace_period_seconds, 30);
    assert!(
        advice.patches[0].command.contains(r#""name":"app""#),
        "{}",
        advice.patches[0].command
    );
}

#[test]
fn a_long_enough_prestop_leaves_no_window_errors_and_shows_resets_at_exit_apart() {
    let r = analyze("prestop-long-enough");
    let p = only_pod(&r);
    assert_eq!(p.gap_ms, Some(-1405.0));
    assert_eq!(p.verdict, Verdict::Safe);
    assert_eq!(p.errors.unsafe_window, 0);
    assert_eq!(p.errors.at_exit, 3);
    assert!(
        p.reason.contains("3 resets at exit need graceful draining"),
        "{}",
        p.reason
    );
    assert!(p.marks.prestop.is_some());
    // The new pod of the rollout is not terminating and has no errors: not in the report.
    assert_eq!(r.rollouts[0].verdict, Verdict::Safe);
}

#[test]
fn one_slow_node_sets_the_gap_and_the_advice() {
    let r = analyze("slow-node");
    let p = only_pod(&r);
    assert_eq!(p.worst_node.as_ref().map(|n| n.0.as_str()), Some("node-c"));
    assert_eq!(p.gap_ms, Some(2378.0));
    assert_eq!(p.errors.unsafe_window, 3);
    assert_eq!(
        p.errors.after_netns_gone, 1,
        "the ETIMEDOUT after the netns was gone"
    );
    let advice = r.advice.as_ref().unwrap();
    // p99 propagation 3.4 s (above the 2.378 s gap + the 1 s preStop it had) + 0.5 s → 4 s.
    assert_eq!(advice.prestop_seconds, 4);
}

#[test]
fn a_reused_ip_does_not_merge_the_new_pod_into_the_old_one() {
    let r = analyze("ip-reuse");
    let pods: Vec<&PodReport> = r.rollouts.iter().flat_map(|ro| &ro.pods).collect();
    // The new pod that took the address was not deleted: it is no member of the rollout.
    assert_eq!(pods.len(), 1);
    let old = pods[0];
    assert_eq!(old.pod.as_deref(), Some("default/web-7d4b9c8f6d-abcde"));
    assert_eq!(old.ip, Some("10.244.1.10".parse().unwrap()));
    assert_eq!(old.errors.unsafe_window, 2);
    assert_eq!(old.gap_ms, Some(570.0));
    // The refusal 6 s later belongs to the new pod, a new pod of the rollout: the input has no
    // listener lines, so nothing says it was refused before listening.
    let new = &r.rollouts[0].startup;
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].pod.as_deref(), Some("default/web-7d4b9c8f6d-zzzzz"));
    assert_eq!(new[0].errors.undetermined, 1);
    assert_eq!(new[0].errors.before_listening, 0);
    assert_eq!(new[0].verdict, Verdict::Inconclusive);
    assert!(r.readiness_advice.is_empty());
}

#[test]
fn a_silent_node_is_unknown_not_zero_and_the_gap_is_only_a_lower_bound() {
    let r = analyze("silent-node");
    let p = only_pod(&r);
    let c = p.dataplane.iter().find(|d| d.node.0 == "node-c").unwrap();
    assert_eq!(c.state, RoutingState::Unknown);
    assert!(c.removed.is_none());
    assert_eq!(p.gap_basis, Basis::LowerBound);
    assert_eq!(p.gap_ms, Some(-902.0));
    assert_eq!(p.verdict, Verdict::Inconclusive);
    assert!(
        p.reason.contains("1 of 3 nodes reported no removal"),
        "{}",
        p.reason
    );
}

#[test]
fn clock_skew_widens_the_uncertainty_and_keeps_the_stamped_order() {
    let r = analyze("clock-skew");
    let p = only_pod(&r);
    let b = p.dataplane.iter().find(|d| d.node.0 == "node-b").unwrap();
    let removed = b.removed.as_ref().unwrap();
    // Stamped 242 ms before the deletion: kept as stamped, with ±250 ms more.
    assert_eq!(removed.time.to_string(), "2026-11-22T02:59:59.758Z");
    assert_eq!(removed.uncertainty_ms, 250.0);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.starts_with("node node-b: its clock runs at least 250 ms behind")),
        "{:?}",
        r.warnings
    );
    // node-c's offset moved by 3 ms: its removal, the latest, carries it.
    assert_eq!(p.worst_node.as_ref().map(|n| n.0.as_str()), Some("node-c"));
    assert_eq!(p.gap_ms, Some(448.0));
    assert_eq!(p.gap_uncertainty_ms, 3.0);
    assert_eq!(p.verdict, Verdict::Unsafe);
}

/// A node also reports the pod's node-port route (`frontend: nodeport`, the node's address as
/// `service`): the pod is still known by the Service its clients dial, so errors toward that
/// Service stay attributed to it.
#[test]
fn a_node_port_route_does_not_rename_the_pods_service() {
    let text = std::fs::read_to_string(dir().join("no-prestop.jsonl")).unwrap();
    let node_port = r#"{"kind":"dataplane_removed","time":"2026-11-22T03:00:00.350000000Z","node":"node-a","ip":"10.244.1.10","port":8080,"service":"0.0.0.0:30080","frontend":"nodeport","uncertainty_ns":60}"#;
    let (obs, problems) = input::parse_all(&format!("{text}{node_port}\n"));
    assert!(problems.is_empty(), "{problems:?}");
    let with = correlate::correlate(&obs, &Options::default());
    let without = analyze("no-prestop");
    assert_eq!(only_pod(&with).service.as_deref(), Some("default/web"));
    assert_eq!(only_pod(&with).errors, only_pod(&without).errors);
}

#[test]
fn events_skipped_or_failed_are_counted_as_lost_and_told_apart_from_a_full_ring_buffer() {
    let text = std::fs::read_to_string(dir().join("no-prestop.jsonl")).unwrap()
        + r#"{"kind":"loss","time":"2026-11-22T03:00:01.000000000Z","node":"node-b","reason":"RINGBUF_FULL","count":3,"since":"2026-11-22T03:00:00.000000000Z"}
{"kind":"loss","time":"2026-11-22T03:00:01.000000000Z","node":"node-b","reason":"KERNEL_SKIPPED","count":5,"program":"tcp_retransmit_skb","since":"2026-11-22T03:00:00.000000000Z"}
{"kind":"loss","time":"2026-11-22T03:00:01.000000000Z","node":"node-b","reason":"HANDLER_ERROR","count":2,"program":"tcp_send_reset","since":"2026-11-22T03:00:00.000000000Z"}
"#;
    let (obs, problems) = input::parse_all(&text);
    assert!(problems.is_empty(), "{problems:?}");
    let r = correlate::correlate(&obs, &Options::default());
    let node_b = r
        .nodes
        .iter()
        .find(|n| n.node.to_string() == "node-b")
        .unwrap();
    assert_eq!(node_b.lost_events, 10);
    let about_b: Vec<_> = r
        .warnings
        .iter()
        .filter(|w| w.starts_with("node node-b:"))
        .collect();
    assert_eq!(about_b.len(), 3, "{:#?}", r.warnings);
    assert!(
        about_b[0].contains("could not deliver 3 events (ring buffer full)"),
        "{about_b:?}"
    );
    assert!(
        about_b[1].contains("did not run its agent's probes for 5 events"),
        "{about_b:?}"
    );
    assert!(
        about_b[2].contains("its agent's probes failed on 2 events"),
        "{about_b:?}"
    );
}

#[test]
fn a_pod_listening_3_s_after_its_start_without_a_readiness_probe_refuses_until_it_listens() {
    let r = analyze("startup-no-probe");
    // A scale-up: no pod was deleted, the new pod's refusals make the rollout.
    assert_eq!(r.rollouts.len(), 1);
    let ro = &r.rollouts[0];
    assert!(ro.pods.is_empty());
    assert_eq!(ro.verdict, Verdict::Unsafe);
    let s = &ro.startup[0];
    // node-a routed to it at 300 ms, it listened at 3 000 ms.
    assert_eq!(s.startup_gap_ms, Some(2700.0));
    assert_eq!(s.gap_basis, Basis::Measured);
    // 9 single refusals + one aggregated line of 40, all before it listened.
    assert_eq!(s.errors.before_listening, 49);
    assert_eq!(s.errors.total(), 49);
    assert_eq!(s.verdict, Verdict::Unsafe);
    assert!(
        s.reason.contains("it has no readiness probe"),
        "{}",
        s.reason
    );
    assert!(!s.reason.contains("preStop"), "{}", s.reason);
    // The advice is a readiness probe on the Service's target port, never a preStop.
    assert!(
        r.advice.is_none(),
        "no deletion: nothing to size a preStop from"
    );
    let a = &r.readiness_advice[0];
    assert_eq!(a.before_listening, 49);
    let patch = &a.patch.as_ref().unwrap().command;
    assert!(
        patch.contains(r#""name":"app","readinessProbe":{"tcpSocket":{"port":8080}"#),
        "{patch}"
    );
    assert!(!patch.contains("preStop"), "{patch}");
}

#[test]
fn a_pod_whose_readiness_probe_checks_the_service_port_is_safe_at_its_start() {
    let r = analyze("startup-with-probe");
    let ro = &r.rollouts[0];
    assert_eq!(ro.pods.len(), 1);
    let s = &ro.startup[0];
    // Listening at 300 ms, ready at 3 000 ms, first routed at 3 100 ms.
    assert_eq!(s.startup_gap_ms, Some(-2800.0));
    assert_eq!(s.errors.total(), 0);
    assert_eq!(s.verdict, Verdict::Safe);
    assert_eq!(
        s.readiness_probe.as_ref().map(|p| p.kind.as_str()),
        Some("tcp_socket")
    );
    assert_eq!(ro.verdict, Verdict::Safe);
    assert!(r.readiness_advice.is_empty());
}

#[test]
fn a_readiness_probe_on_another_port_is_named_as_why_the_pod_was_routed_to_early() {
    let text = std::fs::read_to_string(dir().join("startup-no-probe.jsonl"))
        .unwrap()
        .replace(
            r#""readiness_probe":{"type":"none"}"#,
            r#""readiness_probe":{"type":"tcp_socket","port":9090,"period_s":1}"#,
        );
    let (obs, problems) = input::parse_all(&text);
    assert!(problems.is_empty());
    let r = correlate::correlate(&obs, &Options::default());
    let s = &r.rollouts[0].startup[0];
    assert_eq!(s.verdict, Verdict::Unsafe);
    assert!(
        s.reason
            .contains("its tcp_socket readiness probe checks port 9090, not port 8080"),
        "{}",
        s.reason
    );
}

#[test]
fn a_rollout_with_max_unavailable_1_drops_below_its_replicas_and_is_told_max_unavailable_0() {
    let r = analyze("capacity-drop");
    let ro = &r.rollouts[0];
    // No connection failed: every old pod's listener outlived every node's removal.
    assert_eq!(ro.verdict, Verdict::Safe);
    let c = ro.capacity.as_ref().expect("capacity");
    assert_eq!((c.desired, c.desired_source.as_str()), (3, "rollout_start"));
    // Each old pod's endpoint turned terminating 8 ms after its deletion, its replacement
    // became ready 1 510 ms after it: three times 1 502 ms at 2 of 3.
    assert_eq!(c.min_ready, 2);
    assert_eq!(c.ready_below_desired_ms, 3.0 * 1502.0);
    assert_eq!(c.min_ready_ms, 3.0 * 1502.0);
    assert_eq!(
        c.min_serving, 2,
        "the new pods listened before they turned ready"
    );
    assert!(
        c.reason
            .contains("maxUnavailable 1 let the rollout take ready pods away"),
        "{}",
        c.reason
    );
    assert!(ro.reason.contains(&c.reason), "{}", ro.reason);
    let [a] = &r.capacity_advice[..] else {
        panic!("{:#?}", r.capacity_advice)
    };
    assert_eq!((a.desired, a.min_ready), (3, 2));
    assert_eq!(
        a.patch.as_ref().unwrap().command,
        "kubectl patch deployment/web -n default --type=strategic -p \
         '{\"spec\":{\"strategy\":{\"type\":\"RollingUpdate\",\"rollingUpdate\":{\"maxUnavailable\":0,\"maxSurge\":1}}}}'"
    );
    // The chart's capacity rows.
    let table = kubectl_zdt::report::render(&r, kubectl_zdt::report::Format::Table).unwrap();
    assert!(
        table.contains("ready/3  2222")
            && table.contains("3333222")
            && table.contains("min 2 of 3, 4506 ms below"),
        "{table}"
    );
}

#[test]
fn without_the_workloads_own_count_the_replaced_pods_are_the_replicas_asked_for() {
    let text = std::fs::read_to_string(dir().join("capacity-drop.jsonl")).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.contains("\"rollout_start\""))
        .map(|l| format!("{l}\n"))
        .collect();
    let (obs, problems) = input::parse_all(&text);
    assert!(problems.is_empty());
    let r = correlate::correlate(&obs, &Options::default());
    let c = r.rollouts[0].capacity.as_ref().unwrap();
    assert_eq!((c.desired, c.desired_source.as_str()), (3, "deleted_pods"));
    assert_eq!(c.min_ready, 2);
    assert!(c.reason.contains("default 25%"), "{}", c.reason);
    // A scale-up alone asks for no known count: no capacity.
    assert!(analyze("startup-no-probe").rollouts[0].capacity.is_none());
}

#[test]
fn a_client_dialling_the_pods_address_directly_sets_the_window_and_each_client_its_cure() {
    let r = analyze("direct-client-lag");
    let ro = &r.rollouts[0];
    let p = only_pod(&r);
    // Every node stopped routing the Service to the pod at 420 ms; deployment/frontend, with its
    // own endpoint list, dialled 10.244.1.10 until 2 250 ms: its refusals after 420 ms are in the
    // window (not "unrelated"), and the gap runs from the listener's close (25 ms) to them.
    assert_eq!(p.gap_ms, Some(2226.0));
    assert_eq!(p.errors.unsafe_window, 7 + 2);
    assert_eq!(p.errors.unrelated, 0);
    assert!(
        p.reason
            .contains("deployment/frontend -n default, dialling its address directly")
    );
    let client = |name: &str| {
        ro.clients
            .iter()
            .find(|c| c.client == name)
            .unwrap_or_else(|| panic!("{name}: {:#?}", ro.clients))
    };
    let fe = client("deployment/frontend -n default");
    assert_eq!(fe.path, correlate::clients::Path::PodIp);
    assert_eq!(fe.errors.unsafe_window, 7);
    // 2 250 ms − the endpoint's removal at 150 ms.
    assert_eq!(fe.after_endpoint_removed_ms, Some(2100.0));
    assert!(
        fe.reason.contains(
            "kept connecting to web-7d4b9c8f6d-abcde's pod IP directly for 2100 ms after its endpoint was removed: its own endpoint list lags; the preStop must cover it too"
        ),
        "{}",
        fe.reason
    );
    let co = client("deployment/checkout -n default");
    assert_eq!(co.path, correlate::clients::Path::Service);
    assert_eq!(co.errors.unsafe_window, 2);
    assert!(co.reason.contains("kube-proxy's lag"), "{}", co.reason);
    // Keep-alive connections reset at the exit: drain, per client.
    let gw = client("deployment/apigw -n default");
    assert_eq!((gw.errors.at_exit, gw.errors.total()), (3, 3));
    assert!(
        gw.reason.contains("close idle keep-alive connections"),
        "{}",
        gw.reason
    );
    // The advice covers the slowest client path: 2 251 ms (not the dataplane's 420 ms) + 500
    // ms margin → 3 s.
    assert_eq!(r.advice.as_ref().unwrap().prestop_seconds, 3);
    let table = kubectl_zdt::report::render(&r, kubectl_zdt::report::Format::Table).unwrap();
    assert!(
        table.contains(" deployment/frontend -n default  pod IP         7"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .all(|l| l.starts_with("  kubectl ") || l.chars().count() <= 120)
    );
}
