//! The cells the terminal tables and the HTML tables both show.

use crate::{
    correlate::{
        Basis, ClientReport, Mark, PodReport, ReadinessProbe, Report, Rollout, RoutingState,
        StartupReport, clients::Path,
    },
    observation::PodRef,
};

/// A duration: `unknown`, `≥993.3 ms` (lower bound), `+588.0 ms ±0.1`.
pub(crate) fn ms_cell(v: Option<f64>, basis: Basis, unc_ms: f64) -> String {
    match v {
        None => "unknown".to_owned(),
        Some(v) => {
            let bound = if basis == Basis::LowerBound {
                "≥"
            } else {
                ""
            };
            let unc = if unc_ms >= 0.05 {
                format!(" ±{unc_ms:.1}")
            } else {
                String::new()
            };
            format!("{bound}{v:+.1} ms{unc}")
        }
    }
}

/// A pod's name within its rollout (namespace dropped), or its address, or its UID.
fn label(pod: Option<&PodRef>, ip: Option<std::net::IpAddr>, uid: Option<&str>) -> String {
    match (pod, ip) {
        (Some(pod), _) => pod.name().to_owned(),
        (None, Some(ip)) => format!("({ip})"),
        (None, None) => uid.unwrap_or("(unnamed)").to_owned(),
    }
}

/// The pod's name within its rollout (namespace dropped), or its address.
pub(crate) fn pod_label(p: &PodReport) -> String {
    label(p.pod.as_ref(), p.ip, p.pod_uid.as_deref())
}

fn offset(from: Option<&Mark>, to: Option<&Mark>) -> String {
    match (from, to) {
        (Some(f), Some(t)) => {
            let ms = t.time.duration_since(f.time).as_secs_f64() * 1e3;
            format!("{ms:+.1}")
        }
        (None, Some(_)) => "seen".to_owned(),
        _ => "—".to_owned(),
    }
}

/// The default columns fit a 120-column terminal (as kubectl's do); `-o wide` adds the pod's
/// address, every mark and what is missing.
pub(crate) fn headers(wide: bool) -> Vec<&'static str> {
    let mut h = vec!["POD"];
    if wide {
        h.push("IP");
    }
    h.extend(["PROPAGATION", "GAP", "WORST NODE"]);
    if wide {
        h.extend([
            "NODES REMOVED",
            "EP TERM",
            "SIGTERM",
            "LISTEN CLOSED",
            "EXIT",
            "NETNS GONE",
        ]);
    }
    h.extend(["REFUSED", "RESET AT EXIT", "TIMEOUT", "OTHER", "VERDICT"]);
    if wide {
        h.push("MISSING");
    }
    h
}

pub(crate) fn pod_row(p: &PodReport, wide: bool) -> Vec<String> {
    let mut row = vec![pod_label(p)];
    if wide {
        row.push(p.ip.map_or_else(|| "—".to_owned(), |ip| ip.to_string()));
    }
    row.extend([
        ms_cell(p.propagation_ms, p.propagation_basis, 0.0),
        ms_cell(p.gap_ms, p.gap_basis, p.gap_uncertainty_ms),
        p.worst_node
            .as_ref()
            .map_or_else(|| "—".to_owned(), |n| n.to_string()),
    ]);
    if wide {
        let m = &p.marks;
        let d = m.delete.as_ref();
        let removed = p
            .dataplane
            .iter()
            .filter(|r| r.state == RoutingState::Removed)
            .count();
        row.extend([
            format!("{removed}/{}", p.dataplane.len()),
            offset(d, m.ep_terminating.as_ref()),
            offset(d, m.sigterm.as_ref()),
            offset(d, m.listen_closed.as_ref()),
            offset(d, m.exit.as_ref()),
            offset(d, m.netns_gone.as_ref()),
        ]);
    }
    let e = &p.errors;
    row.extend([
        e.unsafe_window.to_string(),
        e.at_exit.to_string(),
        e.after_netns_gone.to_string(),
        (e.unrelated + e.undetermined).to_string(),
        p.verdict.as_str().to_owned(),
    ]);
    if wide {
        row.push(if p.missing.is_empty() {
            "—".to_owned()
        } else {
            p.missing.join(", ")
        });
    }
    row
}

/// A new pod's name within its rollout.
pub(crate) fn startup_label(s: &StartupReport) -> String {
    label(s.pod.as_ref(), s.ip, s.pod_uid.as_deref())
}

