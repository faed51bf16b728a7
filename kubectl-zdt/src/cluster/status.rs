//! `kubectl zdt status`: per node, what its agent reports (version, kernel, BTF, probes,
//! dataplane mode, what it watches, loss, clock), asked through port-forward.

use std::{io::Write as _, process::ExitCode, time::Instant};

use clap::{Args, ValueEnum};
use comfy_table::{Table, presets::NOTHING};
use jiff::Timestamp;
use serde::Serialize;

use super::{Result, agents, connect::KubeArgs};
use crate::agent::serve::AgentStatus;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// One node's row.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub pod: String,
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStatus>,
    /// The agent's wall clock minus this machine's, measured over the port-forward round trip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<f64>,
    /// Half the round trip: the offset is known to ± this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_offset_uncertainty_ms: Option<f64>,
}

/// Asks every agent for its status (in parallel); an unreachable agent becomes its row's
/// `problem`, not a failure of the whole command.
pub async fn collect(kube: &KubeArgs) -> Result<Vec<NodeStatus>> {
    let cluster = kube.connect().await?;
    super::version::require_supported(&cluster.client).await?;
    let pods = agents::list(&cluster.client).await?;
    let rows = pods.into_iter().map(|pod| {
        let client = cluster.client.clone();
        async move {
            let mut row = NodeStatus {
                node: pod.node.clone(),
                pod: pod.pod.clone(),
                ready: pod.ready,
                problem: pod.problem.clone(),
                agent: None,
                clock_offset_ms: None,
                clock_offset_uncertainty_ms: None,
            };
            if !pod.ready {
                return row;
            }
            let sent = (Timestamp::now(), Instant::now());
            match agents::get_bytes(&client, &pod, "/status").await {
                Ok(body) => match serde_json::from_slice::<AgentStatus>(&body) {
                    Ok(status) => {
                        let rtt = sent.1.elapsed();
                        let mid = sent.0 + rtt / 2;
                        let offset = status.time.duration_since(mid);
                        row.clock_offset_ms = Some(offset.as_secs_f64() * 1e3);
                        row.clock_offset_uncertainty_ms = Some(rtt.as_secs_f64() * 1e3 / 2.0);
                        row.agent = Some(status);
                    }
                    Err(e) => row.problem = Some(format!("unreadable status: {e}")),
                },
                Err(e) => row.problem = Some(e.to_string()),
            }
            row
        }
    });
    Ok(futures::future::join_all(rows).await)
}

/// The LOSS column: events the kernel could not deliver, and how many of them it skipped the
/// programs for (a softirq while another tracing program ran on that CPU) rather than lost to
/// a full ring buffer.
fn loss(a: &AgentStatus) -> String {
    match a.kernel_skipped {
        0 => a.kernel_loss.to_string(),
        s => format!("{} ({s} skipped)", a.kernel_loss),
    }
}

pub fn render_table(rows: &[NodeStatus]) -> String {
    let mut table = Table::new();
    table.load_style(NOTHING).set_header([
        "NODE",
        "READY",
        "VERSION",
        "KERNEL",
        "BTF",
        "PROBES",
        "DATAPLANE",
        "WATCHED",
        "LOSS",
        "CLOCK OFFSET",
        "PROBLEM",
    ]);
    for r in rows {
        let a = r.agent.as_ref();
        table.add_row([
            r.node.clone(),
            if r.ready { "yes" } else { "no" }.to_owned(),
            a.map(|a| a.version.clone()).unwrap_or_default(),
            a.map(|a| a.kernel.clone()).unwrap_or_default(),
            a.map(|a| if a.btf { "yes" } else { "no" }.to_owned())
                .unwrap_or_default(),
            a.map(|a| a.probes.len().to_string()).unwrap_or_default(),
            a.and_then(|a| a.dataplane_mode.clone()).unwrap_or_default(),
            a.map(|a| format!("{} ips, {} netns", a.watched_addresses, a.watched_netns))
                .unwrap_or_default(),
            a.map(loss).unwrap_or_default(),
            match (r.clock_offset_ms, r.clock_offset_uncertainty_ms) {
                (Some(o), Some(u)) => format!("{o:+.1} ms ± {u:.1}"),
                _ => String::new(),
            },
            r.problem.clone().unwrap_or_default(),
        ]);
    }
    format!("{table}\n")
}

pub fn main(kube: &KubeArgs, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let runtime = crate::cluster::runtime()?;
    let rows = runtime.block_on(collect(kube))?;
    let text = match args.output {
        Format::Table => render_table(&rows),
        Format::Json => serde_json::to_string_pretty(&rows)? + "\n",
        Format::Yaml => serde_yaml::to_string(&rows)?,
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(if rows.iter().all(|r| r.ready && r.problem.is_none()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
