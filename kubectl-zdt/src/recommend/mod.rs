//! `kubectl zdt recommend [KIND/NAME]`: from the history of rollouts (the agents' journals, or
//! recorded observation files), per workload the propagation-delay distribution, the preStop and
//! terminationGracePeriodSeconds that cover it with a stated margin, and whether the current
//! settings are unsafe, wasteful or fine (docs/recommend.md).
//!
//! - `advise`: the pure core (observations + current settings → recommendations);
//! - `settings`: the current settings from a workload object (or from the observations);
//! - `source`: where the observations and settings come from (the cluster, or files);
//! - `render`: table, JSON, YAML patches.

pub mod advise;
pub mod render;
pub mod settings;
mod source;

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Args;

pub use advise::{
    Options, PreStopVerdict, Recommendation, Recommendations, WorkloadEvidence, WorkloadKey,
    gather, recommend,
};
pub use render::Format;
pub use source::from_cluster;

use crate::{
    cluster::{connect::KubeArgs, workload::WorkloadTarget},
    kube_version::KubeVersion,
};

#[derive(Debug, Args)]
pub struct RecommendArgs {
    /// Only this workload: deployment/NAME, statefulset/NAME or daemonset/NAME [default: every
    /// workload of the namespace, or of the cluster with -A].
    #[arg(value_name = "KIND/NAME")]
    pub workload: Option<WorkloadTarget>,

    #[command(flatten)]
    pub namespaces: crate::cluster::connect::Namespaces,

    /// Read the observations (JSON lines: `kubectl zdt trace --save`, `demo --record`, an
    /// agent's output, a journal export) from these files instead of the agents, and take the
    /// current settings from what the pods were seen to run with. Repeatable (several files
    /// are read merged by the observations' time); `-` reads standard input.
    #[arg(long = "from-file", value_name = "FILE")]
    pub from_file: Vec<PathBuf>,

    /// How far back to read the agents' journals, e.g. 7d, 36h, 90m [default: 7d from the
    /// cluster; with --from-file every line unless given].
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    pub since: Option<jiff::SignedDuration>,

    /// Output: table, wide (more columns), json (kind Recommendations) or yaml (strategic
    /// merge patches).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,

    /// Safety margin added to the need before rounding up to whole seconds, in milliseconds
    /// (at most an hour).
    #[arg(long, default_value_t = 500, value_name = "MS", value_parser = crate::analyze::parse_margin_ms)]
    pub margin_ms: u64,

    /// Fewer pods with a measured propagation delay than this: say so instead of advising.
    #[arg(long, default_value_t = 5, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub min_samples: u64,

    /// A current preStop longer than the advice by at least this is reported as wasteful, in
    /// milliseconds.
    #[arg(long, default_value_t = 2_000, value_name = "MS")]
    pub waste_threshold_ms: u64,

    /// With --from-file: write the patches for this Kubernetes version, e.g. 1.28 (before
    /// 1.30 the preStop execs `sleep`) [default: the `sleep` action of 1.30+]. From the
    /// cluster, its own version is used.
    #[arg(long, value_name = "VERSION", requires = "from_file")]
    pub server_version: Option<KubeVersion>,
}

/// The default window read from the cluster.
const DEFAULT_SINCE_H: i64 = 7 * 24;

/// `7d`, `36h`, `90m` (a day is 24 h here: the window is elapsed time, not calendar days).
pub fn parse_since(s: &str) -> Result<jiff::SignedDuration, String> {
    let span: jiff::Span = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration like 7d, 36h or 90m: {e}"))?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("{s:?}: {e} (use days, hours, minutes or seconds)"))?;
    if d.is_negative() || d.is_zero() {
        return Err(format!("{s:?}: the window must be longer than zero"));
    }
    Ok(d)
}

impl RecommendArgs {
    pub(crate) fn options(&self) -> Options {
        Options {
            margin_ms: self.margin_ms,
            min_samples: usize::try_from(self.min_samples).unwrap_or(usize::MAX),
            waste_threshold_ms: self.waste_threshold_ms,
            prestop: self
                .server_version
                .map(KubeVersion::prestop_action)
                .unwrap_or_default(),
        }
    }
}

/// Which workloads the answer covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespace(String),
    /// `namespace` `None`: the workload of that name in any namespace (offline).
    Workload {
        namespace: Option<String>,
        name: String,
    },
}

impl Scope {
    pub fn covers(&self, key: &WorkloadKey) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespace(ns) => key.namespace.as_deref() == Some(ns.as_str()),
            Scope::Workload { namespace, name } => {
                namespace
                    .as_ref()
                    .is_none_or(|ns| key.namespace.as_ref() == Some(ns))
                    && key.workload == *name
            }
        }
    }
}

/// Builds the whole answer from the observations and the known current settings.
pub fn answer(
    workloads: &[WorkloadEvidence],
    settings: &std::collections::BTreeMap<WorkloadKey, settings::Settings>,
    options: &Options,
    warnings: Vec<String>,
) -> Recommendations {
    Recommendations {
        api_version: advise::API_VERSION,
        kind: advise::KIND,
        margin_ms: options.margin_ms,
        min_samples: options.min_samples,
        waste_threshold_ms: options.waste_threshold_ms,
        prestop_action: options.prestop,
        workloads: recommend(workloads, settings, options),
        warnings,
    }
}

pub fn main(kube: &KubeArgs, args: &RecommendArgs) -> anyhow::Result<ExitCode> {
    let all = if args.from_file.is_empty() {
        crate::process::runtime()?.block_on(source::from_cluster(kube, args))?
    } else {
        source::from_files(kube, args)?
    };
    let text = match args.output {
        Format::Table => render::table(&all, false),
        Format::Wide => render::table(&all, true),
        Format::Json => render::json(&all),
        Format::Yaml => render::yaml(&all),
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("failed to write the recommendations")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_in_days_hours_and_minutes() {
        assert_eq!(
            parse_since("7d").unwrap(),
            jiff::SignedDuration::from_hours(DEFAULT_SINCE_H)
        );
        assert_eq!(
            parse_since("90m").unwrap(),
            jiff::SignedDuration::from_mins(90)
        );
        assert!(parse_since("0s").is_err());
        assert!(parse_since("soon").unwrap_err().contains("like 7d"));
    }
}
