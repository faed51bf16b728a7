//! Which pod each observation is about.
//!
//! Pods are keyed by UID, never by IP: the CNI hands a freed pod IP to the next pod, often
//! within seconds during a rollout, and the kernel side only ever sees addresses. An observation
//! that carries only an IP belongs to the pod that claimed that IP most recently before it (a
//! claim is any observation naming the pod together with the IP), or that claims it within a
//! minute after it (another node's clock, a watch behind the kernel); earlier than that it is
//! an unnamed pod's (an older holder of the address whose own lines are not in the input). One
//! that carries only a pod name belongs to the pod of that name (StatefulSets reuse names: the
//! most recent one again).

use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt as _};

use super::time::WallNs;
use crate::observation::{Kind, Observation, PodRef, PodUid};

/// Index of a pod in [`Assignment::pods`].
pub(crate) type PodId = usize;

#[derive(Clone, Debug, Default)]
pub(crate) struct PodIdent {
    pub uid: Option<PodUid>,
    pub name: Option<PodRef>,
    /// The address the pod claimed first (or, for a pod known only by address, that address).
    pub ip: Option<IpAddr>,
}

#[derive(Debug, Default)]
pub(crate) struct Assignment {
    pub pods: Vec<PodIdent>,
    /// Observation indices per pod.
    pub members: Vec<Vec<usize>>,
    /// Errors that name only a Service (a client saw them on a ClusterIP).
    pub service_level: Vec<usize>,
    /// Per pod, how it was found and the line that found it: `(0, i)` by a UID first on line
    /// `i`, `(1, i)` by a name without one, `(2, i)` by an address nobody claimed. Pods are
    /// numbered in that order, so it orders pods of several pieces of one stream as the whole.
    pub origin: Vec<(u8, usize)>,
    /// Per address, each pod's first claim of it.
    pub claims: HashMap<IpAddr, Vec<(WallNs, PodId)>>,
}

/// How long before a pod's first claim of an address a line naming only that address is still
/// the pod's: clocks of different nodes and watch delays, never the hours between a pod that
/// left no claim (its lines from a journal older than the rest) and the next holder of its IP.
pub(crate) const CLAIM_AHEAD_NS: i64 = 60_000_000_000;

/// Error kinds a client or the pod's kernel reports.
pub(crate) fn is_error(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Refused | Kind::Reset | Kind::ConnError | Kind::SynRetransmit
    )
}

#[derive(Default)]
struct Builder {
    pods: Vec<PodIdent>,
    origin: Vec<(u8, usize)>,
    first_seen: Vec<WallNs>,
    by_uid: HashMap<String, PodId>,
    by_name: HashMap<String, Vec<PodId>>,
    by_anon_ip: HashMap<IpAddr, PodId>,
}

impl Builder {
    fn new_pod(&mut self, ident: PodIdent, t: WallNs, origin: (u8, usize)) -> PodId {
        self.pods.push(ident);
        self.origin.push(origin);
        self.first_seen.push(t);
        self.pods.len() - 1
    }

    fn uid(&mut self, uid: &str, t: WallNs, line: usize) -> PodId {
        if let Some(&id) = self.by_uid.get(uid) {
            self.first_seen[id] = self.first_seen[id].min(t);
            return id;
        }
        let id = self.new_pod(
            PodIdent {
                uid: Some(uid.into()),
                ..PodIdent::default()
            },
            t,
            (0, line),
        );
        self.by_uid.insert(uid.to_owned(), id);
        id
    }

    fn name_of(&mut self, id: PodId, name: &str) {
        if self.pods[id].name.is_none() {
            self.pods[id].name = Some(name.into());
            self.by_name.entry(name.to_owned()).or_default().push(id);
        }
    }

    /// A pod named without a UID: the most recent pod of that name seen before `t`.
    fn name(&mut self, name: &str, t: WallNs, line: usize) -> PodId {
        match self.by_name.get(name) {
            Some(ids) => latest_before(
                ids.iter()
                    .map(|&id| (self.first_seen[id], self.sort_key(id), id)),
                t,
            ),
            None => {
                let id = self.new_pod(
                    PodIdent {
                        name: Some(name.into()),
                        ..PodIdent::default()
                    },
                    t,
                    (1, line),
                );
                self.by_name.insert(name.to_owned(), vec![id]);
                id
            }
        }
    }

