//! Command-line interface. Flags follow kubectl's conventions where they overlap.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{
    agent, analyze,
    cluster::{self, connect::KubeArgs},
    demo, recommend, sample, traffic,
};

/// Measure the rollout race: how long after a pod stops listening every node still routes new
/// connections to it, what errors that caused, and the preStop delay that would have prevented
/// them.
#[derive(Debug, Parser)]
#[command(name = "kubectl-zdt", bin_name = "kubectl zdt", version, about, long_about = None)]
pub struct Cli {
    /// More diagnostics on stderr (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(flatten)]
    pub kube: KubeArgs,

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
    /// Install the node agents (server-side apply of the embedded manifests) and wait until
    /// every node's agent is ready.
    Install(cluster::install::InstallArgs),
    /// Remove everything `install` created.
    Uninstall(cluster::install::UninstallArgs),
    /// Per node: agent version, kernel, BTF, probes, loss counters, clock offset.
    Status(cluster::status::StatusArgs),
    /// Follow the next rollout of a workload (or start one with --restart) on every node, then
    /// print the report.
    Trace(cluster::trace::TraceArgs),
    /// Query the node journals: what happened on every node in a time window (--since 2h,
    /// --from/--to), the rollouts found in it, or with --report the correlation report of each.
    History(cluster::history::HistoryArgs),
    /// Print a shell completion script, e.g. `kubectl-zdt completion bash > /etc/bash_completion.d/kubectl-zdt`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Answers `kubectl_complete-zdt` (kubectl's plugin completion) for these words.
    #[command(name = "__complete", hide = true)]
    Complete {
        #[arg(num_args = 0.., trailing_var_arg = true, allow_hyphen_values = true)]
        words: Vec<String>,
    },
    /// The in-cluster request loop `trace --traffic` runs (one line per failed request).
    #[command(hide = true)]
    Traffic(traffic::TrafficArgs),
    /// The sample HTTP server the e2e harness deploys (exits or drains on SIGTERM).
    #[command(hide = true)]
    SampleApp(sample::SampleArgs),
    /// The application the local testbed runs inside each pod (used by the demo and tests).
    #[command(hide = true)]
    TestbedApp(crate::testbed::app::AppArgs),
    /// Correlate observation streams (agent output, journal, captures) into the rollout report:
    /// per pod the gap, the errors by cause, a verdict, and the preStop that prevents them.
    Analyze(analyze::AnalyzeArgs),
    /// Appends numbered lines to a journal until killed (the crash test's victim).
    #[command(hide = true)]
    JournalWriter(crate::journal::writer::WriterArgs),
    /// Per workload, from the history of its rollouts: the propagation-delay distribution, the
    /// preStop and terminationGracePeriodSeconds that cover it (margin stated), and whether the
    /// current settings are unsafe or waste time; `-o yaml` prints ready patches.
    Recommend(recommend::RecommendArgs),
}

/// `kubectl zdt -n prod trace deployment/web`: kubectl takes its flags before the verb too, so
/// `-n`/`--namespace`/`-A`/`--all-namespaces` written before the command are moved after it,
/// where the commands that use them take them (a command without them still refuses them).
pub fn kubectl_order(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let command = <Cli as clap::CommandFactory>::command();
    let takes_value = |flag: &str| {
        command.get_arguments().any(|a| {
            a.get_action().takes_values()
                && (flag.strip_prefix("--") == a.get_long()
                    || (flag.len() == 2
                        && flag.strip_prefix('-').and_then(|c| c.chars().next()) == a.get_short()))
        })
    };
    let mut hoisted = Vec::new();
    let mut rest = Vec::with_capacity(args.len());
    let mut words = args.into_iter();
    rest.extend(words.next()); // the program's name
    while let Some(word) = words.next() {
        let Some(w) = word.to_str().map(str::to_owned) else {
            rest.push(word);
            break;
        };
        match w.as_str() {
            "-n" | "--namespace" => {
                hoisted.push(word);
                hoisted.extend(words.next());
            }
            _ if w.starts_with("--namespace=") || (w.starts_with("-n") && w.len() > 2) => {
                hoisted.push(word);
            }
            "-A" | "--all-namespaces" => hoisted.push(word),
            _ if w.starts_with('-') => {
                let value_follows = !w.contains('=') && takes_value(&w);
                rest.push(word);
                if value_follows {
                    rest.extend(words.next());
                }
            }
            // The command: what was hoisted goes right after it.
            _ => {
                rest.push(word);
                break;
            }
        }
    }
    rest.extend(hoisted);
    rest.extend(words);
    rest
}

