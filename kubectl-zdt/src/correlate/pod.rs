//! One pod's report: its marks, each node's routing, the gap and the verdict.
//!
//! Built in two steps because errors a client saw on a ClusterIP can only be tied to a pod once
//! every pod's window is known: [`draft`] folds the pod's own observations, then service-level
//! errors are added, then [`finish`] derives the gap and the verdict.

use super::{
    attribution::{self, ErrorClass, Fuzzy, PodWindow},
    clients::{ClientError, Clients, Path},
    clock::NodeClocks,
    identity::PodIdent,
    marks::{RawMark, Timeline},
    model::{
        Basis, Cause, ErrorCounts, ErrorMark, Mark, Marks, NodeAdded, NodeRouting, PodReport,
        ReadinessProbe, RoutingState, StartupMarks, StartupReport, Verdict, Window,
    },
    nodes::Nodes,
    time::{WallNs, ms, ms_u},
};
use crate::observation::{Kind, NodeName, Observation};

#[derive(Clone, Debug)]
pub(crate) struct PodDraft {
    pub ident: PodIdent,
    pub tl: Timeline,
    pub window: PodWindow,
    pub errors: ErrorCounts,
    pub error_marks: Vec<ErrorMark>,
    /// The first refused connection inside the window: the listener was closed by then.
    pub first_refused: Option<Fuzzy>,
    /// A new pod's first and last refusals before its listener opened: a node routed to it by
    /// the first, it did not listen yet by the last.
    pub first_refused_before_listening: Option<Fuzzy>,
    pub last_refused_before_listening: Option<Fuzzy>,
    /// Each error with its client and path.
    pub client_errors: Vec<ClientError>,
    /// The last connection refused after every node stopped routing the Service to the pod:
    /// a client dialling its address directly, and when.
    pub direct_until: Option<(Fuzzy, String)>,
}

impl PodDraft {
    pub fn add_error(
        &mut self,
        class: ErrorClass,
        cause: Cause,
        at: Fuzzy,
        count: u64,
        client: (String, Path),
    ) {
        self.errors.add(cause, count);
        self.client_errors.push(ClientError {
            client: client.0,
            path: client.1,
            cause,
            count,
            t: at.t,
        });
        self.error_marks.push(ErrorMark {
            time: at.t.to_timestamp(),
            cause,
            count,
        });
        if class == ErrorClass::Refused
            && cause == Cause::UnsafeWindow
            && self
                .first_refused
                .is_none_or(|f| (at.t, at.unc_ns) < (f.t, f.unc_ns))
        {
            self.first_refused = Some(at);
        }
        if cause == Cause::BeforeListening
            && self
                .first_refused_before_listening
                .is_none_or(|f| (at.t, at.unc_ns) < (f.t, f.unc_ns))
        {
            self.first_refused_before_listening = Some(at);
        }
        if cause == Cause::BeforeListening
            && self
                .last_refused_before_listening
                .is_none_or(|f| (at.t, at.unc_ns) > (f.t, f.unc_ns))
        {
            self.last_refused_before_listening = Some(at);
        }
    }
}

/// What the advice needs from a finished pod.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PodFacts {
    /// Upper edge of the propagation delay (value + uncertainty).
    pub propagation_ns: Option<i64>,
    /// preStop length this pod needed for gap + uncertainty ≤ 0.
    pub needed_ns: Option<i64>,
    /// SIGTERM → exit.
    pub drain_ns: Option<i64>,
    /// preStop exec → SIGTERM, when both were seen.
    pub prestop_ran_ns: Option<i64>,
}

pub(crate) fn label(ident: &PodIdent) -> String {
    match (&ident.name, &ident.ip, &ident.uid) {
        (Some(n), _, _) => n.to_string(),
        (None, Some(ip), _) => format!("pod at {ip}"),
        (None, None, Some(uid)) => format!("pod {uid}"),
        (None, None, None) => "unnamed pod".to_owned(),
    }
}

