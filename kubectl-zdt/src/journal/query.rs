//! What a history query selects, and its URL form — the fixed contract of the agent's
//! `GET /history?since=RFC3339&until=RFC3339[&namespace=NS][&pod=NS/NAME][&ip=IP][&workload=KIND/NAME]`
//! (`ip` may repeat: any of them). Filters combine with AND; a line matches
//!
//! - `namespace`: its `pod` or its `service` is in the namespace;
//! - `pod`: its `pod` is that pod;
//! - `ip`: its `ip` or `peer_ip` is the address, or its `service` is `IP:port`;
//! - `workload`: its `workload` is it, or its `pod` is named the way that controller names its
//!   pods (`NAME-<template hash>-<5>` for a Deployment, `NAME-<ordinal>` for a StatefulSet,
//!   `NAME-<5>` for a DaemonSet), in `namespace` when given.

use std::{borrow::Cow, net::IpAddr};

use jiff::Timestamp;
use serde::Deserialize;

use crate::observation::{Observation, format_time, split_name};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// From this time on (inclusive); unbounded when absent.
    pub since: Option<Timestamp>,
    /// Up to this time (exclusive); unbounded when absent.
    pub until: Option<Timestamp>,
    pub namespace: Option<String>,
    /// `namespace/name`.
    pub pod: Option<String>,
    /// Any of these addresses.
    pub ips: Vec<IpAddr>,
    /// `deployment/NAME`, `statefulset/NAME` or `daemonset/NAME`.
    pub workload: Option<String>,
}

/// The fields of a line the filters look at, borrowed from its JSON.
#[derive(Debug, Default, Deserialize)]
pub struct Fields<'a> {
    #[serde(borrow, default)]
    pub pod: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub ip: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub peer_ip: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub service: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub workload: Option<Cow<'a, str>>,
}

impl<'a> Fields<'a> {
    pub fn of(o: &'a Observation) -> Self {
        Self {
            pod: o.pod.as_deref().map(Cow::Borrowed),
            ip: o.ip.map(|i| Cow::Owned(i.to_string())),
            peer_ip: o.peer_ip.map(|i| Cow::Owned(i.to_string())),
            service: o.service.as_ref().map(|s| Cow::Owned(s.to_string())),
            workload: o.details.api().workload.as_deref().map(Cow::Borrowed),
        }
    }
}

/// Tests stored lines against a query. A cheap substring search rules most lines out before
/// any parsing: every filter needs some text of its value in the line.
pub struct Matcher {
    query: HistoryQuery,
    finders: Vec<memchr::memmem::Finder<'static>>,
}

impl Matcher {
    pub fn matches_line(&self, line: &[u8]) -> bool {
        if self.query.is_unfiltered() {
            return true;
        }
        if self.finders.iter().any(|f| f.find(line).is_none()) {
            return false;
        }
        serde_json::from_slice::<Fields<'_>>(line).is_ok_and(|f| self.query.matches(&f))
    }
}

/// Whether `name` is what the controller `kind/base` names its pods.
pub fn pod_of_workload(kind: &str, base: &str, name: &str) -> bool {
    let alnum = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let Some(rest) = name.strip_prefix(base).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    match kind {
        "deployment" => rest
            .split_once('-')
            .is_some_and(|(hash, suffix)| alnum(hash) && suffix.len() == 5 && alnum(suffix)),
        "statefulset" => !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()),
        "daemonset" => rest.len() == 5 && alnum(rest),
        _ => false,
    }
}

impl HistoryQuery {
    /// No filter beyond the time window.
    pub fn is_unfiltered(&self) -> bool {
        self.namespace.is_none()
            && self.pod.is_none()
            && self.ips.is_empty()
            && self.workload.is_none()
    }

    /// The time window in nanoseconds since the epoch, `[since, until)`. Times the journal's
    /// i64 nanoseconds cannot hold (before 1677-09-21, after 2262-04-11) are clamped to its
    /// range: a window reaching past it holds every line on that side (it used to hold none
    /// when it started before 1677).
    pub fn window_ns(&self) -> (i64, i64) {
        (
            self.since.map_or(i64::MIN, clamped_nanos),
            self.until.map_or(i64::MAX, clamped_nanos),
        )
    }

