//! kube-proxy's IPVS mode: virtual servers (one per Service frontend) and their real servers
//! (endpoints), as the IPVS generic-netlink family returns them (`IPVS_CMD_GET_SERVICE` /
//! `IPVS_CMD_GET_DEST` dump replies; include/uapi/linux/ip_vs.h).
//!
//! UNVERIFIED LIVE: IPVS is not compiled into the kernel this project is built and tested on
//! (CONFIG_IP_VS unset), so this parser is tested on constructed messages only, and nothing reads
//! IPVS from a running kernel yet (IPVS sends no change notifications; a reader would have to
//! re-dump on a timer). kube-proxy drains a terminating endpoint by setting its real server's
//! weight to 0 before deleting it: a weight-0 real server receives no new connections, so it is
//! not a route.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_packet_core::{NetlinkBuffer, NlaBuffer, NlasIterator};
use thiserror::Error;

use super::model::{Backend, Backends, Protocol, Route, ServiceAddr, Via};

/// struct genlmsghdr: cmd, version, reserved.
const GENL_HDR_LEN: usize = 4;
const IPVS_CMD_ATTR_SERVICE: u16 = 1;
const IPVS_CMD_ATTR_DEST: u16 = 2;
const IPVS_SVC_ATTR_AF: u16 = 1;
const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
const IPVS_SVC_ATTR_ADDR: u16 = 3;
const IPVS_SVC_ATTR_PORT: u16 = 4;
const IPVS_DEST_ATTR_ADDR: u16 = 1;
const IPVS_DEST_ATTR_PORT: u16 = 2;
const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;
const AF_INET6: u16 = 10;
/// The nested flag in an attribute type.
const NLA_TYPE_MASK: u16 = 0x3fff;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("IPVS message too short or badly framed")]
    Framing,
    #[error("IPVS {what} attribute missing or malformed")]
    Attribute { what: &'static str },
}

/// A virtual server (Service frontend).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtualServer {
    pub service: ServiceAddr,
    pub protocol: Protocol,
}

/// A real server (endpoint) of a virtual server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RealServer {
    pub backend: Backend,
    pub weight: u32,
}

/// The attributes of a genl message (after nlmsghdr and genlmsghdr).
fn genl_attrs(message: &[u8]) -> Result<&[u8], ParseError> {
    let nl = NetlinkBuffer::new_checked(message).map_err(|_| ParseError::Framing)?;
    nl.payload().get(GENL_HDR_LEN..).ok_or(ParseError::Framing)
}

fn nested(attrs: &[u8], kind: u16) -> Option<&[u8]> {
    NlasIterator::new(attrs)
        .map_while(Result::ok)
        .find(|a: &NlaBuffer<&[u8]>| a.kind() & NLA_TYPE_MASK == kind)
        .map(|a| a.into_inner())
        .map(|raw| {
            // NlaBuffer::value() borrows the buffer; slice the value out of the raw attribute.
            let len = usize::from(u16::from_ne_bytes([raw[0], raw[1]])).min(raw.len());
            &raw[4.min(len)..len]
        })
}

fn u16_ne(v: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?))
}

fn u32_ne(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

fn be16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

/// `union nf_inet_addr`: 16 bytes, IPv4 in the first four.
fn inet_addr(v: &[u8], af: u16) -> Option<IpAddr> {
    if af == AF_INET6 {
        Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(v.get(..16)?).ok()?,
        )))
    } else {
        Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(v.get(..4)?).ok()?,
        )))
    }
}

/// One `IPVS_CMD_NEW_SERVICE` message (a GET_SERVICE dump reply). Firewall-mark services (no
/// address) are not kube-proxy's and read as `None`.
pub fn parse_service(message: &[u8]) -> Result<Option<VirtualServer>, ParseError> {
    let attrs = genl_attrs(message)?;
    let svc =
        nested(attrs, IPVS_CMD_ATTR_SERVICE).ok_or(ParseError::Attribute { what: "service" })?;
    let af = nested(svc, IPVS_SVC_ATTR_AF)
        .and_then(u16_ne)
        .ok_or(ParseError::Attribute {
            what: "address family",
        })?;
    let (Some(addr), Some(port), Some(proto)) = (
        nested(svc, IPVS_SVC_ATTR_ADDR),
        nested(svc, IPVS_SVC_ATTR_PORT).and_then(be16),
        nested(svc, IPVS_SVC_ATTR_PROTOCOL).and_then(u16_ne),
    ) else {
        return Ok(None);
    };
    let ip = inet_addr(addr, af).ok_or(ParseError::Attribute {
        what: "service address",
    })?;
    let protocol =
        Protocol::from_number(proto).ok_or(ParseError::Attribute { what: "protocol" })?;
    Ok(Some(VirtualServer {
        service: ServiceAddr(SocketAddr::new(ip, port)),
        protocol,
    }))
}

