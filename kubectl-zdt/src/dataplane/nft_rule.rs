//! What one nf_tables rule (as netlink carries it) does toward Service backends.
//!
//! Both kube-proxy modes that live in nf_tables are read from the kernel's own representation,
//! the expressions of each rule, as `nft --debug=netlink` prints them:
//! - iptables-nft (table `nat`), KUBE-SERVICES:
//!   `meta load l4proto => reg 1; cmp eq reg 1 6; payload load 4b @ network header + 16 => reg 1;
//!   cmp eq reg 1 <ClusterIP>; match comment; payload load 2b @ transport header + 2 => reg 1;
//!   cmp eq reg 1 <port>; immediate reg 0 jump -> KUBE-SVC-…`; KUBE-SEP: `target DNAT rev 2`
//!   (struct nf_nat_range2 in the target's info);
//! - nftables mode (table `kube-proxy`): `numgen reg 1 = random mod N; lookup reg 1 set __map0
//!   dreg 1; nat dnat ip addr_min reg 1 proto_min reg 9` (v1.36), or
//!   `lookup reg 1 set __map1 dreg 0` into a verdict map of endpoint chains whose rules are
//!   `immediate reg 1 <ip>; immediate reg 2 <port>; nat dnat ip addr_min reg 1 proto_min reg 2`.
//!
//! Registers are tracked as 32-bit words (NFT_REG_1..4 are 16 bytes = words 0..15 in fours,
//! NFT_REG32_00..15 are words 0..15), which is how the kernel aliases them.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use netlink_packet_core::{DefaultNla, Nla as _};
use netlink_packet_netfilter::nftables::{
    Cmp, DataAttribute, ExpressionAttribute, Expressions, Immediate, ListAttribute, Lookup, Meta,
    MetaKey, Operator, Payload, Register, VerdictAttribute,
};

/// NFPROTO_IPV6.
const NFPROTO_IPV6: u8 = 10;
/// NFT_PAYLOAD_NETWORK_HEADER / NFT_PAYLOAD_TRANSPORT_HEADER.
const NETWORK_HEADER: u32 = 1;
const TRANSPORT_HEADER: u32 = 2;
/// nat expression attributes (NFTA_NAT_*) and NFT_NAT_DNAT.
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFT_NAT_DNAT: u32 = 1;
/// xt compat expressions (NFTA_TARGET_* / NFTA_MATCH_* share the numbering).
const NFTA_XT_NAME: u16 = 1;
const NFTA_XT_REV: u16 = 2;
const NFTA_XT_INFO: u16 = 3;

/// Where a DNAT sends the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dnat {
    /// A fixed address (iptables-nft's DNAT target, an endpoint chain's `dnat to`).
    Addr(SocketAddr),
    /// One address per element of a map: the element data holds the address at word
    /// `addr_word` and the port at word `port_word` (`dnat ip to numgen … map { … }`).
    Map {
        set: String,
        addr_word: usize,
        port_word: Option<usize>,
        v6: bool,
    },
}

/// The facts of one rule that routing depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleFacts {
    /// Chains this rule jumps or goes to.
    pub jumps: Vec<String>,
    /// Verdict maps this rule dispatches through (`vmap`): every chain in them is reachable.
    pub vmaps: Vec<String>,
    pub dnat: Vec<Dnat>,
    /// `ip daddr == X` (only equality: a negated match is not a frontend).
    pub daddr: Option<IpAddr>,
    /// `th dport == X`.
    pub dport: Option<u16>,
    /// `meta l4proto == X`.
    pub l4proto: Option<u8>,
    /// The `-m comment --comment` of iptables-nft rules.
    pub comment: Option<String>,
}

/// What a register word holds.
#[derive(Clone, Debug)]
enum Word {
    Bytes([u8; 4]),
    /// Word `index` of the data of whichever element of `set` matched.
    MapData {
        set: String,
        index: usize,
    },
    /// A header field or meta key, until compared.
    Load(Load),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    Daddr,
    Dport,
    L4proto,
}

fn word_of(reg: u32) -> Option<usize> {
    match reg {
        1..=4 => Some((reg as usize - 1) * 4),
        8..=23 => Some(reg as usize - 8),
        _ => None,
    }
}

fn reg_word(reg: &Register) -> Option<usize> {
    word_of(u32::from(*reg))
}

