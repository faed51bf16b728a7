//! `kubectl-zdt`: the kubectl plugin and, as `kubectl-zdt agent`, the node agent.

use std::process::ExitCode;

use clap::Parser as _;
use kubectl_zdt::cli::{Cli, kubectl_order, run};

fn main() -> ExitCode {
    let cli = Cli::parse_from(kubectl_order(std::env::args_os().collect()));
    kubectl_zdt::logging::init(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(err) if kubectl_zdt::logging::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kubectl-zdt: {}", kubectl_zdt::logging::one_line(&err));
            ExitCode::FAILURE
        }
    }
}
