//! One stream of the journal (marks or counters): a directory of segment files named by the
//! sequence number of their first record, the newest one open for appending. Opening recovers:
//! the tail segment is scanned block by block, a damaged block is skipped (and named) and the
//! blocks after it kept, a torn last write — and only that — is cut, then appending resumes
//! after the last intact record. Limits are enforced by deleting whole
//! segments, oldest first.

use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    Error, Result,
    segment::{self, BlockMeta, DamageKind, Record},
};

const SUFFIX: &str = ".zdtj";

/// One segment file and the index of its blocks.
#[derive(Debug)]
pub struct Segment {
    pub path: Arc<Path>,
    pub first_seq: u64,
    pub blocks: Vec<BlockMeta>,
    /// Bytes on disk (the tail: its valid prefix, where the next block goes).
    pub bytes: u64,
}

impl Segment {
    pub fn min_time(&self) -> Option<i64> {
        self.blocks.iter().map(|b| b.min_time).min()
    }

    pub fn max_time(&self) -> Option<i64> {
        self.blocks.iter().map(|b| b.max_time).max()
    }

    fn next_seq(&self) -> u64 {
        self.blocks
            .last()
            .map_or(self.first_seq, BlockMeta::next_seq)
    }
}

/// A block a query will read: which file, and where.
#[derive(Clone, Debug)]
pub struct BlockRef {
    pub path: Arc<Path>,
    pub meta: BlockMeta,
}

/// Limits of one stream.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes on disk this stream may hold.
    pub budget: u64,
    /// A segment is closed and a new one started past this size...
    pub segment_bytes: u64,
    /// ...or once its records span this long (so age limits free space in steps of it).
    pub segment_span_ns: i64,
    /// Write each block in pieces of this many bytes (0: one `write(2)`). Only the crash test
    /// sets it, so that its kills land inside blocks and leave torn tails to recover from.
    pub write_chunk: usize,
}

/// Damage found in a stream: each one is named (logged, counted in the agent's metrics and
/// `status`, printed by `history --journal-dir`); what is intact around it is kept and read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Bytes of a segment holding no intact block, skipped. `lines`: how many lines they held,
    /// when the sequence numbers of the intact blocks around them tell.
    Bytes {
        path: PathBuf,
        offset: u64,
        len: u64,
        kind: DamageKind,
        lines: Option<u64>,
    },
    /// Lines of the stream found in no segment: sequence numbers `from..to` (a segment file
    /// deleted or renamed; retention only ever deletes the oldest).
    Missing { dir: PathBuf, from: u64, to: u64 },
    /// Lines from sequence number `seq` on appear a second time, in `path` (a renamed segment).
    Repeated { path: PathBuf, seq: u64 },
    /// A file in a stream's folder whose name is no segment's (a renamed segment?): not read.
    Stray { path: PathBuf },
}

impl Damage {
    /// A bounded name for the kind of damage (the metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Bytes {
                kind: DamageKind::FileHeader,
                ..
            } => "file_header",
            Self::Bytes {
                kind: DamageKind::Blocks,
                ..
            } => "blocks",
            Self::Bytes {
                kind: DamageKind::Tail,
                ..
            } => "tail",
            Self::Missing { .. } => "missing_segment",
            Self::Repeated { .. } => "repeated_lines",
            Self::Stray { .. } => "stray_file",
        }
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes {
                path,
                offset,
                len,
                kind,
                lines,
            } => {
                let (p, end) = (path.display(), offset + len);
                let lost = match lines {
                    Some(n) => format!("{n} lines lost"),
                    None => "the lines it held are unknown".to_owned(),
                };
                match kind {
                    DamageKind::FileHeader => write!(
                        f,
                        "{p}: file header (bytes 0..{end}) damaged; the blocks after it are read"
                    ),
                    DamageKind::Blocks => write!(
                        f,
                        "{p}: bytes {offset}..{end} damaged, skipped ({lost}); the blocks after them are read"
                    ),
                    DamageKind::Tail => write!(
                        f,
                        "{p}: bytes {offset}..{end} at the end damaged, skipped ({lost})"
                    ),
                }
            }
            Self::Missing { dir, from, to } => write!(
                f,
                "{}: lines {from}..{to} ({} lines) are in no segment (a segment file deleted or renamed?)",
                dir.display(),
                to - from
            ),
            Self::Repeated { path, seq } => write!(
                f,
                "{}: holds lines from {seq} on a second time (a segment renamed?); read as they are",
                path.display()
            ),
            Self::Stray { path } => write!(
                f,
                "{}: not a segment file name (a renamed segment?); not read",
                path.display()
            ),
        }
    }
}

/// What recovery found when the stream was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut off the tail segment: a torn last write (nothing else is ever cut).
    pub truncated_bytes: u64,
    /// Every damage found, in stream order.
    pub damage: Vec<Damage>,
}

pub struct Stream {
    dir: PathBuf,
    limits: Limits,
    segments: Vec<Segment>,
    active: File,
    pub recovery: Recovery,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SUFFIX}")
}

