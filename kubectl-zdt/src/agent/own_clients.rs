//! Which clients are this node's. The probes see every socket of the kernel; nodes that share
//! one kernel (kind, or several kubelets on one machine) would each report every client's
//! failure toward a Service, once per node. A client is this node's when its address (the
//! source of its connection, before any NAT) is one of the node's own addresses or the address
//! of a pod of this node: another node's pods and host have addresses of their own.

use std::{
    collections::HashSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::pods::PodIndex;
use crate::observation::{Kind, Observation};

/// How often, at most, an unknown client address makes the agent list the node's addresses
/// again (an address added to the node since the last read).
pub const RELIST: Duration = Duration::from_secs(5);

/// The node's own addresses (the agent runs in the node's network namespace: hostNetwork).
pub struct NodeAddresses {
    list: Box<dyn FnMut() -> Vec<IpAddr> + Send>,
    known: HashSet<IpAddr>,
    listed: Option<Instant>,
}

impl NodeAddresses {
    /// The addresses of this network namespace's interfaces.
    pub fn of_this_namespace() -> Self {
        Self::new(Box::new(crate::dataplane::watcher::local_addresses))
    }

    /// Addresses listed by `list` (for tests).
    pub fn new(list: Box<dyn FnMut() -> Vec<IpAddr> + Send>) -> Self {
        Self {
            list,
            known: HashSet::new(),
            listed: None,
        }
    }

    /// Whether `ip` is an address of the node, as of `now`. When the node's addresses cannot be
    /// listed every address is taken for the node's: nothing is left out on a guess.
    pub fn contains(&mut self, ip: IpAddr, now: Instant) -> bool {
        if ip.is_loopback() || self.known.contains(&ip) {
            return true;
        }
        if self.listed.is_none_or(|t| now.duration_since(t) >= RELIST) {
            self.known = (self.list)().into_iter().collect();
            self.listed = Some(now);
        }
        self.known.is_empty() || self.known.contains(&ip)
    }
}

/// A client's failure (conn_error, syn_retransmit: the client's side of a connection) whose
/// client address is neither the node's nor one of its pods': another node's client, which that
/// node's agent reports. Judged only once the API watch listed this node's pods.
pub fn of_another_node(o: &Observation, index: &PodIndex, node: &mut NodeAddresses) -> bool {
    if !matches!(o.kind, Kind::ConnError | Kind::SynRetransmit) || index.is_empty() {
        return false;
    }
    o.peer_ip
        .is_some_and(|client| !index.holds(client) && !node.contains(client, Instant::now()))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use jiff::Timestamp;

    use super::*;
    use crate::observation::NodeName;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_node_address_added_later_is_found_at_the_next_listing_not_before() {
        let addrs = Arc::new(Mutex::new(vec![ip("192.0.2.2"), ip("198.18.0.1")]));
        let shared = addrs.clone();
        let mut node = NodeAddresses::new(Box::new(move || shared.lock().unwrap().clone()));
        let t0 = Instant::now();
        assert!(node.contains(ip("192.0.2.2"), t0));
        assert!(node.contains(ip("127.0.0.1"), t0), "loopback");
        assert!(!node.contains(ip("198.18.1.1"), t0));
        addrs.lock().unwrap().push(ip("198.18.1.1"));
        assert!(!node.contains(ip("198.18.1.1"), t0 + RELIST / 2));
        assert!(node.contains(ip("198.18.1.1"), t0 + RELIST));
        let mut unlisted = NodeAddresses::new(Box::new(Vec::new));
        assert!(unlisted.contains(ip("198.18.1.1"), t0), "no list, no guess");
    }

    #[test]
    fn only_a_client_of_this_node_or_its_pods_is_reported_once_the_pods_are_known() {
        let mut node = NodeAddresses::new(Box::new(|| vec![ip("198.18.0.1")]));
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        let failure = |kind, client: &str| {
            let mut o = Observation::new(kind, at, NodeName("vm".into()));
            o.ip = Some(ip("198.18.0.26"));
            o.peer_ip = Some(ip(client));
            o
        };
        let mut index = PodIndex::new(Duration::from_secs(600));
        // The API watch has not listed this node's pods yet: nothing is judged.
        assert!(!of_another_node(
            &failure(Kind::ConnError, "198.18.1.1"),
            &index,
            &mut node
        ));
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "client", "namespace": "default", "uid": "uid-client"},
            "status": {"podIPs": [{"ip": "198.18.0.30"}]},
        }))
        .unwrap();
        index.apply(&pod, at);
        for kind in [Kind::ConnError, Kind::SynRetransmit] {
            assert!(
                !of_another_node(&failure(kind, "198.18.0.1"), &index, &mut node),
                "the node's"
            );
            assert!(
                !of_another_node(&failure(kind, "198.18.0.30"), &index, &mut node),
                "a pod's"
            );
            assert!(
                of_another_node(&failure(kind, "198.18.1.1"), &index, &mut node),
                "another node's"
            );
        }
        // A server's side (a refusal) is the pod's, whoever dialled it.
        assert!(!of_another_node(
            &failure(Kind::Refused, "198.18.1.1"),
            &index,
            &mut node
        ));
    }
}
