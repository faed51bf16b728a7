//! The node agent: kernel probes → decoded observations → a sink (stdout JSON lines when
//! standalone).
//!
//! - `preflight`: the checks that turn a missing privilege or kernel feature into one clear line;
//! - `loader`: owns the `aya::Ebpf` object, attaches the programs, hands out typed map handles;
//! - `clock`: monotonic → wall-clock conversion with a stated uncertainty;
//! - `decode`: wire `Event` → `Observation` (pure);
//! - `stream`: drains the ring buffer, reconciles exact counters, reports loss;
//! - `filter`: run-time updates of the kernel watch filter;
//!
//! Cluster mode (`cluster`) adds: `api_watch` (kube-runtime watches of this node's pods,
//! EndpointSlices, Services, converted by `correlate::k8s_watch`) over `pods` (address → pod,
//! with tombstones); `journal` (numbered, resumable) and `serve` (the 127.0.0.1 HTTP endpoint
//! reached through port-forward). Both modes can feed `metrics` (Prometheus, docs/metrics.md).

pub mod api_watch;
pub mod btf;
pub mod clock;
pub mod cluster;
pub mod conntrack;
pub mod decode;
pub mod filter;
pub mod journal;
pub mod listeners;
pub mod loader;
pub mod metrics;
pub mod netns_gone;
pub mod own_clients;
pub mod pod_netns;
pub mod pods;
pub mod preflight;
pub mod probes;
pub mod program_loss;
pub mod serve;
pub mod stream;

use std::{
    io::{BufWriter, Write as _},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use ipnet::IpNet;
use tokio::sync::mpsc;

pub use stream::Agent;

use crate::observation::{NodeName, Observation};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Run without Kubernetes: print observations as JSON lines on stdout.
    #[arg(long)]
    pub standalone: bool,

    /// Cluster mode: serve status and the observation stream on this loopback address (the
    /// CLI reaches it through the API server's port-forward).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:9476",
        conflicts_with = "standalone"
    )]
    pub listen: std::net::SocketAddr,

    /// Only report traffic of these addresses (repeatable; e.g. 10.244.0.0/16, fd00::/64).
    /// Filtered in the kernel: other traffic costs one map lookup and is never copied out.
    #[arg(long = "watch-cidr", value_name = "CIDR")]
    pub watch_cidr: Vec<IpNet>,

    /// Also report listeners, signals, execs and exits of the processes in this network
    /// namespace (repeatable; e.g. /run/netns/NAME or /proc/PID/ns/net).
    #[arg(long = "watch-netns", value_name = "PATH", value_parser = parse_watch_netns)]
    pub watch_netns: Vec<WatchedNetns>,

    /// Node name written on every observation [default: the hostname].
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Size of the kernel→agent ring buffer in bytes (a power of two, at least 4096). When it
    /// overflows, counts stay exact and the loss is reported.
    #[arg(long, default_value_t = zdt_common::maps::EVENTS_BYTES, value_parser = parse_ringbuf_bytes)]
    pub ringbuf_bytes: u32,

    /// Wake the reader when N kernel events wait unread in the ring buffer (at most half of
    /// it; 1: on every event). The reader also drains it every 50 ms.
    #[arg(long, default_value_t = zdt_common::maps::WAKEUP_EVERY, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub wakeup_every: u64,

    /// Read tracepoint records as on a kernel without their newer optional fields (Linux 6.12:
    /// no `err` in tcp_retransmit_skb, no `group_dead` in sched_process_exit), so that those
    /// code paths are tested on a newer kernel.
    #[arg(long, hide = true)]
    pub without_newer_tracepoint_fields: bool,

    /// Also serve the Prometheus metrics (`GET /metrics`, nothing else) on this address, e.g.
    /// 0.0.0.0:9464 for a PodMonitor. Off by default: in cluster mode /metrics is on the
    /// loopback endpoint, reached through port-forward. With hostNetwork an address other than
    /// the loopback is reachable from the node's network (docs/security.md).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// A terminated pod's figures enter the histograms once nothing new was observed about it
    /// for this long, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000, hide = true)]
    pub metrics_settle_ms: u64,

    /// Do not watch kube-proxy's dataplane (by default every change of a Service's backends in
    /// this node's iptables/nftables rules is reported as dataplane_added/dataplane_removed).
    #[arg(long)]
    pub no_dataplane: bool,

    /// Keep every observation in a crash-safe journal in this directory (a hostPath in the
    /// DaemonSet), queried by `kubectl zdt history`. Off unless given.
    #[arg(long, value_name = "DIR")]
    pub journal_dir: Option<std::path::PathBuf>,

    /// Bytes the journal may use on disk (oldest whole segments are deleted past it; half is
    /// reserved for termination, API and dataplane marks, so error storms cannot evict them).
    #[arg(long, value_name = "BYTES", default_value = "256Mi", value_parser = crate::journal::parse_bytes)]
    pub journal_max_bytes: u64,

    /// Age past which journal segments are deleted, e.g. 7d, 36h.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = crate::journal::parse_age)]
    pub journal_max_age: Duration,
}

