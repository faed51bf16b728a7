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

/// A new pod refuses SYNs until its app listens. The last SYN before the listen is refused by
/// the pod's kernel an instant before the listener opens, and the client's kernel reports that
/// refusal an instant after (the RST's trip back): still one refusal before listening, not one
/// before listening and one more after the pod was ready.
#[test]
fn a_refusal_straddling_the_listeners_open_is_counted_once_before_listening() {
    let new = |mut o: Observation| {
        o.pod = Some("default/web-5d9c7b8f6-fghij".into());
        o.pod_uid = Some("uid-2".into());
        o.ip = Some("10.244.0.8".parse().unwrap());
        o.port = Some(8080);
        o
    };
    let mut ready = new(at(0, Kind::EndpointReady));
    ready.node = NodeName("api".into());
    ready.service = Some(kubectl_zdt::observation::ServiceRef::parse("default/web"));
    let mut obs = vec![ready, new(at(1_000, Kind::ListenerOpen))];
    let mut added = new(at(20, Kind::DataplaneAdded));
    added.service = Some("10.96.0.10:80".into());
    obs.push(added);
    // Four SYNs refused, the last one 100 µs before the listener opened; each client's
    // ECONNREFUSED 200 µs after its refusal.
    for (i, us) in [100_000, 400_000, 700_000, 999_900].into_iter().enumerate() {
        let t = |us: i64| Timestamp::from_microsecond(1_795_310_205_000_000 + us).unwrap();
        let mut r = new(Observation::new(
            Kind::Refused,
            t(us),
            NodeName("node-a".into()),
        ));
        r.reason = Some("NO_SOCKET".into());
        r.peer_ip = Some("10.244.1.9".parse().unwrap());
        r.peer_port = Some(40_000 + u16::try_from(i).unwrap());
        obs.push(r);
        let mut c = to_service(
            Observation::new(Kind::ConnError, t(us + 200), NodeName("node-b".into())),
            "ECONNREFUSED",
        );
        c.ip = Some("10.244.0.8".parse().unwrap());
        c.port = Some(8080);
        obs.push(c);
    }

    let report = correlate(&obs, &Options::default());
    let s = report
        .rollouts
        .iter()
        .flat_map(|r| &r.startup)
        .find(|s| s.pod.as_deref() == Some("default/web-5d9c7b8f6-fghij"))
        .expect("the new pod is reported");
    assert_eq!(
        (
            s.errors.before_listening,
            s.errors.after_ready,
            s.errors.total()
        ),
        (4, 0, 4),
        "{:?}",
        s.errors
    );
}
