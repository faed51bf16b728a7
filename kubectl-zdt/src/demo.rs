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
    agent::{Agent, AgentConfig, WatchedNetns, clock::Clock, hostname},
    observation::{Kind, NodeName, Observation},
    testbed::{
        Node,
        kube_proxy::ServicePort,
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
}

pub fn main(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "the demo creates network namespaces and loads eBPF programs: run it as root (`sudo kubectl-zdt demo`)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    println!("kubectl-zdt demo: a rollout race on this kernel (network namespaces, real probes)\n");
    let first = runtime.block_on(race(0, args.propagation_ms))?;
    let mut runs = vec![first];
    if args.prestop_ms > 0 {
        runs.push(runtime.block_on(race(args.prestop_ms, args.propagation_ms))?);
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
    if let [no_prestop, ..] = runs.as_slice()
        && no_prestop.kernel_refused > 0
    {
        println!(
            "\nThe old pod stopped listening {} ms before the node stopped routing to it; a preStop delay longer than that closes the window.",
            args.propagation_ms
        );
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

async fn race(prestop_ms: u64, propagation_ms: u64) -> anyhow::Result<RaceResult> {
    println!(
        "── Run: preStop {}, kube-proxy removes the old pod {propagation_ms} ms after deletion ──",
        if prestop_ms == 0 {
            "none".to_owned()
        } else {
            format!("sleep {prestop_ms} ms")
        }
    );
    let app = app_binary(None)?;
    let mut node = Node::create()?;
    let old = node.add_pod("web-old")?;
    let new = node.add_pod("web-new")?;
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
    let mut config = AgentConfig::new(NodeName(hostname()), watch);
    config.watch_netns = vec![WatchedNetns::open(Path::new(&old.ns.path()))?];
    let agent = Agent::start(&config)?;
    let spec = PodSpec {
        port: 8080,
        prestop_ms,
        drain_ms: 0,
        hold: false,
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
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent.run(tx, async {
        let _ = stop_rx.await;
    }));
    let t0 = Clock::monotonic_now_ns();
    let printer = tokio::spawn(print_live(rx, Clock::measure().to_wall(t0)));

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
        "  +{:>5} ms  pod web-old deleted (a client connects to {target} every 5 ms)",
        elapsed(deleted)
    );
    // The two sides of the race run in parallel, as the kubelet and kube-proxy do.
    let dataplane = async {
        tokio::time::sleep(Duration::from_millis(propagation_ms)).await;
        let r = node.set_endpoints(&svc, &[new_ep], &[old_ep]);
        let at = Clock::monotonic_now_ns();
        println!(
            "  +{:>5} ms  kube-proxy: rule to {old_ep} replaced by {new_ep}",
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
    let _ = stop_tx.send(());
    agent_task.await.context("agent task failed")??;
    let kernel_refused = printer.await.context("printer failed")?;

    let attempts = log.lock().map(|l| l.clone()).unwrap_or_default();
    let failed = attempts.iter().filter(|a| a.error.is_some()).count();
    let gap_ms = (dp_at as i64 - truth.listen_closed as i64) / 1_000_000;
    println!(
        "  gap (rule removed − listener closed) = {gap_ms:+} ms; kernel: {kernel_refused} refused; client: {failed} of {} failed\n",
        attempts.len()
    );
    Ok(RaceResult {
        prestop_ms,
        attempts: attempts.len(),
        client_failed: failed,
        kernel_refused,
    })
}

/// Prints what the kernel reports as it arrives: termination marks one per line, refused SYNs
/// and client errors once per 100 ms. Returns the number of refused SYNs.
async fn print_live(mut rx: mpsc::Receiver<Observation>, t0: Timestamp) -> u64 {
    let mut refused = 0u64;
    let mut buckets: BTreeMap<(Kind, i64), u64> = BTreeMap::new();
    while let Some(o) = rx.recv().await {
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
                        "pod refused a SYN on {} ({})",
                        addr(o.ip, o.port),
                        o.reason.as_deref().unwrap_or("")
                    )
                } else {
                    format!(
                        "client got {} from {}",
                        o.reason.as_deref().unwrap_or(""),
                        addr(o.ip, o.port)
                    )
                }
            }
            Kind::Exec => format!(
                "exec {} in the pod",
                o.extra.get("comm").and_then(|c| c.as_str()).unwrap_or("?")
            ),
            Kind::Signal => format!(
                "{} delivered to the app",
                o.reason.as_deref().unwrap_or("signal")
            ),
            Kind::ListenerClosed => format!(
                "the app closed its listener on port {}",
                o.port.unwrap_or(0)
            ),
            Kind::Exit => format!(
                "{} (pid {}) exited",
                o.extra
                    .get("comm")
                    .and_then(|c| c.as_str())
                    .unwrap_or("a process"),
                o.extra
                    .get("pid")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0)
            ),
            _ => continue,
        };
        println!("  +{at:>5} ms  kernel: {what}");
    }
    refused
}
