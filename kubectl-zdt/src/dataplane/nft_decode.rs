//! Decoding nf_tables netlink messages into netlink-packet-netfilter's types, with one fast path:
//! set-element messages (`NFT_MSG_{NEW,GET,DEL}SETELEM`).
//!
//! netlink-packet-netfilter 0.4 parses a list attribute by formatting the whole list buffer with
//! `{:?}` into an error context for every element, even when nothing fails
//! (`VecListAttribute::parse`, `.context(format!(…, buf))`): a message of n elements costs
//! O(n²) in formatting. A dump of kube-proxy's `service-ips` map at 10 000 Services (a few
//! hundred elements per message) spent 11.4 s of a 16.4 s start there (BENCHMARKS.md). The
//! elements are decoded here instead, into the same types, keeping the attributes the mirror
//! reads (key, data value or verdict); anything this decoder does not expect falls back to the
//! crate, so malformed input still gets the crate's error.

use netlink_packet_core::{
    DecodeError, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlaBuffer,
    NlasIterator,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage,
    nftables::{
        DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementList,
        SetElementMessage, Verdict, VerdictAttribute,
    },
};

/// NFNL_SUBSYS_NFTABLES, in the high byte of the message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM, NFT_MSG_DELSETELEM.
const NEWSETELEM: u16 = 12;
const GETSETELEM: u16 = 13;
const DELSETELEM: u16 = 14;
/// struct nfgenmsg: family, version, res_id.
const NFGENMSG_LEN: usize = 4;
/// NFTA_SET_ELEM_LIST_*.
const LIST_TABLE: u16 = 1;
const LIST_SET: u16 = 2;
const LIST_ELEMENTS: u16 = 3;
/// NFTA_LIST_ELEM.
const LIST_ELEM: u16 = 1;
/// NFTA_SET_ELEM_KEY / NFTA_SET_ELEM_DATA.
const ELEM_KEY: u16 = 1;
const ELEM_DATA: u16 = 2;
/// NFTA_DATA_VALUE / NFTA_DATA_VERDICT.
const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;
/// NFTA_VERDICT_CODE / NFTA_VERDICT_CHAIN.
const VERDICT_CODE: u16 = 1;
const VERDICT_CHAIN: u16 = 2;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Deserializes one nf_tables netlink message (dump reply or notification).
pub fn deserialize(bytes: &[u8]) -> Result<NetlinkMessage<NetfilterMessage>, DecodeError> {
    match set_elements(bytes) {
        Some(m) => Ok(m),
        None => NetlinkMessage::deserialize(bytes),
    }
}

/// The attributes of a buffer, `None` if any is malformed.
fn attrs(buf: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    NlasIterator::new(buf)
        .map(|a| {
            let a: NlaBuffer<&[u8]> = a.ok()?;
            let kind = a.kind() & NLA_TYPE_MASK;
            let raw = a.into_inner();
            let len = usize::from(u16::from_ne_bytes([*raw.first()?, *raw.get(1)?]));
            Some((kind, raw.get(4..len)?))
        })
        .collect()
}

fn string(v: &[u8]) -> Option<String> {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8(v[..end].to_vec()).ok()
}

fn data(v: &[u8]) -> Option<DataAttribute> {
    let mut out = None;
    for (kind, value) in attrs(v)? {
        match kind {
            DATA_VALUE => out = Some(DataAttribute::Value(value.to_vec())),
            DATA_VERDICT => {
                let mut verdict = Vec::new();
                for (k, val) in attrs(value)? {
                    match k {
                        VERDICT_CODE => {
                            let code = u32::from_be_bytes(val.get(..4)?.try_into().ok()?);
                            verdict.push(VerdictAttribute::Code(Verdict::from(code)));
                        }
                        VERDICT_CHAIN => verdict.push(VerdictAttribute::Chain(string(val)?)),
                        _ => {}
                    }
                }
                out = Some(DataAttribute::Verdict(verdict));
            }
            _ => {}
        }
    }
    out
}

fn element(v: &[u8]) -> Option<ListAttribute<SetElementAttribute>> {
    let mut out = Vec::new();
    for (kind, value) in attrs(v)? {
        match kind {
            ELEM_KEY => out.push(SetElementAttribute::Key(data(value)?)),
            ELEM_DATA => out.push(SetElementAttribute::Data(data(value)?)),
            _ => {}
        }
    }
    Some(ListAttribute::Element(out))
}

/// A set-element message decoded without the crate's list parser; `None` for any other
/// message, or one this decoder does not fully understand.
fn set_elements(bytes: &[u8]) -> Option<NetlinkMessage<NetfilterMessage>> {
    let nl = NetlinkBuffer::new_checked(bytes).ok()?;
    let ty = nl.message_type();
    if ty >> 8 != NFNL_SUBSYS_NFTABLES {
        return None;
    }
    let payload = nl.payload();
    let gen_msg = payload.get(..NFGENMSG_LEN)?;
    let mut list = Vec::new();
    for (kind, value) in attrs(&payload[NFGENMSG_LEN..])? {
        match kind {
            LIST_TABLE => list.push(SetElementList::Table(string(value)?)),
            LIST_SET => list.push(SetElementList::Set(string(value)?)),
            LIST_ELEMENTS => {
                let mut elements = Vec::new();
                for (k, elem) in attrs(value)? {
                    if k == LIST_ELEM {
                        elements.push(element(elem)?);
                    }
                }
                list.push(SetElementList::Elements(elements));
            }
            _ => {}
        }
    }
    let message = SetElementMessage { attributes: list };
    let inner = match ty & 0xff {
        NEWSETELEM => NfTablesMessage::NewSetElement(message),
        GETSETELEM => NfTablesMessage::GetSetElement(message),
        DELSETELEM => NfTablesMessage::DeleteSetElement(message),
        _ => return None,
    };
    let mut header = NetlinkHeader::default();
    header.length = nl.length();
    header.message_type = ty;
    header.flags = nl.flags();
    header.sequence_number = nl.sequence_number();
    header.port_number = nl.port_number();
    let nf_header = NetfilterHeader::new(
        gen_msg[0].into(),
        gen_msg[1],
        u16::from_be_bytes([gen_msg[2], gen_msg[3]]),
    );
    Some(NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(NetfilterMessage::new(nf_header, inner)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_netfilter::NetfilterProtoFamily;

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
                ListAttribute::Element(vec![
                    SetElementAttribute::Key(key),
                    SetElementAttribute::Data(data),
                ])
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
                let fast = set_elements(&bytes).expect("a set-element message");
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
        assert!(set_elements(&gen_msg).is_none());
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
        assert!(set_elements(&bad).is_none());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = deserialize(&bytes);
        }
    }
}
