//! kube-proxy's IPVS mode: virtual servers (one per Service frontend) and their real servers
//! (endpoints), read over the IPVS generic-netlink family (`IPVS_CMD_GET_SERVICE` /
//! `IPVS_CMD_GET_DEST` dumps; include/uapi/linux/ip_vs.h), the way `ipvsadm -Ln` reads them.
//!
//! IPVS has no multicast group: the kernel announces no change. Every change is a request the
//! kernel applies inside the writer's syscall: a generic-netlink request of the IPVS family in
//! a `sendto`/`sendmsg` (kube-proxy, libnl), or the older `setsockopt(IP_VS_SO_SET_*)`. The
//! agent's eBPF trigger reports each one ([`IpvsChange`], `zdt_common::kind::IPVS_CHANGE`) with
//! the syscall's exit time and, for netlink requests, the virtual server it names
//! ([`requested_server`]); the watcher then reads that virtual server alone
//! ([`reread_server`]), or all of IPVS when none is named. Without the trigger (no syscall
//! tracepoints, or no agent) IPVS is read every [`POLL`], stamped with the interval between two
//! reads.
//!
//! Verified on a real kernel: `cargo xtask ipvs-vm` boots Debian's 6.1 kernel (IPVS as modules)
//! in a QEMU guest, programs kube-proxy-shaped virtual and real servers there ([`Command`]) and
//! checks [`Live`]/[`read`] and the whole dataplane watcher against it (docs/dataplane.md, IPVS).
//! The dumps it recorded ([`Dump`]) are replayed in CI ([`Replay`], tests/offline/ipvs_recorded.rs)
//! through the same `decode_datagram` the live reader uses. The kernel this project is built on
//! has no IPVS (CONFIG_IP_VS unset, no modules). kube-proxy drains a
//! terminating endpoint by setting its real server's weight to 0 before deleting it: a weight-0
//! real server receives no new connections, so it is not a route.

use std::{
    collections::BTreeSet,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use netlink_packet_core::{
    DecodeError, Emitable, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NlaBuffer, NlasIterator, ParseableParametrized,
};
use netlink_packet_generic::{
    GenlFamily, GenlHeader, GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_GENERIC};
use thiserror::Error;

use super::model::{Backend, Backends, Change, Protocol, Route, ServiceAddr, Via};

/// How often IPVS is read again without the eBPF trigger: the time resolution of IPVS changes.
pub const POLL: Duration = Duration::from_millis(100);

/// An IPVS change request, as the agent's eBPF trigger reported it
/// (`zdt_common::kind::IPVS_CHANGE`): a generic-netlink IPVS request that changes virtual or
/// real servers, sent successfully (the kernel had applied it, or refused it answering in the
/// ack, when the send returned), or a successful `setsockopt(IP_VS_SO_SET_*)` change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsChange {
    /// The send's exit: the change was in effect.
    pub time: jiff::Timestamp,
    /// The send's entry: IPVS was unchanged before it.
    pub entered: jiff::Timestamp,
    /// `IPVS_CMD_*` (`zdt_common::genl`).
    pub cmd: u8,
    /// The writer's network namespace (inode).
    pub netns: u32,
    /// The writer (kube-proxy).
    pub pid: u32,
    /// The virtual server the request names (see [`requested_server`]); `None` when it names
    /// none the watcher can read alone: IPVS is then read whole.
    pub server: Option<VirtualServer>,
}

/// The virtual server a change request (its first bytes, as the trigger copied them) names in
/// its `IPVS_CMD_ATTR_SERVICE`: `None` for FLUSH, firewall-mark services, and requests cut short
/// or unreadable.
pub fn requested_server(request: &[u8]) -> Option<VirtualServer> {
    const HEADERS: usize = zdt_common::genl::HEADERS_LEN;
    let len = usize::try_from(u32::from_ne_bytes(request.get(..4)?.try_into().ok()?)).ok()?;
    if request.get(zdt_common::genl::CMD) == Some(&zdt_common::genl::IPVS_CMD_FLUSH) {
        return None;
    }
    let attrs = request.get(HEADERS..len.min(request.len()))?;
    parse_service(attrs).ok().flatten()
}

