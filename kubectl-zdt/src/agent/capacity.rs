//! Capacity dips of the Services with an endpoint on this node, from the agent's EndpointSlice
//! watch, which sees every slice of the cluster (docs/metrics.md, "Capacity dips").
//!
//! The agent knows no workload's replicas (it watches no Deployment), so the count a Service
//! should have is the one it had *at rest*: when every endpoint of its slices was ready (none
//! starting, unready or terminating). A dip: between two moments at rest its ready endpoints
//! fell below the first moment's count, and at the second they were back to it (or more). A
//! surge rollout (maxUnavailable 0) has none; one taking ready pods away before their
//! replacements are ready (maxUnavailable > 0), a readiness flap or an eviction has one. A
//! scale-down is none (the count at rest after it is lower), and neither is a dip that ends in
//! one: the limit of not knowing the replicas.

use std::collections::HashMap;

use jiff::Timestamp;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label the EndpointSlice controller names a slice's Service with.
const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// One dip, recorded when the Service is at rest again.
#[derive(Clone, Debug, PartialEq)]
pub struct Dip {
    pub namespace: String,
    pub service: String,
    /// Ready endpoints at rest before it.
    pub level: u64,
    /// The fewest ready endpoints during it.
    pub lowest: u64,
    /// How long its ready endpoints were below `level`.
    pub seconds: f64,
}

/// One slice's endpoints: ready, not ready (starting, unready or terminating), on this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    ready: u64,
    unready: u64,
    here: bool,
}

#[derive(Debug, Default)]
struct Service {
    slices: HashMap<String, Counts>,
    /// Ready endpoints at the last moment at rest.
    level: Option<u64>,
    lowest: u64,
    below_since: Option<Timestamp>,
    below_ns: i128,
    /// An endpoint of it was on this node since the last moment at rest.
    here: bool,
}

/// The Services' ready endpoints over time, and their dips.
#[derive(Debug, Default)]
pub struct CapacityWatch {
    services: HashMap<(String, String), Service>,
}

impl CapacityWatch {
    /// A slice as the watch delivered it at `now` (`deleted`: it is gone); `node`: this
    /// node's name. Returns the dip of its Service that this change ended, if any.
    pub fn slice(
        &mut self,
        slice: &EndpointSlice,
        deleted: bool,
        node: &str,
        now: Timestamp,
    ) -> Option<Dip> {
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        let service = slice.metadata.labels.as_ref()?.get(SERVICE_LABEL)?.clone();
        let name = slice.metadata.name.clone().unwrap_or_default();
        let mut counts = Counts::default();
        for ep in &slice.endpoints {
            let c = ep.conditions.as_ref();
            // The API: an unknown (absent) ready condition is to be read as ready; a
            // terminating endpoint is never ready.
            let ready = c.and_then(|c| c.ready).unwrap_or(true)
                && !c.and_then(|c| c.terminating).unwrap_or(false);
            if ready {
                counts.ready += 1;
            } else {
                counts.unready += 1;
            }
            counts.here |= ep.node_name.as_deref() == Some(node);
        }
        let key = (namespace, service);
        let s = self.services.entry(key.clone()).or_default();
        if deleted {
            s.slices.remove(&name);
        } else {
            s.slices.insert(name, counts);
        }
        let dip = s.update(now).map(|(level, lowest, seconds)| Dip {
            namespace: key.0.clone(),
            service: key.1.clone(),
            level,
            lowest,
            seconds,
        });
        if s.slices.is_empty() {
            self.services.remove(&key);
        }
        dip
    }
}

