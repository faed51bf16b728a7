//! The kernel observation layer on the node testbed: a pod is terminated in the kubelet's order
//! while clients keep connecting through its Service, and every mark and count the agent reports
//! is checked against the testbed's ground truth. Needs root.

use crate::support;

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    time::Duration,
};

use crate::support::{
    AgentProcess, assert_all_refused, netns_of, of_kind, off_ms, require_root, ring_buffer_lost,
    total,
};
use kubectl_zdt::{
    observation::{Kind, Observation},
    testbed::{
        Node,
        kube_proxy::ServicePort,
        node::cluster_ip,
        pod::{PodProcess, PodSpec, Truth},
        tcp::connect_once,
    },
};

/// Timing bound of the issue: each mark within 2 ms of ground truth.
const BOUND_MS: f64 = 2.0;

fn app() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kubectl-zdt"))
}

/// Within `BOUND_MS` of the ground-truth bracket [`from`, `to`].
fn assert_within(what: &str, o: &Observation, from: u64, to: u64) {
    let (after, before) = (off_ms(o, from), off_ms(o, to));
    assert!(
        after >= -BOUND_MS && before <= BOUND_MS,
        "{what} {after:+.3} ms after the bracket's start, {before:+.3} ms from its end: {o:?}"
    );
}

fn only(obs: &[Observation], kind: Kind, pred: impl Fn(&Observation) -> bool) -> &Observation {
    let found: Vec<_> = obs.iter().filter(|o| o.kind == kind && pred(o)).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}: {found:#?}");
    found[0]
}

struct World {
    node: Node,
    svc: ServicePort,
}

fn world() -> World {
    require_root();
    World {
        node: Node::create().unwrap(),
        svc: ServicePort {
            name: "default/web".into(),
            cluster_ip: cluster_ip(10),
            port: 80,
        },
    }
}

/// preStop 150 ms, drain 50 ms, then N clients dial the ClusterIP whose rule still points at
/// the pod (kube-proxy is late): the agent sees the preStop exec, SIGTERM, the listener close
/// and the exit within 2 ms of truth, and exactly N refused SYNs on the pod side and N
/// ECONNREFUSED on the client side.
#[test]
fn scripted_termination_marks_and_counts_match_ground_truth() {
    scripted_termination(&[]);
}

/// The same on the records of Linux 6.12, whose `sched_process_exit` has no `group_dead`: the
/// exit is then the main thread's, and still within 2 ms of truth.
#[test]
fn scripted_termination_on_linux_6_12_records() {
    scripted_termination(&["--without-newer-tracepoint-fields"]);
}

