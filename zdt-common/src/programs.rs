//! Every program of the eBPF object, written once: its name, where it hooks, when the agent
//! attaches it, and whether its handler's errors are counted. The loader attaches from this
//! table; the eBPF crate's attribute macros need literals, so a test of the agent parses the
//! built object and checks that its programs and maps are exactly these (`kernel::loader`).
//!
//! Not wire data: nothing here crosses the kernel boundary, so enums are fine.

use crate::tracepoint as tp;

/// Where a program hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// The classic tracepoint `category:name` (ELF section `tracepoint/<category>/<name>`).
    TracePoint {
        category: &'static str,
        name: &'static str,
    },
    /// The BTF-enabled tracepoint of kernel tracepoint `function` (ELF section
    /// `tp_btf/<function>`).
    BtfTracePoint { function: &'static str },
    /// A trampoline at the entry of kernel function `function` (ELF section
    /// `fentry/<function>`), with its arguments.
    FEntry { function: &'static str },
    /// A trampoline at the return of kernel function `function` (ELF section
    /// `fexit/<function>`), with its arguments and then its return value.
    FExit { function: &'static str },
}

/// When the agent loads and attaches a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Always attached.
    Core,
    /// The iptables-legacy trigger's programs on the `setsockopt` syscall's tracepoints: the
    /// fallback where the kernel refuses [`Group::TableReplaceFunction`]. A program on any
    /// `syscalls:` tracepoint makes every syscall of every task on the node take the kernel's
    /// traced slow path (`SYSCALL_WORK_SYSCALL_TRACEPOINT`), not only `setsockopt`.
    TableReplace,
    /// The same trigger on `__sys_setsockopt`'s entry and return (fentry/fexit): it runs only
    /// when `setsockopt` is called, and holds no `bpf_prog_active`, so the node's other syscalls
    /// and the agent's classic tracepoint programs are untouched. Preferred where the kernel
    /// allows function tracing.
    TableReplaceFunction,
    /// Where inside a replace the tables were swapped (`zdt-ebpf` `dataplane::on_percpu_alloc`):
    /// attached with the iptables-legacy trigger where the kernel has them; without them a
    /// replace is known to [entry, exit].
    SwapBound,
    /// The tightest bounds of the swap (`zdt-ebpf` `dataplane::on_module_ref`): the writer's
    /// reference on the table's module, taken right before the swap and dropped right after
    /// it. Attached with the swap-bound programs where the kernel has `module` events that
    /// keep `name` where the programs read it (`KernelOffsets::module_name_loc`); a kernel
    /// without modules (tables built in) keeps the counters' bounds.
    ModuleRef,
    /// The IPVS trigger's programs: loaded with the iptables-legacy ones, attached only when
    /// the agent arms them with the IPVS family id, so a node whose kernel has no IPVS has no
    /// program on its sends. (A tracing program that runs makes the kernel skip every other one
    /// a softirq would run on that CPU meanwhile: on a node busy sending, programs on every
    /// `sendto` would cost the agent events.)
    Ipvs,
    /// The IPVS trigger on `__sys_sendto`'s and `__sys_sendmsg`'s entry and return
    /// (fentry/fexit), where the kernel allows function tracing: loaded and attached as
    /// [`Group::Ipvs`] is, which is their fallback (as [`Group::TableReplace`] is
    /// [`Group::TableReplaceFunction`]'s).
    IpvsFunction,
    /// BTF tracepoints, always attached. `signal_generate` needs the task pointer of the
    /// target, which only the BTF flavour passes. `inet_sock_set_state` fires on every TCP
    /// state change of the node (about 10 a connection): the classic tracepoint fills its
    /// record (addresses, ports) before the program runs, every time, where the BTF one passes
    /// the socket and the two states, which the program tests first. `tcp_send_reset` runs in softirq on top of
    /// whatever the CPU runs: the kernel skips a classic tracepoint program there while another
    /// tracing program runs on that CPU (`bpf_prog_active`), a BTF one only when it interrupts
    /// itself.
    Btf,
}

/// One program of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    /// The program's (entry point's) name in the object: its hook's.
    pub name: &'static str,
    pub hook: Hook,
    pub group: Group,
    /// Its handler can fail, and its failures are counted in a
    /// [`HANDLER_ERRORS`](crate::maps::HANDLER_ERRORS) slot ([`handler_slot`]).
    pub counted: bool,
}

