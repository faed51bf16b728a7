//! Where `recommend` reads: the cluster (every agent's journal through port-forward, the
//! workloads' settings from the API) or observation files (settings as the pods ran).

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use jiff::Timestamp;
use kube::Client;

use super::{
    DEFAULT_SINCE_H, Options, RecommendArgs, Recommendations, Scope, WorkloadEvidence, WorkloadKey,
    advise::{gather_from, gather_options, observed_settings},
    answer, gather, settings,
};
use crate::{
    cluster::{self, connect::KubeArgs, history, workload::WorkloadTarget},
    journal::query::HistoryQuery,
    observation::Observation,
};

/// Every agent's journal for the window (`cluster::history::fetch_each`), unfiltered: a pod's
/// propagation delay needs the dataplane removals of every node, and those lines name no
/// namespace or workload. A node whose agent cannot answer is a warning, not a failure: the
/// other nodes' history still gives a (possibly underestimated) distribution.
async fn fetch_history(
    client: &Client,
    since: Timestamp,
    until: Timestamp,
    warnings: &mut Vec<String>,
) -> cluster::Result<Vec<Observation>> {
    let query = HistoryQuery {
        since: Some(since),
        until: Some(until),
        ..HistoryQuery::default()
    };
    let mut out = Vec::new();
    for node in history::fetch_each(client, &query, None).await? {
        match node.result {
            Ok(obs) => out.extend(obs),
            Err(e) => warnings.push(format!(
                "node {}: its history is missing ({e}), so its dataplane removals are missing: delays may be underestimated",
                node.node
            )),
        }
    }
    out.sort_by_key(|o| o.time);
    Ok(out)
}

/// A workload named on the command line with no terminated pod in the observations.
fn no_rollout(key: WorkloadKey) -> WorkloadEvidence {
    WorkloadEvidence {
        key,
        rollouts: 0,
        pods: Vec::new(),
        readiness: None,
        capacity: None,
    }
}

/// The answer from the agents' journals and the workloads' current settings in the API.
pub async fn from_cluster(
    kube: &KubeArgs,
    args: &RecommendArgs,
) -> anyhow::Result<Recommendations> {
    let cluster = kube.connect().await?;
    let client = &cluster.client;
    let server = cluster.version;
    let scope = match &args.workload {
        Some(w) => {
            // Named: it must exist, or the answer is one line saying so.
            w.get(client, &cluster.namespace).await?;
            Scope::Workload {
                namespace: Some(cluster.namespace.clone()),
                name: w.to_string(),
            }
        }
        None if kube.all_namespaces => Scope::All,
        None => Scope::Namespace(cluster.namespace.clone()),
    };
    let until = Timestamp::now();
    let window = args
        .since
        .unwrap_or(jiff::SignedDuration::from_hours(DEFAULT_SINCE_H));
    let since = until
        .checked_sub(window)
        .context("the --since window reaches before the year -9999")?;
    let mut warnings = Vec::new();
    let obs = fetch_history(client, since, until, &mut warnings).await?;
    let mut workloads: Vec<WorkloadEvidence> = gather(&obs, args.margin_ms)
        .into_iter()
        .filter(|w| scope.covers(&w.key))
        .collect();
    if let (Scope::Workload { namespace, name }, true) = (&scope, workloads.is_empty()) {
        workloads.push(no_rollout(WorkloadKey {
            namespace: namespace.clone(),
            workload: name.clone(),
        }));
    }
    let mut current = BTreeMap::new();
    for w in &workloads {
        let (Some(ns), true) = (&w.key.namespace, w.key.is_controller()) else {
            continue;
        };
        let Ok(r) = w.key.workload.parse::<WorkloadTarget>() else {
            continue;
        };
        match r.get(client, ns).await {
            Ok(object) => {
                let json = serde_json::to_value(&object)
                    .with_context(|| format!("failed to read {}", w.key.display()))?;
                current.insert(w.key.clone(), settings::from_workload(&json, w.container()));
            }
            Err(cluster::Error::WorkloadNotFound { .. }) => warnings.push(format!(
                "{} no longer exists: its rollouts are shown without current settings",
                w.key.display()
            )),
            Err(e) => return Err(e.into()),
        }
    }
    let options = Options {
        prestop: server.prestop_action(),
        ..args.options()
    };
    Ok(answer(&workloads, &current, &options, warnings))
}

pub(super) fn from_files(kube: &KubeArgs, args: &RecommendArgs) -> anyhow::Result<Recommendations> {
    let since = match args.since {
        Some(window) => Some(
            Timestamp::now()
                .checked_sub(window)
                .context("the --since window reaches before the year -9999")?,
        ),
        None => None,
    };
    // Read a window of the stream at a time: the memory held does not grow with the files.
    let (analysis, streams) =
        crate::analyze::analyse_streams(&args.from_file, &gather_options(args.margin_ms), &|o| {
            since.is_none_or(|s| o.time >= s)
        })?;
    let duplicates = streams.duplicates_warning();
    let rejected = streams.rejected;
    let scope = match (&args.workload, &kube.namespace) {
        (Some(w), ns) => Scope::Workload {
            namespace: ns.clone(),
            name: w.to_string(),
        },
        (None, Some(ns)) if !kube.all_namespaces => Scope::Namespace(ns.clone()),
        (None, _) => Scope::All,
    };
    let workloads: Vec<WorkloadEvidence> = gather_from(analysis.report, analysis.evidence)
        .into_iter()
        .filter(|w| scope.covers(&w.key))
        .collect();
    if workloads.is_empty()
        && let Scope::Workload { name, .. } = &scope
    {
        bail!(
            "{name}{}: no terminated pod of it in {}; record one with `kubectl zdt trace {name} --restart --save FILE`",
            kube.namespace
                .as_deref()
                .map(|ns| format!(" -n {ns}"))
                .unwrap_or_default(),
            args.from_file
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let current = workloads
        .iter()
        .map(|w| (w.key.clone(), observed_settings(w)))
        .collect();
    let mut warnings: Vec<String> = duplicates.into_iter().collect();
    if !rejected.is_empty() {
        warnings.push(format!(
            "{} unreadable lines were skipped (listed on stderr)",
            rejected.len()
        ));
    }
    Ok(answer(&workloads, &current, &args.options(), warnings))
}
