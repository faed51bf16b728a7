//! `netns_gone`: the moment a pod's network namespace is torn down, seen as the removal of its
//! veth peer in the node's namespace (rtnetlink `RTM_DELLINK`, multicast group RTNLGRP_LINK).
//!
//! No tracepoint marks the destruction of a network namespace, but a namespace's devices are
//! unregistered when it dies, and a veth takes its peer with it. So for each watched namespace
//! the agent asks the kernel which id the node's namespace gives it (RTM_GETNSID with its fd),
//! finds the node-side veths whose peer lives there (IFLA_LINK_NETNSID), and reports the first
//! RTM_DELLINK of one of them, stamped when the notification is received (the kernel sends it
//! synchronously while unregistering). Runs in the agent's namespace, the node's (hostNetwork).

use std::{
    collections::HashMap,
    fs::File,
    os::fd::AsRawFd as _,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, bail};
use jiff::Timestamp;
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::sync::mpsc::Sender;

use crate::dataplane::guarded;
use crate::observation::{Kind, NodeName, Observation};

const RTNLGRP_LINK: u32 = 1;

/// A node-side veth whose peer is in a watched namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Peer {
    netns: u32,
    ifname: String,
}

/// Watches for the removal of the node-side veths of watched namespaces.
pub struct NetnsGoneWatcher {
    events: Socket,
    registry: NetnsGone,
}

/// Where namespaces are registered, also while the watcher runs (cluster mode: pods come and
/// go); cheap to clone.
#[derive(Clone)]
pub struct NetnsGone(Arc<Mutex<Registry>>);

struct Registry {
    requests: Socket,
    seq: u32,
    /// Node-side veths by interface index.
    peers: HashMap<u32, Peer>,
}

fn send(sock: &Socket, msg: RouteNetlinkMessage, flags: u16, seq: u32) -> anyhow::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    sock.send(&buf, 0).context("rtnetlink send failed")?;
    Ok(())
}

