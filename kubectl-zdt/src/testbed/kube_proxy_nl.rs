//! kube-proxy's nftables-mode changes as the kernel announces them on NFNLGRP_NFTABLES, built
//! without a kernel: for unit tests of the mirror and for benchmarks at sizes a test node cannot
//! be programmed to quickly. The shapes are those `nft --debug=netlink` shows for what the
//! v1.36 kube-proxy writes (see `kube_proxy_nft`): a service chain rule
//! `meta l4proto tcp; numgen random mod N; lookup __mapK dreg 1; nat dnat addr reg 1 proto reg 9`
//! and the anonymous map's elements `index : ip . port`.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterProtoFamily,
    nftables::{
        Cmp, DataAttribute, ExpressionAttribute, Expressions, GenAttribute, GenMessage,
        ListAttribute, Lookup, Meta, MetaKey, NfTablesMessage, Operator, Register, RuleAttribute,
        RuleMessage, SetAttribute, SetElementAttribute, SetElementList, SetElementMessage,
        SetMessage, Verdict, VerdictAttribute,
    },
};

use super::{kube_proxy::ServicePort, kube_proxy_nft::service_chain};

const TABLE: &str = "kube-proxy";

pub fn expr(name: &str, data: Expressions) -> ListAttribute<ExpressionAttribute> {
    ListAttribute::Element(vec![
        ExpressionAttribute::Name(name.into()),
        ExpressionAttribute::Data(data),
    ])
}

fn be32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

/// The anonymous map of a service chain: `i : ip . port` (the port word padded to 4 bytes).
fn map_elements(map: &str, endpoints: &[SocketAddr]) -> NfTablesMessage {
    let elems = endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| {
            let mut data = match ep.ip() {
                IpAddr::V4(ip) => ip.octets().to_vec(),
                IpAddr::V6(ip) => ip.octets().to_vec(),
            };
            data.extend_from_slice(&ep.port().to_be_bytes());
            data.extend_from_slice(&[0, 0]);
            ListAttribute::Element(vec![
                SetElementAttribute::Key(DataAttribute::Value(
                    u32::try_from(i).unwrap_or(u32::MAX).to_ne_bytes().to_vec(),
                )),
                SetElementAttribute::Data(DataAttribute::Value(data)),
            ])
        })
        .collect();
    NfTablesMessage::NewSetElement(SetElementMessage {
        attributes: vec![
            SetElementList::Table(TABLE.into()),
            SetElementList::Set(map.into()),
            SetElementList::Elements(elems),
        ],
    })
}

/// The `service-ips` element `ClusterIP . tcp . port : goto <chain>`.
fn dispatch(svc: &ServicePort, add: bool) -> NfTablesMessage {
    let mut key = match svc.cluster_ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    key.extend_from_slice(&[6, 0, 0, 0]);
    key.extend_from_slice(&svc.port.to_be_bytes());
    key.extend_from_slice(&[0, 0]);
    let elem = ListAttribute::Element(vec![
        SetElementAttribute::Key(DataAttribute::Value(key)),
        SetElementAttribute::Data(DataAttribute::Verdict(vec![
            VerdictAttribute::Code(Verdict::Goto),
            VerdictAttribute::Chain(service_chain(svc)),
        ])),
    ]);
    let list = SetElementMessage {
        attributes: vec![
            SetElementList::Table(TABLE.into()),
            SetElementList::Set("service-ips".into()),
            SetElementList::Elements(vec![elem]),
        ],
    };
    if add {
        NfTablesMessage::NewSetElement(list)
    } else {
        NfTablesMessage::DeleteSetElement(list)
    }
}

/// `meta l4proto tcp`: what every Service rule of either kube-proxy mode starts with.
pub fn tcp_only() -> [ListAttribute<ExpressionAttribute>; 2] {
    [
        expr(
            "meta",
            Expressions::Meta(vec![
                Meta::Key(MetaKey::L4Proto),
                Meta::DestinationRegister(Register::Reg1),
            ]),
        ),
        expr(
            "cmp",
            Expressions::Cmp(vec![
                Cmp::SourceRegister(Register::Reg1),
                Cmp::Op(Operator::Equal),
                Cmp::Data(DataAttribute::Value(vec![6])),
            ]),
        ),
    ]
}

