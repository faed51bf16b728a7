//! kube-proxy's iptables mode on the legacy x_tables backend (`iptables-legacy`), read from the
//! kernel's own table blob: what `getsockopt(IPT_SO_GET_INFO)` and `IPT_SO_GET_ENTRIES` (and the
//! `IP6T_` twins) return, the same bytes `iptables-legacy-save` decodes. Pure: the bytes are
//! passed in (`legacy` reads them).
//!
//! The blob (include/uapi/linux/netfilter_ipv4/ip_tables.h) is a sequence of entries, each a
//! fixed header (`struct ipt_entry`, 112 bytes; `ip6t_entry`, 168), its matches
//! (`struct xt_entry_match`: size, name, revision, data) and one target at `target_offset`,
//! the next entry at `next_offset`. Chains are not objects: a built-in chain starts at its hook's
//! offset (`hook_entry`), a user chain starts after an `ERROR` target whose data is the chain's
//! name, and the table ends with an `ERROR` target named `ERROR`. A jump is the standard target
//! (empty name) with a verdict ≥ 0: the byte offset of the first entry of the target chain
//! (libiptc writes the chain head's offset plus the head's size); negative verdicts are
//! ACCEPT/DROP/RETURN. `-g` (goto) is the same verdict with a flag in the entry's IP part; for
//! reachability a goto is a jump.
//!
//! What routing depends on is then read as for the other iptables readers (`iptables`,
//! `mirror`): frontends in KUBE-SERVICES and KUBE-NODEPORTS, jumps, DNAT targets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use super::{
    chains::{DispatchRule, KUBE_NODEPORTS, KUBE_SERVICES},
    model::{Backend, Backends, Protocol, Route},
    nft_rule::xt_dnat,
    source::Family,
};

/// `struct ipt_getinfo` / `ip6t_getinfo`: name[32], valid_hooks, hook_entry[5], underflow[5],
/// num_entries, size.
pub const GET_INFO_LEN: usize = 84;
/// `struct ipt_get_entries` / `ip6t_get_entries` before the entries: name[32], size, padding.
pub const GET_ENTRIES_HEADER: usize = 40;
/// NF_INET_NUMHOOKS.
const HOOKS: usize = 5;
/// `struct xt_entry_match` / `xt_entry_target` headers: size u16, name[29], revision u8.
const XT_HEADER: usize = 32;
const XT_NAME: std::ops::Range<usize> = 2..31;
const XT_REVISION: usize = 31;
/// XT_TCP_INV_DSTPT / XT_UDP_INV_DSTPT.
const INV_DPORT: u8 = 0x02;
/// `struct xt_sctp_info`: dpts at 0, flags at 284, invflags at 288; XT_SCTP_DEST_PORTS.
const SCTP_FLAGS: usize = 284;
const SCTP_INVFLAGS: usize = 288;
const SCTP_DEST_PORTS: u32 = 0x02;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("x_tables GET_INFO reply of {0} bytes (expected {GET_INFO_LEN})")]
    Info(usize),
    #[error(
        "x_tables entry at offset {offset} is malformed ({what}); the table blob is not what this kernel's ip_tables.h describes"
    )]
    Entry { offset: usize, what: &'static str },
}

/// What `IPT_SO_GET_INFO` says about a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    pub valid_hooks: u32,
    pub hook_entry: [u32; HOOKS],
    pub num_entries: u32,
    pub size: u32,
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Parses a GET_INFO reply.
pub fn parse_info(reply: &[u8]) -> Result<Info, ParseError> {
    if reply.len() < GET_INFO_LEN {
        return Err(ParseError::Info(reply.len()));
    }
    let mut hook_entry = [0u32; HOOKS];
    for (i, h) in hook_entry.iter_mut().enumerate() {
        *h = ne_u32(reply, 36 + 4 * i).ok_or(ParseError::Info(reply.len()))?;
    }
    Ok(Info {
        valid_hooks: ne_u32(reply, 32).ok_or(ParseError::Info(reply.len()))?,
        hook_entry,
        num_entries: ne_u32(reply, 76).ok_or(ParseError::Info(reply.len()))?,
        size: ne_u32(reply, 80).ok_or(ParseError::Info(reply.len()))?,
    })
}

