//! IPVS as a real kernel sent it: the dump datagrams recorded by `cargo xtask ipvs-vm` (Debian's
//! 6.1 kernel in a QEMU guest, kube-proxy-shaped virtual and real servers programmed over
//! generic netlink), decoded through `ipvs::decode_datagram` and `ipvs::read`, the path the live
//! reader takes. No VM needed. tests/fixtures/ipvs/README.md says how they were recorded.

use std::{fs, path::PathBuf};

use kubectl_zdt::dataplane::{
    ipvs::{self, Dump, IpvsMessage, Replay},
    model::Backends,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    state: String,
    kernel: String,
    programmed: Vec<String>,
    dumps: Vec<Dump>,
}

fn fixture(state: &str) -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ipvs")
        .join(format!("{state}.json"));
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let f: Fixture = serde_json::from_str(&text).unwrap();
    assert_eq!(f.state, state);
    assert!(f.kernel.starts_with("6.1."), "recorded on {}", f.kernel);
    f
}

fn read(f: &Fixture) -> ipvs::Ipvs {
    ipvs::read(&mut Replay::new(&f.dumps)).unwrap()
}

const WEB_CLUSTER_IP: &str = "10.96.0.10:80 tcp -> 10.244.1.12:8080 (-)";
const WEB_NODE_PORT: &str = "192.168.50.10:30080 tcp -> 10.244.1.12:8080 (-)";

fn has(routes: &Backends, line: &str) -> bool {
    routes.describe().iter().any(|l| l == line)
}

#[test]
fn every_recorded_state_decodes_to_the_routes_that_were_programmed() {
    for state in ["initial", "draining", "deleted", "readded"] {
        let f = fixture(state);
        let ipvs = read(&f);
        assert_eq!(ipvs.routes.describe(), f.programmed, "{state}");
        // kube-proxy's shapes: 25 virtual servers (ClusterIPs, one NodePort, one IPv6).
        assert_eq!(ipvs.servers.len(), 25, "{state}");
    }
}

#[test]
fn the_kernels_replies_are_decoded_as_services_and_destinations() {
    let f = fixture("initial");
    // The first dump is GET_SERVICE; its replies hold every virtual server, IPv6 included.
    let (request, _) = ipvs::decode_datagram(&f.dumps[0].request).unwrap();
    assert_eq!(request, [IpvsMessage::GetServices]);
    let mut services = Vec::new();
    let mut done = false;
    for d in &f.dumps[0].replies {
        let (messages, end) = ipvs::decode_datagram(d).unwrap();
        services.extend(messages);
        done |= end;
    }
    assert!(done, "the recorded dump ends with NLMSG_DONE");
    assert_eq!(services.len(), 25);
    assert!(
        services
            .iter()
            .all(|m| matches!(m, IpvsMessage::Service(Some(_))))
    );
    let v6 = services.iter().any(|m| {
        matches!(m, IpvsMessage::Service(Some(vs)) if vs.service.0.to_string() == "[fd00:96::10]:80")
    });
    assert!(v6, "the IPv6 virtual server is decoded");
    assert!(has(
        &read(&f).routes,
        "[fd00:96::10]:80 tcp -> [fd00:244::11]:8080 (-)"
    ));
}

#[test]
fn a_weight_0_real_server_is_a_removed_route_and_its_deletion_changes_nothing() {
    let initial = read(&fixture("initial")).routes;
    let draining = read(&fixture("draining")).routes;
    let deleted = read(&fixture("deleted")).routes;
    let readded = read(&fixture("readded")).routes;
    assert!(has(&initial, WEB_CLUSTER_IP) && has(&initial, WEB_NODE_PORT));

    let drained = initial.diff(&draining);
    let mut removed: Vec<String> = drained
        .removed
        .iter()
        .map(|c| format!("{} -> {}", c.route.service, c.route.backend))
        .collect();
    removed.sort();
    assert!(drained.added.is_empty());
    assert_eq!(
        removed,
        [
            "10.96.0.10:80 -> 10.244.1.12:8080",
            "192.168.50.10:30080 -> 10.244.1.12:8080"
        ]
    );
    assert!(!has(&draining, WEB_CLUSTER_IP) && !has(&draining, WEB_NODE_PORT));

    assert!(
        draining.diff(&deleted).is_empty(),
        "deleting a weight-0 real server"
    );
    let back = deleted.diff(&readded);
    assert!(back.removed.is_empty());
    assert_eq!(back.added.len(), 2);
    assert_eq!(readded.describe(), initial.describe());
}

#[test]
fn the_weight_0_real_server_is_still_in_the_kernels_draining_dump() {
    // What makes "draining" differ from "deleted": the kernel still lists the real server,
    // with weight 0; only the reader's weight rule drops the route.
    let weights = |f: &Fixture| {
        let mut w: Vec<u32> = f
            .dumps
            .iter()
            .flat_map(|d| &d.replies)
            .flat_map(|r| ipvs::decode_datagram(r).unwrap().0)
            .filter_map(|m| match m {
                IpvsMessage::Dest(d) => Some(d.weight()),
                _ => None,
            })
            .collect();
        w.sort();
        w
    };
    let initial = weights(&fixture("initial"));
    assert_eq!(initial.len(), 50);
    assert!(initial.iter().all(|w| *w == 1));
    let draining = weights(&fixture("draining"));
    assert_eq!(draining.len(), 50);
    assert_eq!(draining[..3], [0, 0, 1]);
    let deleted = weights(&fixture("deleted"));
    assert_eq!(deleted.len(), 48);
    assert!(deleted.iter().all(|w| *w == 1));
}
