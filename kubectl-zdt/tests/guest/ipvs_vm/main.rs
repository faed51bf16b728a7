//! The IPVS check on a real kernel: runs as root inside the throwaway VM of `cargo xtask ipvs-vm`
//! (a kernel with IPVS; its modules already loaded), in a network namespace of its own.
//!
//! It programs IPVS the way kube-proxy's IPVS mode does (a dummy `kube-ipvs0` holding the
//! ClusterIPs, one virtual server per ClusterIP:port and per NodeIP:nodePort, scheduler `rr`,
//! masquerading real servers of weight 1; a terminating endpoint: weight 0, then deleted), reads
//! it with the agent's own reader (`ipvs::Live` + `ipvs::read`) and runs the agent's dataplane
//! watcher (`watcher::spawn`) against it, armed with the agent's IPVS trigger: the eBPF
//! programs on the entry and return of `__sys_sendto` and `__sys_sendmsg` (fentry/fexit, which
//! these kernels allow: the check fails if they are refused), loaded alone (`DataplaneTriggers`; the
//! whole agent refuses Debian 12's 6.1 kernel at preflight), their events handed to the watcher as
//! the agent does. First, the whole agent in a namespace of its own: refused at preflight on a
//! kernel older than 6.10 (naming the version), else started (every program through this
//! kernel's verifier), counting refused connections exactly and, with its dataplane watcher
//! started as `agent --standalone` does, reporting a drain and a re-add of kube-proxy's IPVS in
//! its namespace; then, on those kernels, the whole agent again with kube-proxy's nat rules
//! written by the real `iptables-legacy-restore` (tests/guest/ipvs_vm/legacy.rs: the tables are modules
//! there, so each change must be timed by the table module's reference, within 5 ms of the
//! kernel's swap as kprobes see it). It prints one `CHECK ok|FAIL`
//! line per check, one
//! `FIXTURE <state> <json>` line per recorded state (the raw dump datagrams, for
//! tests/fixtures/ipvs) and finally `IPVS-GUEST PASS` or `IPVS-GUEST FAIL`.

use std::{
    collections::HashSet,
    net::SocketAddr,
    process::ExitCode,
    sync::{Arc, atomic::AtomicU64, mpsc as std_mpsc},
    thread,
    time::Duration,
};

use anyhow::Context as _;
use jiff::Timestamp;
use kubectl_zdt::{
    dataplane::{
        ipvs::{self, Command, Dump, Live, RealServer, VirtualServer},
        model::{Backend, Protocol, ServiceAddr},
        watcher::{self, Sink, Trigger, TriggerHook},
    },
    kernel::{
        clock::Clock,
        decode::{self, Decoder},
        loader::{DataplaneTriggers, LoadSpec, Probes, TriggerHooks},
        preflight,
    },
    observation::{Kind, NodeName, Observation},
    testbed::netns::run,
};
use serde::Serialize;

mod legacy;

const NODE_IP: &str = "192.168.50.10";
/// Ticks waited to conclude that the watcher reports nothing (it reads every `ipvs::POLL`).
const QUIET_TICKS: u32 = 6;

/// One recorded state of IPVS, as written to tests/fixtures/ipvs/<state>.json.
#[derive(Serialize)]
struct Fixture<'a> {
    state: &'a str,
    kernel: String,
    recorded_at: String,
    /// The routes programmed in this state (weight > 0), as `Backends::describe` writes them.
    programmed: Vec<String>,
    dumps: Vec<Dump>,
}

fn vs(addr: &str) -> VirtualServer {
    VirtualServer {
        service: ServiceAddr(addr.parse().expect("scenario address")),
        protocol: Protocol::Tcp,
    }
}

fn rs(addr: &str, weight: u32) -> RealServer {
    RealServer {
        backend: Backend(addr.parse().expect("scenario address")),
        weight,
    }
}

/// kube-proxy's virtual servers and real servers for a few Services: `web` (ClusterIP and
/// NodePort, three endpoints), `dns`, `api`, one IPv6 Service, and 20 more so the change
/// happens among many virtual servers.
fn scenario() -> Vec<(VirtualServer, Vec<RealServer>)> {
    let web = || {
        vec![
            rs("10.244.1.11:8080", 1),
            rs("10.244.1.12:8080", 1),
            rs("10.244.1.13:8080", 1),
        ]
    };
    let mut s = vec![
        (vs("10.96.0.10:80"), web()),
        (vs(&format!("{NODE_IP}:30080")), web()),
        (
            vs("10.96.0.20:53"),
            vec![rs("10.244.2.21:53", 1), rs("10.244.2.22:53", 1)],
        ),
        (vs("10.96.0.30:443"), vec![rs("10.244.3.5:6443", 1)]),
        (vs("[fd00:96::10]:80"), vec![rs("[fd00:244::11]:8080", 1)]),
    ];
    for i in 0..20u8 {
        s.push((
            vs(&format!("10.96.1.{}:80", i + 1)),
            vec![
                rs(&format!("10.244.4.{}:8080", 2 * i + 1), 1),
                rs(&format!("10.244.4.{}:8080", 2 * i + 2), 1),
            ],
        ));
    }
    s
}

/// The routes programmed: real servers of weight > 0 (the guest's own rule, not the reader's,
/// so a reader that kept weight-0 real servers would fail).
fn expected_routes(programmed: &[(VirtualServer, Vec<RealServer>)]) -> Vec<String> {
    let live: Vec<(VirtualServer, Vec<RealServer>)> = programmed
        .iter()
        .map(|(v, r)| (*v, r.iter().filter(|r| r.weight > 0).copied().collect()))
        .collect();
    ipvs::routes(&live).describe()
}

