//! `--html FILE`: one self-contained page (inline CSS and SVG, no script, no network) with the
//! timeline chart of each rollout and the same tables as `-o wide`, viewable offline.

use std::fmt::Write as _;

use super::{axis::Axis, rows};
use crate::{
    correlate::{
        Capacity, CapacityStep, Cause, ErrorMark, Mark, PodReport, Report, Rollout, StartupReport,
        Verdict, Window,
    },
    observation::format_time,
};

const CHART_W: f64 = 1000.0;
const LABEL_W: f64 = 230.0;
const ROW_H: f64 = 58.0;
const TOP: f64 = 34.0;

/// Text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn verdict_class(v: Verdict) -> &'static str {
    match v {
        Verdict::Safe => "safe",
        Verdict::Inconclusive => "inconclusive",
        Verdict::Unsafe => "unsafe",
    }
}

fn cause_color(c: Cause) -> &'static str {
    match c {
        Cause::UnsafeWindow => "#d62728",
        Cause::AtExit => "#ff7f0e",
        Cause::AfterNetnsGone => "#9467bd",
        Cause::Unrelated | Cause::Undetermined => "#7f7f7f",
        Cause::Probe => "#bbbbbb",
        Cause::BeforeListening => "#e377c2",
        Cause::AfterReady => "#8c564b",
    }
}

/// A window as a bar from `x.0` to `x.1`, its length in the tooltip.
fn window_rect(out: &mut String, w: &Window, class: &str, what: &str, x: (f64, f64), y: f64) {
    let _ = write!(
        out,
        r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="14" class="{class}"><title>{what} {} ms</title></rect>"#,
        x.0,
        y + 5.0,
        (x.1 - x.0).max(1.5),
        w.duration_ms
    );
}

/// A row's label: the pod and, under it, its verdict and gap.
fn row_label(out: &mut String, label: &str, verdict: Verdict, sub: &str, y: f64) {
    let _ = write!(
        out,
        r#"<text x="4" y="{:.1}" class="label">{}</text><text x="4" y="{:.1}" class="sub {}">{}</text>"#,
        y + 14.0,
        esc(label),
        y + 28.0,
        verdict_class(verdict),
        esc(sub)
    );
}

fn pod_svg(out: &mut String, p: &PodReport, axis: &Axis, y: f64) {
    let x = |t| LABEL_W + axis.fraction(t) * CHART_W;
    let sub = format!(
        "{} · gap {}",
        p.verdict.as_str(),
        rows::ms_cell(p.gap_ms, p.gap_basis, p.gap_uncertainty_ms)
    );
    row_label(out, &rows::pod_label(p), p.verdict, &sub, y);
    let marks = [
        ("D", &p.marks.delete),
        ("T", &p.marks.ep_terminating),
        ("R", &p.marks.ep_removed),
        ("P", &p.marks.prestop),
        ("S", &p.marks.sigterm),
        ("X", &p.marks.exit),
        ("N", &p.marks.netns_gone),
        ("L", &p.marks.listen_closed),
    ];
    let times: Vec<_> = marks
        .iter()
        .filter_map(|(_, m)| m.as_ref().map(|m| m.time))
        .chain(
            p.dataplane
                .iter()
                .filter_map(|d| d.removed.as_ref().map(|m| m.time)),
        )
        .collect();
    if let (Some(a), Some(b)) = (times.iter().min(), times.iter().max()) {
        let _ = write!(
            out,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#999" stroke-width="2"/>"##,
            x(*a),
            x(*b),
            y + 12.0,
            y + 12.0
        );
    }
    if let Some(w) = &p.unsafe_window {
        window_rect(out, w, "window", "unsafe window", (x(w.start), x(w.end)), y);
    }
    for (letter, m) in marks {
        if let Some(m) = m {
            mark_svg(out, letter, m, x(m.time), y);
        }
    }
    for d in &p.dataplane {
        if let Some(m) = &d.removed {
            let _ = write!(
                out,
                r#"<path d="M{0:.1},{1:.1} l-4,7 h8 z" class="dp"><title>{2}: removed {3}</title></path>"#,
                x(m.time),
                y + 28.0,
                esc(&d.node.0),
                format_time(m.time)
            );
        }
    }
    error_dots(out, &p.error_marks, axis, y);
}

/// One mark: a tick and its letter at `x`, the time and source in its tooltip.
fn mark_svg(out: &mut String, letter: &str, m: &Mark, x: f64, y: f64) {
    let _ = write!(
        out,
        r#"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" class="mark"/><text x="{0:.1}" y="{3:.1}" class="letter"><title>{4} {5} ±{6} ms ({7} on {8})</title>{4}</text>"#,
        x,
        y + 2.0,
        y + 22.0,
        y + 1.0,
        letter,
        format_time(m.time),
        m.uncertainty_ms,
        m.source,
        esc(&m.node.0)
    );
}

fn error_dots(out: &mut String, marks: &[ErrorMark], axis: &Axis, y: f64) {
    for e in marks {
        let _ = write!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"><title>{} × {:?}</title></circle>"#,
            LABEL_W + axis.fraction(e.time) * CHART_W,
            y + 45.0,
            cause_color(e.cause),
            e.count,
            e.cause
        );
    }
}

