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
    analyze_bytes(args, stdin.unwrap_or_default().as_bytes())
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

/// The recorded real rollout, as text.
fn real_text() -> String {
    std::fs::read_to_string(fixture("real-nftables-fast-exit.jsonl")).unwrap()
}

fn json_of(o: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(o)).unwrap()
}

#[test]
fn a_margin_over_an_hour_is_refused_in_one_line() {
    let real = fixture("real-nftables-fast-exit.jsonl");
    let real = real.to_str().unwrap();
    for margin in ["18446744073709551615", "3600001"] {
        let o = analyze(&["--margin-ms", margin, real], None);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(o.stdout.is_empty());
        assert!(
            err.lines()
                .next()
                .unwrap()
                .contains("ms is over an hour (3600000 ms), the longest margin accepted"),
            "{err}"
        );
    }
    // An hour is accepted, and the advice still covers the measured gap (993 ms) + margin.
    let v = json_of(&analyze(
        &["--margin-ms", "3600000", "-o", "json", real],
        None,
    ));
    assert_eq!(v["advice"]["prestop_seconds"], 3601, "{:#}", v["advice"]);
    assert!(
        v["advice"]["termination_grace_period_seconds"]
            .as_u64()
            .unwrap()
            >= 3601
    );
}

#[test]
fn absurd_times_and_uncertainties_are_named_by_line_and_the_rest_analysed() {
    let real = real_text();
    let refused = |time: &str| {
        format!(
            r#"{{"kind":"refused","time":"{time}","node":"vm","ip":"10.244.0.47","port":80,"reason":"NO_SOCKET"}}"#
        )
    };
    let removal = real
        .lines()
        .find(|l| l.contains("dataplane_removed"))
        .unwrap()
        .replacen('}', r#","uncertainty_ns":18446744073709551615}"#, 1);
    let text = format!(
        "{real}{}\n{}\n{}\n{removal}\n",
        refused("0000-01-01T00:00:00Z"),
        refused("1969-12-31T23:59:59.999999999Z"),
        refused("9999-01-01T00:00:00Z"),
    );
    let o = analyze(&["-o", "json", "-"], Some(&text));
    let err = String::from_utf8_lossy(&o.stderr);
    for (line, what) in [
        (
            36,
            "field \"time\" is 0000-01-01T00:00:00Z, outside the years 2000-2199",
        ),
        (
            37,
            "field \"time\" is 1969-12-31T23:59:59.999999999Z, outside",
        ),
        (38, "field \"time\" is 9999-01-01T00:00:00Z, outside"),
        (
            39,
            "field \"uncertainty_ns\" is 18446744073709551615, more than an hour",
        ),
    ] {
        assert!(err.contains(&format!("<stdin>:{line}: {what}")), "{err}");
    }
    let v = json_of(&o);
    assert_eq!(v["input"]["rejected_lines"].as_array().unwrap().len(), 4);
    // The rest is analysed as if those lines were not there.
    assert!(
        v["rollouts"][0]["duration_ms"].as_f64().unwrap() < 2_000.0,
        "{v:#}"
    );
    assert_eq!(v["advice"]["prestop_seconds"], 2);
}

#[test]
fn the_chart_of_a_span_of_years_has_few_labels_in_days() {
    let real = real_text();
    // A line of one of the rollout's pods, 25 years early (by its UID: a line naming only an
    // address long before any pod claimed it is nobody's).
    let text = format!(
        "{real}{}\n",
        r#"{"kind":"refused","time":"2001-01-01T00:00:00Z","node":"vm","ip":"10.244.0.47","port":80,"pod":"default/webfast-7759c99476-mbbl4","pod_uid":"5e76e23e-7cb5-4d8a-be35-2f9156be7171"}"#
    );
    let table = stdout(&analyze(&["-"], Some(&text)));
    let labels = table
        .lines()
        .skip_while(|l| !l.starts_with("TIMELINE"))
        .nth(1)
        .unwrap();
    assert!(labels.trim_end().ends_with(" d"), "{table}");
    let numbers: Vec<&str> = labels.split_whitespace().collect();
    assert!(numbers.len() <= 8, "{labels}");
    assert!(numbers.iter().all(|n| n.len() <= 6), "{labels}");
}

fn bytes_of(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// `analyze ARGS` with `stdin` as raw bytes.
fn analyze_bytes(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
        .arg("analyze")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    // Written from a thread: the reader may stop before the end (and close the pipe).
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

#[test]
fn a_line_that_is_not_utf8_is_named_and_the_rest_analysed() {
    let mut bytes = bytes_of("real-nftables-fast-exit.jsonl");
    bytes.extend_from_slice(b"{\"kind\":\"refused\",\"node\":\"caf\xe9\"}\n");
    bytes.extend_from_slice(
        br#"{"kind":"refused","time":"2026-11-22T01:16:45.9Z","node":"vm","ip":"10.9.9.9","port":80}"#,
    );
    let o = analyze_bytes(&["-o", "json", "-"], &bytes);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("<stdin>:36: not UTF-8 (byte 30 of the line is 0xe9)"),
        "{err}"
    );
    let v = json_of(&o);
    // Every other line was read, the one after the bad line too.
    assert_eq!(v["input"]["observations"], 36, "{:#}", v["input"]);
    assert_eq!(v["advice"]["prestop_seconds"], 2);
}

#[test]
fn a_compressed_file_is_one_line_naming_the_tool() {
    let dir = std::env::temp_dir().join(format!("zdt-analyze-gz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rollout.jsonl.gz");
    // A gzip header (magic, deflate, no flags) and some deflated bytes.
    std::fs::write(
        &file,
        [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xcb, 0x48, 0xcd],
    )
    .unwrap();
    let o = analyze(&[file.to_str().unwrap()], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("is gzip-compressed") && err.contains("`zcat "),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_same_stream_given_twice_counts_once_and_says_so() {
    let real = fixture("real-nftables-fast-exit.jsonl");
    let real = real.to_str().unwrap();
    let once = json_of(&analyze(&["-o", "json", real], None));
    let o = analyze(&["-o", "json", real, real], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: 35 duplicate observations dropped"),
        "{err}"
    );
    let twice = json_of(&o);
    assert_eq!(twice["rollouts"], once["rollouts"]);
    assert_eq!(twice["advice"], once["advice"]);
    assert_eq!(twice["input"]["observations"], 35);
    assert!(
        twice["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .starts_with("35 duplicate observations dropped")),
        "{twice:#}"
    );
}

#[test]
fn a_line_over_the_limit_is_named_and_not_read_whole() {
    let mut bytes = bytes_of("real-nftables-fast-exit.jsonl");
    // 2 MiB without a newline, then a line that is never reached.
    bytes.extend(std::iter::repeat_n(b' ', 2 << 20));
    bytes.extend_from_slice(b"\n{}\n");
    let o = analyze_bytes(&["-o", "json", "-"], &bytes);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("<stdin>:36: longer than 1048576 bytes, the longest line read"),
        "{err}"
    );
    assert_eq!(
        json_of(&o)["input"]["rejected_lines"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn dev_zero_is_refused_instead_of_filling_memory() {
    // As a file, and on standard input (which is kept in a temporary file only as far as it
    // is read: never whole).
    for (arg, name) in [("/dev/zero", "/dev/zero"), ("-", "<stdin>")] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
            .args(["analyze", arg])
            .stdin(std::fs::File::open("/dev/zero").unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A guard, not a measurement: reading /dev/zero whole never ends.
        let mut waited = 0;
        while child.try_wait().unwrap().is_none() {
            if waited == 600 {
                child.kill().unwrap();
                panic!("analyze {arg} was still reading after a minute");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            waited += 1;
        }
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        let expected = [
            format!("{name}:1: longer than 1048576 bytes"),
            format!("no observation could be read from {arg}"),
        ];
        assert!(expected.iter().all(|e| err.contains(e.as_str())), "{err}");
    }
}

#[test]
fn control_characters_from_the_data_never_reach_the_terminal() {
    let real = real_text();
    let evil = real
        .replace(
            "webfast-7759c99476-mbbl4",
            r"webfast-7759c99476-mbbl4\u001b[2J\u001b]0;owned\u0007",
        )
        .replace(r#""node":"vm""#, r#""node":"vm\r\u202eevil\u009b""#);
    for format in ["table", "wide"] {
        let table = stdout(&analyze(&["-o", format, "-"], Some(&evil)));
        let raw: Vec<char> = table
            .chars()
            .filter(|c| *c != '\n' && (c.is_control() || *c == '\u{202e}'))
            .collect();
        assert!(raw.is_empty(), "{format}: {raw:?} in\n{table}");
        assert!(table.contains(r"mbbl4^[[2J^[]0;owned^G"), "{table}");
        assert!(table.contains(r"vm\r\u{202e}evil\u{9b}"), "{table}");
    }
    let dir = std::env::temp_dir().join(format!("zdt-analyze-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("evil.jsonl");
    std::fs::write(&file, &evil).unwrap();
    for format in ["table", "yaml"] {
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
            .args([
                "recommend",
                "--from-file",
                file.to_str().unwrap(),
                "-o",
                format,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.chars().any(|c| c != '\n' && c.is_control()),
            "recommend -o {format}:\n{text}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
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
            && html.contains("<title>ready and listening endpoints</title>")
            && html.contains("ready min 2 · ready+listening min 0 of 2"),
        "{html}"
    );
}

/// Three `rollout restart`s 20 minutes apart on 5 nodes, as agent lines, one line twice.
fn three_rollouts() -> Vec<kubectl_zdt::observation::Observation> {
    use kubectl_zdt::{
        correlate::{simulate, time::WallNs},
        observation::Kind,
    };
    let nodes = simulate::node_names(5);
    let mut obs = Vec::new();
    for k in 0..3i64 {
        let mut plans = simulate::rollout(5, 4, 42 + k as u64);
        for (i, p) in plans.iter_mut().enumerate() {
            p.name = format!("default/web-{:08x}-{i:05}", 0x5d8f_0000 + k);
            p.uid = format!("uid-{k}-{i}");
        }
        let t0 = WallNs(1_795_310_205_000_000_000 + k * 1_200_000_000_000);
        obs.extend(simulate::observations(
            t0,
            &nodes,
            &plans,
            "default/web",
            8080,
        ));
    }
    // The agent's refusals name their client's port: no two are equal lines.
    for (port, o) in (1_024u16..).zip(obs.iter_mut().filter(|o| o.kind == Kind::Refused)) {
        o.peer_port = Some(port);
    }
    let again = obs[obs.len() / 2].clone();
    obs.insert(obs.len() / 2, again);
    obs
}

#[test]
fn a_long_stream_on_stdin_is_analysed_a_window_at_a_time_to_the_whole_streams_report() {
    use kubectl_zdt::{
        correlate::{self, Options},
        report::{self, Format},
    };
    let mut obs = three_rollouts();
    let text: String = obs.iter().map(|o| o.to_json_line() + "\n").collect();
    let out = analyze_bytes(&["-v", "-o", "json", "-"], text.as_bytes());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 windows"), "{err}");
    let mut whole = correlate::correlate(
        &{
            let dropped = kubectl_zdt::analyze::drop_duplicates(&mut obs);
            assert_eq!(dropped, 1);
            obs
        },
        &Options::default(),
    );
    whole
        .warnings
        .push("1 duplicate observation dropped (the same node, kind, time and fields as another line: the same stream given twice?)".into());
    assert_eq!(stdout(&out), report::render(&whole, Format::Json).unwrap());
}

/// `lines` split by node: (node, its lines as text, in the stream's order), nodes in order of
/// their first line.
fn split_by_node<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = Vec::new();
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let node = v["node"].as_str().unwrap().to_owned();
        let at = match files.iter().position(|(n, _)| *n == node) {
            Some(at) => at,
            None => {
                files.push((node, String::new()));
                files.len() - 1
            }
        };
        files[at].1.push_str(line);
        files[at].1.push('\n');
    }
    files
}

/// A temporary directory of this process, `name`, empty.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zdt-analyze-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn one_file_per_node_is_merged_by_time_and_analysed_a_window_at_a_time() {
    // Each node's agent writes its own stream: three rollouts split into one file per node
    // (each out of order within a rollout, as the generator writes them), the API's lines on
    // standard input. Read one after the other they never go back less than 120 s in time,
    // so they could not be cut; merged by time they are cut between the rollouts.
    let text: String = three_rollouts()
        .iter()
        .map(|o| o.to_json_line() + "\n")
        .collect();
    let dir = scratch("per-node");
    let whole_file = dir.join("all.jsonl");
    std::fs::write(&whole_file, &text).unwrap();
    let mut args = vec!["-v".to_owned(), "-o".to_owned(), "json".to_owned()];
    let mut api = String::new();
    let files = split_by_node(text.lines());
    assert_eq!(files.len(), 6, "5 nodes and the API");
    for (node, lines) in files {
        if node == "api" {
            api = lines;
            args.push("-".to_owned());
            continue;
        }
        let file = dir.join(format!("{node}.jsonl"));
        std::fs::write(&file, lines).unwrap();
        args.push(file.to_str().unwrap().to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let split = analyze_bytes(&args, api.as_bytes());
    let whole = analyze(&["-v", "-o", "json", whole_file.to_str().unwrap()], None);
    let err = String::from_utf8_lossy(&split.stderr);
    assert!(err.contains("3 windows"), "{err}");
    assert!(
        String::from_utf8_lossy(&whole.stderr).contains("3 windows"),
        "{}",
        String::from_utf8_lossy(&whole.stderr)
    );
    assert_eq!(stdout(&split), stdout(&whole));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_two_node_recordings_split_by_node_give_the_recordings_report() {
    // The recordings interleave their nodes' lines as `trace --save` received them, not in
    // time order; split by node (the recording client's own lines as a third file) and merged
    // by time they are read in another order, to the same report.
    let dir = scratch("recorded-split");
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real-cluster");
    let mut recordings = 0;
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let files = split_by_node(text.lines().filter(|l| !l.trim().is_empty()));
        if files.iter().filter(|(n, _)| n != "kubectl-zdt").count() < 2 {
            continue;
        }
        recordings += 1;
        let mut args = vec!["-o".to_owned(), "wide".to_owned()];
        for (node, lines) in files {
            let file = dir.join(format!("{node}.jsonl"));
            std::fs::write(&file, lines).unwrap();
            args.push(file.to_str().unwrap().to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let split = stdout(&analyze(&args, None));
        let whole = stdout(&analyze(&["-o", "wide", path.to_str().unwrap()], None));
        assert_eq!(split, whole, "{}", path.display());
    }
    assert_eq!(
        recordings,
        7,
        "the two-node recordings of {}",
        folder.display()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn each_files_bad_lines_are_named_by_its_own_line_numbers_when_merged() {
    // Two halves of the real rollout, each with a bad line: merged by time, each problem still
    // names its own file and line, file by file, and every good line is read.
    let real = real_text();
    let lines: Vec<&str> = real.lines().collect();
    let dir = scratch("merged-bad");
    let a = dir.join("a.jsonl");
    let even: Vec<&str> = lines.iter().step_by(2).copied().collect();
    let odd: Vec<&str> = lines.iter().skip(1).step_by(2).copied().collect();
    std::fs::write(
        &a,
        format!("{}\nnot json\n{}\n", even[0], even[1..].join("\n")),
    )
    .unwrap();
    let stdin = format!("{}\n[1]\n", odd.join("\n"));
    let o = analyze_bytes(&["-o", "json", a.to_str().unwrap(), "-"], stdin.as_bytes());
    let err = String::from_utf8_lossy(&o.stderr);
    let named: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(".jsonl:") || l.contains("<stdin>:"))
        .collect();
    assert_eq!(named.len(), 2, "{err}");
    assert!(
        named[0].contains(&format!("{}:2: not JSON", a.display())),
        "{err}"
    );
    assert!(
        named[1].contains(&format!("<stdin>:{}: a JSON array", odd.len() + 1)),
        "{err}"
    );
    assert_eq!(json_of(&o)["input"]["observations"], lines.len());
    let _ = std::fs::remove_dir_all(dir);
}

/// More input files than the soft limit on open files (here 40, lowered by the shell): every
/// file is held open while they are read merged by time, so `analyze` raises the limit (to
/// the hard one at most) instead of failing with "Too many open files".
#[test]
fn more_files_than_the_open_file_limit_are_read() {
    let dir = scratch("many-files");
    let recording_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/real-cluster/v1.28-one-node-fast-final.jsonl");
    let recording = std::fs::read_to_string(&recording_path).unwrap();
    let lines: Vec<&str> = recording.lines().collect();
    let files = 100;
    let mut names = String::new();
    let chunks = lines.chunks(lines.len().div_ceil(files));
    let made = chunks.len();
    assert!(made > 90, "{made} files");
    for (i, chunk) in chunks.enumerate() {
        let f = dir.join(format!("part-{i:03}.jsonl"));
        std::fs::write(&f, chunk.join("\n") + "\n").unwrap();
        names.push_str(&format!(" {}", f.display()));
    }
    // `ulimit -Sn` lowers the soft limit only, `ulimit -n` both.
    let run = |limit: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit {limit} && exec {} analyze -o json{names}",
                env!("CARGO_BIN_EXE_kubectl-zdt")
            ))
            .output()
            .unwrap()
    };
    let whole = Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
        .args(["analyze", "-o", "json"])
        .arg(&recording_path)
        .output()
        .unwrap();
    let out = run("-Sn 40");
    // Even the hard limit too low: one line naming both numbers and the ways out.
    let low = run("-n 80");
    let _ = std::fs::remove_dir_all(&dir);
    let said = String::from_utf8_lossy(&low.stderr);
    assert!(!low.status.success());
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.contains(&format!(
            "{made} input files are more than this process may hold open at once (its hard limit is 80 files"
        )),
        "{said}"
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&whole.stdout),
        "the parts merged give the recording's report"
    );
}