struct Check {
    failed: bool,
}

impl Check {
    fn that(&mut self, ok: bool, what: &str, detail: impl std::fmt::Display) {
        println!("CHECK {} {what}: {detail}", if ok { "ok" } else { "FAIL" });
        self.failed |= !ok;
    }
}

fn record(
    live: &mut Live,
    state: &str,
    programmed: &[(VirtualServer, Vec<RealServer>)],
    check: &mut Check,
) -> anyhow::Result<Duration> {
    live.take_recorded();
    let started = std::time::Instant::now();
    let read = ipvs::read(live).context("failed to read IPVS")?;
    let took = started.elapsed();
    let expected = expected_routes(programmed);
    check.that(
        read.routes.describe() == expected,
        &format!("{state}: ipvs::read returns the programmed routes"),
        format!(
            "{} routes read, {} programmed, {} virtual servers, read in {took:?}",
            read.routes.len(),
            expected.len(),
            read.servers.len()
        ),
    );
    let dumps = live.take_recorded();
    let replayed = ipvs::read(&mut ipvs::Replay::new(&dumps)).context("failed to replay")?;
    check.that(
        replayed == read,
        &format!("{state}: the recorded datagrams replay to the same read"),
        format!("{} dumps", dumps.len()),
    );
    let fixture = Fixture {
        state,
        kernel: run("uname", &["-r"])?.trim().to_owned(),
        recorded_at: Timestamp::now().to_string(),
        programmed: expected,
        dumps,
    };
    println!("FIXTURE {state} {}", serde_json::to_string(&fixture)?);
    Ok(took)
}

/// Observations arriving within `ticks` IPVS intervals after the first one (or none at all).
fn collect(rx: &std_mpsc::Receiver<Observation>, ticks: u32) -> Vec<Observation> {
    let mut out = Vec::new();
    while let Ok(o) = rx.recv_timeout(ipvs::POLL * ticks) {
        out.push(o);
    }
    out
}

fn describe(obs: &[Observation]) -> String {
    let lines: Vec<String> = obs
        .iter()
        .map(|o| {
            format!(
                "{} {} -> {}:{} ±{:?}",
                o.kind.as_str(),
                o.service.as_ref().map_or("-".into(), ToString::to_string),
                o.ip.map_or("-".into(), |i| i.to_string()),
                o.port.unwrap_or(0),
                o.uncertainty_ns.map(Duration::from_nanos)
            )
        })
        .collect();
    format!("[{}]", lines.join(", "))
}

/// The change of `backend` was made by `requests`: there must be one observation per service
/// of `services`. With the trigger each is stamped inside its own request; polled, each must
/// carry a window containing [first request sent, last answered]. The polled window runs from the start of the read that did not see the change to the end of
/// the one that did: one interval plus a read, so its half-width is checked against
/// `ipvs::POLL` + `read` (a read's duration, measured on this kernel: long under emulation).
struct Change<'a> {
    what: &'a str,
    kind: Kind,
    backend: SocketAddr,
    services: &'a [SocketAddr],
    /// Each virtual server's own request: when it was sent and answered (`timed`).
    requests: &'a [(SocketAddr, Timestamp, Timestamp)],
    read: Duration,
    /// The watcher is armed with the IPVS trigger: changes carry the requests' exits.
    triggered: bool,
}

fn check_change(check: &mut Check, obs: &[Observation], c: &Change<'_>) {
    let Change {
        what,
        kind,
        backend,
        services,
        requests,
        read,
        triggered,
    } = *c;
    // The change happened while the requests ran.
    let (Some(before), Some(after)) = (
        requests.iter().map(|r| r.1).min(),
        requests.iter().map(|r| r.2).max(),
    ) else {
        check.that(false, &format!("{what}: requests were made"), "none");
        return;
    };
    let mut got: Vec<String> = obs
        .iter()
        .filter(|o| o.kind == kind && o.ip == Some(backend.ip()) && o.port == Some(backend.port()))
        .filter_map(|o| o.service.as_ref().map(ToString::to_string))
        .collect();
    got.sort();
    let mut want: Vec<String> = services.iter().map(ToString::to_string).collect();
    want.sort();
    check.that(
        got == want && obs.len() == want.len(),
        &format!(
            "{what}: exactly one {} per virtual server of {backend}",
            kind.as_str()
        ),
        describe(obs),
    );
    for o in obs {
        let unc = jiff::SignedDuration::from_nanos(
            i64::try_from(o.uncertainty_ns.unwrap_or(0)).unwrap_or(i64::MAX),
        );
        let (from, to) = (o.time - unc, o.time + unc);
        if triggered {
            // Stamped with the exit of the request for its own virtual server (each one is
            // read alone): inside the interval that request ran in (a polled stamp starts at the
            // read before the change, so it would not be).
            let service = o.service.as_ref().map_or("-".into(), ToString::to_string);
            let own = requests
                .iter()
                .find(|(s, ..)| s.to_string() == service)
                .map(|(_, b, a)| (*b, *a));
            check.that(
                own.is_some_and(|(b, a)| b <= from && to <= a),
                &format!("{what}: {service} stamped with the exit of its own IPVS request"),
                format!("its request in {own:?}, reported [{from}, {to}]"),
            );
        } else {
            check.that(
                from <= before && after <= to,
                &format!("{what}: the window holds the change"),
                format!("change in [{before}, {after}], reported [{from}, {to}]"),
            );
            check.that(
                o.uncertainty_ns
                    .is_some_and(|u| Duration::from_nanos(u) <= ipvs::POLL + read),
                &format!(
                    "{what}: uncertainty within the {:?} interval + one read ({read:?})",
                    ipvs::POLL
                ),
                format!("{:?}", o.uncertainty_ns.map(Duration::from_nanos)),
            );
        }
        check.that(
            o.details.dataplane().mode.as_deref() == Some("ipvs"),
            &format!("{what}: reported as mode ipvs"),
            format!("{:?}", o.details.dataplane().mode),
        );
    }
}

