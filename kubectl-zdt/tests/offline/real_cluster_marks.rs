//! The engine on what `trace --restart --save` recorded on real clusters (Kubernetes v1.23 on
//! one node, v1.28 on two; tests/fixtures/real-cluster/README.md): the pods' termination marks.
//!
//! These streams were written by an agent that still filed every process's exit as the pod's
//! and never flagged the preStop exec, so they show what the engine must make of such lines:
//! busybox `httpd` forks a child per connection, and those children's exits must neither end a
//! pod nor make an undeleted one part of a rollout.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use jiff::Timestamp;
use kubectl_zdt::correlate::{self, Options, PodReport, Report, Verdict};
use kubectl_zdt::observation::{Kind, Observation};

const RUNS: [&str; 8] = [
    "v1.23-fast-t1",
    "v1.23-fast-t4-notraffic",
    "v1.23-legacy-fast-t1",
    "v1.23-prestop-t2",
    "v1.23-startup-t1",
    "v1.28-fast-128-a",
    "v1.28-fast2-128-b",
    "v1.28-startup-128-a",
];

fn stream(run: &str) -> Vec<Observation> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/real-cluster")
        .join(format!("{run}.jsonl"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (obs, bad) = correlate::input::parse_all(&text);
    assert!(bad.is_empty(), "{run}: {} bad lines", bad.len());
    obs
}

fn pods(r: &Report) -> impl Iterator<Item = &PodReport> {
    r.rollouts.iter().flat_map(|ro| ro.pods.iter())
}

fn pod<'a>(r: &'a Report, name: &str) -> &'a PodReport {
    pods(r)
        .find(|p| p.pod.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{name} is not in the report"))
}

/// Pods with a `pod_deleting` line, and each pod's processes that a signal from outside the pod
/// (the container runtime) went to.
fn deleted_and_signalled(obs: &[Observation]) -> (BTreeSet<String>, BTreeMap<String, Vec<u64>>) {
    let deleted = obs
        .iter()
        .filter(|o| o.kind == Kind::PodDeleting)
        .filter_map(|o| o.pod.clone().map(String::from))
        .collect();
    let mut signalled: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for o in obs.iter().filter(|o| o.kind == Kind::Signal) {
        let sender = o.details.process().sender.as_deref();
        if matches!(sender, Some("runc" | "containerd-shim"))
            && let (Some(p), Some(pid)) = (&o.pod, o.details.process().pid)
        {
            signalled.entry(p.to_string()).or_default().push(pid);
        }
    }
    (deleted, signalled)
}

#[test]
fn a_pods_exit_is_its_signalled_main_process_never_a_per_connection_child() {
    for run in RUNS {
        let obs = stream(run);
        let r = correlate::correlate(&obs, &Options::default());
        let (deleted, signalled) = deleted_and_signalled(&obs);
        for p in pods(&r) {
            let name = p.pod.as_deref().unwrap_or_default().to_owned();
            let Some(exit) = &p.marks.exit else { continue };
            if exit.source == Kind::ContainerTerminated {
                continue;
            }
            // The exit mark is the last exit of a process the runtime signalled, the sandbox's
            // `pause` (killed once the containers are gone) aside.
            let pids = signalled.get(&name).cloned().unwrap_or_default();
            let main_exits: Vec<Timestamp> = obs
                .iter()
                .filter(|o| o.kind == Kind::Exit && o.pod.as_deref() == Some(name.as_str()))
                .filter(|o| o.details.process().comm.as_deref() != Some("pause"))
                .filter(|o| {
                    o.details
                        .process()
                        .pid
                        .is_some_and(|pid| pids.contains(&pid))
                })
                .map(|o| o.time)
                .collect();
            assert!(
                deleted.contains(&name),
                "{run}: {name} was never deleted but has an exit mark"
            );
            assert_eq!(
                Some(exit.time),
                main_exits.iter().max().copied(),
                "{run}: {name}'s exit is not its signalled main process's"
            );
            if let Some(gone) = &p.marks.netns_gone {
                assert!(
                    exit.time <= gone.time,
                    "{run}: {name} exits after its network namespace is gone"
                );
            }
        }
    }
}

#[test]
fn pods_that_were_never_deleted_are_in_no_rollout_for_their_childrens_exits() {
    // v1.23 prestop-t2: `slow` and `fast` were not touched; their httpd children exited all the
    // time. Before, each became a rollout of its own ("no node reported removing the pod").
    let obs = stream("v1.23-prestop-t2");
    let r = correlate::correlate(&obs, &Options::default());
    for w in ["deployment/slow", "deployment/fast"] {
        assert!(
            r.rollouts.iter().all(|ro| ro.workload != w),
            "{w} is reported as a rollout: {:?}",
            r.rollouts.iter().map(|ro| &ro.workload).collect::<Vec<_>>()
        );
    }
}

