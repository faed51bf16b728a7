//! The event-driven loop: a trigger arrives → bring the touched dataplane up to date → routes →
//! diff → emit.
//!
//! Triggers: nf_tables commits (the monitor thread blocks in `recv` on the nf_tables netlink
//! group, no CPU between changes, and stamps each commit as it arrives), x_tables table
//! replaces (reported by the agent's eBPF program on `sys_exit_setsockopt`, stamped with the
//! syscall's exit), IPVS change requests (eBPF on `sys_exit_sendto`/`sendmsg`/`setsockopt`,
//! stamped with the exit) and, for IPVS only when that trigger is not armed, timed reads every
//! 100 ms. The reader applies and diffs; triggers that queue up while it works are handled
//! together and stamped with their window (see `emit`). Each nf_tables table is read in full
//! only at start, and again if notifications were lost; the legacy nat table is read once per
//! replace; IPVS's virtual server named by a change request is read again alone (all of IPVS
//! after a FLUSH, a setsockopt change or a loss).

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock, mpsc as std_mpsc},
    thread,
    time::Duration,
};

use anyhow::Context as _;
use jiff::Timestamp;
use tokio::sync::mpsc;

use super::{
    emit::{self, Stamp},
    flows, ipvs,
    legacy::{self, ReplaceBegin, TableReplace},
    mirror::TableMirror,
    model::{Backend, Backends, Change, Via},
    nf_monitor::{Commit, Monitor},
    nl_dump,
    source::{Family, Mode, NF_TABLES_SOURCES, Source},
    xtables,
};
use crate::observation::{Kind, NodeName, Observation};

/// The backends any dataplane of this node routes to now; read by the conntrack watcher to
/// filter flows.
pub type Watched = Arc<RwLock<std::collections::HashSet<Backend>>>;

/// The Service frontends (ClusterIP:port, NodeIP:nodePort, …) this node's dataplane routes,
/// for telling a client's error toward a Service from one toward a pod. Node ports that match
/// every local address are listed once per local address of the node.
pub type Frontends = Arc<RwLock<FrontendSet>>;

/// How long a frontend the dataplane stopped routing still counts as one: a client's error is
/// read a moment after it happened, and when its Service lost its last endpoint meanwhile (the
/// pod exited with the connection open), the frontend was already gone from the rules.
pub const FRONTEND_RETAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// The frontends routed now, and those routed until recently ([`FRONTEND_RETAIN`]).
#[derive(Debug, Default)]
pub struct FrontendSet {
    live: std::collections::HashSet<std::net::SocketAddr>,
    retired: std::collections::HashMap<std::net::SocketAddr, std::time::Instant>,
}

impl FrontendSet {
    /// Whether `addr` is a frontend now or was one within [`FRONTEND_RETAIN`].
    pub fn contains(&self, addr: &std::net::SocketAddr) -> bool {
        self.contains_at(addr, std::time::Instant::now())
    }

    fn contains_at(&self, addr: &std::net::SocketAddr, now: std::time::Instant) -> bool {
        self.live.contains(addr)
            || self
                .retired
                .get(addr)
                .is_some_and(|&t| now.saturating_duration_since(t) < FRONTEND_RETAIN)
    }

    /// Replaces the routed frontends by `now_live`, retiring the ones that left at `at`.
    pub fn publish(
        &mut self,
        now_live: std::collections::HashSet<std::net::SocketAddr>,
        at: std::time::Instant,
    ) {
        for gone in self.live.difference(&now_live) {
            self.retired.insert(*gone, at);
        }
        self.retired.retain(|addr, t| {
            !now_live.contains(addr) && at.saturating_duration_since(*t) < FRONTEND_RETAIN
        });
        self.live = now_live;
    }
}

/// Where the watcher's observations go. Holds the agent's channel weakly: once the agent drops
/// its own sender at shutdown, the channel closes and these threads stop at their next send
/// instead of keeping the stream open.
#[derive(Clone, Debug)]
pub struct Sink(mpsc::WeakSender<Observation>);

impl Sink {
    pub fn new(tx: &mpsc::Sender<Observation>) -> Self {
        Self(tx.downgrade())
    }

    /// Sends from a blocking thread; false once the stream is closed.
    pub fn send(&self, obs: Observation) -> bool {
        self.0
            .upgrade()
            .is_some_and(|tx| tx.blocking_send(obs).is_ok())
    }
}

