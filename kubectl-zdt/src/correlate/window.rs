//! The analysis of a long stream one window at a time, in memory that grows with what is alive
//! at one time (pods, nodes, Services), not with the stream's length; the report is the one the
//! whole-stream engine ([`super::correlate_with_evidence`]) gives, byte for byte.
//!
//! Two passes over the stream (docs/observations.md, "Memory"):
//! 1. [`Survey`]: no line is kept. It folds the stream-wide facts ([`super::Facts`]: the node
//!    table, the agents' clock offsets, whether deletions and listeners were watched, the
//!    Services' names, the clients' addresses and sockets, the workloads' declared settings),
//!    the last line of each pod UID (8-byte hashes), and the cuts: places in the stream where
//!    every line before is at least [`CUT_GAP_NS`] older than every line after (a quiet gap,
//!    the stream in order across it). Two equal lines have one time, so no cut falls between
//!    them: duplicates are dropped per window.
//! 2. [`Windowed`]: per window, the pods of its lines plus the lines carried in are found and
//!    their marks folded; a pod whose UID has lines beyond the window is not drafted: its lines
//!    are carried into the next window. The others are drafted and reduced to what the report
//!    needs of them, and their lines are freed. Grouping, capacity, readiness and advice run
//!    once at the end over all pods.
//!
//! A client's error naming only a Service is tied to whichever of the Service's pods explains
//! it, anywhere in the stream: the survey lists those Services, their pods are drafted in their
//! windows but settled only at the end ([`super::Pending`]), with each such error reduced to
//! what the tie weighs (its time, class, port, count and client; the line is freed). A client
//! socket's timeout lines, or a connection's error lines, in two windows are weighed together
//! as the whole stream weighs them: the survey keeps per socket its last line and per
//! connection its last error line ([`attribution::Beyond`]).
//!
//! Where a construct's answer could depend on lines of two windows in a way this does not
//! carry, the stream is analysed whole instead ([`WholeOnly`]), never differently: a line
//! naming only a pod name that a pod of an earlier window had, or one address that one, a
//! superseded retransmitted SYN with the last word on its client. A node's clock lag is known only at the
//! end: when the pods' marks show one, the second pass runs again with it.

use std::net::IpAddr;

use std::hash::BuildHasher as _;

use foldhash::{HashMap, HashMapExt as _, HashSet};

use super::{
    Facts, LineCounts, Options, Pending, PodEvidence, PodOut, Report, Tie, analyse_pods,
    attribution, capacity,
    clients::{self, Clients},
    clock::{self, NodeClocks},
    conclude, count_lines, identify,
    identity::{self, CLAIM_AHEAD_NS},
    input,
    nodes::{self, NodeId, NodesFold},
    services::ServiceNames,
    time::WallNs,
};
use crate::observation::{Kind, Observation};

/// The quiet gap a cut needs: longer than the minute a line naming only an address may precede
/// its pod's first claim of it ([`identity`]), with room for clocks.
pub const CUT_GAP_NS: i64 = 120_000_000_000;

/// Slots of [`Survey::path_asked`].
const ASKED_SLOTS: usize = 1 << 20;

/// The slot of a client socket in [`Survey::path_asked`].
fn asked_slot(hasher: &foldhash::fast::RandomState, socket: (IpAddr, u16)) -> usize {
    usize::try_from(hasher.hash_one(socket)).unwrap_or(0) & (ASKED_SLOTS - 1)
}

/// The shortest gap the analysis stays exact with (tests cut finer streams with it).
pub const MIN_CUT_GAP_NS: i64 = CLAIM_AHEAD_NS + 1;

/// Why a stream is analysed whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("analysed whole: {0}")]
pub struct WholeOnly(pub String);

