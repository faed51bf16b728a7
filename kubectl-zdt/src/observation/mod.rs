//! The observation stream: the contract shared by the agent, the journal, the CLI and the tests
//! (see docs/observations.md). One JSON object per line. Additions are fine; renaming a kind or a
//! field is a breaking change and bumps [`SCHEMA_VERSION`].

mod details;
mod refs;

use std::{fmt, net::IpAddr};

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Map;

pub use details::{
    AgentFields, ApiFields, DataplaneFields, Details, KernelFields, LossFields, ProcessFields,
    ReadinessProbe, Time,
};
pub use refs::{PodRef, PodUid, ServiceName, ServiceRef, WorkloadRef, split_name};

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
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub kind: Kind,
    /// Wall-clock time, RFC 3339 UTC, always written with 9 fractional digits.
    pub time: Timestamp,
    pub node: NodeName,
    /// The pod side / backend.
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
    /// The other side.
    pub peer_ip: Option<IpAddr>,
    pub peer_port: Option<u16>,
    /// Kernel reason or errno name, e.g. `NO_SOCKET`, `ECONNREFUSED`, `SIGTERM`.
    pub reason: Option<String>,
    /// Number of events this line stands for, when aggregated (absent means 1).
    pub count: Option<u64>,
    /// `ClusterIP:port` or `namespace/name` of the Service.
    pub service: Option<ServiceRef>,
    pub pod: Option<PodRef>,
    pub pod_uid: Option<PodUid>,
    /// Half-width of the interval the true time lies in (clock conversion), in nanoseconds.
    pub uncertainty_ns: Option<u64>,
    /// Kind-specific fields, typed.
    pub details: Details,
    /// Fields no reader knows (or values not of their field's type), kept verbatim.
    pub unknown: Map<String, serde_json::Value>,
}

/// The line as the stream carries it: the common fields, then every other field.
#[derive(Serialize, Deserialize)]
#[serde(bound(
    deserialize = "N: Deserialize<'de>, P: Deserialize<'de>, S: Deserialize<'de>, \
    U: Deserialize<'de>, M: Deserialize<'de>"
))]
struct Wire<N, P, S, U, M> {
    kind: Kind,
    #[serde(serialize_with = "ser_time", deserialize_with = "de_time")]
    time: Timestamp,
    node: N,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<M>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod: Option<P>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod_uid: Option<U>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uncertainty_ns: Option<u64>,
    #[serde(flatten)]
    rest: Map<String, serde_json::Value>,
}

