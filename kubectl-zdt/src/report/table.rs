//! `-o table` and `-o wide`: kubectl-style columns per rollout, the reasons, the chart, the
//! advice and the warnings.

use std::fmt::Write as _;

use comfy_table::{CellAlignment, ContentArrangement, Table, presets::NOTHING};

use super::{chart, rows};
use crate::correlate::{Report, Verdict};

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
            | "REFUSED IN WINDOW"
            | "RESET AT EXIT"
            | "TIMEOUT"
            | "OTHER"
            | "NODES REMOVED"
    )
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
        let _ = writeln!(out, "  {}", r.reason);
        let headers = rows::headers(wide);
        let mut t = Table::new();
        t.load_style(NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(headers.clone());
        for p in &r.pods {
            t.add_row(rows::pod_row(p, wide));
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
        for p in r.pods.iter().filter(|p| wide || p.verdict != Verdict::Safe) {
            let _ = writeln!(
                out,
                "  {} {}: {}",
                rows::pod_label(p),
                p.verdict.as_str(),
                p.reason
            );
        }
        if r.unattributed_errors > 0 {
            let _ = writeln!(
                out,
                "  {} client errors on the Service fit no single pod",
                r.unattributed_errors
            );
        }
        out.push('\n');
        out.push_str(&chart::render(r, if wide { 100 } else { 64 }));
        out.push('\n');
    }
    let advice = rows::advice_lines(report);
    if !advice.is_empty() {
        out.push_str("ADVICE\n");
        for l in advice {
            let _ = writeln!(out, "  {l}");
        }
    }
    if !report.warnings.is_empty() {
        out.push_str("WARNINGS\n");
        for w in &report.warnings {
            let _ = writeln!(out, "  {w}");
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
