//! `cargo xtask demo`: set up (without the tests' browser), build the release binary, run
//! `kubectl-zdt demo` (as root), recording the observations to `demo.jsonl` at the repository's
//! root (the README then runs `kubectl zdt recommend --from-file demo.jsonl`).

use std::{ffi::OsString, path::Path, process::Command};

use anyhow::bail;

use crate::{cmd, setup};

/// The file the demo records to, named in the README.
pub const RECORDING: &str = "demo.jsonl";

/// `kubectl-zdt` arguments of the demo.
fn demo_args(root: &Path) -> Vec<OsString> {
    vec![
        "demo".into(),
        "--record".into(),
        root.join(RECORDING).into_os_string(),
    ]
}

pub fn run() -> anyhow::Result<()> {
    setup::run_all(setup::Purpose::Run)?;
    cmd::run(cmd::cargo().args(["build", "--release", "--package", "kubectl-zdt"]))?;
    let bin = cmd::root().join("target/release/kubectl-zdt");
    let args = demo_args(&cmd::root());
    if cmd::is_root() {
        cmd::run(Command::new(&bin).args(&args))
    } else if cmd::output(Command::new("sh").args(["-c", "command -v sudo"])).is_some() {
        cmd::run(Command::new("sudo").arg(&bin).args(&args))
    } else {
        bail!("the demo loads eBPF programs and creates network namespaces: run it as root")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_records_the_file_the_readme_reads() {
        let root = cmd::root();
        let args = demo_args(&root);
        assert_eq!(args[1], "--record");
        assert_eq!(args[2], root.join(RECORDING).into_os_string());
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        assert!(
            readme.contains(&format!("kubectl zdt recommend --from-file {RECORDING}")),
            "the README names another file"
        );
    }
}
