//! Merging and correlating a simulated rollout of 1 000 nodes × 100 pods (every node reports
//! its flows and dataplane removal for every pod): the target is ≤ 1 s and ≤ 200 MB; rendering
//! is measured next to it to show it is not the bottleneck. The peak memory (VmHWM: the input
//! observations plus the engine's working set) is printed before the timings.

use std::hint::black_box;

use criterion::{Criterion, criterion_group};
use kubectl_zdt::{
    correlate::{Options, correlate, simulate, time::WallNs},
    observation::Observation,
    report::{self, Format},
};

const NODES: usize = 1_000;
const PODS: usize = 100;

fn input() -> Vec<Observation> {
    let nodes = simulate::node_names(NODES);
    let plans = simulate::rollout(NODES, PODS, 42);
    simulate::observations(
        WallNs(1_795_310_205_000_000_000),
        &nodes,
        &plans,
        "default/web",
        8080,
    )
}

/// Peak resident memory of this process so far, from /proc/self/status.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn memory_figure() {
    let before = peak_rss_mib().unwrap_or(0.0);
    let obs = input();
    let start = std::time::Instant::now();
    let report = correlate(&obs, &Options::default());
    let took = start.elapsed();
    let after = peak_rss_mib().unwrap_or(0.0);
    println!(
        "correlate {NODES} nodes x {PODS} pods: {} observations, one run {:.0} ms, peak RSS {after:.0} MiB (process before input {before:.0} MiB), {} pods reported",
        obs.len(),
        took.as_secs_f64() * 1e3,
        report.rollouts.iter().map(|r| r.pods.len()).sum::<usize>()
    );
}

fn bench(c: &mut Criterion) {
    let obs = input();
    let report = correlate(&obs, &Options::default());
    let mut g = c.benchmark_group("correlate");
    g.sample_size(10);
    g.bench_function("merge+correlate 1000 nodes x 100 pods", |b| {
        b.iter(|| correlate(black_box(&obs), &Options::default()))
    });
    g.bench_function("render table", |b| {
        b.iter(|| report::render(black_box(&report), Format::Table))
    });
    g.bench_function("render json", |b| {
        b.iter(|| report::render(black_box(&report), Format::Json))
    });
    g.bench_function("render html", |b| {
        b.iter(|| report::html::render(black_box(&report)))
    });
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    memory_figure();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
