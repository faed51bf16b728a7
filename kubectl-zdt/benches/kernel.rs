//! Kernel-side benchmarks (root; `cargo xtask bench` runs them): cost per event of each probe
//! from the kernel's own bpf_stats, side by side with the bpftrace one-liners a user would run
//! instead (same tracepoints, same refused connections between two namespaces; bpftrace must be
//! installed: `cargo xtask bench` installs it), the connection rate kept with the agent
//! watching all traffic (paired windows, `support/connrate.rs`), refused-connection storms from
//! a raw-socket and an `AF_PACKET` SYN flood (per-pod totals against the generator's and the
//! kernel's own counts, loss reported; the fast one also without the agent: the machine's
//! ceiling), and the agent's memory and idle CPU. `ZDT_BENCH_ONLY` runs some sections only
//! ([`section`]). Programs are told apart by the descriptors their process holds, so other
//! agents on the machine do not count. Prints a Markdown table for BENCHMARKS.md. Numbers are
//! measured, never asserted: a benchmark reports, tests decide.

use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{programs::loaded_programs, sys::Stats};
#[path = "support/connrate.rs"]
mod connrate;

use kubectl_zdt::{
    agent::{Agent, AgentConfig},
    observation::{Kind, NodeName},
    testbed::Netns,
};

/// (run_time_ns, run_count) per program name (the kernel keeps 15 characters of it).
fn prog_stats() -> Vec<(String, u64, u64)> {
    loaded_programs()
        .filter_map(Result::ok)
        .map(|p| {
            (
                p.name_as_str().unwrap_or("").to_owned(),
                p.run_time().as_nanos() as u64,
                p.run_count(),
            )
        })
        .collect()
}

/// The kernel's run-time accounting of eBPF programs, on while the result is held.
fn enable_stats() -> anyhow::Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS failed")
}

/// [`prog_stats`] of the programs this process holds (the agent's, while it runs).
fn own_stats() -> anyhow::Result<Vec<(String, u64, u64)>> {
    let held = programs_held_by(std::process::id())?;
    Ok(loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| held.contains(&p.id()))
        .map(|p| {
            (
                p.name_as_str().unwrap_or("").to_owned(),
                p.run_time().as_nanos() as u64,
                p.run_count(),
            )
        })
        .collect())
}

fn stat_of(stats: &[(String, u64, u64)], prog: &str) -> (u64, u64) {
    let short: String = prog.chars().take(15).collect();
    stats
        .iter()
        .filter(|(n, _, _)| *n == short)
        .fold((0, 0), |(t, c), (_, dt, dc)| (t + dt, c + dc))
}

fn per_event(
    before: &[(String, u64, u64)],
    after: &[(String, u64, u64)],
    prog: &str,
) -> (f64, u64) {
    let (t0, c0) = stat_of(before, prog);
    let (t1, c1) = stat_of(after, prog);
    let n = c1.saturating_sub(c0);
    ((t1.saturating_sub(t0)) as f64 / n.max(1) as f64, n)
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    counted: tokio::task::JoinHandle<Counted>,
}

/// What the agent reported: refused connections (delivered + aggregated lost), per address
/// too, and loss.
#[derive(Default)]
struct Counted {
    refused: u64,
    lost: u64,
    refused_of: std::collections::HashMap<std::net::IpAddr, u64>,
}

/// Starts the agent in-process; counts refused (including aggregated lost) and loss.
fn start_agent(rt: &tokio::runtime::Runtime, watch: &str) -> anyhow::Result<Running> {
    start_agent_with(rt, watch, zdt_common::maps::EVENTS_BYTES)
}

/// The same with a ring buffer of `ringbuf_bytes`; `watch` lists CIDRs, comma-separated.
fn start_agent_with(
    rt: &tokio::runtime::Runtime,
    watch: &str,
    ringbuf_bytes: u32,
) -> anyhow::Result<Running> {
    let watch = watch
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = AgentConfig::new(NodeName("bench".into()), watch);
    config.ringbuf_bytes = ringbuf_bytes;
    // Its dataplane triggers armed as the agent arms them for its node's namespace: one of
    // an iptables-nft or nftables node here.
    let agent = armed_for_a_node(Agent::start(&config)?, false)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(65536);
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(agent.run(tx, async {
        let _ = stop_rx.await;
    }));
    let counted = rt.spawn(async move {
        let mut c = Counted::default();
        while let Some(o) = rx.recv().await {
            match o.kind {
                Kind::Refused => {
                    c.refused += o.weight();
                    if let Some(ip) = o.ip {
                        *c.refused_of.entry(ip).or_default() += o.weight();
                    }
                }
                Kind::Loss => c.lost += o.weight(),
                _ => {}
            }
        }
        c
    });
    Ok(Running {
        stop,
        task,
        counted,
    })
}

