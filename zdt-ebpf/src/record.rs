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
    pub daddr: usize,
    pub saddr_v6: usize,
    pub daddr_v6: usize,
}

/// saddr (4), daddr (4), saddr_v6 (16), daddr_v6 (16), as every one of these tracepoints has
/// them.
const BLOCK: usize = 40;

impl AddrLayout {
    /// A layout with its addresses where [`addrs`] copies them (checked at compile time).
    pub const fn new(family: usize, saddr: usize, daddr: usize, v6: (usize, usize)) -> Self {
        assert!(daddr == saddr + 4 && v6.0 == saddr + 8 && v6.1 == saddr + 24);
        Self {
            family,
            saddr,
            daddr,
            saddr_v6: v6.0,
            daddr_v6: v6.1,
        }
    }
}

/// (family, saddr, daddr) with IPv4 in the first 4 bytes; Err for other families.
#[inline(always)]
pub fn addrs(ctx: &TracePointContext, l: &AddrLayout) -> Result<(u16, [u8; 16], [u8; 16]), i32> {
    let family: u16 = field::load(ctx, l.family);
    let (s_at, d_at) = match family {
        AF_INET => (0, l.daddr - l.saddr),
        AF_INET6 => (l.saddr_v6 - l.saddr, l.daddr_v6 - l.saddr),
        _ => return Err(0),
    };
    let len = if family == AF_INET { 4 } else { 16 };
    let block: [u8; BLOCK] = field::copy(ctx, l.saddr)?;
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    s[..len].copy_from_slice(block.get(s_at..s_at + len).ok_or(0)?);
    d[..len].copy_from_slice(block.get(d_at..d_at + len).ok_or(0)?);
    Ok((family, s, d))
}
