//! Pods grouped into rollouts, and client errors that name only a Service tied to a pod.
//!
//! A rollout is one change of a workload's pod template: the Deployment controller retires the
//! ReplicaSet of the old template (label `pod-template-hash`), a StatefulSet or DaemonSet the
//! pods of the old ControllerRevision (`controller-revision-hash`), so the pods one rollout
//! deletes share one template, and pods of two templates are two rollouts however close in
//! time (`kubectl rollout restart` twice in a minute). Where a deletion names no template (older
//! streams, bare pods), pods of one workload whose deletions are more than
//! [`ROLLOUT_SPLIT_NS`] apart belong to different rollouts; that gap also splits two
//! scale-downs of one template.

use std::{
    collections::{BTreeMap, HashMap},
    rc::Rc,
};

use super::{
    Drafted,
    attribution::{self, Fuzzy},
    clients::{Clients, Path},
    identity::PodIdent,
    model::{Cause, ErrorCounts, PodReport, Rollout, StartupReport, Verdict},
    pod::{PodDraft, PodFacts, label},
    services::ServiceNames,
    time::{WallNs, ms},
};
use crate::observation::{Observation, PodRef};

/// Ten minutes without a deletion in a workload ends its rollout.
pub(crate) const ROLLOUT_SPLIT_NS: i64 = 600 * 1_000_000_000;

/// Names of the pods `trace --traffic` runs its request loop in: the instrument, never a
/// rollout, although its own deletion (when the trace ends) is in the agents' journals.
pub const TRAFFIC_POD_PREFIX: &str = "zdt-traffic-";

/// Whether the pod `namespace/name` (or `name`) is kubectl-zdt's own traffic loop, by its
/// name or by the `instrument` flag the API watch sets from its labels.
pub fn is_instrument(pod: Option<&PodRef>, flagged: bool) -> bool {
    flagged || pod.is_some_and(|p| p.name().starts_with(TRAFFIC_POD_PREFIX))
}

/// The pod template the pod `namespace/name` was created from: the `template_hash` its deletion
/// carried, else, for a Deployment's pod, the hash in its name (`<deployment>-<hash>-<5 chars>`:
/// the controller names each ReplicaSet `<deployment>-<pod-template-hash>`, the ReplicaSet its
/// pods `<replicaset>-<5 chars>`).
pub fn template_of(pod: &PodRef, workload: &str, declared: Option<&str>) -> Option<String> {
    if let Some(h) = declared {
        return Some(h.to_owned());
    }
    let deployment = workload.strip_prefix("deployment/")?;
    let (hash, suffix) = pod
        .name()
        .strip_prefix(deployment)?
        .strip_prefix('-')?
        .split_once('-')?;
    let alnum = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (suffix.len() == 5 && (6..=10).contains(&hash.len()) && alnum(suffix) && alnum(hash))
        .then(|| hash.to_owned())
}

/// A service-level error no single pod explains.
#[derive(Clone, Debug)]
pub(crate) struct Unattributed {
    pub service: String,
    pub t: WallNs,
    pub count: u64,
}

/// A client error naming only a Service, with what [`attribute_service_errors`] weighs of it:
/// the windowed analysis keeps these (not the line) until every pod of the Service is drafted,
/// so the names they repeat are shared ([`Shared`]): about 70 bytes an error.
#[derive(Clone, Debug)]
pub(crate) struct ServiceError {
    /// The Service's one name ([`ServiceNames::canonical`]).
    pub service: Rc<str>,
    class: attribution::ErrorClass,
    port: Option<u16>,
    at: Fuzzy,
    count: u64,
    client: (Rc<str>, Path),
}

/// One copy of each name the errors of [`service_errors`] repeat (a Service's, a client's).
#[derive(Default)]
pub(crate) struct Shared(foldhash::HashSet<Rc<str>>);

impl Shared {
    fn of(&mut self, name: String) -> Rc<str> {
        if let Some(kept) = self.0.get(name.as_str()) {
            return kept.clone();
        }
        let kept: Rc<str> = Rc::from(name);
        self.0.insert(kept.clone());
        kept
    }
}