fn fuzzy(m: Option<RawMark>, clocks: &NodeClocks) -> Option<Fuzzy> {
    m.map(|m| Fuzzy {
        t: m.t,
        unc_ns: clocks.unc(&m),
    })
}

/// A node's end of routing: its removal, or a later flow it still routed (conntrack, a stale
/// rule) — whichever came last. Without a removal, a flow routed after the termination began
/// bounds the end from below; one from before says nothing about the end.
fn node_end(d: &super::marks::NodeDp, term_start: Option<Fuzzy>) -> Option<RawMark> {
    match (d.removed, d.last_flow) {
        (Some(r), Some(f)) if f.t > r.t => Some(f),
        (Some(r), _) => Some(r),
        (None, Some(f)) if term_start.is_some_and(|s| f.t >= s.t) => Some(f),
        (None, _) => None,
    }
}

fn routing_state(d: &super::marks::NodeDp) -> RoutingState {
    match (d.removed, d.added) {
        (Some(r), Some(a)) if a.t > r.t => RoutingState::StillRouting,
        (Some(_), _) => RoutingState::Removed,
        (None, Some(_)) => RoutingState::StillRouting,
        (None, None) => RoutingState::Unknown,
    }
}

pub(crate) fn draft(
    ident: PodIdent,
    tl: Timeline,
    obs: &[Observation],
    times: &[WallNs],
    clocks: &NodeClocks,
    listeners_watched: bool,
    clients: &Clients,
) -> PodDraft {
    // The exit only starts the termination when nothing earlier was seen: an exit known from
    // the API is only bracketed, and its early edge would reach back before the deletion.
    let starts = [
        tl.delete,
        tl.ep_terminating,
        tl.prestop,
        tl.sigterm,
        tl.listen_closed,
    ];
    let term_start = starts
        .into_iter()
        .flatten()
        .chain(
            starts
                .iter()
                .all(Option::is_none)
                .then_some(tl.exit)
                .flatten(),
        )
        .map(|m| Fuzzy {
            t: m.t,
            unc_ns: clocks.unc(&m),
        })
        .min_by_key(|f| (f.t.0 - i64::try_from(f.unc_ns).unwrap_or(0), f.unc_ns));
    let window_end = tl
        .dp
        .values()
        .filter_map(|d| node_end(d, term_start))
        .map(|m| Fuzzy {
            t: m.t,
            unc_ns: clocks.unc(&m),
        })
        .max_by_key(|f| (f.t, f.unc_ns));
    // Errors count from the earliest instant any node may route to the pod: its endpoint turning
    // ready, or a node's routing seen before the API's notice of it arrived.
    let routed_from = if tl.is_new() {
        [first_routed(&tl), tl.ep_ready]
            .into_iter()
            .flatten()
            .map(|m| Fuzzy {
                t: m.t,
                unc_ns: clocks.unc(&m),
            })
            .min_by_key(|f| (f.t, f.unc_ns))
    } else {
        None
    };
    let window = PodWindow {
        term_start,
        listen_closed: fuzzy(tl.listen_closed, clocks),
        exit: fuzzy(tl.exit, clocks),
        netns_gone: fuzzy(tl.netns_gone, clocks),
        window_end,
        port: tl.port,
        routed_from,
        listen_open: fuzzy(tl.listen_open, clocks),
        listeners_watched,
    };
    let mut d = PodDraft {
        ident,
        window,
        errors: ErrorCounts::default(),
        error_marks: Vec::new(),
        first_refused: None,
        first_refused_before_listening: None,
        last_refused_before_listening: None,
        client_errors: Vec::new(),
        direct_until: None,
        tl,
    };
    let errors = std::mem::take(&mut d.tl.errors);
    // One failed connection is often seen from both ends: the pod's kernel refusing or
    // resetting it, the client's kernel reporting the error (toward the pod or its ClusterIP).
    // The pod's side sees every refusal and reset it sends; the client's side adds only what
    // it did not (timeouts, above all). So the pod's lines count first, and a client's line of
    // the same cause is counted only beyond them. Pairing by the client's address and port is
    // not enough: conntrack may rewrite the client's port when two connections clash.
    let pod_side = |o: &Observation| matches!(o.kind, Kind::Refused | Kind::Reset);
    let probes = attribution::ProbeConnections::of(errors.iter().map(|&i| &obs[i]));
    let direct = direct_refusals(&d, &errors, obs, times, &probes);
    extend_to_direct_clients(&mut d, &direct, obs, times, clients);
    let mut credit: std::collections::HashMap<Cause, u64> = std::collections::HashMap::new();
    for client_side in [false, true] {
        for &i in errors.iter().filter(|&&i| pod_side(&obs[i]) != client_side) {
            let o = &obs[i];
            let class = attribution::class(o);
            let at = attribution::instant(o, times[i]);
            let cause = if probes.contains(o) {
                Cause::Probe
            } else if pod_side(o) {
                attribution::own_cause(class, o.port, at.t, &d.window)
            } else {
                let c = attribution::cause(class, o.port, at.t, &d.window);
                // The client's kernel reports the pod's RST when it arrives, up to a trip
                // later (and its node's clock may be off by the uncertainty): the pod's own
                // line of it may fall on the other side of a cause's boundary (refused an
                // instant before the listener opened, reported an instant after). A cause
                // with no pod line left to cover this one then takes a nearby cause's.
                let has = |c: &Cause| credit.get(c).is_some_and(|&n| n > 0);
                if has(&c) {
                    c
                } else {
                    let unc = i64::try_from(at.unc_ns).unwrap_or(i64::MAX / 4);
                    [at.t.plus_ns(-(REPLY_TRIP_NS + unc)), at.t.plus_ns(unc)]
                        .into_iter()
                        .map(|t| attribution::cause(class, o.port, t, &d.window))
                        .find(has)
                        .unwrap_or(c)
                }
            };
            // A probe's reset counts as the pod's own reset line of it, never as the kubelet's
            // error alone: the kubelet closes its socket right after a tcpSocket probe's
            // connect (lingering up to 1 s), and a server that greets on connect (or answers
            // the bare connect) is reset by the kubelet's own kernel, whose socket reports
            // ECONNRESET, although the probe passed.
            if client_side && cause == Cause::Probe && class == ErrorClass::Reset {
                continue;
            }
            let mut n = o.weight();
            let c = credit.entry(cause).or_default();
            if client_side {
                let covered = n.min(*c);
                *c -= covered;
                n -= covered;
            } else {
                *c += n;
            }
            if n > 0 {
                let path = match clients.path_of(o) {
                    Path::Unknown if direct.contains(&i) => Path::PodIp,
                    p => p,
                };
                d.add_error(class, cause, at, n, (clients.client_of(o), path));
            }
        }
    }
    d.tl.errors = errors;
    d
}

