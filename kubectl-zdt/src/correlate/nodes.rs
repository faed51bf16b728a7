//! The nodes in the input, numbered in name order so that numbering never depends on input order.

use std::collections::{BTreeSet, HashMap};

use crate::observation::{Kind, NodeName, Observation};

pub(crate) type NodeId = usize;

#[derive(Debug, Default)]
pub(crate) struct Nodes {
    pub names: Vec<NodeName>,
    /// Nodes whose agent reported anything about the dataplane (or started at all): a pod with
    /// nothing from such a node is `unknown` there, not "removed at zero".
    pub reporting: Vec<NodeId>,
}

impl Nodes {
    /// Returns the table and each observation's node id.
    pub fn index(obs: &[Observation]) -> (Self, Vec<NodeId>) {
        let set: BTreeSet<&str> = obs.iter().map(|o| o.node.0.as_str()).collect();
        let names: Vec<NodeName> = set.iter().map(|n| NodeName((*n).to_owned())).collect();
        let ids: HashMap<&str, NodeId> = set.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let node_of: Vec<NodeId> = obs.iter().map(|o| ids[o.node.0.as_str()]).collect();
        let mut reporting = BTreeSet::new();
        for (o, &n) in obs.iter().zip(&node_of) {
            if matches!(
                o.kind,
                Kind::AgentStart | Kind::DataplaneAdded | Kind::DataplaneRemoved | Kind::FlowNew
            ) {
                reporting.insert(n);
            }
        }
        let nodes = Self {
            names,
            reporting: reporting.into_iter().collect(),
        };
        (nodes, node_of)
    }
}
