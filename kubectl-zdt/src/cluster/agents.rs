//! Finding the agent pods and talking HTTP to an agent's 127.0.0.1 endpoint through the API
//! server's port-forward (`pods/portforward`), so RBAC governs who reads the observations.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};

use super::{AGENT_PORT, AGENT_SELECTOR, Error, NAMESPACE, Result};

/// How long an agent may take to start answering a request.
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// One agent pod and, when it is not ready, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPod {
    pub pod: String,
    pub node: String,
    pub ready: bool,
    /// The reason it is not ready, in words (the agent's own last line when it exited).
    pub problem: Option<String>,
}

/// The agent pods, one per node; [`Error::NotInstalled`] when there are none.
pub async fn list(client: &Client) -> Result<Vec<AgentPod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let list = pods
        .list(&ListParams::default().labels(AGENT_SELECTOR))
        .await
        .map_err(Error::api(format!(
            "list pods -n {NAMESPACE} -l {AGENT_SELECTOR}"
        )))?;
    if list.items.is_empty() {
        return Err(Error::NotInstalled);
    }
    let mut agents: Vec<AgentPod> = list.items.iter().map(agent_pod).collect();
    agents.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(agents)
}

/// Readiness and the reason an agent pod is not ready, from its status.
pub fn agent_pod(pod: &Pod) -> AgentPod {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_else(|| "(unscheduled)".to_owned());
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let problem = if ready { None } else { Some(problem_of(pod)) };
    AgentPod {
        pod: name,
        node,
        ready,
        problem,
    }
}

/// Why an agent is not ready: the agent's own last line when it exited (no BTF, kernel too old,
/// tracepoint layout mismatch), else the kubelet's reason (image pull, scheduling).
fn problem_of(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first());
    if let Some(c) = container {
        let terminated = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .or_else(|| c.state.as_ref().and_then(|s| s.terminated.as_ref()));
        if let Some(message) = terminated.and_then(|t| t.message.as_deref()) {
            let last = message.trim().lines().last().unwrap_or_default();
            return format!("agent cannot start: {last}");
        }
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or("Waiting");
            return match w.message.as_deref() {
                Some(m) => format!("{reason}: {m}"),
                None => reason.to_owned(),
            };
        }
        if c.state.as_ref().and_then(|s| s.running.as_ref()).is_some() {
            return "running, probes not attached yet".to_owned();
        }
    }
    let unscheduled = status.and_then(|s| s.conditions.as_ref()).and_then(|cs| {
        cs.iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    });
    if let Some(c) = unscheduled {
        return format!(
            "not scheduled: {}",
            c.message.as_deref().unwrap_or("no reason given")
        );
    }
    status
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".to_owned())
}

/// `GET path` on the agent's endpoint through a port-forward to its pod. The response body
/// streams (the connection lives as long as the body is read).
pub async fn get(client: &Client, agent: &AgentPod, path: &str) -> Result<Response<Incoming>> {
    AgentConn::open(client, agent).await?.get(path).await
}

/// The kubelet's report of a failed connection to the pod's port, from the port-forward.
type ForwardError = std::pin::Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// One HTTP/1.1 connection to an agent's endpoint through a port-forward to its pod; requests
/// go one after another on it (the port-forward is set up once: its set-up time is not in
/// any request's round trip).
pub struct AgentConn {
    agent: AgentPod,
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    forward_error: Option<ForwardError>,
}

impl AgentConn {
    pub async fn open(client: &Client, agent: &AgentPod) -> Result<Self> {
        let unreachable = |reason: String| Error::AgentUnreachable {
            node: agent.node.clone(),
            pod: agent.pod.clone(),
            reason,
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
        let mut forwarder = pods
            .portforward(&agent.pod, &[AGENT_PORT])
            .await
            .map_err(|e| unreachable(format!("{e} (is `pods/portforward` in namespace {NAMESPACE} allowed for you? see docs/security.md)")))?;
        let stream = forwarder
            .take_stream(AGENT_PORT)
            .ok_or_else(|| unreachable("the port-forward has no stream".to_owned()))?;
        // The kubelet reports a failed connection to the pod's port on the error channel.
        let mut forward_error: Option<ForwardError> = forwarder
            .take_error(AGENT_PORT)
            .map(|f| Box::pin(f) as ForwardError);
        let (sender, connection) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(c) => c,
                Err(e) => {
                    return Err(unreachable(
                        explain(forward_error.take(), e.to_string()).await,
                    ));
                }
            };
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("port-forwarded connection ended: {e}");
            }
            drop(forwarder);
        });
        Ok(Self {
            agent: agent.clone(),
            sender,
            forward_error,
        })
    }

    /// `GET path`; the body must be read before the next request on this connection.
    pub async fn get(&mut self, path: &str) -> Result<Response<Incoming>> {
        let unreachable = |reason: String| Error::AgentUnreachable {
            node: self.agent.node.clone(),
            pod: self.agent.pod.clone(),
            reason,
        };
        let request = Request::get(path)
            .header("host", format!("127.0.0.1:{AGENT_PORT}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| unreachable(e.to_string()))?;
        if let Err(e) = self.sender.ready().await {
            return Err(unreachable(
                explain(self.forward_error.take(), e.to_string()).await,
            ));
        }
        let response =
            match tokio::time::timeout(RESPONSE_TIMEOUT, self.sender.send_request(request)).await {
                Err(_) => {
                    return Err(unreachable(format!(
                        "no answer to GET {path} within {} s",
                        RESPONSE_TIMEOUT.as_secs()
                    )));
                }
                Ok(Err(e)) => {
                    return Err(unreachable(
                        explain(self.forward_error.take(), e.to_string()).await,
                    ));
                }
                Ok(Ok(r)) => r,
            };
        if !response.status().is_success() {
            // The agent says why in its body's first line (e.g. "keeps no journal").
            let status = response.status();
            let body = tokio::time::timeout(RESPONSE_TIMEOUT, response.into_body().collect()).await;
            let said = body
                .ok()
                .and_then(Result::ok)
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
                .and_then(|s| s.lines().next().map(str::to_owned))
                .filter(|s| !s.is_empty());
            let path = path.split('?').next().unwrap_or(path);
            return Err(unreachable(match said {
                Some(s) => format!("GET {path} answered {status}: {s}"),
                None => format!("GET {path} answered {status}"),
            }));
        }
        Ok(response)
    }

    /// `GET path` and the whole body.
    pub async fn get_bytes(&mut self, path: &str) -> Result<Bytes> {
        let response = self.get(path).await?;
        response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| Error::AgentUnreachable {
                node: self.agent.node.clone(),
                pod: self.agent.pod.clone(),
                reason: e.to_string(),
            })
    }
}

/// The kubelet's message from the port-forward's error channel, else `fallback`.
async fn explain(
    forward_error: Option<impl Future<Output = Option<String>>>,
    fallback: String,
) -> String {
    let detail = match forward_error {
        Some(f) => tokio::time::timeout(std::time::Duration::from_secs(1), f)
            .await
            .ok()
            .flatten(),
        None => None,
    };
    match detail {
        Some(d) => format!("{d} (is the agent listening on 127.0.0.1:{AGENT_PORT}?)"),
        None => fallback,
    }
}

/// `GET path` and the whole body.
pub async fn get_bytes(client: &Client, agent: &AgentPod, path: &str) -> Result<Bytes> {
    AgentConn::open(client, agent).await?.get_bytes(path).await
}
