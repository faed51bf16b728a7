//! The journal damage matrix: a journal of several segments is damaged in every way a disk or
//! an operator can — one flipped bit, a zeroed range, a truncation, at every byte position (a
//! dense stride for the costlier cases), a segment deleted, renamed away or renamed out of
//! order — and then read back, read-only (`kubectl zdt history --journal-dir`) and by a writer
//! recovering it (the agent starting). Every time: every line whose block was not touched is
//! read back exactly, no line is returned that was not written, and the damage is named
//! (segment, offset, what was skipped) unless the bytes cannot tell it from a journal that was
//! simply written that way (docs/journal.md, "Recovery rule").

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use jiff::Timestamp;
use kubectl_zdt::{
    journal::{
        Config, HistoryQuery, Journal, ReadOnly, StreamKind,
        segment::{self, BlockMeta, FILE_HEADER_LEN},
        stream::Damage,
    },
    observation::{Kind, NodeName, Observation},
};

/// On tmpfs when there is one: the recovering writer fdatasyncs, thousands of times here.
fn tempdir(name: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!("zdt-damage-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mark(n: u64) -> Observation {
    let t = Timestamp::from_second(1_790_000_000 + n as i64).unwrap();
    let mut o = Observation::new(Kind::ListenerClosed, t, NodeName("node-a".into()));
    o.pod = Some(format!("shop/web-7d4b9c8f6d-{:05}", n).into());
    o.port = Some(8080);
    o.with_extra("n", n)
}

fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.max_bytes = 1 << 30;
    c.max_age = Duration::from_secs(100 * 365 * 24 * 3600);
    c.flush_interval = Duration::from_secs(3600);
    c.segment_bytes = Some(2048);
    c
}

/// One segment of the pristine journal: its name, bytes and blocks (with the lines each holds).
#[derive(Clone)]
struct Seg {
    name: String,
    bytes: Vec<u8>,
    blocks: Vec<BlockMeta>,
}

/// Writes 4 segments of marks, 5 or 6 blocks of 8 lines each.
fn pristine(name: &str) -> (Vec<Seg>, Vec<u8>) {
    let dir = tempdir(&format!("pristine-{name}"));
    let mut j = Journal::open(config(&dir)).unwrap();
    let mut n = 0;
    let done = |j: &Journal| {
        let s = j.stream(StreamKind::Marks).segments();
        s.len() == 4 && s[3].blocks.len() == 5
    };
    while !done(&j) {
        for _ in 0..8 {
            j.append(&mark(n)).unwrap();
            n += 1;
        }
        j.flush().unwrap();
    }
    let segs = j
        .stream(StreamKind::Marks)
        .segments()
        .iter()
        .map(|s| Seg {
            name: s.path.file_name().unwrap().to_str().unwrap().to_owned(),
            bytes: std::fs::read(&s.path).unwrap(),
            blocks: s.blocks.clone(),
        })
        .collect();
    let counters = j.stream(StreamKind::Counters).segments()[0].path.clone();
    let counters = std::fs::read(counters).unwrap();
    drop(j);
    let _ = std::fs::remove_dir_all(dir);
    (segs, counters)
}

/// The segments as files: name and bytes.
fn files(segs: &[Seg]) -> Vec<(String, Vec<u8>)> {
    segs.iter()
        .map(|s| (s.name.clone(), s.bytes.clone()))
        .collect()
}

/// Writes the (damaged) segments as a journal directory.
fn materialize(dir: &Path, segs: &[(String, Vec<u8>)], counters: &[u8]) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("marks")).unwrap();
    std::fs::create_dir_all(dir.join("counters")).unwrap();
    std::fs::write(
        dir.join("counters").join(format!("{:020}.zdtj", 0)),
        counters,
    )
    .unwrap();
    for (name, bytes) in segs {
        std::fs::write(dir.join("marks").join(name), bytes).unwrap();
    }
}

