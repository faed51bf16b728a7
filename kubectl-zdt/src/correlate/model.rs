//! The report the engine produces: what `-o json` / `-o yaml` print (schema `zdt.dev/v1`,
//! kind `RolloutReport`, documented in docs/report-schema.md). Additions are compatible;
//! renames are breaking and bump [`API_VERSION`].

use std::net::IpAddr;

use jiff::Timestamp;
use serde::{Serialize, Serializer};

use crate::{
    kube_version::PreStopAction,
    observation::{Kind, NodeName, PodRef, PodUid, format_time},
};

pub const API_VERSION: &str = "zdt.dev/v1";
pub const REPORT_KIND: &str = "RolloutReport";

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `zdt.dev/v1`: spelled like a Kubernetes object's; every other field is snake_case like
    /// the observation stream's.
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub kind: &'static str,
    pub rollouts: Vec<Rollout>,
    /// Per workload whose new pods were routed to before they listened (or refused after they
    /// turned ready): the readiness probe that cures it. Never a preStop.
    pub readiness_advice: Vec<ReadinessAdvice>,
    /// Per Deployment whose ready endpoints fell below its replicas during a rollout: the
    /// strategy that keeps them (maxUnavailable 0).
    pub capacity_advice: Vec<CapacityAdvice>,
    /// Absent when nothing in the input allows sizing a preStop (no dataplane removal seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<Advice>,
    /// Why there is no advice, when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice_unavailable: Option<String>,
    pub nodes: Vec<NodeSummary>,
    pub input: InputSummary,
    pub warnings: Vec<String>,
}

/// One workload's pods terminated close together in time.
#[derive(Clone, Debug, Serialize)]
pub struct Rollout {
    /// `deployment/web`, `pod/web-0`, or `unknown` when no pod name was observed.
    pub workload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(serialize_with = "ser_time")]
    pub start: Timestamp,
    #[serde(serialize_with = "ser_time")]
    pub end: Timestamp,
    pub duration_ms: f64,
    pub pods: Vec<PodReport>,
    /// The workload's pods that turned ready during the capture (not deleted): when nodes
    /// started routing to each and when it started listening.
    pub startup: Vec<StartupReport>,
    /// Per client (and how it reached the pods): its failed connections by cause.
    pub clients: Vec<ClientReport>,
    /// Ready and listening endpoints over the rollout against the replicas asked for; absent
    /// when no pod of it has an endpoint mark.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_gap_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worst_pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worst_node: Option<NodeName>,
    /// Sum over the pods and the new pods (`startup`); the errors tied to the workload's
    /// Service but to no single pod are in `unattributed_errors`.
    pub errors: ErrorCounts,
    /// Service-level errors (a client saw them on a ClusterIP) that fit no pod or several.
    pub unattributed_errors: u64,
    pub verdict: Verdict,
    pub reason: String,
}

/// One pod's timeline and what follows from it.
#[derive(Clone, Debug, Serialize)]
pub struct PodReport {
    /// `namespace/name`, when any observation named it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<PodUid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub marks: Marks,
    /// One entry per node known to the input, in node-name order; a node with nothing for this
    /// pod is `unknown`, never zero.
    pub dataplane: Vec<NodeRouting>,
    /// max over nodes of T_dp_removed − T_delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation_ms: Option<f64>,
    pub propagation_basis: Basis,
    /// max over nodes of T_dp_removed − T_listen_closed; positive = unsafe window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap_ms: Option<f64>,
    /// How `gap_ms` was obtained.
    pub gap_basis: Basis,
    /// Half-width of the interval the true gap lies in (both ends' clock uncertainty).
    pub gap_uncertainty_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsafe_window: Option<Window>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worst_node: Option<NodeName>,
    pub errors: ErrorCounts,
    pub verdict: Verdict,
    pub reason: String,
    /// Marks the input did not contain, by name (e.g. `listen_closed`).
    pub missing: Vec<String>,
    /// Error instants for the chart (not part of the schema).
    #[serde(skip)]
    pub error_marks: Vec<ErrorMark>,
    /// Each error with its client, for the rollout's `clients` (not part of the schema).
    #[serde(skip)]
    pub client_errors: Vec<super::clients::ClientError>,
}

