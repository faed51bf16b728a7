//! `kubectl zdt install` / `uninstall`: server-side apply of the embedded manifests, then a
//! progress bar until every node's agent is ready, with a reason per node when one cannot start.

use std::{collections::BTreeMap, io::Write as _, process::ExitCode, time::Duration};

use clap::{Args, ValueEnum};
use futures::{StreamExt as _, future::Either, stream};
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject, Patch, PatchParams},
    runtime::{WatchStreamExt as _, reflector, watcher},
};

use super::{
    AGENT_SELECTOR, DAEMONSET, Error, NAMESPACE, Result,
    agents::{self, AgentPod},
    connect::KubeArgs,
    manifests::{self, Manifest},
};
use crate::kube_version::KubeVersion;

/// The field manager our server-side applies are recorded under.
pub const FIELD_MANAGER: &str = "kubectl-zdt";

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The agent image [default: ghcr.io/kubectl-zdt/kubectl-zdt:v<this version>].
    #[arg(long, value_name = "REF", value_parser = manifests::parse_image)]
    pub image: Option<String>,

    /// Change nothing; print the objects (with -o yaml|json) for GitOps, as kubectl's flag:
    /// `client` (alone, `--dry-run`) writes them for the server's version (read from the
    /// cluster, or --server-version); `server` has the API server validate and default them
    /// (admission included) and prints what it would store.
    #[arg(long, value_enum, value_name = "STRATEGY", num_args = 0..=1, require_equals = true, default_missing_value = "client")]
    pub dry_run: Option<DryRun>,

    /// With --dry-run=client: write the objects for this Kubernetes version (e.g. 1.28) without
    /// contacting any server.
    #[arg(long, value_name = "VERSION", requires = "dry_run")]
    pub server_version: Option<KubeVersion>,

    /// Output format of --dry-run.
    #[arg(short = 'o', long, value_enum, default_value_t = ManifestFormat::Yaml)]
    pub output: ManifestFormat,

    /// How long to wait for every agent to be ready, e.g. 90s, 5m.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Return once applied, without waiting for the agents.
    #[arg(long)]
    pub no_wait: bool,
}

/// kubectl's `--dry-run` strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DryRun {
    /// Apply for real (as without the flag).
    None,
    /// Print the objects without sending them.
    Client,
    /// Send them as a dry run (`?dryRun=All`): validated, defaulted, not stored.
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ManifestFormat {
    Yaml,
    Json,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {}

/// `90s`, `5m`, `1h30m` (and ISO 8601 `PT90S`).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration like 90s or 5m: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{s:?} is negative"))
}

/// Applies every object with server-side apply (field manager `kubectl-zdt`, forced: the
/// manifests are ours).
pub async fn apply(client: &Client, objects: &[Manifest]) -> Result<Vec<String>> {
    let applied = apply_with(client, objects, PatchParams::apply(FIELD_MANAGER).force()).await?;
    Ok(applied.iter().map(Manifest::display).collect())
}

/// Applies every object with `params`; returns each as the server answered it.
async fn apply_with(
    client: &Client,
    objects: &[Manifest],
    params: PatchParams,
) -> Result<Vec<Manifest>> {
    let mut applied = Vec::new();
    for m in objects {
        let api = api_for(client, m);
        let answer = api
            .patch(m.name(), &params, &Patch::Apply(&m.object))
            .await
            .map_err(Error::api(format!("apply {}", m.display_namespaced())))?;
        applied.push(Manifest {
            object: answer,
            ..m.clone()
        });
    }
    Ok(applied)
}

fn api_for(client: &Client, m: &Manifest) -> Api<DynamicObject> {
    match m.namespace().filter(|_| m.namespaced) {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &m.resource),
        None => Api::all_with(client.clone(), &m.resource),
    }
}

/// Deletes every object the manifests define, last first; returns what existed.
pub async fn delete(client: &Client, objects: &[Manifest]) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for m in objects.iter().rev() {
        match api_for(client, m)
            .delete(m.name(), &DeleteParams::background())
            .await
        {
            Ok(_) => removed.push(m.display()),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::api(format!("delete {}", m.display()))(e)),
        }
    }
    Ok(removed)
}

/// Agents' state while waiting.
#[derive(Debug, Default)]
struct Progress {
    desired: Option<i32>,
    /// The DaemonSet controller saw the applied spec and scheduled it on every node: the ready
    /// agents are the new ones, not those of an earlier install still running.
    rolled_out: bool,
    pods: Vec<AgentPod>,
}