/// Sends one change request: its virtual server, when it was sent and when it was answered.
/// Then waits 20 ms, so that each request's stamp is told from the next one's.
fn timed(live: &mut Live, command: &Command) -> anyhow::Result<(SocketAddr, Timestamp, Timestamp)> {
    timed_by(live, command, Send::Sendto)
}

/// How a request is sent: `sendto` (moby/ipvs, kube-proxy) or `sendmsg` (libnl).
#[derive(Clone, Copy)]
enum Send {
    Sendto,
    Sendmsg,
}

/// [`timed`], sent by `send`.
fn timed_by(
    live: &mut Live,
    command: &Command,
    send: Send,
) -> anyhow::Result<(SocketAddr, Timestamp, Timestamp)> {
    let (Command::NewService(vs, _)
    | Command::NewDest(vs, _)
    | Command::SetDest(vs, _)
    | Command::DelDest(vs, _)) = command;
    let sent = Timestamp::now();
    match send {
        Send::Sendto => live.execute(command)?,
        Send::Sendmsg => live.execute_by_sendmsg(command)?,
    }
    let answered = Timestamp::now();
    thread::sleep(Duration::from_millis(20));
    Ok((vs.service.0, sent, answered))
}

/// The virtual servers `backend` is a real server of.
fn virtual_servers_of(
    state: &[(VirtualServer, Vec<RealServer>)],
    backend: SocketAddr,
) -> Vec<SocketAddr> {
    state
        .iter()
        .filter(|(_, r)| r.iter().any(|r| r.backend.0 == backend))
        .map(|(v, _)| v.service.0)
        .collect()
}

/// Sets `backend`'s weight to `weight` on every virtual server it serves, one timed
/// `SET_DEST` request each, as kube-proxy does for a terminating (0) or serving (1) endpoint.
fn set_weight(
    state: &mut [(VirtualServer, Vec<RealServer>)],
    live: &mut Live,
    backend: SocketAddr,
    weight: u32,
) -> anyhow::Result<Vec<(SocketAddr, Timestamp, Timestamp)>> {
    let mut requests = Vec::new();
    for (v, reals) in state.iter_mut() {
        for r in reals.iter_mut().filter(|r| r.backend.0 == backend) {
            r.weight = weight;
            requests.push(timed(live, &Command::SetDest(*v, *r))?);
        }
    }
    Ok(requests)
}

/// Hands the kernel's IPVS change requests to the watcher, as the agent's stream does (the
/// ring buffer is polled every millisecond: the stamps are the kernel's, not the poll's).
fn hand_triggers(
    mut t: DataplaneTriggers,
    triggers: std_mpsc::Sender<Trigger>,
    sent: Arc<AtomicU64>,
) {
    let decoder = Decoder {
        node: NodeName("ipvs-vm".into()),
        clock: Clock::measure(),
        rst_reasons: std::collections::BTreeMap::new(),
    };
    thread::spawn(move || {
        loop {
            while let Some(item) = t.events.next() {
                let Ok(ev) = decode::parse(&item) else {
                    continue;
                };
                if ev.kind != zdt_common::kind::IPVS_CHANGE {
                    continue;
                }
                let change = decoder.ipvs_change(&ev, &item);
                drop(item);
                match change {
                    Ok(c) => {
                        if triggers.send(Trigger::IpvsChange(c)).is_err() {
                            return;
                        }
                    }
                    Err(e) => println!("undecodable IPVS trigger: {e}"),
                }
            }
            sent.store(
                t.stat(zdt_common::maps::STAT_EVENTS_SENT),
                std::sync::atomic::Ordering::Relaxed,
            );
            thread::sleep(Duration::from_millis(1));
        }
    });
}

/// kube-proxy's IPVS mode in the calling thread's network namespace: `lo` up, the dummy
/// `kube-ipvs0` holding the ClusterIPs, `node0` with the node's address, and `state`'s virtual
/// and real servers. Returns the generic-netlink handle that programmed them.
fn program_kube_proxy(state: &[(VirtualServer, Vec<RealServer>)]) -> anyhow::Result<Live> {
    run("ip", &["link", "set", "lo", "up"])?;
    run("ip", &["link", "add", "kube-ipvs0", "type", "dummy"])?;
    run("ip", &["link", "add", "node0", "type", "dummy"])?;
    run("ip", &["link", "set", "node0", "up"])?;
    run(
        "ip",
        &["addr", "add", &format!("{NODE_IP}/24"), "dev", "node0"],
    )?;
    for (v, _) in state {
        let ip = v.service.0.ip();
        if ip.to_string() != NODE_IP {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            run(
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("{ip}/{prefix}"),
                    "dev",
                    "kube-ipvs0",
                ],
            )?;
        }
    }
    let mut live = Live::open()
        .context("failed to open the IPVS generic-netlink family")?
        .context("this kernel has no IPVS (is ip_vs loaded?)")?;
    for (v, reals) in state {
        live.execute(&Command::NewService(*v, "rr"))
            .with_context(|| format!("IPVS_CMD_NEW_SERVICE {}", v.service))?;
        for r in reals {
            live.execute(&Command::NewDest(*v, *r))
                .with_context(|| format!("IPVS_CMD_NEW_DEST {} -> {}", v.service, r.backend))?;
        }
    }
    Ok(live)
}

