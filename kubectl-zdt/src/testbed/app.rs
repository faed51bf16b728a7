//! The application the testbed runs in each pod (`kubectl-zdt testbed-app`, hidden): a real
//! process in the pod's network namespace, so SIGTERM, the listener close and the exit are the
//! kernel events a real pod produces. It prints ground truth on stdout, one line per mark:
//! `[started|]ready|sigterm|closing|closed|exit <CLOCK_MONOTONIC ns>` (`started` with
//! `--listen-after-ms`, before the wait; `ready` once it listens).
//!
//! On SIGTERM it keeps serving for `--drain-ms`, then closes its listener and exits. With
//! `--hold` it never answers: accepted connections stay open unread until exit, so clients
//! that sent data are reset (`TCP_ABORT_ON_CLOSE`), like a server killed mid-request.
//!
//! `--fork-per-connection` serves each connection in a forked child that exits after its
//! response, as busybox `httpd` does: a pod with traffic has a process exit every few
//! milliseconds, none of them the pod ending. `--keep-alive` answers many requests per
//! connection and, once its listener is closed, stops reading them and exits with them open,
//! as a server that does not drain its idle keep-alive connections: requests that arrive
//! meanwhile are reset at exit.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, RawFd},
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use nix::sys::signal::{SigHandler, SigSet, Signal};

use crate::kernel::clock::Clock;

#[derive(Debug, Args)]
pub struct AppArgs {
    /// Port to listen on, on [::] (dual-stack, like most servers binding every address).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Keep serving this long after SIGTERM before closing the listener (graceful drain).
    #[arg(long, default_value_t = 0)]
    pub drain_ms: u64,
    /// Hold accepted connections open, unread and unanswered, until exit.
    #[arg(long)]
    pub hold: bool,
    /// Serve each connection in a forked child that reads the request, answers and exits.
    #[arg(long, conflicts_with_all = ["hold", "keep_alive"])]
    pub fork_per_connection: bool,
    /// Answer every request of a connection (HTTP/1.1 keep-alive); once the listener is
    /// closed, stop reading and exit with the connections open.
    #[arg(long, conflicts_with = "hold")]
    pub keep_alive: bool,
    /// Start listening only this long after the process started (an app that loads before it
    /// serves): connections meanwhile are refused by the pod's kernel.
    #[arg(long, default_value_t = 0)]
    pub listen_after_ms: u64,
    /// Instead of serving: print `start <ns>`, sleep this long and exit (a preStop hook).
    #[arg(long)]
    pub prestop_sleep_ms: Option<u64>,
}

/// The answer to every request: one HTTP/1.0 response per connection (the server closes it).
const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nok\n";

/// The answer to each request on a keep-alive connection (a client reads exactly this much).
pub const KEEP_ALIVE_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";

/// How long a `--keep-alive` app stays up after it stopped reading its connections: long
/// enough for clients sending a request every few milliseconds to have one unread in the
/// socket when it exits.
const KEEP_ALIVE_UNREAD_MS: u64 = 50;

fn mark(what: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{what} {}", Clock::monotonic_now_ns());
    let _ = out.flush();
}