    pub fn matches(&self, f: &Fields<'_>) -> bool {
        let pod = f.pod.as_deref();
        if let Some(ns) = &self.namespace {
            let in_ns = |s: Option<&str>| s.and_then(split_name).is_some_and(|(n, _)| n == ns);
            if !in_ns(pod) && !in_ns(f.service.as_deref()) {
                return false;
            }
        }
        if let Some(p) = &self.pod
            && pod != Some(p.as_str())
        {
            return false;
        }
        if !self.ips.is_empty() {
            let service_ip = f.service.as_deref().and_then(|s| {
                s.rsplit_once(':')
                    .map(|(a, _)| a.trim_start_matches('[').trim_end_matches(']'))
            });
            let hit = self.ips.iter().any(|ip| {
                [f.ip.as_deref(), f.peer_ip.as_deref(), service_ip]
                    .into_iter()
                    .flatten()
                    .any(|s| s.parse::<IpAddr>().ok() == Some(*ip))
            });
            if !hit {
                return false;
            }
        }
        if let Some(w) = &self.workload {
            let declared = f.workload.as_deref() == Some(w.as_str());
            let named = pod.and_then(split_name).is_some_and(|(ns, name)| {
                self.namespace.as_deref().is_none_or(|want| want == ns)
                    && split_name(w).is_some_and(|(kind, base)| pod_of_workload(kind, base, name))
            });
            if !declared && !named {
                return false;
            }
        }
        true
    }

    /// The line matcher of this query (its substring searchers built once).
    pub fn matcher(&self) -> Matcher {
        let mut needles: Vec<String> = [
            self.pod.clone(),
            self.namespace.clone(),
            self.workload
                .as_deref()
                .and_then(split_name)
                .map(|(_, n)| n.to_owned()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let [ip] = self.ips[..] {
            needles.push(ip.to_string());
        }
        Matcher {
            query: self.clone(),
            finders: needles
                .iter()
                .map(|n| memchr::memmem::Finder::new(n.as_bytes()).into_owned())
                .collect(),
        }
    }

    /// Whether a stored line (JSON bytes) matches (see [`Matcher`]).
    pub fn matches_line(&self, line: &[u8]) -> bool {
        self.matcher().matches_line(line)
    }

    /// The query string of `GET /history`.
    pub fn to_query_string(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if let Some(t) = self.since {
            s.append_pair("since", &format_time(t));
        }
        if let Some(t) = self.until {
            s.append_pair("until", &format_time(t));
        }
        for (k, v) in [
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("workload", &self.workload),
        ] {
            if let Some(v) = v {
                s.append_pair(k, v);
            }
        }
        for ip in &self.ips {
            s.append_pair("ip", &ip.to_string());
        }
        s.finish()
    }

    /// Parses the query string of `GET /history`; the error is one line naming the parameter.
    pub fn from_query_string(query: &str) -> Result<Self, String> {
        let mut q = Self::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let time = || {
                v.parse::<Timestamp>().map_err(|e| {
                    format!("{k}={v}: not an RFC 3339 time like 2026-11-22T03:00:00Z ({e})")
                })
            };
            match k.as_ref() {
                "since" => q.since = Some(time()?),
                "until" => q.until = Some(time()?),
                "namespace" => q.namespace = Some(v.into_owned()),
                "pod" if v.contains('/') => q.pod = Some(v.into_owned()),
                "pod" => return Err(format!("pod={v}: expected NAMESPACE/NAME")),
                "ip" => q.ips.push(
                    v.parse()
                        .map_err(|_| format!("ip={v}: not an IPv4 or IPv6 address"))?,
                ),
                "workload" => {
                    let kinds = ["deployment", "statefulset", "daemonset"];
                    match split_name(&v) {
                        Some((kind, name)) if kinds.contains(&kind) && !name.is_empty() => {
                            q.workload = Some(v.into_owned());
                        }
                        _ => {
                            return Err(format!(
                                "workload={v}: expected deployment/NAME, statefulset/NAME or daemonset/NAME"
                            ));
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}: expected since, until, namespace, pod, ip, workload"
                    ));
                }
            }
        }
        Ok(q)
    }
}

