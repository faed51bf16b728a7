//! Minimal reading of `nft monitor ruleset` output from kube-proxy's nftables mode →
//! `dataplane_added` / `dataplane_removed` (T_dp_removed for the node it ran on).
//!
//! Only what the correlation needs: kube-proxy rewrites a Service's chain
//! (`service-<hash>-<ns>/<name>/<proto>/<port>`) with one rule whose DNAT map lists every
//! endpoint (`numgen random mod N map { 0 : IP . PORT, … }`); a backend missing from the new
//! rule is no longer chosen for new connections from that moment. kube-proxy also drops each
//! gone endpoint's element from the `hairpin-connections` set, which catches a removal whose
//! rule rewrite was not captured. The full dataplane parsers live elsewhere; this one reads the
//! lines the monitor prints, nothing more.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use jiff::Timestamp;

use crate::observation::{Kind, NodeName, Observation};

type Backend = (IpAddr, u16);

/// Tracks each Service chain's backends and emits their changes.
#[derive(Debug)]
pub struct NftMonitor {
    node: NodeName,
    /// chain name → (Service `ns/name`, backends in its current rule).
    chains: BTreeMap<String, (String, BTreeSet<Backend>)>,
}

/// `service-LGWEKWL6-default/webfast/tcp/` → `default/webfast`.
fn service_of(chain: &str) -> Option<String> {
    let rest = chain.strip_prefix("service-")?;
    let (_hash, path) = rest.split_once('-')?;
    let mut parts = path.split('/');
    Some(format!("{}/{}", parts.next()?, parts.next()?))
}

/// `IP . PORT` pairs inside `{ … }` (map entries `K : IP . PORT`, or set elements).
fn backends(text: &str) -> BTreeSet<Backend> {
    let inner = text
        .split_once('{')
        .and_then(|(_, r)| r.rsplit_once('}'))
        .map_or(text, |(i, _)| i);
    inner
        .split(',')
        .filter_map(|entry| {
            let value = entry.rsplit_once(':').map_or(entry, |(_, v)| v);
            let mut it = value.split('.').map(str::trim);
            // An IPv4 address itself contains dots: rebuild it from the first four fields.
            let fields: Vec<&str> = it.by_ref().collect();
            let (ip, port) = match fields.len() {
                5 => (fields[..4].join("."), fields[4]),
                2 => (fields[0].to_owned(), fields[1]),
                _ => return None,
            };
            Some((ip.parse().ok()?, port.parse().ok()?))
        })
        .collect()
}

impl NftMonitor {
    pub fn new(node: NodeName) -> Self {
        Self {
            node,
            chains: BTreeMap::new(),
        }
    }

    fn obs(
        &self,
        kind: Kind,
        t: Timestamp,
        service: &str,
        b: Backend,
        reason: &str,
    ) -> Observation {
        let mut o = Observation::new(kind, t, self.node.clone());
        o.ip = Some(b.0);
        o.port = Some(b.1);
        o.service = Some(crate::observation::ServiceRef::parse(service));
        o.reason = Some(reason.to_owned());
        o
    }

    /// One monitor line, read at `t`.
    pub fn on_line(&mut self, t: Timestamp, line: &str) -> Vec<Observation> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut out = Vec::new();
        match words[..] {
            ["add", "rule", _family, "kube-proxy", chain, ..]
                if chain.starts_with("service-") && line.contains("dnat") =>
            {
                let Some(service) = service_of(chain) else {
                    return out;
                };
                let new = backends(line.split_once("dnat").map_or("", |(_, r)| r));
                let (_, old) = self.chains.remove(chain).unwrap_or_default();
                for &b in old.difference(&new) {
                    out.push(self.obs(Kind::DataplaneRemoved, t, &service, b, "nft_service_rule"));
                }
                for &b in new.difference(&old) {
                    out.push(self.obs(Kind::DataplaneAdded, t, &service, b, "nft_service_rule"));
                }
                self.chains.insert(chain.to_owned(), (service, new));
            }
            [
                "delete",
                "element",
                _family,
                "kube-proxy",
                "hairpin-connections",
                ..,
            ] => {
                // Elements are `IP . IP . proto . PORT`: the endpoint and its port.
                let inner = line
                    .split_once('{')
                    .and_then(|(_, r)| r.rsplit_once('}'))
                    .map_or("", |(i, _)| i);
                for element in inner.split(',') {
                    let f: Vec<&str> = element.split(" . ").map(str::trim).collect();
                    let Some((Ok(ip), Ok(port))) =
                        (f.len() == 4).then(|| (f[0].parse::<IpAddr>(), f[3].parse::<u16>()))
                    else {
                        continue;
                    };
                    let gone: Vec<(String, String)> = self
                        .chains
                        .iter()
                        .filter(|(_, (_, set))| set.contains(&(ip, port)))
                        .map(|(c, (s, _))| (c.clone(), s.clone()))
                        .collect();
                    for (chain, service) in gone {
                        if let Some((_, set)) = self.chains.get_mut(&chain) {
                            set.remove(&(ip, port));
                        }
                        out.push(self.obs(
                            Kind::DataplaneRemoved,
                            t,
                            &service,
                            (ip, port),
                            "nft_hairpin",
                        ));
                    }
                }
            }
            _ => {}
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
#[error("line {line}: expected `<realtime ns> <nft monitor line>`, got {text:?}")]
pub struct StampError {
    pub line: usize,
    pub text: String,
}

/// Lines prefixed with the realtime nanoseconds they were read at (the fixtures' format).
pub fn read_stamped(text: &str) -> Result<Vec<(Timestamp, &str)>, StampError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let err = || StampError {
                line: i + 1,
                text: l.chars().take(80).collect(),
            };
            let (ns, rest) = l.split_once(' ').ok_or_else(err)?;
            let ns: i128 = ns.parse().map_err(|_| err())?;
            Ok((Timestamp::from_nanosecond(ns).map_err(|_| err())?, rest))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_rewrite_without_a_backend_removes_it_and_adds_the_new_ones() {
        let mut m = NftMonitor::new(NodeName("vm".into()));
        let t: Timestamp = "2026-11-22T01:16:45Z".parse().unwrap();
        let first = m.on_line(t, "add rule ip kube-proxy service-X-default/web/tcp/ meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.244.0.46 . 8080, 1 : 10.244.0.47 . 8080 }");
        assert_eq!(
            first
                .iter()
                .filter(|o| o.kind == Kind::DataplaneAdded)
                .count(),
            2
        );
        let second = m.on_line(t, "add rule ip kube-proxy service-X-default/web/tcp/ meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.244.0.47 . 8080, 1 : 10.244.0.48 . 8080 }");
        let removed: Vec<_> = second
            .iter()
            .filter(|o| o.kind == Kind::DataplaneRemoved)
            .collect();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].ip, Some("10.244.0.46".parse().unwrap()));
        assert_eq!(removed[0].service, Some("default/web".into()));
        // The hairpin element of an already-removed backend says nothing new.
        let late = m.on_line(t, "delete element ip kube-proxy hairpin-connections { 10.244.0.46 . 10.244.0.46 . tcp . 8080 }");
        assert!(late.is_empty());
        let hairpin = m.on_line(t, "delete element ip kube-proxy hairpin-connections { 10.244.0.47 . 10.244.0.47 . tcp . 8080 }");
        assert_eq!(hairpin.len(), 1);
        assert_eq!(hairpin[0].reason.as_deref(), Some("nft_hairpin"));
    }
}
