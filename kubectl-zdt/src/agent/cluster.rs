//! Cluster mode (the DaemonSet's `kubectl-zdt agent --listen 127.0.0.1:9476`): the kernel
//! probes with the filter on and empty, the API watches feeding it with this node's pod
//! addresses and network namespaces, every observation attributed to its pod (tombstones
//! included), journaled and served on the node's loopback.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
};

use anyhow::{Context as _, bail};
use tokio::{net::TcpListener, sync::mpsc};

use super::{
    Agent, AgentConfig,
    api_watch::{ApiWatch, PodNamespaces, TOMBSTONE_TTL},
    journal::{self, Journal},
    own_clients::{NodeAddresses, of_another_node},
    pod_netns::PodNetns,
    pods::PodIndex,
    probes::KubeletProbes,
    serve::{Endpoint, Gauges},
};
use crate::{observation::Observation, process::termination};

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
    let journal = Journal::new(journal::CAPACITY);
    let disk = super::open_journal(&config)?;
    let ticker = disk.clone().map(|d| {
        journal.attach_disk(d.clone());
        tokio::spawn(super::tick_journal(d))
    });
    let gauges = Arc::new(Gauges {
        metrics: super::metrics::Metrics::new(super::metrics::Scope::OwnPods, metrics.settle),
        ..Gauges::default()
    });
    if let Some(d) = &disk {
        gauges.journal_opened(d);
    }
    let endpoint = Endpoint {
        node: config.node.clone(),
        journal: journal.clone(),
        gauges: gauges.clone(),
    };
    let server = tokio::spawn(endpoint.serve(listener));
    // The loopback endpoint serves /metrics too; this one records settled pods without a
    // scrape, and serves /metrics beyond the loopback only when asked to.
    let metrics_server = match metrics.listen {
        Some(addr) => super::serve_metrics(addr, gauges.clone()).await?,
        None => tokio::spawn(super::keep_settling(gauges.clone())),
    };

    // Filtering on from the start: only this node's pod addresses, added as they appear.
    config.filter = true;
    let mut agent = Agent::start(&config)?;
    let filter = agent
        .take_filter()
        .context("the kernel watch filter is missing from the loaded probes")?;
    gauges.ready.store(true, Ordering::Relaxed);

    let pods = Arc::new(Mutex::new(PodIndex::new(TOMBSTONE_TTL)));
    let (tx, mut rx) = mpsc::channel::<Observation>(4096);
    let (kernel_stop, api_stop) = (termination(), termination());
    agent.announce(&tx).await;
    // The node's kube-proxy dataplane (hostNetwork: this is the node's namespace): when each
    // backend stops being routed, and which pod a client's error toward a Service reached.
    let _dataplane = if config.dataplane {
        Some(agent.start_dataplane(&config.node, &tx)?)
    } else {
        None
    };
    super::release_freed_memory();
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
    while let Some(mut o) = rx.recv().await {
        {
            let mut index = pods.lock().unwrap_or_else(|p| p.into_inner());
            if of_another_node(&o, &index, &mut node_addresses) {
                gauges.metrics.other_node_client_failure();
                continue;
            }
            index.attribute(&mut o);
            probes.tag(&mut o, &index);
        }
        journal.push(&o);
        gauges.metrics.observe(&o);
    }
    server.abort();
    metrics_server.abort();
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(d) = disk {
        d.close();
    }
    api.await.context("the API watch task failed")?;
    kernel.await.context("the kernel probe task failed")?
}
