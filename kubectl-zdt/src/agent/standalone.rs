//! Standalone mode (`kubectl-zdt agent --standalone`): every observation as a JSON line on
//! stdout, no Kubernetes.

use std::{
    io::{BufWriter, Write as _},
    sync::Arc,
};

use anyhow::Context as _;

use super::{
    AgentConfig, metrics,
    run::{DiskJournal, Kernel, serve_metrics, start_kernel},
    serve,
};

/// Streams observations as JSON lines on stdout until SIGINT/SIGTERM, then drains what the
/// kernel still holds and exits.
pub(super) async fn run(
    config: AgentConfig,
    metrics: metrics::MetricsConfig,
) -> anyhow::Result<()> {
    let disk = DiskJournal::open(&config)?;
    let (gauges, _metrics_server) = match metrics.listen {
        Some(listen) => {
            let gauges = Arc::new(serve::Gauges {
                metrics: metrics::Metrics::new(metrics::Scope::Everything, metrics.settle),
                ..serve::Gauges::default()
            });
            let server = serve_metrics(listen, gauges.clone()).await?;
            (Some(gauges), Some(server))
        }
        None => (None, None),
    };
    if let (Some(g), Some(d)) = (&gauges, &disk) {
        g.journal_opened(&d.shared);
    }
    let Kernel {
        agent,
        tx,
        mut rx,
        stops: [shutdown, _],
        dataplane: _dataplane,
        ..
    } = start_kernel(&config, |_| Ok(())).await?;
    let producer = tokio::spawn(agent.run(tx, shutdown));
    let journal = disk.as_ref().map(|d| d.shared.clone());
    let writer = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let stdout = std::io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        while let Some(obs) = rx.blocking_recv() {
            let line = obs.to_json_line();
            if let Some(j) = &journal {
                j.append_line(&obs, &line);
            }
            if let Some(g) = &gauges {
                g.metrics.observe(&obs);
            }
            writeln!(out, "{line}").context("failed to write to stdout")?;
            if rx.is_empty() {
                out.flush().context("failed to write to stdout")?;
            }
        }
        out.flush().context("failed to write to stdout")
    });
    let produced = producer.await.context("agent task failed")?;
    writer.await.context("writer task failed")??;
    if let Some(d) = disk {
        d.close();
    }
    produced
}
