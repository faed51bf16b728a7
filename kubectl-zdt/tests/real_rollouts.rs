//! The engine on what a real Kubernetes v1.36 cluster wrote (tests/fixtures/kube-proxy-v1.36):
//! the raw watch streams, `nft monitor` output and a client's failures, converted by the library
//! adapters and correlated.

use std::path::{Path, PathBuf};

use kubectl_zdt::correlate::{
    self, Basis, Options, Report, Verdict, client_log,
    k8s_watch::{self, EndpointSlice, EndpointSliceWatch, Pod, PodWatch},
    nft_monitor::{self, NftMonitor},
};
use kubectl_zdt::observation::{NodeName, Observation};

fn fixture(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kube-proxy-v1.36")
        .join(dir)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Everything in one recorded rollout folder as one observation stream (all on node `vm`'s
/// clock, as recorded).
fn convert(dir: &str, client_service: &str) -> Vec<Observation> {
    let d = fixture(dir);
    let vm = NodeName("vm".into());
    let mut out = Vec::new();
    let mut pods = PodWatch::new(vm.clone());
    for (t, e) in k8s_watch::read_recorded::<Pod>(&read(&d.join("pods-watch.jsonl"))).unwrap() {
        out.extend(pods.on_event(t, &e));
    }
    let mut slices = EndpointSliceWatch::new(vm.clone());
    for (t, e) in
        k8s_watch::read_recorded::<EndpointSlice>(&read(&d.join("endpointslices-watch.jsonl")))
            .unwrap()
    {
        out.extend(slices.on_event(t, &e));
    }
    let nft = d.join("nft-monitor-ruleset.txt");
    if nft.exists() {
        let mut m = NftMonitor::new(vm.clone());
        for (t, line) in nft_monitor::read_stamped(&read(&nft)).unwrap() {
            out.extend(m.on_line(t, line));
        }
    }
    let client = d.join("client-requests.jsonl");
    if client.exists() {
        out.extend(
            client_log::read(&read(&client), &vm, client_service)
                .unwrap()
                .observations,
        );
    }
    out.sort_by_key(|o| o.time);
    out
}

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
fn fast_exit_rollout_refusals_fall_in_the_first_old_pods_unsafe_window() {
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

    // The second old pod had an equally long window, but the client was stuck in its 1 s
    // connect timeout through it: no errors, and no listener mark to bound the gap.
    let second = pod("default/webfast-7759c99476-2lcjd");
    assert_eq!(second.errors.total(), 0);
    assert_eq!(second.propagation_ms, Some(388.021));
    assert_eq!(second.verdict, Verdict::Inconclusive);
    assert_eq!(rollout.unattributed_errors, 0);

    let advice = r.advice.expect("advice");
    assert_eq!(advice.prestop_seconds, 2);
    assert_eq!(advice.p99_propagation_ms, 994.670);
}
