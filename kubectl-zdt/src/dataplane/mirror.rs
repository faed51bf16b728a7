//! A mirror of one nf_tables table (iptables-nft's `nat`, or kube-proxy's `kube-proxy`), kept
//! from the kernel's own messages: first a netlink dump, then every commit's notifications.
//! Notifications carry the full objects (a NEWRULE has all its expressions, a NEWSETELEM its
//! elements), so a change is applied without reading the table again: the cost of an endpoint
//! change does not grow with the number of Services.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use netlink_packet_netfilter::nftables::{
    ChainAttribute, DataAttribute, ListAttribute, NfTablesMessage, RuleAttribute, SetAttribute,
    SetElementAttribute, SetElementList, TableAttribute,
};

use super::{
    chains::{
        DispatchRule, Frontend, KUBE_NODEPORTS, KUBE_SERVICES, Label, routes_toward_endpoints,
    },
    model::{Backend, Backends, Change, Protocol, Route, RouteChange, ServiceAddr, Via},
    nft_rule::{self, Dnat, RuleFacts},
    source::Family,
};

/// kube-proxy's nftables-mode dispatch map.
const SERVICE_IPS: &str = "service-ips";
/// Its NodePort dispatch: `inet_proto . inet_service : goto external-…`, matched only for
/// destinations in `nodeport-ips` (`ip daddr @nodeport-ips meta l4proto . th dport vmap
/// @service-nodeports`).
const SERVICE_NODEPORTS: &str = "service-nodeports";
const NODEPORT_IPS: &str = "nodeport-ips";

/// Sets whose elements can change a route: the dispatch maps and anonymous maps (`__mapN`,
/// `__setN`, what `numgen … map { … }` and `vmap { … }` compile to). kube-proxy's other named
/// sets (`hairpin-connections` with one element per endpoint, `cluster-ips`, …) only mark or
/// filter packets; not mirroring them saves most of the memory on a large node.
pub fn routes_through(set: &str) -> bool {
    is_dispatch_set(set) || set.starts_with("__")
}

/// Sets every frontend depends on: a change recomputes them all.
fn is_dispatch_set(set: &str) -> bool {
    [SERVICE_IPS, SERVICE_NODEPORTS, NODEPORT_IPS].contains(&set)
}

/// What a map element maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ElemData {
    Value(Vec<u8>),
    Chain(String),
    None,
}

/// The parts of one table that routing depends on.
#[derive(Debug)]
pub struct TableMirror {
    family: u8,
    table: String,
    rules: HashMap<(String, u64), RuleFacts>,
    sets: HashMap<String, BTreeMap<Vec<u8>, ElemData>>,
    dirty: Dirty,
}

/// What changed since the routes were last brought up to date.
#[derive(Debug, Default)]
struct Dirty {
    /// The dispatch changed (KUBE-SERVICES rules, `service-ips`), or the table was re-read:
    /// every frontend is recomputed.
    all: bool,
    chains: std::collections::HashSet<String>,
    sets: std::collections::HashSet<String>,
}

impl TableMirror {
    pub fn new(family: u8, table: &str) -> Self {
        Self {
            family,
            table: table.to_owned(),
            rules: HashMap::new(),
            sets: HashMap::new(),
            dirty: Dirty {
                all: true,
                ..Dirty::default()
            },
        }
    }

    pub fn table(&self) -> (u8, &str) {
        (self.family, &self.table)
    }

    /// The address family of the table.
    pub fn family(&self) -> Family {
        if self.family == Family::V6.nfproto() {
            Family::V6
        } else {
            Family::V4
        }
    }

