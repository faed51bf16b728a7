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
pub mod window;

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

/// The stream-wide facts every piece of a stream is analysed with: the node table, what the
/// agents and the API watch were watching, the Services' names, the clients' addresses and
/// sockets, the workloads' declared settings.
pub(crate) struct Facts {
    pub nodes: nodes::Nodes,
    /// Per node, the largest move of its agent's monotonic → wall offset.
    pub offset_moves: Vec<u64>,
    pub listeners_watched: bool,
    pub api_deletions: bool,
    pub clients: clients::Clients,
    pub names: services::ServiceNames,
    pub declared: Vec<capacity::Declared>,
}

/// A piece of a stream with every line's pod found and every pod's marks folded.
pub(crate) struct Identified {
    pub times: Vec<WallNs>,
    pub assignment: identity::Assignment,
    pub labels: Vec<(Option<String>, bool)>,
    pub timelines: Vec<marks::Timeline>,
}

pub(crate) fn identify(obs: &[Observation], node_of: &[nodes::NodeId]) -> Identified {
    let times: Vec<WallNs> = obs.iter().map(|o| WallNs::from_timestamp(o.time)).collect();
    let assignment = identity::assign(obs, &times);
    let labels = assignment
        .members
        .iter()
        .map(|m| pod_labels(obs, m))
        .collect();
    let timelines = assignment
        .members
        .iter()
        .map(|m| marks::build(obs, &times, node_of, m))
        .collect();
    Identified {
        times,
        assignment,
        labels,
        timelines,
    }
}

/// What the report takes from one pod.
pub(crate) enum Outcome {
    Started(Box<rollout::Started>),
    Finished(Box<rollout::Finished>),
    /// Neither deleted nor new, with errors: its label and their number.
    NotDeleted(String, u64),
}

/// A pod's [`Outcome`] and its place among the stream's pods ([`identity::Assignment::origin`]
/// with the line's number in the whole stream).
pub(crate) struct PodOut {
    pub key: (u8, u64),
    pub outcome: Outcome,
}

/// A drafted pod with its place in the stream (for [`PodOut::key`]), its template and whether
/// it is an instrument.
pub(crate) struct Drafted {
    pub draft: pod::PodDraft,
    pub key: (u8, u64),
    label: (Option<String>, bool),
}

/// What the windowed analysis holds back until the stream's end: the client errors naming
/// only one of `services`, and the drafts of those Services' pods ([`Pending::settle`] ties
/// them together as the whole stream does).
#[derive(Default)]
pub(crate) struct Pending {
    /// The Services (their one name) with client errors naming only them, in the whole stream.
    pub services: std::collections::HashSet<String>,
    pub drafts: Vec<Drafted>,
    pub errors: Vec<rollout::ServiceError>,
    /// The names those errors repeat, once.
    shared: rollout::Shared,
}

impl Pending {
    /// The held-back pods' outcomes, their Services' errors tied to them, and the errors no
    /// single pod explains.
    pub fn settle(
        self,
        facts: &Facts,
        clocks: &clock::NodeClocks,
    ) -> (Vec<PodOut>, Vec<rollout::Unattributed>) {
        let mut drafted = self.drafts;
        // The whole stream's numbering of its pods: candidates of an error are weighed in it.
        drafted.sort_by_key(|d| d.key);
        let unattributed = rollout::attribute_service_errors(self.errors, &mut drafted);
        (outcomes(drafted, facts, clocks, None), unattributed)
    }
}

