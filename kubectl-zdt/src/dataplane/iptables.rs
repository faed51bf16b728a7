//! kube-proxy's iptables mode, read from `iptables-save -t nat` text (the same text for the
//! iptables-nft and iptables-legacy backends).
//!
//! kube-proxy (pkg/proxy/iptables/proxier.go) writes, in the nat table:
//! - `KUBE-SERVICES`: `-d <ClusterIP>/32 -p tcp --dport <port> -j KUBE-SVC-<hash>` (or
//!   `KUBE-SVL-<hash>` with internalTrafficPolicy Local; `KUBE-EXT-<hash>` / `KUBE-FW-<hash>`
//!   for external and load-balancer IPs);
//! - `KUBE-SVC-*` / `KUBE-SVL-*`: one `-j KUBE-SEP-<hash>` per endpoint, all but the last with
//!   `-m statistic --mode random --probability 1/n`;
//! - `KUBE-EXT-*` / `KUBE-FW-*`: jumps to the service's `KUBE-SVC-*` / `KUBE-SVL-*`;
//! - `KUBE-SEP-*`: `-j DNAT --to-destination <pod IP>:<port>`.
//!
//! A route exists when a frontend rule in `KUBE-SERVICES` reaches a DNAT through these jumps.
//! Probabilities are not part of the route: a node with a rule to a backend still sends it new
//! connections, whatever the share.

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use super::{
    chains::{ChainGraph, DispatchRule, KUBE_NODEPORTS, KUBE_SERVICES, routes_toward_endpoints},
    model::{Backends, Protocol},
    source::Family,
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("line {line}: unterminated quote in {text:?}")]
    Quote { line: usize, text: String },
    #[error("line {line}: bad DNAT destination {value:?} (expected ip:port or [ipv6]:port)")]
    Destination { line: usize, value: String },
}

/// One `-A` rule: the parts kube-proxy's routing depends on.
#[derive(Debug, Default)]
struct Rule<'a> {
    dest: Option<&'a str>,
    dest_negated: bool,
    protocol: Option<&'a str>,
    dport: Option<&'a str>,
    jump: Option<&'a str>,
    to_destination: Option<&'a str>,
    comment: Option<String>,
}

/// A parsed jump whose comment is owned by the parse (the graph borrows the text).
struct Jump<'a> {
    chain: &'a str,
    rule: Rule<'a>,
    target: &'a str,
}

/// Parses the nat table of `iptables-save` (or `ip6tables-save`) output into the routes it
/// programs. Other tables in the text are ignored; so are rules that are not kube-proxy's.
pub fn parse(text: &str) -> Result<Backends, ParseError> {
    let mut in_nat = false;
    let mut graph = ChainGraph::default();
    let mut jumps = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table.trim() == "nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        let Some(rest) = line.strip_prefix("-A ") else {
            continue;
        };
        let Some((chain, args)) = rest.split_once(' ') else {
            continue;
        };
        if chain != KUBE_SERVICES && chain != KUBE_NODEPORTS && !routes_toward_endpoints(chain) {
            continue;
        }
        let rule = parse_rule(args, line_no)?;
        if let Some(to) = rule.to_destination {
            let addr = parse_destination(to).ok_or_else(|| ParseError::Destination {
                line: line_no,
                value: to.to_owned(),
            })?;
            graph.add_dnat(chain, addr);
            continue;
        }
        let Some(target) = rule
            .jump
            .filter(|t| routes_toward_endpoints(t) || *t == KUBE_NODEPORTS)
        else {
            continue;
        };
        graph.add_jump(chain, target);
        jumps.push(Jump {
            chain,
            rule,
            target,
        });
    }
    let rules: Vec<DispatchRule<'_>> = jumps
        .iter()
        .map(|j| DispatchRule {
            chain: j.chain,
            daddr: host_addr(&j.rule),
            protocol: j.rule.protocol.and_then(Protocol::parse),
            dport: j.rule.dport.and_then(|p| p.parse().ok()),
            target: j.target,
            comment: j.rule.comment.as_deref(),
        })
        .collect();
    // ip6tables-save output has IPv6 destinations; the family only matters for node ports
    // that match every local address.
    let family = if rules.iter().any(|r| r.daddr.is_some_and(|a| a.is_ipv6())) {
        Family::V6
    } else {
        Family::V4
    };
    Ok(graph.routes(super::chains::frontends(&rules, family)))
}

