//! `cargo xtask <command>` (or `./x <command>` on a fresh machine, which first installs the
//! pinned toolchain): setup, demo and test for kubectl-zdt.

mod bench;
mod bench_kernel;
mod bench_user;
mod cmd;
mod demo;
mod e2e;
mod image;
mod ipvs_vm;
mod kube_proxy_view;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "kubectl-zdt project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing: rust-src, bpf-linker for this toolchain's LLVM, Debian packages.
    Setup,
    /// Set up, build, and run the local rollout race demo (needs root).
    Demo,
    /// Set up, then run every check: fmt, clippy (userspace and eBPF), unit and root tests.
    Test,
    /// Build the agent image (static binary) as an OCI archive, without a container engine.
    Image(image::ImageArgs),
    /// On a real cluster: image, load, install, trace two sample rollouts, check, clean up.
    E2e(e2e::E2eArgs),
    /// Run every benchmark (kernel cost per event, agent overhead, correlation, dataplane).
    Bench(bench::BenchArgs),
    /// Check the IPVS reader, watcher and eBPF trigger against a real kernel's IPVS in a QEMU
    /// guest (root; fetches Debian's kernel and qemu; `test` runs it too).
    IpvsVm(ipvs_vm::IpvsVmArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::command(),
        Command::Demo => demo::run(),
        Command::Test => test::run(),
        Command::Image(args) => image::run(&args),
        Command::E2e(args) => e2e::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::IpvsVm(args) => ipvs_vm::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