/// `none`, `tcp_socket 8080`, `http_get 8080 /healthz`, `exec`, or `unknown` (not recorded).
pub(crate) fn probe_cell(p: Option<&ReadinessProbe>) -> String {
    let Some(p) = p else {
        return "unknown".to_owned();
    };
    let mut cell = p.kind.clone();
    if let Some(port) = &p.port {
        cell.push(' ');
        cell.push_str(
            port.as_str()
                .map_or_else(|| port.to_string(), str::to_owned)
                .as_str(),
        );
    }
    if let Some(path) = &p.path {
        cell.push(' ');
        cell.push_str(path);
    }
    cell
}

/// The new pods' columns: the default ones fit 120 columns; `-o wide` adds the address and
/// each mark relative to the endpoint turning ready.
pub(crate) fn startup_headers(wide: bool) -> Vec<&'static str> {
    let mut h = vec!["NEW POD"];
    if wide {
        h.extend(["IP", "POD READY", "FIRST ROUTED", "LISTENING"]);
    }
    h.extend([
        "READINESS PROBE",
        "STARTUP GAP",
        "REFUSED BEFORE LISTENING",
        "AFTER READY",
        "VERDICT",
    ]);
    h
}

pub(crate) fn startup_row(s: &StartupReport, wide: bool) -> Vec<String> {
    let mut row = vec![startup_label(s)];
    if wide {
        let m = &s.marks;
        let ready = m.endpoint_ready.as_ref();
        row.extend([
            s.ip.map_or_else(|| "—".to_owned(), |ip| ip.to_string()),
            offset(ready, m.pod_ready.as_ref()),
            offset(ready, m.first_routed.as_ref()),
            offset(ready, m.listener_open.as_ref()),
        ]);
    }
    row.extend([
        probe_cell(s.readiness_probe.as_ref()),
        ms_cell(s.startup_gap_ms, s.gap_basis, s.gap_uncertainty_ms),
        s.errors.before_listening.to_string(),
        s.errors.after_ready.to_string(),
        s.verdict.as_str().to_owned(),
    ]);
    row
}

/// The clients' columns (both formats: they fit 120 columns).
pub(crate) fn client_headers() -> Vec<&'static str> {
    vec![
        "CLIENT",
        "PATH",
        "REFUSED",
        "RESET AT EXIT",
        "TIMEOUT",
        "OTHER",
        "BEFORE LISTENING",
        "AFTER REMOVAL",
    ]
}

pub(crate) fn client_row(c: &ClientReport) -> Vec<String> {
    let e = &c.errors;
    vec![
        c.client.clone(),
        match c.path {
            Path::Service => "service",
            Path::PodIp => "pod IP",
            Path::Unknown => "—",
        }
        .to_owned(),
        e.unsafe_window.to_string(),
        e.at_exit.to_string(),
        e.after_netns_gone.to_string(),
        // As the pods' table: a client whose only errors are of no known cause is not a row
        // of zeros.
        (e.unrelated + e.undetermined).to_string(),
        (e.before_listening + e.after_ready).to_string(),
        c.after_endpoint_removed_ms
            .map_or_else(|| "—".to_owned(), |v| format!("{v:+.1} ms")),
    ]
}

/// `deployment/web -n default`.
pub(crate) fn rollout_title(r: &Rollout) -> String {
    match &r.namespace {
        Some(ns) => format!("{} -n {ns}", r.workload),
        None => r.workload.clone(),
    }
}

/// The advice (or why there is none), as lines: the rollout strategy and the readiness probes
/// the workloads need, then the preStop and grace period.
pub(crate) fn advice_lines(report: &Report) -> Vec<String> {
    let mut lines = Vec::new();
    let capacity = report.capacity_advice.iter().map(|a| {
        let head = "rollout strategy";
        (head, &a.workload, &a.namespace, &a.reason, &a.patch)
    });
    let readiness = report.readiness_advice.iter().map(|a| {
        let head = "readiness probe";
        (head, &a.workload, &a.namespace, &a.reason, &a.patch)
    });
    for (head, workload, namespace, reason, patch) in capacity.chain(readiness) {
        let title = namespace
            .as_ref()
            .map_or_else(|| workload.clone(), |ns| format!("{workload} -n {ns}"));
        lines.push(format!("{head} for {title}: {reason}"));
        lines.extend(patch.iter().map(|p| p.command.clone()));
    }
    lines.extend(prestop_lines(report));
    lines
}

fn prestop_lines(report: &Report) -> Vec<String> {
    match (&report.advice, &report.advice_unavailable) {
        (Some(a), _) => {
            let mut lines = vec![
                format!(
                    "{}, terminationGracePeriodSeconds {}",
                    a.prestop_action.describe(a.prestop_seconds),
                    a.termination_grace_period_seconds
                ),
                a.reason.clone(),
            ];
            lines.extend(a.patches.iter().map(|p| p.command.clone()));
            lines
        }
        (None, Some(why)) => vec![format!("no advice: {why}")],
        (None, None) => Vec::new(),
    }
}