#[test]
fn the_exec_between_deletion_and_sigterm_is_the_prestop_hook() {
    // prestop.yaml: `preStop: exec sleep 3`. The kubelet ran `sleep` 99 ms after the deletion was
    // seen and sent SIGTERM when it returned, 3.016 s later.
    let obs = stream("v1.23-prestop-t2");
    let r = correlate::correlate(&obs, &Options::default());
    for (name, exec, sigterm) in [
        (
            "default/prestop-74748b8c97-kk8p4",
            "2026-12-06T17:10:04.841312992Z",
            "2026-12-06T17:10:07.857395548Z",
        ),
        (
            "default/prestop-74748b8c97-5rbws",
            "2026-12-06T17:10:05.904968057Z",
            "2026-12-06T17:10:08.922289087Z",
        ),
    ] {
        let p = pod(&r, name);
        let prestop = p.marks.prestop.as_ref().expect("preStop mark");
        assert_eq!(prestop.time, exec.parse::<Timestamp>().unwrap(), "{name}");
        assert_eq!(
            p.marks.sigterm.as_ref().map(|m| m.time),
            Some(sigterm.parse().unwrap()),
            "{name}"
        );
        assert!(
            !p.missing.iter().any(|m| m == "prestop"),
            "{name} still misses its preStop: {:?}",
            p.missing
        );
    }
    // A pod without a preStop hook gets none: its first exec after the deletion is none (the
    // runtime's SIGTERM came first).
    let obs = stream("v1.23-fast-t1");
    let r = correlate::correlate(&obs, &Options::default());
    for p in pods(&r).filter(|p| p.marks.delete.is_some()) {
        assert!(p.marks.prestop.is_none(), "{:?} has a preStop", p.pod);
    }
}

#[test]
fn refused_connections_in_the_window_equal_what_the_node_clients_and_traffic_loop_saw() {
    // Independent clients (a new connection to the ClusterIP every 5 ms) and, where it ran, the
    // `--traffic` loop: their ECONNREFUSED counts against the kernel's refusals in the windows.
    for (run, workload, refused) in [
        ("v1.23-fast-t1", "deployment/fast", 21 + 6),
        ("v1.23-fast-t4-notraffic", "deployment/fast", 11),
        ("v1.23-legacy-fast-t1", "deployment/fast", 8 + 5),
        ("v1.28-fast-128-a", "deployment/fast", 5 + 10),
        ("v1.28-fast2-128-b", "deployment/fast2", 8 + 8),
    ] {
        let r = correlate::correlate(&stream(run), &Options::default());
        let got: u64 = r
            .rollouts
            .iter()
            .filter(|ro| ro.workload == workload)
            .flat_map(|ro| ro.pods.iter())
            .map(|p| p.errors.unsafe_window)
            .sum();
        assert_eq!(got, refused, "{run}");
    }
}

#[test]
fn connections_reset_at_a_pods_exit_are_resets_at_exit_as_the_clients_saw_them() {
    // startup: the old pod's httpd exits with a request open; the node client and the traffic
    // loop (v1.23), the clients on both nodes (v1.28), each got one ECONNRESET. The recording
    // agent stamped these resets with local port 0 (the kernel releases the port before the
    // abort-on-close RST), which made them "unrelated" to the pod's port 8080.
    for (run, pod_name) in [
        ("v1.23-startup-t1", "default/startup-799dc5f4d8-fq2tc"),
        ("v1.28-startup-128-a", "default/startup-7588cf7c89-82k4s"),
    ] {
        let r = correlate::correlate(&stream(run), &Options::default());
        let p = pod(&r, pod_name);
        assert_eq!(p.errors.at_exit, 1 + 1, "{run}: {:?}", p.errors);
    }
}

#[test]
fn a_refusal_the_agent_tagged_as_the_kubelets_probe_is_counted_apart_from_client_errors() {
    let mut obs = stream("v1.23-fast-t1");
    let name = "default/fast-6cdf94f8b6-hdssw";
    let before = correlate::correlate(&obs, &Options::default());
    let was = pod(&before, name).errors;
    // One of the pod's refusals in its window, as the agent tags a tcpSocket readiness probe's.
    let line = obs
        .iter_mut()
        .filter(|o| o.kind == Kind::Refused && o.pod.as_deref() == Some(name))
        .nth(3)
        .expect("a refusal");
    line.details.kernel_mut().probe = Some("kubelet".into());
    let after = correlate::correlate(&obs, &Options::default());
    let now = pod(&after, name).errors;
    assert_eq!(now.probes, 1);
    assert_eq!(now.unsafe_window, was.unsafe_window - 1);
    assert_eq!(now.total(), was.total() - 1, "a probe is no client error");
}

