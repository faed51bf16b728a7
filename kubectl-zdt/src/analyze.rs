//! `kubectl zdt analyze FILE…`: read observation streams, correlate, print the report.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    correlate::{self, Options, input},
    kube_version::KubeVersion,
    observation::Observation,
    report::{self, Format},
};

/// At most this many bad lines are printed one by one; the rest are counted.
const SHOWN_PROBLEMS: usize = 20;

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Observation streams, JSON lines (agent output, `journalctl -o cat` or `-o json`, a
    /// capture); `-` reads standard input. Several files are merged (any order).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Output format: table, wide (all marks, nodes), json or yaml (schema zdt.dev/v1).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,

    /// Also write a self-contained HTML report (timeline as SVG, tables) to this file.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// Safety margin added to the advised preStop and grace period, in milliseconds (at most
    /// an hour).
    #[arg(long, default_value_t = 500, value_name = "MS", value_parser = parse_margin_ms)]
    pub margin_ms: u64,

    /// Write the advised preStop for this Kubernetes version, e.g. 1.28: before 1.30 an
    /// `exec` of `sleep` (the image needs a sleep binary) [default: the `sleep` action of
    /// 1.30+].
    #[arg(long, value_name = "VERSION")]
    pub server_version: Option<KubeVersion>,
}

/// The largest `--margin-ms`: an hour. More is a typo, and would only make the advice absurd.
pub const MAX_MARGIN_MS: u64 = 3_600_000;

/// `--margin-ms` of `analyze` and `recommend`: milliseconds, at most [`MAX_MARGIN_MS`].
pub fn parse_margin_ms(s: &str) -> Result<u64, String> {
    let ms: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of milliseconds, e.g. 500"))?;
    if ms > MAX_MARGIN_MS {
        return Err(format!(
            "{ms} ms is over an hour ({MAX_MARGIN_MS} ms), the longest margin accepted"
        ));
    }
    Ok(ms)
}