fn guest() -> anyhow::Result<bool> {
    // A network namespace of its own (IPVS is per namespace): the links, addresses and virtual
    // servers it makes vanish with it, wherever it runs. Threads started later (the watcher's)
    // inherit it.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .context("failed to create a network namespace (needs root)")?;
    let mut check = Check { failed: false };
    let mut state = scenario();
    let mut live = program_kube_proxy(&state)?;
    live.record();
    let mut read = record(&mut live, "initial", &state, &mut check)?;

    let mut trigger = preflight::kernel_offsets()
        .map_err(anyhow::Error::from)
        .and_then(|offsets| DataplaneTriggers::load(&offsets, TriggerHooks::Fentry));
    check.that(
        trigger.is_ok(),
        "the dataplane triggers' eBPF programs load and attach on this kernel, on the kernel \
         functions (fentry/fexit)",
        trigger.as_ref().err().map_or_else(
            || "fentry/fexit on __sys_setsockopt, __sys_sendto and __sys_sendmsg, each run by its syscall".to_owned(),
            |e| format!("{e:#}"),
        ),
    );
    // As the DaemonSet runs it, without CAP_SYS_ADMIN (no program statistics, so the function
    // hooks are not tested to run): they are kept all the same.
    let without_sys_admin = thread::spawn(|| -> anyhow::Result<()> {
        const CAP_SYS_ADMIN: u32 = 21;
        kubectl_zdt::testbed::agent::drop_effective_capability(CAP_SYS_ADMIN)?;
        DataplaneTriggers::load(&preflight::kernel_offsets()?, TriggerHooks::Fentry).map(drop)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the check panicked"))?;
    check.that(
        without_sys_admin.is_ok(),
        "without CAP_SYS_ADMIN (as the DaemonSet runs) the triggers stay on the kernel functions",
        format!("{without_sys_admin:?}"),
    );
    if let Ok(t) = &trigger {
        // What the agent's start-up test of its function hooks rests on: the kernel's run
        // counts tell a program that ran on a call from one that did not.
        let idle = t.attached.setsockopt_programs_silent_during(|| {});
        let called = t.attached.setsockopt_programs_silent_during(|| {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0");
            let _ = udp.map(|u| u.set_ttl(64));
        });
        check.that(
            matches!((&idle, &called), (Ok(i), Ok(c)) if i.len() == 2 && c.is_empty()),
            "the run counts tell the setsockopt programs silent without a call and run with one",
            format!("without a call {idle:?}, with one {called:?}"),
        );
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Observation>(1024);
    let w = match &mut trigger {
        Ok(t) => {
            let opened = watcher::open()?;
            let armed = t.dataplane_netns.arm(&opened.arm)?;
            opened.spawn(NodeName("ipvs-vm".into()), Sink::new(&tx), armed)?
        }
        Err(_) => watcher::spawn(NodeName("ipvs-vm".into()), Sink::new(&tx))?,
    };
    let triggered = trigger.is_ok();
    // Events the kernel programs submitted (all IPVS change requests: nothing else writes
    // x_tables or IPVS in this guest).
    let sent = Arc::new(AtomicU64::new(0));
    if let Ok(t) = trigger {
        hand_triggers(t, w.triggers.clone(), sent.clone());
    }
    let (obs_tx, obs) = std_mpsc::channel();
    thread::spawn(move || {
        while let Some(o) = rx.blocking_recv() {
            if obs_tx.send(o).is_err() {
                return;
            }
        }
    });
    let first = obs.recv_timeout(Duration::from_secs(10))?;
    let total = expected_routes(&state).len();
    check.that(
        first.kind == Kind::DataplaneMode
            && first.details.dataplane().mode.as_deref() == Some("ipvs")
            && first.details.dataplane().routes == u64::try_from(total).ok(),
        "the watcher detects IPVS mode with every programmed route",
        format!(
            "modes {:?}, mode {:?}, routes {:?} (programmed {total})",
            w.modes,
            first.details.dataplane().mode,
            first.details.dataplane().routes
        ),
    );
    let triggers = first
        .other_fields()
        .get("triggers")
        .map(ToString::to_string);
    check.that(
        triggers
            .as_deref()
            .is_some_and(|t| t.contains("IPVS change request (fexit __sys_sendto") == triggered),
        "the mode line names the IPVS trigger (on __sys_sendto) exactly when it is armed",
        format!("{triggers:?}"),
    );
    let quiet = collect(&obs, QUIET_TICKS);
    check.that(
        quiet.is_empty(),
        "unchanged IPVS after start: no event",
        describe(&quiet),
    );

    // A terminating endpoint of `web`: kube-proxy sets its weight to 0 on every virtual server
    // of the Service, then deletes the real server.
    let gone: SocketAddr = "10.244.1.12:8080".parse()?;
    let web = virtual_servers_of(&state, gone);
    let requests = set_weight(&mut state, &mut live, gone, 0)?;
    let drained = collect(&obs, QUIET_TICKS);
    check_change(
        &mut check,
        &drained,
        &Change {
            what: "weight 0",
            kind: Kind::DataplaneRemoved,
            backend: gone,
            services: &web,
            requests: &requests,
            read,
            triggered,
        },
    );
    read = read.max(record(&mut live, "draining", &state, &mut check)?);

    for (v, reals) in &mut state {
        if let Some(i) = reals.iter().position(|r| r.backend.0 == gone) {
            live.execute(&Command::DelDest(*v, reals[i].backend))?;
            reals.remove(i);
        }
    }
    let deleted = collect(&obs, QUIET_TICKS);
    check.that(
        deleted.is_empty(),
        "deleting the drained real server: no event (it was no route already)",
        describe(&deleted),
    );
    read = read.max(record(&mut live, "deleted", &state, &mut check)?);

    // Re-added as libnl (ipvsadm, keepalived) writes: by `sendmsg`, the other send the
    // trigger hooks.
    let mut requests = Vec::new();
    for (v, reals) in &mut state {
        if web.contains(&v.service.0) {
            let r = rs(&gone.to_string(), 1);
            requests.push(timed_by(
                &mut live,
                &Command::NewDest(*v, r),
                Send::Sendmsg,
            )?);
            reals.push(r);
        }
    }
    let added = collect(&obs, QUIET_TICKS);
    check_change(
        &mut check,
        &added,
        &Change {
            what: "re-added",
            kind: Kind::DataplaneAdded,
            backend: gone,
            services: &web,
            requests: &requests,
            read,
            triggered,
        },
    );
    record(&mut live, "readded", &state, &mut check)?;

    // A resync: the same weight written again (a trigger, but no route changes).
    set_weight(&mut state, &mut live, gone, 1)?;
    let quiet = collect(&obs, 2 * QUIET_TICKS);
    check.that(
        quiet.is_empty(),
        "a rewrite that keeps every real server, then unchanged IPVS: no event",
        describe(&quiet),
    );
    if triggered {
        // SET_DEST (weight 0), DEL_DEST, NEW_DEST, SET_DEST (weight 1 again): one each per
        // virtual server of `web`.
        let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        check.that(
            sent == 4 * web.len() as u64,
            "the trigger reported each change request, and no dump request",
            format!("{sent} events for {} requests", 4 * web.len()),
        );
    }
    let watched = w.watched.read().map_or(0, |w| w.len());
    let reals: HashSet<Backend> = state
        .iter()
        .flat_map(|(_, r)| r)
        .map(|r| r.backend)
        .collect();
    check.that(
        watched == reals.len(),
        "the watched backends are the real servers",
        format!("{watched} watched"),
    );
    // ipvsadm's older interface: the same drain and re-add of `web`'s ClusterIP real server by
    // setsockopt(IP_VS_SO_SET_EDITDEST). No request bytes: IPVS is read whole, stamped with the
    // syscall's exit.
    let (cluster_ip, _) = state[0];
    for (weight, kind, what) in [
        (0, Kind::DataplaneRemoved, "setsockopt weight 0"),
        (1, Kind::DataplaneAdded, "setsockopt weight 1"),
    ] {
        let request = sockopt_edit_dest(&cluster_ip, &rs(&gone.to_string(), weight))?;
        let seen = collect(&obs, QUIET_TICKS);
        check_change(
            &mut check,
            &seen,
            &Change {
                what,
                kind,
                backend: gone,
                services: &[cluster_ip.service.0],
                requests: &[request],
                read,
                triggered,
            },
        );
    }
    if triggered {
        scale(&mut live, &obs, &mut check)?;
    }
    drop(tx);
    Ok(!check.failed)
}

/// `setsockopt(IPPROTO_IP, IP_VS_SO_SET_EDITDEST)` as ipvsadm without libnl sends it:
/// `struct ip_vs_service_user` (44 bytes) then `struct ip_vs_dest_user` (24 bytes), IPv4 only.
/// Returns the virtual server and when the call was made and returned.
fn sockopt_edit_dest(
    vs: &VirtualServer,
    real: &RealServer,
) -> anyhow::Result<(SocketAddr, Timestamp, Timestamp)> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let (SocketAddr::V4(v), SocketAddr::V4(r)) = (vs.service.0, real.backend.0) else {
        anyhow::bail!("the setsockopt interface is IPv4 only");
    };
    let mut arg = [0u8; 68];
    arg[0..2].copy_from_slice(&6u16.to_ne_bytes()); // protocol: TCP
    arg[4..8].copy_from_slice(&v.ip().octets()); // addr (network order)
    arg[8..10].copy_from_slice(&v.port().to_be_bytes());
    arg[16..18].copy_from_slice(b"rr"); // sched_name
    arg[40..44].copy_from_slice(&[255; 4]); // netmask
    arg[44..48].copy_from_slice(&r.ip().octets()); // dest addr
    arg[48..50].copy_from_slice(&r.port().to_be_bytes());
    // conn_flags 0 = IP_VS_CONN_F_MASQ, kube-proxy's forwarding method.
    arg[56..60].copy_from_slice(&i32::try_from(real.weight)?.to_ne_bytes());
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd was just returned by socket(2).
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let sent = Timestamp::now();
    // SAFETY: `arg` is valid for its length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            i32::try_from(zdt_common::ipvs_sockopt::SET_EDITDEST)?,
            arg.as_ptr().cast(),
            68,
        )
    };
    let answered = Timestamp::now();
    anyhow::ensure!(
        rc == 0,
        "setsockopt(IP_VS_SO_SET_EDITDEST): {}",
        std::io::Error::last_os_error()
    );
    thread::sleep(Duration::from_millis(20));
    Ok((vs.service.0, sent, answered))
}

