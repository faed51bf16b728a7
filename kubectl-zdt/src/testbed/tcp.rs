//! TCP clients that run inside testbed namespaces and record ground truth (the servers are
//! real pod processes, see `app`).

#[cfg(feature = "test-support")]
use std::io::{Read as _, Write as _};
use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::netns::{Netns, NsThread};
use crate::kernel::clock::Clock;

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
    let connect = move || TcpStream::connect_timeout(&target, Duration::from_secs(1)).map(drop);
    attempt_loop(ns, interval, max, stop, log, connect)
}

/// Like [`connect_loop`], but each attempt is a whole HTTP exchange, as a real client's: a new
/// connection, a request, the response read to the server's close. An attempt fails with the
/// first error of any step (timeouts 1 s).
#[cfg(feature = "test-support")]
pub fn request_loop(
    ns: &Netns,
    target: SocketAddr,
    interval: Duration,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Attempt>>>,
) -> anyhow::Result<NsThread<()>> {
    attempt_loop(ns, interval, usize::MAX, stop, log, move || {
        request_once(target)
    })
}

/// Runs `attempt` every `interval` in `ns` until `stop` or `max` attempts, logging outcomes.
fn attempt_loop(
    ns: &Netns,
    interval: Duration,
    max: usize,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Attempt>>>,
    attempt: impl Fn() -> std::io::Result<()> + Send + 'static,
) -> anyhow::Result<NsThread<()>> {
    ns.spawn(move || {
        let start = Instant::now();
        for i in 0..max {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let error = attempt().err().map(|e| errno_name(&e));
            let outcome = Attempt {
                at_ns: Clock::monotonic_now_ns(),
                error,
            };
            if let Ok(mut l) = log.lock() {
                l.push(outcome);
            }
            let next = interval * u32::try_from(i + 1).unwrap_or(u32::MAX);
            if let Some(wait) = next.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    })
}

#[cfg(feature = "test-support")]
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\nhost: web\r\n\r\n";

#[cfg(feature = "test-support")]
pub(crate) fn request_once(target: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(REQUEST)?;
    let mut response = Vec::new();
    s.read_to_end(&mut response)?;
    Ok(())
}

/// How a keep-alive client's connection ended.
#[cfg(feature = "test-support")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepAlive {
    /// Requests answered on the one connection.
    pub answered: usize,
    /// The errno name that ended it (`ECONNRESET`, …), or None when `stop` ended it.
    pub error: Option<String>,
}

/// One persistent connection to `target` sending a request every `interval` and reading each
/// answer (`app::KEEP_ALIVE_RESPONSE`), until an error or `stop`. The connect must succeed.
#[cfg(feature = "test-support")]
pub fn keep_alive_requests(
    target: SocketAddr,
    interval: Duration,
    stop: &AtomicBool,
) -> std::io::Result<KeepAlive> {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut answer = [0u8; super::app::KEEP_ALIVE_RESPONSE.len()];
    let mut answered = 0;
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break None;
        }
        if let Err(e) = s
            .write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
            .and_then(|()| s.read_exact(&mut answer))
        {
            break Some(errno_name(&e));
        }
        answered += 1;
        std::thread::sleep(interval);
    };
    Ok(KeepAlive {
        answered,
        error: result,
    })
}

/// Connects once; Ok(()) or the errno name.
#[cfg(feature = "test-support")]
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