/// The longest a pod's RST takes to reach the client whose kernel reports it (across nodes,
/// through the Service's NAT): a client's error within it of a pod's own line of another cause
/// may be that line's connection.
const REPLY_TRIP_NS: i64 = 10_000_000;

/// The pod's own refusals (on its port, not a probe's) after its listener closed and after
/// every node stopped routing the Service to it, before its network went: no Service sent
/// those, a client dialled the pod's address itself (an ingress controller, a mesh, a
/// headless Service, a client-side balancer keeping its own endpoint list). The client's own
/// line of such a connection says so too (`ip` without `service`).
fn direct_refusals(
    d: &PodDraft,
    errors: &[usize],
    obs: &[Observation],
    times: &[WallNs],
    probes: &attribution::ProbeConnections,
) -> Vec<usize> {
    let w = &d.window;
    let (Some(end), Some(closed)) = (w.window_end, w.listen_closed.or(w.term_start)) else {
        return Vec::new();
    };
    errors
        .iter()
        .copied()
        .filter(|&i| {
            let o = &obs[i];
            let t = times[i];
            let direct_line = match o.kind {
                Kind::Refused => true,
                Kind::ConnError => o.service.is_none() && o.ip.is_some(),
                _ => false,
            };
            direct_line
                && attribution::class(o) == ErrorClass::Refused
                && !probes.contains(o)
                && o.port
                    .is_none_or(|p| w.port.is_none_or(|q| p == q || p == 0))
                && t > end.t.plus_ns(i64::try_from(end.unc_ns).unwrap_or(0))
                && t >= closed.t
                && w.netns_gone.is_none_or(|n| t <= n.t)
        })
        .collect()
}

