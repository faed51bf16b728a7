//! Decoding nf_tables netlink messages into netlink-packet-netfilter's types, with two fast
//! paths: set-element messages (`NFT_MSG_{NEW,GET,DEL}SETELEM`) and rule messages
//! (`NFT_MSG_{NEW,GET,DEL}RULE`).
//!
//! netlink-packet-netfilter 0.4 parses a list attribute by formatting the whole list buffer with
//! `{:?}` into an error context for every element, even when nothing fails
//! (`VecListAttribute::parse`, `.context(format!(…, buf))`): a message of n elements costs
//! O(n²) in formatting. A dump of kube-proxy's `service-ips` map at 10 000 Services (a few
//! hundred elements per message) spent 11.4 s of a 16.4 s start there (BENCHMARKS.md). The
//! list is walked here instead, each element handed to the crate's own parser for one, into
//! the same values; whatever a fast path cannot parse goes to the crate whole, so malformed
//! input still gets the crate's error.
//!
//! Rules pay the same toll twice: the expression list is formatted once per expression, and
//! each expression's data once per attribute. iptables-nft rules are long (an xt `comment`
//! match alone carries 256 bytes): with kube-proxy rewriting a 200-Service KUBE-SERVICES chain,
//! formatting bytes with `{:?}` was ~60 % of the agent's ~61 ms of CPU per change. Rule
//! messages are walked here, each attribute handed to the crate's own parser for its kind, into
//! the same values.

use netlink_packet_core::{
    DecodeError, DefaultNla, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NlaBuffer, NlasIterator, Parseable, parse_string,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage,
    nftables::{
        Bitwise, Cmp, ExpressionAttribute, Expressions, Immediate, ListAttribute, Lookup, Meta,
        NfTablesMessage, Payload, RuleAttribute, RuleMessage, SetElementList, SetElementMessage,
    },
};

/// NFNL_SUBSYS_NFTABLES, in the high byte of the message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM, NFT_MSG_DELSETELEM.
const NEWSETELEM: u16 = 12;
const GETSETELEM: u16 = 13;
const DELSETELEM: u16 = 14;
/// NFT_MSG_NEWRULE, NFT_MSG_GETRULE, NFT_MSG_DELRULE.
const NEWRULE: u16 = 6;
const GETRULE: u16 = 7;
const DELRULE: u16 = 8;
/// NFTA_RULE_EXPRESSIONS; NFTA_EXPR_NAME / NFTA_EXPR_DATA; NFTA_LIST_UNSPEC.
const RULE_EXPRESSIONS: u16 = 4;
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
const UNSPEC: u16 = 0;
/// struct nfgenmsg: family, version, res_id.
const NFGENMSG_LEN: usize = 4;
/// NFTA_SET_ELEM_LIST_ELEMENTS; NFTA_LIST_ELEM.
const LIST_ELEMENTS: u16 = 3;
const LIST_ELEM: u16 = 1;

/// Deserializes one nf_tables netlink message (dump reply or notification). A message whose
/// damaged nested lengths make the crate panic is an error (`guarded`).
pub fn deserialize(bytes: &[u8]) -> Result<NetlinkMessage<NetfilterMessage>, DecodeError> {
    super::guarded::decode(
        || match set_elements(bytes).or_else(|ToCrate| rule(bytes)) {
            Ok(m) => Ok(m),
            Err(ToCrate) => NetlinkMessage::deserialize(bytes),
        },
    )
}

/// The fast paths give way to the crate: the message is not theirs, or a part did not parse
/// (the crate then gives its own error).
struct ToCrate;

impl<E> From<E> for ToCrate
where
    E: Into<DecodeError>,
{
    fn from(_: E) -> Self {
        ToCrate
    }
}

