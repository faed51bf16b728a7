//! The userspace side of `cargo xtask bench` (issue 18), against the release binary:
//!
//! - the agent's idle footprint: `agent --standalone`, no traffic, VmRSS/VmHWM and CPU time
//!   (utime + stime from /proc/PID/stat) over `ZDT_BENCH_IDLE_SECS` (default 60 s) after it
//!   settled, printed against the targets (RSS ≤ 30 MB, CPU ≤ 0.5 % of a core);
//! - what a user would script instead of the dataplane watcher, "poll `iptables-save` every
//!   50 ms", against the watcher, on the same kube-proxy-like rule churn in one network
//!   namespace: CPU per hour of each and the timing error of each against the writer's truth.
//!
//! Benchmarks measure, they do not assert. Figures go to BENCHMARKS.md by hand.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};

use crate::cmd;

pub fn run() -> anyhow::Result<()> {
    cmd::run(cmd::cargo().args(["build", "--release", "--package", "kubectl-zdt"]))?;
    let bin = release_binary();
    let rounds = env_u64("ZDT_BENCH_ROUNDS", 3);
    idle_footprint(&bin, rounds, env_u64("ZDT_BENCH_IDLE_SECS", 60))?;
    sampler_vs_watcher(&bin, rounds)
}

/// `ZDT_BENCH_USER_ONLY=1`: run only these benchmarks.
pub fn only() -> bool {
    std::env::var_os("ZDT_BENCH_USER_ONLY").is_some()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn release_binary() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cmd::root().join("target"))
        .join("release/kubectl-zdt")
}

/// The kernel's clock ticks per second, the unit of /proc/PID/stat's times.
fn clock_ticks() -> anyhow::Result<f64> {
    cmd::output(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|s| s.trim().parse().ok())
        .context("`getconf CLK_TCK` failed: cannot convert /proc CPU times")
}

/// CPU seconds of `pid` from /proc/PID/stat: its own utime + stime, plus its waited-for
/// children's when `children`.
fn cpu_seconds(pid: u32, children: bool, ticks: f64) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime are fields 14..=17, i.e. 11..=14 from the state.
    let get = |i: usize| f.get(i).copied().unwrap_or(0.0);
    let own = get(11) + get(12);
    let kids = if children { get(13) + get(14) } else { 0.0 };
    Ok((own + kids) / ticks)
}

/// `VmRSS` and `VmHWM` of `pid`, in kB.
fn rss_kb(pid: u32) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// A child killed (SIGTERM, then waited) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the standalone agent (in `netns` when given) and returns it with its stdout lines,
/// collected by a thread with the wall-clock time each arrived.
fn start_agent(bin: &Path, netns: Option<&str>) -> anyhow::Result<(Guard, Lines)> {
    if !bin.exists() {
        bail!("{} is missing: the release build failed", bin.display());
    }
    let mut c = match netns {
        // nsenter, not `ip netns exec`: the latter remounts /sys, hiding bpffs and tracefs.
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let mut child = c
        .args(["agent", "--standalone"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("failed to start {}", bin.display()))?;
    let lines = collect_lines(child.stdout.take().context("no stdout")?);
    Ok((Guard(child), lines))
}

type Lines = Arc<Mutex<Vec<(f64, String)>>>;

fn collect_lines(out: impl std::io::Read + Send + 'static) -> Lines {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push((now(), line));
        }
    });
    lines
}

