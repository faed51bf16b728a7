//! The manifests in `deploy/`, compiled into the binary so that what `install` applies always
//! matches the CLI's version.

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
