//! Reading observation streams line by line: the agent's stdout, a journal export
//! (`journalctl -o cat`, or `-o json` whose `MESSAGE` holds the line), or a user's capture.
//!
//! A bad line is reported with its number and what was expected, and the rest is still read:
//! one corrupt line in a night of journal must not hide the rollout in it.

use jiff::Timestamp;
use serde_json::Value;

use crate::observation::{Kind, Observation};

/// What is wrong with one line, for `FILE:LINE: …` messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("not JSON ({0}); expected one observation object per line")]
    NotJson(String),
    #[error(
        "a JSON {0}, expected an object like {{\"kind\":\"refused\",\"time\":\"…\",\"node\":\"…\"}}"
    )]
    NotAnObject(&'static str),
    #[error(
        "missing field \"{0}\"; every observation has \"kind\", \"time\" (RFC 3339) and \"node\""
    )]
    MissingField(&'static str),
    #[error("unknown kind {0:?}; expected one of {list}", list = kind_names())]
    UnknownKind(String),
    #[error("field \"{field}\" {problem}")]
    WrongType {
        field: &'static str,
        problem: String,
    },
    #[error("not UTF-8 (byte {at} of the line is 0x{byte:02x}); observation lines are UTF-8 JSON")]
    NotUtf8 { at: usize, byte: u8 },
    #[error(
        "longer than {MAX_LINE_BYTES} bytes, the longest line read (an observation is under 4 KiB): \
         not an observation stream? the rest of it is not read"
    )]
    TooLong,
}

/// The longest line read. An observation line is under 4 KiB (a `dataplane_added` with every
/// field is about 600 bytes); a longer line is not one, and reading it whole could take any
/// amount of memory (`/dev/zero` has no newline), so reading stops there.
pub const MAX_LINE_BYTES: usize = 1 << 20;

fn kind_names() -> String {
    Kind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A problem and where: 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct LineError {
    pub line: u64,
    pub problem: LineProblem,
}

/// Parses one line. Blank lines are `Ok(None)`.
pub fn parse_line(line: &str) -> Result<Option<Observation>, LineProblem> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    if let Ok(o) = serde_json::from_str::<Observation>(line) {
        return plausible(o).map(Some);
    }
    let value: Value =
        serde_json::from_str(line).map_err(|e| LineProblem::NotJson(e.to_string()))?;
    // journalctl -o json: the observation is the MESSAGE of the journal entry.
    if let Some(Value::String(message)) = value.get("MESSAGE")
        && value.get("kind").is_none()
    {
        return parse_line(message);
    }
    Err(diagnose(&value))
}

/// The earliest time accepted: a node whose clock was never set reports 1970.
pub const EARLIEST: Timestamp = Timestamp::constant(946_684_800, 0); // 2000-01-01T00:00:00Z
/// The first time refused (nanoseconds since 1970 fit an i64 until 2262).
pub const LATEST: Timestamp = Timestamp::constant(7_258_118_400, 0); // 2200-01-01T00:00:00Z
/// The largest `uncertainty_ns` accepted: an hour. An instant known only to more than that
/// cannot be correlated with anything, and would size the advice from noise.
pub const MAX_UNCERTAINTY_NS: u64 = 3_600_000_000_000;

/// `o`, or why its numbers cannot be a real observation.
fn plausible(o: Observation) -> Result<Observation, LineProblem> {
    if o.time < EARLIEST || o.time >= LATEST {
        return Err(LineProblem::WrongType {
            field: "time",
            problem: format!(
                "is {}, outside the years 2000-2199 (a clock that was not set?)",
                o.time
            ),
        });
    }
    if let Some(u) = o.uncertainty_ns.filter(|u| *u > MAX_UNCERTAINTY_NS) {
        return Err(LineProblem::WrongType {
            field: "uncertainty_ns",
            problem: format!("is {u}, more than an hour ({MAX_UNCERTAINTY_NS})"),
        });
    }
    Ok(o)
}

/// A field, what it must be, and the test.
type FieldCheck = (&'static str, &'static str, fn(&Value) -> bool);

