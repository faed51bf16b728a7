//! Kernel-side filtering: the watched address tries and the switch that enables them.
//!
//! Unwatched traffic must cost one trie lookup and nothing else, so every handler asks
//! [`is_watched`] before it touches a counter or the ring buffer.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
};
use zdt_common::maps;

use crate::record::Addr;

/// 1 when `--watch-cidr` (or the cluster's pod list) restricts what is reported.
#[unsafe(no_mangle)]
static ZDT_FILTER_ENABLED: Global<u32> = Global::new(0);

#[map(name = "ZDT_WATCH_V4")]
static WATCH_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(maps::WATCH_MAX, 0);

#[map(name = "ZDT_WATCH_V6")]
static WATCH_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(maps::WATCH_MAX, 0);

#[map(name = "ZDT_WATCH_NETNS")]
static WATCH_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(maps::WATCH_MAX, 0);

pub use zdt_common::family::{AF_INET, AF_INET6};

/// Whether events about `addr` are reported.
#[inline(always)]
pub fn is_watched(family: u16, addr: &Addr) -> bool {
    if ZDT_FILTER_ENABLED.load() == 0 {
        return true;
    }
    match family {
        AF_INET => {
            let key = Key::new(32, (addr[0] as u32).to_ne_bytes());
            WATCH_V4.get(&key).is_some()
        }
        AF_INET6 => {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&addr[0].to_ne_bytes());
            bytes[8..].copy_from_slice(&addr[1].to_ne_bytes());
            WATCH_V6.get(&Key::new(128, bytes)).is_some()
        }
        _ => false,
    }
}

/// Whether events in network namespace `inum` are reported. Process events (signals, execs,
/// exits) are only ever reported for watched namespaces, even with filtering off: every exec
/// of the node would otherwise flood the stream.
#[inline(always)]
pub fn is_watched_netns(inum: u32) -> bool {
    inum != 0 && unsafe { WATCH_NETNS.get(&inum) }.is_some()
}

/// Whether filtering is on (false: every address is reported).
#[inline(always)]
pub fn filtering() -> bool {
    ZDT_FILTER_ENABLED.load() != 0
}
