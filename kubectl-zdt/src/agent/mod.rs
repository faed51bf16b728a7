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
//! reached through port-forward).

pub mod api_watch;
pub mod clock;
pub mod cluster;
pub mod decode;
pub mod filter;
pub mod journal;
pub mod loader;
pub mod pods;
pub mod preflight;
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

    /// Node name written on every observation [default: the hostname].
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Wake the reader once every N kernel events (batched wake-ups; the reader also polls
    /// every 50 ms).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub wakeup_every: u64,
}

/// What the agent needs to start, independent of how it was invoked.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: NodeName,
    pub watch: Vec<IpNet>,
    /// Report only watched addresses. Standalone: on when `watch` is non-empty. Cluster mode:
    /// always on, starting empty; pod addresses are added at run time.
    pub filter: bool,
    pub wakeup_every: u64,
    /// How often the ring buffer is drained when no wake-up came.
    pub poll_interval: Duration,
}

impl AgentConfig {
    pub fn new(node: NodeName, watch: Vec<IpNet>) -> Self {
        Self {
            node,
            filter: !watch.is_empty(),
            watch,
            wakeup_every: 64,
            poll_interval: Duration::from_millis(50),
        }
    }
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    if args.standalone {
        runtime.block_on(run_standalone(config))?;
    } else {
        runtime.block_on(cluster::run(config, args.listen))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Streams observations as JSON lines on stdout until SIGINT/SIGTERM, then drains what the
/// kernel still holds and exits.
async fn run_standalone(config: AgentConfig) -> anyhow::Result<()> {
    let agent = Agent::start(&config)?;
    let (tx, mut rx) = mpsc::channel::<Observation>(4096);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail in a fresh runtime");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    };
    let producer = tokio::spawn(agent.run(tx, shutdown));
    let writer = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let stdout = std::io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        while let Some(obs) = rx.blocking_recv() {
            writeln!(out, "{}", obs.to_json_line()).context("failed to write to stdout")?;
            if rx.is_empty() {
                out.flush().context("failed to write to stdout")?;
            }
        }
        out.flush().context("failed to write to stdout")
    });
    let produced = producer.await.context("agent task failed")?;
    writer.await.context("writer task failed")??;
    produced
}
