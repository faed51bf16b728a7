//! The integration tests that need root and this kernel: eBPF programs loaded and attached,
//! network namespaces, nf_tables and x_tables rules, real traffic between namespaces. Every test
//! fails loudly without root (`support::require_root`), never skips. Run them one at a time
//! (`-- --test-threads=1`): the probes see every namespace, so two tests' traffic would mix.
//! `sudo cargo test -p kubectl-zdt --test kernel -- --test-threads=1 termination::` runs one
//! module's tests.

#[path = "../support/mod.rs"]
mod support;

mod cluster_node;
mod dataplane;
mod handler_errors;
mod ipvs_trigger;
mod metrics_agent;
mod probe_refused;
mod real_node;
mod termination;
mod whole_rollout;