/// The timeline marks (docs/report-schema.md), each with its source and clock uncertainty.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Marks {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete: Option<Mark>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ep_terminating: Option<Mark>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ep_removed: Option<Mark>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prestop: Option<Mark>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigterm: Option<Mark>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_closed: Option<Mark>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<Mark>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_gone: Option<Mark>,
}

impl Marks {
    /// The marks that were observed, in timeline order (delete … netns_gone).
    pub fn iter(&self) -> impl Iterator<Item = &Mark> {
        [
            &self.delete,
            &self.ep_terminating,
            &self.ep_removed,
            &self.prestop,
            &self.sigterm,
            &self.listen_closed,
            &self.exit,
            &self.netns_gone,
        ]
        .into_iter()
        .flatten()
    }
}

/// One instant with where it came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mark {
    #[serde(serialize_with = "ser_time")]
    pub time: Timestamp,
    pub uncertainty_ms: f64,
    /// The observation kind it was read from.
    pub source: Kind,
    /// The node whose clock stamped it.
    pub node: NodeName,
}

/// A node's routing of new connections to one pod.
#[derive(Clone, Debug, Serialize)]
pub struct NodeRouting {
    pub node: NodeName,
    pub state: RoutingState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<Mark>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_flow: Option<Mark>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingState {
    /// The node reported removing the pod from its dataplane.
    Removed,
    /// The node re-added the pod after its last removal (or never removed it but routed flows).
    StillRouting,
    /// The node reported nothing about this pod.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Both ends observed on every node that exists in the input.
    Measured,
    /// An end was bounded rather than observed (listener close bounded by exit or by the first
    /// refused connection, or a node did not report): the true value is at least this.
    LowerBound,
    /// Not enough marks to say anything.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Window {
    #[serde(serialize_with = "ser_time")]
    pub start: Timestamp,
    #[serde(serialize_with = "ser_time")]
    pub end: Timestamp,
    pub duration_ms: f64,
}

/// Errors by cause (docs/report-schema.md): which cure applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// New connections refused between listener close and the last node's removal: a preStop
    /// delay cures them.
    pub unsafe_window: u64,
    /// Established connections reset while the pod exited: graceful draining cures them.
    pub at_exit: u64,
    /// SYNs that went unanswered because the pod's network namespace was gone: timeouts.
    pub after_netns_gone: u64,
    /// Errors outside the pod's termination (before deletion, after every node stopped routing,
    /// other ports or errnos).
    pub unrelated: u64,
    /// Errors on a pod whose termination marks are missing, so no cause can be given.
    pub undetermined: u64,
    /// New connections a new pod refused after a node started routing to it and before its
    /// listener opened: a readiness probe on the Service's target port cures them.
    pub before_listening: u64,
    /// Connections a new pod refused after it turned ready and listened, while it was not
    /// terminating: its listener went away while it was ready.
    pub after_ready: u64,
    /// The node's kubelet's own probes refused or reset (`"probe": "kubelet"` on the line): no
    /// client saw them; in no other count and not in [`ErrorCounts::total`].
    pub probes: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.unsafe_window
            + self.at_exit
            + self.after_netns_gone
            + self.unrelated
            + self.undetermined
            + self.before_listening
            + self.after_ready
    }

    /// The count of one cause.
    pub fn get(&self, cause: Cause) -> u64 {
        match cause {
            Cause::UnsafeWindow => self.unsafe_window,
            Cause::AtExit => self.at_exit,
            Cause::AfterNetnsGone => self.after_netns_gone,
            Cause::Unrelated => self.unrelated,
            Cause::Undetermined => self.undetermined,
            Cause::Probe => self.probes,
            Cause::BeforeListening => self.before_listening,
            Cause::AfterReady => self.after_ready,
        }
    }

    pub fn add(&mut self, cause: Cause, n: u64) {
        let slot = match cause {
            Cause::UnsafeWindow => &mut self.unsafe_window,
            Cause::AtExit => &mut self.at_exit,
            Cause::AfterNetnsGone => &mut self.after_netns_gone,
            Cause::Unrelated => &mut self.unrelated,
            Cause::Undetermined => &mut self.undetermined,
            Cause::Probe => &mut self.probes,
            Cause::BeforeListening => &mut self.before_listening,
            Cause::AfterReady => &mut self.after_ready,
        };
        *slot += n;
    }

    pub fn merge(&mut self, other: &ErrorCounts) {
        self.unsafe_window += other.unsafe_window;
        self.at_exit += other.at_exit;
        self.after_netns_gone += other.after_netns_gone;
        self.unrelated += other.unrelated;
        self.undetermined += other.undetermined;
        self.probes += other.probes;
        self.before_listening += other.before_listening;
        self.after_ready += other.after_ready;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    UnsafeWindow,
    AtExit,
    AfterNetnsGone,
    Unrelated,
    Undetermined,
    /// A kubelet probe's connection, not a client's.
    Probe,
    /// Refused by a new pod that nodes routed to before it listened.
    BeforeListening,
    /// Refused by a new pod after it turned ready and listened.
    AfterReady,
}