/// Pass 1: the stream-wide facts and the cuts, folded line by line.
pub struct Survey {
    gap_ns: i64,
    lines: u64,
    nodes: NodesFold,
    offset_moves: HashMap<String, u64>,
    listeners_watched: bool,
    api_deletions: bool,
    clients: Clients,
    names: ServiceNames,
    declared: Vec<capacity::Declared>,
    hasher: foldhash::fast::RandomState,
    uid_last: HashMap<u64, u64>,
    /// Each pod's (by UID) first claim of each address, and per address the claims in time
    /// order: a line naming only an address keeps the pod that claimed it last before open.
    first_claim: HashMap<(IpAddr, u64), WallNs>,
    claims: HashMap<IpAddr, Vec<(WallNs, u64)>>,
    /// Lines naming only an address since the last cut, resolved at the next ([`Self::add`]).
    address_only: Vec<(IpAddr, WallNs, u64)>,
    prefix_max: Option<WallNs>,
    /// Candidate cuts: the first line after it, and the latest time before it.
    cuts: Vec<(u64, WallNs)>,
    clients_watched: bool,
    traffic_log: bool,
    /// Where each node's lines end (retransmitted SYNs with no outcome by then were answered).
    node_end: HashMap<String, jiff::Timestamp>,
    /// Per client socket, the lines that said its path ([`Clients`] keeps the last), in order:
    /// a window may drop retransmitted SYNs among them as superseded, and the whole stream's
    /// word is then the last line kept. Only the sockets a retransmitted SYN spoke for are
    /// kept past the survey.
    path_said: HashMap<(IpAddr, u16), Vec<(u64, clients::Path)>>,
    /// Error lines per client socket (each asks for its socket's path), counted in
    /// [`ASKED_SLOTS`] slots by the socket's hash: a fixed 4 MiB, and a slot shared by two
    /// sockets only counts more asks than one of them has.
    path_asked: Vec<u32>,
    /// Client addresses whose last word (the pod [`Clients`] names them by) is a retransmitted
    /// SYN's: its line number.
    retransmit_name: HashMap<IpAddr, u64>,
    /// The line numbers of retransmitted SYNs that said a socket's path.
    retransmit_lines: HashSet<u64>,
    /// The Services (as dialled) that client errors naming only a Service name.
    service_level: HashSet<String>,
    /// Per client socket with timeout lines (8-byte hash), its last line; per connection with
    /// error lines, its last error line by time (time, line, whether a retransmitted SYN):
    /// a window weighs its timeout lines against the later windows' with them
    /// ([`attribution::Beyond`]).
    socket_last: HashMap<u64, u64>,
    connection_last: HashMap<u64, (WallNs, u64, bool)>,
    /// The traffic loop's own log is left out from the first line ([`Self::again`]).
    skip_loop_log: bool,
    /// Lines of the loop's log were folded in before the clients' kernels were seen watched.
    loop_log_folded: bool,
}

impl Survey {
    /// A survey cutting at quiet gaps of `gap_ns` (at least [`MIN_CUT_GAP_NS`]).
    pub fn new(gap_ns: i64) -> Self {
        Self {
            gap_ns: gap_ns.max(MIN_CUT_GAP_NS),
            lines: 0,
            nodes: NodesFold::default(),
            offset_moves: HashMap::new(),
            listeners_watched: false,
            api_deletions: false,
            clients: Clients::default(),
            names: ServiceNames::default(),
            declared: Vec::new(),
            hasher: foldhash::fast::RandomState::default(),
            uid_last: HashMap::new(),
            first_claim: HashMap::new(),
            claims: HashMap::new(),
            address_only: Vec::new(),
            prefix_max: None,
            cuts: Vec::new(),
            clients_watched: false,
            traffic_log: false,
            node_end: HashMap::new(),
            path_said: HashMap::new(),
            path_asked: vec![0; ASKED_SLOTS],
            retransmit_name: HashMap::new(),
            retransmit_lines: HashSet::default(),
            service_level: HashSet::default(),
            socket_last: HashMap::new(),
            connection_last: HashMap::new(),
            skip_loop_log: false,
            loop_log_folded: false,
        }
    }

