//! `tp_btf/tcp_send_reset`: this host answered a segment with a RST.
//!
//! With reason `NO_SOCKET` the kernel had no socket for the segment, which for a SYN means no
//! listener: the client sees `connection refused`. Then `sk` is NULL and the segment's
//! destination is the refusing side (the pod); its network namespace is the one of the device
//! the segment arrived on. Any other reason is a reset of an existing connection by its local socket
//! (`TCP_ABORT_ON_CLOSE`: the process closed with unread data, e.g. it exited). A `NO_SOCKET`
//! RST that answers anything but a bare SYN is [`kind::RESET_STRAY`], never a refusal.

use aya_ebpf::{EbpfContext as _, helpers::bpf_ktime_get_ns, programs::BtfTracePointContext};
use zdt_common::{Event, KernelOffsets, kind, rst_reason, tcp_flags};

use crate::{emit::emit, kernel, watch};

/// `TCP_TIME_WAIT` and `TCP_NEW_SYN_RECV`: sockets that are not full (`sk_fullsock`); the
/// tracepoint takes the addresses from the segment then.
const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;

/// One side of the reset: family, port (host order), address (IPv4 in the first 4 bytes).
struct Ends {
    family: u16,
    sport: u16,
    saddr: [u8; 16],
    dport: u16,
    daddr: [u8; 16],
    /// The answered segment's TCP flags (read only from the segment; 0 from a full socket).
    flags: u8,
}

/// A full socket's ends, as `TP_STORE_ADDR_PORTS` stores them: local then remote.
#[inline(always)]
fn of_sock(sk: u64, o: &KernelOffsets) -> Option<Ends> {
    let family: u16 = kernel::read(sk, o.skc_family)?;
    let mut ends = Ends {
        family,
        // Not `skc_num`: `tcp_close` has released the port (zeroed it) when it sends the
        // abort-on-close RST; `inet_sport` stays, as the classic record has it.
        sport: u16::from_be(kernel::read(sk, o.inet_sport)?),
        saddr: [0; 16],
        dport: u16::from_be(kernel::read(sk, o.skc_dport)?),
        daddr: [0; 16],
        flags: 0,
    };
    match family {
        watch::AF_INET => {
            ends.saddr[..4].copy_from_slice(&kernel::read::<[u8; 4]>(sk, o.skc_rcv_saddr)?);
            ends.daddr[..4].copy_from_slice(&kernel::read::<[u8; 4]>(sk, o.skc_daddr)?);
        }
        watch::AF_INET6 => {
            ends.saddr = kernel::read(sk, o.skc_v6_rcv_saddr)?;
            ends.daddr = kernel::read(sk, o.skc_v6_daddr)?;
        }
        _ => return None,
    }
    Some(ends)
}

/// The ends of the reset that answers `skb`, as `TP_STORE_ADDR_PORTS_SKB` stores them: the
/// segment's destination is the resetting side. `skb->data` is at the TCP header there.
#[inline(always)]
fn of_segment(skb: u64, o: &KernelOffsets) -> Option<Ends> {
    // The verifier allows no arithmetic on a nullable argument before this test.
    if skb == 0 {
        return None;
    }
    let head: u64 = kernel::load_btf(skb, o.skb_head);
    let data: u64 = kernel::load_btf(skb, o.skb_data);
    let network: u16 = kernel::load_btf(skb, o.skb_network_header);
    // Ports, then (byte 13) the flags: one copy.
    let tcp: [u8; 14] = kernel::read(data, 0)?;
    // 40 bytes: the IPv6 header, or the IPv4 one and the TCP header after it (one copy).
    let h: [u8; 40] = kernel::read(head + u64::from(network), 0)?;
    let mut ends = Ends {
        family: watch::AF_INET,
        sport: u16::from_be_bytes([tcp[2], tcp[3]]),
        saddr: [0; 16],
        dport: u16::from_be_bytes([tcp[0], tcp[1]]),
        daddr: [0; 16],
        flags: tcp[tcp_flags::OFFSET],
    };
    if h[0] >> 4 == 6 {
        ends.family = watch::AF_INET6;
        ends.saddr.copy_from_slice(&h[24..40]);
        ends.daddr.copy_from_slice(&h[8..24]);
    } else {
        ends.saddr[..4].copy_from_slice(&h[16..20]);
        ends.daddr[..4].copy_from_slice(&h[12..16]);
    }
    Some(ends)
}

/// `tp_btf/tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, enum
/// sk_rst_reason reason)`: a BTF tracepoint, not the classic one, because the kernel skips
/// every classic tracepoint program on a CPU while another tracing program (anyone's kprobe,
/// or one of ours on a syscall) runs there (`bpf_prog_active`), and a reset is sent in softirq,
/// which interrupts whatever runs: refused connections were then lost. A BTF tracepoint program
/// is skipped only when it interrupts itself. It reads what the classic record holds, from the
/// socket or the segment.
pub fn on_send_reset(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    let reason: u64 = ctx.arg(2);
    let o = kernel::offsets();
    if o.valid == 0 {
        return Err(0);
    }
    let state: u8 = if sk != 0 {
        kernel::read(sk, o.skc_state).unwrap_or(0)
    } else {
        0
    };
    let full = sk != 0 && state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV;
    let ends = if full {
        of_sock(sk, &o)
    } else {
        of_segment(skb, &o)
    }
    .ok_or(0)?;
    let addr_watched = watch::is_watched(ends.family, &ends.saddr);
    // The namespace is needed either way: as a filter when the address is not watched, and to
    // tell a pod from a new one that reuses its IP when it is.
    // The segment's fields and its device's namespace are direct loads through the BTF-typed
    // argument (kernel::load_btf): 8 helper calls here were ~170 of the ~530 ns a refusal cost.
    let netns = if sk != 0 {
        kernel::netns_of_sock(sk)
    } else if skb != 0 {
        let dev: u64 = kernel::load_btf(skb, o.skb_dev);
        let net: u64 = kernel::load_btf(dev, o.netdev_net);
        kernel::load_btf::<u32>(net, o.net_inum)
    } else {
        0
    };
    if !addr_watched && !watch::is_watched_netns(netns) {
        return Ok(());
    }
    // Only a RST answering a bare SYN is a refused connection: a client's kernel also answers
    // with NO_SOCKET a late SYN-ACK or data to a port it closed (its connect gave up), which
    // no server refused.
    let bare_syn = ends.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    let kind = if reason == u64::from(rst_reason::NO_SOCKET) && !full && !bare_syn {
        kind::RESET_STRAY
    } else {
        kind::RESET_SENT
    };
    let mut event = Event::new(kind, unsafe { bpf_ktime_get_ns() });
    event.sk = sk;
    event.family = ends.family;
    event.reason = reason as u32;
    event.addr = ends.saddr;
    event.peer_addr = ends.daddr;
    event.port = ends.sport;
    event.peer_port = ends.dport;
    event.state = u32::from(state);
    event.tgid = ctx.tgid();
    event.netns = netns;
    emit(&event);
    Ok(())
}