/// Moves the end of the pod's unsafe window to its last refusal by a client dialling it
/// directly ([`direct_refusals`]): the preStop must outlast that client's lag as well.
fn extend_to_direct_clients(
    d: &mut PodDraft,
    direct: &[usize],
    obs: &[Observation],
    times: &[WallNs],
    clients: &Clients,
) {
    let Some(&last) = direct.iter().max_by_key(|&&i| (times[i], i)) else {
        return;
    };
    let at = attribution::instant(&obs[last], times[last]);
    d.window.window_end = Some(at);
    d.direct_until = Some((at, clients.client_of(&obs[last])));
}

/// When the first node began routing new connections to the pod: its first `dataplane_added`,
/// or its first routed connection when no addition was seen.
fn first_routed(tl: &Timeline) -> Option<RawMark> {
    tl.dp
        .values()
        .filter_map(|d| d.first_added.or(d.first_flow))
        .min_by_key(|m| (m.t, m.node, m.unc_ns))
}

fn to_mark(m: Option<RawMark>, clocks: &NodeClocks, nodes: &Nodes) -> Option<Mark> {
    m.map(|m| Mark {
        time: m.t.to_timestamp(),
        uncertainty_ms: ms_u(clocks.unc(&m)),
        source: m.kind,
        node: nodes.names[m.node].clone(),
    })
}