    /// Folds in the stream's next line.
    pub fn add(&mut self, o: &Observation) {
        let n = self.lines;
        self.lines += 1;
        if attribution::from_traffic_loop(o) {
            self.traffic_log = true;
            // Left out of the analysis once the clients' kernels were seen watched.
            if self.skip_loop_log || self.clients_watched {
                return;
            }
            self.loop_log_folded = true;
        }
        let t = WallNs::from_timestamp(o.time);
        // A cut before line `c` holds while every line from `c` on is `gap` past every line
        // before it: a line drops the candidates it comes too early for (the latest first:
        // their times before are the latest).
        while self
            .cuts
            .last()
            .is_some_and(|&(_, before)| t.0 < before.0.saturating_add(self.gap_ns))
        {
            self.cuts.pop();
        }
        if let Some(before) = self.prefix_max
            && t.0 >= before.0.saturating_add(self.gap_ns)
        {
            // Every claim a line before the cut could fall to is read by now: a later one
            // would be as old as that line, and undo the cut.
            self.resolve_address_only();
            self.cuts.push((n, before));
        }
        self.prefix_max = Some(self.prefix_max.map_or(t, |m| m.max(t)));

        self.nodes.add(o);
        match self.node_end.get_mut(o.node.0.as_str()) {
            Some(end) => *end = (*end).max(o.time),
            None => {
                self.node_end.insert(o.node.0.clone(), o.time);
            }
        }
        self.note_retransmit_words(o, n);
        if o.kind == Kind::ClockSync
            && let Some(change) = o.details.agent().offset_change_ns
        {
            let m = self.offset_moves.entry(o.node.0.clone()).or_default();
            *m = (*m).max(change.unsigned_abs());
        }
        self.listeners_watched |= o.kind == Kind::ListenerOpen;
        self.api_deletions |= o.kind == Kind::PodDeleting;
        self.clients.add(o);
        self.names.add(o);
        self.declared.extend(capacity::declared_by(o));
        if let Some(uid) = &o.pod_uid {
            let h = self.hasher.hash_one(uid.as_str());
            self.uid_last.insert(h, n);
            if let Some(ip) = o.ip {
                self.claim(ip, h, t);
            }
        } else if let (None, Some(ip)) = (&o.pod, o.ip) {
            self.address_only.push((ip, t, n));
        }
        self.clients_watched |= matches!(o.kind, Kind::ConnError | Kind::SynRetransmit)
            && o.service.is_some()
            && !attribution::from_traffic_loop(o);
        if let Some(socket) = attribution::timeout_socket(o) {
            self.socket_last.insert(self.hasher.hash_one(socket), n);
        }
        if let Some(c) = attribution::error_connection(o) {
            let last = (t, n, o.kind == Kind::SynRetransmit);
            let e = self
                .connection_last
                .entry(self.hasher.hash_one(c))
                .or_insert(last);
            if (last.0, last.1) > (e.0, e.1) {
                *e = last;
            }
        }
        if let Some(service) = &o.service
            && identity::is_error(o.kind)
            && o.ip.is_none()
            && o.pod.is_none()
            && o.pod_uid.is_none()
        {
            self.service_level.insert(service.to_string());
        }
    }

    /// Mirrors [`Clients::add`]: which of its entries a retransmitted SYN set last.
    fn note_retransmit_words(&mut self, o: &Observation, n: u64) {
        let retransmit = o.kind == Kind::SynRetransmit;
        if identity::is_error(o.kind)
            && let (Some(ip), Some(port)) = (o.peer_ip, o.peer_port)
        {
            let slot = asked_slot(&self.hasher, (ip.to_canonical(), port));
            self.path_asked[slot] = self.path_asked[slot].saturating_add(1);
        }
        if let Some(path) = clients::explicit_path(o)
            && let (Some(ip), Some(port)) = (o.peer_ip, o.peer_port)
        {
            let said = self.path_said.entry((ip.to_canonical(), port)).or_default();
            said.push((n, path));
            if retransmit {
                self.retransmit_lines.insert(n);
            }
        }
        if matches!(o.kind, Kind::PodReady | Kind::PodDeleting)
            && let (Some(ip), Some(_)) = (o.ip, &o.pod)
        {
            self.retransmit_name.remove(&ip.to_canonical());
        }
        if let (Some(ip), Some(_)) = (o.peer_ip, &o.details.kernel().peer_pod) {
            if retransmit {
                self.retransmit_name.insert(ip.to_canonical(), n);
            } else {
                self.retransmit_name.remove(&ip.to_canonical());
            }
        }
    }