/// What makes the reader look at the dataplane again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// nf_tables transaction(s) (iptables-nft, nftables).
    Commit(Commit),
    /// An x_tables table replace began (iptables-legacy): the new table can be read from the
    /// writer while the kernel installs it.
    ReplaceBegin(ReplaceBegin),
    /// An x_tables table was replaced (iptables-legacy).
    TableReplace(TableReplace),
    /// An IPVS change request was sent (IPVS mode).
    IpvsChange(ipvs::IpvsChange),
    /// x_tables replaces or IPVS change requests may have been lost between `since` and `now`
    /// (the agent's ring buffer was full): the legacy tables and IPVS are read again.
    Lost { since: Timestamp, now: Timestamp },
    /// Time to read IPVS again (see `ipvs::POLL`; only without the eBPF trigger).
    Tick,
}

/// What the watcher asks the agent to arm before its first read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arm {
    /// The network namespace (inode) the watcher reads.
    pub netns: u32,
    /// The IPVS generic-netlink family id, where the kernel has IPVS.
    pub ipvs_family: Option<u16>,
}

/// The eBPF triggers the agent armed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Armed {
    /// x_tables replaces are reported (iptables-legacy).
    pub legacy: bool,
    /// IPVS change requests are reported.
    pub ipvs: bool,
}

/// Arms the agent's eBPF triggers for a namespace (x_tables replaces and IPVS change requests
/// there are then reported); nothing is armed when the kernel has no syscall tracepoints.
pub type ArmTriggers<'a> = &'a mut dyn FnMut(&Arm) -> anyhow::Result<Armed>;

/// How often `flow_new` lines are flushed per (frontend, backend).
pub const FLOW_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Starts everything the agent reports about the dataplane in the calling thread's network
/// namespace: the dataplane watcher and the conntrack flow listener. `arm` arms the agent's
/// iptables-legacy and IPVS triggers (None: legacy changes are not watched, IPVS is polled).
pub fn start(
    node: &NodeName,
    tx: &mpsc::Sender<Observation>,
    arm: Option<ArmTriggers<'_>>,
) -> anyhow::Result<Watcher> {
    let sink = Sink::new(tx);
    let watcher = spawn(node.clone(), sink.clone(), arm)?;
    flows::spawn(
        node.clone(),
        watcher.watched.clone(),
        watcher.dnat.clone(),
        FLOW_REPORT_INTERVAL,
        sink,
    )
    .context(
        "failed to subscribe to conntrack events (NFNLGRP_CONNTRACK_NEW); the agent needs CAP_NET_ADMIN",
    )?;
    Ok(watcher)
}

/// Handle to the running watcher threads (they run until the observation stream closes).
pub struct Watcher {
    pub modes: Vec<Mode>,
    pub watched: Watched,
    pub frontends: Frontends,
    /// Where recent DNAT'ed connections went (fed by the conntrack listener).
    pub dnat: flows::Dnat,
    /// Where the agent sends x_tables replaces and IPVS change requests (and their losses).
    pub triggers: std_mpsc::Sender<Trigger>,
    /// The network namespace (inode) the watcher reads.
    pub netns: u32,
}

/// One nf_tables-based dataplane: its mirror and the routes it held at the last commit.
struct Plane {
    source: Source,
    mirror: TableMirror,
    routes: Backends,
}

/// The legacy x_tables nat table of one family: the routes it held at the last read.
struct LegacyPlane {
    family: Family,
    routes: Backends,
    /// It holds kube-proxy's KUBE-SERVICES chain.
    kube_proxy: bool,
    /// The table a writer was installing, read from its buffer while the kernel worked.
    prepared: Option<Prepared>,
    /// Reused for the pieces of a writer's buffer.
    chunk: Vec<u8>,
}

/// A table read from the writer of a replace in progress.
struct Prepared {
    /// The replace: its writer and entry time (`ReplaceBegin::entered_ns`).
    pid: u32,
    entered_ns: u64,
    nat: xtables::Nat,
    /// `CLOCK_MONOTONIC` when the copy was over: before the syscall's exit, the writer's buffer
    /// was still the table the kernel installed.
    copied_ns: u64,
}

impl Prepared {
    fn is_for(&self, replace: &TableReplace) -> bool {
        self.pid == replace.pid && self.entered_ns == replace.entered_ns
    }