/// The kubelet closes a tcpSocket probe's connection right after its connect, lingering up to
/// 1 s; a server that greets on connect (or answers the bare connect, as the e2e sample app
/// did on the real cluster: a line per probe and pod) is then reset by the kubelet's own kernel,
/// whose socket reports ECONNRESET although the probe passed. Only the pod's reset of a probe's
/// connection is a probe failure, counted once.
#[test]
fn a_probe_reset_only_the_kubelets_socket_reports_is_no_probe_failure() {
    let mut obs = stream("v1.28-two-nodes-fast2-s13");
    let before = correlate::correlate(&obs, &Options::default());
    let name = before.rollouts[0].pods[0].pod.clone().expect("a pod name");
    let was = pod(&before, &name).errors;
    let refused = obs
        .iter()
        .find(|o| o.kind == Kind::Refused && o.pod.as_deref() == Some(name.as_str()))
        .expect("a refusal")
        .clone();
    // The kubelet's line, as the agent wrote one per probe (`conn_error`, `probe: kubelet`).
    let mut kubelet = refused.clone();
    kubelet.kind = Kind::ConnError;
    kubelet.reason = Some("ECONNRESET".into());
    kubelet.peer_port = Some(40_404);
    kubelet.details.kernel_mut().probe = Some("kubelet".into());
    obs.push(kubelet.clone());
    let alone = correlate::correlate(&obs, &Options::default());
    assert_eq!(pod(&alone, &name).errors, was, "the kubelet's own reset");

    // The pod reset the same connection: a probe failure, once.
    let mut by_pod = kubelet;
    by_pod.kind = Kind::Reset;
    by_pod.reason = Some("TCP_ABORT_ON_CLOSE".into());
    by_pod.details.kernel_mut().probe = None;
    obs.push(by_pod);
    let both = correlate::correlate(&obs, &Options::default());
    let now = pod(&both, &name).errors;
    assert_eq!(now.probes, was.probes + 1, "{now:?}");
    assert_eq!(now.total(), was.total(), "a probe is no client error");
}

#[test]
fn a_connection_seen_failing_from_both_ends_is_counted_once_as_the_client_saw_it() {
    // The pod's kernel refused or reset each connection and the client's kernel reported the
    // error for it too: 30 refusals and 8 resets were counted for 15 and 4.
    let r = correlate::correlate(
        &stream("v1.28-one-node-fast-both-ends"),
        &Options::default(),
    );
    let mut errors = kubectl_zdt::correlate::ErrorCounts::default();
    for p in pods(&r) {
        errors.merge(&p.errors);
    }
    // 14 refused + the kubelet's readiness probe (the recording agent did not tag probes yet).
    assert_eq!(errors.unsafe_window, 14 + 1, "{errors:?}");
    assert_eq!(errors.at_exit, 4, "{errors:?}");
    assert_eq!(errors.after_netns_gone, 80, "{errors:?}");
}

#[test]
fn the_final_agents_counts_equal_the_node_clients_refused_reset_and_timed_out() {
    for (run, verdict, (refused, reset, timeout)) in [
        ("v1.28-one-node-fast-final", Verdict::Unsafe, (18, 3, 146)),
        ("v1.28-one-node-prestop-final", Verdict::Safe, (0, 0, 0)),
        // 15 of the 102 timeouts reused a port given up on (to the same gone pod).
        (
            "v1.28-one-node-fast-port-reuse",
            Verdict::Unsafe,
            (18, 0, 102),
        ),
        // One connect's first SYN to a new pod went unanswered and its retransmission was
        // answered: the client saw no failure, so neither does the report.
        (
            "v1.28-one-node-fast-retransmit-answered",
            Verdict::Unsafe,
            (15, 1, 135),
        ),
        // Two nodes: the sums of the two nodes' clients (47 + 59, 7 + 7, 78 + 71).
        (
            "v1.28-two-nodes-fast2-final",
            Verdict::Unsafe,
            (106, 14, 149),
        ),
        // Two nodes again, agents of a later tree (47 + 52, 3 + 10, 86 + 91).
        ("v1.28-two-nodes-fast2-s10", Verdict::Unsafe, (99, 13, 177)),
        // Two nodes, agents reporting only the exits of processes started or signalled from
        // outside their pod (45 + 56, 2 + 1, 54 + 40).
        ("v1.28-two-nodes-fast2-s13", Verdict::Unsafe, (101, 3, 94)),
        // Every old pod's namespace number went at once to a new pod's sandbox.
        (
            "v1.28-one-node-fast-netns-reuse",
            Verdict::Unsafe,
            (27, 2, 142),
        ),
    ] {
        let r = correlate::correlate(&stream(run), &Options::default());
        assert_eq!(r.rollouts.len(), 1, "{run}");
        let e = r.rollouts[0].errors;
        assert_eq!(
            (e.unsafe_window, e.at_exit, e.after_netns_gone),
            (refused, reset, timeout),
            "{run}: {e:?}"
        );
        assert_eq!(e.unrelated + e.undetermined, 0, "{run}: {e:?}");
        assert_eq!(r.rollouts[0].unattributed_errors, 0, "{run}");
        assert_eq!(r.rollouts[0].verdict, verdict, "{run}");
    }
}

