//! The journal block reader under random bytes (a bounded fuzz run in CI: proptest's default
//! 256 cases per property; `PROPTEST_CASES=100000` runs a longer one). Whatever the bytes, the
//! segment scan and the block decoder never panic; what the scan calls a block decodes to the
//! records its header announces; blocks, damage and torn tail tile the file exactly; and every
//! block of a real segment that a mutation (bit flips, overwritten or zeroed bytes, bytes
//! inserted or removed, a cut) left untouched is still found, with its lines.

use kubectl_zdt::journal::segment::{self, BlockMeta, DamageKind, FILE_HEADER_LEN, Scan};
use proptest::prelude::*;

/// The scan's invariants on `bytes`; returns the decoded blocks' first sequence numbers.
fn check_scan(bytes: &[u8], scan: &Scan) -> Vec<u64> {
    assert_eq!(scan.len, bytes.len() as u64);
    assert!(scan.valid_len <= scan.len);
    let mut firsts = Vec::new();
    // Blocks and damage in file order, never overlapping, covering the file from byte 16 up
    // to the torn tail.
    let mut pieces: Vec<(u64, u64)> = scan.blocks.iter().map(|b| (b.offset, b.end())).collect();
    pieces.extend(
        scan.damaged
            .iter()
            .filter(|d| d.kind != DamageKind::FileHeader)
            .map(|d| (d.offset, d.offset + d.len)),
    );
    pieces.sort_unstable();
    if scan.len >= FILE_HEADER_LEN {
        // After the file header, or where a damaged one ends.
        let mut at = scan
            .damaged
            .iter()
            .find(|d| d.kind == DamageKind::FileHeader)
            .map_or(FILE_HEADER_LEN, |d| d.len);
        for (start, end) in &pieces {
            assert_eq!(*start, at, "a gap or an overlap at {at}: {scan:?}");
            assert!(end > start);
            at = *end;
        }
        assert_eq!(at, scan.valid_len.max(at.min(FILE_HEADER_LEN)), "{scan:?}");
    } else {
        assert!(pieces.is_empty() && scan.valid_len == 0);
    }
    for b in &scan.blocks {
        let raw = segment::decode(&bytes[b.offset as usize..b.end() as usize], b)
            .unwrap_or_else(|e| panic!("a block the scan kept does not decode: {e}"));
        let records: Vec<_> = segment::records(&raw).collect();
        assert_eq!(records.len(), b.count as usize);
        assert!(
            records
                .iter()
                .all(|(t, _)| (b.min_time..=b.max_time).contains(t))
        );
        firsts.push(b.first_seq);
    }
    firsts
}

fn scan(bytes: &[u8]) -> Option<Scan> {
    // A version byte other than 1 with no version-1 block in the file is refused: fine.
    segment::scan_bytes(bytes).ok()
}

