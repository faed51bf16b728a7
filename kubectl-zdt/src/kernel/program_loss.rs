//! Per-program counts the kernel keeps of events no observation carries (the programs the
//! kernel skipped, `KERNEL_SKIPPED`; the events a handler failed on, `HANDLER_ERROR`), turned
//! into `loss` lines: one per program whose count grew since the last report, with how much.

use std::collections::HashMap;

use jiff::Timestamp;

use crate::observation::{Kind, NodeName, Observation, Time};

/// What was reported of one kind of per-program count.
#[derive(Debug)]
pub struct ProgramLoss {
    reason: &'static str,
    reported: HashMap<String, u64>,
    since: Timestamp,
}

impl ProgramLoss {
    pub fn new(reason: &'static str) -> Self {
        Self {
            reason,
            reported: HashMap::new(),
            since: Timestamp::now(),
        }
    }

    /// One `loss` line (with `program` and `since`) per program of `totals` (the counts read
    /// now, since the programs were loaded) past what was reported.
    pub fn lines(
        &mut self,
        totals: &[(String, u64)],
        now: Timestamp,
        node: &NodeName,
    ) -> Vec<Observation> {
        let since = std::mem::replace(&mut self.since, now);
        let mut out = Vec::new();
        for (program, total) in totals {
            let reported = self.reported.entry(program.clone()).or_insert(0);
            if *total <= *reported {
                continue;
            }
            let mut loss = Observation::new(Kind::Loss, now, node.clone());
            loss.count = Some(total - *reported);
            loss.reason = Some(self.reason.to_owned());
            *reported = *total;
            let l = loss.details.loss_mut();
            l.program = Some(program.clone());
            l.since = Some(Time(since));
            out.push(loss);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_growth_is_reported_once_per_program() {
        let node = NodeName("n".into());
        let mut loss = ProgramLoss::new(crate::observation::HANDLER_ERROR);
        let t0 = Timestamp::now();
        let read = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
            v.iter().map(|(p, n)| ((*p).to_owned(), *n)).collect()
        };
        assert!(
            loss.lines(&read(&[("tcp_send_reset", 0)]), t0, &node)
                .is_empty()
        );
        let lines = loss.lines(
            &read(&[("tcp_send_reset", 3), ("inet_sock_set_state", 1)]),
            t0,
            &node,
        );
        let counts: Vec<_> = lines
            .iter()
            .map(|o| {
                (
                    o.details.loss().program.as_deref().unwrap(),
                    o.count,
                    o.reason.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            counts,
            [
                ("tcp_send_reset", Some(3), Some("HANDLER_ERROR")),
                ("inet_sock_set_state", Some(1), Some("HANDLER_ERROR")),
            ]
        );
        let lines = loss.lines(
            &read(&[("tcp_send_reset", 5), ("inet_sock_set_state", 1)]),
            t0,
            &node,
        );
        assert_eq!(lines.len(), 1);
        assert_eq!(
            lines[0].count,
            Some(2),
            "only what grew since the last report"
        );
    }
}
