//! The IPVS trigger's eBPF programs (`sys_enter/exit_sendto`, `sys_enter/exit_sendmsg`) on this
//! kernel, which has no IPVS: the agent is armed with a generic-netlink family id that no
//! family holds here, and the test sends kube-proxy-shaped requests of that id on a
//! NETLINK_GENERIC socket of a test namespace. The kernel refuses them in its ack (ENOENT: no
//! such family), but the sends succeed, which is all the trigger looks at. Needs root (eBPF,
//! network namespaces); CI runs it as root with --test-threads=1.
//!
//! "Not reported" is checked by order, not by waiting: the sends that must not be reported are
//! made before ones that must, by the same thread, so any report of theirs would come first.

use std::{
    os::{fd::AsRawFd as _, unix::net::UnixDatagram},
    sync::mpsc,
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use kubectl_zdt::{
    agent::{Agent, AgentConfig},
    dataplane::{
        ipvs::{self, Command, IpvsChange, RealServer, VirtualServer},
        model::{Backend, Protocol, ServiceAddr},
        watcher::{self, Arm, Trigger, TriggerHook},
    },
    observation::NodeName,
    testbed::{Node, agent::RunningAgent},
};
use zdt_common::genl;

use crate::support::require_root;

/// A family id no generic-netlink family has on this kernel (ids are allocated upwards from
/// 0x10; the ack of every request below says ENOENT, which the test checks).
const FAMILY: u16 = 1000;
/// The kernel converts the exit's `CLOCK_MONOTONIC` to wall time with a measured offset.
const CLOCK_SLACK: SignedDuration = SignedDuration::from_millis(1);

/// A generic-netlink request as moby/ipvs writes it: nlmsghdr (request + ack), genlmsghdr
/// (command, version 1), then a nested service attribute standing in for the real ones.
fn request(family: u16, cmd: u8) -> Vec<u8> {
    let attr = [8u8, 0, 1, 0x80, 0, 0, 0, 0];
    let len = genl::HEADERS_LEN + attr.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&u32::try_from(len).unwrap().to_ne_bytes());
    m.extend_from_slice(&family.to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | libc::NLM_F_ACK as u16).to_ne_bytes());
    m.extend_from_slice(&7u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[cmd, 1, 0, 0]);
    m.extend_from_slice(&attr);
    m
}

fn web() -> VirtualServer {
    VirtualServer {
        service: ServiceAddr("10.96.0.10:80".parse().unwrap()),
        protocol: Protocol::Tcp,
    }
}

fn drained() -> RealServer {
    RealServer {
        backend: Backend("10.244.1.12:8080".parse().unwrap()),
        weight: 0,
    }
}

/// `request` with a 300-byte attribute appended (its length fixed up).
fn padded(mut request: Vec<u8>) -> Vec<u8> {
    let mut attr = vec![0u8; 300];
    attr[..2].copy_from_slice(&300u16.to_ne_bytes());
    attr[2..4].copy_from_slice(&99u16.to_ne_bytes());
    request.extend_from_slice(&attr);
    let len = u32::try_from(request.len()).unwrap();
    request[..4].copy_from_slice(&len.to_ne_bytes());
    request
}

/// A NETLINK_GENERIC socket of the calling thread's namespace.
struct Genl(std::os::fd::OwnedFd);

impl Genl {
    fn open() -> Self {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_GENERIC) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd was just returned by socket(2).
        Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
    }

    /// `sendto` to the kernel with `flags`: the syscall's result.
    fn sendto(&self, bytes: &[u8], flags: libc::c_int) -> std::io::Result<usize> {
        // SAFETY: sockaddr_nl is plain data; zero = the kernel.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `bytes` and `to` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                flags,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }

    /// `sendmsg` of one iovec, as libnl sends (ipvsadm, keepalived).
    fn sendmsg(&self, bytes: &[u8]) -> std::io::Result<usize> {
        use std::os::fd::AsFd as _;
        ipvs::sendmsg_one_iovec(self.0.as_fd(), bytes)
    }

    /// The error code of the kernel's ack (`NLMSG_ERROR`; 0 = the request was applied).
    fn ack(&self) -> i32 {
        let mut buf = [0u8; 4096];
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n >= 20, "no ack: {}", std::io::Error::last_os_error());
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        assert_eq!(
            kind,
            libc::NLMSG_ERROR as u16,
            "not an ack: {:?}",
            &buf[..20]
        );
        i32::from_ne_bytes(buf[16..20].try_into().unwrap())
    }
}