/// The `n` of every line read back, checking each is exactly a line that was written.
fn numbers(lines: impl Iterator<Item = (i64, Vec<u8>)>) -> BTreeSet<u64> {
    thread_local! {
        static WRITTEN: std::collections::HashMap<Vec<u8>, u64> = (0..1_000)
            .chain(1_000_000..1_000_008)
            .map(|n| (mark(n).to_json_line().into_bytes(), n))
            .collect();
    }
    let mut seen = BTreeSet::new();
    for (_, line) in lines {
        let n = WRITTEN.with(|w| w.get(&line).copied()).unwrap_or_else(|| {
            panic!(
                "a line that was never written was returned: {}",
                String::from_utf8_lossy(&line)
            )
        });
        assert!(seen.insert(n), "line {n} returned twice");
    }
    seen
}

/// What one case did to the pristine journal.
enum Op {
    Flip { seg: usize, byte: usize, bit: u8 },
    Zero { seg: usize, at: usize, len: usize },
    Truncate { seg: usize, at: usize },
    Delete { seg: usize },
    RenameAway { seg: usize },
    RenameTo { seg: usize, name: String },
}

impl Op {
    fn seg(&self) -> usize {
        match *self {
            Op::Flip { seg, .. }
            | Op::Zero { seg, .. }
            | Op::Truncate { seg, .. }
            | Op::Delete { seg }
            | Op::RenameAway { seg }
            | Op::RenameTo { seg, .. } => seg,
        }
    }

    /// The damaged segments.
    fn apply(&self, segs: &[Seg]) -> Vec<(String, Vec<u8>)> {
        let mut out = files(segs);
        match self {
            Op::Flip { seg, byte, bit } => out[*seg].1[*byte] ^= 1 << bit,
            Op::Zero { seg, at, len } => {
                let b = &mut out[*seg].1;
                let end = (*at + *len).min(b.len());
                b[*at..end].fill(0);
            }
            Op::Truncate { seg, at } => out[*seg].1.truncate(*at),
            Op::Delete { seg } => {
                out.remove(*seg);
            }
            Op::RenameAway { seg } => out[*seg].0 = format!("{}.bak", out[*seg].0),
            Op::RenameTo { seg, name } => out[*seg].0 = name.clone(),
        }
        out
    }

    /// Whether the op leaves the bytes of `b` (in segment `seg`) as written and readable.
    fn spares(&self, seg: usize, b: &BlockMeta) -> bool {
        let (start, end) = (b.offset as usize, b.end() as usize);
        if seg != self.seg() {
            return true;
        }
        match *self {
            Op::Flip { byte, .. } => byte < start || byte >= end,
            Op::Zero { at, len, .. } => at + len <= start || at >= end,
            Op::Truncate { at, .. } => at >= end,
            Op::Delete { .. } | Op::RenameAway { .. } => false,
            Op::RenameTo { .. } => true,
        }
    }

    /// Whether the bytes left cannot be told from a journal written that way, so no damage
    /// can be named: the newest segment cut short (a torn write, or fewer writes), the oldest
    /// or newest segment gone (retention, or fewer writes), a segment renamed in order, a
    /// zeroed range over zeroes already there.
    fn undetectable(&self, segs: &[Seg], damaged: &[(String, Vec<u8>)]) -> bool {
        let last = segs.len() - 1;
        match *self {
            Op::Truncate { seg, .. } => seg == last,
            Op::Delete { seg } => seg == 0 || seg == last,
            Op::RenameTo { .. } => true,
            Op::Zero { seg, .. } => damaged[seg].1 == segs[seg].bytes,
            _ => false,
        }
    }
}

/// Lines in blocks the op did not touch.
fn intact(segs: &[Seg], op: &Op) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for (i, s) in segs.iter().enumerate() {
        for b in s.blocks.iter().filter(|b| op.spares(i, b)) {
            out.extend(b.first_seq..b.next_seq());
        }
    }
    out
}

