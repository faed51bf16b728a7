//! `kubectl-zdt demo`: a rollout race on this machine, no cluster needed.
//!
//! A node namespace with two pods behind a Service (kube-proxy iptables rules) and a client that
//! connects to the ClusterIP every 5 ms. The old pod is deleted: the kubelet side runs the
//! preStop delay, then SIGTERM makes the app close its listener at once; the endpoint side
//! rewrites the Service rules `--propagation` later. The agent's probes, loaded into this kernel,
//! show every refused connection as it happens. The race runs twice: without a preStop delay,
//! and with one longer than the propagation delay.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use ipnet::IpNet;
use tokio::sync::mpsc;

use jiff::Timestamp;

use crate::{
    agent::{Agent, AgentConfig, WatchedNetns, hostname},
    kernel::clock::Clock,
    observation::{Kind, NodeName, Observation, PodRef, WorkloadRef},
    testbed::{
        Node,
        kube_proxy::ServicePort,
        netns,
        node::cluster_ip,
        pod::{PodProcess, PodSpec, app_binary},
        tcp::{Attempt, connect_loop},
    },
};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Time kube-proxy takes to remove the old pod after its deletion (ms). Real clusters:
    /// 0.36–1.03 s measured on a v1.36 node.
    #[arg(long, default_value_t = 600)]
    pub propagation_ms: u64,

    /// preStop delay of the second run (ms); 0 runs only the first.
    #[arg(long, default_value_t = 1000)]
    pub prestop_ms: u64,

    /// Also write every observation (JSON lines) to this file, for `kubectl zdt analyze`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<std::path::PathBuf>,

    /// Also write the HTML report to this file.
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
}

