//! The shipped manifests (deploy/) as the cluster will read them: every document parses into
//! its Kubernetes type with no field the API would drop, and the agent's DaemonSet asks for
//! exactly the privileges docs/security.md justifies.

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role},
};
use kubectl_zdt::cluster::{AGENT_PORT, NAMESPACE, manifests};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// Drops nulls and empty objects so a typed round trip compares equal to the source.
fn normalized(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, normalized(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(normalized).collect()),
        v => v,
    }
}

/// Parses `doc` as `T` and checks nothing was lost: a misspelt or misplaced field would be
/// silently ignored by the API server, so here it is an error.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let object: T = serde_json::from_value(doc.clone()).unwrap();
    let back = normalized(serde_json::to_value(&object).unwrap());
    assert_eq!(
        back,
        normalized(doc.clone()),
        "fields lost when parsing as {}",
        std::any::type_name::<T>()
    );
    object
}

fn documents() -> Vec<(&'static str, Value)> {
    manifests::FILES
        .iter()
        .flat_map(|(file, text)| {
            serde_yaml::Deserializer::from_str(text)
                .map(|d| serde::Deserialize::deserialize(d).unwrap())
                .filter(|v: &Value| !v.is_null())
                .map(move |v| (*file, v))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type_without_unknown_fields() {
    let mut kinds = Vec::new();
    for (file, doc) in documents() {
        let kind = doc["kind"].as_str().unwrap().to_owned();
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(&doc)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(&doc)),
            "ClusterRole" => drop(typed::<ClusterRole>(&doc)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&doc)),
            "Role" => drop(typed::<Role>(&doc)),
            "DaemonSet" => drop(typed::<DaemonSet>(&doc)),
            other => panic!("{file}: unexpected kind {other}"),
        }
        if kind != "Namespace" && !kind.starts_with("Cluster") {
            assert_eq!(
                doc["metadata"]["namespace"], NAMESPACE,
                "{file}: {kind} outside {NAMESPACE}"
            );
        }
        assert_eq!(
            doc["metadata"]["labels"]["app.kubernetes.io/part-of"], "kubectl-zdt",
            "{file}: {kind} lacks the part-of label"
        );
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "ClusterRole",
            "DaemonSet"
        ]
    );
}

#[test]
fn the_embedded_objects_name_the_image_of_this_version_or_the_one_given() {
    let default = manifests::objects(&manifests::default_image()).unwrap();
    let ds = default
        .iter()
        .find(|m| m.resource.kind == "DaemonSet")
        .unwrap();
    // The YAML in deploy/ names the same tag the binary defaults to, so a `kubectl apply -f
    // deploy/` and a `kubectl zdt install` of one release install the same agent.
    let (_, doc) = documents()
        .into_iter()
        .find(|(f, _)| *f == "daemonset.yaml")
        .unwrap();
    assert_eq!(
        doc["spec"]["template"]["spec"]["containers"][0]["image"],
        manifests::default_image()
    );
    assert_eq!(
        ds.object.data["spec"]["template"]["spec"]["containers"][0]["image"],
        manifests::default_image()
    );

    let custom = manifests::objects("registry.local/zdt:dev-1").unwrap();
    let ds = custom
        .iter()
        .find(|m| m.resource.kind == "DaemonSet")
        .unwrap();
    assert_eq!(
        ds.object.data["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.local/zdt:dev-1"
    );
    let yaml = manifests::to_yaml(&custom);
    assert!(yaml.contains("image: registry.local/zdt:dev-1"), "{yaml}");
    assert_eq!(yaml.matches("\n---\n").count() + 1, custom.len());
}

#[test]
fn the_agent_container_drops_everything_and_adds_only_what_the_probes_need() {
    let (_, doc) = documents()
        .into_iter()
        .find(|(f, _)| *f == "daemonset.yaml")
        .unwrap();
    let ds: DaemonSet = typed(&doc);
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.host_network,
        Some(true),
        "the node's dataplane is in the host netns"
    );
    assert_eq!(
        pod.host_pid,
        Some(true),
        "pods' network namespaces are found through their processes"
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("zdt-agent"));
    let tolerations = pod.tolerations.unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none())
    );
    let c = &pod.containers[0];
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    // The ptrace access checks on other pods' processes (their network namespace, the
    // iptables-legacy writer's buffer) are denied by runtimes' default AppArmor profiles.
    assert_eq!(
        sc.app_armor_profile.as_ref().map(|p| p.type_.as_str()),
        Some("Unconfined")
    );
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop.unwrap(), ["ALL"]);
    assert_eq!(
        caps.add.unwrap(),
        ["BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"]
    );
    let mounts = c.volume_mounts.clone().unwrap();
    let writable: Vec<&str> = mounts
        .iter()
        .filter(|m| m.read_only != Some(true))
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(
        writable,
        ["/var/lib/kubectl-zdt"],
        "every host mount is read-only but the journal's"
    );
    let volumes = pod.volumes.unwrap();
    let mut paths: Vec<_> = volumes
        .iter()
        .map(|v| v.host_path.clone().unwrap().path)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/sys/kernel/btf",
            "/sys/kernel/tracing",
            "/var/lib/kubectl-zdt"
        ]
    );
    let journal = volumes.iter().find(|v| v.name == "journal").unwrap();
    assert_eq!(
        journal.host_path.as_ref().unwrap().type_.as_deref(),
        Some("DirectoryOrCreate")
    );
    // The endpoint is on the node's loopback only, where the readiness probe looks for it; the
    // journal is on, in the hostPath, with the documented bounds.
    let args = c.args.clone().unwrap();
    assert_eq!(
        args,
        [
            "agent",
            "--listen",
            &format!("127.0.0.1:{AGENT_PORT}"),
            "--journal-dir",
            "/var/lib/kubectl-zdt",
            "--journal-max-bytes",
            "256Mi",
            "--journal-max-age",
            "7d"
        ]
    );
    // The manifest's arguments are ones the agent accepts, with the defaults it documents.
    let cli = <kubectl_zdt::cli::Cli as clap::Parser>::try_parse_from(
        std::iter::once("kubectl-zdt").chain(args.iter().map(String::as_str)),
    )
    .unwrap();
    let kubectl_zdt::cli::Command::Agent(agent) = cli.command else {
        panic!("not the agent");
    };
    assert_eq!(
        agent.journal_max_bytes,
        kubectl_zdt::journal::DEFAULT_MAX_BYTES
    );
    assert_eq!(agent.journal_max_age, kubectl_zdt::journal::DEFAULT_MAX_AGE);
    let probe = c.readiness_probe.clone().unwrap().http_get.unwrap();
    assert_eq!(probe.host.as_deref(), Some("127.0.0.1"));
    assert!(
        c.ports.is_none(),
        "the agent exposes no port on the pod network"
    );
}

#[test]
fn the_agent_service_account_can_only_read() {
    for (_, doc) in documents() {
        if doc["kind"] == "ClusterRole" && doc["metadata"]["name"] == "zdt-agent" {
            let role: ClusterRole = typed(&doc);
            for rule in role.rules.unwrap() {
                assert!(
                    rule.verbs
                        .iter()
                        .all(|v| ["get", "list", "watch"].contains(&v.as_str())),
                    "{rule:?}"
                );
            }
        }
    }
}
