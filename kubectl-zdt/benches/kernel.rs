//! Kernel-side benchmarks (root; `cargo xtask bench` runs them): cost per event of each probe
//! from the kernel's own bpf_stats, the connect/close rate kept with the agent running, a
//! refused-connection storm, and the agent's memory and idle CPU. Prints a Markdown table for
//! BENCHMARKS.md. Numbers are measured, never asserted: a benchmark reports, tests decide.

use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{programs::loaded_programs, sys::Stats};
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

/// Connect + close to a local listener for `secs`; connections per second.
///
/// The server closes first and the client waits for its FIN, so the TIME_WAIT sockets stay on
/// the listener's side: a client that closed first left one per connection holding an
/// ephemeral port, and every later run connected slower than the one before (tens of
/// thousands of them within one benchmark), which made the agent-on runs, always second, look
/// several times slower than the agent-off runs.
fn connect_close_rate(ns: &Netns, secs: f64) -> anyhow::Result<f64> {
    ns.run_in(move || -> anyhow::Result<f64> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let acceptor = std::thread::spawn(move || {
            for c in listener.incoming() {
                drop(c);
                if s2.load(Ordering::Relaxed) {
                    break;
                }
            }
        });
        let start = Instant::now();
        let mut n = 0u64;
        let mut byte = [0u8; 1];
        while start.elapsed().as_secs_f64() < secs {
            let mut c = TcpStream::connect(addr)?;
            // EOF: the server has closed its end.
            let _ = std::io::Read::read(&mut c, &mut byte);
            n += 1;
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(addr);
        let _ = acceptor.join();
        Ok(rate)
    })?
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    counted: tokio::task::JoinHandle<(u64, u64)>,
}

/// Starts the agent in-process; counts refused (including aggregated lost) and loss.
fn start_agent(rt: &tokio::runtime::Runtime, watch: &str) -> anyhow::Result<Running> {
    let config = AgentConfig::new(NodeName("bench".into()), vec![watch.parse()?]);
    let agent = Agent::start(&config)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(65536);
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(agent.run(tx, async {
        let _ = stop_rx.await;
    }));
    let counted = rt.spawn(async move {
        let (mut refused, mut lost) = (0, 0);
        while let Some(o) = rx.recv().await {
            match o.kind {
                Kind::Refused => refused += o.weight(),
                Kind::Loss => lost += o.weight(),
                _ => {}
            }
        }
        (refused, lost)
    });
    Ok(Running {
        stop,
        task,
        counted,
    })
}

fn stop_agent(rt: &tokio::runtime::Runtime, r: Running) -> anyhow::Result<(u64, u64)> {
    let _ = r.stop.send(());
    rt.block_on(r.task)??;
    Ok(rt.block_on(r.counted)?)
}

/// Refused connections to 127.0.0.1:9 from `threads` threads for `secs`.
fn refused_storm(ns: &Netns, threads: usize, secs: f64) -> anyhow::Result<u64> {
    let total = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..threads {
        let total = total.clone();
        handles.push(ns.spawn(move || {
            let target: SocketAddr = "127.0.0.1:9".parse().unwrap_or_else(|_| unreachable!());
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < secs {
                for _ in 0..256 {
                    if TcpStream::connect(target).is_err() {
                        n += 1;
                    }
                }
            }
            total.fetch_add(n, Ordering::Relaxed);
        })?);
    }
    for h in handles {
        h.join()?;
    }
    Ok(total.load(Ordering::Relaxed))
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
    let _stats = aya::sys::enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS failed")?;
    let ns = Netns::create("bench")?;
    println!("| measurement | value |\n|---|---|");

    // 1. Connect/close rate with and without the agent (watching an unrelated address, so every
    //    state change is filtered out in the kernel), in ABBA order so that a drift of the
    //    machine over the runs weighs on both sides alike.
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut filtered = (0.0, 0);
    for agent_on in [false, true, true, false, false, true, true, false] {
        if !agent_on {
            without.push(connect_close_rate(&ns, 1.5)?);
            continue;
        }
        let running = start_agent(&rt, "198.18.250.1/32")?;
        let before = prog_stats();
        with.push(connect_close_rate(&ns, 1.5)?);
        let after = prog_stats();
        filtered = per_event(&before, &after, "inet_sock_set_state");
        stop_agent(&rt, running)?;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "| loopback connect/close, agent off | {:.0}/s (mean of 4 × 1.5 s, ABBA) |",
        mean(&without)
    );
    println!(
        "| loopback connect/close, agent on (filtered out) | {:.0}/s |",
        mean(&with)
    );
    println!(
        "| ratio on/off | {:.1} % |",
        100.0 * mean(&with) / mean(&without)
    );
    println!(
        "| inet_sock_set_state, filtered-out event | {:.0} ns ({} events) |",
        filtered.0, filtered.1
    );

    // 2. Refused storm: every event recorded (watched), ring buffer under pressure.
    let running = start_agent(&rt, "127.0.0.1/32")?;
    let before = prog_stats();
    let secs = 10.0;
    let sent = refused_storm(&ns, 2, secs)?;
    let after = prog_stats();
    let recorded = per_event(&before, &after, "tcp_send_reset");
    let err_report = per_event(&before, &after, "inet_sk_error_report");
    let (reported, lost) = stop_agent(&rt, running)?;
    println!(
        "| refused storm | {:.0}/s for {secs} s ({sent} connections, 2 threads) |",
        sent as f64 / secs
    );
    println!(
        "| refused reported by the agent (delivered + aggregated lost) | {reported} ({}) |",
        if reported == sent {
            "exact"
        } else {
            "MISMATCH"
        }
    );
    println!("| ring-buffer loss reported | {lost} events |");
    println!(
        "| tcp_send_reset, recorded event | {:.0} ns ({} events) |",
        recorded.0, recorded.1
    );
    println!(
        "| inet_sk_error_report, recorded event | {:.0} ns ({} events) |",
        err_report.0, err_report.1
    );

    // 3. The agent process idle.
    let (rss_kb, cpu_s) = idle_agent(10)?;
    println!("| agent RSS, idle | {:.1} MB |", rss_kb as f64 / 1024.0);
    println!(
        "| agent CPU, idle 10 s | {:.2} % of a core |",
        100.0 * cpu_s / 10.0
    );

    // 4. What the dataplane triggers cost the node's other work: every sendto of the node and
    //    every per-CPU allocation passes through them.
    trigger_costs()?;
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
