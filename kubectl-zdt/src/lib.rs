//! kubectl-zdt measures the race between a terminating pod and kube-proxy on every node.
//!
//! Layers, lowest first (docs/architecture.md draws them with the data flow):
//!
//! - the contract: `observation` (one JSON line per thing seen), with `kube_version`,
//!   `process`, `netns`, `logging`;
//! - the pure analysis core: `convert` (raw captures → observations), `correlate`
//!   (observations → per-pod verdicts), `report` (tables, charts, JSON);
//! - sources with I/O: `journal` (observations on disk), `dataplane` (kube-proxy's rules),
//!   `kernel` (the eBPF programs loaded, their events read and decoded);
//! - the node: `agent` (kernel events → observations, enriched, journaled, served);
//! - the commands: `history`, `analyze`, `cluster` (install, trace, status, history),
//!   `recommend`, `traffic`, `sample`, `testbed`, `demo`, all reached from `cli`.
//!
//! The one rule: a module uses only modules of its own or earlier items of this list, never a
//! later one, so no cycle can form; the analysis core names no kernel, cluster, runtime, file,
//! socket, process or clock. `architecture` holds the table and checks it on every test run.

pub mod agent;
pub mod analyze;
#[cfg(test)]
mod architecture;
pub mod cli;
pub mod cluster;
pub mod complete;
pub mod convert;
pub mod correlate;
pub mod dataplane;
pub mod demo;
pub mod history;
pub mod journal;
pub mod kernel;
pub mod kube_version;
pub mod logging;
pub mod netns;
pub mod observation;
pub mod process;
pub mod recommend;
pub mod report;
pub mod sample;
pub mod testbed;
pub mod traffic;