/// Virtual servers added for the scale check (`ZDT_IPVS_SCALE`, from the kernel command line
/// of `cargo xtask ipvs-vm --scale N`; at most 10 000), with [`SCALE_REALS`] real servers each.
const SCALE_SERVERS: u16 = 2000;
const SCALE_REALS: u8 = 5;

/// This process's resident memory (`VmRSS`), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// At scale, with the trigger: kube-proxy programs [`SCALE_SERVERS`] more virtual servers while
/// the watcher runs (each request a trigger), then drains one endpoint; the drain is reported
/// by re-reading its virtual server alone, in less time than one whole read takes.
fn scale(
    live: &mut Live,
    obs: &std_mpsc::Receiver<Observation>,
    check: &mut Check,
) -> anyhow::Result<()> {
    let vs_of = |i: u16| vs(&format!("10.97.{}.{}:80", i / 250, i % 250 + 1));
    let rs_of = |i: u16, j: u8, w| {
        rs(
            &format!("10.245.{}.{}:8080", i / 50, (i % 50) * 5 + u16::from(j)),
            w,
        )
    };
    let servers = std::env::var("ZDT_IPVS_SCALE")
        .ok()
        .and_then(|n| n.parse::<u16>().ok())
        .unwrap_or(SCALE_SERVERS)
        .min(10_000);
    let rss_before = rss_kib();
    let started = std::time::Instant::now();
    for i in 0..servers {
        live.execute(&Command::NewService(vs_of(i), "rr"))?;
        for j in 0..SCALE_REALS {
            live.execute(&Command::NewDest(vs_of(i), rs_of(i, j, 1)))?;
        }
    }
    let programmed = started.elapsed();
    let mut added = 0usize;
    while let Ok(o) = obs.recv_timeout(Duration::from_secs(5)) {
        added += usize::from(o.kind == Kind::DataplaneAdded);
    }
    let want = usize::from(servers) * usize::from(SCALE_REALS);
    check.that(
        added == want,
        &format!("scale: {servers} virtual servers programmed while watched, every real server reported added"),
        format!("{added} added of {want}; {} requests in {programmed:?}", usize::from(servers) * (1 + usize::from(SCALE_REALS))),
    );
    let whole = std::time::Instant::now();
    let read = ipvs::read(live)?;
    let whole = whole.elapsed();
    let target = vs_of(servers / 2);
    let drained = rs_of(servers / 2, 2, 0);
    live.execute(&Command::SetDest(target, drained))?;
    let sent = std::time::Instant::now();
    let got = obs.recv_timeout(Duration::from_secs(60));
    let took = sent.elapsed();
    let ok = got.as_ref().is_ok_and(|o| {
        o.kind == Kind::DataplaneRemoved
            && o.ip == Some(drained.backend.0.ip())
            && o.service == Some(target.service.to_string().as_str().into())
    });
    check.that(
        ok && took < whole,
        &format!(
            "scale: one drain among {} routes is reported by re-reading its virtual server, faster than a whole read",
            read.routes.len()
        ),
        format!(
            "request answered → observation {took:?}; a whole read ({} virtual servers) {whole:?}; {:?}; guest RSS {} → {} KiB (watcher and checker, one process)",
            read.servers.len(),
            got.map(|o| o.kind.as_str()),
            rss_before,
            rss_kib()
        ),
    );
    Ok(())
}

