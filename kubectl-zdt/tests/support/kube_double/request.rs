//! Reading requests and writing responses the way the API server does: paths, selectors,
//! query strings, `Status` bodies, merge patches.

use std::{collections::HashMap, convert::Infallible};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

pub(super) type Body = BoxBody<Bytes, Infallible>;

/// Label and field selectors of a request.
#[derive(Default, Debug)]
pub(super) struct Selectors {
    pub labels: Vec<(String, String)>,
    pub fields: Vec<(String, String)>,
}

impl Selectors {
    pub fn parse(query: &HashMap<String, String>) -> Self {
        let pairs = |s: Option<&String>| -> Vec<(String, String)> {
            s.map(|s| {
                s.split(',')
                    .filter_map(|p| p.split_once('='))
                    .map(|(k, v)| (k.trim_end_matches('=').to_owned(), v.to_owned()))
                    .collect()
            })
            .unwrap_or_default()
        };
        Self {
            labels: pairs(query.get("labelSelector")),
            fields: pairs(query.get("fieldSelector")),
        }
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels_ok = self
            .labels
            .iter()
            .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v));
        let fields_ok = self.fields.iter().all(|(k, v)| {
            let actual = match k.as_str() {
                "metadata.name" => &object["metadata"]["name"],
                "metadata.namespace" => &object["metadata"]["namespace"],
                "spec.nodeName" => &object["spec"]["nodeName"],
                _ => return false,
            };
            actual.as_str().unwrap_or_default() == v
        });
        labels_ok && fields_ok
    }
}

/// A parsed request path.
#[derive(Clone, Debug)]
pub(super) struct Target {
    pub group: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

pub(super) fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        rest => (None, rest),
    };
    let s = |x: &&str| (*x).to_owned();
    match rest {
        [resource] => Some(Target {
            group,
            resource: s(resource),
            namespace,
            name: None,
            subresource: None,
        }),
        [resource, name] => Some(Target {
            group,
            resource: s(resource),
            namespace,
            name: Some(s(name)),
            subresource: None,
        }),
        [resource, name, sub] => Some(Target {
            group,
            resource: s(resource),
            namespace,
            name: Some(s(name)),
            subresource: Some(s(sub)),
        }),
        _ => None,
    }
}

pub(super) fn query_of(uri: &hyper::Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn full(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

pub(super) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// JSON merge (RFC 7386), which is also how the double applies server-side apply patches.
pub(super) fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}
