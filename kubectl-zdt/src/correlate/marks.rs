//! One pod's observations folded into its timeline marks (docs/report-schema.md, Marks).
//!
//! Every fold is a min or a max, so the marks never depend on the order observations arrived in.

use std::collections::BTreeMap;

use super::{nodes::NodeId, time::WallNs};
use crate::observation::{Kind, Observation};

/// An instant as observed: time, the observation's own uncertainty, its kind and node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawMark {
    pub t: WallNs,
    pub unc_ns: u64,
    pub kind: Kind,
    pub node: NodeId,
}

impl RawMark {
    fn key(&self) -> (WallNs, NodeId, u64) {
        (self.t, self.node, self.unc_ns)
    }
}

fn keep_first(slot: &mut Option<RawMark>, m: RawMark) {
    if slot.is_none_or(|cur| m.key() < cur.key()) {
        *slot = Some(m);
    }
}

fn keep_last(slot: &mut Option<RawMark>, m: RawMark) {
    if slot.is_none_or(|cur| m.key() > cur.key()) {
        *slot = Some(m);
    }
}

/// One node's dataplane history for one pod.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NodeDp {
    pub removed: Option<RawMark>,
    pub added: Option<RawMark>,
    pub last_flow: Option<RawMark>,
    /// Its first `dataplane_added` and first routed connection: when it began routing to a
    /// new pod.
    pub first_added: Option<RawMark>,
    pub first_flow: Option<RawMark>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Timeline {
    pub delete: Option<RawMark>,
    pub ep_terminating: Option<RawMark>,
    pub ep_removed: Option<RawMark>,
    pub prestop: Option<RawMark>,
    pub sigterm: Option<RawMark>,
    pub listen_closed: Option<RawMark>,
    /// The exit of the pod's main process: the last exit of a process that a signal from
    /// outside the pod (the container runtime, on the kubelet's behalf) was sent to. Failing
    /// that, for a deleted pod, the last exit after the deletion; failing that, the API's
    /// report that every container terminated (`container_terminated`, wide uncertainty).
    /// Never any exit of an undeleted, unsignalled pod: servers such as busybox `httpd` fork a
    /// child per connection, whose exits say nothing about the pod.
    pub exit: Option<RawMark>,
    pub netns_gone: Option<RawMark>,
    /// A new pod's start: the API's Ready condition, its endpoint turning ready, its first
    /// listener on the Service port opening.
    pub pod_ready: Option<RawMark>,
    pub ep_ready: Option<RawMark>,
    pub listen_open: Option<RawMark>,
    /// The serving container's readiness probe, when a `pod_ready` line carried it.
    pub readiness_probe: Option<super::model::ReadinessProbe>,
    pub dp: BTreeMap<NodeId, NodeDp>,
    /// Indices of the error observations (refused, reset, conn_error, syn_retransmit).
    pub errors: Vec<usize>,
    /// The Service's target port on the pod, when an endpoint or dataplane line said it.
    pub port: Option<u16>,
    pub service: Option<String>,
    /// `kind/namespace/name` of the owning workload, when an observation carried `workload`.
    pub workload: Option<String>,
    /// The container serving the port (`container`), for the patch.
    pub container: Option<String>,
    /// `terminationGracePeriodSeconds` the pod was deleted with (`grace_period_s`).
    pub grace_period_s: Option<u64>,
}

impl Timeline {
    /// The API saw the pod turn ready during the capture: a new pod.
    pub fn is_new(&self) -> bool {
        self.pod_ready.is_some() || self.ep_ready.is_some()
    }

    /// Anything that shows the pod was on its way out.
    pub fn is_terminating(&self) -> bool {
        [
            self.delete,
            self.ep_terminating,
            self.ep_removed,
            self.prestop,
            self.sigterm,
            self.listen_closed,
            self.exit,
            self.netns_gone,
        ]
        .iter()
        .any(Option::is_some)
            || self.dp.values().any(|d| d.removed.is_some())
    }
}

/// A preStop hook shows up as an exec flagged `reason` `preStop` (a simulated or hand-written
/// line), or as an exec in the pod between its deletion and the runtime's SIGTERM
/// ([`Lifecycle::prestop_exec`]).
fn is_flagged_prestop(o: &Observation) -> bool {
    o.reason
        .as_deref()
        .is_some_and(|r| r.eq_ignore_ascii_case("prestop"))
}

/// How far before the first `pod_deleting` line the kubelet's reaction may be seen: the
/// kubelet and the agent watch the same deletion, each with its own delivery delay.
const DELETE_SEEN_SLACK_NS: i64 = 1_000_000_000;

/// Processes the container runtime starts in every pod that are not the application: the
/// sandbox's `pause` and runc's own set-up stages (`runc:[1:CHILD]`, …).
fn is_runtime_process(comm: Option<&str>) -> bool {
    comm.is_some_and(|c| c == "pause" || c.starts_with("runc"))
}