/// As `kubectl rollout status daemonset` judges it: the controller observed the latest
/// generation, every scheduled node runs a pod of it, and as many are available. The pods'
/// own watch may lag the DaemonSet's (an old agent still ready in it): the controller's count
/// decides.
fn rolled_out(ds: &DaemonSet) -> bool {
    let Some(s) = ds.status.as_ref() else {
        return false;
    };
    let observed = match (ds.metadata.generation, s.observed_generation) {
        (Some(g), Some(o)) => o >= g,
        (Some(_), None) => false,
        // A server that keeps no generation (the test double) has nothing to wait for.
        (None, _) => true,
    };
    let desired = s.desired_number_scheduled;
    observed
        && s.updated_number_scheduled.unwrap_or(0) >= desired
        && s.number_available.unwrap_or(0) >= desired
}

impl Progress {
    fn ready(&self) -> usize {
        self.pods.iter().filter(|p| p.ready).count()
    }

    fn done(&self) -> bool {
        self.rolled_out
            && self
                .desired
                .is_some_and(|d| d > 0 && usize::try_from(d).is_ok_and(|d| self.ready() >= d))
    }

    fn problems(&self) -> BTreeMap<String, String> {
        self.pods
            .iter()
            .filter_map(|p| p.problem.clone().map(|why| (p.node.clone(), why)))
            .collect()
    }
}

/// Watches the DaemonSet and its pods until every scheduled agent is ready; on timeout, the
/// error lists each node that is not ready and why.
pub async fn wait_ready(
    client: &Client,
    timeout: Duration,
    bar: &ProgressBar,
) -> Result<Vec<AgentPod>> {
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let (store, writer) = reflector::store();
    let ds_events = watcher(
        ds,
        watcher::Config::default().fields(&format!("metadata.name={DAEMONSET}")),
    )
    .default_backoff()
    .applied_objects()
    .map(Either::Left)
    .boxed();
    let pod_events = watcher(pods, watcher::Config::default().labels(AGENT_SELECTOR))
        .default_backoff()
        // Every event, InitDone included: the store only holds an initial list once it is done.
        .reflect(writer)
        .map(Either::Right)
        .boxed();
    let mut events = stream::select(ds_events, pod_events);
    let mut progress = Progress::default();
    let mut shown = BTreeMap::new();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { break };
                match event {
                    Either::Left(Ok(ds)) => {
                        progress.desired = ds.status.as_ref().map(|s| s.desired_number_scheduled);
                        progress.rolled_out = rolled_out(&ds);
                    }
                    Either::Right(Ok(_)) => {
                        // An agent on its way out (replaced by an upgrade) is not one of them.
                        progress.pods = store
                            .state()
                            .iter()
                            .filter(|p| p.metadata.deletion_timestamp.is_none())
                            .map(|p| agents::agent_pod(p))
                            .collect();
                        progress.pods.sort_by(|a, b| a.node.cmp(&b.node));
                    }
                    Either::Left(Err(e)) | Either::Right(Err(e)) => {
                        tracing::warn!("watching the agents failed (retrying): {e}");
                    }
                }
                bar.set_length(progress.desired.and_then(|d| u64::try_from(d).ok()).unwrap_or(0));
                bar.set_position(progress.ready() as u64);
                for (node, why) in progress.problems() {
                    if shown.get(&node) != Some(&why) {
                        bar.println(format!("node {node}: {why}"));
                        shown.insert(node, why);
                    }
                }
                if progress.done() {
                    bar.finish_with_message("every agent is ready");
                    return Ok(progress.pods);
                }
            }
            () = &mut deadline => break,
        }
    }
    bar.abandon();
    let mut detail: Vec<String> = progress
        .problems()
        .into_iter()
        .map(|(node, why)| format!("  node {node}: {why}"))
        .collect();
    if progress.desired.unwrap_or(0) == 0 {
        detail.push(format!(
            "  the DaemonSet {NAMESPACE}/{DAEMONSET} has no node to run on yet (check `kubectl -n {NAMESPACE} describe daemonset {DAEMONSET}`)"
        ));
    }
    Err(Error::NotReady {
        seconds: timeout.as_secs(),
        detail: detail.join("\n"),
    })
}

