//! The dataplane watcher at 10 000 Services / 50 000 backends (figures in BENCHMARKS.md).
//!
//! - `endpoint_change_10k`: one endpoint change of one Service, from the kernel-framed
//!   notification bytes to the emitted observations (decode → mirror → routes → diff → emit),
//!   with the mirror holding 10 000 Services;
//! - `set_elements_300_decode_*`: one `service-ips` set-element message of 300 elements decoded
//!   by netlink-packet-netfilter and by the watcher's fast path (`nft_decode`);
//! - `iptables_save_parse_10k`: the text parser on a 10 000-Service nat table (used in tests);
//! - the heap held by the watcher's state is printed once (counting allocator).
//!
//! Live end-to-end figures (a real kernel programmed with 10 000 Services) come from
//! `ZDT_LIVE=1 cargo bench --bench dataplane -- live` as root (`ZDT_LIVE=nftables` or
//! `ZDT_LIVE=legacy` for one mode): the nftables start phases and per-change latency, and the
//! iptables-legacy table read, parse, memory and per-change latency through the eBPF trigger.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    net::SocketAddr,
    sync::atomic::{AtomicIsize, Ordering},
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use kubectl_zdt::{
    dataplane::{Family, Mode, Source, emit, iptables, mirror::TableMirror, nf_monitor},
    observation::{Kind, NodeName},
    testbed::{
        kube_proxy::{self, ServicePort, ServiceRules},
        kube_proxy_nl,
    },
};

/// Counts live heap bytes, to measure what the watcher's state holds.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SERVICES: u32 = 10_000;
const PER_SERVICE: u32 = 5;

fn service(i: u32) -> ServicePort {
    ServicePort {
        name: format!("ns{i}/svc{i}"),
        cluster_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a60_0000 + i)),
        port: 80,
    }
}

fn endpoints(i: u32, shift: u32) -> Vec<SocketAddr> {
    (0..PER_SERVICE)
        .map(|j| {
            let n = 0x0af4_0000 + i * PER_SERVICE + j + shift;
            SocketAddr::new(std::net::Ipv4Addr::from(n).into(), 8080)
        })
        .collect()
}

fn feed(mirror: &mut TableMirror, bytes: &[u8]) -> usize {
    let mut batcher = nf_monitor::Batcher::default();
    let mut n = 0;
    for notice in nf_monitor::scan(bytes) {
        if let Some(c) = batcher.push(notice, jiff::Timestamp::now()) {
            for (family, m) in &c.changes {
                mirror.apply(*family, m);
                n += 1;
            }
        }
    }
    n
}

fn endpoint_change(c: &mut Criterion) {
    let before = LIVE.load(Ordering::Relaxed);
    let mut mirror = TableMirror::new(2, "kube-proxy");
    for i in 0..SERVICES {
        let msgs = kube_proxy_nl::add_service(
            &service(i),
            u64::from(i) * 2,
            &format!("__map{i}"),
            &endpoints(i, 0),
        );
        feed(&mut mirror, &kube_proxy_nl::datagram(&msgs, i));
    }
    let mut routes = kubectl_zdt::dataplane::Backends::new();
    mirror.update(&mut routes);
    let held = LIVE.load(Ordering::Relaxed) - before;
    eprintln!(
        "state for {SERVICES} Services / {} routes: {:.1} MiB of heap (mirror + routes)",
        routes.len(),
        held as f64 / (1024.0 * 1024.0)
    );
    assert_eq!(routes.len(), (SERVICES * PER_SERVICE) as usize);

    // Service 4242 alternates between two endpoint sets: every iteration is a real change
    // (one endpoint removed, one added).
    let svc = service(4242);
    let a = endpoints(4242, 0);
    let mut b = a.clone();
    b[4] = "198.51.100.7:8080".parse().unwrap();
    let to_b = kube_proxy_nl::datagram(
        &kube_proxy_nl::resync_service(&svc, (8484, "__map4242"), (900_001, "__mapb"), &b),
        1,
    );
    let to_a = kube_proxy_nl::datagram(
        &kube_proxy_nl::resync_service(&svc, (900_001, "__mapb"), (8484, "__map4242"), &a),
        2,
    );
    let node = NodeName("bench".into());
    let src = Source {
        mode: Mode::Nftables,
        family: Family::V4,
    };
    let mut flip = false;
    c.bench_function("endpoint_change_10k", |bench| {
        bench.iter(|| {
            flip = !flip;
            let t0 = jiff::Timestamp::now();
            feed(&mut mirror, if flip { &to_b } else { &to_a });
            let change = mirror.update(&mut routes);
            let stamp = emit::Stamp {
                first: t0,
                last: t0,
                commits: 1,
                detected: jiff::Timestamp::now(),
            };
            let obs = emit::observations(&node, src, &change, stamp);
            assert_eq!(obs.len(), 2);
            assert!(obs.iter().any(|o| o.kind == Kind::DataplaneRemoved));
            black_box(obs)
        });
    });
}

