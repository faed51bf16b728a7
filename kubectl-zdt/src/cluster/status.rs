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
    /// The table and the agent's pod, API sync, observation count and schema.
    Wide,
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
            let status = match agents::AgentConn::open(&client, &pod).await {
                Ok(mut conn) => read_status(&mut conn).await,
                Err(e) => Err(e.to_string()),
            };
            match status {
                Ok((status, offset)) => {
                    row.problem = row.problem.take().or_else(|| journal_problem(&status));
                    row.clock_offset_ms = Some(offset.offset_ms);
                    row.clock_offset_uncertainty_ms = Some(offset.uncertainty_ms);
                    row.agent = Some(status);
                }
                Err(e) => row.problem = Some(e),
            }
            row
        }
    });
    Ok(futures::future::join_all(rows).await)
}

/// The PROBLEM of an agent whose journal's recovery found damage: how many, and the first.
pub fn journal_problem(a: &AgentStatus) -> Option<String> {
    let first = a.journal_damage.first()?;
    Some(match a.journal_damage.len() {
        1 => format!("journal damaged: {first}"),
        _ => format!("journal damaged (every place: `status -o json`): {first}"),
    })
}

/// Round trips over one connection to an agent for its clock: the first pays for the
/// connection's set-up on the way out only, so it is not used when there are others.
const CLOCK_SAMPLES: usize = 5;

/// An agent's clock against this machine's, as NTP measures it: the agent stamps its status
/// between our send and our receipt, so offset = its time − the round trip's middle, known to
/// ± half the round trip. Of several round trips the shortest bounds it best.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClockOffset {
    pub offset_ms: f64,
    pub uncertainty_ms: f64,
}

/// One round trip: when we sent (wall), how long until the answer, and the agent's stamp.
#[derive(Clone, Copy, Debug)]
pub struct ClockSample {
    pub sent: Timestamp,
    pub rtt: std::time::Duration,
    pub remote: Timestamp,
}

/// The offset from the shortest round trip.
pub fn best_offset(samples: &[ClockSample]) -> Option<ClockOffset> {
    let s = samples.iter().min_by_key(|s| s.rtt)?;
    let mid = s.sent + s.rtt / 2;
    Some(ClockOffset {
        offset_ms: s.remote.duration_since(mid).as_secs_f64() * 1e3,
        uncertainty_ms: s.rtt.as_secs_f64() * 1e3 / 2.0,
    })
}

/// The agent's status, and its clock from [`CLOCK_SAMPLES`] more round trips on the same
/// connection (the port-forward's set-up, in the first request's way out only, made a
/// single-node cluster's offset read +5 to +14 ms).
async fn read_status(
    conn: &mut agents::AgentConn,
) -> std::result::Result<(AgentStatus, ClockOffset), String> {
    let mut samples = Vec::with_capacity(CLOCK_SAMPLES);
    let mut last = None;
    for _ in 0..=CLOCK_SAMPLES {
        let sent = (Timestamp::now(), Instant::now());
        let body = conn.get_bytes("/status").await.map_err(|e| e.to_string())?;
        let rtt = sent.1.elapsed();
        let status = serde_json::from_slice::<AgentStatus>(&body)
            .map_err(|e| format!("unreadable status: {e}"))?;
        samples.push(ClockSample {
            sent: sent.0,
            rtt,
            remote: status.time,
        });
        last = Some(status);
    }
    let from = usize::from(samples.len() > 1);
    let offset = best_offset(&samples[from..]).ok_or("no status")?;
    Ok((last.ok_or("no status")?, offset))
}

/// The LOSS column: events the kernel could not deliver, and how many of them it skipped the
/// programs for (a softirq while another tracing program ran on that CPU) or a probe's handler
/// failed on, rather than lost to a full ring buffer.
fn loss(a: &AgentStatus) -> String {
    let parts: Vec<String> = [(a.kernel_skipped, "skipped"), (a.kernel_failed, "failed")]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
    match parts.as_slice() {
        [] => a.kernel_loss.to_string(),
        _ => format!("{} ({})", a.kernel_loss, parts.join(", ")),
    }
}

pub fn render_table(rows: &[NodeStatus], wide: bool) -> String {
    let mut table = Table::new();
    let mut header = vec![
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
    ];
    if wide {
        header.extend(["POD", "API SYNCED", "OBSERVATIONS", "SCHEMA"]);
    }
    table.load_style(NOTHING).set_header(header);
    for r in rows {
        let a = r.agent.as_ref();
        let mut row = vec![
            r.node.clone(),
            if r.ready { "yes" } else { "no" }.to_owned(),
            a.map(|a| a.version.clone()).unwrap_or_default(),
            a.map(|a| a.kernel.clone()).unwrap_or_default(),
            a.map(|a| if a.btf { "yes" } else { "no" }.to_owned())
                .unwrap_or_default(),
            a.map(|a| a.probes.len().to_string()).unwrap_or_default(),
            a.and_then(|a| a.dataplane_mode.clone()).unwrap_or_default(),
            // Live pods; the addresses and namespaces watched include deleted pods' for a
            // while (late refusals are still theirs) and the Services' addresses.
            a.map(|a| {
                format!(
                    "{} pods: {} ips, {} netns",
                    a.pods_known, a.watched_addresses, a.watched_netns
                )
            })
            .unwrap_or_default(),
            a.map(loss).unwrap_or_default(),
            match (r.clock_offset_ms, r.clock_offset_uncertainty_ms) {
                (Some(o), Some(u)) => format!("{o:+.1} ms ± {u:.1}"),
                _ => String::new(),
            },
            r.problem.clone().unwrap_or_default(),
        ];
        if wide {
            row.extend([
                r.pod.clone(),
                a.map(|a| if a.api_synced { "yes" } else { "no" }.to_owned())
                    .unwrap_or_default(),
                a.map(|a| a.observations.to_string()).unwrap_or_default(),
                a.map(|a| a.schema.clone()).unwrap_or_default(),
            ]);
        }
        table.add_row(row);
    }
    format!("{table}\n")
}

pub fn main(kube: &KubeArgs, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let runtime = crate::process::runtime()?;
    let rows = runtime.block_on(collect(kube))?;
    let text = match args.output {
        Format::Table => render_table(&rows, false),
        Format::Wide => render_table(&rows, true),
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

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn the_shortest_round_trip_gives_the_offset_and_half_of_it_the_uncertainty() {
        let t0: Timestamp = "2026-12-06T19:00:00Z".parse().unwrap();
        let ms = |n: i64| jiff::SignedDuration::from_millis(n);
        let sample = |sent_ms: i64, rtt_ms: u64, remote_ms: i64| ClockSample {
            sent: t0 + ms(sent_ms),
            rtt: std::time::Duration::from_millis(rtt_ms),
            remote: t0 + ms(remote_ms),
        };
        // The same clock; a slow round trip whose delay was all on the way out reads +9 ms.
        let samples = [sample(0, 20, 19), sample(100, 2, 101), sample(200, 6, 203)];
        assert_eq!(
            best_offset(&samples),
            Some(ClockOffset {
                offset_ms: 0.0,
                uncertainty_ms: 1.0
            })
        );
        assert_eq!(best_offset(&[]), None);
    }
}
