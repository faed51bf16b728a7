//! `cargo xtask setup`: idempotent; a second run on a ready machine takes about a second.
//!
//! - rust-src for the pinned toolchain (the eBPF crate builds `core` from source);
//! - bpf-linker, built from crates.io against the pinned rustc's own libLLVM (no system LLVM):
//!   bpf-linker must use the same LLVM major as rustc or linking fails with "Invalid record".
//!   It is rebuilt only when the installed one does not load that LLVM;
//! - the Debian packages the tests and the demo drive (iproute2, iptables, nftables, conntrack;
//!   chromium for the HTML report's render test only when setting up for the tests).

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::cmd::{self, output, run};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages (and a binary each provides) the tests and demo need.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("iptables", "iptables-restore"),
    ("nftables", "nft"),
    ("conntrack", "conntrack"),
    ("procps", "sysctl"),
];
/// The HTML report's render test takes a headless screenshot: only the tests need a browser
/// (hundreds of MB the demo and the benchmarks do without).
const BROWSER: (&str, &str) = ("chromium", "chromium");

/// What the machine is set up for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `./x test`: everything.
    Tests,
    /// `./x demo`, `./x bench`: no browser.
    Run,
}

/// The Debian packages `purpose` needs.
fn packages_for(purpose: Purpose) -> Vec<(&'static str, &'static str)> {
    let mut all = PACKAGES.to_vec();
    if purpose == Purpose::Tests {
        all.push(BROWSER);
    }
    all
}

pub fn run_all(purpose: Purpose) -> anyhow::Result<()> {
    let toolchain = toolchain()?;
    rust_src(&toolchain)?;
    bpf_linker(&toolchain)?;
    packages(purpose)?;
    Ok(())
}

pub fn command() -> anyhow::Result<()> {
    run_all(Purpose::Tests)?;
    eprintln!("setup: ready");
    Ok(())
}

/// The channel pinned in rust-toolchain.toml.
pub fn toolchain() -> anyhow::Result<String> {
    let path = cmd::root().join("rust-toolchain.toml");
    let text =
        fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "channel").then(|| v.trim().trim_matches('"').to_owned())
        })
        .context("rust-toolchain.toml names no channel")
}

fn rust_src(toolchain: &str) -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))
    .context("rustup is needed (https://rustup.rs)")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: installing rust-src for {toolchain}");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", toolchain]))
}

fn sysroot(toolchain: &str) -> anyhow::Result<PathBuf> {
    let s = output(Command::new("rustup").args(["run", toolchain, "rustc", "--print", "sysroot"]))
        .with_context(|| format!("toolchain {toolchain} is not installed: run ./x setup"))?;
    Ok(PathBuf::from(s.trim()))
}

/// The `libLLVM.so.<major>…` file of the toolchain, and its major version.
fn rustc_llvm(sysroot: &std::path::Path) -> anyhow::Result<(PathBuf, String)> {
    let lib = sysroot.join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("failed to list {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("libLLVM.so.") {
            let major = rest.split(['.', '-']).next().unwrap_or_default().to_owned();
            return Ok((lib.join(&name), major));
        }
    }
    bail!(
        "no libLLVM.so.* in {}: the toolchain is incomplete",
        lib.display()
    )
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn bpf_linker(toolchain: &str) -> anyhow::Result<()> {
    let sysroot = sysroot(toolchain)?;
    let (libllvm, major) = rustc_llvm(&sysroot)?;
    let bin = cargo_bin().join("bpf-linker");
    // The installed linker is good if it loads this toolchain's LLVM major.
    if let Some(ldd) = output(Command::new("ldd").arg(&bin)) {
        let wanted = format!("libLLVM.so.{major}");
        let ok = ldd
            .lines()
            .any(|l| l.contains(&wanted) && !l.contains("not found"));
        if ok {
            return Ok(());
        }
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against rustc's LLVM {major} (1-3 minutes)"
    );
    // bpf-linker's llvm-sys looks for lib/libLLVM.so under LLVM_PREFIX; point it at rustc's.
    let prefix = std::env::temp_dir().join(format!("zdt-llvm-{major}"));
    fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("failed to link {}", link.display()))?;
    run(Command::new("rustup")
        .args([
            "run",
            toolchain,
            "cargo",
            "install",
            "bpf-linker",
            "--locked",
            "--force",
        ])
        .args([
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", sysroot.join("lib").display()),
        ))
}

fn packages(purpose: Purpose) -> anyhow::Result<()> {
    install(&packages_for(purpose))
}

/// Installs those of `packages` (Debian package, a binary it provides) whose binary is
/// missing; fails naming them when that cannot be done.
pub fn install(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, bin)| {
            output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_none()
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "missing Debian packages {}: run `sudo apt-get install {}` or `sudo ./x setup`",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tests_install_a_browser() {
        let names = |p| {
            packages_for(p)
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        };
        assert!(names(Purpose::Tests).contains(&"chromium"));
        assert!(
            !names(Purpose::Run).contains(&"chromium"),
            "{:?}",
            names(Purpose::Run)
        );
        assert!(names(Purpose::Run).contains(&"iptables"));
    }
}