/// The generic-netlink family and its version (IPVS_GENL_NAME, IPVS_GENL_VERSION).
const FAMILY: &str = "IPVS";
const VERSION: u8 = 1;
const IPVS_CMD_NEW_SERVICE: u8 = 1;
const IPVS_CMD_GET_SERVICE: u8 = 4;
const IPVS_CMD_NEW_DEST: u8 = 5;
const IPVS_CMD_GET_DEST: u8 = 8;
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
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// NLA_F_NESTED, and the mask of an attribute's type.
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("IPVS message too short or badly framed")]
    Framing,
    #[error("IPVS {what} attribute missing or malformed")]
    Attribute { what: &'static str },
}

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("IPVS generic netlink: {0}")]
    Io(#[from] io::Error),
    #[error("IPVS reply could not be read: {0}")]
    Parse(#[from] ParseError),
}

/// A virtual server (Service frontend).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// A real server as a dump reply carries it: kernels before 4.17 send no address family of
/// its own (it is then the virtual server's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawDest {
    addr: [u8; 16],
    family: Option<u16>,
    port: u16,
    weight: u32,
}

impl RawDest {
    /// The real server's weight (0: draining).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    fn resolve(self, service_af: u16) -> Result<RealServer, ParseError> {
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
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
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

fn family_of(ip: IpAddr) -> u16 {
    if ip.is_ipv4() { AF_INET } else { AF_INET6 }
}

fn addr16(ip: IpAddr) -> [u8; 16] {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => a = v6.octets(),
    }
    a
}

/// The nested `IPVS_CMD_ATTR_SERVICE` that names a virtual server.
fn service_attr(vs: &VirtualServer) -> Vec<u8> {
    nla(IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED, &service_id(vs))
}

/// The attributes inside `IPVS_CMD_ATTR_SERVICE` that name a virtual server.
fn service_id(vs: &VirtualServer) -> Vec<u8> {
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

/// The attributes of an `IPVS_CMD_NEW_SERVICE` message. Firewall-mark services (no address)
/// read as `None`.
fn parse_service(attrs: &[u8]) -> Result<Option<VirtualServer>, ParseError> {
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
fn parse_dest(attrs: &[u8]) -> Result<RawDest, ParseError> {
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
        let msg = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(rest)
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

/// The kernel's IPVS over a generic-netlink socket of the calling thread's network namespace.
pub struct Live {
    socket: Socket,
    family_id: u16,
    seq: u32,
    buf: Vec<u8>,
    /// The raw dumps, while recording (see [`Live::record`]).
    recorded: Option<Vec<Dump>>,
}

impl Live {
    /// Resolves the IPVS family; `None` when the kernel has no IPVS (the controller answers
    /// ENOENT, as on a kernel without CONFIG_IP_VS).
    pub fn open() -> io::Result<Option<Self>> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&NlAddr::new(0, 0))?;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        let mut msg = NetlinkMessage::new(
            header,
            NetlinkPayload::from(GenlMessage::from_payload(GenlCtrl {
                cmd: GenlCtrlCmd::GetFamily,
                nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY.to_owned())],
            })),
        );
        msg.finalize();
        let mut req = vec![0; msg.buffer_len()];
        msg.serialize(&mut req);
        socket.send(&req, 0)?;
        let mut buf = vec![0u8; 1 << 16];
        let n = socket.recv(&mut &mut buf[..], 0)?;
        let reply = NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(&buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let family_id = match reply.payload {
            NetlinkPayload::InnerMessage(m) => m.payload.nlas.iter().find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            }),
            NetlinkPayload::Error(e) => match e.code {
                Some(code) if code.get() == -libc::ENOENT => return Ok(None),
                Some(code) => return Err(io::Error::from_raw_os_error(-code.get())),
                None => None,
            },
            _ => None,
        };
        let family_id = family_id.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "no family id in the reply")
        })?;
        Ok(Some(Self {
            socket,
            family_id,
            seq: 0,
            buf,
            recorded: None,
        }))
    }

    /// The generic-netlink family id the kernel gave IPVS (the `nlmsg_type` of its requests).
    pub fn family_id(&self) -> u16 {
        self.family_id
    }

    /// From now on, keeps every dump's request and reply datagrams as sent and received.
    pub fn record(&mut self) {
        self.recorded = Some(Vec::new());
    }

    /// The dumps kept since [`Live::record`] (recording goes on).
    pub fn take_recorded(&mut self) -> Vec<Dump> {
        self.recorded
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Makes one change to IPVS, as kube-proxy does (`ipvsadm -A/-a/-e/-d`), and waits for the
    /// kernel's acknowledgement.
    pub fn execute(&mut self, command: &Command) -> Result<(), ReadError> {
        self.seq = self.seq.wrapping_add(1);
        self.socket
            .send(&encode_command(command, self.family_id, self.seq), 0)?;
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        // The acknowledgement is an NLMSG_ERROR with code 0; an error code is returned as such.
        decode_datagram(&self.buf[..n]).map(|_| ())
    }
}

