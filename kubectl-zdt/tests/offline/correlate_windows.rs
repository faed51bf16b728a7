//! The analysis a window at a time (`correlate::window`) gives the whole-stream engine's report
//! byte for byte, and holds what one window and the pods alive across it need, not the stream.

use std::path::Path;

use kubectl_zdt::{
    correlate::{
        self, Options, Report,
        input::parse_all,
        simulate::{self, PodPlan, Rng},
        time::WallNs,
        window::{self, CUT_GAP_NS, MIN_CUT_GAP_NS},
    },
    observation::{Kind, NodeName, Observation, ServiceRef},
    report::{self, Format},
};
use proptest::prelude::*;

const T0: WallNs = WallNs(1_795_310_205_000_000_000);
const MS: i64 = 1_000_000;
/// Rollouts this far apart.
const EVERY_MS: i64 = 20 * 60 * 1_000;

/// The shape of a generated stream.
#[derive(Clone, Debug)]
struct Shape {
    rollouts: usize,
    nodes: usize,
    pods: usize,
    /// Per node, how far its clock is off (ms), and whether its agent re-measured its offset.
    skew_ms: Vec<(i64, bool)>,
    /// Client errors naming only the Service (their pods are settled at the stream's end).
    service_errors: bool,
    /// A client's retransmitted SYNs toward a gone pod, each rollout.
    timeouts: bool,
    /// That client uses one port in every rollout: its socket (and, with the pods' reused
    /// addresses, its connection) has lines in several windows.
    port_reuse: bool,
    seed: u64,
}