/// The client errors naming only a Service among `obs` (`indices`, in stream order).
pub(crate) fn service_errors(
    obs: &[Observation],
    times: &[WallNs],
    indices: &[usize],
    (names, clients): (&ServiceNames, &Clients),
    shared: &mut Shared,
) -> Vec<ServiceError> {
    indices
        .iter()
        .map(|&i| {
            let o = &obs[i];
            let dialled = o.service.as_ref().map(ToString::to_string);
            ServiceError {
                service: shared.of(names.canonical(dialled.as_deref().unwrap_or_default())),
                class: attribution::class(o),
                port: o.port,
                at: attribution::instant(o, times[i]),
                count: o.weight(),
                client: (shared.of(clients.client_of(o)), clients.path_of(o)),
            }
        })
        .collect()
}

/// Per error, the pods of its Service whose windows explain it, with the cause each gives, in
/// `drafted` order. Each Service's errors of one class are swept in time order against its
/// pods' [`attribution::candidacy`] spans: an error is weighed against the pods whose span holds
/// its time, not against every pod of the Service (a stream of many rollouts has thousands).
fn candidates(errors: &[ServiceError], drafted: &[Drafted]) -> Vec<Vec<(usize, Cause)>> {
    use std::{
        cmp::Reverse,
        collections::{BTreeSet, BinaryHeap},
    };
    let mut by_service: HashMap<&str, Vec<usize>> = HashMap::new();
    for (p, d) in drafted.iter().enumerate() {
        if let Some(s) = &d.draft.tl.service {
            by_service.entry(s.as_str()).or_default().push(p);
        }
    }
    let mut groups: HashMap<(&str, attribution::ErrorClass), Vec<usize>> = HashMap::new();
    for (i, e) in errors.iter().enumerate() {
        groups.entry((&*e.service, e.class)).or_default().push(i);
    }
    let mut out = vec![Vec::new(); errors.len()];
    for ((service, class), mut group) in groups {
        let mut spans: Vec<(WallNs, WallNs, usize)> = by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|&p| {
                attribution::candidacy(class, &drafted[p].draft.window).map(|(a, b)| (a, b, p))
            })
            .collect();
        spans.sort_unstable();
        group.sort_unstable_by_key(|&i| (errors[i].at.t, i));
        let (mut next, mut active, mut ends) = (0, BTreeSet::new(), BinaryHeap::new());
        for i in group {
            let e = &errors[i];
            let t = e.at.t;
            while let Some(&(from, until, p)) = spans.get(next)
                && from <= t
            {
                active.insert(p);
                ends.push(Reverse((until, p)));
                next += 1;
            }
            while let Some(&Reverse((until, p))) = ends.peek()
                && until < t
            {
                active.remove(&p);
                ends.pop();
            }
            out[i] = active
                .iter()
                .map(|&p| {
                    (
                        p,
                        attribution::cause(e.class, e.port, t, &drafted[p].draft.window),
                    )
                })
                .filter(|(_, c)| !matches!(c, Cause::Unrelated | Cause::Undetermined))
                .collect();
        }
    }
    out
}

/// Ties each error seen on a Service (a client connecting to a ClusterIP does not know which
/// backend kube-proxy chose) to the one pod of that Service whose termination explains it.
/// With zero or several candidates the error stays unattributed: guessing would move errors
/// between pods' verdicts. `errors` in stream order; `drafts` every pod of their Services, in
/// the order the whole stream numbers them.
pub(crate) fn attribute_service_errors(
    errors: Vec<ServiceError>,
    drafted: &mut [Drafted],
) -> Vec<Unattributed> {
    let weighed = candidates(&errors, drafted);
    type Placed = (
        usize,
        attribution::ErrorClass,
        Cause,
        Fuzzy,
        u64,
        (String, Path),
    );
    let mut placed: Vec<Placed> = Vec::new();
    let mut left = Vec::new();
    let mut ambiguous: Vec<(Vec<(usize, Cause)>, Unattributed)> = Vec::new();
    for (e, candidates) in errors.into_iter().zip(weighed) {
        let u = Unattributed {
            service: e.service.to_string(),
            t: e.at.t,
            count: e.count,
        };
        match candidates[..] {
            [(p, cause)] => placed.push((
                p,
                e.class,
                cause,
                e.at,
                e.count,
                (e.client.0.to_string(), e.client.1),
            )),
            [] => left.push(u),
            _ => ambiguous.push((candidates, u)),
        }
    }
    // A client's error and the pod's own record of it (a refused SYN, a reset) are one failed
    // connection seen from two ends: client errors only add what the pod side did not see
    // (timeouts, above all), so nothing is counted twice.
    let mut seen_by_pod: HashMap<(usize, Cause), u64> = HashMap::new();
    for (p, class, cause, at, n, client) in placed {
        let credit = seen_by_pod
            .entry((p, cause))
            .or_insert_with(|| drafted[p].draft.errors.get(cause));
        let covered = n.min(*credit);
        *credit -= covered;
        if n > covered {
            drafted[p]
                .draft
                .add_error(class, cause, at, n - covered, client);
        }
    }
    // An error several pods' windows explain was still seen by whichever of them refused or
    // reset it: what their own lines cover is no further error; the rest stays unattributed.
    for (candidates, mut u) in ambiguous {
        for (p, cause) in candidates {
            let credit = seen_by_pod
                .entry((p, cause))
                .or_insert_with(|| drafted[p].draft.errors.get(cause));
            let covered = u.count.min(*credit);
            *credit -= covered;
            u.count -= covered;
        }
        if u.count > 0 {
            left.push(u);
        }
    }
    left
}

