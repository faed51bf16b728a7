//! The first probe end to end, in this kernel: a listener closes, clients keep connecting, and
//! the agent reports exactly the refused connections of the watched address — and nothing of the
//! unwatched one next to it. Needs root.

mod support;

use std::net::{IpAddr, SocketAddr, TcpListener};

use kubectl_zdt::{
    observation::Kind,
    testbed::{Netns, tcp::connect_once, veth_pair},
};
use support::{AgentProcess, assert_all_refused, require_root, ring_buffer_lost, total};

const N: usize = 25;
const M: usize = 7;

fn refused_of(obs: &[kubectl_zdt::observation::Observation], ip: IpAddr) -> u64 {
    total(obs, |o| o.kind == Kind::Refused && o.ip == Some(ip))
}

/// Pod `pod_ip` listens on :8080, serves one connection, closes its listener; then the client
/// connects N times to it (refused) and M times to `other_ip` (refused, but not watched).
fn scenario(
    client_addrs: [&str; 1],
    pod_addrs: [&str; 2],
    watch: &str,
) -> (
    Vec<kubectl_zdt::observation::Observation>,
    IpAddr,
    IpAddr,
    IpAddr,
) {
    require_root();
    let client = Netns::create("client").unwrap();
    let pod = Netns::create("pod").unwrap();
    veth_pair(&client, &pod, &client_addrs, &pod_addrs).unwrap();
    let ip = |s: &str| -> IpAddr { s.split('/').next().unwrap().parse().unwrap() };
    let (client_ip, pod_ip, other_ip) = (ip(client_addrs[0]), ip(pod_addrs[0]), ip(pod_addrs[1]));
    let target = SocketAddr::new(pod_ip, 8080);
    let other = SocketAddr::new(other_ip, 8080);

    let agent = AgentProcess::start(&["--watch-cidr", watch]);

    let listener = pod
        .run_in(move || TcpListener::bind(target))
        .unwrap()
        .unwrap();
    assert_eq!(client.run_in(move || connect_once(target)).unwrap(), Ok(()));
    drop(listener);
    let outcomes = client
        .run_in(move || {
            let a: Vec<_> = (0..N).map(|_| connect_once(target)).collect();
            let b: Vec<_> = (0..M).map(|_| connect_once(other)).collect();
            (a, b)
        })
        .unwrap();
    assert_all_refused(&outcomes.0);
    assert_all_refused(&outcomes.1);
    (agent.stop(), client_ip, pod_ip, other_ip)
}

fn assert_exact(
    obs: &[kubectl_zdt::observation::Observation],
    client_ip: IpAddr,
    pod_ip: IpAddr,
    other_ip: IpAddr,
) {
    let refused: Vec<_> = obs.iter().filter(|o| o.kind == Kind::Refused).collect();
    assert_eq!(
        refused_of(obs, pod_ip),
        N as u64,
        "refused of {pod_ip}: {refused:#?}"
    );
    for o in &refused {
        assert_eq!(o.port, Some(8080));
        assert_eq!(o.peer_ip, Some(client_ip));
        assert_eq!(o.reason.as_deref(), Some("NO_SOCKET"));
        assert!(o.peer_port.is_some_and(|p| p > 0));
    }
    assert_eq!(
        refused_of(obs, other_ip),
        0,
        "{other_ip} is outside --watch-cidr"
    );
    assert_eq!(ring_buffer_lost(obs), 0);
}

#[test]
fn refused_connections_of_the_watched_ipv4_pod_are_reported_exactly() {
    let (obs, c, p, o) = scenario(
        ["198.18.10.1/24"],
        ["198.18.10.2/24", "198.18.10.3/24"],
        "198.18.10.2/32",
    );
    assert_exact(&obs, c, p, o);
}

#[test]
fn refused_connections_of_the_watched_ipv6_pod_are_reported_exactly() {
    let (obs, c, p, o) = scenario(
        ["fd00:7a64:10::1/64"],
        ["fd00:7a64:10::2/64", "fd00:7a64:10::3/64"],
        "fd00:7a64:10::2/128",
    );
    assert_exact(&obs, c, p, o);
}

/// The agent's first line says it is running: SIGINT right after it (a user's ^C, a test's stop,
/// the kubelet's SIGTERM) stops it through its drain with a clean exit, never by the signal's
/// default action — the handlers are in place before that line. Five times, each at once.
#[test]
fn an_agent_stopped_right_after_its_first_line_exits_cleanly() {
    require_root();
    for _ in 0..5 {
        let agent = AgentProcess::start(&["--watch-cidr", "198.18.11.0/24"]);
        let seen = agent.stop();
        assert_eq!(seen[0].kind, Kind::AgentStart);
    }
}