/// What the pod's process-level lines say about who ended it: the processes signalled from
/// outside the pod and the first such SIGTERM.
#[derive(Debug, Default)]
struct Lifecycle {
    delete: Option<WallNs>,
    /// The first SIGTERM sent from outside the pod (the runtime, for the kubelet).
    first_sigterm: Option<WallNs>,
    /// Processes a signal from outside the pod went to: the containers' main processes.
    signalled: std::collections::BTreeSet<u64>,
    /// Every process the pod's own lines name.
    own: std::collections::BTreeSet<u64>,
}

impl Lifecycle {
    fn read(obs: &[Observation], times: &[WallNs], members: &[usize]) -> Self {
        // Every process the pod's own lines name: a signal one of them sent (a shell passing
        // SIGTERM on to its server) is the application's own business.
        let own: std::collections::BTreeSet<u64> = members
            .iter()
            .filter(|&&i| matches!(obs[i].kind, Kind::Signal | Kind::Exec | Kind::Exit))
            .filter_map(|&i| obs[i].details.process().pid)
            .collect();
        let mut lc = Self {
            own,
            ..Self::default()
        };
        for &i in members {
            let o = &obs[i];
            match o.kind {
                Kind::PodDeleting => {
                    lc.delete = Some(lc.delete.map_or(times[i], |d| d.min(times[i])));
                }
                Kind::Signal
                    if matches!(o.reason.as_deref(), Some("SIGTERM" | "SIGKILL"))
                        && lc.sent_from_outside(o) =>
                {
                    if let Some(pid) = o.details.process().pid {
                        lc.signalled.insert(pid);
                    }
                    if o.reason.as_deref() == Some("SIGTERM") {
                        lc.first_sigterm =
                            Some(lc.first_sigterm.map_or(times[i], |t| t.min(times[i])));
                    }
                }
                _ => {}
            }
        }
        lc
    }

    /// A signal sent by a process outside the pod (the runtime); a line without its sender's
    /// pid counts as one.
    fn sent_from_outside(&self, o: &Observation) -> bool {
        o.details
            .process()
            .sender_pid
            .is_none_or(|s| !self.own.contains(&s))
    }

    /// An exec in a deleted pod between its deletion and the runtime's SIGTERM is the preStop
    /// hook: the kubelet starts nothing else in the containers then but exec probes (which
    /// keep running during preStop; an exec readiness probe running before the hook would be
    /// taken for it, hence the earliest such exec, not any). A container's own start is never
    /// the hook, although a pod deleted within the slack of its start has it in that span: its
    /// process is the one the runtime later signals.
    fn prestop_exec(&self, o: &Observation, t: WallNs) -> bool {
        let Some(delete) = self.delete else {
            return false;
        };
        o.kind == Kind::Exec
            && !is_runtime_process(o.details.process().comm.as_deref())
            && o.details
                .process()
                .pid
                .is_none_or(|p| !self.signalled.contains(&p))
            && t >= delete.plus_ns(-DELETE_SEEN_SLACK_NS)
            && self.first_sigterm.is_none_or(|s| t < s)
    }

    /// Whether an exit line is the pod's main process ending (see [`Timeline::exit`]).
    fn main_exit(&self, o: &Observation, t: WallNs) -> bool {
        if is_runtime_process(o.details.process().comm.as_deref()) {
            return false;
        }
        if !self.signalled.is_empty() {
            return o
                .details
                .process()
                .pid
                .is_some_and(|p| self.signalled.contains(&p));
        }
        self.delete
            .is_some_and(|d| t >= d.plus_ns(-DELETE_SEEN_SLACK_NS))
    }
}

fn min_string(slot: &mut Option<String>, v: Option<&str>) {
    if let Some(v) = v
        && slot.as_deref().is_none_or(|cur| v < cur)
    {
        *slot = Some(v.to_owned());
    }
}

