//! Client errors toward a Service: the address the client dialled is the Service's frontend
//! (`service`), and the backend the dataplane sent the connection to (`ip`/`port`) comes from
//! conntrack. The conntrack event naming the backend and the kernel event race each other, so
//! an error whose backend is not known yet waits up to [`BACKEND_WAIT`].

use std::{net::SocketAddr, time::Instant};

use crate::{
    agent::conntrack::Conntrack,
    dataplane::{
        flows::Dnat,
        watcher::{Frontends, Watcher},
    },
    observation::{Kind, Observation},
};

/// How long a client error toward a Service waits for the conntrack event naming its backend.
pub(super) const BACKEND_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// The dataplane's frontends and where their connections went.
#[derive(Default)]
pub(super) struct ServiceTagger {
    /// Service frontends this node routes (from the dataplane watcher), if it runs.
    frontends: Option<Frontends>,
    /// Where recent DNAT'ed connections went, from conntrack NEW events.
    dnat: Option<Dnat>,
    /// Asks conntrack about older (assured) connections the cache no longer holds.
    conntrack: Option<Conntrack>,
    /// Client errors toward a Service whose backend is not known yet, since when.
    pending: Vec<(Observation, Instant)>,
}

impl ServiceTagger {
    /// Tags from now on with what the dataplane watcher finds.
    pub fn use_dataplane(&mut self, watcher: &Watcher) {
        self.frontends = Some(watcher.frontends.clone());
        self.dnat = Some(watcher.dnat.clone());
        match Conntrack::open() {
            Ok(c) => self.conntrack = Some(c),
            Err(e) => tracing::warn!(
                "client errors toward Services will not name their backend pod: conntrack query socket: {e}"
            ),
        }
    }

    /// The lines of `batch` (decoded at `now`) and of the waiting ones that can go: tagged,
    /// not about a Service, or waited long enough. The waiting ones come first: their backend
    /// may have arrived since.
    pub fn ready(&mut self, batch: Vec<Observation>, now: Instant) -> Vec<Observation> {
        let mut ready = Vec::with_capacity(batch.len());
        for (mut o, since) in std::mem::take(&mut self.pending) {
            if self.tag(&mut o) || now - since >= BACKEND_WAIT {
                ready.push(o);
            } else {
                self.pending.push((o, since));
            }
        }
        for mut o in batch {
            if self.tag(&mut o) {
                ready.push(o);
            } else {
                self.pending.push((o, now));
            }
        }
        ready
    }

    /// The lines still waiting, as they are (at shutdown).
    pub fn take_pending(&mut self) -> Vec<Observation> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(o, _)| o)
            .collect()
    }

    /// Tags a client error toward a Service; false when its backend is not known (yet).
    fn tag(&mut self, o: &mut Observation) -> bool {
        if !matches!(o.kind, Kind::ConnError | Kind::SynRetransmit) {
            return true;
        }
        let dialled = match (&o.service, o.ip, o.port) {
            // Already tagged, waiting for its backend.
            (Some(s), None, None) => match s.frontend() {
                Some(d) => d,
                None => return true,
            },
            (None, Some(ip), Some(port)) => SocketAddr::new(ip, port),
            _ => return true,
        };
        let Some(f) = &self.frontends else {
            return true;
        };
        if !f.read().is_ok_and(|set| set.contains(&dialled)) {
            return true;
        }
        o.service = Some(dialled.into());
        let client = o
            .peer_ip
            .zip(o.peer_port)
            .map(|(i, p)| SocketAddr::new(i, p));
        let cached = |c| {
            self.dnat
                .as_ref()
                .and_then(|d| d.lock().ok()?.backend_of(c, dialled))
        };
        let backend = client
            .and_then(|c| cached(c).or_else(|| self.conntrack.as_mut()?.backend_of(c, dialled)));
        o.ip = backend.map(|b| b.ip());
        o.port = backend.map(|b| b.port());
        backend.is_some()
    }
}