/// Wall-clock seconds since the epoch (the agent stamps observations in wall-clock time).
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Waits until the agent printed a line (it is then attached and announced).
fn wait_started(lines: &Lines, agent: &mut Guard) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while lines.lock().unwrap().is_empty() {
        if let Ok(Some(status)) = agent.0.try_wait() {
            bail!("the agent exited before it started ({status})");
        }
        if Instant::now() > deadline {
            bail!("the agent printed nothing in 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn idle_footprint(bin: &Path, rounds: u64, secs: u64) -> anyhow::Result<()> {
    let ticks = clock_ticks()?;
    println!("\n== agent idle footprint (standalone, no traffic, {secs} s after 10 s settling) ==");
    println!("round | VmRSS MB | VmHWM MB | CPU s | CPU % of a core | threads");
    for round in 1..=rounds {
        let (mut agent, lines) = start_agent(bin, None)?;
        wait_started(&lines, &mut agent)?;
        std::thread::sleep(Duration::from_secs(10));
        let pid = agent.0.id();
        let cpu0 = cpu_seconds(pid, false, ticks)?;
        let t0 = Instant::now();
        let mut rss_max = 0;
        for _ in 0..secs {
            std::thread::sleep(Duration::from_secs(1));
            rss_max = rss_max.max(rss_kb(pid)?.0);
        }
        let cpu = cpu_seconds(pid, false, ticks)? - cpu0;
        let wall = t0.elapsed().as_secs_f64();
        let (_, hwm) = rss_kb(pid)?;
        let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count())
            .unwrap_or(0);
        println!(
            "{round} | {:.1} | {:.1} | {cpu:.2} | {:.3} | {threads}",
            rss_max as f64 / 1000.0,
            hwm as f64 / 1000.0,
            100.0 * cpu / wall
        );
    }
    println!("targets: RSS <= 30 MB idle, CPU <= 0.5 % of a core");
    Ok(())
}

// ---- poll `iptables-save` every 50 ms vs the dataplane watcher ----

const NETNS: &str = "zdt-bench-sampler";
const ENDPOINTS: u32 = 5;

/// kube-proxy-like chain name for Service `i` (endpoint `e` for a KUBE-SEP chain).
fn chain(prefix: &str, i: u32, e: Option<u32>) -> String {
    let e = e.map(|e| e + 1).unwrap_or(0);
    format!("{prefix}{:08X}{:08X}", 0x5a5a_0000 ^ i, e)
}

fn cluster_ip(i: u32) -> String {
    format!("10.96.{}.{}", i / 250, i % 250 + 1)
}

fn endpoint(i: u32, e: u32) -> String {
    format!("10.244.{}.{}:8080", i / 50, (i % 50) * 5 + e + 1)
}

/// One `iptables-restore --noflush` transaction in kube-proxy's shapes: the KUBE-SERVICES jump
/// of every Service in `all`, and the chains of Service `changed` with `live` endpoints
/// (the other endpoint chains of it deleted).
fn restore_input(all: u32, changed: &[(u32, u32)]) -> String {
    use std::fmt::Write as _;
    let mut s = String::from("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    for &(i, _) in changed {
        let _ = writeln!(s, ":{} - [0:0]", chain("KUBE-SVC-", i, None));
        for e in 0..ENDPOINTS {
            let _ = writeln!(s, ":{} - [0:0]", chain("KUBE-SEP-", i, Some(e)));
        }
    }
    s.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
    for i in 0..all {
        let _ = writeln!(
            s,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"bench/svc-{i} cluster IP\" -m tcp --dport 80 -j {}",
            cluster_ip(i),
            chain("KUBE-SVC-", i, None)
        );
    }
    for &(i, live) in changed {
        let svc = chain("KUBE-SVC-", i, None);
        for e in 0..live {
            let sep = chain("KUBE-SEP-", i, Some(e));
            let left = live - e;
            let ep = endpoint(i, e);
            if left > 1 {
                let _ = writeln!(
                    s,
                    "-A {svc} -m comment --comment \"bench/svc-{i} -> {ep}\" -m statistic --mode random --probability {:.11} -j {sep}",
                    1.0 / f64::from(left)
                );
            } else {
                let _ = writeln!(
                    s,
                    "-A {svc} -m comment --comment \"bench/svc-{i} -> {ep}\" -j {sep}"
                );
            }
        }
        for e in 0..ENDPOINTS {
            let sep = chain("KUBE-SEP-", i, Some(e));
            if e < live {
                let ep = endpoint(i, e);
                let _ = writeln!(
                    s,
                    "-A {sep} -p tcp -m comment --comment \"bench/svc-{i}\" -m tcp -j DNAT --to-destination {ep}"
                );
            } else {
                let _ = writeln!(s, "-X {sep}");
            }
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// Runs `iptables-restore --noflush` in the namespace with `input`.
fn restore(input: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", NETNS, "iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to start iptables-restore (Debian's iptables package)")?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes the namespace when dropped.
struct Netns;

impl Netns {
    fn create() -> anyhow::Result<Self> {
        let _ = Command::new("ip")
            .args(["netns", "del", NETNS])
            .stderr(Stdio::null())
            .status();
        cmd::run(Command::new("ip").args(["netns", "add", NETNS]))?;
        Ok(Self)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
    }
}

/// What a user would script: save the nat table every 50 ms, print the time when it changed.
const SAMPLER: &str = "prev=; while :; do \
cur=$(iptables-save -t nat | grep -v '^#' | md5sum); \
if [ \"$cur\" != \"$prev\" ]; then date +%s.%N; prev=$cur; fi; \
sleep 0.05; done";

fn sampler_vs_watcher(bin: &Path, rounds: u64) -> anyhow::Result<()> {
    for tool in ["iptables-save", "iptables-restore", "nsenter", "md5sum"] {
        if cmd::output(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_none() {
            bail!("{tool} is missing: run `sudo ./x setup` (Debian's iptables, util-linux)");
        }
    }
    let services = env_u64("ZDT_BENCH_SERVICES", 200) as u32;
    let changes = env_u64("ZDT_BENCH_CHANGES", 60) as u32;
    let ticks = clock_ticks()?;
    let backend = cmd::output(Command::new("iptables-save").arg("--version")).unwrap_or_default();
    println!(
        "\n== poll `iptables-save` every 50 ms vs the dataplane watcher: {services} Services x {ENDPOINTS} endpoints, {changes} endpoint changes ~1 s apart ({}) ==",
        backend.trim()
    );
    for round in 1..=rounds {
        let _ns = Netns::create()?;
        let all: Vec<(u32, u32)> = (0..services).map(|i| (i, ENDPOINTS)).collect();
        let mut first = String::from(
            "*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n",
        );
        first.push_str(&restore_input(services, &all));
        restore(&first)?;
        let (mut agent, lines) = start_agent(bin, Some(NETNS))?;
        wait_started(&lines, &mut agent)?;
        let sampler = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{NETNS}"))
            .args(["sh", "-c", SAMPLER])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("failed to start the sampler")?;
        let mut sampler = Guard(sampler);
        let sampled = collect_lines(sampler.0.stdout.take().context("no stdout")?);
        // Let the watcher read the table and the sampler take its first save.
        std::thread::sleep(Duration::from_secs(5));
        let (apid, spid) = (agent.0.id(), sampler.0.id());
        let (a0, s0, t0) = (
            cpu_seconds(apid, false, ticks)?,
            cpu_seconds(spid, true, ticks)?,
            Instant::now(),
        );
        // (start, end) of each restore: the change is committed in between.
        let mut truth = Vec::new();
        for c in 0..changes {
            let i = (c / 2) % services;
            let live = if c % 2 == 0 { ENDPOINTS - 1 } else { ENDPOINTS };
            let input = restore_input(services, &[(i, live)]);
            let start = now();
            restore(&input)?;
            truth.push((start, now()));
            // ~1 s apart, off the sampler's 50 ms grid.
            std::thread::sleep(Duration::from_millis(1000 + u64::from(c * 7 % 50)));
        }
        std::thread::sleep(Duration::from_millis(500));
        let wall = t0.elapsed().as_secs_f64();
        let agent_cpu = cpu_seconds(apid, false, ticks)? - a0;
        let sampler_cpu = cpu_seconds(spid, true, ticks)? - s0;
        drop(sampler);
        drop(agent);
        let sampled: Vec<f64> = sampled
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, l)| l.trim().parse().ok())
            .collect();
        let watched: Vec<(f64, f64)> = lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains("\"kind\":\"dataplane_"))
            .filter_map(|(_, l)| watcher_stamp(l))
            .collect();
        let s_err = errors(&truth, &sampled);
        let w_err = errors(&truth, &watched.iter().map(|w| w.0).collect::<Vec<_>>());
        let w_rep = errors(&truth, &watched.iter().map(|w| w.1).collect::<Vec<_>>());
        let per_hour = |cpu: f64| cpu * 3600.0 / wall;
        let restore_ms: Vec<f64> = truth.iter().map(|(s, e)| (e - s) * 1e3).collect();
        println!(
            "round {round}: {wall:.0} s; restore took {} ms",
            spread(&restore_ms)
        );
        println!(
            "  CPU per hour: sampler {:.0} s ({:.2} % of a core), agent with watcher {:.1} s ({:.3} %); ratio {:.0}x",
            per_hour(sampler_cpu),
            100.0 * sampler_cpu / wall,
            per_hour(agent_cpu),
            100.0 * agent_cpu / wall,
            sampler_cpu / agent_cpu.max(1e-9)
        );
        println!(
            "  error vs the restore's exit, ms (median / p99 / max; found of {changes}): sampler detected {} ; watcher stamp {} ; watcher reported {}",
            spread_of(&s_err),
            spread_of(&w_err),
            spread_of(&w_rep)
        );
        if let (Some(s), Some(w)) = (median(&s_err.0), median(&w_err.0)) {
            println!(
                "  median |error|: sampler / watcher stamp = {:.1} / {:.2} ms ({:.0}x)",
                s.abs(),
                w.abs(),
                s.abs() / w.abs().max(1e-3)
            );
        }
    }
    Ok(())
}

/// The observation's `time` (its stamp) and `time` + `detect_ns` (when it was reported), in
/// seconds since the epoch.
fn watcher_stamp(line: &str) -> Option<(f64, f64)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let t = rfc3339_seconds(v.get("time")?.as_str()?)?;
    let detect = v.get("detect_ns").and_then(|d| d.as_f64()).unwrap_or(0.0);
    Some((t, t + detect / 1e9))
}

/// `2026-12-06T17:12:55.638005116Z` → seconds since the epoch (UTC only, as the agent writes).
fn rfc3339_seconds(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, mi) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + mi * 60.0 + sec)
}

/// For each change, the first time in `seen` inside [its restore's start, the next one's):
/// that time minus the restore's exit, in ms; and how many changes were found.
fn errors(truth: &[(f64, f64)], seen: &[f64]) -> (Vec<f64>, usize) {
    let mut out = Vec::new();
    for (k, (start, end)) in truth.iter().enumerate() {
        let next = truth.get(k + 1).map(|t| t.0).unwrap_or(f64::MAX);
        if let Some(t) = seen.iter().copied().find(|t| *t >= *start && *t < next) {
            out.push((t - end) * 1e3);
        }
    }
    let n = out.len();
    (out, n)
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

fn median(v: &[f64]) -> Option<f64> {
    let v = sorted(v);
    v.get(v.len() / 2).copied()
}

fn spread(v: &[f64]) -> String {
    let v = sorted(v);
    if v.is_empty() {
        return "none".to_owned();
    }
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!("{:.1} / {:.1} / {:.1}", at(0.5), at(0.99), at(1.0))
}

fn spread_of((v, n): &(Vec<f64>, usize)) -> String {
    format!("{} ({n})", spread(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_read_as_utc_seconds() {
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0.0));
        let t = rfc3339_seconds("2026-12-06T17:12:55.5Z").unwrap();
        // `date -u -d 2026-12-06T17:12:55Z +%s`
        assert!((t - 1_796_577_175.5).abs() < 1e-6, "{t}");
    }

    #[test]
    fn each_change_takes_the_first_sighting_after_its_start() {
        let truth = [(10.0, 10.1), (20.0, 20.1)];
        let (e, n) = errors(&truth, &[9.0, 10.15, 10.2, 20.05, 30.0]);
        assert_eq!(n, 2);
        assert!(
            (e[0] - 50.0).abs() < 1e-6 && (e[1] + 50.0).abs() < 1e-6,
            "{e:?}"
        );
    }
}
