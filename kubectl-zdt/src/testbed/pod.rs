//! A pod's lifecycle in the testbed: the app as a real process in the pod's network namespace,
//! and its termination in the kubelet's order (preStop → SIGTERM → the app drains and closes its
//! listener → exit → sandbox and network namespace removed), with every mark's ground truth on
//! CLOCK_MONOTONIC.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
};

use anyhow::{Context as _, bail};
use nix::{sys::signal::Signal, unistd::Pid};

use super::node::PodHandle;
use crate::kernel::clock::Clock;

/// How the pod is configured, as in its spec.
#[derive(Clone, Debug, Default)]
pub struct PodSpec {
    pub port: u16,
    /// `lifecycle.preStop` sleeping this long (0: no preStop).
    pub prestop_ms: u64,
    /// The app keeps serving this long after SIGTERM.
    pub drain_ms: u64,
    /// The app holds connections unanswered (so they are reset at exit).
    pub hold: bool,
    /// The app serves each connection in a forked child that exits after its response, as
    /// busybox `httpd` does: the pod's processes exit all the time while it lives.
    pub fork_per_connection: bool,
    /// The app answers many requests per connection, and exits with them open once its
    /// listener is closed (requests sent meanwhile are reset at exit).
    pub keep_alive: bool,
    /// The app listens only this long after it started (no readiness probe would see it).
    pub listen_after_ms: u64,
}

/// Ground truth of one termination, CLOCK_MONOTONIC ns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Truth {
    pub delete: u64,
    /// The preStop exec happened between these two: just before the runtime was asked to run it,
    /// and the hook program's own first line.
    pub prestop_spawned: Option<u64>,
    pub prestop: Option<u64>,
    /// Just before kill(SIGTERM), and when it returned: the kernel's signal lies between.
    pub sigterm: u64,
    pub sigterm_returned: u64,
    /// The app's listener shutdown (LISTEN → CLOSE) lies between these two.
    pub listen_closing: u64,
    pub listen_closed: u64,
    /// The app's last line before exit(), and when the testbed reaped it: the kernel's exit lies
    /// between (thread teardown and scheduling on a loaded machine can take milliseconds).
    pub exit: u64,
    pub reaped: u64,
    /// `ip netns del` of the pod returned.
    pub netns_gone: Option<u64>,
    pub app_pid: u32,
    pub prestop_pid: Option<u32>,
}

/// The app process of a pod.
pub struct PodProcess {
    child: Child,
    lines: BufReader<ChildStdout>,
    pub spec: PodSpec,
    /// When the app's listener was open (just after `listen()`), CLOCK_MONOTONIC ns.
    pub listening: u64,
}

impl PodProcess {
    /// Starts `app_bin testbed-app` inside the pod's namespace and waits until it listens.
    pub fn start(pod: &PodHandle, app_bin: &Path, spec: PodSpec) -> anyhow::Result<Self> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", pod.ns.name()])
            .arg(app_bin)
            .args(["testbed-app", "--port", &spec.port.to_string()])
            .args(["--drain-ms", &spec.drain_ms.to_string()])
            .args(["--listen-after-ms", &spec.listen_after_ms.to_string()]);
        for (on, flag) in [
            (spec.hold, "--hold"),
            (spec.fork_per_connection, "--fork-per-connection"),
            (spec.keep_alive, "--keep-alive"),
        ] {
            if on {
                cmd.arg(flag);
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("failed to start the pod's app")?;
        let stdout = child.stdout.take().context("app has no stdout")?;
        let mut p = Self {
            child,
            lines: BufReader::new(stdout),
            spec,
            listening: 0,
        };
        if p.spec.listen_after_ms > 0 {
            p.expect("started")?;
        }
        p.listening = p.expect("ready")?;
        Ok(p)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn expect(&mut self, what: &str) -> anyhow::Result<u64> {
        let mut line = String::new();
        self.lines
            .read_line(&mut line)
            .with_context(|| format!("the pod's app died before `{what}`"))?;
        let (got, ns) = line.trim().split_once(' ').unwrap_or(("", ""));
        if got != what {
            bail!("the pod's app said {line:?}, expected `{what} <ns>`");
        }
        ns.parse()
            .with_context(|| format!("bad timestamp in {line:?}"))
    }

    /// Runs the kubelet's side of a deletion at `delete` (already recorded by the caller):
    /// preStop, SIGTERM, wait for the app to close and exit. The namespace is left to the
    /// caller (`Node::remove_pod`), which owns the pod.
    pub fn terminate(
        mut self,
        pod: &PodHandle,
        app_bin: &Path,
        delete: u64,
    ) -> anyhow::Result<Truth> {
        let mut truth = Truth {
            delete,
            app_pid: self.pid(),
            ..Truth::default()
        };
        if self.spec.prestop_ms > 0 {
            truth.prestop_spawned = Some(Clock::monotonic_now_ns());
            let mut hook = Command::new("ip")
                .args(["netns", "exec", pod.ns.name()])
                .arg(app_bin)
                .args([
                    "testbed-app",
                    "--prestop-sleep-ms",
                    &self.spec.prestop_ms.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .context("failed to run the preStop hook")?;
            truth.prestop_pid = Some(hook.id());
            let mut out = BufReader::new(hook.stdout.take().context("hook has no stdout")?);
            let mut line = String::new();
            out.read_line(&mut line)?;
            truth.prestop = line
                .trim()
                .strip_prefix("start ")
                .and_then(|n| n.parse().ok());
            hook.wait().context("preStop hook failed")?;
        }
        truth.sigterm = Clock::monotonic_now_ns();
        nix::sys::signal::kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM)
            .context("failed to send SIGTERM")?;
        truth.sigterm_returned = Clock::monotonic_now_ns();
        self.expect("sigterm")?;
        truth.listen_closing = self.expect("closing")?;
        truth.listen_closed = self.expect("closed")?;
        truth.exit = self.expect("exit")?;
        let status = self.child.wait().context("failed to reap the app")?;
        truth.reaped = Clock::monotonic_now_ns();
        if !status.success() {
            bail!("the pod's app exited with {status}");
        }
        Ok(truth)
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary that provides `testbed-app`: this executable, unless it is a test harness.
pub fn app_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(p) => Ok(p),
        None => std::env::current_exe().context("cannot find this executable"),
    }
}