/// Runs `agent` on `rt` as `agent --standalone` does (after `announce` and `start_dataplane`),
/// its lines relayed to the returned receiver; a send on the returned sender stops it.
fn run_agent(
    rt: &tokio::runtime::Runtime,
    agent: kubectl_zdt::agent::Agent,
    tx: tokio::sync::mpsc::Sender<Observation>,
    mut rx: tokio::sync::mpsc::Receiver<Observation>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    std_mpsc::Receiver<Observation>,
) {
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(agent.run(tx, async {
        let _ = stop_rx.await;
    }));
    let (obs_tx, obs) = std_mpsc::channel();
    rt.spawn(async move {
        while let Some(o) = rx.recv().await {
            if obs_tx.send(o).is_err() {
                return;
            }
        }
    });
    (stop, task, obs)
}

/// Refused connections the whole-agent check makes.
const REFUSED: u64 = 200;

/// The whole agent on this kernel, in a network namespace of its own: on a kernel older than
/// 6.10 preflight must refuse it naming the version needed; on newer ones it must start (every
/// program through this kernel's verifier, offsets from this kernel's BTF), count `REFUSED`
/// refused connections exactly, and, with kube-proxy's IPVS programmed in its namespace, run
/// its dataplane watcher as `kubectl-zdt agent --standalone` does (`Agent::start_dataplane`):
/// IPVS mode detected with every route and the agent's own eBPF trigger armed, a drain and a
/// re-add each reported once per virtual server, stamped inside its own request.
fn whole_agent() -> anyhow::Result<bool> {
    use kubectl_zdt::agent::{Agent, AgentConfig};
    let mut check = Check { failed: false };
    let release = nix::sys::utsname::uname()?
        .release()
        .to_string_lossy()
        .into_owned();
    let version = kernel_version();
    let handle = thread::spawn(move || -> anyhow::Result<bool> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("failed to create a network namespace")?;
        let mut state = scenario();
        let mut live = program_kube_proxy(&state)?;
        let node = NodeName("ipvs-vm".into());
        let mut config = AgentConfig::new(node.clone(), vec!["127.0.0.1/32".parse()?]);
        // Started below, as `run_standalone` does, once the agent has announced itself.
        config.dataplane = false;
        let mut agent = match Agent::start(&config) {
            Err(e) if version < (6, 10) => {
                let text = format!("{e:#}");
                check.that(
                    text.contains("needs Linux >= 6.10"),
                    &format!("the whole agent refuses Linux {release} naming the version needed"),
                    text,
                );
                return Ok(!check.failed);
            }
            Err(e) => {
                check.that(
                    false,
                    &format!("the whole agent starts on Linux {release}"),
                    format!("{e:#}"),
                );
                return Ok(false);
            }
            Ok(agent) => agent,
        };
        check.that(
            version >= (6, 10),
            &format!("the whole agent starts on Linux {release}"),
            "preflight passed, every program loaded and attached",
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Observation>(65536);
        rt.block_on(agent.announce(&tx));
        let watcher = agent.start_dataplane(&node, &tx);
        check.that(
            watcher.is_ok(),
            "the whole agent starts its dataplane watcher (agent --standalone)",
            watcher.as_ref().err().map_or_else(
                || "watcher and conntrack listener running".to_owned(),
                |e| format!("{e:#}"),
            ),
        );
        let (stop, task, obs) = run_agent(&rt, agent, tx, rx);

        if watcher.is_ok() {
            agent_watches_ipvs(&mut check, &obs, &mut live, &mut state)?;
        }

        let target: SocketAddr = "127.0.0.1:9".parse().context("address")?;
        let mut failed = 0;
        for _ in 0..REFUSED {
            if std::net::TcpStream::connect(target).is_err() {
                failed += 1;
            }
        }
        thread::sleep(Duration::from_millis(300));
        let _ = stop.send(());
        rt.block_on(task)??;
        // The watcher's threads still hold the stream: what the agent drained is read until
        // it goes quiet.
        let refused: u64 = collect(&obs, 3)
            .into_iter()
            .filter(|o| o.kind == Kind::Refused)
            .map(|o| o.weight())
            .sum();
        check.that(
            failed == REFUSED && refused == REFUSED,
            "the whole agent counts every refused connection",
            format!("{failed} connections refused, {refused} reported"),
        );
        Ok(!check.failed)
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("the whole-agent check panicked"))?
}

/// Where the syscalls' tracepoints are not as the trigger programs read them (a kernel without
/// `CONFIG_FTRACE_SYSCALLS`, or another layout), the probes still hook the dataplane triggers on
/// the kernel functions, which read no tracepoint record.
fn triggers_without_syscall_tracepoints() -> anyhow::Result<bool> {
    let mut check = Check { failed: false };
    let kernel = preflight::check()?;
    let probes = Probes::load(&LoadSpec::nothing_watched(
        kernel.offsets,
        false,
        TriggerHooks::Auto,
    ));
    let hook = probes.as_ref().map(|p| p.attached.trigger_hook());
    check.that(
        matches!(hook, Ok(Some(TriggerHook::Function))),
        "without usable syscall tracepoints the dataplane triggers hook the kernel functions",
        match &hook {
            Ok(h) => format!("{h:?}"),
            Err(e) => format!("{e:#}"),
        },
    );
    Ok(!check.failed)
}

/// The agent's `dataplane_mode` line, if it came.
struct ModeLine(Option<Observation>);

impl ModeLine {
    /// The first `dataplane_mode` line within `wait` (other lines are dropped).
    fn wait(obs: &std_mpsc::Receiver<Observation>, wait: Duration) -> Self {
        loop {
            match obs.recv_timeout(wait) {
                Ok(o) if o.kind == Kind::DataplaneMode => return Self(Some(o)),
                Ok(_) => {}
                Err(_) => return Self(None),
            }
        }
    }

    fn field(&self, key: &str) -> Option<serde_json::Value> {
        self.0
            .as_ref()
            .and_then(|m| m.other_fields().get(key).cloned())
    }

    /// Says `mode` with `routes` routes.
    fn is(&self, mode: &str, routes: usize) -> bool {
        self.field("mode")
            .and_then(|m| m.as_str().map(str::to_owned))
            .as_deref()
            == Some(mode)
            && self.field("routes").and_then(|r| r.as_u64()) == u64::try_from(routes).ok()
    }
}

/// The dataplane lines among what the agent reported until `ticks` IPVS intervals pass
/// without a line.
fn dataplane_lines(obs: &std_mpsc::Receiver<Observation>, ticks: u32) -> Vec<Observation> {
    collect(obs, ticks)
        .into_iter()
        .filter(|o| matches!(o.kind, Kind::DataplaneAdded | Kind::DataplaneRemoved))
        .collect()
}

/// The whole agent's view of kube-proxy's IPVS in its namespace: the mode line, then one
/// endpoint of `web` drained (weight 0 on each of its virtual servers) and put back.
fn agent_watches_ipvs(
    check: &mut Check,
    obs: &std_mpsc::Receiver<Observation>,
    live: &mut Live,
    state: &mut [(VirtualServer, Vec<RealServer>)],
) -> anyhow::Result<()> {
    let total = expected_routes(state).len();
    let mode = ModeLine::wait(obs, Duration::from_secs(30));
    let field = |key: &str| mode.field(key);
    check.that(
        mode.is("ipvs", total),
        "the whole agent detects IPVS mode with every programmed route",
        format!(
            "mode {:?}, routes {:?} (programmed {total})",
            field("mode"),
            field("routes")
        ),
    );
    check.that(
        field("triggers").is_some_and(|t| {
            t.to_string()
                .contains("IPVS change request (fexit __sys_sendto")
        }),
        "the whole agent arms its own IPVS trigger, on __sys_sendto/__sys_sendmsg (fentry/fexit)",
        format!("{:?}", field("triggers")),
    );
    let quiet = dataplane_lines(obs, QUIET_TICKS);
    check.that(
        quiet.is_empty(),
        "whole agent: unchanged IPVS after start, no event",
        describe(&quiet),
    );
    let gone: SocketAddr = "10.244.1.11:8080".parse()?;
    let web = virtual_servers_of(state, gone);
    for (weight, kind, what) in [
        (0, Kind::DataplaneRemoved, "whole agent, weight 0"),
        (1, Kind::DataplaneAdded, "whole agent, weight 1 again"),
    ] {
        let requests = set_weight(state, live, gone, weight)?;
        let lines = dataplane_lines(obs, QUIET_TICKS);
        check_change(
            check,
            &lines,
            &Change {
                what,
                kind,
                backend: gone,
                services: &web,
                requests: &requests,
                read: Duration::ZERO,
                triggered: true,
            },
        );
    }
    Ok(())
}

/// The running kernel's (major, minor).
fn kernel_version() -> (u32, u32) {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit());
    (
        numbers.next().and_then(|n| n.parse().ok()).unwrap_or(0),
        numbers.next().and_then(|n| n.parse().ok()).unwrap_or(0),
    )
}

