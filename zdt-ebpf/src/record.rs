//! Reading the address pairs that the `sock:*` and `tcp:*` tracepoints lay out the same way:
//! a family, IPv4 saddr/daddr and IPv6 saddr_v6/daddr_v6 at constant offsets; addresses are
//! carried as words ([`Addr`]).

use aya_ebpf::programs::TracePointContext;
use zdt_common::Event;

use crate::{
    field,
    watch::{AF_INET, AF_INET6},
};

/// Where one tracepoint keeps its addresses (a constant: the loads need fixed offsets). The
/// four addresses lie in one block of [`BLOCK`] bytes from `saddr`, copied at once.
pub struct AddrLayout {
    pub family: usize,
    pub saddr: usize,
}

/// saddr (4), daddr (4), saddr_v6 (16), daddr_v6 (16), as every one of these tracepoints has
/// them.
const BLOCK: usize = 40;

impl AddrLayout {
    /// A layout with its addresses where [`addrs`] copies them (checked at compile time).
    pub const fn new(family: usize, saddr: usize, daddr: usize, v6: (usize, usize)) -> Self {
        assert!(daddr == saddr + 4 && v6.0 == saddr + 8 && v6.1 == saddr + 24);
        Self { family, saddr }
    }
}

/// An address as the event stores it: its 16 bytes as two native-endian words, IPv4 in the
/// low 4 bytes of the first (its bytes in network order, as in memory). Words, not bytes: byte
/// arrays compiled to one load, shift and store per byte, ~40 ns of a refusal.
pub type Addr = [u64; 2];

/// (family, saddr, daddr); Err for other families.
#[inline(always)]
pub fn addrs(ctx: &TracePointContext, l: &AddrLayout) -> Result<(u16, Addr, Addr), i32> {
    let family: u16 = field::load(ctx, l.family);
    if family != AF_INET && family != AF_INET6 {
        return Err(0);
    }
    if family == AF_INET && l.saddr.is_multiple_of(4) {
        // Loaded in place where the record aligns them (a constant: the branch is resolved
        // at compile time): a helper call less, ~25 ns.
        let s: u32 = field::load(ctx, l.saddr);
        let d: u32 = field::load(ctx, l.saddr + 4);
        return Ok((family, [u64::from(s), 0], [u64::from(d), 0]));
    }
    // saddr | daddr in the first word, then saddr_v6 and daddr_v6 (as `new` checked them).
    let w: [u64; BLOCK / 8] = field::copy(ctx, l.saddr)?;
    Ok(if family == AF_INET {
        (family, [w[0] & 0xffff_ffff, 0], [w[0] >> 32, 0])
    } else {
        (family, [w[1], w[2]], [w[3], w[4]])
    })
}

const _: () = assert!(
    core::mem::align_of::<Event>() == 8
        && core::mem::offset_of!(Event, addr).is_multiple_of(8)
        && core::mem::offset_of!(Event, peer_addr).is_multiple_of(8)
);

/// Sets `event`'s addresses as two word stores each.
#[inline(always)]
pub fn set_addrs(event: &mut Event, addr: Addr, peer: Addr) {
    // SAFETY: `Event` is 8-byte aligned and both arrays, 16 bytes each, lie at multiples of 8
    // (asserted above), so the words are aligned and in bounds.
    unsafe {
        core::ptr::addr_of_mut!(event.addr)
            .cast::<Addr>()
            .write(addr);
        core::ptr::addr_of_mut!(event.peer_addr)
            .cast::<Addr>()
            .write(peer);
    }
}
