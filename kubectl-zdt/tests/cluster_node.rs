//! The node side for real, on this kernel: `kubectl-zdt agent` in cluster mode (eBPF probes,
//! filter on and empty) against the scripted API server (a test double), with a pod made of
//! network namespaces from the testbed. The agent learns the pod's address from its watch,
//! adds it to the kernel filter, attributes each refused connection to the pod — also after the
//! pod object is deleted (tombstone) — and serves it all through the double's port-forward.
//! Needs root.

mod kube_double;
mod support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use kube_double::apiserver::ApiServer;
use kubectl_zdt::{
    agent::serve::AgentStatus,
    cluster::agents,
    observation::{Kind, Observation},
    testbed::{Netns, tcp::connect_once, veth_pair},
};
use serde_json::json;
use support::{require_root, total};

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

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _agent = Child(
        Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
            .args(["agent", "--listen", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", &kubeconfig)
            .env("NODE_NAME", NODE)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
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
        if total(&obs, |o| o.kind == Kind::Refused) >= 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
