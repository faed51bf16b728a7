//! The pure core of `kubectl zdt recommend`: observations of any number of rollouts (from any
//! number of nodes) in, per workload the propagation-delay distribution, the advised preStop and
//! terminationGracePeriodSeconds, and a verdict on the current settings out.
//!
//! Nothing is re-derived here: the correlation engine gives each pod's propagation delay (upper
//! edge), the preStop its gap needed and its drain ([`correlate::PodEvidence`]), and the
//! engine's own advice rule ([`correlate::advise`]) sizes each workload from its pods alone.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::settings::Settings;
use crate::{
    correlate::{self, ErrorCounts, PodEvidence, percentile, time::ms},
    kube_version::PreStopAction,
    observation::Observation,
};

pub const API_VERSION: &str = "zdt.dev/v1";
pub const KIND: &str = "Recommendations";

const NS_PER_S: i64 = 1_000_000_000;

/// Tunables, each stated in the output.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Added to the need before rounding up to whole seconds (as `analyze --margin-ms`).
    pub margin_ms: u64,
    /// Fewer pods with a measured propagation delay than this: no advice is trusted.
    pub min_samples: usize,
    /// A current preStop longer than the advised one by at least this is wasteful.
    pub waste_threshold_ms: u64,
    /// How a new preStop is written (what the cluster's version accepts).
    pub prestop: PreStopAction,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            margin_ms: 500,
            min_samples: 5,
            waste_threshold_ms: 2_000,
            prestop: PreStopAction::default(),
        }
    }
}

/// `namespace` + `kind/name`, as the engine names a pod's workload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey {
    pub namespace: Option<String>,
    pub workload: String,
}

impl WorkloadKey {
    /// `deployment/web -n shop`.
    pub fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} -n {ns}", self.workload),
            None => self.workload.clone(),
        }
    }

    /// A Deployment, StatefulSet or DaemonSet (the kinds a patch can fix).
    pub fn is_controller(&self) -> bool {
        ["deployment/", "statefulset/", "daemonset/"]
            .iter()
            .any(|k| self.workload.starts_with(k))
    }
}

/// One workload's pods over every rollout in the input.
#[derive(Clone, Debug)]
pub struct WorkloadEvidence {
    pub key: WorkloadKey,
    pub rollouts: usize,
    pub pods: Vec<PodEvidence>,
    /// The readiness probe its new pods needed (they were routed to before they listened).
    pub readiness: Option<correlate::ReadinessAdvice>,
    /// The rollout strategy it needed (its ready endpoints fell below its replicas).
    pub capacity: Option<correlate::CapacityAdvice>,
}

impl WorkloadEvidence {
    /// The serving container the observations named (the API watch's `container`).
    pub fn container(&self) -> Option<&str> {
        self.pods.iter().find_map(|p| p.container.as_deref())
    }
}

/// What `gather` correlates with: the margin asked, the rest as default.
pub fn gather_options(margin_ms: u64) -> correlate::Options {
    correlate::Options {
        margin_ms,
        ..correlate::Options::default()
    }
}

/// Correlates `obs` and groups the terminated pods by workload.
pub fn gather(obs: &[Observation], margin_ms: u64) -> Vec<WorkloadEvidence> {
    let (report, evidence) = correlate::correlate_with_evidence(obs, &gather_options(margin_ms));
    gather_from(report, evidence)
}

/// The terminated pods of a correlated stream ([`correlate::correlate_with_evidence`]) by
/// workload.
pub fn gather_from(report: correlate::Report, evidence: Vec<PodEvidence>) -> Vec<WorkloadEvidence> {
    let mut groups: BTreeMap<WorkloadKey, (BTreeSet<usize>, Vec<PodEvidence>)> = BTreeMap::new();
    for e in evidence {
        let key = WorkloadKey {
            namespace: e.namespace.clone(),
            workload: e.workload.clone(),
        };
        let g = groups.entry(key).or_default();
        g.0.insert(e.rollout);
        g.1.push(e);
    }
    let key = |namespace: &Option<String>, workload: &str| WorkloadKey {
        namespace: namespace.clone(),
        workload: workload.to_owned(),
    };
    let mut readiness: BTreeMap<WorkloadKey, correlate::ReadinessAdvice> = report
        .readiness_advice
        .into_iter()
        .map(|a| (key(&a.namespace, &a.workload), a))
        .collect();
    let mut capacity: BTreeMap<WorkloadKey, correlate::CapacityAdvice> = report
        .capacity_advice
        .into_iter()
        .map(|a| (key(&a.namespace, &a.workload), a))
        .collect();
    // A workload whose only trouble was its new pods' start has no terminated pod.
    for key in readiness.keys() {
        groups.entry(key.clone()).or_default();
    }
    groups
        .into_iter()
        .map(|(key, (rollouts, pods))| WorkloadEvidence {
            readiness: readiness.remove(&key),
            capacity: capacity.remove(&key),
            key,
            rollouts: rollouts.len(),
            pods,
        })
        .collect()
}

