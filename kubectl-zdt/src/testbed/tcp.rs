//! TCP servers and clients that run inside testbed namespaces and record ground truth.

use std::{
    io::{ErrorKind, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::netns::{Netns, NsThread};
use crate::agent::clock::Clock;

/// A listener in a namespace that answers every connection with a short response.
pub struct Server {
    pub addr: SocketAddr,
    listener_fd: i32,
    closed: Arc<AtomicBool>,
    thread: Option<NsThread<()>>,
    /// CLOCK_MONOTONIC ns when the listener was closed (ground truth for T_listen_closed).
    pub closed_at_ns: Option<u64>,
}

impl Server {
    pub fn start(ns: &Netns, addr: SocketAddr) -> anyhow::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let closed = Arc::new(AtomicBool::new(false));
        let closed2 = closed.clone();
        let thread = ns.spawn(move || {
            let listener = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(listener.as_raw_fd()));
            for conn in listener.incoming() {
                if closed2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut s) = conn {
                    let _ = s.write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
                }
            }
            drop(listener);
        })?;
        let listener_fd = rx
            .recv()
            .map_err(|_| anyhow::anyhow!("server thread died"))?
            .map_err(|e| anyhow::anyhow!("failed to listen on {addr}: {e}"))?;
        Ok(Self {
            addr,
            listener_fd,
            closed,
            thread: Some(thread),
            closed_at_ns: None,
        })
    }

    /// Closes the listener, as an application does on SIGTERM; returns the monotonic time.
    pub fn close(&mut self) -> u64 {
        if let Some(t) = self.closed_at_ns {
            return t;
        }
        self.closed.store(true, Ordering::SeqCst);
        // shutdown() wakes the blocked accept(); the thread then drops (closes) the listener.
        // SAFETY: the fd stays open until the thread drops the listener after this call.
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let t = Clock::monotonic_now_ns();
        self.closed_at_ns = Some(t);
        t
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close();
    }
}

/// The outcome of one connection attempt, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// CLOCK_MONOTONIC ns when connect() returned.
    pub at_ns: u64,
    /// None when the connection succeeded, else the errno name (`ECONNREFUSED`, …).
    pub error: Option<String>,
}

/// Connects to `target` every `interval` until `stop` is set or `max` attempts were made,
/// recording every outcome. Connect timeout 1 s, like the fixture's client loop.
pub fn connect_loop(
    ns: &Netns,
    target: SocketAddr,
    interval: Duration,
    max: usize,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Attempt>>>,
) -> anyhow::Result<NsThread<()>> {
    ns.spawn(move || {
        let start = Instant::now();
        for i in 0..max {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let r = TcpStream::connect_timeout(&target, Duration::from_secs(1));
            let error = match r {
                Ok(_) => None,
                Err(e) => Some(errno_name(&e)),
            };
            let attempt = Attempt {
                at_ns: Clock::monotonic_now_ns(),
                error,
            };
            if let Ok(mut l) = log.lock() {
                l.push(attempt);
            }
            let next = interval * u32::try_from(i + 1).unwrap_or(u32::MAX);
            if let Some(wait) = next.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    })
}

/// Connects once; Ok(()) or the errno name.
pub fn connect_once(target: SocketAddr) -> Result<(), String> {
    TcpStream::connect_timeout(&target, Duration::from_secs(1))
        .map(|_| ())
        .map_err(|e| errno_name(&e))
}

pub fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH".into(),
        Some(libc::ENETUNREACH) => "ENETUNREACH".into(),
        _ if e.kind() == ErrorKind::TimedOut => "ETIMEDOUT".into(),
        _ => e.to_string(),
    }
}