    /// Applies one message of `family` (a dump reply or a notification); other tables' messages
    /// are ignored. Returns whether it concerned this table.
    pub fn apply(&mut self, family: u8, msg: &NfTablesMessage) -> bool {
        if family != self.family || table_of(msg) != Some(self.table.as_str()) {
            return false;
        }
        match msg {
            NfTablesMessage::NewRule(r) | NfTablesMessage::GetRule(r) => {
                if let Some(key) = rule_key(&r.attributes) {
                    let facts = r
                        .attributes
                        .iter()
                        .find_map(|a| match a {
                            RuleAttribute::Expressions(e) => Some(nft_rule::decode(e, family)),
                            _ => None,
                        })
                        .unwrap_or_default();
                    self.touch_chain(&key.0);
                    self.rules.insert(key, facts);
                }
            }
            NfTablesMessage::DeleteRule(r) => {
                if let Some(key) = rule_key(&r.attributes) {
                    self.touch_chain(&key.0);
                    self.rules.remove(&key);
                }
            }
            NfTablesMessage::DeleteChain(c) => {
                if let Some(name) = c.attributes.iter().find_map(|a| match a {
                    ChainAttribute::Name(n) => Some(n.as_str()),
                    _ => None,
                }) {
                    self.touch_chain(name);
                    self.rules.retain(|(chain, _), _| chain != name);
                }
            }
            NfTablesMessage::NewSet(s) | NfTablesMessage::GetSet(s) => {
                if let Some(name) = set_name(&s.attributes).filter(|n| routes_through(n)) {
                    self.sets.entry(name.to_owned()).or_default();
                }
            }
            NfTablesMessage::DeleteSet(s) => {
                if let Some(name) = set_name(&s.attributes) {
                    self.touch_set(name);
                    self.sets.remove(name);
                }
            }
            NfTablesMessage::NewSetElement(m) | NfTablesMessage::GetSetElement(m) => {
                self.elements(&m.attributes, true);
            }
            NfTablesMessage::DeleteSetElement(m) => self.elements(&m.attributes, false),
            NfTablesMessage::DeleteTable(_) => {
                self.rules.clear();
                self.sets.clear();
                self.dirty.all = true;
            }
            _ => {}
        }
        true
    }

    fn elements(&mut self, list: &[SetElementList], add: bool) {
        let Some(set) = list.iter().find_map(|a| match a {
            SetElementList::Set(s) => Some(s.clone()),
            _ => None,
        }) else {
            return;
        };
        if !routes_through(&set) {
            return;
        }
        self.touch_set(&set);
        let entries = self.sets.entry(set).or_default();
        for a in list {
            let SetElementList::Elements(elems) = a else {
                continue;
            };
            for e in elems {
                let ListAttribute::Element(attrs) = e else {
                    continue;
                };
                let (mut key, mut data) = (None, ElemData::None);
                for attr in attrs {
                    match attr {
                        SetElementAttribute::Key(DataAttribute::Value(k)) => key = Some(k.clone()),
                        SetElementAttribute::Data(DataAttribute::Value(v)) => {
                            data = ElemData::Value(v.clone());
                        }
                        SetElementAttribute::Data(DataAttribute::Verdict(v)) => {
                            if let Some(c) = nft_rule::verdict_chain(v) {
                                data = ElemData::Chain(c);
                            }
                        }
                        _ => {}
                    }
                }
                if let Some(key) = key {
                    if add {
                        entries.insert(key, data);
                    } else {
                        entries.remove(&key);
                    }
                }
            }
        }
    }

    /// Does the table hold kube-proxy's dispatch (rules in KUBE-SERVICES, or the `service-ips`
    /// map)?
    pub fn is_kube_proxy(&self) -> bool {
        self.rules.keys().any(|(chain, _)| chain == KUBE_SERVICES)
            || self.sets.contains_key(SERVICE_IPS)
    }

    fn touch_chain(&mut self, chain: &str) {
        if chain == KUBE_SERVICES || chain == KUBE_NODEPORTS {
            self.dirty.all = true;
        } else {
            self.dirty.chains.insert(chain.to_owned());
        }
    }

    fn touch_set(&mut self, set: &str) {
        if is_dispatch_set(set) {
            self.dirty.all = true;
        } else {
            self.dirty.sets.insert(set.to_owned());
        }
    }

    /// The routes the mirrored table programs now.
    pub fn routes(&self) -> Backends {
        let index = Index::new(self);
        let mut routes = Backends::new();
        for e in index.entries() {
            let name = e.name();
            for chain in index.reachable_chains(e.chain) {
                for backend in index.dnats(chain) {
                    routes.insert(route_of(&e, Backend(backend)), name.clone());
                }
            }
        }
        routes
    }

