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

/// Declares a tracepoint's record once: a module with one `usize` const per field (its offset,
/// what the programs read at compile time), `HOOK` (the tracepoint a program attaches to) and
/// `LAYOUT` (what preflight compares with the format file), and optionally a second layout of
/// fields only some kernels have, checked on its own.
///
/// ```text
/// /// docs
/// module = "category" / "name" {
///     /// docs
///     CONST: "field in the format file" at OFFSET, size SIZE;
/// }
/// +
/// /// docs
/// OPTIONAL_LAYOUT { CONST: "field" at OFFSET, size SIZE; }
/// ```
macro_rules! tracepoints {
    ($(
        $(#[$meta:meta])*
        $module:ident = $category:literal / $name:literal {
            $( $(#[$fmeta:meta])* $konst:ident: $field:literal at $offset:literal, size $size:literal; )*
        }
        $(
            +
            $(#[$ometa:meta])*
            $optional:ident {
                $( $(#[$ofmeta:meta])* $okonst:ident: $ofield:literal at $ooffset:literal, size $osize:literal; )*
            }
        )?
    )*) => {$(
        $(#[$meta])*
        pub mod $module {
            /// The tracepoint a program of this record attaches to.
            pub const HOOK: crate::programs::Hook = crate::programs::Hook::TracePoint {
                category: $category,
                name: $name,
            };
            $( $(#[$fmeta])* pub const $konst: usize = $offset; )*
            pub const LAYOUT: super::Layout = super::Layout {
                category: $category,
                name: $name,
                fields: &[$(($field, $konst, $size)),*],
            };
            $(
                $( $(#[$ofmeta])* pub const $okonst: usize = $ooffset; )*
                $(#[$ometa])*
                pub const $optional: super::Layout = super::Layout {
                    category: $category,
                    name: $name,
                    fields: &[$(($ofield, $okonst, $osize)),*],
                };
            )?
        }
    )*};
}

tracepoints! {
    /// `tcp:tcp_send_reset` (kernel ≥6.10 layout with `reason`). The program is a BTF tracepoint
    /// and reads its arguments, not this record; preflight still checks the record: its `reason`
    /// says the kernel passes one (≥ 6.10), and its print format names the reasons.
    tcp_send_reset = "tcp" / "tcp_send_reset" {
        SKBADDR: "skbaddr" at 8, size 8;
        SKADDR: "skaddr" at 16, size 8;
        STATE: "state" at 24, size 4;
        REASON: "reason" at 28, size 4;
        /// `struct sockaddr_in`/`sockaddr_in6` in 28 bytes: family at 0 (host order), port at 2
        /// (network order), IPv4 address at 4, IPv6 address at 8.
        SADDR: "saddr" at 32, size 28;
        DADDR: "daddr" at 60, size 28;
    }

    /// `sock:inet_sk_error_report` (ports in host order; fires with error 0 too).
    inet_sk_error_report = "sock" / "inet_sk_error_report" {
        ERROR: "error" at 8, size 4;
        SPORT: "sport" at 12, size 2;
        DPORT: "dport" at 14, size 2;
        FAMILY: "family" at 16, size 2;
        PROTOCOL: "protocol" at 18, size 2;
        SADDR: "saddr" at 20, size 4;
        DADDR: "daddr" at 24, size 4;
        SADDR_V6: "saddr_v6" at 28, size 16;
        DADDR_V6: "daddr_v6" at 44, size 16;
    }

    /// `tcp:tcp_retransmit_skb` (ports in host order).
    tcp_retransmit_skb = "tcp" / "tcp_retransmit_skb" {
        SKADDR: "skaddr" at 16, size 8;
        STATE: "state" at 24, size 4;
        SPORT: "sport" at 28, size 2;
        DPORT: "dport" at 30, size 2;
        FAMILY: "family" at 32, size 2;
        SADDR: "saddr" at 34, size 4;
        DADDR: "daddr" at 38, size 4;
        SADDR_V6: "saddr_v6" at 42, size 16;
        DADDR_V6: "daddr_v6" at 58, size 16;
    } +
    /// `err`, read only where the kernel has it (`KernelOffsets::retransmit_err`).
    ERR_FIELD {
        /// Result of the retransmission: non-zero means nothing was sent. Newer kernels only
        /// (6.18 has it, 6.12 does not): see [`ERR_FIELD`].
        ERR: "err" at 76, size 4;
    }

    /// `sched:sched_process_exit`: the program needs the tracepoint, and reads `group_dead` where
    /// the kernel has it (6.18 does, 6.12 does not: see [`GROUP_DEAD_FIELD`]).
    sched_process_exit = "sched" / "sched_process_exit" {} +
    /// `group_dead`, read only where the kernel has it (`KernelOffsets::exit_group_dead`).
    GROUP_DEAD_FIELD {
        GROUP_DEAD: "group_dead" at 32, size 1;
    }

    /// `syscalls:sys_enter_setsockopt`: every argument is stored as a `long` (8 bytes).
    sys_enter_setsockopt = "syscalls" / "sys_enter_setsockopt" {
        LEVEL: "level" at 24, size 8;
        OPTNAME: "optname" at 32, size 8;
        OPTVAL: "optval" at 40, size 8;
        OPTLEN: "optlen" at 48, size 8;
    }

    /// `syscalls:sys_exit_setsockopt`.
    sys_exit_setsockopt = "syscalls" / "sys_exit_setsockopt" {
        RET: "ret" at 16, size 8;
    }

    /// `syscalls:sys_enter_sendto`: the IPVS trigger reads the datagram's first bytes.
    sys_enter_sendto = "syscalls" / "sys_enter_sendto" {
        BUFF: "buff" at 24, size 8;
        LEN: "len" at 32, size 8;
    }

    /// `syscalls:sys_exit_sendto`.
    sys_exit_sendto = "syscalls" / "sys_exit_sendto" {
        RET: "ret" at 16, size 8;
    }

    /// `syscalls:sys_enter_sendmsg`: `msg` is a `struct user_msghdr *` in the caller's memory.
    sys_enter_sendmsg = "syscalls" / "sys_enter_sendmsg" {
        MSG: "msg" at 24, size 8;
    }

    /// `syscalls:sys_exit_sendmsg`.
    sys_exit_sendmsg = "syscalls" / "sys_exit_sendmsg" {
        RET: "ret" at 16, size 8;
    }
}

/// Where `percpu:percpu_alloc_percpu` / `percpu_free_percpu` records keep `ptr` (the per-CPU
/// pointer allocated or freed). The agent reads the offsets from the running kernel's format
/// files and passes one of these (`KernelOffsets::percpu_alloc_ptr`/`percpu_free_ptr`), or 0.
pub mod percpu {
    use crate::programs::Hook;

    pub const CATEGORY: &str = "percpu";
    pub const ALLOC: &str = "percpu_alloc_percpu";
    pub const FREE: &str = "percpu_free_percpu";
    pub const ALLOC_HOOK: Hook = Hook::TracePoint {
        category: CATEGORY,
        name: ALLOC,
    };
    pub const FREE_HOOK: Hook = Hook::TracePoint {
        category: CATEGORY,
        name: FREE,
    };
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
    use crate::programs::Hook;

    pub const CATEGORY: &str = "module";
    pub const GET: &str = "module_get";
    pub const PUT: &str = "module_put";
    pub const GET_HOOK: Hook = Hook::TracePoint {
        category: CATEGORY,
        name: GET,
    };
    pub const PUT_HOOK: Hook = Hook::TracePoint {
        category: CATEGORY,
        name: PUT,
    };
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
    inet_sk_error_report::LAYOUT,
    tcp_retransmit_skb::LAYOUT,
    sched_process_exit::LAYOUT,
];
