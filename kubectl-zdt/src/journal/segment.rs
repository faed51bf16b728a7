//! The segment file format (docs/journal.md): a 16-byte file header, then blocks appended one
//! `write(2)` each. A block is one flush of a stream: a 44-byte header (lengths, record count,
//! first sequence number, time range) and an LZ4-compressed payload of records, covered by one
//! CRC-32. A block whose header or CRC does not check is skipped up to the next intact block
//! (found by its magic, sane header and CRC); only a torn last write is ever cut.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::unix::fs::FileExt as _,
    path::Path,
};

use super::{Error, Result};

/// `ZDTJRNL` and the format version.
pub const FILE_MAGIC: [u8; 8] = *b"ZDTJRNL\x01";
pub const FILE_HEADER_LEN: u64 = 16;
/// `ZBLK`, little-endian.
const BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"ZBLK");
pub const BLOCK_HEADER_LEN: usize = 44;
/// No block is larger than this (raw or compressed): a header announcing more is damage.
pub const MAX_BLOCK_BYTES: u32 = 64 << 20;
/// Per record in the raw payload: time (i64) and line length (u32).
const RECORD_HEADER_LEN: usize = 12;

/// Where a block is and what it holds, as its header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockMeta {
    /// Offset of the block header in its segment file.
    pub offset: u64,
    pub payload_len: u32,
    pub raw_len: u32,
    pub count: u32,
    /// Sequence number of the block's first record in its stream.
    pub first_seq: u64,
    /// Earliest and latest record time, nanoseconds since the Unix epoch.
    pub min_time: i64,
    pub max_time: i64,
}

impl BlockMeta {
    /// Bytes the block occupies in the file.
    pub fn bytes(&self) -> u64 {
        BLOCK_HEADER_LEN as u64 + u64::from(self.payload_len)
    }

    pub fn end(&self) -> u64 {
        self.offset + self.bytes()
    }

    pub fn next_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }
}

/// One record: its time and its observation line (JSON, no newline).
pub type Record = (i64, Vec<u8>);

/// The file header of a new segment.
pub fn file_header() -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[..8].copy_from_slice(&FILE_MAGIC);
    h
}

/// Encodes records (already in time order) as one block (its `offset` is left 0: the caller
/// places it).
pub fn encode(records: &[Record], first_seq: u64) -> (Vec<u8>, BlockMeta) {
    let raw_len: usize = records
        .iter()
        .map(|(_, l)| RECORD_HEADER_LEN + l.len())
        .sum();
    let mut raw = Vec::with_capacity(raw_len);
    let (mut min_time, mut max_time) = (i64::MAX, i64::MIN);
    for (t, line) in records {
        raw.extend_from_slice(&t.to_le_bytes());
        raw.extend_from_slice(&(line.len() as u32).to_le_bytes());
        raw.extend_from_slice(line);
        min_time = min_time.min(*t);
        max_time = max_time.max(*t);
    }
    let payload = lz4_flex::block::compress(&raw);
    let meta = BlockMeta {
        offset: 0,
        payload_len: payload.len() as u32,
        raw_len: raw.len() as u32,
        count: records.len() as u32,
        first_seq,
        min_time,
        max_time,
    };
    let mut block = Vec::with_capacity(BLOCK_HEADER_LEN + payload.len());
    block.extend_from_slice(&BLOCK_MAGIC.to_le_bytes());
    block.extend_from_slice(&meta.payload_len.to_le_bytes());
    block.extend_from_slice(&meta.raw_len.to_le_bytes());
    block.extend_from_slice(&meta.count.to_le_bytes());
    block.extend_from_slice(&meta.first_seq.to_le_bytes());
    block.extend_from_slice(&meta.min_time.to_le_bytes());
    block.extend_from_slice(&meta.max_time.to_le_bytes());
    let crc = checksum(&block, &payload);
    block.extend_from_slice(&crc.to_le_bytes());
    block.extend_from_slice(&payload);
    (block, meta)
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..40]);
    h.update(payload);
    h.finalize()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parses a block header at `offset`; `None` when it is not one (torn, overwritten, garbage).
