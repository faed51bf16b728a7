//! Reading tracepoint records: scalars in place, byte ranges in one copy.
//!
//! A tracepoint program's context is the record itself, and the verifier lets the program load
//! from it directly (`tp_prog_is_valid_access`: past the 8-byte common header, naturally
//! aligned, read only), where aya's `read_at` spends a `bpf_probe_read` helper call on every
//! field. The verifier only accepts `ctx + constant` in the load instruction itself ("dereference
//! of modified ctx ptr"), and LLVM keeps that shape for a scalar load next to its use but not for
//! arrays, whose address it may compute ahead in a register: byte ranges (addresses) are
//! therefore copied with one helper call for the whole range, never field by field.
//! A shape the verifier refuses fails the program's load, loudly, in every root test.

use aya_ebpf::{EbpfContext as _, helpers::bpf_probe_read_kernel, programs::TracePointContext};

/// The scalar `T` at byte `off` of the record (`off` a multiple of `T`'s size, known at compile
/// time: callers pass constants and this is always inlined).
#[inline(always)]
pub fn load<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    // SAFETY: the verifier checks the access against the record's bounds and alignment.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(off).cast::<T>()) }
}

/// The `T` (an array or `repr(C)` block of the record) at byte `off`, in one copy.
#[inline(always)]
pub fn copy<T: Copy>(ctx: &TracePointContext, off: usize) -> Result<T, i32> {
    // SAFETY: `bpf_probe_read_kernel` checks the source; the context outlives the call.
    unsafe { bpf_probe_read_kernel(ctx.as_ptr().cast::<u8>().add(off).cast::<T>()) }
}
