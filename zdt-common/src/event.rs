//! The record every probe writes to the ring buffer, and the key of the exact counters.

use core::mem::{offset_of, size_of};

/// `Event::kind` values. Constants, not an enum: an out-of-range value from the kernel must be a
/// decode error in userspace, never undefined behaviour.
pub mod kind {
    /// `tcp:tcp_send_reset`: this host sent a RST. `reason` is the kernel's `enum sk_rst_reason`;
    /// `addr`/`port` is the side that sent it (for `NO_SOCKET` the address that refused).
    pub const RESET_SENT: u16 = 1;
    /// `sock:inet_sock_set_state` to `TCP_LISTEN`: a listener opened (`addr:port` bound).
    pub const LISTEN_OPEN: u16 = 2;
    /// `sock:inet_sock_set_state` from `TCP_LISTEN`: a listener closed.
    pub const LISTEN_CLOSE: u16 = 3;
    /// `sock:inet_sk_error_report`: an error delivered to a socket; `reason` is the errno,
    /// `addr:port` the destination as dialled, `peer_addr:peer_port` the local (client) side.
    pub const SOCK_ERROR: u16 = 4;
    /// `tcp:tcp_retransmit_skb` in `SYN_SENT`: a connect that is timing out; `addr:port` is the
    /// destination as dialled.
    pub const SYN_RETRANSMIT: u16 = 5;
    /// `tp_btf/signal_generate`: `reason` = signal number, `tgid` = target process, `netns` =
    /// the target's network namespace.
    pub const SIGNAL: u16 = 6;
    /// `sched:sched_process_exec` in a watched network namespace; `comm` is the new program.
    pub const EXEC: u16 = 7;
    /// `sched:sched_process_exit` of a whole process (`group_dead`) in a watched namespace.
    pub const EXIT: u16 = 8;
    /// `syscalls:sys_exit_setsockopt` of a successful `IPT_SO_SET_REPLACE` /
    /// `IP6T_SO_SET_REPLACE`: an x_tables (iptables-legacy) table was replaced in a namespace of
    /// [`crate::maps::DATAPLANE_NETNS`]. `ts_ns` is the syscall's exit (the new table is in
    /// effect), `sk` its entry, `reason` the level (`SOL_IP` 0 / `SOL_IPV6` 41), `family`
    /// [`crate::family`], `comm` the table's name (`nat`, `filter`, …), `tgid` the writer and
    /// `netns` its namespace. `addr` holds the tighter bounds of the swap inside the syscall
    /// ([`crate::swap_bounds`]; 0 where not seen).
    pub const TABLE_REPLACE: u16 = 9;
    /// `syscalls:sys_enter_setsockopt` of the same replaces: the writer is handing the kernel
    /// its new table. `ts_ns` is the entry (the `sk` of the `TABLE_REPLACE` that follows, if it
    /// succeeds), `sk` the writer's buffer (`optval`, a `struct ipt_replace`), `state` its length
    /// (`optlen`); `reason`, `family`, `comm`, `tgid` and `netns` as for `TABLE_REPLACE`. The
    /// buffer is the writer's until the syscall returns: the agent may read it meanwhile.
    pub const TABLE_REPLACE_BEGIN: u16 = 10;
    /// `syscalls:sys_exit_sendto` / `sys_exit_sendmsg` of a generic-netlink datagram whose first
    /// message is an IPVS change ([`crate::genl::is_ipvs_change`]) of the family id in
    /// [`crate::maps::IPVS_FAMILY`], sent from a namespace of [`crate::maps::DATAPLANE_NETNS`],
    /// the syscall having returned ≥ 0. The kernel applies a generic-netlink request inside the
    /// send (netlink_unicast → genl_rcv → ip_vs_genl_set_cmd), so by the exit the change is in
    /// effect, or it failed and the error is in the ack the writer reads next: a trigger to read
    /// IPVS, not proof of a change. Also `syscalls:sys_exit_setsockopt` of a successful
    /// `IP_VS_SO_SET_*` change ([`crate::ipvs_sockopt`], applied inside the syscall, reported
    /// as the generic-netlink command it stands for, without request bytes) while the trigger
    /// is armed. `ts_ns` is the exit, `sk` the entry, `reason` the IPVS command, `tgid` the
    /// writer and `netns` its namespace.
    pub const IPVS_CHANGE: u16 = 11;
    /// `tp_btf/tcp_send_reset` with `NO_SOCKET` answering a segment that is not a bare SYN (a
    /// SYN-ACK, an ACK, data): the segment belongs to a connection this host no longer has a
    /// socket for — a late SYN-ACK after a client gave up, data after a server's process exited.
    /// Not a refused connection. Fields as for [`RESET_SENT`].
    pub const RESET_STRAY: u16 = 12;
    /// `sock:inet_sock_set_state` `SYN_SENT` → `CLOSE` with no error on the socket
    /// (`sk_err` 0): the client closed a connect nobody answered — its own timeout ran out
    /// (a 1 s connect timeout gives up before the kernel's first SYN retransmission). A RST or
    /// the kernel's own give-up set `sk_err` first (ECONNREFUSED, ETIMEDOUT) and are reported
    /// by [`SOCK_ERROR`]. `addr:port` is the destination as dialled, `peer_addr:peer_port` the
    /// client, `sk` the socket.
    pub const CONNECT_ABANDONED: u16 = 13;
}

