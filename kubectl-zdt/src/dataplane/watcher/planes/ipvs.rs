//! IPVS: read again after the change requests the agent's eBPF trigger reports (the virtual
//! server a request names alone, or all of IPVS), or on a timer when that trigger is not armed.

use std::collections::BTreeMap;

use anyhow::Context as _;
use jiff::Timestamp;

use super::{Out, Plane, Window};
use crate::dataplane::{
    emit::Stamp,
    ipvs,
    model::{Backends, Change},
    source::{Family, Mode, Source},
    watcher::Trigger,
};

/// IPVS, read again on change requests and ticks: the routes at the last read and when it was
/// made.
pub(in crate::dataplane::watcher) struct IpvsPlane {
    kernel: ipvs::Live,
    state: ipvs::Ipvs,
    read_at: Timestamp,
}

impl IpvsPlane {
    pub fn read(mut kernel: ipvs::Live) -> anyhow::Result<Self> {
        let read_at = Timestamp::now();
        let state = ipvs::read(&mut kernel).context("failed to read IPVS")?;
        Ok(Self {
            kernel,
            state,
            read_at,
        })
    }

    fn source() -> Source {
        Source {
            mode: Mode::Ipvs,
            family: Family::V4,
        }
    }

    /// Reads IPVS again; what changed since the previous read is stamped with `triggered` (the
    /// change requests' exits) or else with the interval between the two reads. Whether routes
    /// changed, `None` once nobody listens.
    fn reread(&mut self, out: &Out, triggered: Option<Stamp>) -> Option<bool> {
        let started = Timestamp::now();
        let state = match ipvs::read(&mut self.kernel) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e:#}");
                return Some(false);
            }
        };
        let change = self.state.routes.diff(&state.routes);
        let stamp = match triggered {
            Some(stamp) => Stamp {
                detected: Timestamp::now(),
                ..stamp
            },
            None => Stamp {
                first: self.read_at,
                last: Timestamp::now(),
                commits: 1,
                detected: Timestamp::now(),
            },
        };
        self.state = state;
        self.read_at = started;
        Self::report(out, &change, stamp)
    }

    /// Reads one virtual server of IPVS again after change requests naming it (`window`; `cmd`
    /// the last one's, which decides whether it exists, see `ipvs::reread_server`); whether its
    /// routes changed, `None` once nobody listens.
    fn reread_server(
        &mut self,
        out: &Out,
        vs: &ipvs::VirtualServer,
        window: &Window,
        cmd: u8,
    ) -> Option<bool> {
        let change = match ipvs::reread_server(&mut self.kernel, &mut self.state, vs, cmd) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("failed to read IPVS virtual server {}: {e:#}", vs.service);
                return Some(false);
            }
        };
        let Some(stamp) = window.stamp() else {
            return Some(false);
        };
        Self::report(out, &change, stamp)
    }

    /// Sends one line per IPVS route change; whether there was any, `None` once nobody listens.
    fn report(out: &Out, change: &Change, stamp: Stamp) -> Option<bool> {
        out.report(Self::source(), change, stamp, |obs| obs)
    }
}

impl Plane for IpvsPlane {
    fn kube_proxy_mode(&self) -> Option<Mode> {
        (!self.state.servers.is_empty()).then_some(Mode::Ipvs)
    }

    fn routes(&self) -> &Backends {
        &self.state.routes
    }

    /// A change request naming its virtual server has that one read again, stamped with the
    /// window of the requests for it; any other request (FLUSH, cut short) or loss has all of
    /// IPVS read, stamped with the window of every trigger; a tick alone with the interval since
    /// the previous read.
    fn apply(&mut self, batch: &[Trigger], out: &Out) -> Option<bool> {
        let mut whole = Window::default();
        // Per virtual server: the window of its requests and the last one's command.
        let mut servers: BTreeMap<ipvs::VirtualServer, (Window, u8)> = BTreeMap::new();
        let (mut tick, mut read_all) = (false, false);
        for t in batch {
            match t {
                Trigger::IpvsChange(c) if c.netns == out.netns => {
                    whole.add(c.time, c.time);
                    let Some(vs) = c.server else {
                        read_all = true;
                        continue;
                    };
                    let (window, cmd) = servers.entry(vs).or_default();
                    window.add(c.time, c.time);
                    *cmd = c.cmd;
                }
                Trigger::Lost { since, now } => {
                    whole.add(*since, *now);
                    read_all = true;
                }
                Trigger::Tick => tick = true,
                _ => {}
            }
        }
        if tick || read_all {
            return self.reread(out, whole.stamp());
        }
        let mut changed = false;
        for (vs, (window, cmd)) in &servers {
            changed |= self.reread_server(out, vs, window, *cmd)?;
        }
        Some(changed)
    }
}
