//! The node journal: append throughput on one core (target ≥ 200 000 observations/s) and
//! history queries over a day of one busy node, 10 million lines on disk (target ≤ 2 s for a
//! window query; the full-day scans are stated).
//!
//! The day is built once into target/bench-journal-day (reused while its marker says it holds
//! the same day): per second 100 `flow_new` lines (a busy node's conntrack NEW counts, one per
//! Service backend and second, as the agent writes them) and 16 marks (dataplane
//! added/removed, pod and endpoint marks, SIGTERM, listener closed, folded refusals) over 2 000
//! pods: 116 lines/s, 10 022 400 lines.

use std::{
    hint::black_box,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use criterion::{BatchSize, Criterion, criterion_group};
use jiff::Timestamp;
use kubectl_zdt::{
    journal::{Config, HistoryQuery, Journal, StreamKind},
    observation::{Kind, NodeName, Observation, format_time},
};

const DAY_START: i64 = 1_795_305_600; // 2026-11-22T00:00:00Z
const PER_SECOND: u64 = 116;
const PODS: u64 = 2_000;

fn pod(i: u64) -> (String, std::net::IpAddr) {
    (
        format!("shop/web-{}-7d4b9c8f6d-{:05}", i % 40, i),
        format!("10.244.{}.{}", i / 250, i % 250 + 1)
            .parse()
            .unwrap(),
    )
}

/// The `k`-th line of second `s` of the day: realistic fields and sizes.
fn line(s: i64, k: u64) -> Observation {
    let t = Timestamp::from_nanosecond(
        i128::from(DAY_START + s) * 1_000_000_000 + i128::from(k) * 8_620_689,
    )
    .unwrap();
    let node = NodeName("ip-10-0-3-117.eu-west-1.compute.internal".into());
    let i = (s as u64 * 7 + k * 13) % PODS;
    let (name, ip) = pod(i);
    let svc = format!("10.96.{}.{}:80", i % 40, 10 + i % 40);
    let mut o;
    if k < 100 {
        o = Observation::new(Kind::FlowNew, t, node);
        o.ip = Some(ip);
        o.port = Some(8080);
        o.count = Some(1 + (s as u64 + k) % 37);
        o.service = Some(svc.as_str().into());
        o = o
            .with_extra("first_time", format_time(t - Duration::from_millis(400)))
            .with_extra("protocol", "tcp");
    } else {
        let kind = [
            Kind::DataplaneRemoved,
            Kind::DataplaneAdded,
            Kind::PodDeleting,
            Kind::EndpointTerminating,
            Kind::EndpointRemoved,
            Kind::Signal,
            Kind::ListenerClosed,
            Kind::Refused,
        ][(k % 8) as usize];
        o = Observation::new(kind, t, node);
        o.ip = Some(ip);
        o.port = Some(8080);
        match kind {
            Kind::DataplaneRemoved | Kind::DataplaneAdded => {
                o.service = Some(svc.as_str().into());
                o.uncertainty_ns = Some(1_200);
                o = o
                    .with_extra("mode", "nftables")
                    .with_extra("protocol", "tcp")
                    .with_extra("service_name", format!("shop/web-{}", i % 40))
                    .with_extra("detect_ns", 3_800_000);
            }
            Kind::Refused => {
                o.reason = Some("NO_SOCKET".into());
                o.count = Some(3 + k);
                o.pod = Some(name.into());
                o = o.with_extra("last_time", format_time(t + Duration::from_millis(700)));
            }
            _ => {
                o.pod = Some(name.into());
                o.pod_uid = Some(format!("6b1f0c2e-0000-4000-8000-{i:012}").into());
                if kind == Kind::PodDeleting {
                    o = o
                        .with_extra("workload", format!("deployment/web-{}", i % 40))
                        .with_extra("grace_period_s", 30);
                }
            }
        }
    }
    o
}

fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.max_bytes = 4 << 30;
    c.max_age = Duration::from_secs(100 * 86_400);
    c
}

fn bench_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(name)
}

