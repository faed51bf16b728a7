//! kube-proxy's own view of how long it takes to program a change, side by side with the
//! agents' stamps of the same rollout: `cargo xtask e2e --kube-proxy-metrics URL` (and
//! `cargo xtask bench --kubeconfig F`) reads kube-proxy's
//! `kubeproxy_network_programming_duration_seconds` histogram before and after the fast-exit
//! sample's traced rollout, and prints what each reports.
//!
//! What kube-proxy measures (pkg/proxy/iptables/proxier.go, pkg/proxy/endpoints.go and the
//! EndpointSlice controller's trigger-time tracker, v1.28): after each successful sync, one
//! sample per EndpointSlice change that carried the `endpoints.kubernetes.io/last-change-trigger-time`
//! annotation, = now − that time. The controller sets the annotation to the earliest pod Ready
//! condition transition that changed since its last sync — a `lastTransitionTime`, whole
//! seconds — and leaves it off when no pod's readiness changed: a deleted pod's endpoint turning
//! terminating, and its removal when the pod object goes, carry none. The buckets are 0.25 s,
//! 0.5 s, then whole seconds. The agents stamp every node's removal of every endpoint (the
//! kernel's table change) against the API's endpoint change, to the microsecond.

use std::process::Command;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::cmd;

const METRIC: &str = "kubeproxy_network_programming_duration_seconds";

/// One scrape of the histogram: cumulative bucket counts by upper bound, sum and count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// The samples added between `self` (earlier) and `later`, per bucket (not cumulative).
    pub fn added_since(&self, later: &Histogram) -> Histogram {
        let mut below = 0u64;
        let buckets = later
            .buckets
            .iter()
            .map(|&(le, n)| {
                let before = self
                    .buckets
                    .iter()
                    .find(|(l, _)| *l == le)
                    .map_or(0, |b| b.1);
                let cumulative = n.saturating_sub(before);
                let in_bucket = cumulative.saturating_sub(below);
                below = cumulative;
                (le, in_bucket)
            })
            .collect();
        Histogram {
            buckets,
            sum: later.sum - self.sum,
            count: later.count.saturating_sub(self.count),
        }
    }
}

/// Parses the Prometheus text exposition for the histogram (unlabelled, as kube-proxy has it).
pub fn parse(text: &str) -> anyhow::Result<Histogram> {
    let mut h = Histogram::default();
    let mut seen = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some(rest) = name.strip_prefix(METRIC) else {
            continue;
        };
        let number = || {
            value
                .parse::<f64>()
                .with_context(|| format!("{METRIC}: not a number in {line:?}"))
        };
        if let Some(le) = rest
            .strip_prefix("_bucket{le=\"")
            .and_then(|r| r.strip_suffix("\"}"))
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()
                    .with_context(|| format!("{METRIC}: bucket bound in {line:?}"))?
            };
            h.buckets.push((le, number()? as u64));
            seen = true;
        } else if rest == "_sum" {
            h.sum = number()?;
        } else if rest == "_count" {
            h.count = number()? as u64;
        }
    }
    if !seen {
        bail!("no {METRIC} in kube-proxy's metrics: is it kube-proxy's metrics address?");
    }
    Ok(h)
}

/// Reads kube-proxy's metrics at `url` (its `--metrics-bind-address`, 127.0.0.1:10249 by
/// default: run this on the node).
pub fn scrape(url: &str) -> anyhow::Result<Histogram> {
    let out = cmd::output(Command::new("curl").args(["-sf", "--max-time", "5", url]))
        .with_context(|| format!("failed to read kube-proxy's metrics at {url} (curl)"))?;
    parse(&out).with_context(|| format!("kube-proxy's metrics at {url}"))
}

fn time(v: &Value) -> Option<jiff::Timestamp> {
    v["time"].as_str()?.parse().ok()
}

fn ms(from: jiff::Timestamp, to: jiff::Timestamp) -> f64 {
    (to - from)
        .total(jiff::Unit::Millisecond)
        .unwrap_or(f64::NAN)
}

/// The agents' stamps of the rollout of `workload` in a trace's JSON report: per old pod and
/// node, its endpoint's change in the API (terminating, else removed) → the node's table
/// removal; per new pod and node, its endpoint turning ready → the node's table add.
pub fn agents_view(report: &Value, workload: &str) -> Vec<String> {
    let mut out = Vec::new();
    let rollouts = report["rollouts"].as_array().into_iter().flatten();
    for r in rollouts.filter(|r| r["workload"] == format!("deployment/{workload}")) {
        for p in r["pods"].as_array().into_iter().flatten() {
            let m = &p["marks"];
            let Some((what, at)) = [("terminating", "ep_terminating"), ("removed", "ep_removed")]
                .iter()
                .find_map(|(w, k)| Some((*w, time(&m[*k])?)))
            else {
                continue;
            };
            for d in p["dataplane"].as_array().into_iter().flatten() {
                if let Some(done) = time(&d["removed"]) {
                    out.push(format!(
                        "{} endpoint {what} → node {} removed it: {:.3} ms",
                        p["pod"].as_str().unwrap_or("?"),
                        d["node"].as_str().unwrap_or("?"),
                        ms(at, done)
                    ));
                }
            }
        }
        for s in r["startup"].as_array().into_iter().flatten() {
            let Some(at) = time(&s["marks"]["endpoint_ready"]) else {
                continue;
            };
            for d in s["dataplane"].as_array().into_iter().flatten() {
                if let Some(done) = time(&d["added"]) {
                    out.push(format!(
                        "{} endpoint ready → node {} added it: {:.3} ms",
                        s["pod"].as_str().unwrap_or("?"),
                        d["node"].as_str().unwrap_or("?"),
                        ms(at, done)
                    ));
                }
            }
        }
    }
    out
}

