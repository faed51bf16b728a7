//! kube-proxy's nftables-mode rules (pkg/proxy/nftables/proxier.go), written the way the v1.36
//! kube-proxy of tests/fixtures/kube-proxy-v1.36 wrote them: table `ip kube-proxy`, the
//! `service-ips` verdict map, one `service-<hash>-<ns>/<name>/tcp/<port>` chain per Service port
//! that DNATs through an anonymous numgen map, and the `hairpin-connections` set. Applied with
//! `nft -f -` as one transaction, like kube-proxy does.

use std::{fmt::Write as _, net::SocketAddr};

use data_encoding::BASE32;
use sha2::{Digest as _, Sha256};

use super::kube_proxy::ServicePort;

/// `service-<8 chars of base32(sha256(base))>-<base>` with base `ns/name/tcp/port-name`.
pub fn service_chain(svc: &ServicePort) -> String {
    chain("service-", svc)
}

/// `external-<hash>-<base>`: where node ports (and external IPs) go before the service chain.
pub fn external_chain(svc: &ServicePort) -> String {
    chain("external-", svc)
}

fn chain(prefix: &str, svc: &ServicePort) -> String {
    let (ns_name, port_name) = svc.name.split_once(':').unwrap_or((&svc.name, ""));
    let base = format!("{ns_name}/tcp/{port_name}");
    let digest = Sha256::digest(base.as_bytes());
    format!("{prefix}{}-{base}", &BASE32.encode(&digest)[..8])
}

/// The node's NodePort addresses (kube-proxy's nftables mode defaults to the node's primary
/// IPs): the `nodeport-ips` elements.
pub fn nodeport_ips(ips: &[std::net::IpAddr]) -> String {
    ips.iter()
        .map(|ip| format!("add element ip kube-proxy nodeport-ips {{ {ip} }}\n"))
        .collect()
}

/// A Service's node port as the nftables mode commits it (pkg/proxy/nftables/proxier.go): the
/// `service-nodeports` element `tcp . <nodePort> : goto external-…`, and the external chain,
/// which marks the connection for masquerade (externalTrafficPolicy Cluster) and goes to the
/// service chain. The mark is written the way v1.36 marks ClusterIP traffic in `services`
/// (the v1.36 fixture has no node port, so the external chain's exact first rule is not
/// recorded; the watcher only follows its jumps).
pub fn sync_nodeport(svc: &ServicePort, node_port: u16) -> String {
    let ext = external_chain(svc);
    format!(
        "add chain ip kube-proxy {ext}\n\
flush chain ip kube-proxy {ext}\n\
add rule ip kube-proxy {ext} meta mark set meta mark | 0x00004000\n\
add rule ip kube-proxy {ext} goto {}\n\
add element ip kube-proxy service-nodeports {{ tcp . {node_port} : goto {ext} }}\n",
        service_chain(svc)
    )
}

/// The table skeleton kube-proxy creates at start (everything but per-Service state), for a
/// cluster with `pod_cidr` and `service_cidr`.
pub fn base_table(pod_cidr: &str, service_cidr: &str) -> String {
    format!(
        r#"add table ip kube-proxy {{ comment "rules for kube-proxy" ; }}
add set ip kube-proxy hairpin-connections {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service ; comment "service hairpin connections" ; }}
add set ip kube-proxy cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}
add set ip kube-proxy nodeport-ips {{ type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }}
add map ip kube-proxy no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }}
add map ip kube-proxy no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }}
add map ip kube-proxy firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }}
add map ip kube-proxy service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}
add map ip kube-proxy service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}
add chain ip kube-proxy filter-prerouting-pre-dnat {{ type filter hook prerouting priority -110 ; policy accept ; }}
add chain ip kube-proxy filter-output-pre-dnat {{ type filter hook output priority -110 ; policy accept ; }}
add chain ip kube-proxy filter-input {{ type filter hook input priority 0 ; policy accept ; }}
add chain ip kube-proxy filter-forward {{ type filter hook forward priority 0 ; policy accept ; }}
add chain ip kube-proxy filter-output {{ type filter hook output priority 0 ; policy accept ; }}
add chain ip kube-proxy nat-prerouting {{ type nat hook prerouting priority -100 ; policy accept ; }}
add chain ip kube-proxy nat-output {{ type nat hook output priority -100 ; policy accept ; }}
add chain ip kube-proxy nat-postrouting {{ type nat hook postrouting priority 100 ; policy accept ; }}
add chain ip kube-proxy nodeport-endpoints-check
add chain ip kube-proxy service-endpoints-check
add chain ip kube-proxy firewall-check
add chain ip kube-proxy services
add chain ip kube-proxy masquerading
add chain ip kube-proxy cluster-ips-check
add chain ip kube-proxy reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}
add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump cluster-ips-check
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule ip kube-proxy services ip daddr @cluster-ips ip saddr != {pod_cidr} meta mark set meta mark | 0x00004000 comment "masquerade clusterIP traffic from outside cluster"
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add rule ip kube-proxy masquerading meta mark & 0x00004000 != 0x00000000 meta mark set meta mark ^ 0x00004000 masquerade fully-random
add rule ip kube-proxy masquerading ct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin-connections masquerade fully-random
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy cluster-ips-check ip daddr {service_cidr} drop comment "Drop traffic to unallocated ClusterIPs"
add rule ip kube-proxy reject-chain reject
"#
    )
}

