//! The pure model: which (Service frontend → backend) routes a node's dataplane holds, and the
//! difference between two such states.
//!
//! A route is what kube-proxy programs per Service port and endpoint: traffic to the frontend
//! (ClusterIP, external or load-balancer IP, and port) is DNAT'ed to the backend (pod IP and
//! target port). Everything else kube-proxy writes (chain hashes, probabilities, masquerade marks,
//! rule handles) can change on a resync without changing where new connections go, so it is not
//! part of the model: a rewrite that keeps the routes is no change.

use std::{
    collections::{BTreeMap, btree_map},
    fmt,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

/// Where a Service is reached: ClusterIP (or external / load-balancer IP) and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceAddr(pub SocketAddr);

/// Where the dataplane sends a new connection: pod IP and target port (the DNAT destination).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend(pub SocketAddr);

impl fmt::Display for ServiceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The L4 protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the names iptables and nft print (`tcp`, `udp`, `sctp`, any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Self::Tcp),
            "udp" => Some(Self::Udp),
            "sctp" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// From an IP protocol number (IPPROTO_TCP 6, IPPROTO_UDP 17, IPPROTO_SCTP 132).
    pub fn from_number(n: u16) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            132 => Some(Self::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// How a frontend is reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Via {
    /// A Service IP: ClusterIP, external IP or load-balancer IP (KUBE-SERVICES, `service-ips`).
    #[default]
    ServiceIp,
    /// A node port (KUBE-NODEPORTS, `service-nodeports`): the address is one the node accepts
    /// NodePort traffic on, or unspecified (`0.0.0.0` / `::`) for every local address, which is
    /// what kube-proxy's iptables mode matches by default (`-m addrtype --dst-type LOCAL`).
    NodePort,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceIp => "service_ip",
            Self::NodePort => "nodeport",
        }
    }
}

/// One route: new `protocol` connections to `service` go (with some probability) to `backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub service: ServiceAddr,
    pub protocol: Protocol,
    pub backend: Backend,
    pub via: Via,
}

/// kube-proxy's name for the Service port (`namespace/name` or `namespace/name:port`), when the
/// rules carry it. Shared by all routes of the Service.
pub type ServiceName = Arc<str>;

/// The routes one dataplane holds, with the Service port name when known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backends {
    routes: BTreeMap<Route, Option<ServiceName>>,
}

impl Backends {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, route: Route, name: Option<ServiceName>) {
        self.routes.insert(route, name);
    }

    pub fn remove(&mut self, route: &Route) {
        self.routes.remove(route);
    }

    /// Makes `backends` the only ones `service` routes `protocol` connections to when reached
    /// `via` (new routes without a name), and returns what changed.
    pub fn set_backends(
        &mut self,
        service: ServiceAddr,
        protocol: Protocol,
        via: Via,
        backends: &[Backend],
    ) -> Change {
        let route = |backend| Route {
            service,
            protocol,
            backend,
            via,
        };
        let old = self.backends_of(service, protocol, via);
        let mut change = Change::default();
        for b in &old {
            if !backends.contains(b) {
                let r = route(*b);
                let name = self.routes.remove(&r).flatten();
                change.removed.push(RouteChange { route: r, name });
            }
        }
        for b in backends {
            if let btree_map::Entry::Vacant(e) = self.routes.entry(route(*b)) {
                e.insert(None);
                change.added.push(RouteChange {
                    route: route(*b),
                    name: None,
                });
            }
        }
        change
    }

    /// The backends `service` routes `protocol` connections to when reached `via`.
    pub fn backends_of(&self, service: ServiceAddr, protocol: Protocol, via: Via) -> Vec<Backend> {
        let lo = Route {
            service,
            protocol,
            backend: Backend(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)),
            via: Via::ServiceIp,
        };
        let hi = Route {
            service,
            protocol,
            backend: Backend(SocketAddr::new(
                std::net::Ipv6Addr::from(u128::MAX).into(),
                u16::MAX,
            )),
            via: Via::NodePort,
        };
        self.routes
            .range(lo..=hi)
            .filter(|(r, _)| r.via == via)
            .map(|(r, _)| r.backend)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn contains(&self, route: &Route) -> bool {
        self.routes.contains_key(route)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Route, Option<&ServiceName>)> {
        self.routes.iter().map(|(r, n)| (r, n.as_ref()))
    }

    /// Is `backend` the destination of any route? (Used to filter conntrack events.)
    pub fn routes_to(&self, backend: Backend) -> bool {
        self.routes.keys().any(|r| r.backend == backend)
    }

    /// One line per route, `frontend proto -> backend (name)` (`nodeport frontend …` for node
    /// ports), for messages and tests.
    pub fn describe(&self) -> Vec<String> {
        self.iter()
            .map(|(r, n)| {
                format!(
                    "{}{} {} -> {} ({})",
                    if r.via == Via::NodePort {
                        "nodeport "
                    } else {
                        ""
                    },
                    r.service,
                    r.protocol.as_str(),
                    r.backend,
                    n.map_or("-", |n| &**n)
                )
            })
            .collect()
    }

    /// What changed from `self` to `next`, in route order. Linear in the size of both.
    pub fn diff(&self, next: &Backends) -> Change {
        let mut change = Change::default();
        let mut old = self.routes.iter().peekable();
        let mut new = next.routes.iter().peekable();
        loop {
            match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(_), None) => change.removed.push(entry(old.next())),
                (None, Some(_)) => change.added.push(entry(new.next())),
                (Some((a, _)), Some((b, _))) => match a.cmp(b) {
                    std::cmp::Ordering::Less => change.removed.push(entry(old.next())),
                    std::cmp::Ordering::Greater => change.added.push(entry(new.next())),
                    std::cmp::Ordering::Equal => {
                        old.next();
                        new.next();
                    }
                },
            }
        }
        change
    }
}