impl Transport for Live {
    fn dump(&mut self, request: &IpvsMessage) -> Result<Vec<IpvsMessage>, ReadError> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = encode_request(request, self.family_id, self.seq);
        self.socket.send(&bytes, 0)?;
        let mut record = self.recorded.is_some().then(|| Dump {
            request: bytes,
            replies: Vec::new(),
        });
        let mut out = Vec::new();
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            if let Some(r) = &mut record {
                r.replies.push(self.buf[..n].to_vec());
            }
            let (messages, done) = decode_datagram(&self.buf[..n])?;
            out.extend(messages);
            if done {
                if let (Some(all), Some(r)) = (&mut self.recorded, record) {
                    all.push(r);
                }
                return Ok(out);
            }
        }
    }
}

// Programming IPVS the way kube-proxy does. The agent never writes to IPVS: this is for the
// check on a real kernel (`cargo xtask ipvs-vm`, examples/ipvs_guest.rs) that programs
// kube-proxy's virtual and real servers and records what the kernel then dumps.

const IPVS_CMD_SET_DEST: u8 = 6;
const IPVS_CMD_DEL_DEST: u8 = 7;
const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
const IPVS_SVC_ATTR_FLAGS: u16 = 7;
const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
const IPVS_SVC_ATTR_NETMASK: u16 = 9;
const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
/// IP_VS_CONN_F_MASQ: kube-proxy's forwarding method (NAT).
const IP_VS_CONN_F_MASQ: u32 = 0;
const NLM_F_ACK: u16 = 4;

/// One change kube-proxy's IPVS mode makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// A virtual server with this scheduler (`rr` by default in kube-proxy).
    NewService(VirtualServer, &'static str),
    /// A real server, masquerading (kube-proxy's forwarding method).
    NewDest(VirtualServer, RealServer),
    /// A new weight for a real server (0 = draining, for a terminating endpoint).
    SetDest(VirtualServer, RealServer),
    /// A real server removed.
    DelDest(VirtualServer, Backend),
}

/// The nested `IPVS_CMD_ATTR_DEST` of a real server; with a weight it also carries what
/// NEW_DEST/SET_DEST require (forwarding method, thresholds).
fn dest_attr(backend: Backend, weight: Option<u32>) -> Vec<u8> {
    let ip = backend.0.ip();
    let mut d = nla(IPVS_DEST_ATTR_ADDR, &addr16(ip));
    d.extend(nla(IPVS_DEST_ATTR_PORT, &backend.0.port().to_be_bytes()));
    if let Some(weight) = weight {
        d.extend(nla(
            IPVS_DEST_ATTR_FWD_METHOD,
            &IP_VS_CONN_F_MASQ.to_ne_bytes(),
        ));
        d.extend(nla(IPVS_DEST_ATTR_WEIGHT, &weight.to_ne_bytes()));
        d.extend(nla(IPVS_DEST_ATTR_U_THRESH, &0u32.to_ne_bytes()));
        d.extend(nla(IPVS_DEST_ATTR_L_THRESH, &0u32.to_ne_bytes()));
    }
    d.extend(nla(
        IPVS_DEST_ATTR_ADDR_FAMILY,
        &family_of(ip).to_ne_bytes(),
    ));
    nla(IPVS_CMD_ATTR_DEST | NLA_F_NESTED, &d)
}