/// The service chain's DNAT rule through map `map`.
fn service_rule(svc: &ServicePort, handle: u64, map: &str, n: usize) -> NfTablesMessage {
    let mut exprs = tcp_only().to_vec();
    exprs.extend([
        expr(
            "numgen",
            Expressions::Other {
                expression_type: "numgen".into(),
                attributes: vec![
                    DefaultNla::new(1, be32(1)),
                    DefaultNla::new(2, be32(u32::try_from(n).unwrap_or(u32::MAX))),
                    DefaultNla::new(3, be32(1)),
                ],
            },
        ),
        expr(
            "lookup",
            Expressions::Lookup(vec![
                Lookup::Set(map.into()),
                Lookup::SourceRegister(Register::Reg1),
                Lookup::DestinationRegister(Register::Reg1),
            ]),
        ),
        expr(
            "nat",
            Expressions::Other {
                expression_type: "nat".into(),
                attributes: vec![
                    DefaultNla::new(1, be32(1)),
                    DefaultNla::new(2, be32(2)),
                    DefaultNla::new(3, be32(1)),
                    DefaultNla::new(4, be32(1)),
                    DefaultNla::new(5, be32(9)),
                    DefaultNla::new(6, be32(9)),
                ],
            },
        ),
    ]);
    NfTablesMessage::NewRule(RuleMessage {
        attributes: vec![
            RuleAttribute::Table(TABLE.into()),
            RuleAttribute::Chain(service_chain(svc)),
            RuleAttribute::Handle(handle),
            RuleAttribute::Expressions(exprs),
        ],
    })
}

/// Everything kube-proxy's first sync announces for one Service.
pub fn add_service(
    svc: &ServicePort,
    handle: u64,
    map: &str,
    endpoints: &[SocketAddr],
) -> Vec<NfTablesMessage> {
    vec![
        NfTablesMessage::NewSet(SetMessage {
            attributes: vec![
                SetAttribute::Table(TABLE.into()),
                SetAttribute::Name(map.into()),
            ],
        }),
        map_elements(map, endpoints),
        service_rule(svc, handle, map, endpoints.len()),
        dispatch(svc, true),
    ]
}

/// One endpoint change of one Service, as the monitor fixture shows kube-proxy commits it:
/// the chain is flushed (its rule and anonymous map deleted) and refilled.
pub fn resync_service(
    svc: &ServicePort,
    old: (u64, &str),
    new: (u64, &str),
    endpoints: &[SocketAddr],
) -> Vec<NfTablesMessage> {
    vec![
        NfTablesMessage::DeleteRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(TABLE.into()),
                RuleAttribute::Chain(service_chain(svc)),
                RuleAttribute::Handle(old.0),
            ],
        }),
        NfTablesMessage::DeleteSet(SetMessage {
            attributes: vec![
                SetAttribute::Table(TABLE.into()),
                SetAttribute::Name(old.1.into()),
            ],
        }),
        NfTablesMessage::NewSet(SetMessage {
            attributes: vec![
                SetAttribute::Table(TABLE.into()),
                SetAttribute::Name(new.1.into()),
            ],
        }),
        map_elements(new.1, endpoints),
        service_rule(svc, new.0, new.1, endpoints.len()),
    ]
}

/// The datagrams the kernel would send for one commit of `changes` (IPv4), ending with NEWGEN.
pub fn datagram(changes: &[NfTablesMessage], generation: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let gen_msg = NfTablesMessage::NewGen(GenMessage {
        attributes: vec![GenAttribute::Id(generation)],
    });
    for m in changes.iter().chain(std::iter::once(&gen_msg)) {
        let mut nl = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
                m.clone(),
            )),
        );
        nl.finalize();
        let start = out.len();
        out.resize(start + nl.buffer_len(), 0);
        nl.serialize(&mut out[start..]);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}
