//! The node journal on disk: a writer killed with SIGKILL at random instants (hundreds of
//! times) never loses a line it reported flushed and never leaves a corrupt one; the size and
//! age limits hold (time injected, no sleeping); a storm of millions of refusals cannot evict a
//! single termination mark.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use jiff::Timestamp;
use kubectl_zdt::{
    journal::{Config, HistoryQuery, Journal, ReadOnly, StreamKind},
    observation::{Kind, NodeName, Observation},
};

/// A fresh directory of its own: the tests run in parallel in one process, so the name alone
/// (two tests once shared one and removed each other's segments) is made unique by a counter.
fn tempdir(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("zdt-journal-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// When the kill comes: at a random instant after spawning (while the journal is opened and
/// recovered), or at a random instant after the writer said it started appending.
#[derive(Clone, Copy)]
enum Kill {
    AfterSpawn(Duration),
    AfterStart(Duration),
}

/// Runs the writer, kills it with SIGKILL, and returns what it printed: where it started and
/// the last flush it reported. With `torn`, the writer writes its blocks a byte at a time, so
/// most kills land inside a block (a real `write(2)` is cut short only when the kill arrives
/// during its page copies).
fn run_and_kill(dir: &Path, kill: Kill, torn: bool) -> (Option<(u64, u64)>, Option<u64>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
        .args(["journal-writer", "--dir"])
        .arg(dir)
        .args(["--flush-every", "150", "--segment-bytes", "16384"])
        .args(["--write-chunk", if torn { "1" } else { "0" }])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kubectl-zdt journal-writer");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    match kill {
        Kill::AfterSpawn(d) => std::thread::sleep(d),
        Kill::AfterStart(d) => {
            let first = lines
                .recv_timeout(Duration::from_secs(30))
                .expect("the writer did not start within 30 s");
            printed.push(first);
            std::thread::sleep(d);
        }
    }
    child.kill().expect("SIGKILL the writer");
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the writer must have been killed, it exited {status}"
    );
    reader.join().unwrap();
    printed.extend(lines.try_iter());
    let mut start = None;
    let mut flushed = None;
    for line in printed {
        match line.split_once(' ') {
            Some(("start", rest)) => {
                let (n, cut) = rest.split_once(' ').unwrap();
                start = Some((n.parse().unwrap(), cut.parse().unwrap()));
            }
            Some(("flushed", n)) => flushed = Some(n.parse().unwrap()),
            _ => panic!("unexpected writer output {line:?}"),
        }
    }
    (start, flushed)
}

fn open(dir: &Path) -> Journal {
    let mut config = Config::new(dir);
    config.max_bytes = 1 << 40;
    config.max_age = Duration::from_secs(100 * 365 * 24 * 3600);
    Journal::open(config).unwrap()
}

/// Every record from `from` on is an intact observation numbered with its own sequence number.
fn verify(journal: &Journal, from: u64) -> u64 {
    let records = journal
        .read_from(StreamKind::Marks, from)
        .unwrap_or_else(|e| panic!("a corrupt record was returned: {e}"));
    let mut expected = from;
    for (seq, line) in records {
        assert_eq!(seq, expected, "sequence numbers are contiguous");
        let o: Observation = serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("record {seq} is not an observation ({e})"));
        assert_eq!(o.kind, Kind::Exec);
        assert_eq!(
            o.unknown["n"],
            serde_json::json!(seq),
            "record {seq} was written as line {} (the writer resumed at the wrong place)",
            o.unknown["n"]
        );
        expected += 1;
    }
    expected
}

