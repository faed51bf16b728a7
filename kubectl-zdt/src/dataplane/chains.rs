//! The jump graph of a rule set: which chains DNAT to which backends, and which chains jump or
//! go to which others. Both iptables and nftables modes of kube-proxy route a frontend through a
//! few chains (service → endpoint) before the DNAT; a route exists when a DNAT is reachable.

use std::{collections::HashMap, net::SocketAddr};

use super::model::{Backend, Backends, Protocol, Route, ServiceAddr, ServiceName};

/// Where kube-proxy's rules start routing one Service frontend: the chain its dispatch
/// (KUBE-SERVICES rule, `service-ips` element) jumps to.
#[derive(Debug)]
pub struct Frontend<'a> {
    pub service: ServiceAddr,
    pub protocol: Protocol,
    pub chain: &'a str,
    pub name: Option<ServiceName>,
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
                };
                backends.insert(route, f.name.clone());
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
