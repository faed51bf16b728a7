//! Timed iptables snapshots (`=== <realtime ns>` then kube-proxy's `-A KUBE-SEP-…` rules, as
//! in the fixtures' `iptables-nat-kube-chains-every-50ms.txt`) → `dataplane_added` /
//! `dataplane_removed`.
//!
//! Sampling only brackets a change: a backend present at sample k−1 and gone at sample k was
//! removed somewhere in between. The observation is stamped at the midpoint with
//! `uncertainty_ns` = half the interval, so the engine carries the sampling error into every
//! gap it computes. Minimal on purpose: only the `-j DNAT --to-destination IP:PORT` rules of
//! `KUBE-SEP-*` chains and their `--comment "ns/name…"` are read.

use std::{collections::BTreeSet, net::SocketAddr};

use jiff::Timestamp;

use crate::observation::{Kind, NodeName, Observation};

#[derive(Debug, thiserror::Error)]
#[error("line {line}: expected `=== <realtime ns>` before the rules, got {text:?}")]
pub struct SampleError {
    pub line: usize,
    pub text: String,
}

/// (Service `ns/name`, backend) pairs one snapshot routes to.
type Backends = BTreeSet<(String, SocketAddr)>;

fn dnat_backend(rule: &str) -> Option<(String, SocketAddr)> {
    if !rule.starts_with("-A KUBE-SEP-") {
        return None;
    }
    let dest = rule
        .split_once("--to-destination ")?
        .1
        .split_whitespace()
        .next()?;
    let comment = rule.split_once("--comment \"")?.1.split('"').next()?;
    // `default/web` or `default/kubernetes:https`: the Service, without the port name.
    let service = comment.split(':').next()?.to_owned();
    Some((service, dest.parse().ok()?))
}

/// The snapshots of `text`, in file order.
pub fn read(text: &str) -> Result<Vec<(i128, Backends)>, SampleError> {
    let mut out: Vec<(i128, Backends)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(ns) = line.strip_prefix("=== ") {
            let ns = ns.trim().parse().map_err(|_| SampleError {
                line: i + 1,
                text: line.chars().take(80).collect(),
            })?;
            out.push((ns, Backends::new()));
        } else if let Some(b) = dnat_backend(line) {
            let Some((_, set)) = out.last_mut() else {
                return Err(SampleError {
                    line: i + 1,
                    text: line.chars().take(80).collect(),
                });
            };
            set.insert(b);
        }
    }
    Ok(out)
}

/// The changes between consecutive snapshots, as observations of `node`, in time order.
pub fn changes(samples: &[(i128, Backends)], node: &NodeName) -> Vec<Observation> {
    let mut out = Vec::new();
    for pair in samples.windows(2) {
        let ((t1, before), (t2, after)) = (&pair[0], &pair[1]);
        let mid = Timestamp::from_nanosecond(t1 + (t2 - t1) / 2).unwrap_or(Timestamp::UNIX_EPOCH);
        let half = u64::try_from((t2 - t1) / 2).unwrap_or(0);
        let mut emit = |kind, (service, addr): &(String, SocketAddr)| {
            let mut o = Observation::new(kind, mid, node.clone());
            o.ip = Some(addr.ip());
            o.port = Some(addr.port());
            o.service = Some(crate::observation::ServiceRef::parse(service));
            o.reason = Some("iptables_sample".to_owned());
            o.uncertainty_ns = Some(half);
            out.push(o);
        };
        for b in before.difference(after) {
            emit(Kind::DataplaneRemoved, b);
        }
        for b in after.difference(before) {
            emit(Kind::DataplaneAdded, b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_gone_between_two_samples_is_removed_at_the_midpoint_with_half_the_interval() {
        let text = "=== 1000000000\n\
            -A KUBE-SEP-A -p tcp -m comment --comment \"default/web\" -m tcp -j DNAT --to-destination 10.244.0.34:8080\n\
            -A KUBE-SEP-B -p tcp -m comment --comment \"default/web\" -m tcp -j DNAT --to-destination 10.244.0.35:8080\n\
            === 1050000000\n\
            -A KUBE-SEP-B -p tcp -m comment --comment \"default/web\" -m tcp -j DNAT --to-destination 10.244.0.35:8080\n";
        let obs = changes(&read(text).unwrap(), &NodeName("vm".into()));
        assert_eq!(obs.len(), 1);
        assert_eq!(obs[0].kind, Kind::DataplaneRemoved);
        assert_eq!(obs[0].ip, Some("10.244.0.34".parse().unwrap()));
        assert_eq!(obs[0].service, Some("default/web".into()));
        assert_eq!(
            obs[0].time,
            Timestamp::from_nanosecond(1_025_000_000).unwrap()
        );
        assert_eq!(obs[0].uncertainty_ns, Some(25_000_000));
    }

    #[test]
    fn a_rule_before_any_timestamp_is_an_error_with_its_line() {
        let err = read(
            "-A KUBE-SEP-A -m comment --comment \"d/w\" -j DNAT --to-destination 1.2.3.4:80\n",
        )
        .unwrap_err();
        assert_eq!(err.line, 1);
    }
}