/// Reads the damaged journal read-only, then as a recovering writer that appends one more
/// block, and checks both.
fn check(dir: &Path, segs: &[Seg], counters: &[u8], op: &Op, writer: bool) {
    let damaged = op.apply(segs);
    let in_place = !writer && matches!(op, Op::Flip { .. } | Op::Zero { .. } | Op::Truncate { .. });
    let path = dir.join("marks").join(&segs[op.seg()].name);
    if in_place {
        // The pristine journal is in `dir`: only the damaged segment changes (and is restored).
        std::fs::write(&path, &damaged[op.seg()].1).unwrap();
    } else {
        materialize(dir, &damaged, counters);
    }
    read_back(dir, segs, &damaged, op);
    if in_place {
        std::fs::write(&path, &segs[op.seg()].bytes).unwrap();
    }
    if writer {
        recover(dir, segs, &damaged, op);
        materialize(dir, &files(segs), counters);
    }
}

/// Only a flip or zeroed range that makes the newest segment's last block look torn (its
/// header announcing more than the file holds) may go unnamed among byte damage, and be cut.
fn torn_look(segs: &[Seg], op: &Op) -> bool {
    let last = segs.len() - 1;
    match *op {
        Op::Flip { seg, byte, .. } | Op::Zero { seg, at: byte, .. } => {
            seg == last
                && segs[last]
                    .blocks
                    .last()
                    .is_some_and(|b| byte as u64 >= b.offset)
        }
        _ => false,
    }
}

/// Reads the damaged journal read-only (`history --journal-dir`).
fn read_back(dir: &Path, segs: &[Seg], damaged: &[(String, Vec<u8>)], op: &Op) {
    let all = HistoryQuery::default();
    let want = intact(segs, op);
    let ro = ReadOnly::open(dir).unwrap();
    let mut reader = ro.query(&all);
    let got = numbers(&mut reader);
    let lost: Vec<_> = want.difference(&got).collect();
    let named = ro.damage.len() + reader.unreadable.len();
    let case = || {
        format!(
            "{}; damage named: {:?} {:?}",
            describe(op),
            ro.damage
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            reader.unreadable
        )
    };
    assert!(lost.is_empty(), "intact lines {lost:?} lost: {}", case());
    if !op.undetectable(segs, damaged) && !torn_look(segs, op) {
        assert!(named > 0, "damage not named: {}", case());
    }
    for d in &ro.damage {
        let text = d.to_string();
        assert!(!text.contains('\n'), "{text}");
        if let Damage::Bytes { path, .. } = d {
            assert!(text.starts_with(&path.display().to_string()), "{text}");
        }
    }
}

/// The agent starting on the damaged journal: it cuts at most a torn tail of the newest
/// segment, keeps every intact line, and appends after them.
fn recover(dir: &Path, segs: &[Seg], damaged: &[(String, Vec<u8>)], op: &Op) {
    let all = HistoryQuery::default();
    let want = intact(segs, op);
    let case = || describe(op);
    let mut j = Journal::open(config(dir)).unwrap_or_else(|e| panic!("{e}: {}", case()));
    let cut = j.stream(StreamKind::Marks).recovery.truncated_bytes;
    let next = j.stream(StreamKind::Marks).next_seq();
    for n in 0..8 {
        j.append(&mark(1_000_000 + n)).unwrap();
    }
    j.flush().unwrap();
    let got = numbers(j.query(&all).unwrap());
    let lost: Vec<_> = want.difference(&got).collect();
    assert!(lost.is_empty(), "the writer lost {lost:?}: {}", case());
    assert!(
        (1_000_000..1_000_008).all(|n| got.contains(&n)),
        "the lines appended after recovery are not all read: {}",
        case()
    );
    // Nothing but a torn tail was cut: every file still holds what it held, but for at most
    // the last `cut` bytes.
    for (name, old) in damaged {
        let Ok(now) = std::fs::read(dir.join("marks").join(name)) else {
            // Retention deletes the oldest segment once it holds no line.
            let held = segment::scan_bytes(old).map_or(0, |s| s.blocks.len());
            assert_eq!(held, 0, "{name} was deleted: {}", case());
            continue;
        };
        let kept = old.len().saturating_sub(cut as usize);
        assert!(
            now.len() >= kept && now[..kept] == old[..kept],
            "{name} changed: {}",
            case()
        );
    }
    drop(j);
    if cut > 0 && !matches!(op, Op::Truncate { .. }) {
        assert!(
            torn_look(segs, op),
            "the writer cut {cut} bytes: {}",
            case()
        );
    }
    // Numbering resumes after every line kept: none is numbered twice.
    assert!(
        want.last().is_none_or(|n| next > *n),
        "the writer resumed at {next}: {}",
        case()
    );
}

