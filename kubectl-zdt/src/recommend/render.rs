//! `-o table` (default), `-o json` (kind `Recommendations`) and `-o yaml`: one strategic merge
//! patch per workload, ready for `kubectl patch --type strategic -p` or a GitOps repository
//! (kustomize `patches:`), with how it was sized in a comment.

use std::fmt::Write as _;

use comfy_table::{CellAlignment, ContentArrangement, Table, presets::NOTHING};
use serde_json::{Value, json};

use super::{
    advise::{Recommendation, Recommendations},
    settings::{PreStop, Settings, SettingsSource},
};
use crate::kube_version::PreStopAction;

/// `-o` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    /// The table and the samples, the largest need, the slowest drain and the errors.
    Wide,
    Json,
    Yaml,
}

fn ms_cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} ms"))
}

fn current_cells(c: Option<&Settings>) -> (String, String) {
    match c {
        None => ("?".to_owned(), "?".to_owned()),
        Some(s) => (
            s.prestop.describe(),
            s.termination_grace_period_seconds
                .map_or_else(|| "?".to_owned(), |g| format!("{g}s")),
        ),
    }
}

pub fn table(all: &Recommendations, wide: bool) -> String {
    let mut out = String::new();
    if all.workloads.is_empty() {
        out.push_str(
            "No terminated pod in the observations: nothing to recommend (trace a rollout with `kubectl zdt trace KIND/NAME --restart`).\n",
        );
    }
    let headers = [
        "WORKLOAD",
        "ROLLOUTS",
        "PODS",
        "P50",
        "P90",
        "P99",
        "MAX",
        "PRESTOP NOW",
        "GRACE NOW",
        "ADVISED PRESTOP",
        "ADVISED GRACE",
        "VERDICT",
    ];
    let mut headers = headers.to_vec();
    if wide {
        headers.extend(["SAMPLES", "LARGEST NEED", "DRAIN", "ERRORS"]);
    }
    let mut t = Table::new();
    t.load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers);
    for r in &all.workloads {
        let (prestop, grace) = current_cells(r.current.as_ref());
        let p = &r.propagation;
        let mut row = vec![
            crate::report::escape_terminal(&r.key().display()).into_owned(),
            r.rollouts.to_string(),
            r.pods.to_string(),
            ms_cell(p.p50_ms),
            ms_cell(p.p90_ms),
            ms_cell(p.p99_ms),
            ms_cell(p.max_ms),
            prestop,
            grace,
            r.advised.as_ref().map_or_else(
                || "-".to_owned(),
                |a| format!("sleep {}s", a.prestop_seconds),
            ),
            r.advised.as_ref().map_or_else(
                || "-".to_owned(),
                |a| format!("{}s", a.termination_grace_period_seconds),
            ),
            r.verdict.as_str().to_uppercase(),
        ];
        if wide {
            row.extend([
                p.samples.to_string(),
                ms_cell(r.largest_needed_ms),
                ms_cell(r.drain_ms),
                r.errors.total().to_string(),
            ]);
        }
        t.add_row(row);
    }
    for i in 1..7 {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    if !all.workloads.is_empty() {
        for line in t.lines() {
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out.push('\n');
    }
    for r in &all.workloads {
        let _ = writeln!(
            out,
            "{}: {} ({} of {} pods with a measured propagation delay)",
            r.key().display(),
            r.reason,
            r.propagation.samples,
            r.pods
        );
        if let Some(a) = &r.advised {
            let _ = writeln!(out, "  {}", a.reason);
        }
        for (head, reason, patch) in extra_advice(r) {
            let _ = writeln!(out, "  {head}: {reason}");
            if let Some(p) = patch {
                let _ = writeln!(out, "  {}", p.command);
            }
        }
    }
    let _ = writeln!(
        out,
        "\nMargin {} ms; advice needs at least {} pods with a measured propagation delay; a preStop {} ms over the advice is wasteful. `-o yaml` prints the patches.",
        all.margin_ms, all.min_samples, all.waste_threshold_ms
    );
    for w in &all.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    crate::report::escape_terminal_lines(&out).into_owned()
}

/// The preStop handler to write: the form the container already uses, with the advised length;
/// for a new hook, the form the server accepts.
fn prestop_handler(current: &PreStop, seconds: u64, action: PreStopAction) -> Option<Value> {
    match current {
        PreStop::ExecSleep {
            command,
            arg,
            range,
            ..
        } => {
            let mut command = command.clone();
            if let Some(a) = command.get_mut(*arg)
                && a.get(range.clone()).is_some()
            {
                a.replace_range(range.clone(), &seconds.to_string());
            }
            Some(json!({"exec": {"command": command}}))
        }
        PreStop::None
        | PreStop::SleepAction { .. }
        | PreStop::Observed { .. }
        | PreStop::Unknown => Some(action.handler(seconds)),
        // An httpGet or a command does more than wait (it may start the drain): keep it.
        PreStop::Untimed { .. } => None,
    }
}

fn kind_of(workload: &str) -> Option<(&'static str, &str)> {
    let (kind, name) = crate::observation::split_name(workload)?;
    let kind = match kind {
        "deployment" => "Deployment",
        "statefulset" => "StatefulSet",
        "daemonset" => "DaemonSet",
        _ => return None,
    };
    Some((kind, name))
}

/// One YAML document: the comment, then the patch (or only the comment when there is nothing
/// to patch).
fn patch_document(r: &Recommendation, action: PreStopAction) -> Option<String> {
    let a = r.advised.as_ref()?;
    let (kind, name) = kind_of(&r.workload)?;
    let mut comment = vec![
        format!(
            "{} ({}): {}",
            r.key().display(),
            r.verdict.as_str(),
            r.reason
        ),
        a.reason.clone(),
    ];
    let mut spec = json!({"terminationGracePeriodSeconds": a.termination_grace_period_seconds});
    let current = r.current.as_ref();
    let handler = current.and_then(|c| prestop_handler(&c.prestop, a.prestop_seconds, action));
    match (current.and_then(|c| c.container.as_deref()), handler) {
        (Some(container), Some(handler)) => {
            spec["containers"] = json!([{"name": container, "lifecycle": {"preStop": handler}}]);
        }
        (Some(_), None) => comment.push(format!(
            "the preStop hook ({}) is kept: make sure it lasts at least {} s",
            current.map(|c| c.prestop.describe()).unwrap_or_default(),
            a.prestop_seconds
        )),
        (None, _) => comment.push(format!(
            "the serving container's name was not observed: add `lifecycle: {{preStop: {}}}` to it by hand",
            action.handler(a.prestop_seconds)
        )),
    }
    if current.is_some_and(|c| c.source == SettingsSource::Observed) {
        comment.push(
            "current settings as observed in the recorded rollouts (run without --from-file to read them from the API); \
             if the container already has a preStop hook of another kind, replace it rather than merge"
                .to_owned(),
        );
    }
    // Before 1.30 the advice's reason already says the image needs `sleep`.
    let needs = match action {
        PreStopAction::Sleep => "  (preStop.sleep needs Kubernetes >= 1.30)",
        PreStopAction::ExecSleep => "",
    };
    comment.push(format!(
        "apply: kubectl patch {} --type strategic -p \"$(cat THIS_DOCUMENT)\"{needs}",
        r.key().display()
    ));
    let mut metadata = json!({"name": name});
    if let Some(ns) = &r.namespace {
        metadata["namespace"] = json!(ns);
    }
    let patch = json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": metadata,
        "spec": {"template": {"spec": spec}},
    });
    let mut doc = String::new();
    for c in comment {
        for line in c.lines() {
            let _ = writeln!(doc, "# {}", crate::report::escape_terminal(line));
        }
    }
    doc.push_str(&serde_yaml::to_string(&patch).ok()?);
    Some(doc)
}