fn entry(e: Option<(&Route, &Option<ServiceName>)>) -> RouteChange {
    // Only called after a successful peek.
    let (route, name) = e.expect("peeked entry exists");
    RouteChange {
        route: *route,
        name: name.clone(),
    }
}

impl FromIterator<(Route, Option<ServiceName>)> for Backends {
    fn from_iter<I: IntoIterator<Item = (Route, Option<ServiceName>)>>(iter: I) -> Self {
        Self {
            routes: iter.into_iter().collect(),
        }
    }
}

impl IntoIterator for Backends {
    type Item = (Route, Option<ServiceName>);
    type IntoIter = btree_map::IntoIter<Route, Option<ServiceName>>;
    fn into_iter(self) -> Self::IntoIter {
        self.routes.into_iter()
    }
}

/// One route that appeared or disappeared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteChange {
    pub route: Route,
    pub name: Option<ServiceName>,
}

/// The difference between two states of a dataplane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<RouteChange>,
    pub removed: Vec<RouteChange>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(svc: &str, backend: &str) -> Route {
        Route {
            service: ServiceAddr(svc.parse().unwrap()),
            protocol: Protocol::Tcp,
            backend: Backend(backend.parse().unwrap()),
            via: Via::ServiceIp,
        }
    }

    fn state(routes: &[(&str, &str)]) -> Backends {
        routes
            .iter()
            .map(|(s, b)| (route(s, b), Some(ServiceName::from("default/web"))))
            .collect()
    }

    #[test]
    fn a_rollout_step_removes_the_old_pod_and_adds_the_new_one() {
        let before = state(&[
            ("10.96.114.246:80", "10.244.0.36:8080"),
            ("10.96.114.246:80", "10.244.0.37:8080"),
            ("10.96.0.1:443", "192.0.2.2:6443"),
        ]);
        let after = state(&[
            ("10.96.114.246:80", "10.244.0.37:8080"),
            ("10.96.114.246:80", "10.244.0.38:8080"),
            ("10.96.0.1:443", "192.0.2.2:6443"),
        ]);
        let change = before.diff(&after);
        let removed: Vec<_> = change.removed.iter().map(|c| c.route).collect();
        let added: Vec<_> = change.added.iter().map(|c| c.route).collect();
        assert_eq!(removed, [route("10.96.114.246:80", "10.244.0.36:8080")]);
        assert_eq!(added, [route("10.96.114.246:80", "10.244.0.38:8080")]);
    }

    #[test]
    fn a_resync_that_renames_nothing_routable_is_no_change() {
        let a = state(&[("10.96.114.246:80", "10.244.0.36:8080")]);
        let mut b = Backends::new();
        // Same route, the name is only a label.
        b.insert(route("10.96.114.246:80", "10.244.0.36:8080"), None);
        assert!(a.diff(&b).is_empty());
    }

    #[test]
    fn backends_of_a_service_are_found_among_others() {
        let b = state(&[
            ("10.96.0.10:53", "10.244.0.5:53"),
            ("10.96.0.10:53", "[fd00::5]:53"),
            ("10.96.0.11:53", "10.244.0.6:53"),
        ]);
        let svc = ServiceAddr("10.96.0.10:53".parse().unwrap());
        let got: Vec<String> = b
            .backends_of(svc, Protocol::Tcp, Via::ServiceIp)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["10.244.0.5:53", "[fd00::5]:53"]);
        assert!(b.backends_of(svc, Protocol::Udp, Via::ServiceIp).is_empty());
        assert!(b.backends_of(svc, Protocol::Tcp, Via::NodePort).is_empty());
    }

    #[test]
    fn the_same_backend_behind_two_services_is_two_routes() {
        let before = state(&[
            ("10.96.0.10:53", "10.244.0.5:53"),
            ("10.96.0.11:53", "10.244.0.5:53"),
        ]);
        let after = state(&[("10.96.0.11:53", "10.244.0.5:53")]);
        let change = before.diff(&after);
        assert_eq!(change.removed.len(), 1);
        assert_eq!(change.removed[0].route.service.to_string(), "10.96.0.10:53");
        assert!(change.added.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn diff_applied_to_the_old_state_gives_the_new_one(
            old in proptest::collection::btree_set((0u8..20, 0u8..20), 0..40),
            new in proptest::collection::btree_set((0u8..20, 0u8..20), 0..40),
        ) {
            let mk = |set: &std::collections::BTreeSet<(u8, u8)>| -> Backends {
                set.iter()
                    .map(|(s, b)| (route(&format!("10.96.0.{s}:80"), &format!("10.244.0.{b}:8080")), None))
                    .collect()
            };
            let (a, b) = (mk(&old), mk(&new));
            let change = a.diff(&b);
            let mut routes: std::collections::BTreeSet<Route> = a.iter().map(|(r, _)| *r).collect();
            for c in &change.removed {
                proptest::prop_assert!(routes.remove(&c.route));
            }
            for c in &change.added {
                proptest::prop_assert!(routes.insert(c.route));
            }
            let expected: std::collections::BTreeSet<Route> = b.iter().map(|(r, _)| *r).collect();
            proptest::prop_assert_eq!(routes, expected);
        }
    }
}