/// Where the fields of `struct ipt_entry` / `ip6t_entry` are.
struct Layout {
    /// sizeof the entry header = offset of the first match.
    header: usize,
    dst: usize,
    dmsk: usize,
    addr_len: usize,
    proto: usize,
    flags: usize,
    invflags: usize,
    target_offset: usize,
    next_offset: usize,
    /// IP6T_F_PROTO: an IPv6 entry matches its protocol only with this flag.
    proto_flag: u8,
    /// IPT_INV_DSTIP / IP6T_INV_DSTIP.
    inv_dst: u8,
    /// XT_INV_PROTO.
    inv_proto: u8,
}

const V4: Layout = Layout {
    header: 112,
    dst: 4,
    dmsk: 12,
    addr_len: 4,
    proto: 80,
    flags: 82,
    invflags: 83,
    target_offset: 88,
    next_offset: 90,
    proto_flag: 0,
    inv_dst: 0x10,
    inv_proto: 0x40,
};

const V6: Layout = Layout {
    header: 168,
    dst: 16,
    dmsk: 48,
    addr_len: 16,
    proto: 128,
    flags: 131,
    invflags: 132,
    target_offset: 140,
    next_offset: 142,
    proto_flag: 0x01,
    inv_dst: 0x10,
    inv_proto: 0x40,
};

/// One entry, reduced to what routing depends on.
#[derive(Debug, Default)]
struct Entry<'a> {
    daddr: Option<IpAddr>,
    protocol: Option<Protocol>,
    dport: Option<u16>,
    comment: Option<&'a str>,
    target: Target<'a>,
}

#[derive(Debug, Default)]
enum Target<'a> {
    /// A jump or goto to the entry at this offset.
    Jump(usize),
    Dnat(std::net::SocketAddr),
    /// A user chain's head: the chain's name.
    ChainHead(&'a str),
    /// The table's last entry.
    End,
    #[default]
    Other,
}

/// NUL-terminated string of at most `bytes.len()` bytes; `None` if not UTF-8.
fn cstr(bytes: &[u8]) -> Option<&str> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    std::str::from_utf8(&bytes[..end]).ok()
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).ok()?,
        ))),
        _ => None,
    }
}

/// The IP part and matches of a dispatch entry: destination, protocol, port, comment.
fn dispatch_facts<'a>(
    e: &'a [u8],
    l: &Layout,
    target_offset: usize,
    out: &mut Entry<'a>,
) -> Result<(), &'static str> {
    let flags = e[l.flags];
    let invflags = e[l.invflags];
    let dst = &e[l.dst..l.dst + l.addr_len];
    let full_mask = e[l.dmsk..l.dmsk + l.addr_len].iter().all(|&b| b == 0xff);
    if full_mask && invflags & l.inv_dst == 0 {
        out.daddr = ip_of(dst);
    }
    let proto = ne_u16(e, l.proto).ok_or("truncated header")?;
    let proto_on = l.proto_flag == 0 || flags & l.proto_flag != 0;
    if proto_on && invflags & l.inv_proto == 0 {
        out.protocol = Protocol::from_number(proto);
    }
    // Matches, between the header and the target.
    let mut at = l.header;
    while at < target_offset {
        let size = usize::from(ne_u16(e, at).ok_or("truncated match")?);
        if size < XT_HEADER || at + size > target_offset {
            return Err("match size");
        }
        let name = cstr(&e[at + XT_NAME.start..at + XT_NAME.end]).unwrap_or("");
        let data = &e[at + XT_HEADER..at + size];
        match name {
            "comment" => out.comment = cstr(data),
            // struct xt_tcp / xt_udp: spts[2], dpts[2] (host order), …, invflags last.
            "tcp" | "udp" => {
                let inv = if name == "tcp" {
                    data.get(11)
                } else {
                    data.get(8)
                };
                if let (Some(lo), Some(hi), Some(&inv)) = (ne_u16(data, 4), ne_u16(data, 6), inv)
                    && lo == hi
                    && inv & INV_DPORT == 0
                {
                    out.dport = Some(lo);
                }
            }
            "sctp" => {
                if let (Some(lo), Some(hi), Some(f), Some(inv)) = (
                    ne_u16(data, 0),
                    ne_u16(data, 2),
                    ne_u32(data, SCTP_FLAGS),
                    ne_u32(data, SCTP_INVFLAGS),
                ) && lo == hi
                    && f & SCTP_DEST_PORTS != 0
                    && inv & SCTP_DEST_PORTS == 0
                {
                    out.dport = Some(lo);
                }
            }
            _ => {}
        }
        at += size;
    }
    Ok(())
}