/// The agent with its dataplane triggers armed (no IPVS) for a new network namespace standing
/// for its node's, with an iptables-legacy `nat` table (`legacy_table`: a node whose kube-proxy
/// uses iptables-legacy) or none (iptables-nft, nftables). On the syscalls' tracepoints the
/// x_tables pair is attached only with one. A new namespace, not this one: a table once made
/// stays listed in a namespace until it goes.
fn armed_for_a_node(agent: Agent, legacy_table: bool) -> anyhow::Result<Agent> {
    let node = Netns::create("node")?;
    if legacy_table {
        // Listing the table makes it (x_tables instantiates built-in tables on first use).
        node.exec("iptables-legacy", &["-t", "nat", "-S"])?;
    }
    node.run_in(move || {
        let mut agent = agent;
        let netns =
            kubectl_zdt::agent::netns_inode(std::path::Path::new("/proc/thread-self/ns/net"))?;
        agent.arm_dataplane(&kubectl_zdt::dataplane::watcher::Arm {
            netns,
            ipvs_family: None,
        })?;
        Ok(agent)
    })?
}

fn stop_agent(rt: &tokio::runtime::Runtime, r: Running) -> anyhow::Result<Counted> {
    let _ = r.stop.send(());
    rt.block_on(r.task)??;
    Ok(rt.block_on(r.counted)?)
}

/// RSS (kB) and CPU seconds of a standalone agent process left idle for `secs`.
fn idle_agent(secs: u64) -> anyhow::Result<(u64, f64)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
        .args(["agent", "--standalone", "--watch-cidr", "198.18.250.1/32"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("failed to start the agent")?;
    let mut first = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut first)?;
    let pid = child.id();
    let cpu = || -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: u64 = f.get(11).context("utime")?.parse::<u64>()?
            + f.get(12).context("stime")?.parse::<u64>()?;
        Ok(ticks as f64 / 100.0)
    };
    let before = cpu()?;
    std::thread::sleep(Duration::from_secs(secs));
    let used = cpu()? - before;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    Ok((rss, used))
}

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the kernel benchmarks load eBPF programs: run `sudo cargo xtask bench`");
    }
    // Criterion-style filters passed by `cargo bench` are ignored: this harness runs everything.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    println!("| measurement | value |\n|---|---|");
    // Before the kernel's run-time accounting is on: it adds two clock reads to every program
    // run, which the connection rate would count against the agent.
    if section("connrate") {
        connect_close(&rt, false)?;
    }
    if section("connrate-control") {
        connect_close(&rt, true)?;
    }
    let _stats = enable_stats()?;
    // 2. Per refused connection between two namespaces: kubectl-zdt's programs against
    //    bpftrace one-liners on the same tracepoints and traffic; then a storm.
    if section("refusals") || section("refusals-zdt") {
        side_by_side(&rt, !section("refusals"))?;
    }
    if section("storm") {
        // The default ring buffer, then one that cannot keep up: its loss is counted, not
        // silent.
        storm(&rt, zdt_common::maps::EVENTS_BYTES, Flood::Raw, true)?;
        storm(&rt, 64 * 1024, Flood::Raw, true)?;
    }
    if section("storm") || section("storm-fast") {
        // The fastest generator this machine has, without and with the agent.
        storm(&rt, zdt_common::maps::EVENTS_BYTES, Flood::Packet, false)?;
        storm(&rt, zdt_common::maps::EVENTS_BYTES, Flood::Packet, true)?;
    }
    if section("idle") {
        // 3. The agent process idle.
        let (rss_kb, cpu_s) = idle_agent(10)?;
        println!("| agent RSS, idle | {:.1} MB |", rss_kb as f64 / 1024.0);
        println!(
            "| agent CPU, idle 10 s | {:.2} % of a core |",
            100.0 * cpu_s / 10.0
        );
    }
    if section("triggers") {
        // 4. What the dataplane triggers cost the node's other work: every sendto of the node
        //    and every per-CPU allocation passes through them.
        trigger_costs()?;
    }
    Ok(())
}

/// Whether the section `name` runs: all do unless `ZDT_BENCH_ONLY` lists some (comma
/// separated: connrate, connrate-control (the same with no agent in either window: the
/// method's own spread), refusals, refusals-zdt (kubectl-zdt only, no bpftrace), storm,
/// storm-fast, idle, triggers).
fn section(name: &str) -> bool {
    match std::env::var("ZDT_BENCH_ONLY") {
        Ok(only) => only.split(',').any(|s| s.trim() == name),
        Err(_) => !matches!(name, "refusals-zdt" | "storm-fast" | "connrate-control"),
    }
}

