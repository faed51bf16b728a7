//! The node journal: every observation an agent makes, kept on the node's disk (a hostPath),
//! bounded by size and age, crash-safe, and queryable by time window (`GET /history`).
//! Format, crash model and bounds: docs/journal.md.
//!
//! The data flows: `append` → `fold` (counters folded to one line per key per second) → two
//! streams, `marks` and `counters`, each with its own byte budget so a storm of counters can
//! never evict a termination mark → `stream` (segment files, recovery, retention) →
//! `segment` (blocks with CRC) → `read` (time-ordered merge of a window) filtered by `query`.
//!
//! `writer` is the hidden `kubectl-zdt journal-writer` that the crash test kills.

pub mod fold;
pub mod query;
pub mod read;
pub mod segment;
pub mod stream;
pub mod writer;

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use jiff::Timestamp;
use thiserror::Error;

pub use query::HistoryQuery;
pub use read::Reader;
use stream::{Limits, Stream};

use crate::observation::Observation;

#[derive(Debug, Error)]
pub enum Error {
    #[error("journal file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} holds no journal (expected the marks/ and counters/ folders `kubectl-zdt agent --journal-dir` writes)"
    )]
    NotAJournal(PathBuf),
    #[error(
        "--journal-max-bytes {0}: too small for a journal (at least 1 MiB; the default is 256 MiB)"
    )]
    TooSmall(u64),
    #[error(
        "--journal-max-age 0s: a journal that keeps nothing; give a positive age like 7d (the default)"
    )]
    NoAge,
    #[error(
        "journal file {path} is format version {version}; this kubectl-zdt reads version 1: use the kubectl-zdt that wrote it, or a newer one"
    )]
    Version { path: PathBuf, version: u8 },
    #[error(
        "journal directory {dir} is in use by another agent ({holder}); give each agent its own --journal-dir"
    )]
    Locked { dir: PathBuf, holder: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Defaults a node owner would accept: 256 MiB, 7 days.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone, Debug)]
pub struct Config {
    pub dir: PathBuf,
    /// Bytes on disk for both streams together.
    pub max_bytes: u64,
    pub max_age: Duration,
    /// Share of `max_bytes` reserved for marks (the rest holds counters).
    pub marks_share: f64,
    /// Buffered lines are written at least this often.
    pub flush_interval: Duration,
    /// Counters of one key become at most one line per interval.
    pub fold_interval: Duration,
    /// fdatasync of the active segments this often (power loss); a process kill loses nothing
    /// written, synced or not.
    pub sync_interval: Duration,
    /// Segment size; `None`: 1/16 of the stream's budget, between 64 KiB and 16 MiB.
    pub segment_bytes: Option<u64>,
    /// A segment is closed once its records span this long.
    pub segment_span: Duration,
    /// See [`Limits::write_chunk`] (crash test only; 0 in production).
    pub write_chunk: usize,
}

impl Config {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            max_age: DEFAULT_MAX_AGE,
            marks_share: 0.5,
            flush_interval: Duration::from_secs(1),
            fold_interval: Duration::from_secs(1),
            sync_interval: Duration::from_secs(10),
            segment_bytes: None,
            segment_span: Duration::from_secs(3600),
            write_chunk: 0,
        }
    }

    /// Limits that keep nothing are refused (one line naming the flag).
    pub fn check(&self) -> Result<()> {
        if self.max_bytes < 1 << 20 {
            return Err(Error::TooSmall(self.max_bytes));
        }
        if self.max_age.is_zero() {
            return Err(Error::NoAge);
        }
        Ok(())
    }

    fn limits(&self, budget: u64) -> Limits {
        Limits {
            budget,
            segment_bytes: self
                .segment_bytes
                .unwrap_or((budget / 16).clamp(64 << 10, 16 << 20)),
            segment_span_ns: i64::try_from(self.segment_span.as_nanos()).unwrap_or(i64::MAX),
            write_chunk: self.write_chunk,
        }
    }
}