/// The Service's ready (blue), and ready and listening (green), endpoints as step lines, the replicas
/// asked for dashed.
fn capacity_svg(out: &mut String, c: &Capacity, axis: &Axis, y: f64) {
    let top = c
        .series
        .iter()
        .map(|s| s.ready.max(s.serving))
        .max()
        .unwrap_or(0)
        .max(c.desired)
        .max(1) as f64;
    let yv = |v: u64| y + 8.0 + (1.0 - v as f64 / top) * (ROW_H - 16.0);
    let x = |t| LABEL_W + axis.fraction(t) * CHART_W;
    let sub = format!(
        "ready min {} · ready+listening min {} of {}",
        c.min_ready, c.min_serving, c.desired
    );
    let verdict = if c.min_ready.min(c.min_serving) < c.desired {
        Verdict::Unsafe
    } else {
        Verdict::Safe
    };
    row_label(out, "capacity", verdict, &sub, y);
    let _ = write!(
        out,
        r##"<line x1="{:.1}" x2="{:.1}" y1="{2:.1}" y2="{2:.1}" stroke="#999" stroke-dasharray="4 3"><title>{3} replicas asked for</title></line>"##,
        LABEL_W,
        LABEL_W + CHART_W,
        yv(c.desired),
        c.desired
    );
    let end = LABEL_W + CHART_W;
    for (get, color, what) in [
        (
            (|s: &CapacityStep| s.ready) as fn(&CapacityStep) -> u64,
            "#1f77b4",
            "ready",
        ),
        (
            |s: &CapacityStep| s.serving,
            "#2ca02c",
            "ready and listening",
        ),
    ] {
        let mut points = String::new();
        for (i, s) in c.series.iter().enumerate() {
            let x1 = c.series.get(i + 1).map_or(end, |n| x(n.time));
            let _ = write!(
                points,
                "{:.1},{:.1} {x1:.1},{:.1} ",
                x(s.time),
                yv(get(s)),
                yv(get(s))
            );
        }
        let _ = write!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"><title>{what} endpoints</title></polyline>"#,
            points.trim_end()
        );
    }
}

/// A new pod's row: its marks, the span nodes routed to it before it listened, its errors.
fn startup_svg(out: &mut String, s: &StartupReport, axis: &Axis, y: f64) {
    let x = |t| LABEL_W + axis.fraction(t) * CHART_W;
    let sub = format!(
        "new · {} · startup gap {}",
        s.verdict.as_str(),
        rows::ms_cell(s.startup_gap_ms, s.gap_basis, s.gap_uncertainty_ms)
    );
    row_label(
        out,
        &format!("+{}", rows::startup_label(s)),
        s.verdict,
        &sub,
        y,
    );
    if let Some(w) = &s.refusing_window {
        let span = (x(w.start), x(w.end));
        window_rect(out, w, "startup", "routed before listening", span, y);
    }
    let m = &s.marks;
    for (letter, mark) in [
        ("Y", &m.pod_ready),
        ("E", &m.endpoint_ready),
        ("A", &m.first_routed),
        ("O", &m.listener_open),
    ] {
        if let Some(mark) = mark {
            mark_svg(out, letter, mark, x(mark.time), y);
        }
    }
    error_dots(out, &s.error_marks, axis, y);
}

fn rollout_svg(out: &mut String, r: &Rollout) {
    let axis = Axis::of(r);
    let rows = (r.pods.len() + r.startup.len()) as f64;
    let band = if r.capacity.is_some() { ROW_H } else { 0.0 };
    let h = TOP + ROW_H * rows + band + 10.0;
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{:.0}" height="{h:.0}" viewBox="0 0 {:.0} {h:.0}" role="img">"#,
        LABEL_W + CHART_W + 20.0,
        LABEL_W + CHART_W + 20.0
    );
    let unit = axis.tick_unit(10);
    for t in axis.ticks(10) {
        let xx = LABEL_W + axis.fraction_of_ms(t) * CHART_W;
        let _ = write!(
            out,
            r#"<line x1="{xx:.1}" x2="{xx:.1}" y1="{:.1}" y2="{h:.1}" class="grid"/><text x="{xx:.1}" y="14" class="tick">{} {}</text>"#,
            TOP - 12.0,
            unit.label(t),
            unit.name
        );
    }
    for (i, p) in r.pods.iter().enumerate() {
        pod_svg(out, p, &axis, TOP + ROW_H * i as f64);
    }
    for (i, sp) in r.startup.iter().enumerate() {
        startup_svg(out, sp, &axis, TOP + ROW_H * (r.pods.len() + i) as f64);
    }
    if let Some(c) = &r.capacity {
        capacity_svg(out, c, &axis, TOP + ROW_H * rows);
    }
    out.push_str("</svg>");
}

/// Each pod's verdict and reason, as a list.
fn reasons<'a>(out: &mut String, pods: impl Iterator<Item = (String, Verdict, &'a str)>) {
    out.push_str("<ul>");
    for (label, verdict, reason) in pods {
        let _ = write!(
            out,
            "<li><b>{}</b> <span class=\"{}\">{}</span>: {}</li>",
            esc(&label),
            verdict_class(verdict),
            verdict.as_str(),
            esc(reason)
        );
    }
    out.push_str("</ul>");
}

