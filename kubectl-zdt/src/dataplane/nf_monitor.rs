//! The trigger for every nf_tables-based dataplane (kube-proxy's nftables mode and iptables-nft):
//! the NFNLGRP_NFTABLES netlink group, what `nft monitor` listens to.
//!
//! nf_tables commits a transaction atomically and then notifies the group: one message per
//! object that changed (table, chain, rule, set, element), then `NFT_MSG_NEWGEN` with the new
//! generation id. All of a transaction's messages are sent at commit, so the time the first one
//! is received is the commit time (to the scheduling latency of this thread); the NEWGEN closes
//! the batch.

use std::{collections::BTreeSet, io};

use jiff::Timestamp;
use netlink_packet_core::{NetlinkBuffer, NlasIterator};
use netlink_sys::Socket;

use super::nfnetlink;

/// NFNLGRP_NFTABLES (include/uapi/linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;
/// NFNL_SUBSYS_NFTABLES: the high byte of an nf_tables message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u8 = 15;
/// NFTA_GEN_ID.
const NFTA_GEN_ID: u16 = 1;
/// Attribute 1 names the table in every table-scoped message (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE,
/// NFTA_RULE_TABLE, NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, …).
const NFTA_TABLE_ATTR: u16 = 1;
/// struct nfgenmsg: family, version, res_id.
const NFGENMSG_LEN: usize = 4;

/// One committed nf_tables transaction (or several, when they arrived before the previous one
/// was read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// When the first notification of the transaction was received.
    pub time: Timestamp,
    /// (NFPROTO family, table name) of every table the transaction touched.
    pub tables: BTreeSet<(u8, String)>,
    /// The generation the commit produced (NEWGEN), if its notification arrived.
    pub generation: Option<u32>,
    /// Set when notifications were lost (socket buffer overrun): any table may have changed.
    pub overrun: bool,
}

impl Commit {
    pub fn touches(&self, table: (u8, &str)) -> bool {
        self.overrun
            || self
                .tables
                .iter()
                .any(|(f, t)| *f == table.0 && t == table.1)
    }
}

/// What one notification says.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    /// A change to an object in this table.
    Table { family: u8, table: String },
    /// The end of a transaction.
    NewGen { generation: Option<u32> },
    /// Not nf_tables, or no table named.
    Other,
}

/// Splits one received datagram into notices. Malformed messages end the scan (the kernel
/// never sends them; the rest of the datagram cannot be framed).
pub fn scan(datagram: &[u8]) -> Vec<Notice> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let Ok(msg) = NetlinkBuffer::new_checked(rest) else {
            break;
        };
        let len = msg.length() as usize;
        out.push(notice(msg.message_type(), msg.payload()));
        // Messages are 4-byte aligned within a datagram.
        let next = (len + 3) & !3;
        if next == 0 || next > rest.len() {
            break;
        }
        rest = &rest[next..];
    }
    out
}

fn notice(message_type: u16, payload: &[u8]) -> Notice {
    if message_type >> 8 != NFNL_SUBSYS_NFTABLES || payload.len() < NFGENMSG_LEN {
        return Notice::Other;
    }
    let family = payload[0];
    let attrs = &payload[NFGENMSG_LEN..];
    let first = |kind: u16| {
        NlasIterator::new(attrs)
            .map_while(Result::ok)
            .find(|nla| nla.kind() == kind)
            .map(|nla| nla.value().to_vec())
    };
    // The low byte of the message type is the nf_tables command.
    if (message_type & 0xff) as u8 == NFT_MSG_NEWGEN {
        let generation = first(NFTA_GEN_ID)
            .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
            .map(u32::from_be_bytes);
        return Notice::NewGen { generation };
    }
    match first(NFTA_TABLE_ATTR) {
        Some(name) => Notice::Table {
            family,
            // NLA_STRING values carry their NUL.
            table: String::from_utf8_lossy(name.strip_suffix(&[0]).unwrap_or(&name)).into_owned(),
        },
        None => Notice::Other,
    }
}

/// Groups notices into commits. Pure: the receive time is passed in.
#[derive(Debug, Default)]
pub struct Batcher {
    pending: Option<Commit>,
}

impl Batcher {
    /// Feeds one notice received at `time`; returns the commit it completes.
    pub fn push(&mut self, notice: Notice, time: Timestamp) -> Option<Commit> {
        match notice {
            Notice::Table { family, table } => {
                self.open(time).tables.insert((family, table));
                None
            }
            Notice::NewGen { generation } => {
                let mut commit = self.pending.take()?;
                commit.generation = generation;
                Some(commit)
            }
            Notice::Other => None,
        }
    }