/// busybox httpd forks a child per connection and per readiness probe, and each child exited
/// inside its pod: 3 539 of the 4 155 lines of a two-node rollout recorded by the agents of
/// s10. The agents of s13 report only the exits of processes started from outside the pod (its
/// `sh` entrypoint, the sandbox's `pause`, runc's own stages) or signalled from outside it: 10
/// of 504 lines for the same rollout with as much traffic, and every old pod still has its
/// exit mark, its signalled `sh`'s.
#[test]
fn a_forking_servers_children_leave_no_exit_line_and_every_old_pod_its_exit_mark() {
    let exits = |run: &str| -> Vec<Observation> {
        stream(run)
            .into_iter()
            .filter(|o| o.kind == Kind::Exit)
            .collect()
    };
    let comm = |o: &Observation| o.details.process().comm.clone().unwrap_or_default();
    let before = exits("v1.28-two-nodes-fast2-s10");
    assert!(
        before.iter().filter(|o| comm(o) == "httpd").count() > 3_000,
        "the recording of s10 has the children's exits"
    );
    let obs = stream("v1.28-two-nodes-fast2-s13");
    let after = exits("v1.28-two-nodes-fast2-s13");
    let comms: std::collections::BTreeSet<String> = after.iter().map(comm).collect();
    assert_eq!(
        comms,
        ["pause", "runc:[1:CHILD]", "sh"]
            .map(String::from)
            .into_iter()
            .collect(),
        "{after:#?}"
    );
    assert_eq!((after.len(), obs.len()), (10, 504));
    let r = correlate::correlate(&obs, &Options::default());
    let pods = &r.rollouts[0].pods;
    assert_eq!(pods.len(), 4);
    for p in pods {
        let exit = p.marks.exit.as_ref().expect("an exit mark");
        assert!(
            after
                .iter()
                .any(|o| o.time == exit.time && comm(o) == "sh" && o.pod == p.pod),
            "{:?}: {exit:?}",
            p.pod
        );
    }
}

