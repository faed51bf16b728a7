//! The IPVS generic-netlink family's messages, as far as kube-proxy's routes need them
//! (include/uapi/linux/ip_vs.h): dump requests encoded, dump replies decoded.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use netlink_packet_core::{
    DecodeError, Emitable, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NlaBuffer, NlasIterator, ParseableParametrized,
};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};

use super::{ParseError, ReadError, RealServer, VirtualServer};
use crate::dataplane::model::{Backend, Protocol, ServiceAddr};

/// The generic-netlink family and its version (IPVS_GENL_NAME, IPVS_GENL_VERSION).
pub(super) const FAMILY: &str = "IPVS";
pub(super) const VERSION: u8 = 1;
pub(super) use zdt_common::genl::{
    IPVS_CMD_ATTR_DEST, IPVS_CMD_ATTR_SERVICE, IPVS_CMD_GET_DEST, IPVS_CMD_GET_SERVICE,
    IPVS_CMD_NEW_DEST, IPVS_CMD_NEW_SERVICE,
};
pub(super) const IPVS_SVC_ATTR_AF: u16 = 1;
pub(super) const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
pub(super) const IPVS_SVC_ATTR_ADDR: u16 = 3;
pub(super) const IPVS_SVC_ATTR_PORT: u16 = 4;
pub(super) const IPVS_DEST_ATTR_ADDR: u16 = 1;
pub(super) const IPVS_DEST_ATTR_PORT: u16 = 2;
pub(super) const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
pub(super) const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;
pub(super) use zdt_common::family::{AF_INET, AF_INET6};
/// NLA_F_NESTED, and the mask of an attribute's type.
pub(super) const NLA_F_NESTED: u16 = 0x8000;
pub(super) const NLA_TYPE_MASK: u16 = 0x3fff;

/// A real server as a dump reply carries it: kernels before 4.17 send no address family of
/// its own (it is then the virtual server's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawDest {
    pub(super) addr: [u8; 16],
    pub(super) family: Option<u16>,
    pub(super) port: u16,
    pub(super) weight: u32,
}

impl RawDest {
    /// The real server's weight (0: draining).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    pub(super) fn resolve(self, service_af: u16) -> Result<RealServer, ParseError> {
        let ip = inet_addr(&self.addr, self.family.unwrap_or(service_af)).ok_or(
            ParseError::Attribute {
                what: "destination address",
            },
        )?;
        Ok(RealServer {
            backend: Backend(SocketAddr::new(ip, self.port)),
            weight: self.weight,
        })
    }
}

/// The IPVS family's messages, as far as kube-proxy's routes need them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpvsMessage {
    /// `IPVS_CMD_GET_SERVICE` dump request.
    GetServices,
    /// `IPVS_CMD_GET_DEST` dump request for one virtual server.
    GetDests(VirtualServer),
    /// `IPVS_CMD_NEW_SERVICE`, a dump reply; `None` for firewall-mark services (no address),
    /// which kube-proxy does not create.
    Service(Option<VirtualServer>),
    /// `IPVS_CMD_NEW_DEST`, a dump reply.
    Dest(RawDest),
    /// Any other command.
    Other(u8),
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY
    }

    fn command(&self) -> u8 {
        match self {
            Self::GetServices => IPVS_CMD_GET_SERVICE,
            Self::GetDests(_) => IPVS_CMD_GET_DEST,
            Self::Service(_) => IPVS_CMD_NEW_SERVICE,
            Self::Dest(_) => IPVS_CMD_NEW_DEST,
            Self::Other(c) => *c,
        }
    }

    fn version(&self) -> u8 {
        VERSION
    }
}

/// One attribute: length, type, value, padded to 4 bytes.
pub(super) fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(4 + value.len() + 3);
    a.extend_from_slice(
        &u16::try_from(4 + value.len())
            .unwrap_or(u16::MAX)
            .to_ne_bytes(),
    );
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(value);
    a.resize(a.len().next_multiple_of(4), 0);
    a
}

pub(super) fn family_of(ip: IpAddr) -> u16 {
    if ip.is_ipv4() { AF_INET } else { AF_INET6 }
}

pub(super) fn addr16(ip: IpAddr) -> [u8; 16] {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => a = v6.octets(),
    }
    a
}

/// The nested `IPVS_CMD_ATTR_SERVICE` that names a virtual server.
pub(super) fn service_attr(vs: &VirtualServer) -> Vec<u8> {
    nla(IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED, &service_id(vs))
}

