//! `kubectl zdt recommend` over a week of history and the agent's metrics sink:
//!
//! - recommend: 10 workloads × 5 rollouts × 20 pods (1 000 terminated pods) on 100 nodes, every
//!   node reporting its flow and dataplane removal for every pod (312 000 observations): read
//!   by the engine once, grouped, advised per workload;
//! - metrics: the cost per observation of `Metrics::observe` on the agent's path, and of the
//!   settle step that correlates one node's window (its own 50 pods' timelines).

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group};
use kubectl_zdt::{
    agent::metrics::{Metrics, Scope},
    correlate::{simulate, time::WallNs},
    observation::Observation,
    recommend::{self, Options},
};

const T0: WallNs = WallNs(1_795_310_205_000_000_000);
const NODES: usize = 100;

/// `workloads` × `rollouts` rollouts of `pods` pods each, an hour apart.
fn history(workloads: usize, rollouts: usize, pods: usize, nodes: usize) -> Vec<Observation> {
    let names = simulate::node_names(nodes);
    let mut out = Vec::new();
    for w in 0..workloads {
        for r in 0..rollouts {
            let mut plans = simulate::rollout(nodes, pods, (w * rollouts + r) as u64 + 1);
            for (i, p) in plans.iter_mut().enumerate() {
                p.name = format!("default/app{w}-5d8f7c9b6d-r{r}{i:03}");
                p.uid = format!("uid-{w}-{r}-{i}");
                p.delete_ms += (r as i64 * 3_600 + w as i64 * 60) * 1_000;
            }
            out.extend(simulate::observations(
                T0,
                &names,
                &plans,
                &format!("default/app{w}"),
                8080,
            ));
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let week = history(10, 5, 20, NODES);
    println!("recommend input: {} observations", week.len());
    let mut g = c.benchmark_group("recommend");
    g.sample_size(10);
    g.bench_function(
        "gather+advise 10 workloads x 5 rollouts x 20 pods, 100 nodes",
        |b| {
            b.iter(|| {
                let w = recommend::gather(black_box(&week), 500);
                recommend::recommend(&w, &Default::default(), &Options::default())
            })
        },
    );
    g.finish();

    // One node's view: its own 50 pods' timelines (only its own node reports), as the agent
    // attributes them.
    let node = history(1, 1, 50, 1);
    let mut g = c.benchmark_group("metrics");
    g.sample_size(20);
    g.bench_function(format!("observe, per batch of {} lines", node.len()), |b| {
        b.iter(|| {
            let m = Metrics::new(Scope::Everything, Duration::from_secs(30));
            for o in &node {
                m.observe(black_box(o));
            }
            m
        })
    });
    let m = Metrics::new(Scope::Everything, Duration::from_secs(30));
    for o in &node {
        m.observe(o);
    }
    let late = node
        .iter()
        .map(|o| o.time)
        .max()
        .unwrap()
        .checked_add(jiff::SignedDuration::from_secs(60))
        .unwrap();
    g.bench_function(
        "settle: correlate a node window of 50 pods and record them",
        |b| {
            b.iter_batched(
                || {
                    let m = Metrics::new(Scope::Everything, Duration::from_secs(30));
                    for o in &node {
                        m.observe(o);
                    }
                    m
                },
                |m| m.scrape(black_box(late), true),
                criterion::BatchSize::LargeInput,
            )
        },
    );
    g.finish();
    drop(m);
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