#[test]
fn a_writer_killed_at_random_instants_never_loses_a_flushed_line_or_returns_a_corrupt_one() {
    let dir = tempdir("crash");
    let mut rng = fastrand::Rng::with_seed(0x2026_1122);
    let (mut flushed_before, mut verified, mut started, mut truncations) = (0u64, 0u64, 0, 0);
    let rounds = 300;
    for round in 0..rounds {
        // One kill in five anywhere from the spawn on (during recovery, too); the others while
        // it appends, rotates and flushes.
        let delay = Duration::from_micros(rng.u64(0..20_000));
        let kill = if round % 5 == 0 {
            Kill::AfterSpawn(delay)
        } else {
            Kill::AfterStart(delay)
        };
        let (start, flushed) = run_and_kill(&dir, kill, round % 4 < 2);
        if let Some((start, cut)) = start {
            started += 1;
            truncations += u32::from(cut > 0);
            assert!(
                start >= flushed_before,
                "round {round}: the writer resumed at {start}, before the {flushed_before} lines already flushed"
            );
        }
        // Every other round the next writer recovers the torn tail itself; on the others the
        // check below does (the same Journal::open).
        if round % 2 == 1 || round == rounds - 1 {
            let journal = open(&dir);
            truncations +=
                u32::from(journal.stream(StreamKind::Marks).recovery.truncated_bytes > 0);
            let end = verify(&journal, verified.saturating_sub(50));
            assert_eq!(end, journal.stream(StreamKind::Marks).next_seq());
            let reported = flushed.unwrap_or(0).max(flushed_before);
            assert!(
                end >= reported,
                "round {round}: {reported} lines were reported flushed, only {end} are in the journal"
            );
            verified = end;
        }
        flushed_before = flushed_before.max(flushed.unwrap_or(0));
    }
    let journal = open(&dir);
    let total = verify(&journal, 0);
    assert!(total >= flushed_before);
    // The loop really killed writers mid-run (most of them got going) and the journal spans
    // several segments (rotations happened under the kills too).
    assert!(started >= rounds * 4 / 5, "only {started} writers started");
    assert!(
        flushed_before > 10_000,
        "only {flushed_before} lines were flushed"
    );
    assert!(journal.stream(StreamKind::Marks).segments().len() > 10);
    assert!(
        truncations >= 10,
        "only {truncations} torn tails were recovered"
    );
    eprintln!("{rounds} kills, {total} lines, {truncations} torn tails recovered");
    let _ = std::fs::remove_dir_all(dir);
}

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(1_790_000_000 + s).unwrap()
}

fn mark(t: i64, n: u64) -> Observation {
    let mut o = Observation::new(Kind::ListenerClosed, at(t), NodeName("node-a".into()));
    o.pod = Some(format!("shop/web-7d4b9c8f6d-{:05}", n % 100_000).into());
    o.ip = Some(
        format!("10.244.{}.{}", (n / 250) % 250, n % 250)
            .parse()
            .unwrap(),
    );
    o.port = Some(8080);
    o.with_extra("n", n)
}