/// The connection rate kept while the agent watches all traffic (`support/connrate.rs`):
/// pairs of windows (`ZDT_CONNRATE_PAIRS`, 60; `ZDT_CONNRATE_MS` each, 1 000), agent off and on
/// in alternating order, on one generator that runs throughout, with the kernel's run-time
/// accounting off; the median on/off ratio with its 95 % interval, of connections per second
/// and per second of busy CPU; then the kernel time of the agent's programs per connection
/// (bpf_stats) in one more window. `ZDT_CONNRATE_TRACE` prints every window.
fn connect_close(rt: &tokio::runtime::Runtime, control: bool) -> anyhow::Result<()> {
    let pairs = connrate::env_count("ZDT_CONNRATE_PAIRS", 60);
    let secs = connrate::env_count("ZDT_CONNRATE_MS", 1000) as f64 / 1000.0;
    const SETTLE: Duration = Duration::from_secs(1);
    let (client, server, _, server_ip) = connrate::namespaces("connrate", "198.18.239")?;
    let to = SocketAddr::new(server_ip.into(), 8080);
    let generator = connrate::Generator::start(client, &server, to)?;
    // Warm up: the first second's rate is the listener's and the caches' start.
    generator.rate(1.0);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let (mut ratios, mut busy_ratios) = (Vec::new(), Vec::new());
    let mut running = None;
    for pair in 0..pairs {
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let mut w = [None; 2];
        for agent_on in order {
            match (agent_on && !control, running.is_some()) {
                (true, false) => {
                    // Everything between the two namespaces is watched.
                    running = Some(start_agent(rt, "198.18.239.0/24")?);
                    // Past its start-up work (the dataplane watcher's first reads).
                    std::thread::sleep(SETTLE);
                }
                (false, true) => {
                    if let Some(r) = running.take() {
                        stop_agent(rt, r)?;
                    }
                    std::thread::sleep(SETTLE);
                }
                _ => {}
            }
            let window = generator.window(secs);
            if std::env::var_os("ZDT_CONNRATE_TRACE").is_some() {
                eprintln!("window {pair} agent {agent_on}: {window:?}");
            }
            if agent_on {
                on.push(window.per_s);
            } else {
                off.push(window.per_s);
            }
            w[usize::from(agent_on)] = Some(window);
        }
        if let [Some(w_off), Some(w_on)] = w {
            ratios.push(w_on.per_s / w_off.per_s);
            busy_ratios.push(w_on.per_busy_s / w_off.per_busy_s);
        }
    }
    let errors = generator.errors();
    let threads = format!(
        "{} client + {} server threads, pinned",
        connrate::clients(),
        connrate::servers()
    );
    let (m, lo, hi) = connrate::median_ci(&mut ratios)?;
    let (b, b_lo, b_hi) = connrate::median_ci(&mut busy_ratios)?;
    if control {
        println!(
            "| control: no agent in either window, median of {pairs} paired ratios of {secs} s windows [95 % CI] ({threads}) | per second {:.1} % [{:.1}, {:.1}]; per busy CPU second {:.1} % [{:.1}, {:.1}] |",
            100.0 * m,
            100.0 * lo,
            100.0 * hi,
            100.0 * b,
            100.0 * b_lo,
            100.0 * b_hi
        );
        return generator.stop();
    }
    // Then one window with the kernel's accounting on: what the agent's programs cost per
    // connection, and per event of the hook that fires most (about 10 times a connection).
    let running = match running {
        Some(r) => r,
        None => start_agent(rt, "198.18.239.0/24")?,
    };
    let stats = enable_stats()?;
    // This process's programs only: other tracers may run on the machine.
    let before = own_stats()?;
    let r = generator.rate(secs);
    let after = own_stats()?;
    drop(stats);
    stop_agent(rt, running)?;
    let total = |s: &[(String, u64, u64)]| s.iter().map(|(_, t, _)| t).sum::<u64>();
    let prog_ns = total(&after).saturating_sub(total(&before)) as f64 / (r * secs).max(1.0);
    let set_state = per_event(&before, &after, "inet_sock_set_state");
    generator.stop()?;
    let (m_off, _, _) = connrate::median_ci(&mut off)?;
    let (m_on, _, _) = connrate::median_ci(&mut on)?;
    println!(
        "| connections/s between two namespaces ({threads}), agent off / on watching all of it (median of {pairs} windows of {secs} s each) | {m_off:.0} / {m_on:.0} ({errors} failed connects) |"
    );
    println!(
        "| rate kept with the agent, median of {pairs} paired on/off ratios [95 % CI]: per second / per busy CPU second | **{:.1} %** [{:.1}, {:.1}] / **{:.1} %** [{:.1}, {:.1}] |",
        100.0 * m,
        100.0 * lo,
        100.0 * hi,
        100.0 * b,
        100.0 * b_lo,
        100.0 * b_hi
    );
    println!(
        "| kernel time in the agent's eBPF programs per connection (bpf_stats, one more window) / inet_sock_set_state per event | {prog_ns:.0} ns / {:.0} ns ({} events, {:.1} per connection) |",
        set_state.0,
        set_state.1,
        set_state.1 as f64 / (r * secs).max(1.0)
    );
    Ok(())
}

/// A generic-netlink family id no family holds on this kernel (it has no IPVS): arming the
/// IPVS trigger with it makes every send take the armed path without ever matching.
const UNUSED_FAMILY: u16 = 0x7ff0;

