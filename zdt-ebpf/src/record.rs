//! Reading the address pairs that the `sock:*` and `tcp:*` tracepoints lay out the same way:
//! a family, IPv4 saddr/daddr and IPv6 saddr_v6/daddr_v6 at constant offsets.

use aya_ebpf::programs::TracePointContext;

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

/// (family, saddr, daddr) with IPv4 in the first 4 bytes; Err for other families.
#[inline(always)]
pub fn addrs(ctx: &TracePointContext, l: &AddrLayout) -> Result<(u16, [u8; 16], [u8; 16]), i32> {
    let family: u16 = field::load(ctx, l.family);
    if family != AF_INET && family != AF_INET6 {
        return Err(0);
    }
    let block: [u8; BLOCK] = field::copy(ctx, l.saddr)?;
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    // Constant lengths and offsets: a length known only at run time compiles to calls to the
    // object's byte-wise `memcpy` and `memset`.
    // Offsets in the block, as `new` checked them.
    const V4: usize = 4;
    const V6_S: usize = 8;
    const V6_D: usize = 24;
    if family == AF_INET {
        s[..4].copy_from_slice(&block[..4]);
        d[..4].copy_from_slice(&block[V4..V4 + 4]);
    } else {
        s.copy_from_slice(&block[V6_S..V6_S + 16]);
        d.copy_from_slice(&block[V6_D..V6_D + 16]);
    }
    Ok((family, s, d))
}