/// A real segment: `blocks` blocks of a few records each.
fn real_segment(blocks: &[Vec<(i64, Vec<u8>)>]) -> (Vec<u8>, Vec<BlockMeta>) {
    let mut bytes = segment::file_header().to_vec();
    let mut metas = Vec::new();
    let mut seq = 0;
    for records in blocks {
        let mut records = records.clone();
        records.sort_by_key(|r| r.0);
        let (b, mut m) = segment::encode(&records, seq);
        m.offset = bytes.len() as u64;
        seq = m.next_seq();
        bytes.extend_from_slice(&b);
        metas.push(m);
    }
    (bytes, metas)
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Overwrite { at: usize, with: Vec<u8> },
    Zero { at: usize, len: usize },
    Insert { at: usize, with: Vec<u8> },
    Remove { at: usize, len: usize },
    Cut { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (
        0u8..6,
        any::<usize>(),
        0u8..8,
        1usize..300,
        prop::collection::vec(any::<u8>(), 1..64),
    )
        .prop_map(|(kind, at, bit, len, with)| match kind {
            0 => Mutation::Flip { at, bit },
            1 => Mutation::Overwrite { at, with },
            2 => Mutation::Zero { at, len },
            3 => Mutation::Insert { at, with },
            4 => Mutation::Remove {
                at,
                len: len / 3 + 1,
            },
            _ => Mutation::Cut { at },
        })
}

/// Applies `m` to `bytes` and returns the byte range of the original it touched (for an
/// insertion, the empty range where it went), and by how much later bytes moved.
fn apply(bytes: &mut Vec<u8>, m: &Mutation) -> (usize, usize, isize) {
    let len = bytes.len();
    let pos = |at: usize| at % (len + 1);
    match m {
        Mutation::Flip { at, bit } => {
            let at = at % len;
            bytes[at] ^= 1 << bit;
            (at, at + 1, 0)
        }
        Mutation::Overwrite { at, with } => {
            let at = pos(*at);
            let end = (at + with.len()).min(len);
            bytes[at..end].copy_from_slice(&with[..end - at]);
            (at, end, 0)
        }
        Mutation::Zero { at, len: n } => {
            let at = pos(*at);
            let end = (at + n).min(len);
            bytes[at..end].fill(0);
            (at, end, 0)
        }
        Mutation::Insert { at, with } => {
            let at = pos(*at);
            bytes.splice(at..at, with.iter().copied());
            (at, at, with.len() as isize)
        }
        Mutation::Remove { at, len: n } => {
            let at = pos(*at);
            let end = (at + n).min(len);
            bytes.drain(at..end);
            (at, end, -((end - at) as isize))
        }
        Mutation::Cut { at } => {
            let at = pos(*at);
            bytes.truncate(at);
            (at, len, 0)
        }
    }
}

fn records() -> impl Strategy<Value = Vec<(i64, Vec<u8>)>> {
    prop::collection::vec(
        (any::<i64>(), prop::collection::vec(any::<u8>(), 0..80)),
        1..6,
    )
}

proptest! {
    /// Random bytes behind a valid file header, or with none: the scan never panics and its
    /// answer is consistent.
    #[test]
    fn random_bytes_never_break_the_scan(
        body in prop::collection::vec(any::<u8>(), 0..2048),
        with_header in any::<bool>(),
    ) {
        let mut bytes = if with_header { segment::file_header().to_vec() } else { Vec::new() };
        bytes.extend_from_slice(&body);
        if let Some(s) = scan(&bytes) {
            check_scan(&bytes, &s);
        }
    }

    /// The block decoder never panics on random bytes under any header it is handed.
    #[test]
    fn random_blocks_never_break_the_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        payload_len in 0u32..600,
        raw_len in 0u32..4096,
        count in 0u32..100,
    ) {
        let meta = BlockMeta {
            offset: 0,
            payload_len,
            raw_len,
            count,
            first_seq: 0,
            min_time: 0,
            max_time: 0,
        };
        let _ = segment::decode(&bytes, &meta);
    }

    /// A real segment, mutated a few times: every block no mutation touched is still found
    /// (moved, if bytes were inserted or removed before it), and the scan stays consistent.
    #[test]
    fn mutations_of_a_real_segment_lose_no_untouched_block(
        blocks in prop::collection::vec(records(), 1..8),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let (mut bytes, metas) = real_segment(&blocks);
        // Where each original block is now, or None once a mutation touched it.
        let mut places: Vec<Option<(u64, u64)>> =
            metas.iter().map(|m| Some((m.offset, m.end()))).collect();
        for m in &mutations {
            if bytes.is_empty() {
                break;
            }
            let (start, end, shift) = apply(&mut bytes, m);
            let (start, end) = (start as u64, end as u64);
            for place in &mut places {
                if let Some((s, e)) = *place {
                    let touched = if start == end { start > s && start < e } else { start < e && end > s };
                    let cut = matches!(m, Mutation::Cut { .. }) && e > start;
                    *place = if touched || cut {
                        None
                    } else if s >= end {
                        Some(((s as i64 + shift as i64) as u64, (e as i64 + shift as i64) as u64))
                    } else {
                        Some((s, e))
                    };
                }
            }
        }
        let Some(s) = scan(&bytes) else {
            return Ok(());
        };
        let firsts = check_scan(&bytes, &s);
        for (meta, place) in metas.iter().zip(&places) {
            let Some((offset, _)) = place else { continue };
            let found = s.blocks.iter().find(|b| b.offset == *offset);
            prop_assert!(
                found.is_some_and(|b| b.first_seq == meta.first_seq && b.count == meta.count),
                "untouched block {meta:?} now at {offset} not found; scan: {s:?}; firsts {firsts:?}"
            );
        }
    }
}
