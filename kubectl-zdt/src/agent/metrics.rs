//! The agent's Prometheus metrics (docs/metrics.md), fed from the observation path itself:
//! every observation the agent journals (or prints, standalone) goes through [`Metrics::observe`]
//! too, so the metrics and the journal never disagree.
//!
//! Counters move as observations arrive. The histograms are per terminated pod and come from
//! the correlation engine, never from a second computation of gaps: the agent keeps a bounded
//! window of the observations that can belong to a pod's timeline and, once a pod has been quiet
//! for [`SETTLE`], correlates the window and records that pod's propagation delay, gap and this
//! node's dataplane update latency once. On a cluster each agent sees its own pods' termination
//! marks and its own node's dataplane, so the figures are "this node, its own pods" (the
//! cluster-wide worst node is what `kubectl zdt recommend` and `analyze` compute).
//!
//! Labels are bounded: namespace, workload (the owning controller, never the pod), service (the
//! capacity dips of the Services with an endpoint on this node), error kind,
//! reason and side; no pod name, no address.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use jiff::Timestamp;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{
    correlate::{self, Options, PodReport, time::WallNs},
    observation::{Kind, Observation},
};

/// A pod's figures are recorded once nothing new was observed about it for this long.
pub const SETTLE: Duration = Duration::from_secs(30);
/// Observations older than this (behind the newest one) leave the window.
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// And at most this many stay (a node's own pods' timelines are a few dozen lines each).
const WINDOW_LINES: usize = 50_000;

/// The content type of the OpenMetrics text exposition prometheus-client writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the agent's flags ask of the metrics.
#[derive(Clone, Copy, Debug)]
pub struct MetricsConfig {
    /// `--metrics-listen`: also serve `/metrics` (only) here.
    pub listen: Option<std::net::SocketAddr>,
    /// `--metrics-settle-ms`.
    pub settle: Duration,
}

/// Which observations can feed the per-pod histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Cluster mode: only lines the agent attributed to one of its node's pods (`pod` set).
    /// Dataplane lines about other nodes' pods name no pod here and never reach the window.
    OwnPods,
    /// Standalone: every line (there is no pod index; the engine tells pods apart by address
    /// and network namespace).
    Everything,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    namespace: String,
    workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    /// refused | reset | timeout | other
    kind: &'static str,
    reason: String,
    /// pod (the pod's kernel answered with a RST) | client (an errno delivered to a client)
    side: &'static str,
    namespace: String,
    workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    namespace: String,
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabel {
    program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JournalDamageLabels {
    /// marks | counters
    stream: &'static str,
    /// file_header | blocks | tail | missing_segment | repeated_lines | stray_file
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: String,
}

type HistogramFamily = Family<WorkloadLabels, Histogram, fn() -> Histogram>;

/// Propagation delays: 5 ms … 30 s (kube-proxy's minSyncPeriod is 1 s; large clusters take
/// seconds).
fn delay_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
    ])
}

/// A dip's fewest ready endpoints over the count before it: 0 is none left.
fn ratio_buckets() -> Histogram {
    Histogram::new([0.0, 0.25, 0.5, 0.75, 0.9, 0.99])
}

/// Gaps are signed: ≤ 0 is safe, so the buckets straddle zero.
fn gap_buckets() -> Histogram {
    Histogram::new([
        -10.0, -5.0, -2.0, -1.0, -0.5, -0.25, -0.1, 0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0,
    ])
}

#[derive(Default)]
struct Window {
    lines: VecDeque<Observation>,
    /// `namespace/name` → workload, from `pod_deleting`'s `workload`.
    workloads: HashMap<String, String>,
    /// Pods already recorded, with when.
    recorded: HashMap<String, Timestamp>,
    /// Lines arrived since the last correlation.
    changed: bool,
    /// Pods that were still settling at the last correlation.
    settling: usize,
    mode: Option<String>,
}

