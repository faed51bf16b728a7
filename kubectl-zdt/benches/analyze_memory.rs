//! Peak memory of `kubectl zdt analyze` against the size of its input: a generated stream of
//! simulated rollouts (1 000 nodes × 100 pods each, 20 min apart) of about `ZDT_BENCH_MB` MB
//! (default 256) is written to a temporary file and analysed by the real binary (`-o table`,
//! the default, and `-o json`); the child's peak RSS (`getrusage(RUSAGE_CHILDREN)`) over the
//! file size is the figure (docs/observations.md, BENCHMARKS.md). Measures, never asserts.
//! `ZDT_BENCH_FILE=PATH` keeps the generated stream at PATH.

use std::{
    io::{BufWriter, Write as _},
    process::{Command, Stdio},
    time::Instant,
};

use kubectl_zdt::{
    correlate::{simulate, time::WallNs},
    observation::Kind,
};

const NODES: usize = 1_000;
const PODS: usize = 100;
/// Rollouts this far apart are separate rollouts to the engine.
const EVERY_NS: i64 = 20 * 60 * 1_000_000_000;

/// Writes rollouts to `path` until it holds `bytes`; (bytes, lines) written.
fn generate(path: &std::path::Path, bytes: u64) -> std::io::Result<(u64, u64)> {
    let nodes = simulate::node_names(NODES);
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let (mut written, mut lines) = (0u64, 0u64);
    let mut k = 0i64;
    while written < bytes {
        let plans = simulate::rollout(NODES, PODS, 42 + k as u64);
        let t0 = WallNs(1_795_310_205_000_000_000 + k * EVERY_NS);
        for mut o in simulate::observations(t0, &nodes, &plans, "default/web", 8080) {
            // The simulation's refusals name no client; the agent's do (its port), so two of
            // them are never equal lines (equal ones would be dropped as duplicates).
            if o.kind == Kind::Refused {
                o.peer_port = Some(u16::try_from(lines % 60_000).unwrap_or(0) + 1_024);
            }
            let line = o.to_json_line();
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
            written += line.len() as u64 + 1;
            lines += 1;
        }
        k += 1;
    }
    out.flush()?;
    Ok((written, lines))
}

/// Runs `kubectl-zdt analyze -o FORMAT FILE` (stdout discarded); its peak RSS in bytes
/// (`wait4`'s rusage of that child alone) and wall time.
fn analyze(format: &str, file: &std::path::Path) -> (u64, f64) {
    let started = Instant::now();
    // Reaped by the wait4 below, which also gives this child's own rusage.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
        .args(["analyze", "-o", format])
        .arg(file)
        .stdout(Stdio::null())
        .spawn()
        .expect("kubectl-zdt analyze");
    let pid = libc::pid_t::try_from(child.id()).unwrap_or(0);
    let mut status = 0;
    // SAFETY: zeroed is a valid rusage; wait4 writes it and the status.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; the child is ours and not waited for elsewhere.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let took = started.elapsed().as_secs_f64();
    if waited != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        eprintln!("analyze -o {format} failed (status {status})");
    }
    (u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024, took)
}

fn main() {
    let mb: u64 = std::env::var("ZDT_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let dir = std::env::temp_dir().join(format!("zdt-analyze-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    // ZDT_BENCH_FILE: write the stream there and keep it (to run other builds on it).
    let kept = std::env::var_os("ZDT_BENCH_FILE").map(std::path::PathBuf::from);
    let file = kept.clone().unwrap_or_else(|| dir.join("stream.jsonl"));
    let started = Instant::now();
    let (bytes, lines) = generate(&file, mb * 1_000_000).expect("writing the stream");
    println!(
        "analyze memory: {:.0} MB, {lines} observations ({:.0} bytes a line), generated in {:.1} s",
        bytes as f64 / 1e6,
        bytes as f64 / lines as f64,
        started.elapsed().as_secs_f64()
    );
    for format in ["table", "json"] {
        let (peak, took) = analyze(format, &file);
        println!(
            "analyze -o {format}: peak RSS {:.0} MB = {:.2} x the file, {took:.1} s",
            peak as f64 / 1e6,
            peak as f64 / bytes as f64
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
