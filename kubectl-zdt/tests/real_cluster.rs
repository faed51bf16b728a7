//! What `trace deployment/fast --save` recorded on a real v1.23 cluster
//! (tests/recorded/k8s-v1.23, see its README), replayed through the engine.

use std::path::Path;

use kubectl_zdt::{
    correlate::{self, Options, Report, input},
    observation::{Kind, Observation},
};

fn recording(name: &str) -> Vec<Observation> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/recorded/k8s-v1.23")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (obs, problems) = input::parse_all(&text);
    assert!(problems.is_empty(), "{name}: {problems:?}");
    obs
}

fn outside_warnings(r: &Report) -> Vec<&String> {
    r.warnings
        .iter()
        .filter(|w| w.contains("outside every observed rollout"))
        .collect()
}

#[test]
fn the_traffic_loops_errors_are_counted_in_the_rollout_they_happened_in() {
    let obs = recording("fast-t1.jsonl");
    let traffic: u64 = obs
        .iter()
        .filter(|o| o.kind == Kind::ConnError)
        .map(Observation::weight)
        .sum();
    assert_eq!(traffic, 25, "6 refused + 19 timed out");
    let r = correlate::correlate(&obs, &Options::default());
    assert!(outside_warnings(&r).is_empty(), "{:#?}", r.warnings);
    let rollout = r
        .rollouts
        .iter()
        .find(|ro| ro.workload == "deployment/fast")
        .unwrap();
    // Each deleted pod's own Service name and the loop's are one form.
    for p in rollout
        .pods
        .iter()
        .filter(|p| p.pod.as_deref().is_some_and(|n| n.contains("6cdf94f8b6")))
    {
        assert_eq!(p.service.as_deref(), Some("default/fast"), "{:?}", p.pod);
    }
    // The 6 refusals are the pods' own refused SYNs seen from the client (not counted twice);
    // the 19 timeouts are either a pod's or the rollout's.
    let timeouts: u64 = rollout.pods.iter().map(|p| p.errors.after_netns_gone).sum();
    assert_eq!(timeouts + rollout.unattributed_errors, 19, "{rollout:#?}");
}