/// A byte size as the flags take it: `268435456`, `256Mi`, `1Gi`, `500M`.
pub fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 256Mi, 1Gi or 500M"))?;
    let factor: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}; use Ki, Mi, Gi, K, M or G"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A duration as the flags take it: `90s`, `2h`, `7d` (a day is 24 h), `1h30m`.
pub fn parse_age(s: &str) -> std::result::Result<Duration, String> {
    let bad =
        |e: &dyn std::fmt::Display| format!("{s:?} is not a duration like 90s, 2h or 7d: {e}");
    let span: jiff::Span = s.trim().parse().map_err(|e| bad(&e))?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| bad(&e))?;
    Duration::try_from(d).map_err(|_| format!("{s:?} is negative"))
}

/// Which stream a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    Marks,
    Counters,
}

/// Buffered records above this many bytes are written without waiting for the interval.
const MAX_BUFFERED: usize = 4 << 20;

pub struct Journal {
    /// Held (flock) while the journal is open: one writer per directory.
    _lock: std::fs::File,
    config: Config,
    marks: Stream,
    counters: Stream,
    mark_buf: Vec<segment::Record>,
    counter_buf: Vec<segment::Record>,
    buffered: usize,
    folder: fold::Folder,
    folded: Vec<fold::Closed>,
    last_flush: Instant,
    last_sync: Instant,
}

/// The lock file in a journal directory: flock'ed by the one agent writing there, and holding
/// who that is (pid, host, start) for the message a second one gets.
pub const LOCK_FILE: &str = "writer.lock";

/// Takes the directory's writer lock, or says who holds it.
fn lock(dir: &Path) -> Result<std::fs::File> {
    use std::io::{Read as _, Seek as _, Write as _};
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(Error::io(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(Error::Locked {
                dir: dir.to_owned(),
                holder: if holder.is_empty() {
                    "it has not written its pid yet".to_owned()
                } else {
                    holder.to_owned()
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path)(e)),
    }
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "an unknown host".to_owned());
    let who = format!(
        "pid {} on host {host}, since {}\n",
        std::process::id(),
        crate::observation::format_time(Timestamp::now())
    );
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(who.as_bytes()))
        .map_err(Error::io(&path))?;
    Ok(file)
}

fn nanos(t: Timestamp) -> i64 {
    query::clamped_nanos(t)
}

impl Journal {
    /// Opens the journal in `config.dir`, recovering both streams (a torn last write is cut
    /// off) so appending resumes after the last intact record.
    pub fn open(config: Config) -> Result<Self> {
        config.check()?;
        std::fs::create_dir_all(&config.dir).map_err(Error::io(&config.dir))?;
        let lock = lock(&config.dir)?;
        let marks_budget = (config.max_bytes as f64 * config.marks_share) as u64;
        let marks = Stream::open(&config.dir.join("marks"), config.limits(marks_budget))?;
        let counters = Stream::open(
            &config.dir.join("counters"),
            config.limits(config.max_bytes - marks_budget),
        )?;
        for (name, s) in [("marks", &marks), ("counters", &counters)] {
            if s.recovery.truncated_bytes > 0 {
                tracing::info!(
                    "journal {name}: cut {} bytes of an unfinished last write",
                    s.recovery.truncated_bytes
                );
            }
            for d in &s.recovery.damage {
                tracing::warn!("journal {name}: damage: {d}");
            }
        }
        Ok(Self {
            _lock: lock,
            folder: fold::Folder::new(config.fold_interval),
            config,
            marks,
            counters,
            mark_buf: Vec::new(),
            counter_buf: Vec::new(),
            buffered: 0,
            folded: Vec::new(),
            last_flush: Instant::now(),
            last_sync: Instant::now(),
        })
    }

    pub fn stream(&self, kind: StreamKind) -> &Stream {
        match kind {
            StreamKind::Marks => &self.marks,
            StreamKind::Counters => &self.counters,
        }
    }

