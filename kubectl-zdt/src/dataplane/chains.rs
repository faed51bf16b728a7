//! The jump graph of a rule set: which chains DNAT to which backends, and which chains jump or
//! go to which others. Both iptables and nftables modes of kube-proxy route a frontend through a
//! few chains (service → endpoint) before the DNAT; a route exists when a DNAT is reachable.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use super::{
    model::{Backend, Backends, Protocol, Route, ServiceAddr, ServiceName, Via},
    source::Family,
};

/// Where kube-proxy's rules start routing one Service frontend: the chain its dispatch
/// (KUBE-SERVICES or KUBE-NODEPORTS rule, `service-ips` or `service-nodeports` element) jumps to.
#[derive(Debug)]
pub struct Frontend<'a> {
    pub service: ServiceAddr,
    pub protocol: Protocol,
    pub chain: &'a str,
    pub label: Label<'a>,
    pub via: Via,
}

/// Where a frontend's Service port name comes from; made into a name only when a route of the
/// frontend is reported (a commit touches a few frontends of thousands).
#[derive(Clone, Copy, Debug)]
pub enum Label<'a> {
    /// An iptables rule's comment (`ns/name:port cluster IP`).
    Comment(&'a str),
    /// An nftables-mode chain name (`service-<hash>-ns/name/tcp/port`).
    Chain(&'a str),
    None,
}

impl Frontend<'_> {
    /// kube-proxy's name for the Service port.
    pub fn name(&self) -> Option<ServiceName> {
        match self.label {
            Label::Comment(c) => Some(name_of_comment(c)),
            Label::Chain(c) => super::nft::service_name(c),
            Label::None => None,
        }
    }
}

/// kube-proxy's iptables-mode dispatch chain: one rule per Service IP and port.
pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
/// Its NodePort dispatch chain, jumped to from the end of KUBE-SERVICES for the node's own
/// addresses: one rule per node port.
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";

/// Chains whose jumps lead toward endpoints (KUBE-XLB is the pre-1.24 name of KUBE-EXT for
/// externalTrafficPolicy Local). Jumps to anything else (KUBE-MARK-MASQ, KUBE-MARK-DROP,
/// RETURN) never DNAT.
pub fn routes_toward_endpoints(chain: &str) -> bool {
    [
        "KUBE-SVC-",
        "KUBE-SVL-",
        "KUBE-EXT-",
        "KUBE-FW-",
        "KUBE-XLB-",
        "KUBE-SEP-",
    ]
    .iter()
    .any(|p| chain.starts_with(p))
}

/// Suffixes kube-proxy appends to the Service port name in KUBE-SERVICES comments.
const FRONTEND_SUFFIXES: &[&str] = &[" cluster IP", " external IP", " loadbalancer IP"];

/// `ns/name:port cluster IP` → `ns/name:port` (KUBE-NODEPORTS comments carry the bare name).
pub fn name_of_comment(comment: &str) -> ServiceName {
    let name = FRONTEND_SUFFIXES
        .iter()
        .find_map(|s| comment.strip_suffix(s))
        .unwrap_or(comment);
    ServiceName::from(name)
}

/// A jump in an iptables-mode chain, as every reader of that mode (the `iptables-save` text, the
/// nf_tables mirror, the x_tables blob) sees it: enough to find kube-proxy's frontends.
#[derive(Clone, Copy, Debug)]
pub struct DispatchRule<'a> {
    pub chain: &'a str,
    /// `-d <ip>/32` (or /128), not negated.
    pub daddr: Option<IpAddr>,
    /// `-p <proto>`, not negated.
    pub protocol: Option<Protocol>,
    /// `--dport <port>` (a single port, not negated).
    pub dport: Option<u16>,
    pub target: &'a str,
    pub comment: Option<&'a str>,
}

