//! `sock:inet_sock_set_state`: listeners opening and closing, and connects the client gave up.
//!
//! This tracepoint fires on every TCP state change of the node, so the handler first reads the
//! two states and returns unless one of them is `TCP_LISTEN` or the change is `SYN_SENT` →
//! `CLOSE` (two loads, no map lookup). A listener usually binds 0.0.0.0, so it is matched by
//! its network namespace, not its address; a connect by its destination as dialled.

use aya_ebpf::{EbpfContext as _, helpers::bpf_ktime_get_ns, programs::TracePointContext};
use zdt_common::{Event, kind, tcp_state, tracepoint::inet_sock_set_state as tp};

use crate::{
    emit::emit,
    field, kernel,
    record::{AddrLayout, addrs},
    watch,
};

const IPPROTO_TCP: u16 = 6;

const LAYOUT: AddrLayout = AddrLayout::new(
    tp::FAMILY,
    tp::SADDR,
    tp::DADDR,
    (tp::SADDR_V6, tp::DADDR_V6),
);

pub fn on_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    let old: i32 = field::load(ctx, tp::OLDSTATE);
    let new: i32 = field::load(ctx, tp::NEWSTATE);
    if old == tcp_state::SYN_SENT as i32 && new == tcp_state::CLOSE as i32 {
        return on_connect_closed(ctx);
    }
    let listen = tcp_state::LISTEN as i32;
    let k = if new == listen {
        kind::LISTEN_OPEN
    } else if old == listen && new == tcp_state::CLOSE as i32 {
        // LISTEN → SYN_RECV is not a close: it is a child socket cloned from the listener
        // (inet_csk_clone_lock copies the state, then sets SYN_RECV).
        kind::LISTEN_CLOSE
    } else {
        return Ok(());
    };
    let protocol: u16 = field::load(ctx, tp::PROTOCOL);
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let (family, saddr, _) = addrs(ctx, &LAYOUT)?;
    let sk: u64 = field::load(ctx, tp::SKADDR);
    let netns = kernel::netns_of_sock(sk);
    // A 0.0.0.0 listener only matches by namespace; a bound one by address as well.
    let unspecified = saddr == [0u8; 16];
    let by_addr = !unspecified && watch::is_watched(family, &saddr);
    if !by_addr && !watch::is_watched_netns(netns) && watch::filtering() {
        return Ok(());
    }
    let mut event = Event::new(k, unsafe { bpf_ktime_get_ns() });
    event.sk = sk;
    event.family = family;
    event.addr = saddr;
    event.port = field::load(ctx, tp::SPORT);
    event.state = new as u32;
    event.tgid = ctx.tgid();
    event.netns = netns;
    emit(&event);
    Ok(())
}

/// `SYN_SENT` → `CLOSE`: a connect ended before any answer. With `sk_err` set the kernel ended
/// it (a RST: ECONNREFUSED; its own SYN retries exhausted: ETIMEDOUT), and
/// `inet_sk_error_report` reports it; with `sk_err` 0 the client closed it, its own timeout
/// having run out: a timeout no SYN retransmission may ever show.
fn on_connect_closed(ctx: &TracePointContext) -> Result<(), i32> {
    let protocol: u16 = field::load(ctx, tp::PROTOCOL);
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let (family, saddr, daddr) = addrs(ctx, &LAYOUT)?;
    if !watch::is_watched(family, &daddr) {
        return Ok(());
    }
    let o = kernel::offsets();
    if o.valid == 0 {
        return Err(0);
    }
    let sk: u64 = field::load(ctx, tp::SKADDR);
    let err: i32 = kernel::read(sk, o.sk_err).ok_or(0)?;
    if err != 0 {
        return Ok(());
    }
    let mut event = Event::new(kind::CONNECT_ABANDONED, unsafe { bpf_ktime_get_ns() });
    event.sk = sk;
    event.family = family;
    event.addr = daddr;
    event.port = field::load(ctx, tp::DPORT);
    event.peer_addr = saddr;
    event.peer_port = field::load(ctx, tp::SPORT);
    event.state = tcp_state::CLOSE;
    event.tgid = ctx.tgid();
    event.netns = kernel::netns_of_sock(sk);
    emit(&event);
    Ok(())
}
