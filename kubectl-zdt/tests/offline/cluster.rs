//! `kubectl zdt install | status | uninstall` against the scripted API server (a test double,
//! tests/support/kube_double/apiserver.rs), with the agents' endpoints served on 127.0.0.1 and reached
//! through the double's port-forward, as the CLI reaches real agents through the API server.

use std::{sync::Arc, time::Duration};

use crate::support::{
    self,
    kube_double::{apiserver::ApiServer, rbac},
};
use kubectl_zdt::{
    agent::{backlog::Backlog, serve::Gauges},
    cluster::{
        self, NAMESPACE,
        connect::KubeArgs,
        install::{self, InstallArgs},
        status,
    },
    observation::{Kind, NodeName, Observation},
};
use serde_json::{Value, json};

fn agent_pod(node: &str, ready: bool, container_status: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("zdt-agent-{node}"), "namespace": NAMESPACE,
                     "labels": {"app.kubernetes.io/name": "zdt-agent", "app.kubernetes.io/part-of": "kubectl-zdt"}},
        "spec": {"nodeName": node, "hostNetwork": true, "containers": [{"name": "agent", "image": "x"}]},
        "status": {"phase": "Running",
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                   "containerStatuses": [container_status]}
    })
}

fn running() -> Value {
    json!({"name": "agent", "ready": true, "restartCount": 0, "image": "x", "imageID": "",
           "state": {"running": {"startedAt": "2026-11-22T01:00:00Z"}}})
}

/// What the kubelet reports for an agent that exited at start with one line on stderr.
fn crash_looping(last_line: &str) -> Value {
    json!({"name": "agent", "ready": false, "restartCount": 3, "image": "x", "imageID": "",
           "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
           "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": last_line}}})
}

/// Plays the DaemonSet controller and the kubelets: once the DaemonSet is applied, one agent
/// pod per node, with the state the test wants.
fn script_daemonset(server: &Arc<ApiServer>, pods: Vec<(Duration, Value)>) {
    let server = server.clone();
    let mut changes = server.changes();
    tokio::spawn(async move {
        loop {
            let Ok(change) = changes.recv().await else {
                return;
            };
            if change.resource == "daemonsets" && change.kind == "ADDED" {
                break;
            }
        }
        let mut ds = server
            .get("apps", "daemonsets", NAMESPACE, "zdt-agent")
            .unwrap();
        let nodes = pods
            .iter()
            .map(|(_, p)| p["spec"]["nodeName"].to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        ds["status"] = json!({"desiredNumberScheduled": nodes, "currentNumberScheduled": nodes,
                              "updatedNumberScheduled": nodes, "numberMisscheduled": 0,
                              "numberReady": 0, "numberAvailable": 0});
        server.put(ds.clone());
        // The controller counts the nodes whose agent is ready.
        let mut ready = std::collections::BTreeMap::new();
        for (delay, pod) in pods {
            tokio::time::sleep(delay).await;
            let is_ready = pod["status"]["conditions"][0]["status"] == "True";
            ready.insert(pod["spec"]["nodeName"].to_string(), is_ready);
            server.put(pod);
            let n = ready.values().filter(|r| **r).count();
            ds["status"]["numberReady"] = json!(n);
            ds["status"]["numberAvailable"] = json!(n);
            server.put(ds.clone());
        }
    });
}

fn args(server: &ApiServer, dir: &std::path::Path, token: &str) -> KubeArgs {
    KubeArgs {
        kubeconfig: Some(server.kubeconfig(dir, token)),
        ..KubeArgs::default()
    }
}

fn install_args(image: &str, timeout: Duration) -> InstallArgs {
    InstallArgs {
        image: Some(image.to_owned()),
        dry_run: None,
        server_version: None,
        output: install::ManifestFormat::Yaml,
        timeout,
        no_wait: false,
    }
}

#[tokio::test]
async fn install_applies_every_manifest_server_side_and_waits_for_the_agent_that_recovers() {
    let dir = tempdir();
    let server = Arc::new(ApiServer::start().await);
    script_daemonset(
        &server,
        vec![
            (Duration::ZERO, agent_pod("node-a", true, running())),
            (
                Duration::ZERO,
                agent_pod(
                    "node-b",
                    false,
                    json!({"name": "agent", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"waiting": {"reason": "ContainerCreating"}}}),
                ),
            ),
            (
                Duration::from_millis(300),
                agent_pod("node-b", true, running()),
            ),
        ],
    );
    let kube = args(&server, dir.path(), "admin");
    let agents = install::install(
        &kube,
        &install_args("registry.local/zdt:e2e-1", Duration::from_secs(20)),
    )
    .await
    .unwrap();
    let nodes: Vec<_> = agents.iter().map(|a| (a.node.as_str(), a.ready)).collect();
    assert_eq!(nodes, [("node-a", true), ("node-b", true)]);

    // Every object was applied with server-side apply (PATCH apply-patch+yaml), and the agent
    // image is the one asked for.
    let applies: Vec<String> = server
        .calls()
        .iter()
        .filter(|c| c.verb == "patch")
        .map(|c| format!("{}/{}", c.resource, c.name.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        applies,
        [
            "namespaces/zdt-system",
            "serviceaccounts/zdt-agent",
            "clusterroles/zdt-agent",
            "clusterrolebindings/zdt-agent",
            "roles/zdt-user",
            "clusterroles/zdt-user",
            "daemonsets/zdt-agent"
        ]
    );
    let ds = server
        .get("apps", "daemonsets", NAMESPACE, "zdt-agent")
        .unwrap();
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.local/zdt:e2e-1"
    );
}