/// The inode of `node`'s network namespace.
fn netns_of(node: &Node) -> u32 {
    node.ns
        .run_in(|| {
            kubectl_zdt::agent::netns_inode(std::path::Path::new("/proc/thread-self/ns/net"))
        })
        .unwrap()
        .unwrap()
}

/// The agent armed for `node`'s namespace with [`FAMILY`], its triggers going to the returned
/// receiver.
fn armed_agent(node: &Node) -> (RunningAgent, mpsc::Receiver<Trigger>, u32) {
    let mut config = AgentConfig::new(NodeName("node-a".into()), Vec::new());
    // Report no address: only the dataplane triggers matter here.
    config.filter = true;
    let mut agent =
        Agent::start(&config).expect("the IPVS trigger is an eBPF program: the agent must load");
    let netns = netns_of(node);
    let armed = agent
        .arm_dataplane(&Arm {
            netns,
            ipvs_family: Some(FAMILY),
        })
        .unwrap();
    assert!(
        armed.legacy.is_some() && armed.ipvs,
        "this kernel has syscall tracepoints: both triggers must be armed: {armed:?}"
    );
    let (tx, rx) = mpsc::channel();
    agent.use_dataplane(&watcher::Watcher {
        modes: Vec::new(),
        watched: watcher::Watched::default(),
        frontends: watcher::Frontends::default(),
        dnat: kubectl_zdt::dataplane::flows::Dnat::default(),
        triggers: tx,
        netns,
    });
    (RunningAgent::run(agent).unwrap(), rx, netns)
}

/// The send programs run on every `sendto`/`sendmsg` of the node (and on the syscall
/// tracepoints, the kernel then runs no other classic tracing program on that CPU): they are
/// attached only once the watcher arms the agent with an IPVS family, so a node without IPVS
/// has none, and then only those of the hook the triggers use. Asked of the kernel (its
/// links), not of the agent's bookkeeping; with the triggers on the tracepoints and as `auto`
/// puts them here.
#[test]
fn the_send_programs_are_attached_only_once_an_ipvs_family_is_armed() {
    use kubectl_zdt::kernel::loader::TriggerHooks;
    const SEND_TRACEPOINTS: [&str; 4] = [
        "sys_enter_sendto",
        "sys_exit_sendto",
        "sys_enter_sendmsg",
        "sys_exit_sendmsg",
    ];
    const SEND_FUNCTIONS: [&str; 4] = [
        "sendto_entry",
        "sendto_exit",
        "sendmsg_entry",
        "sendmsg_exit",
    ];
    require_root();
    let node = Node::create().unwrap();
    for hooks in [TriggerHooks::Tracepoint, TriggerHooks::Auto] {
        let mut config = AgentConfig::new(NodeName("node-a".into()), Vec::new());
        config.filter = true;
        config.trigger_hooks = hooks;
        let mut agent = Agent::start(&config).unwrap();
        let sends = |agent: &Agent| {
            let linked = agent.linked_programs();
            let of = |programs: [&str; 4]| {
                programs
                    .iter()
                    .filter(|p| linked.iter().any(|l| l == *p))
                    .count()
            };
            (of(SEND_TRACEPOINTS), of(SEND_FUNCTIONS))
        };
        assert_eq!(sends(&agent), (0, 0), "attached before the agent was armed");
        let netns = netns_of(&node);
        let no_ipvs = agent
            .arm_dataplane(&Arm {
                netns,
                ipvs_family: None,
            })
            .unwrap();
        assert!(!no_ipvs.ipvs);
        assert_eq!(sends(&agent), (0, 0), "attached on a kernel without IPVS");
        let armed = agent
            .arm_dataplane(&Arm {
                netns,
                ipvs_family: Some(FAMILY),
            })
            .unwrap();
        assert!(armed.ipvs);
        let expected = match armed.legacy {
            Some(TriggerHook::Function) => (0, 4),
            Some(TriggerHook::SyscallTracepoints) => (4, 0),
            None => panic!("armed without the x_tables trigger: {armed:?}"),
        };
        assert_eq!(sends(&agent), expected, "{hooks:?}: {armed:?}");
        // IPVS has a setsockopt interface too: with IPVS the x_tables pair is attached whatever
        // the namespace's tables.
        let pair = match armed.legacy {
            Some(TriggerHook::Function) => FUNCTION_PAIR,
            _ => TRACEPOINT_PAIR,
        };
        assert_eq!(linked_pair(&agent), Some(pair), "{hooks:?}");
    }
}

