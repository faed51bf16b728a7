//! The correlation engine: observations from many nodes and from the API in; per rollout and per
//! pod the timeline marks, the gap, the errors by cause, a verdict and the advice out.
//!
//! Pure: no I/O, no clock, no async. The data flows through the submodules in this order:
//! `nodes` (who reported) → `identity` (which pod each line is about, by UID not IP) → `marks`
//! (min/max folds, so input order never matters) → `clock` (per-node uncertainty, never
//! reordering) → `pod` + `attribution` (gap, errors by cause, verdict) → `rollout` (grouping,
//! client errors seen only on a Service) → `advice` (preStop and grace period).
//! `input` reads observation streams with line numbers (the converters from raw captures to
//! observations live in `crate::convert`).

mod advice;
pub mod attribution;
mod capacity;
pub mod clients;
mod clock;
mod identity;
pub mod input;
mod marks;
pub mod model;
mod nodes;
mod pod;
mod readiness;
mod rollout;
mod services;
pub mod simulate;
pub mod time;

use std::collections::BTreeMap;

pub use advice::{PodEvidence, advise, percentile};
pub use model::*;
pub use rollout::{TRAFFIC_POD_PREFIX, is_instrument, template_of, workload_of_pod};

use crate::{
    kube_version::PreStopAction,
    observation::{HANDLER_ERROR, KERNEL_SKIPPED, Kind, Observation},
};
use time::{WallNs, ms_u};

/// Tunables of the analysis.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Safety margin added to the advised preStop and grace period.
    pub margin_ms: u64,
    /// How the advised preStop is written: the `sleep` action where the server has it (the
    /// cluster's version, or the default for a file without one).
    pub prestop: PreStopAction,
}

impl Options {
    /// The margin in nanoseconds.
    pub fn margin_ns(&self) -> i64 {
        i64::try_from(self.margin_ms)
            .unwrap_or(i64::MAX / 4)
            .saturating_mul(1_000_000)
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            margin_ms: 500,
            prestop: PreStopAction::default(),
        }
    }
}

/// One workload: what `trace KIND/NAME` reports on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub namespace: String,
    /// `deployment/web`, as the report names workloads.
    pub workload: String,
}

/// Correlates a set of observations (any order, any number of nodes and rollouts).
pub fn correlate(obs: &[Observation], options: &Options) -> Report {
    correlate_with_evidence(obs, options).0
}

/// [`correlate`] reporting only the pods of one workload: the other workloads' rollouts, rows
/// and patches are left out, and the advice reads only this workload's pods.
pub fn correlate_scoped(obs: &[Observation], options: &Options, scope: &Scope) -> Report {
    run(obs, options, Some(scope)).0
}

/// [`correlate`], plus each reported pod's [`PodEvidence`] (in the order of the rollouts and
/// their pods), so the advice can be recomputed for any group of pods, e.g. per workload.
pub fn correlate_with_evidence(
    obs: &[Observation],
    options: &Options,
) -> (Report, Vec<PodEvidence>) {
    run(obs, options, None)
}

/// What the pod's own lines say about it beyond its timeline: the `template_hash` its deletion
/// carried, and whether the API watch flagged it as kubectl-zdt's instrument.
fn pod_labels(obs: &[Observation], members: &[usize]) -> (Option<String>, bool) {
    let mut template: Option<&str> = None;
    let mut instrument = false;
    for o in members.iter().map(|&i| &obs[i]) {
        let api = o.details.api();
        if let Some(h) = api.template_hash.as_deref()
            && template.is_none_or(|cur| h < cur)
        {
            template = Some(h);
        }
        instrument |= api.instrument == Some(true);
    }
    (template.map(str::to_owned), instrument)
}

