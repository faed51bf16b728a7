//! The observation stream: the contract shared by the agent, the journal, the CLI and the tests
//! (see docs/observations.md). One JSON object per line. Additions are fine; renaming a kind or a
//! field is a breaking change and bumps [`SCHEMA_VERSION`].

use std::{fmt, net::IpAddr};

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Version of the observation schema, carried by `agent_start` lines.
pub const SCHEMA_VERSION: &str = "zdt.observation/v1";

/// `reason` of a `loss` line for events the kernel did not run a probe for (its
/// `recursion_misses`: the tracepoint fired while another tracing program ran on that CPU).
/// Which events they were is unknown, so no aggregated lines follow it.
pub const KERNEL_SKIPPED: &str = "KERNEL_SKIPPED";

/// `reason` of a `loss` line for events a probe's handler failed on (a map full, a kernel read
/// refused, a record it could not parse): seen, neither delivered nor counted. Which events they
/// were is unknown, so no aggregated lines follow it.
pub const HANDLER_ERROR: &str = "HANDLER_ERROR";

/// What was observed. Kernel and dataplane kinds come from node agents; API kinds from the
/// Kubernetes watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A SYN answered with RST because nothing listened (`reason` `NO_SOCKET`).
    Refused,
    /// A reset of an existing connection, with the kernel's reason.
    Reset,
    /// An error delivered to a client socket (`reason` is the errno name).
    ConnError,
    /// A retransmitted SYN: a connect that is timing out.
    SynRetransmit,
    ListenerOpen,
    ListenerClosed,
    Signal,
    Exec,
    Exit,
    NetnsGone,
    DataplaneAdded,
    DataplaneRemoved,
    FlowNew,
    /// Events the kernel side could not deliver (`count`), never silent.
    Loss,
    /// First line of an agent's stream: schema, kernel, clock.
    AgentStart,
    /// The agent re-measured its monotonic → wall clock offset and it moved.
    ClockSync,
    PodDeleting,
    EndpointTerminating,
    EndpointRemoved,
    EndpointReady,
    PodReady,
    PodCreated,
    RolloutStart,
    RolloutEnd,
    /// Which of kube-proxy's modes the node's dataplane uses (`mode`, `modes`), at agent start.
    DataplaneMode,
    /// The API reported a container terminated (`state.terminated`): the exit happened between
    /// `finishedAt` (1 s precision) and the receipt, carried as the time ± `uncertainty_ns`.
    ContainerTerminated,
}