/// A set-element message as a dump of kube-proxy's `service-ips` map brings them (a few hundred
/// elements each): decoded by netlink-packet-netfilter, and by the watcher's fast path.
fn set_elements_decode(c: &mut Criterion) {
    use netlink_packet_core::NetlinkMessage;
    use netlink_packet_netfilter::{
        NetfilterMessage, NetfilterProtoFamily,
        nftables::{
            DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementList,
            SetElementMessage, Verdict, VerdictAttribute,
        },
    };
    let elements = (0..300u32)
        .map(|i| {
            let mut key = (0x0a60_0000 + i).to_be_bytes().to_vec();
            key.extend_from_slice(&[6, 0, 0, 0, 0, 80, 0, 0]);
            ListAttribute::Element(vec![
                SetElementAttribute::Key(DataAttribute::Value(key)),
                SetElementAttribute::Data(DataAttribute::Verdict(vec![
                    VerdictAttribute::Code(Verdict::Goto),
                    VerdictAttribute::Chain(format!("service-ABCDEFGH-ns{i}/svc{i}/tcp/")),
                ])),
            ])
        })
        .collect();
    let bytes = kubectl_zdt::dataplane::nfnetlink::frame(
        NetfilterProtoFamily::IPv4,
        NfTablesMessage::NewSetElement(SetElementMessage {
            attributes: vec![
                SetElementList::Table("kube-proxy".into()),
                SetElementList::Set("service-ips".into()),
                SetElementList::Elements(elements),
            ],
        }),
    );
    c.bench_function("set_elements_300_decode_netlink_packet_netfilter", |b| {
        b.iter(|| NetlinkMessage::<NetfilterMessage>::deserialize(black_box(&bytes)).unwrap());
    });
    c.bench_function("set_elements_300_decode_fast_path", |b| {
        b.iter(|| kubectl_zdt::dataplane::nft_decode::deserialize(black_box(&bytes)).unwrap());
    });
}

fn iptables_save_parse(c: &mut Criterion) {
    let all: Vec<ServiceRules> = (0..SERVICES)
        .map(|i| ServiceRules::new(service(i), endpoints(i, 0)))
        .collect();
    let text = kube_proxy::sync_input(&all, &|_| true, &[], "10.244.0.0/16");
    c.bench_function("iptables_save_parse_10k", |bench| {
        bench.iter(|| {
            let b = iptables::parse(black_box(&text)).unwrap();
            assert_eq!(b.len(), (SERVICES * PER_SERVICE) as usize);
            b
        });
    });
}

/// As root with ZDT_LIVE=1: programs a real node namespace with 10 000 Services in nftables
/// mode, runs the watcher, and measures commit → observation for single endpoint changes.
/// `ZDT_LIVE=1` runs both live benchmarks, `ZDT_LIVE=nftables` or `ZDT_LIVE=legacy` one.
fn live_wanted(which: &str) -> bool {
    std::env::var("ZDT_LIVE").is_ok_and(|v| v == "1" || v == which)
}

