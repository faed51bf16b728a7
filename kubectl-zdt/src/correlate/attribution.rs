//! Which cure each error calls for (docs/report-schema.md, Errors).
//!
//! - A refused SYN (RST for `NO_SOCKET` on the pod, `ECONNREFUSED` on a client) means a node
//!   routed a new connection to a pod with no listener: inside the unsafe window a preStop
//!   delay cures it.
//! - A reset of an established connection while the pod exits (`TCP_ABORT_ON_CLOSE`,
//!   `ECONNRESET`) is cured by draining (close idle keep-alives after SIGTERM), not by preStop.
//! - A SYN nobody answers (`ETIMEDOUT`, retransmitted SYN) after the pod's network namespace is
//!   gone is a timeout: the address no longer exists.

use super::{model::Cause, time::WallNs};
use crate::observation::{Kind, Observation};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ErrorClass {
    Refused,
    Reset,
    Timeout,
    Other,
}

pub(crate) fn class(o: &Observation) -> ErrorClass {
    match o.kind {
        Kind::Refused => ErrorClass::Refused,
        Kind::Reset => ErrorClass::Reset,
        Kind::SynRetransmit => ErrorClass::Timeout,
        Kind::ConnError => match o.reason.as_deref() {
            Some("ECONNREFUSED") => ErrorClass::Refused,
            Some("ECONNRESET" | "EPIPE") => ErrorClass::Reset,
            Some("ETIMEDOUT" | "EHOSTUNREACH" | "ENETUNREACH" | "EHOSTDOWN") => ErrorClass::Timeout,
            _ => ErrorClass::Other,
        },
        _ => ErrorClass::Other,
    }
}

/// An error of the node's kubelet's own probe (the agent tagged it `"probe": "kubelet"`).
pub(crate) fn is_kubelet_probe(o: &Observation) -> bool {
    o.details.kernel().probe.as_deref() == Some("kubelet")
}

/// One connection's ends as both its lines name them: the client, then the pod.
pub(crate) type ConnKey = (std::net::IpAddr, u16, std::net::IpAddr, u16);

fn conn_key(o: &Observation) -> Option<ConnKey> {
    Some((o.peer_ip?, o.peer_port?, o.ip?, o.port?))
}

/// The kubelet's probe connections among `lines`: those a line was tagged for. The other end
/// of the same connection is a probe's too: the agent tags the kubelet's own error surely
/// (it dialled the pod directly), the pod's refusal only when conntrack still had the
/// connection (a refused one's entry may be gone by the time the agent asks).
#[derive(Debug, Default)]
pub struct ProbeConnections(std::collections::HashSet<ConnKey>);

impl ProbeConnections {
    pub fn of<'a>(lines: impl IntoIterator<Item = &'a Observation>) -> Self {
        Self(
            lines
                .into_iter()
                .filter(|o| is_kubelet_probe(o))
                .filter_map(conn_key)
                .collect(),
        )
    }

    /// Whether `o` is a kubelet probe's line, tagged or the other end of a tagged one.
    pub fn contains(&self, o: &Observation) -> bool {
        is_kubelet_probe(o) || conn_key(o).is_some_and(|k| self.0.contains(&k))
    }
}

/// Whether `o` is the `--traffic` loop's own log of a failure.
pub(crate) fn from_traffic_loop(o: &Observation) -> bool {
    o.details.kernel().source.as_deref() == Some("traffic")
}

/// The `--traffic` loop logs its own failures (`conn_error` with `source: traffic`). When the
/// agents watched the clients' kernels (a client-side `conn_error` or `syn_retransmit` naming a
/// Service, which an agent writes when the filter holds the Services' addresses), every one of
/// those failures is also a kernel line of the loop's pod: the log is then compared with them
/// (`trace`'s reconcile line), never added to them. Streams without client-side kernel lines
/// (older agents) keep the loop's log as their only record of the clients' side.
pub(crate) fn without_redundant_instrument_log(
    obs: &[Observation],
) -> std::borrow::Cow<'_, [Observation]> {
    let from_loop = from_traffic_loop;
    let clients_watched = obs.iter().any(|o| {
        matches!(o.kind, Kind::ConnError | Kind::SynRetransmit)
            && o.service.is_some()
            && !from_loop(o)
    });
    if !clients_watched || !obs.iter().any(from_loop) {
        return std::borrow::Cow::Borrowed(obs);
    }
    std::borrow::Cow::Owned(obs.iter().filter(|o| !from_loop(o)).cloned().collect())
}

