//! The client side of the node journals: `GET /history` on every agent (or those of some
//! nodes) through port-forward, and `kubectl zdt history`.
//!
//! A query that selects pods (`pod`, `namespace`, `workload`) is asked twice: first as given,
//! then by the addresses those pods had, so the lines that name only an address — another
//! node's dataplane removing the pod, the refused SYNs before attribution — come too, and the
//! report sees every node's side of the race.

use std::{collections::BTreeSet, io::Write as _, net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Args;
use jiff::Timestamp;
use kube::Client;

use super::{Error, Result, agents, connect::KubeArgs, workload::WorkloadTarget};
use crate::{
    correlate::{self, Options, input},
    history::{
        listing::{self, Show},
        rollouts,
        window::{self, Window},
    },
    journal::query::Fields,
    kube_version::KubeVersion,
    observation::Observation,
    report::{self, Format},
};

pub use crate::journal::HistoryQuery;

/// One node's answer.
#[derive(Debug)]
pub struct NodeHistory {
    pub node: String,
    pub result: Result<Vec<Observation>>,
}

/// Asks one agent; the lines come back time-ordered.
async fn ask(
    client: &Client,
    agent: &agents::AgentPod,
    query: &HistoryQuery,
) -> Result<Vec<Observation>> {
    let path = format!("/history?{}", query.to_query_string());
    let body = agents::get_bytes(client, agent, &path).await?;
    let text = String::from_utf8_lossy(&body);
    let (obs, problems) = input::parse_all(&text);
    if let Some(p) = problems.first() {
        tracing::warn!(
            "node {}: {} unreadable history lines (first: {p})",
            agent.node,
            problems.len()
        );
    }
    Ok(obs)
}

async fn ask_all(
    client: &Client,
    agents: &[agents::AgentPod],
    query: &HistoryQuery,
) -> Vec<Result<Vec<Observation>>> {
    futures::future::join_all(agents.iter().map(|a| ask(client, a, query))).await
}

/// Every agent's answer to `query` (all agents, or those on `nodes`), each time-ordered.
/// Fails only when the agents cannot be listed or a named node has no agent; an unreachable
/// agent is its node's `Err`.
pub async fn fetch_each(
    client: &Client,
    query: &HistoryQuery,
    nodes: Option<&[String]>,
) -> Result<Vec<NodeHistory>> {
    let mut agents = agents::list(client).await?;
    if let Some(nodes) = nodes {
        if let Some(missing) = nodes.iter().find(|n| !agents.iter().any(|a| &a.node == *n)) {
            return Err(Error::AgentUnreachable {
                node: missing.clone(),
                pod: "(none)".to_owned(),
                reason: format!(
                    "no agent runs on node {missing}; nodes with an agent: {}",
                    agents
                        .iter()
                        .map(|a| a.node.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        agents.retain(|a| nodes.contains(&a.node));
    }
    let mut answers = ask_all(client, &agents, query).await;
    let selects_pods = query.pod.is_some() || query.namespace.is_some() || query.workload.is_some();
    if selects_pods && query.ips.is_empty() {
        let ips: BTreeSet<IpAddr> = answers
            .iter()
            .flatten()
            .flatten()
            .filter(|o| o.pod.is_some())
            .filter_map(|o| o.ip)
            .collect();
        if !ips.is_empty() {
            let by_address = HistoryQuery {
                since: query.since,
                until: query.until,
                ips: ips.into_iter().collect(),
                ..HistoryQuery::default()
            };
            let more = ask_all(client, &agents, &by_address).await;
            for (answer, extra) in answers.iter_mut().zip(more) {
                match (answer, extra) {
                    (Ok(obs), Ok(extra)) => {
                        // Lines that match the first query are there already.
                        obs.extend(extra.into_iter().filter(|o| !query.matches(&Fields::of(o))));
                        obs.sort_by_key(|o| o.time);
                    }
                    (answer @ Ok(_), Err(e)) => *answer = Err(e),
                    (Err(_), _) => {}
                }
            }
        }
    }
    Ok(agents
        .into_iter()
        .zip(answers)
        .map(|(a, result)| NodeHistory {
            node: a.node,
            result,
        })
        .collect())
}

/// The observations of every agent (all, or those on `nodes`) matching `query`, time-ordered.
/// The first unreachable agent fails the whole call, naming its node: a history with a node
/// missing would silently lack that node's side of the race.
pub async fn fetch(
    client: &Client,
    query: &HistoryQuery,
    nodes: Option<&[String]>,
) -> Result<Vec<Observation>> {
    let mut all = Vec::new();
    for n in fetch_each(client, query, nodes).await? {
        all.extend(n.result?);
    }
    all.sort_by_key(|o| o.time);
    Ok(all)
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub namespaces: super::connect::Namespaces,

    /// Only the last DURATION, e.g. 30m, 2h, 7d [default: 1h unless --from is given].
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,

    /// From this time: RFC 3339 (2026-11-22T03:00:00Z) or a duration ago (3h).
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,

    /// Up to this time (same forms as --from) [default: now].
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,

    /// Only this pod (in -n NAMESPACE, else the context's namespace), and its address.
    #[arg(long, value_name = "NAME")]
    pub pod: Option<String>,

    /// Only observations of this address: pod side, peer, or a Service's ClusterIP (repeatable).
    #[arg(long, value_name = "IP")]
    pub ip: Vec<IpAddr>,

    /// Only the pods of this workload (in -n NAMESPACE, else the context's namespace), e.g.
    /// deployment/web.
    #[arg(long, value_name = "KIND/NAME")]
    pub workload: Option<WorkloadTarget>,

    /// Only the agents of these nodes (repeatable) [default: every node].
    #[arg(long = "node", value_name = "NODE")]
    pub nodes: Vec<String>,

    /// Read this journal directory instead of asking the agents (on a node, or a copy; e.g.
    /// what `kubectl-zdt agent --standalone --journal-dir DIR` wrote). No cluster needed.
    #[arg(long, value_name = "DIR", conflicts_with = "nodes")]
    pub journal_dir: Option<PathBuf>,

    /// Output format: table, wide, json or yaml.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,

    /// Reconstruct every rollout in the window and print the correlation report, as `trace`
    /// and `analyze` do.
    #[arg(long)]
    pub report: bool,

    /// With --report: also write the self-contained HTML report to this file.
    #[arg(long, value_name = "FILE", requires = "report")]
    pub html: Option<PathBuf>,

    /// Also write the raw observations (JSON lines, for `kubectl zdt analyze`) to this file.
    #[arg(long, value_name = "FILE")]
    pub export: Option<PathBuf>,

    /// Only list the rollouts found (pod deletions grouped by workload and time).
    #[arg(long, conflicts_with = "report")]
    pub rollouts: bool,

    /// With --report: safety margin added to the advised preStop and grace period, in ms
    /// (at most an hour).
    #[arg(long, default_value_t = 500, value_name = "MS", value_parser = crate::analyze::parse_margin_ms)]
    pub margin_ms: u64,
}

/// What `history` collected.
#[derive(Debug)]
pub struct Collected {
    pub window: Window,
    pub observations: Vec<Observation>,
    /// Nodes whose agent could not be asked, with the reason, or the damage met in a journal
    /// directory (one line each; what is intact is shown all the same).
    pub failures: Vec<String>,
    /// The API server's version (`None` when read from a journal directory): what the
    /// report's advice may write.
    pub server: Option<KubeVersion>,
}

/// The query the flags describe. `-n` filters by namespace; without it every namespace is
/// searched, and `--pod`/`--workload` are looked up in the context's namespace.
pub fn query_of(
    args: &HistoryArgs,
    window: Window,
    namespace: Option<&str>,
    default_ns: &str,
) -> HistoryQuery {
    let ns_of_target = namespace.unwrap_or(default_ns);
    HistoryQuery {
        since: Some(window.since),
        until: Some(window.until),
        namespace: namespace.map(str::to_owned),
        pod: args.pod.as_ref().map(|p| format!("{ns_of_target}/{p}")),
        ips: args.ip.clone(),
        workload: args.workload.as_ref().map(ToString::to_string),
    }
    .with_target_namespace(args.pod.is_some() || args.workload.is_some(), ns_of_target)
}

impl HistoryQuery {
    /// A pod or workload lives in one namespace: filter by it even when -n was not given.
    fn with_target_namespace(mut self, targeted: bool, ns: &str) -> Self {
        if targeted && self.namespace.is_none() {
            self.namespace = Some(ns.to_owned());
        }
        self
    }
}

/// Asks the agents; failures of single nodes are collected, not fatal.
pub async fn collect(
    kube: &KubeArgs,
    args: &HistoryArgs,
    now: Timestamp,
) -> anyhow::Result<Collected> {
    let window = window::resolve(
        args.since.as_deref(),
        args.from.as_deref(),
        args.to.as_deref(),
        now,
    )
    .map_err(anyhow::Error::msg)?;
    let namespace = if kube.all_namespaces {
        None
    } else {
        kube.namespace.as_deref()
    };
    if let Some(dir) = &args.journal_dir {
        let query = query_of(args, window, namespace, "default");
        let journal = crate::journal::ReadOnly::open(dir)?;
        let mut observations = Vec::new();
        let mut reader = journal.query(&query);
        while let Some((_, line)) = reader.next_record() {
            match serde_json::from_slice::<Observation>(&line) {
                Ok(o) => observations.push(o),
                Err(e) => tracing::warn!("{}: unreadable journal line: {e}", dir.display()),
            }
        }
        let failures = journal
            .damage
            .iter()
            .map(|d| format!("journal damage: {d}"))
            .chain(
                reader
                    .unreadable
                    .iter()
                    .map(|b| format!("unreadable journal block {b}")),
            )
            .collect();
        return Ok(Collected {
            window,
            observations,
            failures,
            server: None,
        });
    }
    let cluster = kube.connect().await?;
    let server = cluster.version;
    let query = query_of(args, window, namespace, &cluster.namespace);
    let nodes = (!args.nodes.is_empty()).then_some(args.nodes.as_slice());
    let mut observations = Vec::new();
    let mut failures = Vec::new();
    for n in fetch_each(&cluster.client, &query, nodes).await? {
        match n.result {
            Ok(obs) => observations.extend(obs),
            Err(e) => failures.push(format!("{e} (the other nodes' history is shown)")),
        }
    }
    observations.sort_by_key(|o| o.time);
    Ok(Collected {
        window,
        observations,
        failures,
        server: Some(server),
    })
}

/// The text `history` prints for what it collected.
pub fn render(collected: &Collected, args: &HistoryArgs) -> anyhow::Result<String> {
    if args.report {
        if collected.observations.is_empty() {
            anyhow::bail!(
                "no observation from {} to {} matches: widen the window (--since) or the filters",
                crate::observation::format_time(collected.window.since),
                crate::observation::format_time(collected.window.until)
            );
        }
        let report = correlate::correlate(
            &collected.observations,
            &Options {
                margin_ms: args.margin_ms,
                prestop: collected
                    .server
                    .map(KubeVersion::prestop_action)
                    .unwrap_or_default(),
            },
        );
        if let Some(path) = &args.html {
            std::fs::write(path, report::html::render(&report)).with_context(|| {
                format!("failed to write the HTML report to {}", path.display())
            })?;
        }
        return Ok(report::render(&report, args.output)?);
    }
    let found = rollouts::find(&collected.observations, std::time::Duration::from_secs(600));
    let show = if args.rollouts {
        Show::Rollouts
    } else {
        Show::Everything
    };
    Ok(listing::render(
        &collected.observations,
        &found,
        collected.window,
        args.output,
        show,
    )?)
}

pub fn main(kube: &KubeArgs, args: &HistoryArgs) -> anyhow::Result<ExitCode> {
    let collected = crate::process::runtime()?.block_on(collect(kube, args, Timestamp::now()))?;
    if let Some(path) = &args.export {
        std::fs::write(
            path,
            crate::observation::to_json_lines(&collected.observations),
        )
        .with_context(|| format!("failed to write the observations to {}", path.display()))?;
    }
    let text = render(&collected, args);
    for f in &collected.failures {
        eprintln!("kubectl-zdt: {f}");
    }
    let text = text?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(if collected.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
