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

mod frontends;
mod planes;

use std::{sync::mpsc as std_mpsc, thread, time::Duration};

use anyhow::Context as _;
use jiff::Timestamp;
use tokio::sync::mpsc;

pub use self::frontends::{FRONTEND_RETAIN, FrontendSet, Frontends, Watched, local_addresses};
use self::planes::{IpvsPlane, LegacyPlane, NfTablesPlane, Out, Plane};
use super::{
    flows, ipvs,
    legacy::{ReplaceBegin, TableReplace},
    nf_monitor::{Commit, Monitor},
    source::{Family, Mode, NF_TABLES_SOURCES},
};
use crate::observation::{Kind, NodeName, Observation};

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
    /// x_tables replaces or IPVS change requests may have gone unreported between `since` and
    /// `now` (the agent's ring buffer was full, or its x_tables trigger was attached only now):
    /// the legacy tables and IPVS are read again.
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
    /// x_tables replaces are reported (iptables-legacy), from this hook.
    pub legacy: Option<TriggerHook>,
    /// IPVS change requests are reported (from the same hook as x_tables replaces).
    pub ipvs: bool,
}

/// Where the dataplane triggers were attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriggerHook {
    /// fentry/fexit on `__sys_setsockopt`, `__sys_sendto` and `__sys_sendmsg`.
    Function,
    /// `syscalls:sys_enter/exit_setsockopt`, `…_sendto` and `…_sendmsg`.
    SyscallTracepoints,
}

/// How often `flow_new` lines are flushed per (frontend, backend).
pub const FLOW_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Starts everything the agent reports about the dataplane in the calling thread's network
/// namespace, with no eBPF trigger armed (legacy changes are not watched, IPVS is polled): the
/// dataplane watcher and the conntrack flow listener. With triggers: [`open`], arm them for
/// [`Opened::arm`], then [`Opened::start`].
pub fn start(node: &NodeName, tx: &mpsc::Sender<Observation>) -> anyhow::Result<Watcher> {
    open()?.start(node, tx, Armed::default())
}

/// Subscribes to the dataplane's changes in the calling thread's network namespace, before
/// anything is read: the first of two steps, so that the caller arms its triggers (for
/// [`Opened::arm`]) between them without the dataplane calling back into it.
pub fn open() -> anyhow::Result<Opened> {
    // Subscribe (and have the legacy trigger armed) before the first read, so no change falls
    // between the two.
    let monitor = Monitor::open()
        .context("failed to subscribe to nf_tables notifications (NFNLGRP_NFTABLES); the agent needs CAP_NET_ADMIN")?;
    let netns = crate::netns::own_netns()?;
    // IPVS's family id first: the trigger recognises its requests by it.
    let ipvs_kernel = ipvs::Live::open().unwrap_or_else(|e| {
        tracing::warn!("IPVS changes will not be reported: failed to look for IPVS: {e}");
        None
    });
    Ok(Opened {
        arm: Arm {
            netns,
            ipvs_family: ipvs_kernel.as_ref().map(ipvs::Live::family_id),
        },
        monitor,
        ipvs_kernel,
    })
}

/// A watcher subscribed to changes, not yet reading ([`open`]).
pub struct Opened {
    /// What the caller's eBPF triggers must watch before the first read.
    pub arm: Arm,
    monitor: Monitor,
    ipvs_kernel: Option<ipvs::Live>,
}

impl Opened {
    /// Starts everything the agent reports about the dataplane (see [`start`]), with the
    /// triggers the caller `armed`.
    pub fn start(
        self,
        node: &NodeName,
        tx: &mpsc::Sender<Observation>,
        armed: Armed,
    ) -> anyhow::Result<Watcher> {
        let sink = Sink::new(tx);
        let watcher = self.spawn(node.clone(), sink.clone(), armed)?;
        spawn_flows(node, &watcher, sink)?;
        Ok(watcher)
    }
}

