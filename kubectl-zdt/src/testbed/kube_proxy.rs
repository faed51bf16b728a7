//! kube-proxy's iptables-mode rule shapes, written the way kube-proxy v1.3x writes them
//! (pkg/proxy/iptables/proxier.go): KUBE-SERVICES → KUBE-SVC-<hash> → KUBE-SEP-<hash> with
//! `statistic --mode random --probability` and DNAT, applied with `iptables-restore --noflush`.
//! The chain-name hashes match tests/fixtures/kube-proxy-v1.36 (see the tests).

use std::{fmt::Write as _, net::SocketAddr};

use data_encoding::BASE32;
use sha2::{Digest as _, Sha256};

/// A Service port as kube-proxy names it: `namespace/name` or `namespace/name:port-name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub cluster_ip: std::net::IpAddr,
    pub port: u16,
}

/// kube-proxy's `portProtoHash`: base32(sha256(name + protocol))[..16].
fn hash(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    BASE32.encode(&digest)[..16].to_owned()
}

impl ServicePort {
    pub fn svc_chain(&self) -> String {
        format!("KUBE-SVC-{}", hash(&format!("{}tcp", self.name)))
    }

    pub fn sep_chain(&self, endpoint: SocketAddr) -> String {
        format!("KUBE-SEP-{}", hash(&format!("{}tcp{endpoint}", self.name)))
    }

    fn comment(&self) -> String {
        self.name.clone()
    }
}

/// A Service port and what kube-proxy programs for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRules {
    pub port: ServicePort,
    pub endpoints: Vec<SocketAddr>,
    /// `spec.externalIPs`: reached through KUBE-EXT-<hash>.
    pub external_ips: Vec<std::net::IpAddr>,
    /// `internalTrafficPolicy: Local`: the ClusterIP jumps to KUBE-SVL-<hash>, which holds only
    /// this node's endpoints (here: all of `endpoints`).
    pub internal_local: bool,
    /// `type: NodePort`: the node port, reached through KUBE-NODEPORTS → KUBE-EXT-<hash>.
    pub node_port: Option<u16>,
}

impl ServiceRules {
    pub fn new(port: ServicePort, endpoints: Vec<SocketAddr>) -> Self {
        Self {
            port,
            endpoints,
            external_ips: Vec::new(),
            internal_local: false,
            node_port: None,
        }
    }

    /// kube-proxy's `usesExternalTrafficChain`: external IPs or a node port.
    fn uses_ext_chain(&self) -> bool {
        !self.external_ips.is_empty() || self.node_port.is_some()
    }
}

impl ServicePort {
    fn chain(&self, prefix: &str) -> String {
        format!("{prefix}{}", hash(&format!("{}tcp", self.name)))
    }
}

/// The `iptables-restore --noflush` input that sets `svc`'s endpoints to `endpoints` and deletes
/// the chains of `stale` endpoints, as one atomic transaction.
pub fn restore_input(
    svc: &ServicePort,
    endpoints: &[SocketAddr],
    stale: &[SocketAddr],
    pod_cidr: &str,
) -> String {
    let all = [ServiceRules::new(svc.clone(), endpoints.to_vec())];
    let stale: Vec<_> = stale.iter().map(|ep| (svc.clone(), *ep)).collect();
    sync_input(&all, &|_| true, &stale, pod_cidr)
}