/// One Service port's state change as kube-proxy's nftables mode commits it: the service chain
/// is (re)declared, flushed and refilled with one DNAT rule; `service-ips` and `cluster-ips`
/// get the Service's element; hairpin elements follow the endpoints. With no endpoints left,
/// the Service leaves `service-ips` and its chain is deleted.
pub fn sync_service(svc: &ServicePort, endpoints: &[SocketAddr], removed: &[SocketAddr]) -> String {
    let chain = service_chain(svc);
    let key = format!("{} . tcp . {}", svc.cluster_ip, svc.port);
    let mut s = String::new();
    for ep in endpoints {
        let _ = writeln!(
            s,
            "add element ip kube-proxy hairpin-connections {{ {0} . {0} . tcp . {1} }}",
            ep.ip(),
            ep.port()
        );
    }
    if endpoints.is_empty() {
        let _ = writeln!(s, "delete element ip kube-proxy service-ips {{ {key} }}");
        let _ = writeln!(s, "delete chain ip kube-proxy {chain}");
    } else {
        let _ = writeln!(s, "add chain ip kube-proxy {chain}");
        let _ = writeln!(s, "flush chain ip kube-proxy {chain}");
        let map = endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| format!("{i} : {} . {}", ep.ip(), ep.port()))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "add rule ip kube-proxy {chain} meta l4proto tcp dnat ip to numgen random mod {} map {{ {map} }}",
            endpoints.len()
        );
        let _ = writeln!(
            s,
            "add element ip kube-proxy cluster-ips {{ {} }}",
            svc.cluster_ip
        );
        let _ = writeln!(
            s,
            "add element ip kube-proxy service-ips {{ {key} : goto {chain} }}"
        );
    }
    for ep in removed {
        let _ = writeln!(
            s,
            "delete element ip kube-proxy hairpin-connections {{ {0} . {0} . tcp . {1} }}",
            ep.ip(),
            ep.port()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str =
        include_str!("../../tests/fixtures/kube-proxy-v1.36/nftables-kube-proxy.nft");

    fn svc(name: &str, ip: &str, port: u16) -> ServicePort {
        ServicePort {
            name: name.into(),
            cluster_ip: ip.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn chain_names_match_what_a_real_kube_proxy_wrote() {
        assert_eq!(
            service_chain(&svc("default/web", "10.96.114.246", 80)),
            "service-PFISGYVC-default/web/tcp/"
        );
        assert_eq!(
            service_chain(&svc("default/kubernetes:https", "10.96.0.1", 443)),
            "service-2QRHZV4L-default/kubernetes/tcp/https"
        );
    }

    #[test]
    fn the_service_rule_is_the_one_kube_proxy_wrote() {
        let eps = [
            "10.244.0.36:8080".parse().unwrap(),
            "10.244.0.37:8080".parse().unwrap(),
        ];
        let ours = sync_service(&svc("default/web", "10.96.114.246", 80), &eps, &[]);
        let rule = ours
            .lines()
            .find_map(|l| {
                l.strip_prefix("add rule ip kube-proxy service-PFISGYVC-default/web/tcp/ ")
            })
            .unwrap();
        assert!(
            FIXTURE.lines().any(|l| l.trim() == rule),
            "kube-proxy never wrote: {rule}"
        );
    }

    #[test]
    fn every_base_rule_is_one_kube_proxy_wrote() {
        let base = base_table("10.244.0.0/16", "10.96.0.0/16");
        for line in base
            .lines()
            .filter_map(|l| l.strip_prefix("add rule ip kube-proxy "))
        {
            let (_chain, rule) = line.split_once(' ').unwrap();
            // nft prints `priority dstnat`-style names and `0x00004000`; rules are compared
            // as kube-proxy's text, which nft prints back unchanged.
            assert!(
                FIXTURE.lines().any(|l| l.trim() == rule),
                "kube-proxy never wrote: {rule}"
            );
        }
    }
}