/// Decodes the expressions of one rule of a table of `family` (NFPROTO_*).
pub fn decode(exprs: &[ListAttribute<ExpressionAttribute>], family: u8) -> RuleFacts {
    let mut facts = RuleFacts::default();
    let mut words: HashMap<usize, Word> = HashMap::new();
    for item in exprs {
        let ListAttribute::Element(attrs) = item else {
            continue;
        };
        for attr in attrs {
            let ExpressionAttribute::Data(expr) = attr else {
                continue;
            };
            match expr {
                Expressions::Payload(p) => payload(p, family, &mut words),
                Expressions::Meta(m) => meta(m, &mut words),
                Expressions::Cmp(c) => cmp(c, &words, &mut facts),
                Expressions::Immediate(i) => immediate(i, &mut words, &mut facts),
                Expressions::Lookup(l) => lookup(l, &mut words, &mut facts),
                Expressions::Other {
                    expression_type,
                    attributes,
                } => other(expression_type, attributes, family, &words, &mut facts),
                _ => {}
            }
        }
    }
    facts
}

fn payload(p: &[Payload], family: u8, words: &mut HashMap<usize, Word>) {
    let (mut base, mut offset, mut len, mut dreg) = (None, None, None, None);
    for a in p {
        match a {
            Payload::Base(b) => base = Some(*b),
            Payload::Offset(o) => offset = Some(*o),
            Payload::Len(l) => len = Some(*l),
            Payload::DestinationRegister(r) => dreg = reg_word(r),
            _ => {}
        }
    }
    let daddr = if family == NFPROTO_IPV6 {
        (24, 16)
    } else {
        (16, 4)
    };
    let load = match (base, offset, len) {
        (Some(NETWORK_HEADER), Some(o), Some(l)) if (o, l) == daddr => Load::Daddr,
        (Some(TRANSPORT_HEADER), Some(2), Some(2)) => Load::Dport,
        _ => {
            if let Some(w) = dreg {
                words.remove(&w);
            }
            return;
        }
    };
    if let Some(w) = dreg {
        words.insert(w, Word::Load(load));
    }
}

fn meta(m: &[Meta], words: &mut HashMap<usize, Word>) {
    let mut key = None;
    let mut dreg = None;
    for a in m {
        match a {
            Meta::Key(k) => key = Some(*k),
            Meta::DestinationRegister(r) => dreg = reg_word(r),
            _ => {}
        }
    }
    if let Some(w) = dreg {
        if key == Some(MetaKey::L4Proto) {
            words.insert(w, Word::Load(Load::L4proto));
        } else {
            words.remove(&w);
        }
    }
}

fn cmp(c: &[Cmp], words: &HashMap<usize, Word>, facts: &mut RuleFacts) {
    let (mut sreg, mut eq, mut data) = (None, false, None);
    for a in c {
        match a {
            Cmp::SourceRegister(r) => sreg = reg_word(r),
            Cmp::Op(op) => eq = *op == Operator::Equal,
            Cmp::Data(DataAttribute::Value(v)) => data = Some(v.as_slice()),
            _ => {}
        }
    }
    let (Some(w), true, Some(data)) = (sreg, eq, data) else {
        return;
    };
    match words.get(&w) {
        Some(Word::Load(Load::Daddr)) => facts.daddr = ip_of(data),
        Some(Word::Load(Load::Dport)) => {
            facts.dport = data.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        }
        Some(Word::Load(Load::L4proto)) => facts.l4proto = data.first().copied(),
        _ => {}
    }
}

fn ip_of(data: &[u8]) -> Option<IpAddr> {
    match data.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            data[0], data[1], data[2], data[3],
        ))),
        16 => <[u8; 16]>::try_from(data)
            .ok()
            .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    }
}

fn immediate(i: &[Immediate], words: &mut HashMap<usize, Word>, facts: &mut RuleFacts) {
    let mut dreg = None;
    let mut data = None;
    for a in i {
        match a {
            Immediate::DestinationRegister(r) => dreg = Some(u32::from(*r)),
            Immediate::Data(d) => data = Some(d),
            _ => {}
        }
    }
    match (dreg, data) {
        (Some(0), Some(DataAttribute::Verdict(v))) => facts.jumps.extend(verdict_chain(v)),
        (Some(r), Some(DataAttribute::Value(bytes))) => {
            if let Some(w) = word_of(r) {
                for (k, chunk) in bytes.chunks(4).enumerate() {
                    let mut b = [0u8; 4];
                    b[..chunk.len()].copy_from_slice(chunk);
                    words.insert(w + k, Word::Bytes(b));
                }
            }
        }
        _ => {}
    }
}

/// The chain a jump/goto verdict names.
pub fn verdict_chain(v: &[VerdictAttribute]) -> Option<String> {
    v.iter().find_map(|a| match a {
        VerdictAttribute::Chain(c) => Some(c.clone()),
        _ => None,
    })
}