/// `recommend` over a whole journal history: node-b's journal outlived the cluster it was
/// written in (hours older than the rest), and named pod IPs that today's pods hold again.
/// Those old lines, naming only an address nobody claimed before them, are not today's pods'
/// (they were: every propagation of node-b's pods came out ~13 h, with node-b's clock taken
/// for 6.6 h behind).
#[test]
fn a_nodes_journal_from_hours_before_does_not_lend_its_lines_to_todays_pods() {
    let today = stream("v1.28-one-node-fast-retransmit-answered");
    let mut both: Vec<Observation> = stream("v1.28-two-nodes-fast2-final")
        .into_iter()
        .filter(|o| o.node.0 == "node-b")
        .collect();
    assert!(
        both.iter().any(|o| o.pod.is_none()
            && o.kind == Kind::DataplaneRemoved
            && o.ip == Some("198.18.0.28".parse().unwrap())),
        "the old journal names today's new pod's address"
    );
    both.extend(today.iter().cloned());
    let alone = correlate::correlate(&today, &Options::default());
    let mixed = correlate::correlate(&both, &Options::default());
    assert!(
        mixed.warnings.iter().all(|w| !w.contains("clock")),
        "{:?}",
        mixed.warnings
    );
    let fast = |r: &Report| {
        let ro = r
            .rollouts
            .iter()
            .find(|ro| ro.workload == "deployment/fast")
            .expect("the fast rollout");
        (
            ro.errors,
            ro.pods
                .iter()
                .map(|p| (p.pod.clone(), p.propagation_ms, p.gap_ms))
                .collect::<Vec<_>>(),
            ro.startup
                .iter()
                .map(|s| (s.pod.clone(), s.startup_gap_ms))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(fast(&mixed), fast(&alone));
}

/// Each old pod's namespace inode number went to a new pod's sandbox within a second, and the
/// new app listened before the agent had found whose namespace it was: the agent held those
/// lines until it found the new pod and named them after it, so each new pod's listener is
/// seen opening (exactly, not only from /proc) and no line of a new pod is filed under the old
/// pod that had the number.
#[test]
fn a_reused_namespace_numbers_first_lines_are_the_new_pods() {
    let obs = stream("v1.28-one-node-fast-netns-reuse");
    let r = correlate::correlate(&obs, &Options::default());
    let startup = &r.rollouts[0].startup;
    assert_eq!(startup.len(), 2);
    for s in startup {
        let pod = s.pod.as_ref().map(|p| p.to_string()).unwrap_or_default();
        assert!(s.marks.listener_open.is_some(), "{pod}: no listener seen");
        assert!(s.startup_gap_ms.is_some_and(|g| g < 0.0), "{pod}: {s:?}");
        // The kernel's own line, named by the agent after a wait.
        assert!(
            obs.iter().any(|o| o.kind == Kind::ListenerOpen
                && o.pod.as_ref().map(|p| p.to_string()) == Some(pod.clone())
                && o.details.api().seen.is_none()),
            "{pod}"
        );
    }
    // A number was reused: a new pod's namespace number was an old pod's minutes before.
    let number = |pod: &str| -> Option<u64> {
        obs.iter()
            .filter(|o| o.pod.as_ref().is_some_and(|p| p == pod))
            .filter(|o| {
                matches!(
                    o.kind,
                    Kind::ListenerOpen | Kind::ListenerClosed | Kind::NetnsGone
                )
            })
            .find_map(|o| o.details.kernel().netns)
    };
    let old: BTreeSet<u64> = r.rollouts[0]
        .pods
        .iter()
        .filter_map(|p| number(&p.pod.as_ref()?.to_string()))
        .collect();
    assert!(
        startup
            .iter()
            .any(|s| number(&s.pod.as_ref().unwrap().to_string()).is_some_and(|n| old.contains(&n))),
        "{old:?}"
    );
}

/// Two nodes on one kernel, `vm`'s kube-proxy on iptables-legacy (its agent attached the
/// x_tables trigger when the first nat table appeared, after it had started) and `node-b`'s on
/// iptables-nft. The report equals the two independent clients (62 + 58 refused, 2 + 0 reset,
/// 43 + 21 timed out; one more node-b timeout is the report's one undetermined error), and
/// every removal on `vm` is timed by its table replace: the swap bounded by the rule counters,
/// to well under a millisecond, where `node-b`'s come from nf_tables notifications.
#[test]
fn a_legacy_node_beside_an_nft_node_is_timed_by_its_replaces() {
    let obs = stream("v1.28-two-nodes-fast2-legacy");
    let r = correlate::correlate(&obs, &Options::default());
    assert_eq!(r.rollouts.len(), 1);
    let ro = &r.rollouts[0];
    let e = ro.errors;
    assert_eq!(
        (e.unsafe_window, e.at_exit, e.after_netns_gone),
        (120, 2, 64),
        "{e:?}"
    );
    assert_eq!((e.unrelated, e.undetermined), (0, 1), "{e:?}");
    assert_eq!(ro.unattributed_errors, 0);
    assert_eq!(ro.verdict, Verdict::Unsafe);
    let removed = |node: &str| -> Vec<&Observation> {
        obs.iter()
            .filter(|o| o.kind == Kind::DataplaneRemoved && o.node.0 == node)
            .collect()
    };
    let (vm, node_b) = (removed("vm"), removed("node-b"));
    assert_eq!((vm.len(), node_b.len()), (4, 4));
    for o in vm {
        let f = o.other_fields();
        assert_eq!(f["mode"], "iptables-legacy", "{}", o.to_json_line());
        assert_eq!(f["swap_bounds"], "counters", "{}", o.to_json_line());
        assert!(
            o.uncertainty_ns.is_some_and(|u| u < 1_000_000),
            "{}",
            o.to_json_line()
        );
    }
    for o in node_b {
        assert_eq!(
            o.other_fields()["mode"],
            "iptables-nft",
            "{}",
            o.to_json_line()
        );
    }
}