    /// A survey to fold the stream again with, when this one folded in lines of the traffic
    /// loop's log that the analysis leaves out (the clients' kernels were watched, which a later
    /// line showed): the next survey leaves them out from the first line.
    pub fn again(&self) -> Option<Self> {
        (self.loop_log_folded && self.clients_watched).then(|| Self {
            skip_loop_log: true,
            ..Self::new(self.gap_ns)
        })
    }

    /// Pod `uid` (hashed) named with address `ip` at `t`.
    fn claim(&mut self, ip: IpAddr, uid: u64, t: WallNs) {
        let first = self
            .first_claim
            .entry((ip, uid))
            .or_insert(WallNs(i64::MAX));
        if t >= *first {
            return;
        }
        let claims = self.claims.entry(ip).or_default();
        if first.0 != i64::MAX
            && let Some(at) = claims.iter().position(|&c| c == (*first, uid))
        {
            claims.remove(at);
        }
        *first = t;
        let at = claims.partition_point(|&c| c <= (t, uid));
        claims.insert(at, (t, uid));
    }

    /// Each line naming only an address, `ip` at `t` (line `n`): the pod whose claim it falls
    /// to ([`identity`]; its claims by UID) has lines until there. Keeping a pod open longer
    /// than it needs is only more lines carried; a line that falls to a pod some other way
    /// (a claim by name alone) is found by the second pass ([`WholeOnly`]).
    fn resolve_address_only(&mut self) {
        for (ip, t, n) in std::mem::take(&mut self.address_only) {
            let Some(claims) = self.claims.get(&ip) else {
                continue;
            };
            let before = claims.partition_point(|&(ct, _)| ct <= t);
            let chosen = match before.checked_sub(1) {
                Some(last) => claims[last].0,
                None => match claims.first() {
                    Some(&(ct, _)) if ct.0 <= t.0.saturating_add(CLAIM_AHEAD_NS) => ct,
                    _ => continue,
                },
            };
            for &(_, uid) in claims.iter().filter(|(ct, _)| *ct == chosen) {
                let last = self.uid_last.entry(uid).or_default();
                *last = (*last).max(n);
            }
        }
    }

    /// The plan of the second pass.
    pub fn finish(mut self) -> Plan {
        self.resolve_address_only();
        let (nodes, node_ids) = self.nodes.finish();
        let mut offset_moves = vec![0u64; nodes.names.len()];
        for (name, m) in self.offset_moves {
            offset_moves[node_ids[name.as_str()]] = m;
        }
        let whole_only = self.cuts.is_empty().then(|| {
            format!(
                "no quiet gap of {} s with the lines in order across it to cut the stream at",
                self.gap_ns / 1_000_000_000
            )
        });
        let mut path_said = self.path_said;
        let retransmits = &self.retransmit_lines;
        path_said.retain(|_, lines| lines.iter().any(|(n, _)| retransmits.contains(n)));
        let held_services = self
            .service_level
            .iter()
            .map(|s| self.names.canonical(s))
            .collect();
        Plan {
            cuts: self.cuts.into_iter().map(|(c, _)| c).collect(),
            lines: self.lines,
            facts: Facts {
                nodes,
                offset_moves,
                listeners_watched: self.listeners_watched,
                api_deletions: self.api_deletions,
                clients: self.clients,
                names: self.names,
                declared: self.declared,
            },
            node_ids,
            hasher: self.hasher,
            uid_last: self.uid_last,
            node_end: self.node_end,
            path_said,
            path_asked: self.path_asked,
            retransmit_name: self.retransmit_name,
            held_services,
            socket_last: self.socket_last,
            connection_last: self.connection_last,
            drop_loop_log: self.clients_watched && self.traffic_log,
            whole_only: whole_only.map(WholeOnly),
        }
    }
}

