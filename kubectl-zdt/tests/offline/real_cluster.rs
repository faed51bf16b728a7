//! What `trace deployment/fast --save` recorded on a real v1.23 cluster
//! (tests/fixtures/real-cluster, see its README) and `trace deployment/fast2 --save` on a real
//! two-node v1.28 cluster (the same folder), replayed through the engine, `history --rollouts`
//! and `recommend`'s grouping: the report is about the traced workload's deleted pods, the
//! traffic loop's errors belong to the rollout they happened in, and each template change is
//! one rollout.

use std::{collections::BTreeSet, path::Path, time::Duration};

use kubectl_zdt::{
    correlate::{self, Options, Report, Scope, input},
    history::rollouts,
    observation::{Kind, Observation},
    recommend::advise,
};

/// `name` (`k8s-v1.28/fast2-128-b.jsonl`, or a bare name for the v1.23 recordings), in
/// tests/fixtures/real-cluster as `v1.23-fast-t1.jsonl`.
fn recording(name: &str) -> Vec<Observation> {
    let name = match name.split_once('/') {
        Some((version, file)) => format!("{}-{file}", version.trim_start_matches("k8s-")),
        None => format!("v1.23-{name}"),
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/real-cluster")
        .join(&name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (obs, problems) = input::parse_all(&text);
    assert!(problems.is_empty(), "{name}: {problems:?}");
    obs
}

fn scope(workload: &str) -> Scope {
    Scope {
        namespace: "default".into(),
        workload: workload.into(),
    }
}

fn fast() -> Scope {
    scope("deployment/fast")
}

fn pods(r: &Report) -> BTreeSet<String> {
    r.rollouts
        .iter()
        .flat_map(|ro| &ro.pods)
        .filter_map(|p| p.pod.clone().map(String::from))
        .collect()
}

fn workloads(r: &Report) -> Vec<&str> {
    r.rollouts.iter().map(|ro| ro.workload.as_str()).collect()
}

fn outside_warnings(r: &Report) -> Vec<&String> {
    r.warnings
        .iter()
        .filter(|w| w.contains("outside every observed rollout"))
        .collect()
}

/// fast-t1 with one more deletion line, the recording's first one as the API watch would have
/// written it for `pod` of `workload`.
fn fast_t1_with_deletion(pod: &str, workload: &str) -> Vec<Observation> {
    let mut obs = recording("fast-t1.jsonl");
    let mut o = obs
        .iter()
        .find(|o| o.kind == Kind::PodDeleting)
        .unwrap()
        .clone();
    o.pod = Some(pod.into());
    o.pod_uid = Some(format!("uid-of-{pod}").into());
    o.ip = None;
    obs.push(o.with_extra("workload", workload));
    obs
}

#[test]
fn trace_deployment_fast_reports_only_the_two_deleted_fast_pods() {
    let obs = recording("fast-t1.jsonl");
    let r = correlate::correlate_scoped(&obs, &Options::default(), &fast());
    assert_eq!(r.rollouts.len(), 1, "{:#?}", r.rollouts);
    assert_eq!(r.rollouts[0].workload, "deployment/fast");
    // Not the new pods, whose httpd children exit per connection.
    assert_eq!(
        pods(&r),
        [
            "default/fast-6cdf94f8b6-6wbjk",
            "default/fast-6cdf94f8b6-hdssw"
        ]
        .map(String::from)
        .into()
    );
    let patches = &r.advice.as_ref().expect("advice").patches;
    assert!(
        patches
            .iter()
            .all(|p| p.command.contains("deployment/fast ")),
        "{patches:#?}"
    );
}

#[test]
fn pods_that_were_never_deleted_are_no_rollout_the_traffic_pod_least_of_all() {
    // Unscoped, as `analyze` reads the stream: the traffic pod (415 resets and refusals of its
    // own sockets), the bare pod tp-short and the never-restarted slow had process exits or
    // errors, but no deletion.
    let obs = recording("fast-t1.jsonl");
    let r = correlate::correlate(&obs, &Options::default());
    assert_eq!(workloads(&r), ["deployment/fast"]);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("not deleted") && w.contains("default/zdt-traffic-fast")),
        "{:#?}",
        r.warnings
    );
}

