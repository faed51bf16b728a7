//! The pod's processes: signals sent to them, programs they exec (a preStop hook), and their
//! exits. Only for watched network namespaces: each costs a few pointer reads and one lookup.
//!
//! An exit is reported only for a process started from outside the pod (its parent is in
//! another network namespace: a container's init, the sandbox's pause, an exec'd hook or probe)
//! or signalled from outside it (the runtime's SIGTERM to a server a shell started). The
//! children a server forks per connection (busybox `httpd`, inetd-style servers) exit many
//! times a second while the pod lives and say nothing of its termination: they are left out
//! here, where they cost nothing, instead of filling the stream.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
    },
    macros::map,
    maps::LruHashMap,
    programs::{BtfTracePointContext, TracePointContext},
};
use zdt_common::{Event, kind, maps, tracepoint::sched_process_exit as exit_tp};

use crate::{emit::emit, field, kernel, watch};

const SIGINT: i32 = 2;
const SIGQUIT: i32 = 3;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// Processes a signal from outside their namespace went to (see `zdt_common::maps::SIGNALLED`).
#[map(name = "ZDT_SIGNALLED")]
static SIGNALLED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(maps::SIGNALLED_MAX, 0);

/// `tp_btf/signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task,
/// int group, int result)`: the task pointer gives the target's namespace, which the classic
/// tracepoint (run in the sender's context, with only a pid) cannot.
pub fn on_signal(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sig: i32 = ctx.arg(0);
    if !matches!(sig, SIGTERM | SIGKILL | SIGINT | SIGQUIT) {
        return Ok(());
    }
    let task: u64 = ctx.arg(2);
    let netns = kernel::netns_of_task(task);
    if !watch::is_watched_netns(netns) {
        return Ok(());
    }
    let target = kernel::tgid_of_task(task);
    // From outside: not the pod's own processes, nor a process past its own namespaces (a
    // container's init killing what is left in its PID namespace as it exits).
    let sender = current_netns();
    if sender != 0 && sender != netns {
        // A full map pushes out its oldest entry: the insert cannot fail for want of room.
        SIGNALLED.insert(&target, &1, 0)?;
    }
    let mut event = Event::new(kind::SIGNAL, unsafe { bpf_ktime_get_ns() });
    event.reason = sig as u32;
    event.tgid = target;
    event.netns = netns;
    // The sender: who delivered the signal (kubelet/runtime, or the app itself).
    event.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    event.state = ctx.tgid();
    emit(&event);
    Ok(())
}

#[inline(always)]
fn current_netns() -> u32 {
    kernel::netns_of_task(unsafe { bpf_get_current_task() })
}

/// A line for the current process, of watched namespace `netns`.
fn process_event(ctx: &TracePointContext, k: u16, netns: u32) -> Result<(), i32> {
    let mut event = Event::new(k, unsafe { bpf_ktime_get_ns() });
    event.tgid = ctx.tgid();
    event.netns = netns;
    event.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    emit(&event);
    Ok(())
}

/// `sched:sched_process_exec`: runs in the new program's context, so `comm` is its name.
pub fn on_exec(ctx: &TracePointContext) -> Result<(), i32> {
    let netns = current_netns();
    if !watch::is_watched_netns(netns) {
        return Ok(());
    }
    process_event(ctx, kind::EXEC, netns)
}

/// `sched:sched_process_exit`: only the last thread of a process (`group_dead`) counts; on
/// kernels whose record has no `group_dead` (6.12), the main thread's exit.
pub fn on_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let last = if kernel::exit_has_group_dead() {
        field::load::<u8>(ctx, exit_tp::GROUP_DEAD) != 0
    } else {
        let id = bpf_get_current_pid_tgid();
        id as u32 == (id >> 32) as u32
    };
    if !last {
        return Ok(());
    }
    let task = unsafe { bpf_get_current_task() };
    let netns = kernel::netns_of_task(task);
    if !watch::is_watched_netns(netns) {
        return Ok(());
    }
    let tgid = ctx.tgid();
    // The parent's namespace: another one for a process started from outside; 0 for a parent
    // past its own exit (a container's init killing what is left in its PID namespace).
    let parent = kernel::parent_netns_of_task(task);
    let from_outside = parent != 0 && parent != netns;
    if unsafe { SIGNALLED.get(&tgid) }.is_some() {
        // Gone with the process (a tgid comes back); an entry already pushed out is no error.
        let _ = SIGNALLED.remove(&tgid);
    } else if !from_outside {
        return Ok(());
    }
    process_event(ctx, kind::EXIT, netns)
}