/// The frontends of kube-proxy's iptables mode (pkg/proxy/iptables/proxier.go):
/// - `-A KUBE-SERVICES -d <IP> -p <proto> --dport <port> -j KUBE-SVC|SVL|EXT|FW-<hash>` for
///   ClusterIPs, external and load-balancer IPs;
/// - `-A KUBE-NODEPORTS -p <proto> --dport <nodePort> -j KUBE-EXT-<hash>` (KUBE-SVC / KUBE-XLB
///   before v1.24), reached from the last rule of KUBE-SERVICES: `-m addrtype --dst-type LOCAL`
///   (every local address but loopback; reported as the unspecified address) or, with
///   `--nodeport-addresses`, one `-d <nodeIP> -j KUBE-NODEPORTS` rule per address.
pub fn frontends<'a>(rules: &[DispatchRule<'a>], family: Family) -> Vec<Frontend<'a>> {
    let any: IpAddr = match family {
        Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
        Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
    };
    let mut nodeport_addrs: Vec<IpAddr> = Vec::new();
    for r in rules
        .iter()
        .filter(|r| r.chain == KUBE_SERVICES && r.target == KUBE_NODEPORTS)
    {
        let addr = r.daddr.unwrap_or(any);
        if !nodeport_addrs.contains(&addr) {
            nodeport_addrs.push(addr);
        }
    }
    let mut out = Vec::new();
    for r in rules.iter().filter(|r| routes_toward_endpoints(r.target)) {
        let (Some(protocol), Some(port)) = (r.protocol, r.dport) else {
            continue;
        };
        let label = r.comment.map_or(Label::None, Label::Comment);
        match r.chain {
            KUBE_SERVICES => {
                if let Some(ip) = r.daddr {
                    out.push(Frontend {
                        service: ServiceAddr(SocketAddr::new(ip, port)),
                        protocol,
                        chain: r.target,
                        label,
                        via: Via::ServiceIp,
                    });
                }
            }
            KUBE_NODEPORTS => {
                for ip in &nodeport_addrs {
                    out.push(Frontend {
                        service: ServiceAddr(SocketAddr::new(*ip, port)),
                        protocol,
                        chain: r.target,
                        label,
                        via: Via::NodePort,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// Chains of one rule set, borrowed from the parsed dump.
#[derive(Debug, Default)]
pub struct ChainGraph<'a> {
    dnat: HashMap<&'a str, Vec<SocketAddr>>,
    next: HashMap<&'a str, Vec<&'a str>>,
}

impl<'a> ChainGraph<'a> {
    pub fn add_dnat(&mut self, chain: &'a str, backend: SocketAddr) {
        self.dnat.entry(chain).or_default().push(backend);
    }

    pub fn add_jump(&mut self, chain: &'a str, target: &'a str) {
        self.next.entry(chain).or_default().push(target);
    }

    /// The routes of `frontends`: one per DNAT reachable from each frontend's chain.
    pub fn routes(&self, frontends: impl IntoIterator<Item = Frontend<'a>>) -> Backends {
        let mut backends = Backends::new();
        for f in frontends {
            for backend in self.reachable_dnats(f.chain) {
                let route = Route {
                    service: f.service,
                    protocol: f.protocol,
                    backend: Backend(backend),
                    via: f.via,
                };
                backends.insert(route, f.name());
            }
        }
        backends
    }

    /// The chains reachable from `start` (itself included).
    pub fn reachable_chains(&self, start: &'a str) -> Vec<&'a str> {
        // A handful of chains per frontend: a vector beats hashing here (this runs for every
        // frontend on every commit).
        let mut seen: Vec<&str> = Vec::new();
        let mut stack = vec![start];
        while let Some(chain) = stack.pop() {
            if seen.contains(&chain) {
                continue;
            }
            seen.push(chain);
            if let Some(next) = self.next.get(chain) {
                stack.extend(next.iter().copied());
            }
        }
        seen
    }

    /// The DNAT destinations reachable from `start`. kube-proxy's chains are at most three deep
    /// (external → service → endpoint); the visited set also stops cycles in hand-made rules.
    pub fn reachable_dnats(&self, start: &'a str) -> Vec<SocketAddr> {
        self.reachable_chains(start)
            .into_iter()
            .filter_map(|c| self.dnat.get(c))
            .flatten()
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_balancer_ip_reaches_the_endpoints_through_ext_and_svc_chains() {
        let mut g = ChainGraph::default();
        g.add_jump("KUBE-EXT-A", "KUBE-MARK-MASQ");
        g.add_jump("KUBE-EXT-A", "KUBE-SVC-A");
        g.add_jump("KUBE-SVC-A", "KUBE-SEP-1");
        g.add_jump("KUBE-SVC-A", "KUBE-SEP-2");
        g.add_dnat("KUBE-SEP-1", "10.244.0.1:80".parse().unwrap());
        g.add_dnat("KUBE-SEP-2", "10.244.0.2:80".parse().unwrap());
        let mut got = g.reachable_dnats("KUBE-EXT-A");
        got.sort();
        assert_eq!(
            got,
            [
                "10.244.0.1:80".parse().unwrap(),
                "10.244.0.2:80".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_jump_cycle_ends() {
        let mut g = ChainGraph::default();
        g.add_jump("A", "B");
        g.add_jump("B", "A");
        g.add_dnat("B", "10.0.0.1:1".parse().unwrap());
        assert_eq!(g.reachable_dnats("A").len(), 1);
    }
}
