//! The trigger for every nf_tables-based dataplane (kube-proxy's nftables mode and iptables-nft):
//! the NFNLGRP_NFTABLES netlink group, what `nft monitor` listens to.
//!
//! nf_tables commits a transaction atomically and then notifies the group: one message per
//! object that changed (table, chain, rule, set, element), then `NFT_MSG_NEWGEN` with the new
//! generation id. All of a transaction's messages are sent at commit, so the time the first one
//! is received is the commit time (to the scheduling latency of this thread); the NEWGEN closes
//! the batch.

use std::io;

use jiff::Timestamp;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{
    NetfilterMessage, NetfilterMessageInner,
    nftables::{GenAttribute, NfTablesMessage},
};
use netlink_sys::Socket;

use super::{mirror, nfnetlink};

/// NFNLGRP_NFTABLES (include/uapi/linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;

/// One committed nf_tables transaction (or several, when they arrived before the previous one
/// was read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// When the first notification of the transaction was received.
    pub time: Timestamp,
    /// The notifications: (NFPROTO family, the changed object as the kernel describes it).
    pub changes: Vec<(u8, NfTablesMessage)>,
    /// The generation the commit produced (NEWGEN), if its notification arrived.
    pub generation: Option<u32>,
    /// Set when notifications were lost or unreadable: any table may have changed in ways the
    /// changes do not show, so mirrors must be read again.
    pub overrun: bool,
}

impl Commit {
    pub fn touches(&self, table: (u8, &str)) -> bool {
        self.overrun
            || self
                .changes
                .iter()
                .any(|(f, m)| *f == table.0 && mirror::table_of(m) == Some(table.1))
    }
}

/// What one notification says.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    /// A change to an nf_tables object.
    Change {
        family: u8,
        message: NfTablesMessage,
    },
    /// The end of a transaction.
    NewGen { generation: Option<u32> },
    /// A message that could not be decoded: what changed is unknown.
    Unreadable,
    /// Not nf_tables.
    Other,
}

/// Splits one received datagram into notices.
pub fn scan(datagram: &[u8]) -> Vec<Notice> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let Ok(header) = netlink_packet_core::NetlinkBuffer::new_checked(rest) else {
            out.push(Notice::Unreadable);
            break;
        };
        let len = header.length() as usize;
        out.push(match super::nft_decode::deserialize(rest) {
            Ok(msg) => notice(msg),
            Err(_) => Notice::Unreadable,
        });
        // Messages are 4-byte aligned within a datagram.
        let next = (len + 3) & !3;
        if next == 0 || next > rest.len() {
            break;
        }
        rest = &rest[next..];
    }
    out
}

fn notice(msg: NetlinkMessage<NetfilterMessage>) -> Notice {
    let NetlinkPayload::InnerMessage(NetfilterMessage { header, inner, .. }) = msg.payload else {
        return Notice::Other;
    };
    match inner {
        NetfilterMessageInner::NfTables(NfTablesMessage::NewGen(g)) => Notice::NewGen {
            generation: g.attributes.iter().find_map(|a| match a {
                GenAttribute::Id(id) => Some(*id),
                _ => None,
            }),
        },
        NetfilterMessageInner::NfTables(message) => Notice::Change {
            family: u8::from(header.family),
            message,
        },
        _ => Notice::Other,
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
            Notice::Change { family, message } => {
                self.open(time).changes.push((family, message));
                None
            }
            Notice::Unreadable => {
                self.overrun(time);
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
            changes: Vec::new(),
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
    use netlink_packet_netfilter::{
        NetfilterProtoFamily,
        nftables::{GenMessage, RuleAttribute, RuleMessage},
    };

    /// One notification as the kernel frames it.
    fn message(family: NetfilterProtoFamily, msg: NfTablesMessage) -> Vec<u8> {
        crate::dataplane::nfnetlink::frame(family, msg)
    }

    fn rule(chain: &str, handle: u64) -> NfTablesMessage {
        NfTablesMessage::DeleteRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table("kube-proxy".into()),
                RuleAttribute::Chain(chain.into()),
                RuleAttribute::Handle(handle),
            ],
        })
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_kube_proxy_sync_is_one_commit_stamped_at_its_first_notification() {
        let v4 = NetfilterProtoFamily::IPv4;
        let mut datagram = message(v4, rule("service-X", 56));
        datagram.extend(message(v4, rule("service-X", 57)));
        datagram.extend(message(
            NetfilterProtoFamily::Unspec,
            NfTablesMessage::NewGen(GenMessage {
                attributes: vec![GenAttribute::Id(42)],
            }),
        ));
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
        assert_eq!(c.changes.len(), 2);
        assert!(c.touches((2, "kube-proxy")));
        assert!(!c.touches((2, "nat")));
        assert!(!c.touches((10, "kube-proxy")));
    }

    #[test]
    fn a_generation_without_changes_is_no_commit() {
        let mut b = Batcher::default();
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
    fn an_unreadable_notification_makes_the_commit_touch_every_table() {
        let mut b = Batcher::default();
        b.push(Notice::Unreadable, t("2026-11-22T01:00:00Z"));
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
