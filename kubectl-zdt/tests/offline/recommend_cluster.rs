//! `kubectl zdt recommend` against the scripted API server (tests/support/kube_double): the workloads'
//! current settings come from the API, the history of three recorded v1.36 rollouts from the
//! node agent's `GET /history` through the double's port-forward; a workload that does not
//! exist is one line and a failure.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use crate::support::kube_double::{self, apiserver::ApiServer, rbac};
use crate::support::recorded::{ROLLOUTS, convert};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use kubectl_zdt::{agent::serve::serve_http, cluster::NAMESPACE};
use serde_json::{Value, json};

/// The agent of node `vm`: answers `/history` with the recorded rollouts and keeps the queries.
async fn history_agent(server: &ApiServer) -> Arc<Mutex<Vec<String>>> {
    let lines: String = ROLLOUTS
        .iter()
        .flat_map(|(d, s)| convert(d, s))
        .map(|o| o.to_json_line() + "\n")
        .collect();
    let queries = Arc::new(Mutex::new(Vec::new()));
    let seen = queries.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    server.forward("zdt-agent-vm", listener.local_addr().unwrap());
    tokio::spawn(serve_http(
        listener,
        move |req: &hyper::Request<hyper::body::Incoming>| {
            seen.lock().unwrap().push(req.uri().to_string());
            let body = if req.uri().path() == "/history" {
                lines.clone()
            } else {
                String::new()
            };
            hyper::Response::new(Full::new(Bytes::from(body)).boxed())
        },
    ));
    server.put(kube_double::agent_pod("vm"));
    queries
}

fn deployment(name: &str, container: Value, grace: u64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "generation": 2},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"terminationGracePeriodSeconds": grace, "containers": [container]}}}
    })
}

/// Runs the real binary against the double; (exit code, stdout, stderr).
async fn cli(kubeconfig: PathBuf, args: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("recommend")
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn settings_from_the_api_and_history_from_the_agents_give_each_workload_its_verdict() {
    let dir = std::env::temp_dir().join(format!("zdt-recommend-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server = ApiServer::start().await;
    let queries = history_agent(&server).await;
    // web: a 30 s `exec sleep` where ~1 s is needed; webfast: no preStop at all.
    server.put(deployment(
        "web",
        json!({"name": "web", "image": "nginx", "ports": [{"containerPort": 80}],
               "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "sleep 30"]}}}}),
        60,
    ));
    server.put(deployment(
        "webfast",
        json!({"name": "httpd", "image": "httpd", "ports": [{"containerPort": 8080}]}),
        5,
    ));
    let kubeconfig = server.kubeconfig(&dir, "user");

    let (code, out, err) = cli(
        kubeconfig.clone(),
        &["-n", "default", "-o", "json", "--min-samples", "2"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let web = &v["workloads"][0];
    assert_eq!(web["workload"], "deployment/web");
    assert_eq!(
        (web["rollouts"].as_u64(), web["pods"].as_u64()),
        (Some(2), Some(4))
    );
    assert_eq!(web["current"]["source"], "api");
    assert_eq!(web["current"]["prestop"]["seconds"], 30.0);
    assert_eq!(web["verdict"], "wasteful", "{web:#}");
    let advised = web["advised"]["prestop_seconds"].as_u64().unwrap();
    // The 2 pods of each rollout (one per template change) each wait 30 s − the advice too
    // long.
    assert_eq!(
        web["wasted_seconds_per_rollout"].as_f64().unwrap(),
        (30 - advised) as f64 * 2.0
    );
    let fast = &v["workloads"][1];
    assert_eq!(fast["workload"], "deployment/webfast");
    assert_eq!(fast["current"]["prestop"]["kind"], "none");
    assert_eq!(fast["current"]["termination_grace_period_seconds"], 5);
    assert_eq!(fast["verdict"], "unsafe", "{fast:#}");
    assert!(
        fast["reason"]
            .as_str()
            .unwrap()
            .contains("13 connections failed in the unsafe window"),
        "{fast:#}"
    );

    // The whole window is asked of the agent, unfiltered (dataplane lines name no workload).
    let asked = queries.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].starts_with("/history?since=") && asked[0].contains("&until="),
        "{asked:?}"
    );

    // The patch keeps web's preStop in the shape it has (a shell running sleep).
    let (code, out, err) = cli(
        kubeconfig.clone(),
        &["deployment/web", "-n", "default", "-o", "yaml"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let patch: Value =
        serde::Deserialize::deserialize(serde_yaml::Deserializer::from_str(&out).next().unwrap())
            .unwrap();
    let container = &patch["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "web");
    assert_eq!(
        container["lifecycle"]["preStop"]["exec"]["command"],
        json!(["/bin/sh", "-c", format!("sleep {advised}")])
    );

    // Every call is allowed by what users are given: the Role in zdt-system (agents,
    // port-forward) and the ClusterRole elsewhere (the workloads).
    for call in server.calls() {
        let (kind, name) = if call.namespace.as_deref() == Some(NAMESPACE) {
            ("Role", "zdt-user")
        } else {
            ("ClusterRole", "zdt-user")
        };
        rbac::assert_all_allowed(kind, name, std::slice::from_ref(&call));
    }

    let (code, out, err) = cli(kubeconfig, &["deployment/nope", "-n", "default"]).await;
    assert_eq!(code, Some(1));
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("kubectl-zdt: deployment/nope not found in namespace default"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `recommend deployment/webfast -o yaml` (no preStop yet) against a server of `git_version`:
/// the preStop handler of its patch.
async fn new_prestop_on(git_version: &str) -> (Value, String) {
    let dir = std::env::temp_dir().join(format!(
        "zdt-recommend-version-{}-{git_version}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let server = ApiServer::start().await;
    server.set_version(git_version);
    history_agent(&server).await;
    server.put(deployment(
        "webfast",
        json!({"name": "httpd", "image": "httpd", "ports": [{"containerPort": 8080}]}),
        5,
    ));
    let (code, out, err) = cli(
        server.kubeconfig(&dir, "user"),
        &[
            "deployment/webfast",
            "-n",
            "default",
            "-o",
            "yaml",
            "--min-samples",
            "2",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let patch: Value =
        serde::Deserialize::deserialize(serde_yaml::Deserializer::from_str(&out).next().unwrap())
            .unwrap();
    let _ = std::fs::remove_dir_all(dir);
    (
        patch["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"].clone(),
        out,
    )
}

#[tokio::test]
async fn a_new_prestop_execs_sleep_on_1_28_and_uses_the_sleep_action_on_1_31() {
    let (old, text) = new_prestop_on("v1.28.15").await;
    let seconds = old["exec"]["command"][1].as_str().unwrap().to_owned();
    assert_eq!(
        old,
        json!({"exec": {"command": ["sleep", seconds]}}),
        "{text}"
    );
    assert!(text.contains("the image needs a sleep binary"), "{text}");
    assert!(!text.contains("preStop.sleep needs"), "{text}");
    let (new, text) = new_prestop_on("v1.31.2-gke.1000").await;
    assert_eq!(
        new,
        json!({"sleep": {"seconds": seconds.parse::<u64>().unwrap()}}),
        "{text}"
    );
}
