//! Reading a whole nf_tables table over netlink (NLM_F_DUMP of its rules, sets and set
//! elements), the way `nft list table` does, into a `TableMirror`. Used once at start and again
//! if notifications were lost.

use std::io;

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

/// Replaces `mirror`'s content with the table as the kernel holds it now. A table that does not
/// exist reads as empty.
pub fn dump(mirror: &mut TableMirror) -> io::Result<()> {
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
        family,
        NfTablesMessage::GetRule(RuleMessage {
            attributes: vec![RuleAttribute::Table(table.clone())],
        }),
        |msg| {
            mirror.apply(family, &msg);
        },
    )?;
    Ok(())
}

/// Sends one dump request and feeds every reply to `each` until NLMSG_DONE. ENOENT (no such
/// table) is an empty reply.
fn request(
    socket: &Socket,
    rx: &mut [u8],
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
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut rest = &rx[..n];
        while !rest.is_empty() {
            let reply = NetlinkMessage::<NetfilterMessage>::deserialize(rest).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("nf_tables dump: {e}"))
            })?;
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
                }) => each(m),
                _ => {}
            }
            if len == 0 || len > rest.len() {
                break;
            }
            rest = &rest[len..];
        }
    }
}
