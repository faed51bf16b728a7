//! A workload's current termination settings: the serving container's preStop hook and the
//! pod's terminationGracePeriodSeconds, read from the workload's pod template (or, offline,
//! from what the observations show the pods ran with).
//!
//! Only a preStop whose length can be read from the spec is timed: the `sleep` action
//! (KEP-3960, beta and on by default since v1.30) and an `exec` of `sleep N` (directly or as
//! `sh -c "sleep N …"`). An `httpGet` or any other command lasts as long as the application
//! makes it; then the length the agents observed (preStop exec → SIGTERM) is used when there is
//! one, and the recommendation says which.

use serde::Serialize;
use serde_json::Value;

const NS_PER_S: f64 = 1e9;
/// The API's default terminationGracePeriodSeconds.
pub const DEFAULT_GRACE_S: u64 = 30;

/// Where a workload's current settings were read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SettingsSource {
    /// The workload object's pod template, from the API.
    Api,
    /// What the pods of the recorded rollouts ran with (preStop exec → SIGTERM, the
    /// `grace_period_s` of their deletion).
    Observed,
}

/// How the serving container's preStop hook is written.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PreStop {
    /// No preStop hook: SIGTERM right after the deletion.
    None,
    /// `lifecycle.preStop.sleep.seconds`.
    SleepAction { seconds: u64 },
    /// `lifecycle.preStop.exec` running `sleep`; `arg` is the element of `command` holding the
    /// duration and `range` the duration's bytes in it, so a patch keeps the command's shape.
    ExecSleep {
        command: Vec<String>,
        #[serde(skip)]
        arg: usize,
        #[serde(skip)]
        range: std::ops::Range<usize>,
        seconds: f64,
    },
    /// A hook whose length the spec does not tell (`httpGet`, any other command).
    Untimed { hook: String },
    /// Offline: the preStop the pods were seen to run (preStop exec → SIGTERM).
    Observed { seconds: f64 },
    /// Offline, and neither a preStop nor a SIGTERM mark was observed (no node agent saw the
    /// pods' processes).
    Unknown,
}

impl PreStop {
    /// The hook's length when the spec (or the observations) tell it, in nanoseconds.
    pub fn duration_ns(&self) -> Option<i64> {
        match self {
            PreStop::None => Some(0),
            PreStop::SleepAction { seconds } => Some(
                i64::try_from(*seconds)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000_000),
            ),
            PreStop::ExecSleep { seconds, .. } | PreStop::Observed { seconds } => {
                Some((seconds * NS_PER_S).round() as i64)
            }
            PreStop::Untimed { .. } | PreStop::Unknown => None,
        }
    }

    /// Short text for tables, e.g. `sleep 5s`, `exec sleep 5`, `httpGet :8080/drain`.
    pub fn describe(&self) -> String {
        match self {
            PreStop::None => "none".to_owned(),
            PreStop::SleepAction { seconds } => format!("sleep {seconds}s"),
            PreStop::ExecSleep { seconds, .. } => format!("exec sleep {seconds}"),
            PreStop::Untimed { hook } => hook.clone(),
            PreStop::Observed { seconds } => format!("{:.0} ms (observed)", seconds * 1e3),
            PreStop::Unknown => "unknown".to_owned(),
        }
    }
}

/// One workload's current termination settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Settings {
    pub source: SettingsSource,
    /// The container the preStop belongs to (the serving one); `None` when not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub prestop: PreStop,
    /// `None` when not known (offline, no deletion seen with it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<u64>,
}

/// `5`, `5s`, `0.5`, `2m`, `1h` as GNU `sleep` reads them, in seconds.
fn sleep_seconds(arg: &str) -> Option<f64> {
    let (number, unit) = match arg.char_indices().last()? {
        (i, c @ ('s' | 'm' | 'h' | 'd')) => (&arg[..i], c),
        _ => (arg, 's'),
    };
    let n: f64 = number
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    Some(
        n * match unit {
            'm' => 60.0,
            'h' => 3_600.0,
            'd' => 86_400.0,
            _ => 1.0,
        },
    )
}