/// An nf_tables message of one of `types` (NEW, GET, DEL): every attribute through `other`
/// (the crate's parser for it) but the one of kind `walked`, whose value goes to `walk`; the
/// attributes then make the message of its type (`make`).
fn message<A>(
    bytes: &[u8],
    types: [u16; 3],
    walked: u16,
    walk: impl Fn(&[u8]) -> Result<A, ToCrate>,
    other: impl Fn(&NlaBuffer<&[u8]>) -> Result<A, DecodeError>,
    make: impl FnOnce(usize, Vec<A>) -> NfTablesMessage,
) -> Result<NetlinkMessage<NetfilterMessage>, ToCrate> {
    let nl = NetlinkBuffer::new_checked(bytes)?;
    let ty = nl.message_type();
    let which = types
        .iter()
        .position(|&t| ty >> 8 == NFNL_SUBSYS_NFTABLES && ty & 0xff == t)
        .ok_or(ToCrate)?;
    let payload = nl.payload();
    let gen_msg = payload.get(..NFGENMSG_LEN).ok_or(ToCrate)?;
    let mut attributes = Vec::new();
    for nla in NlasIterator::new(&payload[NFGENMSG_LEN..]) {
        let nla = nla?;
        attributes.push(if nla.kind() == walked {
            walk(nla.value())?
        } else {
            other(&nla)?
        });
    }
    Ok(message_of(&nl, gen_msg, make(which, attributes)))
}

/// A set-element message: every attribute but the element list through the crate's parser for
/// it; the list walked here, each element through the crate's parser for one.
fn set_elements(bytes: &[u8]) -> Result<NetlinkMessage<NetfilterMessage>, ToCrate> {
    message(
        bytes,
        [NEWSETELEM, GETSETELEM, DELSETELEM],
        LIST_ELEMENTS,
        |v| Ok(SetElementList::Elements(list(v)?)),
        |n| SetElementList::parse(n),
        |which, attributes| {
            let m = SetElementMessage { attributes };
            match which {
                0 => NfTablesMessage::NewSetElement(m),
                1 => NfTablesMessage::GetSetElement(m),
                _ => NfTablesMessage::DeleteSetElement(m),
            }
        },
    )
}

/// A list attribute's items, each through the crate's parser for one
/// (`VecListAttribute::parse` without its formatting).
fn list<T>(v: &[u8]) -> Result<Vec<ListAttribute<T>>, ToCrate>
where
    ListAttribute<T>: for<'b> Parseable<NlaBuffer<&'b [u8]>>,
{
    NlasIterator::new(v)
        .map(|nla| Ok(ListAttribute::parse(&nla?)?))
        .collect()
}

/// The netlink and nfgenmsg headers around `inner`, as the crate fills them.
fn message_of(
    nl: &NetlinkBuffer<&[u8]>,
    gen_msg: &[u8],
    inner: NfTablesMessage,
) -> NetlinkMessage<NetfilterMessage> {
    let mut header = NetlinkHeader::default();
    header.length = nl.length();
    header.message_type = nl.message_type();
    header.flags = nl.flags();
    header.sequence_number = nl.sequence_number();
    header.port_number = nl.port_number();
    let nf_header = NetfilterHeader::new(
        gen_msg[0].into(),
        gen_msg[1],
        u16::from_be_bytes([gen_msg[2], gen_msg[3]]),
    );
    NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(NetfilterMessage::new(nf_header, inner)),
    )
}

/// A rule message: every attribute but the expressions through the crate's parser for it; the
/// expressions walked here, each expression's attributes through the crate's parser for its
/// kind.
fn rule(bytes: &[u8]) -> Result<NetlinkMessage<NetfilterMessage>, ToCrate> {
    message(
        bytes,
        [NEWRULE, GETRULE, DELRULE],
        RULE_EXPRESSIONS,
        |v| Ok(RuleAttribute::Expressions(expressions(v)?)),
        |n| RuleAttribute::parse(n),
        |which, attributes| {
            let m = RuleMessage { attributes };
            match which {
                0 => NfTablesMessage::NewRule(m),
                1 => NfTablesMessage::GetRule(m),
                _ => NfTablesMessage::DeleteRule(m),
            }
        },
    )
}

/// NFTA_RULE_EXPRESSIONS: a list of expressions (`ListAttribute::<ExpressionAttribute>::parse`).
fn expressions(v: &[u8]) -> Result<Vec<ListAttribute<ExpressionAttribute>>, ToCrate> {
    let mut out = Vec::new();
    for nla in NlasIterator::new(v) {
        let nla = nla?;
        out.push(match nla.kind() {
            UNSPEC => ListAttribute::Unspec,
            LIST_ELEM => ListAttribute::Element(expression(nla.value())?),
            _ => ListAttribute::Other(DefaultNla::parse(&nla)?),
        });
    }
    Ok(out)
}