pub fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} agents ready {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

pub async fn install(kube: &KubeArgs, args: &InstallArgs) -> Result<Vec<AgentPod>> {
    let image = args.image.clone().unwrap_or_else(manifests::default_image);
    let cluster = kube.connect().await?;
    let version = cluster.version;
    let objects = manifests::for_server(&image, version)?;
    wait_namespace_gone(&cluster.client, args.timeout).await?;
    for name in apply(&cluster.client, &objects).await? {
        eprintln!("{name} applied (server-side)");
    }
    if args.no_wait {
        return Ok(Vec::new());
    }
    let bar = progress_bar();
    wait_ready(&cluster.client, args.timeout, &bar).await
}

/// An `uninstall` just before leaves the namespace terminating for a while, and the server
/// refuses new objects in it: wait (with a spinner) until it is gone, up to `timeout`.
async fn wait_namespace_gone(client: &Client, timeout: Duration) -> Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    let api: Api<Namespace> = Api::all(client.clone());
    let terminating =
        |ns: Option<Namespace>| ns.is_some_and(|n| n.metadata.deletion_timestamp.is_some());
    let get = || async {
        api.get_opt(NAMESPACE)
            .await
            .map_err(Error::api(format!("get namespace {NAMESPACE}")))
    };
    if !terminating(get().await?) {
        return Ok(());
    }
    let bar = ProgressBar::new_spinner();
    bar.set_message(format!(
        "waiting for namespace {NAMESPACE} (being deleted) to go"
    ));
    bar.enable_steady_tick(Duration::from_millis(120));
    let started = std::time::Instant::now();
    while terminating(get().await?) {
        if started.elapsed() >= timeout {
            bar.finish_and_clear();
            return Err(Error::NamespaceTerminating {
                namespace: NAMESPACE.to_owned(),
                seconds: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bar.finish_and_clear();
    Ok(())
}

/// The objects `--dry-run` prints: for `--server-version` offline, else for the server the
/// kubeconfig names (only its version is read).
pub async fn dry_run_objects(kube: &KubeArgs, args: &InstallArgs) -> Result<Vec<Manifest>> {
    let image = args.image.clone().unwrap_or_else(manifests::default_image);
    if args.dry_run == Some(DryRun::Server) {
        let cluster = kube.connect().await?;
        let objects = manifests::for_server(&image, cluster.version)?;
        let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
        return apply_with(&cluster.client, &objects, params).await;
    }
    let version = match args.server_version {
        Some(v) if !v.is_supported() => {
            return Err(Error::UnsupportedServer {
                version: v,
                minimum: KubeVersion::MINIMUM,
            });
        }
        Some(v) => v,
        None => kube.connect().await?.version,
    };
    manifests::for_server(&image, version)
}

pub fn main(kube: &KubeArgs, args: &InstallArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    if let Some(strategy @ (DryRun::Client | DryRun::Server)) = args.dry_run {
        if strategy == DryRun::Server && args.server_version.is_some() {
            anyhow::bail!(
                "--server-version goes with --dry-run=client: with --dry-run=server the server says its version"
            );
        }
        let objects = crate::process::runtime()?
            .block_on(dry_run_objects(kube, args))
            .context("install --dry-run")?;
        let text = match args.output {
            ManifestFormat::Yaml => manifests::to_yaml(&objects),
            ManifestFormat::Json => {
                let list: Vec<_> = objects.iter().map(|m| &m.object).collect();
                serde_json::to_string_pretty(&serde_json::json!({
                    "apiVersion": "v1", "kind": "List", "items": list
                }))? + "\n"
            }
        };
        std::io::stdout().write_all(text.as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    let agents = match crate::process::runtime()?.block_on(install(kube, args)) {
        Ok(agents) => agents,
        // Its lines, one per node that is not ready, are the answer: the error is shown whole,
        // where a cause is cut to its first line.
        Err(e @ Error::NotReady { .. }) => return Err(e.into()),
        Err(e) => return Err(anyhow::Error::new(e).context("install")),
    };
    if !agents.is_empty() {
        eprintln!(
            "kubectl-zdt agents ready on {} node(s); next: `kubectl zdt status`",
            agents.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn uninstall(kube: &KubeArgs) -> Result<Vec<String>> {
    let objects = manifests::objects(&manifests::default_image())?;
    let cluster = kube.connect().await?;
    delete(&cluster.client, &objects).await
}

pub fn uninstall_main(kube: &KubeArgs, _args: &UninstallArgs) -> anyhow::Result<ExitCode> {
    let removed = crate::process::runtime()?.block_on(uninstall(kube))?;
    if removed.is_empty() {
        eprintln!("nothing to remove: kubectl-zdt is not installed");
    }
    for name in removed {
        eprintln!("{name} deleted");
    }
    Ok(ExitCode::SUCCESS)
}
