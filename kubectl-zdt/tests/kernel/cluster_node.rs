//! The node side for real, on this kernel: `kubectl-zdt agent` in cluster mode (eBPF probes,
//! filter on and empty) against the scripted API server (a test double), with a pod made of
//! network namespaces from the testbed. The agent learns the pod's address from its watch,
//! adds it to the kernel filter, attributes each refused connection to the pod — also after the
//! pod object is deleted (tombstone) — and serves it all through the double's port-forward.
//! Needs root.

use crate::support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use crate::support::kube_double::apiserver::ApiServer;
use crate::support::{require_root, total};
use kubectl_zdt::{
    agent::serve::AgentStatus,
    cluster::agents,
    kernel::clock::Clock,
    observation::{Kind, Observation},
    testbed::{
        Netns,
        netns::run,
        node::PodHandle,
        pod::{PodProcess, PodSpec},
        tcp::connect_once,
        veth_pair,
    },
};
use serde_json::json;

const NODE: &str = "zdt-test-node";

/// A plain GET on the agent's loopback endpoint.
fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// Reads the agent's journal through the double's port-forward, the way the CLI does, until
/// `done` holds for it.
async fn journal(
    server: &ApiServer,
    port: u16,
    done: impl Fn(&[Observation]) -> bool,
) -> Vec<Observation> {
    server.forward(
        &format!("zdt-agent-{NODE}"),
        SocketAddr::from(([127, 0, 0, 1], port)),
    );
    let agent = agents::AgentPod {
        pod: format!("zdt-agent-{NODE}"),
        node: NODE.to_owned(),
        ready: true,
        problem: None,
    };
    let user = server.client("user");
    let mut obs: Vec<Observation> = Vec::new();
    for _ in 0..100 {
        if let Ok(body) = agents::get_bytes(&user, &agent, "/observations?from=0").await {
            obs = String::from_utf8_lossy(&body)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
        }
        if done(&obs) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    obs
}

/// `kubectl-zdt agent` in cluster mode on a free loopback port, against the double.
fn start_agent(kubeconfig: &std::path::Path) -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Child(
        Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
            .args(["agent", "--listen", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", kubeconfig)
            .env("NODE_NAME", NODE)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    (child, port)
}

fn status(port: u16) -> Option<AgentStatus> {
    serde_json::from_str(&get(port, "/status")?).ok()
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting until {what}");
}

/// Kills the agent if the test fails half-way.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_attributes_refused_connections_to_its_pods_even_after_they_are_deleted() {
    require_root();
    let server = ApiServer::start().await;
    let dir = std::env::temp_dir().join(format!("zdt-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = server.kubeconfig(&dir, "agent");

    let client = Netns::create("client").unwrap();
    let pod = Netns::create("pod").unwrap();
    veth_pair(
        &client,
        &pod,
        &["198.18.71.1/24"],
        &["198.18.71.2/24", "198.18.71.3/24"],
    )
    .unwrap();
    let (pod_ip, other_ip) = ("198.18.71.2", "198.18.71.3");
    server.put(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "default", "uid": "uid-web-1"},
        "spec": {"nodeName": NODE, "containers": [{"name": "web", "ports": [{"containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }));

    let (_agent, port) = start_agent(&kubeconfig);
    wait_for("the agent watches the pod's address", || {
        status(port).is_some_and(|s| s.api_synced && s.watched_addresses == 1)
    });

    let refused_burst = |n: usize| {
        let to_pod = SocketAddr::new(pod_ip.parse().unwrap(), 8080);
        let to_other = SocketAddr::new(other_ip.parse().unwrap(), 8080);
        let out = client
            .run_in(move || {
                let a: Vec<_> = (0..n).map(|_| connect_once(to_pod)).collect();
                let b: Vec<_> = (0..n).map(|_| connect_once(to_other)).collect();
                (a, b)
            })
            .unwrap();
        assert!(
            out.0
                .iter()
                .chain(&out.1)
                .all(|r| r.as_ref().err().map(String::as_str) == Some("ECONNREFUSED")),
            "{out:?}"
        );
    };
    refused_burst(5);
    // The pod object goes away; its address stays attributed (tombstone) and watched.
    server.remove("", "pods", "default", "web-1");
    wait_for("the deletion is seen", || {
        get(port, "/observations?from=0").is_some_and(|t| t.contains("\"pod_deleting\""))
    });
    refused_burst(4);

    // Read the journal the way the CLI does: port-forward through the API server.
    let obs = journal(&server, port, |obs| {
        total(obs, |o| o.kind == Kind::Refused) >= 9
    })
    .await;
    let pod_ip = pod_ip.parse().unwrap();
    assert_eq!(
        total(&obs, |o| o.kind == Kind::Refused && o.ip == Some(pod_ip)),
        9
    );
    assert_eq!(
        total(&obs, |o| o.kind == Kind::Refused
            && o.pod.as_deref() == Some("default/web-1")
            && o.pod_uid.as_deref() == Some("uid-web-1")),
        9,
        "every refused SYN attributed, before and after the deletion"
    );
    assert_eq!(
        total(&obs, |o| o.ip == Some(other_ip.parse().unwrap())),
        0,
        "not a pod of this node: filtered in the kernel"
    );
    assert!(
        obs.iter()
            .any(|o| o.kind == Kind::PodDeleting && o.pod_uid.as_deref() == Some("uid-web-1"))
    );
    assert_eq!(obs[0].kind, Kind::AgentStart);
    let _ = std::fs::remove_dir_all(dir);
}

/// The cgroup v2 hierarchy (`/sys/fs/cgroup` or, on hybrid hosts, `/sys/fs/cgroup/unified`).
fn cgroup2_root() -> std::path::PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let root = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| std::path::PathBuf::from(f[1]));
    root.expect(
        "this test needs a cgroup v2 hierarchy (mount -t cgroup2 none /sys/fs/cgroup/unified)",
    )
}

/// A container's cgroup as the kubelet (systemd driver) and containerd lay it out, removed
/// (innermost first) when dropped.
struct PodCgroup(Vec<std::path::PathBuf>);

impl PodCgroup {
    fn create(uid: &str) -> Self {
        let root = cgroup2_root();
        let pod = format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"));
        let parts = [
            "kubepods.slice",
            "kubepods-besteffort.slice",
            &pod,
            "cri-containerd-0123abcd.scope",
        ];
        let mut dirs = Vec::new();
        let mut dir = root;
        for p in parts {
            dir = dir.join(p);
            std::fs::create_dir_all(&dir).unwrap();
            dirs.push(dir.clone());
        }
        Self(dirs)
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.0.last().unwrap().join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // Only the pod's own directories: the kubepods slices may hold a real node's pods.
        for d in self.0.iter().rev().take(2) {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The scripted API server, with the agent's kubeconfig in a fresh directory `<prefix>-<pid>`.
async fn api_double(prefix: &str) -> (ApiServer, std::path::PathBuf, std::path::PathBuf) {
    require_root();
    let server = ApiServer::start().await;
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = server.kubeconfig(&dir, "agent");
    (server, dir, kubeconfig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_finds_each_pods_network_namespace_and_reports_its_termination_marks() {
    let (server, dir, kubeconfig) = api_double("zdt-node-ns").await;
    let app = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-zdt"));

    // A pod as a CNI plugin leaves it: its own namespace, with a veth whose node side is in the
    // agent's namespace (the node's, hostNetwork). No address on the node side: no traffic
    // leaves the test's namespaces.
    let client = Netns::create("client").unwrap();
    let ns = Netns::create("pod").unwrap();
    veth_pair(&client, &ns, &["198.18.72.1/24"], &["198.18.72.2/24"]).unwrap();
    let node_side = format!("zdt{}n", std::process::id() % 1_000_000);
    run(
        "ip",
        &[
            "link",
            "add",
            &node_side,
            "type",
            "veth",
            "peer",
            "name",
            "eth1",
            "netns",
            ns.name(),
        ],
    )
    .unwrap();
    let pod = PodHandle {
        name: "web-2".into(),
        ns,
        ip: "198.18.72.2".parse().unwrap(),
        ip6: "fd00:7a64::72".parse().unwrap(),
    };
    let uid = "5f1b2c3d-0000-4a4a-9b9b-0123456789ab";
    let spec = PodSpec {
        port: 8080,
        prestop_ms: 150,
        ..PodSpec::default()
    };
    let app_process = PodProcess::start(&pod, app, spec).unwrap();
    let cgroup = PodCgroup::create(uid);
    cgroup.enter(app_process.pid());
    server.put(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-2", "namespace": "default", "uid": uid},
        "spec": {"nodeName": NODE, "containers": [{"name": "web", "ports": [{"containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": "198.18.72.2", "podIPs": [{"ip": "198.18.72.2"}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }));

    let (_agent, port) = start_agent(&kubeconfig);
    wait_for("the agent watches the pod's network namespace", || {
        status(port)
            .is_some_and(|s| s.api_synced && s.watched_addresses == 1 && s.watched_netns == 1)
    });

    // The kubelet's order: the API deletion, preStop, SIGTERM, the app closes and exits, the
    // sandbox (namespace) goes.
    server.remove("", "pods", "default", "web-2");
    let truth = app_process
        .terminate(
            &pod,
            app,
            kubectl_zdt::kernel::clock::Clock::monotonic_now_ns(),
        )
        .unwrap();
    drop(pod);
    drop(client);
    let obs = journal(&server, port, |obs| {
        obs.iter().any(|o| o.kind == Kind::NetnsGone)
    })
    .await;

    let mine = |kind: Kind| -> Vec<&Observation> {
        obs.iter()
            .filter(|o| o.kind == kind && o.pod.as_deref() == Some("default/web-2"))
            .filter(|o| o.pod_uid.as_deref() == Some(uid))
            .collect()
    };
    let pid = |o: &Observation| o.details.process().pid;
    let prestop = truth.prestop_pid.map(u64::from);
    assert!(
        mine(Kind::Exec).iter().any(|o| pid(o) == prestop),
        "the preStop exec, attributed by namespace: {obs:#?}"
    );
    assert!(
        mine(Kind::Signal)
            .iter()
            .any(|o| o.reason.as_deref() == Some("SIGTERM")
                && pid(o) == Some(u64::from(truth.app_pid))),
        "SIGTERM to the app: {obs:#?}"
    );
    assert!(
        mine(Kind::ListenerClosed)
            .iter()
            .any(|o| o.port == Some(8080)),
        "the wildcard listener's close: {obs:#?}"
    );
    assert!(
        mine(Kind::Exit)
            .iter()
            .any(|o| pid(o) == Some(u64::from(truth.app_pid))),
        "the app's exit: {obs:#?}"
    );
    assert_eq!(mine(Kind::NetnsGone).len(), 1, "{obs:#?}");
    // Only the pod's processes: the node's own (this test's `ip` commands, the agent) are in
    // namespaces the agent never watches.
    let unattributed: Vec<_> = obs
        .iter()
        .filter(|o| {
            matches!(
                o.kind,
                Kind::Exec | Kind::Exit | Kind::Signal | Kind::ListenerOpen | Kind::ListenerClosed
            )
        })
        .filter(|o| o.pod.is_none())
        .collect();
    assert!(unattributed.is_empty(), "{unattributed:#?}");
    drop(cgroup);
    let _ = std::fs::remove_dir_all(dir);
}

/// A pod as a CNI plugin leaves it: its own namespace, with a veth whose node side (`node_side`)
/// is in the agent's namespace (the node's), no address on it.
fn cni_pod(name: &str, node_side: &str, ip: &str) -> PodHandle {
    let ns = Netns::create(name).unwrap();
    let link = format!(
        "link add {node_side} type veth peer name eth0 netns {}",
        ns.name()
    );
    run("ip", &link.split_whitespace().collect::<Vec<_>>()).unwrap();
    PodHandle {
        name: name.into(),
        ns,
        ip: ip.parse().unwrap(),
        ip6: "fd00:7a64::73".parse().unwrap(),
    }
}

fn pod_object(name: &str, uid: &str, ip: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": {"nodeName": NODE, "containers": [{"name": "web", "ports": [{"containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

/// The kernel hands a dead namespace's inode number to the next namespace made (on the v1.23
/// node 12 of 17 numbers were held by several pods). A pod is deleted, its sandbox goes, and
/// the next pod's namespace gets the same number: the new pod's exec and listener lines are
/// filed under the new pod (or under no pod, before the agent found its namespace), and its
/// SIGTERM, listener close and exit under the new pod, never under the old one, whose
/// tombstone still holds the number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_network_namespace_number_names_the_new_pod_never_the_dead_one() {
    let (server, dir, kubeconfig) = api_double("zdt-node-reuse").await;
    let app = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-zdt"));
    let spec = PodSpec {
        port: 8080,
        ..PodSpec::default()
    };
    let (old_uid, new_uid) = (
        "0a1b2c3d-0000-4a4a-9b9b-00000000000a",
        "0a1b2c3d-0000-4a4a-9b9b-00000000000b",
    );
    let tag = std::process::id() % 1_000_000;

    let old = cni_pod("old", &format!("zdt{tag}o"), "198.18.73.2");
    let old_app = PodProcess::start(&old, app, spec.clone()).unwrap();
    let old_cgroup = PodCgroup::create(old_uid);
    old_cgroup.enter(old_app.pid());
    server.put(pod_object("web-old", old_uid, "198.18.73.2"));
    let (_agent, port) = start_agent(&kubeconfig);
    wait_for("the agent watches the old pod's namespace", || {
        status(port).is_some_and(|s| s.api_synced && s.watched_netns == 1)
    });
    let number = support::inode(&old.ns.path());
    server.remove("", "pods", "default", "web-old");
    old_app
        .terminate(&old, app, Clock::monotonic_now_ns())
        .unwrap();
    drop(old);
    wait_for("the old pod's namespace is seen to go", || {
        get(port, "/observations?from=0").is_some_and(|t| t.contains("\"netns_gone\""))
    });

    // The next pod's namespace: the number is free once the old namespace is freed; another
    // namespace (this test's own `ip netns exec` makes mount namespaces) may take it first.
    let new = (0..50)
        .find_map(|i| {
            let p = cni_pod("new", &format!("zdt{tag}w"), "198.18.73.3");
            if support::inode(&p.ns.path()) == number {
                return Some(p);
            }
            drop(p);
            std::thread::sleep(Duration::from_millis(10 * i));
            None
        })
        .expect("the kernel did not hand the dead namespace's number to a new one in 50 tries");
    let new_cgroup = PodCgroup::create(new_uid);
    server.put(pod_object("web-new", new_uid, "198.18.73.3"));
    let new_app = PodProcess::start(&new, app, spec).unwrap();
    new_cgroup.enter(new_app.pid());
    // The agent scans /proc for the pod's namespace on each update and every second: until
    // it found it, lines from the namespace name no pod. An exec in it (as an exec probe
    // would) shows when they name one.
    wait_for(
        "the agent files the new namespace's lines under a pod",
        || {
            new.ns.exec("true", &[]).unwrap();
            get(port, "/observations?from=0").is_some_and(|t| {
                t.lines()
                    .filter_map(|l| serde_json::from_str::<Observation>(l).ok())
                    .any(|o| {
                        o.kind == Kind::Exec
                            && o.details.process().comm.as_deref() == Some("true")
                            && o.pod.is_some()
                    })
            })
        },
    );
    server.remove("", "pods", "default", "web-new");
    let truth = new_app
        .terminate(&new, app, Clock::monotonic_now_ns())
        .unwrap();
    let new_pid = u64::from(truth.app_pid);
    let obs = journal(&server, port, |obs| {
        obs.iter()
            .any(|o| o.kind == Kind::Exit && o.details.process().pid == Some(new_pid))
    })
    .await;

    // The new app's lines, and the execs made in the new namespace.
    let of_new: Vec<&Observation> = obs
        .iter()
        .filter(|o| {
            o.details.process().pid == Some(new_pid)
                || o.details.process().comm.as_deref() == Some("true")
        })
        .collect();
    let kinds = |pod: Option<&str>| -> Vec<Kind> {
        of_new
            .iter()
            .filter(|o| o.pod.as_deref() == pod)
            .map(|o| o.kind)
            .collect()
    };
    assert!(
        kinds(Some("default/web-old")).is_empty(),
        "the new pod's lines under the dead pod: {of_new:#?}"
    );
    for kind in [Kind::Exec, Kind::ListenerOpen] {
        assert!(
            of_new
                .iter()
                .any(|o| o.kind == kind && o.pod.as_deref() != Some("default/web-old")),
            "the new app's {kind} was reported (its number was still watched): {of_new:#?}"
        );
    }
    let after_found = kinds(Some("default/web-new"));
    for kind in [Kind::Signal, Kind::ListenerClosed, Kind::Exit] {
        assert!(
            after_found.contains(&kind),
            "the new pod's {kind} under it: {of_new:#?}"
        );
    }
    assert!(
        of_new
            .iter()
            .all(|o| o.pod.is_none() || o.pod_uid.as_deref() == Some(new_uid)),
        "{of_new:#?}"
    );
    drop(new);
    drop((old_cgroup, new_cgroup));
    let _ = std::fs::remove_dir_all(dir);
}