/// Nearest-rank percentiles of the pods' propagation delays (upper edges: value + clock and
/// sampling uncertainty), in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Distribution {
    pub samples: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
}

impl Distribution {
    fn of(mut samples: Vec<i64>) -> Self {
        samples.sort_unstable();
        let p = |q: f64| percentile(&samples, q).map(ms);
        Self {
            samples: samples.len(),
            p50_ms: p(50.0),
            p90_ms: p(90.0),
            p99_ms: p(99.0),
            max_ms: samples.last().copied().map(ms),
        }
    }
}

/// What the settings should be.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Advised {
    pub prestop_seconds: u64,
    pub termination_grace_period_seconds: u64,
    pub margin_ms: f64,
    /// How both numbers were obtained (the engine's sentence).
    pub reason: String,
}

/// What `recommend` says of a workload's current preStop (the per-pod race verdict is
/// `correlate::Verdict`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PreStopVerdict {
    /// The current preStop is shorter than what the slowest pods needed (errors happened or
    /// would have), or the grace period ends before preStop + drain.
    Unsafe,
    /// The current preStop exceeds the advised one by at least the waste threshold.
    Wasteful,
    Ok,
    /// Fewer samples than `min_samples`: trace more rollouts first.
    TooFewSamples,
    /// The preStop length cannot be read (httpGet, a command) nor was it observed.
    CurrentUnknown,
    /// No pod with both a deletion and a dataplane removal.
    NoData,
}

impl PreStopVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            PreStopVerdict::Unsafe => "unsafe",
            PreStopVerdict::Wasteful => "wasteful",
            PreStopVerdict::Ok => "ok",
            PreStopVerdict::TooFewSamples => "too few samples",
            PreStopVerdict::CurrentUnknown => "current unknown",
            PreStopVerdict::NoData => "no data",
        }
    }
}

/// One workload's recommendation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recommendation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub workload: String,
    pub rollouts: usize,
    pub pods: usize,
    pub propagation: Distribution,
    /// The largest preStop any pod's observed gap called for (gap + uncertainty + the preStop
    /// it ran with).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub largest_needed_ms: Option<f64>,
    /// The slowest observed SIGTERM → exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_ms: Option<f64>,
    /// Errors of the workload's pods, by cause, over every rollout.
    pub errors: ErrorCounts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<Settings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advised: Option<Advised>,
    pub verdict: PreStopVerdict,
    pub reason: String,
    /// For a wasteful preStop: pod-seconds each rollout spends in preStop beyond the advice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wasted_seconds_per_rollout: Option<f64>,
    /// The readiness probe its new pods needed: they were routed to before they listened, or
    /// refused after turning ready (docs/report-schema.md, ReadinessAdvice). No preStop cures
    /// that.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<correlate::ReadinessAdvice>,
    /// The rolling-update strategy that keeps its capacity: its ready endpoints fell below its
    /// replicas during a rollout (docs/report-schema.md, CapacityAdvice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_strategy: Option<correlate::CapacityAdvice>,
}

impl Recommendation {
    pub fn key(&self) -> WorkloadKey {
        WorkloadKey {
            namespace: self.namespace.clone(),
            workload: self.workload.clone(),
        }
    }
}

/// The whole answer (`-o json`).
#[derive(Clone, Debug, Serialize)]
pub struct Recommendations {
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub kind: &'static str,
    pub margin_ms: u64,
    pub min_samples: usize,
    pub waste_threshold_ms: u64,
    /// The form of the patches' preStop: `sleep`, or `exec_sleep` for servers before 1.30.
    pub prestop_action: PreStopAction,
    pub workloads: Vec<Recommendation>,
    pub warnings: Vec<String>,
}

