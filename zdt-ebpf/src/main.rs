//! kubectl-zdt's kernel side: entry points and dispatch. Handlers live in one module per hook,
//! each map with the module that uses it (`emit`: the ring buffer and loss counters, `watch`:
//! the address and namespace filters, `dataplane`: the state of rule writes in flight). An entry
//! point never fails the hook (a probe must never disturb the traffic it watches): a handler
//! error is counted per program in `ZDT_HANDLER_ERRORS` and the agent reports it as loss.
//!
//! Each entry point, its hook and its slot are those of `zdt_common::programs::PROGRAMS`: the
//! attributes need literals, and a test of the agent checks the built object against the table.
#![no_std]
#![no_main]

mod client;
mod dataplane;
mod emit;
mod field;
mod kernel;
mod listener;
mod process;
mod record;
mod reset;
mod watch;

use aya_ebpf::{
    macros::{btf_tracepoint, fentry, fexit, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, FExitContext, TracePointContext},
};

/// The entry point's answer (always 0) once `$handler` ran; its error is counted for
/// `$program` (a name in `zdt_common::maps::FALLIBLE_PROGRAMS`, checked at compile time).
macro_rules! counted {
    ($program:literal, $handler:expr) => {
        match $handler {
            Ok(()) => 0,
            Err(_) => {
                emit::handler_failed(const { zdt_common::maps::handler_slot($program) });
                0
            }
        }
    };
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    counted!("inet_sock_set_state", listener::on_set_state(&ctx))
}

#[tracepoint(category = "sock", name = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: TracePointContext) -> u32 {
    counted!("inet_sk_error_report", client::on_error_report(&ctx))
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    counted!("tcp_retransmit_skb", client::on_retransmit(&ctx))
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    counted!("sched_process_exec", process::on_exec(&ctx))
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    counted!("sched_process_exit", process::on_exit(&ctx))
}

#[tracepoint(category = "syscalls", name = "sys_enter_setsockopt")]
pub fn sys_enter_setsockopt(ctx: TracePointContext) -> u32 {
    counted!("sys_enter_setsockopt", dataplane::on_enter(&ctx))
}

#[tracepoint(category = "syscalls", name = "sys_exit_setsockopt")]
pub fn sys_exit_setsockopt(ctx: TracePointContext) -> u32 {
    counted!("sys_exit_setsockopt", dataplane::on_exit(&ctx))
}

#[fentry(function = "__sys_setsockopt")]
pub fn setsockopt_entry(ctx: FEntryContext) -> i32 {
    counted!("setsockopt_entry", dataplane::on_setsockopt_entry(&ctx))
}

#[fexit(function = "__sys_setsockopt")]
pub fn setsockopt_exit(ctx: FExitContext) -> i32 {
    counted!("setsockopt_exit", dataplane::on_setsockopt_exit(&ctx))
}

#[tracepoint(category = "percpu", name = "percpu_alloc_percpu")]
pub fn percpu_alloc_percpu(ctx: TracePointContext) -> u32 {
    dataplane::on_percpu_alloc(&ctx);
    0
}

#[tracepoint(category = "percpu", name = "percpu_free_percpu")]
pub fn percpu_free_percpu(ctx: TracePointContext) -> u32 {
    dataplane::on_percpu_free(&ctx);
    0
}

#[tracepoint(category = "module", name = "module_get")]
pub fn module_get(ctx: TracePointContext) -> u32 {
    dataplane::on_module_ref(&ctx, true);
    0
}

#[tracepoint(category = "module", name = "module_put")]
pub fn module_put(ctx: TracePointContext) -> u32 {
    dataplane::on_module_ref(&ctx, false);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    counted!("sys_enter_sendto", dataplane::on_enter_sendto(&ctx))
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendto")]
pub fn sys_exit_sendto(ctx: TracePointContext) -> u32 {
    counted!(
        "sys_exit_sendto",
        dataplane::on_exit_ipvs(&ctx, zdt_common::tracepoint::sys_exit_sendto::RET)
    )
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendmsg")]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    counted!("sys_enter_sendmsg", dataplane::on_enter_sendmsg(&ctx))
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendmsg")]
pub fn sys_exit_sendmsg(ctx: TracePointContext) -> u32 {
    counted!(
        "sys_exit_sendmsg",
        dataplane::on_exit_ipvs(&ctx, zdt_common::tracepoint::sys_exit_sendmsg::RET)
    )
}

#[fentry(function = "__sys_sendto")]
pub fn sendto_entry(ctx: FEntryContext) -> i32 {
    counted!("sendto_entry", dataplane::on_sendto_entry(&ctx))
}

#[fexit(function = "__sys_sendto")]
pub fn sendto_exit(ctx: FExitContext) -> i32 {
    counted!("sendto_exit", dataplane::on_sendto_exit(&ctx))
}

#[fentry(function = "__sys_sendmsg")]
pub fn sendmsg_entry(ctx: FEntryContext) -> i32 {
    counted!("sendmsg_entry", dataplane::on_sendmsg_entry(&ctx))
}

#[fexit(function = "__sys_sendmsg")]
pub fn sendmsg_exit(ctx: FExitContext) -> i32 {
    counted!("sendmsg_exit", dataplane::on_sendmsg_exit(&ctx))
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    counted!("tcp_send_reset", reset::on_send_reset(&ctx))
}

#[btf_tracepoint(function = "signal_generate")]
pub fn signal_generate(ctx: BtfTracePointContext) -> i32 {
    counted!("signal_generate", process::on_signal(&ctx))
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
