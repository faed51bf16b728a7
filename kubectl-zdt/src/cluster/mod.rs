//! The CLI's side of a cluster: kubectl-style connection flags, the embedded `deploy/`
//! manifests, `install`/`uninstall`, and `status` through the API server's port-forward to each
//! node agent's 127.0.0.1 endpoint.
//!
//! - `connect`: `--kubeconfig`/`--context`/`-n`/`-A` → a `kube::Client`;
//! - `manifests`: the manifests compiled into the binary, with the image set;
//! - `install`: server-side apply, wait with a progress bar, per-node reasons; `uninstall`;
//! - `agents`: find the agent pods and talk HTTP to each through port-forward;
//! - `status`: one row per node;
//! - `trace`: follow (or start) a rollout with every agent's stream, optional in-cluster
//!   traffic (`workload`: what is traced; `collect`: the resumable streams), then the report;
//! - `history`: the node journals' `GET /history`, and `kubectl zdt history`;
//! - `version`: the server's version (`GET /version`), checked against the minimum.

pub mod agents;
pub mod collect;
pub mod connect;
pub mod history;
pub mod install;
pub mod manifests;
pub mod status;
pub mod trace;
pub mod version;
pub mod workload;

use thiserror::Error;

use crate::kube_version::KubeVersion;

/// Namespace, labels and port shared by the manifests and the code that finds the agents.
pub const NAMESPACE: &str = "zdt-system";
pub const DAEMONSET: &str = "zdt-agent";
/// Label every object `install` creates carries (`uninstall` relies on the list, not on it).
pub const PART_OF: &str = "app.kubernetes.io/part-of=kubectl-zdt";
/// Selects the agent pods.
pub const AGENT_SELECTOR: &str = "app.kubernetes.io/name=zdt-agent";
/// The agent's HTTP endpoint on the node's loopback (see docs/security.md).
pub const AGENT_PORT: u16 = 9476;

/// What can go wrong between the CLI and a cluster. Each message names the fix.
#[derive(Debug, Error)]
pub enum Error {
    #[error("failed to load the kubeconfig{}", path.as_deref().map(|p| format!(" {p}")).unwrap_or_default())]
    Kubeconfig {
        path: Option<String>,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes configuration found (no --kubeconfig, no KUBECONFIG, no ~/.kube/config, not in a cluster): pass --kubeconfig FILE or set KUBECONFIG"
    )]
    NoConfig,
    #[error(
        "{flag} points at a missing file: {paths} (give the path of a kubeconfig, or unset it)"
    )]
    MissingKubeconfig { flag: &'static str, paths: String },
    #[error("cannot reach the API server at {server}: {reason} ({hint})")]
    Unreachable {
        server: String,
        reason: String,
        hint: &'static str,
    },
    #[error(
        "{server} is not a Kubernetes API server: GET /version answered {answer} (check the server in the kubeconfig)"
    )]
    NotKubernetes { server: String, answer: String },
    #[error("failed to create the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("the embedded manifest {file} is invalid: {reason}")]
    Manifest { file: &'static str, reason: String },
    /// The API server's own message, once: kube's error repeats it with the whole `Status`.
    #[error("{call}: {}", describe(cause))]
    Api { call: String, cause: kube::Error },
    #[error("the API server is Kubernetes {version}; kubectl-zdt needs {minimum} or newer")]
    UnsupportedServer {
        version: KubeVersion,
        minimum: KubeVersion,
    },
    #[error("cannot tell the API server's version: {0}")]
    UnknownServerVersion(String),
    #[error(
        "kubectl-zdt's agents are not installed (no pods labelled {AGENT_SELECTOR} in namespace {NAMESPACE}): run `kubectl zdt install`"
    )]
    NotInstalled,
    #[error("the agent on node {node} ({pod}) is not reachable through port-forward: {reason}")]
    AgentUnreachable {
        node: String,
        pod: String,
        reason: String,
    },
    #[error(
        "namespace {namespace} is still being deleted after {seconds} s (an `uninstall` not finished?): wait for `kubectl get namespace {namespace}` to say NotFound, then install again"
    )]
    NamespaceTerminating { namespace: String, seconds: u64 },
    #[error("timed out after {seconds} s waiting for the agents:\n{detail}")]
    NotReady { seconds: u64, detail: String },
    #[error(
        "{workload} not found in namespace {namespace} (use -n NAMESPACE, or check `kubectl get {workload} -n {namespace}`)"
    )]
    WorkloadNotFound { workload: String, namespace: String },
    #[error(
        "no Service in namespace {namespace} selects the pods of {workload} (labels {labels}): trace follows the endpoints of a Service; create one, e.g. `kubectl expose {workload} -n {namespace} --port 80 --target-port 8080`"
    )]
    NoService {
        workload: String,
        namespace: String,
        labels: String,
    },
    #[error("the agents are not ready on {count} node(s); run `kubectl zdt status`:\n{detail}")]
    AgentsNotReady { count: usize, detail: String },
    #[error(
        "the rollout of {workload} did not complete within {seconds} s: {detail} (see `kubectl rollout status {workload} -n {namespace}`)"
    )]
    RolloutStuck {
        workload: String,
        namespace: String,
        seconds: u64,
        detail: String,
    },
    #[error("the traffic pod {pod} did not start within {seconds} s: {reason}")]
    TrafficNotStarted {
        pod: String,
        seconds: u64,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a failed API call with a short description of it.
    pub fn api(call: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let call = call.into();
        move |cause| Self::Api { call, cause }
    }
}

/// One line for a kube error: the server's message and status for a rejected call, the error
/// and its causes otherwise.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if status.reason.is_empty() => {
            format!("{} (HTTP {})", status.message, status.code)
        }
        kube::Error::Api(status) => format!(
            "{} (HTTP {} {})",
            status.message, status.code, status.reason
        ),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                let s_text = s.to_string();
                if !text.contains(&s_text) {
                    text.push_str(": ");
                    text.push_str(&s_text);
                }
                source = s.source();
            }
            text
        }
    }
}
