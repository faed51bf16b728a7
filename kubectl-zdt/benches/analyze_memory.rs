//! Peak memory and time of `kubectl zdt analyze` against the size of its input: for each size in
//! `ZDT_BENCH_MB` (a comma-separated list of MB, default `256`), a generated stream of simulated
//! rollouts (1 000 nodes × 100 pods each, 20 min apart, each rollout its own pods as a
//! `kubectl rollout restart` makes them) is written to a temporary file and analysed by the
//! real binary (`-o table`, the default, and `-o json`). Reported per size: the child's peak
//! RSS (`wait4`'s rusage) over the file size, its wall time, and the two floors that time is
//! held against: `cat FILE > /dev/null` (the bytes alone, from the page cache) and the parse
//! floor, reading and parsing every line into an observation and dropping it (in this process,
//! the same optimised code as the binary). Measures, never asserts (docs/observations.md,
//! BENCHMARKS.md). `ZDT_BENCH_KEEP=DIR` keeps the streams in DIR as `stream-<MB>MB.jsonl`.
//! `ZDT_BENCH_LOOP_LOG=1` adds, for every refusal, the `trace --traffic` loop's own log of it
//! (a client error naming only the Service, as agents that do not watch the clients leave them),
//! which the analysis ties to the pods at the stream's end.

use std::{
    io::{BufWriter, Write as _},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use kubectl_zdt::{
    correlate::{input, simulate, time::WallNs},
    observation::{Kind, NodeName, Observation, ServiceRef},
};

const NODES: usize = 1_000;
const PODS: usize = 100;
/// Rollouts this far apart are separate rollouts to the engine.
const EVERY_NS: i64 = 20 * 60 * 1_000_000_000;

/// Writes rollouts to `path` until it holds `bytes`; (bytes, lines) written.
fn generate(path: &Path, bytes: u64, loop_log: bool) -> std::io::Result<(u64, u64)> {
    let nodes = simulate::node_names(NODES);
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let (mut written, mut lines) = (0u64, 0u64);
    let mut k = 0i64;
    while written < bytes {
        let mut plans = simulate::rollout(NODES, PODS, 42 + k as u64);
        // Each restart retires the pods the previous one started: new names (a new
        // pod-template-hash) and new UIDs, as the Deployment controller makes them.
        for (i, p) in plans.iter_mut().enumerate() {
            p.name = format!("default/web-{:08x}-{i:05}", 0x5d8f_0000 + k);
            p.uid = format!("00000000-{k:04x}-4000-8000-{i:012}");
        }
        let t0 = WallNs(1_795_310_205_000_000_000 + k * EVERY_NS);
        for mut o in simulate::observations(t0, &nodes, &plans, "default/web", 8080) {
            // The simulation's refusals name no client; the agent's do (its port), so two of
            // them are never equal lines (equal ones would be dropped as duplicates).
            let mut logged = None;
            if o.kind == Kind::Refused {
                o.peer_port = Some(u16::try_from(lines % 60_000).unwrap_or(0) + 1_024);
                if loop_log {
                    // Each its own nanosecond: the loop logs no port to tell two apart.
                    let at = WallNs::from_timestamp(o.time)
                        .plus_ns(i64::try_from(lines % 1_000_000).unwrap_or(0));
                    let mut l = Observation::new(
                        Kind::ConnError,
                        at.to_timestamp(),
                        NodeName("client".into()),
                    );
                    l.reason = Some("ECONNREFUSED".into());
                    l.service = Some(ServiceRef::parse("default/web"));
                    logged = Some(l.with_extra("source", "traffic"));
                }
            }
            for o in std::iter::once(o).chain(logged) {
                let line = o.to_json_line();
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
                written += line.len() as u64 + 1;
                lines += 1;
            }
        }
        k += 1;
    }
    out.flush()?;
    Ok((written, lines))
}

/// Runs `program args…` (stdout discarded); its peak RSS in bytes (`wait4`'s rusage of that
/// child alone) and wall time.
fn run_child(program: &str, args: &[&std::ffi::OsStr]) -> (u64, f64) {
    let started = Instant::now();
    // Reaped by the wait4 below, which also gives this child's own rusage.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let pid = libc::pid_t::try_from(child.id()).unwrap_or(0);
    let mut status = 0;
    // SAFETY: zeroed is a valid rusage; wait4 writes it and the status.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; the child is ours and not waited for elsewhere.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let took = started.elapsed().as_secs_f64();
    if waited != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        eprintln!("{program} {args:?} failed (status {status})");
    }
    (u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024, took)
}