/// The namespace and workload of the pod `namespace/name` as the report names them, from the
/// workload an observation declared (`workload` of `pod_deleting`) or else from the pod's name.
pub fn workload_of_pod(pod: &PodRef, declared: Option<&str>) -> (Option<String>, String) {
    workload_of(
        &PodIdent {
            name: Some(pod.clone()),
            ..PodIdent::default()
        },
        declared,
    )
}

/// `deployment/<name>` for pods named `<name>-<pod-template-hash>-<5 chars>`, the ReplicaSet
/// naming the Deployment controller uses; otherwise the pod itself.
pub(crate) fn workload_of(ident: &PodIdent, declared: Option<&str>) -> (Option<String>, String) {
    let Some(full) = &ident.name else {
        return (None, declared.unwrap_or("unknown").to_owned());
    };
    let (ns, name) = (full.namespace().map(str::to_owned), full.name());
    if let Some(w) = declared {
        return (ns, w.to_owned());
    }
    let parts: Vec<&str> = name.rsplitn(3, '-').collect();
    let alnum = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    match parts[..] {
        [suffix, hash, base]
            if suffix.len() == 5
                && (6..=10).contains(&hash.len())
                && alnum(suffix)
                && alnum(hash) =>
        {
            (ns, format!("deployment/{base}"))
        }
        _ => (ns, format!("pod/{name}")),
    }
}

/// The first and last of a pod's instants and its errors'.
fn span(mut instants: Vec<WallNs>, errors: &[super::model::ErrorMark]) -> (WallNs, WallNs) {
    instants.extend(errors.iter().map(|e| WallNs::from_timestamp(e.time)));
    let first = instants.iter().min().copied().unwrap_or(WallNs(0));
    let last = instants.iter().max().copied().unwrap_or(WallNs(0));
    (first, last)
}

pub(crate) struct Finished {
    pub report: PodReport,
    pub facts: PodFacts,
    pub namespace: Option<String>,
    pub workload: String,
    /// The pod template it was created from (see the module doc), when known.
    pub template: Option<String>,
    pub container: Option<String>,
    pub grace_period_s: Option<u64>,
    /// Instant used to order and group pods: deletion, else the first thing seen.
    pub anchor: WallNs,
    pub span: (WallNs, WallNs),
}

impl Finished {
    /// What the advice reads from this pod, which belongs to rollout number `rollout`.
    pub fn evidence(&self, rollout: usize) -> super::PodEvidence {
        super::PodEvidence {
            pod: self.report.pod.clone(),
            namespace: self.namespace.clone(),
            workload: self.workload.clone(),
            rollout,
            container: self.container.clone(),
            grace_period_s: self.grace_period_s,
            propagation_ns: self.facts.propagation_ns,
            needed_ns: self.facts.needed_ns,
            drain_ns: self.facts.drain_ns,
            prestop_ran_ns: self.facts.prestop_ran_ns,
            sigterm_seen: self.report.marks.sigterm.is_some(),
            errors: self.report.errors,
            verdict: self.report.verdict,
        }
    }