/// The iptables-legacy trigger's two pairs, as the kernel lists the agent's links.
const FUNCTION_PAIR: [&str; 2] = ["setsockopt_entry", "setsockopt_exit"];
const TRACEPOINT_PAIR: [&str; 2] = ["sys_enter_setsockopt", "sys_exit_setsockopt"];

/// Which of the trigger's pairs the kernel has links for, if any (panics on a half or on both:
/// a lone entry would keep replaces nobody reports, both would report each replace twice).
fn linked_pair(agent: &Agent) -> Option<[&'static str; 2]> {
    let linked = agent.linked_programs();
    let has = |pair: [&str; 2]| pair.map(|p| linked.iter().any(|l| l == p));
    match (has(FUNCTION_PAIR), has(TRACEPOINT_PAIR)) {
        ([true, true], [false, false]) => Some(FUNCTION_PAIR),
        ([false, false], [true, true]) => Some(TRACEPOINT_PAIR),
        ([false, false], [false, false]) => None,
        other => panic!("not exactly one whole pair linked: {other:?} of {linked:?}"),
    }
}

/// `--trigger-hooks`: `tracepoint` puts the dataplane triggers on the syscalls' tracepoints;
/// `fentry` on `__sys_setsockopt` (and the sends), or fails in one line naming the way out
/// where the kernel refuses it; `auto` takes the functions exactly where `fentry` works, else
/// the tracepoints. In every case exactly one `setsockopt` pair is linked and the armed watcher
/// is told which (the send programs: the test above).
#[test]
fn the_dataplane_triggers_are_on_kernel_functions_where_the_kernel_allows_them() {
    use kubectl_zdt::kernel::loader::TriggerHooks;
    require_root();
    let node = Node::create().unwrap();
    let netns = netns_of(&node);
    let start = |trigger| {
        let mut config = AgentConfig::new(NodeName("node-a".into()), Vec::new());
        config.filter = true;
        config.trigger_hooks = trigger;
        Agent::start(&config)
    };
    // Armed with IPVS, whose setsockopt interface the pair watches too: attached on either
    // hook whatever the namespace's tables (the wait for a nat table: the test below).
    let armed_hook = |agent: &mut Agent| {
        agent
            .arm_dataplane(&Arm {
                netns,
                ipvs_family: Some(FAMILY),
            })
            .unwrap()
            .legacy
    };

    let mut agent = start(TriggerHooks::Tracepoint).unwrap();
    assert_eq!(
        armed_hook(&mut agent),
        Some(TriggerHook::SyscallTracepoints)
    );
    assert_eq!(linked_pair(&agent), Some(TRACEPOINT_PAIR));
    drop(agent);

    let fentry = start(TriggerHooks::Fentry);
    let fentry_works = match fentry {
        Ok(mut agent) => {
            assert_eq!(linked_pair(&agent), Some(FUNCTION_PAIR));
            assert_eq!(armed_hook(&mut agent), Some(TriggerHook::Function));
            true
        }
        Err(e) => {
            let text = format!("{e:#}");
            assert!(
                text.contains("__sys_setsockopt") && text.contains("--trigger-hooks tracepoint"),
                "{text}"
            );
            false
        }
    };

    let mut agent = start(TriggerHooks::Auto).unwrap();
    let (pair, hook) = if fentry_works {
        (FUNCTION_PAIR, TriggerHook::Function)
    } else {
        (TRACEPOINT_PAIR, TriggerHook::SyscallTracepoints)
    };
    assert_eq!(armed_hook(&mut agent), Some(hook));
    assert_eq!(
        linked_pair(&agent),
        Some(pair),
        "fentry works here: {fentry_works}"
    );
}