/// Per-event cost of the IPVS trigger on ordinary sends (UDP datagrams on loopback), disarmed
/// and armed, and of the x_tables swap-bound programs on per-CPU allocations that are not a
/// replace's (per-CPU BPF maps created by this process).
fn trigger_costs() -> anyhow::Result<()> {
    let config = AgentConfig::new(NodeName("bench".into()), vec!["198.18.250.1/32".parse()?]);
    let mut agent = Agent::start(&config)?;
    let sends = 200_000;
    for armed in [false, true] {
        if armed {
            let netns =
                kubectl_zdt::agent::netns_inode(std::path::Path::new("/proc/thread-self/ns/net"))?;
            agent.arm_dataplane(&kubectl_zdt::dataplane::watcher::Arm {
                netns,
                ipvs_family: Some(UNUSED_FAMILY),
            })?;
        }
        let before = prog_stats();
        udp_sends(sends)?;
        let after = prog_stats();
        let state = if armed { "armed" } else { "disarmed" };
        for prog in ["sys_enter_sendto", "sys_exit_sendto"] {
            let (ns, n) = per_event(&before, &after, prog);
            if n == 0 && !armed {
                // Only attached once armed: a node without IPVS has no program on its sends.
                println!("| IPVS trigger, {prog} per UDP send, {state} | not attached (0 ns) |");
            } else {
                println!(
                    "| IPVS trigger, {prog} per UDP send, {state} | {ns:.0} ns ({n} events) |"
                );
            }
        }
    }
    let maps = 20_000;
    let before = prog_stats();
    percpu_maps(maps)?;
    let after = prog_stats();
    let (ns, n) = per_event(&before, &after, "percpu_alloc_percpu");
    println!(
        "| x_tables swap bound, percpu_alloc_percpu outside a replace | {ns:.0} ns ({n} events) |"
    );
    let (ns, n) = per_event(&before, &after, "percpu_free_percpu");
    println!(
        "| x_tables swap bound, percpu_free_percpu outside a replace | {ns:.0} ns ({n} events) |"
    );
    drop(agent);
    syscall_tax(10, 200_000, false)?;
    syscall_tax(10, 200_000, true)
}