fn header(b: &[u8], offset: u64) -> Option<(BlockMeta, u32)> {
    if b.len() < BLOCK_HEADER_LEN || u32_at(b, 0) != BLOCK_MAGIC {
        return None;
    }
    let meta = BlockMeta {
        offset,
        payload_len: u32_at(b, 4),
        raw_len: u32_at(b, 8),
        count: u32_at(b, 12),
        first_seq: u64_at(b, 16),
        min_time: u64_at(b, 24) as i64,
        max_time: u64_at(b, 32) as i64,
    };
    let sane = meta.payload_len <= MAX_BLOCK_BYTES
        && meta.raw_len <= MAX_BLOCK_BYTES
        && meta.count > 0
        && meta.min_time <= meta.max_time
        && (meta.count as usize) * RECORD_HEADER_LEN <= meta.raw_len as usize;
    sane.then_some((meta, u32_at(b, 40)))
}

/// What a stretch of a segment that holds no intact block was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DamageKind {
    /// The 16-byte file header (the blocks after it are still read).
    FileHeader,
    /// Bytes between two intact blocks (or between the file header and the first intact
    /// block): one or more damaged blocks, skipped.
    Blocks,
    /// Bytes after the last intact block that are not an unfinished last write.
    Tail,
}

/// Bytes of a segment that hold no intact block: `[offset, offset + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Damaged {
    pub offset: u64,
    pub len: u64,
    pub kind: DamageKind,
}

/// What scanning a segment found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every intact block (CRC checked by [`scan_bytes`]; by [`scan_headers`] only its header).
    pub blocks: Vec<BlockMeta>,
    /// Stretches that hold no intact block, in file order. Resynchronisation: after a stretch
    /// that is no block, the next block is the first `ZBLK` whose header is sane and whose
    /// CRC checks.
    pub damaged: Vec<Damaged>,
    /// Where the file would end without its torn tail: the bytes after it are the beginning of
    /// one unfinished write (a block header, whole or not, announcing more bytes than the file
    /// holds, with no intact block after it). Only those bytes may be cut.
    pub valid_len: u64,
    /// The file length.
    pub len: u64,
}

impl Scan {
    /// Bytes of a torn last write after `valid_len`.
    pub fn torn_bytes(&self) -> u64 {
        self.len - self.valid_len
    }
}

/// A segment whose file header names a format version this build cannot read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownVersion(pub u8);

/// The intact block at `at`: sane header, inside the file, CRC matching.
fn block_at(bytes: &[u8], at: usize) -> Option<BlockMeta> {
    let (meta, crc) = header(bytes.get(at..)?, at as u64)?;
    let end = at.checked_add(meta.bytes() as usize)?;
    let block = bytes.get(at..end)?;
    (checksum(block, &block[BLOCK_HEADER_LEN..]) == crc).then_some(meta)
}

/// The start of an unfinished write: a block header (or a prefix of one) whose block runs past
/// the end of the file.
fn torn_at(bytes: &[u8], at: usize) -> bool {
    let rest = &bytes[at..];
    if rest.len() < BLOCK_HEADER_LEN {
        let magic = BLOCK_MAGIC.to_le_bytes();
        let n = rest.len().min(magic.len());
        return rest[..n] == magic[..n];
    }
    header(rest, at as u64).is_some_and(|(meta, _)| meta.bytes() > rest.len() as u64)
}

/// Where the next intact block after `from` starts, or else where a torn last write starts.
fn resync(bytes: &[u8], from: usize) -> (Option<BlockMeta>, Option<usize>) {
    let magic = BLOCK_MAGIC.to_le_bytes();
    let mut torn = None;
    for at in memchr::memmem::find_iter(&bytes[from..], &magic).map(|i| from + i) {
        if let Some(meta) = block_at(bytes, at) {
            return (Some(meta), None);
        }
        if torn.is_none() && torn_at(bytes, at) {
            torn = Some(at);
        }
    }
    // A magic cut short by the end of the file.
    let short = (bytes.len().saturating_sub(magic.len() - 1)..bytes.len())
        .filter(|&at| at >= from)
        .find(|&at| torn_at(bytes, at));
    (None, torn.or(short))
}

