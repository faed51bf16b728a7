//! Diagnostics go to stderr through `tracing`; stdout is reserved for data (JSON lines, reports).

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt};

/// `-v` raises the level to debug, `-vv` to trace; `RUST_LOG` overrides both.
pub fn init(verbose: u8) {
    let default = match verbose {
        // kube's client logs every failed request at ERROR (its tracing layer, in
        // kube_client::client::builder); the command reports it once itself.
        0 => "warn,kubectl_zdt=info,kube_client::client::builder=off",
        1 => "info,kubectl_zdt=debug,kube_client::client::builder=off",
        _ => "debug,kubectl_zdt=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .with_target(false)
        .try_init();
}

/// A closed stdout (`kubectl zdt agent --standalone | head`) is a normal way to stop.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Colour only on a terminal, and never with NO_COLOR set (https://no-color.org).
pub fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The error and its causes on one line, each cause once: a cause whose text the line already
/// holds (many errors print their source themselves) is not repeated, and of a cause only its
/// first line is kept (parsers add a snippet of the input below). The error itself is kept
/// whole: where it has more lines (one per node), they are meant.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        let first = text.lines().next().unwrap_or_default().trim();
        if !first.is_empty() && !line.contains(first) {
            line.push_str(": ");
            line.push_str(first);
        }
    }
    line
}
