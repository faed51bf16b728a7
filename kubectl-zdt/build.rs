//! Builds the `zdt-ebpf` crate for `bpfel-unknown-none` and leaves its object in `OUT_DIR`, where
//! `src/kernel/loader.rs` embeds it with `include_bytes_aligned!`.
//!
//! Workarounds, and why:
//! - `RUSTC_BOOTSTRAP=1` is set for this build script's own process only: aya-build then adds
//!   `-Z build-std=core` (the bpf target ships no precompiled `core`) while the pinned stable
//!   toolchain keeps building everything else in stable mode. Setting it in the outer
//!   environment instead would make anyhow/thiserror/proc-macro2 probe for nightly features and
//!   rebuild differently.
//! - The toolchain is passed explicitly (read from `rust-toolchain.toml`) because aya-build runs
//!   the inner build through `rustup run <toolchain>`, and its default would be `nightly`.
//! - The script runs itself again for the eBPF build and keeps back the ~46 progress lines
//!   aya-build relays as warnings, unless that build fails (`build_support/quiet.rs`).
//! - `ZDT_SKIP_EBPF=1` writes an empty object instead, for tools that only need the userspace
//!   crate to type-check (the agent then refuses to start with a clear error).

use std::{env, fs, io::Write as _, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

#[path = "build_support/quiet.rs"]
mod quiet;

/// Set in the build script's second run, the one that builds the eBPF crate.
const INNER: &str = "ZDT_EBPF_BUILD_INNER";

/// Runs itself again to build the eBPF crate, and passes its output on without cargo's
/// progress lines unless that build fails (see `build_support/quiet.rs`).
fn main() -> anyhow::Result<()> {
    if env::var_os(INNER).is_some() {
        return build();
    }
    let out = Command::new(env::current_exe().context("no path to the build script")?)
        .env(INNER, "1")
        .output()
        .context("failed to run the eBPF build")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut pass = std::io::stdout().lock();
    for line in stdout.lines() {
        if !out.status.success() || !quiet::is_progress(line) {
            writeln!(pass, "{line}")?;
        }
    }
    std::io::stderr().write_all(&out.stderr)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(anyhow!(
            "the eBPF build failed ({}): its output is above",
            out.status
        ))
    }
}

fn build() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=ZDT_SKIP_EBPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    if env::var_os("ZDT_SKIP_EBPF").is_some_and(|v| v == "1") {
        fs::write(out_dir.join("zdt"), []).context("failed to write the empty eBPF object")?;
        return Ok(());
    }

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata failed")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "zdt-ebpf")
        .ok_or_else(|| anyhow!("zdt-ebpf is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("zdt-ebpf's manifest has no parent directory"))?;

    let toolchain_file = metadata.workspace_root.join("rust-toolchain.toml");
    println!("cargo::rerun-if-changed={toolchain_file}");
    let toolchain = fs::read_to_string(&toolchain_file)
        .with_context(|| format!("failed to read {toolchain_file}"))?;
    let channel = toolchain
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "channel").then(|| v.trim().trim_matches('"').to_owned())
        })
        .ok_or_else(|| anyhow!("no channel in {toolchain_file}"))?;

    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [Package {
            name: "zdt-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(&channel),
    )
}
