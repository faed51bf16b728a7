//! A probe's handler that fails is counted, per program, in the kernel: loaded with its kernel
//! offsets marked unresolved (`KernelOffsets::valid == 0`, what the handlers check before they
//! read a socket), `tcp_send_reset`'s handler fails on every RST; the count reaches the agent's
//! map, where the loss lines (`HANDLER_ERROR`) are made from it. With the offsets resolved, the
//! same RSTs fail nothing. Needs root.

use crate::support;

use std::net::{TcpListener, TcpStream};

use kubectl_zdt::kernel::{
    loader::{LoadSpec, Probes},
    preflight,
};

/// Connects `n` times to a closed port of the loopback: the kernel answers each SYN with a RST.
fn refused(n: usize) {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for _ in 0..n {
        let err = TcpStream::connect(closed).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}

/// `tcp_send_reset`'s handler errors after `n` refused connections, with `valid` offsets.
fn reset_handler_errors(valid: bool, n: usize) -> u64 {
    let kernel = preflight::check().expect("the kernel test needs root and BTF");
    let mut offsets = kernel.offsets;
    if !valid {
        offsets.valid = 0;
    }
    let probes = Probes::load(&LoadSpec {
        watch: &[],
        watch_netns: &[],
        wakeup_every: 64,
        ringbuf_bytes: zdt_common::maps::EVENTS_BYTES,
        offsets,
        filter: false,
        // No dataplane triggers: neither hook.
        syscall_tracepoints: false,
        trigger_hooks: kubectl_zdt::kernel::loader::TriggerHooks::Tracepoint,
    })
    .unwrap();
    refused(n);
    let errors = probes.maps.handler_errors();
    assert_eq!(
        errors.len(),
        zdt_common::maps::FALLIBLE_PROGRAMS.len(),
        "{errors:?}"
    );
    errors
        .iter()
        .find(|(program, _)| program == "tcp_send_reset")
        .map(|(_, n)| *n)
        .unwrap()
}

#[test]
fn a_failing_handler_is_counted_for_its_program() {
    support::require_root();
    assert_eq!(
        reset_handler_errors(true, 5),
        0,
        "resolved offsets: no failure"
    );
    // Other RSTs of the machine may be counted too: at least these.
    assert!(reset_handler_errors(false, 5) >= 5);
}
