//! Diagnostics go to stderr through `tracing`; stdout is reserved for data (JSON lines, reports).

use tracing_subscriber::{EnvFilter, fmt};

/// `-v` raises the level to debug, `-vv` to trace; `RUST_LOG` overrides both.
pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "warn,kubectl_zdt=info",
        1 => "info,kubectl_zdt=debug",
        _ => "debug,kubectl_zdt=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