fn secs(ns: i64) -> String {
    let s = ns as f64 / 1e9;
    if s >= 10.0 || (s - s.round()).abs() < 1e-9 {
        format!("{s:.0} s")
    } else {
        format!("{} ms", ms(ns))
    }
}

/// The current preStop in nanoseconds: from the spec, else (a hook the spec cannot time) the
/// longest one the pods were seen to run.
fn current_prestop_ns(settings: &Settings, pods: &[PodEvidence]) -> Option<(i64, bool)> {
    settings
        .prestop
        .duration_ns()
        .map(|d| (d, false))
        .or_else(|| {
            pods.iter()
                .filter_map(|p| p.prestop_ran_ns)
                .max()
                .map(|d| (d, true))
        })
}

/// The recommendation for one workload given its current settings (`None`: not known).
pub fn advise_workload(
    w: &WorkloadEvidence,
    current: Option<&Settings>,
    options: &Options,
) -> Recommendation {
    let props: Vec<i64> = w.pods.iter().filter_map(|p| p.propagation_ns).collect();
    let needed = w.pods.iter().filter_map(|p| p.needed_ns).max();
    let drain = w.pods.iter().filter_map(|p| p.drain_ns).max();
    let mut errors = ErrorCounts::default();
    for p in &w.pods {
        errors.merge(&p.errors);
    }
    let distribution = Distribution::of(props.clone());
    let mut r = Recommendation {
        namespace: w.key.namespace.clone(),
        workload: w.key.workload.clone(),
        rollouts: w.rollouts,
        pods: w.pods.len(),
        propagation: distribution,
        largest_needed_ms: needed.map(ms),
        drain_ms: drain.map(ms),
        errors,
        current: current.cloned(),
        advised: None,
        verdict: PreStopVerdict::NoData,
        reason: String::new(),
        wasted_seconds_per_rollout: None,
        readiness_probe: w.readiness.clone(),
        rollout_strategy: w.capacity.clone(),
    };
    let margin_ns = correlate::Options {
        margin_ms: options.margin_ms,
        ..correlate::Options::default()
    }
    .margin_ns();
    if w.pods.is_empty() {
        r.reason = format!(
            "no terminated pod of it in the observations: trace a rollout with `kubectl zdt trace {} --restart`",
            w.key.display()
        );
        return r;
    }
    let refs: Vec<&PodEvidence> = w.pods.iter().collect();
    let advice = match correlate::advise(&refs, margin_ns, options.prestop) {
        Ok(a) => a,
        Err(why) => {
            r.reason = why;
            return r;
        }
    };
    let mut advised = Advised {
        prestop_seconds: advice.prestop_seconds,
        termination_grace_period_seconds: advice.termination_grace_period_seconds,
        margin_ms: advice.margin_ms,
        reason: advice.reason.clone(),
    };
    // The grace period only bounds the wait: keeping a longer one costs nothing, shortening it
    // can kill a drain the recorded rollouts did not show.
    if let Some(g) = current.and_then(|s| s.termination_grace_period_seconds)
        && g > advised.termination_grace_period_seconds
    {
        advised.reason.push_str(&format!(
            "; terminationGracePeriodSeconds kept at the workload's current {g} s rather than lowered to {}: a shorter grace period can cut a drain short",
            advised.termination_grace_period_seconds
        ));
        advised.termination_grace_period_seconds = g;
    }
    r.advised = Some(advised);
    // What the engine sized the preStop from, before margin and rounding.
    let mut sorted = props;
    sorted.sort_unstable();
    let need_ns = percentile(&sorted, 99.0)
        .unwrap_or(0)
        .max(needed.unwrap_or(0))
        .max(0);
    let advised_ns = i64::try_from(advice.prestop_seconds)
        .unwrap_or(i64::MAX)
        .saturating_mul(NS_PER_S);
    let window_errors = r.errors.unsafe_window + r.errors.after_netns_gone;
    let samples = sorted.len();
    let trace_hint = format!(
        "trace a rollout with `kubectl zdt trace {} --restart`",
        w.key.display()
    );

    let current_ns = current.and_then(|s| current_prestop_ns(s, &w.pods));
    let mut unsafe_why = Vec::new();
    if let Some((c, observed)) = current_ns
        && c < need_ns
    {
        let how = if observed { " (observed)" } else { "" };
        unsafe_why.push(if window_errors > 0 {
            format!(
                "preStop {}{how} is shorter than the {} the slowest pods needed: {window_errors} connections failed in the unsafe window over {} rollout{}",
                secs(c),
                secs(need_ns),
                w.rollouts,
                if w.rollouts == 1 { "" } else { "s" }
            )
        } else {
            format!(
                "preStop {}{how} is shorter than the {} the slowest pods needed: connections would fail whenever a client dials the pod in that window",
                secs(c),
                secs(need_ns)
            )
        });
    }
    if let (Some((c, _)), Some(g), Some(d)) = (
        current_ns,
        current.and_then(|s| s.termination_grace_period_seconds),
        drain,
    ) && i128::from(g) * i128::from(NS_PER_S) < i128::from(c) + i128::from(d)
    {
        unsafe_why.push(format!(
            "terminationGracePeriodSeconds {g} is shorter than preStop {} + the observed drain {}: the kubelet kills the app before it has drained",
            secs(c),
            secs(d)
        ));
    }

    let (verdict, reason) = if !unsafe_why.is_empty()
        && (samples >= options.min_samples || window_errors > 0)
    {
        (PreStopVerdict::Unsafe, unsafe_why.join("; "))
    } else if samples < options.min_samples {
        let so_far = if unsafe_why.is_empty() {
            String::new()
        } else {
            format!(" (so far: {})", unsafe_why.join("; "))
        };
        (
            PreStopVerdict::TooFewSamples,
            format!(
                "too few samples (n={samples} < {}): {trace_hint}{so_far}",
                options.min_samples
            ),
        )
    } else if let Some((c, observed)) = current_ns {
        let waste = c - advised_ns;
        let threshold = i64::try_from(options.waste_threshold_ms)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000);
        if waste >= threshold {
            let per_rollout = waste as f64 / 1e9 * w.pods.len() as f64 / w.rollouts.max(1) as f64;
            r.wasted_seconds_per_rollout = Some((per_rollout * 1e3).round() / 1e3);
            let sts = if w.key.workload.starts_with("statefulset/") {
                " (a StatefulSet's rolling update waits for each pod: every rollout takes that much longer)"
            } else {
                ""
            };
            (
                PreStopVerdict::Wasteful,
                format!(
                    "preStop {}{} is {} longer than the advised {} s: each pod terminates that much later than needed, {per_rollout:.1} pod-seconds per rollout{sts}",
                    secs(c),
                    if observed { " (observed)" } else { "" },
                    secs(waste),
                    advice.prestop_seconds
                ),
            )
        } else {
            (
                PreStopVerdict::Ok,
                format!(
                    "preStop {} covers the {} the slowest pods needed",
                    secs(c),
                    secs(need_ns)
                ),
            )
        }
    } else {
        let hook = match current.map(|s| &s.prestop) {
            None => "the workload's settings could not be read".to_owned(),
            Some(super::settings::PreStop::Unknown) => {
                "no node agent saw the pods' preStop or SIGTERM, so the preStop they ran is unknown"
                    .to_owned()
            }
            Some(p) => format!(
                "its preStop ({}) lasts as long as the application makes it",
                p.describe()
            ),
        };
        (
            PreStopVerdict::CurrentUnknown,
            format!(
                "{hook}: make sure it lasts at least {} s (needed: {})",
                advice.prestop_seconds,
                secs(need_ns)
            ),
        )
    };
    r.verdict = verdict;
    r.reason = reason;
    r
}

