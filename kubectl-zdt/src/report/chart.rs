//! The timeline as a terminal picture: one row per pod on a shared time axis (0 = the first
//! deletion), its marks as letters and the unsafe window as a solid bar; below it, how many
//! nodes removed the pod from their dataplane in each column; below that, its errors by cause.

use std::fmt::Write as _;

use jiff::Timestamp;

use super::{
    axis::Axis,
    rows::{pod_label, startup_label},
};
use crate::correlate::{
    Capacity, CapacityStep, Cause, ErrorMark, Mark, PodReport, Rollout, RoutingState, StartupReport,
};

const DENSITY: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
const LABEL_MAX: usize = 28;
/// Marks this uncertain are drawn in lower case.
const BRACKETED_MS: f64 = 50.0;

/// Three lines, each under 120 columns.
pub const LEGEND: &str = "D deleted  T endpoint terminating  R endpoint removed  P preStop  S SIGTERM  L listener closed  \
X exit  N netns gone\n(lower case: known to ±50 ms or worse)  █ unsafe window  ▁…█ nodes removing the pod  × refused in window\n\
! reset at exit  ○ timeout  · other error  p kubelet probe (no client's)";

/// Two more lines when the rollout has new pods (`+name` rows).
pub const STARTUP_LEGEND: &str = "new pods (+): Y pod ready  E endpoint ready  A first node routing  O listening  \
░ routed before listening\n< refused before listening  ? refused after ready";

/// The letter each mark is drawn with, painted in this order (the listener close last: the
/// window starts there).
fn letters(p: &PodReport) -> [(char, Option<&Mark>); 8] {
    let m = &p.marks;
    [
        ('R', m.ep_removed.as_ref()),
        ('T', m.ep_terminating.as_ref()),
        ('D', m.delete.as_ref()),
        ('P', m.prestop.as_ref()),
        ('S', m.sigterm.as_ref()),
        ('X', m.exit.as_ref()),
        ('N', m.netns_gone.as_ref()),
        ('L', m.listen_closed.as_ref()),
    ]
}

/// The span a pod's row draws as its life line.
fn life(p: &PodReport) -> Option<(Timestamp, Timestamp)> {
    let mut all: Vec<Timestamp> = letters(p)
        .iter()
        .filter_map(|(_, m)| m.map(|m| m.time))
        .collect();
    all.extend(
        p.dataplane
            .iter()
            .filter_map(|d| d.removed.as_ref().map(|m| m.time)),
    );
    Some((*all.iter().min()?, *all.iter().max()?))
}

fn cause_glyph(c: Cause) -> char {
    match c {
        Cause::UnsafeWindow => '×',
        Cause::AtExit => '!',
        Cause::AfterNetnsGone => '○',
        Cause::Unrelated | Cause::Undetermined => '·',
        Cause::Probe => 'p',
        Cause::BeforeListening => '<',
        Cause::AfterReady => '?',
    }
}

/// The row of a pod's errors, each column showing the cause with the most errors in it.
fn error_row(
    out: &mut String,
    marks: &[ErrorMark],
    total: u64,
    axis: &Axis,
    width: usize,
    label_w: usize,
) {
    if marks.is_empty() {
        return;
    }
    let mut errs = vec![(' ', 0u64); width];
    for e in marks {
        let slot = &mut errs[axis.column(e.time, width)];
        if e.count > slot.1 || slot.0 == ' ' {
            *slot = (cause_glyph(e.cause), e.count.max(slot.1));
        }
    }
    let line: String = errs.iter().map(|(c, _)| *c).collect();
    let _ = writeln!(
        out,
        "{:>label_w$}  {line}  {total} error{}",
        "errors",
        if total == 1 { "" } else { "s" }
    );
}

/// `label` cut to `width` characters, an ellipsis marking the cut.
fn fit(label: &str, width: usize) -> String {
    let mut out: String = label.chars().take(width).collect();
    if label.chars().count() > width {
        out.pop();
        out.push('…');
    }
    out
}