pub(crate) fn finish(d: &PodDraft, nodes: &Nodes, clocks: &NodeClocks) -> (PodReport, PodFacts) {
    let tl = &d.tl;
    let mark = |m| to_mark(m, clocks, nodes);
    let marks = Marks {
        delete: mark(tl.delete),
        ep_terminating: mark(tl.ep_terminating),
        ep_removed: mark(tl.ep_removed),
        prestop: mark(tl.prestop),
        sigterm: mark(tl.sigterm),
        listen_closed: mark(tl.listen_closed),
        exit: mark(tl.exit),
        netns_gone: mark(tl.netns_gone),
    };

    let mut dataplane = Vec::with_capacity(nodes.reporting.len());
    let mut incomplete = nodes.reporting.is_empty();
    let mut worst: Option<RawMark> = None;
    for &n in &nodes.reporting {
        let dp = tl.dp.get(&n).copied().unwrap_or_default();
        let state = routing_state(&dp);
        incomplete |= state != RoutingState::Removed;
        if let Some(end) = node_end(&dp, d.window.term_start)
            && worst.is_none_or(|w| (end.t, end.node) > (w.t, w.node))
        {
            worst = Some(end);
        }
        dataplane.push(NodeRouting {
            node: nodes.names[n].clone(),
            state,
            removed: mark(dp.removed),
            last_flow: mark(dp.last_flow),
        });
    }
    let worst_node: Option<NodeName> = worst.map(|w| nodes.names[w.node].clone());
    let end = d.window.window_end;

    // The listener close: observed, or bounded from above by the exit (closing every socket)
    // and by the first refused connection (nothing listened any more).
    let (listen, listen_measured) = match d.window.listen_closed {
        Some(l) => (Some(l), true),
        None => {
            // As bounds, the latest instant each could be: the listener was closed by then.
            let bound = [d.window.exit, d.first_refused]
                .into_iter()
                .flatten()
                .map(|f| Fuzzy {
                    t: f.t.plus_ns(i64::try_from(f.unc_ns).unwrap_or(0)),
                    unc_ns: 0,
                })
                .min_by_key(|f| f.t);
            (bound, false)
        }
    };
    let lower = |measured: bool| {
        if measured && !incomplete {
            Basis::Measured
        } else {
            Basis::LowerBound
        }
    };
    let (gap_ns, gap_unc, gap_basis) = match (end, listen) {
        (Some(e), Some(l)) => (
            Some(e.t - l.t),
            e.unc_ns.saturating_add(l.unc_ns),
            lower(listen_measured),
        ),
        _ => (None, 0, Basis::Unknown),
    };
    let delete = fuzzy(tl.delete, clocks);
    let (prop_ns, prop_unc, propagation_basis) = match (end, delete) {
        (Some(e), Some(del)) => (
            Some(e.t - del.t),
            e.unc_ns.saturating_add(del.unc_ns),
            lower(true),
        ),
        _ => (None, 0, Basis::Unknown),
    };
    let unsafe_window = match (gap_ns, listen, end) {
        (Some(g), Some(l), Some(e)) if g > 0 => Some(Window {
            start: l.t.to_timestamp(),
            end: e.t.to_timestamp(),
            duration_ms: ms(g),
        }),
        _ => None,
    };

    let mut missing = Vec::new();
    for (name, m) in [
        ("delete", tl.delete),
        ("ep_terminating", tl.ep_terminating),
        ("ep_removed", tl.ep_removed),
        ("prestop", tl.prestop),
        ("sigterm", tl.sigterm),
        ("listen_closed", tl.listen_closed),
        ("exit", tl.exit),
        ("netns_gone", tl.netns_gone),
    ] {
        if m.is_none() {
            missing.push(name.to_owned());
        }
    }
    if end.is_none() {
        missing.push("dp_removed".to_owned());
    }

    let unknown_nodes = dataplane
        .iter()
        .filter(|r| r.state != RoutingState::Removed)
        .count();
    let gap_unc_i = i64::try_from(gap_unc).unwrap_or(i64::MAX);
    let (verdict, reason) = verdict(&Judged {
        gap_ns,
        gap_unc: gap_unc_i,
        gap_basis,
        listen_measured,
        errors: d.errors,
        worst_node: worst_node.as_ref(),
        unknown_nodes,
        total_nodes: dataplane.len(),
        has_end: end.is_some(),
        terminating: tl.is_terminating(),
        direct_client: d.direct_until.as_ref().map(|(_, c)| c.as_str()),
    });

    let prestop_ran_ns = match (tl.prestop, tl.sigterm) {
        (Some(p), Some(s)) => Some((s.t - p.t).max(0)),
        _ => None,
    };
    let prestop_ran = prestop_ran_ns.unwrap_or(0);
    let facts = PodFacts {
        propagation_ns: prop_ns
            .map(|p| p.saturating_add(i64::try_from(prop_unc).unwrap_or(i64::MAX))),
        needed_ns: gap_ns.map(|g| g.saturating_add(gap_unc_i).saturating_add(prestop_ran)),
        // Only the agent's exit is precise enough to measure a drain.
        drain_ns: match (tl.sigterm, tl.exit) {
            (Some(s), Some(e)) if e.kind == Kind::Exit => Some((e.t - s.t).max(0)),
            _ => None,
        },
        prestop_ran_ns,
    };
    let mut error_marks = d.error_marks.clone();
    error_marks.sort_by_key(|e| (e.time, e.cause, e.count));
    let report = PodReport {
        pod: d.ident.name.clone(),
        pod_uid: d.ident.uid.clone(),
        ip: d.ident.ip,
        port: tl.port,
        service: tl.service.clone(),
        marks,
        dataplane,
        propagation_ms: prop_ns.map(ms),
        propagation_basis,
        gap_ms: gap_ns.map(ms),
        gap_basis,
        gap_uncertainty_ms: ms_u(gap_unc),
        unsafe_window,
        worst_node,
        errors: d.errors,
        verdict,
        reason,
        missing,
        error_marks,
        client_errors: d.client_errors.clone(),
    };
    (report, facts)
}

