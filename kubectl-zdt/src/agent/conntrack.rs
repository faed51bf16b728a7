//! Which backend a client's failed connection really went to: kube-proxy DNAT'ed it, so the
//! client's socket only knows the ClusterIP it dialled. Conntrack knows both ends: a GET of the
//! original tuple (client → ClusterIP) returns the reply tuple, whose source is the pod. The
//! entry outlives the failure (a refused connection's entry stays in CLOSE for 10 s), and the
//! lookup is one netlink round trip in the node's namespace, where the DNAT happened (this is
//! what Coroot calls the actual destination).

use std::{net::SocketAddr, time::Duration};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterProtoFamily,
    conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_NETFILTER};

use crate::dataplane::{flows, nfnetlink};

/// A conntrack query socket.
pub struct Conntrack {
    sock: Socket,
    seq: u32,
}

impl Conntrack {
    pub fn open() -> std::io::Result<Self> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&NlAddr::new(0, 0))?;
        // A lookup must never stall the agent's stream.
        nfnetlink::set_receive_timeout(&sock, Some(Duration::from_millis(20)))?;
        Ok(Self { sock, seq: 0 })
    }

    /// Whether conntrack has the TCP connection `client` → `server` as its original direction
    /// without address translation: the client dialled the pod's own address (a kubelet probe),
    /// not a Service's. None when conntrack does not have it that way (a connection to a
    /// ClusterIP is known by the ClusterIP, not by the pod).
    pub fn untranslated(&mut self, client: SocketAddr, server: SocketAddr) -> Option<bool> {
        let flows = self.get(client, server)?;
        flows
            .iter()
            .find(|f| f.frontend == server)
            .map(|f| !f.dnatted())
    }

    /// The backend (pod IP:port) of the TCP connection `client` → `dialled`, if conntrack still
    /// has it and it was DNAT'ed.
    pub fn backend_of(&mut self, client: SocketAddr, dialled: SocketAddr) -> Option<SocketAddr> {
        let flows = self.get(client, dialled)?;
        flows
            .into_iter()
            .find(|f| f.frontend == dialled && f.dnatted())
            .map(|f| f.backend)
    }

    /// The conntrack entries whose original direction is the TCP connection `client` →
    /// `dialled` (one netlink GET); None when the query failed or timed out.
    fn get(&mut self, client: SocketAddr, dialled: SocketAddr) -> Option<Vec<flows::Flow>> {
        self.seq = self.seq.wrapping_add(1);
        let family = if client.is_ipv4() {
            NetfilterProtoFamily::IPv4
        } else {
            NetfilterProtoFamily::IPv6
        };
        let orig = vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(client.ip()),
                IPTuple::DestinationAddress(dialled.ip()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::Tcp),
                ProtoTuple::SourcePort(client.port()),
                ProtoTuple::DestinationPort(dialled.port()),
            ]),
        ];
        let msg = NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            ConntrackMessage::Get(vec![ConntrackAttribute::CtaTupleOrig(orig)]),
        );
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        if let Err(e) = self.sock.send(&buf, 0) {
            tracing::debug!("conntrack query for {client} → {dialled} failed: {e}");
            return None;
        }
        let reply = match self.sock.recv_from_full() {
            Ok((reply, _)) => reply,
            Err(e) => {
                tracing::debug!("no conntrack answer for {client} → {dialled}: {e}");
                return None;
            }
        };
        let found = flows::decode(&reply);
        if found.is_empty() {
            let errno = reply
                .get(16..20)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            tracing::debug!(
                "conntrack has no entry for {client} → {dialled} ({} bytes, error {errno:?})",
                reply.len()
            );
        }
        Some(found)
    }
}
