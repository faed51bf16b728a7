//! The readiness probe a workload needs when its new pods took connections before they could
//! serve them (docs/report-schema.md, Startup). A preStop delays a pod's exit; it does nothing
//! for a pod that is routed to before it listens, so this advice never names one.
//!
//! The probe checks the Service's target port itself (`tcpSocket`): the endpoint then turns
//! ready only once something listens there. `periodSeconds: 1` keeps the delay it adds to a
//! rollout under a second; the first check runs when the container starts.

use std::collections::BTreeMap;

use super::{
    model::{Patch, ReadinessAdvice, Rollout, Verdict},
    pod::probe_explanation,
    rollout::Finished,
};

/// One advice per workload with a new pod judged unsafe at its start.
pub(crate) fn advise(grouped: &[(Rollout, Vec<Finished>)]) -> Vec<ReadinessAdvice> {
    #[derive(Default)]
    struct Acc<'a> {
        before: u64,
        after: u64,
        gap: Option<f64>,
        port: Option<u16>,
        container: Option<&'a str>,
        explanation: Option<String>,
    }
    let mut by: BTreeMap<(Option<&str>, &str), Acc<'_>> = BTreeMap::new();
    for (r, g) in grouped {
        let key = (r.namespace.as_deref(), r.workload.as_str());
        for s in r.startup.iter().filter(|s| s.verdict == Verdict::Unsafe) {
            let a = by.entry(key).or_default();
            a.before += s.errors.before_listening;
            a.after += s.errors.after_ready;
            if let Some(gap) = s.startup_gap_ms {
                a.gap = Some(a.gap.map_or(gap, |cur: f64| cur.max(gap)));
            }
            a.port = a.port.or(s.port);
            a.container = a.container.or(s.container.as_deref());
            a.explanation
                .get_or_insert_with(|| probe_explanation(s.readiness_probe.as_ref(), s.port));
        }
        // The deleted pods of the same workload name the serving container.
        if let Some(a) = by.get_mut(&key) {
            a.container = a
                .container
                .or_else(|| g.iter().find_map(|p| p.container.as_deref()));
        }
    }
    by.into_iter()
        .map(|((ns, workload), a)| {
            let title = ns.map_or_else(|| workload.to_owned(), |ns| format!("{workload} -n {ns}"));
            let mut reason = String::new();
            if a.before > 0 {
                reason.push_str(&format!(
                    "{} connections refused by new pods before they listened",
                    a.before
                ));
            }
            if a.after > 0 {
                if !reason.is_empty() {
                    reason.push_str(", ");
                }
                reason.push_str(&format!("{} refused after they turned ready", a.after));
            }
            if reason.is_empty() {
                reason.push_str("nodes routed to new pods before they listened");
            }
            if let Some(gap) = a.gap {
                reason.push_str(&format!(" (up to {gap} ms before)"));
            }
            if let Some(why) = &a.explanation {
                reason.push_str(": ");
                reason.push_str(why);
            }
            reason.push_str("; a preStop would not help");
            ReadinessAdvice {
                workload: workload.to_owned(),
                namespace: ns.map(str::to_owned),
                before_listening: a.before,
                after_ready: a.after,
                largest_gap_ms: a.gap,
                reason,
                patch: a
                    .port
                    .and_then(|port| patch(ns, workload, a.container, port))
                    .map(|command| Patch {
                        workload: title,
                        command,
                    }),
            }
        })
        .collect()
}

/// `kubectl patch` setting a tcpSocket readiness probe on `port`: a strategic merge patch of
/// the named container, or a JSON patch of the first container when its name is unknown.
fn patch(ns: Option<&str>, workload: &str, container: Option<&str>, port: u16) -> Option<String> {
    if !["deployment/", "statefulset/", "daemonset/"]
        .iter()
        .any(|k| workload.starts_with(k))
    {
        return None;
    }
    let probe = format!(r#"{{"tcpSocket":{{"port":{port}}},"periodSeconds":1}}"#);
    let ns_flag = ns.map_or(String::new(), |ns| format!(" -n {ns}"));
    Some(match container {
        Some(c) => format!(
            "kubectl patch {workload}{ns_flag} --type=strategic -p \
             '{{\"spec\":{{\"template\":{{\"spec\":{{\"containers\":[{{\"name\":\"{c}\",\"readinessProbe\":{probe}}}]}}}}}}}}'"
        ),
        None => format!(
            "kubectl patch {workload}{ns_flag} --type=json -p \
             '[{{\"op\":\"add\",\"path\":\"/spec/template/spec/containers/0/readinessProbe\",\"value\":{probe}}}]'  \
             # container name not observed: sets the first container's probe"
        ),
    })
}