    /// The table `replace` installed, if this was read from its writer before it returned.
    fn installed_by(self, replace: &TableReplace) -> Option<xtables::Nat> {
        (self.is_for(replace) && self.copied_ns < replace.time_ns).then_some(self.nat)
    }
}

impl LegacyPlane {
    fn read(family: Family) -> anyhow::Result<Self> {
        let nat = legacy::read_routes(family)?;
        Ok(Self {
            family,
            routes: nat.routes,
            kube_proxy: nat.kube_services,
            prepared: None,
            chunk: Vec::new(),
        })
    }

    fn source(&self) -> Source {
        Source {
            mode: Mode::IptablesLegacy,
            family: self.family,
        }
    }

    /// Reads the table a replace is installing from its writer; a failure leaves the read to
    /// the kernel's copy once the replace is over.
    fn prepare(&mut self, begin: &ReplaceBegin) {
        self.prepared = None;
        match legacy::read_writer(begin, &mut self.chunk) {
            Ok(read) => {
                self.prepared = Some(Prepared {
                    pid: begin.pid,
                    entered_ns: begin.entered_ns,
                    nat: read.nat,
                    copied_ns: read.copied_ns,
                });
            }
            Err(e) => tracing::debug!("{e}; the table is read from the kernel instead"),
        }
    }
}

/// IPVS, read again on change requests and ticks: the routes at the last read and when it was
/// made.
struct IpvsPlane {
    kernel: ipvs::Live,
    state: ipvs::Ipvs,
    read_at: Timestamp,
}

impl IpvsPlane {
    fn read(mut kernel: ipvs::Live) -> anyhow::Result<Self> {
        let read_at = Timestamp::now();
        let state = ipvs::read(&mut kernel).context("failed to read IPVS")?;
        Ok(Self {
            kernel,
            state,
            read_at,
        })
    }

    fn source() -> Source {
        Source {
            mode: Mode::Ipvs,
            family: Family::V4,
        }
    }
}

/// The inode of the calling thread's network namespace, as the kernel reports it.
fn own_netns() -> anyhow::Result<u32> {
    crate::agent::netns_inode(std::path::Path::new("/proc/thread-self/ns/net"))
}