/// Receives until the reply to `seq` is complete; calls `f` for each message.
fn receive(sock: &Socket, seq: u32, mut f: impl FnMut(RouteNetlinkMessage)) -> anyhow::Result<()> {
    loop {
        let (buf, _) = sock.recv_from_full().context("rtnetlink receive failed")?;
        let mut offset = 0;
        while offset < buf.len() {
            let msg = guarded::decode(|| {
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
            })
            .context("undecodable rtnetlink message")?;
            let len = msg.header.length as usize;
            let this_seq = msg.header.sequence_number;
            match msg.payload {
                NetlinkPayload::InnerMessage(m) if this_seq == seq => f(m),
                NetlinkPayload::Done(_) if this_seq == seq => return Ok(()),
                NetlinkPayload::Error(e) if this_seq == seq => {
                    if e.code.is_none() {
                        return Ok(());
                    }
                    bail!("rtnetlink error: {e:?}");
                }
                _ => {}
            }
            let single = msg.header.flags & netlink_packet_core::NLM_F_MULTIPART == 0;
            if single && this_seq == seq {
                return Ok(());
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

impl NetnsGoneWatcher {
    pub fn new() -> anyhow::Result<Self> {
        let mut events =
            Socket::new(NETLINK_ROUTE).context("failed to open an rtnetlink socket")?;
        events
            .bind(&SocketAddr::new(0, 0))
            .context("failed to bind an rtnetlink socket")?;
        events
            .add_membership(RTNLGRP_LINK)
            .context("failed to subscribe to link notifications")?;
        let mut requests =
            Socket::new(NETLINK_ROUTE).context("failed to open an rtnetlink socket")?;
        requests
            .bind_auto()
            .context("failed to bind an rtnetlink socket")?;
        requests
            .connect(&SocketAddr::new(0, 0))
            .context("failed to connect an rtnetlink socket")?;
        Ok(Self {
            events,
            registry: NetnsGone(Arc::new(Mutex::new(Registry {
                requests,
                seq: 1,
                peers: HashMap::new(),
            }))),
        })
    }

    /// A handle to register namespaces while [`run`](Self::run) is running.
    pub fn registry(&self) -> NetnsGone {
        self.registry.clone()
    }

    /// Starts watching the namespace at `path` (inode `inum`), see [`NetnsGone::watch`].
    pub fn watch(&mut self, path: &Path, inum: u32) -> anyhow::Result<usize> {
        self.registry.watch(path, inum)
    }
}

impl NetnsGone {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watching the namespace at `path` (inode `inum`): records the node-side veths whose
    /// peer lives there. Errors when it has none in this namespace. The namespace only needs to
    /// be open during the call: nothing here keeps it alive.
    pub fn watch(&self, path: &Path, inum: u32) -> anyhow::Result<usize> {
        self.lock().watch(path, inum)
    }

    /// Stops watching namespace `inum` (its pod's tombstone expired).
    pub fn forget(&self, inum: u32) {
        self.lock().peers.retain(|_, p| p.netns != inum);
    }

    /// Namespaces currently watched.
    pub fn len(&self) -> usize {
        let reg = self.lock();
        let mut ns: Vec<u32> = reg.peers.values().map(|p| p.netns).collect();
        ns.sort_unstable();
        ns.dedup();
        ns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().peers.is_empty()
    }
}

impl Registry {
    fn next_seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    fn watch(&mut self, path: &Path, inum: u32) -> anyhow::Result<usize> {
        // The dump first: listing a veth makes the kernel assign its peer namespace an id.
        let mut links = Vec::new();
        let seq = self.next_seq();
        send(
            &self.requests,
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
        )?;
        receive(&self.requests, seq, |m| {
            if let RouteNetlinkMessage::NewLink(l) = m {
                links.push(l);
            }
        })?;
        let file =
            File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
        let mut req = NsidMessage::default();
        req.attributes
            .push(NsidAttribute::Fd(file.as_raw_fd() as u32));
        let seq = self.next_seq();
        send(
            &self.requests,
            RouteNetlinkMessage::GetNsId(req),
            NLM_F_REQUEST,
            seq,
        )?;
        let mut nsid = None;
        receive(&self.requests, seq, |m| {
            if let RouteNetlinkMessage::NewNsId(n) = m {
                nsid = n.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) => Some(*id),
                    _ => None,
                });
            }
        })?;
        let Some(nsid) = nsid.filter(|id| *id >= 0) else {
            bail!("{} has no link to this namespace", path.display());
        };
        let mut found = 0;
        for l in links {
            let peer_ns = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::LinkNetNsId(id) => Some(*id),
                _ => None,
            });
            if peer_ns == Some(nsid) {
                let ifname = l
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                self.peers.insert(
                    l.header.index,
                    Peer {
                        netns: inum,
                        ifname,
                    },
                );
                found += 1;
            }
        }
        if found == 0 {
            bail!("no interface of this namespace leads to {}", path.display());
        }
        Ok(found)
    }
}

impl NetnsGoneWatcher {
    /// Reports `netns_gone` into `tx` until `stop` is set or the receiver is gone; with
    /// `keep_running` false also once every watched namespace is gone. Blocking: run it on its
    /// own thread.
    pub fn run(
        self,
        node: NodeName,
        tx: Sender<Observation>,
        stop: Arc<AtomicBool>,
        keep_running: bool,
    ) -> anyhow::Result<()> {
        let Self { events, registry } = self;
        // A receive timeout lets the thread notice `stop`.
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: a valid socket fd and a correctly sized timeval.
        unsafe {
            libc::setsockopt(
                events.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        while !stop.load(Ordering::Relaxed) && (keep_running || !registry.is_empty()) {
            let buf = match events.recv_from_full() {
                Ok((buf, _)) => buf,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e).context("rtnetlink receive failed"),
            };
            let received = Timestamp::now();
            let mut offset = 0;
            while offset < buf.len() {
                let Ok(msg) = guarded::decode(|| {
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
                }) else {
                    break;
                };
                let len = msg.header.length as usize;
                let removed = match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                        registry.lock().peers.remove(&l.header.index)
                    }
                    _ => None,
                };
                if let Some(peer) = removed {
                    // One namespace may have several veths: report it once.
                    registry.forget(peer.netns);
                    let mut o = Observation::new(Kind::NetnsGone, received, node.clone());
                    let k = o.details.kernel_mut();
                    k.netns = Some(peer.netns.into());
                    k.ifname = Some(peer.ifname);
                    if tx.blocking_send(o).is_err() {
                        return Ok(());
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
        Ok(())
    }
}
