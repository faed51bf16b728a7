//! The dataplane watcher against real rules in this kernel: a node namespace programmed the way
//! kube-proxy programs it (iptables-nft and nftables modes), one backend removed at a scripted
//! time among many Services. Needs root (network namespaces, nf_tables); CI runs it as root with
//! --test-threads=1.
//!
//! Truth comes from two places: the interval in which the rule-writing command ran, and, in the
//! flow scenarios, the kernel's own routing decisions: conntrack NEW events of a client that
//! connects every millisecond bracket the moment the node switched backends.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use kubectl_zdt::{
    dataplane::{Family, Mode, Source, flows, mirror::TableMirror, nl_dump, watcher},
    observation::{Kind, NodeName, Observation},
    testbed::{
        Node,
        kube_proxy::{self, ServicePort, ServiceRules},
        kube_proxy_nft, tcp,
    },
};
use tokio::sync::mpsc;

const SERVICES: u8 = 40;
const PER_SERVICE: u8 = 3;
const POD_CIDR: &str = "198.18.0.0/24";
/// The accuracy the issue asks for: the reported time is within 5 ms of the truth.
const ACCURACY: SignedDuration = SignedDuration::from_millis(5);
/// How long the watcher gets to report a change before the test looks.
const SETTLE: Duration = Duration::from_millis(500);

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create network namespaces and nf_tables rules: run them as root (`sudo ./x test`)"
    );
}

/// How one kube-proxy mode programs the node.
struct Dataplane {
    mode: &'static str,
    source: Source,
    /// First sync after kube-proxy starts: everything.
    start: fn(&Node, &[ServiceRules]),
    /// A sync of Service `changed` whose endpoints `gone` left.
    sync: fn(&Node, &[ServiceRules], usize, &[SocketAddr]),
    /// A periodic resync that rewrites every Service without changing endpoints.
    resync: fn(&Node, &[ServiceRules]),
}

const IPTABLES_NFT: Dataplane = Dataplane {
    mode: "iptables-nft",
    source: Source {
        mode: Mode::IptablesNft,
        family: Family::V4,
    },
    start: |node, all| {
        node.iptables_restore(&kube_proxy::sync_input(all, &|_| true, &[], POD_CIDR))
            .unwrap()
    },
    sync: |node, all, changed, gone| {
        let svc = &all[changed].port;
        let stale: Vec<_> = gone.iter().map(|ep| (svc.clone(), *ep)).collect();
        node.iptables_restore(&kube_proxy::sync_input(
            all,
            &|s| s == svc,
            &stale,
            POD_CIDR,
        ))
        .unwrap();
    },
    resync: |node, all| {
        node.iptables_restore(&kube_proxy::sync_input(all, &|_| true, &[], POD_CIDR))
            .unwrap()
    },
};

const NFTABLES: Dataplane = Dataplane {
    mode: "nftables",
    source: Source {
        mode: Mode::Nftables,
        family: Family::V4,
    },
    start: |node, all| {
        node.nft_apply(&kube_proxy_nft::base_table(POD_CIDR, "198.18.100.0/24"))
            .unwrap();
        nft_resync(node, all);
    },
    sync: |node, all, changed, gone| {
        let r = &all[changed];
        node.nft_apply(&kube_proxy_nft::sync_service(&r.port, &r.endpoints, gone))
            .unwrap();
    },
    resync: nft_resync,
};

fn nft_resync(node: &Node, all: &[ServiceRules]) {
    let script: String = all
        .iter()
        .map(|r| kube_proxy_nft::sync_service(&r.port, &r.endpoints, &[]))
        .collect();
    node.nft_apply(&script).unwrap();
}

fn cluster() -> Vec<ServiceRules> {
    (0..SERVICES)
        .map(|i| {
            let port = ServicePort {
                name: format!("ns{i}/svc{i}"),
                cluster_ip: format!("198.18.100.{}", i + 1).parse().unwrap(),
                port: 80,
            };
            let eps = (0..PER_SERVICE)
                .map(|j| {
                    format!("198.18.0.{}:8080", 10 + i * PER_SERVICE + j)
                        .parse()
                        .unwrap()
                })
                .collect();
            ServiceRules::new(port, eps)
        })
        .collect()
}

/// The watcher (and the conntrack listener) running in the node's namespace, and what they
/// report.
struct Watch {
    rx: mpsc::Receiver<Observation>,
    /// Keeps the stream open: the watcher holds it weakly, like in the agent.
    _tx: mpsc::Sender<Observation>,
    rt: tokio::runtime::Runtime,
}

