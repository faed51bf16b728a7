//! What the agent needs to start, independent of how it was invoked.

use std::time::Duration;

use ipnet::IpNet;

use super::args::WatchedNetns;
use crate::observation::NodeName;

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
    /// Where the dataplane triggers hook their syscalls.
    pub trigger_hooks: crate::kernel::loader::TriggerHooks,
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
            trigger_hooks: crate::kernel::loader::TriggerHooks::Auto,
        }
    }
}