    /// `template` is the `template_hash` the pod's deletion carried.
    pub fn new(
        draft: &PodDraft,
        report: PodReport,
        facts: PodFacts,
        template: Option<&str>,
    ) -> Self {
        let (namespace, workload) = workload_of(&draft.ident, draft.tl.workload.as_deref());
        let template = draft
            .ident
            .name
            .as_ref()
            .and_then(|pod| template_of(pod, &workload, template));
        let tl = &draft.tl;
        let instants: Vec<WallNs> = [
            tl.delete,
            tl.ep_terminating,
            tl.ep_removed,
            tl.prestop,
            tl.sigterm,
            tl.listen_closed,
            tl.exit,
            tl.netns_gone,
        ]
        .into_iter()
        .flatten()
        .map(|m| m.t)
        .chain(
            tl.dp
                .values()
                .flat_map(|d| [d.removed, d.last_flow])
                .flatten()
                .map(|m| m.t),
        )
        .collect();
        let (first, last) = span(instants, &report.error_marks);
        Self {
            anchor: tl.delete.map_or(first, |m| m.t),
            span: (first, last),
            namespace,
            workload,
            template,
            container: tl.container.clone(),
            grace_period_s: tl.grace_period_s,
            report,
            facts,
        }
    }
}

/// A pod that turned ready during the capture and was not deleted: a new pod of a rollout.
pub(crate) struct Started {
    pub report: StartupReport,
    pub namespace: Option<String>,
    pub workload: String,
    /// Its endpoint turning ready (else the pod's), to find its rollout by.
    pub anchor: WallNs,
    pub span: (WallNs, WallNs),
}

impl Started {
    pub fn new(draft: &PodDraft, report: StartupReport) -> Self {
        let (namespace, workload) = workload_of(&draft.ident, draft.tl.workload.as_deref());
        let tl = &draft.tl;
        let marks = [tl.pod_ready, tl.ep_ready, tl.listen_open]
            .into_iter()
            .chain(tl.dp.values().flat_map(|d| [d.first_added, d.first_flow]));
        let (first, last) = span(marks.flatten().map(|m| m.t).collect(), &report.error_marks);
        Self {
            anchor: tl.ep_ready.or(tl.pod_ready).map_or(first, |m| m.t),
            span: (first, last),
            namespace,
            workload,
            report,
        }
    }
}

/// Adds each new pod to the rollout of its workload it started closest to (within
/// [`ROLLOUT_SPLIT_NS`]). A new pod of no such rollout makes one of its own only when something
/// went wrong at its start (a scale-up that refused connections); otherwise it is left out.
fn attach_started(out: &mut Vec<(Rollout, Vec<Finished>)>, started: Vec<Started>) {
    let mut orphans: Vec<Started> = Vec::new();
    for s in started {
        let home = out
            .iter_mut()
            .filter(|(r, _)| r.namespace == s.namespace && r.workload == s.workload)
            .map(|(r, g)| {
                let (a, b) = (
                    WallNs::from_timestamp(r.start),
                    WallNs::from_timestamp(r.end),
                );
                let distance = if s.anchor < a {
                    a - s.anchor
                } else {
                    (s.anchor - b).max(0)
                };
                (distance, r, !g.is_empty())
            })
            .filter(|(d, _, _)| *d <= ROLLOUT_SPLIT_NS)
            .min_by_key(|(d, r, _)| (*d, r.start));
        match home {
            Some((_, r, deleted)) => add_started(r, deleted, s),
            None if s.report.verdict == Verdict::Unsafe => orphans.push(s),
            None => {}
        }
    }
    orphans.sort_by(|a, b| {
        (&a.namespace, &a.workload, a.anchor).cmp(&(&b.namespace, &b.workload, b.anchor))
    });
    for s in orphans {
        let joins = out.last_mut().filter(|(r, g)| {
            g.is_empty()
                && r.namespace == s.namespace
                && r.workload == s.workload
                && s.anchor - WallNs::from_timestamp(r.end) <= ROLLOUT_SPLIT_NS
        });
        match joins {
            Some((r, _)) => add_started(r, false, s),
            None => {
                let mut r = Rollout {
                    workload: s.workload.clone(),
                    namespace: s.namespace.clone(),
                    start: s.span.0.to_timestamp(),
                    end: s.span.1.to_timestamp(),
                    duration_ms: 0.0,
                    pods: Vec::new(),
                    startup: Vec::new(),
                    clients: Vec::new(),
                    capacity: None,
                    max_gap_ms: None,
                    worst_pod: None,
                    worst_node: None,
                    errors: ErrorCounts::default(),
                    unattributed_errors: 0,
                    verdict: Verdict::Safe,
                    reason: "no pod was deleted; new pods started".to_owned(),
                };
                add_started(&mut r, false, s);
                out.push((r, Vec::new()));
            }
        }
    }
}

