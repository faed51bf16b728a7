//! kube-proxy's iptables-mode rule shapes, written the way kube-proxy v1.3x writes them
//! (pkg/proxy/iptables/proxier.go): KUBE-SERVICES → KUBE-SVC-<hash> → KUBE-SEP-<hash> with
//! `statistic --mode random --probability` and DNAT, applied with `iptables-restore --noflush`.
//! The chain-name hashes match ../shared/fixtures/kube-proxy-v1.36 (see the tests).

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

/// The `iptables-restore --noflush` input that sets `svc`'s endpoints to `endpoints` and deletes
/// the chains of `stale` endpoints, as one atomic transaction.
pub fn restore_input(
    svc: &ServicePort,
    endpoints: &[SocketAddr],
    stale: &[SocketAddr],
    pod_cidr: &str,
) -> String {
    let svc_chain = svc.svc_chain();
    let c = svc.comment();
    let mut s = String::from("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    let _ = writeln!(s, ":{svc_chain} - [0:0]");
    for ep in endpoints.iter().chain(stale) {
        let _ = writeln!(s, ":{} - [0:0]", svc.sep_chain(*ep));
    }
    s.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
    let _ = writeln!(
        s,
        "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{c} cluster IP\" -m tcp --dport {} -j {svc_chain}",
        svc.cluster_ip, svc.port
    );
    let _ = writeln!(
        s,
        "-A {svc_chain} ! -s {pod_cidr} -d {}/32 -p tcp -m comment --comment \"{c} cluster IP\" -m tcp --dport {} -j KUBE-MARK-MASQ",
        svc.cluster_ip, svc.port
    );
    let n = endpoints.len();
    for (i, ep) in endpoints.iter().enumerate() {
        let sep = svc.sep_chain(*ep);
        let remaining = n - i;
        if remaining > 1 {
            let _ = writeln!(
                s,
                "-A {svc_chain} -m comment --comment \"{c} -> {ep}\" -m statistic --mode random --probability {:.11} -j {sep}",
                1.0 / remaining as f64
            );
        } else {
            let _ = writeln!(
                s,
                "-A {svc_chain} -m comment --comment \"{c} -> {ep}\" -j {sep}"
            );
        }
    }
    for ep in endpoints {
        let sep = svc.sep_chain(*ep);
        let _ = writeln!(
            s,
            "-A {sep} -s {}/32 -m comment --comment \"{c}\" -j KUBE-MARK-MASQ",
            ep.ip()
        );
        let _ = writeln!(
            s,
            "-A {sep} -p tcp -m comment --comment \"{c}\" -m tcp -j DNAT --to-destination {ep}"
        );
    }
    for ep in stale {
        let _ = writeln!(s, "-X {}", svc.sep_chain(*ep));
    }
    s.push_str("COMMIT\n");
    s
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
        // From ../shared/fixtures/kube-proxy-v1.36/iptables-nft-nat.save.
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
        assert_eq!(
            ours.lines().filter(|l| l.starts_with("-A KUBE-S")).count(),
            8
        );
    }
}
