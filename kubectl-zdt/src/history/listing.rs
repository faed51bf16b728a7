//! `kubectl zdt history` without `--report`: the observations of the window, then the rollouts
//! found in them (`-o table|wide`), or both as one document (`-o json|yaml`, kind `History`).

use std::fmt::Write as _;

use comfy_table::{Table, presets::NOTHING};
use serde::Serialize;

use super::{rollouts::FoundRollout, window::Window};
use crate::{
    observation::{Observation, format_time},
    report::{Format, RenderError},
};

/// The `-o json|yaml` document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct History<'a> {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub since: String,
    pub until: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observations: Option<&'a [Observation]>,
    pub rollouts: &'a [FoundRollout],
}

/// What to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    /// Observations, then rollouts.
    Everything,
    /// Only the rollouts found.
    Rollouts,
}

fn address(o: &Observation) -> String {
    match (o.ip, o.port) {
        (Some(ip), Some(p)) if ip.is_ipv6() => format!("[{ip}]:{p}"),
        (Some(ip), Some(p)) => format!("{ip}:{p}"),
        (Some(ip), None) => ip.to_string(),
        (None, _) => o
            .service
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

fn observations_table(obs: &[Observation], wide: bool) -> String {
    let mut table = Table::new();
    let mut header = vec!["TIME", "NODE", "KIND", "POD", "ADDRESS", "REASON", "COUNT"];
    if wide {
        header.extend(["SERVICE", "PEER", "MORE"]);
    }
    table.load_style(NOTHING).set_header(header);
    for o in obs {
        let mut row = vec![
            format_time(o.time),
            o.node.0.clone(),
            o.kind.to_string(),
            o.pod.as_deref().unwrap_or_default().to_owned(),
            address(o),
            o.reason.clone().unwrap_or_default(),
            o.count.map(|c| c.to_string()).unwrap_or_default(),
        ];
        if wide {
            let peer = match (o.peer_ip, o.peer_port) {
                (Some(ip), Some(p)) => format!("{ip}:{p}"),
                (Some(ip), None) => ip.to_string(),
                _ => String::new(),
            };
            let more: Vec<String> = o
                .other_fields()
                .iter()
                .map(|(k, v)| match v.as_str() {
                    Some(s) => format!("{k}={s}"),
                    None => format!("{k}={v}"),
                })
                .collect();
            let service = o.service.as_ref().map(ToString::to_string);
            row.extend([service.unwrap_or_default(), peer, more.join(" ")]);
        }
        table.add_row(row);
    }
    format!("{table}\n")
}

fn rollouts_table(rollouts: &[FoundRollout]) -> String {
    let mut table = Table::new();
    table.load_style(NOTHING).set_header([
        "WORKLOAD",
        "NAMESPACE",
        "FIRST DELETION",
        "SPAN",
        "PODS",
        "NODES",
        "ERRORS",
    ]);
    for r in rollouts {
        let span = crate::observation::millis_between(r.last_deletion, r.first_deletion) / 1e3;
        table.add_row([
            r.workload.clone(),
            r.namespace.clone().unwrap_or_default(),
            format_time(r.first_deletion),
            format!("{span:.1} s"),
            r.pods.len().to_string(),
            r.nodes.join(","),
            r.errors.to_string(),
        ]);
    }
    format!("{table}\n")
}

/// The command that reports one found rollout.
pub fn report_command(r: &FoundRollout) -> String {
    let ns = r
        .namespace
        .as_deref()
        .map(|n| format!(" -n {n}"))
        .unwrap_or_default();
    let from = r
        .first_deletion
        .checked_sub(jiff::SignedDuration::from_secs(60));
    let to = r
        .last_deletion
        .checked_add(jiff::SignedDuration::from_nanos(
            super::rollouts::ERROR_TAIL_NS as i64,
        ));
    let (Ok(from), Ok(to)) = (from, to) else {
        return String::new();
    };
    let target = if r.workload.starts_with("pod/") {
        format!("--pod {}", r.pods[0].name())
    } else {
        format!("--workload {}", r.workload)
    };
    format!("kubectl zdt history --report {target}{ns} --from {from} --to {to}")
}

/// The listing in `format`.
pub fn render(
    obs: &[Observation],
    rollouts: &[FoundRollout],
    window: Window,
    format: Format,
    show: Show,
) -> Result<String, RenderError> {
    let observations = (show == Show::Everything).then_some(obs);
    let doc = History {
        api_version: crate::correlate::API_VERSION,
        kind: "History",
        since: format_time(window.since),
        until: format_time(window.until),
        observations,
        rollouts,
    };
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(&doc)? + "\n",
        Format::Yaml => serde_yaml::to_string(&doc)?,
        Format::Table | Format::Wide => {
            let mut out = String::new();
            if show == Show::Everything {
                if obs.is_empty() {
                    let _ = writeln!(
                        out,
                        "No observations from {} to {}.",
                        format_time(window.since),
                        format_time(window.until)
                    );
                } else {
                    out.push_str(&observations_table(obs, format == Format::Wide));
                    out.push('\n');
                }
            }
            if rollouts.is_empty() {
                out.push_str("No rollout in this window (no pod was deleted).\n");
            } else {
                let _ = writeln!(
                    out,
                    "ROLLOUTS (pod deletions of one workload less than 10 min apart)"
                );
                out.push_str(&rollouts_table(rollouts));
                let _ = writeln!(out, "\nReport one with: {}", report_command(&rollouts[0]));
            }
            out
        }
    })
}
