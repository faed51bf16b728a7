//! The API server's version (`GET /version`, readable by every authenticated user through the
//! `system:public-info-viewer` ClusterRole), read once per command before anything is changed:
//! below the minimum the command stops, otherwise it decides which fields it may write.

use std::time::Duration;

use kube::Client;

use super::{Error, Result};
use crate::kube_version::KubeVersion;

/// The server's version.
pub async fn discover(client: &Client) -> Result<KubeVersion> {
    let info = client
        .apiserver_version()
        .await
        .map_err(Error::api("get /version"))?;
    KubeVersion::from_version_info(&info.git_version, &info.major, &info.minor).ok_or_else(|| {
        Error::UnknownServerVersion(format!(
            "gitVersion {:?}, major {:?}, minor {:?}",
            info.git_version, info.major, info.minor
        ))
    })
}

/// The server's version, or [`Error::UnsupportedServer`] below [`KubeVersion::MINIMUM`].
pub async fn require_supported(client: &Client) -> Result<KubeVersion> {
    let version = discover(client).await?;
    if version.is_supported() {
        Ok(version)
    } else {
        Err(Error::UnsupportedServer {
            version,
            minimum: KubeVersion::MINIMUM,
        })
    }
}

/// The first request to the server, bounded by `limit`: its version, or one line naming the
/// server when it cannot be reached, does not answer, or is not a Kubernetes API server.
pub async fn reach(client: &Client, server: &str, limit: Option<Duration>) -> Result<KubeVersion> {
    let no_answer = || {
        let within = limit
            .and_then(|l| jiff::SignedDuration::try_from(l).ok())
            .map(|l| format!(" within {l:#}"))
            .unwrap_or_default();
        Error::Unreachable {
            server: server.to_owned(),
            reason: format!("no answer{within}"),
            hint: "raise --request-timeout or --timeout if it is only slow",
        }
    };
    let asked = require_supported(client);
    let answer = match limit {
        Some(limit) => tokio::time::timeout(limit, asked)
            .await
            .map_err(|_| no_answer())?,
        None => asked.await,
    };
    let Err(Error::Api { call, cause }) = answer else {
        return answer;
    };
    let not_kubernetes = |answer: String| Error::NotKubernetes {
        server: server.to_owned(),
        answer,
    };
    Err(match &cause {
        // A Kubernetes server always serves /version and says why in a Status.
        kube::Error::Api(status) if status.code == 404 || status.reason == UNPARSED_STATUS => {
            not_kubernetes(format!("HTTP {} without a Kubernetes Status", status.code))
        }
        kube::Error::Api(_) => Error::Api { call, cause },
        kube::Error::SerdeError(_) => not_kubernetes("something other than a version".to_owned()),
        transport => {
            // The innermost cause says what happened ("Connection refused (os error 111)");
            // the layers above it only name kube's and hyper's parts.
            let mut root: &dyn std::error::Error = transport;
            while let Some(next) = root.source() {
                root = next;
            }
            let timed_out = root
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
                || root.to_string() == "deadline has elapsed";
            if timed_out {
                no_answer()
            } else {
                Error::Unreachable {
                    server: server.to_owned(),
                    reason: root.to_string(),
                    hint: "check the server in the kubeconfig and the network",
                }
            }
        }
    })
}

/// The reason kube gives a non-2xx answer whose body is not a `Status`.
const UNPARSED_STATUS: &str = "Failed to parse error data";
