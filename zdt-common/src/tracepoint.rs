//! Offsets of the tracepoint record fields the programs read.
//!
//! Rust has no CO-RE, so the programs read records at these constant offsets. The agent compares
//! them with `/sys/kernel/tracing/events/<category>/<name>/format` before attaching; a kernel
//! whose layout differs is refused with a clear error instead of yielding garbage.

/// One field the program reads: (name in the format file, offset, size).
pub type Field = (&'static str, usize, usize);

/// A tracepoint and the fields a program reads from its record.
pub struct Layout {
    pub category: &'static str,
    pub name: &'static str,
    pub fields: &'static [Field],
}

/// `tcp:tcp_send_reset` (kernel ≥6.10 layout with `reason`). The program is a BTF tracepoint
/// and reads its arguments, not this record; preflight still checks the record: its `reason`
/// says the kernel passes one (≥ 6.10), and its print format names the reasons.
pub mod tcp_send_reset {
    pub const SKBADDR: usize = 8;
    pub const SKADDR: usize = 16;
    pub const STATE: usize = 24;
    pub const REASON: usize = 28;
    /// `struct sockaddr_in`/`sockaddr_in6` in 28 bytes: family at 0 (host order), port at 2
    /// (network order), IPv4 address at 4, IPv6 address at 8.
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 60;
    pub const LAYOUT: super::Layout = super::Layout {
        category: "tcp",
        name: "tcp_send_reset",
        fields: &[
            ("skbaddr", SKBADDR, 8),
            ("skaddr", SKADDR, 8),
            ("state", STATE, 4),
            ("reason", REASON, 4),
            ("saddr", SADDR, 28),
            ("daddr", DADDR, 28),
        ],
    };
}

/// `sock:inet_sock_set_state` (ports in host order).
pub mod inet_sock_set_state {
    pub const SKADDR: usize = 8;
    pub const OLDSTATE: usize = 16;
    pub const NEWSTATE: usize = 20;
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 36;
    pub const SADDR_V6: usize = 40;
    pub const DADDR_V6: usize = 56;
    pub const LAYOUT: super::Layout = super::Layout {
        category: "sock",
        name: "inet_sock_set_state",
        fields: &[
            ("skaddr", SKADDR, 8),
            ("oldstate", OLDSTATE, 4),
            ("newstate", NEWSTATE, 4),
            ("sport", SPORT, 2),
            ("dport", DPORT, 2),
            ("family", FAMILY, 2),
            ("protocol", PROTOCOL, 2),
            ("saddr", SADDR, 4),
            ("daddr", DADDR, 4),
            ("saddr_v6", SADDR_V6, 16),
            ("daddr_v6", DADDR_V6, 16),
        ],
    };
}

/// `sock:inet_sk_error_report` (ports in host order; fires with error 0 too).
pub mod inet_sk_error_report {
    pub const ERROR: usize = 8;
    pub const SPORT: usize = 12;
    pub const DPORT: usize = 14;
    pub const FAMILY: usize = 16;
    pub const PROTOCOL: usize = 18;
    pub const SADDR: usize = 20;
    pub const DADDR: usize = 24;
    pub const SADDR_V6: usize = 28;
    pub const DADDR_V6: usize = 44;
    pub const LAYOUT: super::Layout = super::Layout {
        category: "sock",
        name: "inet_sk_error_report",
        fields: &[
            ("error", ERROR, 4),
            ("sport", SPORT, 2),
            ("dport", DPORT, 2),
            ("family", FAMILY, 2),
            ("protocol", PROTOCOL, 2),
            ("saddr", SADDR, 4),
            ("daddr", DADDR, 4),
            ("saddr_v6", SADDR_V6, 16),
            ("daddr_v6", DADDR_V6, 16),
        ],
    };
}

/// `tcp:tcp_retransmit_skb` (ports in host order).
pub mod tcp_retransmit_skb {
    pub const SKADDR: usize = 16;
    pub const STATE: usize = 24;
    pub const SPORT: usize = 28;
    pub const DPORT: usize = 30;
    pub const FAMILY: usize = 32;
    pub const SADDR: usize = 34;
    pub const DADDR: usize = 38;
    pub const SADDR_V6: usize = 42;
    pub const DADDR_V6: usize = 58;
    /// Result of the retransmission: non-zero means nothing was sent. Newer kernels only
    /// (6.18 has it, 6.12 does not): see [`ERR_FIELD`].
    pub const ERR: usize = 76;
    pub const LAYOUT: super::Layout = super::Layout {
        category: "tcp",
        name: "tcp_retransmit_skb",
        fields: &[
            ("skaddr", SKADDR, 8),
            ("state", STATE, 4),
            ("sport", SPORT, 2),
            ("dport", DPORT, 2),
            ("family", FAMILY, 2),
            ("saddr", SADDR, 4),
            ("daddr", DADDR, 4),
            ("saddr_v6", SADDR_V6, 16),
            ("daddr_v6", DADDR_V6, 16),
        ],
    };
    /// `err`, read only where the kernel has it (`KernelOffsets::retransmit_err`).
    pub const ERR_FIELD: super::Layout = super::Layout {
        category: "tcp",
        name: "tcp_retransmit_skb",
        fields: &[("err", ERR, 4)],
    };
}

/// `sched:sched_process_exit`: the program needs the tracepoint, and reads `group_dead` where
/// the kernel has it (6.18 does, 6.12 does not: see [`GROUP_DEAD_FIELD`]).
pub mod sched_process_exit {
    pub const GROUP_DEAD: usize = 32;
    pub const LAYOUT: super::Layout = super::Layout {
        category: "sched",
        name: "sched_process_exit",
        fields: &[],
    };
    /// `group_dead`, read only where the kernel has it (`KernelOffsets::exit_group_dead`).
    pub const GROUP_DEAD_FIELD: super::Layout = super::Layout {
        category: "sched",
        name: "sched_process_exit",
        fields: &[("group_dead", GROUP_DEAD, 1)],
    };
}

/// `syscalls:sys_enter_setsockopt`: every argument is stored as a `long` (8 bytes).
pub mod sys_enter_setsockopt {
    pub const LEVEL: usize = 24;
    pub const OPTNAME: usize = 32;
    pub const OPTVAL: usize = 40;
    pub const OPTLEN: usize = 48;
    pub const LAYOUT: super::Layout = super::Layout {
        category: "syscalls",
        name: "sys_enter_setsockopt",
        fields: &[
            ("level", LEVEL, 8),
            ("optname", OPTNAME, 8),
            ("optval", OPTVAL, 8),
            ("optlen", OPTLEN, 8),
        ],
    };
}

/// `syscalls:sys_exit_setsockopt`.
pub mod sys_exit_setsockopt {
    pub const RET: usize = 16;
    pub const LAYOUT: super::Layout = super::Layout {
        category: "syscalls",
        name: "sys_exit_setsockopt",
        fields: &[("ret", RET, 8)],
    };
}

/// `syscalls:sys_enter_sendto`: the IPVS trigger reads the datagram's first bytes.
pub mod sys_enter_sendto {
    pub const BUFF: usize = 24;
    pub const LEN: usize = 32;
    pub const LAYOUT: super::Layout = super::Layout {
        category: "syscalls",
        name: "sys_enter_sendto",
        fields: &[("buff", BUFF, 8), ("len", LEN, 8)],
    };
}

/// `syscalls:sys_exit_sendto`.
pub mod sys_exit_sendto {
    pub const RET: usize = 16;
    pub const LAYOUT: super::Layout = super::Layout {
        category: "syscalls",
        name: "sys_exit_sendto",
        fields: &[("ret", RET, 8)],
    };
}

/// `syscalls:sys_enter_sendmsg`: `msg` is a `struct user_msghdr *` in the caller's memory.
pub mod sys_enter_sendmsg {
    pub const MSG: usize = 24;
    pub const LAYOUT: super::Layout = super::Layout {
        category: "syscalls",
        name: "sys_enter_sendmsg",
        fields: &[("msg", MSG, 8)],
    };
}

/// `syscalls:sys_exit_sendmsg`.
pub mod sys_exit_sendmsg {
    pub const RET: usize = 16;
    pub const LAYOUT: super::Layout = super::Layout {
        category: "syscalls",
        name: "sys_exit_sendmsg",
        fields: &[("ret", RET, 8)],
    };
}

/// Where `percpu:percpu_alloc_percpu` / `percpu_free_percpu` records keep `ptr` (the per-CPU
/// pointer allocated or freed). The agent reads the offsets from the running kernel's format
/// files and passes one of these (`KernelOffsets::percpu_alloc_ptr`/`percpu_free_ptr`), or 0.
pub mod percpu {
    /// Since `call_site` was added in front of the allocation record (6.18 has it).
    pub const ALLOC_PTR_WITH_CALL_SITE: u32 = 56;
    /// Before.
    pub const ALLOC_PTR: u32 = 48;
    pub const FREE_PTR: u32 = 24;
}

/// `module:module_get` / `module:module_put` (class `module_refcnt`): `ip` at 8, `refcnt` at
/// 16, then `name` as a `__data_loc char[]` (offset in the low 16 bits, length in the high 16).
/// The agent checks the format files and passes `NAME_LOC` (`KernelOffsets::module_name_loc`)
/// or 0.
pub mod module_refcnt {
    pub const NAME_LOC: u32 = 20;
    /// What the programs compare: the longest table module name (`ip6table_security`) and its
    /// NUL fit.
    pub const NAME_BYTES: usize = 32;
}

/// `struct user_msghdr` (64-bit): `msg_iov` at 16, `msg_iovlen` at 24; `struct iovec`:
/// `iov_base` at 0, `iov_len` at 8. Userspace ABI, the same on every 64-bit kernel.
pub mod user_msghdr {
    pub const IOV: usize = 16;
    pub const IOVLEN: usize = 24;
    pub const IOV_BASE: usize = 0;
    pub const IOV_LEN: usize = 8;
}

/// Tracepoints only the iptables-legacy and IPVS triggers need (syscall tracepoints exist only
/// with CONFIG_FTRACE_SYSCALLS): checked when present; without them the agent runs and says that
/// iptables-legacy changes are not watched and IPVS is polled.
pub const OPTIONAL_LAYOUTS: &[Layout] = &[
    sys_enter_setsockopt::LAYOUT,
    sys_exit_setsockopt::LAYOUT,
    sys_enter_sendto::LAYOUT,
    sys_exit_sendto::LAYOUT,
    sys_enter_sendmsg::LAYOUT,
    sys_exit_sendmsg::LAYOUT,
];

/// Every tracepoint layout the programs depend on, checked at load time.
pub const LAYOUTS: &[Layout] = &[
    tcp_send_reset::LAYOUT,
    inet_sock_set_state::LAYOUT,
    inet_sk_error_report::LAYOUT,
    tcp_retransmit_skb::LAYOUT,
    sched_process_exit::LAYOUT,
];
