//! The whole rollout on the node testbed, with real traffic between network namespaces and the
//! ground truth of independent clients: a new pod whose readiness probe holds its endpoint
//! back until it listens, a rollout that takes ready pods away before their replacements are
//! ready, and a client keeping its own (lagging) endpoint list. The agent's lines are filed
//! under pods by the agent's own pod index, the kubelet's probes tagged as in cluster mode, the
//! API's lines are the testbed's, and the report's counts must equal the clients'. Needs root
//! (but the last test: the agent's capacity-dip metric from its EndpointSlice watch, against
//! the scripted API server).

use crate::support;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use jiff::Timestamp;
use kubectl_zdt::{
    correlate::{self, Options, Report, Rollout},
    kernel::clock::Clock,
    observation::{Kind, Observation},
    testbed::{
        ClientHandle, Node, PodHandle,
        api::Api,
        balancer::Balancer,
        kube_proxy::ServicePort,
        kubelet::{Probed, readiness_tcp},
        netns::NsThread,
        node::cluster_ip,
        pod::{PodProcess, PodSpec},
        tcp::{Attempt, KeepAlive, keep_alive_requests, request_loop},
    },
};
use support::{AgentProcess, require_root, wait_until};

const PORT: u16 = 8080;
/// The testbed kubelet's probe period, as the pod spec says (`periodSeconds: 1`).
const PROBE_PERIOD: Duration = Duration::from_secs(1);
/// The kernel's instant of an event lies within this of the testbed's bracket around it.
const BOUND_MS: f64 = 2.0;
/// The agent sees every network namespace's connections to the watched addresses: this
/// file's pods and Service sit at hosts no other testbed test uses (those start at 1, with
/// ClusterIP host 10), so a testbed test running at the same time on the machine is not seen.
const FIRST_HOST: u8 = 60;

fn app() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kubectl-zdt"))
}

fn ep(p: &PodHandle) -> SocketAddr {
    SocketAddr::new(p.ip.into(), PORT)
}

/// Every app reads each request before it answers (a forked child per connection, as busybox
/// `httpd`): a served request closes cleanly, so every error a client sees is the rollout's.
fn spec(listen_after_ms: u64) -> PodSpec {
    PodSpec {
        port: PORT,
        listen_after_ms,
        fork_per_connection: true,
        ..PodSpec::default()
    }
}

/// A node whose Service `default/web` sends to the pods of deployment/web, a client node, and
/// the API's side.
struct Bed {
    node: Node,
    client: ClientHandle,
    api: Api,
    endpoints: Vec<SocketAddr>,
    next_host: u8,
}

impl Bed {
    fn new() -> Self {
        require_root();
        let mut node = Node::create().unwrap();
        let client = node.add_client("client").unwrap();
        let svc = ServicePort {
            name: "default/web".into(),
            cluster_ip: cluster_ip(FIRST_HOST),
            port: 80,
        };
        Self {
            node,
            client,
            api: Api::new("deployment/web", svc, PORT),
            endpoints: Vec::new(),
            next_host: FIRST_HOST,
        }
    }

    /// A pod's sandbox (its network namespace on the bridge), known to the agent's index;
    /// `probe`: the port of the tcpSocket readiness probe its spec has.
    fn pod(&mut self, name: &str, probe: Option<u16>) -> PodHandle {
        self.next_host += 1;
        let pod = self.node.add_pod_at(name, self.next_host).unwrap();
        let container = match probe {
            Some(port) => serde_json::json!({
                "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1}
            }),
            None => serde_json::json!({}),
        };
        self.api
            .known(name, IpAddr::from(pod.ip), &pod.ns, container);
        pod
    }

    fn set_endpoints(&self, stale: &[SocketAddr]) {
        self.node
            .set_endpoints(&self.api.svc, &self.endpoints, stale)
            .unwrap();
    }

    /// An old pod: serving, ready and behind the Service since before the capture.
    fn serve_old(&mut self, pod: &PodHandle) -> PodProcess {
        self.serve_old_with(pod, spec(0))
    }

    fn serve_old_with(&mut self, pod: &PodHandle, spec: PodSpec) -> PodProcess {
        let p = PodProcess::start(pod, &app(), spec).unwrap();
        self.endpoints.push(ep(pod));
        self.set_endpoints(&[]);
        p
    }