/// A stream of `shape.rollouts` restarts: rollout k deletes the pods rollout k−1 started
/// (the first deletes pods started before the capture), and starts the next ones, which the
/// next rollout deletes (the last one's stay). Each rollout's lines are shuffled, a few are
/// written twice, every agent's lines are off by its clock's skew; addresses are reused.
/// Returns the stream and, per rollout, its number of lines and the number of lines its new
/// pods have in it.
fn stream(shape: &Shape) -> (Vec<Observation>, Vec<(usize, usize)>) {
    let nodes = simulate::node_names(shape.nodes);
    let mut rng = Rng::new(shape.seed);
    let ip = |generation: usize, i: usize| -> std::net::IpAddr {
        // A pool of a few addresses per pod slot: generations reuse them.
        format!("10.244.0.{}", 10 + i * 3 + generation % 3)
            .parse()
            .unwrap()
    };
    let name = |g: usize, i: usize| format!("default/web-{:08x}-p{i:04}", 0x5d8f_0000 + g);
    let uid = |g: usize, i: usize| format!("uid-{g}-{i}");
    let mut out = Vec::new();
    let mut sizes = Vec::new();
    for k in 0..shape.rollouts {
        let t0 = T0.plus_ns(k as i64 * EVERY_MS * MS);
        let plans: Vec<PodPlan> = (0..shape.pods)
            .map(|i| PodPlan {
                name: name(k, i),
                uid: uid(k, i),
                ip: ip(k, i),
                node: (i + k) % shape.nodes,
                delete_ms: i as i64 * 400 + rng.below(300) as i64,
                prestop_ms: (rng.below(3) == 0).then(|| rng.below(2_000) as i64),
                close_after_sigterm_ms: rng.below(50) as i64,
                exit_after_sigterm_ms: 60 + rng.below(50) as i64,
                netns_after_exit_ms: 1 + rng.below(400) as i64,
                removal_after_delete_ms: (0..shape.nodes)
                    .map(|_| (rng.below(8) != 0).then(|| rng.below(2_000) as i64))
                    .collect(),
                connect_every_ms: 5,
            })
            .collect();
        let mut block = simulate::observations(t0, &nodes, &plans, "default/web", 8080);
        // The pods this rollout starts, deleted by the next one.
        let started_from = block.len();
        for i in 0..shape.pods {
            let at = |ms: i64, kind, node: NodeName| {
                Observation::new(kind, t0.plus_ns(ms * MS).to_timestamp(), node)
            };
            let ready_ms = 30_000 + i as i64 * 500;
            let named = |mut o: Observation| {
                o.pod = Some(name(k + 1, i).as_str().into());
                o.pod_uid = Some(uid(k + 1, i).as_str().into());
                o.ip = Some(ip(k + 1, i));
                o.port = Some(8080);
                o
            };
            let mut ready = named(at(ready_ms, Kind::EndpointReady, NodeName("api".into())));
            ready.service = Some(ServiceRef::parse("default/web"));
            block.push(ready);
            let home = nodes[(i + k + 1) % shape.nodes].clone();
            let listen_ms = ready_ms + rng.below(3_000) as i64;
            let mut listen = at(listen_ms, Kind::ListenerOpen, home.clone());
            listen.ip = Some(ip(k + 1, i));
            listen.port = Some(8080);
            block.push(listen);
            for n in &nodes {
                let mut added = at(
                    ready_ms + 50 + rng.below(1_000) as i64,
                    Kind::DataplaneAdded,
                    n.clone(),
                );
                added.ip = Some(ip(k + 1, i));
                added.port = Some(8080);
                added.service = Some(ServiceRef::parse("default/web"));
                block.push(added);
            }
            for r in 0..rng.below(3) {
                let mut refused = at(
                    ready_ms + rng.below(4_000) as i64,
                    Kind::Refused,
                    home.clone(),
                );
                refused.ip = Some(ip(k + 1, i));
                refused.port = Some(8080);
                refused.reason = Some("NO_SOCKET".into());
                refused.peer_ip = Some("10.244.9.9".parse().unwrap());
                refused.peer_port = Some(40_000 + u16::try_from(r).unwrap());
                block.push(refused);
            }
        }
        let started_lines = block.len() - started_from;
        if shape.timeouts {
            // A client dialling the first pod's address after its network went: SYNs
            // retransmitted, then (or not: the node's lines go on, so it was answered) its
            // ETIMEDOUT. Its own port each rollout, or one for all.
            let p = &plans[0];
            let gone = p.sigterm_ms() + p.exit_after_sigterm_ms + p.netns_after_exit_ms;
            let port = 30_000
                + if shape.port_reuse {
                    0
                } else {
                    u16::try_from(k).unwrap()
                };
            let line = |ms: i64, kind| {
                let mut o = Observation::new(
                    kind,
                    t0.plus_ns(ms * MS).to_timestamp(),
                    nodes[shape.nodes - 1].clone(),
                );
                o.ip = Some(p.ip);
                o.port = Some(8080);
                o.peer_ip = Some("10.244.9.7".parse().unwrap());
                o.peer_port = Some(port);
                o
            };
            block.push(line(gone + 100, Kind::SynRetransmit));
            block.push(line(gone + 1_100, Kind::SynRetransmit));
            if rng.below(2) == 0 {
                let mut e = line(gone + 3_100, Kind::ConnError);
                e.reason = Some("ETIMEDOUT".into());
                block.push(e);
            }
        }
        if shape.service_errors {
            for e in 0..1 + rng.below(3) {
                let mut o = Observation::new(
                    Kind::ConnError,
                    t0.plus_ns((rng.below(3_000) as i64) * MS).to_timestamp(),
                    nodes[0].clone(),
                );
                o.reason = Some("ECONNREFUSED".into());
                o.service = Some(ServiceRef::parse("default/web"));
                o.peer_ip = Some("10.244.9.8".parse().unwrap());
                o.peer_port = Some(50_000 + u16::try_from(e).unwrap());
                block.push(o);
            }
        }
        for (n, &(skew, resync)) in nodes.iter().zip(&shape.skew_ms) {
            if resync {
                let o = Observation::new(
                    Kind::ClockSync,
                    t0.plus_ns(-30_000 * MS).to_timestamp(),
                    n.clone(),
                );
                block.push(o.with_extra("offset_change_ns", skew * MS));
            }
        }
        for o in &mut block {
            let skew = nodes
                .iter()
                .position(|n| *n == o.node)
                .map_or(0, |n| shape.skew_ms[n].0);
            o.time = WallNs::from_timestamp(o.time)
                .plus_ns(skew * MS)
                .to_timestamp();
        }
        for _ in 0..rng.below(3) {
            let again = block[rng.below(block.len() as u64) as usize].clone();
            block.push(again);
        }
        for i in (1..block.len()).rev() {
            block.swap(i, rng.below(i as u64 + 1) as usize);
        }
        sizes.push((block.len(), started_lines));
        out.extend(block);
    }
    (out, sizes)
}

/// `rollouts` rollouts of `pods` pods on `nodes` nodes with true clocks, client timeouts and
/// no error naming only a Service.
fn quiet(rollouts: usize, nodes: usize, pods: usize, seed: u64) -> Shape {
    Shape {
        rollouts,
        nodes,
        pods,
        skew_ms: vec![(0, false); nodes],
        service_errors: false,
        timeouts: true,
        port_reuse: false,
        seed,
    }
}

