//! What the kernel side could not deliver, as `loss` lines: events the ring buffer had no room
//! for (one `RINGBUF_FULL` line, then one aggregated line per lost key so totals per pod stay
//! exact), events the kernel did not run a probe for (`KERNEL_SKIPPED`) and events a handler
//! failed on (`HANDLER_ERROR`).

use std::collections::HashMap;

use jiff::Timestamp;
use zdt_common::{CounterKey, maps};

use crate::kernel::{
    decode::{self, Decoder},
    loader::{Attached, KernelMaps},
    program_loss::ProgramLoss,
};
use crate::{
    dataplane::watcher::Trigger,
    observation::{HANDLER_ERROR, KERNEL_SKIPPED, Kind, NodeName, Observation, Time},
};

/// What was already reported of each count.
pub(super) struct LossReport {
    /// Per key, lost events already reported as aggregated observations.
    lost_reported: HashMap<CounterKey, u64>,
    lost_total_reported: u64,
    last_check: Timestamp,
    /// Per program, the kernel's skips (`recursion_misses`) already reported, and the last
    /// count read (kept for the final report, which comes after the programs are detached).
    skips: ProgramLoss,
    skips_read: Vec<(String, u64)>,
    /// Per program, the events its handler failed on already reported.
    handler_errors: ProgramLoss,
}

impl LossReport {
    pub fn new() -> Self {
        Self {
            lost_reported: HashMap::new(),
            lost_total_reported: 0,
            last_check: Timestamp::now(),
            skips: ProgramLoss::new(KERNEL_SKIPPED),
            skips_read: Vec::new(),
            handler_errors: ProgramLoss::new(HANDLER_ERROR),
        }
    }

    /// Reads the kernel's skips while the programs are attached (they go with the programs).
    pub fn read_kernel_skips(&mut self, attached: Option<&Attached>) {
        if let Some(a) = attached {
            self.skips_read = a.kernel_skips();
        }
    }

    /// One `loss` line (`KERNEL_SKIPPED`) per program the kernel did not run for some of its
    /// tracepoint's events since the last check, and one (`HANDLER_ERROR`) per program whose
    /// handler failed on some. Which events those were is unknown, so no aggregated lines
    /// follow: totals of that program's kinds may be short by `count`.
    pub fn program_lines(
        &mut self,
        attached: Option<&Attached>,
        maps: &KernelMaps,
        node: &NodeName,
        now: Timestamp,
    ) -> Vec<Observation> {
        self.read_kernel_skips(attached);
        let mut out = self.skips.lines(&self.skips_read, now, node);
        let failed = maps.handler_errors();
        out.extend(self.handler_errors.lines(&failed, now, node));
        out
    }

    /// When the ring buffer dropped events since the last check: one `loss` line and, per key,
    /// an aggregated line of the lost kind with `count`. A lost dataplane trigger is no line:
    /// the watcher is told to read the tables again (`Trigger::Lost`).
    pub fn ring_buffer_lines(
        &mut self,
        maps: &KernelMaps,
        decoder: &Decoder,
        triggers: Option<&std::sync::mpsc::Sender<Trigger>>,
        node: &NodeName,
        now: Timestamp,
    ) -> Vec<Observation> {
        let lost_total = maps.stat(maps::STAT_RINGBUF_LOST);
        let counters_full = maps.stat(maps::STAT_COUNTERS_FULL);
        if counters_full > 0 {
            tracing::warn!(
                "{counters_full} lost events could not be counted per pod: the lost-counter map is full"
            );
        }
        if lost_total == self.lost_total_reported {
            return Vec::new();
        }
        let window_start = self.last_check;
        self.last_check = now;
        let mut out = Vec::new();
        let mut loss = Observation::new(Kind::Loss, now, node.clone());
        loss.count = Some(lost_total - self.lost_total_reported);
        loss.reason = Some("RINGBUF_FULL".to_owned());
        loss.details.loss_mut().since = Some(Time(window_start));
        out.push(loss);
        self.lost_total_reported = lost_total;
        for (key, total) in KernelMaps::totals(&maps.lost) {
            let reported = self.lost_reported.entry(key).or_insert(0);
            if total <= *reported {
                continue;
            }
            let delta = total - *reported;
            *reported = total;
            if matches!(
                key.kind,
                zdt_common::kind::TABLE_REPLACE | zdt_common::kind::IPVS_CHANGE
            ) {
                // A lost trigger: the watcher reads the legacy tables and IPVS again, stamping
                // what changed with the window the loss happened in.
                if let Some(t) = triggers {
                    let _ = t.send(Trigger::Lost {
                        since: window_start,
                        now,
                    });
                }
                continue;
            }
            let Ok((kind, reason)) = decoder.classify(key.kind, key.reason) else {
                continue;
            };
            let mut o = Observation::new(kind, now, node.clone());
            o.ip = decode::ip_of(key.family, &key.addr).ok();
            o.port = Some(key.port);
            o.reason = reason;
            o.count = Some(delta);
            o.details.kernel_mut().lost_since = Some(Time(window_start));
            out.push(o);
        }
        out
    }
}
