//! The agent's HTTP endpoint, on the node's 127.0.0.1 only: the CLI reaches it through the API
//! server's port-forward, so Kubernetes RBAC (`pods/portforward` in the agent namespace)
//! decides who reads it and nothing listens on the pod network.
//!
//! - `GET /readyz`: 200 once the probes are attached (the DaemonSet's readiness probe);
//! - `GET /status`: [`AgentStatus`] as JSON;
//! - `GET /metrics`: the Prometheus metrics (docs/metrics.md);
//! - `GET /observations?from=N[&follow=true]`: the journal from sequence number N as JSON lines
//!   (header `x-zdt-first-seq`: the number of the first journal line sent); with `follow`, new
//!   lines as they come. A reader that asks for evicted lines first gets one `loss` line
//!   (`reason` [`JOURNAL_EVICTED`]) with their count, which is not a journal line.
//! - `GET /history?since=RFC3339&until=RFC3339[&namespace=NS][&pod=NS/NAME][&ip=IP][&workload=KIND/NAME]`:
//!   the disk journal's lines in that window, time-ordered, streamed (crate::journal::query
//!   says what each filter matches). Lines the journal could not read back (damaged blocks)
//!   end the answer as one `loss` line with `reason` [`JOURNAL_UNREADABLE`] and their count.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use super::backlog::Backlog;
use crate::kernel::clock::Clock;
use crate::{
    journal::HistoryQuery,
    observation::{Kind, NodeName, Observation},
};

/// `reason` of the `loss` line that stands for evicted journal lines.
pub const JOURNAL_EVICTED: &str = "JOURNAL_EVICTED";

/// `reason` of the `loss` line that stands for journal lines a history query could not read.
pub const JOURNAL_UNREADABLE: &str = "JOURNAL_UNREADABLE";

/// Lines of journal damage `/status` names (a journal with more says how many more).
pub const JOURNAL_DAMAGE_SHOWN: usize = 10;

/// Header carrying the sequence number of the first line of an `/observations` response.
pub const FIRST_SEQ_HEADER: &str = "x-zdt-first-seq";

/// What `GET /status` returns (and `kubectl zdt status` shows per node).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub node: NodeName,
    pub version: String,
    pub schema: String,
    pub kernel: String,
    /// `/sys/kernel/btf/vmlinux` present.
    pub btf: bool,
    /// Attached eBPF programs.
    pub probes: Vec<String>,
    /// Pod addresses the kernel filter currently reports.
    pub watched_addresses: u64,
    /// Pod network namespaces the kernel filter currently reports (their listeners and
    /// processes).
    #[serde(default)]
    pub watched_netns: u64,
    /// The kube-proxy mode detected in this node's dataplane (`iptables-nft`, `nftables`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane_mode: Option<String>,
    /// Pods on this node that exist now (tombstones of deleted ones are not counted).
    pub pods_known: u64,
    /// Whether the API watches are synced (cluster mode).
    pub api_synced: bool,
    /// Events the kernel could not deliver, summed over `loss` observations.
    pub kernel_loss: u64,
    /// The part of `kernel_loss` the kernel skipped the programs for (`KERNEL_SKIPPED`), not
    /// lost to a full ring buffer (0 from agents older than this field).
    #[serde(default)]
    pub kernel_skipped: u64,
    /// The part of `kernel_loss` a probe's handler failed on (`HANDLER_ERROR`; 0 from agents
    /// older than this field).
    #[serde(default)]
    pub kernel_failed: u64,
    /// Observations in the journal so far.
    pub observations: u64,
    /// Damage the disk journal's recovery found at start, one line each (at most
    /// [`JOURNAL_DAMAGE_SHOWN`], then how many more); the intact blocks around it are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub journal_damage: Vec<String>,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC on this node and the half-width of that measurement.
    pub mono_to_wall_offset_ns: i128,
    pub clock_uncertainty_ns: u64,
    /// The agent's wall clock when it answered (the CLI compares it with its own).
    #[serde(with = "time_rfc3339")]
    pub time: Timestamp,
}

