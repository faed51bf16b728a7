//! `kubectl zdt analyze FILE…`: read observation streams, correlate, print the report.

use std::{
    io::{Read as _, Write as _},
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

fn read_source(path: &Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("failed to read standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))
    }
}

/// Every observation in `files` (`-` is standard input), with the unreadable lines reported on
/// stderr (the first few one by one) and returned as `FILE:LINE: problem`; an error when no
/// line at all could be read.
pub(crate) fn read_streams(files: &[PathBuf]) -> anyhow::Result<(Vec<Observation>, Vec<String>)> {
    let mut observations = Vec::new();
    let mut rejected = Vec::new();
    for path in files {
        let text = read_source(path)?;
        let (obs, problems) = input::parse_all(&text);
        observations.extend(obs);
        let name = if path.as_os_str() == "-" {
            "<stdin>".to_owned()
        } else {
            path.display().to_string()
        };
        rejected.extend(
            problems
                .into_iter()
                .map(|p| format!("{name}:{}: {}", p.line, p.problem)),
        );
    }
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
    Ok((observations, rejected))
}

pub fn main(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let (observations, rejected) = read_streams(&args.files)?;
    let mut report = correlate::correlate(
        &observations,
        &Options {
            margin_ms: args.margin_ms,
            prestop: args
                .server_version
                .map(KubeVersion::prestop_action)
                .unwrap_or_default(),
        },
    );
    report.input.rejected_lines = rejected;

    let text = report::render(&report, args.output)?;
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
