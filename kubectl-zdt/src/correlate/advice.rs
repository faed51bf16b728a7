//! The preStop delay and grace period that would have prevented the observed window errors.
//!
//! With a preStop of D the kubelet sends SIGTERM D later (KEP-3960's `sleep` action, or
//! `exec: sleep`), so every pod's listener closes D − (preStop it already had) later and its gap
//! shrinks by as much; and since the hook cannot start before the deletion, a D above the
//! propagation delay makes the gap ≤ 0 whatever the application does on SIGTERM. D is therefore
//! the larger of the p99 propagation delay over every rollout given and the largest gap any pod
//! actually needed closed, plus a stated margin, rounded up to whole seconds (the unit of
//! `preStop.sleep.seconds`). terminationGracePeriodSeconds counts from the deletion and includes
//! the preStop, so it must cover D plus the drain observed between SIGTERM and exit.

use super::{
    model::{Advice, ErrorCounts, Patch, Verdict},
    time::ms,
};
use crate::{kube_version::PreStopAction, observation::PodRef};

const NS_PER_S: i64 = 1_000_000_000;
/// Kubernetes' default terminationGracePeriodSeconds, assumed when the pods did not say theirs.
const DEFAULT_GRACE_S: u64 = 30;
/// A preStop need above an hour is no propagation delay but broken data: no advice.
const MAX_NEED_NS: i64 = 3_600 * NS_PER_S;

/// Whole seconds, rounded up; negative is 0.
fn ceil_seconds(ns: i128) -> i128 {
    let s = i128::from(NS_PER_S);
    (ns.max(0) + s - 1) / s
}

/// Seconds as the API's int64 fields take them, `None` when too large.
fn api_seconds(s: i128) -> Option<u64> {
    i64::try_from(s).ok().and_then(|s| u64::try_from(s).ok())
}

/// Nearest-rank percentile of sorted samples (for fewer than 100 samples, p99 is the largest).
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// One terminated pod as the advice sees it: the figures it is sized from and the workload it
/// patches. `kubectl zdt recommend` groups these by workload and advises each group apart.
#[derive(Clone, Debug, PartialEq)]
pub struct PodEvidence {
    /// `namespace/name`, when any observation named it.
    pub pod: Option<PodRef>,
    pub namespace: Option<String>,
    /// `deployment/web`, `pod/web-0`, or `unknown` (as [`super::Rollout::workload`]).
    pub workload: String,
    /// Index of the pod's rollout in [`super::Report::rollouts`].
    pub rollout: usize,
    /// The container serving the Service's port, when the API watch said it.
    pub container: Option<String>,
    /// terminationGracePeriodSeconds the pod was deleted with.
    pub grace_period_s: Option<u64>,
    /// Upper edge of the propagation delay (value + uncertainty), ns.
    pub propagation_ns: Option<i64>,
    /// preStop length this pod needed for gap + uncertainty ≤ 0, ns.
    pub needed_ns: Option<i64>,
    /// SIGTERM → exit, ns (only from the node agent's exit, precise enough to size a drain).
    pub drain_ns: Option<i64>,
    /// preStop exec → SIGTERM: the preStop the pod actually ran with, ns.
    pub prestop_ran_ns: Option<i64>,
    /// The pod's SIGTERM was observed (with no preStop mark: it ran without a preStop).
    pub sigterm_seen: bool,
    pub errors: ErrorCounts,
    pub verdict: Verdict,
}