fn shapes() -> impl Strategy<Value = Shape> {
    let flags = (
        prop::bool::weighted(0.2),
        any::<bool>(),
        prop::bool::weighted(0.3),
    );
    (2usize..5, 1usize..4, 1usize..4, any::<u64>(), flags)
        .prop_flat_map(|(rollouts, nodes, pods, seed, flags)| {
            (
                prop::collection::vec((-2_000i64..2_000, prop::bool::weighted(0.3)), nodes),
                Just((rollouts, nodes, pods, seed, flags)),
            )
        })
        .prop_map(
            |(skew_ms, (rollouts, nodes, pods, seed, (service_errors, timeouts, port_reuse)))| {
                Shape {
                    rollouts,
                    nodes,
                    pods,
                    skew_ms,
                    service_errors,
                    timeouts,
                    port_reuse,
                    seed,
                }
            },
        )
}

/// The whole-stream engine's answer, as `analyze` gives it: duplicates dropped first.
fn whole(obs: &[Observation]) -> (Report, String, usize) {
    let mut obs = obs.to_vec();
    let duplicates = kubectl_zdt::analyze::drop_duplicates(&mut obs);
    let (report, evidence) = correlate::correlate_with_evidence(&obs, &Options::default());
    (report, format!("{evidence:?}"), duplicates)
}

fn json(r: &Report) -> String {
    report::render(r, Format::Json).unwrap()
}

/// Windowed and whole agree on the report, the evidence and the duplicates.
fn assert_same(obs: &[Observation], gap_ns: i64) -> window::Analysis {
    let a = window::analyse_slice(obs, &Options::default(), gap_ns);
    let (report, evidence, duplicates) = whole(obs);
    assert_eq!(json(&a.report), json(&report));
    assert_eq!(format!("{:?}", a.evidence), evidence);
    assert_eq!(a.duplicates, duplicates);
    a
}

proptest! {
    #![proptest_config(crate::support::cases(48))]

    #[test]
    fn a_stream_analysed_a_window_at_a_time_gives_the_whole_streams_report(shape in shapes()) {
        let (obs, _) = stream(&shape);
        let a = assert_same(&obs, CUT_GAP_NS);
        // Windowed for real: one window per rollout.
        prop_assert_eq!(&a.whole, &None);
        prop_assert_eq!(a.windows, shape.rollouts);
        // The Service's errors and its pods wait for the end, and only then.
        prop_assert_eq!(a.held_to_end.1 > 0, shape.service_errors);
        prop_assert_eq!(a.held_to_end.0 > 0, shape.service_errors);
    }
}

#[test]
fn a_lagging_clock_found_in_the_pods_marks_costs_a_second_pass_not_a_different_answer() {
    let shape = Shape {
        skew_ms: vec![(0, false), (-1_500, false), (700, true)],
        ..quiet(3, 3, 3, 7)
    };
    let (obs, _) = stream(&shape);
    let a = assert_same(&obs, CUT_GAP_NS);
    assert_eq!(a.whole, None);
    assert!(
        a.report
            .warnings
            .iter()
            .any(|w| w.contains("clock runs at least")),
        "{:?}",
        a.report.warnings
    );
    // The survey, a pass with the agents' offsets alone, a pass with the lag found.
    assert_eq!(a.reads, 3);
}

/// The stream's first line of `kind`.
fn earliest(obs: &[Observation], kind: Kind) -> Observation {
    obs.iter()
        .filter(|o| o.kind == kind)
        .min_by_key(|o| o.time)
        .unwrap()
        .clone()
}

/// Three rollouts on two nodes, and ten seconds into the second a line about the first
/// rollout's first deleted pod: an `exit` naming only its name, or a `dataplane_removed`
/// naming only its address. Analysed both ways.
fn with_a_late_line(by_name: bool) -> window::Analysis {
    let shape = quiet(3, 2, 2, 3);
    let (mut obs, _) = stream(&shape);
    let first = earliest(&obs, Kind::PodDeleting);
    let mut late = Observation::new(
        if by_name {
            Kind::Exit
        } else {
            Kind::DataplaneRemoved
        },
        T0.plus_ns((EVERY_MS + 10_000) * MS).to_timestamp(),
        NodeName("node-0000".into()),
    );
    if by_name {
        late.pod = first.pod;
    } else {
        late.ip = first.ip;
        late.port = Some(8080);
    }
    obs.insert(obs.len() / 2, late);
    assert_same(&obs, CUT_GAP_NS)
}

