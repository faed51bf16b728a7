//! `kubectl-zdt journal-writer` (hidden): appends numbered observations to a journal as fast as
//! it can and, after each flush, prints `flushed N` (every line numbered below N is written).
//! It first prints `start N CUT`: the number it resumes at and the bytes recovery cut off.
//! The crash test (tests/offline/journal.rs) kills it with SIGKILL at random instants and checks
//! that every flushed line survived intact and that the next writer resumes after them.

use std::{io::Write as _, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Args;
use jiff::Timestamp;

use super::{Config, Journal, StreamKind};
use crate::observation::{Kind, NodeName, Observation, PodRef};

#[derive(Debug, Args)]
pub struct WriterArgs {
    /// The journal directory.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Lines between flushes.
    #[arg(long, default_value_t = 500)]
    pub flush_every: u64,
    /// Segment size in bytes (small: rotations happen under the kill too).
    #[arg(long, default_value_t = 64 << 10)]
    pub segment_bytes: u64,
    /// Write each block in pieces of this many bytes (0: one write), so kills tear blocks.
    #[arg(long, default_value_t = 0)]
    pub write_chunk: usize,
    /// Stop after this many lines (the test kills the writer long before).
    #[arg(long, default_value_t = u64::MAX)]
    pub max: u64,
}

pub fn main(args: WriterArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::new(&args.dir);
    config.segment_bytes = Some(args.segment_bytes);
    config.write_chunk = args.write_chunk;
    config.max_bytes = 1 << 40;
    config.max_age = Duration::from_secs(100 * 365 * 24 * 3600);
    // Only explicit flushes: the test knows exactly what was written.
    config.flush_interval = Duration::from_secs(3600);
    let mut journal = Journal::open(config).context("failed to open the journal")?;
    let marks = journal.stream(StreamKind::Marks);
    let mut n = marks.next_seq();
    let mut out = std::io::stdout().lock();
    // Where appending resumes, and how many bytes of a torn last write recovery cut off.
    writeln!(out, "start {n} {}", marks.recovery.truncated_bytes)?;
    out.flush()?;
    let node = NodeName("crash-test".to_owned());
    for _ in 0..args.max {
        let mut o = Observation::new(Kind::Exec, Timestamp::now(), node.clone());
        // `n` is no field of the contract: the crash test's own sequence number.
        o.unknown.insert("n".to_owned(), n.into());
        o.details.process_mut().comm = Some("sh".to_owned());
        o.pod = Some(PodRef::new("default", "web-7d4b9c8f6d-abcde"));
        journal.append(&o)?;
        n += 1;
        if n % args.flush_every == 0 {
            journal.flush()?;
            writeln!(out, "flushed {n}")?;
            out.flush()?;
        }
    }
    journal.close()?;
    writeln!(out, "flushed {n}")?;
    Ok(ExitCode::SUCCESS)
}