/// Opens `count` non-blocking connections to `target`, `spacing` apart, that the kernel gives
/// up on after `syn_retries` SYN retransmissions each (`TCP_SYNCNT`), waits up to `timeout`
/// for every outcome, and reports each one with how many SYN retransmissions the kernel made
/// on that socket (`tcpi_total_retrans`): the ground truth for `syn_retransmit` observations.
///
/// When the kernel gave up (the socket's own error: `ETIMEDOUT`, or `EHOSTUNREACH` when an ICMP
/// error came back meanwhile) the socket is closed, so no retransmission can follow the count;
/// after a `timeout` of our own (`no outcome in …`) one still could, before the sockets are
/// dropped.
///
/// The wait spins (`poll` with no timeout) on the calling thread: the retransmission timers were
/// armed on its CPU, so their softirqs run on top of this thread rather than on whatever other
/// task happens to be there (see `syns_to_a_gone_pod` in tests/kernel/termination.rs for why that
/// matters).
#[cfg(feature = "test-support")]
pub fn syns_until_given_up(
    target: SocketAddr,
    count: usize,
    spacing: Duration,
    syn_retries: u8,
    timeout: Duration,
) -> Vec<(Result<(), String>, u32)> {
    let mut sockets: Vec<(TcpStream, Option<Result<(), String>>)> = Vec::with_capacity(count);
    let start = Instant::now();
    let deadline = start + spacing * u32::try_from(count).unwrap_or(u32::MAX) + timeout;
    while (sockets.len() < count || sockets.iter().any(|(_, r)| r.is_none()))
        && Instant::now() < deadline
    {
        // The next connection `spacing` after the one before (so their timers expire apart).
        if sockets.len() < count
            && start.elapsed() >= spacing * u32::try_from(sockets.len()).unwrap_or(u32::MAX)
        {
            match syn_socket(target, syn_retries) {
                Ok(s) => sockets.push(s),
                Err(e) => panic!("cannot open a connection to {target}: {e}"),
            }
        }
        for (stream, result) in sockets.iter_mut().filter(|(_, r)| r.is_none()) {
            *result = outcome(stream);
        }
    }
    sockets
        .into_iter()
        .map(|(stream, result)| {
            let result = result.unwrap_or_else(|| Err(format!("no outcome in {timeout:?}")));
            (result, total_retrans(&stream))
        })
        .collect()
}

/// A non-blocking socket with `TCP_SYNCNT` set, connecting to `target`; the outcome already when
/// connect() gave one at once.
#[cfg(feature = "test-support")]
fn syn_socket(
    target: SocketAddr,
    syn_retries: u8,
) -> std::io::Result<(TcpStream, Option<Result<(), String>>)> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let family = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh, valid socket fd.
    let stream = TcpStream::from(unsafe { OwnedFd::from_raw_fd(raw) });
    let retries = libc::c_int::from(syn_retries);
    // SAFETY: setsockopt with a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&raw const retries).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (addr, len) = sockaddr_of(target);
    // SAFETY: addr/len describe a valid sockaddr for this family.
    let rc = unsafe { libc::connect(stream.as_raw_fd(), (&raw const addr).cast(), len) };
    let e = std::io::Error::last_os_error();
    let now = match rc {
        0 => Some(Ok(())),
        _ if e.raw_os_error() == Some(libc::EINPROGRESS) => None,
        _ => Some(Err(errno_name(&e))),
    };
    Ok((stream, now))
}

/// The outcome of a pending connect, if it has one yet (a poll that does not wait).
#[cfg(feature = "test-support")]
fn outcome(stream: &TcpStream) -> Option<Result<(), String>> {
    use std::os::fd::AsRawFd as _;
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&raw mut pfd, 1, 0) } <= 0 {
        return None;
    }
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => Some(Err(errno_name(&e))),
        // Woken without an error: connected, or the error is not posted yet.
        Ok(None) => stream.peer_addr().ok().map(|_| Ok(())),
    }
}

/// `tcpi_total_retrans` of a socket.
#[cfg(feature = "test-support")]
fn total_retrans(stream: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd as _;
    // SAFETY: tcp_info is plain data; getsockopt fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid fd and a buffer of `len` bytes.
    unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    info.tcpi_total_retrans
}

#[cfg(feature = "test-support")]
fn sockaddr_of(target: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data, large enough for either family.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match target {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            (storage, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            (storage, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}