/// Address families (include/linux/socket.h), as [`Event::family`], the tracepoint records, a
/// `struct sockaddr` and IPVS's attributes carry them.
pub mod family {
    pub const AF_INET: u16 = 2;
    pub const AF_INET6: u16 = 10;
}

/// TCP header flags (RFC 9293), byte 13 of the header.
pub mod tcp_flags {
    pub const SYN: u8 = 0x02;
    pub const ACK: u8 = 0x10;
    /// Offset of the flags byte in the TCP header.
    pub const OFFSET: usize = 13;
}

/// The generic-netlink framing the IPVS trigger reads from a writer's buffer
/// (include/uapi/linux/netlink.h, genetlink.h, ip_vs.h).
pub mod genl {
    /// `struct nlmsghdr`: len u32, type u16 (the generic-netlink family id), flags u16, seq u32,
    /// pid u32; then `struct genlmsghdr`: cmd u8, version u8, reserved u16.
    pub const NLMSG_HDRLEN: usize = 16;
    pub const HEADERS_LEN: usize = NLMSG_HDRLEN + 4;
    /// How much of an IPVS change request the trigger copies: the headers and the virtual
    /// server's attributes with room to spare (kube-proxy's SET_DEST is ~180 bytes, its
    /// service attribute ~90, the first after the headers).
    pub const REQUEST_MAX: usize = 256;
    /// Offsets in the first [`HEADERS_LEN`] bytes.
    pub const TYPE: usize = 4;
    pub const CMD: usize = NLMSG_HDRLEN;

    /// `enum ipvs_cmds` (include/uapi/linux/ip_vs.h): the trigger reports the changing ones,
    /// the agent dumps with the GET ones (whose replies are NEW_SERVICE / NEW_DEST).
    pub const IPVS_CMD_NEW_SERVICE: u8 = 1;
    pub const IPVS_CMD_SET_SERVICE: u8 = 2;
    pub const IPVS_CMD_DEL_SERVICE: u8 = 3;
    pub const IPVS_CMD_GET_SERVICE: u8 = 4;
    pub const IPVS_CMD_NEW_DEST: u8 = 5;
    pub const IPVS_CMD_SET_DEST: u8 = 6;
    pub const IPVS_CMD_DEL_DEST: u8 = 7;
    pub const IPVS_CMD_GET_DEST: u8 = 8;
    /// Deletes every virtual server (kube-proxy's cleanup, `ipvsadm -C`).
    pub const IPVS_CMD_FLUSH: u8 = 17;
    /// `enum ipvs_cmd_attr`: the nested virtual server and real server of a command.
    pub const IPVS_CMD_ATTR_SERVICE: u16 = 1;
    pub const IPVS_CMD_ATTR_DEST: u16 = 2;