/// One kube-proxy sync as `iptables-restore --noflush` input. Like kube-proxy since v1.28
/// (minimal partial syncs), KUBE-SERVICES is rewritten with every Service that has endpoints,
/// only the `changed` Services' KUBE-SVC/KUBE-SVL/KUBE-EXT/KUBE-SEP chains are rewritten, and the
/// KUBE-SEP chains of `stale` endpoints are deleted. Declaring a chain (`:NAME - [0:0]`) flushes
/// it, which is how kube-proxy replaces a chain's rules atomically.
pub fn sync_input(
    all: &[ServiceRules],
    changed: &dyn Fn(&ServicePort) -> bool,
    stale: &[(ServicePort, SocketAddr)],
    pod_cidr: &str,
) -> String {
    let mut s = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let rewritten: Vec<&ServiceRules> = all.iter().filter(|r| changed(&r.port)).collect();
    for r in &rewritten {
        for chain in chains_of(r) {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
        for ep in &r.endpoints {
            let _ = writeln!(s, ":{} - [0:0]", r.port.sep_chain(*ep));
        }
    }
    for (svc, ep) in stale {
        let _ = writeln!(s, ":{} - [0:0]", svc.sep_chain(*ep));
    }
    s.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
    for r in all.iter().filter(|r| !r.endpoints.is_empty()) {
        frontend_rules(&mut s, r);
    }
    // The last rule of KUBE-SERVICES: node ports on every local address but loopback (the
    // default without --nodeport-addresses), as iptables-save prints it (ip6tables: ::1/128).
    let loopback = if all.iter().any(|r| r.port.cluster_ip.is_ipv6()) {
        "::1/128"
    } else {
        "127.0.0.0/8"
    };
    let _ = writeln!(
        s,
        "-A KUBE-SERVICES ! -d {loopback} -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    for r in all.iter().filter(|r| !r.endpoints.is_empty()) {
        if let Some(node_port) = r.node_port {
            let _ = writeln!(
                s,
                "-A KUBE-NODEPORTS -p tcp -m comment --comment \"{}\" -m tcp --dport {node_port} -j {}",
                r.port.comment(),
                r.port.chain("KUBE-EXT-")
            );
        }
    }
    for r in rewritten {
        service_rules(&mut s, r, pod_cidr);
    }
    for (svc, ep) in stale {
        let _ = writeln!(s, "-X {}", svc.sep_chain(*ep));
    }
    s.push_str("COMMIT\n");
    s
}

fn chains_of(r: &ServiceRules) -> Vec<String> {
    let mut chains = vec![r.port.svc_chain()];
    if r.internal_local {
        chains.push(r.port.chain("KUBE-SVL-"));
    }
    if r.uses_ext_chain() {
        chains.push(r.port.chain("KUBE-EXT-"));
    }
    chains
}

/// One address as iptables-save prints it: `10.96.0.1/32`, `fd00::1/128`.
fn host(ip: std::net::IpAddr) -> String {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    format!("{ip}/{len}")
}

/// The Service's lines in KUBE-SERVICES: its ClusterIP, then its external IPs.
fn frontend_rules(s: &mut String, r: &ServiceRules) {
    let svc = &r.port;
    let c = svc.comment();
    let cluster_target = if r.internal_local {
        svc.chain("KUBE-SVL-")
    } else {
        svc.svc_chain()
    };
    let _ = writeln!(
        s,
        "-A KUBE-SERVICES -d {} -p tcp -m comment --comment \"{c} cluster IP\" -m tcp --dport {} -j {cluster_target}",
        host(svc.cluster_ip),
        svc.port
    );
    for ip in &r.external_ips {
        let _ = writeln!(
            s,
            "-A KUBE-SERVICES -d {} -p tcp -m comment --comment \"{c} external IP\" -m tcp --dport {} -j {}",
            host(*ip),
            svc.port,
            svc.chain("KUBE-EXT-")
        );
    }
}

/// The Service's own chains: KUBE-SVC (and KUBE-SVL / KUBE-EXT) and one KUBE-SEP per endpoint.
fn service_rules(s: &mut String, r: &ServiceRules, pod_cidr: &str) {
    let svc = &r.port;
    let svc_chain = svc.svc_chain();
    let c = svc.comment();
    if r.endpoints.is_empty() {
        return;
    }
    if r.uses_ext_chain() {
        let ext = svc.chain("KUBE-EXT-");
        let _ = writeln!(
            s,
            "-A {ext} -m comment --comment \"masquerade traffic for {c} external destinations\" -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(s, "-A {ext} -j {svc_chain}");
    }
    let _ = writeln!(
        s,
        "-A {svc_chain} ! -s {pod_cidr} -d {} -p tcp -m comment --comment \"{c} cluster IP\" -m tcp --dport {} -j KUBE-MARK-MASQ",
        host(svc.cluster_ip),
        svc.port
    );
    let mut chains = vec![svc_chain];
    if r.internal_local {
        chains.push(svc.chain("KUBE-SVL-"));
    }
    let n = r.endpoints.len();
    for chain in &chains {
        for (i, ep) in r.endpoints.iter().enumerate() {
            let sep = svc.sep_chain(*ep);
            let remaining = n - i;
            if remaining > 1 {
                let _ = writeln!(
                    s,
                    "-A {chain} -m comment --comment \"{c} -> {ep}\" -m statistic --mode random --probability {:.11} -j {sep}",
                    1.0 / remaining as f64
                );
            } else {
                let _ = writeln!(
                    s,
                    "-A {chain} -m comment --comment \"{c} -> {ep}\" -j {sep}"
                );
            }
        }
    }
    for ep in &r.endpoints {
        let sep = svc.sep_chain(*ep);
        let _ = writeln!(
            s,
            "-A {sep} -s {} -m comment --comment \"{c}\" -j KUBE-MARK-MASQ",
            host(ep.ip())
        );
        let _ = writeln!(
            s,
            "-A {sep} -p tcp -m comment --comment \"{c}\" -m tcp -j DNAT --to-destination {ep}"
        );
    }
}

/// The jumps from the built-in chains, installed once per node.
pub const PORTALS: &str = "*nat\n:KUBE-SERVICES - [0:0]\n\
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
COMMIT\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> ServicePort {
        ServicePort {
            name: "default/web".into(),
            cluster_ip: "10.96.114.246".parse().unwrap(),
            port: 80,
        }
    }

    #[test]
    fn chain_names_match_what_a_real_kube_proxy_wrote() {
        // From tests/fixtures/kube-proxy-v1.36/iptables-nft-nat.save.
        assert_eq!(web().svc_chain(), "KUBE-SVC-LOLE4ISW44XBNF3G");
        assert_eq!(
            web().sep_chain("10.244.0.33:8080".parse().unwrap()),
            "KUBE-SEP-RCM3XMYPKEFQVCJY"
        );
        assert_eq!(
            web().sep_chain("10.244.0.32:8080".parse().unwrap()),
            "KUBE-SEP-SIEMNYXNCUCJBZCA"
        );
    }

    #[test]
    fn rules_are_the_lines_kube_proxy_wrote() {
        let fixture = include_str!("../../tests/fixtures/kube-proxy-v1.36/iptables-nft-nat.save");
        let eps = [
            "10.244.0.32:8080".parse().unwrap(),
            "10.244.0.33:8080".parse().unwrap(),
        ];
        let ours = restore_input(&web(), &eps, &[], "10.244.0.0/16");
        for line in ours.lines().filter(|l| l.starts_with("-A KUBE-S")) {
            assert!(
                fixture.lines().any(|f| f == line),
                "kube-proxy never wrote: {line}"
            );
        }
        // 2 KUBE-SERVICES (the ClusterIP, the node ports), KUBE-SVC (masquerade + 2 endpoints),
        // 2 × KUBE-SEP (masquerade + DNAT).
        assert_eq!(
            ours.lines().filter(|l| l.starts_with("-A KUBE-S")).count(),
            9
        );
    }

    fn cluster(n_services: u8, per_service: u8) -> Vec<ServiceRules> {
        (0..n_services)
            .map(|i| {
                let port = ServicePort {
                    name: format!("ns{i}/svc{i}:http"),
                    cluster_ip: format!("10.96.0.{i}").parse().unwrap(),
                    port: 80,
                };
                let eps = (0..per_service)
                    .map(|j| format!("10.244.{i}.{j}:8080").parse().unwrap())
                    .collect();
                let mut r = ServiceRules::new(port, eps);
                r.external_ips = if i % 3 == 0 {
                    vec![format!("192.0.2.{i}").parse().unwrap()]
                } else {
                    vec![]
                };
                r.internal_local = i % 4 == 1;
                r.node_port = (i % 2 == 0).then_some(30_000 + u16::from(i));
                r
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn what_the_generator_writes_the_parser_reads_back(n in 1u8..12, per in 0u8..6) {
            let all = cluster(n, per);
            let text = sync_input(&all, &|_| true, &[], "10.244.0.0/16");
            let parsed = crate::dataplane::iptables::parse(&text).unwrap();
            let mut expected = std::collections::BTreeSet::new();
            for r in &all {
                let frontends = std::iter::once(r.port.cluster_ip)
                    .chain(r.external_ips.iter().copied())
                    .map(|ip| SocketAddr::new(ip, r.port.port))
                    .chain(r.node_port.map(|p| SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), p)));
                for frontend in frontends {
                    for ep in &r.endpoints {
                        expected.insert((frontend, *ep));
                    }
                }
            }
            let got: std::collections::BTreeSet<_> = parsed.iter().map(|(r, _)| (r.service.0, r.backend.0)).collect();
            proptest::prop_assert_eq!(got, expected);
        }
    }
}
