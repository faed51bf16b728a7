//! Properties of the engine over any simulated rollout (1–3 nodes, 1–4 pods, any preStop,
//! shutdown speed, per-node kube-proxy delay, some nodes silent).

use kubectl_zdt::{
    correlate::{
        Options, Report, correlate,
        simulate::{self, PodPlan},
        time::WallNs,
    },
    observation::{Kind, NodeName, Observation},
    report::{self, Format},
};
use proptest::prelude::*;

const T0: WallNs = WallNs(1_795_310_205_000_000_000);

type RawPod = (i64, Option<i64>, i64, i64, i64, Vec<Option<i64>>, usize);

fn plans() -> impl Strategy<Value = (usize, Vec<PodPlan>)> {
    (1usize..4)
        .prop_flat_map(|nodes| {
            let pod = (
                0i64..5_000,
                prop::option::of(0i64..3_000),
                0i64..2_000,
                0i64..50,
                1i64..500,
                prop::collection::vec(prop::option::weighted(0.85, 0i64..3_000), nodes),
                0..nodes,
            );
            (Just(nodes), prop::collection::vec(pod, 1..5))
        })
        .prop_map(|(nodes, raw): (usize, Vec<RawPod>)| {
            let pods = raw
                .into_iter()
                .enumerate()
                .map(
                    |(i, (delete, prestop, close, exit_extra, netns, removals, node))| PodPlan {
                        name: format!("default/web-5d8f7c9b6d-p{i:04}"),
                        uid: format!("uid-{i}"),
                        ip: format!("10.244.0.{}", i + 10).parse().unwrap(),
                        node,
                        delete_ms: delete,
                        prestop_ms: prestop,
                        close_after_sigterm_ms: close,
                        exit_after_sigterm_ms: close + exit_extra,
                        netns_after_exit_ms: netns,
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

fn run(obs: &[Observation]) -> Report {
    correlate(obs, &Options::default())
}

/// (pod, gap) for every pod in the report.
fn gaps(r: &Report) -> Vec<(Option<String>, Option<f64>)> {
    let mut g: Vec<_> = r
        .rollouts
        .iter()
        .flat_map(|ro| &ro.pods)
        .map(|p| (p.pod.clone(), p.gap_ms))
        .collect();
    g.sort_by(|a, b| a.0.cmp(&b.0));
    g
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_report_never_depends_on_input_order(
        (obs, shuffled) in (plans(), prop::collection::vec(any::<bool>(), 4)).prop_flat_map(|((nodes, mut pods), reuse)| {
            // Some pods get the address of the pod before them, as a CNI hands out freed IPs.
            for i in 1..pods.len() {
                if reuse[i] {
                    pods[i].ip = pods[i - 1].ip;
                }
            }
            let obs = observe(nodes, &pods);
            (Just(obs.clone()), Just(obs).prop_shuffle())
        })
    ) {
        let a = serde_json::to_string(&run(&obs)).unwrap();
        let b = serde_json::to_string(&run(&shuffled)).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn an_observation_outside_a_pods_window_never_changes_its_gap(
        (nodes, pods) in plans(),
        which in any::<prop::sample::Index>(),
        kind in prop::sample::select(vec![Kind::Refused, Kind::Reset, Kind::ConnError, Kind::SynRetransmit, Kind::FlowNew]),
        after in any::<bool>(),
        distance_ms in 1_000i64..60_000,
    ) {
        let obs = observe(nodes, &pods);
        let before = run(&obs);
        let p = &pods[which.index(pods.len())];
        // Before the deletion, or (errors only: a routed flow after the removal would extend the
        // window) after everything the pod and every node did.
        let last = p.delete_ms + p.removal_after_delete_ms.iter().flatten().max().copied().unwrap_or(0);
        let last = last.max(p.sigterm_ms() + p.exit_after_sigterm_ms + p.netns_after_exit_ms);
        let (at, kind) = if after && kind != Kind::FlowNew { (last + distance_ms, kind) } else { (p.delete_ms - distance_ms, kind) };
        let mut extra = Observation::new(kind, T0.plus_ns(at * 1_000_000).to_timestamp(), NodeName("node-0000".into()));
        extra.ip = Some(p.ip);
        extra.port = Some(8080);
        extra.reason = Some(if kind == Kind::ConnError { "ECONNREFUSED" } else { "NO_SOCKET" }.into());
        let mut more = obs.clone();
        more.push(extra);
        prop_assert_eq!(gaps(&before), gaps(&run(&more)));
    }

    #[test]
    fn the_advised_prestop_closes_every_observed_gap((nodes, pods) in plans()) {
        let report = run(&observe(nodes, &pods));
        let Some(advice) = report.advice else {
            // No node reported any removal: nothing to size, and the report says so.
            prop_assert!(report.advice_unavailable.is_some());
            return Ok(());
        };
        let d = i64::try_from(advice.prestop_seconds).unwrap() * 1_000;
        let fixed: Vec<PodPlan> = pods.iter().map(|p| p.with_prestop(d)).collect();
        let after = run(&observe(nodes, &fixed));
        for ro in &after.rollouts {
            for p in &ro.pods {
                prop_assert!(p.gap_ms.is_none_or(|g| g <= 0.0), "{:?} still has gap {:?} with preStop {d} ms", p.pod, p.gap_ms);
                prop_assert_eq!(p.errors.unsafe_window, 0);
            }
        }
    }
}

/// Any observation at all: random kind, time, node, address, pod, reason, count.
fn any_observation() -> impl Strategy<Value = Observation> {
    (
        prop::sample::select(Kind::ALL.to_vec()),
        -5_000i64..5_000,
        0usize..3,
        prop::option::of(0u8..4),
        prop::option::of(prop::sample::select(vec![80u16, 8080])),
        prop::option::of(0usize..3),
        prop::option::of(prop::sample::select(vec![
            "NO_SOCKET",
            "ECONNREFUSED",
            "ETIMEDOUT",
            "SIGTERM",
            "preStop",
        ])),
        prop::option::of(0u64..50),
        prop::option::of(0u64..100_000_000),
        any::<bool>(),
    )
        .prop_map(
            |(kind, ms, node, ip, port, pod, reason, count, unc, service)| {
                let mut o = Observation::new(
                    kind,
                    T0.plus_ns(ms * 1_000_000).to_timestamp(),
                    NodeName(format!("n{node}")),
                );
                o.ip = ip.map(|i| format!("10.0.0.{i}").parse().unwrap());
                o.port = port;
                o.pod = pod.map(|p| format!("default/web-5d8f7c9b6d-p{p:04}"));
                o.pod_uid = pod.filter(|p| p % 2 == 0).map(|p| format!("uid-{p}"));
                o.reason = reason.map(str::to_owned);
                o.count = count;
                o.uncertainty_ns = unc;
                o.service = service.then(|| "default/web".to_owned());
                o
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_mix_of_observations_is_correlated_and_rendered_without_a_panic(obs in prop::collection::vec(any_observation(), 0..60)) {
        let report = run(&obs);
        for format in [Format::Table, Format::Wide, Format::Json, Format::Yaml] {
            prop_assert!(report::render(&report, format).is_ok());
        }
        prop_assert!(report::html::render(&report).ends_with("</html>\n"));
        for p in report.rollouts.iter().flat_map(|r| &r.pods) {
            // A gap is never made up: it needs a dataplane removal (or routed flow) and a
            // listener close, exit or refused connection.
            if p.gap_ms.is_some() {
                prop_assert!(p.dataplane.iter().any(|d| d.removed.is_some() || d.last_flow.is_some()));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the numbers (any uncertainty on any line, any margin, any grace period the
    /// pods had), the advice is never shorter than the largest measured gap + the margin, never
    /// lowers the pods' grace period, and fits the API's int64 — or there is no advice and the
    /// report says why.
    #[test]
    fn the_advice_never_falls_short_whatever_the_numbers(
        (nodes, pods) in plans(),
        uncertain in prop::collection::vec((any::<prop::sample::Index>(), any::<u64>()), 0..6),
        margin_ms in prop_oneof![0u64..5_000, any::<u64>()],
        grace in prop_oneof![Just(30u64), any::<u64>()],
    ) {
        let mut obs = observe(nodes, &pods);
        for (i, u) in uncertain {
            let n = obs.len();
            obs[i.index(n)].uncertainty_ns = Some(u);
        }
        for o in obs.iter_mut().filter(|o| o.kind == Kind::PodDeleting) {
            o.extra.insert("grace_period_s".into(), grace.into());
        }
        let options = Options { margin_ms, ..Options::default() };
        let report = correlate(&obs, &options);
        let Some(a) = &report.advice else {
            prop_assert!(report.advice_unavailable.as_ref().is_some_and(|w| !w.is_empty()));
            return Ok(());
        };
        let prestop_ns = i128::from(a.prestop_seconds) * 1_000_000_000;
        let margin_ns = i128::from(options.margin_ns());
        for p in report.rollouts.iter().flat_map(|r| &r.pods) {
            if let Some(g) = p.gap_ms {
                // gap_ms is rounded to the µs.
                let gap_ns = (g * 1e6) as i128 - 1_000;
                prop_assert!(prestop_ns >= gap_ns + margin_ns, "preStop {} s < gap {g} ms + margin", a.prestop_seconds);
            }
        }
        prop_assert!(a.termination_grace_period_seconds >= a.prestop_seconds);
        prop_assert!(a.termination_grace_period_seconds >= grace, "{a:?}");
        prop_assert!(i64::try_from(a.termination_grace_period_seconds).is_ok());
    }
}
