//! `tp_btf/tcp_send_reset`: this host answered a segment with a RST.
//!
//! With reason `NO_SOCKET` the kernel had no socket for the segment, which for a SYN means no
//! listener: the client sees `connection refused`. Then `sk` is NULL and the segment's
//! destination is the refusing side (the pod); its network namespace is the one of the device
//! the segment arrived on. Any other reason is a reset of an existing connection by its local socket
//! (`TCP_ABORT_ON_CLOSE`: the process closed with unread data, e.g. it exited), or by a
//! listener answering a segment of no connection it knows (named by the segment's ends, not
//! the listener's wildcard). A `NO_SOCKET` RST that answers anything but a bare SYN is
//! [`kind::RESET_STRAY`], never a refusal.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::BtfTracePointContext};
use zdt_common::{Event, kind, rst_reason, tcp_flags};

use crate::{
    emit::emit,
    kernel::{self, offset},
    record::{Addr, set_addrs},
    watch,
};

/// `TCP_TIME_WAIT` and `TCP_NEW_SYN_RECV`: sockets that are not full (`sk_fullsock`); the
/// tracepoint takes the addresses from the segment then.
const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;
/// A listener resets a segment of no connection it knows (an ACK whose request socket is gone);
/// its own addresses are the wildcard's and no peer's.
const TCP_LISTEN: u8 = 10;

/// The IP protocol number of TCP (the IPv6 header's next header).
const IPPROTO_TCP: u8 = 6;

/// One side of the reset (or a socket's, local then remote): family, port (host order),
/// address.
pub struct Ends {
    pub family: u16,
    pub sport: u16,
    pub saddr: Addr,
    pub dport: u16,
    pub daddr: Addr,
    /// The answered segment's TCP flags (read only from the segment; 0 from a full socket).
    flags: u8,
}

/// A full socket's ends, as `TP_STORE_ADDR_PORTS` stores them: local then remote. `sk` is the
/// BTF-typed argument: its `sock_common` fields are direct loads; `inet_sport` lies past
/// `struct sock` (in `inet_sock`), where the verifier allows no direct load.
#[inline(always)]
pub fn of_sock(sk: u64) -> Option<Ends> {
    let family: u16 = kernel::load_btf(sk, offset!(skc_family));
    let (saddr, daddr) = match family {
        watch::AF_INET => (
            [
                u64::from(kernel::load_btf::<u32>(sk, offset!(skc_rcv_saddr))),
                0,
            ],
            [
                u64::from(kernel::load_btf::<u32>(sk, offset!(skc_daddr))),
                0,
            ],
        ),
        watch::AF_INET6 => (
            [
                kernel::load_btf(sk, offset!(skc_v6_rcv_saddr)),
                kernel::load_btf(sk, offset!(skc_v6_rcv_saddr) + 8),
            ],
            [
                kernel::load_btf(sk, offset!(skc_v6_daddr)),
                kernel::load_btf(sk, offset!(skc_v6_daddr) + 8),
            ],
        ),
        _ => return None,
    };
    Some(Ends {
        family,
        // Not `skc_num`: `tcp_close` has released the port (zeroed it) when it sends the
        // abort-on-close RST; `inet_sport` stays, as the classic record has it.
        sport: u16::from_be(kernel::read(sk, offset!(inet_sport))?),
        saddr,
        dport: u16::from_be(kernel::load_btf(sk, offset!(skc_dport))),
        daddr,
        flags: 0,
    })
}

/// Byte `k` of `w`, bytes copied from memory as native (little-endian) words.
#[inline(always)]
fn byte<const N: usize>(w: &[u64; N], k: usize) -> u8 {
    (w[k / 8] >> (8 * (k % 8))) as u8
}

/// The 4 bytes from byte `k` (a multiple of 4) of `w`, as loaded from memory.
#[inline(always)]
fn word32<const N: usize>(w: &[u64; N], k: usize) -> u32 {
    (w[k / 8] >> (8 * (k % 8))) as u32
}