/// One `IPVS_CMD_NEW_DEST` message (a GET_DEST dump reply for one virtual server of family
/// `service_af`).
pub fn parse_dest(message: &[u8], service_af: u16) -> Result<RealServer, ParseError> {
    let attrs = genl_attrs(message)?;
    let dest = nested(attrs, IPVS_CMD_ATTR_DEST).ok_or(ParseError::Attribute {
        what: "destination",
    })?;
    // Since Linux 4.17 a destination may have its own family (IPv4 real servers behind an IPv6
    // virtual server); older kernels omit it.
    let af = nested(dest, IPVS_DEST_ATTR_ADDR_FAMILY)
        .and_then(u16_ne)
        .unwrap_or(service_af);
    let ip = nested(dest, IPVS_DEST_ATTR_ADDR)
        .and_then(|a| inet_addr(a, af))
        .ok_or(ParseError::Attribute {
            what: "destination address",
        })?;
    let port = nested(dest, IPVS_DEST_ATTR_PORT)
        .and_then(be16)
        .ok_or(ParseError::Attribute {
            what: "destination port",
        })?;
    let weight = nested(dest, IPVS_DEST_ATTR_WEIGHT)
        .and_then(u32_ne)
        .ok_or(ParseError::Attribute { what: "weight" })?;
    Ok(RealServer {
        backend: Backend(SocketAddr::new(ip, port)),
        weight,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    /// nlmsghdr + genlmsghdr(cmd) + attributes, as the kernel sends a dump reply.
    fn message(cmd: u8, attrs: &[u8]) -> Vec<u8> {
        let len = 16 + 4 + attrs.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&0x1cu16.to_ne_bytes()); // the IPVS family id, assigned at run time
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[cmd, 1, 0, 0]);
        m.extend_from_slice(attrs);
        m
    }

    fn addr16(ip: [u8; 4]) -> Vec<u8> {
        let mut a = ip.to_vec();
        a.resize(16, 0);
        a
    }

    fn service_msg() -> Vec<u8> {
        let mut svc = attr(IPVS_SVC_ATTR_AF, &2u16.to_ne_bytes());
        svc.extend(attr(IPVS_SVC_ATTR_PROTOCOL, &6u16.to_ne_bytes()));
        svc.extend(attr(IPVS_SVC_ATTR_ADDR, &addr16([10, 96, 114, 246])));
        svc.extend(attr(IPVS_SVC_ATTR_PORT, &80u16.to_be_bytes()));
        svc.extend(attr(6, b"rr\0"));
        message(1, &attr(IPVS_CMD_ATTR_SERVICE | 0x8000, &svc))
    }

    fn dest_msg(ip: [u8; 4], weight: u32) -> Vec<u8> {
        let mut d = attr(IPVS_DEST_ATTR_ADDR, &addr16(ip));
        d.extend(attr(IPVS_DEST_ATTR_PORT, &8080u16.to_be_bytes()));
        d.extend(attr(3, &0u32.to_ne_bytes()));
        d.extend(attr(IPVS_DEST_ATTR_WEIGHT, &weight.to_ne_bytes()));
        d.extend(attr(IPVS_DEST_ATTR_ADDR_FAMILY, &2u16.to_ne_bytes()));
        message(5, &attr(IPVS_CMD_ATTR_DEST | 0x8000, &d))
    }

    #[test]
    fn a_draining_real_server_is_no_longer_a_route() {
        let vs = parse_service(&service_msg()).unwrap().unwrap();
        assert_eq!(vs.service.to_string(), "10.96.114.246:80");
        let old = parse_dest(&dest_msg([10, 244, 0, 36], 0), 2).unwrap();
        let new = parse_dest(&dest_msg([10, 244, 0, 38], 1), 2).unwrap();
        assert_eq!(old.backend.to_string(), "10.244.0.36:8080");
        let b = routes(&[(vs, vec![old, new])]);
        assert_eq!(
            b.describe(),
            ["10.96.114.246:80 tcp -> 10.244.0.38:8080 (-)"]
        );
    }

    #[test]
    fn a_message_without_a_destination_is_one_clear_error() {
        let err = parse_dest(&service_msg(), 2).unwrap_err();
        assert_eq!(
            err,
            ParseError::Attribute {
                what: "destination"
            }
        );
        assert_eq!(parse_dest(&[1, 2, 3], 2).unwrap_err(), ParseError::Framing);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_service(&bytes);
            let _ = parse_dest(&bytes, 2);
        }
    }
}
