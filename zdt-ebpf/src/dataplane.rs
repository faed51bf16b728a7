//! The iptables-legacy trigger: x_tables has no change notifications, but every rule change is
//! one `setsockopt(IPT_SO_SET_REPLACE)` (or `IP6T_…`) that hands the kernel a whole new table.
//! The entry records the writer's thread, namespace and table name; the exit, if the replace
//! succeeded, reports it with the exit time (the new table was in effect) and the tighter
//! bounds of the swap the per-CPU allocation and free probes saw in between. The entry
//! also reports where the writer's new table is, for the agent to read it while the kernel
//! installs it (`kind::TABLE_REPLACE_BEGIN`). Only
//! namespaces the dataplane watcher reads (`ZDT_DATAPLANE_NETNS`) are reported.
//!
//! The IPVS trigger: IPVS announces nothing either, but kube-proxy (moby/ipvs over
//! vishvananda/netlink: one request per `sendto`) and ipvsadm/keepalived (libnl: `sendmsg`)
//! change it with one generic-netlink request per datagram, which the kernel applies inside the
//! send. The entry reads the datagram's first 20 bytes (`nlmsghdr` + `genlmsghdr`) and keeps
//! the call if the message is of the IPVS family (its id set by the agent in
//! `ZDT_IPVS_FAMILY`) with a command that changes virtual or real servers; the exit reports it
//! (`kind::IPVS_CHANGE`) if the send returned ≥ 0, with the request's first bytes (they name
//! the virtual server the agent then re-reads). The socket's protocol is not checked: a
//! non-netlink send whose first bytes look the same costs the agent one needless IPVS read.
//! IPVS's older interface, `setsockopt(SOL_IP, IP_VS_SO_SET_*)` (ipvsadm without libnl), is
//! reported the same way from the setsockopt pair, without request bytes (the agent then reads
//! IPVS whole).

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_user,
        bpf_probe_read_user_buf,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{FEntryContext, FExitContext, TracePointContext},
};
use zdt_common::{
    Event, PendingIpvs, PendingReplace, TableKey, genl, ipvs_sockopt, kind, maps, replace_reported,
    swap_bounds,
    tracepoint::{
        module_refcnt, sys_enter_sendmsg, sys_enter_sendto, sys_enter_setsockopt as enter_tp,
        sys_exit_setsockopt as exit_tp, user_msghdr,
    },
    xt,
};

use crate::{
    emit::{emit_ipvs, emit_now},
    field, kernel,
};

use zdt_common::family::{AF_INET, AF_INET6};

#[map(name = "ZDT_DATAPLANE_NETNS")]
static DATAPLANE_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(maps::DATAPLANE_NETNS_MAX, 0);

#[map(name = "ZDT_TABLE_WRITERS")]
static WRITERS: LruHashMap<u64, PendingReplace> =
    LruHashMap::with_max_entries(maps::TABLE_WRITERS_MAX, 0);

#[map(name = "ZDT_TABLE_BLOCKS")]
static TABLE_BLOCKS: LruHashMap<TableKey, u64> =
    LruHashMap::with_max_entries(maps::TABLE_BLOCKS_MAX, 0);

#[map(name = "ZDT_IPVS_FAMILY")]
static IPVS_FAMILY: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "ZDT_IPVS_SCRATCH")]
static IPVS_SCRATCH: PerCpuArray<PendingIpvs> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "ZDT_IPVS_WRITERS")]
static IPVS_WRITERS: LruHashMap<u64, PendingIpvs> =
    LruHashMap::with_max_entries(maps::IPVS_WRITERS_MAX, 0);

/// `syscalls:sys_enter_setsockopt` (the fallback trigger): every argument is stored as a
/// `long`.
pub fn on_enter(ctx: &TracePointContext) -> Result<(), i32> {
    let level: u64 = field::load(ctx, enter_tp::LEVEL);
    let optname: u64 = field::load(ctx, enter_tp::OPTNAME);
    on_setsockopt(
        level as u32,
        optname as u32,
        field::load(ctx, enter_tp::OPTVAL),
        field::load::<u64>(ctx, enter_tp::OPTLEN) as u32,
    )
}

