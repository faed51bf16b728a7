//! One pod's observations folded into its timeline marks (DOMAIN.md, "The per-pod timeline").
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
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Timeline {
    pub delete: Option<RawMark>,
    pub ep_terminating: Option<RawMark>,
    pub ep_removed: Option<RawMark>,
    pub prestop: Option<RawMark>,
    pub sigterm: Option<RawMark>,
    pub listen_closed: Option<RawMark>,
    /// The last process exit the node agent saw; failing that, the API's report that every
    /// container terminated (source `container_terminated`, with its wide uncertainty).
    pub exit: Option<RawMark>,
    pub netns_gone: Option<RawMark>,
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

/// A preStop hook shows up as an exec flagged by the agent (`reason` `preStop`, or
/// `"prestop": true`); every other exec in the pod is ordinary work.
fn is_prestop(o: &Observation) -> bool {
    o.reason
        .as_deref()
        .is_some_and(|r| r.eq_ignore_ascii_case("prestop"))
        || o.extra.get("prestop").and_then(|v| v.as_bool()) == Some(true)
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
            if o.extra.get("frontend").and_then(|v| v.as_str()) != Some("nodeport") {
                min_string(&mut tl.service, o.service.as_deref());
            }
        }
        min_string(
            &mut tl.workload,
            o.extra.get("workload").and_then(|v| v.as_str()),
        );
        min_string(
            &mut tl.container,
            o.extra.get("container").and_then(|v| v.as_str()),
        );
        if let Some(g) = o.extra.get("grace_period_s").and_then(|v| v.as_u64()) {
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
            Kind::Exec if is_prestop(o) => keep_first(&mut tl.prestop, m),
            Kind::Signal if o.reason.as_deref() == Some("SIGTERM") => {
                keep_first(&mut tl.sigterm, m)
            }
            // The last listener on the Service port to close is when new connections start
            // being refused; listeners on other ports do not matter to the Service.
            Kind::ListenerClosed if o.port.is_none() || tl.port.is_none() || o.port == tl.port => {
                keep_last(&mut tl.listen_closed, m)
            }
            Kind::Exit => keep_last(&mut tl.exit, m),
            Kind::ContainerTerminated => keep_last(&mut api_exit, m),
            Kind::NetnsGone => keep_first(&mut tl.netns_gone, m),
            Kind::DataplaneRemoved => keep_last(&mut tl.dp.entry(m.node).or_default().removed, m),
            Kind::DataplaneAdded => keep_last(&mut tl.dp.entry(m.node).or_default().added, m),
            Kind::FlowNew => keep_last(&mut tl.dp.entry(m.node).or_default().last_flow, m),
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
