//! The manifests in `deploy/`, compiled into the binary so that what `install` applies always
//! matches the CLI's version, adapted to what the API server accepts (`for_server`).

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role},
};
use kube::{
    api::{ApiResource, DynamicObject},
    core::{GroupVersionKind, TypeMeta},
};
use serde::Deserialize as _;

use super::{Error, Result};
use crate::kube_version::KubeVersion;

/// `deploy/` files in the order they are applied (uninstall deletes in reverse).
pub const FILES: &[(&str, &str)] = &[
    (
        "namespace.yaml",
        include_str!("../../../deploy/namespace.yaml"),
    ),
    ("rbac.yaml", include_str!("../../../deploy/rbac.yaml")),
    (
        "daemonset.yaml",
        include_str!("../../../deploy/daemonset.yaml"),
    ),
];

/// The image the manifests name, for this version of the CLI.
pub fn default_image() -> String {
    format!(
        "ghcr.io/kubectl-zdt/kubectl-zdt:v{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// `--image`: an image reference as `docker pull` and the kubelet parse it (the grammar of
/// github.com/distribution/reference): `[host[:port]/]path[:tag][@algorithm:hex]`, the path in
/// lower case, the name at most 255 characters. Anything else would be applied and only fail on
/// every node as an ErrImagePull.
pub fn parse_image(s: &str) -> std::result::Result<String, String> {
    static REFERENCE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        let domain_component = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
        let host = format!(r"(?:{domain_component}(?:\.{domain_component})*|\[[a-fA-F0-9:]+\])");
        let path_component = "[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
        let name = format!("(?:{host}(?::[0-9]+)?/)?{path_component}(?:/{path_component})*");
        let tag = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
        let digest = "[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
        regex::Regex::new(&format!("^({name})(?::{tag})?(?:@{digest})?$"))
            .expect("the reference grammar compiles")
    });
    const LIKE: &str = "like registry.example/zdt:v1 or registry.example/zdt@sha256:<64 hex>";
    if s.is_empty() {
        return Err(format!("an empty image reference: give one {LIKE}"));
    }
    let Some(found) = REFERENCE.captures(s) else {
        let hint = if s.chars().any(|c| c.is_ascii_uppercase()) {
            " (the repository path must be lower case)"
        } else {
            ""
        };
        return Err(format!("not an image reference{hint}: give one {LIKE}"));
    };
    if found[1].len() > 255 {
        return Err(format!(
            "the image name is {} characters long; at most 255 are allowed",
            found[1].len()
        ));
    }
    Ok(s.to_owned())
}

/// One object of the manifests, with what is needed to apply or delete it.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub file: &'static str,
    pub object: DynamicObject,
    pub resource: ApiResource,
    pub namespaced: bool,
}

impl Manifest {
    pub fn name(&self) -> &str {
        self.object.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.object.metadata.namespace.as_deref()
    }

    /// `kind/name`, as kubectl prints it.
    pub fn display(&self) -> String {
        format!("{}/{}", self.resource.kind.to_lowercase(), self.name())
    }

    /// `kind/name -n namespace` (namespaced objects) or `kind/name`.
    pub fn display_namespaced(&self) -> String {
        match self.namespace().filter(|_| self.namespaced) {
            Some(ns) => format!("{} -n {ns}", self.display()),
            None => self.display(),
        }
    }
}

/// The kinds the manifests may contain, with their scope.
fn resource_of(types: &TypeMeta) -> Option<(ApiResource, bool)> {
    let gvk = GroupVersionKind::try_from(types).ok()?;
    let known = [
        (ApiResource::erase::<Namespace>(&()), false),
        (ApiResource::erase::<ServiceAccount>(&()), true),
        (ApiResource::erase::<ClusterRole>(&()), false),
        (ApiResource::erase::<ClusterRoleBinding>(&()), false),
        (ApiResource::erase::<Role>(&()), true),
        (ApiResource::erase::<DaemonSet>(&()), true),
    ];
    known
        .into_iter()
        .find(|(ar, _)| ar.group == gvk.group && ar.version == gvk.version && ar.kind == gvk.kind)
}

/// Parses every embedded manifest and points the agent DaemonSet at `image`.
pub fn objects(image: &str) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for (file, text) in FILES {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(doc).map_err(|e| Error::Manifest {
                file,
                reason: e.to_string(),
            })?;
            if value.is_null() {
                continue;
            }
            let mut object: DynamicObject =
                serde_yaml::from_value(value).map_err(|e| Error::Manifest {
                    file,
                    reason: e.to_string(),
                })?;
            let types = object.types.clone().ok_or_else(|| Error::Manifest {
                file,
                reason: "an object has no apiVersion/kind".to_owned(),
            })?;
            let (resource, namespaced) = resource_of(&types).ok_or_else(|| Error::Manifest {
                file,
                reason: format!("unexpected kind {} {}", types.api_version, types.kind),
            })?;
            if resource.kind == "DaemonSet" {
                set_image(&mut object, image).map_err(|reason| Error::Manifest { file, reason })?;
            }
            out.push(Manifest {
                file,
                object,
                resource,
                namespaced,
            });
        }
    }
    Ok(out)
}