fn live(c: &mut Criterion) {
    if !live_wanted("nftables") {
        return;
    }
    use kubectl_zdt::{
        dataplane::watcher,
        testbed::{Node, kube_proxy_nft},
    };
    assert!(
        nix::unistd::geteuid().is_root(),
        "the live benchmark needs root"
    );
    let node = Node::create().unwrap();
    let mut script = kube_proxy_nft::base_table("10.244.0.0/16", "10.96.0.0/12");
    for i in 0..SERVICES {
        script.push_str(&kube_proxy_nft::sync_service(
            &service(i),
            &endpoints(i, 0),
            &[],
        ));
    }
    let t = Instant::now();
    node.nft_apply(&script).unwrap();
    eprintln!("programmed {SERVICES} Services in {:?}", t.elapsed());
    // Where a start's time goes: the table read over netlink (kernel / decode / apply to the
    // mirror), then computing every route.
    let phases = node
        .ns
        .run_in(|| {
            let mut mirror = kubectl_zdt::dataplane::mirror::TableMirror::new(2, "kube-proxy");
            let t = Instant::now();
            let stats = kubectl_zdt::dataplane::nl_dump::dump(&mut mirror).unwrap();
            let dumped = t.elapsed();
            let t = Instant::now();
            let mut routes = kubectl_zdt::dataplane::Backends::new();
            mirror.update(&mut routes);
            (stats, dumped, t.elapsed(), routes.len())
        })
        .unwrap();
    eprintln!(
        "start phases: dump {:?} ({} requests, {} messages; in recv {:?}, decoding {:?}, applying {:?}), routes {:?} ({} routes)",
        phases.1,
        phases.0.requests,
        phases.0.messages,
        phases.0.kernel,
        phases.0.decode,
        phases.0.apply,
        phases.2,
        phases.3
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(1 << 20);
    let sink = watcher::Sink::new(&tx);
    let t = Instant::now();
    let rss0 = rss_kib();
    node.ns
        .run_in(move || watcher::spawn(NodeName("bench".into()), sink).map(|_| ()))
        .unwrap()
        .unwrap();
    let first = rx.blocking_recv().unwrap();
    eprintln!(
        "watcher start (netlink dump of the table): {:?}; RSS +{} KiB; {}",
        t.elapsed(),
        rss_kib() - rss0,
        first.to_json_line()
    );
    let svc = service(4242);
    bench_endpoint_flips(
        c,
        "nftables_endpoint_change_10k_commit_to_observation",
        &mut rx,
        |eps, gone| {
            node.nft_apply(&kube_proxy_nft::sync_service(&svc, eps, &[gone]))
                .unwrap();
        },
    );
    drop(tx);
}

/// As root with ZDT_LIVE=1: the same 10 000 Services in kube-proxy's iptables mode on the
/// legacy x_tables backend, watched through the agent's eBPF trigger: the costs of one table
/// read (GET_ENTRIES, parse), the state's memory, and replace (syscall exit) → observation for
/// single endpoint changes.
fn live_legacy(c: &mut Criterion) {
    if !live_wanted("legacy") {
        return;
    }
    use kubectl_zdt::{
        agent::{Agent, AgentConfig},
        dataplane::{Family, legacy, watcher, xtables},
        testbed::Node,
    };
    assert!(
        nix::unistd::geteuid().is_root(),
        "the live benchmark needs root"
    );
    let node = Node::create().unwrap();
    let mut all: Vec<ServiceRules> = (0..SERVICES)
        .map(|i| ServiceRules::new(service(i), endpoints(i, 0)))
        .collect();
    node.iptables_legacy_restore(kube_proxy::PORTALS).unwrap();
    let t = Instant::now();
    node.iptables_legacy_restore(&kube_proxy::sync_input(
        &all,
        &|_| true,
        &[],
        "10.244.0.0/16",
    ))
    .unwrap();
    eprintln!(
        "programmed {SERVICES} Services with iptables-legacy-restore in {:?}",
        t.elapsed()
    );
    let (reads, parses, size, held, writer_reads) = node
        .ns
        .run_in(|| {
            let (mut reads, mut parses, mut size, mut held) = (Vec::new(), Vec::new(), 0, 0);
            let mut writer_reads = Vec::new();
            for _ in 0..5 {
                let before = LIVE.load(Ordering::Relaxed);
                let t = Instant::now();
                let table = legacy::read_nat(Family::V4).unwrap().unwrap();
                reads.push(t.elapsed());
                size = table.entries().len();
                let t = Instant::now();
                let nat = xtables::parse(Family::V4, &table.info, table.entries()).unwrap();
                parses.push(t.elapsed());
                // The same table as a writer hands it to the kernel, read the way the watcher
                // reads a writer (process_vm_readv, here of this process, in 1 MiB pieces).
                let buffer = legacy::replace_buffer(&table.info, table.entries());
                drop(table);
                let begin = legacy::ReplaceBegin {
                    entered_ns: 0,
                    family: Family::V4,
                    table: "nat".into(),
                    netns: 0,
                    pid: std::process::id(),
                    buffer: buffer.as_ptr() as u64,
                    len: u32::try_from(buffer.len()).unwrap(),
                };
                let t = Instant::now();
                let from_writer = legacy::read_writer(&begin, &mut Vec::new()).unwrap();
                writer_reads.push(t.elapsed());
                assert_eq!(from_writer.nat, nat);
                drop((buffer, from_writer));
                // What the watcher keeps between changes: the routes.
                held = LIVE.load(Ordering::Relaxed) - before;
                assert_eq!(nat.routes.len(), (SERVICES * PER_SERVICE) as usize);
            }
            (reads, parses, size, held, writer_reads)
        })
        .unwrap();
    eprintln!(
        "legacy nat table: {:.1} MiB of entries; GET_ENTRIES {reads:?}; parse {parses:?}; read + parse from a writer's buffer {writer_reads:?}; routes kept {:.1} MiB of heap",
        size as f64 / (1024.0 * 1024.0),
        held as f64 / (1024.0 * 1024.0)
    );

    let mut config = AgentConfig::new(NodeName("bench".into()), Vec::new());
    config.filter = true;
    let agent = Agent::start(&config).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1 << 20);
    let sink = watcher::Sink::new(&tx);
    let rss0 = rss_kib();
    let live0 = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    let agent = node
        .ns
        .run_in(move || {
            let mut agent = agent;
            let opened = watcher::open().unwrap();
            let armed = agent.arm_dataplane(&opened.arm).unwrap();
            let w = opened.spawn(NodeName("bench".into()), sink, armed).unwrap();
            agent.use_dataplane(&w);
            agent
        })
        .unwrap();
    let first = rx.blocking_recv().unwrap();
    eprintln!(
        "watcher start (x_tables read): {:?}; RSS +{} KiB after the start; {}",
        t.elapsed(),
        rss_kib() - rss0,
        first.to_json_line()
    );
    let running = kubectl_zdt::testbed::agent::RunningAgent::run(agent).unwrap();

    bench_endpoint_flips(
        c,
        "iptables_legacy_endpoint_change_10k_replace_to_observation",
        &mut rx,
        |eps, gone| {
            all[4242].endpoints = eps.to_vec();
            let svc = all[4242].port.clone();
            let input = kube_proxy::sync_input(
                &all,
                &|p| *p == svc,
                &[(svc.clone(), gone)],
                "10.244.0.0/16",
            );
            node.iptables_legacy_restore(&input).unwrap();
        },
    );
    let rss = rss_kib() - rss0;
    let live = (LIVE.load(Ordering::Relaxed) - live0) / 1024;
    // What of the growth is memory malloc keeps after it was freed (arenas of the watcher's
    // threads), not memory in use.
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe { libc::malloc_trim(0) };
    eprintln!(
        "RSS after the changes: +{rss} KiB (heap in use: +{live} KiB; RSS after malloc_trim: +{} KiB); lines by where the new table was read from: {:?}; by where the replace was reported: {:?}",
        rss_kib() - rss0,
        READ_FROM.lock().unwrap(),
        REPORTED_AT.lock().unwrap()
    );
    eprintln!(
        "x_tables swap per change, ms (± uncertainty, replace entry → exit, swap window start → line): {:?}",
        SWAPS.lock().unwrap()
    );
    drop(running);
    drop(tx);
}

