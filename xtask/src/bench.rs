//! `cargo xtask bench`: every benchmark, as root (the kernel ones load eBPF programs). Results
//! are printed; BENCHMARKS.md records them with date and machine. Benchmarks measure, they do
//! not assert: pass/fail lives in the tests.

use anyhow::bail;

use crate::{bench_kernel, cmd, setup};

pub fn run() -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the kernel benchmarks load eBPF programs: run `sudo ./x bench`");
    }
    setup::run_all(setup::Purpose::Run)?;
    bench_kernel::prepare()?;
    crate::bench_user::run()?;
    if crate::bench_user::only() {
        return Ok(());
    }
    cmd::run(cmd::cargo().args(["bench", "--package", "kubectl-zdt"]))
}