/// On the syscalls' tracepoints, which make every syscall of the node take the traced slow
/// path, the x_tables pair is attached only where it can report something: armed for a
/// namespace without an iptables-legacy `nat` table (iptables-nft and nftables nodes never
/// make one) it waits, and is attached once such a table appears; armed where one exists it is
/// attached at once. On kernel functions it is attached from the start (no such cost).
#[test]
fn the_tracepoint_pair_waits_for_an_iptables_legacy_nat_table() {
    use kubectl_zdt::kernel::loader::TriggerHooks;
    require_root();
    let start = |node: &Node| {
        let mut config = AgentConfig::new(NodeName("node-a".into()), Vec::new());
        config.filter = true;
        config.trigger_hooks = TriggerHooks::Tracepoint;
        let agent = Agent::start(&config).unwrap();
        assert_eq!(linked_pair(&agent), None, "attached before it was armed");
        let netns = netns_of(node);
        node.ns
            .run_in(move || {
                let mut agent = agent;
                let armed = agent
                    .arm_dataplane(&Arm {
                        netns,
                        ipvs_family: None,
                    })
                    .unwrap();
                assert_eq!(armed.legacy, Some(TriggerHook::SyscallTracepoints));
                agent
            })
            .unwrap()
    };

    let node = Node::create().unwrap();
    let mut agent = start(&node);
    assert_eq!(linked_pair(&agent), None, "attached without a nat table");
    agent.attach_when_tables_appear();
    assert_eq!(linked_pair(&agent), None, "attached without a nat table");
    node.iptables_legacy_restore("*filter\nCOMMIT\n").unwrap();
    agent.attach_when_tables_appear();
    assert_eq!(linked_pair(&agent), None, "attached for a filter table");
    node.iptables_legacy_restore("*nat\nCOMMIT\n").unwrap();
    agent.attach_when_tables_appear();
    assert_eq!(linked_pair(&agent), Some(TRACEPOINT_PAIR));

    let with_table = Node::create().unwrap();
    with_table
        .iptables_legacy_restore("*nat\nCOMMIT\n")
        .unwrap();
    let agent = start(&with_table);
    assert_eq!(linked_pair(&agent), Some(TRACEPOINT_PAIR));
}

/// The triggers need one usable hook, not the syscalls' tracepoints in particular: where
/// preflight found those not as the programs read them, the triggers are on the kernel
/// functions where the kernel allows it, else not loaded, and the rest of the probes run.
#[test]
fn the_triggers_do_not_need_the_syscall_tracepoints_where_functions_are_allowed() {
    use kubectl_zdt::kernel::{
        loader::{DataplaneTriggers, LoadSpec, Probes, TriggerHooks},
        preflight,
    };
    require_root();
    let kernel = preflight::check().unwrap();
    assert!(kernel.syscall_tracepoints, "this kernel has them as read");
    let functions_allowed = DataplaneTriggers::load(&kernel.offsets, TriggerHooks::Fentry).is_ok();
    let hook = |syscall_tracepoints: bool, trigger_hooks: TriggerHooks| {
        Probes::load(&LoadSpec::nothing_watched(
            kernel.offsets,
            syscall_tracepoints,
            trigger_hooks,
        ))
        .unwrap()
        .attached
        .trigger_hook()
    };
    let functions = functions_allowed.then_some(TriggerHook::Function);
    assert_eq!(hook(false, TriggerHooks::Auto), functions);
    assert_eq!(hook(false, TriggerHooks::Tracepoint), None);
    assert_eq!(
        hook(true, TriggerHooks::Auto),
        functions.or(Some(TriggerHook::SyscallTracepoints))
    );
}