/// Every workload's recommendation: `settings` holds the current settings of those whose
/// settings are known.
pub fn recommend(
    workloads: &[WorkloadEvidence],
    settings: &BTreeMap<WorkloadKey, Settings>,
    options: &Options,
) -> Vec<Recommendation> {
    workloads
        .iter()
        .map(|w| advise_workload(w, settings.get(&w.key), options))
        .collect()
}

/// Offline current settings (`--from-file`): what the pods were seen to run with.
pub fn observed_settings(w: &WorkloadEvidence) -> super::settings::Settings {
    let prestop = w.pods.iter().filter_map(|p| p.prestop_ran_ns).max();
    super::settings::observed(
        w.container().map(str::to_owned),
        prestop,
        w.pods.iter().any(|p| p.sigterm_seen),
        w.pods.iter().filter_map(|p| p.grace_period_s).max(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        correlate::Verdict as PodVerdict,
        recommend::settings::{PreStop, SettingsSource},
    };

    const MS: i64 = 1_000_000;

    fn pod(i: usize, propagation_ms: i64, rollout: usize) -> PodEvidence {
        PodEvidence {
            pod: Some(format!("shop/web-5d8f7c9b6d-p{i:04}").into()),
            namespace: Some("shop".into()),
            workload: "deployment/web".into(),
            rollout,
            container: Some("web".into()),
            grace_period_s: Some(30),
            propagation_ns: Some(propagation_ms * MS),
            needed_ns: Some((propagation_ms - 10) * MS),
            drain_ns: Some(50 * MS),
            prestop_ran_ns: None,
            sigterm_seen: true,
            errors: ErrorCounts::default(),
            verdict: PodVerdict::Unsafe,
        }
    }

    /// `n` pods over `rollouts` rollouts, propagation 400, 500, … ms.
    fn web(n: usize, rollouts: usize) -> WorkloadEvidence {
        WorkloadEvidence {
            key: WorkloadKey {
                namespace: Some("shop".into()),
                workload: "deployment/web".into(),
            },
            rollouts,
            pods: (0..n)
                .map(|i| pod(i, 400 + 100 * i as i64, i % rollouts))
                .collect(),
            readiness: None,
            capacity: None,
        }
    }

    fn api(prestop: PreStop, grace: u64) -> Settings {
        Settings {
            source: SettingsSource::Api,
            container: Some("web".into()),
            prestop,
            termination_grace_period_seconds: Some(grace),
        }
    }

    #[test]
    fn the_distribution_is_nearest_rank_over_every_pod() {
        let d = Distribution::of((1..=100).rev().map(|i| i * MS).collect());
        assert_eq!(
            (d.samples, d.p50_ms, d.p90_ms, d.p99_ms, d.max_ms),
            (100, Some(50.0), Some(90.0), Some(99.0), Some(100.0))
        );
        assert_eq!(Distribution::of(Vec::new()).p99_ms, None);
    }

    #[test]
    fn no_prestop_against_a_900_ms_propagation_is_unsafe_and_the_advice_covers_it() {
        // Six pods, 400…900 ms: p99 = max = 900 ms, + 500 ms margin → 2 s.
        let r = advise_workload(
            &web(6, 3),
            Some(&api(PreStop::None, 30)),
            &Options::default(),
        );
        assert_eq!(r.verdict, PreStopVerdict::Unsafe, "{}", r.reason);
        assert!(
            r.reason.contains("preStop 0 s is shorter than the 900 ms"),
            "{}",
            r.reason
        );
        assert!(r.reason.contains("would fail"), "{}", r.reason);
        let a = r.advised.unwrap();
        // 2 s + the 50 ms drain + margin would be 3 s: the 30 s the pods had are kept.
        assert_eq!(
            (a.prestop_seconds, a.termination_grace_period_seconds),
            (2, 30)
        );
        assert!(
            a.reason.contains("the 30 s the pods already have, kept"),
            "{}",
            a.reason
        );
        assert_eq!(r.propagation.max_ms, Some(900.0));
        assert_eq!((r.rollouts, r.pods), (3, 6));
    }

    #[test]
    fn the_workloads_current_grace_period_is_never_lowered() {
        // The pods' deletions did not say their grace period; the API says 45 s.
        let mut w = web(6, 3);
        for p in &mut w.pods {
            p.grace_period_s = None;
        }
        let r = advise_workload(
            &w,
            Some(&api(PreStop::SleepAction { seconds: 30 }, 45)),
            &Options::default(),
        );
        let a = r.advised.unwrap();
        assert_eq!(
            (a.prestop_seconds, a.termination_grace_period_seconds),
            (2, 45)
        );
        assert!(
            a.reason
                .contains("kept at the workload's current 45 s rather than lowered to 3"),
            "{}",
            a.reason
        );
    }

    #[test]
    fn errors_in_the_window_say_how_many_failed() {
        let mut w = web(6, 3);
        w.pods[2].errors.unsafe_window = 12;
        w.pods[4].errors.after_netns_gone = 1;
        let r = advise_workload(&w, Some(&api(PreStop::None, 30)), &Options::default());
        assert_eq!(r.verdict, PreStopVerdict::Unsafe);
        assert!(
            r.reason
                .contains("13 connections failed in the unsafe window over 3 rollouts"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn too_few_samples_say_so_and_how_to_get_more() {
        let r = advise_workload(
            &web(3, 1),
            Some(&api(PreStop::None, 30)),
            &Options::default(),
        );
        assert_eq!(r.verdict, PreStopVerdict::TooFewSamples);
        assert!(r.reason.starts_with("too few samples (n=3 < 5): trace a rollout with `kubectl zdt trace deployment/web -n shop --restart`"), "{}", r.reason);
        // What is known so far is still said.
        assert!(
            r.reason.contains("so far: preStop 0 s is shorter"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn few_samples_with_failed_connections_are_unsafe_anyway() {
        let mut w = web(2, 1);
        w.pods[0].errors.unsafe_window = 3;
        let r = advise_workload(&w, Some(&api(PreStop::None, 30)), &Options::default());
        assert_eq!(r.verdict, PreStopVerdict::Unsafe, "{}", r.reason);
    }

    #[test]
    fn a_prestop_far_above_the_need_is_wasteful_and_says_how_much() {
        let r = advise_workload(
            &web(6, 3),
            Some(&api(PreStop::SleepAction { seconds: 30 }, 60)),
            &Options::default(),
        );
        assert_eq!(r.verdict, PreStopVerdict::Wasteful, "{}", r.reason);
        // 30 s − 2 s advised = 28 s per pod, 2 pods per rollout.
        assert_eq!(r.wasted_seconds_per_rollout, Some(56.0));
        assert!(
            r.reason.contains("28 s longer than the advised 2 s"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn a_prestop_that_covers_the_need_without_waste_is_ok() {
        for seconds in [1, 2, 3] {
            let r = advise_workload(
                &web(6, 3),
                Some(&api(PreStop::SleepAction { seconds }, 30)),
                &Options::default(),
            );
            assert_eq!(r.verdict, PreStopVerdict::Ok, "{seconds} s: {}", r.reason);
        }
    }

    #[test]
    fn a_grace_period_shorter_than_prestop_plus_drain_is_unsafe() {
        let mut w = web(6, 3);
        for p in &mut w.pods {
            p.drain_ns = Some(3_000 * MS);
            p.grace_period_s = Some(4);
        }
        let r = advise_workload(
            &w,
            Some(&api(PreStop::SleepAction { seconds: 2 }, 4)),
            &Options::default(),
        );
        assert_eq!(r.verdict, PreStopVerdict::Unsafe, "{}", r.reason);
        assert!(r.reason.contains("terminationGracePeriodSeconds 4 is shorter than preStop 2 s + the observed drain 3 s"), "{}", r.reason);
        assert_eq!(r.advised.unwrap().termination_grace_period_seconds, 6);
    }

    #[test]
    fn an_untimed_hook_is_judged_by_what_it_was_seen_to_last_or_not_at_all() {
        let hook = api(
            PreStop::Untimed {
                hook: "httpGet :8080/drain".into(),
            },
            30,
        );
        let r = advise_workload(&web(6, 3), Some(&hook), &Options::default());
        assert_eq!(r.verdict, PreStopVerdict::CurrentUnknown, "{}", r.reason);
        assert!(
            r.reason.contains("httpGet :8080/drain") && r.reason.contains("at least 2 s"),
            "{}",
            r.reason
        );
        let mut w = web(6, 3);
        w.pods[0].prestop_ran_ns = Some(1_500 * MS);
        let r = advise_workload(&w, Some(&hook), &Options::default());
        assert_eq!(r.verdict, PreStopVerdict::Ok, "{}", r.reason);
    }

    #[test]
    fn a_workload_without_a_measured_propagation_gets_no_advice() {
        let mut w = web(3, 1);
        for p in &mut w.pods {
            p.propagation_ns = None;
            p.needed_ns = None;
        }
        let r = advise_workload(&w, None, &Options::default());
        assert_eq!(r.verdict, PreStopVerdict::NoData);
        assert!(r.advised.is_none());
    }
}