fn run(
    obs: &[Observation],
    options: &Options,
    scope: Option<&Scope>,
) -> (Report, Vec<PodEvidence>) {
    let observations = obs.len() as u64;
    let obs = attribution::without_redundant_instrument_log(obs);
    let obs = &*attribution::one_timeout_per_connection(&obs);
    let times: Vec<WallNs> = obs.iter().map(|o| WallNs::from_timestamp(o.time)).collect();
    let (nodes, node_of) = nodes::Nodes::index(obs);
    let assignment = identity::assign(obs, &times);
    let labels: Vec<(Option<String>, bool)> = assignment
        .members
        .iter()
        .map(|m| pod_labels(obs, m))
        .collect();
    let timelines: Vec<marks::Timeline> = assignment
        .members
        .iter()
        .map(|m| marks::build(obs, &times, &node_of, m))
        .collect();
    let clocks = clock::assess(obs, &node_of, &nodes, &timelines);
    let listeners_watched = obs.iter().any(|o| o.kind == Kind::ListenerOpen);
    let clients = clients::Clients::index(obs);
    let mut drafts: Vec<pod::PodDraft> = assignment
        .pods
        .into_iter()
        .zip(timelines)
        .map(|(ident, tl)| pod::draft(ident, tl, obs, &times, &clocks, listeners_watched, &clients))
        .collect();
    // One name per Service, so a client's errors meet the pods they hit.
    let names = services::ServiceNames::index(obs);
    for d in &mut drafts {
        d.tl.service = d.tl.service.as_deref().map(|s| names.canonical(s));
    }
    let unattributed = rollout::attribute_service_errors(
        obs,
        &times,
        &assignment.service_level,
        &names,
        &clients,
        &mut drafts,
    );

    // Only deleted pods are members of a rollout: a pod whose process exits (httpd's children
    // do, per connection) or that sees errors while it keeps running is not being rolled out.
    // A stream without any deletion (`agent --standalone`, a kernel-only capture) cannot tell:
    // there every pod with a termination mark or an error is shown, for what it is worth.
    let api_deletions = obs.iter().any(|o| o.kind == Kind::PodDeleting);
    let mut warnings = clocks.warnings.clone();
    let mut not_deleted: Vec<(String, u64)> = Vec::new();
    let mut finished: Vec<rollout::Finished> = Vec::new();
    let mut started: Vec<rollout::Started> = Vec::new();
    for (d, (template, instrument)) in drafts.iter().zip(&labels) {
        let deleted = if api_deletions {
            d.tl.delete.is_some()
        } else {
            d.tl.is_terminating() || d.errors.total() > 0
        };
        let instrument = rollout::is_instrument(d.ident.name.as_ref(), *instrument);
        let (ns, workload) = rollout::workload_of(&d.ident, d.tl.workload.as_deref());
        let in_scope = scope
            .is_none_or(|s| ns.as_deref() == Some(s.namespace.as_str()) && workload == s.workload);
        if !in_scope {
            continue;
        }
        // A pod that turned ready in the capture and is not on its way out is a new pod (even
        // in a stream without deletions, where errors would make it a member).
        if !instrument && d.tl.is_new() && !d.tl.is_terminating() {
            started.push(rollout::Started::new(
                d,
                pod::finish_startup(d, &nodes, &clocks),
            ));
            continue;
        }
        if !deleted || instrument {
            if d.errors.total() > 0 {
                not_deleted.push((pod::label(&d.ident), d.errors.total()));
            }
            continue;
        }
        let (report, facts) = pod::finish(d, &nodes, &clocks);
        finished.push(rollout::Finished::new(
            d,
            report,
            facts,
            template.as_deref(),
        ));
    }
    if !not_deleted.is_empty() {
        let total: u64 = not_deleted.iter().map(|(_, n)| n).sum();
        let names: Vec<&str> = not_deleted
            .iter()
            .take(3)
            .map(|(p, _)| p.as_str())
            .collect();
        warnings.push(format!(
            "{total} error{} on pods that were not deleted ({}{}) {} in no rollout",
            if total == 1 { "" } else { "s" },
            names.join(", "),
            if not_deleted.len() > 3 { ", …" } else { "" },
            if total == 1 { "is" } else { "are" }
        ));
    }

    let grouped = rollout::group(finished, started, &unattributed, &mut warnings);
    let readiness_advice = readiness::advise(&grouped);
    let evidence: Vec<PodEvidence> = grouped
        .iter()
        .enumerate()
        .flat_map(|(i, (_, g))| g.iter().map(move |f| f.evidence(i)))
        .collect();
    let all: Vec<&PodEvidence> = evidence.iter().collect();
    let (advice, advice_unavailable) =
        match advice::advise(&all, options.margin_ns(), options.prestop) {
            Ok(a) => (Some(a), None),
            Err(why) => (None, Some(why)),
        };

    // Per node: observations, events lost to a full ring buffer, events the kernel skipped,
    // events a probe's handler failed on.
    let mut per_node: BTreeMap<usize, (u64, u64, u64, u64)> = BTreeMap::new();
    for (o, &n) in obs.iter().zip(&node_of) {
        let e = per_node.entry(n).or_default();
        e.0 += 1;
        if o.kind == Kind::Loss {
            match o.reason.as_deref() {
                Some(KERNEL_SKIPPED) => e.2 += o.weight(),
                Some(HANDLER_ERROR) => e.3 += o.weight(),
                _ => e.1 += o.weight(),
            }
        }
    }
    let mut node_summaries = Vec::new();
    for (n, (count, full, skipped, failed)) in per_node {
        let node = &nodes.names[n];
        if full > 0 {
            warnings.push(format!(
                "node {node}: its agent could not deliver {full} events (ring buffer full); their counts are in the aggregated lines, their exact times are not"
            ));
        }
        if skipped > 0 {
            warnings.push(format!(
                "node {node}: the kernel did not run its agent's probes for {skipped} events (their tracepoint fired while another tracing program ran on that CPU); they are in no count"
            ));
        }
        if failed > 0 {
            warnings.push(format!(
                "node {node}: its agent's probes failed on {failed} events (a map full, a kernel read refused); they are in no count"
            ));
        }
        node_summaries.push(NodeSummary {
            node: node.clone(),
            observations: count,
            clock_uncertainty_ms: ms_u(clocks.extra_ns[n]),
            lost_events: full + skipped + failed,
        });
    }

    let declared = capacity::declared(obs);
    let rollouts: Vec<Rollout> = grouped
        .into_iter()
        .map(|(mut r, g)| {
            r.pods = g.into_iter().map(|f| f.report).collect();
            r.capacity = capacity::of(&r, &declared);
            r.clients = clients::report(&r);
            if let Some(c) = r.capacity.as_ref().filter(|c| c.min_ready < c.desired) {
                r.reason.push_str("; ");
                r.reason.push_str(&c.reason);
            }
            r
        })
        .collect();
    let capacity_advice = capacity::advise(&rollouts);
    let report = Report {
        api_version: API_VERSION,
        kind: REPORT_KIND,
        rollouts,
        readiness_advice,
        capacity_advice,
        advice,
        advice_unavailable,
        nodes: node_summaries,
        input: InputSummary {
            observations,
            rejected_lines: Vec::new(),
        },
        warnings,
    };
    (report, evidence)
}
