//! The agent's Prometheus metrics: the three recorded v1.36 rollouts are fed through the
//! metrics sink the way the agent feeds it (one observation at a time, a settle tick after each
//! rollout), `/metrics` is scraped over HTTP from the agent's endpoint, parsed with a
//! Prometheus text-format parser, and every value is checked against what the observations and
//! the correlation engine say.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, Read as _, Write as _},
    sync::Arc,
};

use crate::support::{
    self,
    recorded::{ROLLOUTS, convert},
};
use kubectl_zdt::{
    agent::{
        backlog::Backlog,
        metrics::{Metrics, SETTLE, Scope},
        serve::Gauges,
    },
    correlate::{self, Options},
    observation::{Kind, NodeName, Observation},
};
use prometheus_parse::{Sample, Scrape, Value};

/// `GET path` over a plain TCP connection (HTTP/1.0: the server closes after the answer).
fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nhost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

fn value(s: &Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{} is not a number: {other:?}", s.metric),
    }
}

/// The single sample of `metric` whose labels include `want`.
fn one<'a>(scrape: &'a Scrape, metric: &str, want: &[(&str, &str)]) -> &'a Sample {
    let found: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| want.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .collect();
    assert_eq!(found.len(), 1, "{metric} {want:?}: {found:#?}");
    found[0]
}