impl Stream {
    /// Opens (creating if needed) the stream in `dir`, recovering its tail.
    pub fn open(dir: &Path, limits: Limits) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let (mut segments, recovery) = scan(dir)?;
        let active = match segments.last_mut() {
            Some(tail) => reopen_tail(tail)?,
            None => {
                let path = dir.join(segment_name(0));
                let file = segment::create(&path)?;
                segments.push(Segment {
                    path: path.into(),
                    first_seq: 0,
                    blocks: Vec::new(),
                    bytes: segment::FILE_HEADER_LEN,
                });
                file
            }
        };
        let mut stream = Self {
            dir: dir.to_owned(),
            limits,
            segments,
            active,
            recovery,
        };
        // A segment renamed past the real tail holds older lines: continue after the highest
        // sequence number in a new segment, never reusing numbers (nor a file name).
        let highest = stream.segments.iter().map(Segment::next_seq).max();
        if highest > stream.segments.last().map(Segment::next_seq) {
            stream.rotate()?;
        }
        Ok(stream)
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.segments.last().map_or(0, Segment::next_seq)
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Appends `records` (sorted here by time, stably) as one block: one `write(2)`.
    pub fn append(&mut self, records: &mut [Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        records.sort_by_key(|r| r.0);
        let next = self.next_seq();
        let (block, mut meta) = segment::encode(records, next);
        let tail = self.segments.last().expect("a stream always has a segment");
        let full = !tail.blocks.is_empty()
            && (tail.bytes + block.len() as u64 > self.limits.segment_bytes
                || tail.min_time().is_some_and(|t| {
                    meta.max_time.saturating_sub(t) > self.limits.segment_span_ns
                }));
        if full {
            self.rotate()?;
        }
        let tail = self
            .segments
            .last_mut()
            .expect("a stream always has a segment");
        meta.offset = tail.bytes;
        let chunk = if self.limits.write_chunk == 0 {
            block.len()
        } else {
            self.limits.write_chunk
        };
        let written = block
            .chunks(chunk)
            .try_for_each(|piece| self.active.write_all(piece));
        if let Err(e) = written {
            // A partial write (disk full) must not stay between this block and the next.
            let _ = self.active.set_len(tail.bytes);
            return Err(Error::io(&tail.path)(e));
        }
        tail.bytes = meta.end();
        tail.blocks.push(meta);
        Ok(())
    }

    /// Seals the active segment (fdatasync: it is complete on disk even after a power loss)
    /// and starts the next one.
    fn rotate(&mut self) -> Result<()> {
        let next = self
            .segments
            .iter()
            .map(Segment::next_seq)
            .max()
            .unwrap_or(0);
        let tail = self.segments.last().expect("a stream always has a segment");
        self.active.sync_data().map_err(Error::io(&tail.path))?;
        let path = self.dir.join(segment_name(next));
        self.active = segment::create(&path)?;
        self.segments.push(Segment {
            path: path.into(),
            first_seq: next,
            blocks: Vec::new(),
            bytes: segment::FILE_HEADER_LEN,
        });
        Ok(())
    }

    /// fdatasync of the active segment.
    pub fn sync(&self) -> Result<()> {
        let tail = self.segments.last().expect("a stream always has a segment");
        self.active.sync_data().map_err(Error::io(&tail.path))
    }

    /// Deletes whole segments, oldest first, while the stream is over its byte budget, and every
    /// segment whose newest record is older than `cutoff_ns`. The active segment is kept unless
    /// all of it is too old (it is then sealed and deleted too).
    pub fn enforce(&mut self, cutoff_ns: i64) -> Result<Vec<PathBuf>> {
        let mut deleted = Vec::new();
        let tail_expired = self
            .segments
            .last()
            .and_then(Segment::max_time)
            .is_some_and(|t| t < cutoff_ns);
        if tail_expired {
            self.rotate()?;
        }
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let expired = oldest.max_time().is_none_or(|t| t < cutoff_ns);
            if !expired && self.bytes() <= self.limits.budget {
                break;
            }
            std::fs::remove_file(&oldest.path).map_err(Error::io(&oldest.path))?;
            deleted.push(oldest.path.to_path_buf());
            self.segments.remove(0);
        }
        Ok(deleted)
    }

    /// The blocks that may hold records in `[since, until)`, skipping whole segments first.
    pub fn blocks_between(&self, since: i64, until: i64, out: &mut Vec<BlockRef>) {
        blocks_between(&self.segments, since, until, out);
    }

    /// The blocks holding records with sequence numbers ≥ `from`.
    pub fn blocks_from(&self, from: u64) -> Vec<BlockRef> {
        self.segments
            .iter()
            .flat_map(|s| {
                s.blocks
                    .iter()
                    .filter(move |b| b.next_seq() > from)
                    .map(|b| BlockRef {
                        path: s.path.clone(),
                        meta: *b,
                    })
            })
            .collect()
    }
}

