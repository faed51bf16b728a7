//! The node testbed as unkind as a real node (the v1.23 recordings of
//! tests/fixtures/real-cluster): servers that fork a child per connection, as busybox `httpd`
//! does, so a pod's processes exit all the time while it lives (the agent reports none of
//! those exits); a preStop hook whose `exec` the
//! agent reports unflagged; keep-alive clients whose connections are open when the app exits.
//! The agent's lines are filed under pods by the agent's own pod index (by network namespace
//! and address, as in cluster mode), the API-level lines are the testbed's, and the engine's
//! report is checked against the testbed's ground truth. Needs root.

use crate::support;

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::support::{AgentProcess, of_kind, off_ms, require_root, total, wait_until};
use jiff::Timestamp;
use kubectl_zdt::{
    agent::pods::PodIndex,
    correlate::{self, Options, PodReport, Report},
    kernel::clock::Clock,
    observation::{Kind, NodeName, Observation},
    testbed::{
        ClientHandle, Node, PodHandle,
        kube_proxy::ServicePort,
        netns::NsThread,
        node::{BRIDGE_MAC, cluster_ip},
        pod::{PodProcess, PodSpec, Truth},
        tcp::{Attempt, KeepAlive, keep_alive_requests, request_loop},
    },
};

/// Each kernel mark within 2 ms of its ground-truth bracket (as in tests/kernel/termination.rs).
const BOUND_MS: f64 = 2.0;
const WORKLOAD: &str = "deployment/web";

fn app() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kubectl-zdt"))
}

fn pid_of(o: &Observation) -> Option<u64> {
    o.details.process().pid
}

/// A node with pods behind one Service, what the API said about them, and the agent's pod
/// index that files the kernel's lines under them.
struct Bed {
    node: Node,
    client: ClientHandle,
    svc: ServicePort,
    node_name: NodeName,
    index: PodIndex,
    /// The API-level lines (`pod_ready`, `pod_deleting`), as a cluster's watches give them.
    api: Vec<Observation>,
}

impl Bed {
    fn new() -> Self {
        require_root();
        let mut node = Node::create().unwrap();
        let client = node.add_client("client").unwrap();
        Self {
            node,
            client,
            svc: ServicePort {
                name: "default/web".into(),
                cluster_ip: cluster_ip(10),
                port: 80,
            },
            node_name: NodeName(kubectl_zdt::agent::hostname()),
            index: PodIndex::new(Duration::from_secs(600)),
            api: Vec::new(),
        }
    }

    fn uid(name: &str) -> String {
        format!("uid-{name}")
    }

