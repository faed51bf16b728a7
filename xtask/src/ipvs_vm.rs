//! `cargo xtask ipvs-vm`: the IPVS dataplane reader and watcher against a real kernel's IPVS.
//!
//! The kernel this project is built on has no IPVS (CONFIG_IP_VS unset, no modules), so this
//! boots Debian's kernel (IPVS as modules) in a throwaway QEMU guest: it fetches the
//! `linux-image-*-amd64` package into /var/cache/kubectl-zdt-ipvs (unpacked there, never
//! installed), builds the guest harness (`kubectl-zdt/tests/guest/ipvs_vm/main.rs`, the
//! test target `ipvs_vm_guest`) as a static musl binary, packs it with
//! busybox-static, the IPVS and iptables nat modules (and their dependencies, from each
//! module's `depends=`) and the host's `iptables-legacy-restore` (with its libraries and
//! extensions) into an initramfs, boots it, and relays the guest's checks. The guest's recorded dump
//! datagrams are written to target/ipvs-vm/fixtures (and, with `--update-fixtures`, to
//! kubectl-zdt/tests/fixtures/ipvs). The last step of `./x test` (and so of CI), with TCG: it
//! needs no KVM, and installs QEMU and busybox-static itself.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cmd, image};

const CACHE: &str = "/var/cache/kubectl-zdt-ipvs";
/// Modules the guest loads (their dependencies are added): IPVS and its round-robin scheduler,
/// the dummy link (kube-ipvs0), and what the agent's dataplane watcher opens at start
/// (nf_tables, x_tables' ip_tables/ip6_tables). crc32c_generic is libcrc32c's soft dependency.
/// Then kube-proxy's iptables nat rules through iptables-legacy: the nat table and the matches
/// and targets its rules use (`iptables-legacy-restore` would ask modprobe for them).
const MODULES: [&str; 15] = [
    "crc32c_generic",
    "ip_vs",
    "ip_vs_rr",
    "dummy",
    "nf_tables",
    "ip_tables",
    "ip6_tables",
    "iptable_nat",
    "xt_comment",
    "xt_statistic",
    "xt_mark",
    "xt_MASQUERADE",
    "xt_nat",
    "xt_addrtype",
    "xt_tcpudp",
];
/// The host's iptables-legacy (Debian's `iptables` package, installed by `./x setup`) for the
/// guest's iptables-legacy check: the multi-call binary, the libraries it links and the
/// extensions it loads.
const XTABLES_MULTI: &str = "/usr/sbin/xtables-legacy-multi";
const XTABLES_EXTENSIONS: &str = "/usr/lib/x86_64-linux-gnu/xtables";
/// The guest prints this first: the kernel booted and ran init.
const INIT_LINE: &str = "zdt-ipvs-vm: init";
/// How long a KVM guest may take to reach init before it is taken for hung.
const KVM_BOOT: Duration = Duration::from_secs(60);
/// How long the whole guest run may take.
const RUN: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM if /dev/kvm exists; TCG emulation if it does not, or if the KVM guest does not
    /// reach init within 60 s (nested KVM can hang in early boot).
    Auto,
    /// KVM only (fails with one line when /dev/kvm is absent).
    Kvm,
    /// QEMU's TCG emulation (slower, works everywhere).
    Tcg,
}

#[derive(clap::Args)]
pub struct IpvsVmArgs {
    /// How QEMU runs the guest.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,

    /// Also write the recorded dumps to kubectl-zdt/tests/fixtures/ipvs (then update its
    /// README's date and kernel).
    #[arg(long)]
    pub update_fixtures: bool,

    /// Virtual servers (5 real servers each) the guest's scale check adds, at most 10 000.
    #[arg(long, default_value_t = 2000)]
    pub scale: u16,

    /// Services (5 endpoints each) of the guest's iptables-legacy check (whole agent, 6.12),
    /// at most 10 000.
    #[arg(long, default_value_t = 200)]
    pub legacy_services: u16,

    /// The guest's CPUs (with one, x_tables allocates no per-CPU rule counters).
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,

    /// After the checks, on a kernel the whole agent runs on, measure what one syscall
    /// (`getppid`) costs with no agent, with the agent's dataplane triggers on kernel functions
    /// (fentry) and on the syscall tracepoints, in this many rounds (0: not measured; under TCG
    /// only the ratios mean much). Printed as `MEASURE` lines, never checked.
    #[arg(long, default_value_t = 0)]
    pub syscall_tax: u16,

    /// Debian's kernel metapackage to boot: linux-image-amd64 (Debian 12's 6.1, which the
    /// whole agent refuses) or linux-image-6.12-amd64 (bookworm-backports' 6.12, on which the
    /// guest also runs the whole agent).
    #[arg(long, default_value = DEFAULT_KERNEL)]
    pub kernel: String,
}

