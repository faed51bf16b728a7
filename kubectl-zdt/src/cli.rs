//! Command-line interface. Flags follow kubectl's conventions where they overlap.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{agent, analyze, demo};

/// Measure the rollout race: how long after a pod stops listening every node still routes new
/// connections to it, what errors that caused, and the preStop delay that would have prevented
/// them.
#[derive(Debug, Parser)]
#[command(name = "kubectl-zdt", bin_name = "kubectl zdt", version, about, long_about = None)]
pub struct Cli {
    /// More diagnostics on stderr (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: load the eBPF probes and stream observations.
    Agent(agent::AgentArgs),
    /// Run a rollout race on this machine (network namespaces, no cluster) and show what the
    /// kernel saw, without and with a preStop delay. Needs root.
    Demo(demo::DemoArgs),
    /// The application the local testbed runs inside each pod (used by the demo and tests).
    #[command(hide = true)]
    TestbedApp(crate::testbed::app::AppArgs),
    /// Correlate observation streams (agent output, journal, captures) into the rollout report:
    /// per pod the gap, the errors by cause, a verdict, and the preStop that prevents them.
    Analyze(analyze::AnalyzeArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Agent(args) => agent::main(args),
        Command::Demo(args) => demo::main(args),
        Command::TestbedApp(args) => crate::testbed::app::main(args),
        Command::Analyze(args) => analyze::main(args),
    }
}
