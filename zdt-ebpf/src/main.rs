//! kubectl-zdt's kernel side: maps, entry points and dispatch. Handlers live in one module per
//! hook; every entry point maps a handler error to "do nothing" (a probe must never disturb the
//! traffic it watches).
#![no_std]
#![no_main]

mod emit;
mod reset;
mod watch;

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    match reset::on_send_reset(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

/// License of the programs: GPL is needed for bpf_probe_read_kernel and friends.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