mod time_rfc3339 {
    use jiff::Timestamp;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::observation::format_time(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Live counters the status page reads, updated by the parts of the agent that own them, and
/// the Prometheus metrics (`GET /metrics`) fed from the same observations as the journal.
#[derive(Default, Debug)]
pub struct Gauges {
    pub ready: AtomicBool,
    pub api_synced: AtomicBool,
    pub watched_addresses: AtomicU64,
    pub watched_netns: AtomicU64,
    pub pods_known: AtomicU64,
    pub metrics: super::metrics::Metrics,
}

impl Gauges {
    /// The damage the disk journal's recovery found, into the metrics.
    pub fn journal_opened(&self, disk: &crate::journal::Shared) {
        self.metrics.set_journal_damage(
            disk.damage()
                .into_iter()
                .map(|(stream, kind, _)| (stream, kind)),
        );
    }

    /// `GET /metrics`: the OpenMetrics text.
    pub fn metrics_response(&self) -> Response<Body> {
        let text = self
            .metrics
            .scrape(Timestamp::now(), self.api_synced.load(Ordering::Relaxed));
        Response::builder()
            .header("content-type", super::metrics::CONTENT_TYPE)
            .body(Full::new(Bytes::from(text)).boxed())
            .unwrap_or_default()
    }
}

/// Serves HTTP/1 on `listener` with `handle` until the listener fails or the task is dropped.
pub async fn serve_http<F>(listener: TcpListener, handle: F)
where
    F: Fn(&Request<hyper::body::Incoming>) -> Response<Body> + Clone + Send + Sync + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("accepting a connection on the agent's endpoint failed: {e}");
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = handle(&req);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("agent endpoint connection ended: {e}");
            }
        });
    }
}

/// Only `GET /metrics`: what `--metrics-listen` serves (possibly beyond the loopback, so
/// nothing else).
pub async fn serve_metrics(listener: TcpListener, gauges: Arc<Gauges>) {
    serve_http(listener, move |req: &Request<hyper::body::Incoming>| {
        if req.uri().path() == "/metrics" {
            gauges.metrics_response()
        } else {
            text(StatusCode::NOT_FOUND, "not found: try /metrics\n")
        }
    })
    .await;
}

/// The agent's HTTP endpoint (status, stream, history, metrics): everything it serves from.
#[derive(Clone)]
pub struct AgentServer {
    pub node: NodeName,
    pub journal: Arc<Backlog>,
    pub gauges: Arc<Gauges>,
}

type Body = BoxBody<Bytes, Infallible>;

impl AgentServer {
    pub fn status(&self) -> AgentStatus {
        let hello = self.journal.hello();
        let agent = hello.as_ref().map(|h| h.details.agent());
        let clock = Clock::measure();
        AgentStatus {
            node: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            schema: crate::observation::SCHEMA_VERSION.to_owned(),
            kernel: agent
                .and_then(|a| a.kernel.clone())
                .unwrap_or_else(kernel_release),
            btf: std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
            probes: agent.and_then(|a| a.probes.clone()).unwrap_or_default(),
            watched_addresses: self.gauges.watched_addresses.load(Ordering::Relaxed),
            watched_netns: self.gauges.watched_netns.load(Ordering::Relaxed),
            dataplane_mode: self.journal.dataplane_mode(),
            pods_known: self.gauges.pods_known.load(Ordering::Relaxed),
            api_synced: self.gauges.api_synced.load(Ordering::Relaxed),
            kernel_loss: self.journal.kernel_loss(),
            kernel_skipped: self.journal.kernel_skipped(),
            kernel_failed: self.journal.kernel_failed(),
            observations: self.journal.next_seq(),
            journal_damage: self.journal_damage(),
            mono_to_wall_offset_ns: clock.offset_ns,
            clock_uncertainty_ns: clock.uncertainty_ns,
            time: Timestamp::now(),
        }
    }

    fn journal_damage(&self) -> Vec<String> {
        let Some(disk) = self.journal.disk() else {
            return Vec::new();
        };
        let damage = disk.damage();
        let mut lines: Vec<String> = damage
            .iter()
            .take(JOURNAL_DAMAGE_SHOWN)
            .map(|(stream, _, text)| format!("{stream}: {text}"))
            .collect();
        if damage.len() > JOURNAL_DAMAGE_SHOWN {
            lines.push(format!(
                "… and {} more (the agent's log names each)",
                damage.len() - JOURNAL_DAMAGE_SHOWN
            ));
        }
        lines
    }