/// A new pod's rows: its marks from the API's ready to its listener, the span nodes routed to
/// it before it listened, and its errors.
fn startup_rows(out: &mut String, s: &StartupReport, axis: &Axis, width: usize, label_w: usize) {
    let m = &s.marks;
    let letters = [
        ('Y', m.pod_ready.as_ref()),
        ('E', m.endpoint_ready.as_ref()),
        ('A', m.first_routed.as_ref()),
        ('O', m.listener_open.as_ref()),
    ];
    let mut row = vec![' '; width];
    let times: Vec<Timestamp> = m.iter().map(|m| m.time).collect();
    if let (Some(a), Some(b)) = (times.iter().min(), times.iter().max()) {
        for c in &mut row[axis.column(*a, width)..=axis.column(*b, width)] {
            *c = '─';
        }
    }
    if let Some(w) = &s.refusing_window {
        for c in &mut row[axis.column(w.start, width)..=axis.column(w.end, width)] {
            *c = '░';
        }
    }
    for (ch, mark) in letters {
        if let Some(mark) = mark {
            row[axis.column(mark.time, width)] = if mark.uncertainty_ms >= BRACKETED_MS {
                ch.to_ascii_lowercase()
            } else {
                ch
            };
        }
    }
    let label = fit(
        &format!("+{}", super::escape_terminal(&startup_label(s))),
        label_w,
    );
    let _ = writeln!(
        out,
        "{label:label_w$}  {}  {} (new)",
        row.iter().collect::<String>(),
        s.verdict.as_str()
    );
    error_row(out, &s.error_marks, s.errors.total(), axis, width, label_w);
}

/// The Service's ready and listening endpoints, one digit per column (the lowest count in it;
/// `+` for ten or more), with the lowest point against the replicas asked for.
fn capacity_rows(out: &mut String, c: &Capacity, axis: &Axis, width: usize, label_w: usize) {
    for (label, get, min, below) in [
        (
            format!("ready/{}", c.desired),
            (|s: &CapacityStep| s.ready) as fn(&CapacityStep) -> u64,
            c.min_ready,
            c.ready_below_desired_ms,
        ),
        (
            // Not "listening": a terminating pod still listening is not counted (it is not
            // ready), nor a ready pod that does not listen yet.
            "ready+listening".to_owned(),
            |s: &CapacityStep| s.serving,
            c.min_serving,
            c.serving_below_desired_ms,
        ),
    ] {
        let mut cols: Vec<Option<u64>> = vec![None; width];
        for (i, s) in c.series.iter().enumerate() {
            let from = axis.column(s.time, width);
            let to = c
                .series
                .get(i + 1)
                .map_or(width - 1, |n| axis.column(n.time, width));
            for col in &mut cols[from..=to.max(from)] {
                *col = Some(col.map_or(get(s), |v| v.min(get(s))));
            }
        }
        let line: String = cols
            .iter()
            .map(|v| match v {
                None => ' ',
                Some(n) if *n < 10 => char::from_digit(*n as u32, 10).unwrap_or('+'),
                Some(_) => '+',
            })
            .collect();
        let note = if below > 0.0 {
            format!("min {min} of {}, {below} ms below", c.desired)
        } else {
            format!("min {min} of {}", c.desired)
        };
        let _ = writeln!(out, "{:>label_w$}  {line}  {note}", fit(&label, label_w));
    }
}

/// A pod's row label, safe for a terminal.
fn label(p: &PodReport) -> String {
    super::escape_terminal(&pod_label(p)).into_owned()
}