fn scripted_termination(agent_args: &[&str]) {
    const N: usize = 40;
    let mut w = world();
    let pod = w.node.add_pod("web-1").unwrap();
    let client = w.node.add_client("client").unwrap();
    let ep = SocketAddr::new(pod.ip.into(), 8080);
    w.node.set_endpoints(&w.svc, &[ep], &[]).unwrap();
    let agent = AgentProcess::start_in(
        Some(w.node.ns.name()),
        &[
            &[
                "--watch-netns",
                &pod.ns.path(),
                "--watch-cidr",
                &format!("{}/32", pod.ip),
                "--watch-cidr",
                &format!("{}/32", w.svc.cluster_ip),
            ],
            agent_args,
        ]
        .concat(),
    );
    let spec = PodSpec {
        port: 8080,
        prestop_ms: 150,
        drain_ms: 50,
        ..PodSpec::default()
    };
    let app_proc = PodProcess::start(&pod, &app(), spec).unwrap();
    let target = SocketAddr::new(w.svc.cluster_ip, w.svc.port);
    assert_eq!(
        client.ns.run_in(move || connect_once(target)).unwrap(),
        Ok(())
    );

    let delete = kubectl_zdt::kernel::clock::Clock::monotonic_now_ns();
    let mut truth: Truth = app_proc.terminate(&pod, &app(), delete).unwrap();
    let outcomes = client
        .ns
        .run_in(move || (0..N).map(|_| connect_once(target)).collect::<Vec<_>>())
        .unwrap();
    assert_all_refused(&outcomes);
    let pod_ns = support::inode(&pod.ns.path());
    let pod_ip = IpAddr::from(pod.ip);
    truth.netns_gone = Some(w.node.remove_pod(pod));
    std::thread::sleep(Duration::from_millis(300));
    let obs = agent.stop();

    let pid = u64::from(truth.app_pid);
    let pid_of = |o: &Observation| o.details.process().pid;
    // The app's exec (start) and the preStop hook's exec.
    let execs = of_kind(&obs, Kind::Exec);
    assert_eq!(execs.len(), 2, "{execs:#?}");
    let hook = only(&obs, Kind::Exec, |o| {
        pid_of(o) == truth.prestop_pid.map(u64::from)
    });
    // The exec's ground truth is a bracket: after the runtime was asked to run the hook, before
    // the hook's first line (program start-up lies between).
    let after = off_ms(hook, truth.prestop_spawned.unwrap());
    let before = off_ms(hook, truth.prestop.unwrap());
    assert!(
        after >= -BOUND_MS && before <= BOUND_MS,
        "preStop exec {after:+.3} ms after the spawn and {before:+.3} ms from the hook's start"
    );
    let sigterm = only(&obs, Kind::Signal, |o| {
        o.reason.as_deref() == Some("SIGTERM") && pid_of(o) == Some(pid)
    });
    assert_within("SIGTERM", sigterm, truth.sigterm, truth.sigterm_returned);
    let closed = only(&obs, Kind::ListenerClosed, |o| o.port == Some(8080));
    assert_within(
        "listener closed",
        closed,
        truth.listen_closing,
        truth.listen_closed,
    );
    assert_eq!(netns_of(closed), Some(pod_ns));
    let exit = only(&obs, Kind::Exit, |o| pid_of(o) == Some(pid));
    // After the app's last line, before the testbed reaped it.
    assert_within("exit", exit, truth.exit, truth.reaped);
    let opened = only(&obs, Kind::ListenerOpen, |o| o.port == Some(8080));
    assert_eq!(opened.ip, None, "a listener on [::] names no pod address");
    assert_eq!(opened.details.process().bind.as_deref(), Some("::"));

    assert_eq!(
        total(&obs, |o| o.kind == Kind::Refused
            && o.ip == Some(pod_ip)
            && o.port == Some(8080)),
        N as u64
    );
    // The agent knows the node's Service frontends from its dataplane watcher, so a client's
    // error toward the ClusterIP names the Service as dialled, and conntrack the pod it really
    // went to.
    let frontend = SocketAddr::new(w.svc.cluster_ip, w.svc.port).to_string();
    let client_errors = total(&obs, |o| {
        o.kind == Kind::ConnError
            && o.reason.as_deref() == Some("ECONNREFUSED")
            && o.service == Some(frontend.as_str().into())
            && o.ip == Some(pod_ip)
            && o.port == Some(8080)
    });
    assert_eq!(
        client_errors, N as u64,
        "client side: one ECONNREFUSED per refused SYN, toward the Service as dialled"
    );
    assert_eq!(ring_buffer_lost(&obs), 0);

    // The kernel tears a namespace down asynchronously after its last reference goes (RCU grace
    // periods), so its veth disappears a little after `ip netns del` returned.
    let gone = only(&obs, Kind::NetnsGone, |o| netns_of(o) == Some(pod_ns));
    let after = off_ms(gone, truth.netns_gone.unwrap());
    assert!(
        (-BOUND_MS..250.0).contains(&after),
        "netns_gone {after:+.3} ms after the namespace was deleted"
    );
}

