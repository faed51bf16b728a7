//! The nodes in the input, numbered in name order so that numbering never depends on input order.

use std::collections::BTreeSet;

use foldhash::{HashMap, HashMapExt as _};

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