    /// Whether an IPVS command changes virtual or real servers (the GET commands, daemon,
    /// timeout and zeroing commands do not change routes).
    #[inline(always)]
    pub const fn is_ipvs_change(cmd: u8) -> bool {
        matches!(
            cmd,
            IPVS_CMD_NEW_SERVICE
                | IPVS_CMD_SET_SERVICE
                | IPVS_CMD_DEL_SERVICE
                | IPVS_CMD_NEW_DEST
                | IPVS_CMD_SET_DEST
                | IPVS_CMD_DEL_DEST
                | IPVS_CMD_FLUSH
        )
    }

    /// The IPVS command a datagram's first bytes carry, if its first message is of generic-netlink
    /// family `family` (never 0: no family has that id) and changes IPVS.
    #[inline(always)]
    pub fn ipvs_change(headers: &[u8; HEADERS_LEN], family: u16) -> Option<u8> {
        let kind = u16::from_ne_bytes([headers[TYPE], headers[TYPE + 1]]);
        let cmd = headers[CMD];
        (family != 0 && kind == family && is_ipvs_change(cmd)).then_some(cmd)
    }
}

/// IPVS's older interface, `setsockopt(SOL_IP, IP_VS_SO_SET_*)` (include/uapi/linux/ip_vs.h):
/// ipvsadm built without libnl. The kernel applies the change inside the syscall.
pub mod ipvs_sockopt {
    use super::genl;

    /// IP_VS_BASE_CTL.
    pub const BASE: u32 = 64 + 1024 + 64;
    pub const SET_ADD: u32 = BASE + 2;
    pub const SET_EDIT: u32 = BASE + 3;
    pub const SET_DEL: u32 = BASE + 4;
    pub const SET_FLUSH: u32 = BASE + 5;
    pub const SET_ADDDEST: u32 = BASE + 7;
    pub const SET_DELDEST: u32 = BASE + 8;
    pub const SET_EDITDEST: u32 = BASE + 9;

    /// The generic-netlink command a route-changing option stands for (the trigger reports
    /// both interfaces the same way); `None` for the others (timeouts, daemons, zeroing).
    #[inline(always)]
    pub const fn as_genl_cmd(optname: u32) -> Option<u8> {
        match optname {
            SET_ADD => Some(genl::IPVS_CMD_NEW_SERVICE),
            SET_EDIT => Some(genl::IPVS_CMD_SET_SERVICE),
            SET_DEL => Some(genl::IPVS_CMD_DEL_SERVICE),
            SET_FLUSH => Some(genl::IPVS_CMD_FLUSH),
            SET_ADDDEST => Some(genl::IPVS_CMD_NEW_DEST),
            SET_DELDEST => Some(genl::IPVS_CMD_DEL_DEST),
            SET_EDITDEST => Some(genl::IPVS_CMD_SET_DEST),
            _ => None,
        }
    }
}

/// `setsockopt` levels and the option that replaces an x_tables table
/// (include/uapi/linux/netfilter_ipv4/ip_tables.h, `netfilter_ipv6/ip6_tables.h`).
pub mod xt {
    pub const SOL_IP: u32 = 0;
    pub const SOL_IPV6: u32 = 41;
    /// IPT_SO_SET_REPLACE = IP6T_SO_SET_REPLACE = IPT_BASE_CTL (64).
    pub const SO_SET_REPLACE: u32 = 64;
}

/// TCP states (include/net/tcp_states.h).
pub mod tcp_state {
    pub const SYN_SENT: u32 = 2;
    pub const CLOSE: u32 = 7;
    pub const LISTEN: u32 = 10;
}

/// Values of the kernel's `enum sk_rst_reason` (include/net/rstreason.h), as reported by
/// `tcp:tcp_send_reset`. Only the stable head of the enum is named here; userspace prints
/// unknown values numerically.
pub mod rst_reason {
    pub const NOT_SPECIFIED: u32 = 0;
    /// No socket for the segment: a SYN to a port without a listener (connection refused), or a
    /// segment for a connection that no longer exists.
    pub const NO_SOCKET: u32 = 1;
}