/// One error (or an aggregated line of them) placed on the time axis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErrorMark {
    pub time: Timestamp,
    pub cause: Cause,
    pub count: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Safe,
    /// Not enough marks, or the gap is within the clock uncertainty.
    Inconclusive,
    Unsafe,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Safe => "safe",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Unsafe => "unsafe",
        }
    }
}

/// The preStop and grace period that would have prevented the observed errors.
#[derive(Clone, Debug, Serialize)]
pub struct Advice {
    pub prestop_seconds: u64,
    pub termination_grace_period_seconds: u64,
    pub margin_ms: f64,
    /// p99 (nearest rank) of the pods' propagation delays over all rollouts given.
    pub p99_propagation_ms: f64,
    pub propagation_samples: usize,
    /// The largest preStop any observed gap needed (gap + uncertainty + the preStop it ran with).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub largest_needed_ms: Option<f64>,
    /// Observed SIGTERM → exit of the slowest pod, when both were observed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_ms: Option<f64>,
    pub reason: String,
    /// `sleep` (the preStop sleep action, Kubernetes ≥ 1.30) or `exec_sleep` (an exec of
    /// `sleep`, for older servers): the form the patches use.
    pub prestop_action: PreStopAction,
    pub patches: Vec<Patch>,
}

/// One pod that turned ready during the capture: when the nodes started routing new
/// connections to it and when it started listening (docs/report-schema.md, Startup).
#[derive(Clone, Debug, Serialize)]
pub struct StartupReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<PodUid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The container serving the port, when the API watch said it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub marks: StartupMarks,
    /// One entry per node known to the input: when it started routing to the pod.
    pub dataplane: Vec<NodeAdded>,
    /// The readiness probe of the container serving the port, as the pod spec had it; absent
    /// when the input does not say (older captures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<ReadinessProbe>,
    /// listener_open − the first node's routing (its `dataplane_added`, or its first routed
    /// connection): positive = nodes routed new connections to the pod before it listened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_gap_ms: Option<f64>,
    pub gap_basis: Basis,
    pub gap_uncertainty_ms: f64,
    /// From the first routing to the listener's open, when positive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusing_window: Option<Window>,
    pub errors: ErrorCounts,
    pub verdict: Verdict,
    pub reason: String,
    /// Error instants for the chart (not part of the schema).
    #[serde(skip)]
    pub error_marks: Vec<ErrorMark>,
    /// Each error with its client (not part of the schema).
    #[serde(skip)]
    pub client_errors: Vec<super::clients::ClientError>,
}

/// A new pod's marks.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StartupMarks {
    /// The API's Ready condition (`pod_ready`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_ready: Option<Mark>,
    /// The endpoint turned ready in the Service's EndpointSlice (`endpoint_ready`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_ready: Option<Mark>,
    /// The first node's dataplane started routing to it (`dataplane_added`, else `flow_new`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_routed: Option<Mark>,
    /// Its listener on the Service's target port opened (`listener_open`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener_open: Option<Mark>,
}

