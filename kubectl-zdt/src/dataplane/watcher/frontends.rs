//! What the dataplane routes now, published for the rest of the node: the backends (read by
//! the conntrack listener to filter flows) and the frontends (for telling a client's error
//! toward a Service from one toward a pod).

use std::sync::{Arc, RwLock};

use crate::dataplane::model::{Route, Via};

/// The backends any dataplane of this node routes to now; read by the conntrack watcher to
/// filter flows.
pub type Watched = Arc<RwLock<std::collections::HashSet<crate::dataplane::model::Backend>>>;

/// The Service frontends (ClusterIP:port, NodeIP:nodePort, …) this node's dataplane routes,
/// for telling a client's error toward a Service from one toward a pod. Node ports that match
/// every local address are listed once per local address of the node.
pub type Frontends = Arc<RwLock<FrontendSet>>;

/// How long a frontend the dataplane stopped routing still counts as one: a client's error is
/// read a moment after it happened, and when its Service lost its last endpoint meanwhile (the
/// pod exited with the connection open), the frontend was already gone from the rules.
pub const FRONTEND_RETAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// The frontends routed now, and those routed until recently ([`FRONTEND_RETAIN`]).
#[derive(Debug, Default)]
pub struct FrontendSet {
    live: std::collections::HashSet<std::net::SocketAddr>,
    retired: std::collections::HashMap<std::net::SocketAddr, std::time::Instant>,
}

impl FrontendSet {
    /// Whether `addr` is a frontend now or was one within [`FRONTEND_RETAIN`].
    pub fn contains(&self, addr: &std::net::SocketAddr) -> bool {
        self.contains_at(addr, std::time::Instant::now())
    }

    fn contains_at(&self, addr: &std::net::SocketAddr, now: std::time::Instant) -> bool {
        self.live.contains(addr)
            || self
                .retired
                .get(addr)
                .is_some_and(|&t| now.saturating_duration_since(t) < FRONTEND_RETAIN)
    }

    /// Replaces the routed frontends by `now_live`, retiring the ones that left at `at`.
    pub fn publish(
        &mut self,
        now_live: std::collections::HashSet<std::net::SocketAddr>,
        at: std::time::Instant,
    ) {
        for gone in self.live.difference(&now_live) {
            self.retired.insert(*gone, at);
        }
        self.retired.retain(|addr, t| {
            !now_live.contains(addr) && at.saturating_duration_since(*t) < FRONTEND_RETAIN
        });
        self.live = now_live;
    }
}

/// Publishes the backends (for the conntrack listener) and the frontends (for client errors)
/// of the routes `routes()` lists.
pub(super) fn publish<'a, I: Iterator<Item = &'a Route>>(
    watched: &Watched,
    frontends: &Frontends,
    routes: impl Fn() -> I,
) {
    let set = routes().map(|r| r.backend).collect();
    if let Ok(mut w) = watched.write() {
        *w = set;
    }
    let set = frontend_addrs(routes(), &local_addresses());
    if let Ok(mut f) = frontends.write() {
        f.publish(set, std::time::Instant::now());
    }
}

/// The addresses clients dial to reach the routes' frontends: a node port that matches every
/// local address (unspecified) stands for each of `local` of its family.
fn frontend_addrs<'a>(
    routes: impl Iterator<Item = &'a Route>,
    local: &[std::net::IpAddr],
) -> std::collections::HashSet<std::net::SocketAddr> {
    let mut set = std::collections::HashSet::new();
    for r in routes {
        let addr = r.service.0;
        if r.via == Via::NodePort && addr.ip().is_unspecified() {
            set.extend(
                local
                    .iter()
                    .filter(|ip| ip.is_ipv4() == addr.is_ipv4())
                    .map(|ip| std::net::SocketAddr::new(*ip, addr.port())),
            );
        } else {
            set.insert(addr);
        }
    }
    set
}

/// The addresses of this network namespace's interfaces, loopback excluded (kube-proxy's
/// default node-port rule matches `--dst-type LOCAL` but not 127.0.0.0/8).
pub fn local_addresses() -> Vec<std::net::IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|a| {
                let sa = a.address?;
                let ip: std::net::IpAddr = if let Some(v4) = sa.as_sockaddr_in() {
                    v4.ip().into()
                } else {
                    sa.as_sockaddr_in6()?.ip().into()
                };
                (!ip.is_loopback()).then_some(ip)
            })
            .collect(),
        Err(e) => {
            tracing::warn!("cannot list the node's addresses for node ports: {e}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod frontend_tests {
    use super::*;

    #[test]
    fn a_frontend_whose_last_endpoint_just_went_still_names_its_service_for_a_while() {
        let addr: std::net::SocketAddr = "198.19.0.10:80".parse().unwrap();
        let t0 = std::time::Instant::now();
        let mut set = FrontendSet::default();
        set.publish([addr].into_iter().collect(), t0);
        assert!(set.contains_at(&addr, t0));
        // kube-proxy removed the Service's rules (no endpoint left) a moment before the
        // client's ECONNRESET was read.
        set.publish(std::collections::HashSet::new(), t0);
        assert!(set.contains_at(&addr, t0 + std::time::Duration::from_millis(200)));
        assert!(!set.contains_at(&addr, t0 + FRONTEND_RETAIN));
        assert!(!set.contains_at(&"198.19.0.11:80".parse().unwrap(), t0));
        // Routed again: live, no longer retired; gone for good after the retention.
        set.publish([addr].into_iter().collect(), t0 + FRONTEND_RETAIN);
        assert!(set.retired.is_empty());
        set.publish(std::collections::HashSet::new(), t0 + FRONTEND_RETAIN * 2);
        set.publish(std::collections::HashSet::new(), t0 + FRONTEND_RETAIN * 4);
        assert!(set.retired.is_empty(), "pruned after the retention");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::model::{Backend, Protocol, ServiceAddr};

    fn route(service: &str, via: Via) -> Route {
        Route {
            service: ServiceAddr(service.parse().unwrap()),
            protocol: Protocol::Tcp,
            backend: Backend("10.244.0.5:8080".parse().unwrap()),
            via,
        }
    }

    #[test]
    fn a_node_port_on_every_local_address_is_dialled_on_each_of_them() {
        let routes = [
            route("10.96.0.10:80", Via::ServiceIp),
            route("0.0.0.0:30080", Via::NodePort),
            route("[::]:30443", Via::NodePort),
            route("192.0.2.9:30081", Via::NodePort),
        ];
        let local: Vec<std::net::IpAddr> = ["192.0.2.2", "10.244.0.1", "fd00::2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let mut got: Vec<String> = frontend_addrs(routes.iter(), &local)
            .iter()
            .map(ToString::to_string)
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                "10.244.0.1:30080",
                "10.96.0.10:80",
                "192.0.2.2:30080",
                "192.0.2.9:30081",
                "[fd00::2]:30443",
            ]
        );
    }
}