impl Watch {
    fn start(node: &Node) -> (Self, Observation) {
        let (tx, rx) = mpsc::channel(100_000);
        let sink = watcher::Sink::new(&tx);
        node.ns
            .run_in(move || -> anyhow::Result<()> {
                let node = NodeName("node-a".into());
                let w = watcher::spawn(node.clone(), sink.clone())?;
                flows::spawn(node, w.watched, w.dnat, Duration::from_millis(200), sink)?;
                Ok(())
            })
            .unwrap()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut w = Self { rx, _tx: tx, rt };
        let first = w.within(Duration::from_secs(10)).remove(0);
        assert_eq!(first.kind, Kind::DataplaneMode);
        (w, first)
    }

    /// Everything reported until `quiet` passes without a new observation.
    fn within(&mut self, quiet: Duration) -> Vec<Observation> {
        let mut out = Vec::new();
        let rx = &mut self.rx;
        while let Ok(Some(o)) = self
            .rt
            .block_on(async { tokio::time::timeout(quiet, rx.recv()).await })
        {
            out.push(o);
        }
        out
    }

    /// The dataplane changes reported until `quiet` passes without a new observation.
    fn changes(&mut self, quiet: Duration) -> Vec<Observation> {
        self.within(quiet)
            .into_iter()
            .filter(|o| matches!(o.kind, Kind::DataplaneAdded | Kind::DataplaneRemoved))
            .collect()
    }
}

/// Runs `change` and returns the interval in which its commit happened.
fn timed(change: impl FnOnce()) -> (Timestamp, Timestamp) {
    let before = Timestamp::now();
    change();
    (before, Timestamp::now())
}

fn frontend(svc: &ServicePort) -> String {
    format!("{}:{}", svc.cluster_ip, svc.port)
}

fn assert_one(
    obs: &[Observation],
    kind: Kind,
    svc: &ServicePort,
    backend: SocketAddr,
    truth: (Timestamp, Timestamp),
) {
    let lines: Vec<String> = obs.iter().map(Observation::to_json_line).collect();
    assert_eq!(obs.len(), 1, "expected exactly one {kind}: {lines:#?}");
    assert_reports(&obs[0], kind, svc, backend, truth);
}

fn assert_reports(
    o: &Observation,
    kind: Kind,
    svc: &ServicePort,
    backend: SocketAddr,
    truth: (Timestamp, Timestamp),
) {
    assert_eq!(o.kind, kind, "{}", o.to_json_line());
    assert_eq!(o.ip, Some(backend.ip()), "{}", o.to_json_line());
    assert_eq!(o.port, Some(backend.port()));
    assert_eq!(o.service.as_deref(), Some(frontend(svc).as_str()));
    eprintln!(
        "{kind} {backend}: truth interval {:?}, stamped {:?} after it opened, detected {} µs after the stamp",
        truth.1.duration_since(truth.0),
        o.time.duration_since(truth.0),
        o.extra["detect_ns"].as_u64().unwrap_or(0) / 1000
    );
    assert!(
        o.time >= truth.0 - ACCURACY && o.time <= truth.1 + ACCURACY,
        "{kind} stamped {} outside the truth interval [{}, {}] ± 5 ms",
        o.time,
        truth.0,
        truth.1
    );
}

/// Remove one backend of one Service among 40 → exactly that removal, at its commit; a full
/// resync → nothing; the backend comes back → exactly that addition.
fn one_backend_removed_then_resync_then_readded(dp: &Dataplane) {
    require_root();
    let node = Node::create().unwrap();
    let mut all = cluster();
    (dp.start)(&node, &all);
    let (mut watch, start) = Watch::start(&node);
    assert_eq!(start.extra["mode"], dp.mode, "{}", start.to_json_line());
    assert_eq!(
        start.extra["routes"],
        u64::from(SERVICES) * u64::from(PER_SERVICE)
    );

    let gone = all[7].endpoints.remove(1);
    let svc = all[7].port.clone();
    let when = timed(|| (dp.sync)(&node, &all, 7, &[gone]));
    let obs = watch.changes(SETTLE);
    assert_one(&obs, Kind::DataplaneRemoved, &svc, gone, when);
    assert_eq!(obs[0].extra["mode"], dp.mode);
    assert_eq!(obs[0].extra["service_name"], "ns7/svc7");

    (dp.resync)(&node, &all);
    let quiet = watch.changes(SETTLE);
    assert!(quiet.is_empty(), "a resync produced {quiet:?}");

    all[7].endpoints.push(gone);
    let when = timed(|| (dp.sync)(&node, &all, 7, &[]));
    assert_one(
        &watch.changes(SETTLE),
        Kind::DataplaneAdded,
        &svc,
        gone,
        when,
    );
}