    /// Brings `routes` (this table's routes at the previous call) up to date and returns what
    /// changed. Only the frontends that reach a chain or map changed since then are recomputed,
    /// and maps are decoded only for them: an endpoint change of one Service costs about the same
    /// with 10 or 10 000 Services, but for walking the frontends' chains.
    pub fn update(&mut self, routes: &mut Backends) -> Change {
        let dirty = std::mem::take(&mut self.dirty);
        if dirty.all {
            let next = self.routes();
            let change = routes.diff(&next);
            *routes = next;
            return change;
        }
        let index = Index::new(self);
        let mut touched: std::collections::HashSet<&str> =
            dirty.chains.iter().map(String::as_str).collect();
        for ((chain, _), facts) in &self.rules {
            let uses_dirty_set = facts.vmaps.iter().any(|s| dirty.sets.contains(s))
                || facts
                    .dnat
                    .iter()
                    .any(|d| matches!(d, Dnat::Map { set, .. } if dirty.sets.contains(set)));
            if uses_dirty_set {
                touched.insert(chain);
            }
        }
        let mut change = Change::default();
        for e in index.entries() {
            let reach = index.reachable_chains(e.chain);
            if !reach.iter().any(|c| touched.contains(c)) {
                continue;
            }
            let name = e.name();
            let old = routes.backends_of(e.service, e.protocol, e.via);
            let new: Vec<Backend> = reach
                .iter()
                .flat_map(|c| index.dnats(c))
                .map(Backend)
                .collect();
            for b in old.iter().filter(|b| !new.contains(b)) {
                routes.remove(&route_of(&e, *b));
                change.removed.push(RouteChange {
                    route: route_of(&e, *b),
                    name: name.clone(),
                });
            }
            for b in new.iter().filter(|b| !old.contains(b)) {
                if !routes.contains(&route_of(&e, *b)) {
                    routes.insert(route_of(&e, *b), name.clone());
                    change.added.push(RouteChange {
                        route: route_of(&e, *b),
                        name: name.clone(),
                    });
                }
            }
        }
        change
    }
}

/// The mirror's rules by chain, borrowed: what a walk from a frontend needs, without decoding
/// any map it does not reach.
struct Index<'a> {
    mirror: &'a TableMirror,
    by_chain: HashMap<&'a str, Vec<&'a RuleFacts>>,
}

fn route_of(f: &Frontend<'_>, backend: Backend) -> Route {
    Route {
        service: f.service,
        protocol: f.protocol,
        backend,
        via: f.via,
    }
}

impl<'a> Index<'a> {
    fn new(mirror: &'a TableMirror) -> Self {
        let mut by_chain: HashMap<&str, Vec<&RuleFacts>> = HashMap::new();
        for ((chain, _), facts) in &mirror.rules {
            by_chain.entry(chain).or_default().push(facts);
        }
        Self { mirror, by_chain }
    }

    /// Every frontend: iptables-nft's KUBE-SERVICES and KUBE-NODEPORTS rules, the nftables
    /// mode's `service-ips` elements and its node ports (`service-nodeports` elements on each
    /// address of `nodeport-ips`).
    fn entries(&self) -> Vec<Frontend<'a>> {
        let mut rules = Vec::new();
        for chain in [KUBE_SERVICES, KUBE_NODEPORTS] {
            for f in self.by_chain.get(chain).into_iter().flatten() {
                if let Some(target) = f
                    .jumps
                    .iter()
                    .find(|j| routes_toward_endpoints(j) || *j == KUBE_NODEPORTS)
                {
                    rules.push(DispatchRule {
                        chain,
                        daddr: f.daddr,
                        protocol: f.l4proto.and_then(|p| Protocol::from_number(u16::from(p))),
                        dport: f.dport,
                        target,
                        comment: f.comment.as_deref(),
                    });
                }
            }
        }
        let mut out = super::chains::frontends(&rules, self.mirror.family());
        if let Some(map) = self.mirror.sets.get(SERVICE_IPS) {
            for (key, data) in map {
                if let (ElemData::Chain(chain), Some((service, protocol))) =
                    (data, service_key(key))
                {
                    out.push(Frontend {
                        service,
                        protocol,
                        chain,
                        label: Label::Chain(chain),
                        via: Via::ServiceIp,
                    });
                }
            }
        }
        let nodeport_ips = self.mirror.sets.get(NODEPORT_IPS);
        if let (Some(ports), Some(ips)) = (self.mirror.sets.get(SERVICE_NODEPORTS), nodeport_ips) {
            for (key, data) in ports {
                let (ElemData::Chain(chain), Some((protocol, port))) = (data, nodeport_key(key))
                else {
                    continue;
                };
                for ip in ips.keys().filter_map(|k| ip_of_key(k)) {
                    out.push(Frontend {
                        service: ServiceAddr(SocketAddr::new(ip, port)),
                        protocol,
                        chain,
                        label: Label::Chain(chain),
                        via: Via::NodePort,
                    });
                }
            }
        }
        out
    }

    fn elements(&self, set: &str) -> impl Iterator<Item = &'a ElemData> + use<'a> {
        self.mirror
            .sets
            .get(set)
            .into_iter()
            .flat_map(|s| s.values())
    }

    /// The chains reachable from `start` (itself included) through jumps and verdict maps.
    fn reachable_chains(&self, start: &'a str) -> Vec<&'a str> {
        // A handful of chains per frontend: a vector beats hashing.
        let mut seen: Vec<&'a str> = Vec::new();
        let mut stack = vec![start];
        while let Some(chain) = stack.pop() {
            if seen.contains(&chain) {
                continue;
            }
            seen.push(chain);
            for facts in self.by_chain.get(chain).into_iter().flatten() {
                stack.extend(facts.jumps.iter().map(String::as_str));
                for vmap in &facts.vmaps {
                    stack.extend(self.elements(vmap).filter_map(|d| match d {
                        ElemData::Chain(c) => Some(c.as_str()),
                        _ => None,
                    }));
                }
            }
        }
        seen
    }

    /// The DNAT destinations of one chain's rules.
    fn dnats(&self, chain: &str) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for facts in self.by_chain.get(chain).into_iter().flatten() {
            for dnat in &facts.dnat {
                match dnat {
                    Dnat::Addr(a) => out.push(*a),
                    Dnat::Map {
                        set,
                        addr_word,
                        port_word,
                        v6,
                    } => out.extend(self.elements(set).filter_map(|d| match d {
                        ElemData::Value(v) => {
                            nft_rule::map_element_target(v, *addr_word, *port_word, *v6)
                        }
                        _ => None,
                    })),
                }
            }
        }
        out
    }
}