/// The agent tests at start that its function hooks run on their syscalls (a kernel may have
/// inlined a function into its syscall): by the kernel's run counts around its own calls. The
/// same count, on the tracepoint pair this kernel gets, tells a pair that ran on a
/// `setsockopt` from one that did not. (Another process's `setsockopt` during the empty call
/// would make it fail; nothing on the test machine makes one.)
#[test]
fn the_run_counts_tell_a_trigger_program_that_ran_on_its_syscall() {
    use kubectl_zdt::kernel::{
        loader::{DataplaneTriggers, TriggerHooks},
        preflight,
    };
    require_root();
    let offsets = preflight::kernel_offsets().unwrap();
    let triggers = DataplaneTriggers::load(&offsets, TriggerHooks::Tracepoint).unwrap();
    let silent = |calls: &dyn Fn()| {
        triggers
            .attached
            .setsockopt_programs_silent_during(calls)
            .unwrap()
    };
    assert_eq!(silent(&|| {}), TRACEPOINT_PAIR);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(silent(&|| udp.set_ttl(64).unwrap()), Vec::<&str>::new());
}

fn next_change(rx: &mpsc::Receiver<Trigger>) -> IpvsChange {
    match rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no trigger reached the watcher")
    {
        Trigger::IpvsChange(c) => c,
        other => panic!("not an IPVS change request: {other:?}"),
    }
}

