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
    net::SocketAddr,
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

use crate::{
    agent::{Agent, AgentConfig, clock::Clock, hostname},
    observation::{Kind, NodeName, Observation},
    testbed::{
        Node,
        kube_proxy::ServicePort,
        node::cluster_ip,
        tcp::{Attempt, Server, connect_loop},
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
    let mut old_server = Server::start(&old.ns, old_ep)?;
    let _new_server = Server::start(&new.ns, new_ep)?;
    node.set_endpoints(&svc, &[old_ep], &[])?;

    let watch: Vec<IpNet> = vec![
        IpNet::from(std::net::IpAddr::from(old.ip)),
        IpNet::from(std::net::IpAddr::from(new.ip)),
    ];
    let agent = Agent::start(&AgentConfig::new(NodeName(hostname()), watch))?;
    let (tx, mut rx) = mpsc::channel::<Observation>(65536);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent.run(tx, async {
        let _ = stop_rx.await;
    }));
    let t0 = Clock::monotonic_now_ns();
    let clock = Clock::measure();
    let printer = tokio::spawn(async move {
        // Refused SYNs are printed per 100 ms bucket, not per line.
        let mut refused = 0u64;
        let mut buckets: BTreeMap<i64, u64> = BTreeMap::new();
        while let Some(o) = rx.recv().await {
            if o.kind == Kind::Refused {
                let at = (o.time - clock.to_wall(t0)).get_milliseconds();
                let n = o.weight();
                refused += n;
                let b = buckets.entry(at / 100).or_insert(0);
                if *b == 0 {
                    println!(
                        "  +{:>5} ms  kernel: refused {}:{} ← {}  ({})",
                        at,
                        o.ip.map(|i| i.to_string()).unwrap_or_default(),
                        o.port.unwrap_or(0),
                        o.peer_ip.map(|i| i.to_string()).unwrap_or_default(),
                        o.reason.as_deref().unwrap_or("")
                    );
                }
                *b += n;
            }
        }
        (refused, buckets)
    });

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
    let elapsed = |t: u64| (t.saturating_sub(t0)) / 1_000_000;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let deleted = Clock::monotonic_now_ns();
    println!(
        "  +{:>5} ms  pod web-old deleted (client connects to {target} every 5 ms)",
        elapsed(deleted)
    );
    // The two sides of the race run in parallel, as the kubelet and kube-proxy do.
    let dataplane = async {
        tokio::time::sleep(Duration::from_millis(propagation_ms)).await;
        let r = node.set_endpoints(&svc, &[new_ep], &[old_ep]);
        (r, Clock::monotonic_now_ns())
    };
    let kubelet = async {
        if prestop_ms > 0 {
            println!(
                "  +{:>5} ms  kubelet: preStop sleep {prestop_ms} ms",
                elapsed(Clock::monotonic_now_ns())
            );
            tokio::time::sleep(Duration::from_millis(prestop_ms)).await;
        }
        let closed = old_server.close();
        println!(
            "  +{:>5} ms  kubelet: SIGTERM → web-old closed its listener {old_ep}",
            elapsed(closed)
        );
        closed
    };
    let ((programmed, dp_at), closed_at) = tokio::join!(dataplane, kubelet);
    programmed?;
    println!(
        "  +{:>5} ms  kube-proxy: rule to {old_ep} replaced by {new_ep}",
        elapsed(dp_at)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    client_thread.join()?;
    let _ = stop_tx.send(());
    agent_task.await.context("agent task failed")??;
    let (kernel_refused, _) = printer.await.context("printer failed")?;

    let attempts = log.lock().map(|l| l.clone()).unwrap_or_default();
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.error.is_some()).collect();
    let gap_ms = (dp_at as i64 - closed_at as i64) / 1_000_000;
    println!(
        "  gap (rule removed − listener closed) = {gap_ms:+} ms; kernel: {kernel_refused} refused; client: {} of {} failed\n",
        failed.len(),
        attempts.len()
    );
    Ok(RaceResult {
        prestop_ms,
        attempts: attempts.len(),
        client_failed: failed.len(),
        kernel_refused,
    })
}
