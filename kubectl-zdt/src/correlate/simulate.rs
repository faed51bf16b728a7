//! Simulated rollouts: the observations the API watch and every node's agent would report for
//! pods whose timeline is given. Used by the benchmark (1 000 nodes × 100 pods), the property
//! tests (any timeline, any order) and to explain the engine with made-up but consistent data.
//!
//! Per pod: `pod_deleting`, `endpoint_terminating` and `endpoint_removed` from the API watch
//! (node `api`); `exec` (preStop), `signal` SIGTERM, `listener_closed`, `exit`, `netns_gone`
//! from the pod's node; from every node that reports, `flow_new` (its last new connection to
//! the pod, just before the removal), `dataplane_removed`, and — when it removed the pod after
//! the listener closed — the refused SYNs its clients caused, one aggregated `refused` line with
//! `count` on the pod's node.
//!
//! Test-only: built with the `test-support` feature (tests and benchmarks), never in the
//! product binary. The gate is here rather than on `mod simulate` so that it stays with the file.
#![cfg(feature = "test-support")]

use std::net::{IpAddr, Ipv4Addr};

use super::time::WallNs;
use crate::observation::{Kind, NodeName, Observation, ServiceRef};

const MS: i64 = 1_000_000;

/// One pod's termination, in milliseconds from the scenario's start.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPlan {
    pub name: String,
    pub uid: String,
    pub ip: IpAddr,
    /// Index of the node the pod runs on.
    pub node: usize,
    pub delete_ms: i64,
    /// preStop length; `None` = no preStop hook.
    pub prestop_ms: Option<i64>,
    /// SIGTERM → last listener closed.
    pub close_after_sigterm_ms: i64,
    /// SIGTERM → exit.
    pub exit_after_sigterm_ms: i64,
    /// exit → network namespace gone.
    pub netns_after_exit_ms: i64,
    /// Per node: deletion → dataplane removal; `None` = the node never reported.
    pub removal_after_delete_ms: Vec<Option<i64>>,
    /// Each node's clients open a new connection to the pod this often.
    pub connect_every_ms: i64,
}

/// The kubelet starts the preStop hook (or sends SIGTERM) this long after the deletion.
pub const KUBELET_REACTION_MS: i64 = 20;

impl PodPlan {
    pub fn sigterm_ms(&self) -> i64 {
        self.delete_ms + KUBELET_REACTION_MS + self.prestop_ms.unwrap_or(0)
    }

    pub fn listen_closed_ms(&self) -> i64 {
        self.sigterm_ms() + self.close_after_sigterm_ms
    }

    /// The same pod with a preStop of `ms` instead of the one it had.
    pub fn with_prestop(&self, ms: i64) -> Self {
        Self {
            prestop_ms: Some(ms),
            ..self.clone()
        }
    }

    /// The gap this plan has by construction (over the nodes that report).
    pub fn gap_ms(&self) -> Option<i64> {
        let last = self.removal_after_delete_ms.iter().flatten().max()?;
        Some(self.delete_ms + last - self.listen_closed_ms())
    }
}

/// Node names `node-0000`…
pub fn node_names(n: usize) -> Vec<NodeName> {
    (0..n).map(|i| NodeName(format!("node-{i:04}"))).collect()
}

/// The observations of `pods` on `nodes`, starting at `t0` (in a fixed order; the engine does
/// not care about it).
pub fn observations(
    t0: WallNs,
    nodes: &[NodeName],
    pods: &[PodPlan],
    service: &str,
    port: u16,
) -> Vec<Observation> {
    let at = |ms: i64, kind, node: &NodeName| {
        Observation::new(kind, t0.plus_ns(ms * MS).to_timestamp(), node.clone())
    };
    let api = NodeName("api".into());
    let mut out: Vec<Observation> = nodes
        .iter()
        .map(|n| at(-60_000, Kind::AgentStart, n))
        .collect();
    for p in pods {
        let own = |mut o: Observation| {
            o.pod = Some(p.name.as_str().into());
            o.pod_uid = Some(p.uid.as_str().into());
            o.ip = Some(p.ip);
            o
        };
        let home = &nodes[p.node];
        let mut deleting = own(at(p.delete_ms, Kind::PodDeleting, &api));
        deleting.details.api_mut().grace_period_s = Some(30);
        out.push(deleting);
        for (ms, kind) in [
            (p.delete_ms + 5, Kind::EndpointTerminating),
            (p.delete_ms + 100, Kind::EndpointRemoved),
        ] {
            let mut o = own(at(ms, kind, &api));
            o.port = Some(port);
            o.service = Some(ServiceRef::parse(service));
            out.push(o);
        }
        if p.prestop_ms.is_some() {
            let mut o = own(at(p.delete_ms + KUBELET_REACTION_MS, Kind::Exec, home));
            o.reason = Some("preStop".into());
            out.push(o);
        }
        let sigterm = p.sigterm_ms();
        let mut s = own(at(sigterm, Kind::Signal, home));
        s.reason = Some("SIGTERM".into());
        out.push(s);
        let closed = p.listen_closed_ms();
        let mut l = own(at(closed, Kind::ListenerClosed, home));
        l.port = Some(port);
        out.push(l);
        let exit = sigterm + p.exit_after_sigterm_ms;
        out.push(own(at(exit, Kind::Exit, home)));
        out.push(own(at(exit + p.netns_after_exit_ms, Kind::NetnsGone, home)));
        for (n, removal) in p.removal_after_delete_ms.iter().enumerate() {
            let Some(after) = removal else { continue };
            let removed = p.delete_ms + after;
            // Kernel-side lines carry the pod's address only, like the agent's.
            let anon = |mut o: Observation| {
                o.ip = Some(p.ip);
                o.port = Some(port);
                o
            };
            let mut d = anon(at(removed, Kind::DataplaneRemoved, &nodes[n]));
            d.service = Some(ServiceRef::parse(service));
            out.push(d);
            out.push(anon(at(removed - 1, Kind::FlowNew, &nodes[n])));
            let refusing = removed.min(exit + p.netns_after_exit_ms) - closed;
            if refusing > 0 {
                let mut r = anon(at(closed + refusing / 2, Kind::Refused, home));
                r.reason = Some("NO_SOCKET".into());
                r.count = Some(
                    u64::try_from(refusing / p.connect_every_ms.max(1))
                        .unwrap_or(0)
                        .max(1),
                );
                out.push(r);
            }
        }
    }
    out
}

/// A small deterministic generator (xorshift64*), so the benchmark input is the same each run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// A `kubectl rollout restart` of `pods` pods on `nodes` nodes with no preStop, a fast-exiting
/// app, and kube-proxy taking 50 ms–1.5 s per node (a minSyncPeriod of 1 s plus load).
pub fn rollout(nodes: usize, pods: usize, seed: u64) -> Vec<PodPlan> {
    let mut rng = Rng::new(seed);
    (0..pods)
        .map(|i| PodPlan {
            name: format!("default/web-5d8f7c9b6d-{:05}", i),
            uid: format!("00000000-0000-4000-8000-{i:012}"),
            ip: IpAddr::V4(Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250) as u8 + 2)),
            node: i % nodes.max(1),
            delete_ms: i as i64 * 400,
            prestop_ms: None,
            close_after_sigterm_ms: 2,
            exit_after_sigterm_ms: 5,
            netns_after_exit_ms: 300,
            removal_after_delete_ms: (0..nodes)
                .map(|_| Some(50 + rng.below(1_450) as i64))
                .collect(),
            connect_every_ms: 5,
        })
        .collect()
}
