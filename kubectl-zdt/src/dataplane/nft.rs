//! kube-proxy's nftables mode, read from `nft -j list table ip kube-proxy` (or `ip6`).
//!
//! kube-proxy (pkg/proxy/nftables/proxier.go) keeps a verdict map `service-ips`
//! (`<ClusterIP> . <proto> . <port> : goto service-<hash>-<ns>/<name>/<proto>/<port-name>`, also
//! `external-<hash>-…` chains for external and load-balancer IPs). How a service chain reaches
//! its endpoints depends on the version:
//! - v1.36 (the real fixture): one rule
//!   `dnat ip to numgen random mod N map { 0 : <ip> . <port>, … }` in the service chain;
//! - earlier versions: `numgen random mod N vmap { 0 : goto endpoint-<hash>-…, … }` and, in each
//!   endpoint chain, `dnat to <ip>:<port>`.
//!
//! Both are read the same way: the backends of a chain are the DNAT destinations in it plus those
//! of every chain it jumps or goes to.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use super::{
    chains::{ChainGraph, Frontend, Label},
    model::{Backends, Protocol, ServiceAddr, ServiceName, Via},
};

#[derive(Debug, Error)]
pub enum ParseError {
    #[error("not nft JSON output (`nft -j list table ip kube-proxy`): {0}")]
    Json(#[from] serde_json::Error),
}

/// The verdict map kube-proxy sends ClusterIP, external IP and load-balancer IP traffic through.
const SERVICE_MAP: &str = "service-ips";
/// The verdict map of node ports (`proto . port : goto external-…`), for the addresses in
/// `nodeport-ips`.
const NODEPORT_MAP: &str = "service-nodeports";
const NODEPORT_IPS: &str = "nodeport-ips";

#[derive(Deserialize)]
struct Document {
    nftables: Vec<Item>,
}

/// One object of the `nftables` array; only sets, maps and rules matter, the rest is skipped.
#[derive(Deserialize)]
struct Item {
    set: Option<MapObject>,
    map: Option<MapObject>,
    rule: Option<RuleObject>,
}

#[derive(Deserialize)]
struct MapObject {
    name: String,
    #[serde(default)]
    elem: Vec<Value>,
}

#[derive(Deserialize)]
struct RuleObject {
    chain: String,
    #[serde(default)]
    expr: Vec<Value>,
}

/// Parses kube-proxy's table as `nft -j` prints it into the routes it programs.
pub fn parse(json: &str) -> Result<Backends, ParseError> {
    let doc: Document = serde_json::from_str(json)?;
    let mut frontends = Vec::new();
    let mut graph = ChainGraph::default();
    let mut nodeport_ips: Vec<IpAddr> = Vec::new();
    let mut nodeports = Vec::new();
    for item in &doc.nftables {
        if let Some(map) = item.map.as_ref().filter(|m| m.name == SERVICE_MAP) {
            frontends.extend(map.elem.iter().filter_map(frontend_of));
        }
        if let Some(map) = item.map.as_ref().filter(|m| m.name == NODEPORT_MAP) {
            nodeports.extend(map.elem.iter().filter_map(nodeport_of));
        }
        if let Some(set) = item.set.as_ref().filter(|s| s.name == NODEPORT_IPS) {
            nodeport_ips.extend(
                set.elem
                    .iter()
                    .filter_map(|e| e.as_str()?.parse::<IpAddr>().ok()),
            );
        }
        if let Some(rule) = &item.rule {
            for expr in &rule.expr {
                collect(&rule.chain, expr, &mut graph);
            }
        }
    }
    for (protocol, port, chain) in nodeports {
        for ip in &nodeport_ips {
            frontends.push(Frontend {
                service: ServiceAddr(SocketAddr::new(*ip, port)),
                protocol,
                chain,
                label: Label::Chain(chain),
                via: Via::NodePort,
            });
        }
    }
    Ok(graph.routes(frontends))
}

/// A verdict map element `[{"concat": [key parts…]}, {"goto": {"target": chain}}]`: the key's
/// parts and the chain.
fn verdict_element(elem: &Value) -> Option<(&[Value], &str)> {
    let [key, verdict] = elem.as_array()?.as_slice() else {
        return None;
    };
    let parts = key.get("concat")?.as_array()?;
    let target = verdict
        .get("goto")
        .or_else(|| verdict.get("jump"))?
        .get("target")?
        .as_str()?;
    Some((parts, target))
}

/// A `service-ips` element: `ip . proto . port : goto chain`.
fn frontend_of(elem: &Value) -> Option<Frontend<'_>> {
    let (parts, target) = verdict_element(elem)?;
    let [ip, proto, port] = parts else {
        return None;
    };
    let ip: IpAddr = ip.as_str()?.parse().ok()?;
    let port = u16::try_from(port.as_u64()?).ok()?;
    let protocol = Protocol::parse(proto.as_str()?)?;
    Some(Frontend {
        service: ServiceAddr(SocketAddr::new(ip, port)),
        protocol,
        chain: target,
        label: Label::Chain(target),
        via: Via::ServiceIp,
    })
}