/// A time as the journal stores it, in i64 nanoseconds since the epoch, clamped to that range.
pub fn clamped_nanos(t: Timestamp) -> i64 {
    t.as_nanosecond()
        .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window from before 1677 or to after 2262 (outside i64 nanoseconds) holds what the
    /// part inside holds: it used to start at i64::MAX and hold nothing.
    #[test]
    fn a_window_beyond_the_i64_nanosecond_range_is_clamped_to_it() {
        let q = |since: &str, until: &str| HistoryQuery {
            since: Some(since.parse().unwrap()),
            until: Some(until.parse().unwrap()),
            ..HistoryQuery::default()
        };
        assert_eq!(
            q("1600-01-01T00:00:00Z", "2300-01-01T00:00:00Z").window_ns(),
            (i64::MIN, i64::MAX)
        );
        let (since, until) = q("1000-01-01T00:00:00Z", "2026-01-01T00:00:00Z").window_ns();
        assert_eq!(since, i64::MIN);
        assert_eq!(until, 1_767_225_600_000_000_000);
        assert_eq!(
            q("2300-01-01T00:00:00Z", "2400-01-01T00:00:00Z").window_ns(),
            (i64::MAX, i64::MAX),
            "a window entirely after 2262 is empty"
        );
    }

    fn line(v: serde_json::Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    #[test]
    fn the_url_form_round_trips() {
        let q = HistoryQuery {
            since: Some("2026-11-22T01:00:00Z".parse().unwrap()),
            until: Some("2026-11-22T03:00:00.5Z".parse().unwrap()),
            namespace: Some("shop".into()),
            pod: Some("shop/web-7d4b9c8f6d-abcde".into()),
            ips: vec!["10.244.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            workload: Some("deployment/web".into()),
        };
        let s = q.to_query_string();
        assert_eq!(HistoryQuery::from_query_string(&s).unwrap(), q);
        assert!(
            s.contains("since=2026-11-22T01%3A00%3A00.000000000Z"),
            "{s}"
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        for (q, expected) in [
            ("since=yesterday", "since=yesterday: not an RFC 3339 time"),
            ("pod=web", "pod=web: expected NAMESPACE/NAME"),
            ("ip=10.0.0", "ip=10.0.0: not an IPv4 or IPv6 address"),
            (
                "workload=pod/web",
                "workload=pod/web: expected deployment/NAME",
            ),
            ("from=1", "unknown parameter \"from\""),
        ] {
            let err = HistoryQuery::from_query_string(q).unwrap_err();
            assert!(err.starts_with(expected), "{q}: {err}");
        }
    }

    #[test]
    fn filters_select_the_pod_its_address_and_its_workload() {
        let deleting = line(
            serde_json::json!({"kind":"pod_deleting","time":"2026-11-22T03:00:00Z",
            "node":"a","pod":"shop/web-7d4b9c8f6d-abcde","ip":"10.244.0.5","workload":"deployment/web"}),
        );
        let removed = line(
            serde_json::json!({"kind":"dataplane_removed","time":"2026-11-22T03:00:00Z",
            "node":"b","ip":"10.244.0.5","port":8080,"service":"10.96.0.10:80"}),
        );
        let client = line(
            serde_json::json!({"kind":"conn_error","time":"2026-11-22T03:00:00Z",
            "node":"b","service":"10.96.0.10:80","reason":"ECONNREFUSED"}),
        );
        let other = line(
            serde_json::json!({"kind":"pod_deleting","time":"2026-11-22T03:00:00Z",
            "node":"a","pod":"shop/web-api-7d4b9c8f6d-abcde","ip":"10.244.0.50"}),
        );
        let q = |f: fn(&mut HistoryQuery)| {
            let mut q = HistoryQuery::default();
            f(&mut q);
            q
        };
        let by_ns = q(|q| q.namespace = Some("shop".into()));
        let by_pod = q(|q| q.pod = Some("shop/web-7d4b9c8f6d-abcde".into()));
        let by_ip = q(|q| q.ips = vec!["10.244.0.5".parse().unwrap()]);
        let by_svc = q(|q| q.ips = vec!["10.96.0.10".parse().unwrap()]);
        let by_wl = q(|q| q.workload = Some("deployment/web".into()));
        let table = [
            (&by_ns, [true, false, false, true]),
            (&by_pod, [true, false, false, false]),
            (&by_ip, [true, true, false, false]),
            (&by_svc, [false, true, true, false]),
            (&by_wl, [true, false, false, false]),
        ];
        for (query, expected) in table {
            let got: Vec<bool> = [&deleting, &removed, &client, &other]
                .iter()
                .map(|l| query.matches_line(l))
                .collect();
            assert_eq!(got, expected, "{query:?}");
        }
    }

    #[test]
    fn controllers_name_their_pods_differently() {
        assert!(pod_of_workload("deployment", "web", "web-7d4b9c8f6d-abcde"));
        assert!(!pod_of_workload(
            "deployment",
            "web",
            "web-api-7d4b9c8f6d-abcde"
        ));
        assert!(pod_of_workload("statefulset", "db", "db-12"));
        assert!(!pod_of_workload("statefulset", "db", "db-x"));
        assert!(pod_of_workload("daemonset", "agent", "agent-x7k2p"));
        assert!(!pod_of_workload(
            "daemonset",
            "agent",
            "agent-7d4b9c8f6d-abcde"
        ));
    }
}