/// One change as the kernel expects it: nlmsghdr (request, ack wanted), genlmsghdr, attributes.
pub fn encode_command(command: &Command, family_id: u16, seq: u32) -> Vec<u8> {
    let (cmd, attrs) = match command {
        Command::NewService(vs, scheduler) => {
            let mut svc = service_id(vs);
            let mut name = scheduler.as_bytes().to_vec();
            name.push(0);
            svc.extend(nla(IPVS_SVC_ATTR_SCHED_NAME, &name));
            // struct ip_vs_flags { flags, mask }: no flags set, all of them given.
            let mut flags = 0u32.to_ne_bytes().to_vec();
            flags.extend(u32::MAX.to_ne_bytes());
            svc.extend(nla(IPVS_SVC_ATTR_FLAGS, &flags));
            svc.extend(nla(IPVS_SVC_ATTR_TIMEOUT, &0u32.to_ne_bytes()));
            let netmask: u32 = if vs.service.0.is_ipv4() {
                u32::MAX
            } else {
                128
            };
            svc.extend(nla(IPVS_SVC_ATTR_NETMASK, &netmask.to_ne_bytes()));
            (
                IPVS_CMD_NEW_SERVICE,
                nla(IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED, &svc),
            )
        }
        Command::NewDest(vs, rs) | Command::SetDest(vs, rs) => {
            let mut a = service_attr(vs);
            a.extend(dest_attr(rs.backend, Some(rs.weight)));
            let cmd = if matches!(command, Command::NewDest(..)) {
                IPVS_CMD_NEW_DEST
            } else {
                IPVS_CMD_SET_DEST
            };
            (cmd, a)
        }
        Command::DelDest(vs, backend) => {
            let mut a = service_attr(vs);
            a.extend(dest_attr(*backend, None));
            (IPVS_CMD_DEL_DEST, a)
        }
    };
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    m.extend_from_slice(&family_id.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[cmd, VERSION, 0, 0]);
    m.extend_from_slice(&attrs);
    m
}

/// One dump as it went over the socket: the request sent and every reply datagram received,
/// up to the one holding NLMSG_DONE. Hex in JSON (the fixtures of tests/fixtures/ipvs).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dump {
    #[serde(with = "hex")]
    pub request: Vec<u8>,
    #[serde(with = "hex_list")]
    pub replies: Vec<Vec<u8>>,
}

mod hex {
    use data_encoding::HEXLOWER;
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&HEXLOWER.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        HEXLOWER
            .decode(String::deserialize(d)?.as_bytes())
            .map_err(D::Error::custom)
    }
}

mod hex_list {
    use data_encoding::HEXLOWER;
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| HEXLOWER.encode(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|h| HEXLOWER.decode(h.as_bytes()).map_err(D::Error::custom))
            .collect()
    }
}

/// Recorded dumps played back: each request is answered with the replies recorded for the
/// same request (matched by what it asks for, not by sequence number or family id), decoded by
/// `decode_datagram` exactly as [`Live`] decodes the kernel's.
pub struct Replay<'a> {
    dumps: &'a [Dump],
}

impl<'a> Replay<'a> {
    pub fn new(dumps: &'a [Dump]) -> Self {
        Self { dumps }
    }
}