/// The blocks of `segments` that may hold records in `[since, until)`.
pub fn blocks_between(segments: &[Segment], since: i64, until: i64, out: &mut Vec<BlockRef>) {
    for s in segments {
        let overlaps = match (s.min_time(), s.max_time()) {
            (Some(lo), Some(hi)) => hi >= since && lo < until,
            _ => false,
        };
        if !overlaps {
            continue;
        }
        out.extend(
            s.blocks
                .iter()
                .filter(|b| b.max_time >= since && b.min_time < until)
                .map(|b| BlockRef {
                    path: s.path.clone(),
                    meta: *b,
                }),
        );
    }
}

/// Indexes the segments of the stream in `dir` without changing anything: the tail is read and
/// checked block by block (`recovery` says what a writer would cut), older segments by their
/// headers (read whole where the header chain does not hold). Every damage is in `recovery`;
/// the blocks around it are indexed. The read-only view of `kubectl zdt history
/// --journal-dir`, and the first step of [`Stream::open`].
pub fn scan(dir: &Path) -> Result<(Vec<Segment>, Recovery)> {
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    let mut recovery = Recovery::default();
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let entry = entry.map_err(Error::io(dir))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .filter(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            recovery.damage.push(Damage::Stray { path: entry.path() });
            continue;
        };
        found.push((seq, entry.path()));
    }
    found.sort();
    recovery.damage.sort_by_key(ToString::to_string);
    let mut segments = Vec::with_capacity(found.len());
    let last = found.len().saturating_sub(1);
    // The sequence number the next block should start at, and the damage since the last block
    // (the lines it held are the gap the next block shows).
    let mut expect: Option<u64> = None;
    let mut pending: Option<usize> = None;
    for (i, (first_seq, path)) in found.into_iter().enumerate() {
        let scan = if i == last {
            segment::scan_full(&path)?
        } else {
            segment::scan_headers(&path)?
        };
        let mut damaged = scan.damaged.clone();
        if i == last {
            recovery.truncated_bytes = scan.torn_bytes();
        } else if scan.torn_bytes() > 0 {
            // A sealed segment was whole when the next was created: a short end is damage.
            damaged.push(segment::Damaged {
                offset: scan.valid_len,
                len: scan.torn_bytes(),
                kind: DamageKind::Tail,
            });
        }
        let mut expect_here = expect.unwrap_or(first_seq);
        let mut damaged = damaged.into_iter().peekable();
        for b in &scan.blocks {
            while let Some(d) = damaged.next_if(|d| d.offset < b.offset) {
                pending = Some(recovery.damage.len());
                recovery.damage.push(bytes_damage(&path, d));
            }
            if b.first_seq > expect_here {
                match pending {
                    Some(p) => set_lines(&mut recovery.damage[p], b.first_seq - expect_here),
                    None => recovery.damage.push(Damage::Missing {
                        dir: dir.to_owned(),
                        from: expect_here,
                        to: b.first_seq,
                    }),
                }
            } else if b.first_seq < expect_here {
                recovery.damage.push(Damage::Repeated {
                    path: path.clone(),
                    seq: b.first_seq,
                });
            }
            pending = None;
            expect_here = b.next_seq();
        }
        for d in damaged {
            pending = Some(recovery.damage.len());
            recovery.damage.push(bytes_damage(&path, d));
        }
        expect = Some(expect_here);
        segments.push(Segment {
            path: path.into(),
            first_seq,
            blocks: scan.blocks,
            // The tail is appended to after its valid prefix; a sealed segment's damaged end
            // still takes space.
            bytes: if i == last { scan.valid_len } else { scan.len },
        });
    }
    Ok((segments, recovery))
}

fn bytes_damage(path: &Path, d: segment::Damaged) -> Damage {
    Damage::Bytes {
        path: path.to_owned(),
        offset: d.offset,
        len: d.len,
        kind: d.kind,
        lines: None,
    }
}

fn set_lines(d: &mut Damage, n: u64) {
    if let Damage::Bytes { lines, .. } = d {
        *lines = Some(n);
    }
}

/// Cuts the tail segment to its valid prefix (rewriting the file header if even that was torn)
/// and opens it for appending.
fn reopen_tail(tail: &mut Segment) -> Result<File> {
    let path = tail.path.clone();
    let file = File::options()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(Error::io(&path))?;
    let len = file.metadata().map_err(Error::io(&path))?.len();
    if tail.bytes < segment::FILE_HEADER_LEN {
        file.set_len(0).map_err(Error::io(&path))?;
        std::os::unix::fs::FileExt::write_all_at(&file, &segment::file_header(), 0)
            .map_err(Error::io(&path))?;
        tail.bytes = segment::FILE_HEADER_LEN;
    } else if len > tail.bytes {
        file.set_len(tail.bytes).map_err(Error::io(&path))?;
    }
    file.sync_data().map_err(Error::io(&path))?;
    drop(file);
    File::options()
        .append(true)
        .read(true)
        .open(&path)
        .map_err(Error::io(&path))
}