/// Every metric the agent exposes, and the window the histograms are computed from.
pub struct Metrics {
    registry: Registry,
    propagation: HistogramFamily,
    gap: HistogramFamily,
    startup_gap: HistogramFamily,
    dataplane_update: Histogram,
    capacity_dip: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    capacity_dip_seconds: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    errors: Family<ErrorLabels, Counter>,
    kernel_lost: Counter,
    kernel_skipped: Family<ProgramLabel, Counter>,
    handler_errors: Family<ProgramLabel, Counter>,
    observations: Family<KindLabel, Counter>,
    pods_measured: Counter,
    probe_attached: Family<ProgramLabel, Gauge>,
    dataplane_mode: Family<ModeLabel, Gauge>,
    api_watch_up: Gauge,
    api_watch_failures: Counter,
    other_node_sockets: Counter,
    other_node_namespace_lines: Counter,
    watched_addresses: Gauge,
    journal_damage: Family<JournalDamageLabels, Gauge>,
    journal_unreadable: Counter,
    scope: Scope,
    settle: Duration,
    window: Mutex<Window>,
    /// Correlations run (for the benchmark and the tests).
    correlations: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Scope::OwnPods, SETTLE)
    }
}

impl Metrics {
    pub fn new(scope: Scope, settle: Duration) -> Self {
        let mut registry = Registry::with_prefix("zdt");
        let propagation = HistogramFamily::new_with_constructor(delay_buckets);
        registry.register(
            "propagation_delay_seconds",
            "Per terminated pod of this node: this node's dataplane removal minus the pod's deletion",
            propagation.clone(),
        );
        let gap = HistogramFamily::new_with_constructor(gap_buckets);
        registry.register(
            "gap_seconds",
            "Per terminated pod of this node: this node's dataplane removal minus the pod's listener close (or the bound the engine uses); > 0 is an unsafe window",
            gap.clone(),
        );
        let startup_gap = HistogramFamily::new_with_constructor(gap_buckets);
        registry.register(
            "startup_gap_seconds",
            "Per new pod of this node: its listener's open minus the first node's routing to it; > 0 is connections routed to it before it listened",
            startup_gap.clone(),
        );
        let dataplane_update = delay_buckets();
        registry.register(
            "dataplane_update_seconds",
            "Per terminated pod of this node: its endpoint turning terminating (or removed) in the API watch to this node's dataplane removal",
            dataplane_update.clone(),
        );
        let capacity_dip = Family::new_with_constructor(ratio_buckets as fn() -> Histogram);
        registry.register(
            "capacity_dip_ready_ratio",
            "Per capacity dip of a Service with an endpoint on this node: its fewest ready endpoints over those it had at rest before",
            capacity_dip.clone(),
        );
        let capacity_dip_seconds = Family::new_with_constructor(delay_buckets as fn() -> Histogram);
        registry.register(
            "capacity_dip_seconds",
            "Per capacity dip of a Service with an endpoint on this node: how long its ready endpoints were below those it had at rest before",
            capacity_dip_seconds.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "connection_errors",
            "Connection errors seen by the kernel: refused SYNs and resets on the pod side, errnos on the client side",
            errors.clone(),
        );
        let kernel_lost = Counter::default();
        registry.register(
            "kernel_events_lost",
            "Kernel events the ring buffer had no room for (their counts are still in the aggregated lines)",
            kernel_lost.clone(),
        );
        let kernel_skipped = Family::<ProgramLabel, Counter>::default();
        registry.register(
            "kernel_events_skipped",
            "Kernel events a probe was not run for (the tracepoint fired while another tracing program ran on that CPU); they are in no count",
            kernel_skipped.clone(),
        );
        let handler_errors = Family::<ProgramLabel, Counter>::default();
        registry.register(
            "kernel_handler_errors",
            "Kernel events a probe's handler failed on (a map full, a kernel read refused); they are in no count",
            handler_errors.clone(),
        );
        let observations = Family::<KindLabel, Counter>::default();
        registry.register(
            "observations",
            "Observation lines emitted, by kind",
            observations.clone(),
        );
        let pods_measured = Counter::default();
        registry.register(
            "pods_measured",
            "Terminated pods whose timeline settled and was recorded in the histograms",
            pods_measured.clone(),
        );
        let probe_attached = Family::<ProgramLabel, Gauge>::default();
        registry.register(
            "probe_attached",
            "1 for each eBPF program attached at start",
            probe_attached.clone(),
        );
        let dataplane_mode = Family::<ModeLabel, Gauge>::default();
        registry.register(
            "dataplane_mode_info",
            "1 for kube-proxy's current mode on this node (iptables-nft, iptables-legacy, nftables, ipvs, none)",
            dataplane_mode.clone(),
        );
        let api_watch_up = Gauge::default();
        registry.register(
            "api_watch_up",
            "1 when the pod and EndpointSlice watches are synced (cluster mode)",
            api_watch_up.clone(),
        );
        let api_watch_failures = Counter::default();
        registry.register(
            "api_watch_restarts",
            "Times a Kubernetes watch failed and was restarted with backoff",
            api_watch_failures.clone(),
        );
        let other_node_sockets = Counter::default();
        registry.register(
            "other_node_client_failures",
            "Client failures left out because the client is another node's (nodes sharing one kernel)",
            other_node_sockets.clone(),
        );
        let other_node_namespace_lines = Counter::default();
        registry.register(
            "unowned_namespace_lines",
            "Kernel lines left out because their namespace number went to no pod of this node within 5 s (nodes sharing one kernel)",
            other_node_namespace_lines.clone(),
        );
        let watched_addresses = Gauge::default();
        registry.register(
            "watched_addresses",
            "Pod addresses the kernel filter reports",
            watched_addresses.clone(),
        );
        let journal_damage = Family::<JournalDamageLabels, Gauge>::default();
        registry.register(
            "journal_damage",
            "Damage the node journal's recovery found when the agent opened it (each is logged; the intact blocks around it are kept), by stream and kind",
            journal_damage.clone(),
        );
        let journal_unreadable = Counter::default();
        registry.register(
            "journal_unreadable_blocks",
            "Journal blocks a history query could not read back (checksum mismatch), skipped and reported in the answer",
            journal_unreadable.clone(),
        );
        Self {
            registry,
            propagation,
            gap,
            startup_gap,
            dataplane_update,
            capacity_dip,
            capacity_dip_seconds,
            errors,
            kernel_lost,
            kernel_skipped,
            handler_errors,
            observations,
            pods_measured,
            probe_attached,
            dataplane_mode,
            api_watch_up,
            api_watch_failures,
            other_node_sockets,
            other_node_namespace_lines,
            watched_addresses,
            journal_damage,
            journal_unreadable,
            scope,
            settle,
            window: Mutex::new(Window::default()),
            correlations: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // Plain data: a panic elsewhere while holding it leaves nothing half-written that matters.
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A Kubernetes watch failed (it restarts with backoff).
    pub fn watch_failed(&self) {
        self.api_watch_failures.inc();
    }

    /// A client's failure from another node's address was left out.
    pub fn other_node_client_failure(&self) {
        self.other_node_sockets.inc();
    }

    /// `n` kernel lines of a namespace number no pod of this node took were left out.
    pub fn other_node_namespace_lines(&self, n: u64) {
        self.other_node_namespace_lines.inc_by(n);
    }

    /// The kernel filter now reports `n` addresses.
    pub fn set_watched_addresses(&self, n: u64) {
        self.watched_addresses
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The damage the journal's recovery found: `(stream, kind)` once per damage.
    pub fn set_journal_damage<'a>(
        &self,
        found: impl IntoIterator<Item = (&'static str, &'static str)> + 'a,
    ) {
        for (stream, kind) in found {
            self.journal_damage
                .get_or_create(&JournalDamageLabels { stream, kind })
                .inc();
        }
    }

    /// A Service's capacity dip ended (`agent::capacity`).
    pub fn capacity_dip(&self, dip: &super::capacity::Dip) {
        let labels = ServiceLabels {
            namespace: dip.namespace.clone(),
            service: dip.service.clone(),
        };
        let ratio = dip.lowest as f64 / dip.level.max(1) as f64;
        self.capacity_dip.get_or_create(&labels).observe(ratio);
        self.capacity_dip_seconds
            .get_or_create(&labels)
            .observe(dip.seconds);
    }

    /// A history query skipped `n` journal blocks it could not read back.
    pub fn journal_unreadable(&self, n: u64) {
        self.journal_unreadable.inc_by(n);
    }

    /// One observation, as it is journaled.
    pub fn observe(&self, o: &Observation) {
        self.observations
            .get_or_create(&KindLabel {
                kind: o.kind.as_str(),
            })
            .inc();
        match o.kind {
            Kind::Refused | Kind::Reset | Kind::ConnError => self.count_error(o),
            Kind::Loss
                if matches!(
                    o.reason.as_deref(),
                    Some(crate::observation::KERNEL_SKIPPED | crate::observation::HANDLER_ERROR)
                ) =>
            {
                let family = if o.reason.as_deref() == Some(crate::observation::KERNEL_SKIPPED) {
                    &self.kernel_skipped
                } else {
                    &self.handler_errors
                };
                let program = o.details.loss().program.as_deref();
                family
                    .get_or_create(&ProgramLabel {
                        program: program.unwrap_or_default().to_owned(),
                    })
                    .inc_by(o.weight());
            }
            Kind::Loss if o.reason.as_deref() != Some(super::serve::JOURNAL_EVICTED) => {
                self.kernel_lost.inc_by(o.weight());
            }
            Kind::AgentStart => {
                for p in o.details.agent().probes.iter().flatten() {
                    self.probe_attached
                        .get_or_create(&ProgramLabel {
                            program: p.to_owned(),
                        })
                        .set(1);
                }
            }
            Kind::DataplaneMode => self.set_mode(o),
            _ => {}
        }
        if self.feeds_window(o) {
            let mut w = self.lock();
            if o.kind == Kind::PodDeleting
                && let (Some(pod), Some(workload)) =
                    (o.pod.as_deref(), o.details.api().workload.as_deref())
            {
                w.workloads.insert(pod.to_owned(), workload.to_owned());
            }
            w.lines.push_back(o.clone());
            w.changed = true;
            let newest = w.lines.iter().map(|l| l.time).max().unwrap_or(o.time);
            let oldest_kept = newest
                .checked_sub(jiff::SignedDuration::try_from(WINDOW).unwrap_or_default())
                .unwrap_or(newest);
            while w
                .lines
                .front()
                .is_some_and(|l| l.time < oldest_kept || w.lines.len() > WINDOW_LINES)
            {
                w.lines.pop_front();
            }
        }
    }

    fn set_mode(&self, o: &Observation) {
        let Some(mode) = o.details.dataplane().mode.as_deref() else {
            return;
        };
        let mut w = self.lock();
        if let Some(old) = w.mode.replace(mode.to_owned()) {
            self.dataplane_mode.remove(&ModeLabel { mode: old });
        }
        self.dataplane_mode
            .get_or_create(&ModeLabel {
                mode: mode.to_owned(),
            })
            .set(1);
    }

    /// Lines that can be part of a pod's timeline, within the scope.
    fn feeds_window(&self, o: &Observation) -> bool {
        let relevant = matches!(
            o.kind,
            Kind::Refused
                | Kind::Reset
                | Kind::ConnError
                | Kind::SynRetransmit
                | Kind::ListenerClosed
                | Kind::ListenerOpen
                | Kind::Signal
                | Kind::Exec
                | Kind::Exit
                | Kind::NetnsGone
                | Kind::DataplaneAdded
                | Kind::DataplaneRemoved
                | Kind::FlowNew
                | Kind::PodDeleting
                | Kind::PodReady
                | Kind::EndpointReady
                | Kind::EndpointTerminating
                | Kind::EndpointRemoved
                | Kind::ContainerTerminated
        );
        relevant && (self.scope == Scope::Everything || o.pod.is_some())
    }

    /// `(namespace, workload)` labels of an observation's pod, empty when unknown.
    fn workload_labels(&self, o: &Observation) -> (String, String) {
        let Some(pod) = o.pod.as_ref() else {
            return (String::new(), String::new());
        };
        let declared = self.lock().workloads.get(pod.as_str()).cloned();
        let (ns, workload) = correlate::workload_of_pod(pod, declared.as_deref());
        (ns.unwrap_or_default(), workload)
    }

    fn count_error(&self, o: &Observation) {
        let reason = o.reason.clone().unwrap_or_default();
        let (kind, side) = match (o.kind, reason.as_str()) {
            (Kind::Refused, _) => ("refused", "pod"),
            (Kind::Reset, _) => ("reset", "pod"),
            (_, "ECONNREFUSED") => ("refused", "client"),
            (_, "ECONNRESET" | "EPIPE") => ("reset", "client"),
            (_, "ETIMEDOUT" | "EHOSTUNREACH") => ("timeout", "client"),
            _ => ("other", "client"),
        };
        let (namespace, workload) = self.workload_labels(o);
        self.errors
            .get_or_create(&ErrorLabels {
                kind,
                reason,
                side,
                namespace,
                workload,
            })
            .inc_by(o.weight());
    }

    /// Records the pods whose timelines settled by `now` (each once). Cheap when nothing
    /// arrived and nothing is settling.
    pub fn settle(&self, now: Timestamp) {
        let mut w = self.lock();
        if w.lines.is_empty() || (!w.changed && w.settling == 0) {
            return;
        }
        let lines: Vec<Observation> = w.lines.iter().cloned().collect();
        self.correlations.fetch_add(1, Ordering::Relaxed);
        let report = correlate::correlate(&lines, &Options::default());
        let mut settling = 0;
        let settle = jiff::SignedDuration::try_from(self.settle).unwrap_or_default();
        let quiet = |last: Option<Timestamp>| last.is_some_and(|l| now.duration_since(l) >= settle);
        for r in &report.rollouts {
            let labels = WorkloadLabels {
                namespace: r.namespace.clone().unwrap_or_default(),
                workload: r.workload.clone(),
            };
            for p in &r.pods {
                let key = pod_key(p);
                if w.recorded.contains_key(&key) || !has_own_marks(p) {
                    continue;
                }
                if !quiet(last_instant(p)) {
                    settling += 1;
                    continue;
                }
                self.record(&labels, p);
                w.recorded.insert(key, now);
            }
            // New pods whose listener opened on this node: their startup gap, once settled.
            for sp in r
                .startup
                .iter()
                .filter(|sp| sp.marks.listener_open.is_some())
            {
                let key = format!(
                    "start:{}",
                    sp.pod_uid
                        .as_deref()
                        .or(sp.pod.as_deref())
                        .unwrap_or_default()
                );
                if w.recorded.contains_key(&key) {
                    continue;
                }
                let last = sp
                    .marks
                    .iter()
                    .map(|m| m.time)
                    .chain(sp.error_marks.iter().map(|e| e.time))
                    .max();
                if !quiet(last) {
                    settling += 1;
                    continue;
                }
                if let Some(gap) = sp.startup_gap_ms {
                    self.startup_gap.get_or_create(&labels).observe(gap / 1e3);
                }
                w.recorded.insert(key, now);
            }
        }
        let forget = now
            .checked_sub(jiff::SignedDuration::try_from(WINDOW * 2).unwrap_or_default())
            .unwrap_or(now);
        w.recorded.retain(|_, t| *t >= forget);
        w.changed = false;
        w.settling = settling;
    }

    fn record(&self, labels: &WorkloadLabels, p: &PodReport) {
        self.pods_measured.inc();
        if let Some(prop) = p.propagation_ms {
            self.propagation.get_or_create(labels).observe(prop / 1e3);
        }
        if let Some(gap) = p.gap_ms {
            self.gap.get_or_create(labels).observe(gap / 1e3);
        }
        let ep_change = [&p.marks.ep_terminating, &p.marks.ep_removed]
            .into_iter()
            .flatten()
            .map(|m| WallNs::from_timestamp(m.time))
            .min();
        if let Some(ep) = ep_change {
            for removed in p.dataplane.iter().filter_map(|d| d.removed.as_ref()) {
                let ns = WallNs::from_timestamp(removed.time) - ep;
                self.dataplane_update.observe(ns as f64 / 1e9);
            }
        }
    }

    /// How many times the window was correlated.
    pub fn correlations(&self) -> u64 {
        self.correlations.load(Ordering::Relaxed)
    }

    /// The exposition text (OpenMetrics), after recording what settled by `now`.
    pub fn scrape(&self, now: Timestamp, api_synced: bool) -> String {
        self.settle(now);
        self.api_watch_up.set(i64::from(api_synced));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding the metrics failed: {e}");
        }
        out
    }
}

/// A pod's identity across correlations of a sliding window: its UID, else its name, else its
/// address with its first mark (an address alone is reused by the next pod).
fn pod_key(p: &PodReport) -> String {
    if let Some(uid) = &p.pod_uid {
        return uid.to_string();
    }
    if let Some(name) = &p.pod {
        return name.to_string();
    }
    let first = p.marks.iter().map(|m| m.time).min();
    format!(
        "{}@{}",
        p.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        first
            .map(crate::observation::format_time)
            .unwrap_or_default()
    )
}

/// The pod's own termination was observed here (not only a dataplane change about it: the
/// endpoint's removal alone is every node's business).
fn has_own_marks(p: &PodReport) -> bool {
    p.marks
        .iter()
        .any(|m| !matches!(m.source, Kind::EndpointRemoved))
}

/// The latest instant anything was observed about the pod.
fn last_instant(p: &PodReport) -> Option<Timestamp> {
    p.marks
        .iter()
        .map(|m| m.time)
        .chain(
            p.dataplane
                .iter()
                .flat_map(|d| [&d.removed, &d.last_flow])
                .flatten()
                .map(|m| m.time),
        )
        .chain(p.error_marks.iter().map(|e| e.time))
        .max()
}