#[test]
fn the_size_and_age_limits_hold_at_every_step_of_ten_simulated_days() {
    let dir = tempdir("limits");
    let mut config = Config::new(&dir);
    config.max_bytes = 2 << 20;
    config.max_age = Duration::from_secs(7 * 86_400);
    let mut j = Journal::open(config).unwrap();
    let mut n = 0u64;
    // One mark every 4 s for 10 days, flushed every simulated minute.
    for minute in 0..10 * 24 * 60 {
        for s in (0..60).step_by(4) {
            j.append(&mark(minute * 60 + s, n)).unwrap();
            n += 1;
        }
        j.flush().unwrap();
        let now = at(minute * 60 + 60);
        j.enforce(now).unwrap();
        assert!(
            j.bytes() <= 2 << 20,
            "minute {minute}: {} bytes on disk",
            j.bytes()
        );
        let cutoff = now.as_second() - 7 * 86_400;
        for s in j.stream(StreamKind::Marks).segments() {
            if let Some(t) = s.max_time() {
                assert!(
                    t / 1_000_000_000 >= cutoff,
                    "minute {minute}: a segment older than 7 days is kept"
                );
            }
        }
    }
    // Old segments went (by size: 10 days of marks need far more than 1 MiB)...
    let oldest = j.query(&HistoryQuery::default()).unwrap().next().unwrap().0;
    assert!(
        oldest / 1_000_000_000 > at(5 * 86_400).as_second(),
        "{oldest}"
    );
    // ...and the newest hour is complete.
    let now = at(10 * 86_400);
    let q = HistoryQuery {
        since: Some(at(10 * 86_400 - 3600)),
        until: Some(now),
        ..HistoryQuery::default()
    };
    assert_eq!(j.query(&q).unwrap().count(), 900);

    // Age alone (a budget large enough for everything): at day 10 nothing older than 7 days is
    // left, in steps of the 1-hour segments.
    let dir2 = tempdir("age");
    let mut config = Config::new(&dir2);
    config.max_bytes = 1 << 30;
    let mut j = Journal::open(config).unwrap();
    for minute in 0..10 * 24 * 60 {
        j.append(&mark(minute * 60, minute as u64)).unwrap();
        if minute % 60 == 59 {
            j.flush().unwrap();
        }
    }
    j.flush().unwrap();
    j.enforce(now).unwrap();
    let kept: Vec<i64> = j
        .query(&HistoryQuery::default())
        .unwrap()
        .map(|(t, _)| t / 1_000_000_000)
        .collect();
    let oldest = kept[0] - at(0).as_second();
    assert!(
        (3 * 86_400 - 3600..=3 * 86_400).contains(&oldest),
        "oldest kept line is {oldest} s into the 10 days"
    );
    assert_eq!(*kept.last().unwrap(), at(10 * 86_400 - 60).as_second());
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(dir2);
}

fn refused(t_ms: i64, pod: u64, peer_port: u16) -> Observation {
    let mut o = Observation::new(
        Kind::Refused,
        Timestamp::from_millisecond(1_790_000_000_000 + t_ms).unwrap(),
        NodeName("node-a".into()),
    );
    o.pod = Some(format!("shop/web-7d4b9c8f6d-{pod:05}").into());
    o.ip = Some(format!("10.244.0.{pod}").parse().unwrap());
    o.port = Some(8080);
    o.peer_ip = Some("10.244.9.9".parse().unwrap());
    o.peer_port = Some(peer_port);
    o.reason = Some("NO_SOCKET".into());
    o
}