fn describe(op: &Op) -> String {
    match op {
        Op::Flip { seg, byte, bit } => format!("bit {bit} of byte {byte} of segment {seg} flipped"),
        Op::Zero { seg, at, len } => format!("bytes {at}..{} of segment {seg} zeroed", at + len),
        Op::Truncate { seg, at } => format!("segment {seg} truncated to {at} bytes"),
        Op::Delete { seg } => format!("segment {seg} deleted"),
        Op::RenameAway { seg } => format!("segment {seg} renamed to *.bak"),
        Op::RenameTo { seg, name } => format!("segment {seg} renamed to {name}"),
    }
}

/// In every segment: a single-bit flip at every byte (cycling through the 8 bits), a truncation
/// at every other byte, zeroed ranges of 1, 16, 44 and 300 bytes at every fifth; every
/// segment deleted and renamed away; segments renamed in and out of order. About one case in
/// seven also starts a writer on the damage.
#[test]
fn no_damage_loses_an_intact_line_and_every_damage_is_named() {
    let (segs, counters) = pristine("matrix");
    assert_eq!(segs.len(), 4);
    let blocks: Vec<_> = segs
        .iter()
        .map(|s| (s.blocks.len(), s.bytes.len()))
        .collect();
    assert!(
        blocks.iter().all(|b| b.0 >= 3),
        "several blocks per segment: {blocks:?}"
    );
    let dir = tempdir("matrix");
    materialize(&dir, &files(&segs), &counters);
    let mut cases = 0;
    let mut run = |op: Op, writer: bool| {
        check(&dir, &segs, &counters, &op, writer);
        cases += 1;
    };
    for (seg, s) in segs.iter().enumerate() {
        for byte in 0..s.bytes.len() {
            let bit = (byte % 8) as u8;
            run(Op::Flip { seg, byte, bit }, byte % 5 == 0);
        }
        for at in (0..s.bytes.len()).step_by(2) {
            run(Op::Truncate { seg, at }, at % 14 == 0);
        }
        for len in [1, 16, 44, 300] {
            for at in (0..s.bytes.len()).step_by(5) {
                run(Op::Zero { seg, at, len }, at % 35 == 0);
            }
        }
        run(Op::Delete { seg }, true);
        run(Op::RenameAway { seg }, true);
    }
    // Renamed in order (harmless) and out of order (named).
    let name = |seq: u64| format!("{seq:020}.zdtj");
    let second = segs[1].blocks[0].first_seq;
    run(
        Op::RenameTo {
            seg: 1,
            name: name(second + 1),
        },
        true,
    );
    run(
        Op::RenameTo {
            seg: 0,
            name: name(1 << 40),
        },
        true,
    );
    eprintln!("{cases} damaged journals read");
    let _ = std::fs::remove_dir_all(dir);
}