    /// Notifications were dropped (ENOBUFS): whatever was pending, and anything, changed.
    pub fn overrun(&mut self, time: Timestamp) {
        self.open(time).overrun = true;
    }

    fn open(&mut self, time: Timestamp) -> &mut Commit {
        self.pending.get_or_insert_with(|| Commit {
            time,
            tables: BTreeSet::new(),
            generation: None,
            overrun: false,
        })
    }
}

/// A socket subscribed to NFNLGRP_NFTABLES in the calling thread's network namespace.
pub struct Monitor {
    socket: Socket,
    buf: Vec<u8>,
    batcher: Batcher,
}

/// Large enough for kube-proxy's biggest transactions (a full iptables-restore of a big cluster
/// notifies every rule); SO_RCVBUFFORCE needs CAP_NET_ADMIN, which the agent has.
const RECV_BUFFER: libc::c_int = 64 << 20;

impl Monitor {
    pub fn open() -> io::Result<Self> {
        let socket = nfnetlink::subscribe(NFNLGRP_NFTABLES)?;
        if let Err(e) = nfnetlink::force_receive_buffer(&socket, RECV_BUFFER) {
            tracing::warn!(
                "could not enlarge the nf_tables monitor buffer ({e}); big transactions may overrun it"
            );
        }
        Ok(Self {
            socket,
            buf: vec![0; 1 << 20],
            batcher: Batcher::default(),
        })
    }

    /// Blocks until the next commit; stamps each datagram the moment `recv` returns.
    pub fn next_commit(&mut self) -> io::Result<Commit> {
        loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => {
                    let time = Timestamp::now();
                    for notice in scan(&self.buf[..n]) {
                        if let Some(commit) = self.batcher.push(notice, time) {
                            return Ok(commit);
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    let time = Timestamp::now();
                    tracing::warn!("nf_tables notifications overran the socket buffer");
                    self.batcher.overrun(time);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One netlink message: nlmsghdr, nfgenmsg, attributes.
    fn message(cmd: u8, family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut payload = vec![family, 0, 0, 0];
        for (kind, value) in attrs {
            let len = 4 + value.len();
            payload.extend_from_slice(&(len as u16).to_ne_bytes());
            payload.extend_from_slice(&kind.to_ne_bytes());
            payload.extend_from_slice(value);
            payload.resize(payload.len().next_multiple_of(4), 0);
        }
        let len = 16 + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | u16::from(cmd)).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&payload);
        m
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_kube_proxy_sync_is_one_commit_stamped_at_its_first_notification() {
        // `delete rule` (8) and `add rule` (6) in table ip kube-proxy, then NEWGEN 42.
        let mut datagram = message(8, 2, &[(1, b"kube-proxy\0"), (2, b"service-X\0")]);
        datagram.extend(message(6, 2, &[(1, b"kube-proxy\0")]));
        datagram.extend(message(15, 0, &[(1, &42u32.to_be_bytes())]));
        let notices = scan(&datagram);
        assert_eq!(notices.len(), 3);
        let mut b = Batcher::default();
        let mut commits = Vec::new();
        for (i, n) in notices.into_iter().enumerate() {
            let time = t(&format!("2026-11-22T01:00:00.00000000{i}Z"));
            commits.extend(b.push(n, time));
        }
        assert_eq!(commits.len(), 1);
        let c = &commits[0];
        assert_eq!(c.time, t("2026-11-22T01:00:00.000000000Z"));
        assert_eq!(c.generation, Some(42));
        assert!(c.touches((2, "kube-proxy")));
        assert!(!c.touches((2, "nat")));
        assert!(!c.touches((10, "kube-proxy")));
    }

    #[test]
    fn a_generation_without_changes_is_no_commit() {
        let mut b = Batcher::default();
        let n = scan(&message(15, 0, &[(1, &7u32.to_be_bytes())]));
        assert_eq!(
            n,
            [Notice::NewGen {
                generation: Some(7)
            }]
        );
        assert_eq!(
            b.push(
                Notice::NewGen {
                    generation: Some(7)
                },
                Timestamp::now()
            ),
            None
        );
    }

    #[test]
    fn an_overrun_commit_touches_every_table() {
        let mut b = Batcher::default();
        b.overrun(t("2026-11-22T01:00:00Z"));
        let c = b
            .push(Notice::NewGen { generation: None }, Timestamp::now())
            .unwrap();
        assert!(c.touches((10, "nat")));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = scan(&bytes);
        }
    }
}