impl Kind {
    /// The wire name, e.g. `conn_error`.
    pub fn as_str(self) -> &'static str {
        // NAMES is declared in the enum's order (checked by a test).
        Self::NAMES[self as usize]
    }

    pub const ALL: &[Kind] = &[
        Kind::Refused,
        Kind::Reset,
        Kind::ConnError,
        Kind::SynRetransmit,
        Kind::ListenerOpen,
        Kind::ListenerClosed,
        Kind::Signal,
        Kind::Exec,
        Kind::Exit,
        Kind::NetnsGone,
        Kind::DataplaneAdded,
        Kind::DataplaneRemoved,
        Kind::FlowNew,
        Kind::Loss,
        Kind::AgentStart,
        Kind::ClockSync,
        Kind::PodDeleting,
        Kind::EndpointTerminating,
        Kind::EndpointRemoved,
        Kind::EndpointReady,
        Kind::PodReady,
        Kind::PodCreated,
        Kind::RolloutStart,
        Kind::RolloutEnd,
        Kind::DataplaneMode,
        Kind::ContainerTerminated,
    ];

    const NAMES: &[&'static str] = &[
        "refused",
        "reset",
        "conn_error",
        "syn_retransmit",
        "listener_open",
        "listener_closed",
        "signal",
        "exec",
        "exit",
        "netns_gone",
        "dataplane_added",
        "dataplane_removed",
        "flow_new",
        "loss",
        "agent_start",
        "clock_sync",
        "pod_deleting",
        "endpoint_terminating",
        "endpoint_removed",
        "endpoint_ready",
        "pod_ready",
        "pod_created",
        "rollout_start",
        "rollout_end",
        "dataplane_mode",
        "container_terminated",
    ];
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's name (the hostname when standalone).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct NodeName(pub String);

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One line of the stream. Fields that do not apply to a kind are absent, not null.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub kind: Kind,
    /// Wall-clock time, RFC 3339 UTC, always written with 9 fractional digits.
    #[serde(serialize_with = "ser_time", deserialize_with = "de_time")]
    pub time: Timestamp,
    pub node: NodeName,
    /// The pod side / backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The other side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
    /// Kernel reason or errno name, e.g. `NO_SOCKET`, `ECONNREFUSED`, `SIGTERM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Number of events this line stands for, when aggregated (absent means 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// `ClusterIP:port` or `namespace/name` of the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Half-width of the interval the true time lies in (clock conversion), in nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncertainty_ns: Option<u64>,
    /// Kind-specific fields beyond the common ones (kept verbatim when read back).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Observation {
    pub fn new(kind: Kind, time: Timestamp, node: NodeName) -> Self {
        Self {
            kind,
            time,
            node,
            ip: None,
            port: None,
            peer_ip: None,
            peer_port: None,
            reason: None,
            count: None,
            service: None,
            pod: None,
            pod_uid: None,
            uncertainty_ns: None,
            extra: serde_json::Map::new(),
        }
    }

    /// How many events the line stands for.
    pub fn weight(&self) -> u64 {
        self.count.unwrap_or(1)
    }

    /// Adds a kind-specific field.
    pub fn with_extra(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// The line as written to the stream (no trailing newline).
    pub fn to_json_line(&self) -> String {
        // Serializing a struct of strings, numbers and maps with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Observations as the stream carries them: one JSON line each (what `analyze` reads).
pub fn to_json_lines(obs: &[Observation]) -> String {
    obs.iter().map(|o| o.to_json_line() + "\n").collect()
}

/// `a − b` in milliseconds (negative when `a` is earlier). Note that jiff's
/// `Span::get_milliseconds` is only the millisecond *component* of a span; this is the total.
pub fn millis_between(a: Timestamp, b: Timestamp) -> f64 {
    let ns = a.as_nanosecond() - b.as_nanosecond();
    ns as f64 / 1e6
}

/// RFC 3339 UTC with exactly nine fractional digits, e.g. `2026-11-22T01:16:45.660197146Z`.
pub fn format_time(t: Timestamp) -> String {
    format!("{t:.9}")
}

fn ser_time<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

fn de_time<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    s.parse::<Timestamp>().map_err(|e| {
        serde::de::Error::custom(format!(
            "time {s:?} is not RFC 3339 (e.g. 2026-11-22T01:16:45.660197146Z): {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_line_round_trips_with_nanosecond_time() {
        let t: Timestamp = "2026-11-22T01:16:45.66Z".parse().unwrap();
        let mut o = Observation::new(Kind::Refused, t, NodeName("vm".into()));
        o.ip = Some("10.244.0.46".parse().unwrap());
        o.port = Some(8080);
        o.reason = Some("NO_SOCKET".into());
        let line = o.to_json_line();
        assert_eq!(
            line,
            r#"{"kind":"refused","time":"2026-11-22T01:16:45.660000000Z","node":"vm","ip":"10.244.0.46","port":8080,"reason":"NO_SOCKET"}"#
        );
        let back: Observation = serde_json::from_str(&line).unwrap();
        assert_eq!(back, o);
    }

    #[test]
    fn every_kind_has_its_wire_name() {
        for k in Kind::ALL {
            let wire = serde_json::to_value(k).unwrap();
            assert_eq!(wire.as_str(), Some(k.as_str()));
        }
        assert_eq!(Kind::ALL.len(), Kind::NAMES.len());
    }

    #[test]
    fn unknown_fields_are_kept() {
        let line = r#"{"kind":"signal","time":"2026-11-22T01:16:45.000000001Z","node":"a","reason":"SIGTERM","pid":42}"#;
        let o: Observation = serde_json::from_str(line).unwrap();
        assert_eq!(o.extra.get("pid"), Some(&serde_json::json!(42)));
        assert_eq!(o.to_json_line(), line);
    }
}
