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
        .map(|p| (p.pod.clone().map(String::from), p.gap_ms))
        .collect();
    g.sort_by(|a, b| a.0.cmp(&b.0));
    g
}

proptest! {
    #![proptest_config(crate::support::cases(128))]

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
                o.pod = pod.map(|p| format!("default/web-5d8f7c9b6d-p{p:04}").into());
                o.pod_uid = pod
                    .filter(|p| p % 2 == 0)
                    .map(|p| format!("uid-{p}").into());
                o.reason = reason.map(str::to_owned);
                o.count = count;
                o.uncertainty_ns = unc;
                o.service = service.then(|| "default/web".into());
                o
            },
        )
}

proptest! {
    #![proptest_config(crate::support::cases(256))]

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
    #![proptest_config(crate::support::cases(256))]

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
            o.details.api_mut().grace_period_s = Some(grace);
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

/// A new pod: ready at 0, the first node routing to it at `routed_ms`, listening at
/// `listen_ms`; the pod's kernel refusing a connection at each of `refusals` (ms), and serving
/// after it listened. Every refusal between the first routing and the listener's open is a
/// refusal before listening, every later one a refusal after ready, whatever the input order.
fn new_pod_lines(routed_ms: i64, listen_ms: i64, refusals: &[i64]) -> Vec<Observation> {
    let at = |ms: i64| T0.plus_ns(ms * 1_000_000).to_timestamp();
    let node = || NodeName("node-a".into());
    let named = |mut o: Observation| {
        o.pod = Some("default/web-6c9d8b7f5-newpd".into());
        o.pod_uid = Some("uid-new".into());
        o.ip = Some("10.244.1.20".parse().unwrap());
        o.port = Some(8080);
        o
    };
    let mut ready = named(Observation::new(
        Kind::EndpointReady,
        at(0),
        NodeName("api".into()),
    ));
    ready.service = Some("default/web".into());
    let mut added = named(Observation::new(
        Kind::DataplaneAdded,
        at(routed_ms),
        node(),
    ));
    added.service = Some("default/web".into());
    let mut lines = vec![
        ready,
        added,
        named(Observation::new(Kind::ListenerOpen, at(listen_ms), node())),
    ];
    for (i, &ms) in refusals.iter().enumerate() {
        let mut o = named(Observation::new(Kind::Refused, at(ms), node()));
        o.reason = Some("NO_SOCKET".into());
        o.peer_ip = Some("10.244.2.7".parse().unwrap());
        o.peer_port = Some(40_000 + u16::try_from(i).unwrap());
        lines.push(o);
    }
    lines
}

proptest! {
    #![proptest_config(crate::support::cases(64))]

    #[test]
    fn a_new_pods_refusals_split_at_its_listeners_open_in_any_order(
        routed in 0i64..500,
        listen in 0i64..3_000,
        refusals in prop::collection::vec(0i64..4_000, 0..30),
        seed in any::<u64>(),
    ) {
        // Refusals before the first routing cannot have come through the Service: none here.
        let refusals: Vec<i64> = refusals.into_iter().filter(|&t| t >= routed).collect();
        let mut lines = new_pod_lines(routed, listen, &refusals);
        // Any input order.
        let n = lines.len();
        for i in 0..n {
            let j = usize::try_from(seed.rotate_left(i as u32 % 64) % n as u64).unwrap_or(0);
            lines.swap(i, j);
        }
        let before = refusals.iter().filter(|&&t| t <= listen).count() as u64;
        let after = refusals.len() as u64 - before;
        let r = run(&lines);
        let started: Vec<_> = r.rollouts.iter().flat_map(|ro| &ro.startup).collect();
        if before + after == 0 && listen <= routed {
            // Nothing went wrong: a new pod of no rollout is not reported.
            prop_assert!(started.is_empty());
        } else {
            prop_assert_eq!(started.len(), 1);
            let e = started[0].errors;
            prop_assert_eq!((e.before_listening, e.after_ready), (before, after));
            prop_assert_eq!(e.total(), before + after);
            let gap = started[0].startup_gap_ms.unwrap();
            // From the first routing (or the first refusal, if earlier) to the open.
            let first = refusals.iter().copied().filter(|&t| t <= listen).min().unwrap_or(routed).min(routed);
            prop_assert_eq!(gap, (listen - first) as f64);
        }
    }
}
