//! Shared by both integration-test binaries (`offline` and `kernel`): the API server double,
//! the recorded rollouts, an agent's HTTP endpoint, and for the kernel tests the root check and
//! the agent as a child process.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod kube_double;
pub mod recorded;

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    time::Duration,
};

use kubectl_zdt::{
    agent::{
        backlog::Backlog,
        serve::{AgentServer, Gauges},
    },
    observation::{Kind, NodeName, Observation},
};

/// The kernel tests load eBPF programs, create network namespaces and write nf_tables and
/// x_tables rules. Without root they fail, loudly: a silently skipped kernel test is a test that
/// cannot fail.
#[track_caller]
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (eBPF programs, network namespaces, nf_tables and x_tables rules): \
         run it as root (`sudo ./x test`)"
    );
}

/// A node's agent as `kubectl zdt` reaches it: the agent's HTTP endpoint for `node`, serving
/// `journal` and `gauges` on a loopback port (returned) until the runtime ends. Port-forward a
/// double's agent pod to it.
pub async fn agent_endpoint(
    node: &str,
    journal: std::sync::Arc<Backlog>,
    gauges: std::sync::Arc<Gauges>,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let endpoint = AgentServer {
        node: NodeName(node.into()),
        journal,
        gauges,
    };
    tokio::spawn(endpoint.serve(listener));
    addr
}

/// `kubectl-zdt agent --standalone` as a child; killed on drop if still running.
pub struct AgentProcess {
    child: Child,
    lines: Receiver<String>,
    pub seen: Vec<Observation>,
}

impl AgentProcess {
    /// Starts the agent and waits for its `agent_start` line (probes attached).
    pub fn start(args: &[&str]) -> Self {
        Self::start_in(None, args)
    }

    /// The same, with the agent in network namespace `netns` (the node's, as with hostNetwork).
    pub fn start_in(netns: Option<&str>, args: &[&str]) -> Self {
        let bin = env!("CARGO_BIN_EXE_kubectl-zdt");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(["agent", "--standalone"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("failed to start kubectl-zdt agent");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut agent = Self {
            child,
            lines,
            seen: Vec::new(),
        };
        let first = agent
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the agent printed nothing within 30 s");
        let hello: Observation =
            serde_json::from_str(&first).expect("agent_start is an observation");
        assert_eq!(hello.kind, Kind::AgentStart, "first line: {first}");
        agent.seen.push(hello);
        agent
    }

    /// Stops the agent with SIGINT (it drains the kernel's buffers first) and returns every
    /// observation it printed.
    pub fn stop(mut self) -> Vec<Observation> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT the agent");
        let status = self.child.wait().expect("wait for the agent");
        assert!(status.success(), "agent exited with {status}");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            let o: Observation = serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("agent printed a line that is not an observation ({e}): {line}")
            });
            self.seen.push(o);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of `count` (1 when absent) over observations matching `pred`.
pub fn total(obs: &[Observation], pred: impl Fn(&Observation) -> bool) -> u64 {
    obs.iter()
        .filter(|o| pred(o))
        .map(Observation::weight)
        .sum()
}

/// Events the ring buffer had no room for (`loss` lines other than the kernel's skips, which
/// no aggregated line follows).
pub fn ring_buffer_lost(obs: &[Observation]) -> u64 {
    total(obs, |o| {
        o.kind == Kind::Loss
            && o.reason.as_deref() != Some(kubectl_zdt::observation::KERNEL_SKIPPED)
    })
}

/// How far (ms, signed) an observation's wall time is from a CLOCK_MONOTONIC ground truth.
pub fn off_ms(o: &Observation, truth_mono_ns: u64) -> f64 {
    let clock = kubectl_zdt::kernel::clock::Clock::measure();
    let truth = clock.to_wall(truth_mono_ns);
    (o.time - truth)
        .total(jiff::Unit::Nanosecond)
        .unwrap_or(f64::MAX)
        / 1e6
}

/// The observations of `kind` in `obs`.
pub fn of_kind(obs: &[Observation], kind: Kind) -> Vec<&Observation> {
    obs.iter().filter(|o| o.kind == kind).collect()
}

/// The `netns` field of an observation.
pub fn netns_of(o: &Observation) -> Option<u64> {
    o.details.kernel().netns
}

/// Inode of a network namespace path.
pub fn inode(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).expect("netns path").ino()
}

/// Every connection attempt was refused (`ECONNREFUSED`).
pub fn assert_all_refused(outcomes: &[Result<(), String>]) {
    assert!(
        outcomes
            .iter()
            .all(|r| r.as_ref().err().map(String::as_str) == Some("ECONNREFUSED")),
        "{outcomes:?}"
    );
}

/// Waits until `done` (at most 10 s): the first request a forking app answers can take seconds
/// on a loaded machine, and a namespace's links go after it is deleted.
pub fn wait_until(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline && !done() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A property's case count: `ci` cases in CI's quick run, `PROPTEST_CASES` when set (the
/// longer run, `cargo xtask test`'s last step). A count written into the config alone would
/// ignore the variable (proptest reads it only for its default).
pub fn cases(ci: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ci);
    proptest::test_runner::Config {
        cases,
        ..proptest::test_runner::Config::default()
    }
}