pub fn main(args: AppArgs) -> anyhow::Result<ExitCode> {
    if let Some(ms) = args.prestop_sleep_ms {
        mark("start");
        std::thread::sleep(Duration::from_millis(ms));
        return Ok(ExitCode::SUCCESS);
    }
    // Block SIGTERM before any thread exists so only the sigwait below receives it.
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    term.thread_block().context("failed to block SIGTERM")?;

    if args.listen_after_ms > 0 {
        mark("started");
        std::thread::sleep(Duration::from_millis(args.listen_after_ms));
    }
    let addr = SocketAddr::from(([0u16; 8], args.port));
    let listener =
        TcpListener::bind(addr).with_context(|| format!("failed to listen on {addr}"))?;
    let fd = listener.as_raw_fd();
    if args.fork_per_connection {
        // Children are reaped by the kernel (busybox httpd does the same), so none lingers
        // as a zombie.
        // SAFETY: setting a disposition to SIG_IGN installs no handler.
        unsafe { nix::sys::signal::signal(Signal::SIGCHLD, SigHandler::SigIgn) }
            .context("failed to ignore SIGCHLD")?;
    }
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let held2 = held.clone();
    let stopping = Arc::new(AtomicBool::new(false));
    let stopping2 = stopping.clone();
    let (hold, fork, keep_alive) = (args.hold, args.fork_per_connection, args.keep_alive);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { break };
            if hold {
                if let Ok(mut h) = held2.lock() {
                    h.push(s);
                }
            } else if fork {
                serve_in_child(s, fd);
            } else if keep_alive {
                let stopping = stopping2.clone();
                std::thread::spawn(move || serve_keep_alive(s, &stopping));
            } else {
                let _ = s.write_all(RESPONSE);
            }
        }
        drop(listener);
    });
    mark("ready");
    term.wait().context("sigwait failed")?;
    mark("sigterm");
    std::thread::sleep(Duration::from_millis(args.drain_ms));
    stopping.store(true, Ordering::SeqCst);
    // shutdown() on a listening socket moves it LISTEN → CLOSE at once (tcp_disconnect), which
    // is what the kernel reports; the accept loop then ends and drops the socket.
    // `closing`/`closed` bracket the shutdown: the kernel's mark lies between, whatever the
    // scheduler does to this process around the call.
    mark("closing");
    // SAFETY: fd belongs to the listener, which is only dropped after accept fails.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    mark("closed");
    if args.keep_alive {
        std::thread::sleep(Duration::from_millis(KEEP_ALIVE_UNREAD_MS));
    }
    mark("exit");
    // Held connections are reset by the exit itself (unread data → TCP_ABORT_ON_CLOSE).
    std::process::exit(0);
}

/// Forks a child that answers `s` and exits; the parent closes its copy at once.
fn serve_in_child(s: TcpStream, listener: RawFd) {
    // SAFETY: the child of a multi-threaded process may only make async-signal-safe calls:
    // it reads and writes on its own stack and makes raw system calls, then `_exit`s.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: the listener copy is this process's own; closing it leaves the parent's.
            unsafe { libc::close(listener) };
            answer_raw(s.as_raw_fd());
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(0) }
        }
        // No child: answer here rather than drop the client.
        -1 => answer_raw(s.as_raw_fd()),
        _ => {}
    }
}

/// Reads a request up to its blank line (so nothing unread makes the close a reset), writes
/// [`RESPONSE`] and closes; system calls only (see [`serve_in_child`]).
fn answer_raw(fd: RawFd) {
    let mut buf = [0u8; 2048];
    let mut len = 0;
    while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        // SAFETY: reads into the unused tail of a stack buffer.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n <= 0 {
            break;
        }
        len += n.unsigned_abs();
    }
    // SAFETY: writes a static buffer to an open socket.
    unsafe { libc::write(fd, RESPONSE.as_ptr().cast(), RESPONSE.len()) };
}

/// Answers each request of a keep-alive connection until `stopping`, then holds the
/// connection unread until the process exits. Reads time out every few milliseconds so the
/// flag is seen: a request read before is answered, any later one stays in the socket.
fn serve_keep_alive(mut s: TcpStream, stopping: &AtomicBool) {
    if s.set_read_timeout(Some(Duration::from_millis(5))).is_err() {
        return;
    }
    let mut pending = Vec::new();
    let mut chunk = [0u8; 2048];
    while !stopping.load(Ordering::SeqCst) {
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                pending.extend_from_slice(&chunk[..n]);
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending.drain(..end + 4);
                    if s.write_all(KEEP_ALIVE_RESPONSE).is_err() {
                        return;
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
    loop {
        std::thread::park();
    }
}
