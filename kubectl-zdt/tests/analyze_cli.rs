//! `kubectl zdt analyze` as a user runs it: every output format on the real fast-exit rollout,
//! the standalone agent's output, stdin, and a file with bad lines.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/correlate")
        .join(name)
}

fn analyze(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
        .arg("analyze")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "analyze failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn the_real_rollout_reads_the_same_in_json_and_yaml() {
    let real = fixture("real-nftables-fast-exit.jsonl");
    let real = real.to_str().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&analyze(&["-o", "json", real], None))).unwrap();
    let yaml: serde_json::Value =
        serde_yaml::from_str(&stdout(&analyze(&["-o", "yaml", real], None))).unwrap();
    assert_eq!(json, yaml);
    assert_eq!(json["apiVersion"], "zdt.dev/v1");
    assert_eq!(json["kind"], "RolloutReport");
    let pod = &json["rollouts"][0]["pods"][0];
    assert_eq!(pod["pod"], "default/webfast-7759c99476-mbbl4");
    assert_eq!(pod["ip"], "10.244.0.47");
    assert_eq!(pod["gap_ms"], 993.346);
    assert_eq!(pod["propagation_ms"], 994.67);
    assert_eq!(pod["errors"]["unsafe_window"], 12);
    assert_eq!(pod["errors"]["after_netns_gone"], 1);
}