/// Service 4242 alternates between two endpoint sets, one endpoint swapped: `apply(endpoints,
/// gone)` programs a set in the kernel; a change's time is its lines' `detect_ns` (trigger →
/// line emitted).
fn bench_endpoint_flips(
    c: &mut Criterion,
    name: &str,
    rx: &mut tokio::sync::mpsc::Receiver<kubectl_zdt::observation::Observation>,
    mut apply: impl FnMut(&[SocketAddr], SocketAddr),
) {
    let a = endpoints(4242, 0);
    let mut b = a.clone();
    b[4] = "198.51.100.7:8080".parse().unwrap();
    let mut flip = false;
    let mut group = c.benchmark_group("live");
    group.sample_size(10);
    // Every iteration is a real kernel write (seconds with iptables-legacy-restore at this
    // size): the same number of them per sample.
    group.sampling_mode(criterion::SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.bench_function(name, |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                flip = !flip;
                let (eps, gone) = if flip { (&b, a[4]) } else { (&a, b[4]) };
                apply(eps, gone);
                total += detect_of_one_change(rx);
            }
            total
        });
    });
    group.finish();
}

/// iptables-legacy lines' swap windows: (uncertainty, replace syscall, window start → line) in
/// ms.
static SWAPS: std::sync::Mutex<Vec<(f64, f64, f64)>> = std::sync::Mutex::new(Vec::new());

