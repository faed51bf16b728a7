//! Reading observation streams line by line: the agent's stdout, a journal export
//! (`journalctl -o cat`, or `-o json` whose `MESSAGE` holds the line), or a user's capture.
//!
//! A bad line is reported with its number and what was expected, and the rest is still read:
//! one corrupt line in a night of journal must not hide the rollout in it.

use serde_json::Value;

use crate::observation::{Kind, Observation};

/// What is wrong with one line, for `FILE:LINE: …` messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("not JSON ({0}); expected one observation object per line")]
    NotJson(String),
    #[error(
        "a JSON {0}, expected an object like {{\"kind\":\"refused\",\"time\":\"…\",\"node\":\"…\"}}"
    )]
    NotAnObject(&'static str),
    #[error(
        "missing field \"{0}\"; every observation has \"kind\", \"time\" (RFC 3339) and \"node\""
    )]
    MissingField(&'static str),
    #[error("unknown kind {0:?}; expected one of {KINDS}")]
    UnknownKind(String),
    #[error("field \"{field}\" {problem}")]
    WrongType {
        field: &'static str,
        problem: String,
    },
}

const KINDS: &str = "refused, reset, conn_error, syn_retransmit, listener_open, listener_closed, signal, exec, exit, \
netns_gone, dataplane_added, dataplane_removed, flow_new, loss, agent_start, clock_sync, pod_deleting, \
endpoint_terminating, endpoint_removed, endpoint_ready, pod_ready, pod_created, rollout_start, rollout_end";

/// A problem and where: 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct LineError {
    pub line: u64,
    pub problem: LineProblem,
}

/// Parses one line. Blank lines are `Ok(None)`.
pub fn parse_line(line: &str) -> Result<Option<Observation>, LineProblem> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    if let Ok(o) = serde_json::from_str::<Observation>(line) {
        return Ok(Some(o));
    }
    let value: Value =
        serde_json::from_str(line).map_err(|e| LineProblem::NotJson(e.to_string()))?;
    // journalctl -o json: the observation is the MESSAGE of the journal entry.
    if let Some(Value::String(message)) = value.get("MESSAGE")
        && value.get("kind").is_none()
    {
        return parse_line(message);
    }
    Err(diagnose(&value))
}

/// A field, what it must be, and the test.
type FieldCheck = (&'static str, &'static str, fn(&Value) -> bool);

/// Says precisely why `value` is not an observation (the fast path already failed).
fn diagnose(value: &Value) -> LineProblem {
    let Some(obj) = value.as_object() else {
        return LineProblem::NotAnObject(match value {
            Value::Array(_) => "array",
            Value::String(_) => "string",
            Value::Number(_) => "number",
            Value::Bool(_) => "boolean",
            _ => "null",
        });
    };
    for field in ["kind", "time", "node"] {
        if !obj.contains_key(field) {
            return LineProblem::MissingField(field);
        }
    }
    match &obj["kind"] {
        Value::String(k) if serde_json::from_value::<Kind>(Value::String(k.clone())).is_err() => {
            return LineProblem::UnknownKind(k.clone());
        }
        Value::String(_) => {}
        other => return wrong("kind", "a string", other),
    }
    match &obj["time"] {
        Value::String(s) if s.parse::<jiff::Timestamp>().is_err() => {
            return LineProblem::WrongType {
                field: "time",
                problem: format!(
                    "is {s:?}, expected RFC 3339 UTC like 2026-11-22T01:16:45.660197146Z"
                ),
            };
        }
        Value::String(_) => {}
        other => return wrong("time", "an RFC 3339 string", other),
    }
    let checks: [FieldCheck; 11] = [
        ("node", "a string", |v| v.is_string()),
        ("ip", "an IPv4 or IPv6 address string", |v| {
            v.as_str()
                .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok())
        }),
        ("peer_ip", "an IPv4 or IPv6 address string", |v| {
            v.as_str()
                .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok())
        }),
        ("port", "a port number 0-65535", |v| {
            v.as_u64().is_some_and(|p| p <= 65535)
        }),
        ("peer_port", "a port number 0-65535", |v| {
            v.as_u64().is_some_and(|p| p <= 65535)
        }),
        ("count", "a non-negative integer", |v| v.as_u64().is_some()),
        ("uncertainty_ns", "a non-negative integer", |v| {
            v.as_u64().is_some()
        }),
        ("reason", "a string", |v| v.is_string()),
        ("service", "a string", |v| v.is_string()),
        ("pod", "a string (namespace/name)", |v| v.is_string()),
        ("pod_uid", "a string", |v| v.is_string()),
    ];
    for (field, expected, ok) in checks {
        if let Some(v) = obj.get(field)
            && !ok(v)
        {
            return wrong(field, expected, v);
        }
    }
    LineProblem::NotJson("unreadable observation".to_owned())
}

fn wrong(field: &'static str, expected: &str, got: &Value) -> LineProblem {
    LineProblem::WrongType {
        field,
        problem: format!("is {got}, expected {expected}"),
    }
}

/// Everything readable in `text`, and a problem per unreadable line.
pub fn parse_all(text: &str) -> (Vec<Observation>, Vec<LineError>) {
    let mut obs = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in text.lines().enumerate() {
        match parse_line(line) {
            Ok(Some(o)) => obs.push(o),
            Ok(None) => {}
            Err(problem) => errors.push(LineError {
                line: n as u64 + 1,
                problem,
            }),
        }
    }
    (obs, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"kind":"refused","time":"2026-11-22T01:16:45.660197146Z","node":"vm","ip":"10.244.0.46","port":8080}"#;

    #[test]
    fn a_bad_line_in_the_middle_is_reported_and_the_rest_is_read() {
        let text = format!("{GOOD}\nthis is not json\n\n{GOOD}\n");
        let (obs, errors) = parse_all(&text);
        assert_eq!(obs.len(), 2);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 2);
        assert!(matches!(errors[0].problem, LineProblem::NotJson(_)));
    }

    #[test]
    fn each_kind_of_bad_line_says_what_was_expected() {
        let cases = [
            (r#"[1,2]"#, LineProblem::NotAnObject("array")),
            (
                r#"{"time":"2026-11-22T01:16:45Z","node":"a"}"#,
                LineProblem::MissingField("kind"),
            ),
            (
                r#"{"kind":"refused","node":"a"}"#,
                LineProblem::MissingField("time"),
            ),
            (
                r#"{"kind":"teleported","time":"2026-11-22T01:16:45Z","node":"a"}"#,
                LineProblem::UnknownKind("teleported".into()),
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_line(line).unwrap_err(), expected, "{line}");
        }
        let port = parse_line(
            r#"{"kind":"refused","time":"2026-11-22T01:16:45Z","node":"a","port":"http"}"#,
        )
        .unwrap_err();
        assert_eq!(
            port.to_string(),
            "field \"port\" is \"http\", expected a port number 0-65535"
        );
        let time = parse_line(r#"{"kind":"refused","time":"yesterday","node":"a"}"#).unwrap_err();
        assert!(matches!(time, LineProblem::WrongType { field: "time", .. }));
    }

    #[test]
    fn a_journal_json_export_is_read_through_its_message() {
        let entry = serde_json::json!({"__REALTIME_TIMESTAMP": "1", "MESSAGE": GOOD}).to_string();
        let o = parse_line(&entry).unwrap().unwrap();
        assert_eq!(o.kind, Kind::Refused);
    }
}