/// A `service-nodeports` element: `proto . port : goto chain`.
fn nodeport_of(elem: &Value) -> Option<(Protocol, u16, &str)> {
    let (parts, target) = verdict_element(elem)?;
    let [proto, port] = parts else {
        return None;
    };
    let port = u16::try_from(port.as_u64()?).ok()?;
    let protocol = Protocol::parse(proto.as_str()?)?;
    Some((protocol, port, target))
}

/// Walks one expression tree of a rule in `chain` for DNAT destinations and jumps.
fn collect<'a>(chain: &'a str, v: &'a Value, graph: &mut ChainGraph<'a>) {
    match v {
        Value::Object(obj) => {
            if let Some(dnat) = obj.get("dnat") {
                for backend in dnat_targets(dnat) {
                    graph.add_dnat(chain, backend);
                }
            }
            for verdict in ["goto", "jump"] {
                if let Some(target) = obj
                    .get(verdict)
                    .and_then(|j| j.get("target"))
                    .and_then(Value::as_str)
                {
                    graph.add_jump(chain, target);
                }
            }
            for (key, child) in obj {
                if key != "dnat" {
                    collect(chain, child, graph);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|c| collect(chain, c, graph)),
        _ => {}
    }
}

/// `{"addr": "10.244.0.5", "port": 8080}` or
/// `{"addr": {"map": {"key": {"numgen": …}, "data": {"set": [[0, {"concat": [ip, port]}], …]}}}}`.
fn dnat_targets(dnat: &Value) -> Vec<SocketAddr> {
    let Some(addr) = dnat.get("addr") else {
        return Vec::new();
    };
    if let Some(ip) = addr.as_str() {
        let port = dnat.get("port").and_then(Value::as_u64);
        return socket(ip, port).into_iter().collect();
    }
    let Some(set) = addr
        .get("map")
        .and_then(|m| m.get("data"))
        .and_then(|d| d.get("set"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    set.iter()
        .filter_map(|pair| {
            let [_, target] = pair.as_array()?.as_slice() else {
                return None;
            };
            let [ip, port] = target.get("concat")?.as_array()?.as_slice() else {
                return None;
            };
            socket(ip.as_str()?, port.as_u64())
        })
        .collect()
}

fn socket(ip: &str, port: Option<u64>) -> Option<SocketAddr> {
    let ip: IpAddr = ip.parse().ok()?;
    let port = u16::try_from(port?).ok()?;
    Some(SocketAddr::new(ip, port))
}

/// `service-PFISGYVC-default/web/tcp/` → `default/web`; with a port name,
/// `service-2QRHZV4L-default/kubernetes/tcp/https` → `default/kubernetes:https` (the names
/// kube-proxy's iptables mode writes in its comments).
pub fn service_name(chain: &str) -> Option<ServiceName> {
    let rest = chain
        .strip_prefix("service-")
        .or_else(|| chain.strip_prefix("external-"))?;
    let (_hash, base) = rest.split_once('-')?;
    let mut parts = base.splitn(4, '/');
    let (ns, name, _proto, port) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some(ServiceName::from(if port.is_empty() {
        format!("{ns}/{name}")
    } else {
        format!("{ns}/{name}:{port}")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str =
        include_str!("../../tests/fixtures/kube-proxy-v1.36/nftables-kube-proxy.json");

    #[test]
    fn the_real_kube_proxy_table_has_three_routes() {
        assert_eq!(
            parse(FIXTURE).unwrap().describe(),
            [
                "10.96.0.1:443 tcp -> 192.0.2.2:6443 (default/kubernetes:https)",
                "10.96.114.246:80 tcp -> 10.244.0.36:8080 (default/web)",
                "10.96.114.246:80 tcp -> 10.244.0.37:8080 (default/web)",
            ]
        );
    }

    #[test]
    fn endpoint_chains_of_earlier_versions_are_followed() {
        let json = r#"{"nftables": [
          {"map": {"family": "ip", "name": "service-ips", "table": "kube-proxy", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict",
                   "elem": [[{"concat": ["172.30.0.41", "tcp", 80]}, {"goto": {"target": "service-ULMVA6XW-ns1/svc1/tcp/p80"}}]]}},
          {"rule": {"family": "ip", "table": "kube-proxy", "chain": "service-ULMVA6XW-ns1/svc1/tcp/p80", "handle": 3,
                    "expr": [{"vmap": {"key": {"numgen": {"mode": "random", "mod": 2, "offset": 0}},
                                       "data": {"set": [[0, {"goto": {"target": "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"}}],
                                                        [1, {"goto": {"target": "endpoint-ABCDEFGH-ns1/svc1/tcp/p80__10.180.0.2/80"}}]]}}}]}},
          {"rule": {"family": "ip", "table": "kube-proxy", "chain": "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80", "handle": 4,
                    "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.180.0.1"}},
                             {"jump": {"target": "mark-for-masquerade"}}]}},
          {"rule": {"family": "ip", "table": "kube-proxy", "chain": "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80", "handle": 5,
                    "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                             {"dnat": {"family": "ip", "addr": "10.180.0.1", "port": 80}}]}},
          {"rule": {"family": "ip", "table": "kube-proxy", "chain": "endpoint-ABCDEFGH-ns1/svc1/tcp/p80__10.180.0.2/80", "handle": 6,
                    "expr": [{"dnat": {"family": "ip", "addr": "10.180.0.2", "port": 80}}]}}
        ]}"#;
        assert_eq!(
            parse(json).unwrap().describe(),
            [
                "172.30.0.41:80 tcp -> 10.180.0.1:80 (ns1/svc1:p80)",
                "172.30.0.41:80 tcp -> 10.180.0.2:80 (ns1/svc1:p80)",
            ]
        );
    }

    #[test]
    fn a_service_chain_without_rules_routes_nowhere() {
        // kube-proxy flushes and refills a service chain in one transaction; a dump never sees
        // it empty, but a hand-made table may.
        let json = r#"{"nftables": [{"map": {"name": "service-ips",
            "elem": [[{"concat": ["10.96.0.5", "tcp", 80]}, {"goto": {"target": "service-X-a/b/tcp/"}}]]}}]}"#;
        assert!(parse(json).unwrap().is_empty());
    }

    #[test]
    fn text_that_is_not_nft_json_is_one_clear_error() {
        let err = parse("table ip kube-proxy {").unwrap_err();
        assert!(err.to_string().starts_with("not nft JSON output"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_json_values_never_panic(
            ip in "[0-9a-f:.]{0,20}", port in proptest::num::i64::ANY, proto in "[a-z]{0,5}",
            target in "[a-z/-]{0,20}"
        ) {
            let json = serde_json::json!({"nftables": [
                {"map": {"name": "service-ips", "elem": [[{"concat": [ip, proto, port]}, {"goto": {"target": target}}]]}},
                {"rule": {"chain": target, "expr": [{"dnat": {"addr": ip, "port": port}},
                          {"dnat": {"addr": {"map": {"data": {"set": [[0, {"concat": [ip, port]}], [1, 2], 3]}}}}}]}}
            ]});
            let _ = parse(&json.to_string());
        }
    }
}
