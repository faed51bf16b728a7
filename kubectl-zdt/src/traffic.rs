//! `kubectl-zdt traffic`: the in-cluster request loop `trace --traffic` runs in a pod during a
//! rollout — the classic "count the non-200s while redeploying" test. One new connection per
//! request (a keep-alive connection would hide refused SYNs), at a fixed rate, to the
//! Service's ClusterIP. Writes the client log format `correlate::client_log` reads: one
//! `{"time_ns": N, "error": "ECONNREFUSED"}` per failed request (N = when its SYN left) and
//! `{"ok": N}` every second with the good requests since the last one.

use std::{
    io::Write as _,
    net::SocketAddr,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::mpsc,
};

#[derive(Debug, Args)]
pub struct TrafficArgs {
    /// `host:port` of the Service: its ClusterIP and port (what `trace` passes, e.g.
    /// 10.96.0.12:80), or a name resolved once, at start.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: String,

    /// Requests per second, 1 to 10000.
    #[arg(long, default_value_t = 50, value_parser = rps_parser())]
    pub rps: u32,

    /// Give up on a connect or a response after this many milliseconds (reported as
    /// ETIMEDOUT).
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,

    /// HTTP path to GET.
    #[arg(long, default_value = "/")]
    pub path: String,
}

/// Requests per second the loop can pace (one tick per request, spawned on one runtime):
/// `trace --traffic` accepts exactly what the traffic pod's `--rps` accepts.
pub fn rps_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=10_000)
}

/// How one request ended: `None` is a 2xx/3xx answer, else the client log's error name.
///
/// The request says `Connection: close` and the whole response is read (to its
/// `Content-Length`, else to the server's FIN) before the socket is closed. Closing a socket
/// with unread data makes the kernel answer with a RST instead of a FIN (RFC 2525 2.17): every
/// request would end in a reset on the pod, and segments still in flight to the closed port
/// would come back as refused — errors of the instrument, not of the rollout.
pub async fn request(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Option<String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        let response = read_response(&mut stream).await?;
        // Everything the server sent is read: this close is a FIN, not a RST. The answer is
        // complete, so a failing shutdown changes nothing about it.
        let _ = stream.shutdown().await;
        Ok::<_, std::io::Error>(response)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Some("ETIMEDOUT".to_owned()),
        Ok(Ok(head)) => match head.get(9..12) {
            Some([b'2' | b'3', _, _]) => None,
            Some(code) => Some(format!("HTTP_{}", String::from_utf8_lossy(code))),
            None => Some("EOF_BEFORE_RESPONSE".to_owned()),
        },
        Ok(Err(e)) => Some(errno_name(&e)),
    }
}

/// Reads one response to its end: its `Content-Length` after the head, else up to the server's
/// FIN (`Connection: close`). Returns the head (status line and headers).
async fn read_response(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let mut body_left: Option<usize> = None;
    loop {
        if body_left == Some(0) {
            return Ok(head);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(head);
        }
        match &mut body_left {
            Some(left) => *left = left.saturating_sub(n),
            None => {
                head.extend_from_slice(&buf[..n]);
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    let already = head.len() - (end + 4);
                    head.truncate(end + 4);
                    body_left = content_length(&head).map(|len| len.saturating_sub(already));
                    if body_left.is_none() {
                        // No length: the body ends at the server's FIN.
                        body_left = Some(usize::MAX);
                    }
                } else if head.len() > 64 * 1024 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "response head over 64 KiB",
                    ));
                }
            }
        }
    }
}

fn content_length(head: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(head).lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

fn errno_name(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "ECONNREFUSED".to_owned(),
        K::ConnectionReset => "ECONNRESET".to_owned(),
        K::ConnectionAborted => "ECONNABORTED".to_owned(),
        K::TimedOut => "ETIMEDOUT".to_owned(),
        K::HostUnreachable => "EHOSTUNREACH".to_owned(),
        K::NetworkUnreachable => "ENETUNREACH".to_owned(),
        K::UnexpectedEof => "EOF_BEFORE_RESPONSE".to_owned(),
        K::BrokenPipe => "EPIPE".to_owned(),
        _ => e
            .raw_os_error()
            .map(|n| format!("ERRNO_{n}"))
            .unwrap_or_else(|| e.kind().to_string()),
    }
}