/// Decodes the entry at the start of `e` (blob offset `offset`, for errors); its IP part and
/// matches only when `dispatch` (an entry of KUBE-SERVICES or KUBE-NODEPORTS, the only chains
/// whose matches make frontends): most of a large table is endpoint chains, whose targets alone
/// matter.
fn entry<'a>(
    e: &'a [u8],
    offset: usize,
    l: &Layout,
    family: Family,
    dispatch: bool,
) -> Result<(Entry<'a>, usize), ParseError> {
    let bad = |what| ParseError::Entry { offset, what };
    let target_offset = usize::from(ne_u16(e, l.target_offset).ok_or(bad("truncated header"))?);
    let next_offset = usize::from(ne_u16(e, l.next_offset).ok_or(bad("truncated header"))?);
    if target_offset < l.header || target_offset + XT_HEADER > next_offset {
        return Err(bad("target outside the entry"));
    }
    if next_offset > e.len() {
        return Err(bad("entry runs past the end of the table"));
    }
    let e = &e[..next_offset];
    let mut out = Entry::default();
    if dispatch {
        dispatch_facts(e, l, target_offset, &mut out).map_err(bad)?;
    }
    let t = &e[target_offset..];
    let tsize = usize::from(ne_u16(t, 0).ok_or(bad("truncated target"))?);
    if tsize < XT_HEADER || tsize > t.len() {
        return Err(bad("target size"));
    }
    let tname = cstr(&t[XT_NAME]).unwrap_or("");
    let tdata = &t[XT_HEADER..tsize];
    out.target = match tname {
        // XT_STANDARD_TARGET: an int verdict.
        "" => match tdata
            .get(..4)
            .map(|v| i32::from_ne_bytes([v[0], v[1], v[2], v[3]]))
        {
            Some(v) if v >= 0 => Target::Jump(usize::try_from(v).unwrap_or(usize::MAX)),
            Some(_) => Target::Other,
            None => return Err(bad("standard target without a verdict")),
        },
        "ERROR" => match cstr(tdata) {
            Some("ERROR") => Target::End,
            Some(name) if !name.is_empty() => Target::ChainHead(name),
            _ => return Err(bad("chain head without a name")),
        },
        "DNAT" => {
            let rev = u32::from(t[XT_REVISION]);
            xt_dnat(tdata, rev, family.nfproto()).map_or(Target::Other, Target::Dnat)
        }
        _ => Target::Other,
    };
    Ok((out, next_offset))
}

/// What a legacy nat table holds for kube-proxy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Nat {
    pub routes: Backends,
    /// Whether it has kube-proxy's dispatch chain (KUBE-SERVICES): the mode is in use.
    pub kube_services: bool,
}

/// A dispatch rule's facts, owned (the bytes they came from may be gone by the end).
struct Facts {
    daddr: Option<IpAddr>,
    protocol: Option<Protocol>,
    dport: Option<u16>,
    /// Range of the comment in `Parser::text`.
    comment: Option<(u32, u32)>,
}

/// Parses the entries of a table blob fed in order, in pieces of any size: the whole
/// GET_ENTRIES reply at once, or a writer's `IPT_SO_SET_REPLACE` buffer as it is copied out of
/// the writer chunk by chunk (`legacy::read_writer`), which the same entry format describes.
///
/// One pass over the entries: a large table (10 000 Services: ~290 000 entries, ~100 MB) is
/// mostly endpoint chains, so chains are numbered as they come (a user chain is a contiguous run
/// of entries) and only jumps, DNAT targets and the dispatch chains' matches are kept; jump
/// offsets are resolved to chains at the end by binary search over where chains start.
pub struct Parser {
    family: Family,
    l: &'static Layout,
    hooks: Vec<usize>,
    /// Blob offset of the next byte to be fed.
    offset: usize,
    /// Where each run of entries starts and the user chain it belongs to (None: a built-in
    /// chain or past the end); in offset order.
    regions: Vec<(usize, Option<u32>)>,
    /// Chain names and comments, one string; `chains` are ranges in it.
    text: String,
    chains: Vec<(u32, u32)>,
    current: Option<u32>,
    /// Whether `current` is KUBE-SERVICES or KUBE-NODEPORTS.
    in_dispatch: bool,
    kube_services: bool,
    jumps: Vec<(u32, usize)>,
    dispatch_jumps: Vec<(u32, usize, Facts)>,
    dnats: Vec<(u32, std::net::SocketAddr)>,
}