impl Serialize for Observation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            kind: self.kind,
            time: self.time,
            node: &self.node,
            ip: self.ip,
            port: self.port,
            peer_ip: self.peer_ip,
            peer_port: self.peer_port,
            reason: self.reason.as_ref(),
            count: self.count,
            service: self.service.as_ref(),
            pod: self.pod.as_ref(),
            pod_uid: self.pod_uid.as_ref(),
            uncertainty_ns: self.uncertainty_ns,
            rest: self.other_fields(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Observation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::<NodeName, PodRef, ServiceRef, PodUid, String>::deserialize(d)?;
        let mut unknown = w.rest;
        let details = Details::take(&mut unknown);
        Ok(Self {
            kind: w.kind,
            time: w.time,
            node: w.node,
            ip: w.ip,
            port: w.port,
            peer_ip: w.peer_ip,
            peer_port: w.peer_port,
            reason: w.reason,
            count: w.count,
            service: w.service,
            pod: w.pod,
            pod_uid: w.pod_uid,
            uncertainty_ns: w.uncertainty_ns,
            details,
            unknown,
        })
    }
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
            details: Details::default(),
            unknown: Map::new(),
        }
    }

    /// How many events the line stands for.
    pub fn weight(&self) -> u64 {
        self.count.unwrap_or(1)
    }

    /// Adds a kind-specific field as a line read from the stream would carry it: typed when a
    /// family knows the key, else kept as unknown. For lines written by hand (tests, captures);
    /// producers set [`Observation::details`].
    pub fn with_extra(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        let mut map = self.other_fields();
        map.insert(key.to_owned(), value.into());
        self.details = Details::take(&mut map);
        self.unknown = map;
        self
    }

    /// Every field beyond the common ones, typed and unknown, as the line carries them.
    pub fn other_fields(&self) -> Map<String, serde_json::Value> {
        let mut map = self.unknown.clone();
        self.details.write(&mut map);
        map
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

/// `s` as RFC 3339: the form [`format_time`] writes (UTC, nine fractional digits, 30 bytes)
/// read directly, anything else by jiff; the same answer either way (a sixth of a line's
/// reading was jiff's general parser).
pub fn parse_time(s: &str) -> Result<Timestamp, jiff::Error> {
    fast_time(s.as_bytes()).map_or_else(|| s.parse(), Ok)
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` with every field in its range, else `None`.
fn fast_time(b: &[u8]) -> Option<Timestamp> {
    if b.len() != 30
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[29] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| {
        b[r].iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let nanos = num(20..29)?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days since 1970-01-01 of the proleptic Gregorian date (eras of 400 years from March).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Timestamp::new(seconds, i32::try_from(nanos).ok()?).ok()
}

fn de_time<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    parse_time(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "time {s:?} is not RFC 3339 (e.g. 2026-11-22T01:16:45.660197146Z): {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn a_time_reads_as_jiff_reads_it(
            seconds in Timestamp::MIN.as_second()..=Timestamp::MAX.as_second(),
            nanos in 0i32..1_000_000_000,
        ) {
            let t = Timestamp::new(seconds, nanos).unwrap();
            let text = format_time(t);
            proptest::prop_assert_eq!(parse_time(&text).ok(), Some(t), "{}", text);
        }

        #[test]
        fn any_thirty_bytes_read_as_jiff_reads_them(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{9}Z") {
            proptest::prop_assert_eq!(parse_time(&text).ok(), text.parse::<Timestamp>().ok(), "{}", text);
        }
    }

    #[test]
    fn a_time_out_of_range_or_in_another_form_reads_as_jiff_reads_it() {
        for text in [
            "2026-11-22T01:16:45.660197146Z",
            "2024-02-29T23:59:59.999999999Z",
            "2023-02-29T00:00:00.000000000Z",
            "2100-02-29T00:00:00.000000000Z",
            "2000-02-29T00:00:00.000000000Z",
            "2026-04-31T00:00:00.000000000Z",
            "2026-13-01T00:00:00.000000000Z",
            "2026-00-01T00:00:00.000000000Z",
            "2026-01-00T00:00:00.000000000Z",
            "2026-01-01T24:00:00.000000000Z",
            "2026-01-01T23:60:00.000000000Z",
            "2016-12-31T23:59:60.000000000Z",
            "1970-01-01T00:00:00.000000000Z",
            "1969-12-31T23:59:59.999999999Z",
            "0000-01-01T00:00:00.000000000Z",
            "2026-11-22t01:16:45.660197146z",
            "2026-11-22T01:16:45.660197146+00:00",
            "2026-11-22T01:16:45.66Z",
            "2026-11-22T01:16:45Z",
            "2026-11-22T01:16:4a.660197146Z",
            "+2026-11-22T01:16:45.66019714Z",
            "2026-11-22 01:16:45.660197146Z",
        ] {
            assert_eq!(
                parse_time(text).ok(),
                text.parse::<Timestamp>().ok(),
                "{text}"
            );
        }
    }

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

    /// Every line of the recorded streams (real clusters, the golden scenarios): parses, every
    /// field of it is typed, and it writes back as the same JSON value.
    #[test]
    fn every_recorded_line_reads_typed_and_writes_back_the_same() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut lines = 0;
        for dir in ["real-cluster", "correlate"] {
            let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                .collect();
            files.sort();
            assert!(!files.is_empty(), "no streams in {dir}");
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap();
                for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
                    let at = format!("{}:{}", file.display(), n + 1);
                    let o: Observation = serde_json::from_str(line).expect(&at);
                    assert!(o.unknown.is_empty(), "{at}: untyped {:?}", o.unknown);
                    let written: serde_json::Value = serde_json::to_value(&o).unwrap();
                    let read: serde_json::Value = serde_json::from_str(line).unwrap();
                    assert_eq!(written, read, "{at}");
                    lines += 1;
                }
            }
        }
        assert!(lines > 30_000, "{lines} lines");
    }

    /// A field of the wrong type or written another way (a time without nine digits, an
    /// address not as Rust writes it) stays as it was, and reads as absent.
    #[test]
    fn a_value_that_does_not_read_back_exactly_is_kept_verbatim() {
        let line = r#"{"kind":"flow_new","time":"2026-11-22T01:16:45.000000001Z","node":"a","service":"[fd00:0::a]:80","first_time":"2026-11-22T01:16:45Z","pid":"42","protocol":"tcp"}"#;
        let o: Observation = serde_json::from_str(line).unwrap();
        assert_eq!(o.details.dataplane().first_time, None);
        assert_eq!(o.details.process().pid, None);
        assert_eq!(o.details.dataplane().protocol.as_deref(), Some("tcp"));
        assert_eq!(o.service.as_ref().and_then(ServiceRef::frontend), None);
        assert_eq!(
            serde_json::to_value(&o).unwrap(),
            serde_json::from_str::<serde_json::Value>(line).unwrap()
        );
        // A line the agent writes comes back byte for byte: common fields first, then the
        // others in key order.
        let agent = r#"{"kind":"flow_new","time":"2026-11-22T01:16:45.000000001Z","node":"a","ip":"10.244.0.5","port":8080,"count":3,"service":"10.96.0.10:80","first_time":"2026-11-22T01:16:44.900000000Z","protocol":"tcp","zz":1}"#;
        let o: Observation = serde_json::from_str(agent).unwrap();
        assert_eq!(o.to_json_line(), agent);
    }

    /// Each family writes its fields under the keys docs/observations.md documents, and reads
    /// them back.
    #[test]
    fn every_typed_field_has_its_documented_key() {
        let docs = include_str!("../../../docs/observations.md");
        let t = Time("2026-11-22T01:16:45.66Z".parse().unwrap());
        let s = || Some("x".to_owned());
        let mut o = Observation::new(Kind::Signal, t.0, NodeName("a".into()));
        *o.details.process_mut() = ProcessFields {
            pid: Some(1),
            comm: s(),
            sender: s(),
            sender_pid: Some(2),
            bind: s(),
        };
        *o.details.kernel_mut() = KernelFields {
            netns: Some(3),
            ifname: s(),
            gave_up: s(),
            probe: s(),
            peer_pod: Some("default/web-1".into()),
            peer_pod_uid: Some("uid".into()),
            source: s(),
            lost_since: Some(t),
            last_time: Some(t),
        };
        *o.details.loss_mut() = LossFields {
            since: Some(t),
            program: s(),
        };
        *o.details.agent_mut() = AgentFields {
            schema: s(),
            version: s(),
            kernel: s(),
            probes: Some(vec!["p".into()]),
            watch: Some(vec![]),
            clock: s(),
            offset_change_ns: Some(-4),
        };
        *o.details.dataplane_mut() = DataplaneFields {
            mode: s(),
            modes: Some(vec![]),
            routes: Some(5),
            triggers: Some(vec![]),
            protocol: s(),
            detect_ns: Some(6),
            commits: Some(2),
            frontend: s(),
            service_name: s(),
            read_from: s(),
            swap_bounds: s(),
            syscall_ns: Some(7),
            reported_at: s(),
            first_time: Some(t),
        };
        *o.details.api_mut() = ApiFields {
            workload: Some(WorkloadRef::new("deployment", "web")),
            container: s(),
            readiness_probe: Some(ReadinessProbe {
                kind: "tcp_socket".into(),
                port: Some(8080.into()),
                path: None,
                initial_delay_s: Some(0),
                period_s: Some(10),
            }),
            grace_period_s: Some(30),
            template_hash: s(),
            instrument: Some(true),
            pod_node: s(),
            cluster_ip: s(),
            seen: s(),
            namespace: s(),
            replicas: Some(3),
            strategy: s(),
            max_unavailable: Some("25%".into()),
            max_surge: Some(1.into()),
        };
        let fields = o.other_fields();
        let keys: Vec<&str> = Details::KEYS
            .iter()
            .flat_map(|k| k.iter().copied())
            .collect();
        let written: Vec<&str> = fields.keys().map(String::as_str).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(written, sorted, "every field written, once");
        for key in keys {
            assert!(
                [
                    format!("`{key}`"),
                    format!("`{key}:"),
                    format!("`\"{key}\":")
                ]
                .iter()
                .any(|k| docs.contains(k.as_str())),
                "docs/observations.md does not document `{key}`"
            );
        }
        let back: Observation = serde_json::from_str(&o.to_json_line()).unwrap();
        assert_eq!(back, o);
        assert!(back.unknown.is_empty());
    }

    #[test]
    fn unknown_fields_are_kept() {
        let line = r#"{"kind":"signal","time":"2026-11-22T01:16:45.000000001Z","node":"a","reason":"SIGTERM","pid":42}"#;
        let o: Observation = serde_json::from_str(line).unwrap();
        assert_eq!(o.details.process().pid, Some(42));
        assert_eq!(o.to_json_line(), line);
    }
}
