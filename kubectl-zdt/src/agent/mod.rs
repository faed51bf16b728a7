//! The node agent: kernel probes → decoded observations → a sink (stdout JSON lines when
//! standalone).
//!
//! - `args`, `config`: the command line and what the agent needs to start;
//! - `run`: the composition root both modes share (`main`, the start order, task guards);
//!   `standalone` and `daemonset` (cluster mode) consume the stream;
//! - `stream`: drains the ring buffer (programs loaded, read and decoded by `crate::kernel`),
//!   reconciles exact counters, reports loss;
//!
//! Cluster mode (`daemonset`) adds: `api_watch` (kube-runtime watches of this node's pods,
//! EndpointSlices, Services, converted by `convert::kube_events`) over `pods` (address → pod,
//! with tombstones); `backlog` (numbered, resumable, in memory) and `serve` (the 127.0.0.1
//! HTTP endpoint reached through port-forward). Both modes can feed `metrics` (Prometheus, docs/metrics.md).

pub mod api_watch;
pub mod args;
pub mod backlog;
pub mod capacity;
pub mod config;
pub mod conntrack;
pub mod daemonset;
pub mod listeners;
pub mod metrics;
pub mod netns_gone;
pub mod own_clients;
pub mod pod_netns;
pub mod pods;
pub mod probes;
pub mod run;
pub mod serve;
mod standalone;
pub mod stream;

pub use args::{AgentArgs, WatchedNetns, hostname};
pub use config::AgentConfig;
pub use run::{
    TaskGuard, keep_settling, main, open_journal, release_freed_memory, serve_metrics, tick_journal,
};
pub use stream::Agent;

// Where the agent and the dataplane watcher both find a namespace's inode (kept here too:
// callers name it `agent::netns_inode`).
pub use crate::netns::netns_inode;
