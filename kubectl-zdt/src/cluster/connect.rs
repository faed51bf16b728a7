//! Connection flags copied from kubectl (`--kubeconfig`, `--context`, `--request-timeout`;
//! `-n`, `-A` on the commands where they mean something) and
//! the client they produce, checked against the server's version before it is handed out.

use std::time::Duration;

use clap::Args;
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use super::{Error, Result, version};
use crate::kube_version::KubeVersion;

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

    /// From the command's `-n` ([`Namespace`], [`Namespaces`]).
    #[arg(skip)]
    pub namespace: Option<String>,

    /// From the command's `-A` ([`Namespaces`]).
    #[arg(skip)]
    pub all_namespaces: bool,

    /// How long to wait for any single server request (e.g. 1s, 2m; a bare number is seconds,
    /// 0 waits forever), as kubectl's flag. Also bounds reaching the server.
    #[arg(long, global = true, value_name = "DURATION", default_value = "0", value_parser = parse_request_timeout)]
    pub request_timeout: Duration,

    /// Set by commands with a --timeout: reaching the server must not take longer.
    #[arg(skip)]
    pub reach_within: Option<Duration>,
}

/// `-n` of the commands about one workload (trace).
#[derive(Debug, Clone, Default, Args)]
pub struct Namespace {
    /// The namespace of the workload [default: the context's namespace].
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

/// `-n` and `-A` of the commands that can span namespaces (history, recommend).
#[derive(Debug, Clone, Default, Args)]
pub struct Namespaces {
    /// Only this namespace [default: the context's namespace].
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
}

/// kubectl's `--request-timeout`: a bare number is seconds (zero: no limit).
fn parse_request_timeout(s: &str) -> std::result::Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => super::install::parse_duration(s),
    }
}

/// A client, the namespace to use when none is given, and the server's version (read once, as
/// the first request: below [`KubeVersion::MINIMUM`] no client is handed out).
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
    pub version: KubeVersion,
}

impl KubeArgs {
    /// The bound on reaching the server: the shorter of --request-timeout and the command's
    /// --timeout.
    fn reach_limit(&self) -> Option<Duration> {
        let request = (!self.request_timeout.is_zero()).then_some(self.request_timeout);
        match (request, self.reach_within) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Builds the client the way kubectl would from these flags and reads the server's
    /// version with it.
    pub async fn connect(&self) -> Result<Cluster> {
        let mut config = self.config().await?;
        let limit = self.reach_limit();
        if let Some(limit) = limit {
            config.connect_timeout = Some(limit);
        }
        if !self.request_timeout.is_zero() {
            config.read_timeout = Some(self.request_timeout);
        }
        let server = config.cluster_url.to_string();
        let server = server.trim_end_matches('/').to_owned();
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(Error::Client)?;
        let version = version::reach(&client, &server, limit).await?;
        Ok(Cluster {
            client,
            namespace,
            version,
        })
    }

    async fn config(&self) -> Result<Config> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            cluster: None,
            user: None,
        };
        let loaded = |path: Option<String>| move |source| Error::Kubeconfig { path, source };
        if let Some(path) = &self.kubeconfig {
            let shown = path.display().to_string();
            if !path.exists() {
                return Err(Error::MissingKubeconfig {
                    flag: "--kubeconfig",
                    paths: shown,
                });
            }
            let kubeconfig = Kubeconfig::read_from(path).map_err(loaded(Some(shown.clone())))?;
            return Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(loaded(Some(shown)));
        }
        if let Some(env) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
            // kubectl merges the files that exist and ignores the others; none is an error.
            if !std::env::split_paths(&env).any(|p| p.exists()) {
                return Err(Error::MissingKubeconfig {
                    flag: "KUBECONFIG",
                    paths: env.to_string_lossy().into_owned(),
                });
            }
            return Config::from_kubeconfig(&options)
                .await
                .map_err(loaded(Some(env.to_string_lossy().into_owned())));
        }
        let home = std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".kube/config"));
        if home.as_ref().is_some_and(|p| p.exists()) || self.context.is_some() {
            return Config::from_kubeconfig(&options)
                .await
                .map_err(loaded(home.map(|p| p.display().to_string())));
        }
        Config::incluster().map_err(|_| Error::NoConfig)
    }
}