/// A network namespace to watch: where it is named and the inode the kernel reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedNetns {
    pub path: std::path::PathBuf,
    pub inum: u32,
}

impl WatchedNetns {
    pub fn open(path: &std::path::Path) -> anyhow::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            inum: netns_inode(path)?,
        })
    }
}

/// What the agent needs to start, independent of how it was invoked.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: NodeName,
    pub watch: Vec<IpNet>,
    /// Report only watched addresses even when `watch` and `watch_netns` are empty (cluster
    /// mode: pod addresses are added at run time).
    pub filter: bool,
    /// Network namespaces whose processes and listeners are reported.
    pub watch_netns: Vec<WatchedNetns>,
    pub wakeup_every: u64,
    pub ringbuf_bytes: u32,
    /// How often the ring buffer is drained when no wake-up came.
    pub poll_interval: Duration,
    /// Watch kube-proxy's dataplane and conntrack (see `crate::dataplane`).
    pub dataplane: bool,
    /// Keep the disk journal (crate::journal) with this configuration.
    pub journal: Option<crate::journal::Config>,
    /// Ignore the optional tracepoint fields newer kernels have (tests of the 6.12 paths).
    pub without_newer_tracepoint_fields: bool,
}

impl AgentConfig {
    pub fn new(node: NodeName, watch: Vec<IpNet>) -> Self {
        Self {
            node,
            filter: false,
            watch,
            watch_netns: Vec::new(),
            wakeup_every: zdt_common::maps::WAKEUP_EVERY,
            ringbuf_bytes: zdt_common::maps::EVENTS_BYTES,
            poll_interval: Duration::from_millis(50),
            dataplane: true,
            journal: None,
            without_newer_tracepoint_fields: false,
        }
    }
}

fn parse_ringbuf_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two >= 4096"));
    }
    Ok(n)
}

/// The inode number identifying the network namespace at `path` (what the kernel reports).
/// Anything else at `path` (a regular file, a directory, another kind of namespace) is refused:
/// its inode would silently match nothing.
pub fn netns_inode(path: &std::path::Path) -> anyhow::Result<u32> {
    use std::os::{fd::AsRawFd as _, unix::fs::MetadataExt as _};
    const HINT: &str = "give /run/netns/NAME or /proc/PID/ns/net";
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::NotFound {
            "no such network namespace".to_owned()
        } else {
            format!("cannot open it: {e}")
        };
        anyhow::anyhow!("{shown}: {why} ({HINT})")
    })?;
    let on = nix::sys::statfs::fstatfs(&file)
        .with_context(|| format!("{shown}: cannot tell what it is"))?;
    if on.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        let what = if file.metadata().is_ok_and(|m| m.is_dir()) {
            "a directory"
        } else {
            "a file"
        };
        anyhow::bail!("{shown} is {what}, not a network namespace ({HINT})");
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor's namespace type.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        anyhow::bail!(
            "{shown} is {}, not a network namespace ({HINT})",
            namespace_kind(kind)
        );
    }
    let meta = file
        .metadata()
        .with_context(|| format!("{shown}: cannot read its inode"))?;
    u32::try_from(meta.ino()).with_context(|| format!("{shown}: inode does not fit 32 bits"))
}

/// What NS_GET_NSTYPE answered, in words.
fn namespace_kind(kind: i32) -> &'static str {
    match kind {
        libc::CLONE_NEWNS => "a mount namespace",
        libc::CLONE_NEWPID => "a PID namespace",
        libc::CLONE_NEWUTS => "a UTS namespace",
        libc::CLONE_NEWIPC => "an IPC namespace",
        libc::CLONE_NEWUSER => "a user namespace",
        libc::CLONE_NEWCGROUP => "a cgroup namespace",
        libc::CLONE_NEWTIME => "a time namespace",
        _ => "a namespace of another kind",
    }
}

/// `--watch-netns`: refused at parse time unless it names a network namespace.
fn parse_watch_netns(s: &str) -> Result<WatchedNetns, String> {
    WatchedNetns::open(std::path::Path::new(s)).map_err(|e| format!("{e:#}"))
}