#[tokio::test]
async fn scraped_metrics_equal_what_the_observations_and_the_engine_say() {
    let gauges = Arc::new(Gauges {
        metrics: Metrics::new(Scope::Everything, SETTLE),
        ..Gauges::default()
    });
    let mut all: Vec<Observation> = Vec::new();
    for (dir, service) in ROLLOUTS {
        let obs = convert(dir, service);
        for o in &obs {
            gauges.metrics.observe(o);
        }
        // The agent's settle tick, a minute after the rollout's last line.
        let last = obs.iter().map(|o| o.time).max().unwrap();
        gauges.metrics.settle(
            last.checked_add(jiff::SignedDuration::from_secs(60))
                .unwrap(),
        );
        all.extend(obs);
    }
    let mut mode = Observation::new(Kind::DataplaneMode, all[0].time, NodeName("vm".into()));
    mode = mode.with_extra("mode", "nftables");
    gauges.metrics.observe(&mode);
    let mut loss = Observation::new(Kind::Loss, all[0].time, NodeName("vm".into()));
    loss.count = Some(7);
    gauges.metrics.observe(&loss);
    // Events the kernel skipped a probe for are not ring-buffer loss: counted apart, per program.
    let mut skipped = Observation::new(Kind::Loss, all[0].time, NodeName("vm".into()));
    skipped.count = Some(3);
    skipped.reason = Some(kubectl_zdt::observation::KERNEL_SKIPPED.to_owned());
    let skipped = skipped.with_extra("program", "tcp_retransmit_skb");
    gauges.metrics.observe(&skipped);
    // Events a probe's handler failed on: counted apart too, per program.
    let mut failed = Observation::new(Kind::Loss, all[0].time, NodeName("vm".into()));
    failed.count = Some(2);
    failed.reason = Some(kubectl_zdt::observation::HANDLER_ERROR.to_owned());
    let failed = failed.with_extra("program", "tcp_send_reset");
    gauges.metrics.observe(&failed);
    all.extend([mode, loss, skipped, failed]);

    let addr = support::agent_endpoint("vm", Backlog::new(10), gauges.clone()).await;
    let (head, body) = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
        .await
        .unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(head.contains("application/openmetrics-text"), "{head}");
    println!("{body}");
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();

    // Counters: exactly the observations' counts.
    let total = |pred: &dyn Fn(&Observation) -> bool| -> f64 {
        all.iter()
            .filter(|o| pred(o))
            .map(Observation::weight)
            .sum::<u64>() as f64
    };
    for kind in [Kind::PodDeleting, Kind::ConnError, Kind::DataplaneRemoved] {
        let lines = all.iter().filter(|o| o.kind == kind).count() as f64;
        assert!(lines > 0.0);
        let s = one(
            &scrape,
            "zdt_observations_total",
            &[("kind", kind.as_str())],
        );
        assert_eq!(value(s), lines, "{kind}");
    }
    let refused =
        total(&|o| o.kind == Kind::ConnError && o.reason.as_deref() == Some("ECONNREFUSED"));
    assert_eq!(refused, 12.0);
    let s = one(
        &scrape,
        "zdt_connection_errors_total",
        &[
            ("kind", "refused"),
            ("reason", "ECONNREFUSED"),
            ("side", "client"),
        ],
    );
    assert_eq!(value(s), refused);
    let s = one(
        &scrape,
        "zdt_connection_errors_total",
        &[("kind", "timeout"), ("reason", "ETIMEDOUT")],
    );
    assert_eq!(
        value(s),
        total(&|o| o.reason.as_deref() == Some("ETIMEDOUT"))
    );
    assert_eq!(
        value(one(&scrape, "zdt_kernel_events_lost_total", &[])),
        7.0
    );
    assert_eq!(
        value(one(
            &scrape,
            "zdt_kernel_events_skipped_total",
            &[("program", "tcp_retransmit_skb")]
        )),
        3.0
    );
    assert_eq!(
        value(one(
            &scrape,
            "zdt_kernel_handler_errors_total",
            &[("program", "tcp_send_reset")]
        )),
        2.0
    );
    assert_eq!(
        value(one(
            &scrape,
            "zdt_dataplane_mode_info",
            &[("mode", "nftables")]
        )),
        1.0
    );

    // Histograms: per workload, one sample per pod the engine measured, with its value.
    let report = correlate::correlate(&all, &Options::default());
    let mut want: BTreeMap<(String, String), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for r in &report.rollouts {
        let e = want
            .entry((r.namespace.clone().unwrap_or_default(), r.workload.clone()))
            .or_default();
        for p in &r.pods {
            e.0.extend(p.propagation_ms.map(|ms| ms / 1e3));
            e.1.extend(p.gap_ms.map(|ms| ms / 1e3));
        }
    }
    assert_eq!(want.len(), 2, "web and webfast");
    for ((ns, workload), (props, gaps)) in &want {
        for (metric, values) in [
            ("zdt_propagation_delay_seconds", props),
            ("zdt_gap_seconds", gaps),
        ] {
            let labels = [("namespace", ns.as_str()), ("workload", workload.as_str())];
            if values.is_empty() {
                assert!(
                    !scrape
                        .samples
                        .iter()
                        .any(|s| s.metric == metric && s.labels.get("workload") == Some(workload)),
                    "{metric} {workload}: nothing measured, nothing reported"
                );
                continue;
            }
            let s = one(&scrape, metric, &labels);
            let Value::Histogram(buckets) = &s.value else {
                panic!("{metric} is not a histogram: {s:?}");
            };
            // Cumulative buckets: each holds the values at or under its bound.
            for b in buckets {
                let under = values.iter().filter(|v| **v <= b.less_than).count() as f64;
                assert_eq!(b.count, under, "{metric} {workload} le={}", b.less_than);
            }
            let count = one(&scrape, &format!("{metric}_count"), &labels);
            assert_eq!(value(count), values.len() as f64, "{metric} {workload}");
            let sum = one(&scrape, &format!("{metric}_sum"), &labels);
            assert!(
                (value(sum) - values.iter().sum::<f64>()).abs() < 1e-6,
                "{metric} {workload}: {} vs {values:?}",
                value(sum)
            );
        }
    }
    let measured: usize = want.values().map(|(p, _)| p.len()).sum();
    assert_eq!(measured, 6, "every old pod of the three rollouts");
    assert_eq!(
        value(one(&scrape, "zdt_pods_measured_total", &[])),
        6.0,
        "each pod once, across three settle ticks and the scrape"
    );
    // Endpoint change → this node's dataplane removal, one per measured pod.
    let s = one(&scrape, "zdt_dataplane_update_seconds_count", &[]);
    assert_eq!(value(s), 6.0);
    // Parsing line by line as well, so the exposition really is text Prometheus reads.
    assert!(body.lines().all(|l| !l.is_empty()));
    assert!(body.as_bytes().lines().count() > 20);
}

