//! The kubelet's readiness probe of a new pod, run from the node's network namespace as the
//! kubelet runs it: a `tcpSocket` probe connects to the pod's own address and port every
//! period until one connection is accepted (a probe refused before the app listens is the
//! kubelet's, not a client's: the agent tags it).

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use super::{
    netns::{Netns, NsThread},
    tcp::{Attempt, errno_name},
};
use crate::kernel::clock::Clock;

/// What a probe run saw.
#[derive(Clone, Debug, Default)]
pub struct Probed {
    /// Every probe, the last one the first that passed.
    pub attempts: Vec<Attempt>,
    /// CLOCK_MONOTONIC ns when the passing probe's connect returned.
    pub passed: u64,
}

impl Probed {
    /// Probes refused (the app not listening yet).
    pub fn refused(&self) -> u64 {
        self.attempts
            .iter()
            .filter(|a| a.error.as_deref() == Some("ECONNREFUSED"))
            .count() as u64
    }
}

/// Probes `target` (`tcpSocket`) from `node` every `period` until it passes, at most `limit`.
pub fn readiness_tcp(
    node: &Netns,
    target: SocketAddr,
    period: Duration,
    limit: Duration,
) -> anyhow::Result<NsThread<anyhow::Result<Probed>>> {
    node.spawn(move || {
        let start = Instant::now();
        let mut probed = Probed::default();
        let mut i = 0u32;
        loop {
            i += 1;
            let outcome = TcpStream::connect_timeout(&target, Duration::from_secs(1));
            let at_ns = Clock::monotonic_now_ns();
            let error = outcome.as_ref().err().map(errno_name);
            let passed = error.is_none();
            probed.attempts.push(Attempt { at_ns, error });
            if passed {
                probed.passed = at_ns;
                return Ok(probed);
            }
            if start.elapsed() > limit {
                anyhow::bail!("the readiness probe of {target} never passed within {limit:?}");
            }
            if let Some(wait) = (period * i).checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    })
}
