//! The dataplane watcher against real rules in this kernel: a node namespace programmed the way
//! kube-proxy programs it (iptables-nft, iptables-legacy and nftables modes), one backend removed
//! at a scripted time among many Services. Needs root (network namespaces, nf_tables, x_tables,
//! eBPF for the iptables-legacy trigger); CI runs it as root with --test-threads=1.
//!
//! Truth comes from two places: the interval in which the rule-writing command ran, and, in the
//! flow scenarios, the kernel's own routing decisions: conntrack NEW events of a client that
//! connects every millisecond bracket the moment the node switched backends.

use crate::support::{self, require_root};

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use kubectl_zdt::{
    agent::{Agent, AgentConfig},
    dataplane::{
        Backends, Family, Mode, Source, flows, ipvs, legacy, mirror::TableMirror, nl_dump, watcher,
    },
    observation::{Kind, NodeName, Observation},
    testbed::{
        Node,
        agent::RunningAgent,
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
/// The most uncertainty a line may state and still pass as accurate (x_tables lines: or half
/// their replace syscall): a window this wide says the timing is broken, not that the machine
/// was busy.
const MAX_STATED: SignedDuration = SignedDuration::from_millis(50);
/// How long the watcher gets to report a change before the test looks.
const SETTLE: Duration = Duration::from_millis(500);

/// The node's address NodePort traffic is accepted on (its bridge).
const NODE_IP: &str = "198.18.0.1";

/// How one kube-proxy mode programs the node.
struct Dataplane {
    mode: &'static str,
    source: Source,
    /// x_tables has no notifications: the watcher needs the agent's eBPF trigger.
    needs_agent: bool,
    /// What the watcher reads from the kernel at start (its netlink mirror, or the x_tables
    /// blob), in the node's namespace.
    read_kernel: fn(Source) -> Backends,
    /// First sync after kube-proxy starts: everything.
    start: fn(&Node, &[ServiceRules]),
    /// A sync of Service `changed` whose endpoints `gone` left.
    sync: fn(&Node, &[ServiceRules], usize, &[SocketAddr]),
    /// A periodic resync that rewrites every Service without changing endpoints.
    resync: fn(&Node, &[ServiceRules]),
}

fn netlink_mirror(src: Source) -> Backends {
    let (family, table) = src.nf_table().unwrap();
    let mut mirror = TableMirror::new(family, table);
    nl_dump::dump(&mut mirror).unwrap();
    mirror.routes()
}

/// How iptables rules get into the kernel: `iptables-restore` (nft) or `iptables-legacy-restore`.
type Restore = fn(&Node, &str) -> anyhow::Result<()>;

/// kube-proxy's full sync: every Service rewritten.
fn restore_all(node: &Node, all: &[ServiceRules], restore: Restore) {
    restore(node, &kube_proxy::sync_input(all, &|_| true, &[], POD_CIDR)).unwrap();
}

/// A partial sync of Service `changed` whose endpoints `gone` left.
fn restore_changed(
    node: &Node,
    all: &[ServiceRules],
    changed: usize,
    gone: &[SocketAddr],
    restore: Restore,
) {
    let svc = &all[changed].port;
    let stale: Vec<_> = gone.iter().map(|ep| (svc.clone(), *ep)).collect();
    restore(
        node,
        &kube_proxy::sync_input(all, &|s| s == svc, &stale, POD_CIDR),
    )
    .unwrap();
}

const IPTABLES_NFT: Dataplane = Dataplane {
    mode: "iptables-nft",
    source: Source {
        mode: Mode::IptablesNft,
        family: Family::V4,
    },
    needs_agent: false,
    read_kernel: netlink_mirror,
    start: |node, all| restore_all(node, all, Node::iptables_restore),
    sync: |node, all, changed, gone| {
        restore_changed(node, all, changed, gone, Node::iptables_restore)
    },
    resync: |node, all| restore_all(node, all, Node::iptables_restore),
};

/// kube-proxy on a node whose iptables is `iptables-legacy`: the same restore input, through
/// x_tables. The portal jumps (PREROUTING/OUTPUT → KUBE-SERVICES) are installed in the legacy
/// nat table too, so connections are DNAT'ed there.
const IPTABLES_LEGACY: Dataplane = Dataplane {
    mode: "iptables-legacy",
    source: Source {
        mode: Mode::IptablesLegacy,
        family: Family::V4,
    },
    needs_agent: true,
    read_kernel: |src| legacy::read_routes(src.family).unwrap().routes,
    start: |node, all| {
        node.iptables_legacy_restore(kube_proxy::PORTALS).unwrap();
        restore_all(node, all, Node::iptables_legacy_restore);
    },
    sync: |node, all, changed, gone| {
        restore_changed(node, all, changed, gone, Node::iptables_legacy_restore)
    },
    resync: |node, all| restore_all(node, all, Node::iptables_legacy_restore),
};

const NFTABLES: Dataplane = Dataplane {
    mode: "nftables",
    source: Source {
        mode: Mode::Nftables,
        family: Family::V4,
    },
    needs_agent: false,
    read_kernel: netlink_mirror,
    start: |node, all| {
        let mut base = kube_proxy_nft::base_table(POD_CIDR, "198.18.100.0/24");
        base.push_str(&kube_proxy_nft::nodeport_ips(&[NODE_IP.parse().unwrap()]));
        node.nft_apply(&base).unwrap();
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
    let mut script = String::new();
    for r in all {
        script.push_str(&kube_proxy_nft::sync_service(&r.port, &r.endpoints, &[]));
        if let Some(port) = r.node_port.filter(|_| !r.endpoints.is_empty()) {
            script.push_str(&kube_proxy_nft::sync_nodeport(&r.port, port));
        }
    }
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
    /// The agent, when the mode needs its eBPF trigger: its kernel events go to the watcher.
    _agent: Option<RunningAgent>,
}

impl Watch {
    fn start(node: &Node, dp: &Dataplane) -> (Self, Observation) {
        let (tx, rx) = mpsc::channel(100_000);
        let sink = watcher::Sink::new(&tx);
        let agent = dp.needs_agent.then(|| {
            let mut config = AgentConfig::new(NodeName("node-a".into()), Vec::new());
            // Report no address: only the dataplane trigger matters here.
            config.filter = true;
            Agent::start(&config).expect(
                "the iptables-legacy trigger is an eBPF program: the agent must load (root, BTF)",
            )
        });
        let agent = node
            .ns
            .run_in(move || -> anyhow::Result<Option<Agent>> {
                let node = NodeName("node-a".into());
                let mut agent = agent;
                let w = match &mut agent {
                    Some(a) => {
                        let opened = watcher::open()?;
                        let armed = a.arm_dataplane(&opened.arm)?;
                        let w = opened.spawn(node.clone(), sink.clone(), armed)?;
                        a.use_dataplane(&w);
                        w
                    }
                    None => watcher::spawn(node.clone(), sink.clone())?,
                };
                flows::spawn(node, w.watched, w.dnat, Duration::from_millis(200), sink)?;
                Ok(agent)
            })
            .unwrap()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut w = Self {
            rx,
            _tx: tx,
            rt,
            _agent: agent.map(|a| RunningAgent::run(a).unwrap()),
        };
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
    SocketAddr::new(svc.cluster_ip, svc.port).to_string()
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
    assert_eq!(
        o.service.as_ref().map(ToString::to_string).as_deref(),
        Some(frontend(svc).as_str())
    );
    // The line's own window: its time ± the uncertainty it states (a change read by one
    // trigger of several, or an x_tables swap known to lie between two kernel events).
    let stated = SignedDuration::from_nanos(o.uncertainty_ns.unwrap_or(0).try_into().unwrap());
    eprintln!(
        "{kind} {backend}: truth interval {:?}, stamped {:?} ± {stated:?} after it opened, detected {} µs after the stamp{}",
        truth.1.duration_since(truth.0),
        o.time.duration_since(truth.0),
        o.other_fields()["detect_ns"].as_u64().unwrap_or(0) / 1000,
        o.other_fields()
            .get("syscall_ns")
            .and_then(|ns| ns.as_u64())
            .map(|ns| format!(
                ", replace syscall {} µs, swap bounded by {}",
                ns / 1000,
                o.other_fields()["swap_bounds"]
            ))
            .unwrap_or_default()
    );
    // An x_tables swap is never known worse than its replace syscall, which for a big table
    // on a loaded machine can be far longer than MAX_STATED.
    let syscall = o
        .other_fields()
        .get("syscall_ns")
        .and_then(|ns| ns.as_u64())
        .map_or(SignedDuration::ZERO, |ns| {
            SignedDuration::from_nanos(ns.try_into().unwrap())
        });
    assert!(
        stated <= MAX_STATED.max(syscall / 2),
        "{kind} states an uncertainty of {stated:?}: {}",
        o.to_json_line()
    );
    assert!(
        o.time + stated >= truth.0 - ACCURACY && o.time - stated <= truth.1 + ACCURACY,
        "{kind} stamped {} ± {stated:?}, outside the truth interval [{}, {}] ± 5 ms",
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
    let (mut watch, start) = Watch::start(&node, dp);
    assert_eq!(
        start.other_fields()["mode"],
        dp.mode,
        "{}",
        start.to_json_line()
    );
    assert_eq!(
        start.other_fields()["routes"],
        u64::from(SERVICES) * u64::from(PER_SERVICE)
    );

    let gone = all[7].endpoints.remove(1);
    let svc = all[7].port.clone();
    let when = timed(|| (dp.sync)(&node, &all, 7, &[gone]));
    let obs = watch.changes(SETTLE);
    assert_one(&obs, Kind::DataplaneRemoved, &svc, gone, when);
    assert_eq!(obs[0].other_fields()["mode"], dp.mode);
    assert_eq!(obs[0].other_fields()["service_name"], "ns7/svc7");

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
    let (mut watch, _) = Watch::start(&node, dp);
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
    let (mut watch, _) = Watch::start(&node, dp);
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
    let (mut watch, _) = Watch::start(&node, dp);
    // A resync the agent sees (it changes nothing): for x_tables, the agent then knows the
    // table in effect, so the change below is reported when the kernel frees it.
    (dp.resync)(&node, &all);
    assert!(watch.changes(SETTLE).is_empty(), "a resync was reported");

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
        .filter_map(|o| {
            o.other_fields()["first_time"]
                .as_str()?
                .parse::<Timestamp>()
                .ok()
        })
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
    if dp.needs_agent {
        // x_tables: the swap inside the replace was bounded by the agent's per-CPU probes (this
        // machine has more than one CPU), not by the whole syscall.
        assert_eq!(
            removed[0].other_fields()["swap_bounds"],
            "counters",
            "{}",
            removed[0].to_json_line()
        );
        // The replace that installed the old table was seen, so its first counter block is
        // known: the change is reported when the writer frees it, before the syscall's exit.
        assert_eq!(
            removed[0].other_fields()["reported_at"],
            "old_table_free",
            "{}",
            removed[0].to_json_line()
        );
    }
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

/// What the watcher reads from the kernel (the netlink mirror, the x_tables blob) holds the same
/// routes as the tools' own dumps (`iptables-nft-save` / `iptables-legacy-save` text, `nft -j`
/// JSON) parsed by the text parsers, node ports, external IPs and local traffic policy included.
fn kernel_read_matches_what_the_tools_print(dp: &Dataplane) {
    require_root();
    let node = Node::create().unwrap();
    let mut all = cluster();
    if dp.source.mode != Mode::Nftables {
        // The nftables generator writes ClusterIPs and node ports only.
        all[5].external_ips = vec!["198.18.99.5".parse().unwrap()];
        all[6].internal_local = true;
    }
    all[8].node_port = Some(30_080);
    (dp.start)(&node, &all);
    let (src, read_kernel) = (dp.source, dp.read_kernel);
    let (from_tools, from_kernel) = node
        .ns
        .run_in(move || (src.read().unwrap(), read_kernel(src)))
        .unwrap();
    assert_eq!(from_kernel.describe(), from_tools.describe());
    assert!(from_tools.len() >= usize::from(SERVICES) * usize::from(PER_SERVICE));
    // The node port: every endpoint of svc8 behind the node's address (nftables: the
    // `nodeport-ips` element) or every local address (iptables: `--dst-type LOCAL`).
    let node_ports: Vec<String> = from_kernel
        .describe()
        .into_iter()
        .filter(|l| l.starts_with("nodeport "))
        .collect();
    let addr = if dp.source.mode == Mode::Nftables {
        NODE_IP
    } else {
        "0.0.0.0"
    };
    assert_eq!(
        node_ports.len(),
        usize::from(PER_SERVICE),
        "{node_ports:#?}"
    );
    for (line, ep) in node_ports.iter().zip(&all[8].endpoints) {
        assert_eq!(
            line,
            &format!("nodeport {addr}:30080 tcp -> {ep} (ns8/svc8)")
        );
    }
}

/// The agent starts before kube-proxy: `dataplane_mode` says none, then the mode once
/// kube-proxy's first sync lands, followed by every route as added; the next change is timed
/// as in a node where kube-proxy ran first. (iptables-legacy on the syscalls' tracepoints: the
/// trigger is attached within a second of the first nat table, and the tables read again.)
fn mode_is_reported_when_kube_proxy_starts_after_the_agent(dp: &Dataplane) {
    require_root();
    let node = Node::create().unwrap();
    let (mut watch, start) = Watch::start(&node, dp);
    assert_eq!(
        start.other_fields()["mode"],
        "none",
        "{}",
        start.to_json_line()
    );
    let mut all = cluster();
    (dp.start)(&node, &all);
    let obs = watch.within(Duration::from_secs(2));
    let mode = obs
        .iter()
        .find(|o| o.kind == Kind::DataplaneMode)
        .expect("a dataplane_mode line once kube-proxy's rules appear");
    assert_eq!(
        mode.other_fields()["mode"],
        dp.mode,
        "{}",
        mode.to_json_line()
    );
    let added = obs
        .iter()
        .filter(|o| o.kind == Kind::DataplaneAdded)
        .count();
    assert_eq!(added, usize::from(SERVICES) * usize::from(PER_SERVICE));
    let svc = all[7].port.clone();
    let gone = all[7].endpoints.remove(1);
    let when = timed(|| (dp.sync)(&node, &all, 7, &[gone]));
    assert_one(
        &watch.changes(SETTLE),
        Kind::DataplaneRemoved,
        &svc,
        gone,
        when,
    );
}

/// Each scenario above, once per kube-proxy mode: a test named `<scenario>::<mode>` (e.g.
/// `dataplane::last_endpoints_leaving_are_each_reported::nftables`), so a failure names both and
/// `cargo test nftables` runs one mode's cases.
macro_rules! in_each_mode {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[test]
            fn iptables_nft() {
                super::$scenario(&super::IPTABLES_NFT);
            }

            #[test]
            fn iptables_legacy() {
                super::$scenario(&super::IPTABLES_LEGACY);
            }

            #[test]
            fn nftables() {
                super::$scenario(&super::NFTABLES);
            }
        }
    )+};
}

in_each_mode!(
    one_backend_removed_then_resync_then_readded,
    unrelated_service_changes_cause_no_false_removal,
    last_endpoints_leaving_are_each_reported,
    removal_time_matches_the_last_flow_routed_to_the_old_pod,
    mode_is_reported_when_kube_proxy_starts_after_the_agent,
    kernel_read_matches_what_the_tools_print,
);

/// The watcher alone in the node's namespace, with the test as its trigger: the watcher and a
/// function returning its next observation (failing after 10 s without one).
fn scripted_watcher(node: &Node) -> (watcher::Watcher, impl FnMut() -> Observation) {
    let (tx, mut rx) = mpsc::channel(1000);
    let sink = watcher::Sink::new(&tx);
    let w = node
        .ns
        .run_in(move || watcher::spawn(NodeName("node-a".into()), sink))
        .unwrap()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let next = move || {
        // The stream stays open while the test runs.
        let _keep = &tx;
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), rx.recv()).await })
            .expect("the watcher reported nothing")
            .unwrap()
    };
    (w, next)
}