/// A connect that times out shows up several times: each SYN retransmission, then the error
/// (the kernel's ETIMEDOUT, or the client closing the socket itself, `gave_up`). It is one
/// failed connection: of the timeout lines of one client socket (node, client address and
/// port, destination as dialled) only the last before its error line is kept, whatever the
/// input order; lines after an error line are a later connection that reused the port.
pub(crate) fn one_timeout_per_connection(
    obs: &[Observation],
) -> std::borrow::Cow<'_, [Observation]> {
    // Where each node's lines end: a connection still retransmitting then has no outcome yet.
    let mut node_end: foldhash::HashMap<&str, jiff::Timestamp> = foldhash::HashMap::default();
    for o in obs {
        let end = node_end.entry(o.node.0.as_str()).or_insert(o.time);
        *end = (*end).max(o.time);
    }
    let superseded = superseded_timeouts(obs, &|node| node_end[node], &Beyond::NOTHING);
    if superseded.is_empty() {
        return std::borrow::Cow::Borrowed(obs);
    }
    std::borrow::Cow::Owned(
        obs.iter()
            .enumerate()
            .filter(|(i, _)| superseded.binary_search(i).is_err())
            .map(|(_, o)| o.clone())
            .collect(),
    )
}

/// What a stream holds after the lines given to [`superseded_timeouts`] (one window's of it),
/// all later than them.
pub(crate) struct Beyond<'a> {
    /// Whether a client socket has timeout lines later.
    pub socket_goes_on: &'a dyn Fn(&TimeoutSocket<'_>) -> bool,
    /// Whether a connection's last error line is later, and if so whether it is a
    /// retransmitted SYN.
    pub connection_ends_later: &'a dyn Fn(&ConnKey) -> Option<bool>,
}

impl Beyond<'_> {
    /// The lines given are the whole stream.
    pub const NOTHING: Beyond<'static> = Beyond {
        socket_goes_on: &|_| false,
        connection_ends_later: &|_| None,
    };
}

/// The lines [`one_timeout_per_connection`] drops, in order, given where each node's lines end
/// (in the whole stream) and what the stream holds after them.
pub(crate) fn superseded_timeouts(
    obs: &[Observation],
    node_end: &dyn Fn(&str) -> jiff::Timestamp,
    beyond: &Beyond<'_>,
) -> Vec<usize> {
    use foldhash::{HashMap, HashMapExt as _};
    let mut lines: HashMap<TimeoutSocket<'_>, Vec<usize>> = HashMap::new();
    let mut superseded = Vec::new();
    for (i, o) in obs.iter().enumerate() {
        if let Some(key) = timeout_socket(o) {
            lines.entry(key).or_default().push(i);
        }
    }
    // The kernel hands the port of a connect the client gave up on to a later connect, which
    // conntrack may send to the same gone backend: an error line ends a connection, and the
    // lines after it are the next one's (on a real node 15 of 102 timeouts had reused a port).
    for (key, mut socket) in lines {
        socket.sort_unstable_by_key(|&i| (obs[i].time, i));
        for pair in socket.windows(2) {
            if obs[pair[0]].kind != Kind::ConnError {
                superseded.push(pair[0]);
            }
        }
        let Some(&last) = socket.last() else {
            continue;
        };
        let gone = if (beyond.socket_goes_on)(&key) {
            // A later line follows it: the rule of the pairs above.
            obs[last].kind != Kind::ConnError
        } else {
            answered_after_retransmitting(obs, &socket, node_end(obs[last].node.0.as_str()))
        };
        if gone {
            superseded.push(last);
        }
    }
    // A retransmitted SYN that was answered in the end is no timeout: the connection's last
    // line says how it ended (refused by the pod, reset, or an error on the client). On a real
    // node one connection was counted twice: its SYN retransmitted, then refused.
    let mut ended: HashMap<
        (std::net::IpAddr, u16, std::net::IpAddr, u16),
        (jiff::Timestamp, usize),
    > = HashMap::new();
    for (i, o) in obs.iter().enumerate() {
        if let Some(key) = error_connection(o) {
            let e = ended.entry(key).or_insert((o.time, i));
            if (o.time, i) > *e {
                *e = (o.time, i);
            }
        }
    }
    for (i, o) in obs.iter().enumerate() {
        if o.kind != Kind::SynRetransmit {
            continue;
        }
        let Some(key) = conn_key(o) else { continue };
        let answered = match (beyond.connection_ends_later)(&key) {
            Some(later_is_retransmit) => !later_is_retransmit,
            None => ended
                .get(&key)
                .is_some_and(|&(_, last)| last != i && obs[last].kind != Kind::SynRetransmit),
        };
        if answered {
            superseded.push(i);
        }
    }
    superseded.sort_unstable();
    superseded.dedup();
    superseded
}

