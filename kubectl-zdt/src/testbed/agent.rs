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

/// Drops `cap` (a `CAP_*` number) from the calling thread's effective set, as a container that
/// was not granted it runs: the DaemonSet grants BPF, PERFMON, NET_ADMIN and SYS_PTRACE only
/// (docs/security.md). Other threads keep theirs.
pub fn drop_effective_capability(cap: u32) -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // _LINUX_CAPABILITY_VERSION_3: two 32-bit words of each set.
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: header and data are what capget/capset expect for version 3.
    unsafe {
        if libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
        if libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