    /// A pod on the node, known to the index by its address and its network namespace (what
    /// the agent's watch and `/proc` scan find), and ready in the API.
    fn pod(&mut self, name: &str) -> PodHandle {
        let pod = self.node.add_pod(name).unwrap();
        let uid = Self::uid(name);
        let now = Timestamp::now();
        let object = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": uid},
            "status": {"podIPs": [{"ip": pod.ip.to_string()}]},
        }))
        .unwrap();
        self.index.apply(&object, now);
        let inum = u32::try_from(support::inode(&pod.ns.path())).unwrap();
        assert!(self.index.set_netns(&uid, inum, now, None));
        self.api
            .push(self.api_line(Kind::PodReady, name, IpAddr::from(pod.ip), now));
        pod
    }

    fn api_line(&self, kind: Kind, name: &str, ip: IpAddr, at: Timestamp) -> Observation {
        let mut o = Observation::new(kind, at, self.node_name.clone());
        o.pod = Some(format!("default/{name}").into());
        o.pod_uid = Some(Self::uid(name).into());
        o.ip = Some(ip);
        o.with_extra("workload", WORKLOAD)
    }

    /// The API deletes `pod` now; returns the instant on CLOCK_MONOTONIC for the kubelet side.
    fn delete(&mut self, pod: &PodHandle) -> u64 {
        let at = Clock::monotonic_now_ns();
        let line = self
            .api_line(
                Kind::PodDeleting,
                &pod.name,
                IpAddr::from(pod.ip),
                Clock::measure().to_wall(at),
            )
            .with_extra("grace_period_s", 30);
        self.api.push(line);
        at
    }

    /// The agent in the node's namespace (hostNetwork), watching these pods.
    fn agent(&self, pods: &[&PodHandle]) -> AgentProcess {
        let mut args = vec![
            "--watch-cidr".to_owned(),
            format!("{}/32", self.svc.cluster_ip),
        ];
        for p in pods {
            args.extend(["--watch-netns".to_owned(), p.ns.path()]);
            args.extend(["--watch-cidr".to_owned(), format!("{}/32", p.ip)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        AgentProcess::start_in(Some(self.node.ns.name()), &args)
    }

    /// The agent's lines filed under pods by the index, beside the API's, and the report.
    fn report(&mut self, mut obs: Vec<Observation>) -> (Vec<Observation>, Report) {
        obs.sort_by_key(|o| o.time);
        for o in &mut obs {
            self.index.attribute(o);
        }
        obs.extend(self.api.iter().cloned());
        let report = correlate::correlate(&obs, &Options::default());
        (obs, report)
    }
}

/// Client threads that stop when dropped, so a failing test leaves none running.
struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<NsThread<()>>,
    log: Arc<Mutex<Vec<Attempt>>>,
}

impl Traffic {
    /// A new connection with one request to `target` every 5 ms.
    fn requests(client: &ClientHandle, target: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<Vec<Attempt>>> = Arc::default();
        let thread = request_loop(
            &client.ns,
            target,
            Duration::from_millis(5),
            stop.clone(),
            log.clone(),
        )
        .unwrap();
        Self {
            stop,
            threads: vec![thread],
            log,
        }
    }

    /// Stops and returns every attempt.
    fn finish(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A stop flag for client threads, set when dropped.
#[derive(Default)]
struct Stop(Arc<AtomicBool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn pods_named<'a>(r: &'a Report, name: &str) -> Vec<&'a PodReport> {
    r.rollouts
        .iter()
        .flat_map(|ro| ro.pods.iter())
        .filter(|p| p.pod.as_deref() == Some(name))
        .collect()
}

/// What one run of [`one_of_two_forking_pods_terminated`] left.
struct Run {
    obs: Vec<Observation>,
    report: Report,
    truth: Truth,
    deleted: String,
    kept: String,
    kept_attempts: Vec<Attempt>,
}

/// Two pods whose app forks a child per connection, a client making a new connection to each
/// every 5 ms; only the first pod is deleted (preStop `prestop_ms`, SIGTERM, exit, sandbox
/// gone) while the second keeps serving.
fn one_of_two_forking_pods_terminated(prestop_ms: u64) -> Run {
    let mut bed = Bed::new();
    let gone = bed.pod("web-a");
    let kept = bed.pod("web-b");
    let agent = bed.agent(&[&gone, &kept]);
    let spec = PodSpec {
        port: 8080,
        fork_per_connection: true,
        ..PodSpec::default()
    };
    let gone_app = PodProcess::start(
        &gone,
        &app(),
        PodSpec {
            prestop_ms,
            ..spec.clone()
        },
    )
    .unwrap();
    let _kept_app = PodProcess::start(&kept, &app(), spec).unwrap();
    let to_gone = Traffic::requests(&bed.client, SocketAddr::new(gone.ip.into(), 8080));
    let to_kept = Traffic::requests(&bed.client, SocketAddr::new(kept.ip.into(), 8080));
    // A client slow to send its request: the child serving it outlives the app's main
    // process, as httpd's children outlive a killed httpd.
    let gone_addr = SocketAddr::new(gone.ip.into(), 8080);
    let mut slow = bed
        .client
        .ns
        .run_in(move || TcpStream::connect_timeout(&gone_addr, Duration::from_secs(1)))
        .unwrap()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let delete = bed.delete(&gone);
    let mut truth = gone_app.terminate(&gone, &app(), delete).unwrap();
    // The client of the deleted pod stops before its address is gone (a connect to an address
    // nobody answers for would only wait out its timeout).
    drop(to_gone.finish());
    slow.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    slow.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer:?}");
    let deleted = format!("default/{}", gone.name);
    truth.netns_gone = Some(bed.node.remove_pod(gone));
    std::thread::sleep(Duration::from_millis(400));
    let kept_attempts = to_kept.finish();
    let (obs, report) = bed.report(agent.stop());
    Run {
        obs,
        report,
        truth,
        deleted,
        kept: format!("default/{}", kept.name),
        kept_attempts,
    }
}

/// Two busybox-`httpd`-like pods, clients connecting to both every 5 ms, one deleted. The
/// children forked per connection (hundreds) exit inside their pod, their parent the app: the
/// kernel program leaves them out, so the pod nobody deleted has no `exit` line at all and is
/// in no rollout. The deleted pod's exits are its main process's (the one SIGTERM went to,
/// within 2 ms of the testbed's bracket, not after its namespace is gone), which is its `exit`
/// mark, and the slow client's child's (and any other in flight then): orphaned by the main process's exit, it was reparented
/// outside the pod (on a real node the container's init reaps or kills it inside it).
#[test]
fn a_forking_servers_children_neither_end_its_pod_nor_put_an_undeleted_pod_in_a_rollout() {
    let run = one_of_two_forking_pods_terminated(0);
    let exits_of = |pod: &str| -> Vec<&Observation> {
        run.obs
            .iter()
            .filter(|o| o.kind == Kind::Exit && o.pod.as_deref() == Some(pod))
            .collect()
    };
    assert!(
        run.kept_attempts.iter().all(|a| a.error.is_none()) && run.kept_attempts.len() > 100,
        "every request to the kept pod was answered: {:?}",
        run.kept_attempts
            .iter()
            .filter(|a| a.error.is_some())
            .collect::<Vec<_>>()
    );
    let kept_exits = exits_of(&run.kept);
    assert!(
        kept_exits.is_empty(),
        "the kept pod's children ({} answered requests) exited inside it, yet: {kept_exits:#?}",
        run.kept_attempts.len()
    );
    assert!(
        pods_named(&run.report, &run.kept).is_empty(),
        "{} was never deleted but is in a rollout: {:#?}",
        run.kept,
        pods_named(&run.report, &run.kept)
    );

    let main_pid = u64::from(run.truth.app_pid);
    let gone_exits = exits_of(&run.deleted);
    let main_exit = gone_exits
        .iter()
        .find(|o| pid_of(o) == Some(main_pid))
        .expect("the main process's exit");
    let children: Vec<_> = gone_exits
        .iter()
        .filter(|o| pid_of(o) != Some(main_pid))
        .collect();
    assert!(
        !children.is_empty() && children.iter().all(|c| c.time > main_exit.time),
        "only orphaned children (the slow client's), after the main process: {gone_exits:#?}"
    );
    let (after, before) = (
        off_ms(main_exit, run.truth.exit),
        off_ms(main_exit, run.truth.reaped),
    );
    assert!(
        after >= -BOUND_MS && before <= BOUND_MS,
        "main exit {after:+.3} ms after the app's last line, {before:+.3} ms from the reap"
    );
    let p = pods_named(&run.report, &run.deleted);
    assert_eq!(p.len(), 1, "{:#?}", run.report.rollouts);
    let marks = &p[0].marks;
    let exit = marks.exit.as_ref().expect("an exit mark");
    assert_eq!(
        (exit.time, exit.source),
        (main_exit.time, Kind::Exit),
        "the exit mark is the main process's exit"
    );
    let gone = marks.netns_gone.as_ref().expect("a netns_gone mark");
    assert!(exit.time <= gone.time, "{exit:?} after {gone:?}");
    assert_eq!(
        of_kind(&run.obs, Kind::Exec).len(),
        2,
        "the two apps' execs"
    );
}

/// A server a shell in the pod started (its parent in the pod: `sh -c 'server & wait'`),
/// stopped by a SIGTERM from outside the pod (an operator's `kill`, a runtime signalling every
/// process of a container): its exit is reported, as is the shell's (started from outside);
/// the shell's other child, which ended on its own inside the pod, is not.
#[test]
fn a_process_signalled_from_outside_its_pod_has_its_exit_reported_though_its_parent_is_in_it() {
    let mut bed = Bed::new();
    let pod = bed.pod("web-a");
    let agent = bed.agent(&[&pod]);
    let mut shell = std::process::Command::new("ip")
        .args(["netns", "exec", pod.ns.name(), "sh", "-c"])
        .arg("sleep 0.01; sleep 30 & echo $!; wait")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(shell.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let server: i32 = line.trim().parse().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    shell.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (obs, _) = bed.report(agent.stop());
    let in_pod = |kind: Kind| -> Vec<u64> {
        obs.iter()
            .filter(|o| o.kind == kind && o.pod.as_deref() == Some("default/web-a"))
            .filter_map(pid_of)
            .collect()
    };
    let (shell, server) = (u64::from(shell.id()), u64::try_from(server).unwrap());
    let execs = in_pod(Kind::Exec);
    assert_eq!(execs.len(), 3, "sh and its two sleeps: {execs:?}");
    assert!(
        execs.contains(&shell) && execs.contains(&server),
        "{execs:?}"
    );
    let mut exits = in_pod(Kind::Exit);
    exits.sort_unstable();
    let mut want = vec![shell, server];
    want.sort_unstable();
    assert_eq!(
        exits, want,
        "the shell's and the signalled server's exits, not the short sleep's (execs {execs:?})"
    );
}

/// The same with a 150 ms preStop `exec` in the deleted pod, between its deletion and SIGTERM:
/// the agent reports it as the plain exec a real node gives (no `reason`, no `prestop` flag:
/// the kernel cannot tell a hook from any other exec), and the report's preStop mark is that
/// exec (within 2 ms of the testbed's bracket), before the SIGTERM mark.
#[test]
fn the_unflagged_exec_between_deletion_and_sigterm_is_the_prestop_mark() {
    let run = one_of_two_forking_pods_terminated(150);
    let hook_pid = run.truth.prestop_pid.map(u64::from);
    let hooks: Vec<&Observation> = run
        .obs
        .iter()
        .filter(|o| o.kind == Kind::Exec && pid_of(o) == hook_pid)
        .collect();
    assert_eq!(hooks.len(), 1, "{:#?}", of_kind(&run.obs, Kind::Exec));
    let hook = hooks[0];
    assert_eq!(hook.pod.as_deref(), Some(run.deleted.as_str()));
    assert_eq!(
        (hook.reason.as_deref(), hook.unknown.get("prestop")),
        (None, None),
        "the agent's own exec line, unflagged"
    );
    let (after, before) = (
        off_ms(hook, run.truth.prestop_spawned.unwrap()),
        off_ms(hook, run.truth.prestop.unwrap()),
    );
    assert!(
        after >= -BOUND_MS && before <= BOUND_MS,
        "preStop exec {after:+.3} ms after the spawn, {before:+.3} ms from the hook's first line"
    );
    let p = pods_named(&run.report, &run.deleted);
    assert_eq!(p.len(), 1, "{:#?}", run.report.rollouts);
    let prestop = p[0].marks.prestop.as_ref().expect("a preStop mark");
    assert_eq!((prestop.time, prestop.source), (hook.time, Kind::Exec));
    let sigterm = p[0].marks.sigterm.as_ref().expect("a SIGTERM mark");
    assert!(prestop.time < sigterm.time, "{prestop:?} {sigterm:?}");
    assert!(
        !p[0].missing.iter().any(|m| m == "prestop"),
        "{:?}",
        p[0].missing
    );
    assert!(pods_named(&run.report, &run.kept).is_empty());
}

/// Keep-alive clients: K connections through the Service's ClusterIP, each sending a request
/// every 5 ms on its one connection, open across the pod's termination. Once its listener is
/// closed the app stops reading them and exits with them open: every client gets ECONNRESET,
/// the pod's kernel resets K connections (`TCP_ABORT_ON_CLOSE`) from port 8080, and the report
/// counts K resets at exit (each seen at both ends, counted once), none unrelated, on 8080.
#[test]
fn keep_alive_connections_open_at_the_apps_exit_are_resets_at_exit_on_the_pods_port() {
    const K: usize = 4;
    let mut bed = Bed::new();
    let pod = bed.pod("web-k");
    let ep = SocketAddr::new(pod.ip.into(), 8080);
    bed.node.set_endpoints(&bed.svc, &[ep], &[]).unwrap();
    let agent = bed.agent(&[&pod]);
    let spec = PodSpec {
        port: 8080,
        keep_alive: true,
        ..PodSpec::default()
    };
    let app_proc = PodProcess::start(&pod, &app(), spec).unwrap();
    let target = SocketAddr::new(bed.svc.cluster_ip, bed.svc.port);
    let stop = Stop::default();
    let clients: Vec<NsThread<std::io::Result<KeepAlive>>> = (0..K)
        .map(|_| {
            let stop = stop.0.clone();
            bed.client
                .ns
                .spawn(move || keep_alive_requests(target, Duration::from_millis(5), &stop))
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let delete = bed.delete(&pod);
    app_proc.terminate(&pod, &app(), delete).unwrap();
    let ends: Vec<KeepAlive> = clients
        .into_iter()
        .map(|c| c.join().unwrap().unwrap())
        .collect();
    assert!(
        ends.iter()
            .all(|e| e.error.as_deref() == Some("ECONNRESET") && e.answered > 10),
        "each client's connection served requests, then was reset: {ends:?}"
    );
    // kube-proxy removes the Service's last endpoint at once, then the sandbox goes. The agent
    // reads the clients' ECONNRESETs up to a poll interval later, when the ClusterIP is no
    // longer routed: it must still name the Service (a frontend stays one for a while after
    // the dataplane stopped routing it), or those resets fit no pod.
    bed.node.set_endpoints(&bed.svc, &[], &[ep]).unwrap();
    let name = format!("default/{}", pod.name);
    let pod_ip = IpAddr::from(pod.ip);
    bed.node.remove_pod(pod);
    std::thread::sleep(Duration::from_millis(300));
    let (obs, report) = bed.report(agent.stop());

    let resets: Vec<&Observation> = of_kind(&obs, Kind::Reset);
    assert_eq!(
        total(&obs, |o| o.kind == Kind::Reset),
        K as u64,
        "{resets:#?}"
    );
    assert!(
        resets
            .iter()
            .all(|o| o.pod.as_deref() == Some(name.as_str())
                && o.port == Some(8080)
                && o.reason.as_deref() == Some("TCP_ABORT_ON_CLOSE")),
        "the pod's side of each reset: {resets:#?}"
    );
    let client_resets: Vec<&Observation> = obs
        .iter()
        .filter(|o| o.kind == Kind::ConnError && o.reason.as_deref() == Some("ECONNRESET"))
        .collect();
    assert_eq!(client_resets.len(), K, "{client_resets:#?}");
    assert!(
        client_resets
            .iter()
            .all(|o| o.ip == Some(pod_ip) && o.port == Some(8080)),
        "each client's reset names the pod behind the ClusterIP: {client_resets:#?}"
    );
    let p = pods_named(&report, &name);
    assert_eq!(p.len(), 1, "{:#?}", report.rollouts);
    assert_eq!(p[0].port, Some(8080));
    assert_eq!(
        (
            p[0].errors.at_exit,
            p[0].errors.unrelated,
            p[0].errors.undetermined
        ),
        // One reset per connection, seen at both ends (the pod's RST, the client's
        // ECONNRESET): counted once, as each client saw one.
        (K as u64, 0, 0),
        "{:?}",
        p[0].errors
    );
    // Per client: the one client, through the Service, with the cure for keep-alive resets.
    let [c] = &report.rollouts[0].clients[..] else {
        panic!("{:#?}", report.rollouts[0].clients)
    };
    assert_eq!(c.path, correlate::clients::Path::Service, "{c:#?}");
    assert_eq!((c.errors.at_exit, c.errors.total()), (K as u64, K as u64));
    assert!(
        c.reason
            .contains("reset at the pod's exit (keep-alive): drain on SIGTERM")
            && c.reason.contains("close idle keep-alive connections"),
        "{}",
        c.reason
    );
}

/// A pod without a readiness probe whose app listens 1 s after it starts (the v1.23 `startup`
/// Deployment in small): its endpoint is ready at once, a client connecting every 5 ms is
/// refused by the pod's kernel until the app listens. Every refusal the client saw is a refusal
/// before listening of the new pod, the listener's open is within 2 ms of the app's own mark,
/// and the advice is a readiness probe on the port.
#[test]
fn a_pod_listening_a_second_late_without_a_readiness_probe_refuses_until_it_listens() {
    let mut bed = Bed::new();
    let pod = bed.pod("web-late");
    if let Some(ready) = bed.api.last_mut() {
        let api = ready.details.api_mut();
        api.readiness_probe = Some(kubectl_zdt::observation::ReadinessProbe {
            kind: "none".into(),
            port: None,
            path: None,
            initial_delay_s: None,
            period_s: None,
        });
        api.container = Some("app".into());
    }
    let agent = bed.agent(&[&pod]);
    // No probe to wait for: the endpoint turns ready as soon as the container runs.
    let mut ready = bed.api_line(
        Kind::EndpointReady,
        &pod.name,
        IpAddr::from(pod.ip),
        Timestamp::now(),
    );
    ready.port = Some(8080);
    ready.service = Some(bed.svc.name.as_str().into());
    bed.api.push(ready);
    let traffic = Traffic::requests(&bed.client, SocketAddr::new(pod.ip.into(), 8080));
    let app_process = PodProcess::start(
        &pod,
        &app(),
        PodSpec {
            port: 8080,
            listen_after_ms: 1_000,
            ..PodSpec::default()
        },
    )
    .unwrap();
    // Until the listening app has served a request (the first one can take a while on a
    // loaded machine: a fixed 300 ms failed one run in five), at most 10 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline
        && !traffic
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|a| a.error.is_none())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let attempts = traffic.finish();
    let (obs, report) = bed.report(agent.stop());
    let refused = attempts
        .iter()
        .filter(|a| a.error.as_deref() == Some("ECONNREFUSED"))
        .count() as u64;
    let served = attempts.iter().filter(|a| a.error.is_none()).count();
    assert!(
        refused > 50 && served > 0,
        "{refused} refused, {served} served"
    );

    let [ro] = &report.rollouts[..] else {
        panic!("{:#?}", report.rollouts)
    };
    let [s] = &ro.startup[..] else {
        panic!("{:#?}", ro.startup)
    };
    assert_eq!(s.pod.as_deref(), Some("default/web-late"));
    assert_eq!(s.errors.before_listening, refused, "{:?}", s.errors);
    // The app answers without reading the request: its kernel resets each connection it
    // served, which no client saw as a failure.
    assert_eq!(s.errors.after_ready, 0, "{:?}", s.errors);
    assert_eq!(
        s.errors.total() - s.errors.unrelated,
        refused,
        "{:?}",
        s.errors
    );
    assert_eq!(s.verdict, correlate::Verdict::Unsafe);
    let open = of_kind(&obs, Kind::ListenerOpen);
    let [open] = &open[..] else {
        panic!("{open:#?}")
    };
    // The listener opened right before the app's `ready` line.
    let off = off_ms(open, app_process.listening);
    assert!(
        (-BOUND_MS..=0.5).contains(&off),
        "listener_open {off} ms off"
    );
    assert!(
        s.startup_gap_ms.is_some_and(|g| g > 900.0),
        "{:?}",
        s.startup_gap_ms
    );
    assert!(
        s.reason.contains("it has no readiness probe"),
        "{}",
        s.reason
    );
    let [a] = &report.readiness_advice[..] else {
        panic!("{:#?}", report.readiness_advice)
    };
    assert!(
        a.patch
            .as_ref()
            .unwrap()
            .command
            .contains(r#""name":"app","readinessProbe":{"tcpSocket":{"port":8080}"#)
    );
}

/// A real node's pod bridge keeps the MAC address the CNI plugin gave it: a bridge that took
/// the lowest MAC of its ports changes it when that pod goes, and the other pods' replies to
/// the old gateway MAC are lost (a client's connect to a pod that was never deleted timed out).
#[test]
fn the_pod_bridge_keeps_its_mac_address_when_a_pod_goes() {
    require_root();
    let mut node = Node::create().unwrap();
    let mac = |node: &Node| {
        node.ns
            .exec("cat", &["/sys/class/net/br0/address"])
            .unwrap()
            .trim()
            .to_owned()
    };
    let pods: Vec<_> = (0..3)
        .map(|i| node.add_pod(&format!("bridge-{i}")).unwrap())
        .collect();
    assert_eq!(mac(&node), BRIDGE_MAC);
    for (i, pod) in pods.into_iter().enumerate() {
        node.remove_pod(pod);
        let port = format!("hv{}", i + 1);
        wait_until(|| node.ns.ip(&format!("link show {port}")).is_err());
        assert_eq!(mac(&node), BRIDGE_MAC, "after {port} went");
    }
}