/// A `service-nodeports` key: `inet_proto . inet_service`, each padded to 4 bytes.
fn nodeport_key(key: &[u8]) -> Option<(Protocol, u16)> {
    if key.len() != 8 {
        return None;
    }
    let protocol = Protocol::from_number(u16::from(key[0]))?;
    Some((protocol, u16::from_be_bytes([key[4], key[5]])))
}

/// A `nodeport-ips` key: one address.
fn ip_of_key(key: &[u8]) -> Option<IpAddr> {
    match key.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(key).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(key).ok()?))),
        _ => None,
    }
}

/// A `service-ips` key: `ipv4_addr . inet_proto . inet_service`, each padded to 4 bytes (an
/// IPv6 address takes 16).
fn service_key(key: &[u8]) -> Option<(ServiceAddr, Protocol)> {
    let (ip, rest): (IpAddr, &[u8]) = match key.len() {
        12 => (
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&key[..4]).ok()?)),
            &key[4..],
        ),
        24 => (
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&key[..16]).ok()?)),
            &key[16..],
        ),
        _ => return None,
    };
    let protocol = Protocol::from_number(u16::from(rest[0]))?;
    let port = u16::from_be_bytes([rest[4], rest[5]]);
    Some((ServiceAddr(SocketAddr::new(ip, port)), protocol))
}

fn rule_key(attrs: &[RuleAttribute]) -> Option<(String, u64)> {
    let chain = attrs.iter().find_map(|a| match a {
        RuleAttribute::Chain(c) => Some(c.clone()),
        _ => None,
    })?;
    let handle = attrs.iter().find_map(|a| match a {
        RuleAttribute::Handle(h) => Some(*h),
        _ => None,
    })?;
    Some((chain, handle))
}

