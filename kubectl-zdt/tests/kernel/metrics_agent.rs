//! The standalone agent with `--metrics-listen` on the node testbed: a pod stops listening while
//! its Service still routes to it, clients are refused, then the rule goes. `/metrics` is scraped
//! over HTTP inside the node's namespace, parsed with a Prometheus text-format parser, and each
//! value is checked against the observation lines the same agent printed. Needs root.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use crate::support::{AgentProcess, assert_all_refused, require_root, total};
use kubectl_zdt::{
    correlate::{self, Options},
    observation::{Kind, Observation},
    testbed::{
        Node,
        kube_proxy::ServicePort,
        node::cluster_ip,
        pod::{PodProcess, PodSpec},
        tcp::connect_once,
    },
};
use prometheus_parse::{Scrape, Value};

const METRICS: &str = "127.0.0.1:9464";

fn get_metrics() -> String {
    let mut s = std::net::TcpStream::connect(METRICS).expect("the agent serves --metrics-listen");
    write!(s, "GET /metrics HTTP/1.0\r\nhost: {METRICS}\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 200 "), "{head}");
    body.to_owned()
}

fn sample(scrape: &Scrape, metric: &str, want: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && want.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .collect();
    assert_eq!(found.len(), 1, "{metric} {want:?}: {found:#?}");
    match &found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{metric}: {other:?}"),
    }
}

#[test]
fn the_agents_metrics_count_what_it_printed_and_hold_what_the_engine_finds() {
    const N: usize = 25;
    require_root();
    let mut node = Node::create().unwrap();
    let svc = ServicePort {
        name: "default/web".into(),
        cluster_ip: cluster_ip(10),
        port: 80,
    };
    let pod = node.add_pod("web-1").unwrap();
    let client = node.add_client("client").unwrap();
    let ep = SocketAddr::new(pod.ip.into(), 8080);
    node.set_endpoints(&svc, &[ep], &[]).unwrap();
    let agent = AgentProcess::start_in(
        Some(node.ns.name()),
        &[
            "--watch-netns",
            &pod.ns.path(),
            "--watch-cidr",
            &format!("{}/32", pod.ip),
            "--watch-cidr",
            &format!("{}/32", svc.cluster_ip),
            "--metrics-listen",
            METRICS,
            "--metrics-settle-ms",
            "500",
        ],
    );
    let app = PathBuf::from(env!("CARGO_BIN_EXE_kubectl-zdt"));
    let spec = PodSpec {
        port: 8080,
        prestop_ms: 0,
        drain_ms: 0,
        ..PodSpec::default()
    };
    let app_proc = PodProcess::start(&pod, &app, spec).unwrap();
    let target = SocketAddr::new(svc.cluster_ip, svc.port);
    assert_eq!(
        client.ns.run_in(move || connect_once(target)).unwrap(),
        Ok(())
    );
    let delete = kubectl_zdt::kernel::clock::Clock::monotonic_now_ns();
    app_proc.terminate(&pod, &app, delete).unwrap();
    let outcomes = client
        .ns
        .run_in(move || (0..N).map(|_| connect_once(target)).collect::<Vec<_>>())
        .unwrap();
    assert_all_refused(&outcomes);
    // kube-proxy catches up: the rule goes, so the pod has a gap to measure.
    node.set_endpoints(&svc, &[], &[ep]).unwrap();
    let pod_ip = IpAddr::from(pod.ip);
    node.remove_pod(pod);
    // Past the settle time, and the kernel's lines are out of the ring buffer.
    std::thread::sleep(Duration::from_millis(1_500));
    let body = node.ns.run_in(get_metrics).unwrap();
    let obs: Vec<Observation> = agent.stop();
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();

    let refused = total(&obs, |o| o.kind == Kind::Refused && o.ip == Some(pod_ip));
    assert_eq!(refused, N as u64);
    assert_eq!(
        sample(
            &scrape,
            "zdt_connection_errors_total",
            &[
                ("kind", "refused"),
                ("reason", "NO_SOCKET"),
                ("side", "pod")
            ]
        ),
        refused as f64
    );
    let client_refused = total(&obs, |o| {
        o.kind == Kind::ConnError && o.reason.as_deref() == Some("ECONNREFUSED")
    });
    assert_eq!(
        sample(
            &scrape,
            "zdt_connection_errors_total",
            &[
                ("kind", "refused"),
                ("reason", "ECONNREFUSED"),
                ("side", "client")
            ]
        ),
        client_refused as f64
    );
    for kind in [Kind::ListenerClosed, Kind::DataplaneRemoved, Kind::Signal] {
        let lines = obs.iter().filter(|o| o.kind == kind).count() as f64;
        assert!(lines > 0.0, "{kind}");
        assert_eq!(
            sample(
                &scrape,
                "zdt_observations_total",
                &[("kind", kind.as_str())]
            ),
            lines,
            "{kind}"
        );
    }
    let hello = &obs[0];
    for probe in hello.details.agent().probes.as_ref().unwrap() {
        assert_eq!(
            sample(
                &scrape,
                "zdt_probe_attached",
                &[("program", probe.as_str())]
            ),
            1.0
        );
    }
    let mode = obs
        .iter()
        .rev()
        .find(|o| o.kind == Kind::DataplaneMode)
        .and_then(|o| o.details.dataplane().mode.as_deref())
        .expect("a dataplane_mode line");
    assert_eq!(
        sample(&scrape, "zdt_dataplane_mode_info", &[("mode", mode)]),
        1.0
    );

    // The histograms hold exactly what the engine finds in the printed lines. (Standalone, the
    // agent names no pod, and the engine does not tie a namespace's listener close to the
    // address the dataplane removed, so it finds no gap here: none may be reported either.)
    let report = correlate::correlate(&obs, &Options::default());
    let gaps: Vec<f64> = report
        .rollouts
        .iter()
        .flat_map(|r| &r.pods)
        .filter_map(|p| p.gap_ms)
        .collect();
    let reported: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "zdt_gap_seconds_count")
        .collect();
    if gaps.is_empty() {
        assert!(reported.is_empty(), "{reported:#?}");
    } else {
        assert_eq!(
            sample(&scrape, "zdt_gap_seconds_count", &[]),
            gaps.len() as f64
        );
        let sum = sample(&scrape, "zdt_gap_seconds_sum", &[]);
        let want: f64 = gaps.iter().sum::<f64>() / 1e3;
        assert!((sum - want).abs() < 1e-6, "{sum} vs {gaps:?} ms");
    }
    assert_eq!(
        sample(&scrape, "zdt_pods_measured_total", &[]),
        report
            .rollouts
            .iter()
            .flat_map(|r| &r.pods)
            .filter(|p| p.marks.iter().next().is_some())
            .count() as f64,
        "each pod with termination marks once"
    );
}
