//! Network namespaces that delete themselves, and running code inside them.

use std::{
    fs::File,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context as _, bail};
use nix::sched::{CloneFlags, setns};

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!("failed to run {program} (is it installed? `./x setup` installs it)")
        })?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Moves the calling thread into the network namespace at `path` (threads it creates afterwards
/// start there too).
pub fn enter(path: &str) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("failed to open {path}"))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("failed to enter network namespace {path}"))
}

/// A named network namespace (`ip netns add`), deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// Creates `zdt<pid>-<seq>-<role>` so concurrent runs never collide.
    pub fn create(role: &str) -> anyhow::Result<Self> {
        let name = format!(
            "zdt{}-{}-{role}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.exec("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that names it (`/run/netns/<name>`), for `--watch-netns`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `ip <args>` inside the namespace; `args` is split on whitespace.
    pub fn ip(&self, args: &str) -> anyhow::Result<String> {
        self.exec("ip", &args.split_whitespace().collect::<Vec<_>>())
    }

    /// Runs `f` on a new thread that has entered the namespace; sockets it creates live there.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<NsThread<T>> {
        let path = self.path();
        let file = File::open(&path).with_context(|| format!("failed to open {path}"))?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = thread::Builder::new()
            .name(format!("ns-{}", self.name))
            .spawn(move || {
                // setns affects only this thread: the network namespace is per task.
                match setns(&file, CloneFlags::CLONE_NEWNET) {
                    Ok(()) => {
                        let _ = ready_tx.send(Ok(()));
                        Some(f())
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        None
                    }
                }
            })
            .context("failed to spawn a thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(NsThread {
                handle,
                ns: self.name.clone(),
            }),
            Ok(Err(e)) => bail!("failed to enter network namespace {}: {e}", self.name),
            Err(_) => bail!("thread for namespace {} died", self.name),
        }
    }

    /// Runs `f` inside the namespace and waits for its result.
    #[cfg(feature = "test-support")]
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        self.spawn(f)?.join()
    }
}

/// A thread running inside a network namespace.
pub struct NsThread<T> {
    handle: thread::JoinHandle<Option<T>>,
    ns: String,
}

impl<T> NsThread<T> {
    pub fn join(self) -> anyhow::Result<T> {
        match self.handle.join() {
            Ok(Some(v)) => Ok(v),
            Ok(None) => bail!("thread could not enter namespace {}", self.ns),
            Err(_) => bail!("code in namespace {} panicked", self.ns),
        }
    }

    #[cfg(feature = "test-support")]
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// Joins `a` and `b` with a veth pair named `eth0` on both sides, with the given addresses
/// (`ip/prefix`, IPv4 or IPv6), and brings both ends up.
#[cfg(feature = "test-support")]
pub fn veth_pair(a: &Netns, b: &Netns, addrs_a: &[&str], addrs_b: &[&str]) -> anyhow::Result<()> {
    a.exec(
        "ip",
        &[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            b.name(),
        ],
    )?;
    // Links up before addresses: an IPv6 address added to a down link joins its
    // solicited-node multicast group late, and the first SYN then waits for a retransmit (1 s).
    for ns in [a, b] {
        ns.exec("ip", &["link", "set", "eth0", "up"])?;
    }
    for (ns, addrs) in [(a, addrs_a), (b, addrs_b)] {
        for addr in addrs {
            let mut args = vec!["addr", "add", addr, "dev", "eth0"];
            if addr.contains(':') {
                args.push("nodad");
            }
            ns.exec("ip", &args)?;
        }
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            tracing::warn!("failed to delete network namespace {}: {e:#}", self.name);
        }
    }
}