/// Says precisely why `value` is not an observation (the fast path already failed).
fn diagnose(value: &Value) -> LineProblem {
    let Some(obj) = value.as_object() else {
        return LineProblem::NotAnObject(match value {
            Value::Array(_) => "array",
            Value::String(_) => "string",
            Value::Number(_) => "number",
            Value::Bool(_) => "boolean",
            _ => "null",
        });
    };
    for field in ["kind", "time", "node"] {
        if !obj.contains_key(field) {
            return LineProblem::MissingField(field);
        }
    }
    match &obj["kind"] {
        Value::String(k) if serde_json::from_value::<Kind>(Value::String(k.clone())).is_err() => {
            return LineProblem::UnknownKind(k.clone());
        }
        Value::String(_) => {}
        other => return wrong("kind", "a string", other),
    }
    match &obj["time"] {
        Value::String(s) if s.parse::<jiff::Timestamp>().is_err() => {
            return LineProblem::WrongType {
                field: "time",
                problem: format!(
                    "is {s:?}, expected RFC 3339 UTC like 2026-11-22T01:16:45.660197146Z"
                ),
            };
        }
        Value::String(_) => {}
        other => return wrong("time", "an RFC 3339 string", other),
    }
    let checks: [FieldCheck; 11] = [
        ("node", "a string", |v| v.is_string()),
        ("ip", "an IPv4 or IPv6 address string", |v| {
            v.as_str()
                .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok())
        }),
        ("peer_ip", "an IPv4 or IPv6 address string", |v| {
            v.as_str()
                .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok())
        }),
        ("port", "a port number 0-65535", |v| {
            v.as_u64().is_some_and(|p| p <= 65535)
        }),
        ("peer_port", "a port number 0-65535", |v| {
            v.as_u64().is_some_and(|p| p <= 65535)
        }),
        ("count", "a non-negative integer", |v| v.as_u64().is_some()),
        ("uncertainty_ns", "a non-negative integer", |v| {
            v.as_u64().is_some()
        }),
        ("reason", "a string", |v| v.is_string()),
        ("service", "a string", |v| v.is_string()),
        ("pod", "a string (namespace/name)", |v| v.is_string()),
        ("pod_uid", "a string", |v| v.is_string()),
    ];
    for (field, expected, ok) in checks {
        if let Some(v) = obj.get(field)
            && !ok(v)
        {
            return wrong(field, expected, v);
        }
    }
    LineProblem::NotJson("unreadable observation".to_owned())
}

fn wrong(field: &'static str, expected: &str, got: &Value) -> LineProblem {
    LineProblem::WrongType {
        field,
        problem: format!("is {got}, expected {expected}"),
    }
}

/// Everything readable in `text`, and a problem per unreadable line.
pub fn parse_all(text: &str) -> (Vec<Observation>, Vec<LineError>) {
    let mut obs = Vec::new();
    // Reading from memory cannot fail.
    let errors = read_stream(text.as_bytes(), |o| obs.push(o)).unwrap_or_default();
    (obs, errors)
}

/// The compression a stream's first bytes announce, if any (the observations are JSON lines:
/// a compressed file has to be uncompressed first).
pub fn compression(head: &[u8]) -> Option<(&'static str, &'static str)> {
    const MAGIC: [(&[u8], &str, &str); 4] = [
        (&[0x1f, 0x8b], "gzip", "zcat"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd", "zstdcat"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz", "xzcat"),
        (b"BZh", "bzip2", "bzcat"),
    ];
    MAGIC
        .iter()
        .find(|(magic, ..)| head.starts_with(magic))
        .map(|(_, name, cat)| (*name, *cat))
}

/// Reads `r` line by line as bytes, handing each observation to `each` as soon as it is read
/// (the text is never held whole), and returns a problem per unreadable line ([`Reader`]). An
/// error only when `r` itself fails.
pub fn read_stream(
    r: impl std::io::BufRead,
    mut each: impl FnMut(Observation),
) -> std::io::Result<Vec<LineError>> {
    let mut reader = Reader::new(r);
    for o in &mut reader {
        each(o?);
    }
    Ok(reader.problems)
}

/// The observations of a stream, read line by line as they are asked for (the text is never
/// held whole); a problem per unreadable line is kept in [`Self::problems`]. A line that is not
/// UTF-8 is one such problem; a line over [`MAX_LINE_BYTES`] is the last one: reading stops
/// there without holding more of it. An error of the stream itself is the last item.
pub struct Reader<R> {
    r: R,
    buf: Vec<u8>,
    line: u64,
    done: bool,
    /// The unreadable lines so far, in order.
    pub problems: Vec<LineError>,
}