/// `-d 10.96.0.1/32` (or a bare address), not negated: a single destination address.
fn host_addr(rule: &Rule<'_>) -> Option<IpAddr> {
    if rule.dest_negated {
        return None;
    }
    let (ip, prefix) = match rule.dest?.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (rule.dest?, None),
    };
    let ip: IpAddr = ip.parse().ok()?;
    let full = if ip.is_ipv4() { "32" } else { "128" };
    prefix.is_none_or(|p| p == full).then_some(ip)
}

/// `10.244.0.33:8080` or `[fd00::10]:8080`. kube-proxy always writes the port.
fn parse_destination(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

fn parse_rule(args: &str, line: usize) -> Result<Rule<'_>, ParseError> {
    let tokens = tokenize(args).ok_or_else(|| ParseError::Quote {
        line,
        text: args.to_owned(),
    })?;
    let mut rule = Rule::default();
    let mut negate_next = false;
    let mut it = tokens.into_iter();
    while let Some(tok) = it.next() {
        let Token::Word(word) = tok else {
            continue;
        };
        match word {
            "!" => {
                negate_next = true;
                continue;
            }
            "-d" | "--destination" => {
                rule.dest = it.next().and_then(Token::word);
                rule.dest_negated = negate_next;
            }
            "-p" | "--protocol" => rule.protocol = it.next().and_then(Token::word),
            "--dport" | "--destination-port" => rule.dport = it.next().and_then(Token::word),
            "-j" | "--jump" | "-g" | "--goto" => rule.jump = it.next().and_then(Token::word),
            "--to-destination" => rule.to_destination = it.next().and_then(Token::word),
            "--comment" => rule.comment = it.next().map(Token::into_text),
            _ => {}
        }
        negate_next = false;
    }
    Ok(rule)
}

#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    Word(&'a str),
    /// A double-quoted argument, unescaped (`\"` → `"`, `\\` → `\`).
    Quoted(String),
}

impl<'a> Token<'a> {
    fn word(self) -> Option<&'a str> {
        match self {
            Token::Word(w) => Some(w),
            Token::Quoted(_) => None,
        }
    }

    fn into_text(self) -> String {
        match self {
            Token::Word(w) => w.to_owned(),
            Token::Quoted(q) => q,
        }
    }
}