/// Starts watching the dataplanes of the calling thread's network namespace: reads each
/// nf_tables table kube-proxy may use over netlink and the legacy nat tables, detects the mode,
/// then emits `dataplane_added` / `dataplane_removed` into `tx`. The first observation is
/// `dataplane_mode` with the detected modes and route counts.
pub fn spawn(node: NodeName, tx: Sink, arm: Option<ArmTriggers<'_>>) -> anyhow::Result<Watcher> {
    // Subscribe (and arm the legacy trigger) before the first read, so no change falls between
    // the two.
    let mut monitor = Monitor::open()
        .context("failed to subscribe to nf_tables notifications (NFNLGRP_NFTABLES); the agent needs CAP_NET_ADMIN")?;
    let netns = own_netns()?;
    // IPVS's family id first: the trigger recognises its requests by it.
    let ipvs_kernel = ipvs::Live::open().unwrap_or_else(|e| {
        tracing::warn!("IPVS changes will not be reported: failed to look for IPVS: {e}");
        None
    });
    let armed = match arm {
        Some(arm) => arm(&Arm {
            netns,
            ipvs_family: ipvs_kernel.as_ref().map(ipvs::Live::family_id),
        })?,
        None => Armed::default(),
    };
    let legacy_armed = armed.legacy;
    let mut planes = Vec::new();
    for source in NF_TABLES_SOURCES {
        let Some((family, table)) = source.nf_table() else {
            continue;
        };
        let mut mirror = TableMirror::new(family, table);
        nl_dump::dump(&mut mirror)
            .with_context(|| format!("failed to read nf_tables table {table} (family {family})"))?;
        let mut routes = Backends::new();
        mirror.update(&mut routes);
        planes.push(Plane {
            source,
            mirror,
            routes,
        });
    }
    let legacy = [Family::V4, Family::V6]
        .into_iter()
        .map(LegacyPlane::read)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ipvs = ipvs_kernel.and_then(|k| {
        IpvsPlane::read(k)
            .inspect_err(|e| tracing::warn!("IPVS changes will not be reported: {e:#}"))
            .ok()
    });
    let ipvs_armed = armed.ipvs && ipvs.is_some();
    let modes = detect(&planes, &legacy, ipvs.as_ref());
    let watched = Watched::default();
    let frontends = Frontends::default();
    publish(&watched, &frontends, &planes, &legacy, ipvs.as_ref());
    let start = mode_line(&node, &modes, &planes, &legacy, armed, ipvs.as_ref());
    if modes.contains(&Mode::IptablesLegacy) && !legacy_armed {
        tracing::warn!(
            "kube-proxy's rules are (also) in iptables-legacy, but this agent has no x_tables trigger (no syscall tracepoints): changes there are not reported"
        );
    }

    let (triggers, triggers_rx) = std_mpsc::channel::<Trigger>();
    if ipvs.is_some() && !ipvs_armed {
        // IPVS announces nothing and the eBPF trigger is not armed (no syscall tracepoints, or
        // the watcher runs without the agent): read it again on a timer, only on kernels that
        // have IPVS.
        let ticks = triggers.clone();
        thread::Builder::new()
            .name("zdt-ipvs-tick".into())
            .spawn(move || {
                loop {
                    thread::sleep(ipvs::POLL);
                    if ticks.send(Trigger::Tick).is_err() {
                        return;
                    }
                }
            })
            .context("failed to start the IPVS timer thread")?;
    }
    let commits = triggers.clone();
    thread::Builder::new()
        .name("zdt-nf-monitor".into())
        .spawn(move || {
            loop {
                match monitor.next_commit() {
                    Ok(commit) => {
                        if commits.send(Trigger::Commit(commit)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!("nf_tables monitor stopped: {e}");
                        return;
                    }
                }
            }
        })
        .context("failed to start the nf_tables monitor thread")?;
    let reader = Reader {
        node,
        modes: modes.clone(),
        planes,
        legacy,
        armed,
        ipvs,
        netns,
        watched: watched.clone(),
        frontends: frontends.clone(),
        tx,
    };
    thread::Builder::new()
        .name("zdt-dataplane".into())
        // The first line is sent from the reader thread: `spawn` may be called from async code,
        // where a blocking send is not allowed.
        .spawn(move || {
            if reader.tx.send(start) {
                reader.run(&triggers_rx);
            }
        })
        .context("failed to start the dataplane reader thread")?;
    Ok(Watcher {
        modes,
        watched,
        frontends,
        dnat: flows::Dnat::default(),
        triggers,
        netns,
    })
}

/// The `dataplane_mode` line: the first detected mode is the one shown as `mode`.
fn mode_line(
    node: &NodeName,
    modes: &[Mode],
    planes: &[Plane],
    legacy: &[LegacyPlane],
    armed: Armed,
    ipvs: Option<&IpvsPlane>,
) -> Observation {
    let mut triggers = vec!["nf_tables netlink (NFNLGRP_NFTABLES)"];
    if armed.legacy {
        triggers.push("x_tables replace (syscalls:sys_exit_setsockopt, IPT_SO_SET_REPLACE)");
    }
    if ipvs.is_some() {
        triggers.push(if armed.ipvs {
            "IPVS change request (syscalls:sys_exit_sendto/sys_exit_sendmsg, IPVS_CMD_NEW/SET/DEL_SERVICE|DEST, IPVS_CMD_FLUSH; and syscalls:sys_exit_setsockopt, IP_VS_SO_SET_*); the named virtual server re-read"
        } else {
            "IPVS re-read every 100 ms (IPVS sends no notifications)"
        });
    }
    let mut o = Observation::new(Kind::DataplaneMode, Timestamp::now(), node.clone());
    let d = o.details.dataplane_mut();
    d.mode = Some(modes.first().map_or("none", |m| m.as_str()).to_owned());
    d.modes = Some(modes.iter().map(|m| m.as_str().to_owned()).collect());
    d.routes = Some(
        (planes.iter().map(|p| p.routes.len()).sum::<usize>()
            + legacy.iter().map(|p| p.routes.len()).sum::<usize>()
            + ipvs.map_or(0, |p| p.state.routes.len())) as u64,
    );
    d.triggers = Some(triggers.into_iter().map(str::to_owned).collect());
    o
}

/// kube-proxy's mode(s) on this node: the tables holding its dispatch (nf_tables, then
/// x_tables), then IPVS virtual servers.
fn detect(planes: &[Plane], legacy: &[LegacyPlane], ipvs: Option<&IpvsPlane>) -> Vec<Mode> {
    let mut modes: Vec<Mode> = Vec::new();
    for p in planes.iter().filter(|p| p.mirror.is_kube_proxy()) {
        if !modes.contains(&p.source.mode) {
            modes.push(p.source.mode);
        }
    }
    if legacy.iter().any(|p| p.kube_proxy) {
        modes.push(Mode::IptablesLegacy);
    }
    if ipvs.is_some_and(|p| !p.state.servers.is_empty()) {
        modes.push(Mode::Ipvs);
    }
    modes
}

struct Reader {
    node: NodeName,
    planes: Vec<Plane>,
    legacy: Vec<LegacyPlane>,
    armed: Armed,
    ipvs: Option<IpvsPlane>,
    /// The namespace read: replaces elsewhere are not this node's dataplane.
    netns: u32,
    /// The modes last reported; a new `dataplane_mode` line is sent when kube-proxy's tables
    /// appear or go (kube-proxy started after the agent, or switched modes).
    modes: Vec<Mode>,
    watched: Watched,
    frontends: Frontends,
    tx: Sink,
}

/// The times a batch of triggers covers, for one dataplane.
#[derive(Default)]
struct Window {
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    triggers: u32,
}

impl Window {
    fn add(&mut self, first: Timestamp, last: Timestamp) {
        self.first = Some(self.first.map_or(first, |f| f.min(first)));
        self.last = Some(self.last.map_or(last, |l| l.max(last)));
        self.triggers += 1;
    }

    fn stamp(&self) -> Option<Stamp> {
        Some(Stamp {
            first: self.first?,
            last: self.last?,
            commits: self.triggers,
            detected: Timestamp::now(),
        })
    }
}

impl Reader {
    fn run(mut self, triggers: &std_mpsc::Receiver<Trigger>) {
        while let Ok(first) = triggers.recv() {
            // Triggers that queued up while the previous ones were handled go together.
            let batch: Vec<Trigger> = std::iter::once(first).chain(triggers.try_iter()).collect();
            if !self.apply(&batch) {
                return;
            }
        }
    }

    /// Brings every dataplane the batch touched up to date and reports the route changes;
    /// false once nobody listens any more.
    fn apply(&mut self, batch: &[Trigger]) -> bool {
        let commits: Vec<&Commit> = batch
            .iter()
            .filter_map(|t| match t {
                Trigger::Commit(c) => Some(c),
                _ => None,
            })
            .collect();
        let mut changed = false;
        if !commits.is_empty() {
            match self.apply_commits(&commits) {
                Some(c) => changed |= c,
                None => return false,
            }
        }
        for i in 0..self.legacy.len() {
            let family = self.legacy[i].family;
            let mut window = Window::default();
            let mut replaces = Vec::new();
            let mut begin = None;
            for t in batch {
                match t {
                    Trigger::ReplaceBegin(b)
                        if b.family == family && b.concerns_nat() && b.netns == self.netns =>
                    {
                        begin = Some(b);
                    }
                    Trigger::TableReplace(r)
                        if r.family == family && r.concerns_nat() && r.netns == self.netns =>
                    {
                        let (after, before) = r.swapped();
                        window.add(after, before);
                        replaces.push(r);
                    }
                    Trigger::Lost { since, now } => window.add(*since, *now),
                    _ => {}
                }
            }
            // A replace still in progress (its end is not in this batch): read the new table
            // from the writer now, while the kernel installs it.
            if let Some(b) = begin.filter(|b| {
                !replaces
                    .iter()
                    .any(|r| r.pid == b.pid && r.entered_ns == b.entered_ns)
            }) {
                self.legacy[i].prepare(b);
            }
            let Some(stamp) = window.stamp() else {
                continue;
            };
            // The table read from the writer is the one in effect if its replace is the only
            // change in the window and the read was over before the syscall returned.
            let plane = &mut self.legacy[i];
            let nat = match plane.prepared.take() {
                Some(p) if replaces.iter().any(|r| p.is_for(r)) => match replaces.as_slice() {
                    [only] if window.triggers == 1 => p.installed_by(only),
                    _ => None,
                },
                // Read for a replace still in progress.
                other => {
                    plane.prepared = other;
                    None
                }
            };
            let only = match replaces.as_slice() {
                [only] if window.triggers == 1 => Some(*only),
                _ => None,
            };
            match self.reread_legacy(i, stamp, nat, only) {
                Some(c) => changed |= c,
                None => return false,
            }
        }
        // IPVS: a change request naming its virtual server has that one read again, stamped
        // with the window of the requests for it; any other request (FLUSH, cut short) or loss
        // has all of IPVS read, stamped with the window of every trigger; a tick alone with the
        // interval since the previous read.
        let mut whole = Window::default();
        // Per virtual server: the window of its requests and the last one's command.
        let mut servers: BTreeMap<ipvs::VirtualServer, (Window, u8)> = BTreeMap::new();
        let (mut tick, mut read_all) = (false, false);
        for t in batch {
            match t {
                Trigger::IpvsChange(c) if c.netns == self.netns => {
                    whole.add(c.time, c.time);
                    let Some(vs) = c.server else {
                        read_all = true;
                        continue;
                    };
                    let (window, cmd) = servers.entry(vs).or_default();
                    window.add(c.time, c.time);
                    *cmd = c.cmd;
                }
                Trigger::Lost { since, now } => {
                    whole.add(*since, *now);
                    read_all = true;
                }
                Trigger::Tick => tick = true,
                _ => {}
            }
        }
        if self.ipvs.is_some() {
            if tick || read_all {
                match self.reread_ipvs(whole.stamp()) {
                    Some(c) => changed |= c,
                    None => return false,
                }
            } else {
                for (vs, (window, cmd)) in &servers {
                    match self.reread_ipvs_server(vs, window, *cmd) {
                        Some(c) => changed |= c,
                        None => return false,
                    }
                }
            }
        }
        if changed {
            publish(
                &self.watched,
                &self.frontends,
                &self.planes,
                &self.legacy,
                self.ipvs.as_ref(),
            );
        }
        let modes = detect(&self.planes, &self.legacy, self.ipvs.as_ref());
        if modes != self.modes {
            self.modes = modes;
            let line = mode_line(
                &self.node,
                &self.modes,
                &self.planes,
                &self.legacy,
                self.armed,
                self.ipvs.as_ref(),
            );
            if !self.tx.send(line) {
                return false;
            }
        }
        true
    }

    /// Applies nf_tables commits to every mirror they touched; whether routes changed, `None`
    /// once nobody listens.
    fn apply_commits(&mut self, batch: &[&Commit]) -> Option<bool> {
        let first = batch
            .iter()
            .map(|c| c.time)
            .min()
            .unwrap_or_else(Timestamp::now);
        let last = batch.iter().map(|c| c.time).max().unwrap_or(first);
        let overrun = batch.iter().any(|c| c.overrun);
        let mut changed = false;
        for plane in &mut self.planes {
            let mut touched = false;
            if overrun {
                // Lost notifications: the mirror cannot be trusted, read the table again.
                if let Err(e) = nl_dump::dump(&mut plane.mirror) {
                    tracing::error!("failed to re-read the {} dataplane: {e}", plane.source.mode);
                    continue;
                }
                touched = true;
            } else {
                for (family, message) in batch.iter().flat_map(|c| &c.changes) {
                    touched |= plane.mirror.apply(*family, message);
                }
            }
            if !touched {
                continue;
            }
            let change = plane.mirror.update(&mut plane.routes);
            if change.is_empty() {
                continue;
            }
            changed = true;
            let stamp = Stamp {
                first,
                last,
                commits: u32::try_from(batch.len()).unwrap_or(u32::MAX),
                detected: Timestamp::now(),
            };
            for obs in emit::observations(&self.node, plane.source, &change, stamp) {
                if !self.tx.send(obs) {
                    return None;
                }
            }
        }
        Some(changed)
    }

    /// Reads IPVS again; what changed since the previous read is stamped with `triggered` (the
    /// change requests' exits) or else with the interval between the two reads. Whether routes
    /// changed, `None` once nobody listens.
    fn reread_ipvs(&mut self, triggered: Option<Stamp>) -> Option<bool> {
        let Some(plane) = &mut self.ipvs else {
            return Some(false);
        };
        let started = Timestamp::now();
        let state = match ipvs::read(&mut plane.kernel) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e:#}");
                return Some(false);
            }
        };
        let change = plane.state.routes.diff(&state.routes);
        let stamp = match triggered {
            Some(stamp) => Stamp {
                detected: Timestamp::now(),
                ..stamp
            },
            None => Stamp {
                first: plane.read_at,
                last: Timestamp::now(),
                commits: 1,
                detected: Timestamp::now(),
            },
        };
        plane.state = state;
        plane.read_at = started;
        self.report_ipvs(&change, stamp)
    }

    /// Reads one virtual server of IPVS again after change requests naming it (`window`; `cmd`
    /// the last one's, which decides whether it exists, see `ipvs::reread_server`); whether its
    /// routes changed, `None` once nobody listens.
    fn reread_ipvs_server(
        &mut self,
        vs: &ipvs::VirtualServer,
        window: &Window,
        cmd: u8,
    ) -> Option<bool> {
        let Some(plane) = &mut self.ipvs else {
            return Some(false);
        };
        let change = match ipvs::reread_server(&mut plane.kernel, &mut plane.state, vs, cmd) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("failed to read IPVS virtual server {}: {e:#}", vs.service);
                return Some(false);
            }
        };
        let Some(stamp) = window.stamp() else {
            return Some(false);
        };
        self.report_ipvs(&change, stamp)
    }

    /// Sends one line per IPVS route change; whether there was any, `None` once nobody listens.
    fn report_ipvs(&self, change: &Change, stamp: Stamp) -> Option<bool> {
        if change.is_empty() {
            return Some(false);
        }
        for obs in emit::observations(&self.node, IpvsPlane::source(), change, stamp) {
            if !self.tx.send(obs) {
                return None;
            }
        }
        Some(true)
    }

    /// Brings the legacy nat table of `self.legacy[i]` up to date after a replace, with the
    /// table read from its writer (`installed`) or else read from the kernel; whether routes
    /// changed, `None` once nobody listens.
    ///
    /// A line stamped by one replace says how its swap was bounded (`swap_bounds`: `counters`
    /// when the per-CPU probes saw the new table's counters allocated and the old one's freed,
    /// else `syscall`), how long the replace had run in the kernel when it was reported
    /// (`syscall_ns`) and where that was (`reported_at`: `old_table_free` when the writer freed
    /// the old table's first counter block, else `exit`).
    fn reread_legacy(
        &mut self,
        i: usize,
        stamp: Stamp,
        installed: Option<xtables::Nat>,
        replace: Option<&TableReplace>,
    ) -> Option<bool> {
        let plane = &mut self.legacy[i];
        let (nat, read_from) = match installed {
            Some(nat) => (nat, "writer"),
            None => match legacy::read_routes(plane.family) {
                Ok(nat) => (nat, "kernel"),
                Err(e) => {
                    tracing::error!("{e:#}");
                    return Some(false);
                }
            },
        };
        plane.kube_proxy = nat.kube_services;
        let change = plane.routes.diff(&nat.routes);
        plane.routes = nat.routes;
        if change.is_empty() {
            return Some(false);
        }
        let stamp = Stamp {
            detected: Timestamp::now(),
            ..stamp
        };
        for obs in emit::observations(&self.node, plane.source(), &change, stamp) {
            let mut obs = obs;
            let d = obs.details.dataplane_mut();
            d.read_from = Some(read_from.to_owned());
            if let Some(r) = replace {
                let syscall = r.time.duration_since(r.entered).as_nanos().max(0);
                d.swap_bounds = Some(r.swap_bounds().as_str().to_owned());
                d.syscall_ns = Some(u64::try_from(syscall).unwrap_or(u64::MAX));
                d.reported_at = Some(
                    if r.at_old_table_free {
                        "old_table_free"
                    } else {
                        "exit"
                    }
                    .to_owned(),
                );
            }
            if !self.tx.send(obs) {
                return None;
            }
        }
        Some(true)
    }
}