/// fentry on `__sys_setsockopt(int fd, int level, int optname, char __user *optval, int
/// optlen)`.
pub fn on_setsockopt_entry(ctx: &FEntryContext) -> Result<(), i32> {
    let level: i32 = ctx.arg(1);
    let optname: i32 = ctx.arg(2);
    let optval: u64 = ctx.arg(3);
    let optlen: i32 = ctx.arg(4);
    on_setsockopt(level as u32, optname as u32, optval, optlen as u32)
}

/// Every setsockopt of the node passes here, so the level and option are compared first; only
/// a table replace costs a namespace lookup.
#[inline(always)]
fn on_setsockopt(level: u32, optname: u32, optval: u64, optlen: u32) -> Result<(), i32> {
    if level == xt::SOL_IP
        && let Some(cmd) = ipvs_sockopt::as_genl_cmd(optname)
    {
        // IPVS's older interface: no request to copy, the agent reads IPVS whole.
        if ipvs_family() == 0 {
            return Ok(());
        }
        return remember_ipvs(cmd, 0, 0);
    }
    if optname != xt::SO_SET_REPLACE || (level != xt::SOL_IP && level != xt::SOL_IPV6) {
        return Ok(());
    }
    let netns = kernel::netns_of_task(unsafe { bpf_get_current_task() });
    if unsafe { DATAPLANE_NETNS.get(&netns) }.is_none() {
        return Ok(());
    }
    // `struct ipt_replace` starts with the table's name.
    let table: [u8; 16] =
        unsafe { bpf_probe_read_user(optval as *const [u8; 16]) }.unwrap_or([0; 16]);
    let mut pending = PendingReplace {
        enter_ns: unsafe { bpf_ktime_get_ns() },
        netns,
        level,
        table,
        last_alloc_ns: 0,
        first_free_ns: 0,
        first_block: 0,
        old_first_block: 0,
        old_freed_ns: 0,
        table_get_ns: 0,
        table_put_ns: 0,
    };
    pending.old_first_block = unsafe { TABLE_BLOCKS.get(&table_key(&pending)) }
        .copied()
        .unwrap_or(0);
    let id = bpf_get_current_pid_tgid();
    WRITERS.insert(&id, &pending, 0)?;
    // The agent may read the new table from the writer while the kernel installs it.
    let mut event = Event::new(kind::TABLE_REPLACE_BEGIN, pending.enter_ns);
    event.sk = optval;
    event.state = optlen;
    fill(&mut event, &pending, tgid_of(id));
    emit_now(&event);
    Ok(())
}

/// The process id of a `bpf_get_current_pid_tgid` value.
#[inline(always)]
fn tgid_of(pid_tgid: u64) -> u32 {
    (pid_tgid >> 32) as u32
}