#[test]
fn the_traffic_pods_own_deletion_at_the_end_of_the_trace_is_no_rollout() {
    // The trace deletes its traffic pod when it ends; the agents' journals keep that deletion.
    let obs = fast_t1_with_deletion("default/zdt-traffic-fast", "pod/zdt-traffic-fast");
    let r = correlate::correlate(&obs, &Options::default());
    assert_eq!(workloads(&r), ["deployment/fast"]);
    let found: Vec<String> = rollouts::find(&obs, Duration::from_secs(600))
        .into_iter()
        .map(|f| f.workload)
        .collect();
    assert_eq!(found, ["deployment/fast"]);
}

#[test]
fn the_traffic_loops_errors_are_counted_in_the_rollout_they_happened_in() {
    let obs = recording("fast-t1.jsonl");
    let traffic: u64 = obs
        .iter()
        .filter(|o| o.kind == Kind::ConnError)
        .map(Observation::weight)
        .sum();
    assert_eq!(traffic, 25, "6 refused + 19 timed out");
    let r = correlate::correlate_scoped(&obs, &Options::default(), &fast());
    assert!(outside_warnings(&r).is_empty(), "{:#?}", r.warnings);
    let rollout = &r.rollouts[0];
    // Each pod's own Service name and the loop's are one form.
    for p in &rollout.pods {
        assert_eq!(p.service.as_deref(), Some("default/fast"), "{:?}", p.pod);
    }
    // The 6 refusals are the pods' own refused SYNs seen from the client (not counted twice);
    // the 19 timeouts are either a pod's or the rollout's.
    let timeouts: u64 = rollout.pods.iter().map(|p| p.errors.after_netns_gone).sum();
    assert_eq!(timeouts + rollout.unattributed_errors, 19, "{rollout:#?}");
}

#[test]
fn another_workload_deleted_beside_the_traced_one_is_left_out_of_its_report() {
    // Had slow's pod been deleted during the trace (it was not), its rows and its patch would
    // be about another workload.
    let obs = fast_t1_with_deletion("default/slow-d5466dbd8-tvp9c", "deployment/slow");
    let all = correlate::correlate(&obs, &Options::default());
    assert!(
        all.rollouts
            .iter()
            .any(|ro| ro.workload == "deployment/slow")
    );
    let r = correlate::correlate_scoped(&obs, &Options::default(), &fast());
    assert_eq!(workloads(&r), ["deployment/fast"]);
    let patches = &r.advice.as_ref().expect("advice").patches;
    assert!(
        patches
            .iter()
            .all(|p| !p.command.contains("deployment/slow")),
        "{patches:#?}"
    );
}

#[test]
fn two_template_changes_six_minutes_apart_are_two_rollouts_everywhere() {
    let mut obs = recording("fast-t1.jsonl");
    obs.extend(recording("fast-t4-notraffic.jsonl"));

    let r = correlate::correlate(&obs, &Options::default());
    let fast: Vec<BTreeSet<String>> = r
        .rollouts
        .iter()
        .filter(|ro| ro.workload == "deployment/fast")
        .map(|ro| {
            ro.pods
                .iter()
                .filter_map(|p| p.pod.clone().map(String::from))
                .collect()
        })
        .collect();
    assert_eq!(
        fast,
        [
            [
                "default/fast-6cdf94f8b6-6wbjk",
                "default/fast-6cdf94f8b6-hdssw"
            ],
            [
                "default/fast-679b4687dd-dc5s8",
                "default/fast-679b4687dd-gnmsg"
            ],
        ]
        .map(|p| p.map(String::from).into())
    );

    // `history --rollouts`, with its default 10-minute split.
    let found: Vec<(String, usize)> = rollouts::find(&obs, Duration::from_secs(600))
        .into_iter()
        .map(|f| (f.workload, f.pods.len()))
        .collect();
    assert_eq!(
        found,
        [("deployment/fast".into(), 2), ("deployment/fast".into(), 2)]
    );

    // `recommend`'s ROLLOUTS column.
    let evidence = advise::gather(&obs, 500);
    let fast = evidence
        .iter()
        .find(|w| w.key.workload == "deployment/fast")
        .unwrap();
    assert_eq!((fast.rollouts, fast.pods.len()), (2, 4));
}

