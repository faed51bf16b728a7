//! The dataplanes kube-proxy may program, one module each, behind [`Plane`]: the watcher's
//! reader hands every batch of triggers to each plane, which picks the triggers that concern it,
//! reads what changed and reports the route changes.
//!
//! - `nf_tables`: iptables-nft and nftables (a mirror kept by nf_tables commits);
//! - `iptables_legacy`: the x_tables nat tables (read again per table replace);
//! - `ipvs`: IPVS virtual servers (read again per change request, or on a timer).

mod iptables_legacy;
mod ipvs;
mod nf_tables;

use jiff::Timestamp;

pub(super) use self::{iptables_legacy::LegacyPlane, ipvs::IpvsPlane, nf_tables::NfTablesPlane};
use super::{Sink, Trigger};
use crate::{
    dataplane::{
        emit::{self, Stamp},
        model::{Backends, Change},
        source::{Mode, Source},
    },
    observation::{NodeName, Observation},
};

/// One dataplane the watcher keeps up to date.
pub(super) trait Plane: Send {
    /// Its mode when it holds kube-proxy's dispatch now (`dataplane_mode`).
    fn kube_proxy_mode(&self) -> Option<Mode>;

    /// The routes it held at the last read.
    fn routes(&self) -> &Backends;

    /// Brings it up to date after the triggers of `batch` that concern it and reports the
    /// route changes to `out`: whether routes changed, `None` once nobody listens.
    fn apply(&mut self, batch: &[Trigger], out: &Out) -> Option<bool>;
}

/// Where a plane reports, and what it reads.
pub(super) struct Out {
    pub node: NodeName,
    /// The namespace read: triggers from elsewhere are not this node's dataplane.
    pub netns: u32,
    pub tx: Sink,
}

impl Out {
    /// Sends the observations of `change` from `source`, each passed through `each`; whether
    /// there was any change, `None` once nobody listens.
    fn report(
        &self,
        source: Source,
        change: &Change,
        stamp: Stamp,
        each: impl Fn(Observation) -> Observation,
    ) -> Option<bool> {
        if change.is_empty() {
            return Some(false);
        }
        for obs in emit::observations(&self.node, source, change, stamp) {
            if !self.tx.send(each(obs)) {
                return None;
            }
        }
        Some(true)
    }
}

/// The times a batch of triggers covers, for one dataplane.
#[derive(Default)]
struct Window {
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    triggers: u32,
}

impl Window {
    fn add(&mut self, first: Timestamp, last: Timestamp) {
        self.first = Some(self.first.map_or(first, |f| f.min(first)));
        self.last = Some(self.last.map_or(last, |l| l.max(last)));
        self.triggers += 1;
    }

    fn stamp(&self) -> Option<Stamp> {
        Some(Stamp {
            first: self.first?,
            last: self.last?,
            commits: self.triggers,
            detected: Timestamp::now(),
        })
    }
}
