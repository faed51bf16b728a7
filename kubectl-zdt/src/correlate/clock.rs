//! How far each node's clock can be trusted against the others.
//!
//! Each observation carries its own conversion uncertainty (`uncertainty_ns`). On top of that a
//! node's clock can be skewed against the rest (NTP off, offset re-measured). Two kinds of
//! evidence widen a node's uncertainty here:
//! - `clock_sync` lines: the agent's monotonic → wall offset moved by `offset_change_ns`;
//! - causality: kube-proxy on node n cannot remove a pod before the EndpointSlice marked it
//!   terminating, and the kubelet cannot signal or run preStop before the deletion. A mark
//!   stamped earlier than its cause (seen on another node) means node n's clock is behind by
//!   at least the difference.
//!
//! The times themselves are never shifted: reordering on a guess would hide exactly the race
//! being measured. The report shows them as stamped, with the wider uncertainty and a warning.

use super::{
    marks::{RawMark, Timeline},
    nodes::{NodeId, Nodes},
    time::ms,
};
use crate::observation::{Kind, Observation};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NodeClocks {
    /// Extra uncertainty (ns) every mark of the node carries.
    pub extra_ns: Vec<u64>,
    pub warnings: Vec<String>,
}

impl NodeClocks {
    pub fn unc(&self, m: &RawMark) -> u64 {
        m.unc_ns.saturating_add(self.extra_ns[m.node])
    }
}

/// `effect` cannot precede `cause`; if it does across two nodes, the effect's node is behind.
fn check(cause: Option<RawMark>, effect: Option<RawMark>, behind: &mut [u64]) {
    if let (Some(c), Some(e)) = (cause, effect)
        && c.node != e.node
        && e.t < c.t
    {
        let by = u64::try_from(c.t - e.t).unwrap_or(0);
        behind[e.node] = behind[e.node].max(by);
    }
}

/// Folds one line's word on its node's offset (`clock_sync`) into `offset_moves`.
pub(crate) fn offset_move(o: &Observation, node: NodeId, offset_moves: &mut [u64]) {
    if o.kind == Kind::ClockSync
        && let Some(change) = o.details.agent().offset_change_ns
    {
        offset_moves[node] = offset_moves[node].max(change.unsigned_abs());
    }
}

/// Folds what one pod's marks say of the nodes' clocks (effects before causes) into `behind`.
pub(crate) fn add_behind(tl: &Timeline, behind: &mut [u64]) {
    let api_cause = tl.ep_terminating.or(tl.delete);
    for dp in tl.dp.values() {
        check(api_cause, dp.removed, behind);
    }
    check(tl.delete, tl.prestop, behind);
    check(tl.delete, tl.sigterm, behind);
}

/// The clocks from the largest offset move and the largest lag each node's lines show.
pub(crate) fn of(offset_moves: &[u64], behind: &[u64], nodes: &Nodes) -> NodeClocks {
    let mut warnings = Vec::new();
    for (n, &b) in behind.iter().enumerate() {
        if b > 0 {
            warnings.push(format!(
                "node {}: its clock runs at least {} ms behind (it stamped effects before their causes seen on other nodes); \
                 its marks carry ±{} ms more and keep their stamped order; check NTP on that node",
                nodes.names[n],
                ms(i64::try_from(b).unwrap_or(i64::MAX)),
                ms(i64::try_from(b).unwrap_or(i64::MAX)),
            ));
        }
    }
    let extra_ns = offset_moves
        .iter()
        .zip(behind)
        .map(|(a, b)| a.saturating_add(*b))
        .collect();
    NodeClocks { extra_ns, warnings }
}
