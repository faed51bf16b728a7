//! Rollouts nobody traced, found in the journals: pod deletions (`pod_deleting`, seen by the
//! pod's node agent) grouped by owner (`workload`, else the pod itself), pod template and time,
//! the same rule as the correlation report's grouping (`correlate` module `rollout`): the pods
//! of one template change are one rollout; deletions of one owner and template more than the
//! split gap (by default 10 minutes) apart are two. kubectl-zdt's own traffic pods are left out.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use jiff::Timestamp;
use serde::Serialize;

use crate::{
    correlate::{is_instrument, template_of},
    journal::fold::is_counter,
    observation::{Kind, Observation, PodRef},
};

/// Errors this long after a rollout's last deletion still count as its own (late dataplane
/// updates on slow nodes).
pub const ERROR_TAIL_NS: i128 = 120 * 1_000_000_000;

/// One rollout found in the history.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FoundRollout {
    /// `deployment/web`, `statefulset/db`, … or `pod/NAME` for a pod without an owner.
    pub workload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(serialize_with = "ser_time")]
    pub first_deletion: Timestamp,
    #[serde(serialize_with = "ser_time")]
    pub last_deletion: Timestamp,
    /// `namespace/name` of each deleted pod, in deletion order.
    pub pods: Vec<PodRef>,
    /// Nodes the deleted pods ran on.
    pub nodes: Vec<String>,
    /// Refused, reset and timed-out connections of those pods (by name or address) from the
    /// first deletion to two minutes after the last.
    pub errors: u64,
}

fn ser_time<S: serde::Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::observation::format_time(*t))
}

struct Deletion<'a> {
    time: Timestamp,
    pod: &'a PodRef,
    ip: Option<IpAddr>,
    node: String,
}

/// Groups the deletions in `obs` (any order) into rollouts, in time order.
pub fn find(obs: &[Observation], split: std::time::Duration) -> Vec<FoundRollout> {
    let split_ns = split.as_nanos() as i128;
    // First deletion seen per pod (several agents, relists, may report it again).
    let mut first: BTreeMap<&PodRef, &Observation> = BTreeMap::new();
    for o in obs.iter().filter(|o| {
        o.kind == Kind::PodDeleting
            && !is_instrument(o.pod.as_ref(), o.details.api().instrument == Some(true))
    }) {
        if let Some(pod) = o.pod.as_ref() {
            let e = first.entry(pod).or_insert(o);
            if o.time < e.time {
                *e = o;
            }
        }
    }
    type Owner<'a> = (Option<&'a str>, String, Option<String>);
    let mut by_owner: BTreeMap<Owner<'_>, Vec<Deletion<'_>>> = BTreeMap::new();
    for (pod, o) in first {
        let ns = pod.namespace();
        let api = o.details.api();
        let owner = api
            .workload
            .as_deref()
            .map_or_else(|| format!("pod/{}", pod.name()), str::to_owned);
        let node = api.pod_node.clone().unwrap_or_else(|| o.node.0.clone());
        let template = template_of(pod, &owner, api.template_hash.as_deref());
        by_owner
            .entry((ns, owner, template))
            .or_default()
            .push(Deletion {
                time: o.time,
                pod,
                ip: o.ip,
                node,
            });
    }
    let mut found = Vec::new();
    for ((ns, workload, _), mut deletions) in by_owner {
        deletions.sort_by_key(|d| d.time);
        let mut group: Vec<Deletion<'_>> = Vec::new();
        for d in deletions {
            let apart = group
                .last()
                .is_some_and(|l| d.time.as_nanosecond() - l.time.as_nanosecond() > split_ns);
            if apart {
                found.push(summarize(ns, &workload, &std::mem::take(&mut group), obs));
            }
            group.push(d);
        }
        if !group.is_empty() {
            found.push(summarize(ns, &workload, &group, obs));
        }
    }
    found.sort_by(|a, b| (a.first_deletion, &a.workload).cmp(&(b.first_deletion, &b.workload)));
    found
}

