//! Reading a time window back in time order without holding it in memory. Blocks are sorted
//! by their earliest record; each is decoded in turn and its matching records go to a heap,
//! from which everything earlier than the next block's earliest record can already be sent.
//! Memory is bounded by the blocks that overlap in time (a flush's worth, in practice).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    fs::File,
    path::Path,
    sync::Arc,
};

use super::{
    query::{HistoryQuery, Matcher},
    segment,
    stream::BlockRef,
};

/// Streams the matching lines of a set of blocks in time order.
pub struct Reader {
    blocks: Vec<BlockRef>,
    next: usize,
    matcher: Matcher,
    window: (i64, i64),
    /// (time, arrival order, line).
    heap: BinaryHeap<Reverse<(i64, u64, Vec<u8>)>>,
    arrivals: u64,
    files: HashMap<Arc<Path>, Option<File>>,
    /// Blocks that could not be read back (damaged on disk, or deleted by retention meanwhile).
    pub unreadable: Vec<String>,
    /// The records those blocks held.
    pub unreadable_records: u64,
}

impl Reader {
    pub fn new(mut blocks: Vec<BlockRef>, query: HistoryQuery) -> Self {
        blocks.sort_by_key(|b| b.meta.min_time);
        Self {
            blocks,
            next: 0,
            window: query.window_ns(),
            matcher: query.matcher(),
            heap: BinaryHeap::new(),
            arrivals: 0,
            files: HashMap::new(),
            unreadable: Vec::new(),
            unreadable_records: 0,
        }
    }

    fn load(&mut self, b: &BlockRef) {
        let file = self
            .files
            .entry(b.path.clone())
            .or_insert_with(|| File::open(&b.path).ok());
        let raw = match file {
            Some(f) => segment::read_raw(f, &b.meta),
            None => Err("segment deleted".to_owned()),
        };
        match raw {
            Ok(raw) => {
                let (since, until) = self.window;
                for (t, line) in segment::records(&raw) {
                    if t >= since && t < until && self.matcher.matches_line(line) {
                        self.heap.push(Reverse((t, self.arrivals, line.to_vec())));
                        self.arrivals += 1;
                    }
                }
            }
            Err(e) => {
                self.unreadable_records += u64::from(b.meta.count);
                self.unreadable.push(format!(
                    "{} block at byte {} ({} lines): {e}",
                    b.path.display(),
                    b.meta.offset,
                    b.meta.count
                ));
            }
        }
    }

    /// The next matching record in time order.
    pub fn next_record(&mut self) -> Option<(i64, Vec<u8>)> {
        loop {
            let horizon = self.blocks.get(self.next).map(|b| b.meta.min_time);
            if let Some(Reverse((t, _, _))) = self.heap.peek()
                && horizon.is_none_or(|h| *t < h)
            {
                return self.heap.pop().map(|Reverse((t, _, line))| (t, line));
            }
            let b = self.blocks.get(self.next)?.clone();
            self.next += 1;
            self.load(&b);
        }
    }

    /// About `max` bytes of newline-terminated lines; `None` at the end.
    pub fn next_chunk(&mut self, max: usize) -> Option<Vec<u8>> {
        let mut chunk = Vec::new();
        while chunk.len() < max {
            let Some((_, line)) = self.next_record() else {
                break;
            };
            chunk.extend_from_slice(&line);
            chunk.push(b'\n');
        }
        (!chunk.is_empty()).then_some(chunk)
    }
}

impl Iterator for Reader {
    type Item = (i64, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record()
    }
}