/// Every route of every dataplane.
fn all_routes<'a>(
    planes: &'a [Plane],
    legacy: &'a [LegacyPlane],
    ipvs: Option<&'a IpvsPlane>,
) -> impl Iterator<Item = &'a super::model::Route> {
    planes
        .iter()
        .map(|p| &p.routes)
        .chain(legacy.iter().map(|p| &p.routes))
        .chain(ipvs.map(|p| &p.state.routes))
        .flat_map(|r| r.iter().map(|(route, _)| route))
}

/// Publishes the backends (for the conntrack listener) and the frontends (for client errors).
fn publish(
    watched: &Watched,
    frontends: &Frontends,
    planes: &[Plane],
    legacy: &[LegacyPlane],
    ipvs: Option<&IpvsPlane>,
) {
    let set = all_routes(planes, legacy, ipvs)
        .map(|r| r.backend)
        .collect();
    if let Ok(mut w) = watched.write() {
        *w = set;
    }
    let set = frontend_addrs(all_routes(planes, legacy, ipvs), &local_addresses());
    if let Ok(mut f) = frontends.write() {
        f.publish(set, std::time::Instant::now());
    }
}

/// The addresses clients dial to reach the routes' frontends: a node port that matches every
/// local address (unspecified) stands for each of `local` of its family.
fn frontend_addrs<'a>(
    routes: impl Iterator<Item = &'a super::model::Route>,
    local: &[std::net::IpAddr],
) -> std::collections::HashSet<std::net::SocketAddr> {
    let mut set = std::collections::HashSet::new();
    for r in routes {
        let addr = r.service.0;
        if r.via == Via::NodePort && addr.ip().is_unspecified() {
            set.extend(
                local
                    .iter()
                    .filter(|ip| ip.is_ipv4() == addr.is_ipv4())
                    .map(|ip| std::net::SocketAddr::new(*ip, addr.port())),
            );
        } else {
            set.insert(addr);
        }
    }
    set
}

