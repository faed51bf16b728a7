//! One name per Service. Lines name a Service two ways: the API watch and a client that knows
//! the Service say `namespace/name`, the dataplane and a client that dialled an address say
//! `ClusterIP:port`. Both are one Service when some line ties the address to the name: an
//! endpoint line's `cluster_ip`, or a dataplane line's `service_name` (read from kube-proxy's
//! rule comments). Errors are matched to pods by Service, so a name that stays in two forms
//! leaves a client's errors "outside every observed rollout" of the pods they hit.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use crate::observation::{Kind, Observation, ServiceName, ServiceRef};

/// ClusterIP → the `namespace/name` of its Service, from the lines that carry both.
#[derive(Debug, Default)]
pub(crate) struct ServiceNames {
    by_ip: BTreeMap<IpAddr, BTreeSet<String>>,
}

impl ServiceNames {
    pub fn index(obs: &[Observation]) -> Self {
        let mut names = Self::default();
        for o in obs {
            names.add(o);
        }
        names
    }

    /// Folds in one line.
    pub fn add(&mut self, o: &Observation) {
        let (ip, name) = match o.kind {
            Kind::EndpointReady | Kind::EndpointTerminating | Kind::EndpointRemoved => (
                o.details
                    .api()
                    .cluster_ip
                    .as_deref()
                    .and_then(|ip| ip.parse().ok()),
                o.service
                    .as_ref()
                    .and_then(ServiceRef::name)
                    .map(ServiceName::as_str),
            ),
            Kind::DataplaneAdded | Kind::DataplaneRemoved => (
                o.service
                    .as_ref()
                    .and_then(ServiceRef::frontend)
                    .map(|a| a.ip()),
                o.details.dataplane().service_name.as_deref(),
            ),
            _ => return,
        };
        if let (Some(ip), Some(name)) = (ip, name)
            && name.contains('/')
            && !self.by_ip.get(&ip).is_some_and(|n| n.contains(name))
        {
            self.by_ip.entry(ip).or_default().insert(name.to_owned());
        }
    }

    /// `namespace/name` for a `ClusterIP:port` whose Service is known (and unambiguous: a
    /// ClusterIP freed by a deleted Service can come back on another); anything else as is.
    pub fn canonical(&self, service: &str) -> String {
        service
            .parse::<SocketAddr>()
            .ok()
            .and_then(|a| self.by_ip.get(&a.ip()))
            .filter(|names| names.len() == 1)
            .and_then(|names| names.first())
            .map_or_else(|| service.to_owned(), Clone::clone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::NodeName;

    fn line(kind: Kind, service: &str) -> Observation {
        let mut o = Observation::new(kind, jiff::Timestamp::UNIX_EPOCH, NodeName("vm".into()));
        o.service = Some(ServiceRef::parse(service));
        o
    }

    #[test]
    fn an_address_tied_to_a_name_by_an_endpoint_or_a_dataplane_line_is_that_name() {
        let names = ServiceNames::index(&[
            line(Kind::EndpointTerminating, "default/fast")
                .with_extra("cluster_ip", "198.19.0.220"),
            line(Kind::DataplaneRemoved, "[fd00::a]:80").with_extra("service_name", "default/v6"),
        ]);
        assert_eq!(names.canonical("198.19.0.220:80"), "default/fast");
        assert_eq!(names.canonical("198.19.0.220:8443"), "default/fast");
        assert_eq!(names.canonical("[fd00::a]:80"), "default/v6");
        assert_eq!(names.canonical("default/fast"), "default/fast");
        assert_eq!(names.canonical("198.19.0.9:80"), "198.19.0.9:80");
    }

    #[test]
    fn a_cluster_ip_two_services_held_keeps_its_address() {
        let names = ServiceNames::index(&[
            line(Kind::EndpointRemoved, "default/old").with_extra("cluster_ip", "10.96.0.7"),
            line(Kind::EndpointReady, "default/new").with_extra("cluster_ip", "10.96.0.7"),
        ]);
        assert_eq!(names.canonical("10.96.0.7:80"), "10.96.0.7:80");
    }
}