/// What pass 1 found: the windows and the stream-wide facts.
pub struct Plan {
    /// Where each window after the first starts (the line's number in the stream).
    pub cuts: Vec<u64>,
    /// The lines surveyed.
    pub lines: u64,
    facts: Facts,
    node_ids: HashMap<String, NodeId>,
    hasher: foldhash::fast::RandomState,
    uid_last: HashMap<u64, u64>,
    node_end: HashMap<String, jiff::Timestamp>,
    path_said: HashMap<(IpAddr, u16), Vec<(u64, clients::Path)>>,
    path_asked: Vec<u32>,
    retransmit_name: HashMap<IpAddr, u64>,
    /// The Services (their one name) with client errors naming only them: their pods are
    /// drafted in their windows but settled at the end ([`Pending`]).
    held_services: std::collections::HashSet<String>,
    socket_last: HashMap<u64, u64>,
    connection_last: HashMap<u64, (WallNs, u64, bool)>,
    /// The clients' kernels were watched: the traffic loop's own log is left out
    /// ([`attribution::without_redundant_instrument_log`]).
    drop_loop_log: bool,
    /// Set when the stream cannot be analysed a window at a time.
    pub whole_only: Option<WholeOnly>,
}

impl Plan {
    /// The number of windows.
    pub fn windows(&self) -> usize {
        self.cuts.len() + 1
    }

    /// The index of the window line `n` is in.
    pub fn window_of(&self, n: u64) -> usize {
        self.cuts.partition_point(|&c| c <= n)
    }
}

/// What earlier windows' pods leave for the later ones to check against.
#[derive(Default)]
struct Closed {
    /// Names of pods drafted already.
    names: HashSet<String>,
    /// Per address, the latest first claim of it by a pod drafted already.
    claims: HashMap<IpAddr, WallNs>,
    /// Addresses of pods known only by address, drafted already.
    anon: HashSet<IpAddr>,
}

/// The result of pass 2.
pub(crate) enum Finish {
    /// The report, each reported pod's evidence, and the duplicates dropped.
    Done(Box<(Report, Vec<PodEvidence>)>, usize),
    /// The pods' marks show a node's clock lagging: pass 2 again with these clocks.
    Again(NodeClocks),
}

/// Pass 2: the windows, in order.
pub(crate) struct Windowed<'p> {
    plan: &'p Plan,
    clocks: NodeClocks,
    next: usize,
    /// The lines of the window being read ([`Self::push`]), after those carried into it from
    /// earlier windows (the first [`Self::carried`]), with their numbers in the stream: one
    /// buffer, reused from window to window, so a line is moved into it once.
    numbers: Vec<u64>,
    lines: Vec<Observation>,
    carried: usize,
    closed: Closed,
    pods: Vec<PodOut>,
    behind: Vec<u64>,
    per_node: LineCounts,
    observations: u64,
    duplicates: usize,
    /// Lines of [`Plan::path_said`] dropped as superseded, and per socket how many.
    superseded_said: HashSet<u64>,
    superseded_asked: HashMap<(IpAddr, u16), u64>,
    /// The pods of Services with client errors naming only them, and those errors.
    pending: Pending,
    /// The most lines held at once (a window's and those carried into it).
    pub max_held: usize,
}

impl<'p> Windowed<'p> {
    /// Pass 2 with the clocks of an earlier pass 2 ([`Finish::Again`]), or, the first time,
    /// the agents' own offset moves alone.
    pub fn new(plan: &'p Plan, clocks: Option<NodeClocks>) -> Self {
        let n = plan.facts.nodes.names.len();
        let clocks = clocks
            .unwrap_or_else(|| clock::of(&plan.facts.offset_moves, &vec![0; n], &plan.facts.nodes));
        Self {
            plan,
            clocks,
            next: 0,
            numbers: Vec::new(),
            lines: Vec::new(),
            carried: 0,
            closed: Closed::default(),
            pods: Vec::new(),
            behind: vec![0; n],
            per_node: LineCounts::new(),
            observations: 0,
            duplicates: 0,
            superseded_said: HashSet::default(),
            superseded_asked: HashMap::new(),
            pending: Pending {
                services: plan.held_services.clone(),
                ..Pending::default()
            },
            max_held: 0,
        }
    }

    /// Room for the next `n` lines of the window being read.
    pub fn reserve(&mut self, n: usize) {
        self.numbers.reserve_exact(n);
        self.lines.reserve_exact(n);
    }

    /// The next line of the window being read, line `n` of the stream.
    pub fn push(&mut self, n: u64, o: Observation) {
        self.numbers.push(n);
        self.lines.push(o);
    }