    /// The agent in the node's namespace (hostNetwork), watching these pods and the Service.
    fn agent(&self, pods: &[&PodHandle]) -> AgentProcess {
        let mut args = vec![
            "--watch-cidr".to_owned(),
            format!("{}/32", self.api.svc.cluster_ip),
        ];
        for p in pods {
            args.extend(["--watch-netns".to_owned(), p.ns.path()]);
            args.extend(["--watch-cidr".to_owned(), format!("{}/32", p.ip)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        AgentProcess::start_in(Some(self.node.ns.name()), &args)
    }

    /// A new pod with a tcpSocket readiness probe on `probe_port`, whose app listens on the
    /// Service's port `listen_after_ms` after it starts: the kubelet probes it from the node
    /// every second, and once a probe passed the pod and its endpoint turn ready and kube-proxy
    /// routes to it. Returns once the app listens, with the probes.
    fn start_new(
        &mut self,
        pod: &PodHandle,
        listen_after_ms: u64,
        probe_port: u16,
    ) -> (PodProcess, Probed) {
        let prober = readiness_tcp(
            &self.node.ns,
            SocketAddr::new(pod.ip.into(), probe_port),
            PROBE_PERIOD,
            Duration::from_secs(20),
        )
        .unwrap();
        std::thread::scope(|s| {
            let app = s.spawn(|| PodProcess::start(pod, &app(), spec(listen_after_ms)));
            let probed = prober.join().unwrap().unwrap();
            self.api.record(Kind::PodReady, pod);
            if let Some(ready) = self.api.lines.last_mut() {
                *ready = ready
                    .clone()
                    .with_extra(
                        "readiness_probe",
                        serde_json::json!({"type": "tcp_socket", "port": probe_port, "period_s": 1}),
                    )
                    .with_extra("container", "app");
            }
            self.api.record(Kind::EndpointReady, pod);
            self.endpoints.push(ep(pod));
            self.set_endpoints(&[]);
            (app.join().unwrap().unwrap(), probed)
        })
    }

    /// An old pod deleted: its endpoint terminating, kube-proxy stops routing to it, then
    /// SIGTERM, exit, sandbox gone. Returns when its endpoint turned terminating.
    fn retire(&mut self, pod: PodHandle, app_process: PodProcess) -> Timestamp {
        let delete = Clock::monotonic_now_ns();
        self.api.record(Kind::PodDeleting, &pod);
        let gone = self.api.record(Kind::EndpointTerminating, &pod);
        self.endpoints.retain(|e| *e != ep(&pod));
        self.set_endpoints(&[ep(&pod)]);
        app_process.terminate(&pod, &app(), delete).unwrap();
        self.remove(pod);
        gone
    }

    /// A deleted pod's endpoint removed, its sandbox gone.
    fn remove(&mut self, pod: PodHandle) {
        self.api.record(Kind::EndpointRemoved, &pod);
        self.node.remove_pod(pod);
    }

    /// The agent's lines filed under pods beside the API's, and the report.
    fn report(&mut self, agent: AgentProcess) -> (Vec<Observation>, Report) {
        let obs = self.api.attribute(&self.node.ns, agent.stop());
        let report = correlate::correlate(&obs, &Options::default());
        (obs, report)
    }
}

/// Requests through the Service's ClusterIP (a new connection each, every 5 ms), stopped
/// when dropped.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<NsThread<()>>,
    log: Arc<Mutex<Vec<Attempt>>>,
}

impl Traffic {
    /// Starts, and returns once a request was served.
    fn through_service(bed: &Bed) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<Vec<Attempt>>> = Arc::default();
        let target = SocketAddr::new(bed.api.svc.cluster_ip, bed.api.svc.port);
        let thread = request_loop(
            &bed.client.ns,
            target,
            Duration::from_millis(5),
            stop.clone(),
            log.clone(),
        )
        .unwrap();
        wait_until(|| log.lock().unwrap().iter().any(|a| a.error.is_none()));
        Self {
            stop,
            thread: Some(thread),
            log,
        }
    }

    fn finish(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
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

/// The client's failed connections: refused, reset or timed out by the kernel. A request
/// whose answer the client stopped waiting for (its 1 s read timeout, `EAGAIN`: a forking app
/// slow on a loaded machine) is no failed connection, and no kernel line reports one.
fn failed(attempts: &[Attempt]) -> u64 {
    let mut by: std::collections::BTreeMap<&str, u64> = Default::default();
    for e in attempts.iter().filter_map(|a| a.error.as_deref()) {
        *by.entry(e).or_default() += 1;
    }
    eprintln!("client errors: {by:?}");
    by.iter()
        .filter(|(e, _)| connection_failure(e))
        .map(|(_, n)| n)
        .sum()
}

fn connection_failure(errno: &str) -> bool {
    ["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EHOSTUNREACH"].contains(&errno)
}

/// The one rollout of the report.
fn the_rollout(report: &Report) -> &Rollout {
    let [r] = &report.rollouts[..] else {
        panic!("{:#?}", report.rollouts)
    };
    r
}

/// The errors the report files under the clients (errors of nothing the rollout did left out;
/// the kubelet's probes are counted apart).
fn client_errors(r: &Rollout) -> u64 {
    r.errors.total() - r.errors.unrelated
}

/// A surge rollout of one replica (maxSurge 1, maxUnavailable 0) with clients of the Service:
/// the new pod's app listens on the Service's port 1.5 s after it starts, its readiness probe
/// checks `probe_port` (where, if it is another port, a listener is open from the start), and
/// the old pod goes once the new one is ready.
fn surge_rollout(probe_port: u16) -> (Vec<Attempt>, Report, Probed) {
    let mut bed = Bed::new();
    let old = bed.pod("web-a", None);
    let new = bed.pod("web-b", Some(probe_port));
    let old_app = bed.serve_old(&old);
    let _other = (probe_port != PORT).then(|| {
        new.ns
            .run_in(move || std::net::TcpListener::bind(("0.0.0.0", probe_port)))
            .unwrap()
            .unwrap()
    });
    let agent = bed.agent(&[&old, &new]);
    bed.api
        .rollout_start(1, serde_json::json!(0), serde_json::json!(1));
    let traffic = Traffic::through_service(&bed);
    let (_new_app, probed) = bed.start_new(&new, 1_500, probe_port);
    std::thread::sleep(Duration::from_millis(300));
    bed.retire(old, old_app);
    std::thread::sleep(Duration::from_millis(300));
    let attempts = traffic.finish();
    let (_, report) = bed.report(agent);
    (attempts, report, probed)
}

/// A surge rollout (maxSurge 1, maxUnavailable 0) whose new pod listens 1.5 s after it starts
/// and has a tcpSocket readiness probe on the Service's port: the kubelet's probes are refused
/// until the app listens, the endpoint turns ready only when one passes, so no client is
/// refused. The report counts the refused probes as the kubelet's (as many as it made), none
/// before listening, judges the new pod safe and advises no readiness probe; its count of
/// clients' errors equals the client's.
#[test]
fn a_new_pod_whose_readiness_probe_holds_it_back_until_it_listens_refuses_no_client() {
    let (attempts, report, probed) = surge_rollout(PORT);

    assert!(
        probed.refused() >= 1 && attempts.len() > 100,
        "{} probes refused, {} requests",
        probed.refused(),
        attempts.len()
    );
    let r = the_rollout(&report);
    assert_eq!(client_errors(r), failed(&attempts), "{:?}", r.errors);
    eprintln!(
        "{} requests; probes refused: kubelet {}, zdt {:?}",
        attempts.len(),
        probed.refused(),
        r.errors
    );
    let [s] = &r.startup[..] else {
        panic!("{:#?}", r.startup)
    };
    assert_eq!(s.pod.as_deref(), Some("default/web-b"));
    assert_eq!(
        (
            s.errors.probes,
            s.errors.before_listening,
            s.errors.after_ready
        ),
        (probed.refused(), 0, 0),
        "{:?}",
        s.errors
    );
    assert_eq!(s.verdict, correlate::Verdict::Safe, "{}", s.reason);
    assert!(
        report.readiness_advice.is_empty(),
        "{:#?}",
        report.readiness_advice
    );
}

/// The same rollout, but the new pod's readiness probe checks another port (an admin listener
/// open at once) while the app listens on the Service's port 1.5 s late: the first probe
/// passes, the endpoint turns ready, and clients of the Service routed to the new pod are
/// refused until it listens. Every refusal the client saw is in the report as a refusal
/// before listening of the new pod, which is unsafe because its probe checks the wrong port,
/// and the advice is a probe on the Service's port.
#[test]
fn a_readiness_probe_on_another_port_lets_clients_be_refused_until_the_app_listens() {
    let (attempts, report, probed) = surge_rollout(9090);

    let refused = attempts
        .iter()
        .filter(|a| a.error.as_deref() == Some("ECONNREFUSED"))
        .count() as u64;
    let r = the_rollout(&report);
    eprintln!(
        "{} requests, {refused} refused; zdt {:?}",
        attempts.len(),
        r.errors
    );
    assert!(
        refused > 20 && probed.refused() == 0,
        "{refused} refused, {} probes refused",
        probed.refused()
    );
    assert_eq!(client_errors(r), failed(&attempts), "{:?}", r.errors);
    let [s] = &r.startup[..] else {
        panic!("{:#?}", r.startup)
    };
    assert_eq!(s.pod.as_deref(), Some("default/web-b"));
    assert_eq!(s.errors.before_listening, refused, "{:?}", s.errors);
    assert_eq!(s.verdict, correlate::Verdict::Unsafe, "{}", s.reason);
    assert!(
        s.reason
            .contains("readiness probe checks port 9090, not port 8080"),
        "{}",
        s.reason
    );
    let [a] = &report.readiness_advice[..] else {
        panic!("{:#?}", report.readiness_advice)
    };
    let patch = &a.patch.as_ref().expect("a patch").command;
    let probe = r#""name":"app","readinessProbe":{"tcpSocket":{"port":8080}"#;
    assert!(patch.contains(probe), "{patch}");
}

/// Two replicas rolled with maxUnavailable 1, maxSurge 0: each old pod's endpoint goes before
/// its replacement (probed, listening 1 s late) is ready. The capacity section's lowest point
/// is 1 of 2 ready, at the first old endpoint's end, for as long as the testbed kept it there
/// (both windows, from its own instants); it names maxUnavailable 1, and the advice is
/// maxUnavailable 0 / maxSurge 1 with a patch. The report's count of clients' errors equals the
/// client's.
#[test]
fn a_rollout_taking_ready_pods_away_before_their_replacements_dips_below_its_replicas() {
    let mut bed = Bed::new();
    let a1 = bed.pod("web-a1", None);
    let a2 = bed.pod("web-a2", None);
    let b1 = bed.pod("web-b1", Some(PORT));
    let b2 = bed.pod("web-b2", Some(PORT));
    let a1_app = bed.serve_old(&a1);
    let a2_app = bed.serve_old(&a2);
    let agent = bed.agent(&[&a1, &a2, &b1, &b2]);
    bed.api
        .rollout_start(2, serde_json::json!(1), serde_json::json!(0));
    let traffic = Traffic::through_service(&bed);
    std::thread::sleep(Duration::from_millis(200));
    let gone1 = bed.retire(a1, a1_app);
    let (_b1_app, _) = bed.start_new(&b1, 1_000, PORT);
    let ready1 = bed.api.lines.last().unwrap().time;
    let gone2 = bed.retire(a2, a2_app);
    let (_b2_app, _) = bed.start_new(&b2, 1_000, PORT);
    let ready2 = bed.api.lines.last().unwrap().time;
    std::thread::sleep(Duration::from_millis(300));
    let attempts = traffic.finish();
    let (_, report) = bed.report(agent);

    let r = the_rollout(&report);
    assert_eq!(client_errors(r), failed(&attempts), "{:?}", r.errors);
    let c = r.capacity.as_ref().expect("a capacity section");
    eprintln!(
        "{} requests; {:?}; capacity {} of {} for {} ms",
        attempts.len(),
        r.errors,
        c.min_ready,
        c.desired,
        c.min_ready_ms
    );
    assert_eq!((c.desired, c.min_ready), (2, 1), "{c:#?}");
    assert_eq!(c.min_ready_at, gone1, "{c:#?}");
    let span = |a: Timestamp, b: Timestamp| (b - a).total(jiff::Unit::Millisecond).unwrap();
    let truth = span(gone1, ready1) + span(gone2, ready2);
    assert!(
        (c.min_ready_ms - truth).abs() < 0.01 && (c.ready_below_desired_ms - truth).abs() < 0.01,
        "1 of 2 ready for {} ms ({} ms below 2), the testbed kept it there {truth} ms",
        c.min_ready_ms,
        c.ready_below_desired_ms
    );
    assert!(
        c.reason
            .contains("maxUnavailable 1 let the rollout take ready pods away"),
        "{}",
        c.reason
    );
    let [a] = &report.capacity_advice[..] else {
        panic!("{:#?}", report.capacity_advice)
    };
    assert_eq!((a.desired, a.min_ready), (2, 1));
    let patch = a.patch.as_ref().expect("a patch");
    assert!(
        patch
            .command
            .contains(r#""rollingUpdate":{"maxUnavailable":0,"maxSurge":1}"#),
        "{}",
        patch.command
    );
}

/// A client pod (deployment/frontend) that keeps its own endpoint list and dials the pods'
/// addresses in turn, a request every 5 ms; one old pod is deleted without a preStop, its
/// endpoint removed and its app gone at once, while the client's list lags a second behind.
/// Every refusal the client saw is in the report, under that client, as dialled straight to
/// the pod IP, and for as long after the endpoint's removal as the client's last refusal
/// (within the bracket of that request and 2 ms).
#[test]
fn a_client_with_a_lagging_endpoint_list_is_named_with_how_long_it_dialled_the_pod_ip() {
    const LAG: Duration = Duration::from_secs(1);
    let mut bed = Bed::new();
    let gone = bed.pod("web-a", None);
    let kept = bed.pod("web-k", None);
    let gone_app = bed.serve_old(&gone);
    let _kept_app = bed.serve_old(&kept);
    let frontend = "frontend-5d8c7f9b4-x2k4q";
    bed.api.known(
        frontend,
        IpAddr::from(bed.client.ip),
        &bed.client.ns,
        serde_json::json!({}),
    );
    let agent = bed.agent(&[&gone, &kept]);
    let balancer = Balancer::start(
        &bed.client.ns,
        vec![ep(&gone), ep(&kept)],
        Duration::from_millis(5),
    )
    .unwrap();
    let gone_ep = ep(&gone);
    // Both pods served the client before one goes.
    wait_until(|| {
        let log = balancer.log.lock().unwrap();
        [gone_ep, ep(&kept)].iter().all(|t| {
            log.iter()
                .any(|d| d.target == *t && d.attempt.error.is_none())
        })
    });
    std::thread::sleep(Duration::from_millis(100));
    let delete = Clock::monotonic_now_ns();
    bed.api.record(Kind::PodDeleting, &gone);
    let removed = bed.api.record(Kind::EndpointRemoved, &gone);
    bed.endpoints.retain(|e| *e != gone_ep);
    bed.set_endpoints(&[gone_ep]);
    gone_app.terminate(&gone, &app(), delete).unwrap();
    std::thread::sleep(LAG.saturating_sub(Duration::from_nanos(
        Clock::monotonic_now_ns().saturating_sub(delete),
    )));
    balancer.forget(gone_ep);
    std::thread::sleep(Duration::from_millis(200));
    bed.node.remove_pod(gone);
    std::thread::sleep(Duration::from_millis(200));
    let dialled = balancer.finish();
    let (_, report) = bed.report(agent);

    let refused: Vec<_> = dialled
        .iter()
        .filter(|d| d.attempt.error.as_deref().is_some_and(connection_failure))
        .collect();
    assert!(
        refused.len() > 20
            && refused
                .iter()
                .all(|d| d.target == gone_ep && d.attempt.error.as_deref() == Some("ECONNREFUSED")),
        "{:?}",
        refused
            .iter()
            .map(|d| (d.target, d.attempt.error.as_deref()))
            .collect::<std::collections::BTreeSet<_>>()
    );
    let r = the_rollout(&report);
    assert_eq!(client_errors(r), refused.len() as u64, "{:?}", r.errors);
    let [c] = &r.clients[..] else {
        panic!("{:#?}", r.clients)
    };
    assert_eq!(c.client, "deployment/frontend -n default");
    assert_eq!(c.path, correlate::clients::Path::PodIp, "{c:#?}");
    assert_eq!(c.errors.total(), refused.len() as u64, "{c:#?}");
    assert_eq!(c.pod.as_deref(), Some("web-a"));
    let last = refused.last().unwrap();
    let clock = Clock::measure();
    let after = |mono: u64| {
        (clock.to_wall(mono) - removed)
            .total(jiff::Unit::Millisecond)
            .unwrap()
    };
    let (lo, hi) = (
        after(last.sent_ns) - BOUND_MS,
        after(last.attempt.at_ns) + BOUND_MS,
    );
    let measured = c
        .after_endpoint_removed_ms
        .expect("how long after the removal");
    eprintln!(
        "{} requests, {} refused; zdt {:?}; {measured} ms after the removal ({lo}..{hi})",
        dialled.len(),
        refused.len(),
        c.errors
    );
    assert!(
        (lo..=hi).contains(&measured),
        "{measured} ms after the removal, the client's last refusal {lo}..{hi} ms"
    );
    assert!(
        c.reason
            .contains("kept connecting to web-a's pod IP directly for"),
        "{}",
        c.reason
    );
}

/// Two client workloads with keep-alive connections through the Service's ClusterIP (3 from
/// deployment/frontend, 2 from deployment/worker, each sending a request every 5 ms on its
/// one connection) to a pod that is deleted: its endpoint goes first, but established
/// connections stay, and the app exits with them open. Every client connection is reset; the
/// report names each client workload with as many resets at the pod's exit as its own
/// connections saw, through the Service, with the drain advice.
#[test]
fn keep_alive_clients_reset_at_the_pods_exit_are_counted_per_client_workload() {
    let mut bed = Bed::new();
    let pod = bed.pod("web-k", None);
    let app_process = bed.serve_old_with(
        &pod,
        PodSpec {
            port: PORT,
            keep_alive: true,
            ..PodSpec::default()
        },
    );
    let worker = bed.node.add_client("worker").unwrap();
    let clients = [
        ("frontend-5d8c7f9b4-x2k4q", &bed.client, 3),
        ("worker-6c7d8e9f5-a1b2c", &worker, 2),
    ];
    for (name, c, _) in &clients {
        bed.api
            .known(name, IpAddr::from(c.ip), &c.ns, serde_json::json!({}));
    }
    let agent = bed.agent(&[&pod]);
    let target = SocketAddr::new(bed.api.svc.cluster_ip, bed.api.svc.port);
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<(&str, NsThread<std::io::Result<KeepAlive>>)> = clients
        .iter()
        .flat_map(|(name, c, k)| (0..*k).map(move |_| (*name, *c)))
        .map(|(name, c)| {
            let stop = stop.clone();
            let t =
                c.ns.spawn(move || keep_alive_requests(target, Duration::from_millis(5), &stop))
                    .unwrap();
            (name, t)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Deleted, its endpoint terminating in the API; this node's kube-proxy is late, and
    // reprograms the Service only once the clients were reset (the testbed's rule change while
    // they are established stops their answers without a reset: they would time out).
    let delete = Clock::monotonic_now_ns();
    bed.api.record(Kind::PodDeleting, &pod);
    bed.api.record(Kind::EndpointTerminating, &pod);
    app_process.terminate(&pod, &app(), delete).unwrap();
    let mut reset: std::collections::BTreeMap<&str, u64> = Default::default();
    for (name, t) in threads {
        let end = t.join().unwrap().unwrap();
        assert!(
            end.error.as_deref() == Some("ECONNRESET") && end.answered > 10,
            "{name}: {end:?}"
        );
        *reset.entry(name).or_default() += 1;
    }
    stop.store(true, Ordering::SeqCst);
    bed.endpoints.clear();
    bed.set_endpoints(&[ep(&pod)]);
    bed.remove(pod);
    std::thread::sleep(Duration::from_millis(200));
    let (_, report) = bed.report(agent);

    let r = the_rollout(&report);
    eprintln!("client resets {reset:?}; zdt {:?}", r.errors);
    assert_eq!(client_errors(r), 5, "{:?}", r.errors);
    let per_client: Vec<(&str, correlate::clients::Path, u64, u64)> = r
        .clients
        .iter()
        .map(|c| {
            (
                c.client.as_str(),
                c.path,
                c.errors.at_exit,
                c.errors.total(),
            )
        })
        .collect();
    assert_eq!(
        per_client,
        [
            (
                "deployment/frontend -n default",
                correlate::clients::Path::Service,
                reset["frontend-5d8c7f9b4-x2k4q"],
                reset["frontend-5d8c7f9b4-x2k4q"]
            ),
            (
                "deployment/worker -n default",
                correlate::clients::Path::Service,
                reset["worker-6c7d8e9f5-a1b2c"],
                reset["worker-6c7d8e9f5-a1b2c"]
            ),
        ],
        "{:#?}",
        r.clients
    );
    assert!(
        r.clients
            .iter()
            .all(|c| c.reason.contains("close idle keep-alive connections")),
        "{:#?}",
        r.clients
    );
}

/// The agent's EndpointSlice watch feeds the capacity-dip histograms (docs/metrics.md): the
/// API server's slice of Service `default/web` has 2 ready endpoints, one on the agent's node
/// `vm`; that one turns terminating while its replacement (on another node) is still starting
/// (maxUnavailable 1), then the replacement turns ready and the old one is gone. The scrape
/// then holds one dip of that Service: 1 of 2 ready (ratio 0.5). A surge of the same Service
/// first (a third endpoint ready before one leaves) records none.
#[tokio::test]
async fn the_agents_slice_watch_records_a_capacity_dip_of_a_service_on_its_node() {
    use crate::support::kube_double::apiserver::ApiServer;
    use kubectl_zdt::{
        agent::{api_watch::ApiWatch, pods::PodIndex, serve::Gauges},
        kernel::filter::Recorded,
    };
    let server = ApiServer::start().await;
    let slice = |eps: &[(&str, bool, bool, &str)]| {
        serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-x7k2p", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": eps.iter().map(|(ip, ready, terminating, node)| serde_json::json!({
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": ready, "terminating": terminating},
                "nodeName": node,
            })).collect::<Vec<_>>(),
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        })
    };
    let (a, b, c, d) = ("10.244.0.5", "10.244.1.6", "10.244.1.7", "10.244.1.8");
    server.put(slice(&[(a, true, false, "vm"), (b, true, false, "node-b")]));
    let gauges = Arc::new(Gauges::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watch = ApiWatch {
        client: server.client("agent"),
        node: kubectl_zdt::observation::NodeName("vm".into()),
        pods: Arc::new(Mutex::new(PodIndex::new(Duration::from_secs(600)))),
        gauges: gauges.clone(),
        netns: None,
    };
    tokio::spawn(
        watch.run(Arc::new(Mutex::new(Recorded::default())), tx, async move {
            let _ = stopped.await;
        }),
    );
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let dips = |gauges: &Gauges| -> Option<String> {
        let text = gauges.metrics.scrape(Timestamp::now(), true);
        text.lines()
            .find(|l| l.starts_with("zdt_capacity_dip_ready_ratio_count{"))
            .map(str::to_owned)
    };
    let synced = || gauges.api_synced.load(Ordering::Relaxed);
    for _ in 0..600 {
        if synced() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(synced(), "the watches never synced");
    // A surge: no dip.
    for eps in [
        vec![
            (a, true, false, "vm"),
            (b, true, false, "node-b"),
            (c, false, false, "node-b"),
        ],
        vec![
            (a, true, false, "vm"),
            (b, true, false, "node-b"),
            (c, true, false, "node-b"),
        ],
        vec![
            (a, true, false, "vm"),
            (b, false, true, "node-b"),
            (c, true, false, "node-b"),
        ],
        vec![(a, true, false, "vm"), (c, true, false, "node-b")],
    ] {
        server.put(slice(&eps));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dips(&gauges), None);
    // maxUnavailable 1: the endpoint on this node leaves before its replacement is ready.
    for eps in [
        vec![
            (a, false, true, "vm"),
            (c, true, false, "node-b"),
            (d, false, false, "node-b"),
        ],
        vec![(c, true, false, "node-b"), (d, false, false, "node-b")],
        vec![(c, true, false, "node-b"), (d, true, false, "node-b")],
    ] {
        server.put(slice(&eps));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let want = r#"zdt_capacity_dip_ready_ratio_count{namespace="default",service="web"} 1"#;
    for _ in 0..200 {
        if dips(&gauges).as_deref() == Some(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(dips(&gauges).as_deref(), Some(want));
    let text = gauges.metrics.scrape(Timestamp::now(), true);
    let half =
        r#"zdt_capacity_dip_ready_ratio_bucket{le="0.5",namespace="default",service="web"} 1"#;
    assert!(text.lines().any(|l| l == half), "{text}");
}