impl Service {
    fn update(&mut self, now: Timestamp) -> Option<(u64, u64, f64)> {
        let (ready, unready) = self
            .slices
            .values()
            .fold((0, 0), |(r, u), c| (r + c.ready, u + c.unready));
        self.here |= self.slices.values().any(|c| c.here);
        self.lowest = self.lowest.min(ready);
        let below = self.level.is_some_and(|l| ready < l);
        match (self.below_since, below) {
            (None, true) => self.below_since = Some(now),
            (Some(since), false) => {
                self.below_ns += now.as_nanosecond() - since.as_nanosecond();
                self.below_since = None;
            }
            _ => {}
        }
        if unready > 0 || self.slices.is_empty() {
            return None;
        }
        // At rest: a dip ends when the count is back to the level it left.
        let dip = match self.level {
            Some(level) if self.lowest < level && ready >= level && self.here => {
                Some((level, self.lowest, self.below_ns as f64 / 1e9))
            }
            _ => None,
        };
        self.level = Some(ready);
        self.lowest = ready;
        self.below_ns = 0;
        self.below_since = None;
        self.here = self.slices.values().any(|c| c.here);
        dip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "node-a";

    /// A slice of `default/web` with endpoints `(ready, terminating, node)`.
    fn slice(name: &str, endpoints: &[(bool, bool, &str)]) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {SERVICE_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": endpoints.iter().enumerate().map(|(i, (ready, terminating, node))| serde_json::json!({
                "addresses": [format!("10.0.0.{i}")],
                "conditions": {"ready": ready, "serving": ready, "terminating": terminating},
                "nodeName": node,
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    /// Feeds the slice states one second apart; returns the dips.
    fn run(states: &[&[(bool, bool, &str)]]) -> Vec<Dip> {
        let mut w = CapacityWatch::default();
        states
            .iter()
            .enumerate()
            .filter_map(|(i, eps)| w.slice(&slice("web-x", eps), false, NODE, at(i as i64)))
            .collect()
    }

    const R: (bool, bool, &str) = (true, false, NODE);
    const ELSEWHERE: (bool, bool, &str) = (true, false, "node-b");
    const STARTING: (bool, bool, &str) = (false, false, "node-b");
    const LEAVING: (bool, bool, &str) = (false, true, NODE);

    #[test]
    fn max_unavailable_one_is_a_dip_of_one_of_two_for_as_long_as_it_lasted() {
        let dips = run(&[
            &[R, R],
            &[LEAVING, R, STARTING],
            &[R, STARTING],
            &[R, ELSEWHERE],
        ]);
        assert_eq!(
            dips,
            [Dip {
                namespace: "default".into(),
                service: "web".into(),
                level: 2,
                lowest: 1,
                seconds: 2.0,
            }]
        );
    }

    #[test]
    fn a_surge_rollout_a_scale_up_and_a_scale_down_are_no_dip() {
        // maxSurge 1, maxUnavailable 0: the old endpoint leaves once the new one is ready.
        assert_eq!(
            run(&[
                &[R, R],
                &[R, R, STARTING],
                &[R, R, ELSEWHERE],
                &[LEAVING, R, ELSEWHERE],
                &[R, ELSEWHERE],
            ]),
            []
        );
        assert_eq!(run(&[&[R, R], &[R, R, STARTING], &[R, R, ELSEWHERE]]), []);
        assert_eq!(run(&[&[R, R, R], &[R, R, LEAVING], &[R, R]]), []);
    }

    #[test]
    fn a_dip_of_a_service_with_no_endpoint_on_this_node_is_another_nodes_to_report() {
        let e = ELSEWHERE;
        let gone = (false, true, "node-b");
        assert_eq!(run(&[&[e, e], &[gone, e], &[e, e]]), []);
    }

    /// The real v1.36 `rollout restart`s of a 2-replica Deployment (the default strategy:
    /// maxSurge 1, maxUnavailable 0 at this size) as the slice watch delivered them: no dip,
    /// although a surged third endpoint was ready and the old ones left one by one.
    #[test]
    fn the_recorded_surge_rollouts_have_no_dip() {
        for run in [
            "rollout-restart-iptables",
            "rollout-restart-nftables",
            "rollout-restart-nftables-fast-exit",
        ] {
            let path = format!(
                "{}/tests/fixtures/kube-proxy-v1.36/{run}/endpointslices-watch.jsonl",
                env!("CARGO_MANIFEST_DIR")
            );
            let text = std::fs::read_to_string(&path).unwrap();
            let mut w = CapacityWatch::default();
            let mut changes = 0;
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let slice: EndpointSlice =
                    serde_json::from_value(v["event"]["object"].clone()).unwrap();
                let now =
                    Timestamp::from_nanosecond(i128::from(v["received_ns"].as_u64().unwrap()))
                        .unwrap();
                let deleted = v["event"]["type"] == "DELETED";
                assert_eq!(w.slice(&slice, deleted, "vm", now), None, "{run}: {line}");
                changes += 1;
            }
            assert!(changes >= 5, "{run}: {changes} slice changes");
        }
    }

    #[test]
    fn a_readiness_flap_is_a_dip() {
        let unready = (false, false, NODE);
        assert_eq!(run(&[&[R, R], &[unready, R], &[R, R]]).len(), 1);
    }
}

#[cfg(test)]
mod metric_tests {
    use super::*;
    use crate::agent::metrics::{Metrics, SETTLE, Scope};

    #[test]
    fn a_dip_is_one_observation_of_each_capacity_histogram_labelled_by_its_service() {
        let m = Metrics::new(Scope::OwnPods, SETTLE);
        m.capacity_dip(&Dip {
            namespace: "shop".into(),
            service: "web".into(),
            level: 4,
            lowest: 3,
            seconds: 2.5,
        });
        let text = m.scrape(Timestamp::now(), true);
        let labels = r#"namespace="shop",service="web""#;
        for line in [
            format!(r#"zdt_capacity_dip_ready_ratio_bucket{{le="0.5",{labels}}} 0"#),
            format!(r#"zdt_capacity_dip_ready_ratio_bucket{{le="0.75",{labels}}} 1"#),
            format!(r#"zdt_capacity_dip_ready_ratio_count{{{labels}}} 1"#),
            format!(r#"zdt_capacity_dip_seconds_bucket{{le="2.0",{labels}}} 0"#),
            format!(r#"zdt_capacity_dip_seconds_bucket{{le="3.0",{labels}}} 1"#),
            format!(r#"zdt_capacity_dip_seconds_sum{{{labels}}} 2.5"#),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