#[test]
fn a_line_naming_only_the_address_of_an_earlier_windows_pod_keeps_that_pod_open() {
    // The pods the first rollout started have other addresses: the whole stream gives the
    // line to the pod the first window would have drafted; the survey keeps it open until it.
    let a = with_a_late_line(false);
    assert_eq!(a.whole, None);
    assert_eq!(a.windows, 3);
}

#[test]
fn a_line_naming_only_an_earlier_windows_pod_by_name_sends_the_stream_whole() {
    let why = with_a_late_line(true).whole.expect("analysed whole").0;
    assert!(why.contains("a pod of an earlier window"), "{why}");
}

#[test]
fn twenty_rollouts_are_held_one_window_and_the_pods_alive_across_it_at_a_time() {
    let shape = quiet(20, 3, 3, 11);
    let (obs, sizes) = stream(&shape);
    let a = assert_same(&obs, CUT_GAP_NS);
    assert_eq!(a.whole, None);
    assert_eq!(a.windows, 20);
    // A window holds its own lines and those of the pods the rollout before started.
    let bound = sizes
        .iter()
        .enumerate()
        .map(|(k, &(own, _))| own + if k > 0 { sizes[k - 1].1 } else { 0 })
        .max()
        .unwrap();
    assert!(
        a.max_held <= bound,
        "held {} lines at once, a window and its carried pods need {bound}",
        a.max_held
    );
    assert!(
        a.max_held * 10 < obs.len(),
        "{} of {}",
        a.max_held,
        obs.len()
    );
}