/// Scans a whole segment held in memory, checking every block's CRC and resynchronising after
/// damage: the recovery scan of the tail segment, and of a sealed segment whose header chain
/// does not hold. Never panics, whatever the bytes (tests/offline/journal_fuzz.rs).
pub fn scan_bytes(bytes: &[u8]) -> std::result::Result<Scan, UnknownVersion> {
    let len = bytes.len();
    let mut scan = Scan {
        len: len as u64,
        valid_len: len as u64,
        ..Scan::default()
    };
    if len < FILE_HEADER_LEN as usize {
        // A segment created and killed before its header was written: no block fits.
        scan.valid_len = 0;
        return Ok(scan);
    }
    let header_ok = bytes[..FILE_HEADER_LEN as usize] == file_header();
    let mut at = FILE_HEADER_LEN as usize;
    if !header_ok && block_at(bytes, at).is_none() {
        // The header's own length may be what is damaged: the first block may start earlier.
        if let (Some(first), _) = resync(bytes, 0) {
            at = at.min(first.offset as usize);
        }
    }
    let header_len = at as u64;
    while at < len {
        if let Some(meta) = block_at(bytes, at) {
            scan.blocks.push(meta);
            at = meta.end() as usize;
            continue;
        }
        let (next, torn) = resync(bytes, at);
        let stop = next.map_or_else(|| torn.unwrap_or(len), |m| m.offset as usize);
        if stop > at {
            scan.damaged.push(Damaged {
                offset: at as u64,
                len: (stop - at) as u64,
                kind: if next.is_some() {
                    DamageKind::Blocks
                } else {
                    DamageKind::Tail
                },
            });
        }
        if next.is_none() {
            scan.valid_len = stop as u64;
            break;
        }
        at = stop;
    }
    if !header_ok {
        // A future version is refused rather than misread; a damaged header over blocks this
        // version reads (or over none) is damage.
        let other_version = bytes[..7] == FILE_MAGIC[..7];
        if other_version && scan.blocks.is_empty() && len > FILE_HEADER_LEN as usize {
            return Err(UnknownVersion(bytes[7]));
        }
        scan.damaged.insert(
            0,
            Damaged {
                offset: 0,
                len: header_len,
                kind: DamageKind::FileHeader,
            },
        );
    }
    Ok(scan)
}

/// Reads a whole segment and scans it ([`scan_bytes`]).
pub fn scan_full(path: &Path) -> Result<Scan> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(Error::io(path))?;
    scan_bytes(&bytes).map_err(|UnknownVersion(v)| Error::Version {
        path: path.to_owned(),
        version: v,
    })
}

/// Walks a sealed segment's block headers without reading payloads (their CRC is checked when a
/// query reads them). Where the chain does not hold — a header that does not parse, a block
/// past the end, sequence numbers that do not follow, bytes after the last block, a damaged
/// file header — the whole file is read and scanned instead ([`scan_full`]), so the blocks after
/// the damage are found and the damage is named.
pub fn scan_headers(path: &Path) -> Result<Scan> {
    let file = File::open(path).map_err(Error::io(path))?;
    let len = file.metadata().map_err(Error::io(path))?.len();
    let mut head = [0u8; FILE_HEADER_LEN as usize];
    if len < FILE_HEADER_LEN || file.read_exact_at(&mut head, 0).is_err() || head != file_header() {
        return scan_full(path);
    }
    let mut scan = Scan {
        len,
        valid_len: len,
        ..Scan::default()
    };
    let mut at = FILE_HEADER_LEN;
    let mut buf = [0u8; BLOCK_HEADER_LEN];
    while at < len {
        let meta = (at + BLOCK_HEADER_LEN as u64 <= len)
            .then(|| file.read_exact_at(&mut buf, at).ok())
            .flatten()
            .and_then(|()| header(&buf, at))
            .map(|(meta, _)| meta);
        let follows = |m: &BlockMeta| {
            m.end() <= len
                && scan
                    .blocks
                    .last()
                    .is_none_or(|p: &BlockMeta| p.next_seq() == m.first_seq)
        };
        match meta {
            Some(m) if follows(&m) => {
                scan.blocks.push(m);
                at = m.end();
            }
            _ => return scan_full(path),
        }
    }
    Ok(scan)
}

/// Reads one block back, checks its CRC and returns its records in stored (time) order.
pub fn read_block(file: &File, meta: &BlockMeta) -> std::result::Result<Vec<Record>, String> {
    let raw = read_raw(file, meta)?;
    Ok(records(&raw).map(|(t, l)| (t, l.to_vec())).collect())
}

