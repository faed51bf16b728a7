//! The nodes in the input, numbered in name order so that numbering never depends on input order.

use std::collections::BTreeSet;

use foldhash::{HashMap, HashMapExt as _, HashSet};

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
        // Numbered first in order of appearance (one hash lookup a line, none when a line is
        // from the node of the line before), then renumbered in name order: sorting the few
        // distinct names, not every line's.
        let mut seen: HashMap<&str, NodeId> = HashMap::new();
        let mut last: Option<(&str, NodeId)> = None;
        let mut node_of: Vec<NodeId> = obs
            .iter()
            .map(|o| {
                let name = o.node.0.as_str();
                match last {
                    Some((l, id)) if l == name => id,
                    _ => {
                        let next = seen.len();
                        let id = *seen.entry(name).or_insert(next);
                        last = Some((name, id));
                        id
                    }
                }
            })
            .collect();
        let mut sorted: Vec<(&str, NodeId)> = seen.into_iter().collect();
        sorted.sort_unstable();
        let mut rank = vec![0; sorted.len()];
        for (i, (_, first)) in sorted.iter().enumerate() {
            rank[*first] = i;
        }
        for n in &mut node_of {
            *n = rank[*n];
        }
        let names: Vec<NodeName> = sorted
            .iter()
            .map(|(n, _)| NodeName((*n).to_owned()))
            .collect();
        let mut reporting = BTreeSet::new();
        for (o, &n) in obs.iter().zip(&node_of) {
            if is_reporting(o.kind) {
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

/// The node table folded line by line, for a stream read in pieces: the same table
/// [`Nodes::index`] makes of the whole.
#[derive(Debug, Default)]
pub(crate) struct NodesFold {
    names: HashSet<String>,
    reporting: HashSet<String>,
}

impl NodesFold {
    pub fn add(&mut self, o: &Observation) {
        if !self.names.contains(o.node.0.as_str()) {
            self.names.insert(o.node.0.clone());
        }
        if is_reporting(o.kind) && !self.reporting.contains(o.node.0.as_str()) {
            self.reporting.insert(o.node.0.clone());
        }
    }

    /// The table, and each node's id by name.
    pub fn finish(self) -> (Nodes, HashMap<String, NodeId>) {
        let mut sorted: Vec<String> = self.names.into_iter().collect();
        sorted.sort_unstable();
        let ids: HashMap<String, NodeId> = sorted
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let reporting: BTreeSet<NodeId> = self.reporting.iter().map(|n| ids[n.as_str()]).collect();
        let nodes = Nodes {
            names: sorted.into_iter().map(NodeName).collect(),
            reporting: reporting.into_iter().collect(),
        };
        (nodes, ids)
    }
}

/// Each line's node id, one hash lookup a line (none when a line is from the node of the line
/// before).
pub(crate) fn ids_of(obs: &[Observation], ids: &HashMap<String, NodeId>) -> Vec<NodeId> {
    let mut last: Option<(&str, NodeId)> = None;
    obs.iter()
        .map(|o| {
            let name = o.node.0.as_str();
            match last {
                Some((l, id)) if l == name => id,
                _ => {
                    let id = ids[name];
                    last = Some((name, id));
                    id
                }
            }
        })
        .collect()
}

/// Lines that show a node's agent reported on the dataplane (or started at all).
fn is_reporting(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::AgentStart | Kind::DataplaneAdded | Kind::DataplaneRemoved | Kind::FlowNew
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_numbered_in_name_order_whatever_the_order_of_the_lines() {
        let line = |n: &str| {
            Observation::new(
                Kind::Refused,
                jiff::Timestamp::UNIX_EPOCH,
                NodeName(n.into()),
            )
        };
        let obs: Vec<Observation> = ["c", "c", "a", "c", "b", "a", "a"]
            .into_iter()
            .map(line)
            .collect();
        let (nodes, node_of) = Nodes::index(&obs);
        let names: Vec<&str> = nodes.names.iter().map(|n| n.0.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(node_of, [2, 2, 0, 2, 1, 0, 0]);
    }
}