/// The addresses of this network namespace's interfaces, loopback excluded (kube-proxy's
/// default node-port rule matches `--dst-type LOCAL` but not 127.0.0.0/8).
pub fn local_addresses() -> Vec<std::net::IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|a| {
                let sa = a.address?;
                let ip: std::net::IpAddr = if let Some(v4) = sa.as_sockaddr_in() {
                    v4.ip().into()
                } else {
                    sa.as_sockaddr_in6()?.ip().into()
                };
                (!ip.is_loopback()).then_some(ip)
            })
            .collect(),
        Err(e) => {
            tracing::warn!("cannot list the node's addresses for node ports: {e}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod frontend_tests {
    use super::*;

    #[test]
    fn a_frontend_whose_last_endpoint_just_went_still_names_its_service_for_a_while() {
        let addr: std::net::SocketAddr = "198.19.0.10:80".parse().unwrap();
        let t0 = std::time::Instant::now();
        let mut set = FrontendSet::default();
        set.publish([addr].into_iter().collect(), t0);
        assert!(set.contains_at(&addr, t0));
        // kube-proxy removed the Service's rules (no endpoint left) a moment before the
        // client's ECONNRESET was read.
        set.publish(std::collections::HashSet::new(), t0);
        assert!(set.contains_at(&addr, t0 + std::time::Duration::from_millis(200)));
        assert!(!set.contains_at(&addr, t0 + FRONTEND_RETAIN));
        assert!(!set.contains_at(&"198.19.0.11:80".parse().unwrap(), t0));
        // Routed again: live, no longer retired; gone for good after the retention.
        set.publish([addr].into_iter().collect(), t0 + FRONTEND_RETAIN);
        assert!(set.retired.is_empty());
        set.publish(std::collections::HashSet::new(), t0 + FRONTEND_RETAIN * 2);
        set.publish(std::collections::HashSet::new(), t0 + FRONTEND_RETAIN * 4);
        assert!(set.retired.is_empty(), "pruned after the retention");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::model::{Protocol, Route, ServiceAddr};

    fn route(service: &str, via: Via) -> Route {
        Route {
            service: ServiceAddr(service.parse().unwrap()),
            protocol: Protocol::Tcp,
            backend: Backend("10.244.0.5:8080".parse().unwrap()),
            via,
        }
    }

    #[test]
    fn a_node_port_on_every_local_address_is_dialled_on_each_of_them() {
        let routes = [
            route("10.96.0.10:80", Via::ServiceIp),
            route("0.0.0.0:30080", Via::NodePort),
            route("[::]:30443", Via::NodePort),
            route("192.0.2.9:30081", Via::NodePort),
        ];
        let local: Vec<std::net::IpAddr> = ["192.0.2.2", "10.244.0.1", "fd00::2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let mut got: Vec<String> = frontend_addrs(routes.iter(), &local)
            .iter()
            .map(ToString::to_string)
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                "10.244.0.1:30080",
                "10.96.0.10:80",
                "192.0.2.2:30080",
                "192.0.2.9:30081",
                "[fd00::2]:30443",
            ]
        );
    }
}