/// The chart for one rollout, `width` columns of time axis.
pub fn render(r: &Rollout, width: usize) -> String {
    let width = width.max(20);
    let axis = Axis::of(r);
    let label_w = r
        .pods
        .iter()
        .map(|p| label(p).chars().count())
        .chain(
            r.startup
                .iter()
                .map(|s| super::escape_terminal(&startup_label(s)).chars().count() + 1),
        )
        .max()
        .unwrap_or(8)
        .clamp(8, LABEL_MAX);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "TIMELINE  0 ms = {} ({})",
        if r.pods.iter().any(|p| p.marks.delete.is_some()) {
            "first deletion seen"
        } else {
            "first observation"
        },
        crate::observation::format_time(axis.origin.to_timestamp())
    );

    // Tick labels, then the axis line.
    let ticks = axis.ticks(6);
    let unit = axis.tick_unit(6);
    let mut labels = vec![' '; width + 12];
    let mut line = vec!['─'; width];
    for t in &ticks {
        let col = (axis.fraction_of_ms(*t) * (width - 1) as f64).round() as usize;
        line[col.min(width - 1)] = '┼';
        let text = unit.label(*t);
        // A label is written only with a blank on each side: two never run together.
        if col + text.len() < labels.len()
            && labels[col.saturating_sub(1)..=col + text.len()]
                .iter()
                .all(|c| *c == ' ')
        {
            for (i, ch) in text.chars().enumerate() {
                labels[col + i] = ch;
            }
        }
    }
    let _ = writeln!(
        out,
        "{:label_w$}  {} {}",
        "",
        labels.iter().collect::<String>().trim_end(),
        unit.name
    );
    let _ = writeln!(out, "{:label_w$}  {}", "", line.iter().collect::<String>());

    for p in &r.pods {
        let mut row = vec![' '; width];
        if let Some((a, b)) = life(p) {
            for c in &mut row[axis.column(a, width)..=axis.column(b, width)] {
                *c = '─';
            }
        }
        if let Some(w) = &p.unsafe_window {
            for c in &mut row[axis.column(w.start, width)..=axis.column(w.end, width)] {
                *c = '█';
            }
        }
        for (ch, m) in letters(p) {
            if let Some(m) = m {
                // A mark only bracketed (e.g. an exit known from the API) is drawn in lower case.
                row[axis.column(m.time, width)] = if m.uncertainty_ms >= BRACKETED_MS {
                    ch.to_ascii_lowercase()
                } else {
                    ch
                };
            }
        }
        let label = fit(&label(p), label_w);
        let _ = writeln!(
            out,
            "{label:label_w$}  {}  {}",
            row.iter().collect::<String>(),
            p.verdict.as_str()
        );

        let mut per_col = vec![0usize; width];
        for d in &p.dataplane {
            if let Some(m) = &d.removed {
                per_col[axis.column(m.time, width)] += 1;
            }
        }
        let most = per_col.iter().copied().max().unwrap_or(0);
        let removed = p
            .dataplane
            .iter()
            .filter(|d| d.state == RoutingState::Removed)
            .count();
        let unknown = p
            .dataplane
            .iter()
            .filter(|d| d.state == RoutingState::Unknown)
            .count();
        let dp: String = per_col
            .iter()
            .map(|&n| {
                if n == 0 {
                    ' '
                } else {
                    DENSITY[((n * 8).div_ceil(most)).clamp(1, 8) - 1]
                }
            })
            .collect();
        let mut note = format!("{removed}/{} nodes removed", p.dataplane.len());
        if unknown > 0 {
            let _ = write!(note, ", {unknown} unknown");
        }
        let _ = writeln!(out, "{:>label_w$}  {dp}  {note}", "dataplane");

        error_row(
            &mut out,
            &p.error_marks,
            p.errors.total(),
            &axis,
            width,
            label_w,
        );
    }
    for sp in &r.startup {
        startup_rows(&mut out, sp, &axis, width, label_w);
    }
    if let Some(c) = &r.capacity {
        capacity_rows(&mut out, c, &axis, width, label_w);
    }
    let _ = writeln!(out, "{LEGEND}");
    if !r.startup.is_empty() {
        let _ = writeln!(out, "{STARTUP_LEGEND}");
    }
    out
}