impl Transport for Replay<'_> {
    fn dump(&mut self, request: &IpvsMessage) -> Result<Vec<IpvsMessage>, ReadError> {
        let dump = self
            .dumps
            .iter()
            .find(|d| {
                decode_datagram(&d.request).is_ok_and(|(m, _)| m.as_slice() == [request.clone()])
            })
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no recorded dump answers {request:?}"),
                )
            })?;
        let mut out = Vec::new();
        for datagram in &dump.replies {
            let (messages, done) = decode_datagram(datagram)?;
            out.extend(messages);
            if done {
                return Ok(out);
            }
        }
        Err(ParseError::Framing.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel-framed dump reply: nlmsghdr + genlmsghdr(cmd) + attributes.
    fn reply(cmd: u8, attrs: &[u8]) -> Vec<u8> {
        let len = 16 + 4 + attrs.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&0x1cu16.to_ne_bytes()); // the IPVS family id, assigned at run time
        m.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&[cmd, VERSION, 0, 0]);
        m.extend_from_slice(attrs);
        m
    }

    fn done() -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&3u16.to_ne_bytes()); // NLMSG_DONE
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&[0; 12]);
        m
    }

    fn web() -> VirtualServer {
        VirtualServer {
            service: ServiceAddr("10.96.114.246:80".parse().unwrap()),
            protocol: Protocol::Tcp,
        }
    }

    fn service_reply(vs: &VirtualServer) -> Vec<u8> {
        // What the kernel adds besides what names the service: the scheduler, flags, …
        let mut attrs = service_attr(vs);
        let mut with_sched = attrs[4..].to_vec();
        with_sched.extend(nla(6, b"rr\0"));
        attrs = nla(IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED, &with_sched);
        reply(IPVS_CMD_NEW_SERVICE, &attrs)
    }

    fn dest_reply(ip: [u8; 4], weight: u32, family: Option<u16>) -> Vec<u8> {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&ip);
        let mut d = nla(IPVS_DEST_ATTR_ADDR, &a);
        d.extend(nla(IPVS_DEST_ATTR_PORT, &8080u16.to_be_bytes()));
        d.extend(nla(3, &0u32.to_ne_bytes()));
        d.extend(nla(IPVS_DEST_ATTR_WEIGHT, &weight.to_ne_bytes()));
        if let Some(f) = family {
            d.extend(nla(IPVS_DEST_ATTR_ADDR_FAMILY, &f.to_ne_bytes()));
        }
        reply(
            IPVS_CMD_NEW_DEST,
            &nla(IPVS_CMD_ATTR_DEST | NLA_F_NESTED, &d),
        )
    }

    /// A kernel stand-in: answers each request (decoded from the bytes `Live` would send) with
    /// datagrams decoded by `decode_datagram`, as `Live` decodes the kernel's.
    struct Recorded {
        services: Vec<u8>,
        dests: Vec<(VirtualServer, Vec<u8>)>,
        requests: Vec<IpvsMessage>,
    }

    impl Transport for Recorded {
        fn dump(&mut self, request: &IpvsMessage) -> Result<Vec<IpvsMessage>, ReadError> {
            let bytes = encode_request(request, 0x1c, 1);
            let sent = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&bytes).unwrap();
            assert_eq!(sent.header.flags, NLM_F_REQUEST | NLM_F_DUMP);
            let NetlinkPayload::InnerMessage(m) = sent.payload else {
                panic!("not a request: {sent:?}");
            };
            self.requests.push(m.payload.clone());
            let datagram = match &m.payload {
                IpvsMessage::GetServices => self.services.clone(),
                IpvsMessage::GetDests(vs) => self
                    .dests
                    .iter()
                    .find(|(v, _)| v == vs)
                    .map(|(_, d)| d.clone())
                    .unwrap_or_else(done),
                other => panic!("unexpected request {other:?}"),
            };
            let (messages, finished) = decode_datagram(&datagram)?;
            assert!(finished, "the dump must end with NLMSG_DONE");
            Ok(messages)
        }
    }

    #[test]
    fn a_draining_real_server_is_no_longer_a_route() {
        let mut services = service_reply(&web());
        services.extend(done());
        let mut dests = dest_reply([10, 244, 0, 36], 0, Some(AF_INET));
        dests.extend(dest_reply([10, 244, 0, 38], 1, None));
        dests.extend(done());
        let mut kernel = Recorded {
            services,
            dests: vec![(web(), dests)],
            requests: Vec::new(),
        };
        let ipvs = read(&mut kernel).unwrap();
        assert_eq!(ipvs.servers.len(), 1);
        assert_eq!(
            ipvs.routes.describe(),
            ["10.96.114.246:80 tcp -> 10.244.0.38:8080 (-)"]
        );
        assert_eq!(
            kernel.requests,
            [IpvsMessage::GetServices, IpvsMessage::GetDests(web())]
        );
    }

    #[test]
    fn no_virtual_servers_is_no_ipvs_mode() {
        let mut kernel = Recorded {
            services: done(),
            dests: Vec::new(),
            requests: Vec::new(),
        };
        assert_eq!(read(&mut kernel).unwrap(), Ipvs::default());
    }

    #[test]
    fn a_kernel_error_and_a_message_without_a_destination_are_one_clear_error() {
        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
        err.extend_from_slice(&[0; 10]);
        err.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        err.extend_from_slice(&[0; 16]);
        match decode_datagram(&err) {
            Err(ReadError::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
            other => panic!("{other:?}"),
        }
        let bad = reply(IPVS_CMD_NEW_DEST, &nla(IPVS_CMD_ATTR_SERVICE, &[]));
        assert!(matches!(decode_datagram(&bad), Err(ReadError::Parse(_))));
        assert_eq!(
            parse_dest(&nla(IPVS_CMD_ATTR_SERVICE, &[])),
            Err(ParseError::Attribute {
                what: "destination"
            })
        );
    }

    /// The attributes after nlmsghdr + genlmsghdr of an encoded command, and its command byte.
    fn command_parts(bytes: &[u8]) -> (u8, u16, &[u8]) {
        let len = u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len());
        let flags = u16::from_ne_bytes(bytes[6..8].try_into().unwrap());
        (bytes[16], flags, &bytes[20..])
    }

    #[test]
    fn kube_proxys_changes_are_encoded_with_what_the_kernel_requires() {
        let backend = RealServer {
            backend: Backend("10.244.0.36:8080".parse().unwrap()),
            weight: 0,
        };
        let set = encode_command(&Command::SetDest(web(), backend), 0x1c, 7);
        let (cmd, flags, attrs) = command_parts(&set);
        assert_eq!((cmd, flags), (IPVS_CMD_SET_DEST, NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(parse_service(attrs), Ok(Some(web())));
        let dest = parse_dest(attrs).unwrap();
        assert_eq!(dest.resolve(AF_INET), Ok(backend));
        let d = nested(attrs, IPVS_CMD_ATTR_DEST).unwrap();
        for required in [
            IPVS_DEST_ATTR_FWD_METHOD,
            IPVS_DEST_ATTR_U_THRESH,
            IPVS_DEST_ATTR_L_THRESH,
        ] {
            assert!(nested(d, required).is_some(), "attribute {required}");
        }
        assert_eq!(
            nested(d, IPVS_DEST_ATTR_FWD_METHOD).and_then(u32_ne),
            Some(IP_VS_CONN_F_MASQ)
        );

        let del = encode_command(&Command::DelDest(web(), backend.backend), 0x1c, 8);
        let (cmd, _, attrs) = command_parts(&del);
        assert_eq!(cmd, IPVS_CMD_DEL_DEST);
        let d = nested(attrs, IPVS_CMD_ATTR_DEST).unwrap();
        assert!(nested(d, IPVS_DEST_ATTR_WEIGHT).is_none());

        let new = encode_command(&Command::NewService(web(), "rr"), 0x1c, 9);
        let (cmd, _, attrs) = command_parts(&new);
        assert_eq!(cmd, IPVS_CMD_NEW_SERVICE);
        assert_eq!(parse_service(attrs), Ok(Some(web())));
        let svc = nested(attrs, IPVS_CMD_ATTR_SERVICE).unwrap();
        assert_eq!(nested(svc, IPVS_SVC_ATTR_SCHED_NAME), Some(&b"rr\0"[..]));
        assert_eq!(
            nested(svc, IPVS_SVC_ATTR_NETMASK).and_then(u32_ne),
            Some(u32::MAX)
        );
        assert_eq!(nested(svc, IPVS_SVC_ATTR_FLAGS).map(<[u8]>::len), Some(8));
        assert!(nested(svc, IPVS_SVC_ATTR_TIMEOUT).is_some());
    }

    #[test]
    fn a_recorded_dump_serializes_as_hex_and_replays() {
        let mut services = service_reply(&web());
        services.extend(done());
        let mut dests = dest_reply([10, 244, 0, 38], 1, Some(AF_INET));
        dests.extend(done());
        let dumps = vec![
            Dump {
                request: encode_request(&IpvsMessage::GetServices, 0x1c, 1),
                replies: vec![services],
            },
            Dump {
                request: encode_request(&IpvsMessage::GetDests(web()), 0x1c, 2),
                replies: vec![dests],
            },
        ];
        let json = serde_json::to_string(&dumps).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let hex = value[0]["request"].as_str().unwrap();
        assert_eq!(hex.len(), 2 * dumps[0].request.len());
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
        let back: Vec<Dump> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, dumps);
        assert_eq!(
            read(&mut Replay::new(&back)).unwrap().routes.describe(),
            ["10.96.114.246:80 tcp -> 10.244.0.38:8080 (-)"]
        );
        // A request nothing was recorded for is an error, not an empty answer.
        assert!(read(&mut Replay::new(&back[..1])).is_err());
    }

    /// A kernel stand-in holding IPVS as a model: virtual servers 10.96.0.<i>:80 with real
    /// servers 10.244.<i>.<j>:8080 and their weights; it answers dumps as the kernel does (an
    /// unknown virtual server's GET_DEST dump ends empty).
    #[derive(Default)]
    struct Model {
        servers: std::collections::BTreeMap<u8, std::collections::BTreeMap<u8, u32>>,
    }

    fn model_vs(i: u8) -> VirtualServer {
        VirtualServer {
            service: ServiceAddr(SocketAddr::from(([10, 96, 0, i], 80))),
            protocol: Protocol::Tcp,
        }
    }

    impl Transport for Model {
        fn dump(&mut self, request: &IpvsMessage) -> Result<Vec<IpvsMessage>, ReadError> {
            let mut datagram = Vec::new();
            match request {
                IpvsMessage::GetServices => {
                    for i in self.servers.keys() {
                        datagram.extend(service_reply(&model_vs(*i)));
                    }
                }
                IpvsMessage::GetDests(vs) => {
                    let i = (1..=255).find(|i| model_vs(*i) == *vs);
                    for (j, w) in i.and_then(|i| self.servers.get(&i)).into_iter().flatten() {
                        datagram.extend(dest_reply([10, 244, i.unwrap(), *j], *w, None));
                    }
                }
                other => panic!("unexpected request {other:?}"),
            }
            datagram.extend(done());
            Ok(decode_datagram(&datagram)?.0)
        }
    }

    /// One of kube-proxy's changes to the model: (virtual server, real server, what).
    #[derive(Clone, Copy, Debug)]
    enum Op {
        NewService,
        DelService,
        NewDest(u32),
        SetDest(u32),
        DelDest,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = (u8, u8, Op)> {
        use proptest::prelude::*;
        (
            1..6u8,
            1..5u8,
            prop_oneof![
                Just(Op::NewService),
                Just(Op::DelService),
                (0..3u32).prop_map(Op::NewDest),
                (0..3u32).prop_map(Op::SetDest),
                Just(Op::DelDest),
            ],
        )
    }

    proptest::proptest! {
        /// Re-reading only the virtual server a request named keeps the watcher's IPVS equal to
        /// a whole read, and reports exactly what a whole read's diff would.
        #[test]
        fn rereading_the_named_virtual_server_equals_a_whole_read(
            ops in proptest::collection::vec(op(), 1..40)
        ) {
            let mut kernel = Model::default();
            kernel.servers.insert(1, [(1, 1), (2, 1)].into());
            let mut state = read(&mut kernel).unwrap();
            for (i, j, op) in ops {
                let dests = kernel.servers.get_mut(&i);
                match (op, dests) {
                    (Op::NewService, None) => {
                        kernel.servers.insert(i, Default::default());
                    }
                    (Op::DelService, Some(_)) => {
                        kernel.servers.remove(&i);
                    }
                    (Op::NewDest(w) | Op::SetDest(w), Some(d)) => {
                        d.insert(j, w);
                    }
                    (Op::DelDest, Some(d)) => {
                        d.remove(&j);
                    }
                    // The kernel refuses it; the trigger still reports the send.
                    _ => {}
                }
                use zdt_common::genl::*;
                let cmd = match op {
                    Op::NewService => IPVS_CMD_NEW_SERVICE,
                    Op::DelService => IPVS_CMD_DEL_SERVICE,
                    Op::NewDest(_) => IPVS_CMD_NEW_DEST,
                    Op::SetDest(_) => IPVS_CMD_SET_DEST,
                    Op::DelDest => IPVS_CMD_DEL_DEST,
                };
                let before = state.routes.clone();
                let change = reread_server(&mut kernel, &mut state, &model_vs(i), cmd).unwrap();
                let whole = read(&mut kernel).unwrap();
                proptest::prop_assert_eq!(&state, &whole);
                let mut expected = before.diff(&whole.routes);
                let mut got = change;
                for c in [&mut expected, &mut got] {
                    c.added.sort_by_key(|r| r.route);
                    c.removed.sort_by_key(|r| r.route);
                }
                proptest::prop_assert_eq!(got, expected);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = decode_datagram(&bytes);
            let _ = parse_service(&bytes);
            let _ = parse_dest(&bytes);
            let _ = requested_server(&bytes);
        }
    }
}