/// One client socket's timeout lines: node, client address and port, destination as dialled.
pub(crate) type TimeoutSocket<'a> = (
    &'a str,
    std::net::IpAddr,
    u16,
    Option<&'a crate::observation::ServiceRef>,
    Option<std::net::IpAddr>,
    Option<u16>,
);

/// The socket of a timeout line [`one_timeout_per_connection`] weighs against the others.
pub(crate) fn timeout_socket(o: &Observation) -> Option<TimeoutSocket<'_>> {
    if class(o) != ErrorClass::Timeout || o.details.kernel().lost_since.is_some() {
        return None;
    }
    Some((
        o.node.0.as_str(),
        o.peer_ip?,
        o.peer_port?,
        o.service.as_ref(),
        o.ip,
        o.port,
    ))
}

/// The connection an error line ends (both ends named), for [`one_timeout_per_connection`].
pub(crate) fn error_connection(o: &Observation) -> Option<ConnKey> {
    matches!(
        o.kind,
        Kind::Refused | Kind::Reset | Kind::ConnError | Kind::SynRetransmit
    )
    .then(|| conn_key(o))
    .flatten()
}

/// Whether the connection that `socket`'s last lines retransmitted SYNs for was answered: no
/// error line ended it, and the node's lines go on past the moment its next retransmission
/// was due (the kernel doubles the wait from 1 s: the k-th retransmission is followed by the
/// next 2^k s later; 1 s more for timers). Every way a watched client's connect fails leaves an
/// error line (the kernel's ETIMEDOUT or ECONNREFUSED, or the client closing it: `gave_up`),
/// so such a connection was slow, not failed: on a real node two connects whose first SYN went
/// unanswered were answered on the retransmission, and their clients saw no failure.
fn answered_after_retransmitting(
    obs: &[Observation],
    socket: &[usize],
    end: jiff::Timestamp,
) -> bool {
    let retransmits = socket
        .iter()
        .rev()
        .take_while(|&&i| obs[i].kind == Kind::SynRetransmit)
        .count();
    let Some(&last) = socket.last() else {
        return false;
    };
    if retransmits == 0 {
        return false;
    }
    let due_s = 1i64 << retransmits.min(8);
    WallNs::from_timestamp(end) - WallNs::from_timestamp(obs[last].time)
        > (due_s + 1) * 1_000_000_000
}

/// An instant with its uncertainty in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fuzzy {
    pub t: WallNs,
    pub unc_ns: u64,
}

impl Fuzzy {
    fn earliest(self) -> WallNs {
        self.t
            .plus_ns(-(i64::try_from(self.unc_ns).unwrap_or(i64::MAX)))
    }
    fn latest(self) -> WallNs {
        self.t
            .plus_ns(i64::try_from(self.unc_ns).unwrap_or(i64::MAX))
    }
}

