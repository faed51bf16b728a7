//! The agent's composition root: what both modes (standalone and cluster) start, in one order,
//! and the guards that stop the background tasks when the agent stops.
//!
//! Order: the journal on disk (and its ticker) → the metrics server (mode-specific) → the
//! probes (`Agent::start`) → the first line (`hello`) → the dataplane watcher → the kernel
//! reader task; the mode then consumes the stream (`standalone`: stdout; `daemonset`: attribute,
//! journal, serve).

use std::{future::Future, pin::Pin, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use super::{Agent, AgentArgs, AgentConfig, args::RunMode, daemonset, serve, standalone};
use crate::{
    dataplane::watcher::Watcher, journal::Shared, observation::Observation, process::termination,
};

/// A background task that is aborted when its guard is dropped (on every way out of a mode,
/// errors included).
pub type TaskGuard = AbortOnDropHandle<()>;

/// Spawns `task`, held by the returned guard.
pub fn guard(task: impl Future<Output = ()> + Send + 'static) -> TaskGuard {
    AbortOnDropHandle::new(tokio::spawn(task))
}

pub fn main(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let (config, metrics, mode) = args.into_config();
    if let Some(j) = &config.journal {
        // Before the probes attach: a bad flag is one line, at once.
        j.check()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    match mode {
        RunMode::Standalone => runtime.block_on(standalone::run(config, metrics))?,
        RunMode::Cluster(listen) => runtime.block_on(daemonset::run(config, listen, metrics))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// What resolves when the agent is asked to stop (SIGINT, SIGTERM).
pub(super) type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The kernel side, started the same way in both modes.
pub(super) struct Kernel<T> {
    /// Loaded, announced, not yet reading: `Agent::run` is the mode's to spawn.
    pub agent: Agent,
    pub tx: mpsc::Sender<Observation>,
    pub rx: mpsc::Receiver<Observation>,
    /// Two stops, installed before the first line: whoever reads it may stop the agent at once.
    pub stops: [Stop; 2],
    /// What `on_loaded` returned.
    pub loaded: T,
    /// The dataplane watcher (unless `--no-dataplane`), held while the agent runs.
    pub dataplane: Option<Watcher>,
}

/// Loads the probes, runs `on_loaded` on them, announces the agent on a new stream, starts the
/// dataplane watcher and gives the memory of the start-up back.
pub(super) async fn start_kernel<T>(
    config: &AgentConfig,
    on_loaded: impl FnOnce(&mut Agent) -> anyhow::Result<T>,
) -> anyhow::Result<Kernel<T>> {
    let mut agent = Agent::start(config)?;
    let loaded = on_loaded(&mut agent)?;
    let (tx, rx) = mpsc::channel::<Observation>(4096);
    let stops: [Stop; 2] = [Box::pin(termination()), Box::pin(termination())];
    agent.announce(&tx).await;
    // The node's kube-proxy dataplane (hostNetwork in cluster mode: this is the node's
    // namespace): when each backend stops being routed, and which pod a client's error toward
    // a Service reached.
    let dataplane = if config.dataplane {
        Some(agent.start_dataplane(&config.node, &tx)?)
    } else {
        None
    };
    release_freed_memory();
    Ok(Kernel {
        agent,
        tx,
        rx,
        stops,
        loaded,
        dataplane,
    })
}

/// The disk journal (`--journal-dir`), kept up to date by its ticker while held.
pub(super) struct DiskJournal {
    pub shared: Arc<Shared>,
    ticker: TaskGuard,
}

impl DiskJournal {
    /// Opens the journal when `--journal-dir` was given and starts its ticker.
    pub fn open(config: &AgentConfig) -> anyhow::Result<Option<Self>> {
        Ok(open_journal(config)?.map(|shared| Self {
            ticker: guard(tick_journal(shared.clone())),
            shared,
        }))
    }

    /// Stops the ticker and closes the journal.
    pub fn close(self) {
        drop(self.ticker);
        self.shared.close();
    }
}

/// Gives the memory freed since start-up back to the kernel. Loading the probes parses the
/// kernel's BTF (several MB, dropped once the programs are loaded) and the dataplane watcher's
/// first read of kube-proxy's tables allocates a lot for a moment; glibc's allocator keeps what
/// was freed inside the process (11.6 MB of the idle agent's 33.7 MB RSS, measured with
/// `GLIBC_TUNABLES` trimming on). musl's allocator, the image's, hands it back by itself.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Binds `--metrics-listen` and serves `/metrics` there; the returned task also records settled
/// pods every few seconds, so the histograms move without a scrape.
pub async fn serve_metrics(
    listen: std::net::SocketAddr,
    gauges: Arc<serve::Gauges>,
) -> anyhow::Result<TaskGuard> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--metrics-listen {listen}: failed to listen (port in use?)"))?;
    Ok(guard(async move {
        tokio::join!(
            serve::serve_metrics(listener, gauges.clone()),
            keep_settling(gauges)
        );
    }))
}

/// Records the pods whose timelines settled, every few seconds, so the histograms move
/// without a scrape.
pub async fn keep_settling(gauges: Arc<serve::Gauges>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        gauges.metrics.settle(jiff::Timestamp::now());
    }
}

/// Opens the disk journal when `--journal-dir` was given (recovering a torn last write).
pub fn open_journal(config: &AgentConfig) -> anyhow::Result<Option<Arc<Shared>>> {
    let Some(j) = &config.journal else {
        return Ok(None);
    };
    let journal = crate::journal::Journal::open(j.clone()).map_err(|e| match e {
        crate::journal::Error::Io { .. } => anyhow::Error::new(e).context(format!(
            "failed to open the journal in {} (check --journal-dir is a writable directory)",
            j.dir.display()
        )),
        // These name the directory and the fix already.
        e => anyhow::Error::new(e),
    })?;
    Ok(Some(Arc::new(Shared::new(journal))))
}

/// Flushes, folds and enforces the journal's limits four times a second.
pub async fn tick_journal(disk: Arc<Shared>) {
    let mut every = tokio::time::interval(Duration::from_millis(250));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let d = disk.clone();
        if tokio::task::spawn_blocking(move || d.tick()).await.is_err() {
            return;
        }
    }
}