/// The cases the issue names: a flipped bit in the middle of the newest segment, and its file
/// magic zeroed. The agent starting on it keeps every block after the damage (it used to cut
/// the rest of the segment as "an unfinished last write") and names the damage.
#[test]
fn a_flip_or_a_zeroed_magic_in_the_newest_segment_keeps_the_blocks_after_it() {
    let (segs, counters) = pristine("newest");
    let last = segs.len() - 1;
    let middle = segs[last].blocks[1];
    let dir = tempdir("newest");
    for op in [
        Op::Flip {
            seg: last,
            byte: (middle.offset + middle.bytes() / 2) as usize,
            bit: 3,
        },
        Op::Zero {
            seg: last,
            at: 0,
            len: 8,
        },
    ] {
        let damaged = op.apply(&segs);
        materialize(&dir, &damaged, &counters);
        let j = Journal::open(config(&dir)).unwrap();
        let marks = j.stream(StreamKind::Marks);
        assert_eq!(marks.recovery.truncated_bytes, 0, "{}", describe(&op));
        assert_eq!(
            std::fs::metadata(&marks.segments()[last].path)
                .unwrap()
                .len(),
            segs[last].bytes.len() as u64,
            "{}: the newest segment was cut",
            describe(&op)
        );
        let kept = marks.segments()[last].blocks.len();
        let expected = segs[last].blocks.len() - usize::from(matches!(op, Op::Flip { .. }));
        assert_eq!(kept, expected, "{}", describe(&op));
        assert_eq!(marks.recovery.damage.len(), 1, "{}", describe(&op));
        let text = marks.recovery.damage[0].to_string();
        match op {
            Op::Flip { .. } => assert_eq!(
                text,
                format!(
                    "{}: bytes {}..{} damaged, skipped (8 lines lost); the blocks after them are read",
                    marks.segments()[last].path.display(),
                    middle.offset,
                    middle.end()
                )
            ),
            _ => assert_eq!(
                text,
                format!(
                    "{}: file header (bytes 0..{FILE_HEADER_LEN}) damaged; the blocks after it are read",
                    marks.segments()[last].path.display(),
                )
            ),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `kubectl zdt history --journal-dir` on a journal with a damaged block in a sealed segment
/// and a missing middle segment: every intact line in the window is shown, each damage is one
/// line on stderr naming the segment, the bytes and the lines lost, and the exit is 1 (it was
/// 0 with the lines after the damage silently missing).
#[test]
fn history_of_a_damaged_journal_directory_names_each_damage_and_shows_what_is_intact() {
    let (segs, counters) = pristine("cli");
    let dir = tempdir("cli");
    let victim = segs[0].blocks[2];
    let mut damaged = Op::Flip {
        seg: 0,
        byte: (victim.offset + 50) as usize,
        bit: 1,
    }
    .apply(&segs);
    damaged.remove(2);
    materialize(&dir, &damaged, &counters);
    let time = |n: u64| mark(n).time.to_string();
    let last = segs[3].blocks.last().unwrap().next_seq();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
        .args(["history", "--journal-dir"])
        .arg(&dir)
        .args(["--from", &time(0), "--to", &time(last), "-o", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shown: BTreeSet<u64> = doc["observations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["n"].as_u64().unwrap())
        .collect();
    let gone = segs[2].blocks[0].first_seq..segs[3].blocks[0].first_seq;
    let expected: BTreeSet<u64> = (0..last)
        .filter(|n| !(victim.first_seq..victim.next_seq()).contains(n) && !gone.contains(n))
        .collect();
    assert_eq!(shown, expected);
    let marks = dir.join("marks");
    assert_eq!(
        stderr,
        format!(
            "kubectl-zdt: journal damage: {}: lines {}..{} ({} lines) are in no segment (a segment file deleted or renamed?)\n\
             kubectl-zdt: unreadable journal block {}/{} block at byte {} (8 lines): checksum mismatch\n",
            marks.display(),
            gone.start,
            gone.end,
            gone.end - gone.start,
            marks.display(),
            segs[0].name,
            victim.offset,
        )
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// An agent that opened a damaged journal says so where operators look: `zdt_journal_damage`
/// by stream and kind in its metrics, the damage lines in `/status`, and `kubectl zdt status`
/// turns them into the node's PROBLEM.
#[test]
fn an_agent_on_a_damaged_journal_counts_it_in_metrics_and_status() {
    use std::sync::Arc;

    use kubectl_zdt::agent::{
        metrics::{Metrics, SETTLE, Scope},
        serve::{AgentServer, Gauges},
    };

    let (segs, counters) = pristine("agent");
    let dir = tempdir("agent");
    let victim = segs[1].blocks[1];
    let mut damaged = Op::Zero {
        seg: 1,
        at: victim.offset as usize,
        len: 8,
    }
    .apply(&segs);
    damaged.remove(2);
    materialize(&dir, &damaged, &counters);
    let disk = Arc::new(kubectl_zdt::journal::Shared::new(
        Journal::open(config(&dir)).unwrap(),
    ));
    let gauges = Arc::new(Gauges {
        metrics: Metrics::new(Scope::OwnPods, SETTLE),
        ..Gauges::default()
    });
    gauges.journal_opened(&disk);
    let journal = kubectl_zdt::agent::backlog::Backlog::new(10);
    journal.attach_disk(disk);
    let endpoint = AgentServer {
        node: NodeName("node-a".into()),
        journal,
        gauges: gauges.clone(),
    };

    let scrape = gauges.metrics.scrape(Timestamp::now(), true);
    for series in [
        r#"zdt_journal_damage{stream="marks",kind="blocks"} 1"#,
        r#"zdt_journal_damage{stream="marks",kind="missing_segment"} 1"#,
    ] {
        assert!(scrape.lines().any(|l| l == series), "{series} in\n{scrape}");
    }
    assert!(
        scrape.contains("zdt_journal_unreadable_blocks_total 0"),
        "{scrape}"
    );

    let status = endpoint.status();
    let marks = dir.join("marks");
    assert_eq!(
        status.journal_damage,
        [
            format!(
                "marks: {}/{}: bytes {}..{} damaged, skipped (8 lines lost); the blocks after them are read",
                marks.display(),
                segs[1].name,
                victim.offset,
                victim.end()
            ),
            format!(
                "marks: {}: lines {}..{} (48 lines) are in no segment (a segment file deleted or renamed?)",
                marks.display(),
                segs[2].blocks[0].first_seq,
                segs[3].blocks[0].first_seq,
            ),
        ]
    );
    // What the CLI receives, and the PROBLEM it shows.
    let json = serde_json::to_string(&status).unwrap();
    let back: kubectl_zdt::agent::serve::AgentStatus = serde_json::from_str(&json).unwrap();
    assert_eq!(
        kubectl_zdt::cluster::status::journal_problem(&back).unwrap(),
        format!(
            "journal damaged (every place: `status -o json`): {}",
            status.journal_damage[0]
        )
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A sealed segment's damaged end still takes disk space: the byte budget counts it.
#[test]
fn a_damaged_end_of_a_sealed_segment_counts_in_the_byte_budget() {
    let (segs, counters) = pristine("budget");
    let dir = tempdir("budget");
    let mut damaged = files(&segs);
    // A block header announcing more than the file holds: a torn write's look, in a segment
    // that was whole when the next one was created.
    let torn_look = segs[1].bytes[segs[1].blocks[0].offset as usize..][..60].to_vec();
    damaged[1].1.extend_from_slice(&torn_look);
    materialize(&dir, &damaged, &counters);
    let j = Journal::open(config(&dir)).unwrap();
    let marks = j.stream(StreamKind::Marks);
    assert_eq!(marks.segments()[1].bytes, damaged[1].1.len() as u64);
    assert_eq!(marks.recovery.damage.len(), 1);
    assert!(
        marks.recovery.damage[0]
            .to_string()
            .contains("at the end damaged, skipped"),
        "{}",
        marks.recovery.damage[0]
    );
    let _ = std::fs::remove_dir_all(dir);
}