    /// Every damage recovery found when the journal was opened, with its stream's name.
    pub fn damage(&self) -> impl Iterator<Item = (&'static str, &stream::Damage)> {
        let marks = self.marks.recovery.damage.iter().map(|d| ("marks", d));
        marks.chain(
            self.counters
                .recovery
                .damage
                .iter()
                .map(|d| ("counters", d)),
        )
    }

    /// Bytes on disk, both streams.
    pub fn bytes(&self) -> u64 {
        self.marks.bytes() + self.counters.bytes()
    }

    /// Appends one observation (`line` is its JSON, as the agent already serialized it; empty:
    /// serialize it here when it is stored).
    /// Written within `flush_interval`; counters are folded first.
    pub fn append_line(&mut self, o: &Observation, line: &str) -> Result<()> {
        if fold::is_counter(o.kind) {
            self.folder
                .add(o, (!line.is_empty()).then_some(line), &mut self.folded);
        } else {
            self.folder.before_mark(o, &mut self.folded);
            self.buffer(StreamKind::Marks, nanos(o.time), line.as_bytes().to_vec());
        }
        if !self.folded.is_empty() {
            self.take_folded();
        }
        if self.last_flush.elapsed() >= self.config.flush_interval || self.buffered > MAX_BUFFERED {
            self.flush()?;
        }
        Ok(())
    }

    /// Appends one observation, serializing it only if it is stored as it is (a mark).
    pub fn append(&mut self, o: &Observation) -> Result<()> {
        if fold::is_counter(o.kind) {
            self.append_line(o, "")
        } else {
            self.append_line(o, &o.to_json_line())
        }
    }

    fn buffer(&mut self, kind: StreamKind, t: i64, line: Vec<u8>) {
        self.buffered += line.len();
        match kind {
            StreamKind::Marks => self.mark_buf.push((t, line)),
            StreamKind::Counters => self.counter_buf.push((t, line)),
        }
    }

    fn take_folded(&mut self) {
        for c in std::mem::take(&mut self.folded) {
            self.buffer(StreamKind::Counters, nanos(c.time), c.line.into_bytes());
        }
    }

    /// Writes what is buffered: one block per stream, one `write(2)` each. After it returns the
    /// lines survive a kill of this process.
    pub fn flush(&mut self) -> Result<()> {
        self.marks.append(&mut self.mark_buf)?;
        self.mark_buf.clear();
        self.counters.append(&mut self.counter_buf)?;
        self.counter_buf.clear();
        self.buffered = 0;
        self.last_flush = Instant::now();
        // The byte budgets hold after every write, not only at the next tick.
        self.marks.enforce(i64::MIN)?;
        self.counters.enforce(i64::MIN)?;
        Ok(())
    }

    /// Periodic work (the agent calls it every 250 ms): closes counter folds whose interval
    /// passed at `now`, flushes when due, syncs when due, enforces the limits.
    pub fn tick(&mut self, now: Timestamp) -> Result<()> {
        self.folder.close_due(now, &mut self.folded);
        self.take_folded();
        if self.last_flush.elapsed() >= self.config.flush_interval {
            self.flush()?;
        }
        if self.last_sync.elapsed() >= self.config.sync_interval {
            self.marks.sync()?;
            self.counters.sync()?;
            self.last_sync = Instant::now();
        }
        self.enforce(now)?;
        Ok(())
    }

    /// Deletes whole old segments: over budget (per stream) or older than `max_age` at `now`.
    pub fn enforce(&mut self, now: Timestamp) -> Result<Vec<PathBuf>> {
        let age = i64::try_from(self.config.max_age.as_nanos()).unwrap_or(i64::MAX);
        let cutoff = nanos(now).saturating_sub(age);
        let mut deleted = self.marks.enforce(cutoff)?;
        deleted.extend(self.counters.enforce(cutoff)?);
        Ok(deleted)
    }

    /// Clean shutdown: every open fold closed, everything written and synced.
    pub fn close(&mut self) -> Result<()> {
        self.folder.drain(&mut self.folded);
        self.take_folded();
        self.flush()?;
        self.marks.sync()?;
        self.counters.sync()
    }

