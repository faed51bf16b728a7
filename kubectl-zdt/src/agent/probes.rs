//! Connections from the node's own kubelet: readiness, liveness and startup probes. When a pod
//! stops listening its probes are refused like any client, but no client saw those errors: they
//! are tagged `"probe": "kubelet"` and counted apart (docs/observations.md).
//!
//! The kubelet runs in the node's network namespace and dials the pod's own address and the
//! probed port; a client of a Service dials the ClusterIP, which kube-proxy translates. So an
//! error is a probe's when its client is one of the node's own addresses, its port is one the
//! pod spec probes, and the connection was not address-translated: on the client side (the
//! kubelet's socket, `conn_error`) it dialled the pod itself (no `service`); on the pod side
//! (`refused`, `reset`) conntrack has the connection, original direction, as client → pod
//! untranslated. A client on the node dialling the pod's address and probed port directly is
//! taken for a probe too.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use super::{conntrack::Conntrack, pods::PodIndex};
use crate::observation::{Kind, Observation};

/// How often the node's own addresses are read again when an unknown one shows up (the CNI
/// bridge appears with the first pod).
const ADDRESSES_REFRESH: Duration = Duration::from_secs(5);

/// What decides whether an error is a kubelet probe's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evidence {
    pub kind: Kind,
    /// The client side is one of the node's own addresses.
    pub client_is_node: bool,
    /// The pod spec probes this port.
    pub probed_port: bool,
    /// The client dialled a Service (`service` set).
    pub via_service: bool,
}

/// Whether the error is a probe's; `untranslated` asks conntrack (pod-side lines only).
pub fn is_probe(e: Evidence, untranslated: impl FnOnce() -> Option<bool>) -> bool {
    if !e.client_is_node || !e.probed_port || e.via_service {
        return false;
    }
    match e.kind {
        Kind::ConnError => true,
        Kind::Refused | Kind::Reset => untranslated() == Some(true),
        _ => false,
    }
}

/// Tags the kubelet's probes among the observations of this node's pods.
pub struct KubeletProbes {
    addresses: HashSet<IpAddr>,
    read_at: Option<Instant>,
    conntrack: Option<Conntrack>,
}

impl Default for KubeletProbes {
    fn default() -> Self {
        Self::new()
    }
}

impl KubeletProbes {
    pub fn new() -> Self {
        let conntrack = Conntrack::open()
            .inspect_err(|e| {
                tracing::warn!(
                    "kubelet probes refused on a pod's side will count as client errors: conntrack query socket: {e}"
                );
            })
            .ok();
        Self {
            addresses: HashSet::new(),
            read_at: None,
            conntrack,
        }
    }

    fn is_node_address(&mut self, ip: IpAddr) -> bool {
        if self.addresses.contains(&ip) {
            return true;
        }
        if self
            .read_at
            .is_none_or(|t| t.elapsed() >= ADDRESSES_REFRESH)
        {
            self.read_at = Some(Instant::now());
            match nix::ifaddrs::getifaddrs() {
                Ok(ifs) => {
                    self.addresses = ifs
                        .filter_map(|i| i.address)
                        .filter_map(|a| {
                            a.as_sockaddr_in()
                                .map(|s| IpAddr::V4(s.ip()))
                                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
                        })
                        .collect();
                }
                Err(e) => tracing::debug!("cannot read the node's addresses: {e}"),
            }
        }
        self.addresses.contains(&ip)
    }

    /// Adds `"probe": "kubelet"` to `o` when it is a probe's error (`o` already attributed).
    pub fn tag(&mut self, o: &mut Observation, pods: &PodIndex) {
        if !matches!(o.kind, Kind::Refused | Kind::Reset | Kind::ConnError) {
            return;
        }
        let (Some(uid), Some(ip), Some(port), Some(peer_ip), Some(peer_port)) =
            (o.pod_uid.as_deref(), o.ip, o.port, o.peer_ip, o.peer_port)
        else {
            return;
        };
        let evidence = Evidence {
            kind: o.kind,
            client_is_node: self.is_node_address(peer_ip),
            probed_port: pods.probes_port(uid, port),
            via_service: o.service.is_some(),
        };
        let conntrack = &mut self.conntrack;
        let untranslated = || {
            conntrack.as_mut()?.untranslated(
                SocketAddr::new(peer_ip, peer_port),
                SocketAddr::new(ip, port),
            )
        };
        if is_probe(evidence, untranslated) {
            o.details.kernel_mut().probe = Some("kubelet".to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(kind: Kind) -> Evidence {
        Evidence {
            kind,
            client_is_node: true,
            probed_port: true,
            via_service: false,
        }
    }

    #[test]
    fn a_refusal_of_the_kubelets_untranslated_connection_to_a_probed_port_is_a_probe() {
        assert!(is_probe(evidence(Kind::Refused), || Some(true)));
        assert!(is_probe(evidence(Kind::ConnError), || None));
    }

    #[test]
    fn a_node_client_of_the_service_is_no_probe_though_it_shares_the_nodes_address() {
        // Its connection is known to conntrack by the ClusterIP: client → pod is not found.
        assert!(!is_probe(evidence(Kind::Refused), || None));
        // Translated: the pod-side tuple is the reply direction of a ClusterIP connection.
        assert!(!is_probe(evidence(Kind::Refused), || Some(false)));
        let service = Evidence {
            via_service: true,
            ..evidence(Kind::ConnError)
        };
        assert!(!is_probe(service, || Some(true)));
    }

    #[test]
    fn other_clients_and_other_ports_are_never_probes() {
        let remote = Evidence {
            client_is_node: false,
            ..evidence(Kind::Refused)
        };
        assert!(!is_probe(remote, || Some(true)));
        let port = Evidence {
            probed_port: false,
            ..evidence(Kind::Refused)
        };
        assert!(!is_probe(port, || Some(true)));
        assert!(!is_probe(evidence(Kind::SynRetransmit), || Some(true)));
    }
}
