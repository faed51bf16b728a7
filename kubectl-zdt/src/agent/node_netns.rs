//! Which network namespaces are this node's. The probes see every socket of the kernel; nodes
//! that share one kernel (kind, or several kubelets on one machine, each with its own PID
//! namespace) would each report every client's failure toward a Service, once per node. A
//! namespace is this node's when a process this node's `/proc` shows (hostPID) lives in it:
//! another node's pods run processes this agent cannot see. On a node with a kernel of its own
//! every namespace with a process is the node's, and nothing is left out.

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use super::pods::PodIndex;
use crate::observation::{Kind, Observation};

/// How often, at most, an unknown namespace makes the agent read `/proc` again.
pub const RESCAN: Duration = Duration::from_secs(1);

/// The namespaces of the processes of this node, read from `/proc` when an unknown one shows up.
pub struct NodeNetns {
    proc: PathBuf,
    seen: HashSet<u32>,
    scanned: Option<Instant>,
}

impl NodeNetns {
    /// `proc`: usually `/proc` (with hostPID: every process of the node).
    pub fn new(proc: impl Into<PathBuf>) -> Self {
        Self {
            proc: proc.into(),
            seen: HashSet::new(),
            scanned: None,
        }
    }

    /// Whether a process of this node lives in namespace `inum`, as of `now`: a namespace not
    /// seen before makes the agent read `/proc` again (at most once per [`RESCAN`]).
    pub fn contains(&mut self, inum: u32, now: Instant) -> bool {
        if self.seen.contains(&inum) {
            return true;
        }
        if self.scanned.is_none_or(|t| now.duration_since(t) >= RESCAN) {
            self.scan();
            self.scanned = Some(now);
        }
        self.seen.contains(&inum)
    }

    /// Every thread's namespace: a thread may have entered another namespace (setns) than its
    /// process's leader.
    fn scan(&mut self) {
        let Ok(dir) = std::fs::read_dir(&self.proc) else {
            return;
        };
        for entry in dir.flatten() {
            if !entry
                .file_name()
                .to_str()
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            let Ok(tasks) = std::fs::read_dir(entry.path().join("task")) else {
                continue;
            };
            for task in tasks.flatten() {
                if let Ok(m) = std::fs::metadata(task.path().join("ns/net"))
                    && let Ok(inum) = u32::try_from(m.ino())
                {
                    self.seen.insert(inum);
                }
            }
        }
    }
}

/// A client's failure reported by a kernel socket (the client's side of a connection): its
/// namespace is where the client runs.
pub fn client_side_netns(o: &Observation) -> Option<u32> {
    if !matches!(o.kind, Kind::ConnError | Kind::SynRetransmit) {
        return None;
    }
    o.extra
        .get("netns")
        .and_then(serde_json::Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n != 0)
}

/// A client's failure whose socket is in a namespace no process of this node lives in: another
/// node's, on a kernel several nodes share, which that node's agent reports. Judged only once
/// pods' namespaces were found through `/proc` (proof that it shows this node's processes).
pub fn of_another_node(o: &Observation, index: &PodIndex, node: &mut NodeNetns) -> bool {
    client_side_netns(o).is_some_and(|inum| {
        index.found_any_netns() && !index.knows_netns(inum) && !node.contains(inum, Instant::now())
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use jiff::Timestamp;

    use super::*;
    use crate::observation::NodeName;

    #[test]
    fn a_namespace_no_process_of_this_proc_lives_in_is_another_nodes_until_one_appears() {
        let root = std::env::temp_dir().join(format!("zdt-node-netns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let thread = |pid: &str, tid: &str, ns: &Path| {
            let d = root.join(pid).join("task").join(tid).join("ns");
            std::fs::create_dir_all(&d).unwrap();
            std::os::unix::fs::symlink(ns, d.join("net")).unwrap();
        };
        // Distinct files stand in for namespaces (their inodes differ).
        let ns = |name: &str| {
            let p = root.join(name);
            std::fs::write(&p, "").unwrap();
            (
                p.clone(),
                u32::try_from(std::fs::metadata(&p).unwrap().ino()).unwrap(),
            )
        };
        let (host, host_ino) = ns("host");
        let (pod, pod_ino) = ns("pod");
        let (entered, entered_ino) = ns("entered");
        let (_, other_node_ino) = ns("other-node");
        let (late, late_ino) = ns("late");
        thread("1", "1", &host);
        thread("40", "40", &pod);
        // A thread that entered a namespace its process's leader is not in.
        thread("50", "50", &host);
        thread("50", "51", &entered);
        let mut nodes = NodeNetns::new(&root);
        let t0 = Instant::now();
        assert!(nodes.contains(host_ino, t0));
        assert!(nodes.contains(pod_ino, t0));
        assert!(nodes.contains(entered_ino, t0));
        assert!(!nodes.contains(other_node_ino, t0));
        // A new pod's process appears: found at the next scan, not before RESCAN.
        thread("60", "60", &late);
        assert!(!nodes.contains(late_ino, t0 + RESCAN / 2));
        assert!(nodes.contains(late_ino, t0 + RESCAN));
        assert!(!nodes.contains(other_node_ino, t0 + RESCAN * 3));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_clients_failure_is_left_out_only_once_proc_is_known_to_show_this_nodes_pods() {
        let empty = std::env::temp_dir().join(format!("zdt-node-netns-e-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let mut nodes = NodeNetns::new(&empty);
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        let failure = |inum: u32| {
            Observation::new(Kind::ConnError, at, NodeName("vm".into())).with_extra("netns", inum)
        };
        let mut index = PodIndex::new(Duration::from_secs(600));
        // No pod's namespace found yet (no hostPID, or too early): nothing is judged.
        assert!(!of_another_node(&failure(7), &index, &mut nodes));
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "uid-web"},
            "status": {"podIPs": [{"ip": "198.18.0.10"}]},
        }))
        .unwrap();
        index.apply(&pod, at);
        assert!(index.set_netns("uid-web", 9, at));
        assert!(
            !of_another_node(&failure(9), &index, &mut nodes),
            "a pod's own"
        );
        assert!(
            of_another_node(&failure(7), &index, &mut nodes),
            "no process of this node"
        );
        let _ = std::fs::remove_dir_all(&empty);
    }

    #[test]
    fn only_a_clients_failures_are_judged_by_their_namespace() {
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        let node = NodeName("vm".into());
        let with = |kind| Observation::new(kind, at, node.clone()).with_extra("netns", 7u32);
        assert_eq!(client_side_netns(&with(Kind::ConnError)), Some(7));
        assert_eq!(client_side_netns(&with(Kind::SynRetransmit)), Some(7));
        assert_eq!(client_side_netns(&with(Kind::Refused)), None);
        assert_eq!(client_side_netns(&with(Kind::ListenerClosed)), None);
        assert_eq!(
            client_side_netns(&Observation::new(Kind::ConnError, at, node)),
            None
        );
    }
}