    /// Analyses the window read ([`Self::push`]): its lines, in order.
    pub fn window(&mut self) -> Result<(), WholeOnly> {
        let plan = self.plan;
        let facts = &plan.facts;
        // The first line of the next window: pods with lines from there on stay open.
        let end = plan.cuts.get(self.next).copied().unwrap_or(u64::MAX);
        self.next += 1;

        let carried = self.carried;
        let drop = input::duplicates(
            &self.lines[carried..],
            &foldhash::fast::RandomState::default(),
        );
        let dropped = drop.iter().filter(|d| **d).count();
        if dropped > 0 {
            self.retain_fresh_unmarked(&drop);
        }
        self.duplicates += dropped;
        self.observations += (self.lines.len() - carried) as u64;
        if plan.drop_loop_log {
            let from_loop: Vec<bool> = self.lines[carried..]
                .iter()
                .map(attribution::from_traffic_loop)
                .collect();
            self.retain_fresh_unmarked(&from_loop);
        }
        let (obs, numbers) = (&self.lines[carried..], &self.numbers[carried..]);
        let superseded = attribution::superseded_timeouts(
            obs,
            &|node| plan.node_end[node],
            &attribution::Beyond {
                socket_goes_on: &|socket| {
                    plan.socket_last
                        .get(&plan.hasher.hash_one(socket))
                        .is_some_and(|&last| last >= end)
                },
                connection_ends_later: &|c| {
                    plan.connection_last
                        .get(&plan.hasher.hash_one(c))
                        .filter(|&&(_, last, _)| last >= end)
                        .map(|&(_, _, retransmit)| retransmit)
                },
            },
        );
        for &i in &superseded {
            let (o, n) = (&obs[i], numbers[i]);
            let client = o.peer_ip.map(|ip| ip.to_canonical());
            let key = client.zip(o.peer_port);
            if let Some((key, said)) = key.and_then(|k| Some(k).zip(plan.path_said.get(&k))) {
                self.superseded_said.insert(n);
                let asked = self.superseded_asked.entry(key).or_default();
                *asked += 1;
                // Only while a line kept asks for the path does its word matter.
                // The word the windows use (the last line's) against the last one kept: the
                // lines of later windows count as kept until a window drops them.
                let kept = said
                    .iter()
                    .rev()
                    .find(|(line, _)| !self.superseded_said.contains(line));
                let still_asked =
                    u64::from(plan.path_asked[asked_slot(&plan.hasher, key)]) > *asked;
                if still_asked && kept.map(|k| k.1) != said.last().map(|l| l.1) {
                    return Err(WholeOnly(
                        "a retransmitted SYN that a later line supersedes had the last word on its client's path".into(),
                    ));
                }
            }
            if client.and_then(|ip| plan.retransmit_name.get(&ip)) == Some(&n) {
                return Err(WholeOnly(
                    "a retransmitted SYN that a later line supersedes had the last word on its client's name".into(),
                ));
            }
        }
        if !superseded.is_empty() {
            let mut gone = vec![false; obs.len()];
            for &i in &superseded {
                gone[i] = true;
            }
            self.retain_fresh_unmarked(&gone);
        }
        let fresh = &self.lines[carried..];
        let fresh_ids = nodes::ids_of(fresh, &plan.node_ids);
        count_lines(fresh, &fresh_ids, &mut self.per_node);

        let (all_numbers, all) = (&self.numbers, &self.lines);
        self.max_held = self.max_held.max(all.len());
        let node_of = nodes::ids_of(all, &plan.node_ids);
        let ident = identify(all, &node_of);
        self.check_against_closed(&all[carried..], &ident.times[carried..], &ident.assignment)?;

        let a = &ident.assignment;
        let open: Vec<bool> = a
            .pods
            .iter()
            .map(|p| {
                p.uid.as_ref().is_some_and(|u| {
                    plan.uid_last
                        .get(&plan.hasher.hash_one(u.as_str()))
                        .is_some_and(|&last| last >= end)
                })
            })
            .collect();
        for (id, tl) in ident.timelines.iter().enumerate() {
            if !open[id] {
                clock::add_behind(tl, &mut self.behind);
            }
        }
        for (id, p) in a.pods.iter().enumerate() {
            if open[id] {
                continue;
            }
            if let Some(name) = &p.name {
                self.closed.names.insert(name.as_str().to_owned());
            }
            if a.origin[id].0 == 2
                && let Some(ip) = p.ip
            {
                self.closed.anon.insert(ip);
            }
        }
        for (ip, claims) in &a.claims {
            for &(t, id) in claims {
                if !open[id] {
                    let c = self.closed.claims.entry(*ip).or_insert(t);
                    *c = (*c).max(t);
                }
            }
        }
        let mut keep = vec![false; all.len()];
        for (id, members) in a.members.iter().enumerate() {
            if open[id] {
                for &i in members {
                    keep[i] = true;
                }
            }
        }

        let (pods, unattributed) = analyse_pods(
            all,
            ident,
            &|id| !open[id],
            &|i| all_numbers[i],
            facts,
            &self.clocks,
            Tie::AtEnd(&mut self.pending),
        );
        debug_assert!(unattributed.is_empty(), "settled at the end");
        self.pods.extend(pods);
        // The open pods' lines stay, moved to the front; the others are freed.
        let mut kept = keep.iter();
        self.lines.retain(|_| kept.next().copied().unwrap_or(false));
        let mut kept = keep.iter();
        self.numbers
            .retain(|_| kept.next().copied().unwrap_or(false));
        self.carried = self.lines.len();
        Ok(())
    }