/// One new pod into its rollout: its errors, its verdict, the rollout's span and reason.
fn add_started(r: &mut Rollout, deleted: bool, s: Started) {
    r.start = r.start.min(s.span.0.to_timestamp());
    r.end = r.end.max(s.span.1.to_timestamp());
    r.duration_ms = ms(WallNs::from_timestamp(r.end) - WallNs::from_timestamp(r.start));
    r.errors.merge(&s.report.errors);
    // A new pod that cannot be judged (its listener not seen) says nothing against the rollout;
    // one that took connections it could not serve makes it unsafe.
    if !deleted && r.startup.is_empty() {
        r.verdict = s.report.verdict;
    } else if s.report.verdict == Verdict::Unsafe {
        r.verdict = Verdict::Unsafe;
    }
    r.startup.push(s.report);
    r.startup.sort_by(|a, b| {
        let key = |x: &StartupReport| x.marks.endpoint_ready.as_ref().map(|m| m.time);
        (key(a), &a.pod).cmp(&(key(b), &b.pod))
    });
}

/// The rollout's reason, completed with what its new pods did at their start.
fn startup_reason(r: &mut Rollout, deleted: bool) {
    let unsafe_new = r
        .startup
        .iter()
        .filter(|s| s.verdict == Verdict::Unsafe)
        .count();
    if unsafe_new == 0 {
        return;
    }
    let before: u64 = r.startup.iter().map(|s| s.errors.before_listening).sum();
    let after: u64 = r.startup.iter().map(|s| s.errors.after_ready).sum();
    let mut what = format!(
        "{unsafe_new} of {} new pods took connections before they could serve",
        r.startup.len()
    );
    if before > 0 {
        what.push_str(&format!(" ({before} refused before listening"));
        if after > 0 {
            what.push_str(&format!(", {after} after turning ready"));
        }
        what.push(')');
    } else if after > 0 {
        what.push_str(&format!(" ({after} refused after turning ready)"));
    }
    what.push_str(": a readiness probe cures them, not a preStop");
    if !deleted {
        r.reason = what;
    } else {
        r.reason = format!("{what}; {}", r.reason);
    }
}

/// Groups finished pods into rollouts, adds the new pods to them, and the service-level
/// errors no pod explained.
pub(crate) fn group(
    mut pods: Vec<Finished>,
    started: Vec<Started>,
    unattributed: &[Unattributed],
    warnings: &mut Vec<String>,
) -> Vec<(Rollout, Vec<Finished>)> {
    let key = |p: &Finished| (p.namespace.clone(), p.workload.clone(), p.template.clone());
    pods.sort_by(|a, b| {
        (
            key(a),
            a.anchor,
            &a.report.pod,
            &a.report.pod_uid,
            a.report.ip,
        )
            .cmp(&(
                key(b),
                b.anchor,
                &b.report.pod,
                &b.report.pod_uid,
                b.report.ip,
            ))
    });
    let mut groups: Vec<Vec<Finished>> = Vec::new();
    for p in pods {
        let split = groups
            .last()
            .and_then(|g| g.last())
            .is_none_or(|prev| key(prev) != key(&p) || p.anchor - prev.anchor > ROLLOUT_SPLIT_NS);
        if split {
            groups.push(vec![p]);
        } else if let Some(g) = groups.last_mut() {
            g.push(p);
        }
    }
    let mut leftover: BTreeMap<&str, u64> = BTreeMap::new();
    let mut out: Vec<(Rollout, Vec<Finished>)> =
        groups.into_iter().map(|g| (summarize(&g), g)).collect();
    attach_started(&mut out, started);
    for (r, g) in &mut out {
        startup_reason(r, !g.is_empty());
    }
    for u in unattributed {
        let home = out.iter_mut().find(|(r, g)| {
            let services = g
                .iter()
                .map(|p| p.report.service.as_deref())
                .chain(r.startup.iter().map(|s| s.service.as_deref()));
            let (start, end) = (
                WallNs::from_timestamp(r.start),
                WallNs::from_timestamp(r.end),
            );
            services.into_iter().any(|s| s == Some(u.service.as_str()))
                && start <= u.t
                && u.t <= end
        });
        match home {
            Some((r, _)) => {
                r.unattributed_errors += u.count;
            }
            None => *leftover.entry(u.service.as_str()).or_default() += u.count,
        }
    }
    for (service, n) in leftover {
        let service = if service.is_empty() {
            "(no service)"
        } else {
            service
        };
        warnings.push(format!(
            "{n} client errors on service {service} happened outside every observed rollout of it and are not counted"
        ));
    }
    for (r, _) in &mut out {
        if r.unattributed_errors > 0 {
            r.reason.push_str(&format!(
                "; {} client errors on the Service fit no single pod's window",
                r.unattributed_errors
            ));
        }
    }
    out.sort_by_key(|(r, _)| (r.start, r.workload.clone()));
    out
}

