//! What the command line accepts and refuses, checked where clap parses it: bad input is one
//! usage error naming the flag, the value and the fix, before anything runs.

use clap::{Parser as _, error::ErrorKind};
use kubectl_zdt::cli::Cli;

/// The first line of clap's error for `args`, or None when they parse.
fn refused(args: &[&str]) -> Option<(ErrorKind, String)> {
    let argv = std::iter::once("kubectl-zdt")
        .chain(args.iter().copied())
        .map(Into::into)
        .collect();
    Cli::try_parse_from(kubectl_zdt::cli::kubectl_order(argv))
        .err()
        .map(|e| {
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

#[test]
fn install_image_must_be_an_image_reference() {
    for good in [
        "zdt",
        "registry.local/zdt:v9",
        "localhost:5000/team/zdt_agent.x:1.0-rc.1",
        "[fd00::1]:5000/zdt:v1",
        "ghcr.io/kubectl-zdt/kubectl-zdt@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "ghcr.io/kubectl-zdt/kubectl-zdt:v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        assert_eq!(refused(&["install", "--image", good]), None, "{good}");
    }
    let like = "like registry.example/zdt:v1 or registry.example/zdt@sha256:<64 hex>";
    for (bad, why) in [
        ("", format!("an empty image reference: give one {like}")),
        (
            "bad image::ref@@",
            format!("not an image reference: give one {like}"),
        ),
        (
            "registry.local/zdt:",
            format!("not an image reference: give one {like}"),
        ),
        (
            "registry.local/zdt@sha256:abc",
            format!("not an image reference: give one {like}"),
        ),
        (
            "registry.local/Zdt:v1",
            format!(
                "not an image reference (the repository path must be lower case): give one {like}"
            ),
        ),
    ] {
        let (kind, line) = refused(&["install", "--image", bad])
            .unwrap_or_else(|| panic!("--image {bad:?} accepted"));
        assert_eq!(kind, ErrorKind::ValueValidation, "{line}");
        assert_eq!(
            line,
            format!("error: invalid value '{bad}' for '--image <REF>': {why}")
        );
    }
    let long = format!("r.example/{}:v1", "a".repeat(250));
    let (_, line) = refused(&["install", "--image", &long]).expect("a 260-character name");
    assert!(
        line.ends_with("the image name is 260 characters long; at most 255 are allowed"),
        "{line}"
    );
}

#[test]
fn dry_run_takes_kubectls_strategies() {
    use kubectl_zdt::cli::Command;
    use kubectl_zdt::cluster::install::DryRun;
    let dry_run = |args: &[&str]| {
        let argv = ["kubectl-zdt", "install"]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Install(a)) => Ok(a.dry_run),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.kind()),
        }
    };
    assert_eq!(dry_run(&[]), Ok(None));
    assert_eq!(dry_run(&["--dry-run"]), Ok(Some(DryRun::Client)));
    assert_eq!(dry_run(&["--dry-run=client"]), Ok(Some(DryRun::Client)));
    assert_eq!(dry_run(&["--dry-run=server"]), Ok(Some(DryRun::Server)));
    assert_eq!(dry_run(&["--dry-run=none"]), Ok(Some(DryRun::None)));
    assert_eq!(dry_run(&["--dry-run=maybe"]), Err(ErrorKind::InvalidValue));
    assert_eq!(
        dry_run(&["--dry-run", "server"]),
        Err(ErrorKind::UnknownArgument),
        "as kubectl: the strategy goes after '='"
    );
}

/// kubectl's -n and -A only where a namespace means something; -o wide where kubectl has it.
#[test]
fn namespace_flags_and_wide_output_only_where_they_mean_something() {
    for ok in [
        &["trace", "deploy/web", "-n", "shop"][..],
        &["history", "-n", "shop"],
        &["history", "-A"],
        &["recommend", "-A"],
        &["recommend", "deploy/web", "-n", "shop"],
        &["status", "-o", "wide"],
        &["recommend", "-o", "wide"],
        // Before the command, as kubectl takes them.
        &["-n", "shop", "trace", "deploy/web"],
        &["--namespace=shop", "history"],
        &["-A", "recommend"],
    ] {
        assert_eq!(refused(ok), None, "{ok:?}");
    }
    for (bad, kind) in [
        (&["status", "-n", "shop"][..], ErrorKind::UnknownArgument),
        (&["-n", "shop", "status"], ErrorKind::UnknownArgument),
        (&["install", "-A"], ErrorKind::UnknownArgument),
        (
            &["uninstall", "-n", "zdt-system"],
            ErrorKind::UnknownArgument,
        ),
        (&["trace", "deploy/web", "-A"], ErrorKind::UnknownArgument),
        (
            &["history", "-n", "shop", "-A"],
            ErrorKind::ArgumentConflict,
        ),
        (&["history", "-o", "wider"], ErrorKind::InvalidValue),
    ] {
        let (found, line) = refused(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
        assert_eq!(found, kind, "{bad:?}: {line}");
    }
}

/// What `kubectl zdt WORDS<TAB>` offers: kubectl >= 1.26 runs `kubectl_complete-zdt` with the
/// words after `zdt` (the last being completed) and reads Cobra's format back.
fn complete(words: &[&str]) -> Vec<String> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubectl_complete-zdt"
    );
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
        .parent()
        .unwrap();
    let path = std::env::join_paths(std::iter::once(bin_dir.to_owned()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let out = std::process::Command::new(script)
        .args(words)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_owned())
        .collect()
}

#[test]
fn kubectl_completes_the_plugins_commands_flags_and_values_never_hidden_ones() {
    let commands = complete(&[""]);
    for shown in [
        "install",
        "status",
        "trace",
        "history",
        "recommend",
        "analyze",
        "demo",
    ] {
        assert!(commands.contains(&shown.to_owned()), "{commands:?}");
    }
    for hidden in [
        "traffic",
        "sample-app",
        "testbed-app",
        "journal-writer",
        "__complete",
    ] {
        assert!(
            !commands.contains(&hidden.to_owned()),
            "{hidden}: {commands:?}"
        );
    }
    assert_eq!(
        commands.last().unwrap(),
        ":4",
        "no file names for a command"
    );
    assert_eq!(complete(&["tr"]), ["trace", ":4"]);
    assert_eq!(
        complete(&["-v", "--context", "kind", "st"]),
        ["status", ":4"]
    );

    let flags = complete(&["trace", "deploy/web", "--"]);
    for shown in [
        "--restart",
        "--traffic",
        "--namespace",
        "--kubeconfig",
        "--request-timeout",
    ] {
        assert!(flags.contains(&shown.to_owned()), "{flags:?}");
    }
    let agent = complete(&["agent", "--"]);
    assert!(agent.contains(&"--watch-netns".to_owned()), "{agent:?}");
    for hidden in ["--without-newer-tracepoint-fields", "--metrics-settle-ms"] {
        assert!(!agent.contains(&hidden.to_owned()), "{hidden}: {agent:?}");
    }
    assert_eq!(complete(&["agent", "--with"]), [":4"]);

    assert_eq!(
        complete(&["status", "-o", ""]),
        ["table", "wide", "json", "yaml", ":4"]
    );
    assert_eq!(
        complete(&["install", "--dry-run=s"]),
        ["--dry-run=server", ":4"]
    );
    assert_eq!(complete(&["completion", "f"]), ["fish", ":4"]);
    assert_eq!(
        complete(&["recommend", "--from-file", ""]),
        [":0"],
        "a file name: the shell completes it"
    );
}
