//! `tcp:tcp_send_reset`: this host answered a segment with a RST.
//!
//! With reason `NO_SOCKET` the kernel had no socket for the segment, which for a SYN means no
//! listener: the client sees `connection refused`. Then `skaddr` is NULL and `saddr` is the
//! refusing side (the pod); its network namespace is the one of the device the segment arrived
//! on. Any other reason is a reset of an existing connection by its local socket
//! (`TCP_ABORT_ON_CLOSE`: the process closed with unread data, e.g. it exited).

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    programs::TracePointContext,
};
use zdt_common::{
    Event, kind,
    tracepoint::{sockaddr, tcp_send_reset as tp},
};

use crate::{emit::emit, field, kernel, watch};

/// The address family, port (host order) and address of the 28-byte sockaddr at `at`, read in
/// one copy.
#[inline(always)]
fn read_sockaddr(ctx: &TracePointContext, at: usize) -> Result<(u16, u16, [u8; 16]), i32> {
    let raw: [u8; 28] = field::copy(ctx, at)?;
    let two = |i: usize| [raw[i], raw[i + 1]];
    let family = u16::from_ne_bytes(two(sockaddr::FAMILY));
    let port = u16::from_be_bytes(two(sockaddr::PORT));
    let mut addr = [0u8; 16];
    match family {
        watch::AF_INET => addr[..4].copy_from_slice(&raw[sockaddr::V4..sockaddr::V4 + 4]),
        watch::AF_INET6 => addr.copy_from_slice(&raw[sockaddr::V6..sockaddr::V6 + 16]),
        _ => return Err(0),
    }
    Ok((family, port, addr))
}

pub fn on_send_reset(ctx: &TracePointContext) -> Result<(), i32> {
    let (family, sport, saddr) = read_sockaddr(ctx, tp::SADDR)?;
    let sk: u64 = field::load(ctx, tp::SKADDR);
    let addr_watched = watch::is_watched(family, &saddr);
    // The namespace is needed either way: as a filter when the address is not watched, and to
    // tell a pod from a new one that reuses its IP when it is.
    let netns = if sk != 0 {
        kernel::netns_of_sock(sk)
    } else {
        let skb: u64 = field::load(ctx, tp::SKBADDR);
        kernel::netns_of_skb(skb)
    };
    if !addr_watched && !watch::is_watched_netns(netns) {
        return Ok(());
    }
    let (_, dport, daddr) = read_sockaddr(ctx, tp::DADDR)?;
    let state: i32 = field::load(ctx, tp::STATE);
    let mut event = Event::new(kind::RESET_SENT, unsafe { bpf_ktime_get_ns() });
    event.sk = sk;
    event.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    event.family = family;
    event.reason = field::load(ctx, tp::REASON);
    event.addr = saddr;
    event.peer_addr = daddr;
    event.port = sport;
    event.peer_port = dport;
    event.state = state as u32;
    event.tgid = ctx.tgid();
    event.netns = netns;
    emit(&event);
    Ok(())
}
