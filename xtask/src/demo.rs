//! `cargo xtask demo`: set up, build the release binary, run `kubectl-zdt demo` (as root).

use std::process::Command;

use anyhow::bail;

use crate::{cmd, setup};

pub fn run() -> anyhow::Result<()> {
    setup::run_all()?;
    cmd::run(cmd::cargo().args(["build", "--release", "--package", "kubectl-zdt"]))?;
    let bin = cmd::root().join("target/release/kubectl-zdt");
    if cmd::is_root() {
        cmd::run(Command::new(&bin).arg("demo"))
    } else if cmd::output(Command::new("sh").args(["-c", "command -v sudo"])).is_some() {
        cmd::run(Command::new("sudo").arg(&bin).arg("demo"))
    } else {
        bail!("the demo loads eBPF programs and creates network namespaces: run it as root")
    }
}