/// One observation from the kernel. Layout is asserted below; all padding is explicit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the probe fired.
    pub ts_ns: u64,
    /// Kernel address of the socket, if any (0 when the kernel had none, e.g. `NO_SOCKET`).
    pub sk: u64,
    /// Always 0: the probes no longer ask for the current task's cgroup id (no reader used it,
    /// and in softirq context it named whatever task was interrupted); the field keeps the
    /// layout.
    pub cgroup_id: u64,
    /// One of [`kind`].
    pub kind: u16,
    /// [`family::AF_INET`] or [`family::AF_INET6`].
    pub family: u16,
    /// Kind-specific reason (`sk_rst_reason`, errno, signal number, …).
    pub reason: u32,
    /// The watched side's address; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
    /// The other side's address.
    pub peer_addr: [u8; 16],
    /// The watched side's port, host byte order.
    pub port: u16,
    /// The other side's port, host byte order.
    pub peer_port: u16,
    /// TCP state (`TCP_*`) of the socket, if known.
    pub state: u32,
    /// Process id (`bpf_get_current_pid_tgid() >> 32`, or the signal's target); meaningless in
    /// softirq context.
    pub tgid: u32,
    /// Inode number of the network namespace the event belongs to (0 when unknown): tells an old
    /// pod from a new one that reuses its IP.
    pub netns: u32,
    /// Task name (`comm`), NUL-padded, for process events.
    pub comm: [u8; 16],
}

const _: () = {
    assert!(offset_of!(Event, ts_ns) == 0);
    assert!(offset_of!(Event, sk) == 8);
    assert!(offset_of!(Event, cgroup_id) == 16);
    assert!(offset_of!(Event, kind) == 24);
    assert!(offset_of!(Event, family) == 26);
    assert!(offset_of!(Event, reason) == 28);
    assert!(offset_of!(Event, addr) == 32);
    assert!(offset_of!(Event, peer_addr) == 48);
    assert!(offset_of!(Event, port) == 64);
    assert!(offset_of!(Event, peer_port) == 66);
    assert!(offset_of!(Event, state) == 68);
    assert!(offset_of!(Event, tgid) == 72);
    assert!(offset_of!(Event, netns) == 76);
    assert!(offset_of!(Event, comm) == 80);
    assert!(size_of::<Event>() == 96);
};

impl Event {
    /// An event of `kind` at `ts_ns` with every other field zero.
    pub const fn new(kind: u16, ts_ns: u64) -> Self {
        Self {
            ts_ns,
            sk: 0,
            cgroup_id: 0,
            kind,
            family: 0,
            reason: 0,
            addr: [0; 16],
            peer_addr: [0; 16],
            port: 0,
            peer_port: 0,
            state: 0,
            tgid: 0,
            netns: 0,
            comm: [0; 16],
        }
    }
}

/// Key of the exact per-CPU counters: one count per (address, port, kind, reason).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    pub addr: [u8; 16],
    pub family: u16,
    pub port: u16,
    pub kind: u16,
    /// Explicit padding: implicit padding would hold stack garbage and split counts.
    pub _pad: u16,
    pub reason: u32,
}

const _: () = {
    assert!(offset_of!(CounterKey, addr) == 0);
    assert!(offset_of!(CounterKey, family) == 16);
    assert!(offset_of!(CounterKey, port) == 18);
    assert!(offset_of!(CounterKey, kind) == 20);
    assert!(offset_of!(CounterKey, _pad) == 22);
    assert!(offset_of!(CounterKey, reason) == 24);
    assert!(size_of::<CounterKey>() == 28);
};

impl CounterKey {
    /// The counter an event increments.
    pub const fn of(event: &Event) -> Self {
        Self {
            addr: event.addr,
            family: event.family,
            port: event.port,
            kind: event.kind,
            _pad: 0,
            reason: event.reason,
        }
    }
}