/// What every syscall of the node pays while the agent runs, whichever syscall it is: a
/// program on a `syscalls:` tracepoint (the dataplane triggers' fallback, where the kernel
/// refuses fentry) sends every syscall of every process through the kernel's traced entry and
/// exit; the row says which hooks the agent got. The agent is armed for a namespace with an
/// iptables-legacy `nat` table (`legacy_table`) or without (as on an iptables-nft or nftables
/// node): on the tracepoints the x_tables pair is attached only with one. `rounds` pairs of `n` `getppid` calls on CPU 0, agent off then
/// on (started for each round); the median of the per-call times and of the paired ratios with
/// its 95 % interval.
fn syscall_tax(rounds: usize, n: u32, legacy_table: bool) -> anyhow::Result<()> {
    let per_call = move || -> anyhow::Result<f64> {
        std::thread::spawn(move || {
            connrate::pin(0);
            let started = Instant::now();
            for _ in 0..n {
                // SAFETY: getppid takes no argument and cannot fail.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
            started.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the syscall loop panicked"))
    };
    let config = AgentConfig::new(NodeName("bench".into()), vec!["198.18.250.1/32".parse()?]);
    let (mut off, mut on, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut hook = "";
    for _ in 0..rounds {
        let without = per_call()?;
        let agent = armed_for_a_node(Agent::start(&config)?, legacy_table)?;
        let linked = agent.linked_programs();
        hook = if linked.iter().any(|p| p == "setsockopt_entry") {
            "triggers on kernel functions (fentry)"
        } else if linked.iter().any(|p| p == "sys_enter_setsockopt") {
            "triggers on syscall tracepoints, armed for a namespace with an iptables-legacy nat table"
        } else {
            "triggers on syscall tracepoints, waiting: no iptables-legacy nat table"
        };
        // Past its start-up work.
        std::thread::sleep(Duration::from_millis(500));
        let with = per_call()?;
        drop(agent);
        std::thread::sleep(Duration::from_millis(200));
        off.push(without);
        on.push(with);
        ratios.push(with / without);
    }
    let (m_off, _, _) = connrate::median_ci(&mut off)?;
    let (m_on, _, _) = connrate::median_ci(&mut on)?;
    let (m, lo, hi) = connrate::median_ci(&mut ratios)?;
    println!(
        "| any syscall of the node (`getppid`, CPU 0), agent off / on ({hook}), median of {rounds} rounds of {n}; on ÷ off [95 % CI] | {m_off:.0} ns / {m_on:.0} ns; {:.1} % [{:.1}, {:.1}] |",
        100.0 * m,
        100.0 * lo,
        100.0 * hi
    );
    Ok(())
}

/// `n` 64-byte UDP datagrams to a socket of this process on loopback, one `sendto` each.
fn udp_sends(n: u32) -> anyhow::Result<()> {
    let rx = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let to = rx.local_addr()?;
    let tx = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut buf = [0u8; 64];
    for i in 0..n {
        tx.send_to(&[0x5a; 64], to)?;
        if i % 64 == 63 {
            // Keep the receive queue short.
            rx.set_nonblocking(true)?;
            while rx.recv(&mut buf).is_ok() {}
        }
    }
    Ok(())
}

/// Creates and closes `n` per-CPU array maps: each allocates per-CPU memory in this task.
fn percpu_maps(n: u32) -> anyhow::Result<()> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
    let mut attr = [0u32; 32];
    attr[0] = 6; // BPF_MAP_TYPE_PERCPU_ARRAY
    attr[1] = 4;
    attr[2] = 8;
    attr[3] = 1;
    for _ in 0..n {
        // SAFETY: BPF_MAP_CREATE (0) reads `attr`, a zero-padded bpf_attr of the stated size.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                0,
                attr.as_ptr(),
                std::mem::size_of_val(&attr) as u32,
            )
        };
        if fd < 0 {
            bail!("BPF_MAP_CREATE failed: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor this loop just got and closes once.
        unsafe { libc::close(fd as i32) };
    }
    Ok(())
}

/// Ids of every eBPF program loaded now.
fn program_ids() -> std::collections::HashSet<u32> {
    loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// The programs loaded since `before` and held by process `pid` (its descriptors'
/// `prog_id`: the machine may run other agents meanwhile) whose (kernel, 15-character) name
/// starts one of `names`, by that name, in the order of `names`: the tracer this bench just
/// started.
fn own_programs(
    before: &std::collections::HashSet<u32>,
    pid: u32,
    names: &[&str],
) -> anyhow::Result<Vec<(String, u32)>> {
    let held = programs_held_by(pid)?;
    let mut found = Vec::new();
    for p in loaded_programs().filter_map(Result::ok) {
        let name = p.name_as_str().unwrap_or("").to_owned();
        if before.contains(&p.id()) || !held.contains(&p.id()) {
            continue;
        }
        if let Some(n) = names.iter().find(|n| {
            let short: String = n.chars().take(15).collect();
            name == short
        }) {
            if found.iter().any(|(m, _)| m == n) {
                bail!("process {pid} loaded two programs named {name}");
            }
            found.push(((*n).to_owned(), p.id()));
        }
    }
    found.sort_by_key(|(n, _)| names.iter().position(|m| m == n));
    for n in names {
        if !found.iter().any(|(m, _)| m == n) {
            let new: Vec<String> = loaded_programs()
                .filter_map(Result::ok)
                .filter(|p| !before.contains(&p.id()))
                .map(|p| p.name_as_str().unwrap_or("").to_owned())
                .collect();
            bail!("the tracer loaded no program named {n} (new programs: {new:?})");
        }
    }
    Ok(found)
}

/// Ids of the eBPF programs whose descriptors process `pid` holds.
fn programs_held_by(pid: u32) -> anyhow::Result<std::collections::HashSet<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = std::collections::HashSet::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot read {dir}"))? {
        let Ok(info) = std::fs::read_to_string(entry?.path()) else {
            continue; // closed meanwhile
        };
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            ids.insert(id);
        }
    }
    Ok(ids)
}

/// (run_time_ns, run_cnt) of each of `progs`, in their order.
fn run_stats(progs: &[(String, u32)]) -> Vec<(u64, u64)> {
    let all: Vec<_> = loaded_programs().filter_map(Result::ok).collect();
    progs
        .iter()
        .map(|(_, id)| {
            all.iter()
                .find(|p| p.id() == *id)
                .map_or((0, 0), |p| (p.run_time().as_nanos() as u64, p.run_count()))
        })
        .collect()
}

/// `n` refused connections from `client` to `to` (nothing listens there), one at a time.
fn refuse(client: &Netns, to: SocketAddr, n: u64) -> anyhow::Result<u64> {
    client.run_in(move || {
        let mut refused = 0;
        for _ in 0..n {
            if TcpStream::connect(to).is_err() {
                refused += 1;
            }
        }
        refused
    })
}

/// A tracer of refused connections: kubectl-zdt's agent, or a bpftrace script.
enum Tracer {
    Agent,
    Bpftrace(&'static str),
}

/// The one-liners a user would run instead, on the same tracepoints (the classic
/// `tcp_send_reset`: bpftrace attaches tracepoints, not BTF ones): counts per (address, reason)
/// in a map, or a line per event. bpftrace 0.17 (Debian) has no array-to-address cast for the
/// 28-byte sockaddr of `tcp_send_reset`, hence the bytes of its IPv4 address.
const BPFTRACE_COUNT: &str = "tracepoint:tcp:tcp_send_reset { @rst[ntop(2, args->saddr[4] | args->saddr[5] << 8 | args->saddr[6] << 16 | args->saddr[7] << 24), args->reason] = count(); }
tracepoint:sock:inet_sk_error_report /args->error != 0/ { @err[ntop(args->daddr), args->error] = count(); }";
const BPFTRACE_PRINT: &str = "tracepoint:tcp:tcp_send_reset { printf(\"%s %d\\n\", ntop(2, args->saddr[4] | args->saddr[5] << 8 | args->saddr[6] << 16 | args->saddr[7] << 24), args->reason); }
tracepoint:sock:inet_sk_error_report /args->error != 0/ { printf(\"%s %d\\n\", ntop(args->daddr), args->error); }";

/// Starts bpftrace on `script` and waits until its probes are attached; its output is read
/// (and dropped) by a thread so that printing never blocks it.
fn start_bpftrace(script: &str) -> anyhow::Result<std::process::Child> {
    let mut child = Command::new("bpftrace")
        .args(["-e", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context(
            "bpftrace is not installed: `cargo xtask bench` installs it (apt-get install bpftrace)",
        )?;
    let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    if !line.starts_with("Attaching") {
        let _ = child.kill();
        bail!("bpftrace did not attach its probes: {line:?}");
    }
    std::thread::spawn(move || {
        let mut sink = std::io::sink();
        let _ = std::io::copy(&mut out, &mut sink);
    });
    Ok(child)
}

/// Median, min and max of `v`.
fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Per refused connection between two network namespaces, in `ROUNDS` rounds of `N`
/// connections, each tracer in turn in every round: the kernel's CPU time in each program
/// (bpf_stats), per program run and per refused connection (its RST and the client's error),
/// with kubectl-zdt's agent and with the bpftrace one-liners.
fn side_by_side(rt: &tokio::runtime::Runtime, agent_only: bool) -> anyhow::Result<()> {
    const ROUNDS: usize = 5;
    const N: u64 = 30_000;
    let client = Netns::create("bench-client")?;
    let pod = Netns::create("bench-pod")?;
    kubectl_zdt::testbed::veth_pair(&client, &pod, &["198.18.240.1/24"], &["198.18.240.2/24"])?;
    let to: SocketAddr = "198.18.240.2:9".parse()?;
    let mut tracers = vec![
        ("kubectl-zdt", Tracer::Agent),
        (
            "bpftrace, count per (address, reason)",
            Tracer::Bpftrace(BPFTRACE_COUNT),
        ),
        (
            "bpftrace, print each event",
            Tracer::Bpftrace(BPFTRACE_PRINT),
        ),
    ];
    if agent_only {
        tracers.truncate(1);
    }
    // Per tracer: ns per refused connection, and per run of its reset / error programs.
    let mut per_conn = vec![Vec::new(); tracers.len()];
    let mut per_run = vec![(Vec::new(), Vec::new()); tracers.len()];
    // Runs of each program per refused connection (the last round's).
    let mut runs = vec![(0.0, 0.0); tracers.len()];
    // The programs of each tracer, in this order (bpftrace too names them after their
    // tracepoint).
    const NAMES: &[&str] = &["tcp_send_reset", "inet_sk_error_report"];
    for _ in 0..ROUNDS {
        for (i, (_, tracer)) in tracers.iter().enumerate() {
            let before = program_ids();
            let (progs, stop): (_, Box<dyn FnOnce() -> anyhow::Result<()>>) = match tracer {
                Tracer::Agent => {
                    let running = start_agent(rt, "198.18.240.2/32")?;
                    let progs = own_programs(&before, std::process::id(), NAMES)?;
                    (progs, Box::new(move || stop_agent(rt, running).map(drop)))
                }
                Tracer::Bpftrace(script) => {
                    let mut child = start_bpftrace(script)?;
                    // It prints "Attaching" before it loads: wait until its programs run.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let found = own_programs(&before, child.id(), NAMES);
                        let runs = found.as_ref().map_or(0, |p| run_stats(p)[0].1);
                        if runs > 0 {
                            break;
                        }
                        if Instant::now() > deadline {
                            found?;
                            bail!("bpftrace's programs did not run within 60 s");
                        }
                        refuse(&client, to, 1)?;
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    let progs = own_programs(&before, child.id(), NAMES)?;
                    (
                        progs,
                        Box::new(move || {
                            let _ = child.kill();
                            child.wait()?;
                            Ok(())
                        }),
                    )
                }
            };
            let s0 = run_stats(&progs);
            let refused = refuse(&client, to, N)?;
            let s1 = run_stats(&progs);
            stop()?;
            let d: Vec<(u64, u64)> = s0
                .iter()
                .zip(&s1)
                .map(|((t0, c0), (t1, c1))| (t1 - t0, c1 - c0))
                .collect();
            let total: u64 = d.iter().map(|(t, _)| t).sum();
            per_conn[i].push(total as f64 / refused.max(1) as f64);
            per_run[i].0.push(d[0].0 as f64 / d[0].1.max(1) as f64);
            per_run[i].1.push(d[1].0 as f64 / d[1].1.max(1) as f64);
            runs[i] = (
                d[0].1 as f64 / refused as f64,
                d[1].1 as f64 / refused as f64,
            );
        }
    }
    println!(
        "| per refused connection between two namespaces ({ROUNDS} rounds × {N}; median, min–max) | tcp_send_reset per run | inet_sk_error_report per run | runs per refusal | both, per refused connection | × kubectl-zdt |"
    );
    let (ours, _, _) = spread(&mut per_conn[0].clone());
    for (i, (name, _)) in tracers.iter().enumerate() {
        let (r, r0, r1) = spread(&mut per_run[i].0);
        let (e, e0, e1) = spread(&mut per_run[i].1);
        let (c, c0, c1) = spread(&mut per_conn[i]);
        println!(
            "| {name} | {r:.0} ns ({r0:.0}–{r1:.0}) | {e:.0} ns ({e0:.0}–{e1:.0}) | {:.2} + {:.2} | {c:.0} ns ({c0:.0}–{c1:.0}) | {:.2} |",
            runs[i].0,
            runs[i].1,
            c / ours
        );
    }
    Ok(())
}

/// An IPv4 SYN from `from`:`sport` to `to`:`dport`, checksums filled in.
fn syn_packet(
    from: std::net::Ipv4Addr,
    to: std::net::Ipv4Addr,
    sport: u16,
    dport: u16,
) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&from.octets());
    p[16..20].copy_from_slice(&to.octets());
    let sum = |b: &[u8], mut acc: u32| {
        for w in b.chunks(2) {
            acc += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        acc
    };
    let fold = |mut acc: u32| {
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    };
    let ip_sum = fold(sum(&p[..20], 0));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&1u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&from.octets());
    pseudo[4..8].copy_from_slice(&to.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let c = fold(sum(&p[20..], sum(&pseudo, 0)));
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

/// Sends the same SYN from a raw socket in the calling thread's namespace, in batches of 64
/// (`sendmmsg`), for `secs`; the packets sent. Each is answered by a RST (no listener), as
/// many connects would be, at a rate no connect loop reaches.
fn syn_flood(packet: [u8; 40], to: std::net::Ipv4Addr, secs: f64) -> anyhow::Result<u64> {
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        if fd < 0 {
            bail!("raw socket: {}", std::io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_addr.s_addr = u32::from_ne_bytes(to.octets());
        send_batches(fd, &mut addr, &packet, secs)
    }
}

/// Sends `payload` to `addr` from `fd` in batches of 64 (`sendmmsg`) for `secs`, then closes
/// `fd`; the datagrams sent.
///
/// # Safety
/// `fd` is an open socket the caller hands over, and `A` a socket address type of its family.
unsafe fn send_batches<A>(fd: i32, addr: &mut A, payload: &[u8], secs: f64) -> anyhow::Result<u64> {
    // SAFETY: the headers point at `addr`, `iov` and `payload`, which outlive the calls.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: payload.len(),
        };
        let mut msgs: Vec<libc::mmsghdr> = (0..64)
            .map(|_| {
                let mut m: libc::mmsghdr = std::mem::zeroed();
                m.msg_hdr.msg_name = std::ptr::from_mut(addr).cast();
                m.msg_hdr.msg_namelen = std::mem::size_of::<A>() as u32;
                m.msg_hdr.msg_iov = &mut iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            let n = libc::sendmmsg(fd, msgs.as_mut_ptr(), msgs.len() as u32, 0);
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    continue;
                }
                libc::close(fd);
                bail!("sendmmsg: {e}");
            }
            sent += n as u64;
        }
        libc::close(fd);
        Ok(sent)
    }
}

/// How a storm's SYNs are sent.
#[derive(Clone, Copy)]
enum Flood {
    /// From a raw IP socket: routed and queued like any packet; the pods' RSTs come back.
    Raw,
    /// As Ethernet frames from an `AF_PACKET` socket straight to the veth's transmit
    /// (`PACKET_QDISC_BYPASS`), one generator per CPU, and the pods' RSTs dropped at their
    /// route to the client (a blackhole route): the pod's kernel still refuses every SYN
    /// (`tcp_send_reset` fires, `OutRsts` counts it: both happen before the RST is routed), but
    /// the CPUs no longer carry the RST back to a client that has no socket for it. The
    /// probes see each refusal as with the raw flood.
    Packet,
}

/// The MAC address of `eth0` in `ns`.
fn mac(ns: &Netns) -> anyhow::Result<[u8; 6]> {
    let out = ns.ip("-o link show eth0")?;
    let hex = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .with_context(|| format!("no link/ether in {out:?}"))?;
    let mut mac = [0u8; 6];
    for (b, h) in mac.iter_mut().zip(hex.split(':')) {
        *b = u8::from_str_radix(h, 16)?;
    }
    Ok(mac)
}

/// The interface index of `eth0` in `ns`.
fn ifindex(ns: &Netns) -> anyhow::Result<i32> {
    let out = ns.ip("-o link show eth0")?;
    out.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no index in {out:?}"))
}

/// `packet` in an Ethernet frame from `client`'s `eth0` to `pod`'s.
fn ethernet_frame(client: &Netns, pod: &Netns, packet: &[u8; 40]) -> anyhow::Result<[u8; 54]> {
    let mut f = [0u8; 54];
    f[..6].copy_from_slice(&mac(pod)?);
    f[6..12].copy_from_slice(&mac(client)?);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14..].copy_from_slice(packet);
    Ok(f)
}

/// Sends `frame` on interface `ifindex` of the calling thread's namespace from an `AF_PACKET`
/// socket that bypasses the queueing discipline, in batches of 64 (`sendmmsg`), for `secs`;
/// the frames sent.
fn syn_flood_packet(frame: [u8; 54], ifindex: i32, secs: f64) -> anyhow::Result<u64> {
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        // Protocol 0: the socket receives nothing.
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            bail!("packet socket: {}", std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            std::ptr::addr_of!(one).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        ) < 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            bail!("PACKET_QDISC_BYPASS: {e}");
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        addr.sll_ifindex = ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        send_batches(fd, &mut addr, &frame, secs)
    }
}

/// `Tcp: OutRsts` of the namespace: the RSTs its kernel sent.
fn out_rsts(ns: &Netns) -> anyhow::Result<u64> {
    let snmp = ns.exec("cat", &["/proc/net/snmp"])?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (
        tcp.next().context("no Tcp: line")?,
        tcp.next().context("no Tcp: values")?,
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutRsts")
        .context("no OutRsts")?
        .1
        .parse()
        .context("OutRsts")
}

/// A refused-connection storm: a raw-socket SYN flood from two client namespaces, each to a
/// pod namespace of its own (nothing listens), every SYN refused with a RST. Per pod, the
/// generator's count, the pod kernel's own count of RSTs sent (`OutRsts`) and the agent's
/// total (delivered + counted lost), and the loss the agent reported.
fn storm(
    rt: &tokio::runtime::Runtime,
    ringbuf_bytes: u32,
    flood: Flood,
    agent: bool,
) -> anyhow::Result<()> {
    const SECS: f64 = 5.0;
    let mut pairs = Vec::new();
    for i in 0..2u8 {
        let (client, pod, c, p) =
            connrate::namespaces(&format!("storm{i}"), &format!("198.18.24{}", 1 + i))?;
        pairs.push((client, pod, c, p));
    }
    let watch: Vec<String> = pairs.iter().map(|(_, _, _, p)| format!("{p}/32")).collect();
    let running = if agent {
        Some(start_agent_with(rt, &watch.join(","), ringbuf_bytes)?)
    } else {
        None
    };
    let rsts0: Vec<u64> = pairs
        .iter()
        .map(|(_, pod, _, _)| out_rsts(pod))
        .collect::<Result<_, _>>()?;
    let floods: Vec<_> = pairs
        .iter()
        .enumerate()
        .map(|(i, (client, pod, c, p))| {
            let (c, p) = (*c, *p);
            let packet = syn_packet(c, p, 40000, 9);
            match flood {
                Flood::Raw => client.spawn(move || syn_flood(packet, p, SECS)),
                Flood::Packet => {
                    // The pod's answers go nowhere (see `Flood::Packet`).
                    pod.ip(&format!("route add blackhole {c}/32"))?;
                    let frame = ethernet_frame(client, pod, &packet)?;
                    let ifindex = ifindex(client)?;
                    client.spawn(move || {
                        connrate::pin(i);
                        syn_flood_packet(frame, ifindex, SECS)
                    })
                }
            }
        })
        .collect::<Result<_, _>>()?;
    let mut sent = Vec::new();
    for f in floods {
        sent.push(f.join()??);
    }
    let rsts1: Vec<u64> = pairs
        .iter()
        .map(|(_, pod, _, _)| out_rsts(pod))
        .collect::<Result<_, _>>()?;
    let counted = running.map(|r| stop_agent(rt, r)).transpose()?;
    let total: u64 = sent.iter().sum();
    println!(
        "| refused storm ({}, 2 client → 2 pod namespaces, {SECS} s, {}) | {:.0} SYN/s sent, {:.0} RST/s sent by the pods |",
        match flood {
            Flood::Raw => "raw-socket SYN flood",
            Flood::Packet =>
                "AF_PACKET SYN flood, qdisc bypassed, pinned, RSTs dropped by the pods' routes",
        },
        if agent {
            format!("agent, ring buffer {} KiB", ringbuf_bytes / 1024)
        } else {
            "**no agent**: what the machine sustains".to_owned()
        },
        total as f64 / SECS,
        rsts1.iter().zip(&rsts0).map(|(a, b)| a - b).sum::<u64>() as f64 / SECS
    );
    let Some(counted) = counted else {
        return Ok(());
    };
    for (i, (_, _, _, p)) in pairs.iter().enumerate() {
        let rsts = rsts1[i] - rsts0[i];
        let reported = counted
            .refused_of
            .get(&std::net::IpAddr::V4(*p))
            .copied()
            .unwrap_or(0);
        println!(
            "| pod {p}: SYNs sent / RSTs its kernel sent / refused the agent reported | {} / {rsts} / {reported} ({}) |",
            sent[i],
            if reported == rsts {
                "exact"
            } else {
                "MISMATCH"
            }
        );
    }
    println!(
        "| storm: loss the agent reported (ring buffer full; each counted per pod and in its total) | {} events |",
        counted.lost
    );
    Ok(())
}