/// The attributes inside `IPVS_CMD_ATTR_SERVICE` that name a virtual server.
pub(super) fn service_id(vs: &VirtualServer) -> Vec<u8> {
    let ip = vs.service.0.ip();
    let mut inner = nla(IPVS_SVC_ATTR_AF, &family_of(ip).to_ne_bytes());
    inner.extend(nla(
        IPVS_SVC_ATTR_PROTOCOL,
        &(match vs.protocol {
            Protocol::Tcp => 6u16,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        })
        .to_ne_bytes(),
    ));
    inner.extend(nla(IPVS_SVC_ATTR_ADDR, &addr16(ip)));
    inner.extend(nla(IPVS_SVC_ATTR_PORT, &vs.service.0.port().to_be_bytes()));
    inner
}

impl IpvsMessage {
    fn attributes(&self) -> Vec<u8> {
        match self {
            Self::GetDests(vs) => service_attr(vs),
            _ => Vec::new(),
        }
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attributes().len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        let attrs = self.attributes();
        buffer[..attrs.len()].copy_from_slice(&attrs);
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let parsed = match header.cmd {
            IPVS_CMD_NEW_SERVICE => parse_service(buf).map(Self::Service),
            IPVS_CMD_NEW_DEST => parse_dest(buf).map(Self::Dest),
            IPVS_CMD_GET_SERVICE => Ok(Self::GetServices),
            IPVS_CMD_GET_DEST => nested(buf, IPVS_CMD_ATTR_SERVICE)
                .ok_or(ParseError::Attribute { what: "service" })
                .and_then(|_| parse_service(buf))
                .and_then(|vs| vs.ok_or(ParseError::Attribute { what: "service" }))
                .map(Self::GetDests),
            c => Ok(Self::Other(c)),
        };
        parsed.map_err(|e| DecodeError::from(e.to_string()))
    }
}

/// The value of the first attribute of `kind` in `attrs`.
pub(super) fn nested(attrs: &[u8], kind: u16) -> Option<&[u8]> {
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

pub(super) fn u16_ne(v: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?))
}

pub(super) fn u32_ne(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

pub(super) fn be16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

/// `union nf_inet_addr`: 16 bytes, IPv4 in the first four.
pub(super) fn inet_addr(v: &[u8], af: u16) -> Option<IpAddr> {
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

/// The attributes of an `IPVS_CMD_NEW_SERVICE` message. Firewall-mark services (no address)
/// read as `None`.
pub(super) fn parse_service(attrs: &[u8]) -> Result<Option<VirtualServer>, ParseError> {
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

/// The attributes of an `IPVS_CMD_NEW_DEST` message.
pub(super) fn parse_dest(attrs: &[u8]) -> Result<RawDest, ParseError> {
    let dest = nested(attrs, IPVS_CMD_ATTR_DEST).ok_or(ParseError::Attribute {
        what: "destination",
    })?;
    let addr = nested(dest, IPVS_DEST_ATTR_ADDR)
        .and_then(|a| <[u8; 16]>::try_from(a.get(..16)?).ok())
        .ok_or(ParseError::Attribute {
            what: "destination address",
        })?;
    Ok(RawDest {
        addr,
        // Since Linux 4.17 a destination may have its own family (IPv4 real servers behind an
        // IPv6 virtual server).
        family: nested(dest, IPVS_DEST_ATTR_ADDR_FAMILY).and_then(u16_ne),
        port: nested(dest, IPVS_DEST_ATTR_PORT)
            .and_then(be16)
            .ok_or(ParseError::Attribute {
                what: "destination port",
            })?,
        weight: nested(dest, IPVS_DEST_ATTR_WEIGHT)
            .and_then(u32_ne)
            .ok_or(ParseError::Attribute { what: "weight" })?,
    })
}

/// One dump request as the kernel expects it.
pub fn encode_request(request: &IpvsMessage, family_id: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::from(GenlMessage::new(
            GenlHeader {
                cmd: request.command(),
                version: VERSION,
            },
            request.clone(),
            family_id,
        )),
    );
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// Decodes one datagram of dump replies: the IPVS messages in it, and whether NLMSG_DONE ended
/// the dump. A kernel error reply is returned as the I/O error it stands for.
pub fn decode_datagram(bytes: &[u8]) -> Result<(Vec<IpvsMessage>, bool), ReadError> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let msg = crate::dataplane::guarded::decode(|| {
            NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(rest)
        })
        .map_err(|_| ParseError::Framing)?;
        let len = (msg.header.length as usize).next_multiple_of(4);
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok((out, true)),
            NetlinkPayload::Error(e) => {
                if let Some(code) = e.code {
                    return Err(io::Error::from_raw_os_error(-code.get()).into());
                }
            }
            NetlinkPayload::InnerMessage(m) => out.push(m.payload),
            _ => {}
        }
        if len == 0 || len > rest.len() {
            break;
        }
        rest = &rest[len..];
    }
    Ok((out, false))
}