#[test]
fn trace_deployment_fast2_on_two_nodes_reports_its_four_deleted_pods_and_nothing_else() {
    let obs = recording("k8s-v1.28/fast2-128-b.jsonl");
    let r = correlate::correlate_scoped(&obs, &Options::default(), &scope("deployment/fast2"));
    assert_eq!(workloads(&r), ["deployment/fast2"]);
    assert_eq!(
        pods(&r),
        ["cbpwm", "gwx2x", "jxlz8", "kqp74"]
            .map(|s| format!("default/fast2-cb57b7b85-{s}"))
            .into()
    );
    let patches = &r.advice.as_ref().expect("advice").patches;
    assert_eq!(patches.len(), 1, "{patches:#?}");
    assert!(
        patches[0].command.contains("deployment/fast2 "),
        "{patches:#?}"
    );
    // Unscoped too: fast, spread, slow and prestop had no pod deleted.
    let all = correlate::correlate(&obs, &Options::default());
    assert_eq!(workloads(&all), ["deployment/fast2"]);
}

#[test]
fn the_reconciliation_counts_the_kernel_lines_of_the_reported_pods_only() {
    let obs = recording("fast-t1.jsonl");
    let traced = kubectl_zdt::cluster::trace::Traced {
        report: correlate::correlate_scoped(&obs, &Options::default(), &fast()),
        // As `trace-stderr-reconciliation.txt` of that run: 25 of 400 failed.
        traffic: Some((400, 25)),
        traffic_problem: None,
        observations: obs,
    };
    // 15 + 12 refusals on the two deleted pods (the node's black-box client's 21 and the
    // loop's 6); not the 34 refusals and 381 resets of the traffic pod's own sockets, nor
    // tp-short's.
    assert_eq!(
        kubectl_zdt::cluster::trace::reconcile(&traced).as_deref(),
        Some(
            "clients: 25 of 400 requests failed (refused 6, reset 0, timed out 19); \
             kernel on the pods: 27 refused, 0 reset"
        )
    );
}