impl<R: std::io::BufRead> Reader<R> {
    pub fn new(r: R) -> Self {
        Self {
            r,
            buf: Vec::with_capacity(1024),
            line: 0,
            done: false,
            problems: Vec::new(),
        }
    }
}

impl<R: std::io::BufRead> Iterator for Reader<R> {
    type Item = std::io::Result<Observation>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::io::{BufRead as _, Read as _};
        let limit = u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX) + 1;
        while !self.done {
            self.buf.clear();
            match (&mut self.r).take(limit).read_until(b'\n', &mut self.buf) {
                Ok(0) => self.done = true,
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
            if self.done {
                break;
            }
            self.line += 1;
            let line = self.line;
            if self.buf.len() > MAX_LINE_BYTES {
                self.problems.push(LineError {
                    line,
                    problem: LineProblem::TooLong,
                });
                self.done = true;
                break;
            }
            let parsed = match std::str::from_utf8(&self.buf) {
                Ok(text) => parse_line(text),
                Err(e) => Err(LineProblem::NotUtf8 {
                    at: e.valid_up_to() + 1,
                    byte: self.buf[e.valid_up_to()],
                }),
            };
            match parsed {
                Ok(Some(o)) => return Some(Ok(o)),
                Ok(None) => {}
                Err(problem) => self.problems.push(LineError { line, problem }),
            }
        }
        None
    }
}

/// Several streams' observations merged by time: each next one is the earliest of the streams'
/// next ones, on a tie the one of the stream given first. Each stream's own order is kept, so a
/// stream out of order merges too, and the same streams always merge in the same order. A
/// stream's error is handed with the stream's index (`streams[i]`), and that stream ends there.
pub struct Merged<I, E> {
    streams: Vec<I>,
    /// Each stream's next observation, read ahead (none once it ended): the earliest on top.
    heads: std::collections::BinaryHeap<std::cmp::Reverse<Head>>,
    /// The streams not read ahead yet: all of them before the first item. A single stream is
    /// read through, without the heap: it is "unread" until it ends.
    unread: std::ops::Range<usize>,
    /// A stream's error met reading ahead, handed next.
    failed: Option<(usize, E)>,
}

/// A stream's next observation, ordered by its time, then the stream's index.
struct Head(Observation, usize);