/// [`objects`], written for a server of `version`: before 1.30 the DaemonSet's AppArmor
/// profiles move from `securityContext.appArmorProfile`, which such servers reject, to the
/// `container.apparmor.security.beta.kubernetes.io/<container>` annotation they read instead.
pub fn for_server(image: &str, version: KubeVersion) -> Result<Vec<Manifest>> {
    let mut objects = objects(image)?;
    if !version.has_apparmor_field() {
        for m in objects
            .iter_mut()
            .filter(|m| m.resource.kind == "DaemonSet")
        {
            apparmor_as_annotations(&mut m.object.data).map_err(|reason| Error::Manifest {
                file: m.file,
                reason,
            })?;
        }
    }
    Ok(objects)
}

/// The annotation value for an `appArmorProfile` field.
fn apparmor_annotation(profile: &serde_json::Value) -> Result<String, String> {
    match profile["type"].as_str() {
        Some("Unconfined") => Ok("unconfined".to_owned()),
        Some("RuntimeDefault") => Ok("runtime/default".to_owned()),
        Some("Localhost") => profile["localhostProfile"]
            .as_str()
            .map(|p| format!("localhost/{p}"))
            .ok_or_else(|| "a Localhost appArmorProfile has no localhostProfile".to_owned()),
        other => Err(format!("unknown appArmorProfile type {other:?}")),
    }
}

/// Moves the pod's and each container's `appArmorProfile` into annotations (a container's
/// own profile wins over the pod's, as the field's semantics say).
fn apparmor_as_annotations(workload: &mut serde_json::Value) -> Result<(), String> {
    let template = workload
        .pointer_mut("/spec/template")
        .ok_or("the DaemonSet has no pod template")?;
    let pod_profile = template
        .pointer_mut("/spec/securityContext")
        .and_then(serde_json::Value::as_object_mut)
        .and_then(|sc| sc.remove("appArmorProfile"));
    let mut annotations = Vec::new();
    for list in ["containers", "initContainers"] {
        let Some(containers) = template["spec"][list].as_array_mut() else {
            continue;
        };
        for c in containers {
            let name = c["name"]
                .as_str()
                .ok_or("a container has no name")?
                .to_owned();
            let own = c
                .get_mut("securityContext")
                .and_then(serde_json::Value::as_object_mut)
                .and_then(|sc| sc.remove("appArmorProfile"));
            if let Some(profile) = own.as_ref().or(pod_profile.as_ref()) {
                annotations.push((
                    format!("container.apparmor.security.beta.kubernetes.io/{name}"),
                    apparmor_annotation(profile)?,
                ));
            }
        }
    }
    if !annotations.is_empty() {
        for (key, value) in annotations {
            template["metadata"]["annotations"][key] = serde_json::Value::String(value);
        }
    }
    Ok(())
}

fn set_image(ds: &mut DynamicObject, image: &str) -> Result<(), String> {
    let containers = ds
        .data
        .pointer_mut("/spec/template/spec/containers")
        .and_then(serde_json::Value::as_array_mut)
        .ok_or("the DaemonSet has no containers")?;
    for c in containers {
        c["image"] = serde_json::Value::String(image.to_owned());
    }
    Ok(())
}

/// The objects as one multi-document YAML stream (`install --dry-run -o yaml`).
pub fn to_yaml(objects: &[Manifest]) -> String {
    objects
        .iter()
        .map(|m| serde_yaml::to_string(&m.object).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_profile_type_becomes_its_annotation_and_a_containers_own_wins_over_the_pods() {
        let mut ds = json!({"spec": {"template": {"spec": {
        "securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}, "runAsUser": 0},
        "initContainers": [{"name": "init"}],
        "containers": [
            {"name": "agent", "securityContext": {"appArmorProfile": {"type": "Unconfined"}, "privileged": false}},
            {"name": "probe", "securityContext": {"appArmorProfile": {"type": "Localhost", "localhostProfile": "zdt"}}},
            {"name": "plain"}
        ]}}}});
        apparmor_as_annotations(&mut ds).unwrap();
        let prefix = "container.apparmor.security.beta.kubernetes.io";
        assert_eq!(
            ds["spec"]["template"]["metadata"]["annotations"],
            json!({
                format!("{prefix}/init"): "runtime/default",
                format!("{prefix}/agent"): "unconfined",
                format!("{prefix}/probe"): "localhost/zdt",
                format!("{prefix}/plain"): "runtime/default",
            })
        );
        let spec = &ds["spec"]["template"]["spec"];
        assert_eq!(spec["securityContext"], json!({"runAsUser": 0}));
        assert_eq!(
            spec["containers"][0]["securityContext"],
            json!({"privileged": false})
        );
    }

    #[test]
    fn the_shipped_daemonset_keeps_the_field_from_1_30_only() {
        let daemonset = |v| {
            for_server("x", v)
                .unwrap()
                .into_iter()
                .find(|m| m.resource.kind == "DaemonSet")
                .unwrap()
                .object
                .data
        };
        let old = daemonset(KubeVersion::new(1, 29));
        assert!(
            old.pointer("/spec/template/spec/containers/0/securityContext/appArmorProfile")
                .is_none()
        );
        assert_eq!(
            old["spec"]["template"]["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/agent"],
            "unconfined"
        );
        let new = daemonset(KubeVersion::new(1, 30));
        assert_eq!(
            new["spec"]["template"]["spec"]["containers"][0]["securityContext"]["appArmorProfile"],
            json!({"type": "Unconfined"})
        );
        assert!(new["spec"]["template"]["metadata"]["annotations"].is_null());
    }
}