    /// Serves until the listener fails or the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        serve_http(listener, move |req: &Request<hyper::body::Incoming>| {
            self.handle(req)
        })
        .await;
    }

    fn handle<B>(&self, req: &Request<B>) -> Response<Body> {
        let query = req.uri().query().unwrap_or_default();
        let param = |name: &str| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_owned())
        };
        match req.uri().path() {
            "/readyz" if self.gauges.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ok\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "probes not attached yet\n"),
            "/status" => Response::builder()
                .header("content-type", "application/json")
                .body(
                    Full::new(Bytes::from(
                        serde_json::to_vec(&self.status()).unwrap_or_default(),
                    ))
                    .boxed(),
                )
                .unwrap_or_default(),
            "/metrics" => self.gauges.metrics_response(),
            "/observations" => {
                let from = param("from").and_then(|v| v.parse().ok()).unwrap_or(0);
                let follow = param("follow").as_deref() == Some("true");
                self.observations(from, follow)
            }
            "/history" => self.history(query),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /status, /observations, /history, /metrics, /readyz\n",
            ),
        }
    }

    /// `GET /history`: the query runs on a blocking thread and streams chunks of lines.
    fn history(&self, query: &str) -> Response<Body> {
        let Some(disk) = self.journal.disk().cloned() else {
            return text(
                StatusCode::NOT_FOUND,
                "this agent keeps no journal: it runs without --journal-dir (see `kubectl zdt install`)\n",
            );
        };
        let query = match HistoryQuery::from_query_string(query) {
            Ok(q) => q,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        let node = self.node.clone();
        let gauges = self.gauges.clone();
        // Flushing the buffer and taking the block list is quick; reading the blocks is not.
        let reader = disk.lock().query(&query);
        let mut reader = match reader {
            Ok(r) => r,
            Err(e) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the journal could not be read: {e}\n"),
                );
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        tokio::task::spawn_blocking(move || {
            while let Some(chunk) = reader.next_chunk(64 << 10) {
                if tx.blocking_send(Bytes::from(chunk)).is_err() {
                    return;
                }
            }
            if reader.unreadable_records > 0 {
                tracing::warn!(
                    "history: unreadable journal blocks: {:?}",
                    reader.unreadable
                );
                gauges
                    .metrics
                    .journal_unreadable(reader.unreadable.len() as u64);
                let mut loss = Observation::new(Kind::Loss, Timestamp::now(), node);
                loss.count = Some(reader.unreadable_records);
                loss.reason = Some(JOURNAL_UNREADABLE.to_owned());
                let _ = tx.blocking_send(Bytes::from(loss.to_json_line() + "\n"));
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        Response::builder()
            .header("content-type", "application/x-ndjson")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap_or_default()
    }

    fn observations(&self, from: u64, follow: bool) -> Response<Body> {
        let journal = self.journal.clone();
        let node = self.node.clone();
        // The number of the first journal line sent (after the JOURNAL_EVICTED line, if any).
        let header = self.journal.read(from, 0).first;
        let stream = futures::stream::unfold(Some(from), move |next| {
            let journal = journal.clone();
            let node = node.clone();
            async move {
                let next = next?;
                let mut read = journal.read(next, 4096);
                if read.lines.is_empty() && read.evicted == 0 {
                    if !follow {
                        return None;
                    }
                    journal.wait_for(next).await;
                    read = journal.read(next, 4096);
                }
                let mut chunk = String::new();
                if read.evicted > 0 {
                    let mut loss = Observation::new(Kind::Loss, Timestamp::now(), node);
                    loss.count = Some(read.evicted);
                    loss.reason = Some(JOURNAL_EVICTED.to_owned());
                    chunk.push_str(&loss.to_json_line());
                    chunk.push('\n');
                }
                for line in &read.lines {
                    chunk.push_str(line);
                    chunk.push('\n');
                }
                let after = read.first + read.lines.len() as u64;
                Some((Bytes::from(chunk), Some(after)))
            }
        })
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
        Response::builder()
            .header("content-type", "application/x-ndjson")
            .header(FIRST_SEQ_HEADER, header.to_string())
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap_or_default()
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}