/// Reads one source (`-` is standard input) line by line into `out`; its unreadable lines as
/// `NAME:LINE: problem`. A compressed file is one error naming the tool that reads it.
fn read_source(
    path: &Path,
    out: &mut Vec<Observation>,
    rejected: &mut Vec<String>,
) -> anyhow::Result<()> {
    let (name, file): (String, Box<dyn std::io::Read>) = if path.as_os_str() == "-" {
        ("<stdin>".to_owned(), Box::new(std::io::stdin().lock()))
    } else {
        let f = std::fs::File::open(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        (path.display().to_string(), Box::new(f))
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let head = reader
        .fill_buf()
        .with_context(|| format!("failed to read {name}"))?;
    if let Some((kind, cat)) = input::compression(head) {
        let shown = if name == "<stdin>" { "FILE" } else { &name };
        bail!(
            "{name} is {kind}-compressed; observations are JSON lines: uncompress it first, e.g. `{cat} {shown} | kubectl zdt analyze -`"
        );
    }
    let problems = input::read_stream(reader, |o| out.push(o))
        .with_context(|| format!("failed to read {name}"))?;
    rejected.extend(
        problems
            .into_iter()
            .map(|p| format!("{name}:{}: {}", p.line, p.problem)),
    );
    Ok(())
}

/// Drops the observations that equal an earlier one (same node, kind, time and every field):
/// the same stream given twice, or overlapping exports, must not count twice. Keeps the order;
/// returns how many were dropped.
pub fn drop_duplicates(obs: &mut Vec<Observation>) -> usize {
    drop_duplicates_hashed(obs, &foldhash::fast::RandomState::default())
}

/// [`drop_duplicates`] with the hasher given (see [`input::duplicates`]).
fn drop_duplicates_hashed(
    obs: &mut Vec<Observation>,
    state: &impl std::hash::BuildHasher,
) -> usize {
    let drop = input::duplicates(obs, state);
    let dropped = drop.iter().filter(|d| **d).count();
    if dropped > 0 {
        let mut flags = drop.into_iter();
        obs.retain(|_| !flags.next().unwrap_or(false));
    }
    dropped
}

/// What the input streams held.
pub(crate) struct Streams {
    pub observations: Vec<Observation>,
    /// `FILE:LINE: problem` per unreadable line.
    pub rejected: Vec<String>,
    /// Observations dropped as duplicates of another.
    pub duplicates: usize,
}

impl Streams {
    /// The warning the duplicates call for, if any.
    pub fn duplicates_warning(&self) -> Option<String> {
        (self.duplicates > 0).then(|| {
            format!(
                "{} duplicate observation{} dropped (the same node, kind, time and fields as another line: the same stream given twice?)",
                self.duplicates,
                if self.duplicates == 1 { "" } else { "s" }
            )
        })
    }
}

/// Every observation in `files` (`-` is standard input), read line by line, duplicates dropped,
/// with the unreadable lines reported on stderr (the first few one by one) and returned as
/// `FILE:LINE: problem`; an error when no line at all could be read.
pub(crate) fn read_streams(files: &[PathBuf]) -> anyhow::Result<Streams> {
    let mut observations = Vec::new();
    let mut rejected = Vec::new();
    let started = std::time::Instant::now();
    for path in files {
        read_source(path, &mut observations, &mut rejected)?;
    }
    let read = started.elapsed();
    let duplicates = drop_duplicates(&mut observations);
    tracing::debug!(
        "read {} observations in {read:.2?}, duplicates dropped in {:.2?}",
        observations.len(),
        started.elapsed() - read
    );
    observations.shrink_to_fit();
    for line in rejected.iter().take(SHOWN_PROBLEMS) {
        eprintln!("kubectl-zdt: {line}");
    }
    if rejected.len() > SHOWN_PROBLEMS {
        eprintln!(
            "kubectl-zdt: … and {} more unreadable lines",
            rejected.len() - SHOWN_PROBLEMS
        );
    }
    if observations.is_empty() {
        bail!(
            "no observation could be read from {}; expected JSON lines as written by `kubectl zdt agent` (see docs/observations.md)",
            files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let streams = Streams {
        observations,
        rejected,
        duplicates,
    };
    if let Some(w) = streams.duplicates_warning() {
        eprintln!("kubectl-zdt: warning: {w}");
    }
    Ok(streams)
}

pub fn main(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let mut streams = read_streams(&args.files)?;
    let started = std::time::Instant::now();
    let mut report = correlate::correlate(
        &streams.observations,
        &Options {
            margin_ms: args.margin_ms,
            prestop: args
                .server_version
                .map(KubeVersion::prestop_action)
                .unwrap_or_default(),
        },
    );
    // The input is not needed any more: freed before the report is rendered (a JSON or HTML
    // report of a large input is large itself).
    streams.observations = Vec::new();
    tracing::debug!(
        "correlated and freed the input in {:.2?}",
        started.elapsed()
    );
    report.warnings.extend(streams.duplicates_warning());
    report.input.rejected_lines = streams.rejected;

    let started = std::time::Instant::now();
    let text = report::render(&report, args.output)?;
    tracing::debug!("rendered in {:.2?}", started.elapsed());
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .context("failed to write the report")?;
    stdout.flush().context("failed to write the report")?;
    if let Some(path) = &args.html {
        std::fs::write(path, report::html::render(&report))
            .with_context(|| format!("failed to write the HTML report to {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::{Kind, NodeName};

    #[test]
    fn every_command_with_a_margin_refuses_one_over_an_hour() {
        use clap::Parser as _;
        for args in [
            &["analyze", "f.jsonl"][..],
            &["recommend", "--from-file", "f.jsonl"],
            &["trace", "deployment/web"],
            &["history", "--report"],
        ] {
            let parse = |margin: &str| {
                crate::cli::Cli::try_parse_from(
                    ["kubectl-zdt"]
                        .iter()
                        .chain(args)
                        .chain(&["--margin-ms", margin]),
                )
            };
            assert!(parse("3600000").is_ok(), "{args:?}");
            let err = parse("3600001").err().unwrap().to_string();
            assert!(err.contains("is over an hour"), "{args:?}: {err}");
        }
    }

    #[test]
    fn only_observations_equal_in_every_field_are_dropped_and_the_order_is_kept() {
        let t: jiff::Timestamp = "2026-11-22T01:16:45.660197146Z".parse().unwrap();
        let a = Observation::new(Kind::Refused, t, NodeName("a".into()));
        let mut other_port = a.clone();
        other_port.peer_port = Some(40_000);
        let b = Observation::new(Kind::Refused, t, NodeName("b".into()));
        let extra = a.clone().with_extra("pid", 42);
        let input = vec![
            a.clone(),
            other_port.clone(),
            b.clone(),
            a.clone(),
            extra.clone(),
            b.clone(),
            a.clone(),
        ];
        let mut obs = input.clone();
        assert_eq!(drop_duplicates(&mut obs), 3);
        assert_eq!(
            obs,
            vec![a.clone(), other_port.clone(), b.clone(), extra.clone()]
        );

        // The same under a hasher for which every line collides: only the whole comparison
        // tells them apart.
        #[derive(Default)]
        struct Collide;
        impl std::hash::Hasher for Collide {
            fn finish(&self) -> u64 {
                0
            }
            fn write(&mut self, _: &[u8]) {}
        }
        let mut obs = input;
        let state = std::hash::BuildHasherDefault::<Collide>::default();
        assert_eq!(drop_duplicates_hashed(&mut obs, &state), 3);
        assert_eq!(obs, vec![a, other_port, b, extra]);
    }
}
