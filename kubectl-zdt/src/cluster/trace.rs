//! `kubectl zdt trace deployment/NAME`: follow the next rollout (or start one with
//! `--restart`), collect every agent's observations through port-forward, optionally run the
//! in-cluster request loop (`--traffic RPS`), and end with the correlation report.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::Args;
use futures::{StreamExt as _, future::Either, stream};
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::{
    DAEMONSET, Error, NAMESPACE, Result, agents, collect,
    connect::KubeArgs,
    install::parse_duration,
    workload::{self, Progress, WorkloadTarget},
};
use crate::{
    convert::client_log,
    correlate::{self, Options, Report, Scope},
    observation::{Kind, NodeName, Observation},
    report::{self, Format},
};

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The workload: deployment/NAME, statefulset/NAME or daemonset/NAME.
    #[arg(value_name = "KIND/NAME")]
    pub workload: WorkloadTarget,

    #[command(flatten)]
    pub namespace: super::connect::Namespace,

    /// Start the rollout now (as `kubectl rollout restart` does) instead of waiting for the
    /// next one.
    #[arg(long)]
    pub restart: bool,

    /// Run an in-cluster request loop at this many requests per second (1 to 10000) against
    /// the workload's Service's ClusterIP during the rollout, and reconcile what it saw with
    /// the kernel.
    #[arg(long, value_name = "RPS", value_parser = crate::traffic::rps_parser())]
    pub traffic: Option<u32>,

    /// Image of the traffic pod [default: the agents' image].
    #[arg(long, value_name = "REF", value_parser = super::manifests::parse_image)]
    pub traffic_image: Option<String>,

    /// Give up when the rollout has not completed after this long, e.g. 90s, 10m.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Keep collecting this long after the rollout completed (late dataplane updates).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub settle: Duration,

    /// Report format: table, wide, json or yaml.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,

    /// Also write the self-contained HTML report to this file.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// Also save every observation collected (JSON lines, `kubectl zdt analyze` reads them).
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,

    /// Safety margin added to the advised preStop and grace period, in milliseconds
    /// (at most an hour).
    #[arg(long, default_value_t = 500, value_name = "MS", value_parser = crate::analyze::parse_margin_ms)]
    pub margin_ms: u64,
}

/// What a trace produced.
#[derive(Debug)]
pub struct Traced {
    pub report: Report,
    pub observations: Vec<Observation>,
    /// Requests the traffic loop completed, and those that failed.
    pub traffic: Option<(u64, u64)>,
    /// Why the traffic loop gave no (or only part of its) result, in its pod's own words.
    pub traffic_problem: Option<String>,
}

/// The in-cluster request loop's pod.
struct TrafficPod {
    api: Api<Pod>,
    name: String,
    service: String,
}