/// When [`analyse_pods`] ties the client errors naming only a Service to the pods.
pub(crate) enum Tie<'a> {
    /// At once: every pod of the stream is among those drafted; only the pods in the scope
    /// (when there is one) are reported.
    Now(Option<&'a Scope>),
    /// At the stream's end: the pods of the Services listed and those errors are held back.
    AtEnd(&'a mut Pending),
}

/// Drafts the pods `analysed` tells (their lines all in `obs`), ties the Service-level errors
/// to them (or holds them back, [`Tie`]), and says what each is for the report. `line_no`
/// numbers `obs`' lines in the whole stream.
pub(crate) fn analyse_pods(
    obs: &[Observation],
    ident: Identified,
    analysed: &dyn Fn(identity::PodId) -> bool,
    line_no: &dyn Fn(usize) -> u64,
    facts: &Facts,
    clocks: &clock::NodeClocks,
    tie: Tie<'_>,
) -> (Vec<PodOut>, Vec<rollout::Unattributed>) {
    let Identified {
        times,
        assignment,
        labels,
        timelines,
        ..
    } = ident;
    let names = &facts.names;
    let mut drafted: Vec<Drafted> = Vec::new();
    for (id, ((ident, tl), label)) in assignment
        .pods
        .into_iter()
        .zip(timelines)
        .zip(labels)
        .enumerate()
    {
        if !analysed(id) {
            continue;
        }
        let (phase, line) = assignment.origin[id];
        let mut draft = pod::draft(
            ident,
            tl,
            obs,
            &times,
            clocks,
            facts.listeners_watched,
            &facts.clients,
        );
        // One name per Service, so a client's errors meet the pods they hit.
        draft.tl.service = draft.tl.service.as_deref().map(|s| names.canonical(s));
        drafted.push(Drafted {
            draft,
            key: (phase, line_no(line)),
            label,
        });
    }
    let service_errors = |shared: &mut rollout::Shared| {
        rollout::service_errors(
            obs,
            &times,
            &assignment.service_level,
            (names, &facts.clients),
            shared,
        )
    };
    let (unattributed, scope) = match tie {
        Tie::AtEnd(p) => {
            let errors = service_errors(&mut p.shared);
            p.errors.extend(errors);
            let (held, now): (Vec<Drafted>, Vec<Drafted>) = drafted.into_iter().partition(|d| {
                d.draft
                    .tl
                    .service
                    .as_ref()
                    .is_some_and(|s| p.services.contains(s))
            });
            p.drafts.extend(held);
            drafted = now;
            (Vec::new(), None)
        }
        Tie::Now(scope) => (
            rollout::attribute_service_errors(
                service_errors(&mut rollout::Shared::default()),
                &mut drafted,
            ),
            scope,
        ),
    };
    (outcomes(drafted, facts, clocks, scope), unattributed)
}

/// What each drafted pod is for the report.
fn outcomes(
    drafted: Vec<Drafted>,
    facts: &Facts,
    clocks: &clock::NodeClocks,
    scope: Option<&Scope>,
) -> Vec<PodOut> {
    // Only deleted pods are members of a rollout: a pod whose process exits (httpd's children
    // do, per connection) or that sees errors while it keeps running is not being rolled out.
    // A stream without any deletion (`agent --standalone`, a kernel-only capture) cannot tell:
    // there every pod with a termination mark or an error is shown, for what it is worth.
    let mut out = Vec::new();
    for Drafted {
        draft: d,
        key,
        label: (template, instrument),
    } in drafted
    {
        let deleted = if facts.api_deletions {
            d.tl.delete.is_some()
        } else {
            d.tl.is_terminating() || d.errors.total() > 0
        };
        let instrument = rollout::is_instrument(d.ident.name.as_ref(), instrument);
        let (ns, workload) = rollout::workload_of(&d.ident, d.tl.workload.as_deref());
        let in_scope = scope
            .is_none_or(|s| ns.as_deref() == Some(s.namespace.as_str()) && workload == s.workload);
        if !in_scope {
            continue;
        }
        // A pod that turned ready in the capture and is not on its way out is a new pod (even
        // in a stream without deletions, where errors would make it a member).
        let outcome = if !instrument && d.tl.is_new() && !d.tl.is_terminating() {
            Outcome::Started(Box::new(rollout::Started::new(
                &d,
                pod::finish_startup(&d, &facts.nodes, clocks),
            )))
        } else if !deleted || instrument {
            if d.errors.total() == 0 {
                continue;
            }
            Outcome::NotDeleted(pod::label(&d.ident), d.errors.total())
        } else {
            let (report, pod_facts) = pod::finish(&d, &facts.nodes, clocks);
            Outcome::Finished(Box::new(rollout::Finished::new(
                &d,
                report,
                pod_facts,
                template.as_deref(),
            )))
        };
        out.push(PodOut { key, outcome });
    }
    out
}

/// Per node: observations, events lost to a full ring buffer, events the kernel skipped,
/// events a probe's handler failed on.
pub(crate) type LineCounts = BTreeMap<nodes::NodeId, (u64, u64, u64, u64)>;

pub(crate) fn count_lines(
    obs: &[Observation],
    node_of: &[nodes::NodeId],
    per_node: &mut LineCounts,
) {
    for (o, &n) in obs.iter().zip(node_of) {
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
}

fn run(
    obs: &[Observation],
    options: &Options,
    scope: Option<&Scope>,
) -> (Report, Vec<PodEvidence>) {
    let observations = obs.len() as u64;
    let obs = attribution::without_redundant_instrument_log(obs);
    let obs = &*attribution::one_timeout_per_connection(&obs);
    let (nodes, node_of) = nodes::Nodes::index(obs);
    let mut offset_moves = vec![0u64; nodes.names.len()];
    for (o, &n) in obs.iter().zip(&node_of) {
        clock::offset_move(o, n, &mut offset_moves);
    }
    let facts = Facts {
        offset_moves,
        listeners_watched: obs.iter().any(|o| o.kind == Kind::ListenerOpen),
        api_deletions: obs.iter().any(|o| o.kind == Kind::PodDeleting),
        clients: clients::Clients::index(obs),
        names: services::ServiceNames::index(obs),
        declared: capacity::declared(obs),
        nodes,
    };
    let mut per_node = LineCounts::new();
    count_lines(obs, &node_of, &mut per_node);
    let ident = identify(obs, &node_of);
    let mut behind = vec![0u64; facts.nodes.names.len()];
    for tl in &ident.timelines {
        clock::add_behind(tl, &mut behind);
    }
    let clocks = clock::of(&facts.offset_moves, &behind, &facts.nodes);
    let (pods, unattributed) = analyse_pods(
        obs,
        ident,
        &|_| true,
        &|i| i as u64,
        &facts,
        &clocks,
        Tie::Now(scope),
    );
    conclude(
        &facts,
        &clocks,
        pods,
        &unattributed,
        per_node,
        observations,
        options,
    )
}

/// The report of a stream from its pods' outcomes (any order: they are put in the stream's)
/// and the stream-wide facts.
pub(crate) fn conclude(
    facts: &Facts,
    clocks: &clock::NodeClocks,
    mut pods: Vec<PodOut>,
    unattributed: &[rollout::Unattributed],
    per_node: LineCounts,
    observations: u64,
    options: &Options,
) -> (Report, Vec<PodEvidence>) {
    pods.sort_by_key(|p| p.key);
    let nodes = &facts.nodes;
    let mut warnings = clocks.warnings.clone();
    let mut not_deleted: Vec<(String, u64)> = Vec::new();
    let mut finished: Vec<rollout::Finished> = Vec::new();
    let mut started: Vec<rollout::Started> = Vec::new();
    for p in pods {
        match p.outcome {
            Outcome::Started(s) => started.push(*s),
            Outcome::Finished(f) => finished.push(*f),
            Outcome::NotDeleted(label, n) => not_deleted.push((label, n)),
        }
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

    let grouped = rollout::group(finished, started, unattributed, &mut warnings);
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

    let declared = &facts.declared;
    let rollouts: Vec<Rollout> = grouped
        .into_iter()
        .map(|(mut r, g)| {
            r.pods = g.into_iter().map(|f| f.report).collect();
            r.capacity = capacity::of(&r, declared);
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