impl Parser {
    pub fn new(family: Family, info: &Info) -> Self {
        Self {
            family,
            l: match family {
                Family::V4 => &V4,
                Family::V6 => &V6,
            },
            hooks: (0..HOOKS)
                .filter(|h| info.valid_hooks & (1 << h) != 0)
                .map(|h| info.hook_entry[h] as usize)
                .collect(),
            offset: 0,
            regions: Vec::new(),
            text: String::new(),
            chains: Vec::new(),
            current: None,
            in_dispatch: false,
            kube_services: false,
            jumps: Vec::new(),
            dispatch_jumps: Vec::new(),
            dnats: Vec::new(),
        }
    }

    fn keep(&mut self, s: &str) -> (u32, u32) {
        let start = u32::try_from(self.text.len()).unwrap_or(u32::MAX);
        self.text.push_str(s);
        (start, u32::try_from(self.text.len()).unwrap_or(u32::MAX))
    }

    fn text(&self, (a, b): (u32, u32)) -> &str {
        self.text.get(a as usize..b as usize).unwrap_or("")
    }

    fn chain_name(&self, id: u32) -> &str {
        self.text(self.chains[id as usize])
    }

    /// Parses the whole entries of `bytes`, the continuation of what was fed before, and returns
    /// how many bytes they took; the rest (the start of an entry) is to be fed again with what
    /// follows it. `last`: `bytes` ends the blob, so an entry cut short is an error.
    pub fn feed(&mut self, bytes: &[u8], last: bool) -> Result<usize, ParseError> {
        let l = self.l;
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            if !last
                && ne_u16(rest, l.next_offset).is_none_or(|next| usize::from(next) > rest.len())
            {
                break;
            }
            let offset = self.offset + at;
            if self.hooks.contains(&offset) {
                self.current = None;
                self.in_dispatch = false;
                self.regions.push((offset, None));
            }
            let (e, next) = entry(rest, offset, l, self.family, self.in_dispatch)?;
            match e.target {
                Target::ChainHead(name) => {
                    let id = u32::try_from(self.chains.len()).unwrap_or(u32::MAX);
                    let range = self.keep(name);
                    self.chains.push(range);
                    self.current = Some(id);
                    self.in_dispatch = name == KUBE_SERVICES || name == KUBE_NODEPORTS;
                    self.kube_services |= name == KUBE_SERVICES;
                    // From the head on: a jump names the chain's first rule (libiptc) or its head.
                    self.regions.push((offset, Some(id)));
                }
                Target::End => {
                    self.current = None;
                    self.in_dispatch = false;
                    self.regions.push((offset, None));
                }
                Target::Jump(to) => {
                    if let Some(c) = self.current {
                        if self.in_dispatch {
                            let comment = e.comment.map(|s| self.keep(s));
                            self.dispatch_jumps.push((
                                c,
                                to,
                                Facts {
                                    daddr: e.daddr,
                                    protocol: e.protocol,
                                    dport: e.dport,
                                    comment,
                                },
                            ));
                        } else {
                            self.jumps.push((c, to));
                        }
                    }
                }
                Target::Dnat(addr) => {
                    if let Some(c) = self.current {
                        self.dnats.push((c, addr));
                    }
                }
                Target::Other => {}
            }
            at += next;
        }
        self.offset += at;
        Ok(at)
    }

    /// The routes kube-proxy's chains in what was fed program.
    pub fn finish(self) -> Nat {
        let chain_at = |to: usize| -> Option<u32> {
            let i = self.regions.partition_point(|(start, _)| *start <= to);
            self.regions.get(i.checked_sub(1)?)?.1
        };
        let n = self.chains.len();
        let mut next_chains: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut dnat_of: Vec<Vec<std::net::SocketAddr>> = vec![Vec::new(); n];
        for &(c, addr) in &self.dnats {
            dnat_of[c as usize].push(addr);
        }
        for &(from, to) in &self.jumps {
            if let Some(target) = chain_at(to).filter(|t| *t != from) {
                next_chains[from as usize].push(target);
            }
        }
        let mut dispatch = Vec::new();
        // The dispatch rules' targets by name (frontends name their chain).
        let mut ids: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        for (from, to, facts) in &self.dispatch_jumps {
            let Some(target) = chain_at(*to).filter(|t| t != from) else {
                continue;
            };
            next_chains[*from as usize].push(target);
            ids.insert(self.chain_name(target), target);
            dispatch.push(DispatchRule {
                chain: self.chain_name(*from),
                daddr: facts.daddr,
                protocol: facts.protocol,
                dport: facts.dport,
                target: self.chain_name(target),
                comment: facts.comment.map(|r| self.text(r)),
            });
        }
        let mut routes = Backends::new();
        let mut seen: Vec<u32> = Vec::new();
        let mut stack: Vec<u32> = Vec::new();
        for f in super::chains::frontends(&dispatch, self.family) {
            let Some(&start) = ids.get(f.chain) else {
                continue;
            };
            let name = f.name();
            // A handful of chains per frontend (external → service → endpoints).
            seen.clear();
            stack.clear();
            stack.push(start);
            while let Some(c) = stack.pop() {
                if seen.contains(&c) {
                    continue;
                }
                seen.push(c);
                stack.extend(&next_chains[c as usize]);
                for addr in &dnat_of[c as usize] {
                    routes.insert(
                        Route {
                            service: f.service,
                            protocol: f.protocol,
                            backend: Backend(*addr),
                            via: f.via,
                        },
                        name.clone(),
                    );
                }
            }
        }
        Nat {
            routes,
            kube_services: self.kube_services,
        }
    }
}

