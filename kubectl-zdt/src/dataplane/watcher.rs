//! The event-driven loop: a commit arrives → apply its notifications to the mirrors of the
//! tables it touched → routes → diff → emit.
//!
//! Two threads: the monitor blocks in `recv` on the nf_tables netlink group (no CPU between
//! changes) and stamps each commit as it arrives; the reader applies and diffs. Commits that
//! queue up while the reader works are applied together and stamped with their window (see
//! `emit`). Each table is read in full only at start, and again if notifications were lost.

use std::{
    sync::{Arc, RwLock, mpsc as std_mpsc},
    thread,
    time::Duration,
};

use anyhow::Context as _;
use jiff::Timestamp;
use tokio::sync::mpsc;

use super::{
    emit::{self, Stamp},
    flows,
    mirror::TableMirror,
    model::{Backend, Backends},
    nf_monitor::{Commit, Monitor},
    nl_dump,
    source::{Family, Mode, NF_TABLES_SOURCES, Source},
};
use crate::observation::{Kind, NodeName, Observation};

/// The backends any dataplane of this node routes to now; read by the conntrack watcher to
/// filter flows.
pub type Watched = Arc<RwLock<std::collections::HashSet<Backend>>>;

/// The Service frontends (ClusterIP:port, …) this node's dataplane routes, for telling a
/// client's error toward a Service from one toward a pod.
pub type Frontends = Arc<RwLock<std::collections::HashSet<std::net::SocketAddr>>>;

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

/// How often `flow_new` lines are flushed per (frontend, backend).
pub const FLOW_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Starts everything the agent reports about the dataplane in the calling thread's network
/// namespace: the dataplane watcher and the conntrack flow listener.
pub fn start(node: &NodeName, tx: &mpsc::Sender<Observation>) -> anyhow::Result<Watcher> {
    let sink = Sink::new(tx);
    let watcher = spawn(node.clone(), sink.clone())?;
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
}

/// One nf_tables-based dataplane: its mirror and the routes it held at the last commit.
struct Plane {
    source: Source,
    mirror: TableMirror,
    routes: Backends,
}

/// Starts watching the dataplanes of the calling thread's network namespace: reads each
/// nf_tables table kube-proxy may use over netlink, detects the mode, then emits
/// `dataplane_added` / `dataplane_removed` into `tx`. The first observation is `dataplane_mode`
/// with the detected modes and route counts.
pub fn spawn(node: NodeName, tx: Sink) -> anyhow::Result<Watcher> {
    // Subscribe before the first read, so no commit falls between the two.
    let mut monitor = Monitor::open()
        .context("failed to subscribe to nf_tables notifications (NFNLGRP_NFTABLES); the agent needs CAP_NET_ADMIN")?;
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
    let modes = detect(&planes)?;
    let watched = Watched::default();
    publish(&watched, &planes);
    let frontends = Frontends::default();
    publish_frontends(&frontends, &planes);
    let start = mode_line(&node, &modes, &planes);
    if modes
        .iter()
        .any(|m| matches!(m, Mode::IptablesLegacy | Mode::Ipvs))
    {
        tracing::warn!(
            "kube-proxy's rules are (also) in {modes:?}; this agent watches only iptables-nft and nftables: changes there are not reported"
        );
    }

    let (commits_tx, commits_rx) = std_mpsc::channel::<Commit>();
    thread::Builder::new()
        .name("zdt-nf-monitor".into())
        .spawn(move || {
            loop {
                match monitor.next_commit() {
                    Ok(commit) => {
                        if commits_tx.send(commit).is_err() {
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
                reader.run(&commits_rx);
            }
        })
        .context("failed to start the dataplane reader thread")?;
    Ok(Watcher {
        modes,
        watched,
        frontends,
        dnat: flows::Dnat::default(),
    })
}

/// The `dataplane_mode` line: the first detected mode is the one shown as `mode`.
fn mode_line(node: &NodeName, modes: &[Mode], planes: &[Plane]) -> Observation {
    Observation::new(Kind::DataplaneMode, Timestamp::now(), node.clone())
        .with_extra("mode", modes.first().map_or("none", |m| m.as_str()))
        .with_extra(
            "modes",
            modes.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        )
        .with_extra(
            "routes",
            planes.iter().map(|p| p.routes.len()).sum::<usize>(),
        )
        .with_extra("triggers", vec!["nf_tables netlink (NFNLGRP_NFTABLES)"])
}

/// The nf_tables-based modes whose tables hold kube-proxy's dispatch now.
fn nf_modes(planes: &[Plane]) -> Vec<Mode> {
    let mut modes: Vec<Mode> = Vec::new();
    for p in planes.iter().filter(|p| p.mirror.is_kube_proxy()) {
        if !modes.contains(&p.source.mode) {
            modes.push(p.source.mode);
        }
    }
    modes
}

/// kube-proxy's mode(s) on this node: nf_tables tables holding its dispatch, then the modes
/// this agent can only detect.
fn detect(planes: &[Plane]) -> anyhow::Result<Vec<Mode>> {
    let mut modes = nf_modes(planes);
    for mode in [Mode::IptablesLegacy, Mode::Ipvs] {
        for family in [Family::V4, Family::V6] {
            if (Source { mode, family })
                .present()
                .with_context(|| format!("failed to check for kube-proxy's {mode} rules"))?
            {
                modes.push(mode);
                break;
            }
        }
    }
    Ok(modes)
}

struct Reader {
    node: NodeName,
    planes: Vec<Plane>,
    /// The modes last reported; a new `dataplane_mode` line is sent when kube-proxy's tables
    /// appear or go (kube-proxy started after the agent, or switched modes).
    modes: Vec<Mode>,
    watched: Watched,
    frontends: Frontends,
    tx: Sink,
}

impl Reader {
    fn run(mut self, commits: &std_mpsc::Receiver<Commit>) {
        while let Ok(first) = commits.recv() {
            // Commits that queued up while the previous one was processed are applied together.
            let batch: Vec<Commit> = std::iter::once(first).chain(commits.try_iter()).collect();
            if !self.apply(&batch) {
                return;
            }
        }
    }

    /// Applies the batch to every mirror it touched and reports the route changes; false once
    /// nobody listens any more.
    fn apply(&mut self, batch: &[Commit]) -> bool {
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
                    return false;
                }
            }
        }
        if changed {
            publish(&self.watched, &self.planes);
            publish_frontends(&self.frontends, &self.planes);
        }
        let mut modes = nf_modes(&self.planes);
        modes.extend(
            self.modes
                .iter()
                .filter(|m| matches!(m, Mode::IptablesLegacy | Mode::Ipvs)),
        );
        if modes != self.modes {
            self.modes = modes;
            if !self
                .tx
                .send(mode_line(&self.node, &self.modes, &self.planes))
            {
                return false;
            }
        }
        true
    }
}

fn publish(watched: &Watched, planes: &[Plane]) {
    let set = planes
        .iter()
        .flat_map(|p| p.routes.iter().map(|(r, _)| r.backend))
        .collect();
    if let Ok(mut w) = watched.write() {
        *w = set;
    }
}

fn publish_frontends(frontends: &Frontends, planes: &[Plane]) {
    let set = planes
        .iter()
        .flat_map(|p| p.routes.iter().map(|(r, _)| r.service.0))
        .collect();
    if let Ok(mut f) = frontends.write() {
        *f = set;
    }
}