/// When an error happened. Lines the agent aggregated after its ring buffer overflowed carry
/// `lost_since`: their events happened between then and the line's time, so they are placed in
/// the middle of that interval with half of it as uncertainty.
pub(crate) fn instant(o: &Observation, t: WallNs) -> Fuzzy {
    let own = o.uncertainty_ns.unwrap_or(0);
    let since = o
        .details
        .kernel()
        .lost_since
        .map(|s| WallNs::from_timestamp(s.0))
        .filter(|s| *s <= t);
    match since {
        Some(s) => {
            let half = (t - s) / 2;
            Fuzzy {
                t: s.plus_ns(half),
                unc_ns: own.saturating_add(u64::try_from(half).unwrap_or(0)),
            }
        }
        None => Fuzzy { t, unc_ns: own },
    }
}

/// What attribution needs to know about one pod.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PodWindow {
    /// The earliest termination mark (deletion, endpoint terminating, preStop, SIGTERM,
    /// listener close, exit).
    pub term_start: Option<Fuzzy>,
    pub listen_closed: Option<Fuzzy>,
    pub exit: Option<Fuzzy>,
    pub netns_gone: Option<Fuzzy>,
    /// The last node's dataplane removal.
    pub window_end: Option<Fuzzy>,
    pub port: Option<u16>,
    /// For a pod that turned ready during the capture: the first node's routing to it (else its
    /// endpoint turning ready, the earliest any node may route), and its listener's open.
    pub routed_from: Option<Fuzzy>,
    pub listen_open: Option<Fuzzy>,
    /// The input has listener opens at all (its agents watch them): only then does a new pod
    /// without one not listen yet.
    pub listeners_watched: bool,
}

pub(crate) fn cause(class: ErrorClass, port: Option<u16>, t: WallNs, w: &PodWindow) -> Cause {
    if class == ErrorClass::Other {
        return Cause::Unrelated;
    }
    // Port 0 is no port: earlier agents read an abort-on-close RST's local port after the
    // kernel had released it.
    if let (Some(p), Some(q)) = (port.filter(|p| *p != 0), w.port)
        && p != q
    {
        return Cause::Unrelated;
    }
    if let Some(c) = startup_cause(class, t, w) {
        return c;
    }
    let Some(start) = w.term_start else {
        return Cause::Undetermined;
    };
    if t < start.earliest() {
        return Cause::Unrelated;
    }
    let before_end = w.window_end.is_none_or(|e| t <= e.latest());
    match class {
        ErrorClass::Refused => {
            let after_close = w.listen_closed.is_none_or(|l| t >= l.earliest());
            if after_close && before_end {
                Cause::UnsafeWindow
            } else {
                Cause::Unrelated
            }
        }
        ErrorClass::Reset => {
            if w.netns_gone.is_none_or(|n| t <= n.latest()) {
                Cause::AtExit
            } else {
                Cause::Unrelated
            }
        }
        // Retransmitted SYNs follow their flow's conntrack entry, which outlives the rule
        // removal: no window end applies, only "the address was gone".
        ErrorClass::Timeout => {
            let gone = match (w.netns_gone, w.exit) {
                (Some(n), _) => t >= n.earliest(),
                (None, Some(e)) => t >= e.earliest(),
                (None, None) => true,
            };
            if gone {
                Cause::AfterNetnsGone
            } else {
                Cause::Unrelated
            }
        }
        ErrorClass::Other => Cause::Unrelated,
    }
}