/// kube-proxy's samples in one line: how many, their mean, and per bucket.
pub fn kube_proxy_view(added: &Histogram) -> String {
    if added.count == 0 {
        return "no sample (no EndpointSlice change it synced carried a trigger time)".to_owned();
    }
    let mut lower = 0.0;
    let buckets: Vec<String> = added
        .buckets
        .iter()
        .filter_map(|&(le, n)| {
            let range = format!("({lower}, {le}] s: {n}");
            lower = le;
            (n > 0).then_some(range)
        })
        .collect();
    format!(
        "{} sample(s), mean {:.3} s; {}",
        added.count,
        added.sum / added.count as f64,
        buckets.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# HELP kubeproxy_network_programming_duration_seconds [ALPHA] In Cluster Network Programming Latency in seconds
# TYPE kubeproxy_network_programming_duration_seconds histogram
kubeproxy_network_programming_duration_seconds_bucket{le=\"0.25\"} 3
kubeproxy_network_programming_duration_seconds_bucket{le=\"0.5\"} 4
kubeproxy_network_programming_duration_seconds_bucket{le=\"1\"} 4
kubeproxy_network_programming_duration_seconds_bucket{le=\"2\"} 5
kubeproxy_network_programming_duration_seconds_bucket{le=\"+Inf\"} 5
kubeproxy_network_programming_duration_seconds_sum 2.5
kubeproxy_network_programming_duration_seconds_count 5
kubeproxy_sync_proxy_rules_duration_seconds_sum 9
";

    #[test]
    fn two_scrapes_give_the_samples_between_them_per_bucket() {
        let before = parse(BEFORE).unwrap();
        assert_eq!(before.count, 5);
        assert_eq!(before.buckets.len(), 5);
        let after = parse(
            &BEFORE
                .replace("{le=\"0.25\"} 3", "{le=\"0.25\"} 4")
                .replace("{le=\"0.5\"} 4", "{le=\"0.5\"} 5")
                .replace("{le=\"1\"} 4", "{le=\"1\"} 5")
                .replace("{le=\"2\"} 5", "{le=\"2\"} 7")
                .replace("{le=\"+Inf\"} 5", "{le=\"+Inf\"} 7")
                .replace("seconds_sum 2.5", "seconds_sum 5")
                .replace("seconds_count 5", "seconds_count 7"),
        )
        .unwrap();
        let added = before.added_since(&after);
        assert_eq!(
            added.buckets,
            vec![(0.25, 1), (0.5, 0), (1.0, 0), (2.0, 1), (f64::INFINITY, 0)]
        );
        assert_eq!((added.count, added.sum), (2, 2.5));
        assert_eq!(
            kube_proxy_view(&added),
            "2 sample(s), mean 1.250 s; (0, 0.25] s: 1, (1, 2] s: 1"
        );
        assert!(kube_proxy_view(&before.added_since(&before)).starts_with("no sample"));
    }

    #[test]
    fn metrics_without_the_histogram_are_named() {
        let err = parse("kubeproxy_sync_proxy_rules_duration_seconds_sum 9\n").unwrap_err();
        assert!(err.to_string().contains(METRIC), "{err}");
    }

    #[test]
    fn the_agents_stamps_are_each_nodes_change_after_the_apis() {
        let report = serde_json::json!({"rollouts": [{"workload": "deployment/fast-exit",
            "pods": [{"pod": "zdt-e2e/fast-exit-a",
                "marks": {"ep_terminating": {"time": "2026-12-06T19:47:22.119556850Z"},
                          "ep_removed": {"time": "2026-12-06T19:47:22.304963135Z"}},
                "dataplane": [{"node": "vm", "removed": {"time": "2026-12-06T19:47:23.157929065Z"}},
                              {"node": "vm-b", "state": "not_seen"}]}],
            "startup": [{"pod": "zdt-e2e/fast-exit-n",
                "marks": {"endpoint_ready": {"time": "2026-12-06T19:47:22.115099179Z"}},
                "dataplane": [{"node": "vm", "added": {"time": "2026-12-06T19:47:22.135311370Z"}}]}]},
            {"workload": "deployment/graceful", "pods": [{"pod": "x", "marks": {"ep_removed": {"time": "2026-12-06T19:47:22Z"}},
                "dataplane": [{"node": "vm", "removed": {"time": "2026-12-06T19:47:23Z"}}]}]}]});
        assert_eq!(
            agents_view(&report, "fast-exit"),
            vec![
                "zdt-e2e/fast-exit-a endpoint terminating → node vm removed it: 1038.372 ms",
                "zdt-e2e/fast-exit-n endpoint ready → node vm added it: 20.212 ms",
            ]
        );
    }
}
