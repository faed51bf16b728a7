//! Capacity during a rollout: how many endpoints of the workload's Service were ready — and how
//! many of those were really listening — over time, against the replicas the workload asked
//! for (docs/report-schema.md, Capacity).
//!
//! Built from the rollout's own pods: an old (deleted) pod counts as ready from the start of
//! the capture (unless its endpoint turned ready in it) until its endpoint turned terminating
//! (else was removed, else the pod was deleted); a new pod from its endpoint turning ready
//! (else the pod's Ready condition). A pod is *serving* while it is ready and listening: an old
//! pod until its listener closed too, a new pod from its listener's open (when seen). The
//! desired count is the workload's `spec.replicas` from a `rollout_start` line (`trace` writes
//! one), else the number of pods the rollout deleted (a restart replaces every replica).

use jiff::Timestamp;

use super::{
    model::{Capacity, CapacityAdvice, CapacityStep, Patch, Rollout},
    time::{WallNs, ms},
};
use crate::observation::{Kind, Observation};

/// What a `rollout_start` line says of the workload's settings.
#[derive(Clone, Debug)]
pub(crate) struct Declared {
    pub namespace: Option<String>,
    pub workload: String,
    pub t: WallNs,
    pub replicas: Option<u64>,
    pub max_unavailable: Option<serde_json::Value>,
    pub max_surge: Option<serde_json::Value>,
}

/// Every `rollout_start` line of the input.
pub(crate) fn declared(obs: &[Observation]) -> Vec<Declared> {
    obs.iter().filter_map(declared_by).collect()
}

/// What one `rollout_start` line declares; `None` for any other line.
pub(crate) fn declared_by(o: &Observation) -> Option<Declared> {
    if o.kind != Kind::RolloutStart {
        return None;
    }
    let api = o.details.api();
    Some(Declared {
        namespace: api.namespace.clone(),
        workload: api.workload.clone()?.into(),
        t: WallNs::from_timestamp(o.time),
        replicas: api.replicas,
        max_unavailable: api.max_unavailable.clone(),
        max_surge: api.max_surge.clone(),
    })
}

/// One change of the counts: +1/−1 ready, +1/−1 serving.
type Change = (Timestamp, i64, i64);

/// The changes one pod makes: ready over `[from, to)`, serving over `[serve_from, serve_to)`;
/// `None` = before / after the capture.
fn changes(
    out: &mut Vec<Change>,
    ready: (Option<Timestamp>, Option<Timestamp>),
    serving: (Option<Timestamp>, Option<Timestamp>),
) -> (i64, i64) {
    let mut initial = (0, 0);
    for (i, (from, to)) in [ready, serving].into_iter().enumerate() {
        let delta = |d: i64| if i == 0 { (d, 0) } else { (0, d) };
        match from {
            Some(f) => {
                let (r, s) = delta(1);
                out.push((f, r, s));
            }
            None => {
                let (r, s) = delta(1);
                initial.0 += r;
                initial.1 += s;
            }
        }
        if let Some(t) = to {
            let (r, s) = delta(-1);
            out.push((t, r, s));
        }
    }
    initial
}

/// A rollout's capacity, when its new pods are in the input (without them their replacements'
/// readiness is unknown, and every deletion would look like lost capacity) and any of its pods
/// has an endpoint mark.
pub(crate) fn of(r: &Rollout, declared: &[Declared]) -> Option<Capacity> {
    if r.startup.is_empty() {
        return None;
    }
    let t = |m: &Option<super::model::Mark>| m.as_ref().map(|m| m.time);
    let mut events: Vec<Change> = Vec::new();
    let mut initial = (0i64, 0i64);
    let mut endpoint_seen = false;
    for p in &r.pods {
        let m = &p.marks;
        endpoint_seen |= m.ep_terminating.is_some() || m.ep_removed.is_some();
        let end = t(&m.ep_terminating).or(t(&m.ep_removed)).or(t(&m.delete));
        let serve_end = match (end, t(&m.listen_closed)) {
            (Some(e), Some(l)) => Some(e.min(l)),
            (e, l) => e.or(l),
        };
        let (a, b) = changes(&mut events, (None, end), (None, serve_end));
        initial = (initial.0 + a, initial.1 + b);
    }
    for s in &r.startup {
        let m = &s.marks;
        let Some(ready) = t(&m.endpoint_ready).or(t(&m.pod_ready)) else {
            continue;
        };
        endpoint_seen |= m.endpoint_ready.is_some();
        let serve = t(&m.listener_open).map_or(ready, |l| l.max(ready));
        let (a, b) = changes(&mut events, (Some(ready), None), (Some(serve), None));
        initial = (initial.0 + a, initial.1 + b);
    }
    if !endpoint_seen {
        return None;
    }
    events.sort_by_key(|e| e.0);
    let key = (r.namespace.as_deref(), r.workload.as_str());
    let (start, end) = (
        WallNs::from_timestamp(r.start),
        WallNs::from_timestamp(r.end),
    );
    let decl = declared
        .iter()
        .filter(|d| (d.namespace.as_deref(), d.workload.as_str()) == key)
        .filter(|d| d.t <= end && start - d.t <= super::rollout::ROLLOUT_SPLIT_NS)
        .max_by_key(|d| d.t);
    // Without the workload's own count, a scale-up (no pod deleted) asks for nothing known.
    let (desired, desired_source) = match decl.and_then(|d| d.replicas) {
        Some(n) => (n, "rollout_start"),
        None if r.pods.is_empty() => return None,
        None => (r.pods.len() as u64, "deleted_pods"),
    };
    // The step function, one step per instant.
    let mut series = vec![CapacityStep {
        time: r.start.min(events.first().map_or(r.start, |e| e.0)),
        ready: initial.0.max(0) as u64,
        serving: initial.1.max(0) as u64,
    }];
    let (mut ready, mut serving) = initial;
    for (at, dr, ds) in events {
        ready += dr;
        serving += ds;
        let step = CapacityStep {
            time: at,
            ready: ready.max(0) as u64,
            serving: serving.max(0) as u64,
        };
        match series.last_mut() {
            Some(last) if last.time == at => *last = step,
            _ => series.push(step),
        }
    }
    let last_t = series.last().map_or(r.end, |s| s.time).max(r.end);
    let low = |get: fn(&CapacityStep) -> u64| -> (u64, Timestamp, f64, f64) {
        let min = series.iter().map(get).min().unwrap_or(0);
        let at = series
            .iter()
            .find(|s| get(s) == min)
            .map_or(r.start, |s| s.time);
        let mut at_min = 0i64;
        let mut below = 0i64;
        for (i, s) in series.iter().enumerate() {
            let until = series.get(i + 1).map_or(last_t, |n| n.time);
            let span = WallNs::from_timestamp(until) - WallNs::from_timestamp(s.time);
            if get(s) == min {
                at_min += span;
            }
            if get(s) < desired {
                below += span;
            }
        }
        (min, at, ms(at_min), ms(below))
    };
    let (min_ready, min_ready_at, min_ready_ms, ready_below_ms) = low(|s| s.ready);
    let (min_serving, min_serving_at, min_serving_ms, serving_below_ms) = low(|s| s.serving);
    let max_unavailable = decl.and_then(|d| d.max_unavailable.clone());
    let max_surge = decl.and_then(|d| d.max_surge.clone());
    let reason = explain(
        desired,
        desired_source,
        (min_ready, min_ready_ms, ready_below_ms),
        (min_serving, min_serving_ms),
        max_unavailable.as_ref(),
    );
    Some(Capacity {
        service: r
            .pods
            .iter()
            .find_map(|p| p.service.clone())
            .or_else(|| r.startup.iter().find_map(|s| s.service.clone())),
        desired,
        desired_source: desired_source.to_owned(),
        max_unavailable,
        max_surge,
        min_ready,
        min_ready_at,
        min_ready_ms,
        ready_below_desired_ms: ready_below_ms,
        min_serving,
        min_serving_at,
        min_serving_ms,
        serving_below_desired_ms: serving_below_ms,
        series,
        reason,
    })
}