    /// Drops the lines of the window read (not those carried into it) whose mark is set.
    fn retain_fresh_unmarked(&mut self, marks: &[bool]) {
        let carried = self.carried;
        let keep = |i: usize| i < carried || !marks[i - carried];
        let mut i = 0;
        self.lines.retain(|_| {
            i += 1;
            keep(i - 1)
        });
        let mut i = 0;
        self.numbers.retain(|_| {
            i += 1;
            keep(i - 1)
        });
    }

    /// Whether any of a window's own lines would, in the whole stream, belong to a pod of an
    /// earlier window: by a pod name alone, or by an address it claimed later than this
    /// window's pods did (or it alone held unclaimed).
    fn check_against_closed(
        &self,
        fresh: &[Observation],
        times: &[WallNs],
        a: &identity::Assignment,
    ) -> Result<(), WholeOnly> {
        for (o, &t) in fresh.iter().zip(times) {
            if o.pod_uid.is_some() {
                continue;
            }
            if let Some(name) = &o.pod {
                if self.closed.names.contains(name.as_str()) {
                    return Err(WholeOnly(format!(
                        "a line names only pod {}, a pod of an earlier window",
                        name.as_str()
                    )));
                }
                continue;
            }
            let Some(ip) = o.ip else { continue };
            let latest_claim = |until: WallNs| {
                a.claims
                    .get(&ip)
                    .and_then(|c| c.iter().map(|&(ct, _)| ct).filter(|ct| *ct <= until).max())
            };
            let earlier = match self.closed.claims.get(&ip) {
                Some(&q) => latest_claim(t).is_none_or(|c| c <= q),
                None => {
                    self.closed.anon.contains(&ip)
                        && latest_claim(t.plus_ns(CLAIM_AHEAD_NS)).is_none()
                }
            };
            if earlier {
                return Err(WholeOnly(format!(
                    "a line names only address {ip}, which a pod of an earlier window held"
                )));
            }
        }
        Ok(())
    }

    /// The report, once every window was given.
    pub fn finish(self, options: &Options) -> Result<Finish, WholeOnly> {
        let facts = &self.plan.facts;
        if self.per_node.len() != facts.nodes.names.len() {
            // The whole stream's node table is that of the lines kept.
            return Err(WholeOnly(
                "a node all of whose lines are retransmitted SYNs that later lines supersede"
                    .into(),
            ));
        }
        let clocks = clock::of(&facts.offset_moves, &self.behind, &facts.nodes);
        if clocks.extra_ns != self.clocks.extra_ns {
            return Ok(Finish::Again(clocks));
        }
        debug_assert!(self.lines.is_empty());
        let mut pods: Vec<PodOut> = self.pods;
        let (held, unattributed) = self.pending.settle(facts, &self.clocks);
        pods.extend(held);
        let (report, evidence) = conclude(
            facts,
            &clocks,
            pods,
            &unattributed,
            self.per_node,
            self.observations,
            options,
        );
        Ok(Finish::Done(Box::new((report, evidence)), self.duplicates))
    }
}