#[test]
fn a_pod_still_terminating_is_not_recorded_until_it_settles() {
    let metrics = Metrics::new(Scope::Everything, SETTLE);
    let obs = convert(ROLLOUTS[2].0, ROLLOUTS[2].1);
    for o in &obs {
        metrics.observe(o);
    }
    let last = obs.iter().map(|o| o.time).max().unwrap();
    let text = metrics.scrape(last, false);
    assert!(
        text.contains("zdt_pods_measured_total 0"),
        "nothing settled yet:\n{text}"
    );
    let later = last
        .checked_add(jiff::SignedDuration::from_secs(31))
        .unwrap();
    let text = metrics.scrape(later, false);
    assert!(text.contains("zdt_pods_measured_total 2"), "{text}");
    // Nothing new: no more correlation, and no pod counted twice.
    let runs = metrics.correlations();
    let text = metrics.scrape(later, false);
    assert_eq!(metrics.correlations(), runs);
    assert!(text.contains("zdt_pods_measured_total 2"), "{text}");
}

#[test]
fn a_new_pods_startup_gap_is_recorded_once_it_settles() {
    // The v1.23 startup rollout (tests/fixtures/real-cluster): two new pods routed to 2.46 s
    // and 2.55 s before httpd listened.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/real-cluster/v1.23-startup-t1.jsonl");
    let (obs, bad) = correlate::input::parse_all(&std::fs::read_to_string(path).unwrap());
    assert!(bad.is_empty());
    let metrics = Metrics::new(Scope::Everything, SETTLE);
    for o in &obs {
        metrics.observe(o);
    }
    let last = obs.iter().map(|o| o.time).max().unwrap();
    let text = metrics.scrape(
        last.checked_add(jiff::SignedDuration::from_secs(60))
            .unwrap(),
        false,
    );
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let labels = [("namespace", "default"), ("workload", "deployment/startup")];
    let count = one(&scrape, "zdt_startup_gap_seconds_count", &labels);
    assert_eq!(value(count), 2.0, "{text}");
    let sum = value(one(&scrape, "zdt_startup_gap_seconds_sum", &labels));
    assert!((sum - (2.458_867 + 2.553_399)).abs() < 1e-6, "{sum}");
    let s = one(&scrape, "zdt_startup_gap_seconds", &labels);
    let Value::Histogram(buckets) = &s.value else {
        panic!("not a histogram: {s:?}");
    };
    // Both above 2 s, under 5 s: nothing in the safe buckets.
    for b in buckets {
        let want = if b.less_than >= 5.0 { 2.0 } else { 0.0 };
        assert_eq!(b.count, want, "le={}", b.less_than);
    }
}

/// The opt-in monitoring manifests agree with each other and with the agent's flags.
#[test]
fn the_podmonitor_scrapes_the_port_the_daemonset_patch_opens_with_flags_the_agent_takes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring");
    let yaml = |f: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        serde_yaml::from_str(&text).unwrap()
    };
    let patch = yaml("daemonset-metrics.patch.yaml");
    let monitor = yaml("podmonitor.yaml");
    let container = &patch["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "agent");
    let port = &container["ports"][0];
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], port["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "zdt-agent"
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let cli = <kubectl_zdt::cli::Cli as clap::Parser>::try_parse_from(
        std::iter::once("kubectl-zdt").chain(args),
    )
    .unwrap();
    let kubectl_zdt::cli::Command::Agent(agent) = cli.command else {
        panic!("not the agent");
    };
    let listen = agent.metrics_listen.expect("--metrics-listen");
    assert_eq!(
        Some(listen.port()),
        port["containerPort"].as_u64().map(|p| p as u16)
    );
    assert_eq!(
        agent.listen.to_string(),
        "127.0.0.1:9476",
        "the stream stays on the loopback"
    );
}
