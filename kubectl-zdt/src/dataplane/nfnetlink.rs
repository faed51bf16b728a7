//! Sockets subscribed to a netfilter netlink multicast group (nfnetlink), the channel through
//! which the kernel announces nf_tables commits and new conntrack entries.

use std::{io, os::fd::AsRawFd as _, time::Duration};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// Opens a NETLINK_NETFILTER socket in the calling thread's network namespace and joins `group`
/// (NFNLGRP_*, include/uapi/linux/netfilter/nfnetlink.h).
pub fn subscribe(group: u32) -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind(&SocketAddr::new(0, 0))?;
    socket.add_membership(group)?;
    Ok(socket)
}

/// Sets the receive buffer past `rmem_max` (SO_RCVBUFFORCE needs CAP_NET_ADMIN, which the
/// agent has), so bursts of notifications are not dropped.
pub fn force_receive_buffer(socket: &Socket, bytes: libc::c_int) -> io::Result<()> {
    set_option(socket, libc::SO_RCVBUFFORCE, &bytes)
}

/// SO_RCVTIMEO: `None` blocks forever.
pub fn set_receive_timeout(socket: &Socket, timeout: Option<Duration>) -> io::Result<()> {
    let tv = match timeout {
        None => libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        // A zero timeval would mean "forever": wait at least 1 µs.
        Some(d) => libc::timeval {
            // (The field types are not named: musl's libc::time_t is deprecated.)
            tv_sec: d.as_secs().try_into().unwrap_or(i32::MAX.into()),
            tv_usec: d.subsec_micros().max(1).into(),
        },
    };
    set_option(socket, libc::SO_RCVTIMEO, &tv)
}

fn set_option<T>(socket: &Socket, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the size passed, as SOL_SOCKET option `name` expects.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            std::ptr::from_ref(value).cast(),
            libc::socklen_t::try_from(size_of::<T>()).unwrap_or(libc::socklen_t::MAX),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One netfilter message framed as the kernel sends it (nlmsghdr, nfgenmsg, attributes): for
/// tests and benchmarks that feed the decoders without a kernel.
pub fn frame(family: NetfilterProtoFamily, inner: impl Into<NetfilterMessageInner>) -> Vec<u8> {
    let mut nl = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            inner,
        )),
    );
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}