/// x_tables changes are stamped with the trigger's time, not the time the table was read:
/// replaces handed to the watcher with known times (as the agent does with the kernel's
/// `sys_exit_setsockopt` time) are what the lines carry; a lost trigger is stamped with the
/// window of the loss and its half-width as uncertainty.
#[test]
fn iptables_legacy_changes_carry_the_trigger_time_not_the_read_time() {
    require_root();
    let node = Node::create().unwrap();
    let mut all = cluster();
    (IPTABLES_LEGACY.start)(&node, &all);
    // No agent: the test is the trigger.
    let (w, mut next) = scripted_watcher(&node);
    let start = next();
    assert_eq!(
        start.other_fields()["mode"],
        "iptables-legacy",
        "{}",
        start.to_json_line()
    );
    // Not armed: the line does not claim the x_tables trigger.
    assert_eq!(
        start.other_fields()["triggers"].as_array().unwrap().len(),
        1
    );

    let gone = all[4].endpoints.remove(0);
    (IPTABLES_LEGACY.sync)(&node, &all, 4, &[gone]);
    let exit = Timestamp::now() - SignedDuration::from_secs(1);
    let replace_with = |table: &str,
                        time: Timestamp,
                        swap: Option<(Timestamp, Timestamp)>,
                        module: Option<(Timestamp, Timestamp)>| {
        watcher::Trigger::TableReplace(legacy::TableReplace {
            time,
            at_old_table_free: false,
            entered: time - SignedDuration::from_millis(2),
            family: Family::V4,
            table: table.into(),
            netns: w.netns,
            pid: 1,
            time_ns: 0,
            entered_ns: 0,
            last_alloc: swap.map(|s| s.0),
            first_free: swap.map(|s| s.1),
            table_get: module.map(|m| m.0),
            table_put: module.map(|m| m.1),
        })
    };
    let replace = |table: &str, time: Timestamp, swap: Option<(Timestamp, Timestamp)>| {
        replace_with(table, time, swap, None)
    };
    // kube-proxy restores filter then nat: only nat is read. The per-CPU probes put the swap
    // in [exit − 1.5 ms, exit − 0.5 ms]: the line says the middle, ± 0.5 ms.
    w.triggers
        .send(replace(
            "filter",
            exit - SignedDuration::from_millis(1),
            None,
        ))
        .unwrap();
    let swap = (
        exit - SignedDuration::from_micros(1500),
        exit - SignedDuration::from_micros(500),
    );
    w.triggers.send(replace("nat", exit, Some(swap))).unwrap();
    let o = next();
    assert_eq!(o.kind, Kind::DataplaneRemoved, "{}", o.to_json_line());
    assert_eq!(o.ip, Some(gone.ip()));
    assert_eq!(
        o.time,
        exit - SignedDuration::from_millis(1),
        "{}",
        o.to_json_line()
    );
    assert_eq!(o.uncertainty_ns, Some(500_000));
    assert_eq!(
        o.other_fields()["swap_bounds"],
        "counters",
        "{}",
        o.to_json_line()
    );
    assert_eq!(
        o.other_fields()["syscall_ns"],
        2_000_000,
        "{}",
        o.to_json_line()
    );

    // Without them, the whole syscall: [entry, exit].
    all[4].endpoints.push(gone);
    (IPTABLES_LEGACY.sync)(&node, &all, 4, &[]);
    let exit = Timestamp::now() - SignedDuration::from_secs(1);
    w.triggers.send(replace("nat", exit, None)).unwrap();
    let o = next();
    assert_eq!(o.kind, Kind::DataplaneAdded, "{}", o.to_json_line());
    assert_eq!(
        o.time,
        exit - SignedDuration::from_millis(1),
        "{}",
        o.to_json_line()
    );
    assert_eq!(o.uncertainty_ns, Some(1_000_000));
    assert_eq!(
        o.other_fields()["swap_bounds"],
        "syscall",
        "{}",
        o.to_json_line()
    );
    // Bounds outside the syscall cannot be this replace's: ignored.
    let gone = all[4].endpoints.pop().unwrap();
    (IPTABLES_LEGACY.sync)(&node, &all, 4, &[gone]);
    let exit = exit + SignedDuration::from_millis(100);
    w.triggers.send(replace("nat", exit, Some(swap))).unwrap();
    let o = next();
    assert_eq!(o.kind, Kind::DataplaneRemoved, "{}", o.to_json_line());
    assert_eq!(o.time, exit - SignedDuration::from_millis(1));
    assert_eq!(
        o.other_fields()["swap_bounds"],
        "syscall",
        "{}",
        o.to_json_line()
    );

    all[4].endpoints.push(gone);
    (IPTABLES_LEGACY.sync)(&node, &all, 4, &[]);
    let since = Timestamp::now() - SignedDuration::from_millis(800);
    let now = since + SignedDuration::from_millis(600);
    w.triggers
        .send(watcher::Trigger::Lost { since, now })
        .unwrap();
    let o = next();
    assert_eq!(o.kind, Kind::DataplaneAdded, "{}", o.to_json_line());
    assert_eq!(o.time, since + SignedDuration::from_millis(300));
    assert_eq!(o.uncertainty_ns, Some(300_000_000));

    // Where the table is a module, the writer's reference on it brackets the swap (taken
    // right before, dropped right after): 10 µs inside the counters' millisecond.
    let gone = all[4].endpoints.pop().unwrap();
    (IPTABLES_LEGACY.sync)(&node, &all, 4, &[gone]);
    let exit = Timestamp::now() - SignedDuration::from_secs(1);
    let swap = (
        exit - SignedDuration::from_micros(1500),
        exit - SignedDuration::from_micros(500),
    );
    let module = (
        exit - SignedDuration::from_micros(1200),
        exit - SignedDuration::from_micros(1190),
    );
    w.triggers
        .send(replace_with("nat", exit, Some(swap), Some(module)))
        .unwrap();
    let o = next();
    assert_eq!(o.kind, Kind::DataplaneRemoved, "{}", o.to_json_line());
    assert_eq!(o.time, exit - SignedDuration::from_micros(1195));
    assert_eq!(o.uncertainty_ns, Some(5_000));
    assert_eq!(
        o.other_fields()["swap_bounds"],
        "table_module",
        "{}",
        o.to_json_line()
    );
    // A reference dropped after the old table's first free is not the swap's: the counters
    // bound it.
    all[4].endpoints.push(gone);
    (IPTABLES_LEGACY.sync)(&node, &all, 4, &[]);
    let exit = exit + SignedDuration::from_millis(100);
    let swap = (
        exit - SignedDuration::from_micros(1500),
        exit - SignedDuration::from_micros(500),
    );
    let late = (
        exit - SignedDuration::from_micros(600),
        exit - SignedDuration::from_micros(400),
    );
    w.triggers
        .send(replace_with("nat", exit, Some(swap), Some(late)))
        .unwrap();
    let o = next();
    assert_eq!(o.kind, Kind::DataplaneAdded, "{}", o.to_json_line());
    assert_eq!(o.time, exit - SignedDuration::from_millis(1));
    assert_eq!(
        o.other_fields()["swap_bounds"],
        "counters",
        "{}",
        o.to_json_line()
    );
}

