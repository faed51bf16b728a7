//! The agent's backlog, in memory: every observation it emitted, numbered, so a reader that
//! reconnects (a port-forward that broke, a CLI restarted) resumes exactly where it stopped.
//! Bounded: when full the oldest lines go, and a reader asking for them is told how many it
//! missed instead of silently skipping them.
//!
//! With a disk journal attached ([`Backlog::attach_disk`], `--journal-dir`), every line pushed
//! here is also appended there (crate::journal), which outlives the process and serves
//! `GET /history`.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, OnceLock},
};

use tokio::sync::Notify;

use crate::observation::{Kind, Observation};

/// Lines kept (an observation line is ~200 bytes: ~100 MB at most).
pub const CAPACITY: usize = 500_000;

/// Numbered observation lines shared by the producers and the HTTP readers.
#[derive(Default)]
pub struct Backlog {
    inner: Mutex<Inner>,
    grew: Notify,
    disk: OnceLock<Arc<crate::journal::Shared>>,
}

#[derive(Default)]
struct Inner {
    /// Sequence number of `lines[0]`.
    first: u64,
    lines: VecDeque<Arc<str>>,
    capacity: usize,
    hello: Option<Observation>,
    /// Sum of `count` over `loss` observations (events the kernel could not deliver).
    kernel_loss: u64,
    /// The part of `kernel_loss` the kernel skipped the programs for (`KERNEL_SKIPPED`: a
    /// softirq while another tracing program ran on that CPU), not lost to a full ring buffer.
    kernel_skipped: u64,
    /// The part of `kernel_loss` a probe's handler failed on (`HANDLER_ERROR`).
    kernel_failed: u64,
    /// `mode` of the latest `dataplane_mode` observation.
    dataplane_mode: Option<String>,
}

/// What a read returned.
#[derive(Debug)]
pub struct Read {
    /// Sequence number of `lines[0]`.
    pub first: u64,
    /// Lines that were asked for but already evicted.
    pub evicted: u64,
    pub lines: Vec<Arc<str>>,
}

impl Backlog {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                capacity: capacity.max(1),
                ..Inner::default()
            }),
            grew: Notify::new(),
            disk: OnceLock::new(),
        })
    }

    /// From now on every pushed line is also appended to `disk`. A second call is ignored.
    pub fn attach_disk(&self, disk: Arc<crate::journal::Shared>) {
        let _ = self.disk.set(disk);
    }

    /// The disk journal, when one is attached.
    pub fn disk(&self) -> Option<&Arc<crate::journal::Shared>> {
        self.disk.get()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, o: &Observation) {
        let line: Arc<str> = o.to_json_line().into();
        if let Some(disk) = self.disk.get() {
            disk.append_line(o, &line);
        }
        {
            let mut inner = self.lock();
            match o.kind {
                Kind::AgentStart if inner.hello.is_none() => inner.hello = Some(o.clone()),
                Kind::Loss => {
                    inner.kernel_loss += o.weight();
                    match o.reason.as_deref() {
                        Some(crate::observation::KERNEL_SKIPPED) => {
                            inner.kernel_skipped += o.weight();
                        }
                        Some(crate::observation::HANDLER_ERROR) => {
                            inner.kernel_failed += o.weight();
                        }
                        _ => {}
                    }
                }
                Kind::DataplaneMode => {
                    inner.dataplane_mode = o.details.dataplane().mode.clone();
                }
                _ => {}
            }
            inner.lines.push_back(line);
            if inner.lines.len() > inner.capacity {
                inner.lines.pop_front();
                inner.first += 1;
            }
        }
        self.grew.notify_waiters();
    }

    /// Up to `max` lines from sequence number `from`.
    pub fn read(&self, from: u64, max: usize) -> Read {
        let inner = self.lock();
        let evicted = inner.first.saturating_sub(from);
        let start = from.max(inner.first);
        let skip = usize::try_from(start - inner.first).unwrap_or(usize::MAX);
        Read {
            first: start,
            evicted,
            lines: inner.lines.iter().skip(skip).take(max).cloned().collect(),
        }
    }

    /// The sequence number the next line will get.
    pub fn next_seq(&self) -> u64 {
        let inner = self.lock();
        inner.first + inner.lines.len() as u64
    }

    /// Waits until a line with a number ≥ `seq` exists.
    pub async fn wait_for(&self, seq: u64) {
        loop {
            let notified = self.grew.notified();
            if self.next_seq() > seq {
                return;
            }
            notified.await;
        }
    }

    pub fn hello(&self) -> Option<Observation> {
        self.lock().hello.clone()
    }

    pub fn kernel_loss(&self) -> u64 {
        self.lock().kernel_loss
    }

    /// The part of [`Self::kernel_loss`] the kernel skipped the programs for.
    pub fn kernel_skipped(&self) -> u64 {
        self.lock().kernel_skipped
    }

    /// The part of [`Self::kernel_loss`] a probe's handler failed on.
    pub fn kernel_failed(&self) -> u64 {
        self.lock().kernel_failed
    }

    /// The dataplane mode the agent detected, once reported.
    pub fn dataplane_mode(&self) -> Option<String> {
        self.lock().dataplane_mode.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observation::NodeName;

    fn obs(kind: Kind) -> Observation {
        Observation::new(kind, jiff::Timestamp::UNIX_EPOCH, NodeName("n".into()))
    }

    #[test]
    fn a_reader_resuming_after_eviction_is_told_how_many_lines_it_missed() {
        let j = Backlog::new(3);
        for _ in 0..5 {
            j.push(&obs(Kind::Refused));
        }
        let r = j.read(1, 10);
        assert_eq!((r.first, r.evicted, r.lines.len()), (2, 1, 3));
        let r = j.read(4, 10);
        assert_eq!((r.first, r.evicted, r.lines.len()), (4, 0, 1));
        assert_eq!(j.next_seq(), 5);
    }

    #[test]
    fn loss_counts_add_up_and_the_first_agent_start_is_kept() {
        let j = Backlog::new(10);
        let mut first = obs(Kind::AgentStart);
        first.reason = Some("first".into());
        j.push(&first);
        j.push(&obs(Kind::AgentStart));
        let mut loss = obs(Kind::Loss);
        loss.count = Some(7);
        j.push(&loss);
        j.push(&obs(Kind::Loss));
        let mut skipped = obs(Kind::Loss);
        skipped.count = Some(3);
        skipped.reason = Some(crate::observation::KERNEL_SKIPPED.into());
        j.push(&skipped);
        let mut failed = obs(Kind::Loss);
        failed.count = Some(2);
        failed.reason = Some(crate::observation::HANDLER_ERROR.into());
        j.push(&failed);
        assert_eq!(
            (j.kernel_loss(), j.kernel_skipped(), j.kernel_failed()),
            (13, 3, 2)
        );
        assert_eq!(j.hello().unwrap().reason.as_deref(), Some("first"));
    }
}
