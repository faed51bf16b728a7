//! Reading a whole nf_tables table over netlink (NLM_F_DUMP of its rules, sets and set
//! elements), the way `nft list table` does, into a `TableMirror`. Used once at start and again
//! if notifications were lost.

use std::{
    io,
    time::{Duration, Instant},
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    nftables::{
        NfTablesMessage, RuleAttribute, RuleMessage, SetAttribute, SetElementList,
        SetElementMessage, SetMessage,
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::mirror::{self, TableMirror};

/// Where the time of one table read went (for the start-up benchmark).
#[derive(Clone, Copy, Debug, Default)]
pub struct DumpStats {
    /// Dump requests sent (one for the sets, one per mirrored set's elements, one for rules).
    pub requests: usize,
    /// Messages received.
    pub messages: usize,
    /// Waiting in `recv` (the kernel building the dump).
    pub kernel: Duration,
    /// Decoding the messages (netlink-packet-netfilter).
    pub decode: Duration,
    /// Applying them to the mirror.
    pub apply: Duration,
}

/// Replaces `mirror`'s content with the table as the kernel holds it now. A table that does not
/// exist reads as empty.
pub fn dump(mirror: &mut TableMirror) -> io::Result<DumpStats> {
    let mut stats = DumpStats::default();
    let (family, table) = mirror.table();
    let table = table.to_owned();
    *mirror = TableMirror::new(family, &table);
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut rx = vec![0u8; 1 << 20];
    let mut sets = Vec::new();
    request(
        &socket,
        &mut rx,
        &mut stats,
        family,
        NfTablesMessage::GetSet(SetMessage {
            attributes: vec![SetAttribute::Table(table.clone())],
        }),
        |msg| {
            if let NfTablesMessage::GetSet(s) | NfTablesMessage::NewSet(s) = &msg {
                sets.extend(s.attributes.iter().find_map(|a| match a {
                    SetAttribute::Name(n) => Some(n.clone()),
                    _ => None,
                }));
            }
            mirror.apply(family, &msg);
        },
    )?;
    // Only the sets routing depends on (see `mirror`): a large node has tens of thousands of
    // anonymous maps but no other set whose elements matter.
    for set in sets.into_iter().filter(|s| mirror::routes_through(s)) {
        request(
            &socket,
            &mut rx,
            &mut stats,
            family,
            NfTablesMessage::GetSetElement(SetElementMessage {
                attributes: vec![
                    SetElementList::Table(table.clone()),
                    SetElementList::Set(set),
                ],
            }),
            |msg| {
                mirror.apply(family, &msg);
            },
        )?;
    }
    request(
        &socket,
        &mut rx,
        &mut stats,
        family,
        NfTablesMessage::GetRule(RuleMessage {
            attributes: vec![RuleAttribute::Table(table.clone())],
        }),
        |msg| {
            mirror.apply(family, &msg);
        },
    )?;
    Ok(stats)
}

/// Sends one dump request and feeds every reply to `each` until NLMSG_DONE. ENOENT (no such
/// table) is an empty reply.
fn request(
    socket: &Socket,
    rx: &mut [u8],
    stats: &mut DumpStats,
    family: u8,
    msg: NfTablesMessage,
    mut each: impl FnMut(NfTablesMessage),
) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::from(family), 0, 0),
            msg,
        )),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    stats.requests += 1;
    loop {
        let t = Instant::now();
        let n = socket.recv(&mut &mut rx[..], 0)?;
        stats.kernel += t.elapsed();
        let mut rest = &rx[..n];
        while !rest.is_empty() {
            let t = Instant::now();
            let reply = super::nft_decode::deserialize(rest).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("nf_tables dump: {e}"))
            })?;
            stats.decode += t.elapsed();
            stats.messages += 1;
            let len = (reply.header.length as usize + 3) & !3;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        Some(code) if code.get() == -libc::ENOENT => Ok(()),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        None => Ok(()),
                    };
                }
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::NfTables(m),
                    ..
                }) => {
                    let t = Instant::now();
                    each(m);
                    stats.apply += t.elapsed();
                }
                _ => {}
            }
            if len == 0 || len > rest.len() {
                break;
            }
            rest = &rest[len..];
        }
    }
}
