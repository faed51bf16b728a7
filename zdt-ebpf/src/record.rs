//! Reading the address pairs that the `sock:*` and `tcp:*` tracepoints lay out the same way:
//! a family, IPv4 saddr/daddr and IPv6 saddr_v6/daddr_v6 at constant offsets.

use aya_ebpf::programs::TracePointContext;

use crate::watch::{AF_INET, AF_INET6};

/// Where one tracepoint keeps its addresses.
pub struct AddrLayout {
    pub family: usize,
    pub saddr: usize,
    pub daddr: usize,
    pub saddr_v6: usize,
    pub daddr_v6: usize,
}

/// (family, saddr, daddr) with IPv4 in the first 4 bytes; Err for other families.
#[inline(always)]
pub fn addrs(ctx: &TracePointContext, l: &AddrLayout) -> Result<(u16, [u8; 16], [u8; 16]), i32> {
    let family: u16 = unsafe { ctx.read_at(l.family)? };
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    match family {
        AF_INET => {
            let v4: [u8; 4] = unsafe { ctx.read_at(l.saddr)? };
            s[..4].copy_from_slice(&v4);
            let v4: [u8; 4] = unsafe { ctx.read_at(l.daddr)? };
            d[..4].copy_from_slice(&v4);
        }
        AF_INET6 => {
            s = unsafe { ctx.read_at(l.saddr_v6)? };
            d = unsafe { ctx.read_at(l.daddr_v6)? };
        }
        _ => return Err(0),
    }
    Ok((family, s, d))
}
