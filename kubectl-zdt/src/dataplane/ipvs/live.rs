//! The kernel's IPVS, over a generic-netlink socket.

use std::io;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::{
    GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_GENERIC};

use super::{
    ReadError,
    reader::Transport,
    recorded::Dump,
    wire::{FAMILY, IpvsMessage, decode_datagram, encode_request},
};

/// The kernel's IPVS over a generic-netlink socket of the calling thread's network namespace.
pub struct Live {
    pub(super) socket: Socket,
    pub(super) family_id: u16,
    pub(super) seq: u32,
    pub(super) buf: Vec<u8>,
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
        let reply = crate::dataplane::guarded::decode(|| {
            NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(&buf[..n])
        })
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