/// Installing over running agents (an upgrade, or `cargo xtask e2e` after a manual install):
/// the old agent is ready until the DaemonSet controller replaces it. On a real cluster
/// `install` said "ready" at once and the `trace` right after found the new agent still
/// `ContainerCreating`.
#[tokio::test]
async fn install_over_running_agents_waits_for_the_new_ones() {
    let dir = tempdir();
    let server = Arc::new(ApiServer::start().await);
    let kube = args(&server, dir.path(), "admin");
    let no_wait = InstallArgs {
        no_wait: true,
        ..install_args("registry.local/zdt:old", Duration::from_secs(5))
    };
    install::install(&kube, &no_wait).await.unwrap();
    // The API server bumps the generation as it stores a new spec; this double does not, so
    // the object is put as it is right after the apply: generation 2, observed 1.
    let mut ds = server
        .get("apps", "daemonsets", NAMESPACE, "zdt-agent")
        .unwrap();
    ds["metadata"]["generation"] = json!(2);
    ds["status"] = json!({"desiredNumberScheduled": 1, "currentNumberScheduled": 1,
                          "updatedNumberScheduled": 1, "numberMisscheduled": 0,
                          "numberReady": 1, "numberAvailable": 1, "observedGeneration": 1});
    server.put(ds);
    let mut old = agent_pod("node-a", true, running());
    old["metadata"]["name"] = json!("zdt-agent-old");
    server.put(old.clone());

    // The controller: observes the new spec a moment after it is applied, replaces the old
    // pod, and the new one turns ready later.
    let controller = server.clone();
    let mut changes = server.changes();
    tokio::spawn(async move {
        while let Ok(c) = changes.recv().await {
            if c.resource == "daemonsets" && c.kind == "MODIFIED" {
                break;
            }
        }
        let mut ds = controller
            .get("apps", "daemonsets", NAMESPACE, "zdt-agent")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        ds["status"]["observedGeneration"] = json!(2);
        ds["status"]["updatedNumberScheduled"] = json!(0);
        controller.put(ds.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        old["metadata"]["deletionTimestamp"] = json!("2026-11-22T01:00:00Z");
        controller.put(old);
        controller.put(agent_pod(
            "node-a",
            false,
            json!({"name": "agent", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                   "state": {"waiting": {"reason": "ContainerCreating"}}}),
        ));
        ds["status"]["updatedNumberScheduled"] = json!(1);
        ds["status"]["numberAvailable"] = json!(0);
        ds["status"]["numberReady"] = json!(0);
        controller.put(ds.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        controller.remove("", "pods", NAMESPACE, "zdt-agent-old");
        controller.put(agent_pod("node-a", true, running()));
        ds["status"]["numberAvailable"] = json!(1);
        ds["status"]["numberReady"] = json!(1);
        controller.put(ds);
    });
    let agents = install::install(
        &kube,
        &install_args("registry.local/zdt:new", Duration::from_secs(20)),
    )
    .await
    .unwrap();
    let names: Vec<_> = agents.iter().map(|a| (a.pod.as_str(), a.ready)).collect();
    assert_eq!(names, [("zdt-agent-node-a", true)], "the new agent, ready");
}

/// What the user reads: the command's one-line error keeps one line per node that is not ready
/// (on a real cluster `install` printed "timed out after 120 s waiting for the agents:" and
/// nothing else for an agent in ImagePullBackOff).
#[tokio::test]
async fn install_prints_why_each_node_is_not_ready() {
    let dir = tempdir();
    let server = Arc::new(ApiServer::start().await);
    script_daemonset(
        &server,
        vec![(
            Duration::ZERO,
            agent_pod(
                "node-a",
                false,
                json!({"name": "agent", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                       "state": {"waiting": {"reason": "ImagePullBackOff",
                                             "message": "Back-off pulling image \"bad/ref:1\""}}}),
            ),
        )],
    );
    let kube = args(&server, dir.path(), "admin");
    let install = install_args("registry.local/zdt:e2e-1", Duration::from_secs(2));
    // main() runs its own runtime: off this one, which serves the API double.
    let err = tokio::task::spawn_blocking(move || install::main(&kube, &install))
        .await
        .unwrap()
        .unwrap_err();
    let printed = kubectl_zdt::logging::one_line(&err);
    assert!(
        printed.starts_with("timed out after 2 s waiting for the agents:\n"),
        "{printed}"
    );
    assert!(
        printed.contains("node node-a: ") && printed.contains("ImagePullBackOff"),
        "{printed}"
    );
}

#[tokio::test]
async fn install_names_each_node_whose_agent_cannot_start_and_why() {
    let dir = tempdir();
    let server = Arc::new(ApiServer::start().await);
    let no_btf = "kubectl-zdt: this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): kubectl-zdt needs Linux >= 5.8 built with CONFIG_DEBUG_INFO_BTF=y";
    script_daemonset(
        &server,
        vec![
            (Duration::ZERO, agent_pod("node-a", true, running())),
            (
                Duration::ZERO,
                agent_pod(
                    "node-old",
                    false,
                    crash_looping(&format!("some earlier log\n{no_btf}\n")),
                ),
            ),
        ],
    );
    let kube = args(&server, dir.path(), "admin");
    let err = install::install(
        &kube,
        &install_args("registry.local/zdt:e2e-1", Duration::from_secs(2)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, cluster::Error::NotReady { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("node node-old: agent cannot start: {no_btf}")),
        "{text}"
    );
    assert!(
        !text.contains("node-a"),
        "the ready node is not blamed: {text}"
    );
}

#[tokio::test]
async fn uninstall_removes_everything_install_created_and_then_finds_nothing() {
    let dir = tempdir();
    let server = Arc::new(ApiServer::start().await);
    let kube = args(&server, dir.path(), "admin");
    let mut no_wait = install_args("registry.local/zdt:e2e-1", Duration::from_secs(1));
    no_wait.no_wait = true;
    install::install(&kube, &no_wait).await.unwrap();
    let removed = install::uninstall(&kube).await.unwrap();
    assert_eq!(
        removed,
        [
            "daemonset/zdt-agent",
            "clusterrole/zdt-user",
            "role/zdt-user",
            "clusterrolebinding/zdt-agent",
            "clusterrole/zdt-agent",
            "serviceaccount/zdt-agent",
            "namespace/zdt-system"
        ]
    );
    for (group, resource) in [
        ("", "namespaces"),
        ("", "serviceaccounts"),
        ("rbac.authorization.k8s.io", "clusterroles"),
        ("rbac.authorization.k8s.io", "clusterrolebindings"),
        ("rbac.authorization.k8s.io", "roles"),
        ("apps", "daemonsets"),
    ] {
        assert!(
            server.list(group, resource).is_empty(),
            "{resource} left behind"
        );
    }
    assert!(install::uninstall(&kube).await.unwrap().is_empty());
}

/// An agent endpoint as the DaemonSet runs it, with a few observations journaled.
async fn serve_agent(node: &str) -> (std::net::SocketAddr, Arc<Backlog>) {
    let journal = Backlog::new(100);
    let gauges = Arc::new(Gauges::default());
    gauges
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    gauges
        .watched_addresses
        .store(3, std::sync::atomic::Ordering::Relaxed);
    gauges
        .watched_netns
        .store(2, std::sync::atomic::Ordering::Relaxed);
    gauges
        .pods_known
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let t = jiff::Timestamp::now();
    journal.push(
        &Observation::new(Kind::AgentStart, t, NodeName(node.into()))
            .with_extra("kernel", "6.18.0-zdt")
            .with_extra("probes", vec!["tcp_send_reset"]),
    );
    let mut loss = Observation::new(Kind::Loss, t, NodeName(node.into()));
    loss.count = Some(5);
    journal.push(&loss);
    // Events the kernel skipped the programs for: counted apart in the LOSS column.
    let mut skipped = Observation::new(Kind::Loss, t, NodeName(node.into()));
    skipped.count = Some(2);
    skipped.reason = Some(kubectl_zdt::observation::KERNEL_SKIPPED.into());
    journal.push(&skipped);
    // Events a probe's handler failed on: counted apart too.
    let mut failed = Observation::new(Kind::Loss, t, NodeName(node.into()));
    failed.count = Some(1);
    failed.reason = Some(kubectl_zdt::observation::HANDLER_ERROR.into());
    journal.push(&failed);
    journal.push(
        &Observation::new(Kind::DataplaneMode, t, NodeName(node.into()))
            .with_extra("mode", "iptables-nft")
            .with_extra("modes", vec!["iptables-nft"]),
    );
    let addr = support::agent_endpoint(node, journal.clone(), gauges).await;
    (addr, journal)
}

#[tokio::test]
async fn status_asks_each_agent_through_port_forward_and_stays_within_the_users_rbac() {
    let dir = tempdir();
    let server = ApiServer::start().await;
    for node in ["node-a", "node-b"] {
        let (addr, _) = serve_agent(node).await;
        server.forward(&format!("zdt-agent-{node}"), addr);
        server.put(agent_pod(node, true, running()));
    }
    server.put(agent_pod(
        "node-c",
        false,
        crash_looping("kubectl-zdt: tracepoint tcp:tcp_send_reset does not exist on this kernel"),
    ));
    let kube = args(&server, dir.path(), "user");
    let rows = status::collect(&kube).await.unwrap();
    assert_eq!(rows.len(), 3);
    for row in &rows[..2] {
        let agent = row.agent.as_ref().unwrap_or_else(|| panic!("{row:?}"));
        assert_eq!(agent.node.0, row.node);
        assert_eq!(agent.kernel, "6.18.0-zdt");
        assert_eq!(agent.probes, ["tcp_send_reset"]);
        assert_eq!(
            (
                agent.kernel_loss,
                agent.kernel_skipped,
                agent.kernel_failed,
                agent.watched_addresses,
                agent.watched_netns,
                agent.observations
            ),
            (8, 2, 1, 3, 2, 5)
        );
        assert_eq!(agent.dataplane_mode.as_deref(), Some("iptables-nft"));
        // Same machine, same clock: the measured offset is within its own uncertainty.
        let (offset, uncertainty) = (
            row.clock_offset_ms.unwrap(),
            row.clock_offset_uncertainty_ms.unwrap(),
        );
        assert!(
            offset.abs() <= uncertainty + 1.0,
            "{offset} ± {uncertainty}"
        );
    }
    assert!(
        rows[2]
            .problem
            .as_deref()
            .unwrap()
            .contains("tcp_send_reset does not exist"),
        "{:?}",
        rows[2]
    );
    let wide = status::render_table(&rows, true);
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert!(
        header.ends_with(&["POD", "API", "SYNCED", "OBSERVATIONS", "SCHEMA"])
            && wide.contains("zdt-agent-node-a"),
        "{wide}"
    );
    let table = status::render_table(&rows, false);
    assert!(
        table.contains("node-a")
            && table.contains("6.18.0-zdt")
            && table.contains("iptables-nft")
            && table.contains("1 pods: 3 ips, 2 netns")
            && table.contains("8 (2 skipped, 1 failed)")
            && table.contains("tracepoint"),
        "{table}"
    );

    // Every call `status` made is allowed by the Role users are given (docs/security.md).
    let calls = server.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.subresource.as_deref() == Some("portforward"))
    );
    for call in &calls {
        assert_eq!(call.namespace.as_deref(), Some(NAMESPACE), "{call:?}");
    }
    rbac::assert_all_allowed("Role", "zdt-user", &calls);
}

#[tokio::test]
async fn status_without_agents_says_to_install_them() {
    let dir = tempdir();
    let server = ApiServer::start().await;
    let err = status::collect(&args(&server, dir.path(), "user"))
        .await
        .unwrap_err();
    assert!(matches!(err, cluster::Error::NotInstalled), "{err}");
    assert!(err.to_string().contains("run `kubectl zdt install`"));
}

#[tokio::test]
async fn an_agent_pod_whose_port_forward_fails_is_a_row_not_a_crash() {
    let dir = tempdir();
    let server = ApiServer::start().await;
    // Ready pod, but nothing listens where its port-forward leads.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    server.forward("zdt-agent-node-a", closed);
    server.put(agent_pod("node-a", true, running()));
    let rows = status::collect(&args(&server, dir.path(), "user"))
        .await
        .unwrap();
    let problem = rows[0].problem.as_deref().unwrap();
    assert!(
        problem.contains("node-a") && problem.contains("port-forward"),
        "{problem}"
    );
}

fn tempdir() -> TempDir {
    let path = std::env::temp_dir().join(format!(
        "zdt-cluster-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&path).unwrap();
    TempDir(path)
}

/// Removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the real binary with `--kubeconfig`; returns what it did.
async fn output(kubeconfig: std::path::PathBuf, args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Runs the real binary against the double; returns (exit code, stderr).
async fn cli(kubeconfig: std::path::PathBuf, args: &[&str]) -> (Option<i32>, String) {
    let out = output(kubeconfig, args).await;
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_says_what_is_wrong_in_one_line_and_exits_non_zero() {
    let dir = tempdir();
    let server = ApiServer::start().await;
    let kubeconfig = server.kubeconfig(dir.path(), "user");
    let (code, stderr) = cli(kubeconfig.clone(), &["status"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr.trim(),
        "kubectl-zdt: kubectl-zdt's agents are not installed (no pods labelled app.kubernetes.io/name=zdt-agent in namespace zdt-system): run `kubectl zdt install`"
    );
    let (code, stderr) = cli(
        kubeconfig.clone(),
        &["trace", "deployment/nope", "-n", "shop"],
    )
    .await;
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("kubectl-zdt: "))
            .count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("deployment/nope not found in namespace shop"),
        "{stderr}"
    );
    let (code, stderr) = cli(kubeconfig, &["trace", "pod/x"]).await;
    assert_eq!(
        code,
        Some(2),
        "a usage error, as clap reports them: {stderr}"
    );
    let missing = dir.path().join("missing");
    let (code, stderr) = cli(missing.clone(), &["status"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr.trim(),
        format!(
            "kubectl-zdt: --kubeconfig points at a missing file: {} (give the path of a kubeconfig, or unset it)",
            missing.display()
        )
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[tokio::test]
async fn install_dry_run_prints_the_objects_for_gitops_without_touching_the_cluster() {
    let dir = tempdir();
    let server = ApiServer::start().await;
    let kubeconfig = server.kubeconfig(dir.path(), "admin");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "install",
                "--dry-run",
                "-o",
                "yaml",
                "--image",
                "registry.local/zdt:v9",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    let kinds = yaml.lines().filter(|l| l.starts_with("kind: ")).count();
    assert_eq!(kinds, 7, "{yaml}");
    assert!(yaml.contains("image: registry.local/zdt:v9"));
    assert!(
        yaml.contains("appArmorProfile:"),
        "the double is v1.31: {yaml}"
    );
    assert!(
        server.calls().is_empty(),
        "a dry run reads nothing but the version"
    );
    assert_eq!(server.version_requests(), 1);
}

const APPARMOR_ANNOTATION: &str = "container.apparmor.security.beta.kubernetes.io/agent";

/// Installs (without waiting) on a double reporting `git_version`; returns the applied
/// DaemonSet's pod template.
async fn installed_template(git_version: &str) -> Value {
    let dir = tempdir();
    let server = ApiServer::start().await;
    server.set_version(git_version);
    let mut no_wait = install_args("registry.local/zdt:e2e-1", Duration::from_secs(1));
    no_wait.no_wait = true;
    install::install(&args(&server, dir.path(), "admin"), &no_wait)
        .await
        .unwrap_or_else(|e| panic!("install on {git_version}: {e}"));
    assert_eq!(server.version_requests(), 1, "the version is read once");
    server
        .get("apps", "daemonsets", NAMESPACE, "zdt-agent")
        .unwrap()["spec"]["template"]
        .clone()
}

#[tokio::test]
async fn install_on_1_23_writes_apparmor_as_the_annotation_the_server_knows() {
    // Without the adaptation the double rejects the apply like a real 1.23 server:
    // `.spec.template.spec.containers[0].securityContext.appArmorProfile: field not declared`.
    let template = installed_template("v1.23.17-eks-4b2f6a1").await;
    assert_eq!(
        template["metadata"]["annotations"][APPARMOR_ANNOTATION],
        "unconfined"
    );
    let sc = &template["spec"]["containers"][0]["securityContext"];
    assert!(sc.get("appArmorProfile").is_none(), "{sc}");
    assert_eq!(
        sc["seccompProfile"]["type"], "Unconfined",
        "the rest is kept"
    );
}

#[tokio::test]
async fn install_on_1_30_writes_the_apparmor_field() {
    let template = installed_template("v1.30.0").await;
    assert_eq!(
        template["spec"]["containers"][0]["securityContext"]["appArmorProfile"]["type"],
        "Unconfined"
    );
    assert!(
        template["metadata"]["annotations"]
            .get(APPARMOR_ANNOTATION)
            .is_none(),
        "{template}"
    );
}

#[tokio::test]
async fn install_on_a_server_older_than_1_23_says_so_in_one_line_and_applies_nothing() {
    let dir = tempdir();
    let server = ApiServer::start().await;
    server.set_version("v1.20.15");
    let kubeconfig = server.kubeconfig(dir.path(), "admin");
    let (code, stderr) = cli(kubeconfig.clone(), &["install", "--no-wait"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "kubectl-zdt: install: the API server is Kubernetes v1.20; kubectl-zdt needs v1.23 or newer"
    );
    assert!(server.calls().is_empty(), "{:?}", server.calls());
    // trace checks it too, before looking at the workload.
    let (code, stderr) = cli(kubeconfig, &["trace", "deployment/web", "-n", "shop"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("Kubernetes v1.20; kubectl-zdt needs v1.23"),
        "{stderr}"
    );
    assert!(server.calls().is_empty(), "{:?}", server.calls());
}

#[tokio::test]
async fn install_dry_run_with_server_version_renders_offline_for_that_version() {
    let dir = tempdir();
    let missing = dir.path().join("no-kubeconfig");
    let out = output(
        missing,
        &["install", "--dry-run", "--server-version", "v1.28.4"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(
        yaml.contains(&format!("{APPARMOR_ANNOTATION}: unconfined")),
        "{yaml}"
    );
    assert!(!yaml.contains("appArmorProfile"), "{yaml}");
}

#[tokio::test]
async fn the_cli_prints_a_rejected_apply_in_one_line_with_the_cause_once() {
    let dir = tempdir();
    let server = ApiServer::start().await;
    server.deny(
        "daemonsets",
        "hostPID is not allowed in namespace zdt-system",
    );
    let (code, stderr) = cli(
        server.kubeconfig(dir.path(), "admin"),
        &["install", "--no-wait"],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.ends_with("applied (server-side)"))
        .collect();
    assert_eq!(
        errors,
        [
            "kubectl-zdt: install: apply daemonset/zdt-agent -n zdt-system: admission webhook \"validate.policy.example\" denied the request: \
             hostPID is not allowed in namespace zdt-system (HTTP 400 BadRequest)"
        ],
        "{stderr}"
    );
    assert!(!stderr.contains("Status {"), "{stderr}");
}

#[tokio::test]
async fn a_rejected_apply_is_one_line_with_the_servers_reason_once() {
    // The manifests as written for 1.30, sent to a 1.28 server (what install did before it read
    // the version): the error names the call and the field, once, without kube's Status dump.
    let server = ApiServer::start().await;
    server.set_version("v1.28.4");
    let objects = kubectl_zdt::cluster::manifests::objects("registry.local/zdt:v9").unwrap();
    let err = install::apply(&server.client("admin"), &objects)
        .await
        .unwrap_err();
    let text = format!("{:#}", anyhow::Error::from(err));
    assert_eq!(
        text,
        "apply daemonset/zdt-agent -n zdt-system: failed to create typed patch object (zdt-system/zdt-agent; apps/v1, Kind=DaemonSet): \
         .spec.template.spec.containers[0].securityContext.appArmorProfile: field not declared in schema (HTTP 422 Invalid)"
    );
}

/// `install` right after `uninstall`: the namespace is still terminating and the server would
/// refuse new objects in it ("unable to create new content in namespace zdt-system because it
/// is being terminated", as the real v1.28 server said). install waits for it to go; if it
/// does not within --timeout, one line says so.
#[tokio::test]
async fn install_waits_for_a_terminating_namespace_to_go_or_says_so() {
    let dir = tempdir();
    let server = Arc::new(ApiServer::start().await);
    let kube = args(&server, dir.path(), "admin");
    let terminating = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "zdt-system", "uid": "ns-1",
                     "deletionTimestamp": "2026-12-06T20:04:00Z"},
    });
    server.put(terminating.clone());
    let mut no_wait = install_args("registry.local/zdt:e2e-1", Duration::from_millis(700));
    no_wait.no_wait = true;
    let err = install::install(&kube, &no_wait)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("namespace zdt-system is still being deleted") && !err.contains('\n'),
        "{err}"
    );
    assert!(
        server.list("apps", "daemonsets").is_empty(),
        "nothing applied"
    );
    let gone = server.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        gone.remove("", "namespaces", "", "zdt-system");
    });
    no_wait.timeout = Duration::from_secs(10);
    install::install(&kube, &no_wait).await.unwrap();
    assert_eq!(server.list("apps", "daemonsets").len(), 1);
}

/// Runs the real binary with `env` set and no --kubeconfig; returns (exit code, stderr).
fn cli_env(env: &[(&str, &std::ffi::OsStr)], args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
        .env_remove("KUBECONFIG")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_kubeconfig_is_named_once() {
    let dir = tempdir();
    let missing = dir.path().join("nope");
    // A kubeconfig that does not parse: the parser's words once, without its snippet.
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "apiVersion: v1\nkind: Config\nclusters: 5\n").unwrap();
    for (env, expected) in [
        (
            ("KUBECONFIG", missing.as_os_str()),
            format!(
                "KUBECONFIG points at a missing file: {} (give the path of a kubeconfig, or unset it)",
                missing.display()
            ),
        ),
        (
            ("KUBECONFIG", bad.as_os_str()),
            format!(
                "failed to load the kubeconfig {}: failed to parse kubeconfig YAML: error: line 3 column 11: expected sequence start",
                bad.display()
            ),
        ),
        (
            ("HOME", dir.path().as_os_str()),
            "no Kubernetes configuration found (no --kubeconfig, no KUBECONFIG, no ~/.kube/config, not in a cluster): pass --kubeconfig FILE or set KUBECONFIG".to_owned(),
        ),
    ] {
        let (code, stderr) = cli_env(&[env], &["status"]);
        assert_eq!(code, Some(1));
        assert_eq!(stderr, format!("kubectl-zdt: {expected}\n"));
    }
}

/// A kubeconfig whose server is `server`.
fn kubeconfig_for(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig-elsewhere");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n"
        ),
    )
    .unwrap();
    path
}

/// A server that is not there, one that never answers (kube's own bound on connecting is 30 s,
/// whatever --timeout said) and one that is not Kubernetes: one line naming the server and
/// what it did, nothing else on stderr (no ERROR log line of kube's, no colour).
#[tokio::test]
async fn a_server_that_is_absent_silent_or_not_kubernetes_is_named_in_one_line() {
    let dir = tempdir();
    let absent = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let absent_config = kubeconfig_for(dir.path(), &format!("https://{absent}"));
    let (code, stderr) = cli(absent_config.clone(), &["status"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        format!(
            "kubectl-zdt: cannot reach the API server at https://{absent}: Connection refused (os error 111) (check the server in the kubeconfig and the network)\n"
        ),
    );
    let (_, stderr) = cli(absent_config, &["-vv", "status"]).await;
    assert!(stderr.lines().count() > 1, "-vv logs: {stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "no colour off a terminal: {stderr:?}"
    );

    // Accepts connections and never answers (not even the TLS handshake).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    for (server, args) in [
        (
            format!("https://{silent_addr}"),
            ["install", "--timeout", "1s"],
        ),
        (
            format!("http://{silent_addr}"),
            ["status", "--request-timeout", "1"],
        ),
    ] {
        let (code, stderr) = cli(kubeconfig_for(dir.path(), &server), &args).await;
        assert_eq!(code, Some(1), "{stderr}");
        let command = if args[0] == "install" {
            "install: "
        } else {
            ""
        };
        assert_eq!(
            stderr.trim_end(),
            format!(
                "kubectl-zdt: {command}cannot reach the API server at {server}: no answer within 1s (raise --request-timeout or --timeout if it is only slow)"
            )
        );
    }

    // A web server, not Kubernetes.
    let web = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web_addr = web.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        while let Ok((mut conn, _)) = web.accept().await {
            let mut request = [0; 4096];
            let _ = conn.read(&mut request).await;
            let _ = conn
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: 9\r\n\r\nnot found")
                .await;
        }
    });
    let (code, stderr) = cli(
        kubeconfig_for(dir.path(), &format!("http://{web_addr}")),
        &["status"],
    )
    .await;
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        format!(
            "kubectl-zdt: http://{web_addr} is not a Kubernetes API server: GET /version answered HTTP 404 without a Kubernetes Status (check the server in the kubeconfig)\n"
        )
    );
}

