//! `tp_btf/inet_sock_set_state`: listeners opening and closing, and connects the client gave
//! up.
//!
//! This tracepoint fires on every TCP state change of the node (about 10 a connection), so the
//! handler first tests the two states it is passed and returns unless one of them is
//! `TCP_LISTEN` or the change is `SYN_SENT` → `CLOSE` (no load, no map lookup). A BTF
//! tracepoint, not the classic one: that one fills its record (addresses, ports) on every
//! change before the program runs. The socket's fields are direct loads through the BTF-typed
//! argument, as `tcp_send_reset` reads a full socket (`reset::of_sock`). A listener usually
//! binds 0.0.0.0, so it is matched by its network namespace, not its address; a connect by its
//! destination as dialled.

use aya_ebpf::{EbpfContext as _, helpers::bpf_ktime_get_ns, programs::BtfTracePointContext};
use zdt_common::{Event, kind, tcp_state};

use crate::{
    emit::emit,
    kernel::{self, offset},
    record::set_addrs,
    reset::of_sock,
    watch,
};

const IPPROTO_TCP: u16 = 6;

/// `inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate)`.
pub fn on_set_state(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
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
    let Some(sk) = tcp_sock(ctx)? else {
        return Ok(());
    };
    let ends = of_sock(sk).ok_or(0)?;
    let netns = kernel::netns_of_btf_sock(sk);
    // A 0.0.0.0 listener only matches by namespace; a bound one by address as well.
    let unspecified = ends.saddr == [0, 0];
    let by_addr = !unspecified && watch::is_watched(ends.family, &ends.saddr);
    if !by_addr && !watch::is_watched_netns(netns) && watch::filtering() {
        return Ok(());
    }
    let mut event = Event::new(k, unsafe { bpf_ktime_get_ns() });
    event.sk = sk;
    event.family = ends.family;
    set_addrs(&mut event, ends.saddr, [0, 0]);
    event.port = ends.sport;
    event.state = new as u32;
    event.tgid = ctx.tgid();
    event.netns = netns;
    emit(&event);
    Ok(())
}

/// The socket, if it is TCP's (the tracepoint also fires for SCTP); Err before the loader set
/// the offsets.
#[inline(always)]
fn tcp_sock(ctx: &BtfTracePointContext) -> Result<Option<u64>, i32> {
    let sk: u64 = ctx.arg(0);
    // The verifier allows no arithmetic on a nullable argument before this test.
    if sk == 0 || offset!(valid) == 0 {
        return Err(0);
    }
    let protocol: u16 = kernel::load_btf(sk, offset!(sk_protocol));
    Ok((protocol == IPPROTO_TCP).then_some(sk))
}

/// `SYN_SENT` → `CLOSE`: a connect ended before any answer. With `sk_err` set the kernel ended
/// it (a RST: ECONNREFUSED; its own SYN retries exhausted: ETIMEDOUT), and
/// `inet_sk_error_report` reports it; with `sk_err` 0 the client closed it, its own timeout
/// having run out: a timeout no SYN retransmission may ever show.
fn on_connect_closed(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let Some(sk) = tcp_sock(ctx)? else {
        return Ok(());
    };
    let ends = of_sock(sk).ok_or(0)?;
    if !watch::is_watched(ends.family, &ends.daddr) {
        return Ok(());
    }
    let err: i32 = kernel::load_btf(sk, offset!(sk_err));
    if err != 0 {
        return Ok(());
    }
    let mut event = Event::new(kind::CONNECT_ABANDONED, unsafe { bpf_ktime_get_ns() });
    event.sk = sk;
    event.family = ends.family;
    set_addrs(&mut event, ends.daddr, ends.saddr);
    event.port = ends.dport;
    event.peer_port = ends.sport;
    event.state = tcp_state::CLOSE;
    event.tgid = ctx.tgid();
    event.netns = kernel::netns_of_btf_sock(sk);
    emit(&event);
    Ok(())
}