fn summarize(g: &[Finished]) -> Rollout {
    let first = &g[0];
    let start = g.iter().map(|p| p.span.0).min().unwrap_or(WallNs(0));
    let end = g.iter().map(|p| p.span.1).max().unwrap_or(WallNs(0));
    let mut errors = ErrorCounts::default();
    for p in g {
        errors.merge(&p.report.errors);
    }
    let worst = g
        .iter()
        .filter_map(|p| p.report.gap_ms.map(|gap| (gap, p)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let verdict = g
        .iter()
        .map(|p| p.report.verdict)
        .max()
        .unwrap_or(Verdict::Inconclusive);
    let n = g.len();
    let count = |v: Verdict| g.iter().filter(|p| p.report.verdict == v).count();
    let reason = match (verdict, worst) {
        (Verdict::Unsafe, Some((gap, p))) if gap > 0.0 => format!(
            "{} of {n} pods had an unsafe window; the worst, {}, {}",
            count(Verdict::Unsafe),
            p.report
                .pod
                .as_ref()
                .map_or_else(|| label_of(&p.report), ToString::to_string),
            p.report.reason
        ),
        (Verdict::Unsafe, _) => format!(
            "{} of {n} pods lost connections while terminating ({} errors a preStop delay would have prevented)",
            count(Verdict::Unsafe),
            errors.unsafe_window + errors.after_netns_gone
        ),
        (Verdict::Safe, worst) => format!(
            "all {n} pods: every node stopped routing before the pod stopped listening{}",
            worst.map_or(String::new(), |(gap, _)| format!(" (largest gap {gap} ms)"))
        ),
        (Verdict::Inconclusive, _) => {
            let p = g
                .iter()
                .find(|p| p.report.verdict == Verdict::Inconclusive)
                .unwrap_or(first);
            format!(
                "{} of {n} pods cannot be judged; e.g. {}: {}",
                count(Verdict::Inconclusive),
                label_of(&p.report),
                p.report.reason
            )
        }
    };
    Rollout {
        workload: first.workload.clone(),
        namespace: first.namespace.clone(),
        start: start.to_timestamp(),
        end: end.to_timestamp(),
        // Filled by the caller once the advice has read the pods: no copy of 1 000-node tables.
        pods: Vec::new(),
        startup: Vec::new(),
        clients: Vec::new(),
        capacity: None,
        max_gap_ms: worst.map(|(gap, _)| gap),
        worst_pod: worst.map(|(_, p)| label_of(&p.report)),
        worst_node: worst.and_then(|(_, p)| p.report.worst_node.clone()),
        errors,
        unattributed_errors: 0,
        verdict,
        reason,
        duration_ms: ms(end - start),
    }
}

fn label_of(p: &PodReport) -> String {
    label(&PodIdent {
        uid: p.pod_uid.clone(),
        name: p.pod.clone(),
        ip: p.ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_template_is_its_declared_hash_else_the_hash_in_a_deployment_pods_name() {
        let t = |pod: &str, workload, declared| template_of(&pod.into(), workload, declared);
        assert_eq!(
            t("default/fast-6cdf94f8b6-hdssw", "deployment/fast", None).as_deref(),
            Some("6cdf94f8b6")
        );
        assert_eq!(
            t("default/db-0", "statefulset/db", Some("db-7c9d")).as_deref(),
            Some("db-7c9d")
        );
        // Another Deployment's pod, a bare pod, a name not made by a ReplicaSet: unknown.
        assert_eq!(
            t("default/fast2-cb57b7b85-jxlz8", "deployment/fast", None),
            None
        );
        assert_eq!(t("default/tp-short", "pod/tp-short", None), None);
        assert_eq!(t("default/fast-x", "deployment/fast", None), None);
    }
}