impl TrafficPod {
    async fn start(
        client: &Client,
        namespace: &str,
        workload: &WorkloadTarget,
        target: &str,
        service: String,
        rps: u32,
        image: String,
    ) -> Result<Self> {
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let name = format!("{}{}", correlate::TRAFFIC_POD_PREFIX, workload.name);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "kubectl-zdt",
                                                   "app.kubernetes.io/component": "traffic"}},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 5,
                "containers": [{
                    "name": "traffic", "image": image, "imagePullPolicy": "IfNotPresent",
                    "args": ["traffic", "--target", target, "--rps", rps.to_string()],
                    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                        "runAsNonRoot": true, "runAsUser": 65532,
                                        "capabilities": {"drop": ["ALL"]}}
                }]
            }
        }))
        .map_err(|e| Error::Manifest {
            file: "traffic pod",
            reason: e.to_string(),
        })?;
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Left over from an interrupted trace: replace it.
                let _ = api.delete(&name, &DeleteParams::default()).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                api.create(&PostParams::default(), &pod)
                    .await
                    .map_err(Error::api(format!("create pod {name} -n {namespace}")))?;
            }
            Err(e) => return Err(Error::api(format!("create pod {name} -n {namespace}"))(e)),
        }
        let this = Self { api, name, service };
        this.wait_running(Duration::from_secs(120)).await?;
        Ok(this)
    }

    async fn wait_running(&self, limit: Duration) -> Result<()> {
        let mut pods = watcher(
            self.api.clone(),
            watcher::Config::default().fields(&format!("metadata.name={}", self.name)),
        )
        .default_backoff()
        .applied_objects()
        .boxed();
        let mut last = "Pending".to_owned();
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => break,
                pod = pods.next() => match pod {
                    Some(Ok(pod)) => {
                        let status = pod.status.unwrap_or_default();
                        let phase = status.phase.unwrap_or_default();
                        if phase == "Running" {
                            return Ok(());
                        }
                        let waiting = status.container_statuses.unwrap_or_default().into_iter()
                            .find_map(|c| c.state.and_then(|s| s.waiting))
                            .map(|w| format!("{}: {}", w.reason.unwrap_or_default(), w.message.unwrap_or_default()));
                        last = waiting.unwrap_or(phase);
                        if matches!(last.as_str(), "Failed" | "Succeeded") {
                            break;
                        }
                    }
                    Some(Err(e)) => tracing::warn!("watching pod {} failed (retrying): {e}", self.name),
                    None => break,
                },
            }
        }
        Err(Error::TrafficNotStarted {
            pod: self.name.clone(),
            seconds: limit.as_secs(),
            reason: last,
        })
    }

    /// The loop's log as client observations on its node, then the pod is deleted. A loop
    /// that failed still gives what it logged before, and its own words on why (the lines of
    /// its log that are not results, its termination message).
    async fn finish(self) -> (Vec<Observation>, u64, Option<String>) {
        let pod = self.api.get(&self.name).await.ok();
        let node = pod
            .as_ref()
            .and_then(|p| p.spec.as_ref())
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| "unknown".to_owned());
        let terminated = pod
            .and_then(|p| p.status)
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.into_iter().next())
            .and_then(|c| c.state)
            .and_then(|s| s.terminated)
            .filter(|t| t.exit_code != 0);
        let log = self.api.logs(&self.name, &Default::default()).await;
        let _ = self.api.delete(&self.name, &DeleteParams::default()).await;
        let log = match log {
            Ok(log) => log,
            Err(e) => {
                return (
                    Vec::new(),
                    0,
                    Some(format!(
                        "the traffic pod {}: its log is unavailable: {e}",
                        self.name
                    )),
                );
            }
        };
        // Results are JSON lines; anything else is the loop's own message (e.g. its error).
        let (results, said): (Vec<&str>, Vec<&str>) = log
            .lines()
            .filter(|l| !l.trim().is_empty())
            .partition(|l| l.trim_start().starts_with('{'));
        let mut problems: Vec<String> = said.iter().map(|l| (*l).to_owned()).collect();
        if let Some(t) = terminated {
            problems.push(format!(
                "exit code {}{}",
                t.exit_code,
                [t.reason, t.message]
                    .into_iter()
                    .flatten()
                    .map(|m| format!(": {m}"))
                    .collect::<String>()
            ));
        }
        let parsed = match client_log::read(&results.join("\n"), &NodeName(node), &self.service) {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("its log is not the traffic loop's output ({e})"));
                client_log::ClientLog::default()
            }
        };
        let observations = parsed
            .observations
            .into_iter()
            .map(|mut o| {
                o.details.kernel_mut().source = Some("traffic".to_owned());
                o
            })
            .collect();
        let problem = (!problems.is_empty()).then(|| {
            format!(
                "the traffic pod {} failed: {}",
                self.name,
                problems.join("; ")
            )
        });
        (observations, parsed.ok, problem)
    }
}

/// Starts (with `--restart`) or waits for a rollout and follows it to completion.
async fn follow_rollout(
    client: &Client,
    namespace: &str,
    workload: &WorkloadTarget,
    restart: bool,
    timeout: Duration,
    bar: &ProgressBar,
) -> Result<()> {
    let api = workload.api(client, namespace);
    let current = workload.get(client, namespace).await?;
    let started_generation = current.metadata.generation.unwrap_or(0);
    if restart {
        let now = jiff::Timestamp::now().to_string();
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": now}}}}});
        api.patch(
            &workload.name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(Error::api(format!(
            "patch {workload} -n {namespace} (restart)"
        )))?;
        bar.println(format!("{workload}: rollout restarted"));
    } else {
        bar.println(format!("{workload}: waiting for the next rollout…"));
    }
    let objects = watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={}", workload.name)),
    )
    .default_backoff()
    .applied_objects()
    .map(Either::Left);
    let pods = watcher(
        Api::<Pod>::namespaced(client.clone(), namespace),
        watcher::Config::default().labels(&workload::selector(&current)),
    )
    .default_backoff()
    .map(Either::Right);
    let mut events = stream::select(objects.boxed(), pods.boxed());
    let mut terminating: BTreeMap<String, String> = BTreeMap::new();
    let mut progress = Progress::default();
    let mut last = None;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => {
                return Err(Error::RolloutStuck {
                    workload: workload.to_string(),
                    namespace: namespace.to_owned(),
                    seconds: timeout.as_secs(),
                    detail: format!("{} of {} pods updated, {} available, {} still terminating",
                        progress.updated, progress.desired, progress.available, terminating.len()),
                });
            }
            event = events.next() => match event {
                None => break,
                Some(Either::Left(Ok(o))) => {
                    progress = Progress::of(workload.kind, &o);
                    bar.set_length(u64::try_from(progress.desired).unwrap_or(0));
                    bar.set_position(u64::try_from(progress.updated).unwrap_or(0));
                    last = Some(o);
                }
                Some(Either::Right(Ok(event))) => match event {
                    watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
                        if pod.metadata.deletion_timestamp.is_some()
                            && terminating.insert(name.clone(), node.clone()).is_none()
                        {
                            bar.println(format!("  pod {name} terminating (node {node})"));
                        }
                    }
                    watcher::Event::Delete(pod) => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        if terminating.remove(&name).is_some() {
                            bar.println(format!("  pod {name} gone"));
                        }
                    }
                    watcher::Event::Init | watcher::Event::InitDone => {}
                },
                Some(Either::Left(Err(e)) | Either::Right(Err(e))) => {
                    tracing::warn!("watch failed (retrying): {e}");
                }
            },
        }
        bar.set_message(format!("{} terminating", terminating.len()));
        // Complete: a new generation rolled out, every replica updated and available, and
        // every old pod gone (its termination is what we are here to see).
        if let Some(o) = &last
            && o.metadata.generation.unwrap_or(0) > started_generation
            && progress.complete(workload.kind, o)
            && terminating.is_empty()
        {
            bar.finish_with_message("rollout complete");
            return Ok(());
        }
    }
    Err(Error::RolloutStuck {
        workload: workload.to_string(),
        namespace: namespace.to_owned(),
        seconds: timeout.as_secs(),
        detail: "the watch of the workload ended".to_owned(),
    })
}

