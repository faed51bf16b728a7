//! Cluster mode (the DaemonSet's `kubectl-zdt agent --listen 127.0.0.1:9476`): the kernel
//! probes with the filter on and empty, the API watches feeding it with this node's pod
//! addresses and network namespaces, every observation attributed to its pod (tombstones
//! included), journaled and served on the node's loopback.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::net::TcpListener;

use super::{
    AgentConfig,
    api_watch::{ApiWatch, PodNamespaces, TOMBSTONE_TTL},
    backlog::{self, Backlog},
    own_clients::{NodeAddresses, of_another_node},
    pod_netns::PodNetns,
    pods::{PodIndex, Waiting},
    probes::KubeletProbes,
    run::{DiskJournal, Kernel, guard, serve_metrics, start_kernel},
    serve::{AgentServer, Gauges},
};

/// Binds the endpoint, refusing anything but a loopback address: the stream is only for
/// clients that came through the API server's port-forward (docs/security.md).
pub async fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    if !listen.ip().is_loopback() {
        bail!(
            "--listen {listen}: the agent serves only on the node's loopback (e.g. 127.0.0.1:9476); clients reach it through `kubectl port-forward`"
        );
    }
    TcpListener::bind(listen).await.with_context(|| {
        format!("failed to listen on {listen} (is another agent running on this node?)")
    })
}

pub async fn run(
    mut config: AgentConfig,
    listen: SocketAddr,
    metrics: super::metrics::MetricsConfig,
) -> anyhow::Result<()> {
    let listener = bind(listen).await?;
    let api = kube::Config::infer()
        .await
        .context("failed to reach the Kubernetes API from the agent (in-cluster config)")?;
    let client = kube::Client::try_from(super::api_watch::client_config(api))
        .context("failed to build the agent's Kubernetes API client")?;
    let journal = Backlog::new(backlog::CAPACITY);
    let disk = DiskJournal::open(&config)?;
    if let Some(d) = &disk {
        journal.attach_disk(d.shared.clone());
    }
    let gauges = Arc::new(Gauges {
        metrics: super::metrics::Metrics::new(super::metrics::Scope::OwnPods, metrics.settle),
        ..Gauges::default()
    });
    if let Some(d) = &disk {
        gauges.journal_opened(&d.shared);
    }
    let endpoint = AgentServer {
        node: config.node.clone(),
        journal: journal.clone(),
        gauges: gauges.clone(),
    };
    let server = guard(endpoint.serve(listener));
    // The loopback endpoint serves /metrics too; this one records settled pods without a
    // scrape, and serves /metrics beyond the loopback only when asked to.
    let metrics_server = match metrics.listen {
        Some(addr) => serve_metrics(addr, gauges.clone()).await?,
        None => guard(super::run::keep_settling(gauges.clone())),
    };

    // Filtering on from the start: only this node's pod addresses, added as they appear.
    config.filter = true;
    let Kernel {
        mut agent,
        tx,
        mut rx,
        stops: [kernel_stop, api_stop],
        loaded: filter,
        dataplane: _dataplane,
    } = start_kernel(&config, |agent| {
        let filter = agent
            .take_filter()
            .context("the kernel watch filter is missing from the loaded probes")?;
        gauges.ready.store(true, Ordering::Relaxed);
        Ok(filter)
    })
    .await?;
    let pods = Arc::new(Mutex::new(PodIndex::new(TOMBSTONE_TTL)));
    // Each pod's network namespace (hostPID): its listeners on wildcard addresses, its
    // processes' signals, execs and exits, and the namespace's removal.
    let gone = agent
        .netns_gone()
        .inspect_err(|e| tracing::warn!("netns_gone will not be reported: {e:#}"))
        .ok();
    let netns = PodNamespaces {
        resolver: PodNetns::new("/proc"),
        gone,
    };
    let kernel = tokio::spawn(agent.run(tx.clone(), kernel_stop));
    let watch = ApiWatch {
        client,
        node: config.node.clone(),
        pods: pods.clone(),
        gauges: gauges.clone(),
        netns: Some(netns),
    };
    let api = tokio::spawn(watch.run(filter, tx, api_stop));
    let mut probes = KubeletProbes::new();
    let mut node_addresses = NodeAddresses::of_this_namespace();
    // Lines of a reused namespace number wait for its new pod (`pods::Waiting`): looked at on
    // every line and, while any waits, at least every second (an idle agent is not woken).
    let mut waiting = Waiting::default();
    loop {
        let received = if waiting.is_empty() {
            rx.recv().await.map(Some)
        } else {
            tokio::time::timeout(Duration::from_secs(1), rx.recv())
                .await
                // Elapsed: nothing received, look at the waiting lines.
                .map_or(Some(None), |r| r.map(Some))
        };
        let Some(received) = received else {
            break;
        };
        let mut out = Vec::new();
        {
            let mut index = pods.lock().unwrap_or_else(|p| p.into_inner());
            if !waiting.is_empty() {
                let left_out;
                (out, left_out) = waiting.release(&mut index, Instant::now());
                gauges.metrics.other_node_namespace_lines(left_out);
            }
            if let Some(mut o) = received {
                if of_another_node(&o, &index, &mut node_addresses) {
                    gauges.metrics.other_node_client_failure();
                } else {
                    index.attribute(&mut o);
                    out.extend(waiting.admit(&index, o, Instant::now()));
                }
            }
            for o in &mut out {
                probes.tag(o, &index);
            }
        }
        for o in out {
            journal.push(&o);
            gauges.metrics.observe(&o);
        }
    }
    drop((server, metrics_server));
    if let Some(d) = disk {
        d.close();
    }
    api.await.context("the API watch task failed")?;
    kernel.await.context("the kernel probe task failed")?
}