fn set_name(attrs: &[SetAttribute]) -> Option<&str> {
    attrs.iter().find_map(|a| match a {
        SetAttribute::Name(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The table a message concerns.
pub fn table_of(msg: &NfTablesMessage) -> Option<&str> {
    match msg {
        NfTablesMessage::NewTable(t)
        | NfTablesMessage::GetTable(t)
        | NfTablesMessage::DeleteTable(t) => t.attributes.iter().find_map(|a| match a {
            TableAttribute::Name(n) => Some(n.as_str()),
            _ => None,
        }),
        NfTablesMessage::NewChain(c)
        | NfTablesMessage::GetChain(c)
        | NfTablesMessage::DeleteChain(c) => c.attributes.iter().find_map(|a| match a {
            ChainAttribute::Table(n) => Some(n.as_str()),
            _ => None,
        }),
        NfTablesMessage::NewRule(r)
        | NfTablesMessage::GetRule(r)
        | NfTablesMessage::DeleteRule(r) => r.attributes.iter().find_map(|a| match a {
            RuleAttribute::Table(n) => Some(n.as_str()),
            _ => None,
        }),
        NfTablesMessage::NewSet(s) | NfTablesMessage::GetSet(s) | NfTablesMessage::DeleteSet(s) => {
            s.attributes.iter().find_map(|a| match a {
                SetAttribute::Table(n) => Some(n.as_str()),
                _ => None,
            })
        }
        NfTablesMessage::NewSetElement(m)
        | NfTablesMessage::GetSetElement(m)
        | NfTablesMessage::DeleteSetElement(m) => m.attributes.iter().find_map(|a| match a {
            SetElementList::Table(n) => Some(n.as_str()),
            _ => None,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        dataplane::nf_monitor::{Batcher, Notice, scan},
        testbed::{kube_proxy::ServicePort, kube_proxy_nl},
    };

    fn web() -> ServicePort {
        ServicePort {
            name: "default/web".into(),
            cluster_ip: "10.96.114.246".parse().unwrap(),
            port: 80,
        }
    }

    /// Feeds kernel-framed notifications through the monitor's decoder into a mirror.
    fn feed(mirror: &mut TableMirror, changes: &[NfTablesMessage]) {
        let mut batcher = Batcher::default();
        for n in scan(&kube_proxy_nl::datagram(changes, 1)) {
            if let Some(c) = batcher.push(n, jiff::Timestamp::now()) {
                for (family, m) in &c.changes {
                    mirror.apply(*family, m);
                }
            }
        }
    }

    #[test]
    fn a_v1_36_rollout_step_seen_as_notifications_replaces_the_pods() {
        let mut m = TableMirror::new(2, "kube-proxy");
        let old = [
            "10.244.0.36:8080".parse().unwrap(),
            "10.244.0.37:8080".parse().unwrap(),
        ];
        feed(
            &mut m,
            &kube_proxy_nl::add_service(&web(), 56, "__map0", &old),
        );
        assert_eq!(
            m.routes().describe(),
            [
                "10.96.114.246:80 tcp -> 10.244.0.36:8080 (default/web)",
                "10.96.114.246:80 tcp -> 10.244.0.37:8080 (default/web)",
            ]
        );
        assert!(m.is_kube_proxy());
        let new = [
            "10.244.0.37:8080".parse().unwrap(),
            "10.244.0.38:8080".parse().unwrap(),
        ];
        feed(
            &mut m,
            &kube_proxy_nl::resync_service(&web(), (56, "__map0"), (61, "__map1"), &new),
        );
        assert_eq!(
            m.routes().describe(),
            [
                "10.96.114.246:80 tcp -> 10.244.0.37:8080 (default/web)",
                "10.96.114.246:80 tcp -> 10.244.0.38:8080 (default/web)",
            ]
        );
    }

    #[test]
    fn an_incremental_update_reports_only_the_changed_service_and_agrees_with_a_full_read() {
        let mut m = TableMirror::new(2, "kube-proxy");
        let other = ServicePort {
            name: "default/other".into(),
            cluster_ip: "10.96.0.7".parse().unwrap(),
            port: 443,
        };
        let old = [
            "10.244.0.36:8080".parse().unwrap(),
            "10.244.0.37:8080".parse().unwrap(),
        ];
        feed(
            &mut m,
            &kube_proxy_nl::add_service(&web(), 56, "__map0", &old),
        );
        feed(
            &mut m,
            &kube_proxy_nl::add_service(
                &other,
                58,
                "__map1",
                &["10.244.1.9:8443".parse().unwrap()],
            ),
        );
        let mut routes = Backends::new();
        assert_eq!(m.update(&mut routes).added.len(), 3);
        let new = [
            "10.244.0.37:8080".parse().unwrap(),
            "10.244.0.38:8080".parse().unwrap(),
        ];
        feed(
            &mut m,
            &kube_proxy_nl::resync_service(&web(), (56, "__map0"), (61, "__map2"), &new),
        );
        let change = m.update(&mut routes);
        let show = |v: &[RouteChange]| -> Vec<String> {
            v.iter().map(|c| c.route.backend.to_string()).collect()
        };
        assert_eq!(show(&change.removed), ["10.244.0.36:8080"]);
        assert_eq!(show(&change.added), ["10.244.0.38:8080"]);
        assert_eq!(routes, m.routes());
        // Nothing changed since: nothing to report.
        assert!(m.update(&mut routes).is_empty());
    }

    #[test]
    fn another_tables_notifications_change_nothing() {
        let mut m = TableMirror::new(2, "nat");
        let eps = ["10.244.0.36:8080".parse().unwrap()];
        feed(
            &mut m,
            &kube_proxy_nl::add_service(&web(), 56, "__map0", &eps),
        );
        assert!(m.routes().is_empty());
        assert!(!m.is_kube_proxy());
    }

    #[test]
    fn notices_other_than_nf_tables_are_skipped() {
        assert!(matches!(scan(&[]).as_slice(), []));
        let mut b = Batcher::default();
        assert_eq!(b.push(Notice::Other, jiff::Timestamp::now()), None);
    }
}
