//! Client-side failures, on any node: errors delivered to sockets and SYN retransmits. Both are
//! matched by the destination as the client dialled it (a ClusterIP or a pod IP).

use aya_ebpf::{EbpfContext as _, helpers::bpf_ktime_get_ns, programs::TracePointContext};
use zdt_common::{
    Event, kind, tcp_state,
    tracepoint::{inet_sk_error_report as er, tcp_retransmit_skb as rt},
};

use crate::{
    emit::emit,
    field, kernel,
    record::{AddrLayout, addrs, set_addrs},
    watch,
};

const IPPROTO_TCP: u16 = 6;

/// `sock:inet_sk_error_report`: `error` is the errno the application will see (111
/// ECONNREFUSED, 104 ECONNRESET, 110 ETIMEDOUT, 113 EHOSTUNREACH). It also fires with 0.
pub fn on_error_report(ctx: &TracePointContext) -> Result<(), i32> {
    let error: i32 = field::load(ctx, er::ERROR);
    if error == 0 {
        return Ok(());
    }
    let protocol: u16 = field::load(ctx, er::PROTOCOL);
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    const LAYOUT: AddrLayout = AddrLayout::new(
        er::FAMILY,
        er::SADDR,
        er::DADDR,
        (er::SADDR_V6, er::DADDR_V6),
    );
    let (family, saddr, daddr) = addrs(ctx, &LAYOUT)?;
    if !watch::is_watched(family, &daddr) {
        return Ok(());
    }
    let mut event = Event::new(kind::SOCK_ERROR, unsafe { bpf_ktime_get_ns() });
    event.family = family;
    event.reason = error.unsigned_abs();
    set_addrs(&mut event, daddr, saddr);
    event.port = field::load(ctx, er::DPORT);
    event.peer_port = field::load(ctx, er::SPORT);
    // No `tgid`: no reader uses it for socket errors (a helper call less).
    emit(&event);
    Ok(())
}

/// `tcp:tcp_retransmit_skb` in `SYN_SENT`: the SYN went unanswered (no route to a namespace
/// that is gone, a dropped packet); the connect will time out if it keeps happening.
pub fn on_retransmit(ctx: &TracePointContext) -> Result<(), i32> {
    let state: i32 = field::load(ctx, rt::STATE);
    if state != tcp_state::SYN_SENT as i32 {
        return Ok(());
    }
    // A failed attempt sent nothing (and is not in the socket's tcpi_total_retrans); kernels
    // without `err` count it too.
    if kernel::retransmit_has_err() {
        let err: i32 = field::load(ctx, rt::ERR);
        if err != 0 {
            return Ok(());
        }
    }
    const LAYOUT: AddrLayout = AddrLayout::new(
        rt::FAMILY,
        rt::SADDR,
        rt::DADDR,
        (rt::SADDR_V6, rt::DADDR_V6),
    );
    let (family, saddr, daddr) = addrs(ctx, &LAYOUT)?;
    if !watch::is_watched(family, &daddr) {
        return Ok(());
    }
    let sk: u64 = field::load(ctx, rt::SKADDR);
    let mut event = Event::new(kind::SYN_RETRANSMIT, unsafe { bpf_ktime_get_ns() });
    event.sk = sk;
    event.family = family;
    set_addrs(&mut event, daddr, saddr);
    event.port = field::load(ctx, rt::DPORT);
    event.peer_port = field::load(ctx, rt::SPORT);
    event.state = state as u32;
    event.tgid = ctx.tgid();
    event.netns = kernel::netns_of_sock(sk);
    emit(&event);
    Ok(())
}