pub const DEFAULT_KERNEL: &str = "linux-image-amd64";

pub fn run(args: &IpvsVmArgs) -> anyhow::Result<()> {
    let kvm = Path::new("/dev/kvm").exists();
    if args.accel == Accel::Kvm && !kvm {
        bail!(
            "/dev/kvm is absent: this machine cannot run a KVM guest; enable (nested) virtualization or run `cargo xtask ipvs-vm --accel tcg`"
        );
    }
    if !cmd::is_root() {
        bail!("ipvs-vm needs root (apt-get, and the kernel cache in {CACHE}): run it as root");
    }
    install(
        &["qemu-system-x86_64", "busybox"],
        &["qemu-system-x86", "busybox-static"],
    )?;
    let kernel = fetch_kernel(&args.kernel)?;
    let guest = build_guest()?;
    let out = cmd::root().join("target/ipvs-vm");
    let initrd = initramfs(&kernel, &guest, &out)
        .with_context(|| format!("failed to build the guest's initramfs in {}", out.display()))?;
    let mut accel = match args.accel {
        Accel::Tcg => "tcg",
        Accel::Kvm => "kvm",
        Accel::Auto if kvm => "kvm",
        Accel::Auto => {
            eprintln!("ipvs-vm: /dev/kvm is absent, using TCG emulation");
            "tcg"
        }
    };
    let result = loop {
        match boot(&kernel.vmlinuz, &initrd, accel, args)? {
            Boot::Hung if args.accel == Accel::Auto && accel == "kvm" => {
                eprintln!(
                    "ipvs-vm: the KVM guest printed nothing from its kernel within {KVM_BOOT:?} (nested KVM hangs in early boot on some hypervisors); rerunning with TCG emulation"
                );
                accel = "tcg";
            }
            Boot::Hung => bail!(
                "the {accel} guest did not reach init within {KVM_BOOT:?}; rerun with `--accel tcg`"
            ),
            Boot::Ran(r) => break r,
        }
    };
    let fixtures = out.join("fixtures");
    let _ = fs::remove_dir_all(&fixtures);
    fs::create_dir_all(&fixtures)?;
    for (state, json) in &result.fixtures {
        let value: serde_json::Value = serde_json::from_str(json)
            .with_context(|| format!("the guest's {state} fixture is not JSON"))?;
        let text = serde_json::to_string_pretty(&value)? + "\n";
        fs::write(fixtures.join(format!("{state}.json")), &text)?;
        if args.update_fixtures {
            let dir = cmd::root().join("kubectl-zdt/tests/fixtures/ipvs");
            fs::create_dir_all(&dir)?;
            fs::write(dir.join(format!("{state}.json")), &text)?;
        }
    }
    eprintln!(
        "ipvs-vm: {} recorded states in {} (kernel {}, {accel})",
        result.fixtures.len(),
        fixtures.display(),
        kernel.release
    );
    if result.passed {
        println!("PASS: IPVS on a real kernel ({}, {accel})", kernel.release);
        Ok(())
    } else {
        println!("FAIL: IPVS on a real kernel ({}, {accel})", kernel.release);
        bail!("the guest's checks failed (its output is above)")
    }
}

/// Installs the Debian packages whose programs are missing.
fn install(programs: &[&str], packages: &[&str]) -> anyhow::Result<()> {
    if programs
        .iter()
        .all(|p| cmd::output(Command::new(p).arg("--help")).is_some())
    {
        return Ok(());
    }
    cmd::run(
        Command::new("apt-get")
            .arg("install")
            .arg("-y")
            .args(packages),
    )
}

struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    /// lib/modules/<release>
    modules: PathBuf,
}

/// Debian's current kernel package, downloaded and unpacked into the cache (not installed).
fn fetch_kernel(meta: &str) -> anyhow::Result<Kernel> {
    let depends = cmd::output(Command::new("apt-cache").args(["depends", meta])).with_context(
        || format!("apt-cache knows no package {meta}: is this Debian 12 with apt (and, for 6.12, bookworm-backports)?"),
    )?;
    let package = depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .with_context(|| format!("apt-cache names no kernel package for {meta}"))?
        .to_owned();
    let release = package
        .strip_prefix("linux-image-")
        .context("unexpected kernel package name")?
        .to_owned();
    let dir = Path::new(CACHE).join(&package);
    let root = dir.join("root");
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
        // `cmd::run` runs in the workspace root: download from a shell in the cache instead.
        cmd::run(Command::new("sh").arg("-c").arg(format!(
            "cd '{}' && apt-get download '{package}'",
            dir.display()
        )))?;
        let deb = fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        cmd::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    }
    Ok(Kernel {
        modules: root.join(format!("lib/modules/{release}")),
        release,
        vmlinuz,
    })
}