fn summarize(
    ns: Option<&str>,
    workload: &str,
    group: &[Deletion<'_>],
    obs: &[Observation],
) -> FoundRollout {
    let first = group[0].time;
    let last = group[group.len() - 1].time;
    let pods: BTreeSet<&str> = group.iter().map(|d| d.pod.as_str()).collect();
    let ips: BTreeSet<IpAddr> = group.iter().filter_map(|d| d.ip).collect();
    let end = last.as_nanosecond() + ERROR_TAIL_NS;
    let errors = obs
        .iter()
        .filter(|o| is_counter(o.kind) && o.kind != Kind::FlowNew)
        .filter(|o| o.time >= first && o.time.as_nanosecond() <= end)
        .filter(|o| {
            o.pod.as_deref().is_some_and(|p| pods.contains(p))
                || o.ip.is_some_and(|i| ips.contains(&i))
        })
        .map(Observation::weight)
        .sum();
    FoundRollout {
        workload: workload.to_owned(),
        namespace: ns.map(str::to_owned),
        first_deletion: first,
        last_deletion: last,
        pods: group.iter().map(|d| d.pod.clone()).collect(),
        nodes: group
            .iter()
            .map(|d| d.node.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::NodeName;

    fn deleting(min: i64, pod: &str, workload: Option<&str>, ip: &str) -> Observation {
        let t = Timestamp::from_second(1_790_000_000 + min * 60).unwrap();
        let mut o = Observation::new(Kind::PodDeleting, t, NodeName("a".into()));
        o.pod = Some(pod.into());
        o.ip = Some(ip.parse().unwrap());
        match workload {
            Some(w) => o.with_extra("workload", w),
            None => o,
        }
    }

    #[test]
    fn deletions_of_one_owner_close_together_are_one_rollout_and_a_quiet_gap_splits_them() {
        let mut refused = Observation::new(
            Kind::Refused,
            Timestamp::from_second(1_790_000_000 + 65).unwrap(),
            NodeName("a".into()),
        );
        refused.ip = Some("10.0.0.2".parse().unwrap());
        refused.count = Some(7);
        let obs = vec![
            deleting(0, "shop/web-1-aaaaa", Some("deployment/web"), "10.0.0.1"),
            deleting(1, "shop/web-1-bbbbb", Some("deployment/web"), "10.0.0.2"),
            deleting(3, "shop/db-0", Some("statefulset/db"), "10.0.0.3"),
            // 30 minutes later: the next rollout of web.
            deleting(31, "shop/web-2-ccccc", Some("deployment/web"), "10.0.0.4"),
            deleting(32, "shop/job-x", None, "10.0.0.5"),
            refused,
        ];
        let found = find(&obs, std::time::Duration::from_secs(600));
        let summary: Vec<(&str, usize, u64)> = found
            .iter()
            .map(|r| (r.workload.as_str(), r.pods.len(), r.errors))
            .collect();
        assert_eq!(
            summary,
            [
                ("deployment/web", 2, 7),
                ("statefulset/db", 1, 0),
                ("deployment/web", 1, 0),
                ("pod/job-x", 1, 0)
            ]
        );
        assert_eq!(found[0].namespace.as_deref(), Some("shop"));
        assert_eq!(found[0].pods, ["shop/web-1-aaaaa", "shop/web-1-bbbbb"]);
    }

    #[test]
    fn a_deletion_reported_twice_counts_once_at_its_first_time() {
        let a = deleting(0, "shop/web-1-aaaaa", Some("deployment/web"), "10.0.0.1");
        let mut again = a.clone();
        again.time = Timestamp::from_second(1_790_000_000 + 5).unwrap();
        let found = find(&[again, a.clone()], std::time::Duration::from_secs(600));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].first_deletion, a.time);
        assert_eq!(found[0].pods.len(), 1);
    }
}