/// The ends of the reset that answers `skb`, as `TP_STORE_ADDR_PORTS_SKB` stores them: the
/// segment's destination is the resetting side. `skb->data` is at the TCP header there.
#[inline(always)]
fn of_segment(skb: u64) -> Option<Ends> {
    // The verifier allows no arithmetic on a nullable argument before this test.
    if skb == 0 {
        return None;
    }
    let head: u64 = kernel::load_btf(skb, offset!(skb_head));
    let network: u16 = kernel::load_btf(skb, offset!(skb_network_header));
    // The IP header and the TCP header behind it in one copy (two copies, the ports and flags
    // from `skb->data`, cost ~25 ns more): IPv6 (40 bytes) + 24, or IPv4 without options
    // (20) + 44; the answer reads the TCP header's first 14 bytes (the head buffer ends with
    // `skb_shared_info`: bytes past a short segment are there). As words, not bytes: byte
    // arrays compiled to a load, shift and store per byte.
    let h: [u64; 8] = kernel::read(head + u64::from(network), 0)?;
    let v6 = byte(&h, 0) >> 4 == 6;
    // The TCP header's ports and flags where it follows the IP header (no IPv4 options, no
    // IPv6 extension header).
    let (family, saddr, daddr, tcp) = if v6 {
        let tcp = (byte(&h, 6) == IPPROTO_TCP)
            .then(|| (word32(&h, 40), byte(&h, 40 + tcp_flags::OFFSET)));
        (watch::AF_INET6, [h[1], h[2]], [h[3], h[4]], tcp)
    } else {
        let tcp =
            (byte(&h, 0) & 0x0f == 5).then(|| (word32(&h, 20), byte(&h, 20 + tcp_flags::OFFSET)));
        let (s, d) = (word32(&h, 12), word32(&h, 16));
        (watch::AF_INET, [u64::from(s), 0], [u64::from(d), 0], tcp)
    };
    let (ports, flags) = match tcp {
        Some(t) => t,
        None => {
            let t: [u64; 2] = kernel::read(kernel::load_btf::<u64>(skb, offset!(skb_data)), 0)?;
            (word32(&t, 0), byte(&t, tcp_flags::OFFSET))
        }
    };
    // Ports in network order: the source's in the low half of the word.
    Some(Ends {
        family,
        sport: u16::from_be((ports >> 16) as u16),
        saddr: daddr,
        dport: u16::from_be(ports as u16),
        daddr: saddr,
        flags,
    })
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
    if offset!(valid) == 0 {
        return Err(0);
    }
    let state: u8 = if sk != 0 {
        kernel::load_btf(sk, offset!(skc_state))
    } else {
        0
    };
    let full = sk != 0 && state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV;
    // A listener's ends would be `0.0.0.0:8080 ← 0.0.0.0:0` (the kernel's own record has
    // that): the segment's name the connection it answers.
    let ends = if full && state != TCP_LISTEN {
        of_sock(sk)
    } else {
        of_segment(skb)
    }
    .ok_or(0)?;
    let addr_watched = watch::is_watched(ends.family, &ends.saddr);
    // The namespace is needed either way: as a filter when the address is not watched, and to
    // tell a pod from a new one that reuses its IP when it is.
    // The segment's fields and its device's namespace are direct loads through the BTF-typed
    // argument (kernel::load_btf): 8 helper calls here were ~170 of the ~530 ns a refusal cost.
    let netns = if sk != 0 {
        kernel::netns_of_btf_sock(sk)
    } else if skb != 0 {
        let dev: u64 = kernel::load_btf(skb, offset!(skb_dev));
        let net: u64 = kernel::load_btf(dev, offset!(netdev_net));
        kernel::load_btf::<u32>(net, offset!(net_inum))
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
    set_addrs(&mut event, ends.saddr, ends.daddr);
    event.port = ends.sport;
    event.peer_port = ends.dport;
    event.state = u32::from(state);
    // No `tgid`: in softirq it names whatever task was interrupted, and no reader uses it for
    // resets (a helper call less).
    event.netns = netns;
    emit(&event);
    Ok(())
}
