//! The first probe end to end, in this kernel: a listener closes, clients keep connecting, and
//! the agent reports exactly the refused connections of the watched address — and nothing of the
//! unwatched one next to it. Needs root.

use std::net::{IpAddr, SocketAddr, TcpListener};

use crate::support::{AgentProcess, assert_all_refused, require_root, ring_buffer_lost, total};
use kubectl_zdt::{
    observation::Kind,
    testbed::{Netns, tcp::connect_once, veth_pair},
};

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

/// A TCP segment with `flags` from `src` to `dst` (no TCP options, no payload), checksummed,
/// sent through a raw socket of the current network namespace (the kernel adds the IPv4
/// header, with `ip_options` when there are some).
fn send_segment(
    src: std::net::SocketAddrV4,
    dst: std::net::SocketAddrV4,
    flags: u8,
    ip_options: &[u8],
) {
    let mut seg = [0u8; 20];
    seg[0..2].copy_from_slice(&src.port().to_be_bytes());
    seg[2..4].copy_from_slice(&dst.port().to_be_bytes());
    seg[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    seg[8..12].copy_from_slice(&0x2000_0000u32.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = flags;
    seg[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&src.ip().octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&seg);
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    seg[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    // SAFETY: plain socket calls on a descriptor this function owns; the address is a valid
    // sockaddr_in of the size given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        if !ip_options.is_empty() {
            let r = libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_OPTIONS,
                ip_options.as_ptr().cast(),
                ip_options.len() as u32,
            );
            assert_eq!(r, 0, "IP_OPTIONS: {}", std::io::Error::last_os_error());
        }
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let n = libc::sendto(
            fd,
            seg.as_ptr().cast(),
            seg.len(),
            0,
            (&raw const to).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(n, 20, "sendto: {}", std::io::Error::last_os_error());
        libc::close(fd);
    }
}

/// A client namespace (198.18.`subnet`.1) and a pod namespace (198.18.`subnet`.2) linked by
/// a veth pair.
fn linked(subnet: u8) -> (Netns, Netns) {
    require_root();
    let client = Netns::create("client").unwrap();
    let pod = Netns::create("pod").unwrap();
    veth_pair(
        &client,
        &pod,
        &[&format!("198.18.{subnet}.1/24")],
        &[&format!("198.18.{subnet}.2/24")],
    )
    .unwrap();
    (client, pod)
}

/// A SYN whose IPv4 header carries options: its TCP header is not right behind a 20-byte IP
/// header, where the probe's one copy of the headers finds it otherwise, and the probe reads it
/// from the segment's data instead. Still a refusal, with its ports.
#[test]
fn a_syn_with_ip_options_is_a_refusal_with_its_ports() {
    let (client, _pod) = linked(14);
    let client_addr: std::net::SocketAddrV4 = "198.18.14.1:41001".parse().unwrap();
    let pod_addr: std::net::SocketAddrV4 = "198.18.14.2:8081".parse().unwrap();
    let agent = AgentProcess::start(&["--watch-cidr", "198.18.14.2/32"]);
    // No-operation ×3, end of options: a 24-byte IPv4 header.
    client
        .run_in(move || send_segment(client_addr, pod_addr, 0x02, &[1, 1, 1, 0]))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let obs = agent.stop();
    let pod_ip = IpAddr::V4(*pod_addr.ip());
    assert_eq!(
        total(&obs, |o| o.kind == Kind::Refused && o.ip == Some(pod_ip)),
        1,
        "{obs:#?}"
    );
    let refusal = obs.iter().find(|o| o.kind == Kind::Refused).unwrap();
    assert_eq!(
        (refusal.port, refusal.peer_ip, refusal.peer_port),
        (
            Some(pod_addr.port()),
            Some(IpAddr::V4(*client_addr.ip())),
            Some(client_addr.port())
        )
    );
}

/// A client that gave up on a connect closes its port; the server's late SYN-ACK (or data)
/// then reaches a port with no socket, and the client's kernel answers with a NO_SOCKET RST.
/// No server refused anything: that RST is a reset of a connection the client no longer has,
/// never a refused connection. Only the RST to a bare SYN is.
#[test]
fn a_no_socket_reset_to_anything_but_a_bare_syn_is_no_refusal() {
    let (_client, server) = linked(12);
    let client_addr: std::net::SocketAddrV4 = "198.18.12.1:41000".parse().unwrap();
    let server_addr: std::net::SocketAddrV4 = "198.18.12.2:8080".parse().unwrap();
    let agent = AgentProcess::start(&["--watch-cidr", "198.18.12.1/32"]);
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const PSH: u8 = 0x08;
    // From the server's namespace to the client's closed port: a late SYN-ACK, a pure ACK,
    // data; then a bare SYN, which is a refusal (the client has no listener there either).
    server
        .run_in(move || {
            for flags in [SYN | ACK, ACK, PSH | ACK, SYN] {
                send_segment(server_addr, client_addr, flags, &[]);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let obs = agent.stop();
    let client_ip: IpAddr = "198.18.12.1".parse().unwrap();
    let refused = total(&obs, |o| o.kind == Kind::Refused && o.ip == Some(client_ip));
    let resets = total(&obs, |o| {
        o.kind == Kind::Reset && o.ip == Some(client_ip) && o.reason.as_deref() == Some("NO_SOCKET")
    });
    assert_eq!(refused, 1, "only the bare SYN was refused: {obs:#?}");
    assert_eq!(resets, 3, "the SYN-ACK, ACK and data segments were reset");
    assert_eq!(ring_buffer_lost(&obs), 0);
}

/// A listener on the wildcard address answers an ACK of no connection it knows (its request
/// socket gone: seen on a real node beside busybox httpd) with a RST. The kernel's own record
/// names the listener's ends, `0.0.0.0:8080 ← 0.0.0.0:0`, which no client and no pod address
/// match (the report then had an `address ::` client with no error); the agent names the
/// segment's: the pod's address and the client's address and port. A reset, not a refusal.
#[test]
fn a_listeners_reset_names_the_segment_it_answers() {
    let (client, pod) = linked(15);
    let client_addr: std::net::SocketAddrV4 = "198.18.15.1:41002".parse().unwrap();
    let pod_addr: std::net::SocketAddrV4 = "198.18.15.2:8080".parse().unwrap();
    let _listener = pod
        .run_in(|| std::net::TcpListener::bind("0.0.0.0:8080"))
        .unwrap()
        .unwrap();
    let agent = AgentProcess::start(&["--watch-cidr", "198.18.15.2/32"]);
    const ACK: u8 = 0x10;
    client
        .run_in(move || send_segment(client_addr, pod_addr, ACK, &[]))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let obs = agent.stop();
    let resets: Vec<_> = obs
        .iter()
        .filter(|o| matches!(o.kind, Kind::Reset | Kind::Refused))
        .collect();
    assert_eq!(resets.len(), 1, "{obs:#?}");
    let r = resets[0];
    assert_eq!(
        (r.kind, r.ip, r.port, r.peer_ip, r.peer_port),
        (
            Kind::Reset,
            Some(IpAddr::V4(*pod_addr.ip())),
            Some(8080),
            Some(IpAddr::V4(*client_addr.ip())),
            Some(client_addr.port())
        ),
        "{r:#?}"
    );
    assert_ne!(r.reason.as_deref(), Some("NO_SOCKET"));
}

/// A client with a short connect timeout (here 300 ms, on the real node 1 s) gives up before
/// the kernel's first SYN retransmission (1 s): no `syn_retransmit` ever exists, and the
/// kernel reports no error, the client closed the socket itself. Each such connect is a
/// timeout toward the address it dialled; a refused connect (the kernel set ECONNREFUSED) is
/// not one too.
#[test]
fn connects_the_client_abandoned_unanswered_are_timeouts_and_refusals_are_not() {
    require_root();
    let client = Netns::create("client").unwrap();
    let pod = Netns::create("pod").unwrap();
    veth_pair(&client, &pod, &["198.18.13.1/24"], &["198.18.13.2/24"]).unwrap();
    // Nobody has .77: the SYN waits for an ARP answer that never comes.
    let silent: SocketAddr = "198.18.13.77:80".parse().unwrap();
    let closed: SocketAddr = "198.18.13.2:8080".parse().unwrap();
    let agent = AgentProcess::start(&["--watch-cidr", "198.18.13.0/24"]);
    const ABANDONED: usize = 4;
    const REFUSED: usize = 3;
    let (timeouts, refusals) = client
        .run_in(move || {
            let t: Vec<_> = (0..ABANDONED)
                .map(|_| {
                    std::net::TcpStream::connect_timeout(
                        &silent,
                        std::time::Duration::from_millis(300),
                    )
                    .map(drop)
                    .map_err(|e| e.kind())
                })
                .collect();
            let r: Vec<_> = (0..REFUSED).map(|_| connect_once(closed)).collect();
            (t, r)
        })
        .unwrap();
    assert!(
        timeouts
            .iter()
            .all(|r| *r == Err(std::io::ErrorKind::TimedOut)),
        "{timeouts:?}"
    );
    assert_all_refused(&refusals);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let obs = agent.stop();
    let errors = |reason: &str, ip: &str| {
        let ip: IpAddr = ip.parse().unwrap();
        total(&obs, |o| {
            o.kind == Kind::ConnError && o.reason.as_deref() == Some(reason) && o.ip == Some(ip)
        })
    };
    assert_eq!(
        errors("ETIMEDOUT", "198.18.13.77"),
        ABANDONED as u64,
        "{obs:#?}"
    );
    assert_eq!(errors("ECONNREFUSED", "198.18.13.2"), REFUSED as u64);
    assert_eq!(
        errors("ETIMEDOUT", "198.18.13.2"),
        0,
        "a refusal is no timeout"
    );
    assert!(
        obs.iter()
            .filter(|o| o.reason.as_deref() == Some("ETIMEDOUT"))
            .all(|o| o.details.kernel().gave_up.as_deref() == Some("client")
                && o.peer_ip == Some("198.18.13.1".parse().unwrap()))
    );
    assert_eq!(ring_buffer_lost(&obs), 0);
}