/// One expression's attributes: its name, and its data parsed by that name
/// (`ExpressionAttribute::parse_with_param`, the name given to the attribute right after it).
fn expression(v: &[u8]) -> Result<Vec<ExpressionAttribute>, ToCrate> {
    let mut out = Vec::new();
    let mut name: Option<String> = None;
    for nla in NlasIterator::new(v) {
        let nla = nla?;
        let given = name.take();
        out.push(match nla.kind() {
            UNSPEC => ExpressionAttribute::Unspec,
            EXPR_NAME => {
                let n = parse_string(nla.value())?;
                name = Some(n.clone());
                ExpressionAttribute::Name(n)
            }
            EXPR_DATA => ExpressionAttribute::Data(data_of(nla.value(), given)?),
            _ => ExpressionAttribute::Other(DefaultNla::parse(&nla)?),
        });
    }
    Ok(out)
}

/// Each attribute of an expression's data through the parser for its kind
/// (`Expressions::parse_with_param`).
fn data_of(v: &[u8], name: Option<String>) -> Result<Expressions, ToCrate> {
    fn all<'a, T, E: Into<DecodeError>>(
        v: &'a [u8],
        parse: impl Fn(&NlaBuffer<&'a [u8]>) -> Result<T, E>,
    ) -> Result<Vec<T>, ToCrate> {
        NlasIterator::new(v).map(|nla| Ok(parse(&nla?)?)).collect()
    }
    Ok(match name.as_deref() {
        None => Expressions::Unknown(all(v, DefaultNla::parse)?),
        Some("bitwise") => Expressions::Bitwise(all(v, Bitwise::parse)?),
        Some("cmp") => Expressions::Cmp(all(v, Cmp::parse)?),
        Some("immediate") => Expressions::Immediate(all(v, Immediate::parse)?),
        Some("lookup") => Expressions::Lookup(all(v, Lookup::parse)?),
        Some("meta") => Expressions::Meta(all(v, Meta::parse)?),
        Some("payload") => Expressions::Payload(all(v, Payload::parse)?),
        Some(other) => Expressions::Other {
            expression_type: other.to_owned(),
            attributes: all(v, DefaultNla::parse)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_netfilter::NetfilterProtoFamily;
    use netlink_packet_netfilter::nftables::{
        DataAttribute, SetElementAttribute, SetElementFlags, Verdict, VerdictAttribute,
    };

    fn framed(msg: NfTablesMessage) -> Vec<u8> {
        crate::dataplane::nfnetlink::frame(NetfilterProtoFamily::IPv4, msg)
    }

    fn elements(n: usize, verdicts: bool) -> Vec<ListAttribute<SetElementAttribute>> {
        (0..n)
            .map(|i| {
                let key = DataAttribute::Value((i as u32).to_be_bytes().to_vec());
                let data = if verdicts {
                    DataAttribute::Verdict(vec![
                        VerdictAttribute::Code(Verdict::Goto),
                        VerdictAttribute::Chain(format!("service-X{i}-ns/svc/tcp/")),
                    ])
                } else {
                    DataAttribute::Value(vec![10, 244, 0, i as u8, 0x1f, 0x90, 0, 0])
                };
                let mut attributes = vec![
                    SetElementAttribute::Key(key),
                    SetElementAttribute::Data(data),
                ];
                if i % 3 == 1 {
                    // What the kernel adds to an interval set's closing element.
                    attributes.push(SetElementAttribute::Flags(SetElementFlags::IntervalEnd));
                }
                ListAttribute::Element(attributes)
            })
            .collect()
    }

    #[test]
    fn set_elements_decode_as_the_crate_decodes_them() {
        for (n, verdicts) in [(1, true), (5, false), (300, true)] {
            for make in [
                NfTablesMessage::NewSetElement as fn(SetElementMessage) -> NfTablesMessage,
                NfTablesMessage::DeleteSetElement,
            ] {
                let bytes = framed(make(SetElementMessage {
                    attributes: vec![
                        SetElementList::Table("kube-proxy".into()),
                        SetElementList::Set("service-ips".into()),
                        SetElementList::Elements(elements(n, verdicts)),
                    ],
                }));
                let fast = set_elements(&bytes).ok().expect("a set-element message");
                let crate_decoded =
                    NetlinkMessage::<NetfilterMessage>::deserialize(&bytes).unwrap();
                assert_eq!(fast, crate_decoded, "{n} elements");
            }
        }
    }

    #[test]
    fn other_messages_and_malformed_ones_go_to_the_crate() {
        let gen_msg = framed(NfTablesMessage::NewGen(
            netlink_packet_netfilter::nftables::GenMessage {
                attributes: vec![netlink_packet_netfilter::nftables::GenAttribute::Id(3)],
            },
        ));
        assert!(set_elements(&gen_msg).is_err());
        assert_eq!(
            deserialize(&gen_msg).unwrap(),
            NetlinkMessage::<NetfilterMessage>::deserialize(&gen_msg).unwrap()
        );
        let mut bad = framed(NfTablesMessage::NewSetElement(SetElementMessage {
            attributes: vec![SetElementList::Elements(elements(2, true))],
        }));
        let n = bad.len();
        // An attribute claiming more bytes than there are.
        bad[n - 8] = 0xff;
        assert!(set_elements(&bad).is_err());
    }

    /// Rule messages of every shape the watcher meets: iptables-nft's KUBE-SERVICES jump
    /// (`meta l4proto`, payload loads and compares, an xt `comment` match with its 256-byte
    /// info, a jump) with its compat attribute, a KUBE-SEP DNAT target, nftables mode's
    /// `numgen`/`lookup`/`bitwise`, an expression without a name, and a deletion by handle.
    fn rules() -> Vec<Vec<u8>> {
        use crate::testbed::kube_proxy_nl::{expr, tcp_only};
        use netlink_packet_netfilter::nftables::{Operator, Register};
        let xt = |kind: &str, name: &str, info: usize| {
            expr(
                kind,
                Expressions::Other {
                    expression_type: kind.into(),
                    attributes: vec![
                        DefaultNla::new(1, format!("{name}\0").into_bytes()),
                        DefaultNla::new(2, 2u32.to_be_bytes().to_vec()),
                        DefaultNla::new(3, (0..info).map(|i| i as u8).collect()),
                    ],
                },
            )
        };
        let jump = ListAttribute::Element(vec![
            ExpressionAttribute::Name("immediate".into()),
            ExpressionAttribute::Data(Expressions::Immediate(vec![
                Immediate::DestinationRegister(Register::Verdict),
                Immediate::Data(DataAttribute::Verdict(vec![
                    VerdictAttribute::Code(Verdict::Jump),
                    VerdictAttribute::Chain("KUBE-SVC-ABCDEFGHIJKLMNOP".into()),
                ])),
            ])),
        ]);
        let mut services = tcp_only().to_vec();
        services.extend([
            expr(
                "payload",
                Expressions::Payload(vec![
                    Payload::DestinationRegister(Register::Reg1),
                    Payload::Base(1),
                    Payload::Offset(16),
                    Payload::Len(4),
                ]),
            ),
            expr(
                "cmp",
                Expressions::Cmp(vec![
                    Cmp::SourceRegister(Register::Reg1),
                    Cmp::Op(Operator::Equal),
                    Cmp::Data(DataAttribute::Value(vec![10, 96, 0, 1])),
                ]),
            ),
            xt("match", "comment", 256),
            xt("match", "tcp", 16),
            jump,
        ]);
        let nftables_mode = vec![
            expr(
                "numgen",
                Expressions::Other {
                    expression_type: "numgen".into(),
                    attributes: vec![DefaultNla::new(1, 1u32.to_be_bytes().to_vec())],
                },
            ),
            expr(
                "bitwise",
                Expressions::Bitwise(vec![
                    Bitwise::SourceRegister(Register::Reg1),
                    Bitwise::DestinationRegister(Register::Reg1),
                    Bitwise::Length(4),
                    Bitwise::Mask(DataAttribute::Value(vec![0xff, 0xff, 0xff, 0])),
                    Bitwise::Xor(DataAttribute::Value(vec![0; 4])),
                ]),
            ),
            expr(
                "lookup",
                Expressions::Lookup(vec![
                    Lookup::Set("__map0".into()),
                    Lookup::SourceRegister(Register::Reg1),
                    Lookup::DestinationRegister(Register::Reg1),
                ]),
            ),
            ListAttribute::Element(vec![ExpressionAttribute::Data(Expressions::Unknown(vec![
                DefaultNla::new(1, vec![1, 2, 3, 4]),
            ]))]),
            ListAttribute::Other(DefaultNla::new(7, vec![9; 8])),
        ];
        let message = |exprs: Vec<ListAttribute<ExpressionAttribute>>,
                       extra: Vec<RuleAttribute>| {
            let mut attributes = vec![
                RuleAttribute::Table("nat".into()),
                RuleAttribute::Chain("KUBE-SERVICES".into()),
                RuleAttribute::Handle(42),
                RuleAttribute::Expressions(exprs),
            ];
            attributes.extend(extra);
            RuleMessage { attributes }
        };
        let compat = RuleAttribute::Compat(vec![
            DefaultNla::new(1, 6u32.to_be_bytes().to_vec()),
            DefaultNla::new(2, 0u32.to_be_bytes().to_vec()),
        ]);
        vec![
            framed(NfTablesMessage::NewRule(message(
                services,
                vec![compat, RuleAttribute::UserData(vec![1, 2, 3])],
            ))),
            framed(NfTablesMessage::NewRule(message(
                vec![xt("target", "DNAT", 40)],
                vec![RuleAttribute::Position(7), RuleAttribute::Id(3)],
            ))),
            framed(NfTablesMessage::GetRule(message(nftables_mode, vec![]))),
            framed(NfTablesMessage::DeleteRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table("nat".into()),
                    RuleAttribute::Chain("KUBE-SERVICES".into()),
                    RuleAttribute::Handle(42),
                ],
            })),
        ]
    }

    #[test]
    fn rules_decode_as_the_crate_decodes_them() {
        for bytes in rules() {
            let fast = rule(&bytes).ok().expect("a rule message");
            let crate_decoded = NetlinkMessage::<NetfilterMessage>::deserialize(&bytes).unwrap();
            assert_eq!(fast, crate_decoded);
        }
    }

    /// The rules and two set-element messages (verdicts; values with a flag).
    fn messages() -> Vec<Vec<u8>> {
        let mut all = rules();
        for (n, verdicts) in [(3, true), (2, false)] {
            all.push(framed(NfTablesMessage::NewSetElement(SetElementMessage {
                attributes: vec![
                    SetElementList::Table("kube-proxy".into()),
                    SetElementList::Set("service-ips".into()),
                    SetElementList::Elements(elements(n, verdicts)),
                ],
            })));
        }
        all
    }

    /// Every message re-typed as each nf_tables message, with each single bit of it flipped:
    /// the decoder answers, a message or an error, and never panics. (The crate's set parser
    /// reads expression data unchecked: a rule's bytes read as a set, one length damaged, made
    /// it panic in a 4096-case property run.)
    #[test]
    fn no_message_type_with_one_damaged_bit_panics() {
        let mut panics = 0;
        for original in messages() {
            for ty in 0..32u16 {
                let mut bytes = original.clone();
                bytes[4..6].copy_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | ty).to_ne_bytes());
                for at in 16..bytes.len() {
                    for bit in 0..8 {
                        bytes[at] ^= 1 << bit;
                        let decoded = std::panic::catch_unwind(|| deserialize(&bytes));
                        panics += usize::from(decoded.is_err());
                        bytes[at] ^= 1 << bit;
                    }
                }
            }
        }
        assert_eq!(panics, 0);
    }

    proptest::proptest! {
        /// Whatever a message's bytes become, the fast paths answer what the crate answers: the
        /// same message, or an error (the crate's, given way to, or its panic caught).
        #[test]
        fn damaged_messages_decode_as_the_crate_decodes_them(
            which in proptest::sample::select((0..messages().len()).collect::<Vec<_>>()),
            flips in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), 0u8..8), 1..4),
            cut in proptest::option::of(proptest::prelude::any::<proptest::sample::Index>()),
        ) {
            let mut bytes = messages().swap_remove(which);
            for (at, bit) in flips {
                let at = at.index(bytes.len());
                bytes[at] ^= 1 << bit;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len()));
            }
            let ours = deserialize(&bytes);
            let theirs = std::panic::catch_unwind(|| {
                NetlinkMessage::<NetfilterMessage>::deserialize(&bytes)
            });
            match (ours, theirs) {
                (Ok(a), Ok(Ok(b))) => proptest::prop_assert_eq!(a, b),
                (Err(_), Ok(Err(_)) | Err(_)) => {}
                (a, b) => proptest::prop_assert!(false, "ours {a:?}, the crate's {b:?}"),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = deserialize(&bytes);
        }
    }
}