/// The `ZDT_TABLE_BLOCKS` key of the table a replace writes.
#[inline(always)]
fn table_key(pending: &PendingReplace) -> TableKey {
    TableKey {
        netns: pending.netns,
        level: pending.level,
        table: pending.table,
    }
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

/// `syscalls:sys_exit_setsockopt` (the fallback trigger).
pub fn on_exit(ctx: &TracePointContext) -> Result<(), i32> {
    on_setsockopt_return(field::load(ctx, exit_tp::RET))
}

/// fexit on `__sys_setsockopt`: its five arguments, then its `int` return value.
pub fn on_setsockopt_exit(ctx: &FExitContext) -> Result<(), i32> {
    let ret: i32 = ctx.arg(5);
    on_setsockopt_return(i64::from(ret))
}

/// A setsockopt returned `ret`: reports the replace or IPVS change its entry recorded, if it
/// succeeded.
#[inline(always)]
fn on_setsockopt_return(ret: i64) -> Result<(), i32> {
    let _ = ipvs_returned(ret);
    let id = bpf_get_current_pid_tgid();
    let Some(pending) = (unsafe { WRITERS.get(&id) }).copied() else {
        return Ok(());
    };
    let _ = WRITERS.remove(&id);
    // The table in effect now is the new one if the call succeeded, or if the old one's
    // counters were freed (the kernel swapped, then failed to copy the counters out).
    let installed = ret == 0 || pending.old_freed_ns != 0;
    if installed && pending.first_block != 0 {
        let _ = TABLE_BLOCKS.insert(&table_key(&pending), &pending.first_block, 0);
    }
    // Reported already when the old table was freed.
    if !installed || pending.old_freed_ns != 0 {
        return Ok(());
    }
    report(
        &pending,
        unsafe { bpf_ktime_get_ns() },
        pending.first_free_ns,
        replace_reported::AT_EXIT,
        tgid_of(id),
    );
    Ok(())
}

/// A `kind::TABLE_REPLACE` at `now`, its swap bounded by the last allocation and `upper`.
#[inline(always)]
fn report(pending: &PendingReplace, now: u64, upper: u64, at: u32, tgid: u32) {
    let mut event = Event::new(kind::TABLE_REPLACE, now);
    event.sk = pending.enter_ns;
    event.state = at;
    fill(&mut event, pending, tgid);
    event.addr[swap_bounds::LAST_ALLOC].copy_from_slice(&pending.last_alloc_ns.to_ne_bytes());
    event.addr[swap_bounds::FIRST_FREE].copy_from_slice(&upper.to_ne_bytes());
    event.peer_addr[swap_bounds::TABLE_GET].copy_from_slice(&pending.table_get_ns.to_ne_bytes());
    event.peer_addr[swap_bounds::TABLE_PUT].copy_from_slice(&pending.table_put_ns.to_ne_bytes());
    // Rare and awaited: wake the reader now rather than at the next batch.
    emit_now(&event);
}

/// `percpu:percpu_alloc_percpu` and `percpu:percpu_free_percpu`: where in its syscall a
/// replace swapped the tables. The kernel gives every rule of the new table its counters while
/// it checks the table (`translate_table` → `xt_percpu_counter_alloc`, one per-CPU block per
/// 256 rules), then swaps (`xt_replace_table`), then reads and frees the old table's counters
/// (`get_old_counters`, `cleanup_entry` → `xt_percpu_counter_free`). So the swap lies between
/// the writer's last allocation and its first free: much tighter than [entry, exit] for a big
/// table (the checks and the cleanup are most of a 10 000-Service replace), and still right
/// when the writer is scheduled out inside the syscall. Both fire for every per-CPU
/// allocation of the node (rare: cgroups, devices, maps), so the writer's thread is looked up
/// first. A free seen before an allocation cannot be the old table's (the swap comes after the
/// last allocation): an RCU callback run in softirq while the writer was interrupted frees in
/// its name too, so every allocation forgets an earlier free and the bound is the first free
/// after the last allocation. Single-CPU kernels allocate no per-CPU counters: nothing is
/// recorded, and the agent keeps [entry, exit].
///
/// Where the kernel's format files say where `ptr` is (`KernelOffsets::percpu_alloc_ptr` /
/// `percpu_free_ptr`), the blocks themselves tell more: the replace's first block is the new
/// table's first (kept for the next replace of that table, `ZDT_TABLE_BLOCKS`), and the writer
/// freeing the old table's first block means the swap is over: the replace is reported then,
/// not at its exit, which for a big table comes tens of ms later (the kernel frees the rest).
/// A replace the kernel rejects frees only blocks it allocated itself, so it is never reported.
pub fn on_percpu_alloc(ctx: &TracePointContext) {
    if let Some(pending) = WRITERS.get_ptr_mut(&bpf_get_current_pid_tgid()) {
        // SAFETY: a value of this map, owned by the writer's own thread until its exit.
        let pending = unsafe { &mut *pending };
        pending.last_alloc_ns = unsafe { bpf_ktime_get_ns() };
        pending.first_free_ns = 0;
        if pending.first_block == 0 {
            pending.first_block = percpu_ptr(ctx, kernel::percpu_alloc_ptr());
        }
    }
}

/// See [`on_percpu_alloc`].
pub fn on_percpu_free(ctx: &TracePointContext) {
    let Some(pending) = WRITERS.get_ptr_mut(&bpf_get_current_pid_tgid()) else {
        return;
    };
    // SAFETY: as in `on_percpu_alloc`.
    let pending = unsafe { &mut *pending };
    let now = unsafe { bpf_ktime_get_ns() };
    if pending.first_free_ns == 0 {
        pending.first_free_ns = now;
    }
    if pending.old_first_block == 0 || pending.old_freed_ns != 0 {
        return;
    }
    let ptr = percpu_ptr(ctx, kernel::percpu_free_ptr());
    if ptr != 0 && ptr == pending.old_first_block {
        pending.old_freed_ns = now;
        report(
            pending,
            now,
            now,
            replace_reported::AT_OLD_TABLE_FREE,
            ctx.tgid(),
        );
    }
}

/// `module:module_get` / `module:module_put`: the tightest bounds of the swap, where x_tables
/// tables are modules (most distributions' kernels). `__do_replace` takes a reference on the
/// table's module when it looks the table up (`xt_find_table_lock` → `try_module_get`, the
/// last step before `xt_replace_table`) and drops it right after the swap (`module_put(t->me)`
/// when the old or the new table holds more than the built-in rules: always for kube-proxy's),
/// microseconds apart, before the kernel reads and frees the old table (tens of ms at 10 000
/// Services). The rule checks before take and drop references on the rules' match and target
/// modules (`xt_comment`, `xt_nat`, …), never the table's, so only `iptable_<table>` /
/// `ip6table_<table>` counts. A refused swap drops the reference too, but then the old table is
/// never freed and the replace never reported, so the bounds are only used for one that was.
/// Every module reference of the node passes here (rare: devices, filesystems, protocol
/// families in modules); only a writer's costs more than one lookup.
pub fn on_module_ref(ctx: &TracePointContext, get: bool) {
    let Some(pending) = WRITERS.get_ptr_mut(&bpf_get_current_pid_tgid()) else {
        return;
    };
    // SAFETY: as in `on_percpu_alloc`.
    let pending = unsafe { &mut *pending };
    if !get && (pending.table_get_ns == 0 || pending.table_put_ns != 0) {
        return;
    }
    let at = kernel::module_name_loc();
    if at == 0 {
        return;
    }
    let Ok(loc) = field::copy::<u32>(ctx, at as usize) else {
        return;
    };
    let Ok(name) = field::copy::<[u8; module_refcnt::NAME_BYTES]>(ctx, (loc & 0xffff) as usize)
    else {
        return;
    };
    let table = if pending.level == xt::SOL_IPV6 {
        names_table_module(&name, b"ip6table_", &pending.table)
    } else {
        names_table_module(&name, b"iptable_", &pending.table)
    };
    if !table {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if get {
        pending.table_get_ns = now;
        pending.table_put_ns = 0;
    } else {
        pending.table_put_ns = now;
    }
}

/// Whether a module's NUL-terminated `name` is `prefix` then the NUL-terminated `table`
/// (`iptable_nat`). `P` is a constant, so every index is one the verifier knows.
#[inline(always)]
fn names_table_module<const P: usize>(
    name: &[u8; module_refcnt::NAME_BYTES],
    prefix: &[u8; P],
    table: &[u8; 16],
) -> bool {
    for i in 0..P {
        if name[i] != prefix[i] {
            return false;
        }
    }
    for i in 0..16 {
        if name[P + i] != table[i] {
            return false;
        }
        if table[i] == 0 {
            return true;
        }
    }
    // A 16-byte name without its NUL is no table's.
    false
}

/// `ptr` of a per-CPU allocation or free record at offset `at` (0 when unknown). Copied with
/// a helper: the verifier refuses a direct context read at an offset it does not know.
#[inline(always)]
fn percpu_ptr(ctx: &TracePointContext, at: u32) -> u64 {
    if at == 0 {
        return 0;
    }
    field::copy::<u64>(ctx, at as usize).unwrap_or(0)
}

/// The IPVS family id the agent armed the trigger with; 0 while disarmed (no IPVS on this
/// kernel, or no watcher yet).
#[inline(always)]
fn ipvs_family() -> u16 {
    IPVS_FAMILY.get(0).map_or(0, |f| *f as u16)
}

/// `syscalls:sys_enter_sendto` (the fallback trigger).
pub fn on_enter_sendto(ctx: &TracePointContext) -> Result<(), i32> {
    on_sendto(
        field::load(ctx, sys_enter_sendto::BUFF),
        field::load(ctx, sys_enter_sendto::LEN),
    )
}

/// fentry on `__sys_sendto(int fd, void __user *buff, size_t len, unsigned int flags, struct
/// sockaddr __user *addr, int addr_len)`.
pub fn on_sendto_entry(ctx: &FEntryContext) -> Result<(), i32> {
    on_sendto(ctx.arg(1), ctx.arg(2))
}

/// Every send of the node passes here; while the trigger is disarmed it costs one array
/// lookup, armed one 20-byte read of the caller's buffer.
#[inline(always)]
fn on_sendto(buff: u64, len: u64) -> Result<(), i32> {
    let family = ipvs_family();
    if family == 0 || len < genl::HEADERS_LEN as u64 {
        return Ok(());
    }
    remember_ipvs_request(buff, len, family)
}

/// `syscalls:sys_enter_sendmsg` (the fallback trigger).
pub fn on_enter_sendmsg(ctx: &TracePointContext) -> Result<(), i32> {
    on_sendmsg(field::load(ctx, sys_enter_sendmsg::MSG))
}

/// fentry on `__sys_sendmsg(int fd, struct user_msghdr __user *msg, unsigned int flags, bool
/// forbid_cmsg_compat)`.
pub fn on_sendmsg_entry(ctx: &FEntryContext) -> Result<(), i32> {
    on_sendmsg(ctx.arg(1))
}

/// The datagram starts in the first `iovec` of the caller's `struct user_msghdr` (libnl puts
/// the whole message there).
#[inline(always)]
fn on_sendmsg(msg: u64) -> Result<(), i32> {
    let family = ipvs_family();
    if family == 0 {
        return Ok(());
    }
    let iovlen: u64 =
        unsafe { bpf_probe_read_user((msg + user_msghdr::IOVLEN as u64) as *const u64)? };
    if iovlen == 0 {
        return Ok(());
    }
    let iov: u64 = unsafe { bpf_probe_read_user((msg + user_msghdr::IOV as u64) as *const u64)? };
    let len: u64 =
        unsafe { bpf_probe_read_user((iov + user_msghdr::IOV_LEN as u64) as *const u64)? };
    if len < genl::HEADERS_LEN as u64 {
        return Ok(());
    }
    let base: u64 =
        unsafe { bpf_probe_read_user((iov + user_msghdr::IOV_BASE as u64) as *const u64)? };
    remember_ipvs_request(base, len, family)
}

/// Keeps the send for its exit if `buf` (`len` bytes) starts with an IPVS change.
#[inline(always)]
fn remember_ipvs_request(buf: u64, len: u64, family: u16) -> Result<(), i32> {
    let headers: [u8; genl::HEADERS_LEN] =
        unsafe { bpf_probe_read_user(buf as *const [u8; genl::HEADERS_LEN])? };
    let Some(cmd) = genl::ipvs_change(&headers, family) else {
        return Ok(());
    };
    remember_ipvs(cmd, buf, len)
}

/// Keeps the IPVS change `cmd` for the syscall's exit if the caller is in a watched namespace,
/// with the request's first bytes from `buf` (up to `genl::REQUEST_MAX` of `len`; none if
/// there is none or it cannot be read, and the agent then re-reads all of IPVS).
#[inline(always)]
fn remember_ipvs(cmd: u8, buf: u64, len: u64) -> Result<(), i32> {
    let netns = kernel::netns_of_task(unsafe { bpf_get_current_task() });
    if unsafe { DATAPLANE_NETNS.get(&netns) }.is_none() {
        return Ok(());
    }
    // Built in a per-CPU slot: the request does not fit the stack.
    let Some(pending) = IPVS_SCRATCH.get_ptr_mut(0) else {
        return Ok(());
    };
    // SAFETY: this CPU's slot, used only here with preemption off for the program's run.
    let pending = unsafe { &mut *pending };
    pending.enter_ns = unsafe { bpf_ktime_get_ns() };
    pending.netns = netns;
    pending.cmd = cmd;
    pending._pad = [0; 3];
    pending._pad2 = 0;
    let n = if len < genl::REQUEST_MAX as u64 {
        len as usize
    } else {
        genl::REQUEST_MAX
    };
    pending.len = 0;
    if n > 0
        && n <= genl::REQUEST_MAX
        && unsafe { bpf_probe_read_user_buf(buf as *const u8, &mut pending.request[..n]) }.is_ok()
    {
        pending.len = n as u32;
    }
    IPVS_WRITERS.insert(&bpf_get_current_pid_tgid(), pending, 0)?;
    Ok(())
}

/// `syscalls:sys_exit_sendto` / `sys_exit_sendmsg` (`ret` at `ret_offset`).
#[inline(always)]
pub fn on_exit_ipvs(ctx: &TracePointContext, ret_offset: usize) -> Result<(), i32> {
    ipvs_returned(field::load(ctx, ret_offset))
}

/// fexit on `__sys_sendto`: six arguments, then the `int` it returns. (Every send of the node
/// passes the returns too: [`ipvs_returned`] looks at the armed family first.)
pub fn on_sendto_exit(ctx: &FExitContext) -> Result<(), i32> {
    let ret: i32 = ctx.arg(6);
    ipvs_returned(i64::from(ret))
}

/// fexit on `__sys_sendmsg`: four arguments, then the `long` it returns.
pub fn on_sendmsg_exit(ctx: &FExitContext) -> Result<(), i32> {
    ipvs_returned(ctx.arg(4))
}

/// A send or setsockopt returned `ret`: reports the IPVS change its entry recorded if `ret` ≥ 0
/// (the kernel has applied the request, or queued its error in the ack).
#[inline(always)]
fn ipvs_returned(ret: i64) -> Result<(), i32> {
    if ipvs_family() == 0 {
        return Ok(());
    }
    let id = bpf_get_current_pid_tgid();
    let Some(pending) = IPVS_WRITERS.get_ptr(&id) else {
        return Ok(());
    };
    // SAFETY: the map value stays valid until the remove below.
    let pending = unsafe { &*pending };
    if ret >= 0 {
        let mut event = Event::new(kind::IPVS_CHANGE, unsafe { bpf_ktime_get_ns() });
        event.sk = pending.enter_ns;
        event.reason = u32::from(pending.cmd);
        event.tgid = tgid_of(id);
        event.netns = pending.netns;
        // Rare and awaited: the reader is woken at once.
        emit_ipvs(&event, pending);
    }
    let _ = IPVS_WRITERS.remove(&id);
    Ok(())
}
