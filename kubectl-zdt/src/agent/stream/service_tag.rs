//! Client errors toward a Service: the address the client dialled is the Service's frontend
//! (`service`), and the backend the dataplane sent the connection to (`ip`/`port`) comes from
//! conntrack. The conntrack event naming the backend and the kernel event race each other, so
//! an error whose backend is not known yet waits up to [`BACKEND_WAIT`].

use std::{net::SocketAddr, time::Instant};

use crate::{
    agent::conntrack::Conntrack,
    dataplane::{
        flows::{self, Dnat},
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
        // Only the NEW event of this line's own connection: an older one from the same
        // client port may have gone to another pod.
        let since = o
            .time
            .checked_sub(flows::DNAT_FRESH)
            .unwrap_or(jiff::Timestamp::MIN);
        let cached = |c| {
            self.dnat
                .as_ref()
                .and_then(|d| d.lock().ok()?.backend_seen_since(c, dialled, since))
        };
        let backend = client
            .and_then(|c| cached(c).or_else(|| self.conntrack.as_mut()?.backend_of(c, dialled)));
        o.ip = backend.map(|b| b.ip());
        o.port = backend.map(|b| b.port());
        backend.is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
        sync::{Arc, Mutex, RwLock},
        time::{Duration, Instant},
    };

    use jiff::{SignedDuration, Timestamp};

    use super::*;
    use crate::{
        dataplane::{
            flows::{DnatCache, Flow},
            model::Protocol,
            watcher::FrontendSet,
        },
        observation::NodeName,
    };

    const SERVICE: &str = "198.19.0.221:80";
    const CLIENT: &str = "198.18.1.1:45212";

    fn flow(backend: &str) -> Flow {
        Flow {
            protocol: Protocol::Tcp,
            client: CLIENT.parse().unwrap(),
            frontend: SERVICE.parse().unwrap(),
            backend: backend.parse().unwrap(),
        }
    }

    /// The client's ECONNREFUSED as the kernel reports it: toward the ClusterIP it dialled.
    fn refused(at: Timestamp) -> Observation {
        let mut o = Observation::new(Kind::ConnError, at, NodeName("node-b".into()));
        let (client, service): (SocketAddr, SocketAddr) =
            (CLIENT.parse().unwrap(), SERVICE.parse().unwrap());
        o.ip = Some(service.ip());
        o.port = Some(service.port());
        o.peer_ip = Some(client.ip());
        o.peer_port = Some(client.port());
        o.reason = Some("ECONNREFUSED".into());
        o
    }

    /// Seen on a real two-node cluster: a client port that had gone to a pod 90 s earlier came
    /// back for a connection a new pod refused, and the error was read before that
    /// connection's NEW event. The old pod is no answer: the error waits, and takes its own
    /// connection's backend once the event is in.
    #[test]
    fn a_client_port_that_comes_back_is_not_named_after_its_earlier_connections_pod() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let dnat = Arc::new(Mutex::new(DnatCache::default()));
        dnat.lock().unwrap().record(&flow("198.18.0.41:8080"), t0);
        let mut set = FrontendSet::default();
        set.publish(
            [SERVICE.parse().unwrap()].into_iter().collect(),
            Instant::now(),
        );
        let mut tagger = ServiceTagger {
            frontends: Some(Arc::new(RwLock::new(set))),
            dnat: Some(dnat.clone()),
            ..ServiceTagger::default()
        };
        let now = Instant::now();
        let error_at = t0 + SignedDuration::from_secs(90);
        assert!(
            tagger.ready(vec![refused(error_at)], now).is_empty(),
            "waits"
        );
        dnat.lock().unwrap().record(
            &flow("198.18.1.6:8080"),
            error_at + SignedDuration::from_millis(2),
        );
        let ready = tagger.ready(Vec::new(), now + Duration::from_millis(50));
        assert_eq!(ready.len(), 1);
        assert_eq!(
            (ready[0].ip, ready[0].port),
            (Some("198.18.1.6".parse().unwrap()), Some(8080)),
            "{:?}",
            ready[0]
        );
        assert_eq!(
            ready[0]
                .service
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some(SERVICE)
        );

        // A connection of a second ago (a connect the client gave up after 1 s) is its own.
        let ready = tagger.ready(
            vec![refused(error_at + SignedDuration::from_secs(1))],
            now + Duration::from_millis(60),
        );
        assert_eq!(ready[0].ip, Some("198.18.1.6".parse().unwrap()));

        // No NEW event ever comes (lost): after the wait the error goes without a backend,
        // never with the old one.
        let late = error_at + SignedDuration::from_secs(100);
        assert!(tagger.ready(vec![refused(late)], now).is_empty());
        let ready = tagger.ready(Vec::new(), now + BACKEND_WAIT);
        assert_eq!((ready.len(), ready[0].port), (1, None), "{ready:?}");
    }
}
