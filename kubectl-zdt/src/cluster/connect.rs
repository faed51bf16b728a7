//! Connection flags copied from kubectl (`--kubeconfig`, `--context`, `-n`, `-A`) and the
//! client they produce.

use clap::Args;
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use super::{Error, Result};

/// kubectl's connection flags.
#[derive(Debug, Clone, Default, Args)]
pub struct KubeArgs {
    /// Path to the kubeconfig file to use [default: $KUBECONFIG, then ~/.kube/config, then
    /// in-cluster].
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<std::path::PathBuf>,

    /// The name of the kubeconfig context to use.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// The namespace of the workload [default: the context's namespace].
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Every namespace (where it applies).
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
}

/// A client and the namespace to use when none is given.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
}

impl KubeArgs {
    /// Builds the client the way kubectl would from these flags.
    pub async fn connect(&self) -> Result<Cluster> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            cluster: None,
            user: None,
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
                        path: Some(path.display().to_string()),
                        source,
                    })?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|source| Error::Kubeconfig {
                        path: Some(path.display().to_string()),
                        source,
                    })?
            }
            (None, Some(_)) => Config::from_kubeconfig(&options)
                .await
                .map_err(|source| Error::Kubeconfig { path: None, source })?,
            (None, None) => Config::infer().await.map_err(Error::NoConfig)?,
        };
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(Error::Client)?;
        Ok(Cluster { client, namespace })
    }
}