/// kube-proxy drains an endpoint with `IPVS_CMD_SET_DEST` (weight 0) sent with `sendto`: the
/// agent reports it with the send's exit, in the writer's namespace. Dump requests, other
/// families, a datagram too short for a generic-netlink header, a send that failed and a send
/// from a namespace the watcher does not read are not reported; `sendmsg` (libnl) is; and a
/// non-netlink send whose first bytes look the same is reported too (the trigger does not
/// check the socket's protocol: it costs the watcher one needless IPVS read).
#[test]
fn ipvs_change_requests_of_the_armed_family_are_reported_with_the_send_exit() {
    require_root();
    let node = Node::create().unwrap();
    let (_agent, rx, netns) = armed_agent(&node);

    let (before, after) = node
        .ns
        .run_in(|| {
            let nl = Genl::open();
            // Not reported: a dump request, another family, a bare nlmsghdr.
            let get = request(FAMILY, 4);
            assert_eq!(nl.sendto(&get, 0).unwrap(), get.len());
            assert_eq!(nl.ack(), -libc::ENOENT);
            nl.sendto(&request(FAMILY + 1, genl::IPVS_CMD_NEW_DEST), 0)
                .unwrap();
            assert_eq!(nl.ack(), -libc::ENOENT);
            let mut bare = request(FAMILY, genl::IPVS_CMD_DEL_DEST);
            bare.truncate(genl::NLMSG_HDRLEN);
            bare[..4].copy_from_slice(&16u32.to_ne_bytes());
            nl.sendto(&bare, 0).unwrap();
            assert_eq!(nl.ack(), -libc::ENOENT);
            // Not reported: a send the kernel refused (netlink has no out-of-band data).
            let failed = nl.sendto(&request(FAMILY, genl::IPVS_CMD_DEL_DEST), libc::MSG_OOB);
            assert_eq!(
                failed.unwrap_err().raw_os_error(),
                Some(libc::EOPNOTSUPP),
                "MSG_OOB on netlink"
            );

            // Not reported: IPVS's setsockopt interface failing (this kernel has no IPVS, so
            // no IP_VS_SO_SET_* option exists; a successful one is checked in the IPVS guest).
            // SAFETY: plain socket(2)/setsockopt(2) on a buffer valid for its length.
            let refused = unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
                assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
                let arg = [0u8; 68];
                let rc = libc::setsockopt(
                    fd,
                    libc::IPPROTO_IP,
                    zdt_common::ipvs_sockopt::SET_EDITDEST as i32,
                    arg.as_ptr().cast(),
                    68,
                );
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                (rc, err.raw_os_error())
            };
            assert_eq!(refused, (-1, Some(libc::ENOPROTOOPT)));

            // Reported: what kube-proxy sends to drain an endpoint. The kernel has no such
            // family and says so in the ack, but the send itself succeeds.
            let set = ipvs::encode_command(&Command::SetDest(web(), drained()), FAMILY, 3);
            let before = Timestamp::now();
            let sent = nl.sendto(&set, 0);
            let after = Timestamp::now();
            assert_eq!(sent.unwrap(), set.len());
            assert_eq!(nl.ack(), -libc::ENOENT);
            // Longer than the trigger copies: the virtual server comes first and is still read.
            let long = padded(ipvs::encode_command(
                &Command::SetDest(web(), drained()),
                FAMILY,
                4,
            ));
            assert!(long.len() > genl::REQUEST_MAX);
            nl.sendto(&long, 0).unwrap();
            assert_eq!(nl.ack(), -libc::ENOENT);
            (before, after)
        })
        .unwrap();
    let c = next_change(&rx);
    assert_eq!(c.cmd, genl::IPVS_CMD_SET_DEST, "{c:?}");
    // The request names its virtual server: the watcher reads that one alone.
    assert_eq!(c.server, Some(web()), "{c:?}");
    let long = next_change(&rx);
    assert_eq!(
        (long.cmd, long.server),
        (genl::IPVS_CMD_SET_DEST, Some(web()))
    );
    assert_eq!((c.netns, c.pid), (netns, std::process::id()), "{c:?}");
    assert!(c.entered <= c.time, "{c:?}");
    assert!(
        before - CLOCK_SLACK <= c.entered && c.time <= after + CLOCK_SLACK,
        "the send ran in [{before}, {after}]: {c:?}"
    );

    // Not reported: the same request from a namespace the watcher does not read.
    let host = Genl::open();
    host.sendto(&request(FAMILY, genl::IPVS_CMD_NEW_SERVICE), 0)
        .unwrap();
    assert_eq!(host.ack(), -libc::ENOENT);

    node.ns
        .run_in(|| {
            // Reported: libnl's sendmsg.
            let nl = Genl::open();
            nl.sendmsg(&request(FAMILY, genl::IPVS_CMD_DEL_SERVICE))
                .unwrap();
            assert_eq!(nl.ack(), -libc::ENOENT);
            // Reported, needlessly: the same bytes sent on a local datagram socket (with
            // send(2), i.e. the sendto syscall; std's `UnixDatagram::send` writes with
            // write(2), which the trigger does not see).
            let (a, b) = UnixDatagram::pair().unwrap();
            let bytes = request(FAMILY, genl::IPVS_CMD_NEW_DEST);
            // SAFETY: `bytes` is valid for its length.
            let n = unsafe { libc::send(a.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
            assert_eq!(usize::try_from(n).ok(), Some(bytes.len()));
            let mut buf = [0u8; 64];
            assert_eq!(b.recv(&mut buf).unwrap(), genl::HEADERS_LEN + 8);
            // The last one, after which nothing else may come.
            nl.sendto(&request(FAMILY, genl::IPVS_CMD_FLUSH), 0)
                .unwrap();
            assert_eq!(nl.ack(), -libc::ENOENT);
        })
        .unwrap();
    let got: Vec<(u8, Option<VirtualServer>)> = (0..3)
        .map(|_| next_change(&rx))
        .map(|c| (c.cmd, c.server))
        .collect();
    // The stand-in requests name no virtual server, FLUSH names none: IPVS is read whole.
    assert_eq!(
        got,
        [
            (genl::IPVS_CMD_DEL_SERVICE, None),
            (genl::IPVS_CMD_NEW_DEST, None),
            (genl::IPVS_CMD_FLUSH, None)
        ]
    );
}