/// iptables-legacy lines by `read_from` (the writer's buffer or the kernel's table).
static READ_FROM: std::sync::Mutex<Vec<(String, u32)>> = std::sync::Mutex::new(Vec::new());

/// iptables-legacy lines by `reported_at` (the old table's free or the syscall's exit).
static REPORTED_AT: std::sync::Mutex<Vec<(String, u32)>> = std::sync::Mutex::new(Vec::new());

/// Counts `value` (a field of a line) in `tally`.
fn tally(tally: &std::sync::Mutex<Vec<(String, u32)>>, value: Option<&str>) {
    if let Some(value) = value {
        let mut counts = tally.lock().unwrap();
        match counts.iter_mut().find(|(v, _)| v == value) {
            Some((_, n)) => *n += 1,
            None => counts.push((value.to_owned(), 1)),
        }
    }
}

/// One endpoint swapped is two lines (removed, added): the mean of their `detect_ns` (trigger
/// → line emitted).
fn detect_of_one_change(
    rx: &mut tokio::sync::mpsc::Receiver<kubectl_zdt::observation::Observation>,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..2 {
        let o = rx.blocking_recv().unwrap();
        let d = o.details.dataplane();
        tally(&READ_FROM, d.read_from.as_deref());
        tally(&REPORTED_AT, d.reported_at.as_deref());
        let ns = d.detect_ns.unwrap();
        total += Duration::from_nanos(ns) / 2;
        if let Some(syscall) = d.syscall_ns {
            let unc = o.uncertainty_ns.unwrap_or(0) as f64 / 1e6;
            let since_first = ns as f64 / 1e6;
            SWAPS
                .lock()
                .unwrap()
                .push((unc, syscall as f64 / 1e6, since_first));
        }
    }
    total
}

fn rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

criterion_group!(
    benches,
    endpoint_change,
    set_elements_decode,
    iptables_save_parse,
    live,
    live_legacy
);
criterion_main!(benches);
