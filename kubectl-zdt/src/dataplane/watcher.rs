//! The event-driven loop: a trigger arrives → read the touched dataplanes once → diff → emit.
//!
//! Two threads: the monitor blocks in `recv` on the nf_tables netlink group (no CPU between
//! changes) and stamps each commit as it arrives; the reader dumps and diffs. Commits that
//! arrive while a dump runs are read together by the next dump and stamped with their window
//! (see `emit`).

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
    flows,
    model::{Backend, Backends},
    nf_monitor::{Commit, Monitor},
    source::{self, Mode, NF_TABLES_SOURCES, Source},
};
use crate::observation::{Kind, NodeName, Observation};

/// The backends any dataplane of this node routes to now; read by the conntrack watcher to
/// filter flows.
pub type Watched = Arc<RwLock<std::collections::HashSet<Backend>>>;

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
    flows::spawn(node.clone(), watcher.watched.clone(), FLOW_REPORT_INTERVAL, sink).context(
        "failed to subscribe to conntrack events (NFNLGRP_CONNTRACK_NEW); the agent needs CAP_NET_ADMIN",
    )?;
    Ok(watcher)
}

/// Handle to the running watcher threads (they run until the observation stream closes).
pub struct Watcher {
    pub modes: Vec<Mode>,
    pub watched: Watched,
}

/// Starts watching the dataplanes of the calling thread's network namespace: detects the mode,
/// reads the initial state, then emits `dataplane_added` / `dataplane_removed` into `tx`. The
/// first observation is `dataplane_mode` with the detected modes and route counts.
pub fn spawn(node: NodeName, tx: Sink) -> anyhow::Result<Watcher> {
    // Subscribe before the first read, so no commit falls between the two.
    let mut monitor = Monitor::open()
        .context("failed to subscribe to nf_tables notifications (NFNLGRP_NFTABLES); the agent needs CAP_NET_ADMIN")?;
    let modes = source::detect().context("failed to detect kube-proxy's mode")?;
    let mut state = BTreeMap::new();
    for src in NF_TABLES_SOURCES {
        let routes = src
            .read()
            .with_context(|| format!("failed to read the {} dataplane", src.mode))?;
        state.insert(src, routes);
    }
    let watched = Watched::default();
    publish(&watched, &state);
    let mut start = Observation::new(Kind::DataplaneMode, Timestamp::now(), node.clone())
        .with_extra(
            "modes",
            modes.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        )
        .with_extra("routes", state.values().map(Backends::len).sum::<usize>())
        .with_extra("triggers", vec!["nf_tables netlink (NFNLGRP_NFTABLES)"]);
    if let Some(mode) = modes.first() {
        start = start.with_extra("mode", mode.as_str());
    } else {
        start = start.with_extra("mode", "none");
    }
    if !modes.is_empty()
        && modes
            .iter()
            .all(|m| !matches!(m, Mode::IptablesNft | Mode::Nftables))
    {
        tracing::warn!(
            "kube-proxy's rules are in {modes:?}, which this agent does not watch yet: no dataplane changes will be reported"
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
        state,
        watched: watched.clone(),
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
    Ok(Watcher { modes, watched })
}

struct Reader {
    node: NodeName,
    state: BTreeMap<Source, Backends>,
    watched: Watched,
    tx: Sink,
}

impl Reader {
    fn run(mut self, commits: &std_mpsc::Receiver<Commit>) {
        while let Ok(first) = commits.recv() {
            // Everything committed before this dump starts is in it.
            let batch: Vec<Commit> = std::iter::once(first).chain(commits.try_iter()).collect();
            if !self.read(&batch) {
                return;
            }
        }
    }

    /// Reads every source the batch touched; false once nobody listens any more.
    fn read(&mut self, batch: &[Commit]) -> bool {
        let touched: Vec<Source> = NF_TABLES_SOURCES
            .into_iter()
            .filter(|s| {
                s.nf_table()
                    .is_some_and(|t| batch.iter().any(|c| c.touches(t)))
            })
            .collect();
        let first = batch
            .iter()
            .map(|c| c.time)
            .min()
            .unwrap_or_else(Timestamp::now);
        let last = batch.iter().map(|c| c.time).max().unwrap_or(first);
        let mut changed = false;
        for src in touched {
            let next = match src.read() {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!("failed to read the {} dataplane: {e:#}", src.mode);
                    continue;
                }
            };
            let prev = self.state.entry(src).or_default();
            let change = prev.diff(&next);
            *prev = next;
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
            for obs in emit::observations(&self.node, src, &change, stamp) {
                if !self.tx.send(obs) {
                    return false;
                }
            }
        }
        if changed {
            publish(&self.watched, &self.state);
        }
        true
    }
}

fn publish(watched: &Watched, state: &BTreeMap<Source, Backends>) {
    let set = state
        .values()
        .flat_map(|b| b.iter().map(|(r, _)| r.backend))
        .collect();
    if let Ok(mut w) = watched.write() {
        *w = set;
    }
}
