//! A client that keeps its own endpoint list, as an ingress controller, a mesh sidecar or a
//! client-side load balancer does: it dials the pods' own addresses in turn, never a Service's
//! virtual IP, and its list changes only when the test says so (its lag behind the
//! EndpointSlice is the test's to choose).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    netns::{Netns, NsThread},
    tcp::{Attempt, errno_name, request_once},
};
use crate::kernel::clock::Clock;

/// One request of the balancer: the pod it dialled and what happened.
#[derive(Clone, Debug)]
pub struct Dialled {
    pub target: SocketAddr,
    /// CLOCK_MONOTONIC ns just before connect(); `attempt.at_ns` is when the request ended.
    pub sent_ns: u64,
    pub attempt: Attempt,
}

/// The balancer's endpoint list and its log; the thread stops when this is dropped.
pub struct Balancer {
    pub endpoints: Arc<Mutex<Vec<SocketAddr>>>,
    pub log: Arc<Mutex<Vec<Dialled>>>,
    stop: Arc<AtomicBool>,
    thread: Option<NsThread<()>>,
}

impl Balancer {
    /// Sends one request (a new connection) every `interval` from `ns`, to the endpoints of
    /// its list in turn.
    pub fn start(
        ns: &Netns,
        endpoints: Vec<SocketAddr>,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let endpoints = Arc::new(Mutex::new(endpoints));
        let log: Arc<Mutex<Vec<Dialled>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (list, out, stopped) = (endpoints.clone(), log.clone(), stop.clone());
        let thread = ns.spawn(move || {
            let start = Instant::now();
            let mut i = 0u32;
            while !stopped.load(Ordering::SeqCst) {
                let target = {
                    let l = list.lock().expect("the endpoint list");
                    l.get(i as usize % l.len().max(1)).copied()
                };
                i += 1;
                if let Some(target) = target {
                    let sent_ns = Clock::monotonic_now_ns();
                    let error = request_once(target).err().map(|e| errno_name(&e));
                    let attempt = Attempt {
                        at_ns: Clock::monotonic_now_ns(),
                        error,
                    };
                    out.lock().expect("the log").push(Dialled {
                        target,
                        sent_ns,
                        attempt,
                    });
                }
                if let Some(wait) = (interval * i).checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        })?;
        Ok(Self {
            endpoints,
            log,
            stop,
            thread: Some(thread),
        })
    }

    /// The balancer's list catches up: `gone` is no longer dialled.
    pub fn forget(&self, gone: SocketAddr) {
        self.endpoints
            .lock()
            .expect("the endpoint list")
            .retain(|e| *e != gone);
    }

    /// Stops and returns every request.
    pub fn finish(mut self) -> Vec<Dialled> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("the balancer's thread");
        }
        self.log.lock().expect("the log").clone()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