/// Splits an iptables-save rule on spaces, honouring the double quotes iptables-save puts around
/// arguments with spaces (comments). `None` on an unterminated quote.
fn tokenize(s: &str) -> Option<Vec<Token<'_>>> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            return Some(out);
        }
        if let Some(body) = rest.strip_prefix('"') {
            let mut text = String::new();
            let mut chars = body.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => text.push(chars.next()?.1),
                    (i, '"') => break i,
                    (_, c) => text.push(c),
                }
            };
            out.push(Token::Quoted(text));
            rest = &body[end + 1..];
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            out.push(Token::Word(&rest[..end]));
            rest = &rest[end..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str =
        include_str!("../../tests/fixtures/kube-proxy-v1.36/iptables-nft-nat.save");

    #[test]
    fn the_real_kube_proxy_nat_table_has_three_routes() {
        let b = parse(FIXTURE).unwrap();
        assert_eq!(
            b.describe(),
            [
                "10.96.0.1:443 tcp -> 192.0.2.2:6443 (default/kubernetes:https)",
                "10.96.114.246:80 tcp -> 10.244.0.32:8080 (default/web)",
                "10.96.114.246:80 tcp -> 10.244.0.33:8080 (default/web)",
            ]
        );
    }

    #[test]
    fn the_filter_table_programs_no_routes() {
        let filter = include_str!("../../tests/fixtures/kube-proxy-v1.36/iptables-nft-filter.save");
        assert!(parse(filter).unwrap().is_empty());
    }

    #[test]
    fn every_50ms_sample_of_the_real_rollout_shows_the_pods_replaced_one_by_one() {
        // Samples of KUBE-SVC/KUBE-SEP only: prepend the KUBE-SERVICES frontends kube-proxy keeps.
        let samples = include_str!(
            "../../tests/fixtures/kube-proxy-v1.36/rollout-restart-iptables/iptables-nat-kube-chains-every-50ms.txt"
        );
        let frontends = "*nat\n\
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment \"default/kubernetes:https cluster IP\" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y\n\
-A KUBE-SERVICES -d 10.96.114.246/32 -p tcp -m comment --comment \"default/web cluster IP\" -m tcp --dport 80 -j KUBE-SVC-LOLE4ISW44XBNF3G\n";
        let mut previous: Option<Backends> = None;
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for sample in samples.split("=== ").filter(|s| !s.is_empty()) {
            let (_, rules) = sample.split_once('\n').unwrap();
            let state = parse(&format!("{frontends}{rules}COMMIT\n")).unwrap();
            if let Some(prev) = &previous {
                let change = prev.diff(&state);
                added.extend(change.added.iter().map(|c| c.route.backend.to_string()));
                removed.extend(change.removed.iter().map(|c| c.route.backend.to_string()));
            }
            previous = Some(state);
        }
        // Two old pods replaced by two new ones; the kubernetes Service never changed.
        assert_eq!(removed.len(), 2, "removed: {removed:?}");
        assert_eq!(added.len(), 2, "added: {added:?}");
        assert!(
            removed
                .iter()
                .all(|b| b.starts_with("10.244.0.") && b.ends_with(":8080"))
        );
        assert!(added.iter().all(|b| !removed.contains(b)));
    }

    #[test]
    fn ipv6_destinations_and_escaped_quotes_parse() {
        let text = "*nat\n\
-A KUBE-SERVICES -d fd00:10:96::1/128 -p tcp -m comment --comment \"ns/a \\\"b\\\" cluster IP\" -m tcp --dport 80 -j KUBE-SVC-X\n\
-A KUBE-SVC-X -m comment --comment \"ns/a -> [fd00::5]:8080\" -j KUBE-SEP-Y\n\
-A KUBE-SEP-Y -p tcp -m comment --comment \"ns/a\" -m tcp -j DNAT --to-destination [fd00::5]:8080\n\
COMMIT\n";
        let b = parse(text).unwrap();
        assert_eq!(
            b.describe(),
            ["[fd00:10:96::1]:80 tcp -> [fd00::5]:8080 (ns/a \"b\")"]
        );
    }

    #[test]
    fn external_traffic_chains_reach_the_same_endpoints() {
        let text = "*nat\n\
-A KUBE-SERVICES -d 192.0.2.50/32 -p tcp -m comment --comment \"ns/lb loadbalancer IP\" -m tcp --dport 80 -j KUBE-EXT-A\n\
-A KUBE-SERVICES -d 10.96.0.9/32 -p tcp -m comment --comment \"ns/lb cluster IP\" -m tcp --dport 80 -j KUBE-SVC-A\n\
-A KUBE-EXT-A -m comment --comment \"masquerade traffic for ns/lb external destinations\" -j KUBE-MARK-MASQ\n\
-A KUBE-EXT-A -j KUBE-SVC-A\n\
-A KUBE-SVC-A -j KUBE-SEP-B\n\
-A KUBE-SEP-B -p tcp -m tcp -j DNAT --to-destination 10.244.1.2:80\n\
COMMIT\n";
        let b = parse(text).unwrap();
        assert_eq!(
            b.describe(),
            [
                "10.96.0.9:80 tcp -> 10.244.1.2:80 (ns/lb)",
                "192.0.2.50:80 tcp -> 10.244.1.2:80 (ns/lb)",
            ]
        );
    }

    #[test]
    fn bad_input_is_one_clear_error() {
        let err = parse("*nat\n-A KUBE-SERVICES -m comment --comment \"open\n").unwrap_err();
        assert!(matches!(err, ParseError::Quote { line: 2, .. }), "{err}");
        let err = parse("*nat\n-A KUBE-SEP-X -j DNAT --to-destination 10.0.0.1\n").unwrap_err();
        assert!(
            matches!(err, ParseError::Destination { line: 2, .. }),
            "{err}"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "(\\*nat\n)?(-A KUBE-(SERVICES|SVC-A|SEP-B) [ -~]{0,80}\n){0,6}") {
            let _ = parse(&text);
        }

        #[test]
        fn arbitrary_bytes_never_panic(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }
    }
}