/// Starts the conntrack flow listener of `watcher`'s namespace.
fn spawn_flows(node: &NodeName, watcher: &Watcher, sink: Sink) -> anyhow::Result<()> {
    flows::spawn(
        node.clone(),
        watcher.watched.clone(),
        watcher.dnat.clone(),
        FLOW_REPORT_INTERVAL,
        sink,
    )
    .context(
        "failed to subscribe to conntrack events (NFNLGRP_CONNTRACK_NEW); the agent needs CAP_NET_ADMIN",
    )
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

/// Starts watching the dataplanes of the calling thread's network namespace: reads each
/// nf_tables table kube-proxy may use over netlink and the legacy nat tables, detects the mode,
/// then emits `dataplane_added` / `dataplane_removed` into `tx`. The first observation is
/// `dataplane_mode` with the detected modes and route counts.
/// No eBPF trigger is armed; with triggers: [`open`], arm them, then [`Opened::spawn`].
pub fn spawn(node: NodeName, tx: Sink) -> anyhow::Result<Watcher> {
    open()?.spawn(node, tx, Armed::default())
}

impl Opened {
    /// Reads every dataplane once and starts the threads that keep them up to date (see
    /// [`spawn`]).
    pub fn spawn(self, node: NodeName, tx: Sink, armed: Armed) -> anyhow::Result<Watcher> {
        let Self {
            arm: Arm { netns, .. },
            mut monitor,
            ipvs_kernel,
        } = self;
        // In the order `dataplane_mode` lists the modes: nf_tables, x_tables, IPVS.
        let mut planes: Vec<Box<dyn Plane>> = Vec::new();
        for source in NF_TABLES_SOURCES {
            if let Some(plane) = NfTablesPlane::read(source)? {
                planes.push(Box::new(plane));
            }
        }
        for family in [Family::V4, Family::V6] {
            planes.push(Box::new(LegacyPlane::read(family)?));
        }
        let ipvs = ipvs_kernel.and_then(|k| {
            IpvsPlane::read(k)
                .inspect_err(|e| tracing::warn!("IPVS changes will not be reported: {e:#}"))
                .ok()
        });
        let has_ipvs = ipvs.is_some();
        let ipvs_armed = armed.ipvs && has_ipvs;
        if let Some(plane) = ipvs {
            planes.push(Box::new(plane));
        }
        let modes = detect(&planes);
        let watched = Watched::default();
        let frontends = Frontends::default();
        frontends::publish(&watched, &frontends, || all_routes(&planes));
        let trigger_names = trigger_names(armed, has_ipvs);
        let start = mode_line(&node, &modes, &planes, &trigger_names);
        if modes.contains(&Mode::IptablesLegacy) && armed.legacy.is_none() {
            tracing::warn!(
                "kube-proxy's rules are (also) in iptables-legacy, but this agent has no x_tables trigger (this kernel refuses its function hooks and has no syscall tracepoints as it reads them): changes there are not reported"
            );
        }

        let (triggers, triggers_rx) = std_mpsc::channel::<Trigger>();
        if has_ipvs && !ipvs_armed {
            // IPVS announces nothing and the eBPF trigger is not armed (no trigger hook, or
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
            out: Out { node, netns, tx },
            modes: modes.clone(),
            planes,
            trigger_names,
            watched: watched.clone(),
            frontends: frontends.clone(),
        };
        thread::Builder::new()
            .name("zdt-dataplane".into())
            // The first line is sent from the reader thread: `spawn` may be called from async code,
            // where a blocking send is not allowed.
            .spawn(move || {
                if reader.out.tx.send(start) {
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
}

/// What makes the watcher read the dataplanes again, as `dataplane_mode` lists it.
fn trigger_names(armed: Armed, has_ipvs: bool) -> Vec<&'static str> {
    let mut triggers = vec!["nf_tables netlink (NFNLGRP_NFTABLES)"];
    if let Some(hook) = armed.legacy {
        triggers.push(match hook {
            TriggerHook::Function => {
                "x_tables replace (fexit __sys_setsockopt, IPT_SO_SET_REPLACE)"
            }
            TriggerHook::SyscallTracepoints => {
                "x_tables replace (syscalls:sys_exit_setsockopt, IPT_SO_SET_REPLACE; attached once a nat table exists)"
            }
        });
    }
    if has_ipvs {
        triggers.push(match armed.legacy.filter(|_| armed.ipvs) {
            Some(TriggerHook::Function) => {
                "IPVS change request (fexit __sys_sendto/__sys_sendmsg, IPVS_CMD_NEW/SET/DEL_SERVICE|DEST, IPVS_CMD_FLUSH; and fexit __sys_setsockopt, IP_VS_SO_SET_*); the named virtual server re-read"
            }
            Some(TriggerHook::SyscallTracepoints) => {
                "IPVS change request (syscalls:sys_exit_sendto/sys_exit_sendmsg, IPVS_CMD_NEW/SET/DEL_SERVICE|DEST, IPVS_CMD_FLUSH; and syscalls:sys_exit_setsockopt, IP_VS_SO_SET_*); the named virtual server re-read"
            }
            None => "IPVS re-read every 100 ms (IPVS sends no notifications)",
        });
    }
    triggers
}

/// The `dataplane_mode` line: the first detected mode is the one shown as `mode`.
fn mode_line(
    node: &NodeName,
    modes: &[Mode],
    planes: &[Box<dyn Plane>],
    triggers: &[&'static str],
) -> Observation {
    let mut o = Observation::new(Kind::DataplaneMode, Timestamp::now(), node.clone());
    let d = o.details.dataplane_mut();
    d.mode = Some(modes.first().map_or("none", |m| m.as_str()).to_owned());
    d.modes = Some(modes.iter().map(|m| m.as_str().to_owned()).collect());
    d.routes = Some(planes.iter().map(|p| p.routes().len()).sum::<usize>() as u64);
    d.triggers = Some(triggers.iter().map(|t| (*t).to_owned()).collect());
    o
}

/// kube-proxy's mode(s) on this node, in the planes' order (nf_tables, then x_tables, then
/// IPVS), each once.
fn detect(planes: &[Box<dyn Plane>]) -> Vec<Mode> {
    let mut modes: Vec<Mode> = Vec::new();
    for mode in planes.iter().filter_map(|p| p.kube_proxy_mode()) {
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    modes
}

/// Every route of every dataplane.
fn all_routes(planes: &[Box<dyn Plane>]) -> impl Iterator<Item = &super::model::Route> {
    planes
        .iter()
        .flat_map(|p| p.routes().iter().map(|(route, _)| route))
}

struct Reader {
    out: Out,
    /// Every dataplane, in the order their changes are reported.
    planes: Vec<Box<dyn Plane>>,
    /// The modes last reported; a new `dataplane_mode` line is sent when kube-proxy's tables
    /// appear or go (kube-proxy started after the agent, or switched modes).
    modes: Vec<Mode>,
    trigger_names: Vec<&'static str>,
    watched: Watched,
    frontends: Frontends,
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
        let mut changed = false;
        for plane in &mut self.planes {
            match plane.apply(batch, &self.out) {
                Some(c) => changed |= c,
                None => return false,
            }
        }
        if changed {
            frontends::publish(&self.watched, &self.frontends, || all_routes(&self.planes));
        }
        let modes = detect(&self.planes);
        if modes != self.modes {
            self.modes = modes;
            let line = mode_line(
                &self.out.node,
                &self.modes,
                &self.planes,
                &self.trigger_names,
            );
            if !self.out.tx.send(line) {
                return false;
            }
        }
        true
    }
}