/// The times outside which [`cause`] of an error of `class` is never a cause on pod `w`
/// ([`Cause::Unrelated`] or [`Cause::Undetermined`]), both ends included; `None` when it never
/// is. Lets a Service's errors be weighed against the few pods around each, not every pod.
pub(crate) fn candidacy(class: ErrorClass, w: &PodWindow) -> Option<(WallNs, WallNs)> {
    const NEVER: WallNs = WallNs(i64::MAX);
    if class == ErrorClass::Other {
        return None;
    }
    // A new pod's startup: from its first routing until its termination begins.
    let startup = w.routed_from.map(|from| {
        let until = w.term_start.map_or(NEVER, |s| s.earliest());
        (from.earliest(), until)
    });
    // Its termination: from the earliest mark until what ends each class's window.
    let termination = w.term_start.map(|start| {
        let until = match class {
            ErrorClass::Refused => w.window_end.map_or(NEVER, Fuzzy::latest),
            ErrorClass::Reset => w.netns_gone.map_or(NEVER, Fuzzy::latest),
            ErrorClass::Timeout | ErrorClass::Other => NEVER,
        };
        (start.earliest(), until)
    });
    match (startup, termination) {
        (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
        (a, b) => a.or(b),
    }
}

/// [`cause`] of an error the pod's own kernel reported (it refused or reset the connection):
/// a new pod that refused a connection after nodes began routing to it, with no listener seen
/// opening where the agents report listener opens, did not listen yet.
pub(crate) fn own_cause(class: ErrorClass, port: Option<u16>, t: WallNs, w: &PodWindow) -> Cause {
    let c = cause(class, port, t, w);
    let routed = w.routed_from.is_some_and(|r| t >= r.earliest());
    if c == Cause::Undetermined
        && class == ErrorClass::Refused
        && routed
        && w.listen_open.is_none()
        && w.listeners_watched
    {
        Cause::BeforeListening
    } else {
        c
    }
}

/// The cause of an error on a new pod while nodes route to it and it is not terminating:
/// refused before its listener opened, or refused after (its readiness probe let it take
/// traffic it could not serve). A reset of a connection it served is no lost request.
fn startup_cause(class: ErrorClass, t: WallNs, w: &PodWindow) -> Option<Cause> {
    let from = w.routed_from?;
    if t < from.earliest() || w.term_start.is_some_and(|s| t >= s.earliest()) {
        return None;
    }
    // Without the listener's open, only the pod's own refusal says it did not listen
    // ([`own_cause`]): a client's error could have come from any other backend.
    let listening = t > w.listen_open?.latest();
    match class {
        ErrorClass::Refused if !listening => Some(Cause::BeforeListening),
        ErrorClass::Refused => Some(Cause::AfterReady),
        // A serving pod resets connections it closes with the request unread, after its
        // response: neither its RST nor the client's ECONNRESET then says a request was lost.
        ErrorClass::Reset if listening => Some(Cause::Unrelated),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn at(ms: i64) -> WallNs {
        WallNs(100 * S + ms * 1_000_000)
    }

    fn exact(ms: i64) -> Option<Fuzzy> {
        Some(Fuzzy {
            t: at(ms),
            unc_ns: 0,
        })
    }

    fn window() -> PodWindow {
        PodWindow {
            term_start: exact(0),
            listen_closed: exact(10),
            exit: exact(20),
            netns_gone: exact(300),
            window_end: exact(600),
            port: Some(8080),
            routed_from: None,
            listen_open: None,
            listeners_watched: true,
        }
    }

    /// A new pod: routed from 0 ms, listening from 2 000 ms, never terminating.
    fn new_pod() -> PodWindow {
        PodWindow {
            routed_from: exact(0),
            listen_open: exact(2_000),
            port: Some(8080),
            ..PodWindow::default()
        }
    }

    #[test]
    fn a_refusal_by_a_new_pod_routed_to_before_it_listened_is_before_listening() {
        let w = new_pod();
        assert_eq!(
            cause(ErrorClass::Refused, Some(8080), at(1_000), &w),
            Cause::BeforeListening
        );
        // Before any node routed to it: no client could have reached it through the Service.
        assert_eq!(
            cause(ErrorClass::Refused, Some(8080), at(-10), &w),
            Cause::Undetermined
        );
        // After it listened, a refusal means it was ready but could not serve.
        assert_eq!(
            cause(ErrorClass::Refused, Some(8080), at(2_500), &w),
            Cause::AfterReady
        );
        // A reset of a connection it served says nothing of a lost request.
        assert_eq!(
            cause(ErrorClass::Reset, Some(8080), at(2_500), &w),
            Cause::Unrelated
        );
        // A timeout is no listener's fault.
        assert_eq!(
            cause(ErrorClass::Timeout, None, at(1_000), &w),
            Cause::Undetermined
        );
    }

    #[test]
    fn without_its_listeners_open_only_the_pods_own_refusal_says_it_did_not_listen() {
        let w = PodWindow {
            listen_open: None,
            listeners_watched: true,
            ..new_pod()
        };
        // A client's refusal on the Service may have come from any backend.
        assert_eq!(
            cause(ErrorClass::Refused, Some(8080), at(1_000), &w),
            Cause::Undetermined
        );
        assert_eq!(
            own_cause(ErrorClass::Refused, Some(8080), at(1_000), &w),
            Cause::BeforeListening
        );
        // An input without any listener open (no agent reporting them) says nothing of it.
        let unwatched = PodWindow {
            listeners_watched: false,
            ..w
        };
        assert_eq!(
            own_cause(ErrorClass::Refused, Some(8080), at(1_000), &unwatched),
            Cause::Undetermined
        );
    }

    #[test]
    fn a_new_pods_errors_once_it_terminates_follow_the_termination_rules() {
        let w = PodWindow {
            term_start: exact(3_000),
            listen_closed: exact(3_010),
            window_end: exact(3_500),
            ..new_pod()
        };
        assert_eq!(
            cause(ErrorClass::Refused, Some(8080), at(3_200), &w),
            Cause::UnsafeWindow
        );
    }

    #[test]
    fn a_refusal_between_listener_close_and_the_last_removal_is_in_the_unsafe_window() {
        assert_eq!(
            cause(ErrorClass::Refused, Some(8080), at(200), &window()),
            Cause::UnsafeWindow
        );
    }

    #[test]
    fn a_refusal_after_every_node_stopped_routing_is_unrelated() {
        assert_eq!(
            cause(ErrorClass::Refused, Some(8080), at(700), &window()),
            Cause::Unrelated
        );
    }

    #[test]
    fn a_refusal_on_another_port_is_unrelated() {
        assert_eq!(
            cause(ErrorClass::Refused, Some(9090), at(200), &window()),
            Cause::Unrelated
        );
    }

    #[test]
    fn a_reset_while_the_pod_exits_calls_for_draining() {
        assert_eq!(
            cause(ErrorClass::Reset, None, at(20), &window()),
            Cause::AtExit
        );
    }

    #[test]
    fn a_timeout_after_the_namespace_is_gone_is_its_own_cause() {
        assert_eq!(
            cause(ErrorClass::Timeout, None, at(400), &window()),
            Cause::AfterNetnsGone
        );
        assert_eq!(
            cause(ErrorClass::Timeout, None, at(100), &window()),
            Cause::Unrelated
        );
    }

    #[test]
    fn errors_before_the_termination_began_are_unrelated() {
        assert_eq!(
            cause(ErrorClass::Refused, None, at(-5), &window()),
            Cause::Unrelated
        );
    }

    #[test]
    fn without_any_termination_mark_no_cause_is_invented() {
        let w = PodWindow::default();
        assert_eq!(
            cause(ErrorClass::Refused, None, at(0), &w),
            Cause::Undetermined
        );
    }

    #[test]
    fn the_pods_refusal_of_a_connection_the_kubelets_error_was_tagged_for_is_a_probe_too() {
        let line = |kind: Kind, client_port: u16, probe: bool| {
            let mut o = Observation::new(
                kind,
                at(0).to_timestamp(),
                crate::observation::NodeName("vm".into()),
            );
            o.ip = Some("198.18.0.30".parse().unwrap());
            o.port = Some(8080);
            o.peer_ip = Some("198.18.0.1".parse().unwrap());
            o.peer_port = Some(client_port);
            if probe {
                o = o.with_extra("probe", "kubelet");
            }
            o
        };
        // Recorded on the real cluster: the kubelet's ECONNREFUSED tagged, the pod's RST not
        // (conntrack no longer had the refused connection).
        let lines = [
            line(Kind::Refused, 53176, false),
            line(Kind::ConnError, 53176, true),
            line(Kind::Refused, 39724, false),
        ];
        let probes = ProbeConnections::of(&lines);
        assert!(probes.contains(&lines[0]));
        assert!(probes.contains(&lines[1]));
        assert!(!probes.contains(&lines[2]), "another client's refusal");
    }

    /// A line of one client connection (198.18.0.1:47498 → 198.18.0.9:8080) on node vm.
    fn line(kind: Kind, ms: i64) -> Observation {
        let mut o = Observation::new(
            kind,
            at(ms).to_timestamp(),
            crate::observation::NodeName("vm".into()),
        );
        o.ip = Some("198.18.0.9".parse().unwrap());
        o.port = Some(8080);
        o.peer_ip = Some("198.18.0.1".parse().unwrap());
        o.peer_port = Some(47_498);
        o
    }

    #[test]
    fn a_retransmitted_syn_that_was_then_refused_is_one_refusal() {
        let obs = vec![line(Kind::Refused, 1_005), line(Kind::SynRetransmit, 1_000)];
        let kept = one_timeout_per_connection(&obs);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].kind, Kind::Refused);
        // Retransmitted, then nothing until the stream ends: its outcome is unknown, it stays.
        let alone = vec![line(Kind::SynRetransmit, 1_000)];
        assert_eq!(one_timeout_per_connection(&alone).len(), 1);
        // The node's lines go on past its next retransmission (due 2 s after the first, +1 s):
        // it was answered (a slow connect, no failure); before that, its outcome is open.
        let later = |ms| line(Kind::Exit, ms);
        for (end_ms, kept) in [(4_001, 1), (3_999, 2)] {
            let obs = vec![line(Kind::SynRetransmit, 1_000), later(end_ms)];
            assert_eq!(
                one_timeout_per_connection(&obs).len(),
                kept,
                "stream to {end_ms} ms"
            );
        }
        // A second retransmission moves the next one 4 s on (one timeout line at most).
        for (end_ms, kept) in [(8_100, 1), (7_900, 2)] {
            let twice = vec![
                line(Kind::SynRetransmit, 1_000),
                line(Kind::SynRetransmit, 3_000),
                later(end_ms),
            ];
            assert_eq!(
                one_timeout_per_connection(&twice).len(),
                kept,
                "stream to {end_ms} ms"
            );
        }
    }

    /// A window's lines weighed with what the stream holds after them: the verdicts the whole
    /// stream gives its lines.
    #[test]
    fn lines_of_later_windows_decide_as_if_they_were_there() {
        // The stream ends right after a retransmitted SYN: open, kept.
        let window = vec![line(Kind::SynRetransmit, 1_000)];
        let end = |_: &str| at(1_000).to_timestamp();
        assert!(superseded_timeouts(&window, &end, &Beyond::NOTHING).is_empty());
        // The socket's next line is in a later window: superseded, as by a line after it here.
        let goes_on = Beyond {
            socket_goes_on: &|_| true,
            connection_ends_later: &|_| None,
        };
        assert_eq!(superseded_timeouts(&window, &end, &goes_on), vec![0]);
        // Its connection's last error line is later: answered unless that is a retransmit.
        for (later_is_retransmit, dropped) in [(false, vec![0]), (true, vec![])] {
            let ends = Beyond {
                socket_goes_on: &|_| false,
                connection_ends_later: &move |_| Some(later_is_retransmit),
            };
            assert_eq!(superseded_timeouts(&window, &end, &ends), dropped);
        }
        // An error line ends its socket's connection whatever follows.
        let mut error = line(Kind::ConnError, 1_000);
        error.reason = Some("ETIMEDOUT".into());
        assert!(superseded_timeouts(&[error], &end, &goes_on).is_empty());
    }

    #[test]
    fn the_traffic_loops_log_is_not_added_to_the_clients_own_kernel_lines() {
        let line = |source: Option<&str>| {
            let mut o = Observation::new(
                Kind::ConnError,
                at(0).to_timestamp(),
                crate::observation::NodeName("vm".into()),
            );
            o.reason = Some("ETIMEDOUT".into());
            o.service = Some("zdt-e2e/fast-exit".into());
            match source {
                Some(s) => o.with_extra("source", s),
                None => o,
            }
        };
        let only_log = [line(Some("traffic")), line(Some("traffic"))];
        assert_eq!(without_redundant_instrument_log(&only_log).len(), 2);
        let both = [line(Some("traffic")), line(None)];
        let kept = without_redundant_instrument_log(&both);
        assert_eq!(kept.len(), 1);
        assert!(kept[0].details.kernel().source.is_none());
    }

    #[test]
    fn a_connect_that_retransmitted_its_syn_then_gave_up_is_one_timeout() {
        let line = |kind: Kind, ms: i64, client_port: u16| {
            let mut o = Observation::new(
                kind,
                at(ms).to_timestamp(),
                crate::observation::NodeName("vm".into()),
            );
            if kind == Kind::ConnError {
                o.reason = Some("ETIMEDOUT".into());
            }
            o.service = Some("198.19.0.10:80".into());
            o.ip = Some("198.18.0.9".parse().unwrap());
            o.port = Some(8080);
            o.peer_ip = Some("198.18.0.1".parse().unwrap());
            o.peer_port = Some(client_port);
            o
        };
        // The gave-up line first: the input order must not matter.
        let obs = vec![
            line(Kind::ConnError, 3_000, 40_000),
            line(Kind::SynRetransmit, 1_000, 40_000),
            line(Kind::SynRetransmit, 2_000, 40_000),
            line(Kind::SynRetransmit, 1_000, 40_001),
        ];
        let kept = one_timeout_per_connection(&obs);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].kind, Kind::ConnError);
        assert_eq!(kept[1].peer_port, Some(40_001));
        // The port given up on is handed to a later connect, which times out too (conntrack
        // still sends it to the gone backend): two failed connections, in any input order.
        let reused = vec![
            line(Kind::ConnError, 5_000, 40_000),
            line(Kind::ConnError, 2_000, 40_000),
            line(Kind::SynRetransmit, 1_000, 40_000),
            line(Kind::SynRetransmit, 4_500, 40_000),
        ];
        let kept = one_timeout_per_connection(&reused);
        assert_eq!(kept.len(), 2, "{kept:#?}");
        assert!(kept.iter().all(|o| o.kind == Kind::ConnError));
    }

    #[test]
    fn events_the_agent_lost_are_placed_mid_interval_with_its_half_width() {
        let t = at(1_000);
        let mut o = Observation::new(
            Kind::Refused,
            t.to_timestamp(),
            crate::observation::NodeName("vm".into()),
        );
        o = o.with_extra(
            "lost_since",
            crate::observation::format_time(at(0).to_timestamp()),
        );
        o.uncertainty_ns = Some(40);
        assert_eq!(
            instant(&o, t),
            Fuzzy {
                t: at(500),
                unc_ns: 500_000_040
            }
        );
    }

    /// A mark of `ms` (from a few around the window's) with an uncertainty, or none.
    fn mark() -> impl proptest::strategy::Strategy<Value = Option<Fuzzy>> {
        use proptest::prelude::*;
        proptest::option::of((
            -50i64..150,
            prop_oneof![Just(0u64), 0u64..30_000_000, Just(u64::MAX)],
        ))
        .prop_map(|m| m.map(|(ms, unc_ns)| Fuzzy { t: at(ms), unc_ns }))
    }

    proptest::proptest! {
        /// Outside its candidacy span a pod never explains an error: the span may only be wider.
        #[test]
        fn a_cause_only_ever_falls_within_the_candidacy_span(
            marks in proptest::collection::vec(mark(), 8),
            class in 0usize..4,
            ms in -100i64..200,
            ports in (proptest::option::of(0u16..3), proptest::option::of(0u16..3)),
            watched in proptest::prelude::any::<bool>(),
        ) {
            let w = PodWindow {
                term_start: marks[0],
                listen_closed: marks[1],
                exit: marks[2],
                netns_gone: marks[3],
                window_end: marks[4],
                port: ports.1,
                routed_from: marks[5],
                listen_open: marks[6],
                listeners_watched: watched,
            };
            let class = [ErrorClass::Refused, ErrorClass::Reset, ErrorClass::Timeout, ErrorClass::Other][class];
            let t = at(ms);
            let c = cause(class, ports.0, t, &w);
            if !matches!(c, Cause::Unrelated | Cause::Undetermined) {
                let span = candidacy(class, &w);
                proptest::prop_assert!(
                    span.is_some_and(|(a, b)| a <= t && t <= b),
                    "{c:?} at {t:?} outside {span:?}"
                );
            }
        }
    }
}