/// The guest harness's test target.
const GUEST: &str = "ipvs_vm_guest";

/// The static guest program (a debug build: it shares the lib's build with `cargo build`-style
/// runs and is much quicker to build than the image's LTO release).
fn build_guest() -> anyhow::Result<PathBuf> {
    image::musl_prerequisites()?;
    // A test target (not run by `cargo test`: `test = false`) lands under deps/ with a hash in
    // its name: cargo's own report of the artifact names the file.
    let built = cmd::cargo()
        .args([
            "build",
            "--locked",
            "-p",
            "kubectl-zdt",
            "--test",
            GUEST,
            "--target",
            image::TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("failed to run cargo")?;
    anyhow::ensure!(
        built.status.success(),
        "building the IPVS guest harness ({GUEST}) failed"
    );
    String::from_utf8_lossy(&built.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == GUEST)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo reported no executable for {GUEST}"))
}

/// A module's `depends=` from its .modinfo section.
fn depends(ko: &[u8]) -> Vec<String> {
    ko.split(|b| *b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| {
            String::from_utf8_lossy(d)
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The modules to load, dependencies first, with their (uncompressed) contents.
fn modules(dir: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let order = fs::read_to_string(dir.join("modules.order"))
        .with_context(|| format!("failed to read {}/modules.order", dir.display()))?;
    let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let name_of = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let paths: HashMap<String, &str> = order.lines().map(|l| (name_of(l), l)).collect();
    let builtins: BTreeSet<String> = builtin.lines().map(name_of).collect();
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    fn visit(
        name: &str,
        dir: &Path,
        paths: &HashMap<String, &str>,
        builtins: &BTreeSet<String>,
        out: &mut Vec<(String, Vec<u8>)>,
    ) -> anyhow::Result<()> {
        let name = name.replace('-', "_");
        if out.iter().any(|(n, _)| *n == name) || builtins.contains(&name) {
            return Ok(());
        }
        let Some(path) = paths.get(&name) else {
            bail!("module {name} is neither in modules.order nor built into this kernel");
        };
        let file = dir.join(path);
        // modules.order names the uncompressed file; the package may ship it compressed.
        let ko = match fs::read(&file) {
            Ok(ko) => ko,
            Err(_) => {
                let xz = PathBuf::from(format!("{}.xz", file.display()));
                let out = Command::new("xz")
                    .arg("-dc")
                    .arg(&xz)
                    .output()
                    .with_context(|| format!("failed to run xz on {}", xz.display()))?;
                if !out.status.success() {
                    bail!("failed to read module {name} ({} or .xz)", file.display());
                }
                out.stdout
            }
        };
        for dep in depends(&ko) {
            visit(&dep, dir, paths, builtins, out)?;
        }
        out.push((name, ko));
        Ok(())
    }
    for m in MODULES {
        visit(m, dir, &paths, &builtins, &mut out)?;
    }
    Ok(out)
}

/// The guest's initramfs: busybox, the modules, the guest program and an init that loads the
/// modules and runs it.
fn initramfs(kernel: &Kernel, guest: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let tree = out.join("initramfs");
    let _ = fs::remove_dir_all(&tree);
    for d in ["bin", "proc", "sys", "dev", "tmp", "run", "lib/modules"] {
        fs::create_dir_all(tree.join(d))?;
    }
    let busybox = cmd::output(Command::new("sh").args(["-c", "command -v busybox"]))
        .context("busybox is missing (apt-get install busybox-static)")?;
    fs::copy(busybox.trim(), tree.join("bin/busybox"))?;
    for applet in ["sh", "mount", "insmod", "ip", "uname", "poweroff", "echo"] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet))?;
    }
    let mut load = String::new();
    for (name, ko) in modules(&kernel.modules)? {
        fs::write(tree.join(format!("lib/modules/{name}.ko")), ko)?;
        load.push_str(&format!(
            "insmod /lib/modules/{name}.ko || {{ echo \"zdt-ipvs-vm: insmod {name} failed\"; poweroff -f; }}\n"
        ));
    }
    copy_iptables_legacy(&tree)?;
    fs::copy(guest, tree.join("ipvs_guest"))?;
    let init = format!(
        "#!/bin/sh\n\
         export PATH=/bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tracefs nodev /sys/kernel/tracing\n\
         echo \"{INIT_LINE} $(uname -r)\"\n\
         {load}\
         /ipvs_guest\n\
         echo \"zdt-ipvs-vm: guest exited $?\"\n\
         poweroff -f\n"
    );
    fs::write(tree.join("init"), init)?;
    cmd::run(Command::new("chmod").arg("755").arg(tree.join("init")))?;
    let image = out.join("initramfs.cpio.gz");
    cmd::run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
        tree.display(),
        image.display()
    )))?;
    Ok(image)
}

