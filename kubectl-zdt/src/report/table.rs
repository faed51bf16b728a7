//! `-o table` and `-o wide`: kubectl-style columns per rollout, the reasons, the chart, the
//! advice and the warnings.

use std::fmt::Write as _;

use comfy_table::{CellAlignment, ContentArrangement, Table, presets::NOTHING};

use super::{chart, rows};
use crate::correlate::{Report, Verdict};

/// The terminal width the default output keeps to (kubectl's tables assume no more).
const WIDTH: usize = 120;

/// `text` after `indent`, wrapped at word boundaries to [`WIDTH`] columns; continuation lines
/// are indented two more. A word longer than the line (a command to copy) stays whole.
fn wrapped(indent: &str, text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from(indent);
    let mut fresh = true;
    for word in text.split(' ') {
        let len = line.chars().count();
        if !fresh && len + 1 + word.chars().count() > WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            line = format!("{indent}  ");
            fresh = true;
        }
        if !fresh {
            line.push(' ');
        }
        line.push_str(word);
        fresh = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

/// Columns that hold numbers, right-aligned.
fn numeric(header: &str) -> bool {
    matches!(
        header,
        "PROPAGATION"
            | "GAP"
            | "EP TERM"
            | "SIGTERM"
            | "LISTEN CLOSED"
            | "EXIT"
            | "NETNS GONE"
            | "REFUSED"
            | "RESET AT EXIT"
            | "TIMEOUT"
            | "OTHER"
            | "NODES REMOVED"
            | "STARTUP GAP"
            | "REFUSED BEFORE LISTENING"
            | "AFTER READY"
            | "POD READY"
            | "FIRST ROUTED"
            | "LISTENING"
            | "BEFORE LISTENING"
            | "AFTER REMOVAL"
    )
}

/// A kubectl-style table without borders, numbers right-aligned.
fn columns(out: &mut String, headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let mut t = Table::new();
    t.load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.to_vec());
    for row in rows {
        // Names and reasons come from the data: no control character reaches the terminal.
        t.add_row(row.iter().map(|c| super::escape_terminal(c).into_owned()));
    }
    for (i, h) in headers.iter().enumerate() {
        if numeric(h)
            && let Some(c) = t.column_mut(i)
        {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    for line in t.lines() {
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// Each pod's verdict and why, one wrapped line each: the safe ones only in `-o wide`.
fn verdict_lines<'a>(
    out: &mut String,
    wide: bool,
    pods: impl Iterator<Item = (String, Verdict, &'a String)>,
) {
    for (label, verdict, reason) in pods.filter(|(_, v, _)| wide || *v != Verdict::Safe) {
        out.push_str(&wrapped(
            "  ",
            &format!("{label} {}: {reason}", verdict.as_str()),
        ));
    }
}

pub(crate) fn render(report: &Report, wide: bool) -> String {
    let mut out = String::new();
    if report.rollouts.is_empty() {
        out.push_str("No terminating pod and no error in the input: nothing to correlate.\n");
    }
    for r in &report.rollouts {
        let _ = writeln!(
            out,
            "ROLLOUT {}  {}  {:.0} ms  {}",
            rows::rollout_title(r),
            crate::observation::format_time(r.start),
            r.duration_ms,
            r.verdict.as_str().to_uppercase()
        );
        out.push_str(&wrapped("  ", &r.reason));
        if !r.pods.is_empty() {
            let rows = r.pods.iter().map(|p| rows::pod_row(p, wide));
            columns(&mut out, &rows::headers(wide), rows);
        }
        verdict_lines(
            &mut out,
            wide,
            r.pods
                .iter()
                .map(|p| (rows::pod_label(p), p.verdict, &p.reason)),
        );
        if !r.startup.is_empty() {
            let rows = r.startup.iter().map(|s| rows::startup_row(s, wide));
            columns(&mut out, &rows::startup_headers(wide), rows);
        }
        verdict_lines(
            &mut out,
            wide,
            r.startup
                .iter()
                .map(|s| (rows::startup_label(s), s.verdict, &s.reason)),
        );
        if !r.clients.is_empty() {
            columns(
                &mut out,
                &rows::client_headers(),
                r.clients.iter().map(rows::client_row),
            );
            for c in r.clients.iter().filter(|c| !c.reason.is_empty()) {
                out.push_str(&wrapped("  ", &c.reason));
            }
        }
        if r.unattributed_errors > 0 {
            let _ = writeln!(
                out,
                "  {} client errors on the Service fit no single pod",
                r.unattributed_errors
            );
        }
        out.push('\n');
        out.push_str(&chart::render(r, if wide { 100 } else { 58 }));
        out.push('\n');
    }
    let advice = rows::advice_lines(report);
    if !advice.is_empty() {
        out.push_str("ADVICE\n");
        for l in advice {
            // A command is copied whole: never wrapped.
            if l.starts_with("kubectl ") {
                let _ = writeln!(out, "  {l}");
            } else {
                out.push_str(&wrapped("  ", &l));
            }
        }
    }
    if !report.warnings.is_empty() {
        out.push_str("WARNINGS\n");
        for w in &report.warnings {
            out.push_str(&wrapped("  ", w));
        }
    }
    if wide {
        out.push_str("NODES\n");
        for n in &report.nodes {
            let _ = writeln!(
                out,
                "  {}  {} observations  clock ±{} ms  {} lost",
                n.node, n.observations, n.clock_uncertainty_ms, n.lost_events
            );
        }
    }
    if !report.input.rejected_lines.is_empty() {
        let _ = writeln!(
            out,
            "INPUT: {} lines could not be read (see stderr)",
            report.input.rejected_lines.len()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prose_wraps_at_120_columns_and_a_long_command_stays_whole() {
        let text = "word ".repeat(60);
        let out = wrapped("  ", text.trim_end());
        assert!(out.lines().count() > 2, "{out}");
        assert!(out.lines().all(|l| l.chars().count() <= WIDTH), "{out}");
        assert!(out.lines().skip(1).all(|l| l.starts_with("    word")));
        let command = format!("kubectl patch -p '{}'", "x".repeat(200));
        let out = wrapped("  ", &command);
        assert!(out.contains(&"x".repeat(200)));
    }

    /// A client whose only errors have no known cause (a reset a pod's listener sent, timeouts
    /// to a live pod) shows them, as the pods' table does, not a row of zeros.
    #[test]
    fn a_clients_errors_of_no_known_cause_are_in_its_other_column() {
        let c = crate::correlate::ClientReport {
            client: "address 198.18.0.1".into(),
            path: crate::correlate::clients::Path::Service,
            errors: crate::correlate::ErrorCounts {
                unrelated: 2,
                undetermined: 1,
                ..Default::default()
            },
            after_endpoint_removed_ms: None,
            pod: None,
            reason: String::new(),
        };
        let mut out = String::new();
        columns(
            &mut out,
            &rows::client_headers(),
            std::iter::once(rows::client_row(&c)),
        );
        let (head, row) = out.split_once('\n').unwrap();
        let cells: Vec<&str> = row
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        let at = |name: &str| {
            let names: Vec<&str> = head
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            names.iter().position(|n| *n == name).unwrap()
        };
        assert_eq!(cells[at("OTHER")], "3", "{out}");
        assert_eq!(cells[at("TIMEOUT")], "0", "{out}");
    }
}