/// The writer path of iptables-legacy, with the test as the eBPF trigger and as the writer: a
/// replace's begin points at a buffer of this process holding a new table that the kernel does
/// NOT have, so a change reported from it can only come from reading the writer. Read before
/// the replace's exit, it is used (`read_from: writer`); when the replace ended before the read
/// could, the kernel's table is read instead (`read_from: kernel`).
#[test]
fn iptables_legacy_reads_the_new_table_from_the_writer_while_the_replace_runs() {
    require_root();
    let node = Node::create().unwrap();
    let mut all = cluster();
    (IPTABLES_LEGACY.start)(&node, &all);
    // What kube-proxy would write with one backend gone, taken from the kernel ...
    let gone = all[9].endpoints.remove(2);
    (IPTABLES_LEGACY.sync)(&node, &all, 9, &[gone]);
    let table = node
        .ns
        .run_in(|| legacy::read_nat(Family::V4).unwrap().unwrap())
        .unwrap();
    let writer = legacy::replace_buffer(&table.info, table.entries());
    // ... and the kernel back at the old table.
    all[9].endpoints.insert(2, gone);
    (IPTABLES_LEGACY.sync)(&node, &all, 9, &[]);

    // No agent: the test is the trigger.
    let (w, mut next) = scripted_watcher(&node);
    assert_eq!(next().kind, Kind::DataplaneMode);
    let svc = all[9].port.clone();
    let begin = |entered_ns| {
        watcher::Trigger::ReplaceBegin(legacy::ReplaceBegin {
            entered_ns,
            family: Family::V4,
            table: "nat".into(),
            netns: w.netns,
            pid: std::process::id(),
            buffer: writer.as_ptr() as u64,
            len: u32::try_from(writer.len()).unwrap(),
        })
    };
    let end = |entered_ns, time_ns, time: Timestamp| {
        // A replace known to the instant (no bounds but the syscall, which took no time):
        // the line's time is its exit.
        watcher::Trigger::TableReplace(legacy::TableReplace {
            time,
            at_old_table_free: false,
            entered: time,
            family: Family::V4,
            table: "nat".into(),
            netns: w.netns,
            pid: std::process::id(),
            time_ns,
            entered_ns,
            last_alloc: None,
            first_free: None,
            table_get: None,
            table_put: None,
        })
    };

    let entered_ns = legacy::monotonic_ns();
    w.triggers.send(begin(entered_ns)).unwrap();
    // The reader takes the begin on its own before the end arrives (a replace of a large table
    // runs for hundreds of milliseconds in the kernel).
    std::thread::sleep(Duration::from_millis(500));
    let exit = Timestamp::now();
    w.triggers
        .send(end(entered_ns, entered_ns + 60_000_000_000, exit))
        .unwrap();
    let o = next();
    assert_reports(&o, Kind::DataplaneRemoved, &svc, gone, (exit, exit));
    assert_eq!(o.time, exit);
    assert_eq!(
        o.other_fields()["read_from"],
        "writer",
        "{}",
        o.to_json_line()
    );

    // A replace over before its table could be read from the writer: the kernel's table is the
    // truth, and it still has the backend.
    let entered_ns = legacy::monotonic_ns();
    w.triggers.send(begin(entered_ns)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let exit = Timestamp::now();
    w.triggers
        .send(end(entered_ns, entered_ns + 1, exit))
        .unwrap();
    let o = next();
    assert_reports(&o, Kind::DataplaneAdded, &svc, gone, (exit, exit));
    assert_eq!(
        o.other_fields()["read_from"],
        "kernel",
        "{}",
        o.to_json_line()
    );
}

/// 2 000 Services of 5 endpoints (~20 MB of x_tables, a replace of tens of milliseconds).
fn large_cluster() -> Vec<ServiceRules> {
    (0..2_000u32)
        .map(|i| {
            let port = ServicePort {
                name: format!("ns{i}/svc{i}"),
                cluster_ip: std::net::Ipv4Addr::from(0x0a60_0000 + i).into(),
                port: 80,
            };
            let ep = |j| {
                SocketAddr::new(
                    std::net::Ipv4Addr::from(0x0af4_0000 + i * 5 + j).into(),
                    8080,
                )
            };
            ServiceRules::new(port, (0..5).map(ep).collect())
        })
        .collect()
}

/// The writer path live: kube-proxy's real writer (`iptables-legacy-restore`, another process)
/// replacing a table of 2 000 Services (~20 MB, a replace of tens of milliseconds in the kernel)
/// and the agent's eBPF begin/exit pair. Every change is reported exactly (the first at the
/// exit, the next ones when the writer frees the old table, which the agent then knows); the new
/// table is read from the writer's buffer (`read_from: writer`) — asked of at least one of
/// three changes, so a machine too loaded to win the race once in a while does not fail it, but
/// a writer path that does not work (pointer, pid, permission) does.
#[test]
fn iptables_legacy_large_replaces_are_read_from_the_real_writer() {
    require_root();
    let node = Node::create().unwrap();
    let mut all = large_cluster();
    (IPTABLES_LEGACY.start)(&node, &all);
    let (mut watch, start) = Watch::start(&node, &IPTABLES_LEGACY);
    assert_eq!(
        start.other_fields()["routes"],
        10_000,
        "{}",
        start.to_json_line()
    );
    let svc = all[1234].port.clone();
    let mut from = Vec::new();
    let mut windows = Vec::new();
    for round in 0..3 {
        let gone = all[1234].endpoints.remove(round);
        let when = timed(|| (IPTABLES_LEGACY.sync)(&node, &all, 1234, &[gone]));
        let obs = watch.changes(SETTLE);
        assert_one(&obs, Kind::DataplaneRemoved, &svc, gone, when);
        from.push(
            obs[0].other_fields()["read_from"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        windows.push(swap_window(&obs[0]));
        all[1234].endpoints.insert(round, gone);
        let when = timed(|| (IPTABLES_LEGACY.sync)(&node, &all, 1234, &[]));
        let obs = watch.changes(SETTLE);
        assert_one(&obs, Kind::DataplaneAdded, &svc, gone, when);
        from.push(
            obs[0].other_fields()["read_from"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        windows.push(swap_window(&obs[0]));
    }
    eprintln!("new tables read from: {from:?}");
    // The swap is known far tighter than the replace: the kernel checks the new table before it
    // and cleans the old one up after it, each a good part of a table this size. The writer
    // scheduled out in between widens a window (a loaded machine), so the narrowest is asked.
    eprintln!("(swap window, replace syscall) in µs: {windows:?}");
    assert!(
        windows
            .iter()
            .any(|(window, syscall)| window * 2 < *syscall),
        "no swap window under half its replace: {windows:?}"
    );
    assert!(
        from.iter().any(|f| f == "writer"),
        "no change was read from the writer's buffer: {from:?}"
    );
}

/// An x_tables line's (swap window, replace syscall) in µs; the window must come from the
/// per-CPU probes.
fn swap_window(o: &Observation) -> (u64, u64) {
    assert_eq!(
        o.other_fields()["swap_bounds"],
        "counters",
        "{}",
        o.to_json_line()
    );
    (
        2 * o.uncertainty_ns.unwrap_or(0) / 1000,
        o.other_fields()["syscall_ns"].as_u64().unwrap() / 1000,
    )
}

/// The tightest bounds of an iptables-legacy swap come from the writer's reference on the
/// table's module (`module:module_get` / `module_put`): those programs pass the verifier on
/// every kernel and are attached only where the kernel has module events. This machine's kernel
/// has no modules (its tables are built in): loaded, not attached, and its replaces keep the
/// counters' bounds. `cargo xtask ipvs-vm` (Debian's modular 6.12) checks the attached case
/// against the kernel's own swap.
#[test]
fn the_table_module_programs_are_attached_only_where_the_kernel_has_module_events() {
    require_root();
    let config = AgentConfig::new(NodeName("node-a".into()), Vec::new());
    let agent = Agent::start(&config).unwrap();
    let (loaded, linked) = (agent.loaded_programs(), agent.linked_programs());
    let modules = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|t| std::path::Path::new(&format!("{t}/events/module/module_get")).exists());
    for program in ["module_get", "module_put"] {
        assert!(
            loaded.iter().any(|p| p == program),
            "{program} not loaded: {loaded:?}"
        );
        assert_eq!(
            linked.iter().any(|p| p == program),
            modules,
            "{program} attached: {linked:?} (module events on this kernel: {modules})"
        );
    }
    assert!(
        linked.iter().any(|p| p == "percpu_free_percpu"),
        "{linked:?}"
    );
}

/// A replace the kernel rejects changes nothing, so nothing is reported: kube-proxy's restore
/// with one backend gone and a rule x_tables refuses (MASQUERADE reached from OUTPUT) fails
/// in the kernel after the new table's counters were allocated and its buffer could be copied
/// from the writer; the table is left as it was. The same change without the bad rule is then
/// reported exactly once. 2 000 Services, so the writer's buffer is read before the syscall
/// fails (as in the test above).
#[test]
fn iptables_legacy_a_replace_the_kernel_rejects_is_not_reported() {
    require_root();
    let node = Node::create().unwrap();
    let mut all = large_cluster();
    (IPTABLES_LEGACY.start)(&node, &all);
    let (mut watch, _) = Watch::start(&node, &IPTABLES_LEGACY);
    // A resync the agent sees: it knows the table in effect from now on, so a replace is
    // reported as soon as the writer frees that table's first counter block, before the exit.
    // A rejected replace frees counter blocks too, only its own.
    (IPTABLES_LEGACY.resync)(&node, &all);
    assert!(watch.changes(SETTLE).is_empty(), "a resync was reported");
    let svc = all[77].port.clone();
    let gone = all[77].endpoints.remove(1);
    let stale = [(svc.clone(), gone)];
    let input = kube_proxy::sync_input(&all, &|s| *s == svc, &stale, POD_CIDR);
    let cut = input.rfind("COMMIT").unwrap();
    let rejected = format!(
        "{}:KUBE-ZDT-REJECTED - [0:0]\n-A OUTPUT -j KUBE-ZDT-REJECTED\n-A KUBE-ZDT-REJECTED -j MASQUERADE\n{}",
        &input[..cut],
        &input[cut..]
    );
    let failed = node.iptables_legacy_restore(&rejected);
    assert!(
        failed.is_err(),
        "the kernel accepted MASQUERADE from OUTPUT"
    );
    let obs = watch.changes(SETTLE);
    assert!(obs.is_empty(), "a rejected replace was reported: {obs:?}");
    let when = timed(|| node.iptables_legacy_restore(&input).unwrap());
    let obs = watch.changes(SETTLE);
    assert_one(&obs, Kind::DataplaneRemoved, &svc, gone, when);
    let removed = &obs[0];
    assert_eq!(
        removed.other_fields()["reported_at"],
        "old_table_free",
        "{}",
        removed.to_json_line()
    );
}

/// IPVS over generic netlink where the kernel has it; where it does not (this project's kernel:
/// CONFIG_IP_VS unset), the controller has no family "IPVS", there is no /proc/net/ip_vs, and
/// the watcher neither polls nor claims an IPVS trigger.
#[test]
fn ipvs_is_read_where_the_kernel_has_it_and_absent_otherwise() {
    require_root();
    let node = Node::create().unwrap();
    let found = node
        .ns
        .run_in(|| {
            ipvs::Live::open()
                .unwrap()
                .map(|mut kernel| ipvs::read(&mut kernel).unwrap())
        })
        .unwrap();
    match found {
        Some(state) => {
            // A fresh namespace has no virtual servers.
            assert_eq!(state, ipvs::Ipvs::default());
        }
        None => {
            eprintln!(
                "no IPVS in this kernel: the generic-netlink controller answers ENOENT for the family \"IPVS\""
            );
            assert!(!std::path::Path::new("/proc/net/ip_vs").exists());
            let (mut watch, start) = Watch::start(&node, &NFTABLES);
            let triggers = start.details.dataplane().triggers.clone().unwrap();
            assert!(
                triggers.iter().all(|t| !t.contains("IPVS")),
                "{}",
                start.to_json_line()
            );
            assert!(watch.within(Duration::from_millis(300)).is_empty());
        }
    }
}

/// The whole agent (`kubectl-zdt agent --standalone` in the node's namespace) on an
/// iptables-legacy node with a NodePort Service: it shows the mode and its trigger; a client
/// dialling the node's address and node port while the pod does not listen gets ECONNREFUSED,
/// which the agent tags with the frontend as dialled and the pod conntrack says it reached; when
/// kube-proxy removes the endpoint, both its routes (ClusterIP and node port) are reported
/// removed.
#[test]
fn iptables_legacy_node_port_errors_name_the_frontend_and_pod_and_removals_are_reported() {
    const N: usize = 5;
    require_root();
    let mut node = Node::create().unwrap();
    let pod = node.add_pod("web-1").unwrap();
    let client = node.add_client("client").unwrap();
    let [a, b, c, _] = client.ip.octets();
    let node_addr = std::net::Ipv4Addr::new(a, b, c, 1);
    let ep = SocketAddr::new(pod.ip.into(), 8080);
    let mut all = cluster();
    let mut web = ServiceRules::new(
        ServicePort {
            name: "default/web".into(),
            cluster_ip: "198.18.100.200".parse().unwrap(),
            port: 80,
        },
        vec![ep],
    );
    web.node_port = Some(30_080);
    all.push(web);
    let web = all.len() - 1;
    (IPTABLES_LEGACY.start)(&node, &all);
    let agent = support::AgentProcess::start_in(
        Some(node.ns.name()),
        &[
            "--watch-cidr",
            &format!("{node_addr}/32"),
            "--watch-cidr",
            &format!("{}/32", pod.ip),
        ],
    );
    // The watcher has read the tables once the mode line is out; give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    let target = SocketAddr::new(node_addr.into(), 30_080);
    let outcomes = client
        .ns
        .run_in(move || {
            (0..N)
                .map(|_| tcp::connect_once(target))
                .collect::<Vec<_>>()
        })
        .unwrap();
    support::assert_all_refused(&outcomes);
    all[web].endpoints.clear();
    let when = timed(|| (IPTABLES_LEGACY.sync)(&node, &all, web, &[ep]));
    std::thread::sleep(SETTLE);
    let obs = agent.stop();

    let mode = obs
        .iter()
        .find(|o| o.kind == Kind::DataplaneMode)
        .expect("a dataplane_mode line");
    assert_eq!(
        mode.other_fields()["mode"],
        "iptables-legacy",
        "{}",
        mode.to_json_line()
    );
    let triggers = mode.other_fields()["triggers"].to_string();
    assert!(
        triggers.contains("x_tables replace (fexit __sys_setsockopt")
            || triggers.contains("x_tables replace (syscalls:sys_exit_setsockopt"),
        "{}",
        mode.to_json_line()
    );
    let tagged = support::total(&obs, |o| {
        o.kind == Kind::ConnError
            && o.reason.as_deref() == Some("ECONNREFUSED")
            && o.service.as_ref().map(ToString::to_string).as_deref()
                == Some(target.to_string().as_str())
            && o.ip == Some(pod.ip.into())
            && o.port == Some(8080)
    });
    let errors: Vec<String> = obs
        .iter()
        .filter(|o| o.kind == Kind::ConnError)
        .map(Observation::to_json_line)
        .collect();
    assert_eq!(tagged, N as u64, "{errors:#?}");
    let removed: Vec<&Observation> = obs
        .iter()
        .filter(|o| o.kind == Kind::DataplaneRemoved)
        .collect();
    assert_eq!(removed.len(), 2, "{removed:#?}");
    let svc = all[web].port.clone();
    let cluster = removed
        .iter()
        .find(|o| o.other_fields().get("frontend").is_none())
        .expect("the ClusterIP route");
    assert_reports(cluster, Kind::DataplaneRemoved, &svc, ep, when);
    let node_port = removed
        .iter()
        .find(|o| o.other_fields().get("frontend").is_some())
        .expect("the node-port route");
    assert_eq!(node_port.other_fields()["frontend"], "nodeport");
    assert_eq!(node_port.service, Some("0.0.0.0:30080".into()));
    assert_eq!(node_port.ip, Some(pod.ip.into()));
    assert_eq!(node_port.time, cluster.time);
    assert_eq!(node_port.other_fields()["mode"], "iptables-legacy");
}

/// The DaemonSet grants BPF, PERFMON and NET_ADMIN, not NET_RAW (iptables' raw socket): the
/// legacy table is read all the same.
#[test]
fn iptables_legacy_table_is_read_without_cap_net_raw() {
    require_root();
    let node = Node::create().unwrap();
    (IPTABLES_LEGACY.start)(&node, &cluster());
    let (raw_socket, nat) = node
        .ns
        .run_in(|| {
            const CAP_NET_RAW: u32 = 13;
            kubectl_zdt::testbed::agent::drop_effective_capability(CAP_NET_RAW).unwrap();
            // SAFETY: plain socket(2), closed right away.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            let raw_socket = if fd < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                // SAFETY: fd was just returned by socket(2).
                unsafe { libc::close(fd) };
                Ok(())
            };
            (raw_socket, legacy::read_routes(Family::V4))
        })
        .unwrap();
    assert_eq!(
        raw_socket.map_err(|e| e.raw_os_error()),
        Err(Some(libc::EPERM)),
        "the capability was not dropped"
    );
    let nat = nat.unwrap();
    assert!(nat.kube_services);
    assert_eq!(
        nat.routes.len(),
        usize::from(SERVICES) * usize::from(PER_SERVICE)
    );
}

/// IPv6 Services on an iptables-legacy node (`ip6tables-legacy-restore`, x_tables `ip6t_entry`
/// layout, `IP6T_SO_SET_REPLACE` at SOL_IPV6): the blob reads what `ip6tables-legacy-save`
/// prints, and an endpoint removed is reported at the replace.
#[test]
fn ip6tables_legacy_is_read_and_watched() {
    require_root();
    let node = Node::create().unwrap();
    let mut all: Vec<ServiceRules> = (0..10u16)
        .map(|i| {
            let port = ServicePort {
                name: format!("ns{i}/v6-{i}"),
                cluster_ip: format!("fd00:7a64:100::{:x}", i + 1).parse().unwrap(),
                port: 80,
            };
            let eps = (0..PER_SERVICE)
                .map(|j| {
                    format!("[fd00:7a64::{:x}]:8080", 0x100 + i * 8 + u16::from(j))
                        .parse()
                        .unwrap()
                })
                .collect();
            let mut r = ServiceRules::new(port, eps);
            r.node_port = (i == 3).then_some(30_443);
            r
        })
        .collect();
    let restore = |all: &[ServiceRules], changed: &dyn Fn(&ServicePort) -> bool, stale| {
        node.ip6tables_legacy_restore(&kube_proxy::sync_input(
            all,
            changed,
            stale,
            "fd00:7a64::/64",
        ))
        .unwrap();
    };
    node.ip6tables_legacy_restore(kube_proxy::PORTALS).unwrap();
    restore(&all, &|_| true, &[]);
    let src = Source {
        mode: Mode::IptablesLegacy,
        family: Family::V6,
    };
    let (from_tools, from_kernel) = node
        .ns
        .run_in(move || {
            (
                src.read().unwrap(),
                legacy::read_routes(Family::V6).unwrap(),
            )
        })
        .unwrap();
    assert!(from_kernel.kube_services);
    assert_eq!(from_kernel.routes.describe(), from_tools.describe());
    // 10 ClusterIPs and one node port on every local address (`::`), 3 endpoints each.
    assert_eq!(from_kernel.routes.len(), 11 * usize::from(PER_SERVICE));
    assert!(
        from_kernel
            .routes
            .describe()
            .iter()
            .any(|l| l.starts_with("nodeport [::]:30443 tcp -> [fd00:7a64::118]:8080"))
    );

    let (mut watch, start) = Watch::start(&node, &IPTABLES_LEGACY);
    assert_eq!(
        start.other_fields()["mode"],
        "iptables-legacy",
        "{}",
        start.to_json_line()
    );
    let gone = all[2].endpoints.remove(0);
    let svc = all[2].port.clone();
    let stale = [(svc.clone(), gone)];
    let when = timed(|| restore(&all, &|p| *p == svc, &stale));
    assert_one(
        &watch.changes(SETTLE),
        Kind::DataplaneRemoved,
        &svc,
        gone,
        when,
    );
}

/// The real v1.36 nat table (tests/fixtures/kube-proxy-v1.36) loaded through
/// iptables-legacy: the kernel's blob parses to what `iptables-legacy-save` prints, and that text
/// is the fixture itself.
#[test]
fn iptables_legacy_reads_the_real_v1_36_table_as_iptables_legacy_save_prints_it() {
    require_root();
    let fixture = include_str!("../fixtures/kube-proxy-v1.36/iptables-nft-nat.save");
    let node = Node::create().unwrap();
    node.iptables_legacy_restore(fixture).unwrap();
    let (saved, from_kernel) = node
        .ns
        .run_in(|| {
            let saved = kubectl_zdt::testbed::run("iptables-legacy-save", &["-t", "nat"]);
            (saved, legacy::read_routes(Family::V4))
        })
        .unwrap();
    let saved = saved.unwrap();
    let rules = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(rules(&saved), rules(fixture));
    let from_kernel = from_kernel.unwrap();
    assert_eq!(
        from_kernel.routes,
        kubectl_zdt::dataplane::iptables::parse(&saved).unwrap()
    );
    assert_eq!(from_kernel.routes.len(), 3);
}
