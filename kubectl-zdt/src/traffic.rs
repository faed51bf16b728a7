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
    /// `host:port` of the Service, e.g. web.default.svc:80 (resolved once, at start).
    #[arg(long, value_name = "HOST:PORT")]
    pub target: String,

    /// Requests per second.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rps: u32,

    /// Give up on a connect or a response after this many milliseconds (reported as
    /// ETIMEDOUT).
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,

    /// HTTP path to GET.
    #[arg(long, default_value = "/")]
    pub path: String,
}

/// How one request ended: `None` is a 2xx/3xx answer, else the client log's error name.
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
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Some("ETIMEDOUT".to_owned()),
        Ok(Ok(head)) => match &head[9..10] {
            b"2" | b"3" => None,
            _ => Some(format!("HTTP_{}", String::from_utf8_lossy(&head[9..12]))),
        },
        Ok(Err(e)) => Some(errno_name(&e)),
    }
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
    let stop = crate::agent::cluster::termination();
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
}
