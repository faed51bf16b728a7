//! Reading IPVS through a [`Transport`] (the kernel's socket, or recorded dumps): its virtual
//! servers, their real servers, and the routes they make.

use std::collections::BTreeSet;

use super::{
    ReadError, RealServer, VirtualServer,
    wire::{IpvsMessage, family_of},
};
use crate::dataplane::model::{Backend, Backends, Change, Route, Via};

/// Where dump requests go: the kernel (`Live`) or, in tests, constructed replies.
pub trait Transport {
    /// Sends one dump request and returns every reply until NLMSG_DONE.
    fn dump(&mut self, request: &IpvsMessage) -> Result<Vec<IpvsMessage>, ReadError>;
}

/// What IPVS holds for kube-proxy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ipvs {
    /// Virtual servers (kube-proxy's IPVS mode is in use when there are any).
    pub servers: BTreeSet<VirtualServer>,
    pub routes: Backends,
}

/// Reads every virtual server and its real servers: one GET_SERVICE dump, then one GET_DEST
/// dump per virtual server.
pub fn read(t: &mut impl Transport) -> Result<Ipvs, ReadError> {
    let mut servers = Vec::new();
    for reply in t.dump(&IpvsMessage::GetServices)? {
        if let IpvsMessage::Service(Some(vs)) = reply {
            servers.push(vs);
        }
    }
    let mut all = Vec::new();
    for vs in &servers {
        all.push((*vs, read_dests(t, vs)?));
    }
    Ok(Ipvs {
        servers: servers.into_iter().collect(),
        routes: routes(&all),
    })
}

/// The real servers of one virtual server (none if it does not exist: the kernel then ends the
/// dump empty): one GET_DEST dump.
pub fn read_dests(
    t: &mut impl Transport,
    vs: &VirtualServer,
) -> Result<Vec<RealServer>, ReadError> {
    let af = family_of(vs.service.0.ip());
    let mut reals = Vec::new();
    for reply in t.dump(&IpvsMessage::GetDests(*vs))? {
        if let IpvsMessage::Dest(d) = reply {
            reals.push(d.resolve(af)?);
        }
    }
    Ok(reals)
}

/// Reads one virtual server again after a change request `cmd` named it and brings `state` up
/// to date: what changed in its routes. One GET_DEST dump, whatever the size of IPVS. The set
/// of virtual servers follows the request (a virtual server with real servers exists; NEW_SERVICE
/// creates one, DEL_SERVICE deletes one unless real servers are still dumped); a NEW_SERVICE the
/// kernel refused for another reason than "exists" counts one too many until the next whole
/// read.
pub fn reread_server(
    t: &mut impl Transport,
    state: &mut Ipvs,
    vs: &VirtualServer,
    cmd: u8,
) -> Result<Change, ReadError> {
    use zdt_common::genl::{IPVS_CMD_DEL_SERVICE, IPVS_CMD_NEW_SERVICE};
    let reals = read_dests(t, vs)?;
    if cmd == IPVS_CMD_NEW_SERVICE || !reals.is_empty() {
        state.servers.insert(*vs);
    } else if cmd == IPVS_CMD_DEL_SERVICE {
        state.servers.remove(vs);
    }
    let live: Vec<Backend> = reals
        .iter()
        .filter(|r| r.weight > 0)
        .map(|r| r.backend)
        .collect();
    Ok(state
        .routes
        .set_backends(vs.service, vs.protocol, Via::ServiceIp, &live))
}

/// The routes of IPVS virtual servers and their real servers: weight-0 real servers (draining)
/// are not routes.
pub fn routes(servers: &[(VirtualServer, Vec<RealServer>)]) -> Backends {
    let mut b = Backends::new();
    for (vs, reals) in servers {
        for rs in reals.iter().filter(|r| r.weight > 0) {
            b.insert(
                Route {
                    service: vs.service,
                    protocol: vs.protocol,
                    backend: rs.backend,
                    via: Via::ServiceIp,
                },
                None,
            );
        }
    }
    b
}