pub fn main(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "the demo creates network namespaces and loads eBPF programs: run it as root (`sudo kubectl-zdt demo`)"
        );
    }
    println!("kubectl-zdt demo: a rollout race on this kernel (network namespaces, real probes)\n");
    let mut prestops = vec![0];
    if args.prestop_ms > 0 {
        prestops.push(args.prestop_ms);
    }
    let mut runs = Vec::new();
    let mut observations = Vec::new();
    for (i, prestop_ms) in prestops.into_iter().enumerate() {
        let propagation_ms = args.propagation_ms;
        let node = Node::create()?;
        let node_path = node.ns.path();
        // The agent runs in the node's network namespace, as with hostNetwork: its dataplane
        // watcher then sees this node's kube-proxy rules. Threads made on this thread (the
        // runtime's) inherit the namespace.
        let run = std::thread::spawn(move || -> anyhow::Result<(RaceResult, Vec<Observation>)> {
            netns::enter(&node_path)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("failed to start the async runtime")?;
            runtime.block_on(race(node, i + 1, prestop_ms, propagation_ms))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the demo run panicked"))??;
        runs.push(run.0);
        observations.extend(run.1);
    }
    println!("Summary");
    for r in &runs {
        println!(
            "  preStop {:>5} ms: kernel saw {:>3} refused SYNs, the client saw {:>3} failed of {} connections{}",
            r.prestop_ms,
            r.kernel_refused,
            r.client_failed,
            r.attempts,
            if r.client_failed == 0 {
                "  ← zero downtime"
            } else {
                ""
            }
        );
    }
    let report = crate::correlate::correlate(&observations, &crate::correlate::Options::default());
    println!("\nThe report `kubectl zdt analyze` makes of what the agent recorded:\n");
    print!(
        "{}",
        crate::report::render(&report, crate::report::Format::Table)?
    );
    if let Some(path) = &args.record {
        let mut text = String::new();
        for o in &observations {
            text.push_str(&o.to_json_line());
            text.push('\n');
        }
        std::fs::write(path, text)
            .with_context(|| format!("failed to write {}", path.display()))?;
        println!(
            "\nObservations written to {} (try `kubectl zdt analyze {} -o wide`).",
            path.display(),
            path.display()
        );
    }
    if let Some(path) = &args.html {
        std::fs::write(path, crate::report::html::render(&report))
            .with_context(|| format!("failed to write {}", path.display()))?;
        println!("HTML report written to {}.", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// What one run measured.
pub struct RaceResult {
    pub prestop_ms: u64,
    pub attempts: usize,
    pub client_failed: usize,
    pub kernel_refused: u64,
}

/// The pod lifecycle facts the demo's script knows as the control plane (a cluster's agents get
/// them from the API watches): the pod is ready and owns its IP; it is being deleted.
fn api(
    kind: Kind,
    node: &NodeName,
    pod: &str,
    uid: String,
    ip: IpAddr,
    at_mono: u64,
) -> Observation {
    let mut o = Observation::new(kind, Clock::measure().to_wall(at_mono), node.clone());
    o.pod = Some(PodRef::new("default", pod));
    o.pod_uid = Some(uid.into());
    o.ip = Some(ip);
    o.details.api_mut().workload = Some(WorkloadRef::new("deployment", "web"));
    o
}

async fn race(
    mut node: Node,
    run: usize,
    prestop_ms: u64,
    propagation_ms: u64,
) -> anyhow::Result<(RaceResult, Vec<Observation>)> {
    println!(
        "── Run: preStop {}, kube-proxy removes the old pod {propagation_ms} ms after deletion ──",
        if prestop_ms == 0 {
            "none".to_owned()
        } else {
            format!("sleep {prestop_ms} ms")
        }
    );
    let app = app_binary(None)?;
    let (old_name, new_name) = (format!("web-{run}-old"), format!("web-{run}-new"));
    let old = node.add_pod(&old_name)?;
    let new = node.add_pod(&new_name)?;
    let client = node.add_client("client")?;
    let svc = ServicePort {
        name: "default/web".into(),
        cluster_ip: cluster_ip(10),
        port: 80,
    };
    let old_ep = SocketAddr::new(old.ip.into(), 8080);
    let new_ep = SocketAddr::new(new.ip.into(), 8080);
    node.set_endpoints(&svc, &[old_ep], &[])?;

    let watch: Vec<IpNet> = [IpAddr::from(old.ip), IpAddr::from(new.ip), svc.cluster_ip]
        .into_iter()
        .map(IpNet::from)
        .collect();
    let node_name = NodeName(hostname());
    let mut config = AgentConfig::new(node_name.clone(), watch);
    config.watch_netns = vec![WatchedNetns::open(Path::new(&old.ns.path()))?];
    let mut agent = Agent::start(&config)?;
    let spec = PodSpec {
        port: 8080,
        prestop_ms,
        drain_ms: 0,
        ..PodSpec::default()
    };
    let old_app = PodProcess::start(&old, &app, spec.clone())?;
    let _new_app = PodProcess::start(
        &new,
        &app,
        PodSpec {
            prestop_ms: 0,
            ..spec
        },
    )?;

    let (tx, rx) = mpsc::channel::<Observation>(65536);
    let opened =
        crate::dataplane::watcher::open().context("failed to start the dataplane watcher")?;
    let armed = agent.arm_dataplane(&opened.arm)?;
    let dataplane_watcher = opened
        .start(&node_name, &tx, armed)
        .context("failed to start the dataplane watcher")?;
    agent.use_dataplane(&dataplane_watcher);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent.run(tx, async {
        let _ = stop_rx.await;
    }));
    let t0 = Clock::monotonic_now_ns();
    let uid = |n: &str| format!("00000000-0000-4000-8000-{:012x}", run * 16 + n.len());
    // What the agent's pod map does in a cluster: a namespace is a pod.
    let owner = PodOfNetns {
        netns: u64::from(config.watch_netns[0].inum),
        pod: format!("default/{old_name}"),
        uid: uid("old"),
    };
    let printer = tokio::spawn(print_live(rx, Clock::measure().to_wall(t0), owner));

    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let target = SocketAddr::new(svc.cluster_ip, svc.port);
    let client_thread = connect_loop(
        &client.ns,
        target,
        Duration::from_millis(5),
        100_000,
        stop.clone(),
        log.clone(),
    )?;
    let elapsed = move |t: u64| (t.saturating_sub(t0)) / 1_000_000;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let deleted = Clock::monotonic_now_ns();
    println!(
        "  +{:>5} ms  pod {old_name} deleted (a client connects to {target} every 5 ms)",
        elapsed(deleted)
    );
    let mut script = vec![
        api(
            Kind::PodReady,
            &node_name,
            &old_name,
            uid("old"),
            IpAddr::from(old.ip),
            t0,
        ),
        api(
            Kind::PodReady,
            &node_name,
            &new_name,
            uid("new1"),
            IpAddr::from(new.ip),
            t0,
        ),
        api(
            Kind::PodDeleting,
            &node_name,
            &old_name,
            uid("old"),
            IpAddr::from(old.ip),
            deleted,
        ),
    ];
    script[2].details.api_mut().grace_period_s = Some(30);
    // The two sides of the race run in parallel, as the kubelet and kube-proxy do.
    let dataplane = async {
        tokio::time::sleep(Duration::from_millis(propagation_ms)).await;
        let r = node.set_endpoints(&svc, &[new_ep], &[old_ep]);
        let at = Clock::monotonic_now_ns();
        println!(
            "  +{:>5} ms  testbed kube-proxy: iptables-restore replacing {old_ep} by {new_ep} returned",
            elapsed(at)
        );
        (r, at)
    };
    let kubelet = tokio::task::spawn_blocking(move || {
        let truth = old_app.terminate(&old, &app, deleted);
        (truth, old)
    });
    let ((programmed, dp_at), joined) = tokio::join!(dataplane, kubelet);
    programmed?;
    let (truth, old) = joined.context("kubelet task failed")?;
    let truth = truth?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    client_thread.join()?;
    node.remove_pod(old);
    // Let the dataplane watcher report the last commit, then stop everything.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(dataplane_watcher);
    let _ = stop_tx.send(());
    agent_task.await.context("agent task failed")??;
    let (kernel_refused, mut observations) = printer.await.context("printer failed")?;
    observations.append(&mut script);

    let attempts = log.lock().map(|l| l.clone()).unwrap_or_default();
    let failed = attempts.iter().filter(|a| a.error.is_some()).count();
    let gap_ms = (dp_at as i64 - truth.listen_closed as i64) / 1_000_000;
    println!(
        "  gap (rule removed − listener closed) = {gap_ms:+} ms; kernel: {kernel_refused} refused; client: {failed} of {} failed\n",
        attempts.len()
    );
    Ok((
        RaceResult {
            prestop_ms,
            attempts: attempts.len(),
            client_failed: failed,
            kernel_refused,
        },
        observations,
    ))
}

/// Prints what the kernel reports as it arrives: termination marks one per line, refused SYNs
/// and client errors once per 100 ms. Returns the number of refused SYNs and every observation.
/// Which pod a network namespace belongs to.
struct PodOfNetns {
    netns: u64,
    pod: String,
    uid: String,
}

async fn print_live(
    mut rx: mpsc::Receiver<Observation>,
    t0: Timestamp,
    owner: PodOfNetns,
) -> (u64, Vec<Observation>) {
    let mut refused = 0u64;
    let mut all = Vec::new();
    let mut buckets: BTreeMap<(Kind, i64), u64> = BTreeMap::new();
    while let Some(mut o) = rx.recv().await {
        if o.pod.is_none() && o.details.kernel().netns == Some(owner.netns) {
            o.pod = Some(owner.pod.as_str().into());
            o.pod_uid = Some(owner.uid.as_str().into());
        }
        all.push(o.clone());
        let at = crate::observation::millis_between(o.time, t0).round() as i64;
        let what = match o.kind {
            Kind::Refused | Kind::ConnError => {
                let n = o.weight();
                if o.kind == Kind::Refused {
                    refused += n;
                }
                let b = buckets.entry((o.kind, at / 100)).or_insert(0);
                *b += n;
                if *b > n {
                    continue;
                }
                let addr = |ip: Option<IpAddr>, port: Option<u16>| {
                    format!(
                        "{}:{}",
                        ip.map(|i| i.to_string()).unwrap_or_default(),
                        port.unwrap_or(0)
                    )
                };
                if o.kind == Kind::Refused {
                    format!(
                        "kernel: pod refused a SYN on {} ({})",
                        addr(o.ip, o.port),
                        o.reason.as_deref().unwrap_or("")
                    )
                } else {
                    format!(
                        "kernel: client got {} from {}",
                        o.reason.as_deref().unwrap_or(""),
                        o.service
                            .as_ref()
                            .map_or_else(|| addr(o.ip, o.port), ToString::to_string)
                    )
                }
            }
            Kind::DataplaneRemoved | Kind::DataplaneAdded => format!(
                "node dataplane ({}): {} {}:{} for {}",
                o.details
                    .dataplane()
                    .mode
                    .as_deref()
                    .unwrap_or("kube-proxy"),
                if o.kind == Kind::DataplaneRemoved {
                    "removed"
                } else {
                    "added"
                },
                o.ip.map(|i| i.to_string()).unwrap_or_default(),
                o.port.unwrap_or(0),
                o.service
                    .as_ref()
                    .map_or_else(|| "?".to_owned(), ToString::to_string)
            ),
            Kind::Exec => format!(
                "kernel: exec {} in the pod",
                o.details.process().comm.as_deref().unwrap_or("?")
            ),
            Kind::Signal => format!(
                "kernel: {} delivered to the app",
                o.reason.as_deref().unwrap_or("signal")
            ),
            Kind::ListenerClosed => format!(
                "kernel: the app closed its listener on port {}",
                o.port.unwrap_or(0)
            ),
            Kind::Exit => format!(
                "kernel: {} (pid {}) exited",
                o.details.process().comm.as_deref().unwrap_or("a process"),
                o.details.process().pid.unwrap_or(0)
            ),
            _ => continue,
        };
        println!("  +{at:>5} ms  {what}");
    }
    (refused, all)
}