    fn sort_key(&self, id: PodId) -> (Option<&str>, Option<&str>) {
        (self.pods[id].uid.as_deref(), self.pods[id].name.as_deref())
    }
}

/// Of `(since, tie_break, id)` candidates, the one with the latest `since` ≤ `t`; if all are
/// later than `t`, the earliest. Ties go to the smallest `tie_break`, so input order never
/// matters.
fn latest_before<K: Ord>(candidates: impl Iterator<Item = (WallNs, K, PodId)>, t: WallNs) -> PodId {
    let mut best_before: Option<(WallNs, K, PodId)> = None;
    let mut earliest: Option<(WallNs, K, PodId)> = None;
    for c in candidates {
        if c.0 <= t {
            let better = best_before
                .as_ref()
                .is_none_or(|b| c.0 > b.0 || (c.0 == b.0 && c.1 < b.1));
            if better {
                best_before = Some(c);
            }
        } else if earliest.as_ref().is_none_or(|e| (c.0, &c.1) < (e.0, &e.1)) {
            earliest = Some(c);
        }
    }
    best_before.or(earliest).map(|c| c.2).unwrap_or_default()
}

pub(crate) fn assign(obs: &[Observation], times: &[WallNs]) -> Assignment {
    let mut b = Builder::default();
    let mut owner: Vec<Option<PodId>> = vec![None; obs.len()];

    for (i, o) in obs.iter().enumerate() {
        if let Some(uid) = &o.pod_uid {
            let id = b.uid(uid, times[i], i);
            if let Some(name) = &o.pod {
                b.name_of(id, name);
            }
            owner[i] = Some(id);
        }
    }
    for (i, o) in obs.iter().enumerate() {
        if let (None, Some(name)) = (&o.pod_uid, &o.pod) {
            owner[i] = Some(b.name(name, times[i], i));
        }
    }

    // Claims: the first time each pod was seen together with each of its addresses.
    let mut first_claim: HashMap<(IpAddr, PodId), WallNs> = HashMap::new();
    for (i, o) in obs.iter().enumerate() {
        if let (Some(id), Some(ip)) = (owner[i], o.ip) {
            let t = first_claim.entry((ip, id)).or_insert(times[i]);
            *t = (*t).min(times[i]);
        }
    }
    let mut claims: HashMap<IpAddr, Vec<(WallNs, PodId)>> = HashMap::new();
    for (&(ip, id), &t) in &first_claim {
        claims.entry(ip).or_default().push((t, id));
        let pod = &mut b.pods[id];
        let earlier = pod.ip.is_none_or(|cur| {
            first_claim
                .get(&(cur, id))
                .is_none_or(|&ct| (t, ip) < (ct, cur))
        });
        if earlier {
            pod.ip = Some(ip);
        }
    }

    let mut service_level = Vec::new();
    for (i, o) in obs.iter().enumerate() {
        if owner[i].is_some() {
            continue;
        }
        if let Some(ip) = o.ip {
            // Claimed before this line, or a moment after it (another node's clock, a watch
            // event behind the kernel); a claim long after it is a later pod that reused the
            // address, and the line belongs to whoever held it then, unnamed.
            let claimed = claims.get(&ip).filter(|c| {
                c.iter()
                    .any(|&(t, _)| t.0 <= times[i].0.saturating_add(CLAIM_AHEAD_NS))
            });
            owner[i] = Some(match claimed {
                Some(c) => {
                    latest_before(c.iter().map(|&(t, id)| (t, b.sort_key(id), id)), times[i])
                }
                None => match b.by_anon_ip.get(&ip) {
                    Some(&id) => id,
                    None => {
                        let id = b.new_pod(
                            PodIdent {
                                ip: Some(ip),
                                ..PodIdent::default()
                            },
                            times[i],
                            (2, i),
                        );
                        b.by_anon_ip.insert(ip, id);
                        id
                    }
                },
            });
        } else if is_error(o.kind) && o.service.is_some() {
            service_level.push(i);
        }
    }

    let mut members = vec![Vec::new(); b.pods.len()];
    for (i, id) in owner.iter().enumerate() {
        if let Some(id) = id {
            members[*id].push(i);
        }
    }
    Assignment {
        pods: b.pods,
        members,
        service_level,
        origin: b.origin,
        claims,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::NodeName;

    fn at(ms: i64, kind: Kind) -> Observation {
        let t = WallNs(1_795_310_205_000_000_000 + ms * 1_000_000).to_timestamp();
        Observation::new(kind, t, NodeName("vm".into()))
    }

    fn named(mut o: Observation, uid: &str, name: &str, ip: &str) -> Observation {
        o.pod_uid = Some(uid.into());
        o.pod = Some(name.into());
        o.ip = Some(ip.parse().unwrap());
        o
    }

    fn with_ip(mut o: Observation, ip: &str) -> Observation {
        o.ip = Some(ip.parse().unwrap());
        o
    }

    fn run(obs: &[Observation]) -> Assignment {
        let times: Vec<_> = obs.iter().map(|o| WallNs::from_timestamp(o.time)).collect();
        assign(obs, &times)
    }

    fn owner_name(a: &Assignment, obs_index: usize) -> Option<&str> {
        let id = a.members.iter().position(|m| m.contains(&obs_index))?;
        a.pods[id].name.as_deref()
    }

    #[test]
    fn an_ip_reused_by_a_new_pod_splits_refusals_between_old_and_new() {
        let obs = vec![
            named(
                at(0, Kind::PodDeleting),
                "u-old",
                "default/web-old",
                "10.0.0.5",
            ),
            with_ip(at(100, Kind::Refused), "10.0.0.5"),
            named(
                at(5_000, Kind::PodCreated),
                "u-new",
                "default/web-new",
                "10.0.0.5",
            ),
            with_ip(at(6_000, Kind::Refused), "10.0.0.5"),
        ];
        let a = run(&obs);
        assert_eq!(a.pods.len(), 2);
        assert_eq!(owner_name(&a, 1), Some("default/web-old"));
        assert_eq!(owner_name(&a, 3), Some("default/web-new"));
    }

    #[test]
    fn a_line_long_before_the_first_claim_of_its_address_is_not_the_later_pods() {
        // Another node's journal still holds a removal of 10.0.0.5 from hours before, when an
        // unknown pod held it; today's pod claims it at 6 h.
        const H: i64 = 3_600_000;
        let obs = vec![
            with_ip(at(0, Kind::DataplaneRemoved), "10.0.0.5"),
            named(
                at(6 * H, Kind::PodReady),
                "u-new",
                "default/web-new",
                "10.0.0.5",
            ),
            with_ip(at(6 * H - 2_000, Kind::DataplaneAdded), "10.0.0.5"),
            with_ip(at(6 * H + 1_000, Kind::DataplaneRemoved), "10.0.0.5"),
        ];
        let a = run(&obs);
        assert_eq!(owner_name(&a, 0), None, "{:?}", a.pods);
        // Seconds ahead of the claim (another node's clock) and after it: the pod's.
        assert_eq!(owner_name(&a, 2), Some("default/web-new"));
        assert_eq!(owner_name(&a, 3), Some("default/web-new"));
    }

    #[test]
    fn an_address_nobody_claimed_becomes_a_pod_known_only_by_its_ip() {
        let obs = vec![
            with_ip(at(0, Kind::Refused), "10.0.0.9"),
            with_ip(at(5, Kind::Reset), "10.0.0.9"),
        ];
        let a = run(&obs);
        assert_eq!(a.pods.len(), 1);
        assert_eq!(a.pods[0].ip, Some("10.0.0.9".parse().unwrap()));
        assert_eq!(a.members[0], vec![0, 1]);
    }

    #[test]
    fn a_client_error_naming_only_the_service_is_kept_aside() {
        let mut o = at(0, Kind::ConnError);
        o.service = Some("default/web".into());
        let a = run(&[o]);
        assert_eq!(a.service_level, vec![0]);
        assert!(a.pods.is_empty());
    }
}
