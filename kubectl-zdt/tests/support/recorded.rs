//! The recorded v1.36 rollouts (tests/fixtures/kube-proxy-v1.36) as observation streams,
//! converted by the library's adapters; shared by the tests that replay them.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};

use kubectl_zdt::convert::{
    client_log, iptables_samples,
    kube_events::{self, EndpointSlice, EndpointSliceWatch, Pod, PodWatch},
    nft_monitor::{self, NftMonitor},
};
use kubectl_zdt::observation::{NodeName, Observation};

/// The three recorded `kubectl rollout restart`s: (folder, the client's Service).
pub const ROLLOUTS: [(&str, &str); 3] = [
    ("rollout-restart-nftables", "default/web"),
    ("rollout-restart-iptables", "default/web"),
    ("rollout-restart-nftables-fast-exit", "default/webfast"),
];

pub fn fixture(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kube-proxy-v1.36")
        .join(dir)
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Everything in one recorded rollout folder as one observation stream (all on node `vm`'s
/// clock, as recorded).
pub fn convert(dir: &str, client_service: &str) -> Vec<Observation> {
    let d = fixture(dir);
    let vm = NodeName("vm".into());
    let mut out = Vec::new();
    let mut pods = PodWatch::new(vm.clone());
    for (t, e) in kube_events::read_recorded::<Pod>(&read(&d.join("pods-watch.jsonl"))).unwrap() {
        out.extend(pods.on_event(t, &e));
    }
    let mut slices = EndpointSliceWatch::new(vm.clone());
    for (t, e) in
        kube_events::read_recorded::<EndpointSlice>(&read(&d.join("endpointslices-watch.jsonl")))
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
    let iptables = d.join("iptables-nat-kube-chains-every-50ms.txt");
    if iptables.exists() {
        out.extend(iptables_samples::changes(
            &iptables_samples::read(&read(&iptables)).unwrap(),
            &vm,
        ));
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