fn agents_not_ready(list: &[agents::AgentPod]) -> Option<Error> {
    let bad: Vec<String> = list
        .iter()
        .filter(|a| !a.ready)
        .map(|a| {
            format!(
                "  node {}: {}",
                a.node,
                a.problem.clone().unwrap_or_default()
            )
        })
        .collect();
    (!bad.is_empty()).then(|| Error::AgentsNotReady {
        count: bad.len(),
        detail: bad.join("\n"),
    })
}

pub async fn trace(kube: &KubeArgs, args: &TraceArgs, bar: &ProgressBar) -> Result<Traced> {
    let cluster = kube.connect().await?;
    let (client, ns) = (cluster.client.clone(), cluster.namespace.clone());
    let server = cluster.version;
    let object = args.workload.get(&client, &ns).await?;
    let labels = workload::pod_labels(&object);
    let services = workload::services(&client, &ns, &args.workload, &labels).await?;
    let agent_pods = agents::list(&client).await?;
    if let Some(e) = agents_not_ready(&agent_pods) {
        return Err(e);
    }

    let started_at = jiff::Timestamp::now();
    let (tx, mut rx) = mpsc::channel::<Observation>(16_384);
    let (stop, stopped) = watch::channel(false);
    let mut followers = Vec::new();
    for agent in agent_pods {
        let from = collect::position(&client, &agent).await?;
        followers.push(tokio::spawn(collect::follow(
            client.clone(),
            agent,
            from,
            tx.clone(),
            stopped.clone(),
        )));
    }
    drop(tx);
    let gather = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(o) = rx.recv().await {
            all.push(o);
        }
        all
    });

    let mut traffic_problem = None;
    let traffic = match args.traffic {
        Some(rps) => {
            let svc = &services[0];
            let svc_name = svc.metadata.name.clone().unwrap_or_default();
            let spec = svc.spec.as_ref();
            let port = spec
                .and_then(|s| s.ports.as_ref())
                .and_then(|p| p.first())
                .map_or(80, |p| p.port);
            let image = match &args.traffic_image {
                Some(i) => i.clone(),
                None => agents_image(&client).await?,
            };
            // The ClusterIP, not the Service's DNS name: the loop must not depend on cluster
            // DNS, and the ClusterIP is what kube-proxy's rules (and the agents) see.
            let cluster_ip = spec
                .and_then(|s| s.cluster_ip.as_deref())
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
            let target = match (cluster_ip, u16::try_from(port)) {
                (Some(ip), Ok(port)) => std::net::SocketAddr::new(ip, port).to_string(),
                // A headless Service has no ClusterIP ("None"): its name resolves to the pods.
                _ => format!("{svc_name}.{ns}.svc:{port}"),
            };
            bar.println(format!(
                "traffic: {rps} requests/s to {target} ({ns}/{svc_name})"
            ));
            match TrafficPod::start(
                &client,
                &ns,
                &args.workload,
                &target,
                format!("{ns}/{svc_name}"),
                rps,
                image,
            )
            .await
            {
                Ok(pod) => Some(pod),
                Err(e) => {
                    // The rollout is still worth tracing without the loop.
                    bar.println(format!("traffic: {e}; tracing without it"));
                    traffic_problem = Some(e.to_string());
                    None
                }
            }
        }
        None => None,
    };

    let followed = follow_rollout(
        &client,
        &ns,
        &args.workload,
        args.restart,
        args.timeout,
        bar,
    )
    .await;
    tokio::time::sleep(args.settle).await;
    let _ = stop.send(true);
    for f in followers {
        let _ = f.await;
    }
    let mut observations = gather.await.unwrap_or_default();
    // The replicas and strategy the capacity is judged against, as the workload had them.
    observations.push(workload::rollout_start(
        &object,
        &args.workload,
        &ns,
        started_at,
    ));
    let mut counts = None;
    if let Some(t) = traffic {
        let (client_obs, ok, problem) = t.finish().await;
        counts = Some((ok + client_obs.len() as u64, client_obs.len() as u64));
        observations.extend(client_obs);
        traffic_problem = traffic_problem.or(problem);
    }
    followed?;
    // The other workloads' pods on these nodes (and the traffic pod) are in the agents'
    // streams too: the report is about the traced workload's pods only.
    let report = correlate::correlate_scoped(
        &observations,
        &Options {
            margin_ms: args.margin_ms,
            prestop: server.prestop_action(),
        },
        &Scope {
            namespace: ns.clone(),
            workload: args.workload.to_string(),
        },
    );
    Ok(Traced {
        report,
        observations,
        traffic: counts,
        traffic_problem,
    })
}