#[test]
fn a_storm_of_two_million_refusals_leaves_every_mark_of_the_day_in_place() {
    let dir = tempdir("storm");
    let mut config = Config::new(&dir);
    config.max_bytes = 2 << 20;
    let mut j = Journal::open(config).unwrap();
    let mut marks = BTreeSet::new();
    let storm = 2_000_000u64;
    // The day: a mark every 40 s (2 160 of them); from hour 12 on, one hour of 100 pods being
    // refused 2 000 000 times (555 per second).
    let templates: Vec<Observation> = (0..100).map(|p| refused(0, p, 0)).collect();
    let mut next_refusal = 0u64;
    for s in 0..86_400i64 {
        if s % 40 == 0 {
            let n = s as u64 / 40;
            j.append(&mark(s, n)).unwrap();
            marks.insert(n);
        }
        if (43_200..46_800).contains(&s) {
            let per_second = storm / 3600 + u64::from((s - 43_200) < (storm % 3600) as i64);
            for k in 0..per_second {
                let ms = s * 1000 + (k * 1000 / per_second) as i64;
                let mut o = templates[(next_refusal % 100) as usize].clone();
                o.time = Timestamp::from_millisecond(1_790_000_000_000 + ms).unwrap();
                o.peer_port = Some((next_refusal % 60_000) as u16);
                j.append(&o).unwrap();
                next_refusal += 1;
            }
        }
        if s % 60 == 59 {
            j.tick(at(s + 1)).unwrap();
        }
    }
    assert_eq!(next_refusal, storm);
    j.close().unwrap();
    assert!(j.bytes() <= 2 << 20, "{} bytes", j.bytes());
    let (mut found, mut refusals) = (BTreeSet::new(), 0u64);
    for (_, line) in j.query(&HistoryQuery::default()).unwrap() {
        let o: Observation = serde_json::from_slice(&line).unwrap();
        match o.kind {
            Kind::ListenerClosed => assert!(found.insert(o.unknown["n"].as_u64().unwrap())),
            Kind::Refused => refusals += o.weight(),
            k => panic!("unexpected {k}"),
        }
    }
    let missing: Vec<&u64> = marks.difference(&found).collect();
    assert!(
        missing.is_empty() && found.len() == marks.len(),
        "{} of the day's {} marks are gone (first: {:?})",
        missing.len(),
        marks.len(),
        missing.first()
    );
    // The counters' own budget did overflow: the storm's oldest seconds were evicted, not marks.
    assert!(refusals > 0 && refusals < storm, "{refusals} refusals kept");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn folded_counters_keep_exact_totals_and_marks_stay_verbatim() {
    let dir = tempdir("totals");
    let mut j = Journal::open(Config::new(&dir)).unwrap();
    let mut written = Vec::new();
    for i in 0..50_000u64 {
        // 10 pods, 5 000 refusals each within 10 s, and a mark per pod in the middle.
        j.append(&refused((i / 10) as i64 * 2, i % 10, (i % 1000) as u16))
            .unwrap();
        if i % 5_000 == 2_500 {
            let mut m = mark(5, i);
            m.time = Timestamp::from_millisecond(1_790_000_000_000 + (i / 10) as i64 * 2).unwrap();
            written.push(m.to_json_line());
            j.append(&m).unwrap();
        }
    }
    j.close().unwrap();
    let lines: Vec<Observation> = j
        .query(&HistoryQuery::default())
        .unwrap()
        .map(|(_, l)| serde_json::from_slice(&l).unwrap())
        .collect();
    let refused: Vec<&Observation> = lines.iter().filter(|o| o.kind == Kind::Refused).collect();
    assert_eq!(refused.iter().map(|o| o.weight()).sum::<u64>(), 50_000);
    // 10 s of 10 pods at most one line per second each, plus the splits at the marks.
    assert!(
        refused.len() <= 10 * 10 + 10 + 10,
        "{} lines",
        refused.len()
    );
    let marks: Vec<String> = lines
        .iter()
        .filter(|o| o.kind == Kind::ListenerClosed)
        .map(Observation::to_json_line)
        .collect();
    assert_eq!(marks, written);
    // Time-ordered.
    assert!(lines.windows(2).all(|w| w[0].time <= w[1].time));
    let _ = std::fs::remove_dir_all(dir);
}

/// A journal in a new directory holding marks 0..n, one a second, flushed.
fn journal_of_marks(name: &str, n: u64) -> (PathBuf, Journal) {
    let dir = tempdir(name);
    let mut j = Journal::open(Config::new(&dir)).unwrap();
    for n in 0..n {
        j.append(&mark(n as i64, n)).unwrap();
    }
    j.flush().unwrap();
    (dir, j)
}

/// `kubectl zdt history --journal-dir DIR --from FROM --to TO -o json`, which must succeed.
fn history_json(dir: &Path, from: &str, to: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
        .args(["history", "--journal-dir"])
        .arg(dir)
        .args(["--from", from, "--to", to, "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_journal_directory_is_read_in_place_without_changing_it() {
    let (dir, j) = journal_of_marks("readonly", 1_000);
    // An agent in the middle of its next write: a torn block at the end.
    let tail = j
        .stream(StreamKind::Marks)
        .segments()
        .last()
        .unwrap()
        .path
        .clone();
    drop(j);
    let mut torn = std::fs::read(&tail).unwrap();
    torn.extend_from_slice(b"ZBLK\x10\x00\x00\x00partial");
    std::fs::write(&tail, &torn).unwrap();

    let ro = ReadOnly::open(&dir).unwrap();
    let lines: Vec<u64> = ro
        .query(&HistoryQuery::default())
        .map(|(_, l)| {
            serde_json::from_slice::<Observation>(&l).unwrap().unknown["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(lines, (0..1_000).collect::<Vec<u64>>());
    assert_eq!(
        std::fs::read(&tail).unwrap(),
        torn,
        "reading changed nothing"
    );

    // The command reads it without a cluster; a directory that is no journal is one line.
    let doc = history_json(&dir, &at(0).to_string(), &at(500).to_string());
    assert_eq!(doc["kind"], "History");
    assert_eq!(doc["observations"].as_array().unwrap().len(), 500);
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
        .args(["history", "--journal-dir", "/proc/self"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "kubectl-zdt: /proc/self holds no journal (expected the marks/ and counters/ folders `kubectl-zdt agent --journal-dir` writes)\n"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Two agents on one `--journal-dir` wrote every event twice, interleaved. The directory is
/// locked (flock on `writer.lock`): the second writer fails at once, saying which process on
/// which host holds it, and opens fine once the first is gone.
#[test]
fn a_second_writer_on_one_directory_is_refused_and_told_who_holds_it() {
    let dir = tempdir("lock");
    let first = open(&dir);
    let err = Journal::open(Config::new(&dir))
        .err()
        .expect("a second writer is refused");
    let holder = format!("pid {} on host ", std::process::id());
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "journal directory {} is in use by another agent ({holder}",
            dir.display()
        )) && text.ends_with("); give each agent its own --journal-dir"),
        "{text}"
    );
    // Another process: one line, non-zero exit.
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
        .args(["journal-writer", "--max", "10", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&holder) && stderr.lines().count() == 1,
        "{stderr}"
    );
    drop(first);
    let mut again = open(&dir);
    again.append(&mark(0, 0)).unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// `--journal-max-age 0s` kept nothing (every segment expired at once); like
/// `--journal-max-bytes 0` it is refused, before the agent loads anything.
#[test]
fn limits_that_keep_nothing_are_refused_with_one_line() {
    let dir = tempdir("keep-nothing");
    let mut config = Config::new(&dir);
    config.max_age = Duration::ZERO;
    assert!(Journal::open(config).is_err());
    for (flag, value, message) in [
        (
            "--journal-max-age",
            "0s",
            "kubectl-zdt: --journal-max-age 0s: a journal that keeps nothing; give a positive age like 7d (the default)\n",
        ),
        (
            "--journal-max-bytes",
            "0",
            "kubectl-zdt: --journal-max-bytes 0: too small for a journal (at least 1 MiB; the default is 256 MiB)\n",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
            .args(["agent", "--standalone", "--journal-dir"])
            .arg(&dir)
            .args([flag, value])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(String::from_utf8(out.stderr).unwrap(), message);
        assert!(out.stdout.is_empty());
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `history --journal-dir --from 1600-… --to 2300-…` (outside i64 nanoseconds) printed nothing
/// and exited 0; the window is clamped to what the journal can hold, so it shows every line.
#[test]
fn a_window_from_before_1677_to_after_2262_shows_every_line() {
    let (dir, j) = journal_of_marks("farwindow", 10);
    drop(j);
    for (from, to, shown) in [
        ("1600-01-01T00:00:00Z", "2300-01-01T00:00:00Z", 10),
        ("1600-01-01T00:00:00Z", &at(5).to_string(), 5),
        (&at(5).to_string(), "2300-01-01T00:00:00Z", 5),
    ] {
        let doc = history_json(&dir, from, to);
        assert_eq!(
            doc["observations"].as_array().unwrap().len(),
            shown,
            "--from {from} --to {to}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