/// Every recorded stream of the tests, analysed a window at a time and whole, alone (cut at the
/// shortest gap allowed) and laid one after the other, an hour apart, as one stream: every
/// recording takes its window there (client errors naming only a Service, the traffic loop's
/// log beside the clients' kernel lines, retransmitted SYNs included).
#[test]
fn every_recorded_stream_gives_the_same_report_in_windows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut together: Vec<Observation> = Vec::new();
    let mut slots = 0;
    let mut files: Vec<std::path::PathBuf> = ["correlate", "real-cluster"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(root.join(dir)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let recordings = files.len();
    for f in files {
        let (obs, errors) = parse_all(&std::fs::read_to_string(&f).unwrap());
        assert!(errors.is_empty(), "{}: {errors:?}", f.display());
        let a = assert_same(&obs, MIN_CUT_GAP_NS);
        let why = a.whole.map(|w| w.0).unwrap_or_default();
        eprintln!("{}: {} windows; {why}", f.display(), a.windows);
        if why.starts_with("no quiet gap") {
            let start = obs.iter().map(|o| o.time).min().unwrap();
            let slot = T0.plus_ns(slots * 3_600_000 * MS);
            for mut o in obs {
                let since = WallNs::from_timestamp(o.time) - WallNs::from_timestamp(start);
                o.time = slot.plus_ns(since).to_timestamp();
                together.push(o);
            }
            slots += 1;
        }
    }
    assert_eq!(slots as usize, recordings);
    let a = assert_same(&together, CUT_GAP_NS);
    assert_eq!(a.whole, None);
    assert_eq!(a.windows, slots as usize);
}

/// A line of `kind` on `node`, `ms` after `o`.
fn after(o: &Observation, ms: i64, kind: Kind, node: &str) -> Observation {
    Observation::new(
        kind,
        WallNs::from_timestamp(o.time)
            .plus_ns(ms * MS)
            .to_timestamp(),
        NodeName(node.into()),
    )
}

/// The client reuses its port in every rollout, and the first and the fourth rollout's first
/// pods have one address: the whole stream weighs those lines as one socket's (a retransmitted
/// SYN followed by a later line is superseded) and one connection's (a retransmitted SYN whose
/// connection's last line is a later error was answered); so do the windows, each with what
/// the survey kept of the later ones.
#[test]
fn one_client_socket_timing_out_in_several_windows_is_weighed_as_in_the_whole_stream() {
    for seed in 0..16 {
        let shape = Shape {
            port_reuse: true,
            ..quiet(4, 2, 2, seed)
        };
        let (obs, _) = stream(&shape);
        let a = assert_same(&obs, CUT_GAP_NS);
        assert_eq!(a.whole, None);
        assert_eq!(a.windows, 4);
    }
}

#[test]
fn a_superseded_retransmit_that_had_the_last_word_on_a_clients_path_sends_the_stream_whole() {
    let shape = Shape {
        timeouts: false,
        ..quiet(2, 2, 2, 9)
    };
    let (mut obs, _) = stream(&shape);
    let pod = earliest(&obs, Kind::NetnsGone);
    let at = |ms: i64, kind| {
        let mut o = after(&pod, ms, kind, "node-0000");
        o.ip = pod.ip;
        o.port = Some(8080);
        o.peer_ip = Some("10.244.9.6".parse().unwrap());
        o.peer_port = Some(31_000);
        o
    };
    // The client dialled the Service and was refused; then, from the same port, the pod's
    // address, whose SYNs were answered in the end (dropped): the whole stream keeps the
    // Service as the client's path for the pod's own refusal of it, the survey's last word is
    // the pod's address.
    let mut refused = at(50, Kind::ConnError);
    refused.reason = Some("ECONNREFUSED".into());
    refused.service = Some(ServiceRef::parse("default/web"));
    let mut pod_side = at(40, Kind::Refused);
    pod_side.reason = Some("NO_SOCKET".into());
    let lines = [
        pod_side,
        refused,
        at(100, Kind::SynRetransmit),
        at(1_100, Kind::SynRetransmit),
    ];
    let first = obs.iter().position(|o| o.time >= pod.time).unwrap();
    for (i, l) in lines.into_iter().enumerate() {
        obs.insert(first + i, l);
    }
    let why = assert_same(&obs, CUT_GAP_NS)
        .whole
        .expect("analysed whole")
        .0;
    assert!(why.contains("last word on its client's path"), "{why}");
}

/// The traffic loop's own log is left out once a later line shows the clients' kernels were
/// watched: the survey, which folded the log's first lines already, folds the stream again
/// without them (here the log's line is the client node's last, and would make its
/// unanswered SYN look answered).
#[test]
fn a_traffic_loop_log_before_the_first_watched_client_is_left_out_of_the_survey() {
    let (mut obs, _) = stream(&quiet(2, 1, 1, 3));
    let pod = earliest(&obs, Kind::NetnsGone);
    let at = |ms: i64, kind, port: u16| {
        let mut o = after(&pod, ms, kind, "client-node");
        o.service = Some(ServiceRef::parse("default/web"));
        o.peer_ip = Some("10.244.9.9".parse().unwrap());
        o.peer_port = Some(port);
        o
    };
    let mut log = at(10_000, Kind::ConnError, 0);
    log.reason = Some("ECONNREFUSED".into());
    log.peer_ip = None;
    log.peer_port = None;
    let log = log.with_extra("source", "traffic");
    let mut watched = at(-1_000, Kind::ConnError, 41_000);
    watched.reason = Some("ECONNREFUSED".into());
    let unanswered = at(0, Kind::SynRetransmit, 41_001);
    obs.splice(0..0, [log, watched, unanswered]);
    let a = assert_same(&obs, CUT_GAP_NS);
    assert_eq!(a.whole, None);
    // The survey, the survey without the log, the windows.
    assert_eq!(a.reads, 3);
}

/// A client node's last line is a retransmitted SYN (its outcome open), and the pod's node
/// refuses the same connection a rollout later (the client's port and the pod's address
/// reused): the whole stream counts the SYN as answered by that refusal; so does the window
/// of the SYN, from what the survey kept of the later one.
#[test]
fn a_retransmit_answered_in_a_later_window_is_answered_in_its_own() {
    let (mut obs, _) = stream(&Shape {
        timeouts: false,
        ..quiet(2, 1, 1, 11)
    });
    let first = earliest(&obs, Kind::NetnsGone);
    let ip = first.ip.expect("the pod's address");
    let conn = |mut o: Observation| {
        o.ip = Some(ip);
        o.port = Some(8080);
        o.peer_ip = Some("10.244.9.5".parse().unwrap());
        o.peer_port = Some(31_000);
        o
    };
    // Its earlier connect from that port was refused: that line, kept, said the client's path
    // before the SYN did.
    let mut before = conn(after(&first, 50, Kind::ConnError, "client-node"));
    before.reason = Some("ECONNREFUSED".into());
    let retransmit = conn(after(&first, 100, Kind::SynRetransmit, "client-node"));
    let mut refused = conn(after(&first, EVERY_MS + 200, Kind::Refused, "node-0000"));
    refused.reason = Some("NO_SOCKET".into());
    obs.extend([before, retransmit, refused]);
    obs.sort_by_key(|o| o.time);
    let a = assert_same(&obs, CUT_GAP_NS);
    assert_eq!(a.whole, None);
    assert_eq!(a.windows, 2);
}
