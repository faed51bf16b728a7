//! `kubectl-zdt agent`'s command line, turned into what the agent needs to start.

use std::time::Duration;

use clap::Args;
use ipnet::IpNet;

use super::{config::AgentConfig, metrics::MetricsConfig};
use crate::{netns::netns_inode, observation::NodeName};

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

    /// Where the iptables-legacy and IPVS triggers hook `setsockopt`, `sendto` and `sendmsg`:
    /// auto (the kernel functions `__sys_setsockopt`, `__sys_sendto`, `__sys_sendmsg` through
    /// fentry/fexit, or the syscalls' tracepoints where the kernel refuses function tracing,
    /// with a warning), fentry (fail where refused) or tracepoint (every syscall on the node
    /// then takes the kernel's slower traced path).
    #[arg(long, value_enum, value_name = "HOOK", default_value = "auto")]
    pub trigger_hooks: crate::kernel::loader::TriggerHooks,

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

/// How the agent was asked to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// `--standalone`: JSON lines on stdout.
    Standalone,
    /// The DaemonSet: serve on this loopback address.
    Cluster(std::net::SocketAddr),
}

impl AgentArgs {
    /// What the agent needs to start, its metrics, and how it runs.
    pub fn into_config(self) -> (AgentConfig, MetricsConfig, RunMode) {
        let mut config = AgentConfig::new(
            NodeName(self.node_name.unwrap_or_else(hostname)),
            self.watch_cidr,
        );
        config.wakeup_every = self.wakeup_every;
        config.ringbuf_bytes = self.ringbuf_bytes;
        config.without_newer_tracepoint_fields = self.without_newer_tracepoint_fields;
        config.trigger_hooks = self.trigger_hooks;
        config.watch_netns = self.watch_netns;
        config.dataplane = !self.no_dataplane;
        config.journal = self.journal_dir.map(|dir| {
            let mut j = crate::journal::Config::new(dir);
            j.max_bytes = self.journal_max_bytes;
            j.max_age = self.journal_max_age;
            j
        });
        let metrics = MetricsConfig {
            listen: self.metrics_listen,
            settle: Duration::from_millis(self.metrics_settle_ms),
        };
        let mode = if self.standalone {
            RunMode::Standalone
        } else {
            RunMode::Cluster(self.listen)
        };
        (config, metrics, mode)
    }
}

fn parse_ringbuf_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two >= 4096"));
    }
    Ok(n)
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