/// The parse floor: every line read and parsed into an observation, which is then dropped;
/// (observations, seconds).
fn parse_floor(file: &Path) -> (u64, f64) {
    let started = Instant::now();
    let f = std::fs::File::open(file).expect("the generated stream");
    let mut n = 0u64;
    let problems = input::read_stream(std::io::BufReader::with_capacity(1 << 16, f), |o| {
        std::hint::black_box(o);
        n += 1;
    })
    .expect("reading the generated stream");
    assert!(problems.is_empty(), "the generated stream has bad lines");
    (n, started.elapsed().as_secs_f64())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

fn main() {
    let sizes: Vec<u64> = std::env::var("ZDT_BENCH_MB")
        .unwrap_or_else(|_| "256".to_owned())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("ZDT_BENCH_MB: {s:?} is not a number of MB"))
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("zdt-analyze-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    // ZDT_BENCH_KEEP: write the streams there and keep them (to run other builds on them).
    let kept = std::env::var_os("ZDT_BENCH_KEEP").map(std::path::PathBuf::from);
    let loop_log = std::env::var_os("ZDT_BENCH_LOOP_LOG").is_some_and(|v| v == "1");
    let binary = env!("CARGO_BIN_EXE_kubectl-zdt");
    let mut rows = Vec::new();
    for mb in sizes {
        let file = kept
            .as_deref()
            .unwrap_or(&dir)
            .join(format!("stream-{mb}MB.jsonl"));
        let started = Instant::now();
        let (bytes, lines) = generate(&file, mb * 1_000_000, loop_log).expect("writing the stream");
        println!(
            "{:.0} MB, {lines} observations ({:.0} bytes a line), generated in {:.1} s; load average {}",
            bytes as f64 / 1e6,
            bytes as f64 / lines as f64,
            started.elapsed().as_secs_f64(),
            load_average()
        );
        let (_, cat) = run_child("cat", &[file.as_os_str()]);
        let (parsed, floor) = parse_floor(&file);
        assert_eq!(parsed, lines, "every generated line parses");
        println!("  cat > /dev/null {cat:.1} s; parse floor {floor:.1} s");
        for format in ["table", "json"] {
            let (peak, took) = run_child(
                binary,
                &[
                    "analyze".as_ref(),
                    "-o".as_ref(),
                    format.as_ref(),
                    file.as_os_str(),
                ],
            );
            println!(
                "  analyze -o {format}: peak RSS {:.0} MB = {:.2} x the file, {took:.1} s = {:.2} x the parse floor",
                peak as f64 / 1e6,
                peak as f64 / bytes as f64,
                took / floor
            );
            rows.push(format!(
                "| {:.0} MB, {lines} lines, `-o {format}` | {:.0} MB | {:.2} × | {took:.1} s | {floor:.1} s | {:.2} × | {cat:.1} s |",
                bytes as f64 / 1e6,
                peak as f64 / 1e6,
                peak as f64 / bytes as f64,
                took / floor
            ));
        }
        if kept.is_none() {
            let _ = std::fs::remove_file(&file);
        }
    }
    println!("\n| input | peak RSS | ratio | time | parse floor | time / floor | cat |");
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!("load average at the end: {}", load_average());
    let _ = std::fs::remove_dir_all(dir);
}