pub fn run(mut cli: Cli) -> anyhow::Result<ExitCode> {
    // A command's --timeout also bounds reaching the server.
    cli.kube.reach_within = match &cli.command {
        Command::Install(args) => Some(args.timeout),
        Command::Trace(args) => Some(args.timeout),
        _ => None,
    };
    // -n/-A belong to the commands that use them; the connection carries them.
    let (namespace, all) = match &cli.command {
        Command::Trace(args) => (args.namespace.namespace.clone(), false),
        Command::History(cluster::history::HistoryArgs { namespaces, .. })
        | Command::Recommend(recommend::RecommendArgs { namespaces, .. }) => {
            (namespaces.namespace.clone(), namespaces.all_namespaces)
        }
        _ => (None, false),
    };
    cli.kube.namespace = namespace;
    cli.kube.all_namespaces = all;
    match cli.command {
        Command::Agent(args) => agent::main(args),
        Command::Demo(args) => demo::main(args),
        Command::Install(args) => cluster::install::main(&cli.kube, &args),
        Command::Uninstall(args) => cluster::install::uninstall_main(&cli.kube, &args),
        Command::Status(args) => cluster::status::main(&cli.kube, &args),
        Command::Trace(args) => cluster::trace::main(&cli.kube, &args),
        Command::History(args) => cluster::history::main(&cli.kube, &args),
        Command::Traffic(args) => traffic::main(args),
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "kubectl-zdt", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Complete { words } => {
            let command = <Cli as clap::CommandFactory>::command();
            print!("{}", crate::complete::complete(command, &words));
            Ok(ExitCode::SUCCESS)
        }
        Command::SampleApp(args) => sample::main(args),
        Command::TestbedApp(args) => crate::testbed::app::main(args),
        Command::Analyze(args) => analyze::main(args),
        Command::JournalWriter(args) => crate::journal::writer::main(args),
        Command::Recommend(args) => recommend::main(&cli.kube, &args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(line: &str) -> String {
        let args = line.split(' ').map(std::ffi::OsString::from).collect();
        kubectl_order(args)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn namespace_flags_before_the_command_go_after_it_as_kubectl_takes_them() {
        assert_eq!(
            order("zdt -n prod trace deployment/web"),
            "zdt trace -n prod deployment/web"
        );
        assert_eq!(
            order("zdt --kubeconfig /k -v --namespace=prod --context c history --since 2h"),
            "zdt --kubeconfig /k -v --context c history --namespace=prod --since 2h"
        );
        assert_eq!(order("zdt -A recommend"), "zdt recommend -A");
        assert_eq!(order("zdt -nprod trace x"), "zdt trace -nprod x");
        // A value-taking flag's value is not the command; after the command nothing moves.
        assert_eq!(
            order("zdt --context trace -n a trace deployment/x -n b"),
            "zdt --context trace trace -n a deployment/x -n b"
        );
        assert_eq!(order("zdt status"), "zdt status");
        let parsed = Cli::try_parse_from(kubectl_order(
            "zdt -n prod trace deployment/web"
                .split(' ')
                .map(Into::into)
                .collect(),
        ))
        .unwrap();
        let Command::Trace(t) = parsed.command else {
            panic!("{parsed:?}")
        };
        assert_eq!(t.namespace.namespace.as_deref(), Some("prod"));
        // Still refused where it means nothing.
        assert!(
            Cli::try_parse_from(kubectl_order(
                "zdt -n prod status".split(' ').map(Into::into).collect()
            ))
            .is_err()
        );
    }
}
