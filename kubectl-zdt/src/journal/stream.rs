//! One stream of the journal (marks or counters): a directory of segment files named by the
//! sequence number of their first record, the newest one open for appending. Opening recovers:
//! the tail segment is scanned block by block and cut at the first block that does not check,
//! then appending resumes after the last good record. Limits are enforced by deleting whole
//! segments, oldest first.

use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    Error, Result,
    segment::{self, BlockMeta, Record},
};

const SUFFIX: &str = ".zdtj";

/// One segment file and the index of its blocks.
#[derive(Debug)]
pub struct Segment {
    pub path: Arc<Path>,
    pub first_seq: u64,
    pub blocks: Vec<BlockMeta>,
    /// File length (valid prefix).
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

/// What recovery found when the stream was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut off the tail segment (a torn last write).
    pub truncated_bytes: u64,
    /// Sealed segments whose block chain ended early (damage beyond a process kill).
    pub damaged_segments: Vec<PathBuf>,
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
        Ok(Self {
            dir: dir.to_owned(),
            limits,
            segments,
            active,
            recovery,
        })
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
        let next = self.next_seq();
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
/// headers. The read-only view of `kubectl zdt history --journal-dir`, and the first step of
/// [`Stream::open`].
pub fn scan(dir: &Path) -> Result<(Vec<Segment>, Recovery)> {
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let entry = entry.map_err(Error::io(dir))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((seq, entry.path()));
    }
    found.sort();
    let mut recovery = Recovery::default();
    let mut segments = Vec::with_capacity(found.len());
    let last = found.len().saturating_sub(1);
    for (i, (first_seq, path)) in found.into_iter().enumerate() {
        let scan = if i == last {
            segment::scan_full(&path)?
        } else {
            segment::scan_headers(&path)?
        };
        if scan.damaged {
            if i == last {
                recovery.truncated_bytes = std::fs::metadata(&path)
                    .map_err(Error::io(&path))?
                    .len()
                    .saturating_sub(scan.valid_len);
            } else {
                tracing::warn!(
                    "journal segment {} is damaged after {} bytes; the blocks before are kept",
                    path.display(),
                    scan.valid_len
                );
                recovery.damaged_segments.push(path.clone());
            }
        }
        segments.push(Segment {
            path: path.into(),
            first_seq,
            blocks: scan.blocks,
            bytes: scan.valid_len,
        });
    }
    Ok((segments, recovery))
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