#[test]
fn the_table_shows_the_verdict_the_chart_and_a_ready_patch() {
    let real = fixture("real-nftables-fast-exit.jsonl");
    let table = stdout(&analyze(&[real.to_str().unwrap()], None));
    assert!(
        table.starts_with("ROLLOUT deployment/webfast -n default"),
        "{table}"
    );
    // The pod's address is in `-o wide` only: the default fits 120 columns.
    assert!(
        table.contains("webfast-7759c99476-mbbl4  ") && !table.contains("10.244.0.47"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .all(|l| l.starts_with("  kubectl ") || l.chars().count() <= 120),
        "{table}"
    );
    assert!(
        table.contains("TIMELINE  0 ms = first deletion seen"),
        "{table}"
    );
    assert!(
        table.contains("kubectl patch deployment/webfast -n default --type=strategic"),
        "{table}"
    );
    let wide = stdout(&analyze(&["-o", "wide", real.to_str().unwrap()], None));
    assert!(
        wide.contains("LISTEN CLOSED") && wide.contains("NODES\n  vm  35 observations"),
        "{wide}"
    );
    assert!(
        wide.contains("webfast-7759c99476-mbbl4  10.244.0.47"),
        "{wide}"
    );
}

#[test]
fn the_standalone_agents_output_is_reported_without_inventing_marks() {
    let text = std::fs::read_to_string(fixture("standalone-agent.jsonl")).unwrap();
    let out = analyze(&["-o", "json", "-"], Some(&text));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let pod = &json["rollouts"][0]["pods"][0];
    assert_eq!(json["rollouts"][0]["workload"], "unknown");
    assert_eq!(pod["ip"], "10.244.0.46");
    assert!(pod.get("pod").is_none());
    // 2 refused + 40 recovered from the loss report + 1 reset: no cause without marks.
    assert_eq!(pod["errors"]["undetermined"], 43);
    assert_eq!(pod["verdict"], "inconclusive");
    assert_eq!(pod["dataplane"][0]["state"], "unknown");
    assert!(json.get("advice").is_none());
    assert!(
        json["advice_unavailable"]
            .as_str()
            .unwrap()
            .contains("run the node agents and the API watch")
    );
    assert!(
        json["warnings"][0]
            .as_str()
            .unwrap()
            .contains("could not deliver 40 events")
    );
}

#[test]
fn bad_lines_are_named_by_number_and_the_rest_is_still_analysed() {
    let good = std::fs::read_to_string(fixture("no-prestop.jsonl")).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    lines.insert(3, "not json at all");
    lines.insert(
        5,
        r#"{"kind":"teleported","time":"2026-11-22T02:20:00Z","node":"a"}"#,
    );
    lines.insert(
        7,
        r#"{"kind":"refused","time":"2026-11-22T02:20:00Z","node":"a","port":"http"}"#,
    );
    lines.insert(9, r#"{"kind":"refused","node":"a"}"#);
    let out = analyze(&["-o", "json", "-"], Some(&(lines.join("\n") + "\n")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("<stdin>:4: not JSON"), "{stderr}");
    assert!(
        stderr.contains("<stdin>:6: unknown kind \"teleported\"; expected one of refused, reset"),
        "{stderr}"
    );
    assert!(
        stderr.contains("<stdin>:8: field \"port\" is \"http\", expected a port number 0-65535"),
        "{stderr}"
    );
    assert!(
        stderr.contains("<stdin>:10: missing field \"time\""),
        "{stderr}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["input"]["rejected_lines"].as_array().unwrap().len(), 4);
    assert_eq!(json["rollouts"][0]["pods"][0]["gap_ms"], 588.0);
}

#[test]
fn a_file_with_nothing_readable_is_one_clear_error() {
    let out = analyze(&["-"], Some("garbage\n"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no observation could be read from -; expected JSON lines as written by `kubectl zdt agent`"), "{stderr}");
    let missing = analyze(&["/nonexistent/obs.jsonl"], None);
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("kubectl-zdt: failed to read /nonexistent/obs.jsonl")
    );
}

#[test]
fn server_version_before_1_30_advises_an_exec_of_sleep_in_the_patches() {
    let real = fixture("real-nftables-fast-exit.jsonl");
    let real = real.to_str().unwrap();
    let advice = |extra: &[&str]| {
        let args: Vec<&str> = ["-o", "json"].iter().chain(extra).copied().collect();
        let args: Vec<&str> = args.into_iter().chain([real]).collect();
        let json: serde_json::Value = serde_json::from_str(&stdout(&analyze(&args, None))).unwrap();
        json["advice"].clone()
    };
    let old = advice(&["--server-version", "v1.28.4"]);
    assert_eq!(old["prestop_action"], "exec_sleep", "{old:#}");
    let seconds = old["prestop_seconds"].as_u64().unwrap();
    let command = old["patches"][0]["command"].as_str().unwrap();
    assert!(
        command.contains(&format!(
            r#""preStop":{{"exec":{{"command":["sleep","{seconds}"]}}}}"#
        )),
        "{command}"
    );
    assert!(
        old["reason"]
            .as_str()
            .unwrap()
            .contains("needs a sleep binary"),
        "{old:#}"
    );
    // Without a version (a file says nothing of its cluster): the sleep action.
    let new = advice(&[]);
    assert_eq!(new["prestop_action"], "sleep");
    assert!(
        new["patches"][0]["command"]
            .as_str()
            .unwrap()
            .contains(&format!(r#""preStop":{{"sleep":{{"seconds":{seconds}}}}}"#)),
        "{new:#}"
    );
}

#[test]
fn new_pods_refusing_before_they_listen_are_a_table_of_their_own_a_chart_row_and_a_probe() {
    let run = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/real-cluster/v1.23-startup-t1.jsonl");
    let run = run.to_str().unwrap();
    let table = stdout(&analyze(&[run], None));
    assert!(
        table
            .lines()
            .all(|l| l.starts_with("  kubectl ") || l.chars().count() <= 120),
        "{table}"
    );
    for needle in [
        "NEW POD",
        "REFUSED BEFORE LISTENING",
        // The default table's row: probe unknown (the recording predates it), the gap, 181.
        "startup-7f98c5b6cd-wtdsh  unknown           +2458.9 ms                       181",
        "+startup-7f98c5b6cd-wtdsh  Y",
        "readiness probe for deployment/startup -n default: 386 connections refused",
        r#""readinessProbe":{"tcpSocket":{"port":8080},"periodSeconds":1}"#,
    ] {
        assert!(table.contains(needle), "{needle}\n{table}");
    }
    let html_path = std::env::temp_dir().join(format!("zdt-startup-{}.html", std::process::id()));
    stdout(&analyze(
        &["--html", html_path.to_str().unwrap(), "-o", "json", run],
        None,
    ));
    let html = std::fs::read_to_string(&html_path).unwrap();
    let _ = std::fs::remove_file(&html_path);
    assert!(html.contains("+startup-7f98c5b6cd-fknrg"), "{html}");
    assert!(html.contains("routed before listening"), "{html}");
    // The capacity band: ready and listening endpoints as step lines.
    assert!(
        html.contains("<title>ready endpoints</title>")
            && html.contains("<title>listening endpoints</title>")
            && html.contains("ready min 2 · listening min 0 of 2"),
        "{html}"
    );
}