/// A stream analysed by [`analyse`].
pub struct Analysis {
    pub report: Report,
    pub evidence: Vec<PodEvidence>,
    /// Observations dropped as duplicates of another.
    pub duplicates: usize,
    pub windows: usize,
    /// The most lines held at once; the whole stream's when it was analysed whole.
    pub max_held: usize,
    /// Pods, and client errors naming only their Service, held until the stream's end to be
    /// tied together ([`super::Pending`]).
    pub held_to_end: (usize, usize),
    /// Why the stream was analysed whole, when it was.
    pub whole: Option<WholeOnly>,
    /// How many times the stream was read.
    pub reads: usize,
}

/// Reads a stream once more from its start, handing each line to the function given.
pub type Replay<'a, E> = dyn FnMut(&mut dyn FnMut(Observation)) -> Result<(), E> + 'a;

/// Analyses the stream `replay` reads (each call hands every line of it, in the same order, to
/// the function it is given), a window at a time where it can, else whole.
pub fn analyse<E>(
    replay: &mut Replay<'_, E>,
    options: &Options,
    gap_ns: i64,
) -> Result<Analysis, E> {
    let mut survey = Survey::new(gap_ns);
    replay(&mut |o| survey.add(&o))?;
    let mut reads = 1;
    if let Some(mut again) = survey.again() {
        replay(&mut |o| again.add(&o))?;
        reads += 1;
        survey = again;
    }
    let plan = survey.finish();
    let mut clocks = None;
    let whole = loop {
        if let Some(why) = &plan.whole_only {
            break why.clone();
        }
        let mut w = Windowed::new(&plan, clocks.take());
        let mut failed: Option<WholeOnly> = None;
        let mut n = 0u64;
        let mut next_cut = plan.cuts.first().copied();
        // Each window's size is known: its lines are moved into room made for all of them.
        let room = |from: u64, to: Option<u64>| {
            usize::try_from(to.unwrap_or(plan.lines).saturating_sub(from)).unwrap_or(0)
        };
        w.reserve(room(0, next_cut));
        reads += 1;
        replay(&mut |o| {
            if failed.is_some() {
                return;
            }
            if next_cut == Some(n) {
                if let Err(e) = w.window() {
                    failed = Some(e);
                    return;
                }
                next_cut = plan.cuts.get(w.next).copied();
                w.reserve(room(n, next_cut));
            }
            w.push(n, o);
            n += 1;
        })?;
        if failed.is_none()
            && let Err(e) = w.window()
        {
            failed = Some(e);
        }
        if let Some(e) = failed {
            break e;
        }
        let max_held = w.max_held;
        let held_to_end = (w.pending.drafts.len(), w.pending.errors.len());
        match w.finish(options) {
            Err(e) => break e,
            Ok(Finish::Done(r, duplicates)) => {
                let (report, evidence) = *r;
                return Ok(Analysis {
                    report,
                    evidence,
                    duplicates,
                    windows: plan.windows(),
                    max_held,
                    held_to_end,
                    whole: None,
                    reads,
                });
            }
            Ok(Finish::Again(c)) => clocks = Some(c),
        }
    };
    let mut obs = Vec::new();
    reads += 1;
    replay(&mut |o| obs.push(o))?;
    let duplicates = input::drop_duplicates(&mut obs);
    let (report, evidence) = super::correlate_with_evidence(&obs, options);
    Ok(Analysis {
        report,
        evidence,
        duplicates,
        windows: 1,
        max_held: obs.len(),
        held_to_end: (0, 0),
        whole: Some(whole),
        reads,
    })
}

/// [`analyse`] of observations in memory (the tests compare it with the whole-stream engine).
pub fn analyse_slice(obs: &[Observation], options: &Options, gap_ns: i64) -> Analysis {
    analyse::<std::convert::Infallible>(
        &mut |each| {
            for o in obs {
                each(o.clone());
            }
            Ok(())
        },
        options,
        gap_ns,
    )
    .unwrap_or_else(|e| match e {})
}