/// A new pod's report: when nodes began routing to it, when it listened, the errors in
/// between and what its readiness probe let through.
pub(crate) fn finish_startup(d: &PodDraft, nodes: &Nodes, clocks: &NodeClocks) -> StartupReport {
    let tl = &d.tl;
    let mark = |m| to_mark(m, clocks, nodes);
    let routed = first_routed(tl);
    let marks = StartupMarks {
        pod_ready: mark(tl.pod_ready),
        endpoint_ready: mark(tl.ep_ready),
        first_routed: mark(routed),
        listener_open: mark(tl.listen_open),
    };
    let dataplane = nodes
        .reporting
        .iter()
        .map(|&n| {
            let dp = tl.dp.get(&n).copied().unwrap_or_default();
            NodeAdded {
                node: nodes.names[n].clone(),
                added: mark(dp.first_added),
                first_flow: mark(dp.first_flow),
            }
        })
        .collect();
    // Routing began by the first dataplane addition or routed connection, or by the first
    // connection it refused, whichever came first.
    let routed = [fuzzy(routed, clocks), d.first_refused_before_listening]
        .into_iter()
        .flatten()
        .min_by_key(|f| (f.t, f.unc_ns));
    let listen = d.window.listen_open;
    let ready = fuzzy(tl.ep_ready, clocks);
    // The gap: measured with both ends; without the listener's open, at least up to the last
    // connection it refused before listening.
    let (gap_ns, gap_unc, gap_basis) = match (routed, listen, d.last_refused_before_listening) {
        (Some(r), Some(l), _) => (Some(l.t - r.t), r.unc_ns + l.unc_ns, Basis::Measured),
        (Some(r), None, Some(last)) => (
            Some(last.t - r.t),
            r.unc_ns + last.unc_ns,
            Basis::LowerBound,
        ),
        _ => (None, 0, Basis::Unknown),
    };
    let gap_unc_i = i64::try_from(gap_unc).unwrap_or(i64::MAX);
    let refusing_window = match (gap_ns, routed) {
        (Some(g), Some(r)) if g > 0 => Some(Window {
            start: r.t.to_timestamp(),
            end: r.t.plus_ns(g).to_timestamp(),
            duration_ms: ms(g),
        }),
        _ => None,
    };
    let e = d.errors;
    let port = tl
        .port
        .map_or_else(|| "the Service's port".to_owned(), |p| format!("port {p}"));
    let probe = probe_explanation(tl.readiness_probe.as_ref(), tl.port);
    let refused = if e.before_listening > 0 {
        format!(
            ": {} before it listened",
            plural(
                e.before_listening,
                "connection refused",
                "connections refused"
            )
        )
    } else {
        String::new()
    };
    let bound = if gap_basis == Basis::LowerBound {
        "at least "
    } else {
        ""
    };
    let after_ready = if e.after_ready > 0 {
        format!(
            "{} after it turned ready and listened: its listener on {port} went away while it stayed ready, so its readiness probe checks something else than what serves",
            plural(e.after_ready, "connection refused", "connections refused")
        )
    } else {
        String::new()
    };
    let join = |a: String, b: &str| {
        if b.is_empty() { a } else { format!("{a}; {b}") }
    };
    let (verdict, reason) = match gap_ns {
        Some(g) if g - gap_unc_i > 0 || e.before_listening > 0 => (
            Verdict::Unsafe,
            join(
                format!(
                    "nodes routed new connections to it for {bound}{} ms before it listened on {port}{refused}; {probe}",
                    ms(g)
                ),
                &after_ready,
            ),
        ),
        _ if e.before_listening > 0 => (
            Verdict::Unsafe,
            join(
                format!(
                    "it refused {}{refused}; {probe}",
                    plural(e.before_listening, "connection", "connections")
                ),
                &after_ready,
            ),
        ),
        _ if e.after_ready > 0 => (Verdict::Unsafe, after_ready),
        Some(g) if g + gap_unc_i <= 0 => (
            Verdict::Safe,
            format!(
                "it listened on {port} {} ms before the first node routed to it",
                ms(-g)
            ),
        ),
        _ => match (listen, ready) {
            (Some(l), Some(r))
                if l.t.plus_ns(i64::try_from(l.unc_ns + r.unc_ns).unwrap_or(0)) <= r.t =>
            {
                (
                    Verdict::Safe,
                    format!(
                        "it listened on {port} {} ms before its endpoint turned ready, so before any node could route to it",
                        ms(r.t - l.t)
                    ),
                )
            }
            (None, _) => (
                Verdict::Inconclusive,
                format!("its listener on {port} was not seen opening"),
            ),
            _ => (
                Verdict::Inconclusive,
                "no node reported when it began routing to the pod".to_owned(),
            ),
        },
    };
    let mut error_marks = d.error_marks.clone();
    error_marks.sort_by_key(|e| (e.time, e.cause, e.count));
    StartupReport {
        pod: d.ident.name.clone(),
        pod_uid: d.ident.uid.clone(),
        ip: d.ident.ip,
        port: tl.port,
        service: tl.service.clone(),
        container: tl.container.clone(),
        marks,
        dataplane,
        readiness_probe: tl.readiness_probe.clone(),
        startup_gap_ms: gap_ns.map(ms),
        gap_basis,
        gap_uncertainty_ms: ms_u(gap_unc),
        refusing_window,
        errors: e,
        verdict,
        reason,
        error_marks,
        client_errors: d.client_errors.clone(),
    }
}

