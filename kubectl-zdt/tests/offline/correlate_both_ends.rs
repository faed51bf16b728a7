//! One failed connection is often seen from both ends: the pod's kernel refuses the SYN, the
//! client's kernel reports ECONNREFUSED toward the Service. The report counts it once, and
//! still counts what only the client saw (a timeout after the pod's namespace was gone).

use jiff::Timestamp;
use kubectl_zdt::{
    correlate::{Options, correlate},
    observation::{Kind, NodeName, Observation},
};

fn at(ms: i64, kind: Kind) -> Observation {
    let t = Timestamp::from_millisecond(1_795_310_205_000 + ms).unwrap();
    Observation::new(kind, t, NodeName("node-a".into()))
}

fn pod(mut o: Observation) -> Observation {
    o.pod = Some("default/web-5d9c7b8f6-abcde".into());
    o.pod_uid = Some("uid-1".into());
    o.ip = Some("10.244.0.7".parse().unwrap());
    o
}

fn to_service(mut o: Observation, reason: &str) -> Observation {
    o.service = Some("10.96.0.10:80".into());
    o.reason = Some(reason.into());
    o
}

#[test]
fn a_refusal_seen_by_pod_and_client_is_counted_once_and_client_only_timeouts_are_kept() {
    let mut obs = vec![
        pod(at(-5_000, Kind::PodReady)),
        pod(at(0, Kind::PodDeleting)),
        pod(at(10, Kind::ListenerClosed)),
        pod(at(700, Kind::NetnsGone)),
    ];
    let mut removed = pod(at(900, Kind::DataplaneRemoved));
    removed.service = Some("10.96.0.10:80".into());
    removed.port = Some(8080);
    obs.push(removed);
    for i in 0..3 {
        let mut r = pod(at(100 + i * 10, Kind::Refused));
        r.port = Some(8080);
        obs.push(r);
        obs.push(to_service(
            at(101 + i * 10, Kind::ConnError),
            "ECONNREFUSED",
        ));
    }
    obs.push(to_service(at(800, Kind::SynRetransmit), "ETIMEDOUT"));

    let report = correlate(&obs, &Options::default());
    let p = report
        .rollouts
        .iter()
        .flat_map(|r| &r.pods)
        .find(|p| p.pod.as_deref() == Some("default/web-5d9c7b8f6-abcde"))
        .expect("the pod is reported");
    assert_eq!(p.errors.unsafe_window, 3, "{:?}", p.errors);
    assert_eq!(p.errors.after_netns_gone, 1, "{:?}", p.errors);
}