/// K clients send a request the app never reads; the app exits: each connection is reset with
/// the kernel's reason TCP_ABORT_ON_CLOSE, and each client gets ECONNRESET. IPv6 this time.
#[test]
fn connections_open_at_exit_are_reset_with_the_kernels_reason() {
    const K: usize = 6;
    let mut w = world();
    let pod = w.node.add_pod("web-hold").unwrap();
    let pod_ip6 = IpAddr::from(pod.ip6);
    let agent = AgentProcess::start(&["--watch-cidr", &format!("{pod_ip6}/128")]);
    let spec = PodSpec {
        port: 8080,
        hold: true,
        ..PodSpec::default()
    };
    let app_proc = PodProcess::start(&pod, &app(), spec).unwrap();
    let target = SocketAddr::new(pod_ip6, 8080);
    let client = w.node.add_pod("client6").unwrap();
    let conns = client
        .ns
        .run_in(move || {
            (0..K)
                .map(|_| {
                    let mut s =
                        TcpStream::connect_timeout(&target, Duration::from_secs(1)).unwrap();
                    s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").unwrap();
                    s
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    app_proc.terminate(&pod, &app(), 0).unwrap();
    let reads: Vec<String> = conns
        .into_iter()
        .map(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            match s.read(&mut [0u8; 64]) {
                Err(e) => kubectl_zdt::testbed::tcp::errno_name(&e),
                Ok(n) => format!("read {n} bytes"),
            }
        })
        .collect();
    assert!(reads.iter().all(|r| r == "ECONNRESET"), "{reads:?}");
    let obs = agent.stop();
    let resets = total(&obs, |o| {
        o.kind == Kind::Reset
            && o.ip == Some(pod_ip6)
            && o.reason.as_deref() == Some("TCP_ABORT_ON_CLOSE")
    });
    assert_eq!(resets, K as u64, "{:#?}", of_kind(&obs, Kind::Reset));
    // The pod's side of each reset connection is its server port (the kernel released the
    // port before the RST: read from the socket's port number, it was 0).
    assert!(
        of_kind(&obs, Kind::Reset)
            .iter()
            .filter(|o| o.ip == Some(pod_ip6))
            .all(|o| o.port == Some(8080)),
        "{:#?}",
        of_kind(&obs, Kind::Reset)
    );
    let client_resets = total(&obs, |o| {
        o.kind == Kind::ConnError && o.reason.as_deref() == Some("ECONNRESET")
    });
    assert_eq!(client_resets, K as u64);
}

/// A new pod gets the IP of a removed one: the refused SYNs of each carry its own network
/// namespace, so they are never attributed to the other.
#[test]
fn a_reused_pod_ip_is_told_apart_by_network_namespace() {
    let mut w = world();
    let old = w.node.add_pod("old").unwrap();
    let client = w.node.add_client("client").unwrap();
    let ip = IpAddr::from(old.ip);
    let old_ns = support::inode(&old.ns.path());
    let agent = AgentProcess::start(&["--watch-cidr", &format!("{ip}/32")]);
    let target = SocketAddr::new(ip, 8080);
    let refuse = |n: usize| {
        let r = client
            .ns
            .run_in(move || (0..n).map(|_| connect_once(target)).collect::<Vec<_>>())
            .unwrap();
        assert!(r.iter().all(|r| r.is_err()), "{r:?}");
    };
    refuse(3);
    w.node.remove_pod(old);
    let new = w.node.add_pod_at("new", 1).unwrap();
    assert_eq!(IpAddr::from(new.ip), ip, "the new pod reuses the IP");
    let new_ns = support::inode(&new.ns.path());
    assert_ne!(old_ns, new_ns);
    refuse(5);
    let obs = agent.stop();
    let in_ns = |ns: u64| {
        total(&obs, |o| {
            o.kind == Kind::Refused && o.ip == Some(ip) && netns_of(o) == Some(ns)
        })
    };
    assert_eq!(
        (in_ns(old_ns), in_ns(new_ns)),
        (3, 5),
        "{:#?}",
        of_kind(&obs, Kind::Refused)
    );
}

/// A refused-connection storm far larger than a deliberately tiny ring buffer: some events are
/// lost, the loss is reported, and per-pod totals (delivered + aggregated lost) stay exact.
#[test]
fn a_burst_larger_than_the_ring_buffer_keeps_counts_exact_and_reports_loss() {
    const N: usize = 20_000;
    let mut w = world();
    let pod = w.node.add_pod("storm").unwrap();
    let client = w.node.add_client("client").unwrap();
    let ip = IpAddr::from(pod.ip);
    let agent = AgentProcess::start(&[
        "--watch-cidr",
        &format!("{ip}/32"),
        "--ringbuf-bytes",
        "4096",
    ]);
    let target = SocketAddr::new(ip, 9);
    let refused = client
        .ns
        .run_in(move || (0..N).filter(|_| connect_once(target).is_err()).count())
        .unwrap();
    assert_eq!(refused, N);
    let obs = agent.stop();
    let lost = ring_buffer_lost(&obs);
    assert!(
        lost > 0,
        "a 4 KiB ring buffer cannot hold {N} events between two reads"
    );
    assert_eq!(
        total(&obs, |o| o.kind == Kind::Refused && o.ip == Some(ip)),
        N as u64
    );
    // The clients' ECONNREFUSED (to the watched pod IP) compete for the same ring buffer.
    assert_eq!(
        total(&obs, |o| o.kind == Kind::ConnError && o.ip == Some(ip)),
        N as u64
    );
    let aggregated = total(&obs, |o| o.kind != Kind::Loss && o.count.is_some());
    assert_eq!(
        aggregated, lost,
        "every lost event is accounted for in an aggregated line"
    );
}

/// The pod's namespace is gone but the node still routes the ClusterIP to it (kube-proxy is
/// late): clients' SYNs go unanswered. The agent counts exactly the SYN retransmissions the
/// kernel made on those sockets (their own TCP_INFO is the ground truth), toward the ClusterIP
/// as dialled.
#[test]
fn syns_to_a_pod_whose_namespace_is_gone_are_counted_as_retransmits() {
    syns_to_a_gone_pod(&[], Beside::Nothing);
}

/// The same on the records of Linux 6.12, whose `tcp_retransmit_skb` has no `err`.
#[test]
fn syns_to_a_gone_pod_on_linux_6_12_records() {
    syns_to_a_gone_pod(&["--without-newer-tracepoint-fields"], Beside::Nothing);
}

/// The kernel runs one tracing program at a time per CPU: a retransmission timer that fires
/// while the agent's own `sys_enter_setsockopt` program runs (a thread beside the clients, on
/// the same CPU, setting a socket option over and over) is not seen by `tcp_retransmit_skb`. The agent cannot know which events those
/// were, but it says how many (`loss`, `KERNEL_SKIPPED`), so nothing goes missing unannounced.
/// (Mutation-checked: without the `loss` lines, `truth - seen` exceeds what is reported.)
#[test]
fn retransmits_the_kernel_skipped_the_probe_for_are_reported_as_loss() {
    // Whether a timer's softirq lands inside the busy thread's programs is up to the scheduler
    // (when the CPU's softirq load is high the kernel hands softirqs to ksoftirqd instead):
    // here 11–19 % do; every try checks the accounting, one of three must have had skips.
    let tries: Vec<u64> = (0..3)
        .map(|_| syns_to_a_gone_pod(&[], Beside::BusySetsockopt))
        .take_while(|&skipped| skipped == 0)
        .collect();
    assert!(
        tries.len() < 3,
        "the kernel skipped none of the retransmissions beside a busy setsockopt loop in 3 tries: this test did not make the case it is for"
    );
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Beside {
    Nothing,
    /// A thread on the clients' CPU calling `setsockopt` as fast as it can.
    BusySetsockopt,
}

/// Returns how many retransmissions the agent reported the kernel skipped.
fn syns_to_a_gone_pod(agent_args: &[&str], beside: Beside) -> u64 {
    // Apart by more than a tick (4 ms at HZ=250), each connection's timers expire in a softirq
    // of their own: a hundred chances rather than the few of one batch.
    let (clients, spacing) = match beside {
        Beside::BusySetsockopt => (100, Duration::from_millis(5)),
        Beside::Nothing => (3, Duration::ZERO),
    };
    /// The kernel gives up after this many SYN retransmissions and closes the socket, so the
    /// count read afterwards is final: nothing retransmits between the count and the close.
    const SYN_RETRIES: u8 = 2;
    let mut w = world();
    let pod = w.node.add_pod("gone").unwrap();
    let client = w.node.add_client("client").unwrap();
    let ep = SocketAddr::new(pod.ip.into(), 8080);
    w.node.set_endpoints(&w.svc, &[ep], &[]).unwrap();
    w.node.remove_pod(pod);
    let busy_program: &[&str] = match beside {
        Beside::BusySetsockopt => &busy_program_on_setsockopt(&w.node),
        Beside::Nothing => &[],
    };
    let agent = AgentProcess::start_in(
        Some(w.node.ns.name()),
        &[
            &["--watch-cidr", &format!("{}/32", w.svc.cluster_ip)][..],
            agent_args,
            busy_program,
        ]
        .concat(),
    );
    let target = SocketAddr::new(w.svc.cluster_ip, w.svc.port);
    // Everything on one CPU, where the clients' retransmission timers are armed, and the client
    // spins there: the timers' softirqs run on top of the test's own threads. On a task that
    // is not ours the kernel may skip a perf tracepoint's programs without counting it (seen
    // here: every softirq that ran on top of one thread of this VM's init process lost its
    // tracepoint events, `recursion_misses` 0; ftrace saw them), which no agent can account for.
    let results = client
        .ns
        .run_in(move || {
            pin_to_cpu(0);
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let busy = (beside == Beside::BusySetsockopt).then(|| busy_setsockopt(&stop));
            let results = kubectl_zdt::testbed::tcp::syns_until_given_up(
                target,
                clients,
                spacing,
                SYN_RETRIES,
                Duration::from_secs(30),
            );
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(t) = busy {
                t.join().unwrap();
            }
            results
        })
        .unwrap();
    let obs = agent.stop();
    // An error of the socket's own (not our wait running out) means the kernel gave up and
    // closed it: the count is final. An ICMP error from the node can bring a retransmission
    // forward (RFC 6069), so there may be more than `SYN_RETRIES`, never fewer.
    assert!(
        results.iter().all(|(r, n)| {
            let error = r.as_ref().err().map(String::as_str);
            matches!(error, Some("ETIMEDOUT" | "EHOSTUNREACH")) && *n >= u32::from(SYN_RETRIES)
        }),
        "every connect retransmitted its SYN, then the kernel gave up: {results:?}"
    );
    let truth: u64 = results.iter().map(|(_, n)| u64::from(*n)).sum();
    let frontend = target.to_string();
    let seen = total(&obs, |o| {
        o.kind == Kind::SynRetransmit && o.service == Some(frontend.as_str().into())
    });
    // Skips are counted per program, for the whole node: an unrelated retransmission the
    // kernel skipped is in them too, so they bound what is missing rather than equal it.
    let skipped = total(&obs, |o| {
        o.kind == Kind::Loss
            && o.reason.as_deref() == Some(kubectl_zdt::observation::KERNEL_SKIPPED)
            && o.details.loss().program.as_deref() == Some("tcp_retransmit_skb")
    });
    eprintln!("retransmissions: {truth} made, {seen} seen, {skipped} reported skipped");
    assert!(
        seen <= truth && truth - seen <= skipped,
        "{truth} retransmissions, {seen} seen, {skipped} reported skipped by the kernel: {:#?}",
        of_kind(&obs, Kind::Loss)
    );
    skipped
}

/// Resets the kernel sends from a timer's softirq on top of the agent's own busy
/// `sys_enter_setsockopt` program on the same CPU: clients with keepalive (1 s idle, 1 s apart,
/// 1 probe) to a pod that stops answering, so each keepalive timer gives up and resets its
/// connection (`tcp_send_active_reset`, `TCP_KEEPALIVE_TIMEOUT`) in softirq. The kernel skips
/// every classic tracepoint program on a CPU while another runs there (`bpf_prog_active`), and
/// the same setup makes it skip a share of the retransmission timers' `tcp_retransmit_skb`;
/// `tcp_send_reset` is a BTF tracepoint program, skipped only when it interrupts itself, so
/// every reset is reported and none is skipped. (Mutation-checked: as a classic tracepoint
/// program, the kernel skipped 18 of 100 resets in one of two rounds, and they went missing.)
#[test]
fn resets_sent_in_softirq_beside_a_busy_tracing_program_are_all_seen() {
    // Whether a timer's softirq lands inside the busy thread's program is up to the scheduler:
    // three rounds (a classic tracepoint program lost resets in about one round of two).
    for _ in 0..3 {
        keepalive_resets_beside_a_busy_program();
    }
}

fn keepalive_resets_beside_a_busy_program() {
    const CLIENTS: usize = 100;
    let mut w = world();
    let pod = w.node.add_pod("silent").unwrap();
    let client = w.node.add_client("client").unwrap();
    let listener = pod
        .ns
        .run_in(|| std::net::TcpListener::bind("0.0.0.0:8080").unwrap())
        .unwrap();
    let accepted = std::thread::spawn(move || {
        (0..CLIENTS)
            .map(|_| listener.accept().unwrap().0)
            .collect::<Vec<_>>()
    });
    let agent = AgentProcess::start_in(
        Some(w.node.ns.name()),
        &[
            &["--watch-cidr", &format!("{}/32", client.ip)][..],
            &busy_program_on_setsockopt(&w.node),
        ]
        .concat(),
    );
    let target = SocketAddr::new(pod.ip.into(), 8080);
    let pod_ns = pod.ns.name().to_owned();
    let errors = client
        .ns
        .run_in(move || {
            pin_to_cpu(0);
            let mut streams = Vec::new();
            for _ in 0..CLIENTS {
                let s = std::net::TcpStream::connect(target).unwrap();
                for (level, name, value) in [
                    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
                    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 1),
                    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1),
                    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 1),
                ] {
                    let v: libc::c_int = value;
                    // SAFETY: a valid socket and an int option.
                    let rc = unsafe {
                        libc::setsockopt(
                            std::os::fd::AsRawFd::as_raw_fd(&s),
                            level,
                            name,
                            (&raw const v).cast(),
                            size_of::<libc::c_int>() as libc::socklen_t,
                        )
                    };
                    assert_eq!(rc, 0, "setsockopt");
                }
                streams.push(s);
                std::thread::sleep(Duration::from_millis(5));
            }
            // The pod goes silent: keepalive probes get no answer.
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &pod_ns, "nft", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut nft| {
                    std::io::Write::write_all(
                        &mut nft.stdin.take().unwrap(),
                        b"table inet silent {\n chain input {\n type filter hook input priority 0;\n tcp dport 8080 drop\n }\n}\n",
                    )?;
                    nft.wait()
                })
                .unwrap();
            assert!(status.success(), "nft");
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let busy = busy_setsockopt(&stop);
            // Spin here (the timers' softirqs land on this CPU's running tasks: this one or
            // the busy one) until every connection was reset by its keepalive timer.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut errors = vec![None; CLIENTS];
            while errors.iter().any(Option::is_none) && std::time::Instant::now() < deadline {
                for (e, s) in errors.iter_mut().zip(&streams).filter(|(e, _)| e.is_none()) {
                    *e = s.take_error().unwrap().map(|e| e.kind());
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            busy.join().unwrap();
            errors
        })
        .unwrap();
    drop(accepted.join().unwrap());
    let obs = agent.stop();
    assert!(
        errors
            .iter()
            .all(|e| *e == Some(std::io::ErrorKind::TimedOut)),
        "every connection timed out on its keepalive: {errors:?}"
    );
    let resets = total(&obs, |o| {
        o.kind == Kind::Reset
            && o.ip == Some(client.ip.into())
            && o.reason.as_deref() == Some("TCP_KEEPALIVE_TIMEOUT")
    });
    let skipped = |program: &str| {
        total(&obs, |o| {
            o.kind == Kind::Loss
                && o.reason.as_deref() == Some(kubectl_zdt::observation::KERNEL_SKIPPED)
                && o.details.loss().program.as_deref() == Some(program)
        })
    };
    eprintln!(
        "keepalive resets: {CLIENTS} sent, {resets} seen; skipped by the kernel: tcp_send_reset {}, tcp_retransmit_skb {}",
        skipped("tcp_send_reset"),
        skipped("tcp_retransmit_skb"),
    );
    assert_eq!(
        (resets, skipped("tcp_send_reset")),
        (CLIENTS as u64, 0),
        "{:#?}",
        of_kind(&obs, Kind::Loss)
    );
}

/// The agent's arguments that put a classic tracepoint program on `setsockopt` (the
/// iptables-legacy trigger's fallback; where the kernel allows it, the trigger is on
/// `__sys_setsockopt` through fentry/fexit, which does not hold `bpf_prog_active`), for an
/// agent in `node`'s namespace: there the fallback is attached only where an iptables-legacy
/// `nat` table exists, so an empty one is made.
fn busy_program_on_setsockopt(node: &Node) -> [&'static str; 2] {
    node.iptables_legacy_restore("*nat\nCOMMIT\n").unwrap();
    ["--trigger-hooks", "tracepoint"]
}

/// A thread on CPU 0 setting a socket option as fast as it can until `stop`: setsockopt passes
/// the iptables-legacy trigger's programs (on the syscall's tracepoints:
/// [`busy_program_on_setsockopt`]); this one is cheap and makes no softirq work (which
/// would move the timers' softirqs to ksoftirqd), so the thread is mostly inside those programs.
fn busy_setsockopt(
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let stop = stop.clone();
    std::thread::spawn(move || {
        pin_to_cpu(0);
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            udp.set_ttl(64).unwrap();
        }
    })
}

/// Pins the calling thread to one CPU.
fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}