/// A table replace in flight: what `sys_enter_setsockopt` saw, kept per thread
/// (`bpf_get_current_pid_tgid`) until its `sys_exit_setsockopt` says whether it succeeded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingReplace {
    /// `bpf_ktime_get_ns()` at the syscall's entry.
    pub enter_ns: u64,
    pub netns: u32,
    /// `SOL_IP` or `SOL_IPV6`.
    pub level: u32,
    /// The first 16 bytes of `struct ipt_replace.name` (the table).
    pub table: [u8; 16],
    /// The writer's last per-CPU allocation in the syscall (`percpu:percpu_alloc_percpu`): the
    /// new table's rule counters, allocated while the kernel checks it, before the swap; 0 if
    /// none was seen.
    pub last_alloc_ns: u64,
    /// The writer's first per-CPU free in the syscall after its last allocation
    /// (`percpu:percpu_free_percpu`): the old table's rule counters, freed after the swap; 0
    /// if none was seen.
    pub first_free_ns: u64,
    /// The first per-CPU block allocated in the syscall: the new table's first rule counters
    /// (the kernel checks the rules in order and gives each 256 one block). 0 if none was seen.
    pub first_block: u64,
    /// The first block of the table this replace is replacing (`ZDT_TABLE_BLOCKS`, noted by
    /// the replace that installed it), 0 if unknown. The kernel frees the old table's blocks in
    /// rule order after the swap, so when the writer frees this one the swap has happened: a
    /// replace the kernel rejects frees only its own new blocks.
    pub old_first_block: u64,
    /// When the writer freed `old_first_block` (the replace was then reported, before its
    /// exit); 0 until then.
    pub old_freed_ns: u64,
    /// The writer's last reference taken on the table's module (`module:module_get` of
    /// `iptable_<table>` / `ip6table_<table>`): `xt_find_table_lock`, right before the swap.
    /// 0 if none was seen (a kernel without modules, or the table built in).
    pub table_get_ns: u64,
    /// The writer's first drop of that reference after it (`module:module_put`): right after
    /// the swap (`__do_replace` drops the lookup's reference once the table holds the new
    /// rules), or on the error path of a replace the kernel refused at the swap. 0 until then.
    pub table_put_ns: u64,
}

const _: () = {
    assert!(offset_of!(PendingReplace, enter_ns) == 0);
    assert!(offset_of!(PendingReplace, netns) == 8);
    assert!(offset_of!(PendingReplace, level) == 12);
    assert!(offset_of!(PendingReplace, table) == 16);
    assert!(offset_of!(PendingReplace, last_alloc_ns) == 32);
    assert!(offset_of!(PendingReplace, first_free_ns) == 40);
    assert!(offset_of!(PendingReplace, first_block) == 48);
    assert!(offset_of!(PendingReplace, old_first_block) == 56);
    assert!(offset_of!(PendingReplace, old_freed_ns) == 64);
    assert!(offset_of!(PendingReplace, table_get_ns) == 72);
    assert!(offset_of!(PendingReplace, table_put_ns) == 80);
    assert!(size_of::<PendingReplace>() == 88);
};

/// A table of a namespace, as `ZDT_TABLE_BLOCKS` keys it: the first per-CPU block of the table
/// installed there last.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableKey {
    pub netns: u32,
    /// `SOL_IP` or `SOL_IPV6`.
    pub level: u32,
    pub table: [u8; 16],
}

const _: () = assert!(size_of::<TableKey>() == 24);

/// `Event::state` of a `kind::TABLE_REPLACE`: where in the replace it was reported.
pub mod replace_reported {
    /// At the syscall's exit (it returned 0).
    pub const AT_EXIT: u32 = 0;
    /// When the writer freed the old table's first per-CPU block: the swap was over, the
    /// kernel was cleaning up (tens of ms before the exit for a big table).
    pub const AT_OLD_TABLE_FREE: u32 = 1;
}