/// The records of a decoded payload, borrowed.
pub fn records(raw: &[u8]) -> impl Iterator<Item = (i64, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at + RECORD_HEADER_LEN > raw.len() {
            return None;
        }
        let t = u64_at(raw, at) as i64;
        let len = u32_at(raw, at + 8) as usize;
        let start = at + RECORD_HEADER_LEN;
        let line = raw.get(start..start + len)?;
        at = start + len;
        Some((t, line))
    })
}

/// Reads one block back, checks its CRC and record structure, and returns the decompressed
/// payload (iterate it with [`records`]).
pub fn read_raw(file: &File, meta: &BlockMeta) -> std::result::Result<Vec<u8>, String> {
    let mut bytes = vec![0u8; meta.bytes() as usize];
    file.read_exact_at(&mut bytes, meta.offset)
        .map_err(|e| format!("read failed: {e}"))?;
    decode(&bytes, meta)
}

/// Checks the bytes of one block (header and payload) against `meta`, its CRC and its record
/// structure, and returns the decompressed payload. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8], meta: &BlockMeta) -> std::result::Result<Vec<u8>, String> {
    if bytes.len() as u64 != meta.bytes() {
        return Err("block length does not match the header".to_owned());
    }
    let Some((found, crc)) = header(bytes, meta.offset) else {
        return Err("block header damaged".to_owned());
    };
    if found != *meta {
        return Err("block header changed".to_owned());
    }
    let payload = &bytes[BLOCK_HEADER_LEN..];
    if checksum(bytes, payload) != crc {
        return Err("checksum mismatch".to_owned());
    }
    let raw = lz4_flex::block::decompress(payload, meta.raw_len as usize)
        .map_err(|e| format!("undecodable payload: {e}"))?;
    let (mut at, mut n) = (0, 0usize);
    while at + RECORD_HEADER_LEN <= raw.len() {
        at += RECORD_HEADER_LEN + u32_at(&raw, at + 8) as usize;
        n += 1;
    }
    if n != meta.count as usize || at != raw.len() {
        return Err("record count does not match the header".to_owned());
    }
    Ok(raw)
}