/// Parses a whole GET_ENTRIES blob (the entries, without the 40-byte header) of a table of
/// `family` described by `info` into the routes kube-proxy's chains in it program.
pub fn parse(family: Family, info: &Info, blob: &[u8]) -> Result<Nat, ParseError> {
    let mut parser = Parser::new(family, info);
    parser.feed(blob, true)?;
    Ok(parser.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real v1.36 nat table (tests/fixtures/kube-proxy-v1.36/iptables-nft-nat.save)
    /// loaded with `iptables-legacy-restore` into a network namespace of this project's kernel
    /// (6.18) and read back with IPT_SO_GET_INFO / IPT_SO_GET_ENTRIES: the bytes
    /// `iptables-legacy-save` decodes (it prints the fixture unchanged).
    const INFO: &[u8] = include_bytes!("../../tests/fixtures/xtables/v1.36-nat.info");
    const ENTRIES: &[u8] = include_bytes!("../../tests/fixtures/xtables/v1.36-nat.entries");
    const TEXT: &str = include_str!("../../tests/fixtures/kube-proxy-v1.36/iptables-nft-nat.save");

    #[test]
    fn the_kernel_blob_of_the_real_table_programs_what_its_save_text_programs() {
        let info = parse_info(INFO).unwrap();
        assert_eq!(info.size as usize, ENTRIES.len());
        assert_eq!(info.num_entries, 48);
        let nat = parse(Family::V4, &info, ENTRIES).unwrap();
        assert!(nat.kube_services);
        assert_eq!(
            nat.routes.describe(),
            [
                "10.96.0.1:443 tcp -> 192.0.2.2:6443 (default/kubernetes:https)",
                "10.96.114.246:80 tcp -> 10.244.0.32:8080 (default/web)",
                "10.96.114.246:80 tcp -> 10.244.0.33:8080 (default/web)",
            ]
        );
        assert_eq!(nat.routes, crate::dataplane::iptables::parse(TEXT).unwrap());
    }

    #[test]
    fn a_table_without_kube_proxy_chains_routes_nothing() {
        // The built-in chains only: the first user chain head is where kube-proxy's start.
        let info = parse_info(INFO).unwrap();
        let nat = parse(Family::V4, &info, &ENTRIES[..info.hook_entry[4] as usize]).unwrap();
        assert!(!nat.kube_services);
        assert!(nat.routes.is_empty());
    }

    #[test]
    fn bad_input_is_one_clear_error() {
        assert_eq!(parse_info(&INFO[..80]), Err(ParseError::Info(80)));
        let info = parse_info(INFO).unwrap();
        let err = parse(Family::V4, &info, &ENTRIES[..ENTRIES.len() - 8]).unwrap_err();
        assert!(
            matches!(
                err,
                ParseError::Entry {
                    what: "entry runs past the end of the table",
                    ..
                }
            ),
            "{err}"
        );
        // A next_offset of 0 would loop forever: it is refused.
        let mut bad = ENTRIES.to_vec();
        bad[V4.next_offset..V4.next_offset + 2].copy_from_slice(&0u16.to_ne_bytes());
        assert!(parse(Family::V4, &info, &bad).is_err());
    }

    /// Feeds `blob` cut at `cuts` (sorted offsets), as `legacy::read_writer` does: each piece is
    /// what was left over plus the next bytes.
    fn parse_in_pieces(info: &Info, blob: &[u8], cuts: &[usize]) -> Result<Nat, ParseError> {
        let mut parser = Parser::new(Family::V4, info);
        let mut pending: Vec<u8> = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&blob.len())) {
            let cut = cut.clamp(from, blob.len());
            pending.extend_from_slice(&blob[from..cut]);
            from = cut;
            let used = parser.feed(&pending, cut == blob.len())?;
            pending.drain(..used);
        }
        assert!(pending.is_empty());
        Ok(parser.finish())
    }

    #[test]
    fn pieces_cut_inside_entries_and_headers_parse_as_the_whole() {
        let info = parse_info(INFO).unwrap();
        let whole = parse(Family::V4, &info, ENTRIES).unwrap();
        // Inside the first entry's header, on a boundary, one byte at a time at the end.
        let mut cuts = vec![5, 112, 200, 1000, 1001];
        cuts.extend(ENTRIES.len() - 300..ENTRIES.len());
        assert_eq!(parse_in_pieces(&info, ENTRIES, &cuts).unwrap(), whole);
        // A cut-short blob is still an error at the end, not a silent partial table.
        let err = parse_in_pieces(&info, &ENTRIES[..ENTRIES.len() - 8], &[4000]).unwrap_err();
        assert!(matches!(err, ParseError::Entry { .. }), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn any_cutting_into_pieces_parses_as_the_whole(
            mut cuts in proptest::collection::vec(0usize..13_384, 0..40),
        ) {
            cuts.sort_unstable();
            let info = parse_info(INFO).unwrap();
            proptest::prop_assert_eq!(
                parse_in_pieces(&info, ENTRIES, &cuts).unwrap(),
                parse(Family::V4, &info, ENTRIES).unwrap()
            );
        }

        #[test]
        fn a_corrupted_kernel_blob_never_panics(
            flips in proptest::collection::vec((0usize..13_384, proptest::num::u8::ANY), 1..20),
            cut in 0usize..13_384,
        ) {
            let info = parse_info(INFO).unwrap();
            let mut blob = ENTRIES.to_vec();
            for (at, byte) in flips {
                blob[at % ENTRIES.len()] = byte;
            }
            let _ = parse(Family::V4, &info, &blob);
            let _ = parse(Family::V6, &info, &blob);
            blob.truncate(cut);
            let _ = parse(Family::V4, &info, &blob);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            blob in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            hooks in proptest::collection::vec(0u32..600, 5),
        ) {
            let mut info = [0u8; GET_INFO_LEN];
            info[32..36].copy_from_slice(&0x1fu32.to_ne_bytes());
            for (i, h) in hooks.iter().enumerate() {
                info[36 + 4 * i..40 + 4 * i].copy_from_slice(&h.to_ne_bytes());
            }
            let info = parse_info(&info).unwrap();
            let _ = parse(Family::V4, &info, &blob);
            let _ = parse(Family::V6, &info, &blob);
        }
    }
}