fn table(out: &mut String, headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    out.push_str("<div class=\"scroll\"><table><thead><tr>");
    for h in headers {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for c in row {
            let _ = write!(out, "<td>{}</td>", esc(&c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px}\
table{border-collapse:collapse;margin:8px 0;font-size:13px;width:100%}\
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;overflow-wrap:anywhere}\
th{background:#f0f0f0}.safe{color:#2ca02c}.unsafe{color:#d62728}.inconclusive{color:#b8860b}\
svg{border:1px solid #ddd;background:#fcfcfc;margin:8px 0;max-width:100%;height:auto}.label{font-size:13px;font-weight:600}.sub{font-size:11px}\
.tick{font-size:10px;fill:#666;text-anchor:middle}.grid{stroke:#e5e5e5}.mark{stroke:#333;stroke-width:1.5}\
.letter{font-size:9px;text-anchor:middle;fill:#333}.window{fill:#d62728;fill-opacity:.45}.startup{fill:#e377c2;fill-opacity:.45}.dp{fill:#1f77b4}\
code{background:#f4f4f4;padding:2px 4px;display:block;white-space:pre-wrap;word-break:break-all;margin:4px 0}\
.legend{font-size:12px;color:#555}.scroll{overflow-x:auto}";

/// The whole page.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>kubectl zdt report</title><style>{STYLE}</style></head><body>\
         <h1>Rollout race report</h1><p>{} rollouts, {} observations from {} nodes. Schema {} {}.</p>",
        report.rollouts.len(),
        report.input.observations,
        report.nodes.len(),
        report.api_version,
        report.kind
    );
    for r in &report.rollouts {
        let _ = write!(
            out,
            "<h2>{} <span class=\"{}\">{}</span></h2><p>{} · {:.0} ms · {}</p>",
            esc(&rows::rollout_title(r)),
            verdict_class(r.verdict),
            r.verdict.as_str(),
            format_time(r.start),
            r.duration_ms,
            esc(&r.reason)
        );
        rollout_svg(&mut out, r);
        let _ = write!(
            out,
            "<p class=\"legend\">D deleted · T endpoint terminating · R endpoint removed · P preStop · S SIGTERM · L listener closed · X exit · N netns gone · \
             red bar: unsafe window · blue ▲: a node removed the pod · dots: errors (red refused in window, orange reset at exit, purple timeout, grey other, light grey a kubelet probe). 0 ms = first deletion seen.</p>"
        );
        table(
            &mut out,
            &rows::headers(true),
            r.pods.iter().map(|p| rows::pod_row(p, true)),
        );
        reasons(
            &mut out,
            r.pods
                .iter()
                .map(|p| (rows::pod_label(p), p.verdict, p.reason.as_str())),
        );
        if !r.clients.is_empty() {
            table(
                &mut out,
                &rows::client_headers(),
                r.clients.iter().map(rows::client_row),
            );
            out.push_str("<ul>");
            for c in r.clients.iter().filter(|c| !c.reason.is_empty()) {
                let _ = write!(out, "<li>{}</li>", esc(&c.reason));
            }
            out.push_str("</ul>");
        }
        if !r.startup.is_empty() {
            out.push_str(
                "<p class=\"legend\">New pods (+): Y pod ready · E endpoint ready · A first node routing · O listening · \
                 pink bar: routed before listening · pink dots: refused before listening, brown: refused after ready. \
                 Capacity: the Service's ready endpoints (blue) and those of them listening (green) against the replicas asked for (dashed).</p>",
            );
            table(
                &mut out,
                &rows::startup_headers(true),
                r.startup.iter().map(|sp| rows::startup_row(sp, true)),
            );
            reasons(
                &mut out,
                r.startup.iter().map(|sp| {
                    let label = format!("+{}", rows::startup_label(sp));
                    (label, sp.verdict, sp.reason.as_str())
                }),
            );
        }
    }
    let advice = rows::advice_lines(report);
    if !advice.is_empty() {
        out.push_str("<h2>Advice</h2>");
        for l in advice {
            let _ = write!(out, "<code>{}</code>", esc(&l));
        }
    }
    if !report.warnings.is_empty() {
        out.push_str("<h2>Warnings</h2><ul>");
        for w in &report.warnings {
            let _ = write!(out, "<li>{}</li>", esc(w));
        }
        out.push_str("</ul>");
    }
    out.push_str("<h2>Nodes</h2>");
    table(
        &mut out,
        &["NODE", "OBSERVATIONS", "CLOCK ± ms", "LOST EVENTS"],
        report.nodes.iter().map(|n| {
            vec![
                n.node.to_string(),
                n.observations.to_string(),
                n.clock_uncertainty_ms.to_string(),
                n.lost_events.to_string(),
            ]
        }),
    );
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_input_cannot_break_out_of_the_page() {
        assert_eq!(
            esc("<script>\"a\"&'b'"),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;"
        );
    }
}
