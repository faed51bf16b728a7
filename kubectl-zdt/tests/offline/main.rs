//! The integration tests that need nothing but this machine's user space: no root, no kernel
//! feature, no network beyond loopback. One binary (a module per subject) so the library and its
//! dependencies are linked once, not once per file. Tests of one module run alone with
//! `cargo test -p kubectl-zdt --test offline -- journal::` (a filter on the module path).

#[path = "../support/mod.rs"]
mod support;

mod agent_watch;
mod analyze_cli;
mod build_quiet;
mod cli_args;
mod cluster;
mod correlate_both_ends;
mod correlate_properties;
mod correlate_scenarios;
mod correlate_windows;
mod decoder_fuzz;
mod history;
mod html_render;
mod ipvs_recorded;
mod journal;
mod journal_damage;
mod journal_fuzz;
mod manifests;
mod metrics;
mod real_cluster;
mod real_cluster_marks;
mod real_rollouts;
mod recommend;
mod recommend_cluster;
mod repo_references;
mod trace;
