//! `cargo xtask bench`: every benchmark, as root (the kernel ones load eBPF programs). Results
//! are printed; BENCHMARKS.md records them with date and machine. Benchmarks measure, they do
//! not assert: pass/fail lives in the tests. With `--kubeconfig`, run on a cluster's node, it
//! ends with kube-proxy's own network-programming view beside the agents' stamps (the e2e run
//! with `--kube-proxy-metrics`, kube_proxy_view.rs).

use std::path::PathBuf;

use anyhow::bail;

use crate::{bench_kernel, cmd, e2e, setup};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A cluster whose node this is: also compare kube-proxy's network_programming_duration
    /// with the agents' stamps of one rollout (installs the agents and the e2e samples).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// How the image gets to the nodes (with --kubeconfig; see `cargo xtask e2e --help`).
    #[arg(long, value_enum, default_value_t = e2e::Load::Ctr)]
    pub load: e2e::Load,

    /// Use this static kubectl-zdt binary instead of building one (with --kubeconfig).
    #[arg(long, value_name = "FILE")]
    pub binary: Option<PathBuf>,

    /// kube-proxy's metrics address on this node (with --kubeconfig).
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:10249/metrics"
    )]
    pub kube_proxy_metrics: String,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the kernel benchmarks load eBPF programs: run `sudo ./x bench`");
    }
    setup::run_all(setup::Purpose::Run)?;
    bench_kernel::prepare()?;
    crate::bench_user::run()?;
    if !crate::bench_user::only() {
        cmd::run(cmd::cargo().args(["bench", "--package", "kubectl-zdt"]))?;
    }
    let Some(kubeconfig) = &args.kubeconfig else {
        eprintln!(
            "xtask bench: kube-proxy's network_programming_duration beside the agents' stamps needs a cluster: \
             not run (`--kubeconfig FILE` on one of its nodes)"
        );
        return Ok(());
    };
    e2e::run(&e2e::E2eArgs {
        kubeconfig: kubeconfig.clone(),
        context: None,
        load: args.load,
        kind_name: "kind".to_owned(),
        registry_ref: None,
        rps: 50,
        binary: args.binary.clone(),
        keep: false,
        kube_proxy_metrics: Some(args.kube_proxy_metrics.clone()),
    })
}
