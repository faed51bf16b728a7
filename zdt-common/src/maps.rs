//! Names and capacities of the maps the agent shares with its eBPF programs.

/// Ring buffer carrying [`crate::Event`]s to userspace. 4 MiB holds about 40 000 events, i.e. a
/// refused-connection storm of 200 000/s for 200 ms between two reader wake-ups.
pub const EVENTS: &str = "ZDT_EVENTS";
pub const EVENTS_BYTES: u32 = 4 * 1024 * 1024;

/// Events waiting unread in [`EVENTS`] that wake the reader (at most half the ring buffer;
/// it also drains it on a timer). A wake-up costs the program that sends it ~12 µs in a VM
/// (a self-IPI): 4096 events (~420 KB) make that ~3 ns an event in a storm, and none at all
/// while the timer keeps up.
pub const WAKEUP_EVERY: u64 = 4096;

/// Per-CPU counts, per [`crate::CounterKey`], of the events the ring buffer had no room for.
/// An event is either delivered or counted here, never both, so delivered + lost is exact per
/// pod address and kind, and a delivered event costs no counter update.
pub const LOST: &str = "ZDT_LOST";
pub const COUNTERS_MAX: u32 = 65_536;

/// Per-CPU array of internal health counters, indexed by the `STAT_*` constants.
pub const STATS: &str = "ZDT_STATS";
pub const STATS_LEN: u32 = 8;
/// Events that could not be reserved in the ring buffer (reported as `loss` observations).
pub const STAT_RINGBUF_LOST: u32 = 0;
/// Lost events that could not be counted per key because [`LOST`] was full.
pub const STAT_COUNTERS_FULL: u32 = 1;
/// Events submitted to the ring buffer with an immediate wake-up (the dataplane's triggers; the
/// others are not counted, which would cost every event a map update).
pub const STAT_EVENTS_SENT: u32 = 2;

/// Per-CPU array: per program (its slot in [`FALLIBLE_PROGRAMS`]), the events its handler
/// failed on (a map full, a kernel read refused, a record it cannot parse). Such an event was
/// seen and is neither delivered nor in any count: the agent reports it as `loss`
/// (`HANDLER_ERROR`), as the ring buffer's drops.
pub const HANDLER_ERRORS: &str = "ZDT_HANDLER_ERRORS";
pub use crate::programs::{FALLIBLE_PROGRAMS, handler_slot};

/// Longest-prefix-match tries of watched addresses (`--watch-cidr`, or pod IPs in a cluster).
pub const WATCH_V4: &str = "ZDT_WATCH_V4";
pub const WATCH_V6: &str = "ZDT_WATCH_V6";
pub const WATCH_MAX: u32 = 16_384;

/// Watched network namespaces (inode numbers): pods whose listeners bind 0.0.0.0, and whose
/// processes' signals, execs and exits are reported.
pub const WATCH_NETNS: &str = "ZDT_WATCH_NETNS";

/// Processes of watched namespaces a signal from outside their namespace went to (the
/// runtime's SIGTERM/SIGKILL, an operator's `kill`), by `tgid`: their exits are reported
/// although their parent is in the pod (a server a shell started). LRU: an entry whose exit
/// never came (the agent started after the signal) is pushed out by newer ones.
pub const SIGNALLED: &str = "ZDT_SIGNALLED";
pub const SIGNALLED_MAX: u32 = 4096;

/// Global set by the loader: [`crate::KernelOffsets`] resolved from the kernel's BTF.
pub const GLOBAL_OFFSETS: &str = "ZDT_OFFSETS";

/// Global set by the loader: 0 = report every address, 1 = only addresses in the watch tries.
pub const GLOBAL_FILTER_ENABLED: &str = "ZDT_FILTER_ENABLED";
/// Global set by the loader: wake the reader when this many bytes wait unread in [`EVENTS`]
/// ([`wakeup_bytes`]; 0: on every event).
pub const GLOBAL_WAKEUP_BYTES: &str = "ZDT_WAKEUP_BYTES";

