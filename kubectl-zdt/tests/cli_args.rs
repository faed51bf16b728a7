//! What the command line accepts and refuses, checked where clap parses it: bad input is one
//! usage error naming the flag, the value and the fix, before anything runs.

use clap::{Parser as _, error::ErrorKind};
use kubectl_zdt::cli::Cli;

/// The first line of clap's error for `args`, or None when they parse.
fn refused(args: &[&str]) -> Option<(ErrorKind, String)> {
    let argv = std::iter::once("kubectl-zdt").chain(args.iter().copied());
    Cli::try_parse_from(argv).err().map(|e| {
        let text = e.to_string();
        (e.kind(), text.lines().next().unwrap_or_default().to_owned())
    })
}

#[test]
fn watch_netns_takes_only_a_network_namespace() {
    assert_eq!(
        refused(&[
            "agent",
            "--standalone",
            "--watch-netns",
            "/proc/self/ns/net"
        ]),
        None
    );
    for (path, why) in [
        (
            "/etc/passwd",
            "/etc/passwd is a file, not a network namespace",
        ),
        (
            "/proc/self/ns",
            "/proc/self/ns is a directory, not a network namespace",
        ),
        (
            "/proc/self/ns/mnt",
            "/proc/self/ns/mnt is a mount namespace, not a network namespace",
        ),
        (
            "/run/netns/zdt-no-such",
            "/run/netns/zdt-no-such: no such network namespace",
        ),
    ] {
        let (kind, line) = refused(&["agent", "--standalone", "--watch-netns", path])
            .unwrap_or_else(|| panic!("--watch-netns {path} accepted"));
        assert_eq!(kind, ErrorKind::ValueValidation, "{line}");
        assert_eq!(
            line,
            format!(
                "error: invalid value '{path}' for '--watch-netns <PATH>': {why} (give /run/netns/NAME or /proc/PID/ns/net)"
            )
        );
    }
}