    /// Every record of a stream from sequence number `from` on, in sequence order, with its
    /// number: how the crash test reads exactly what was written. Errors name the damaged block.
    pub fn read_from(
        &self,
        kind: StreamKind,
        from: u64,
    ) -> std::result::Result<Vec<(u64, Vec<u8>)>, String> {
        let mut out = Vec::new();
        for b in self.stream(kind).blocks_from(from) {
            let file =
                std::fs::File::open(&b.path).map_err(|e| format!("{}: {e}", b.path.display()))?;
            let records = segment::read_block(&file, &b.meta)
                .map_err(|e| format!("{} block at {}: {e}", b.path.display(), b.meta.offset))?;
            for (i, (_, line)) in records.into_iter().enumerate() {
                let seq = b.meta.first_seq + i as u64;
                if seq >= from {
                    out.push((seq, line));
                }
            }
        }
        Ok(out)
    }

    /// A reader over the query's window, in time order. What is buffered is written first, so
    /// the answer holds everything appended until now (folds still open excepted: ≤ 1 s).
    pub fn query(&mut self, query: &HistoryQuery) -> Result<Reader> {
        self.flush()?;
        let (since, until) = query.window_ns();
        let mut blocks = Vec::new();
        self.marks.blocks_between(since, until, &mut blocks);
        self.counters.blocks_between(since, until, &mut blocks);
        Ok(Reader::new(blocks, query.clone()))
    }
}

/// A journal directory opened for reading only: an agent may be appending to it, so nothing
/// is cut or written (a torn last block is simply not read). `kubectl zdt history
/// --journal-dir` reads a node's journal this way.
pub struct ReadOnly {
    marks: Vec<stream::Segment>,
    counters: Vec<stream::Segment>,
    /// Every damage found (marks first). A torn last write of a stream's newest segment is not
    /// damage: an agent may be writing it right now.
    pub damage: Vec<stream::Damage>,
}

impl ReadOnly {
    pub fn open(dir: &Path) -> Result<Self> {
        let (m, c) = (dir.join("marks"), dir.join("counters"));
        if !m.is_dir() || !c.is_dir() {
            return Err(Error::NotAJournal(dir.to_owned()));
        }
        let (marks, mut damage) = stream::scan(&m)?;
        let (counters, c) = stream::scan(&c)?;
        damage.damage.extend(c.damage);
        Ok(Self {
            marks,
            counters,
            damage: damage.damage,
        })
    }

    /// A reader over the query's window, in time order.
    pub fn query(&self, query: &HistoryQuery) -> Reader {
        let (since, until) = query.window_ns();
        let mut blocks = Vec::new();
        stream::blocks_between(&self.marks, since, until, &mut blocks);
        stream::blocks_between(&self.counters, since, until, &mut blocks);
        Reader::new(blocks, query.clone())
    }
}

/// The journal as the agent shares it between its producer loop, its tick and its HTTP
/// readers. A failing disk is logged (once per kind of failure in a row), never fatal: the
/// live stream goes on.
pub struct Shared {
    journal: Mutex<Journal>,
    failing: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(journal: Journal) -> Self {
        Self {
            journal: Mutex::new(journal),
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self, r: Result<()>) {
        use std::sync::atomic::Ordering;
        match r {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("the journal is writable again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!("journal write failed (the live stream goes on): {e}");
                }
            }
        }
    }

    /// What recovery found when the journal was opened: `(stream, kind)` and the line
    /// naming it, per damage.
    pub fn damage(&self) -> Vec<(&'static str, &'static str, String)> {
        self.lock()
            .damage()
            .map(|(stream, d)| (stream, d.kind(), d.to_string()))
            .collect()
    }

    pub fn append_line(&self, o: &Observation, line: &str) {
        let r = self.lock().append_line(o, line);
        self.report(r);
    }

    pub fn tick(&self) {
        let r = self.lock().tick(Timestamp::now());
        self.report(r);
    }

    /// Clean shutdown (see [`Journal::close`]).
    pub fn close(&self) {
        let r = self.lock().close();
        self.report(r);
    }
}