/// What one [`crate::Event`] takes in the ring buffer: its 8-byte header and the event.
pub const EVENT_RECORD_BYTES: u64 = 8 + core::mem::size_of::<crate::Event>() as u64;

/// The unread bytes that wake the reader: `every` events' records, at most half the ring buffer
/// of `ringbuf_bytes` (so that a small one still wakes it before it is full); 0 (every event)
/// for `every` ≤ 1. Computed once at load, not by the programs on every event.
pub const fn wakeup_bytes(every: u64, ringbuf_bytes: u32) -> u64 {
    if every <= 1 {
        return 0;
    }
    let half = ringbuf_bytes as u64 / 2;
    let bytes = every.saturating_mul(EVENT_RECORD_BYTES);
    if bytes < half { bytes } else { half }
}

/// Network namespaces (inode numbers) whose x_tables replaces and IPVS changes are reported
/// ([`crate::kind::TABLE_REPLACE`], [`crate::kind::IPVS_CHANGE`]): where the dataplane watcher
/// reads kube-proxy's rules.
pub const DATAPLANE_NETNS: &str = "ZDT_DATAPLANE_NETNS";
pub const DATAPLANE_NETNS_MAX: u32 = 64;

/// Table replaces in flight, per thread ([`crate::PendingReplace`]). An LRU map: a thread killed
/// inside the syscall never reaches its exit, and its entry must not pin a slot forever.
pub const TABLE_WRITERS: &str = "ZDT_TABLE_WRITERS";
pub const TABLE_WRITERS_MAX: u32 = 1024;

/// Per (namespace, family, table) ([`crate::TableKey`]), the first per-CPU block of the table
/// installed last: a replace's writer freeing it means the swap is over. LRU: namespaces come
/// and go.
pub const TABLE_BLOCKS: &str = "ZDT_TABLE_BLOCKS";
pub const TABLE_BLOCKS_MAX: u32 = 1024;

/// One-slot array: the generic-netlink family id of IPVS (resolved by the agent with
/// CTRL_CMD_GETFAMILY where the kernel has IPVS); 0 = the IPVS trigger is disarmed, and every
/// `sendto`/`sendmsg` of the node costs one array lookup.
pub const IPVS_FAMILY: &str = "ZDT_IPVS_FAMILY";

/// IPVS changes in flight, per thread ([`crate::PendingIpvs`]); LRU for the same reason as
/// [`TABLE_WRITERS`].
pub const IPVS_WRITERS: &str = "ZDT_IPVS_WRITERS";
pub const IPVS_WRITERS_MAX: u32 = 1024;

/// Per-CPU scratch for the IPVS trigger's copy of a request ([`crate::PendingIpvs`]), too big
/// for the eBPF stack.
pub const IPVS_SCRATCH: &str = "ZDT_IPVS_SCRATCH";

/// Every map of the eBPF object. Its `#[map(name = ...)]` attributes need literals, so a test
/// of the agent parses the built object and checks that it has exactly these.
pub const ALL: &[&str] = &[
    EVENTS,
    LOST,
    STATS,
    HANDLER_ERRORS,
    WATCH_V4,
    WATCH_V6,
    WATCH_NETNS,
    SIGNALLED,
    DATAPLANE_NETNS,
    TABLE_WRITERS,
    TABLE_BLOCKS,
    IPVS_FAMILY,
    IPVS_SCRATCH,
    IPVS_WRITERS,
];

/// Every global the loader sets (checked against the object with [`ALL`]).
pub const GLOBALS: &[&str] = &[GLOBAL_OFFSETS, GLOBAL_FILTER_ENABLED, GLOBAL_WAKEUP_BYTES];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wakeup_mark_is_capped_at_half_the_ring_buffer() {
        assert_eq!(wakeup_bytes(1, EVENTS_BYTES), 0);
        assert_eq!(wakeup_bytes(64, EVENTS_BYTES), 64 * EVENT_RECORD_BYTES);
        assert_eq!(wakeup_bytes(WAKEUP_EVERY, 65_536), 32_768);
        assert_eq!(wakeup_bytes(u64::MAX, 4096), 2048);
    }
}
