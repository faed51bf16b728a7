//! A client's failure log → `conn_error` observations on the client's node.
//!
//! The format is the fixtures' `client-requests.jsonl`: one `{"time_ns": N, "error": "ERRNO"}`
//! per failed request and a last `{"ok": N}`. `time_ns` is when the request started: its SYN left
//! then, and that is the moment a node's dataplane chose the backend. The client connected to
//! the Service's ClusterIP, so the line names the Service, not the pod: the engine ties it to a
//! pod only when exactly one of the Service's pods was terminating at that time.

use jiff::Timestamp;
use serde::Deserialize;

use crate::observation::{Kind, NodeName, Observation, ServiceRef};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Line {
    Failure { time_ns: i64, error: String },
    Summary { ok: u64 },
}

#[derive(Debug, thiserror::Error)]
#[error("line {line}: expected {{\"time_ns\": N, \"error\": \"ECONNREFUSED\"}} or {{\"ok\": N}}")]
pub struct ClientLogError {
    pub line: usize,
}

/// The failures as observations, and the number of good requests the log reports.
#[derive(Debug, Default)]
pub struct ClientLog {
    pub observations: Vec<Observation>,
    pub ok: u64,
}

pub fn read(text: &str, node: &NodeName, service: &str) -> Result<ClientLog, ClientLogError> {
    let mut log = ClientLog::default();
    for (i, l) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str::<Line>(l).map_err(|_| ClientLogError { line: i + 1 })? {
            Line::Failure { time_ns, error } => {
                let t = Timestamp::from_nanosecond(i128::from(time_ns))
                    .map_err(|_| ClientLogError { line: i + 1 })?;
                let mut o = Observation::new(Kind::ConnError, t, node.clone());
                o.reason = Some(error);
                o.service = Some(ServiceRef::parse(service));
                log.observations.push(o);
            }
            Line::Summary { ok } => log.ok += ok,
        }
    }
    Ok(log)
}
