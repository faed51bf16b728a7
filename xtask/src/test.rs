//! `cargo xtask test`: everything CI checks, in the order that fails fastest.
//!
//! The integration tests are two binaries: `offline` (kubectl-zdt/tests/offline/main.rs) needs
//! nothing and runs in parallel; `kernel` (kubectl-zdt/tests/kernel/main.rs: real probes in this
//! kernel, real traffic between network namespaces) runs as root, one test at a time (the probes
//! see every namespace, so two tests' traffic would mix). Without root this fails: those tests
//! are never skipped silently.
//!
//! Then IPVS on a real kernel: this machine's kernel has no IPVS, so `ipvs_vm` boots
//! Debian's kernels (6.1, then 6.12) in a QEMU guest under TCG emulation (no KVM needed;
//! nested KVM hangs on these machines) and runs the IPVS reader, watcher and eBPF trigger
//! there, and on 6.12 the whole agent. Last, the longer run of the property tests and fuzzers.

use anyhow::bail;

use crate::{cmd, ipvs_vm, setup};

pub fn run() -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the tests load eBPF programs and create network namespaces: run `sudo ./x test`");
    }
    enough_disk()?;
    setup::run_all(setup::Purpose::Tests)?;
    cmd::run(cmd::cargo().args(["fmt", "--all", "--check"]))?;
    cmd::run(cmd::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "zdt-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The IPVS guest harness is a test target `cargo test` leaves alone (test = false), which
    // `--all-targets` leaves out too.
    cmd::run(cmd::cargo().args([
        "clippy",
        "-p",
        "kubectl-zdt",
        "--test",
        "ipvs_vm_guest",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The product as shipped, without the `test-support` feature (`--lib --bins` use no
    // dev-dependencies, so nothing turns it on): the run above builds the library with it, so
    // only this one sees product code that needs test-only code, or imports only it uses.
    cmd::run(cmd::cargo().args([
        "clippy",
        "--package",
        "kubectl-zdt",
        "--lib",
        "--bins",
        "--",
        "-D",
        "warnings",
    ]))?;
    clippy_ebpf()?;
    // Every crate's unit tests and the integration tests that need nothing, in parallel; then
    // the kernel tests, one at a time. The same packages in both commands: cargo resolves the
    // same features, so the library and its unit tests are built once and run once (`--tests`
    // would run the unit tests again).
    cmd::run(cargo_test().args(["--lib", "--bins", "--test", "offline"]))?;
    cmd::run(cargo_test().args(["--test", "kernel", "--", "--test-threads=1"]))?;
    ipvs_vm::run(&ipvs_vm::IpvsVmArgs {
        accel: ipvs_vm::Accel::Tcg,
        update_fixtures: false,
        scale: 2000,
        legacy_services: 200,
        syscall_tax: 0,
        cpus: 1,
        kernel: ipvs_vm::DEFAULT_KERNEL.to_owned(),
    })?;
    // Linux 6.12, the LTS most managed node images run: IPVS again, and the whole agent
    // (preflight, every program through this kernel's verifier, refused connections counted).
    ipvs_vm::run(&ipvs_vm::IpvsVmArgs {
        accel: ipvs_vm::Accel::Tcg,
        update_fixtures: false,
        scale: 500,
        legacy_services: 200,
        syscall_tax: 0,
        cpus: 1,
        kernel: "linux-image-6.12-amd64".to_owned(),
    })?;
    longer_properties()?;
    eprintln!("xtask test: all checks passed");
    Ok(())
}

/// The property tests and the fuzzers of the line parser, journal reader and table decoders
/// again, with `PROPTEST_CASES` cases each (16 times the quick run's 256; the test-named counts
/// of the offline binary give way to it too): about two and a half minutes here. `ZDT_LONG_CASES`
/// changes the count.
const LONG_CASES: &str = "4096";
const PROPERTY_TESTS: [&str; 9] = [
    "journal_fuzz::",
    "decoder_fuzz::",
    "correlate_properties::",
    "correlate_windows::",
    "recommend::",
    "dataplane::",
    "correlate::input",
    "correlate::attribution",
    "testbed::kube_proxy",
];

fn longer_properties() -> anyhow::Result<()> {
    let cases = std::env::var("ZDT_LONG_CASES").unwrap_or_else(|_| LONG_CASES.to_owned());
    eprintln!("xtask test: property tests and fuzzers again, {cases} cases each");
    cmd::run(
        cargo_test()
            .args(["--lib", "--bins", "--test", "offline", "--"])
            .args(PROPERTY_TESTS)
            .env("PROPTEST_CASES", cases),
    )
}

/// `cargo test` of the workspace's host crates.
fn cargo_test() -> std::process::Command {
    let mut cargo = cmd::cargo();
    cargo.args(["test", "--workspace", "--exclude", "zdt-ebpf"]);
    cargo
}

/// What a run from a clean clone writes under target/: 3.8 GB measured on 2026-11-22 (was
/// 11 GB before debug builds dropped full debug info), and a margin.
const TARGET_BYTES: u64 = TARGET_GB * 1_000_000_000;
const TARGET_GB: u64 = 5;

/// Fails before building if the disk cannot hold the build: a run that fills the disk dies
/// twenty minutes in with a bare ENOSPC from whichever step was writing.
fn enough_disk() -> anyhow::Result<()> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| cmd::root().join("target"), std::path::PathBuf::from);
    let probe = if target.exists() {
        target.clone()
    } else {
        cmd::root()
    };
    let Some(free) = cmd::free_bytes(&probe) else {
        return Ok(());
    };
    let built = cmd::used_bytes(&target).unwrap_or(0);
    let needed = TARGET_BYTES.saturating_sub(built);
    if free < needed {
        bail!(
            "only {:.1} GB free on the disk of {} and the tests need about {:.1} GB more \
             (a clean build takes {TARGET_GB} GB): free some space or point CARGO_TARGET_DIR \
             at a larger disk",
            free as f64 / 1e9,
            target.display(),
            needed as f64 / 1e9,
        );
    }
    Ok(())
}

/// Clippy on the real bpf target. `-Z build-std` needs RUSTC_BOOTSTRAP, set for this one
/// command with its own target dir so it never changes how the rest of the workspace builds.
fn clippy_ebpf() -> anyhow::Result<()> {
    let target_dir = cmd::root().join("target/ebpf-clippy");
    cmd::run(
        cmd::cargo()
            .args([
                "clippy",
                "--package",
                "zdt-ebpf",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .arg("--target-dir")
            .arg(target_dir)
            .args(["--", "-D", "warnings"])
            .env("RUSTC_BOOTSTRAP", "1"),
    )
}
