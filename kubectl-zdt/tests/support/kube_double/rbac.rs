//! The shipped RBAC rules (deploy/rbac.yaml) as an authorizer would apply them to a [`Call`].

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use kubectl_zdt::cluster::manifests;

use super::apiserver::Call;

/// Rules of the ClusterRole or Role `name` in the shipped manifests.
pub fn rules(kind: &str, name: &str) -> Vec<PolicyRule> {
    let (_, text) = manifests::FILES
        .iter()
        .find(|(f, _)| *f == "rbac.yaml")
        .unwrap();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] != kind || v["metadata"]["name"] != name {
            continue;
        }
        return match kind {
            "ClusterRole" => serde_json::from_value::<ClusterRole>(v).unwrap().rules,
            _ => serde_json::from_value::<Role>(v).unwrap().rules,
        }
        .unwrap_or_default();
    }
    panic!("no {kind} {name} in deploy/rbac.yaml")
}

/// Whether any rule allows the call (group, resource[/subresource], verb).
pub fn allows(rules: &[PolicyRule], call: &Call) -> bool {
    let resource = match &call.subresource {
        Some(s) => format!("{}/{s}", call.resource),
        None => call.resource.clone(),
    };
    rules.iter().any(|r| {
        r.api_groups
            .as_ref()
            .is_some_and(|g| g.iter().any(|g| g == "*" || *g == call.group))
            && r.resources
                .as_ref()
                .is_some_and(|rs| rs.iter().any(|x| x == "*" || *x == resource))
            && r.verbs.iter().any(|v| v == "*" || *v == call.verb)
    })
}

/// Panics naming the first call the shipped `kind`/`name` rules do not allow.
pub fn assert_all_allowed(kind: &str, name: &str, calls: &[Call]) {
    let rules = rules(kind, name);
    for call in calls {
        assert!(
            allows(&rules, call),
            "{kind} {name} does not allow `{}` (deploy/rbac.yaml)",
            call.short()
        );
    }
}