/// Where a `kind::TABLE_REPLACE` event carries the bounds of the swap (native byte order):
/// in `Event::addr`, [`PendingReplace::last_alloc_ns`] then [`PendingReplace::first_free_ns`];
/// in `Event::peer_addr`, [`PendingReplace::table_get_ns`] then
/// [`PendingReplace::table_put_ns`].
pub mod swap_bounds {
    pub const LAST_ALLOC: core::ops::Range<usize> = 0..8;
    pub const FIRST_FREE: core::ops::Range<usize> = 8..16;
    pub const TABLE_GET: core::ops::Range<usize> = 0..8;
    pub const TABLE_PUT: core::ops::Range<usize> = 8..16;
}

/// Offsets of kernel struct members the programs follow, resolved by the agent from the running
/// kernel's BTF and set as a load-time global (Rust eBPF has no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sock`: `__sk_common.skc_net.net` (`struct net *`).
    pub sock_net: u32,
    /// `struct net`: `ns.inum`.
    pub net_inum: u32,
    /// `struct sk_buff`: `dev` (`struct net_device *`).
    pub skb_dev: u32,
    /// `struct net_device`: `nd_net.net`.
    pub netdev_net: u32,
    /// `struct task_struct`: `nsproxy`.
    pub task_nsproxy: u32,
    /// `struct nsproxy`: `net_ns`.
    pub nsproxy_net: u32,
    /// `struct task_struct`: `tgid`.
    pub task_tgid: u32,
    /// `struct task_struct`: `real_parent` (`struct task_struct *`): an exiting process whose
    /// parent is in its own network namespace is a pod's per-connection child, not reported.
    pub task_real_parent: u32,
    /// 1 once the loader filled the offsets in; programs read no pointer chains before that.
    pub valid: u32,
    /// 1 when `tcp:tcp_retransmit_skb` has `err` (newer kernels): failed retransmits, which
    /// sent nothing, are then left out; without it (Linux 6.12) every SYN retransmit counts.
    pub retransmit_err: u32,
    /// 1 when `sched:sched_process_exit` has `group_dead` (newer kernels): the last thread's
    /// exit is the process's; without it (Linux 6.12) the main thread's exit stands for it.
    pub exit_group_dead: u32,
    /// Offset of `ptr` in `percpu:percpu_alloc_percpu` records (from its format file; 56 on
    /// 6.18, where `call_site` comes first), 0 when unknown: replaces are then reported at exit.
    pub percpu_alloc_ptr: u32,
    /// Offset of `ptr` in `percpu:percpu_free_percpu` records, 0 when unknown.
    pub percpu_free_ptr: u32,
    /// Offset of `name` (a `__data_loc`) in `module:module_get` / `module_put` records (20),
    /// 0 when unknown or absent (a kernel without modules): the swap is then bounded by the
    /// per-CPU counters only.
    pub module_name_loc: u32,
    /// `struct sock_common` (at the start of every socket, full, time-wait or request):
    /// `skc_family` (u16), `skc_state` (u8), `skc_daddr` / `skc_rcv_saddr` (IPv4, network
    /// order), `skc_dport` (network order),
    /// `skc_v6_daddr` / `skc_v6_rcv_saddr`: what `tcp_send_reset`'s BTF program reads of a full
    /// socket, as the tracepoint's record would.
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `struct sk_buff`: `head`, `data` (pointers) and `network_header` (u16 offset from
    /// `head`): the segment a reset answers, when there is no full socket.
    pub skb_head: u32,
    pub skb_data: u32,
    pub skb_network_header: u32,
    /// `struct sock`: `sk_err` (int), the error a connect failed with; 0 when the client itself
    /// closed a connect in `SYN_SENT`.
    pub sk_err: u32,
    /// `struct inet_sock`: `inet_sport` (network order), the local port as the classic
    /// tracepoint records it. `skc_num` is not: `tcp_close` releases the port (zeroes it)
    /// before it sends the abort-on-close RST.
    pub inet_sport: u32,
    /// `struct sock`: `sk_protocol` (u16): `inet_sock_set_state`'s BTF program keeps TCP
    /// sockets only, as the classic record's `protocol` told.
    pub sk_protocol: u32,
}