impl StartupMarks {
    /// The marks that were observed.
    pub fn iter(&self) -> impl Iterator<Item = &Mark> {
        [
            &self.pod_ready,
            &self.endpoint_ready,
            &self.first_routed,
            &self.listener_open,
        ]
        .into_iter()
        .flatten()
    }
}

/// When one node started routing new connections to a new pod.
#[derive(Clone, Debug, Serialize)]
pub struct NodeAdded {
    pub node: NodeName,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added: Option<Mark>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_flow: Option<Mark>,
}

pub use crate::observation::ReadinessProbe;

/// The readiness probe one workload needs, with the patch that sets it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReadinessAdvice {
    /// `deployment/web`, as [`Rollout::workload`].
    pub workload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Connections its new pods refused before listening, and after turning ready.
    pub before_listening: u64,
    pub after_ready: u64,
    /// The largest startup gap measured (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub largest_gap_ms: Option<f64>,
    pub reason: String,
    /// Absent for a workload that is no Deployment, StatefulSet or DaemonSet, or whose port is
    /// unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<Patch>,
}

/// One client's failed connections during a rollout (docs/report-schema.md, Clients).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClientReport {
    /// `deployment/frontend -n shop` (the pod its node's agent named, or a pod the input gave
    /// that address), else `address 10.0.0.7`.
    pub client: String,
    /// `service` (dialled the ClusterIP), `pod_ip` (dialled the pod directly) or `unknown`.
    pub path: super::clients::Path,
    pub errors: ErrorCounts,
    /// For a client dialling pods directly: how long after the pod's endpoint was removed (or
    /// turned terminating) its last refused connection came, and which pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_endpoint_removed_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub reason: String,
}

/// The Service's endpoints over one rollout (docs/report-schema.md, Capacity).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Capacity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The replicas the workload asked for.
    pub desired: u64,
    /// `rollout_start` (the workload's spec.replicas) or `deleted_pods` (the pods the rollout
    /// replaced).
    pub desired_source: String,
    /// The strategy's rollingUpdate settings, when a `rollout_start` line said them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<serde_json::Value>,
    /// The lowest count of ready endpoints, when it was first reached and how long it lasted
    /// in all; and how long the count was below `desired` in all.
    pub min_ready: u64,
    #[serde(serialize_with = "ser_time")]
    pub min_ready_at: Timestamp,
    pub min_ready_ms: f64,
    pub ready_below_desired_ms: f64,
    /// The same for endpoints both ready and listening.
    pub min_serving: u64,
    #[serde(serialize_with = "ser_time")]
    pub min_serving_at: Timestamp,
    pub min_serving_ms: f64,
    pub serving_below_desired_ms: f64,
    /// Each change of the counts, in time order (a step function).
    pub series: Vec<CapacityStep>,
    /// Which rule let it drop, or that it did not.
    pub reason: String,
}

/// The counts from `time` until the next step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CapacityStep {
    #[serde(serialize_with = "ser_time")]
    pub time: Timestamp,
    pub ready: u64,
    pub serving: u64,
}

/// The rollout strategy one Deployment needs to keep its capacity.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CapacityAdvice {
    pub workload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub desired: u64,
    pub min_ready: u64,
    pub reason: String,
    /// A `kubectl patch` setting maxUnavailable 0 and maxSurge; absent for other kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<Patch>,
}

/// A ready `kubectl patch` for one workload.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Patch {
    pub workload: String,
    pub command: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeSummary {
    pub node: NodeName,
    pub observations: u64,
    /// Extra clock uncertainty this node's marks carry (offset moves, causality violations).
    pub clock_uncertainty_ms: f64,
    /// Events the node's agent reported it could not deliver.
    pub lost_events: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct InputSummary {
    pub observations: u64,
    /// Lines that could not be read, as `FILE:LINE: problem` (filled by the command).
    pub rejected_lines: Vec<String>,
}

fn ser_time<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}
