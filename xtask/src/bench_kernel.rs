//! What the kernel benchmarks need beyond `setup`: bpftrace, the tool a user would run instead
//! of kubectl-zdt's probes, which the kernel bench runs on the same tracepoints and traffic
//! (kubectl-zdt/benches/kernel.rs). Installed from Debian; the bench fails loudly without it.

use crate::setup;

/// The Debian package of the side-by-side comparison, and the binary it provides.
const BPFTRACE: (&str, &str) = ("bpftrace", "bpftrace");

pub fn prepare() -> anyhow::Result<()> {
    setup::install(&[BPFTRACE])
}
