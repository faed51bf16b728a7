//! iptables-nft and nftables: a mirror of each nf_tables table kube-proxy may use, read in full
//! at start (and again when notifications were lost) and kept up to date by the commits the
//! nf_tables monitor receives.

use anyhow::Context as _;
use jiff::Timestamp;

use super::{Out, Plane};
use crate::dataplane::{
    emit::Stamp,
    mirror::TableMirror,
    model::Backends,
    nf_monitor::Commit,
    nl_dump,
    source::{Mode, Source},
    watcher::Trigger,
};

/// One nf_tables-based dataplane: its mirror and the routes it held at the last commit.
pub(in crate::dataplane::watcher) struct NfTablesPlane {
    source: Source,
    mirror: TableMirror,
    routes: Backends,
}

impl NfTablesPlane {
    /// Reads the table of `source` (an nf_tables source) in full; `None` for other sources.
    pub fn read(source: Source) -> anyhow::Result<Option<Self>> {
        let Some((family, table)) = source.nf_table() else {
            return Ok(None);
        };
        let mut mirror = TableMirror::new(family, table);
        nl_dump::dump(&mut mirror)
            .with_context(|| format!("failed to read nf_tables table {table} (family {family})"))?;
        let mut routes = Backends::new();
        mirror.update(&mut routes);
        Ok(Some(Self {
            source,
            mirror,
            routes,
        }))
    }
}

impl Plane for NfTablesPlane {
    fn kube_proxy_mode(&self) -> Option<Mode> {
        self.mirror.is_kube_proxy().then_some(self.source.mode)
    }

    fn routes(&self) -> &Backends {
        &self.routes
    }

    /// Applies the batch's nf_tables commits to the mirror, if they touched it.
    fn apply(&mut self, batch: &[Trigger], out: &Out) -> Option<bool> {
        let commits: Vec<&Commit> = batch
            .iter()
            .filter_map(|t| match t {
                Trigger::Commit(c) => Some(c),
                _ => None,
            })
            .collect();
        if commits.is_empty() {
            return Some(false);
        }
        let first = commits
            .iter()
            .map(|c| c.time)
            .min()
            .unwrap_or_else(Timestamp::now);
        let last = commits.iter().map(|c| c.time).max().unwrap_or(first);
        let touched = if commits.iter().any(|c| c.overrun) {
            // Lost notifications: the mirror cannot be trusted, read the table again.
            if let Err(e) = nl_dump::dump(&mut self.mirror) {
                tracing::error!("failed to re-read the {} dataplane: {e}", self.source.mode);
                return Some(false);
            }
            true
        } else {
            let mut touched = false;
            for (family, message) in commits.iter().flat_map(|c| &c.changes) {
                touched |= self.mirror.apply(*family, message);
            }
            touched
        };
        if !touched {
            return Some(false);
        }
        let change = self.mirror.update(&mut self.routes);
        let stamp = Stamp {
            first,
            last,
            commits: u32::try_from(commits.len()).unwrap_or(u32::MAX),
            detected: Timestamp::now(),
        };
        out.report(self.source, &change, stamp, |obs| obs)
    }
}