/// Every workload that can be patched, as a multi-document YAML stream.
pub fn yaml(all: &Recommendations) -> String {
    let docs: Vec<String> = all
        .workloads
        .iter()
        .filter_map(|r| patch_document(r, all.prestop_action))
        .collect();
    let mut out = String::new();
    let skipped: Vec<String> = all
        .workloads
        .iter()
        .filter(|r| r.advised.is_none() || kind_of(&r.workload).is_none())
        .map(|r| format!("{}: {}", r.key().display(), r.reason))
        .collect();
    for s in &skipped {
        let _ = writeln!(out, "# no patch for {s}");
    }
    // The readiness probe and the strategy are other fixes than the preStop's: their own
    // ready commands.
    for r in &all.workloads {
        for (head, reason, patch) in extra_advice(r) {
            let _ = writeln!(out, "# {head} for {}: {reason}", r.key().display());
            if let Some(p) = patch {
                let _ = writeln!(out, "#   {}", p.command);
            }
        }
    }
    out.push_str(&docs.join("---\n"));
    out
}

/// The readiness probe and the rollout strategy a workload needs besides its preStop.
fn extra_advice(r: &Recommendation) -> Vec<(&'static str, &str, Option<&crate::correlate::Patch>)> {
    let mut out = Vec::new();
    if let Some(a) = &r.rollout_strategy {
        out.push(("rollout strategy", a.reason.as_str(), a.patch.as_ref()));
    }
    if let Some(a) = &r.readiness_probe {
        out.push(("readiness probe", a.reason.as_str(), a.patch.as_ref()));
    }
    out
}

pub fn json(all: &Recommendations) -> String {
    serde_json::to_string_pretty(all).unwrap_or_default() + "\n"
}