/// A program named after its hook (every one of the object is).
const fn on(hook: Hook, group: Group, counted: bool) -> Program {
    let name = match hook {
        Hook::TracePoint { name, .. } => name,
        Hook::BtfTracePoint { function } | Hook::FEntry { function } | Hook::FExit { function } => {
            function
        }
    };
    Program {
        name,
        hook,
        group,
        counted,
    }
}

/// Every program in the object, in the order of its entry point in `zdt-ebpf`; the counted
/// ones get their [`HANDLER_ERRORS`](crate::maps::HANDLER_ERRORS) slots in this order.
pub const PROGRAMS: &[Program] = &[
    on(INET_SOCK_SET_STATE, Group::Btf, true),
    on(tp::inet_sk_error_report::HOOK, Group::Core, true),
    on(tp::tcp_retransmit_skb::HOOK, Group::Core, true),
    on(SCHED_PROCESS_EXEC, Group::Core, true),
    on(tp::sched_process_exit::HOOK, Group::Core, true),
    on(tp::sys_enter_setsockopt::HOOK, Group::TableReplace, true),
    on(tp::sys_exit_setsockopt::HOOK, Group::TableReplace, true),
    function(
        "setsockopt_entry",
        FEntry,
        SETSOCKOPT_FUNCTION,
        Group::TableReplaceFunction,
    ),
    function(
        "setsockopt_exit",
        FExit,
        SETSOCKOPT_FUNCTION,
        Group::TableReplaceFunction,
    ),
    on(tp::percpu::ALLOC_HOOK, Group::SwapBound, false),
    on(tp::percpu::FREE_HOOK, Group::SwapBound, false),
    on(tp::module_refcnt::GET_HOOK, Group::ModuleRef, false),
    on(tp::module_refcnt::PUT_HOOK, Group::ModuleRef, false),
    on(tp::sys_enter_sendto::HOOK, Group::Ipvs, true),
    on(tp::sys_exit_sendto::HOOK, Group::Ipvs, true),
    on(tp::sys_enter_sendmsg::HOOK, Group::Ipvs, true),
    on(tp::sys_exit_sendmsg::HOOK, Group::Ipvs, true),
    function("sendto_entry", FEntry, SENDTO_FUNCTION, Group::IpvsFunction),
    function("sendto_exit", FExit, SENDTO_FUNCTION, Group::IpvsFunction),
    function(
        "sendmsg_entry",
        FEntry,
        SENDMSG_FUNCTION,
        Group::IpvsFunction,
    ),
    function("sendmsg_exit", FExit, SENDMSG_FUNCTION, Group::IpvsFunction),
    on(TCP_SEND_RESET, Group::Btf, true),
    on(SIGNAL_GENERATE, Group::Btf, true),
];