fn lookup(l: &[Lookup], words: &mut HashMap<usize, Word>, facts: &mut RuleFacts) {
    let (mut set, mut dreg) = (None, None);
    for a in l {
        match a {
            Lookup::Set(s) => set = Some(s.clone()),
            Lookup::DestinationRegister(r) => dreg = Some(u32::from(*r)),
            _ => {}
        }
    }
    let Some(set) = set else { return };
    match dreg {
        Some(0) => facts.vmaps.push(set),
        Some(r) => {
            if let Some(w) = word_of(r) {
                // A map's data is at most 16 bytes for the address and a port word after it.
                for k in 0..5 {
                    words.insert(
                        w + k,
                        Word::MapData {
                            set: set.clone(),
                            index: k,
                        },
                    );
                }
            }
        }
        None => {}
    }
}

fn other(
    name: &str,
    attrs: &[DefaultNla],
    family: u8,
    words: &HashMap<usize, Word>,
    facts: &mut RuleFacts,
) {
    let get = |kind: u16| -> Option<Vec<u8>> {
        attrs.iter().find(|a| a.kind() == kind).map(|a| {
            let mut v = vec![0; a.value_len()];
            a.emit_value(&mut v);
            v
        })
    };
    let be32 =
        |kind: u16| get(kind).and_then(|v| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?)));
    match name {
        "nat" if be32(NFTA_NAT_TYPE) == Some(NFT_NAT_DNAT) => {
            let v6 = family == NFPROTO_IPV6;
            let addr = be32(NFTA_NAT_REG_ADDR_MIN).and_then(word_of);
            let port = be32(NFTA_NAT_REG_PROTO_MIN).and_then(word_of);
            facts.dnat.extend(nat_target(addr, port, v6, words));
        }
        "target" => {
            let target = get(NFTA_XT_NAME).map(|n| cstr(&n));
            if target.as_deref() == Some("DNAT") {
                let rev = be32(NFTA_XT_REV).unwrap_or(0);
                let info = get(NFTA_XT_INFO).unwrap_or_default();
                facts
                    .dnat
                    .extend(xt_dnat(&info, rev, family).map(Dnat::Addr));
            }
        }
        "match" if get(NFTA_XT_NAME).map(|n| cstr(&n)).as_deref() == Some("comment") => {
            facts.comment = get(NFTA_XT_INFO).map(|i| cstr(&i));
        }
        _ => {}
    }
}

fn nat_target(
    addr: Option<usize>,
    port: Option<usize>,
    v6: bool,
    words: &HashMap<usize, Word>,
) -> Option<Dnat> {
    let addr = addr?;
    let addr_words = if v6 { 4 } else { 1 };
    match words.get(&addr)? {
        Word::MapData { set, index } => {
            let port_word = match port.and_then(|p| words.get(&p)) {
                Some(Word::MapData { set: s, index: i }) if s == set => Some(*i),
                _ => None,
            };
            Some(Dnat::Map {
                set: set.clone(),
                addr_word: *index,
                port_word,
                v6,
            })
        }
        Word::Bytes(_) => {
            let mut ip = Vec::new();
            for k in 0..addr_words {
                match words.get(&(addr + k))? {
                    Word::Bytes(b) => ip.extend_from_slice(b),
                    _ => return None,
                }
            }
            let port = match port.and_then(|p| words.get(&p)) {
                Some(Word::Bytes(b)) => u16::from_be_bytes([b[0], b[1]]),
                _ => 0,
            };
            Some(Dnat::Addr(SocketAddr::new(ip_of(&ip)?, port)))
        }
        Word::Load(_) => None,
    }
}

/// The address of an xt DNAT target's info: `struct nf_nat_range2` (rev 2) / `nf_nat_range`
/// (rev 1): flags u32, min_addr 16 bytes, max_addr 16 bytes, min_proto be16 at 36; rev 0,
/// `nf_nat_ipv4_multi_range_compat`: rangesize u32, flags u32, min_ip at 8, max_ip, min port
/// be16 at 16.
pub(crate) fn xt_dnat(info: &[u8], rev: u32, family: u8) -> Option<SocketAddr> {
    let (ip, port) = if rev == 0 {
        (ip_of(info.get(8..12)?)?, info.get(16..18)?)
    } else if family == NFPROTO_IPV6 {
        (ip_of(info.get(4..20)?)?, info.get(36..38)?)
    } else {
        (ip_of(info.get(4..8)?)?, info.get(36..38)?)
    };
    Some(SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]])))
}

/// A NUL-terminated (or NUL-padded) string.
fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The address and port an element's data holds for a `Dnat::Map`.
pub fn map_element_target(
    data: &[u8],
    addr_word: usize,
    port_word: Option<usize>,
    v6: bool,
) -> Option<SocketAddr> {
    let len = if v6 { 16 } else { 4 };
    let ip = ip_of(data.get(addr_word * 4..addr_word * 4 + len)?)?;
    let port = match port_word {
        Some(p) => {
            let b = data.get(p * 4..p * 4 + 2)?;
            u16::from_be_bytes([b[0], b[1]])
        }
        None => 0,
    };
    Some(SocketAddr::new(ip, port))
}