/// Finds `sleep N` in an exec hook's command: `[sleep, N]` (any path to sleep), or a shell's
/// `-c` script that starts with `sleep N`.
fn exec_sleep(command: &[String]) -> Option<PreStop> {
    let is_sleep = |s: &str| s == "sleep" || s.ends_with("/sleep");
    if let [bin, n] = command
        && is_sleep(bin)
    {
        return Some(PreStop::ExecSleep {
            command: command.to_vec(),
            arg: 1,
            range: 0..n.len(),
            seconds: sleep_seconds(n)?,
        });
    }
    if let [shell, flag, script] = command
        && (shell.ends_with("sh") && flag == "-c")
    {
        let trimmed = script.trim_start();
        let rest = trimmed.strip_prefix("sleep ")?;
        let start = script.len() - rest.len();
        let token = rest
            .split(|c: char| c.is_whitespace() || c == ';' || c == '&')
            .next()?;
        return Some(PreStop::ExecSleep {
            command: command.to_vec(),
            arg: 2,
            range: start..start + token.len(),
            seconds: sleep_seconds(token)?,
        });
    }
    None
}

fn prestop_of(container: &Value) -> PreStop {
    let Some(hook) = container.pointer("/lifecycle/preStop") else {
        return PreStop::None;
    };
    if let Some(s) = hook.pointer("/sleep/seconds").and_then(Value::as_u64) {
        return PreStop::SleepAction { seconds: s };
    }
    if let Some(cmd) = hook.pointer("/exec/command").and_then(Value::as_array) {
        let command: Vec<String> = cmd
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        return exec_sleep(&command).unwrap_or_else(|| PreStop::Untimed {
            hook: format!("exec {}", command.join(" ")),
        });
    }
    if let Some(get) = hook.get("httpGet") {
        let port = get.get("port").map(|p| match p {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        let path = get.get("path").and_then(Value::as_str).unwrap_or("/");
        return PreStop::Untimed {
            hook: format!("httpGet :{}{path}", port.unwrap_or_default()),
        };
    }
    PreStop::Untimed {
        hook: "a hook kubectl-zdt cannot time".to_owned(),
    }
}

/// The settings in a workload object (Deployment, StatefulSet, DaemonSet as JSON). The serving
/// container is `container` when the observations named it, else the first one that declares
/// a port, else the first.
pub fn from_workload(object: &Value, container: Option<&str>) -> Settings {
    let spec = object.pointer("/spec/template/spec");
    let containers: &[Value] = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let name_of = |c: &Value| c.get("name").and_then(Value::as_str).map(str::to_owned);
    let serving = container
        .and_then(|n| containers.iter().find(|c| name_of(c).as_deref() == Some(n)))
        .or_else(|| {
            containers.iter().find(|c| {
                c.get("ports")
                    .and_then(Value::as_array)
                    .is_some_and(|p| !p.is_empty())
            })
        })
        .or(containers.first());
    Settings {
        source: SettingsSource::Api,
        container: serving.and_then(name_of),
        prestop: serving.map_or(PreStop::None, prestop_of),
        termination_grace_period_seconds: Some(
            spec.and_then(|s| s.get("terminationGracePeriodSeconds"))
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_GRACE_S),
        ),
    }
}

/// Offline settings: the longest preStop the pods were seen to run (none seen while SIGTERM was
/// seen = no preStop; neither = unknown) and the largest grace period they were deleted with.
pub fn observed(
    container: Option<String>,
    prestop_ran_ns: Option<i64>,
    sigterm_seen: bool,
    grace_s: Option<u64>,
) -> Settings {
    let prestop = match (prestop_ran_ns, sigterm_seen) {
        (Some(ns), _) => PreStop::Observed {
            seconds: ns as f64 / NS_PER_S,
        },
        (None, true) => PreStop::None,
        (None, false) => PreStop::Unknown,
    };
    Settings {
        source: SettingsSource::Observed,
        container,
        prestop,
        termination_grace_period_seconds: grace_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(containers: Value, grace: Option<u64>) -> Value {
        let mut spec = json!({"containers": containers});
        if let Some(g) = grace {
            spec["terminationGracePeriodSeconds"] = json!(g);
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
               "spec": {"template": {"spec": spec}}})
    }

    #[test]
    fn each_way_of_writing_a_prestop_is_read_or_called_untimed() {
        let cases = [
            (json!(null), PreStop::None, Some(0)),
            (
                json!({"preStop": {"sleep": {"seconds": 5}}}),
                PreStop::SleepAction { seconds: 5 },
                Some(5_000_000_000),
            ),
            (
                json!({"preStop": {"exec": {"command": ["/bin/sleep", "2.5"]}}}),
                PreStop::ExecSleep {
                    command: vec!["/bin/sleep".into(), "2.5".into()],
                    arg: 1,
                    range: 0..3,
                    seconds: 2.5,
                },
                Some(2_500_000_000),
            ),
            (
                json!({"preStop": {"exec": {"command": ["sh", "-c", "sleep 1m && nginx -s quit"]}}}),
                PreStop::ExecSleep {
                    command: vec!["sh".into(), "-c".into(), "sleep 1m && nginx -s quit".into()],
                    arg: 2,
                    range: 6..8,
                    seconds: 60.0,
                },
                Some(60_000_000_000),
            ),
            (
                json!({"preStop": {"httpGet": {"port": 8080, "path": "/drain"}}}),
                PreStop::Untimed {
                    hook: "httpGet :8080/drain".into(),
                },
                None,
            ),
            (
                json!({"preStop": {"exec": {"command": ["/app/drain"]}}}),
                PreStop::Untimed {
                    hook: "exec /app/drain".into(),
                },
                None,
            ),
        ];
        for (lifecycle, want, ns) in cases {
            let mut c = json!({"name": "app", "ports": [{"containerPort": 8080}]});
            if !lifecycle.is_null() {
                c["lifecycle"] = lifecycle;
            }
            let s = from_workload(&deployment(json!([c]), Some(45)), None);
            assert_eq!(s.prestop, want);
            assert_eq!(s.prestop.duration_ns(), ns, "{want:?}");
            assert_eq!(s.termination_grace_period_seconds, Some(45));
            assert_eq!(s.container.as_deref(), Some("app"));
        }
    }

    #[test]
    fn the_serving_container_is_the_named_one_else_the_one_with_a_port() {
        let containers = json!([
            {"name": "sidecar", "lifecycle": {"preStop": {"sleep": {"seconds": 1}}}},
            {"name": "web", "ports": [{"containerPort": 80}], "lifecycle": {"preStop": {"sleep": {"seconds": 9}}}}
        ]);
        let w = deployment(containers, None);
        let s = from_workload(&w, None);
        assert_eq!(
            (s.container.as_deref(), s.prestop.duration_ns()),
            (Some("web"), Some(9_000_000_000))
        );
        assert_eq!(s.termination_grace_period_seconds, Some(DEFAULT_GRACE_S));
        let s = from_workload(&w, Some("sidecar"));
        assert_eq!(s.container.as_deref(), Some("sidecar"));
        assert_eq!(s.prestop, PreStop::SleepAction { seconds: 1 });
    }

    #[test]
    fn sleep_durations_read_like_gnu_sleep() {
        assert_eq!(sleep_seconds("5"), Some(5.0));
        assert_eq!(sleep_seconds("0.5s"), Some(0.5));
        assert_eq!(sleep_seconds("2m"), Some(120.0));
        assert_eq!(sleep_seconds("infinity"), None);
        assert_eq!(sleep_seconds("-1"), None);
    }
}
