//! The node agent: kernel probes → decoded observations → a sink (stdout JSON lines when
//! standalone).
//!
//! - `preflight`: the checks that turn a missing privilege or kernel feature into one clear line;
//! - `loader`: owns the `aya::Ebpf` object, attaches the programs, hands out typed map handles;
//! - `clock`: monotonic → wall-clock conversion with a stated uncertainty;
//! - `decode`: wire `Event` → `Observation` (pure);
//! - `stream`: drains the ring buffer, reconciles exact counters, reports loss.

pub mod clock;
pub mod decode;
pub mod loader;
pub mod preflight;
pub mod stream;

use std::{
    io::{BufWriter, Write as _},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
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

    /// Do not watch kube-proxy's dataplane (by default every change of a Service's backends in
    /// this node's iptables/nftables rules is reported as dataplane_added/dataplane_removed).
    #[arg(long)]
    pub no_dataplane: bool,
}

/// What the agent needs to start, independent of how it was invoked.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: NodeName,
    pub watch: Vec<IpNet>,
    pub wakeup_every: u64,
    /// How often the ring buffer is drained when no wake-up came.
    pub poll_interval: Duration,
    /// Watch kube-proxy's dataplane and conntrack (see `crate::dataplane`).
    pub dataplane: bool,
}

impl AgentConfig {
    pub fn new(node: NodeName, watch: Vec<IpNet>) -> Self {
        Self {
            node,
            watch,
            wakeup_every: 64,
            poll_interval: Duration::from_millis(50),
            dataplane: true,
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
    if !args.standalone {
        bail!(
            "only standalone mode is available in this build; run `kubectl-zdt agent --standalone`"
        );
    }
    let mut config = AgentConfig::new(
        NodeName(args.node_name.unwrap_or_else(hostname)),
        args.watch_cidr,
    );
    config.wakeup_every = args.wakeup_every;
    config.dataplane = !args.no_dataplane;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(run_standalone(config))?;
    Ok(ExitCode::SUCCESS)
}

/// Streams observations as JSON lines on stdout until SIGINT/SIGTERM, then drains what the
/// kernel still holds and exits.
async fn run_standalone(config: AgentConfig) -> anyhow::Result<()> {
    let agent = Agent::start(&config)?;
    let (mut tx, mut rx) = mpsc::channel::<Observation>(4096);
    if config.dataplane {
        tx = crate::dataplane::watcher::start_after_first_line(&config.node, tx)
            .context("failed to start the dataplane watcher (disable it with --no-dataplane)")?;
    }
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