/// Why the pod's readiness probe let nodes route to it before it listened on `port`.
pub(crate) fn probe_explanation(probe: Option<&ReadinessProbe>, port: Option<u16>) -> String {
    let target = port.map_or_else(
        || "the Service's target port".to_owned(),
        |p| format!("port {p}"),
    );
    let Some(p) = probe else {
        return format!(
            "the input does not say which readiness probe it had: a readiness probe on {target} keeps nodes from routing to it before it listens"
        );
    };
    let probed = p.port.as_ref().map(|v| match v {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    });
    let on_target = probed
        .as_deref()
        .zip(port)
        .is_some_and(|(a, b)| a == b.to_string());
    match p.kind.as_str() {
        "none" => format!(
            "it has no readiness probe, so its endpoint turned ready as soon as its containers started: a readiness probe on {target} keeps nodes from routing to it before it listens"
        ),
        "exec" => format!(
            "its exec readiness probe passed before the app listened: it does not check {target}; probe {target} itself (tcpSocket or httpGet)"
        ),
        "tcp_socket" | "http_get" | "grpc" if !on_target && probed.is_some() => format!(
            "its {} readiness probe checks port {}, not {target} the Service sends to",
            p.kind,
            probed.unwrap_or_default()
        ),
        kind => format!(
            "its {kind} readiness probe on {target} passed before the app listened there (another process held the port?)"
        ),
    }
}

