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
//!
//! One file per concern: `wire` (the IPVS family's messages, encoded and decoded), `reader`
//! (reading IPVS through any [`Transport`]), `live` (the kernel's, over a socket), `recorded`
//! (dumps kept from the kernel and played back), and `test_commands` (writing to IPVS as
//! kube-proxy does: only the real-kernel check and tests use it, never the agent).

mod live;
mod reader;
mod recorded;
#[cfg(feature = "test-support")]
mod test_commands;
mod wire;

#[cfg(test)]
mod tests;

use std::{io, time::Duration};

use thiserror::Error;

pub use self::{
    live::Live,
    reader::{Ipvs, Transport, read, read_dests, reread_server, routes},
    recorded::{Dump, Replay},
    wire::{IpvsMessage, RawDest, decode_datagram, encode_request},
};
// Test-only: writing to IPVS (see `test_commands`).
#[cfg(feature = "test-support")]
pub use self::test_commands::{Command, encode_command, sendmsg_one_iovec};
use self::wire::parse_service;
use super::model::{Backend, Protocol, ServiceAddr};

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