/// Another Service scaling up is reported as that addition and nothing else.
fn unrelated_service_changes_cause_no_false_removal(dp: &Dataplane) {
    require_root();
    let node = Node::create().unwrap();
    let mut all = cluster();
    (dp.start)(&node, &all);
    let (mut watch, _) = Watch::start(&node);
    let new_ep: SocketAddr = "198.18.0.250:8080".parse().unwrap();
    all[3].endpoints.push(new_ep);
    let svc = all[3].port.clone();
    let when = timed(|| (dp.sync)(&node, &all, 3, &[]));
    assert_one(
        &watch.changes(SETTLE),
        Kind::DataplaneAdded,
        &svc,
        new_ep,
        when,
    );
}

/// A Service whose last endpoint leaves: every one of its routes is reported removed.
fn last_endpoints_leaving_are_each_reported(dp: &Dataplane) {
    require_root();
    let node = Node::create().unwrap();
    let mut all = cluster();
    (dp.start)(&node, &all);
    let (mut watch, _) = Watch::start(&node);
    let gone = std::mem::take(&mut all[2].endpoints);
    let svc = all[2].port.clone();
    let when = timed(|| (dp.sync)(&node, &all, 2, &gone));
    let obs = watch.changes(SETTLE);
    assert_eq!(obs.len(), gone.len(), "{obs:?}");
    for (o, ep) in obs.iter().zip(&gone) {
        assert_reports(o, Kind::DataplaneRemoved, &svc, *ep, when);
    }
}

