//! The engine on what a real Kubernetes v1.36 cluster wrote (tests/fixtures/kube-proxy-v1.36):
//! the raw watch streams, `nft monitor` output and a client's failures, converted by the library
//! adapters and correlated.

use std::path::Path;

use crate::support::recorded::{convert, read};
use kubectl_zdt::correlate::{self, Basis, Options, Report, Verdict};
use kubectl_zdt::observation::Observation;

/// The converted stream is committed (tests/fixtures/correlate/real-*.jsonl) so `kubectl zdt
/// analyze` can be run on it; this keeps it in step with the adapters. `ZDT_BLESS=1` rewrites it.
fn golden_stream(name: &str, obs: &[Observation]) {
    let text: String = obs.iter().map(|o| o.to_json_line() + "\n").collect();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/correlate")
        .join(name);
    if std::env::var_os("ZDT_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    assert_eq!(
        read(&path),
        text,
        "{} is stale: rerun with ZDT_BLESS=1",
        path.display()
    );
}

fn report(obs: &[Observation]) -> Report {
    correlate::correlate(obs, &Options::default())
}

#[test]
fn fast_exit_rollout_refusals_fall_in_the_first_old_pods_unsafe_window_and_both_old_pods_had_one() {
    let obs = convert("rollout-restart-nftables-fast-exit", "default/webfast");
    golden_stream("real-nftables-fast-exit.jsonl", &obs);
    let r = report(&obs);
    println!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert_eq!(r.rollouts.len(), 1);
    let rollout = &r.rollouts[0];
    assert_eq!(rollout.workload, "deployment/webfast");
    assert_eq!(rollout.verdict, Verdict::Unsafe);
    let pod = |name: &str| {
        rollout
            .pods
            .iter()
            .find(|p| p.pod.as_deref() == Some(name))
            .unwrap()
    };

    // webfast-…-mbbl4 (10.244.0.47) exited on SIGTERM at once; the node's nft rule kept it until
    // 1795310206.653542967, 994.7 ms after its deletion was seen.
    let first = pod("default/webfast-7759c99476-mbbl4");
    assert_eq!(first.ip, Some("10.244.0.47".parse().unwrap()));
    assert_eq!(first.propagation_ms, Some(994.670));
    assert_eq!(first.errors.unsafe_window, 12, "the 12 ECONNREFUSED");
    assert_eq!(first.errors.after_netns_gone, 1, "the ETIMEDOUT");
    assert_eq!(first.verdict, Verdict::Unsafe);
    // The listener close is not in these captures: the first refusal bounds it.
    assert_eq!(first.gap_basis, Basis::LowerBound);
    assert_eq!(first.gap_ms, Some(993.346));

    // The second old pod: no client errors (the client sat in its 1 s connect timeout through
    // that time), but the API saw its container terminated by 1795310206.396426920, and the
    // rule still sent it new connections until 1795310206.653542967.
    let second = pod("default/webfast-7759c99476-2lcjd");
    assert_eq!(second.errors.total(), 0);
    assert_eq!(second.propagation_ms, Some(388.021));
    assert_eq!(second.gap_basis, Basis::LowerBound);
    assert_eq!(second.gap_ms, Some(257.116));
    assert_eq!(second.verdict, Verdict::Unsafe);
    let exit = second
        .marks
        .exit
        .as_ref()
        .expect("exit bracketed by the API");
    assert_eq!(
        exit.source,
        kubectl_zdt::observation::Kind::ContainerTerminated
    );
    assert_eq!(exit.uncertainty_ms, 198.213);
    assert_eq!(rollout.unattributed_errors, 0);

    let advice = r.advice.expect("advice");
    assert_eq!(advice.prestop_seconds, 2);
    assert_eq!(advice.p99_propagation_ms, 994.670);
}

#[test]
fn slow_exit_rollout_has_measured_propagation_but_no_listener_mark_to_judge_the_gap() {
    // `web` ignores SIGTERM and serves until SIGKILL at 5 s: no client errors were seen, and
    // without the node agent the listener close is not in the capture.
    let obs = convert("rollout-restart-nftables", "default/web");
    let r = report(&obs);
    assert_eq!(r.rollouts.len(), 1);
    let rollout = &r.rollouts[0];
    assert_eq!(rollout.workload, "deployment/web");
    assert_eq!(rollout.pods.len(), 2);
    for p in &rollout.pods {
        assert!(
            p.propagation_ms.is_some_and(|ms| ms > 0.0 && ms < 1_100.0),
            "{:?}",
            p.propagation_ms
        );
        assert_eq!(p.gap_ms, None);
        assert_eq!(p.errors.total(), 0);
        assert_eq!(p.verdict, Verdict::Inconclusive);
        assert!(p.missing.contains(&"listen_closed".to_owned()));
    }
}

#[test]
fn advice_takes_the_p99_over_every_rollout_given() {
    let mut obs = convert("rollout-restart-nftables", "default/web");
    obs.extend(convert(
        "rollout-restart-nftables-fast-exit",
        "default/webfast",
    ));
    let r = report(&obs);
    assert_eq!(r.rollouts.len(), 2);
    let advice = r.advice.expect("advice");
    assert_eq!(advice.propagation_samples, 4);
    let largest = r
        .rollouts
        .iter()
        .flat_map(|ro| &ro.pods)
        .filter_map(|p| p.propagation_ms)
        .fold(0.0, f64::max);
    // Nearest-rank p99 of 4 samples is the largest.
    assert_eq!(advice.p99_propagation_ms, largest);
    assert_eq!(advice.patches.len(), 2);
}

#[test]
fn iptables_samples_carry_their_50_ms_spacing_into_the_removal_marks() {
    // kube-proxy's iptables mode sampled every ~50 ms: each removal is known to half a sample
    // interval, and the report says so instead of pretending to know it to the nanosecond.
    let obs = convert("rollout-restart-iptables", "default/web");
    let r = report(&obs);
    assert_eq!(r.rollouts.len(), 1);
    let pods = &r.rollouts[0].pods;
    assert_eq!(pods.len(), 2);
    for p in pods {
        let removed = p.dataplane[0].removed.as_ref().expect("a sampled removal");
        assert!(
            (20.0..=40.0).contains(&removed.uncertainty_ms),
            "{}",
            removed.uncertainty_ms
        );
        // The fixture's README: removed 0.36–1.03 s after the deletion was seen.
        let prop = p.propagation_ms.unwrap();
        assert!((300.0..=1_100.0).contains(&prop), "{prop}");
        assert_eq!(
            p.verdict,
            Verdict::Inconclusive,
            "no listener mark without the node agent"
        );
    }
}
