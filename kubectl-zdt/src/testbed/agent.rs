//! An in-process agent (probes loaded and attached) running on its own runtime until dropped:
//! for tests and benchmarks that need its kernel events (the iptables-legacy trigger) but not
//! its observations.

use tokio::sync::{mpsc, oneshot};

use crate::agent::Agent;

pub struct RunningAgent {
    _rt: tokio::runtime::Runtime,
    _stop: oneshot::Sender<()>,
}

impl RunningAgent {
    /// Runs `agent`; its own observations are drained and dropped.
    pub fn run(agent: Agent) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let (tx, mut rx) = mpsc::channel(1024);
        rt.spawn(async move { while rx.recv().await.is_some() {} });
        rt.spawn(agent.run(tx, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            _rt: rt,
            _stop: stop,
        })
    }
}