/// Creates a segment file holding only its header.
pub fn create(path: &Path) -> Result<File> {
    let mut file = File::options()
        .create_new(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(Error::io(path))?;
    file.write_all(&file_header()).map_err(Error::io(path))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize, t0: i64) -> Vec<Record> {
        (0..n)
            .map(|i| {
                (
                    t0 + i as i64,
                    format!(r#"{{"kind":"exec","n":{i}}}"#).into_bytes(),
                )
            })
            .collect()
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("zdt-seg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_block_round_trips_and_its_header_says_what_it_holds() {
        let recs = records(100, 1_000);
        let (bytes, mut meta) = encode(&recs, 7);
        meta.offset = FILE_HEADER_LEN;
        assert_eq!(meta.bytes(), bytes.len() as u64);
        assert_eq!((meta.count, meta.first_seq, meta.next_seq()), (100, 7, 107));
        assert_eq!((meta.min_time, meta.max_time), (1_000, 1_099));
        let d = dir("roundtrip");
        let path = d.join("0.seg");
        let mut f = create(&path).unwrap();
        f.write_all(&bytes).unwrap();
        assert_eq!(read_block(&f, &meta).unwrap(), recs);
        let scan = scan_full(&path).unwrap();
        assert_eq!(scan.blocks, [meta]);
        assert!(scan.damaged.is_empty() && scan.torn_bytes() == 0);
        assert_eq!(scan_headers(&path).unwrap().blocks, [meta]);
        let _ = std::fs::remove_dir_all(d);
    }

    /// Every possible torn write of the last block (the file cut at any byte) is cut off and
    /// leaves exactly the blocks before it; a flipped bit in the last block is damage, named
    /// and kept (not cut: it is no unfinished write).
    #[test]
    fn a_torn_last_block_is_cut_off_and_a_flipped_one_is_named_not_cut() {
        let d = dir("torn");
        let path = d.join("0.seg");
        let (first, mut m1) = encode(&records(20, 0), 0);
        m1.offset = FILE_HEADER_LEN;
        let (second, _) = encode(&records(20, 100), 20);
        let mut whole = file_header().to_vec();
        whole.extend_from_slice(&first);
        whole.extend_from_slice(&second);
        for cut in m1.end() as usize..whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let scan = scan_full(&path).unwrap();
            assert_eq!(scan.blocks, [m1], "cut at {cut}");
            assert_eq!(scan.valid_len, m1.end());
            assert!(scan.damaged.is_empty(), "cut at {cut}: {:?}", scan.damaged);
        }
        for byte in m1.end() as usize..whole.len() {
            for bit in [0u8, 3, 7] {
                let mut bad = whole.clone();
                bad[byte] ^= 1 << bit;
                let scan = scan_bytes(&bad).unwrap();
                assert_eq!(scan.blocks, [m1], "bit {bit} of byte {byte}");
                // A flip that makes the header announce more than the file holds looks like a
                // torn write, and is one as far as the bytes tell; anything else is damage.
                let damaged: u64 = scan.damaged.iter().map(|d| d.len).sum();
                assert_eq!(
                    damaged + scan.torn_bytes(),
                    whole.len() as u64 - m1.end(),
                    "bit {bit} of byte {byte}"
                );
                if scan.torn_bytes() > 0 {
                    assert!(byte < m1.end() as usize + 12, "bit {bit} of byte {byte}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(d);
    }

    /// A damaged block in the middle is skipped: the blocks after it are found again by their
    /// magic, sane header and CRC, and the damage is the exact stretch in between.
    #[test]
    fn a_damaged_middle_block_is_skipped_and_the_blocks_after_it_are_kept() {
        let mut whole = file_header().to_vec();
        let mut metas = Vec::new();
        for i in 0..5u64 {
            let (b, mut m) = encode(&records(20, i as i64 * 100), i * 20);
            m.offset = whole.len() as u64;
            whole.extend_from_slice(&b);
            metas.push(m);
        }
        let victim = metas[2];
        for byte in victim.offset..victim.end() {
            let mut bad = whole.clone();
            bad[byte as usize] ^= 0x10;
            let scan = scan_bytes(&bad).unwrap();
            let kept: Vec<_> = metas.iter().copied().filter(|m| *m != victim).collect();
            assert_eq!(scan.blocks, kept, "byte {byte}");
            assert_eq!(
                scan.damaged,
                [Damaged {
                    offset: victim.offset,
                    len: victim.bytes(),
                    kind: DamageKind::Blocks
                }],
                "byte {byte}"
            );
            assert_eq!(scan.torn_bytes(), 0);
        }
        // A zeroed file magic is damage of the header only: every block is read.
        let mut bad = whole.clone();
        bad[..8].fill(0);
        let scan = scan_bytes(&bad).unwrap();
        assert_eq!(scan.blocks, metas);
        assert_eq!(scan.damaged[0].kind, DamageKind::FileHeader);
        assert_eq!(scan.damaged.len(), 1);
        // A future format version is refused, not misread as damage.
        let mut future = file_header().to_vec();
        future[7] = 2;
        future.extend_from_slice(&[0xAB; 100]);
        assert_eq!(scan_bytes(&future).unwrap_err(), UnknownVersion(2));
    }

    /// A segment of a newer format is refused with one line naming it, never read as damage
    /// (which the writer would then append version-1 blocks after).
    #[test]
    fn a_newer_format_version_is_refused_by_name() {
        let d = dir("version");
        let path = d.join("0.seg");
        let mut future = file_header().to_vec();
        future[7] = 2;
        future.extend_from_slice(&[0x5A; 300]);
        std::fs::write(&path, &future).unwrap();
        let err = scan_full(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "journal file {} is format version 2; this kubectl-zdt reads version 1: use the kubectl-zdt that wrote it, or a newer one",
                path.display()
            )
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_file_without_the_header_holds_nothing() {
        let d = dir("nohdr");
        let path = d.join("0.seg");
        std::fs::write(&path, b"ZDTJ").unwrap();
        let scan = scan_full(&path).unwrap();
        assert!(scan.blocks.is_empty() && scan.torn_bytes() == 4 && scan.valid_len == 0);
        std::fs::write(&path, b"").unwrap();
        assert_eq!(scan_full(&path).unwrap().torn_bytes(), 0);
        let _ = std::fs::remove_dir_all(d);
    }
}