fn value_str(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// Which rule let the capacity drop, in one sentence.
fn explain(
    desired: u64,
    source: &str,
    (min_ready, min_ready_ms, ready_below_ms): (u64, f64, f64),
    (min_serving, min_serving_ms): (u64, f64),
    max_unavailable: Option<&serde_json::Value>,
) -> String {
    let asked = if source == "rollout_start" {
        format!("{desired} replicas asked for,")
    } else {
        format!("{desired} replicas (the pods the rollout replaced)")
    };
    if min_ready < desired {
        let rule = match max_unavailable {
            Some(v) if value_str(v) != "0" && value_str(v) != "0%" => format!(
                "maxUnavailable {} let the rollout take ready pods away before their replacements were ready",
                value_str(v)
            ),
            Some(_) => "with maxUnavailable 0 only a pod turning unready on its own (a readiness flap) or an eviction without a PodDisruptionBudget takes capacity away".to_owned(),
            None => "old pods' endpoints left before their replacements were ready: the strategy's maxUnavailable (default 25%) allows it".to_owned(),
        };
        return format!(
            "ready endpoints fell to {min_ready} of the {asked} for {min_ready_ms} ms ({ready_below_ms} ms below {desired} in all): {rule}"
        );
    }
    if min_serving < desired {
        return format!(
            "ready endpoints never fell below the {asked} but only {min_serving} of them listened for {min_serving_ms} ms: endpoints turned ready before their pods listened (see the new pods)"
        );
    }
    format!(
        "ready and listening endpoints never fell below the {}",
        asked.trim_end_matches(',')
    )
}

/// `kubectl patch` for a Deployment whose ready endpoints fell below its replicas: no pod taken
/// away before its replacement is ready (maxUnavailable 0), as many surged as went missing.
pub(crate) fn advise(rollouts: &[Rollout]) -> Vec<CapacityAdvice> {
    let mut out: Vec<CapacityAdvice> = Vec::new();
    for r in rollouts {
        let Some(c) = &r.capacity else { continue };
        if c.min_ready >= c.desired
            || out
                .iter()
                .any(|a| (a.namespace.as_ref(), &a.workload) == (r.namespace.as_ref(), &r.workload))
        {
            continue;
        }
        let surge = (c.desired - c.min_ready).max(1);
        let patch = r.workload.starts_with("deployment/").then(|| {
            let ns_flag = r.namespace.as_ref().map_or(String::new(), |ns| format!(" -n {ns}"));
            Patch {
                workload: r.namespace.as_ref().map_or_else(
                    || r.workload.clone(),
                    |ns| format!("{} -n {ns}", r.workload),
                ),
                command: format!(
                    "kubectl patch {}{ns_flag} --type=strategic -p '{{\"spec\":{{\"strategy\":{{\"type\":\"RollingUpdate\",\"rollingUpdate\":{{\"maxUnavailable\":0,\"maxSurge\":{surge}}}}}}}}}'",
                    r.workload
                ),
            }
        });
        out.push(CapacityAdvice {
            workload: r.workload.clone(),
            namespace: r.namespace.clone(),
            desired: c.desired,
            min_ready: c.min_ready,
            reason: format!(
                "{}; maxUnavailable 0 keeps every replica until its replacement is ready, maxSurge {surge} starts as many new pods as went missing",
                c.reason
            ),
            patch,
        });
    }
    out
}
