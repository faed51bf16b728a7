//! `kubectl-zdt sample-app`: the HTTP server the e2e harness deploys (from the same image, so a
//! cluster needs no other image). Two behaviours on SIGTERM, the two cases the race is about:
//! `--on-sigterm exit` stops at once (the classic failing app: listener closed while nodes
//! still route to it); `--on-sigterm drain` stops accepting only after `--drain-ms`, finishing
//! what is in flight, then exits (paired with a preStop, zero downtime). `--sleep N` only
//! sleeps: the preStop hook on servers before Kubernetes 1.30 (no `preStop.sleep`), since the
//! image holds nothing but this binary (no `sleep`).

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnSigterm {
    Exit,
    Drain,
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Port to serve on (all addresses).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// What to do on SIGTERM.
    #[arg(long, value_enum, default_value_t = OnSigterm::Exit)]
    pub on_sigterm: OnSigterm,

    /// With `drain`: keep serving this long after SIGTERM before closing the listener.
    #[arg(long, default_value_t = 2000)]
    pub drain_ms: u64,

    /// Serve nothing: sleep this many seconds and exit (a preStop `exec` for servers without
    /// the preStop sleep action).
    #[arg(long, value_name = "SECONDS")]
    pub sleep: Option<u64>,
}

/// Answers a request. A connection closed without one (the kubelet's tcpSocket probe: connect,
/// close) gets nothing: a response written after the peer's FIN reaches a socket its owner
/// is closing, whose kernel resets it, a reset of the app's own making on every probe.
async fn answer(mut stream: tokio::net::TcpStream) {
    let mut buf = [0u8; 1024];
    if stream.read(&mut buf).await.is_ok_and(|n| n > 0) {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            .await;
    }
}

async fn run(args: SampleArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", args.port))
        .await
        .with_context(|| format!("failed to listen on port {}", args.port))?;
    let stop = crate::process::termination();
    tokio::pin!(stop);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        tokio::select! {
            () = &mut stop, if deadline.is_none() => match args.on_sigterm {
                OnSigterm::Exit => return Ok(()),
                OnSigterm::Drain => deadline = Some(Box::pin(tokio::time::sleep(Duration::from_millis(args.drain_ms)))),
            },
            () = async { deadline.as_mut().expect("guarded").await }, if deadline.is_some() => break,
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("accept failed")?;
                in_flight.spawn(answer(stream));
            }
        }
    }
    drop(listener);
    while in_flight.join_next().await.is_some() {}
    Ok(())
}

pub fn main(args: SampleArgs) -> anyhow::Result<ExitCode> {
    if let Some(seconds) = args.sleep {
        std::thread::sleep(Duration::from_secs(seconds));
        return Ok(ExitCode::SUCCESS);
    }
    crate::process::runtime()?.block_on(run(args))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// What the app writes back to a connection that sends `request`, then shuts its side.
    async fn exchange(request: &[u8]) -> Vec<u8> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            super::answer(stream).await;
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        server.await.unwrap();
        got
    }

    #[tokio::test]
    async fn a_request_is_answered_and_a_bare_connect_gets_nothing() {
        let answer = exchange(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await;
        assert!(answer.starts_with(b"HTTP/1.1 200 OK"), "{answer:?}");
        assert_eq!(exchange(b"").await, b"", "a tcpSocket probe's connect");
    }
}
