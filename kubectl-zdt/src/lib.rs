//! kubectl-zdt measures the race between a terminating pod and kube-proxy on every node.
//!
//! Data flows through the modules in this order: `agent` (kernel probes → observations),
//! `observation` (the wire contract), then the CLI commands that collect and report.

pub mod agent;
pub mod analyze;
pub mod cli;
pub mod cluster;
pub mod complete;
pub mod correlate;
pub mod dataplane;
pub mod demo;
pub mod history;
pub mod journal;
pub mod kube_version;
pub mod logging;
pub mod netns;
pub mod observation;
pub mod recommend;
pub mod report;
pub mod sample;
pub mod shutdown;
pub mod testbed;
pub mod traffic;