pub(crate) fn build(
    obs: &[Observation],
    times: &[WallNs],
    node_of: &[NodeId],
    members: &[usize],
) -> Timeline {
    let mut tl = Timeline::default();
    let mut api_exit = None;
    let lifecycle = Lifecycle::read(obs, times, members);
    // First the metadata, since the listener close must be matched against the Service port.
    for &i in members {
        let o = &obs[i];
        if matches!(
            o.kind,
            Kind::EndpointTerminating
                | Kind::EndpointRemoved
                | Kind::EndpointReady
                | Kind::DataplaneRemoved
                | Kind::DataplaneAdded
        ) {
            if let Some(p) = o.port {
                tl.port = Some(tl.port.map_or(p, |cur| cur.min(p)));
            }
            // A node-port route names the node's address, not the Service clients dial.
            if o.details.dataplane().frontend.as_deref() != Some("nodeport") {
                min_string(
                    &mut tl.service,
                    o.service.as_ref().map(ToString::to_string).as_deref(),
                );
            }
        }
        let api = o.details.api();
        min_string(&mut tl.workload, api.workload.as_deref());
        min_string(&mut tl.container, api.container.as_deref());
        if o.kind == Kind::PodReady
            && let Some(p) = &api.readiness_probe
        {
            tl.readiness_probe = Some(p.clone());
        }
        if let Some(g) = api.grace_period_s {
            tl.grace_period_s = Some(tl.grace_period_s.map_or(g, |cur| cur.max(g)));
        }
    }
    for &i in members {
        let o = &obs[i];
        let m = RawMark {
            t: times[i],
            unc_ns: o.uncertainty_ns.unwrap_or(0),
            kind: o.kind,
            node: node_of[i],
        };
        match o.kind {
            Kind::PodDeleting => keep_first(&mut tl.delete, m),
            Kind::EndpointTerminating => keep_first(&mut tl.ep_terminating, m),
            Kind::EndpointRemoved => keep_first(&mut tl.ep_removed, m),
            Kind::Exec if is_flagged_prestop(o) || lifecycle.prestop_exec(o, times[i]) => {
                keep_first(&mut tl.prestop, m)
            }
            Kind::Signal
                if o.reason.as_deref() == Some("SIGTERM") && lifecycle.sent_from_outside(o) =>
            {
                keep_first(&mut tl.sigterm, m)
            }
            // The last listener on the Service port to close is when new connections start
            // being refused; listeners on other ports do not matter to the Service.
            Kind::ListenerClosed if o.port.is_none() || tl.port.is_none() || o.port == tl.port => {
                keep_last(&mut tl.listen_closed, m)
            }
            Kind::Exit if lifecycle.main_exit(o, times[i]) => keep_last(&mut tl.exit, m),
            Kind::ContainerTerminated => keep_last(&mut api_exit, m),
            Kind::NetnsGone => keep_first(&mut tl.netns_gone, m),
            Kind::DataplaneRemoved => keep_last(&mut tl.dp.entry(m.node).or_default().removed, m),
            Kind::DataplaneAdded => {
                let d = tl.dp.entry(m.node).or_default();
                keep_last(&mut d.added, m);
                keep_first(&mut d.first_added, m);
            }
            Kind::FlowNew => {
                let d = tl.dp.entry(m.node).or_default();
                keep_last(&mut d.last_flow, m);
                // The line's first connection, when it says (`first_time`).
                let first = o
                    .details
                    .dataplane()
                    .first_time
                    .map(|f| WallNs::from_timestamp(f.0))
                    .filter(|f| *f <= m.t);
                keep_first(
                    &mut d.first_flow,
                    RawMark {
                        t: first.unwrap_or(m.t),
                        ..m
                    },
                );
            }
            Kind::PodReady => keep_first(&mut tl.pod_ready, m),
            Kind::EndpointReady => keep_first(&mut tl.ep_ready, m),
            // The first listener on the Service port to open is when connections stop being
            // refused.
            Kind::ListenerOpen if o.port.is_none() || tl.port.is_none() || o.port == tl.port => {
                keep_first(&mut tl.listen_open, m)
            }
            Kind::Refused | Kind::Reset | Kind::ConnError | Kind::SynRetransmit => {
                tl.errors.push(i)
            }
            _ => {}
        }
    }
    if tl.exit.is_none() {
        tl.exit = api_exit;
    }
    tl
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::NodeName;

    fn line(kind: Kind, ms: i64, pid: Option<u64>) -> Observation {
        let t = jiff::Timestamp::from_millisecond(1_800_000_000_000 + ms).unwrap();
        let o = Observation::new(kind, t, NodeName("vm".into()));
        match pid {
            Some(p) => o.with_extra("pid", p),
            None => o,
        }
    }

    #[test]
    fn a_pod_deleted_half_a_second_after_its_start_has_its_hook_not_its_start_as_prestop() {
        let mut sigterm = line(Kind::Signal, 700, Some(10)).with_extra("sender_pid", 1);
        sigterm.reason = Some("SIGTERM".into());
        let obs = vec![
            line(Kind::Exec, -500, Some(10)),
            line(Kind::PodDeleting, 0, None),
            line(Kind::Exec, 100, Some(11)),
            sigterm,
            line(Kind::Exit, 710, Some(10)),
        ];
        let times: Vec<WallNs> = obs.iter().map(|o| WallNs::from_timestamp(o.time)).collect();
        let members: Vec<usize> = (0..obs.len()).collect();
        let tl = build(&obs, &times, &vec![0; obs.len()], &members);
        assert_eq!(tl.prestop.map(|m| m.t), Some(times[2]));
    }
}