/// The hooks of the programs that read no record of [`tp`]: `sched_process_exec` reads none,
/// the BTF tracepoint programs read their arguments.
const SCHED_PROCESS_EXEC: Hook = Hook::TracePoint {
    category: "sched",
    name: "sched_process_exec",
};
const INET_SOCK_SET_STATE: Hook = Hook::BtfTracePoint {
    function: "inet_sock_set_state",
};
const TCP_SEND_RESET: Hook = Hook::BtfTracePoint {
    function: "tcp_send_reset",
};
const SIGNAL_GENERATE: Hook = Hook::BtfTracePoint {
    function: "signal_generate",
};
/// `int __sys_setsockopt(int fd, int level, int optname, char __user *optval, int optlen)`
/// (net/socket.c), what the `setsockopt` syscall calls (this signature since it was added, 4.17).
pub const SETSOCKOPT_FUNCTION: &str = "__sys_setsockopt";
/// `int __sys_sendto(int fd, void __user *buff, size_t len, unsigned int flags, struct sockaddr
/// __user *addr, int addr_len)`, what `sendto` and `send` call.
pub const SENDTO_FUNCTION: &str = "__sys_sendto";
/// `long __sys_sendmsg(int fd, struct user_msghdr __user *msg, unsigned int flags, bool
/// forbid_cmsg_compat)`, what `sendmsg` calls.
pub const SENDMSG_FUNCTION: &str = "__sys_sendmsg";

/// Which end of a kernel function a program hooks.
#[derive(Clone, Copy)]
enum End {
    FEntry,
    FExit,
}
use End::{FEntry, FExit};

/// A counted fentry or fexit program on `function`, named `name` (both ends hook the same
/// function, so the hook cannot name them).
const fn function(name: &'static str, end: End, function: &'static str, group: Group) -> Program {
    Program {
        name,
        hook: match end {
            FEntry => Hook::FEntry { function },
            FExit => Hook::FExit { function },
        },
        group,
        counted: true,
    }
}

/// How many programs are [`Program::counted`].
pub const COUNTED_LEN: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < PROGRAMS.len() {
        if PROGRAMS[i].counted {
            n += 1;
        }
        i += 1;
    }
    n
};

/// The programs whose handler can fail, in the order of their
/// [`HANDLER_ERRORS`](crate::maps::HANDLER_ERRORS) slots.
pub const FALLIBLE_PROGRAMS: [&str; COUNTED_LEN] = {
    let mut out = [""; COUNTED_LEN];
    let (mut i, mut slot) = (0, 0);
    while i < PROGRAMS.len() {
        if PROGRAMS[i].counted {
            out[slot] = PROGRAMS[i].name;
            slot += 1;
        }
        i += 1;
    }
    out
};

/// The [`HANDLER_ERRORS`](crate::maps::HANDLER_ERRORS) slot of `program`; at compile time, a
/// name not in [`FALLIBLE_PROGRAMS`] fails the build.
pub const fn handler_slot(program: &str) -> u32 {
    let mut i = 0;
    while i < FALLIBLE_PROGRAMS.len() {
        if str_eq(FALLIBLE_PROGRAMS[i], program) {
            return i as u32;
        }
        i += 1;
    }
    panic!("not in FALLIBLE_PROGRAMS")
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The programs of `group`, in table order.
pub fn group(group: Group) -> impl Iterator<Item = &'static Program> + Clone {
    PROGRAMS.iter().filter(move |p| p.group == group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handler_slots_are_the_counted_programs_in_entry_point_order() {
        assert_eq!(
            FALLIBLE_PROGRAMS,
            [
                "inet_sock_set_state",
                "inet_sk_error_report",
                "tcp_retransmit_skb",
                "sched_process_exec",
                "sched_process_exit",
                "sys_enter_setsockopt",
                "sys_exit_setsockopt",
                "setsockopt_entry",
                "setsockopt_exit",
                "sys_enter_sendto",
                "sys_exit_sendto",
                "sys_enter_sendmsg",
                "sys_exit_sendmsg",
                "sendto_entry",
                "sendto_exit",
                "sendmsg_entry",
                "sendmsg_exit",
                "tcp_send_reset",
                "signal_generate",
            ]
        );
        assert_eq!(handler_slot("tcp_send_reset"), 17);
    }

    #[test]
    fn program_names_are_unique() {
        for (i, a) in PROGRAMS.iter().enumerate() {
            assert!(
                PROGRAMS[i + 1..].iter().all(|b| b.name != a.name),
                "{} is listed twice",
                a.name
            );
        }
    }
}
