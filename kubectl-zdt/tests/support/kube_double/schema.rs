//! Which fields the scripted server's schema declares, by Kubernetes version: server-side apply
//! builds a typed object from the patch and fails on any field its version does not know, e.g.
//! `.spec.template.spec.containers[0].securityContext.appArmorProfile: field not declared in
//! schema` from a 1.29 server.

use serde_json::Value;

/// Fields added to the pod spec after 1.23, with the minor version that added them, relative
/// to a pod spec.
const POD_FIELDS: &[(&str, u32)] = &[
    // KEP-24 AppArmor, GA in 1.30 (before: annotations).
    ("securityContext.appArmorProfile", 30),
    // KEP-3960 preStop sleep action, 1.30 (alpha in 1.29 behind a gate, off by default).
    ("lifecycle.preStop.sleep", 30),
];

/// `major.minor` of a gitVersion such as `v1.28.4` or `v1.23.17-eks-abc`.
pub(super) fn minor_of(git_version: &str) -> u32 {
    git_version
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(u32::MAX)
}

fn has(value: &Value, dotted: &str) -> bool {
    let mut v = value;
    for part in dotted.split('.') {
        match v.get(part) {
            Some(next) => v = next,
            None => return false,
        }
    }
    true
}

/// The first field of `object` a server of `minor` does not declare, as the server names it.
pub(super) fn undeclared(object: &Value, minor: u32) -> Option<String> {
    let (pod, prefix) = match object.pointer("/spec/template/spec") {
        Some(p) => (p, ".spec.template.spec"),
        None => (object.get("spec")?, ".spec"),
    };
    for (field, since) in POD_FIELDS {
        if minor >= *since {
            continue;
        }
        if let Some(pod_level) = field.strip_prefix("securityContext.")
            && pod
                .get("securityContext")
                .is_some_and(|sc| has(sc, pod_level))
        {
            return Some(format!("{prefix}.{field}"));
        }
        for list in ["initContainers", "containers"] {
            for (i, c) in pod[list].as_array().into_iter().flatten().enumerate() {
                if has(c, field) {
                    return Some(format!("{prefix}.{list}[{i}].{field}"));
                }
            }
        }
    }
    None
}