#[test]
fn request_timeout_reads_as_kubectl_reads_it() {
    use clap::Parser as _;
    use kubectl_zdt::cli::Cli;
    for (value, seconds) in [("0", 0), ("5", 5), ("1m", 60), ("90s", 90)] {
        let cli = Cli::try_parse_from(["kubectl-zdt", "status", "--request-timeout", value])
            .unwrap_or_else(|e| panic!("--request-timeout {value}: {e}"));
        assert_eq!(
            cli.kube.request_timeout,
            Duration::from_secs(seconds),
            "{value}"
        );
    }
    assert!(Cli::try_parse_from(["kubectl-zdt", "status", "--request-timeout", "soon"]).is_err());
}

/// `--dry-run=server` sends every object as a dry run: the server validates it (admission and
/// schema included) and answers; nothing is stored. `--dry-run` alone is `client`.
#[tokio::test]
async fn install_dry_run_server_has_the_server_check_the_objects_and_stores_nothing() {
    let dir = tempdir();
    let server = ApiServer::start().await;
    let kubeconfig = server.kubeconfig(dir.path(), "admin");
    let out = output(
        kubeconfig.clone(),
        &["install", "--dry-run=server", "-o", "json"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 7, "{list}");
    let patches = server.calls().iter().filter(|c| c.verb == "patch").count();
    assert_eq!(patches, 7, "each object sent: {:?}", server.calls());
    assert!(
        server.list("apps", "daemonsets").is_empty(),
        "nothing stored"
    );

    server.deny(
        "daemonsets",
        "hostPID is not allowed in namespace zdt-system",
    );
    let out = output(kubeconfig.clone(), &["install", "--dry-run=server"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hostPID is not allowed"),
        "the server's refusal is the dry run's answer"
    );
    let out = output(
        kubeconfig,
        &["install", "--dry-run=server", "--server-version", "1.28"],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "kubectl-zdt: --server-version goes with --dry-run=client: with --dry-run=server the server says its version\n"
    );
}
