//! The API server's version (`GET /version`, readable by every authenticated user through the
//! `system:public-info-viewer` ClusterRole), read once per command before anything is changed:
//! below the minimum the command stops, otherwise it decides which fields it may write.

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