impl Head {
    fn key(&self) -> (Timestamp, usize) {
        (self.0.time, self.1)
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Head {}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl<I, E> Merged<I, E>
where
    I: Iterator<Item = Result<Observation, E>>,
{
    pub fn new(streams: Vec<I>) -> Self {
        let n = streams.len();
        Self {
            streams,
            heads: std::collections::BinaryHeap::with_capacity(n),
            unread: 0..n,
            failed: None,
        }
    }

    /// The streams, to read what they kept (a [`Reader`]'s problems).
    pub fn into_streams(self) -> Vec<I> {
        self.streams
    }

    /// Reads stream `i`'s next observation ahead; its error, if it fails.
    fn read_ahead(&mut self, i: usize) -> Result<(), (usize, E)> {
        match self.streams[i].next() {
            Some(Ok(o)) => self.heads.push(std::cmp::Reverse(Head(o, i))),
            Some(Err(e)) => return Err((i, e)),
            None => {}
        }
        Ok(())
    }
}

impl<I, E> Iterator for Merged<I, E>
where
    I: Iterator<Item = Result<Observation, E>>,
{
    type Item = Result<Observation, (usize, E)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        if let [only] = &mut self.streams[..] {
            if self.unread.is_empty() {
                return None;
            }
            let item = only.next();
            if !matches!(item, Some(Ok(_))) {
                self.unread = 0..0;
            }
            return item.map(|r| r.map_err(|e| (0, e)));
        }
        while let Some(i) = self.unread.next() {
            if let Err(e) = self.read_ahead(i) {
                return Some(Err(e));
            }
        }
        let std::cmp::Reverse(Head(o, i)) = self.heads.pop()?;
        if let Err(e) = self.read_ahead(i) {
            self.failed = Some(e);
        }
        Some(Ok(o))
    }
}

/// Drops the observations that equal an earlier one (same node, kind, time and every field):
/// the same stream given twice, or overlapping exports, must not count twice. Keeps the order;
/// returns how many were dropped.
pub fn drop_duplicates(obs: &mut Vec<Observation>) -> usize {
    drop_duplicates_hashed(obs, &foldhash::fast::RandomState::default())
}

/// [`drop_duplicates`] with the hasher given (see [`duplicates`]).
pub fn drop_duplicates_hashed(
    obs: &mut Vec<Observation>,
    state: &impl std::hash::BuildHasher,
) -> usize {
    let drop = duplicates(obs, state);
    let dropped = drop.iter().filter(|d| **d).count();
    if dropped > 0 {
        let mut flags = drop.into_iter();
        obs.retain(|_| !flags.next().unwrap_or(false));
    }
    dropped
}

/// Which observations equal an earlier one (same node, kind, time and every field). The hashes
/// only group the candidates, so every hasher gives the same answer (the tests use one under
/// which all lines collide).
pub fn duplicates(obs: &[Observation], state: &impl std::hash::BuildHasher) -> Vec<bool> {
    use std::hash::{Hash as _, Hasher as _};
    // Equal observations hash equal; observations whose hashes meet are compared whole. The
    // common fields are hashed first (fast, and enough to tell two genuine events apart: they
    // differ in their nanosecond time or their ports); only the rare lines equal in all of
    // them have their other fields hashed, which costs a map each.
    let common = |o: &Observation| {
        let mut h = state.build_hasher();
        (
            o.kind,
            o.time,
            &o.node,
            o.ip,
            o.port,
            o.peer_ip,
            o.peer_port,
        )
            .hash(&mut h);
        (
            &o.reason,
            o.count,
            &o.service,
            &o.pod,
            &o.pod_uid,
            o.uncertainty_ns,
        )
            .hash(&mut h);
        h.finish()
    };
    let others = |o: &Observation| {
        let mut h = state.build_hasher();
        for (k, v) in &o.other_fields() {
            k.hash(&mut h);
            v.to_string().hash(&mut h);
        }
        h.finish()
    };
    let mut keys: Vec<(u64, usize)> = obs
        .iter()
        .enumerate()
        .map(|(i, o)| (common(o), i))
        .collect();
    keys.sort_unstable();
    let mut drop = vec![false; obs.len()];
    for group in keys.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
        let mut group: Vec<(u64, usize)> =
            group.iter().map(|&(_, i)| (others(&obs[i]), i)).collect();
        group.sort_unstable();
        // Within equal hashes in input order: a line equal to an earlier one kept is dropped.
        for same in group.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
            for (k, &(_, i)) in same.iter().enumerate() {
                if same[..k].iter().any(|&(_, j)| !drop[j] && obs[j] == obs[i]) {
                    drop[i] = true;
                }
            }
        }
    }
    drop
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"kind":"refused","time":"2026-11-22T01:16:45.660197146Z","node":"vm","ip":"10.244.0.46","port":8080}"#;

    #[test]
    fn a_bad_line_in_the_middle_is_reported_and_the_rest_is_read() {
        let text = format!("{GOOD}\nthis is not json\n\n{GOOD}\n");
        let (obs, errors) = parse_all(&text);
        assert_eq!(obs.len(), 2);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 2);
        assert!(matches!(errors[0].problem, LineProblem::NotJson(_)));
    }

    #[test]
    fn each_kind_of_bad_line_says_what_was_expected() {
        let cases = [
            (r#"[1,2]"#, LineProblem::NotAnObject("array")),
            (
                r#"{"time":"2026-11-22T01:16:45Z","node":"a"}"#,
                LineProblem::MissingField("kind"),
            ),
            (
                r#"{"kind":"refused","node":"a"}"#,
                LineProblem::MissingField("time"),
            ),
            (
                r#"{"kind":"teleported","time":"2026-11-22T01:16:45Z","node":"a"}"#,
                LineProblem::UnknownKind("teleported".into()),
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_line(line).unwrap_err(), expected, "{line}");
        }
        let port = parse_line(
            r#"{"kind":"refused","time":"2026-11-22T01:16:45Z","node":"a","port":"http"}"#,
        )
        .unwrap_err();
        assert_eq!(
            port.to_string(),
            "field \"port\" is \"http\", expected a port number 0-65535"
        );
        let time = parse_line(r#"{"kind":"refused","time":"yesterday","node":"a"}"#).unwrap_err();
        assert!(matches!(time, LineProblem::WrongType { field: "time", .. }));
    }

    #[test]
    fn a_journal_json_export_is_read_through_its_message() {
        let entry = serde_json::json!({"__REALTIME_TIMESTAMP": "1", "MESSAGE": GOOD}).to_string();
        let o = parse_line(&entry).unwrap().unwrap();
        assert_eq!(o.kind, Kind::Refused);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_named_and_the_rest_is_read() {
        let mut bytes = format!("{GOOD}\n").into_bytes();
        bytes.extend_from_slice(b"{\"kind\":\"refused\",\"node\":\"\xff\"}\n");
        bytes.extend_from_slice(format!("{GOOD}\n").as_bytes());
        let mut obs = Vec::new();
        let errors = read_stream(&bytes[..], |o| obs.push(o)).unwrap();
        assert_eq!(obs.len(), 2);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 2);
        assert_eq!(
            errors[0].problem,
            LineProblem::NotUtf8 { at: 27, byte: 0xff }
        );
    }

    #[test]
    fn an_endless_line_stops_the_reading_after_the_limit() {
        use std::io::Read as _;
        // An endless stream of zeros (as /dev/zero) after one good line: reading ends.
        let mut obs = Vec::new();
        let good = format!("{GOOD}\n");
        let source = good.as_bytes().chain(std::io::repeat(0));
        let errors = read_stream(std::io::BufReader::new(source), |o| obs.push(o)).unwrap();
        assert_eq!(obs.len(), 1);
        assert_eq!(
            errors,
            vec![LineError {
                line: 2,
                problem: LineProblem::TooLong
            }]
        );
    }

    #[test]
    fn compressed_streams_are_recognised_by_their_magic() {
        assert_eq!(compression(&[0x1f, 0x8b, 8, 0]), Some(("gzip", "zcat")));
        assert_eq!(compression(b"BZh91AY"), Some(("bzip2", "bzcat")));
        assert_eq!(compression(GOOD.as_bytes()), None);
        assert_eq!(compression(b""), None);
    }

    /// Observations at these seconds (0 = 2026-11-22T01:16:45Z), told apart by `count`.
    fn at(seconds: &[(u8, u64)]) -> Vec<Result<Observation, &'static str>> {
        let t0: Timestamp = "2026-11-22T01:16:45Z".parse().unwrap();
        seconds
            .iter()
            .map(|&(s, id)| {
                let mut o = Observation::new(
                    Kind::Refused,
                    t0 + jiff::SignedDuration::from_secs(s.into()),
                    crate::observation::NodeName("a".into()),
                );
                o.count = Some(id);
                Ok(o)
            })
            .collect()
    }

    #[test]
    fn a_streams_error_is_handed_with_its_index_and_the_others_go_on() {
        let mut failing = at(&[(1, 10), (5, 11)]);
        failing.insert(1, Err("disk gone"));
        failing.push(Ok(Observation::new(
            Kind::Refused,
            "2026-11-22T01:16:46Z".parse().unwrap(),
            crate::observation::NodeName("a".into()),
        )));
        let streams = vec![
            at(&[(0, 0), (2, 1), (3, 2)]).into_iter(),
            failing.clone().into_iter(),
        ];
        let got: Vec<Result<u64, (usize, &str)>> = Merged::new(streams)
            .map(|r| r.map(|o| o.count.unwrap_or(99)))
            .collect();
        assert_eq!(
            got,
            vec![Ok(0), Ok(10), Err((1, "disk gone")), Ok(1), Ok(2)]
        );
        // Alone, read through: the same end at its error.
        let got: Vec<Result<u64, (usize, &str)>> = Merged::new(vec![failing.into_iter()])
            .map(|r| r.map(|o| o.count.unwrap_or(99)))
            .collect();
        assert_eq!(got, vec![Ok(10), Err((0, "disk gone"))]);
    }

    proptest::proptest! {
        #[test]
        fn streams_merge_by_time_ties_to_the_first_given_each_in_its_own_order(
            streams in proptest::collection::vec(
                proptest::collection::vec(0u8..6, 0..12), 0..5),
            sorted in proptest::prelude::any::<bool>(),
        ) {
            // Seconds from a few values: many ties within and across streams; each line's
            // `count` says its stream and place in it.
            let streams: Vec<Vec<(u8, u64)>> = streams
                .into_iter()
                .enumerate()
                .map(|(i, mut secs)| {
                    if sorted {
                        secs.sort_unstable();
                    }
                    secs.into_iter()
                        .enumerate()
                        .map(|(k, s)| (s, (i * 100 + k) as u64))
                        .collect()
                })
                .collect();
            let merged = || -> Vec<(u8, u64)> {
                let t0: Timestamp = "2026-11-22T01:16:45Z".parse().unwrap();
                Merged::new(streams.iter().map(|s| at(s).into_iter()).collect())
                    .map(|o| {
                        let o = o.unwrap();
                        let s = o.time.duration_since(t0).as_secs();
                        (u8::try_from(s).unwrap(), o.count.unwrap())
                    })
                    .collect()
            };
            let got = merged();
            // The same order at every reading, every line once, each stream's own order kept.
            proptest::prop_assert_eq!(&got, &merged());
            let mut all: Vec<(u8, u64)> = streams.concat();
            let mut seen = got.clone();
            all.sort_unstable_by_key(|l| l.1);
            seen.sort_unstable_by_key(|l| l.1);
            proptest::prop_assert_eq!(&seen, &all);
            for (i, s) in streams.iter().enumerate() {
                let own: Vec<(u8, u64)> =
                    got.iter().copied().filter(|l| l.1 / 100 == i as u64).collect();
                proptest::prop_assert_eq!(&own, s);
            }
            // Each stream in order: the merge is in time order, ties to the stream given first.
            if sorted {
                let mut expected = got.clone();
                expected.sort_by_key(|&(s, id)| (s, id / 100));
                proptest::prop_assert_eq!(got, expected);
            }
            // In any order: each next line is the earliest of the streams' next ones.
            let mut next = vec![0usize; streams.len()];
            for &(s, id) in &merged() {
                let i = (id / 100) as usize;
                let heads = streams
                    .iter()
                    .zip(&next)
                    .enumerate()
                    .filter_map(|(j, (st, &k))| st.get(k).map(|h| (h.0, j)));
                proptest::prop_assert_eq!(heads.min(), Some((s, i)));
                next[i] += 1;
            }
        }

        #[test]
        fn any_bytes_are_read_or_named_by_line_never_a_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2_000),
            good_every in 1usize..5,
        ) {
            // Random bytes with a good line after every few newlines: every good line is read,
            // every problem names a line that exists, in order.
            let mut text = Vec::new();
            let mut good = 0;
            for (i, chunk) in bytes.split(|b| *b == b'\n').enumerate() {
                text.extend_from_slice(chunk);
                text.push(b'\n');
                if i % good_every == 0 {
                    text.extend_from_slice(GOOD.as_bytes());
                    text.push(b'\n');
                    good += 1;
                }
            }
            let lines = text.iter().filter(|b| **b == b'\n').count() as u64;
            let mut obs = 0;
            let errors = read_stream(&text[..], |_| obs += 1).unwrap();
            proptest::prop_assert!(obs >= good);
            proptest::prop_assert!(errors.windows(2).all(|w| w[0].line < w[1].line));
            proptest::prop_assert!(errors.iter().all(|e| e.line >= 1 && e.line <= lines));
        }

        #[test]
        fn any_line_is_read_or_rejected_never_a_panic(line in ".{0,200}") {
            let _ = parse_line(&line);
        }

        #[test]
        fn any_json_object_with_the_common_fields_gets_a_precise_answer(
            kind in "[a-z_]{0,12}", time in ".{0,30}", port in proptest::prelude::any::<i64>()
        ) {
            let line = serde_json::json!({"kind": kind, "time": time, "node": "a", "port": port}).to_string();
            if let Err(p) = parse_line(&line) {
                proptest::prop_assert!(!matches!(p, LineProblem::NotJson(_)), "{line}: {p}");
            }
        }
    }
}