/// The machine's hostname, used as the node name when standalone.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

pub fn main(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let mut config = AgentConfig::new(
        NodeName(args.node_name.unwrap_or_else(hostname)),
        args.watch_cidr,
    );
    config.wakeup_every = args.wakeup_every;
    config.ringbuf_bytes = args.ringbuf_bytes;
    config.without_newer_tracepoint_fields = args.without_newer_tracepoint_fields;
    config.watch_netns = args.watch_netns;
    config.dataplane = !args.no_dataplane;
    config.journal = args.journal_dir.map(|dir| {
        let mut j = crate::journal::Config::new(dir);
        j.max_bytes = args.journal_max_bytes;
        j.max_age = args.journal_max_age;
        j
    });
    if let Some(j) = &config.journal {
        // Before the probes attach: a bad flag is one line, at once.
        j.check()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let metrics = metrics::MetricsConfig {
        listen: args.metrics_listen,
        settle: Duration::from_millis(args.metrics_settle_ms),
    };
    if args.standalone {
        runtime.block_on(run_standalone(config, metrics))?;
    } else {
        runtime.block_on(cluster::run(config, args.listen, metrics))?;
    }
    Ok(ExitCode::SUCCESS)
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
    gauges: std::sync::Arc<serve::Gauges>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--metrics-listen {listen}: failed to listen (port in use?)"))?;
    Ok(tokio::spawn(async move {
        tokio::join!(
            serve::serve_metrics(listener, gauges.clone()),
            keep_settling(gauges)
        );
    }))
}

/// Records the pods whose timelines settled, every few seconds, so the histograms move
/// without a scrape.
pub async fn keep_settling(gauges: std::sync::Arc<serve::Gauges>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        gauges.metrics.settle(jiff::Timestamp::now());
    }
}

/// Streams observations as JSON lines on stdout until SIGINT/SIGTERM, then drains what the
/// kernel still holds and exits.
async fn run_standalone(
    config: AgentConfig,
    metrics: metrics::MetricsConfig,
) -> anyhow::Result<()> {
    let (gauges, metrics_server) = match metrics.listen {
        Some(listen) => {
            let gauges = std::sync::Arc::new(serve::Gauges {
                metrics: metrics::Metrics::new(metrics::Scope::Everything, metrics.settle),
                ..serve::Gauges::default()
            });
            let server = serve_metrics(listen, gauges.clone()).await?;
            (Some(gauges), Some(server))
        }
        None => (None, None),
    };
    let mut agent = Agent::start(&config)?;
    let (tx, mut rx) = mpsc::channel::<Observation>(4096);
    // Before the first line: whoever reads it may stop the agent at once.
    let shutdown = cluster::termination();
    agent.announce(&tx).await;
    if config.dataplane {
        agent.start_dataplane(&config.node, &tx)?;
    }
    release_freed_memory();
    let disk = open_journal(&config)?;
    if let (Some(g), Some(d)) = (&gauges, &disk) {
        g.journal_opened(d);
    }
    let ticker = disk.clone().map(|d| tokio::spawn(tick_journal(d)));
    let producer = tokio::spawn(agent.run(tx, shutdown));
    let journal = disk.clone();
    let writer = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let stdout = std::io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        while let Some(obs) = rx.blocking_recv() {
            let line = obs.to_json_line();
            if let Some(j) = &journal {
                j.append_line(&obs, &line);
            }
            if let Some(g) = &gauges {
                g.metrics.observe(&obs);
            }
            writeln!(out, "{line}").context("failed to write to stdout")?;
            if rx.is_empty() {
                out.flush().context("failed to write to stdout")?;
            }
        }
        out.flush().context("failed to write to stdout")
    });
    let produced = producer.await.context("agent task failed")?;
    writer.await.context("writer task failed")??;
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(d) = disk {
        d.close();
    }
    if let Some(server) = metrics_server {
        server.abort();
    }
    produced
}

/// Opens the disk journal when `--journal-dir` was given (recovering a torn last write).
pub fn open_journal(
    config: &AgentConfig,
) -> anyhow::Result<Option<std::sync::Arc<crate::journal::Shared>>> {
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
    Ok(Some(std::sync::Arc::new(crate::journal::Shared::new(
        journal,
    ))))
}

/// Flushes, folds and enforces the journal's limits four times a second.
pub async fn tick_journal(disk: std::sync::Arc<crate::journal::Shared>) {
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