/// What one syscall of the node costs with the agent off, with its dataplane triggers on
/// kernel functions (fentry/fexit) and on the syscall tracepoints: `rounds` rounds of the
/// three (in rotating order), each 200 000 `getppid` calls; the medians, and the median of each
/// round's ratio to the round's own "off". A measurement (`cargo xtask ipvs-vm --syscall-tax
/// N`), not a check; under TCG (this machine's nested KVM fails) only the ratios mean much.
fn syscall_tax(rounds: usize) -> anyhow::Result<()> {
    use kubectl_zdt::{
        agent::{Agent, AgentConfig},
        kernel::loader::TriggerHooks,
    };
    const CALLS: u32 = 200_000;
    let per_call = || {
        let started = std::time::Instant::now();
        for _ in 0..CALLS {
            // SAFETY: getppid takes no argument and cannot fail.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        started.elapsed().as_nanos() as f64 / f64::from(CALLS)
    };
    // The agent's start and exit leave the kernel work (verifying, freeing programs after an
    // RCU grace period) that would land in whichever loop follows on this one CPU: each loop
    // starts 1 s after the last start or exit.
    let with = |hooks: Option<TriggerHooks>| -> anyhow::Result<f64> {
        let Some(hooks) = hooks else {
            thread::sleep(Duration::from_secs(1));
            return Ok(per_call());
        };
        let watch = vec!["198.18.250.1/32".parse()?];
        let mut config = AgentConfig::new(NodeName("tax".into()), watch);
        config.trigger_hooks = hooks;
        let mut agent = Agent::start(&config)?;
        // Armed for this namespace, as the agent arms its node's.
        let netns =
            kubectl_zdt::agent::netns_inode(std::path::Path::new("/proc/thread-self/ns/net"))?;
        agent.arm_dataplane(&kubectl_zdt::dataplane::watcher::Arm {
            netns,
            ipvs_family: None,
        })?;
        thread::sleep(Duration::from_secs(1));
        let ns = per_call();
        drop(agent);
        Ok(ns)
    };
    // An iptables-legacy nat table, as on a node whose kube-proxy writes one: on the syscall
    // tracepoints the x_tables pair is attached only where one exists.
    legacy::restore("*nat\nCOMMIT\n")?;
    let modes = [
        None,
        Some(TriggerHooks::Fentry),
        Some(TriggerHooks::Tracepoint),
    ];
    let mut rows: [Vec<f64>; 5] = Default::default();
    for round in 0..rounds {
        // Each mode first, second and third in turn.
        let mut ns = [0.0; 3];
        for i in 0..3 {
            let m = (round + i) % 3;
            ns[m] = with(modes[m])?;
        }
        let [off, fentry, tracepoint] = ns;
        let values = [off, fentry, tracepoint, fentry / off, tracepoint / off];
        for (row, v) in rows.iter_mut().zip(values) {
            row.push(v);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [off, fentry, tracepoint, fentry_ratio, tracepoint_ratio] = rows.each_mut().map(median);
    println!(
        "MEASURE getppid, median of {rounds} rounds of {CALLS}: agent off {off:.0} ns; triggers on kernel functions {fentry:.0} ns ({:.1} % of off); on syscall tracepoints {tracepoint:.0} ns ({:.1} %)",
        100.0 * fentry_ratio,
        100.0 * tracepoint_ratio
    );
    Ok(())
}

fn main() -> ExitCode {
    if nix::unistd::geteuid().as_raw() != 0 {
        eprintln!(
            "ipvs_vm_guest: must run as root inside the VM of `cargo xtask ipvs-vm` (it programs IPVS); run that command instead"
        );
        return ExitCode::from(2);
    }
    let mut agent_ok = match whole_agent() {
        Ok(ok) => ok,
        Err(e) => {
            println!("CHECK FAIL the whole agent: {e:#}");
            false
        }
    };
    // Where the whole agent runs (≥ 6.10), iptables-legacy with the tables as modules.
    if kernel_version() >= (6, 10) {
        agent_ok &= match legacy::whole_agent() {
            Ok(ok) => ok,
            Err(e) => {
                println!("CHECK FAIL the whole agent on iptables-legacy: {e:#}");
                false
            }
        };
    }
    if kernel_version() >= (6, 10) {
        agent_ok &= match triggers_without_syscall_tracepoints() {
            Ok(ok) => ok,
            Err(e) => {
                println!("CHECK FAIL the triggers without syscall tracepoints: {e:#}");
                false
            }
        };
    }
    let rounds = std::env::var("ZDT_SYSCALL_TAX")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    if rounds > 0
        && kernel_version() >= (6, 10)
        && let Err(e) = syscall_tax(rounds)
    {
        println!("MEASURE failed: {e:#}");
    }
    match guest().map(|ok| ok && agent_ok) {
        Ok(true) => {
            println!("IPVS-GUEST PASS");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("IPVS-GUEST FAIL");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("IPVS-GUEST FAIL: {e:#}");
            ExitCode::FAILURE
        }
    }
}
