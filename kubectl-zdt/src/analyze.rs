//! `kubectl zdt analyze FILE…`: read observation streams, correlate, print the report.

use std::{
    io::{BufRead as _, BufReader, Read, Write as _},
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
    /// capture); `-` reads standard input. Several files (one per node, say) are read merged
    /// by the observations' time.
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

/// One input stream, readable as often as the analysis needs: a file, or standard input,
/// which can be read only once: the first reading copies what it reads to an unlinked
/// temporary file (in `TMPDIR`), which the later readings read. Only what the reader reads is
/// copied: a stream it stops reading (a line over the limit, `/dev/zero`) is not copied whole.
struct Source {
    name: String,
    file: std::fs::File,
    /// Standard input not read yet.
    stdin: bool,
}

/// Reads `inner`, writing what it reads to `copy`.
struct Tee<'a, R> {
    inner: R,
    copy: &'a std::fs::File,
}

impl<R: std::io::Read> std::io::Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

impl Source {
    fn open(path: &Path) -> anyhow::Result<Self> {
        if path.as_os_str() != "-" {
            let file = std::fs::File::open(path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            return Ok(Self {
                name: path.display().to_string(),
                file,
                stdin: false,
            });
        }
        let copy = std::env::temp_dir().join(format!(
            "kubectl-zdt-stdin-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&copy)
            .with_context(|| {
                format!(
                    "failed to create {} to keep standard input in (set TMPDIR to a writable directory)",
                    copy.display()
                )
            })?;
        // Unlinked at once: it goes with the process, however it ends.
        let _ = std::fs::remove_file(&copy);
        Ok(Self {
            name: "<stdin>".to_owned(),
            file,
            stdin: true,
        })
    }

    /// The observations of the source from its start. A compressed stream is one error naming
    /// the tool that reads it.
    fn lines(&mut self) -> anyhow::Result<input::Reader<BufReader<Box<dyn Read + '_>>>> {
        use std::io::Seek as _;
        let name = &self.name;
        let mut file = &self.file;
        let source: Box<dyn Read + '_> = if std::mem::take(&mut self.stdin) {
            Box::new(Tee {
                inner: std::io::stdin().lock(),
                copy: file,
            })
        } else {
            file.seek(std::io::SeekFrom::Start(0))
                .with_context(|| format!("failed to read {name}"))?;
            Box::new(file)
        };
        let mut reader = BufReader::with_capacity(1 << 16, source);
        let head = reader
            .fill_buf()
            .with_context(|| format!("failed to read {name}"))?;
        if let Some((kind, cat)) = input::compression(head) {
            let shown = if name == "<stdin>" { "FILE" } else { name };
            bail!(
                "{name} is {kind}-compressed; observations are JSON lines: uncompress it first, e.g. `{cat} {shown} | kubectl zdt analyze -`"
            );
        }
        Ok(input::Reader::new(reader))
    }
}

/// Reads `sources` from their start merged by the observations' time ([`input::Merged`]: one
/// file per node of the same hours reads as one stream in time order, which the analysis can
/// cut into windows), handing each observation to `each`; their unreadable lines as
/// `NAME:LINE: problem`, file by file.
fn read_merged(
    sources: &mut [Source],
    each: &mut dyn FnMut(Observation),
    rejected: &mut Vec<String>,
) -> anyhow::Result<()> {
    let names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
    let readers = sources
        .iter_mut()
        .map(Source::lines)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut merged = input::Merged::new(readers);
    for o in &mut merged {
        match o {
            Ok(o) => each(o),
            Err((i, e)) => {
                return Err(anyhow::Error::new(e).context(format!("failed to read {}", names[i])));
            }
        }
    }
    for (name, reader) in names.iter().zip(merged.into_streams()) {
        rejected.extend(
            reader
                .problems
                .into_iter()
                .map(|p| format!("{name}:{}: {}", p.line, p.problem)),
        );
    }
    Ok(())
}

/// Files a process opens besides its inputs (standard streams, the binary's own, a few for
/// the runtime).
const OTHER_FILES: u64 = 64;

/// Raises the limit on open files (its soft value) to what `files` inputs need: all are held
/// open while they are read merged by time (one file per node of a large cluster is more
/// than the usual 1 024). An error naming both numbers when even the hard limit is lower.
fn open_files_for(files: usize) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let need = u64::try_from(files)
        .unwrap_or(u64::MAX)
        .saturating_add(OTHER_FILES);
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .context("failed to read the limit on open files (RLIMIT_NOFILE)")?;
    if soft >= need {
        return Ok(());
    }
    if hard < need {
        bail!(
            "{files} input files are more than this process may hold open at once (its hard limit is {hard} files, {OTHER_FILES} of them for itself): raise it (`ulimit -Hn`, as root) or concatenate some of them first (`cat a.jsonl b.jsonl > ab.jsonl`: the same report, read whole)"
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, need, hard)
        .context("failed to raise the limit on open files (RLIMIT_NOFILE)")
}

pub use crate::correlate::input::drop_duplicates;

/// What the input streams held.
pub(crate) struct Streams {
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

/// Prints the unreadable lines on stderr (the first few one by one).
fn show_rejected(rejected: &[String]) {
    for line in rejected.iter().take(SHOWN_PROBLEMS) {
        eprintln!("kubectl-zdt: {line}");
    }
    if rejected.len() > SHOWN_PROBLEMS {
        eprintln!(
            "kubectl-zdt: … and {} more unreadable lines",
            rejected.len() - SHOWN_PROBLEMS
        );
    }
}

/// The error for inputs without a single observation.
fn nothing_read(files: &[PathBuf]) -> anyhow::Error {
    anyhow::anyhow!(
        "no observation could be read from {}; expected JSON lines as written by `kubectl zdt agent` (see docs/observations.md)",
        files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `files` (`-` is standard input) merged by time ([`read_merged`]), analysed a window at a
/// time where the stream allows (`correlate::window`: the memory held grows with what is alive
/// at one time, not with the stream), else whole; only the observations `keep` accepts. The unreadable lines are
/// reported on stderr (the first few one by one) and returned as `FILE:LINE: problem`; the
/// duplicates warning is printed. An error when no line at all could be read.
pub(crate) fn analyse_streams(
    files: &[PathBuf],
    options: &Options,
    keep: &dyn Fn(&Observation) -> bool,
) -> anyhow::Result<(correlate::window::Analysis, Streams)> {
    open_files_for(files.len())?;
    let mut sources: Vec<Source> = files
        .iter()
        .map(|p| Source::open(p))
        .collect::<anyhow::Result<_>>()?;
    let mut rejected: Option<Vec<String>> = None;
    let started = std::time::Instant::now();
    let mut reading = 0;
    let analysis = correlate::window::analyse(
        &mut |each| {
            reading += 1;
            let began = std::time::Instant::now();
            // The unreadable lines of the first reading only: every reading meets the same.
            let mut problems = Vec::new();
            read_merged(
                &mut sources,
                &mut |o| {
                    if keep(&o) {
                        each(o);
                    }
                },
                &mut problems,
            )?;
            rejected.get_or_insert(problems);
            // The first reading is the survey; each later one also analyses.
            tracing::debug!(
                "reading {reading} of the input took {:.2?}",
                began.elapsed()
            );
            Ok::<(), anyhow::Error>(())
        },
        options,
        correlate::window::CUT_GAP_NS,
    )?;
    match &analysis.whole {
        None => tracing::debug!(
            "analysed in {:.2?}, {} windows, at most {} observations held at once, {} pods and {} client errors naming only their Service held to the end, the input read {} times",
            started.elapsed(),
            analysis.windows,
            analysis.max_held,
            analysis.held_to_end.0,
            analysis.held_to_end.1,
            analysis.reads
        ),
        Some(why) => tracing::debug!(
            "analysed in {:.2?}, {why} ({} observations held), the input read {} times",
            started.elapsed(),
            analysis.max_held,
            analysis.reads
        ),
    }
    let rejected = rejected.unwrap_or_default();
    show_rejected(&rejected);
    if analysis.report.input.observations == 0 {
        return Err(nothing_read(files));
    }
    let streams = Streams {
        rejected,
        duplicates: analysis.duplicates,
    };
    if let Some(w) = streams.duplicates_warning() {
        eprintln!("kubectl-zdt: warning: {w}");
    }
    Ok((analysis, streams))
}

pub fn main(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    reuse_freed_memory();
    let options = Options {
        margin_ms: args.margin_ms,
        prestop: args
            .server_version
            .map(KubeVersion::prestop_action)
            .unwrap_or_default(),
    };
    let (analysis, streams) = analyse_streams(&args.files, &options, &|_| true)?;
    drop(analysis.evidence);
    let mut report = analysis.report;
    report.warnings.extend(streams.duplicates_warning());
    report.input.rejected_lines = streams.rejected;

    let started = std::time::Instant::now();
    report::render_to(
        &report,
        args.output,
        &mut std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock()),
    )?;
    tracing::debug!("rendered and written in {:.2?}", started.elapsed());
    if let Some(path) = &args.html {
        std::fs::write(path, report::html::render(&report))
            .with_context(|| format!("failed to write the HTML report to {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Keeps the memory `analyze` frees for its next window instead of handing it back to the
/// kernel. A window's vectors are larger than glibc's largest mmap threshold (32 MiB), so glibc
/// mapped each afresh and unmapped it when freed, and every window paid its page faults again
/// (15 % of a run, perf). With large blocks taken from the heap and the heap never trimmed, a
/// 1 GB stream was analysed 11–37 % faster for a peak 4.5 % higher (BENCHMARKS.md). musl's
/// allocator, the image's, has no such parameters.
fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
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
        assert_eq!(input::drop_duplicates_hashed(&mut obs, &state), 3);
        assert_eq!(obs, vec![a, other_port, b, extra]);
    }
}