/// The image the installed agents run (the traffic loop is the same binary).
async fn agents_image(client: &Client) -> Result<String> {
    let ds = Api::<DaemonSet>::namespaced(client.clone(), NAMESPACE)
        .get(DAEMONSET)
        .await
        .map_err(Error::api(format!(
            "get daemonset {DAEMONSET} -n {NAMESPACE}"
        )))?;
    Ok(ds
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.image)
        .unwrap_or_else(super::manifests::default_image))
}

/// What the clients saw next to what the kernel saw on the reported (deleted) pods.
pub fn reconcile(traced: &Traced) -> Option<String> {
    let (total, failed) = traced.traffic?;
    let count = |pred: &dyn Fn(&Observation) -> bool| -> u64 {
        traced
            .observations
            .iter()
            .filter(|o| pred(o))
            .map(Observation::weight)
            .sum()
    };
    let client = |reason: &'static str| {
        move |o: &Observation| {
            o.kind == Kind::ConnError
                && o.details.kernel().source.as_deref() == Some("traffic")
                && o.reason.as_deref() == Some(reason)
        }
    };
    let refused = count(&client("ECONNREFUSED"));
    let reset = count(&client("ECONNRESET"));
    let timeout = count(&client("ETIMEDOUT"));
    // Only the reported pods' own kernel lines: the agents also see the other pods on their
    // nodes, and the traffic pod's own sockets.
    let pods: BTreeSet<&str> = traced
        .report
        .rollouts
        .iter()
        .flat_map(|r| &r.pods)
        .filter_map(|p| p.pod.as_deref())
        .collect();
    let ips: BTreeSet<std::net::IpAddr> = traced
        .report
        .rollouts
        .iter()
        .flat_map(|r| &r.pods)
        .filter_map(|p| p.ip)
        .collect();
    let on_pods = |o: &Observation| match o.pod.as_deref() {
        Some(p) => pods.contains(p),
        None => o.ip.is_some_and(|ip| ips.contains(&ip)),
    };
    // The kubelet's probes of these pods are no client's: not compared with the clients.
    let probes = crate::correlate::attribution::ProbeConnections::of(&traced.observations);
    let kernel_refused =
        count(&|o: &Observation| o.kind == Kind::Refused && on_pods(o) && !probes.contains(o));
    let kernel_reset =
        count(&|o: &Observation| o.kind == Kind::Reset && on_pods(o) && !probes.contains(o));
    Some(format!(
        "clients: {failed} of {total} requests failed (refused {refused}, reset {reset}, timed out {timeout}); kernel on the pods: {kernel_refused} refused, {kernel_reset} reset"
    ))
}

pub fn main(kube: &KubeArgs, args: &TraceArgs) -> anyhow::Result<ExitCode> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} pods updated {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_prefix(args.workload.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    let traced = crate::process::runtime()?.block_on(trace(kube, args, &bar))?;
    let text = report::render(&traced.report, args.output)?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    // On stderr, so `-o json` stays one JSON document.
    if let Some(line) = reconcile(&traced) {
        eprintln!("{line}");
    }
    if let Some(problem) = &traced.traffic_problem {
        eprintln!("warning: {problem}");
    }
    if let Some(path) = &args.html {
        std::fs::write(path, report::html::render(&traced.report))?;
    }
    if let Some(path) = &args.save {
        std::fs::write(
            path,
            crate::observation::to_json_lines(&traced.observations),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
