//! The iptables-legacy trigger: x_tables has no change notifications, but every rule change is
//! one `setsockopt(IPT_SO_SET_REPLACE)` (or `IP6T_…`) that hands the kernel a whole new table.
//! The entry records the writer's thread, namespace and table name; the exit, if the replace
//! succeeded, reports it with the exit time: the moment the new table was in effect. The entry
//! also reports where the writer's new table is, for the agent to read it while the kernel
//! installs it (`kind::TABLE_REPLACE_BEGIN`). Only
//! namespaces the dataplane watcher reads (`ZDT_DATAPLANE_NETNS`) are reported.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::TracePointContext,
};
use zdt_common::{
    Event, PendingReplace, kind, maps,
    tracepoint::{sys_enter_setsockopt as enter_tp, sys_exit_setsockopt as exit_tp},
    xt,
};

use crate::{emit::emit_now, kernel};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[map(name = "ZDT_DATAPLANE_NETNS")]
static DATAPLANE_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(maps::DATAPLANE_NETNS_MAX, 0);

#[map(name = "ZDT_TABLE_WRITERS")]
static WRITERS: LruHashMap<u64, PendingReplace> =
    LruHashMap::with_max_entries(maps::TABLE_WRITERS_MAX, 0);

/// `syscalls:sys_enter_setsockopt`: every setsockopt of the node passes here, so the level and
/// option are compared first; only a table replace costs a namespace lookup.
pub fn on_enter(ctx: &TracePointContext) -> Result<(), i32> {
    // The record stores each int argument in a long.
    let optname: u64 = unsafe { ctx.read_at(enter_tp::OPTNAME)? };
    let level: u64 = unsafe { ctx.read_at(enter_tp::LEVEL)? };
    let (optname, level) = (optname as u32, level as u32);
    if optname != xt::SO_SET_REPLACE || (level != xt::SOL_IP && level != xt::SOL_IPV6) {
        return Ok(());
    }
    let netns = kernel::netns_of_task(unsafe { bpf_get_current_task() });
    if unsafe { DATAPLANE_NETNS.get(&netns) }.is_none() {
        return Ok(());
    }
    let optval: u64 = unsafe { ctx.read_at(enter_tp::OPTVAL)? };
    // `struct ipt_replace` starts with the table's name.
    let table: [u8; 16] =
        unsafe { bpf_probe_read_user(optval as *const [u8; 16]) }.unwrap_or([0; 16]);
    let pending = PendingReplace {
        enter_ns: unsafe { bpf_ktime_get_ns() },
        netns,
        level,
        table,
    };
    WRITERS.insert(&bpf_get_current_pid_tgid(), &pending, 0)?;
    // The agent may read the new table from the writer while the kernel installs it.
    let optlen: u64 = unsafe { ctx.read_at(enter_tp::OPTLEN)? };
    let mut event = Event::new(kind::TABLE_REPLACE_BEGIN, pending.enter_ns);
    event.sk = optval;
    event.state = optlen as u32;
    fill(&mut event, &pending, ctx.tgid());
    emit_now(&event);
    Ok(())
}

/// The fields a replace's begin and end share.
fn fill(event: &mut Event, pending: &PendingReplace, tgid: u32) {
    event.reason = pending.level;
    event.family = if pending.level == xt::SOL_IPV6 {
        AF_INET6
    } else {
        AF_INET
    };
    event.comm = pending.table;
    event.tgid = tgid;
    event.netns = pending.netns;
}

/// `syscalls:sys_exit_setsockopt`: reports the replace its entry recorded, if it succeeded.
pub fn on_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let id = bpf_get_current_pid_tgid();
    let Some(pending) = (unsafe { WRITERS.get(&id) }).copied() else {
        return Ok(());
    };
    let _ = WRITERS.remove(&id);
    let ret: i64 = unsafe { ctx.read_at(exit_tp::RET)? };
    if ret != 0 {
        return Ok(());
    }
    let mut event = Event::new(kind::TABLE_REPLACE, unsafe { bpf_ktime_get_ns() });
    event.sk = pending.enter_ns;
    fill(&mut event, &pending, ctx.tgid());
    // Rare and awaited: wake the reader now rather than at the next batch.
    emit_now(&event);
    Ok(())
}