/// The kernel's own truth: a client connects to the ClusterIP every millisecond while the
/// Service's only backend is replaced (pod A → pod B in one sync). The last connection
/// conntrack saw DNAT'ed to A and the first DNAT'ed to B bracket the moment the node switched;
/// `dataplane_removed` for A must fall in that bracket (± 5 ms), and `flow_new` reports both.
fn removal_time_matches_the_last_flow_routed_to_the_old_pod(dp: &Dataplane) {
    require_root();
    let mut node = Node::create().unwrap();
    let pod_a = node.add_pod("pod-a").unwrap();
    let pod_b = node.add_pod("pod-b").unwrap();
    let client = node.add_client("client").unwrap();
    let a: SocketAddr = SocketAddr::new(pod_a.ip.into(), 8080);
    let b: SocketAddr = SocketAddr::new(pod_b.ip.into(), 8080);
    let mut all = cluster();
    let svc = ServicePort {
        name: "default/web".into(),
        cluster_ip: "198.18.100.200".parse().unwrap(),
        port: 80,
    };
    all.push(ServiceRules::new(svc.clone(), vec![a]));
    let web = all.len() - 1;
    (dp.start)(&node, &all);
    let (mut watch, _) = Watch::start(&node);

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let target = SocketAddr::new(svc.cluster_ip, svc.port);
    let clients = tcp::connect_loop(
        &client.ns,
        target,
        Duration::from_millis(1),
        1200,
        stop,
        log.clone(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    all[web].endpoints = vec![b];
    let when = timed(|| (dp.sync)(&node, &all, web, &[a]));
    clients.join().unwrap();
    let obs = watch.within(SETTLE);
    assert!(
        log.lock().unwrap().len() > 800,
        "the client made too few connections to bracket the switch"
    );

    let of = |kind: Kind, ep: SocketAddr| -> Vec<&Observation> {
        obs.iter()
            .filter(|o| o.kind == kind && o.ip == Some(ep.ip()) && o.port == Some(ep.port()))
            .collect()
    };
    let last_to_a = of(Kind::FlowNew, a)
        .iter()
        .map(|o| o.time)
        .max()
        .expect("flow_new for the old pod");
    let first_to_b = of(Kind::FlowNew, b)
        .iter()
        .filter_map(|o| o.extra["first_time"].as_str()?.parse::<Timestamp>().ok())
        .min()
        .expect("flow_new for the new pod");
    assert!(last_to_a < first_to_b, "flows to A and B interleave");
    // One connection a millisecond brackets the switch to a few ms; a loaded CI machine can
    // stall the client for longer, which widens the bracket but does not make it wrong.
    assert!(
        first_to_b.duration_since(last_to_a) < SignedDuration::from_millis(30),
        "the client's connections bracket the switch only to {:?}",
        first_to_b.duration_since(last_to_a)
    );
    let removed = of(Kind::DataplaneRemoved, a);
    assert_eq!(removed.len(), 1, "{obs:?}");
    assert_reports(
        removed[0],
        Kind::DataplaneRemoved,
        &svc,
        a,
        (last_to_a, first_to_b),
    );
    let added = of(Kind::DataplaneAdded, b);
    assert_eq!(added.len(), 1, "{obs:?}");
    assert_reports(
        added[0],
        Kind::DataplaneAdded,
        &svc,
        b,
        (last_to_a, first_to_b),
    );
    // The command interval agrees.
    assert!(removed[0].time >= when.0 && removed[0].time <= when.1 + ACCURACY);
}

/// The netlink mirror (what the watcher keeps) reads the same routes as the tools' own dumps
/// (`iptables-nft-save` text, `nft -j` JSON) parsed by the text parsers.
fn netlink_dump_reads_what_the_tools_print(dp: &Dataplane) {
    require_root();
    let node = Node::create().unwrap();
    let mut all = cluster();
    all[5].external_ips = vec!["198.18.99.5".parse().unwrap()];
    all[6].internal_local = true;
    (dp.start)(&node, &all);
    let src = dp.source;
    let (from_tools, from_netlink) = node
        .ns
        .run_in(move || {
            let (family, table) = src.nf_table().unwrap();
            let mut mirror = TableMirror::new(family, table);
            nl_dump::dump(&mut mirror).unwrap();
            (src.read().unwrap(), mirror.routes())
        })
        .unwrap();
    assert_eq!(from_netlink.describe(), from_tools.describe());
    assert!(from_tools.len() >= usize::from(SERVICES) * usize::from(PER_SERVICE));
}

/// The agent starts before kube-proxy: `dataplane_mode` says none, then the mode once
/// kube-proxy's first sync lands, followed by every route as added.
fn mode_is_reported_when_kube_proxy_starts_after_the_agent(dp: &Dataplane) {
    require_root();
    let node = Node::create().unwrap();
    let (mut watch, start) = Watch::start(&node);
    assert_eq!(start.extra["mode"], "none", "{}", start.to_json_line());
    let all = cluster();
    (dp.start)(&node, &all);
    let obs = watch.within(SETTLE);
    let mode = obs
        .iter()
        .find(|o| o.kind == Kind::DataplaneMode)
        .expect("a dataplane_mode line once kube-proxy's rules appear");
    assert_eq!(mode.extra["mode"], dp.mode, "{}", mode.to_json_line());
    let added = obs
        .iter()
        .filter(|o| o.kind == Kind::DataplaneAdded)
        .count();
    assert_eq!(added, usize::from(SERVICES) * usize::from(PER_SERVICE));
}

#[test]
fn iptables_nft_mode_is_reported_when_kube_proxy_starts_after_the_agent() {
    mode_is_reported_when_kube_proxy_starts_after_the_agent(&IPTABLES_NFT);
}

#[test]
fn nftables_mode_is_reported_when_kube_proxy_starts_after_the_agent() {
    mode_is_reported_when_kube_proxy_starts_after_the_agent(&NFTABLES);
}

#[test]
fn iptables_nft_netlink_dump_reads_what_iptables_save_prints() {
    netlink_dump_reads_what_the_tools_print(&IPTABLES_NFT);
}

#[test]
fn nftables_netlink_dump_reads_what_nft_json_prints() {
    netlink_dump_reads_what_the_tools_print(&NFTABLES);
}

#[test]
fn iptables_nft_one_backend_removed_among_many_services_then_resync_then_readded() {
    one_backend_removed_then_resync_then_readded(&IPTABLES_NFT);
}

#[test]
fn iptables_nft_unrelated_service_changes_cause_no_false_removal() {
    unrelated_service_changes_cause_no_false_removal(&IPTABLES_NFT);
}

#[test]
fn iptables_nft_last_endpoints_leaving_are_each_reported() {
    last_endpoints_leaving_are_each_reported(&IPTABLES_NFT);
}

#[test]
fn iptables_nft_removal_time_matches_the_last_flow_routed_to_the_old_pod() {
    removal_time_matches_the_last_flow_routed_to_the_old_pod(&IPTABLES_NFT);
}

#[test]
fn nftables_one_backend_removed_among_many_services_then_resync_then_readded() {
    one_backend_removed_then_resync_then_readded(&NFTABLES);
}

#[test]
fn nftables_unrelated_service_changes_cause_no_false_removal() {
    unrelated_service_changes_cause_no_false_removal(&NFTABLES);
}

#[test]
fn nftables_last_endpoints_leaving_are_each_reported() {
    last_endpoints_leaving_are_each_reported(&NFTABLES);
}

#[test]
fn nftables_removal_time_matches_the_last_flow_routed_to_the_old_pod() {
    removal_time_matches_the_last_flow_routed_to_the_old_pod(&NFTABLES);
}