/// Pins this thread to CPU 0: "on one core".
fn one_core() {
    let mut set = nix::sched::CpuSet::new();
    if set.set(0).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// The day on disk (built once).
fn day() -> PathBuf {
    let dir = bench_dir("bench-journal-day");
    let marker = dir.join("complete-v1");
    if marker.exists() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let start = Instant::now();
    let mut j = Journal::open(config(&dir)).unwrap();
    for s in 0..86_400 {
        for k in 0..PER_SECOND {
            j.append(&line(s, k)).unwrap();
        }
        if s % 60 == 59 {
            j.tick(Timestamp::from_second(DAY_START + s + 1).unwrap())
                .unwrap();
        }
    }
    j.close().unwrap();
    println!(
        "built the day: {} lines, {:.1} MiB on disk ({:.1} bytes/line), in {:.1} s",
        86_400 * PER_SECOND,
        j.bytes() as f64 / 1048576.0,
        j.bytes() as f64 / (86_400 * PER_SECOND) as f64,
        start.elapsed().as_secs_f64()
    );
    std::fs::write(&marker, "").unwrap();
    dir
}

fn window(from_h: i64, hours: i64) -> HistoryQuery {
    HistoryQuery {
        since: Some(Timestamp::from_second(DAY_START + from_h * 3600).unwrap()),
        until: Some(Timestamp::from_second(DAY_START + (from_h + hours) * 3600).unwrap()),
        ..HistoryQuery::default()
    }
}

/// Streams the answer the way `/history` does (64 KiB chunks); returns (lines, bytes).
fn run(j: &mut Journal, q: &HistoryQuery) -> (u64, u64) {
    let mut r = j.query(q).unwrap();
    let (mut lines, mut bytes) = (0u64, 0u64);
    while let Some(chunk) = r.next_chunk(64 << 10) {
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        bytes += chunk.len() as u64;
        black_box(&chunk);
    }
    (lines, bytes)
}

fn figures(dir: &Path) {
    let start = Instant::now();
    let mut j = Journal::open(config(dir)).unwrap();
    println!(
        "open (recover the tail, walk every block header): {:.0} ms, {:.1} MiB",
        start.elapsed().as_secs_f64() * 1e3,
        j.bytes() as f64 / 1048576.0
    );
    // Per second: 14 marks; 100 flow_new and 2 folded refused lines are counters.
    let per_line = |kind, lines: u64| j.stream(kind).bytes() as f64 / lines as f64;
    println!(
        "on disk per line: marks {:.1} bytes ({} lines), counters {:.1} bytes ({} lines)",
        per_line(StreamKind::Marks, 86_400 * 14),
        86_400 * 14,
        per_line(StreamKind::Counters, 86_400 * 102),
        86_400 * 102
    );
    let pod_day = HistoryQuery {
        pod: Some(pod(1234).0),
        ..HistoryQuery::default()
    };
    let workload_day = HistoryQuery {
        workload: Some("deployment/web-7".into()),
        namespace: Some("shop".into()),
        ..HistoryQuery::default()
    };
    for (what, q) in [
        ("full day, no filter", HistoryQuery::default()),
        ("full day, --pod (one of 2 000)", pod_day),
        ("full day, --workload -n (one of 40)", workload_day),
    ] {
        let start = Instant::now();
        let (lines, bytes) = run(&mut j, &q);
        println!(
            "{what}: {lines} lines, {:.0} MiB, {:.2} s",
            bytes as f64 / 1048576.0,
            start.elapsed().as_secs_f64()
        );
    }
}

fn bench(c: &mut Criterion) {
    one_core();
    // Append: 100 000 lines of one second-ordered stream into a fresh journal, flushed.
    let lines: Vec<Observation> = (0..100_000u64)
        .map(|n| line((n / PER_SECOND) as i64, n % PER_SECOND))
        .collect();
    let marks_only: Vec<Observation> = (0..100_000u64)
        .map(|n| line((n / 16) as i64, 100 + n % 16))
        .collect();
    let scratch = bench_dir("bench-journal-append");
    let mut g = c.benchmark_group("journal append (one core)");
    g.sample_size(10);
    g.throughput(criterion::Throughput::Elements(100_000));
    for (name, input) in [("day mix", &lines), ("marks only", &marks_only)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let _ = std::fs::remove_dir_all(&scratch);
                    Journal::open(config(&scratch)).unwrap()
                },
                |mut j| {
                    // As the agent: every line appended, the folds closed every (simulated)
                    // second by the tick.
                    for (n, o) in input.iter().enumerate() {
                        j.append(o).unwrap();
                        if n % 116 == 115 {
                            j.tick(o.time).unwrap();
                        }
                    }
                    j.flush().unwrap();
                    j
                },
                BatchSize::PerIteration,
            )
        });
    }
    // The agent's own path: its in-memory journal already serialized each line.
    let serialized: Vec<(Observation, String)> = lines
        .iter()
        .map(|o| (o.clone(), o.to_json_line()))
        .collect();
    g.bench_function("day mix, lines already serialized (agent)", |b| {
        b.iter_batched(
            || {
                let _ = std::fs::remove_dir_all(&scratch);
                Journal::open(config(&scratch)).unwrap()
            },
            |mut j| {
                for (n, (o, line)) in serialized.iter().enumerate() {
                    j.append_line(o, line).unwrap();
                    if n % 116 == 115 {
                        j.tick(o.time).unwrap();
                    }
                }
                j.flush().unwrap();
                j
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    let dir = day();
    figures(&dir);
    let mut j = Journal::open(config(&dir)).unwrap();
    let mut g = c.benchmark_group("history query (10 M lines on disk)");
    g.sample_size(10);
    g.bench_function("1 h window, no filter", |b| {
        b.iter(|| run(&mut j, &window(14, 1)))
    });
    let mut q = window(14, 1);
    q.pod = Some(pod(1234).0);
    g.bench_function("1 h window, --pod", |b| b.iter(|| run(&mut j, &q)));
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
