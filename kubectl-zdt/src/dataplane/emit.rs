//! Dataplane changes → observations (pure: times and node are passed in).

use jiff::{SignedDuration, Timestamp};

use super::{
    model::{Change, RouteChange, Via},
    source::Source,
};
use crate::observation::{Kind, NodeName, Observation};

/// When the changes happened: the commit (trigger) times the dump covered, and when the diff was
/// done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Receive time of the first trigger the dump covers.
    pub first: Timestamp,
    /// Receive time of the last trigger the dump covers (= `first` for one commit).
    pub last: Timestamp,
    /// How many commits the dump covers.
    pub commits: u32,
    /// When the diff was finished.
    pub detected: Timestamp,
}

/// One `dataplane_added` / `dataplane_removed` line per route change.
///
/// The time is the commit's, not the diff's. When several commits were read by one dump, each
/// change happened in one of them: the time is the middle of [first, last] and `uncertainty_ns`
/// its half-width. The same holds for a window in which triggers were lost.
pub fn observations(
    node: &NodeName,
    source: Source,
    change: &Change,
    stamp: Stamp,
) -> Vec<Observation> {
    let half = (stamp.last.duration_since(stamp.first) / 2).max(SignedDuration::ZERO);
    let time = stamp.first.checked_add(half).unwrap_or(stamp.first);
    let lag = stamp.detected.duration_since(stamp.first).as_nanos().max(0);
    let one = |kind: Kind, c: &RouteChange| {
        let mut o = Observation::new(kind, time, node.clone());
        o.ip = Some(c.route.backend.0.ip());
        o.port = Some(c.route.backend.0.port());
        o.service = Some(c.route.service.0.into());
        if half > SignedDuration::ZERO {
            o.uncertainty_ns = Some(half.as_nanos().unsigned_abs() as u64);
        }
        let d = o.details.dataplane_mut();
        d.mode = Some(source.mode.as_str().to_owned());
        d.protocol = Some(c.route.protocol.as_str().to_owned());
        d.detect_ns = Some(u64::try_from(lag).unwrap_or(u64::MAX));
        d.commits = (stamp.commits > 1).then_some(u64::from(stamp.commits));
        d.frontend = (c.route.via == Via::NodePort).then(|| Via::NodePort.as_str().to_owned());
        d.service_name = c.name.as_deref().map(str::to_owned);
        o
    };
    change
        .removed
        .iter()
        .map(|c| one(Kind::DataplaneRemoved, c))
        .chain(change.added.iter().map(|c| one(Kind::DataplaneAdded, c)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{
        model::{Backend, Protocol, Route, ServiceAddr, Via},
        source::{Family, Mode},
    };

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn removal() -> Change {
        Change {
            added: vec![],
            removed: vec![RouteChange {
                route: Route {
                    service: ServiceAddr("10.96.114.246:80".parse().unwrap()),
                    protocol: Protocol::Tcp,
                    backend: Backend("10.244.0.36:8080".parse().unwrap()),
                    via: Via::ServiceIp,
                },
                name: Some("default/web".into()),
            }],
        }
    }

    const NFT: Source = Source {
        mode: Mode::Nftables,
        family: Family::V4,
    };

    #[test]
    fn a_removal_is_stamped_with_the_commit_not_the_diff() {
        let stamp = Stamp {
            first: t("2026-11-22T01:00:00.100Z"),
            last: t("2026-11-22T01:00:00.100Z"),
            commits: 1,
            detected: t("2026-11-22T01:00:00.130Z"),
        };
        let obs = observations(&NodeName("node-a".into()), NFT, &removal(), stamp);
        assert_eq!(
            obs[0].to_json_line(),
            r#"{"kind":"dataplane_removed","time":"2026-11-22T01:00:00.100000000Z","node":"node-a","ip":"10.244.0.36","port":8080,"service":"10.96.114.246:80","detect_ns":30000000,"mode":"nftables","protocol":"tcp","service_name":"default/web"}"#
        );
    }

    #[test]
    fn changes_read_after_two_commits_carry_the_window_as_uncertainty() {
        let stamp = Stamp {
            first: t("2026-11-22T01:00:00.100Z"),
            last: t("2026-11-22T01:00:00.110Z"),
            commits: 2,
            detected: t("2026-11-22T01:00:00.150Z"),
        };
        let obs = observations(&NodeName("n".into()), NFT, &removal(), stamp);
        assert_eq!(obs[0].time, t("2026-11-22T01:00:00.105Z"));
        assert_eq!(obs[0].uncertainty_ns, Some(5_000_000));
        assert_eq!(obs[0].details.dataplane().commits, Some(2));
    }
}
