//! Delivery of events: the ring buffer with batched wake-ups, and exact per-CPU counts of what
//! it had no room for.
//!
//! A wake-up is what an event costs most: `bpf_ringbuf_submit` with `BPF_RB_FORCE_WAKEUP`
//! queues an irq_work, which raises a self-IPI (an APIC write: a VM exit under virtualization).
//! Measured on the build machine (kernel 6.18, 2 vCPU VM), about 12 µs per wake-up. Waking on
//! every 64th event (a per-CPU counter) charged it, 190 ns amortized, to whichever program the
//! 64th event of a CPU fell on, and with two events per refused connection on one CPU that was
//! always the same program (`inet_sk_error_report`: 892 ns). So the reader is woken only when
//! the unread data in the ring buffer crosses `ZDT_WAKEUP_BYTES` (`--wakeup-every` records, at
//! most half the ring buffer), which `bpf_ringbuf_query` tells without a counter; otherwise it
//! polls on a short timer. Every event is either delivered or counted per key in `ZDT_LOST` (userspace reports
//! those as `loss` and aggregated lines), so totals stay exact when the ring buffer is full, at
//! no counter cost for a delivered event.

use aya_ebpf::{
    Global,
    bindings::{
        BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    helpers::bpf_probe_read_kernel_buf,
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap, RingBuf, ring_buf::RingBufEntry},
};
use zdt_common::{CounterKey, Event, IpvsRecord, PendingIpvs, maps};

/// Wake the reader when this many bytes wait unread (0: on every event; the loader sets
/// `maps::wakeup_bytes`).
#[unsafe(no_mangle)]
static ZDT_WAKEUP_BYTES: Global<u64> =
    Global::new(maps::wakeup_bytes(maps::WAKEUP_EVERY, maps::EVENTS_BYTES));

#[map(name = "ZDT_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(maps::EVENTS_BYTES, 0);

#[map(name = "ZDT_LOST")]
static LOST: PerCpuHashMap<CounterKey, u64> =
    PerCpuHashMap::with_max_entries(maps::COUNTERS_MAX, BPF_F_NO_PREALLOC);

#[map(name = "ZDT_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(maps::STATS_LEN, 0);

#[map(name = "ZDT_HANDLER_ERRORS")]
static HANDLER_ERRORS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(maps::FALLIBLE_PROGRAMS.len() as u32, 0);

/// Counts an event the handler in `slot` ([`maps::handler_slot`]) failed on.
#[inline(always)]
pub fn handler_failed(slot: u32) {
    if let Some(p) = HANDLER_ERRORS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot: only this CPU writes it, and programs do not nest on it.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn bump_stat(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot: only this CPU writes it, and programs do not nest on it.
        unsafe { *p += 1 };
    }
}

/// Counts `event` exactly, then tries to hand it to userspace.
#[inline(always)]
pub fn emit(event: &Event) {
    deliver(event, false);
}

/// The same, waking the reader at once (for rare events the agent acts on).
#[inline(always)]
pub fn emit_now(event: &Event) {
    deliver(event, true);
}

/// An IPVS change request: `event` (counted like any other) followed by the request's first
/// bytes from `pending` ([`IpvsRecord`]), waking the reader at once. The record is written in
/// place (it does not fit the stack beside the caller's locals).
#[inline(always)]
pub fn emit_ipvs(event: &Event, pending: &PendingIpvs) {
    let Some(mut entry) = reserve::<IpvsRecord>(event) else {
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` is the reserved, exclusively owned ring-buffer slot of an IpvsRecord;
    // every field is written before the submit.
    unsafe {
        core::ptr::addr_of_mut!((*record).event).write(*event);
        core::ptr::addr_of_mut!((*record).len).write(pending.len);
        core::ptr::addr_of_mut!((*record)._pad).write(0);
        if bpf_probe_read_kernel_buf(
            pending.request.as_ptr(),
            &mut *core::ptr::addr_of_mut!((*record).request),
        )
        .is_err()
        {
            core::ptr::addr_of_mut!((*record).len).write(0);
        }
    }
    bump_stat(maps::STAT_EVENTS_SENT);
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
}

#[inline(always)]
fn deliver(event: &Event, wake: bool) {
    let Some(mut entry) = reserve::<Event>(event) else {
        return;
    };
    // SAFETY: the reserved, exclusively owned slot of an Event.
    unsafe { store(entry.as_mut_ptr(), event) };
    let flags = if wake {
        // Counted for the tests of the dataplane triggers; a map update on every other event
        // would cost it ~10 ns.
        bump_stat(maps::STAT_EVENTS_SENT);
        BPF_RB_FORCE_WAKEUP
    } else if crosses_wakeup_mark(maps::EVENT_RECORD_BYTES) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

/// Copies `event` into `slot` as 8-byte stores. A plain copy let the compiler write the zero
/// fields with calls to the object's byte-wise `memset` (16 and 20 bytes at a time).
///
/// # Safety
/// `slot` is valid for writes of an [`Event`] and 8-byte aligned.
#[inline(always)]
unsafe fn store(slot: *mut Event, event: &Event) {
    const WORDS: usize = core::mem::size_of::<Event>() / 8;
    const _: () = assert!(core::mem::size_of::<Event>().is_multiple_of(8));
    let src = core::ptr::from_ref(event).cast::<u64>();
    let dst = slot.cast::<u64>();
    let mut i = 0;
    while i < WORDS {
        // SAFETY: both are WORDS words long and 8-byte aligned (`Event` is).
        unsafe { dst.add(i).write_volatile(src.add(i).read()) };
        i += 1;
    }
}

/// Whether the record of `record` bytes just reserved is the one that brought the unread data
/// to `ZDT_WAKEUP_BYTES`: the reader is then woken once per that much data, whatever the rate,
/// and not at all while it keeps up through its timer. Two CPUs reserving at once may both pass
/// the mark unseen; the reader's timer drains the ring buffer then, as it does below the mark.
/// One helper call (the mark is computed at load).
#[inline(always)]
fn crosses_wakeup_mark(record: u64) -> bool {
    let mark = ZDT_WAKEUP_BYTES.load();
    if mark == 0 {
        return true;
    }
    let unread = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    unread >= mark && unread - record < mark
}

/// Reserves a ring-buffer record of `T` for `event`; a full ring buffer is counted as a loss
/// (`STAT_RINGBUF_LOST`, and `event`'s key in `ZDT_LOST`), so delivered + lost stays exact
/// without a counter update per delivered event.
#[inline(always)]
fn reserve<T: 'static>(event: &Event) -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        bump_stat(maps::STAT_RINGBUF_LOST);
        count(&LOST, &CounterKey::of(event));
    }
    entry
}

#[inline(always)]
fn count(map: &PerCpuHashMap<CounterKey, u64>, key: &CounterKey) {
    // Per-CPU values: no atomics needed, userspace sums the CPUs.
    if let Some(p) = map.get_ptr_mut(key) {
        unsafe { *p += 1 };
        return;
    }
    if map.insert(key, &1, BPF_NOEXIST as u64).is_err() {
        // Either another CPU inserted the key between our lookup and insert (retry once), or
        // the map is full (counted, so userspace can say so).
        match map.get_ptr_mut(key) {
            Some(p) => unsafe { *p += 1 },
            None => {
                bump_stat(maps::STAT_COUNTERS_FULL);
            }
        }
    }
}