struct Judged<'a> {
    gap_ns: Option<i64>,
    gap_unc: i64,
    gap_basis: Basis,
    listen_measured: bool,
    errors: ErrorCounts,
    worst_node: Option<&'a NodeName>,
    unknown_nodes: usize,
    total_nodes: usize,
    has_end: bool,
    terminating: bool,
    /// The client whose direct connections ended the window, when one did.
    direct_client: Option<&'a str>,
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The verdict and its reason in one sentence.
fn verdict(j: &Judged<'_>) -> (Verdict, String) {
    let e = &j.errors;
    let race_errors = e.unsafe_window + e.after_netns_gone;
    let drain_note = if e.at_exit > 0 {
        format!(
            "; {} at exit need graceful draining, not preStop",
            plural(e.at_exit, "reset", "resets")
        )
    } else {
        String::new()
    };
    let node = match j.direct_client {
        Some(c) => format!(
            "{c}, dialling its address directly after every node had stopped routing the Service to it,"
        ),
        None => j
            .worst_node
            .map_or_else(|| "a node".to_owned(), |n| format!("node {n}")),
    };
    let verb = if j.direct_client.is_some() {
        "kept connecting"
    } else {
        "kept routing new connections to it"
    };
    // Sub-0.05 ms uncertainties (tens of ns from the clock conversion) would print as ±0.
    let pm = |unc: i64| {
        if unc >= 50_000 {
            format!(" (±{:.1} ms)", ms(unc))
        } else {
            String::new()
        }
    };
    let mut in_window = if race_errors == 0 {
        "no client error was observed in that window".to_owned()
    } else {
        plural(e.unsafe_window, "refused connection", "refused connections")
    };
    if e.after_netns_gone > 0 {
        in_window.push_str(&format!(
            " and {} after the pod's network was gone",
            plural(e.after_netns_gone, "timeout", "timeouts")
        ));
    }
    let bound = if j.gap_basis == Basis::LowerBound {
        "at least "
    } else {
        ""
    };
    if !j.terminating {
        return if e.total() > 0 {
            (
                Verdict::Inconclusive,
                format!(
                    "{} to this address but no deletion, listener or dataplane marks, so they cannot be tied to a rollout",
                    plural(e.total(), "error", "errors")
                ),
            )
        } else {
            (
                Verdict::Inconclusive,
                "no termination marks observed".to_owned(),
            )
        };
    }
    match j.gap_ns {
        Some(g) if g.saturating_sub(j.gap_unc) > 0 => (
            Verdict::Unsafe,
            format!(
                "{node} {verb} for {bound}{} ms{} after it stopped listening: {in_window}{drain_note}",
                ms(g),
                pm(j.gap_unc),
            ),
        ),
        _ if race_errors > 0 => (
            Verdict::Unsafe,
            format!(
                "{in_window} while nodes still routed to the terminating pod{}{drain_note}",
                match j.gap_ns {
                    Some(g) => format!(" (gap {} ms{})", ms(g), pm(j.gap_unc)),
                    None => String::new(),
                }
            ),
        ),
        Some(g) if g.saturating_add(j.gap_unc) <= 0 && j.gap_basis == Basis::Measured => (
            Verdict::Safe,
            format!(
                "every node stopped routing {} ms{} before the pod stopped listening{drain_note}",
                ms(-g),
                pm(j.gap_unc)
            ),
        ),
        Some(g) if g.saturating_add(j.gap_unc) <= 0 => (
            Verdict::Inconclusive,
            if j.unknown_nodes > 0 {
                format!(
                    "gap {} ms on the nodes that reported, but {} of {} nodes reported no removal{drain_note}",
                    ms(g),
                    j.unknown_nodes,
                    j.total_nodes
                )
            } else {
                format!(
                    "gap at least {} ms: the listener close was not observed, only bounded by {}{drain_note}",
                    ms(g),
                    if j.listen_measured {
                        "the listener"
                    } else {
                        "the exit"
                    }
                )
            },
        ),
        Some(g) => (
            Verdict::Inconclusive,
            format!(
                "gap {} ms is within the clock uncertainty ±{} ms{drain_note}",
                ms(g),
                ms(j.gap_unc)
            ),
        ),
        None if !j.has_end => (
            Verdict::Inconclusive,
            format!(
                "no node reported removing the pod from its dataplane, so the gap is unknown{drain_note}"
            ),
        ),
        None => (
            Verdict::Inconclusive,
            format!(
                "the listener close was not observed (nor exit, nor a refused connection), so the gap is unknown{drain_note}"
            ),
        ),
    }
}