/// `deployment/startup`: no readiness probe, httpd listening 3 s after the container starts
/// (tests/fixtures/real-cluster/README.md). What the independent clients saw, and the refusals
/// the new pods' own kernels sent.
#[test]
fn new_pods_routed_before_they_listened_refused_what_the_clients_saw_and_call_for_a_probe() {
    for (run, clients_refused, new_pods_refused, timeouts) in [
        // The node's client 299, the --traffic loop 106; the new pods' kernels refused 386.
        // The loop's 17 timeouts are its own lines only, on the Service.
        ("startup-t1.jsonl", 299 + 106, 181 + 205, 17),
        // The clients on vm 252 and node-b 262; the new pods' kernels refused 163 and 324.
        ("k8s-v1.28/startup-128-a.jsonl", 252 + 262, 163 + 324, 0),
    ] {
        let obs = recording(run);
        let r =
            correlate::correlate_scoped(&obs, &Options::default(), &scope("deployment/startup"));
        assert_eq!(r.rollouts.len(), 1, "{run}");
        let ro = &r.rollouts[0];
        assert_eq!(ro.startup.len(), 2, "{run}");
        let e = ro.errors;
        assert_eq!(e.before_listening, new_pods_refused, "{run}: {e:?}");
        assert_eq!(
            e.before_listening + e.unsafe_window,
            clients_refused,
            "{run}: {e:?}"
        );
        // Every refused connection has a cause; the loop's refusals on the Service, which
        // an old and a new pod could both explain, are the pods' own refusals, not more.
        assert_eq!(e.unrelated + e.undetermined, 0, "{run}: {e:?}");
        assert_eq!(ro.unattributed_errors, timeouts, "{run}");
        for s in &ro.startup {
            assert_eq!(s.verdict, correlate::Verdict::Unsafe, "{run}: {s:#?}");
            // httpd listened 3 s after the container started, ≥ 1.5 s after the first routing.
            assert!(
                s.startup_gap_ms.is_some_and(|g| g > 1_500.0),
                "{run}: {:?}",
                s.startup_gap_ms
            );
            assert!(s.refusing_window.is_some(), "{run}");
            assert!(!s.reason.contains("preStop"), "{run}: {}", s.reason);
        }
        assert!(
            ro.reason
                .contains("a readiness probe cures them, not a preStop"),
            "{run}: {}",
            ro.reason
        );
        // The advice for these refusals is a readiness probe on the target port.
        let [a] = &r.readiness_advice[..] else {
            panic!("{run}: {:#?}", r.readiness_advice)
        };
        assert_eq!(a.before_listening, new_pods_refused, "{run}");
        let patch = &a.patch.as_ref().expect("patch").command;
        assert!(
            patch.starts_with("kubectl patch deployment/startup -n default")
                && patch.contains(r#""name":"web","readinessProbe":{"tcpSocket":{"port":8080}"#)
                && !patch.contains("preStop"),
            "{run}: {patch}"
        );
    }
}

#[test]
fn the_startup_rollout_kept_its_ready_endpoints_but_none_listened_for_a_while() {
    // maxSurge 25% → 1, maxUnavailable 25% → 0 of 2 replicas: the controller never had fewer
    // than 2 ready endpoints; but the new pods' endpoints were ready 2.5 s before httpd listened,
    // and once both old pods had left none of the ready endpoints listened.
    for (run, no_listener_ms) in [
        ("startup-t1.jsonl", 1505.829),
        ("k8s-v1.28/startup-128-a.jsonl", 548.416),
    ] {
        let r = correlate::correlate_scoped(
            &recording(run),
            &Options::default(),
            &scope("deployment/startup"),
        );
        let c = r.rollouts[0].capacity.as_ref().expect("capacity");
        assert_eq!((c.desired, c.min_ready), (2, 2), "{run}");
        assert_eq!(c.ready_below_desired_ms, 0.0, "{run}");
        assert_eq!(
            (c.min_serving, c.min_serving_ms),
            (0, no_listener_ms),
            "{run}"
        );
        assert!(
            c.reason.contains("turned ready before their pods listened"),
            "{run}"
        );
        // The cure is the readiness probe, not the strategy.
        assert!(r.capacity_advice.is_empty(), "{run}");
    }
    // fast: a tcpSocket readiness probe; every ready endpoint listened.
    let r = correlate::correlate_scoped(&recording("fast-t1.jsonl"), &Options::default(), &fast());
    let c = r.rollouts[0].capacity.as_ref().expect("capacity");
    assert_eq!((c.desired, c.min_ready, c.min_serving), (2, 2, 2));
}

#[test]
fn each_client_is_told_apart_with_the_failures_it_saw() {
    // v1.23 startup: the node's own client (198.18.0.1) saw 299 refusals, the --traffic loop
    // (its pod named by the API watch) 106.
    let r = correlate::correlate_scoped(
        &recording("startup-t1.jsonl"),
        &Options::default(),
        &scope("deployment/startup"),
    );
    let refused = |name: &str| {
        let c: Vec<_> = r.rollouts[0]
            .clients
            .iter()
            .filter(|c| c.client == name)
            .collect();
        assert!(!c.is_empty(), "{name}: {:#?}", r.rollouts[0].clients);
        c.iter()
            .map(|c| c.errors.unsafe_window + c.errors.before_listening)
            .sum::<u64>()
    };
    assert_eq!(refused("address 198.18.0.1"), 299);
    assert_eq!(refused("pod/zdt-traffic-startup -n default"), 106);
    // v1.28 one node, both ends watched: the node's client went through the ClusterIP and saw
    // 18 refused, 3 reset, 146 timed out.
    let r = correlate::correlate(
        &recording("k8s-v1.28/one-node-fast-final.jsonl"),
        &Options::default(),
    );
    let [c] = &r.rollouts[0].clients[..] else {
        panic!("{:#?}", r.rollouts[0].clients)
    };
    assert_eq!(c.client, "address 198.18.0.1");
    assert_eq!(c.path, correlate::clients::Path::Service);
    let e = c.errors;
    assert_eq!(
        (e.unsafe_window, e.at_exit, e.after_netns_gone),
        (18, 3, 146)
    );
}