const _: () = assert!(size_of::<KernelOffsets>() == 108);

/// An IPVS change in flight: what `sys_enter_sendto`/`sendmsg` saw, kept per thread until the
/// syscall's exit says whether the send succeeded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingIpvs {
    /// `bpf_ktime_get_ns()` at the syscall's entry.
    pub enter_ns: u64,
    pub netns: u32,
    /// The IPVS command (`genl::IPVS_CMD_*`).
    pub cmd: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// How many bytes of the request `request` holds (≤ [`genl::REQUEST_MAX`]).
    pub len: u32,
    /// Explicit padding.
    pub _pad2: u32,
    /// The request's first bytes as the writer sent them: nlmsghdr, genlmsghdr, then the
    /// attributes, the virtual server (`IPVS_CMD_ATTR_SERVICE`) first (moby/ipvs and libnl both
    /// put it there). The agent re-reads only that virtual server.
    pub request: [u8; genl::REQUEST_MAX],
}

const _: () = {
    assert!(offset_of!(PendingIpvs, enter_ns) == 0);
    assert!(offset_of!(PendingIpvs, netns) == 8);
    assert!(offset_of!(PendingIpvs, cmd) == 12);
    assert!(offset_of!(PendingIpvs, len) == 16);
    assert!(offset_of!(PendingIpvs, request) == 24);
    assert!(size_of::<PendingIpvs>() == 24 + genl::REQUEST_MAX);
};

/// What the ring buffer carries for [`kind::IPVS_CHANGE`]: the event, then the request's
/// length and first bytes ([`PendingIpvs::len`], [`PendingIpvs::request`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpvsRecord {
    pub event: Event,
    pub len: u32,
    /// Explicit padding.
    pub _pad: u32,
    pub request: [u8; genl::REQUEST_MAX],
}

const _: () = {
    assert!(offset_of!(IpvsRecord, event) == 0);
    assert!(offset_of!(IpvsRecord, len) == size_of::<Event>());
    assert!(offset_of!(IpvsRecord, request) == size_of::<Event>() + 8);
    assert!(size_of::<IpvsRecord>() == size_of::<Event>() + 8 + genl::REQUEST_MAX);
};

#[cfg(feature = "user")]
mod user {
    // SAFETY: these types are `#[repr(C)]`, `Copy`, made only of integers and byte arrays, with
    // every padding byte an explicit field (asserted above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::CounterKey {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::PendingReplace {}
    unsafe impl aya::Pod for super::PendingIpvs {}
    unsafe impl aya::Pod for super::IpvsRecord {}
}

#[cfg(test)]
mod tests {
    use super::genl::*;

    /// The first 20 bytes of a generic-netlink request: nlmsghdr then genlmsghdr.
    fn headers(family: u16, cmd: u8) -> [u8; HEADERS_LEN] {
        let mut h = [0u8; HEADERS_LEN];
        h[..4].copy_from_slice(&64u32.to_ne_bytes());
        h[4..6].copy_from_slice(&family.to_ne_bytes());
        h[6..8].copy_from_slice(&5u16.to_ne_bytes());
        h[16] = cmd;
        h[17] = 1;
        h
    }

    #[test]
    fn only_route_changing_commands_of_the_armed_family_are_ipvs_changes() {
        let changes = [1, 2, 3, 5, 6, 7, 17];
        for cmd in 0..=u8::MAX {
            let got = ipvs_change(&headers(0x1a, cmd), 0x1a);
            assert_eq!(got, changes.contains(&cmd).then_some(cmd), "command {cmd}");
            // Another family with the same command, or the trigger disarmed (family 0).
            assert_eq!(ipvs_change(&headers(0x1b, cmd), 0x1a), None);
            assert_eq!(ipvs_change(&headers(0, cmd), 0), None);
        }
    }
}