async fn run(args: TrafficArgs) -> anyhow::Result<()> {
    let addr = tokio::net::lookup_host(&args.target)
        .await
        .with_context(|| format!("failed to resolve {}", args.target))?
        .next()
        .with_context(|| format!("{} has no address", args.target))?;
    let host = args.target.clone();
    let timeout = Duration::from_millis(args.timeout_ms);
    let ok = Arc::new(AtomicU64::new(0));
    let (lines, mut out) = mpsc::unbounded_channel::<String>();
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        while let Some(line) = out.blocking_recv() {
            writeln!(stdout, "{line}")?;
            stdout.flush()?;
        }
        Ok(())
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rps)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut report = tokio::time::interval(Duration::from_secs(1));
    let flush_ok = |ok: &AtomicU64, lines: &mpsc::UnboundedSender<String>| {
        let n = ok.swap(0, Ordering::Relaxed);
        let _ = lines.send(format!("{{\"ok\":{n}}}"));
    };
    let stop = crate::shutdown::termination();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = report.tick() => flush_ok(&ok, &lines),
            _ = tick.tick() => {
                let started = jiff::Timestamp::now().as_nanosecond();
                let (ok, lines, host, path) = (ok.clone(), lines.clone(), host.clone(), args.path.clone());
                tokio::spawn(async move {
                    match request(addr, &host, &path, timeout).await {
                        None => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(error) => {
                            let _ = lines.send(format!("{{\"time_ns\":{started},\"error\":\"{error}\"}}"));
                        }
                    }
                });
            }
        }
    }
    // Requests in flight get their timeout to finish.
    tokio::time::sleep(timeout).await;
    flush_ok(&ok, &lines);
    drop(lines);
    writer
        .await
        .context("writer task failed")?
        .context("failed to write to stdout")
}

pub fn main(args: TrafficArgs) -> anyhow::Result<ExitCode> {
    crate::cluster::runtime()?.block_on(run(args))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_refused_and_a_200_is_ok() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let t = Duration::from_millis(500);
        assert_eq!(
            request(closed, "x", "/", t).await.as_deref(),
            Some("ECONNREFUSED")
        );
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 200 OK\r\n\r\n",
                "HTTP/1.1 503 Service Unavailable\r\n\r\n",
            ] {
                let (mut s, _) = server.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        assert_eq!(request(addr, "x", "/", t).await, None);
        assert_eq!(
            request(addr, "x", "/", t).await.as_deref(),
            Some("HTTP_503")
        );
    }

    /// Serves `answer` once on loopback; `close_after` shuts the server's side after it (the
    /// body ends at the FIN). Returns how the server then saw the client leave: `Ok(0)` is a
    /// FIN, `Err(ECONNRESET)` the RST of a client closing with unread data.
    fn serve_once(
        answer: &'static str,
        close_after: bool,
    ) -> (SocketAddr, std::thread::JoinHandle<std::io::Result<usize>>) {
        use std::io::Read as _;
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = server.accept()?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            while !request.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf)?;
                assert!(n > 0, "client left before its request was complete");
                request.extend_from_slice(&buf[..n]);
            }
            assert!(
                String::from_utf8_lossy(&request).contains("Connection: close"),
                "{}",
                String::from_utf8_lossy(&request)
            );
            s.write_all(answer.as_bytes())?;
            if close_after {
                s.shutdown(std::net::Shutdown::Write)?;
            }
            s.read(&mut buf)
        });
        (addr, handle)
    }

    #[tokio::test]
    async fn the_client_reads_each_response_to_its_end_and_closes_with_a_fin_not_a_reset() {
        let t = Duration::from_secs(2);
        for (answer, close_after) in [
            // The body ends at Content-Length; the server keeps its side open.
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyz",
                false,
            ),
            // No length: the body ends at the server's FIN (busybox httpd, Connection: close).
            (
                "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>a page</html>",
                true,
            ),
        ] {
            let (addr, server) = serve_once(answer, close_after);
            assert_eq!(request(addr, "x", "/", t).await, None, "{answer}");
            let seen = tokio::task::spawn_blocking(move || server.join().unwrap())
                .await
                .unwrap();
            match seen {
                Ok(0) => {}
                other => panic!("the server saw {other:?} after {answer:?}, not a clean close"),
            }
        }
    }
}
