//! iptables-legacy: the x_tables nat table of each family, read again after each table replace
//! the agent's eBPF trigger reports (from the writer's buffer while the kernel installs it, or
//! else from the kernel once it is in place).

use super::{Out, Plane, Window};
use crate::dataplane::{
    emit::Stamp,
    legacy::{self, ReplaceBegin, TableReplace},
    model::Backends,
    source::{Family, Mode, Source},
    watcher::Trigger,
    xtables,
};

/// The legacy x_tables nat table of one family: the routes it held at the last read.
pub(in crate::dataplane::watcher) struct LegacyPlane {
    family: Family,
    routes: Backends,
    /// It holds kube-proxy's KUBE-SERVICES chain.
    kube_proxy: bool,
    /// The table a writer was installing, read from its buffer while the kernel worked.
    prepared: Option<Prepared>,
    /// Reused for the pieces of a writer's buffer.
    chunk: Vec<u8>,
}

/// A table read from the writer of a replace in progress.
struct Prepared {
    /// The replace: its writer and entry time (`ReplaceBegin::entered_ns`).
    pid: u32,
    entered_ns: u64,
    nat: xtables::Nat,
    /// `CLOCK_MONOTONIC` when the copy was over: before the syscall's exit, the writer's buffer
    /// was still the table the kernel installed.
    copied_ns: u64,
}

impl Prepared {
    fn is_for(&self, replace: &TableReplace) -> bool {
        self.pid == replace.pid && self.entered_ns == replace.entered_ns
    }

    /// The table `replace` installed, if this was read from its writer before it returned.
    fn installed_by(self, replace: &TableReplace) -> Option<xtables::Nat> {
        (self.is_for(replace) && self.copied_ns < replace.time_ns).then_some(self.nat)
    }
}

impl LegacyPlane {
    pub fn read(family: Family) -> anyhow::Result<Self> {
        let nat = legacy::read_routes(family)?;
        Ok(Self {
            family,
            routes: nat.routes,
            kube_proxy: nat.kube_services,
            prepared: None,
            chunk: Vec::new(),
        })
    }

    fn source(&self) -> Source {
        Source {
            mode: Mode::IptablesLegacy,
            family: self.family,
        }
    }

    /// Reads the table a replace is installing from its writer; a failure leaves the read to
    /// the kernel's copy once the replace is over.
    fn prepare(&mut self, begin: &ReplaceBegin) {
        self.prepared = None;
        match legacy::read_writer(begin, &mut self.chunk) {
            Ok(read) => {
                self.prepared = Some(Prepared {
                    pid: begin.pid,
                    entered_ns: begin.entered_ns,
                    nat: read.nat,
                    copied_ns: read.copied_ns,
                });
            }
            Err(e) => tracing::debug!("{e}; the table is read from the kernel instead"),
        }
    }

    /// Brings the table up to date after a replace, with the table read from its writer
    /// (`installed`) or else read from the kernel; whether routes changed, `None` once nobody
    /// listens.
    ///
    /// A line stamped by one replace says how its swap was bounded (`swap_bounds`: `counters`
    /// when the per-CPU probes saw the new table's counters allocated and the old one's freed,
    /// else `syscall`), how long the replace had run in the kernel when it was reported
    /// (`syscall_ns`) and where that was (`reported_at`: `old_table_free` when the writer freed
    /// the old table's first counter block, else `exit`).
    fn reread(
        &mut self,
        out: &Out,
        stamp: Stamp,
        installed: Option<xtables::Nat>,
        replace: Option<&TableReplace>,
    ) -> Option<bool> {
        let (nat, read_from) = match installed {
            Some(nat) => (nat, "writer"),
            None => match legacy::read_routes(self.family) {
                Ok(nat) => (nat, "kernel"),
                Err(e) => {
                    tracing::error!("{e:#}");
                    return Some(false);
                }
            },
        };
        self.kube_proxy = nat.kube_services;
        let change = self.routes.diff(&nat.routes);
        self.routes = nat.routes;
        let stamp = Stamp {
            detected: jiff::Timestamp::now(),
            ..stamp
        };
        out.report(self.source(), &change, stamp, |obs| {
            let mut obs = obs;
            let d = obs.details.dataplane_mut();
            d.read_from = Some(read_from.to_owned());
            if let Some(r) = replace {
                let syscall = r.time.duration_since(r.entered).as_nanos().max(0);
                d.swap_bounds = Some(r.swap_bounds().as_str().to_owned());
                d.syscall_ns = Some(u64::try_from(syscall).unwrap_or(u64::MAX));
                d.reported_at = Some(
                    if r.at_old_table_free {
                        "old_table_free"
                    } else {
                        "exit"
                    }
                    .to_owned(),
                );
            }
            obs
        })
    }
}

impl Plane for LegacyPlane {
    fn kube_proxy_mode(&self) -> Option<Mode> {
        self.kube_proxy.then_some(Mode::IptablesLegacy)
    }

    fn routes(&self) -> &Backends {
        &self.routes
    }

    /// Reads the table again after the batch's replaces of it (or a loss), from the writer of a
    /// replace still in progress when there is one.
    fn apply(&mut self, batch: &[Trigger], out: &Out) -> Option<bool> {
        let family = self.family;
        let mut window = Window::default();
        let mut replaces = Vec::new();
        let mut begin = None;
        for t in batch {
            match t {
                Trigger::ReplaceBegin(b)
                    if b.family == family && b.concerns_nat() && b.netns == out.netns =>
                {
                    begin = Some(b);
                }
                Trigger::TableReplace(r)
                    if r.family == family && r.concerns_nat() && r.netns == out.netns =>
                {
                    let (after, before) = r.swapped();
                    window.add(after, before);
                    replaces.push(r);
                }
                Trigger::Lost { since, now } => window.add(*since, *now),
                _ => {}
            }
        }
        // A replace still in progress (its end is not in this batch): read the new table from
        // the writer now, while the kernel installs it.
        if let Some(b) = begin.filter(|b| {
            !replaces
                .iter()
                .any(|r| r.pid == b.pid && r.entered_ns == b.entered_ns)
        }) {
            self.prepare(b);
        }
        let Some(stamp) = window.stamp() else {
            return Some(false);
        };
        // The table read from the writer is the one in effect if its replace is the only
        // change in the window and the read was over before the syscall returned.
        let only = match replaces.as_slice() {
            [only] if window.triggers == 1 => Some(*only),
            _ => None,
        };
        let nat = match self.prepared.take() {
            Some(p) if replaces.iter().any(|r| p.is_for(r)) => only.and_then(|r| p.installed_by(r)),
            // Read for a replace still in progress.
            other => {
                self.prepared = other;
                None
            }
        };
        self.reread(out, stamp, nat, only)
    }
}
