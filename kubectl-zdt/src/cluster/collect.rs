//! Following every agent's observation stream through port-forward for the length of a trace.
//! A stream that breaks (port-forward dropped, agent restarted) is resumed from the next
//! journal number, so nothing the agent journaled is missed or read twice.

use std::time::Duration;

use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use kube::Client;
use tokio::sync::{mpsc, watch};

use super::agents::{self, AgentPod};
use crate::{
    agent::serve::{AgentStatus, FIRST_SEQ_HEADER, JOURNAL_EVICTED},
    observation::{Kind, Observation},
};

/// Where a follower is in an agent's journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position(pub u64);

/// The next journal number of an agent (what it journals from now on is new).
pub async fn position(client: &Client, agent: &AgentPod) -> super::Result<Position> {
    let body = agents::get_bytes(client, agent, "/status").await?;
    let status: AgentStatus =
        serde_json::from_slice(&body).map_err(|e| super::Error::AgentUnreachable {
            node: agent.node.clone(),
            pod: agent.pod.clone(),
            reason: format!("unreadable status: {e}"),
        })?;
    Ok(Position(status.observations))
}

/// Sends the agent's observations from `from` on until `stop` turns true, then drains what the
/// agent already had (one last non-following read) and returns.
pub async fn follow(
    client: Client,
    agent: AgentPod,
    from: Position,
    tx: mpsc::Sender<Observation>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next = from.0;
    loop {
        let stopping = *stop.borrow();
        let path = format!(
            "/observations?from={next}{}",
            if stopping { "" } else { "&follow=true" }
        );
        match agents::get(&client, &agent, &path).await {
            Ok(response) => {
                let first = response
                    .headers()
                    .get(FIRST_SEQ_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(next);
                next = first;
                let mut body = response.into_body().into_data_stream();
                let mut partial = Vec::new();
                loop {
                    let chunk = tokio::select! {
                        chunk = body.next() => chunk,
                        _ = stop.changed(), if !stopping => break,
                    };
                    let Some(Ok(chunk)) = chunk else { break };
                    partial.extend_from_slice(&chunk);
                    while let Some(end) = partial.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=end).collect();
                        match serde_json::from_slice::<Observation>(&line) {
                            Ok(o) => {
                                let evicted = o.kind == Kind::Loss
                                    && o.reason.as_deref() == Some(JOURNAL_EVICTED);
                                if !evicted {
                                    next += 1;
                                }
                                if tx.send(o).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                next += 1;
                                tracing::warn!("node {}: unreadable observation: {e}", agent.node);
                            }
                        }
                    }
                }
                if stopping {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!("{e} (retrying)");
                if stopping {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
