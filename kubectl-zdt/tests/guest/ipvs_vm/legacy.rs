//! iptables-legacy on a kernel whose x_tables tables are modules (Debian's, like most
//! distributions'): the whole agent, as `agent --standalone` runs it, in a network namespace
//! where kube-proxy's nat rules are written by the real `iptables-legacy-restore`. There the
//! agent's programs on `module:module_get` / `module_put` see the writer take and drop its
//! reference on `iptable_nat` around the swap, and each change must be stamped inside that
//! bracket (`swap_bounds: table_module`). The truth is the kernel's own swap,
//! `xt_replace_table`, through a kprobe and a kretprobe in tracefs (this kernel has kprobes;
//! the agent does not use them): the line's window must contain it and be within 5 ms of it.
//! The build machine's kernel has its tables built in, so it can only check the counters'
//! bounds.

use std::{
    fs,
    io::Write as _,
    net::SocketAddr,
    process::{Command, Stdio},
    sync::mpsc as std_mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use jiff::{SignedDuration, Timestamp};
use kubectl_zdt::{
    agent::{Agent, AgentConfig},
    observation::{Kind, NodeName, Observation},
    testbed::kube_proxy::{self, ServicePort, ServiceRules},
};

use crate::{Check, ModeLine, describe, run_agent};

/// Services × 5 endpoints programmed (`ZDT_LEGACY_SERVICES` from the kernel command line,
/// `cargo xtask ipvs-vm --legacy-services`; at most 10 000). The bracket's width does not
/// depend on the table's size; the counters' window does.
fn service_count() -> u16 {
    std::env::var("ZDT_LEGACY_SERVICES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200)
        .min(10_000)
}
const POD_CIDR: &str = "10.245.0.0/16";
const TRACEFS: &str = "/sys/kernel/tracing";
/// How close to the kernel's swap the line must be (the accuracy).
const WITHIN: SignedDuration = SignedDuration::from_millis(5);

fn services() -> Vec<ServiceRules> {
    (0..service_count())
        .map(|i| {
            let port = ServicePort {
                name: format!("legacy/svc-{i}"),
                cluster_ip: format!("10.97.{}.{}", i / 250, i % 250 + 1)
                    .parse()
                    .unwrap(),
                port: 80,
            };
            let endpoints = (1..=5)
                .map(|e| {
                    format!("10.245.{}.{}:8080", i / 50, (i % 50) * 5 + e)
                        .parse()
                        .unwrap()
                })
                .collect();
            ServiceRules::new(port, endpoints)
        })
        .collect()
}

/// `input` through `iptables-legacy-restore -w --noflush` in the calling thread's namespace.
pub fn restore(input: &str) -> anyhow::Result<()> {
    let mut child = Command::new("iptables-legacy-restore")
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to run iptables-legacy-restore (the initramfs carries it)")?;
    // A writer that stops reading has failed: its status and stderr say why.
    let written = child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(input.as_bytes());
    let out = child.wait_with_output()?;
    if !out.status.success() || written.is_err() {
        bail!(
            "iptables-legacy-restore failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The kernel's own swap, timed by a kprobe and a kretprobe on `xt_replace_table` (the swap
/// lies between its entry and its return), on `CLOCK_MONOTONIC`.
struct Truth;

impl Truth {
    fn arm() -> anyhow::Result<Self> {
        let write = |file: &str, text: &str| {
            fs::write(format!("{TRACEFS}/{file}"), text)
                .with_context(|| format!("failed to write {text:?} to {TRACEFS}/{file}"))
        };
        write("trace_clock", "mono")?;
        write(
            "kprobe_events",
            "p:zdt/swap_in xt_replace_table\nr:zdt/swap_out xt_replace_table\n",
        )?;
        write("trace", "")?;
        write("events/zdt/enable", "1")?;
        Ok(Self)
    }

    /// Every [entry, return] of `xt_replace_table` since `arm` or the last `take`.
    fn take(&self) -> anyhow::Result<Vec<(u64, u64)>> {
        let trace = fs::read_to_string(format!("{TRACEFS}/trace"))?;
        fs::write(format!("{TRACEFS}/trace"), "")?;
        let mut out = Vec::new();
        let mut entered = None;
        for line in trace.lines().filter(|l| !l.starts_with('#')) {
            // `  iptables-legacy-6 [000] ..... 123.456789: swap_in: (xt_replace_table+0x0/…)`
            let Some(ns) = line
                .split_whitespace()
                .find_map(|w| w.strip_suffix(':').and_then(seconds_ns))
            else {
                continue;
            };
            if line.contains("swap_in:") {
                entered = Some(ns);
            } else if line.contains("swap_out:")
                && let Some(e) = entered.take()
            {
                out.push((e, ns));
            }
        }
        Ok(out)
    }
}

impl Drop for Truth {
    fn drop(&mut self) {
        let _ = fs::write(format!("{TRACEFS}/events/zdt/enable"), "0");
        let _ = fs::write(format!("{TRACEFS}/kprobe_events"), "");
    }
}

/// `123.456789` (tracefs seconds) in ns.
fn seconds_ns(s: &str) -> Option<u64> {
    let (secs, frac) = s.split_once('.')?;
    if frac.len() != 6 && frac.len() != 9 {
        return None;
    }
    let scale = if frac.len() == 6 { 1_000 } else { 1 };
    Some(secs.parse::<u64>().ok()? * 1_000_000_000 + frac.parse::<u64>().ok()? * scale)
}

/// `CLOCK_REALTIME − CLOCK_MONOTONIC` now, to put the kprobes' times on the lines' clock: as
/// the agent measures it (the closest of several paired reads). One pair of reads was off by
/// whatever ran between them; under emulation a timer interrupt there once moved the kprobes'
/// times ~100 µs later than the agent's.
fn wall_minus_mono() -> anyhow::Result<i128> {
    Ok(kubectl_zdt::kernel::clock::Clock::measure().offset_ns)
}

fn wall(mono_ns: u64, offset: i128) -> anyhow::Result<Timestamp> {
    Ok(Timestamp::from_nanosecond(i128::from(mono_ns) + offset)?)
}

/// The whole agent with kube-proxy's iptables-legacy rules in its namespace: the mode line,
/// then one endpoint removed and put back, each reported once and stamped within 5 ms of the
/// kernel's swap, bounded by the table module's reference.
pub fn whole_agent() -> anyhow::Result<bool> {
    let handle = thread::spawn(move || -> anyhow::Result<bool> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("failed to create a network namespace")?;
        let mut check = Check { failed: false };
        let mut all = services();
        restore(kube_proxy::PORTALS)?;
        restore(&kube_proxy::sync_input(&all, &|_| true, &[], POD_CIDR))?;
        let node = NodeName("legacy-vm".into());
        let mut config = AgentConfig::new(node.clone(), vec!["127.0.0.1/32".parse()?]);
        config.dataplane = false;
        let mut agent = Agent::start(&config).context("the whole agent did not start")?;
        let linked = agent.linked_programs();
        check.that(
            ["module_get", "module_put"]
                .iter()
                .all(|p| linked.iter().any(|l| l == p)),
            "iptables-legacy: the table module's reference programs are attached (modules here)",
            format!("{linked:?}"),
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Observation>(65536);
        rt.block_on(agent.announce(&tx));
        let watcher = agent.start_dataplane(&node, &tx)?;
        let (stop, task, obs) = run_agent(&rt, agent, tx, rx);
        let result = changes(&mut check, &obs, &mut all);
        let _ = stop.send(());
        rt.block_on(task)??;
        drop(watcher);
        result?;
        Ok(!check.failed)
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("the iptables-legacy check panicked"))?
}

/// The dataplane lines the agent reports within 30 s (emulation is slow), until 2 s pass
/// without one.
fn dataplane_lines(obs: &std_mpsc::Receiver<Observation>) -> Vec<Observation> {
    let mut out = Vec::new();
    let mut until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        let Ok(o) = obs.recv_timeout(left) else {
            return out;
        };
        if matches!(o.kind, Kind::DataplaneAdded | Kind::DataplaneRemoved) {
            out.push(o);
            until = std::time::Instant::now() + Duration::from_secs(2);
        }
    }
}

fn changes(
    check: &mut Check,
    obs: &std_mpsc::Receiver<Observation>,
    all: &mut [ServiceRules],
) -> anyhow::Result<()> {
    let total = all.iter().map(|r| r.endpoints.len()).sum::<usize>();
    let mode = ModeLine::wait(obs, Duration::from_secs(60));
    let field = |key: &str| mode.field(key);
    check.that(
        mode.is("iptables-legacy", total)
            && field("triggers").is_some_and(|t| {
                t.to_string()
                    .contains("x_tables replace (fexit __sys_setsockopt")
            }),
        "iptables-legacy: the whole agent detects the mode with every route and its trigger \
         on __sys_setsockopt (fentry/fexit: no syscall tracepoint)",
        format!(
            "mode {:?}, routes {:?} (programmed {total}), triggers {:?}",
            field("mode"),
            field("routes"),
            field("triggers")
        ),
    );
    let truth = Truth::arm()?;
    let svc = 7;
    let gone: SocketAddr = all[svc].endpoints[0];
    for (kind, what) in [
        (
            Kind::DataplaneRemoved,
            "iptables-legacy, one endpoint removed",
        ),
        (Kind::DataplaneAdded, "iptables-legacy, the endpoint back"),
    ] {
        let stale = if kind == Kind::DataplaneRemoved {
            all[svc].endpoints.retain(|e| *e != gone);
            vec![(all[svc].port.clone(), gone)]
        } else {
            all[svc].endpoints.insert(0, gone);
            Vec::new()
        };
        let changed = all[svc].port.clone();
        restore(&kube_proxy::sync_input(
            all,
            &|p| *p == changed,
            &stale,
            POD_CIDR,
        ))?;
        let offset = wall_minus_mono()?;
        let lines = dataplane_lines(obs);
        let swaps = truth.take()?;
        let ok_line = lines.len() == 1
            && lines[0].kind == kind
            && lines[0].ip == Some(gone.ip())
            && lines[0].port == Some(gone.port());
        check.that(
            ok_line,
            &format!("{what}: reported once, for that endpoint"),
            describe(&lines),
        );
        let (Some(line), [(entered, returned)]) = (lines.first(), swaps.as_slice()) else {
            check.that(
                false,
                &format!("{what}: the kernel swapped the nat table once (kprobes)"),
                format!("{swaps:?}"),
            );
            continue;
        };
        let (entered, returned) = (wall(*entered, offset)?, wall(*returned, offset)?);
        let extra = |k: &str| {
            line.other_fields()
                .get(k)
                .map(ToString::to_string)
                .unwrap_or_default()
        };
        let unc = SignedDuration::from_nanos(
            i64::try_from(line.uncertainty_ns.unwrap_or(u64::MAX)).unwrap_or(i64::MAX),
        );
        // The kprobes' own times are µs (tracefs prints them so) and the clocks' offset is
        // read once: 50 µs of slack.
        let slack = SignedDuration::from_micros(50);
        let contains = line.time - unc - slack <= entered && returned <= line.time + unc + slack;
        // The swap lies somewhere in [entered, returned]: how far the line is from the middle
        // of that (under emulation `xt_replace_table` itself once took 7 ms, a timer tick
        // inside it: then no time is within 5 ms of every point of it).
        let middle = entered + entered.duration_until(returned) / 2;
        let off = line.time.duration_since(middle).abs();
        check.that(
            extra("swap_bounds") == "\"table_module\"" && contains && off <= WITHIN,
            &format!(
                "{what}: stamped by the table module's reference, its window holding the kernel's swap, within {WITHIN:?} of it"
            ),
            format!(
                "line {} ± {unc:?} (swap_bounds {}, reported_at {}, syscall {} ns); xt_replace_table {entered} → {returned} ({:?}); line − its middle {off:?}",
                line.time,
                extra("swap_bounds"),
                extra("reported_at"),
                extra("syscall_ns"),
                entered.duration_until(returned),
            ),
        );
    }
    drop(truth);
    Ok(())
}
