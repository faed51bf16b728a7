//! `sock:inet_sock_set_state`: listeners opening and closing.
//!
//! This tracepoint fires on every TCP state change of the node, so the handler first reads the
//! two states and returns unless one of them is `TCP_LISTEN` (two loads, no map lookup). A
//! listener usually binds 0.0.0.0, so it is matched by its network namespace, not its address.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    programs::TracePointContext,
};
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
    event.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    event.family = family;
    event.addr = saddr;
    event.port = field::load(ctx, tp::SPORT);
    event.state = new as u32;
    event.tgid = ctx.tgid();
    event.netns = netns;
    emit(&event);
    Ok(())
}