/// `iptables-legacy-restore` into the initramfs at the host's paths: the binary, every library
/// `ldd` names (with the loader) and the extension directory.
fn copy_iptables_legacy(tree: &Path) -> anyhow::Result<()> {
    let copy = |from: &Path| -> anyhow::Result<()> {
        let to = tree.join(from.strip_prefix("/").unwrap_or(from));
        fs::create_dir_all(to.parent().context("no parent")?)?;
        fs::copy(from, &to)
            .with_context(|| format!("failed to copy {} into the initramfs", from.display()))?;
        Ok(())
    };
    let multi = Path::new(XTABLES_MULTI);
    if !multi.exists() {
        bail!("{XTABLES_MULTI} is missing (apt-get install iptables, or run ./x setup)");
    }
    fs::copy(multi, tree.join("bin/xtables-legacy-multi"))?;
    std::os::unix::fs::symlink(
        "xtables-legacy-multi",
        tree.join("bin/iptables-legacy-restore"),
    )?;
    let mut objects = vec![multi.to_path_buf()];
    for entry in fs::read_dir(XTABLES_EXTENSIONS)
        .with_context(|| format!("failed to read {XTABLES_EXTENSIONS}"))?
    {
        let path = entry?.path();
        copy(&path)?;
        objects.push(path);
    }
    // The extensions link more than the binary (libm, libnetfilter_conntrack, …).
    let mut libs = BTreeSet::new();
    for object in &objects {
        let ldd = cmd::output(Command::new("ldd").arg(object))
            .with_context(|| format!("failed to list the libraries of {}", object.display()))?;
        libs.extend(
            ldd.split_whitespace()
                .filter(|w| w.starts_with('/'))
                .map(PathBuf::from),
        );
    }
    for lib in &libs {
        copy(lib)?;
    }
    Ok(())
}

struct Ran {
    passed: bool,
    /// (state, one-line JSON) as the guest printed them.
    fixtures: Vec<(String, String)>,
}

enum Boot {
    /// The kernel never reached init (nothing but firmware output).
    Hung,
    Ran(Ran),
}

/// Boots the guest and relays its console (fixtures kept, not printed).
fn boot(vmlinuz: &Path, initrd: &Path, accel: &str, args: &IpvsVmArgs) -> anyhow::Result<Boot> {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", accel, "-m", "1024", "-smp"])
        .arg(args.cpus.to_string());
    if accel == "kvm" {
        qemu.args(["-cpu", "host"]);
    }
    qemu.args(["-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // The kernel hands `NAME=value` words it does not know to init as its environment.
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet ZDT_IPVS_SCALE={} ZDT_LEGACY_SERVICES={} ZDT_SYSCALL_TAX={}",
            args.scale, args.legacy_services, args.syscall_tax
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!("+ {qemu:?}");
    let mut child = qemu.spawn().context("failed to start qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("no qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { return };
            if tx
                .send(String::from_utf8_lossy(&line).trim_end().to_owned())
                .is_err()
            {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut reached_init = false;
    let mut passed = false;
    let mut fixtures = Vec::new();
    loop {
        let limit = if reached_init { RUN } else { KVM_BOOT.min(RUN) };
        let left = limit.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                // The console may prefix a line with terminal control sequences.
                let text = line
                    .find("FIXTURE ")
                    .or_else(|| line.find("zdt-ipvs-vm:"))
                    .map_or(line.as_str(), |i| &line[i..]);
                if let Some(rest) = text.strip_prefix("FIXTURE ") {
                    if let Some((state, json)) = rest.split_once(' ') {
                        println!("[guest] FIXTURE {state} ({} bytes)", json.len());
                        fixtures.push((state.to_owned(), json.to_owned()));
                    }
                    continue;
                }
                reached_init |= text.starts_with(INIT_LINE);
                passed |= line.contains("IPVS-GUEST PASS");
                println!("[guest] {line}");
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                if !reached_init && accel == "kvm" {
                    return Ok(Boot::Hung);
                }
                bail!("the guest ran longer than {limit:?} ({accel}); its output is above");
            }
        }
    }
    let status = child.wait()?;
    if !reached_init {
        bail!("qemu exited ({status}) before the guest reached init; its output is above");
    }
    Ok(Boot::Ran(Ran { passed, fixtures }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_modules_dependencies_come_from_its_modinfo() {
        let ko = b"\x7fELF junk\0license=GPL\0depends=nf_conntrack,libcrc32c,nf_defrag_ipv6\0retpoline=Y\0";
        assert_eq!(depends(ko), ["nf_conntrack", "libcrc32c", "nf_defrag_ipv6"]);
        assert!(depends(b"\0depends=\0name=dummy\0").is_empty());
        assert!(depends(b"no modinfo at all").is_empty());
    }
}