/// The preStop and grace period for `pods` (any subset of one report's pods), or why there is
/// none.
pub fn advise(
    pods: &[&PodEvidence],
    margin_ns: i64,
    prestop: PreStopAction,
) -> Result<Advice, String> {
    let mut props: Vec<i64> = pods.iter().filter_map(|p| p.propagation_ns).collect();
    props.sort_unstable();
    let Some(p99) = percentile(&props, 99.0) else {
        return Err(
            "no pod has both a deletion and a dataplane removal, so the propagation delay (and the preStop it calls for) \
             is unknown; run the node agents and the API watch during a rollout"
                .to_owned(),
        );
    };
    let needed = pods.iter().filter_map(|p| p.needed_ns).max();
    let base = p99.max(needed.unwrap_or(0)).max(0);
    if base > MAX_NEED_NS {
        return Err(format!(
            "the delays in the input call for a preStop of {} ms (p99 propagation {} ms, largest preStop needed {} ms), \
             over an hour: no rollout waits that long for kube-proxy; check the input's times and uncertainty_ns",
            ms(base),
            ms(p99),
            needed.map_or(0.0, ms),
        ));
    }
    let drain = pods.iter().filter_map(|p| p.drain_ns).max();
    let current_grace = pods.iter().filter_map(|p| p.grace_period_s).max();
    // In i128 nothing below can overflow; what does not fit the API's int64 is refused.
    let margin = i128::from(margin_ns.max(0));
    let prestop_s = ceil_seconds(i128::from(base) + margin);
    let prestop_ns = prestop_s * i128::from(NS_PER_S);
    let (grace_s, grace_why) = match (drain, current_grace) {
        (Some(d), _) => (
            ceil_seconds(prestop_ns + i128::from(d.max(0)) + margin),
            format!(
                "preStop + the slowest observed drain (SIGTERM → exit) {} ms + margin",
                ms(d)
            ),
        ),
        (None, Some(g)) => (
            prestop_s + i128::from(g),
            format!("preStop + the {g} s the pods had for draining so far (drain not observed)"),
        ),
        (None, None) => (
            prestop_s + i128::from(DEFAULT_GRACE_S),
            format!(
                "preStop + the default {DEFAULT_GRACE_S} s (neither drain nor the pods' grace period observed)"
            ),
        ),
    };
    // A shorter grace period than the pods have can kill a drain the data did not show.
    let (grace_s, grace_why) = match current_grace {
        Some(g) if i128::from(g) > grace_s => (
            i128::from(g),
            format!(
                "the {g} s the pods already have, kept: {grace_why} would be {grace_s}, and a shorter grace period can cut a drain short"
            ),
        ),
        _ => (grace_s, grace_why),
    };
    let (Some(prestop_s), Some(grace_s)) = (api_seconds(prestop_s), api_seconds(grace_s)) else {
        return Err(format!(
            "the delays in the input (p99 propagation {} ms, largest preStop needed {} ms, margin {} ms, grace period {} s) \
             add up to more than Kubernetes accepts (2^63 − 1 s): check the input's uncertainty_ns and grace_period_s",
            ms(p99),
            needed.map_or(0.0, ms),
            ms(margin_ns),
            current_grace.unwrap_or(0),
        ));
    };
    let needed_part = needed.map_or(String::new(), |n| {
        format!(
            ", largest preStop needed {} ms (a pod's gap + its uncertainty + the preStop it ran)",
            ms(n)
        )
    });
    let mut reason = format!(
        "preStop {prestop_s} s = max(p99 propagation {} ms over {} pod{}{needed_part}) + margin {} ms, rounded up to whole seconds; \
         terminationGracePeriodSeconds {grace_s} = {grace_why}",
        ms(p99),
        props.len(),
        if props.len() == 1 { "" } else { "s" },
        ms(margin_ns),
    );
    if let Some(caveat) = prestop.caveat() {
        reason.push_str("; ");
        reason.push_str(caveat);
    }
    Ok(Advice {
        prestop_seconds: prestop_s,
        termination_grace_period_seconds: grace_s,
        margin_ms: ms(margin_ns),
        p99_propagation_ms: ms(p99),
        propagation_samples: props.len(),
        largest_needed_ms: needed.map(ms),
        drain_ms: drain.map(ms),
        reason,
        prestop_action: prestop,
        patches: patches(pods, prestop.handler(prestop_s), grace_s),
    })
}

/// One `kubectl patch` per workload controller seen. With the container's name a strategic
/// merge patch touches only that container's preStop; without it a JSON patch sets the first
/// container's `lifecycle` (replacing any postStart it had, which the note says).
fn patches(pods: &[&PodEvidence], prestop: serde_json::Value, grace_s: u64) -> Vec<Patch> {
    let mut seen: Vec<(Option<&str>, &str, Option<&str>)> = pods
        .iter()
        .filter(|p| {
            p.workload.starts_with("deployment/")
                || p.workload.starts_with("statefulset/")
                || p.workload.starts_with("daemonset/")
        })
        .map(|p| {
            (
                p.namespace.as_deref(),
                p.workload.as_str(),
                p.container.as_deref(),
            )
        })
        .collect();
    seen.sort();
    seen.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    seen.into_iter()
        .map(|(ns, workload, container)| {
            let ns_flag = ns.map_or(String::new(), |ns| format!(" -n {ns}"));
            let command = match container {
                Some(c) => format!(
                    "kubectl patch {workload}{ns_flag} --type=strategic -p \
                     '{{\"spec\":{{\"template\":{{\"spec\":{{\"terminationGracePeriodSeconds\":{grace_s},\"containers\":[{{\"name\":\"{c}\",\"lifecycle\":{{\"preStop\":{prestop}}}}}]}}}}}}}}'"
                ),
                None => format!(
                    "kubectl patch {workload}{ns_flag} --type=json -p \
                     '[{{\"op\":\"add\",\"path\":\"/spec/template/spec/terminationGracePeriodSeconds\",\"value\":{grace_s}}},\
                     {{\"op\":\"add\",\"path\":\"/spec/template/spec/containers/0/lifecycle\",\"value\":{{\"preStop\":{prestop}}}}}]'  \
                     # container name not observed: sets the first container's lifecycle"
                ),
            };
            Patch {
                workload: ns.map_or_else(|| workload.to_owned(), |ns| format!("{workload} -n {ns}")),
                command,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_of_a_hundred_samples_is_the_ninety_ninth() {
        let s: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&s, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 99.0), None);
    }

    #[test]
    fn whole_seconds_round_up() {
        assert_eq!(ceil_seconds(1_030_000_000 + 500_000_000), 2);
        assert_eq!(ceil_seconds(2_000_000_000), 2);
        assert_eq!(ceil_seconds(-5), 0);
    }
}
