use std::net::SocketAddr;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;

use super::{wire::*, *};

/// A kernel-framed dump reply: nlmsghdr + genlmsghdr(cmd) + attributes.
fn reply(cmd: u8, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::new();
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&0x1cu16.to_ne_bytes()); // the IPVS family id, assigned at run time
    m.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&[cmd, VERSION, 0, 0]);
    m.extend_from_slice(attrs);
    m
}

fn done() -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&20u32.to_ne_bytes());
    m.extend_from_slice(&3u16.to_ne_bytes()); // NLMSG_DONE
    m.extend_from_slice(&2u16.to_ne_bytes());
    m.extend_from_slice(&[0; 12]);
    m
}

pub(super) fn web() -> VirtualServer {
    VirtualServer {
        service: ServiceAddr("10.96.114.246:80".parse().unwrap()),
        protocol: Protocol::Tcp,
    }
}

fn service_reply(vs: &VirtualServer) -> Vec<u8> {
    // What the kernel adds besides what names the service: the scheduler, flags, …
    let mut attrs = service_attr(vs);
    let mut with_sched = attrs[4..].to_vec();
    with_sched.extend(nla(6, b"rr\0"));
    attrs = nla(IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED, &with_sched);
    reply(IPVS_CMD_NEW_SERVICE, &attrs)
}

fn dest_reply(ip: [u8; 4], weight: u32, family: Option<u16>) -> Vec<u8> {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&ip);
    let mut d = nla(IPVS_DEST_ATTR_ADDR, &a);
    d.extend(nla(IPVS_DEST_ATTR_PORT, &8080u16.to_be_bytes()));
    d.extend(nla(3, &0u32.to_ne_bytes()));
    d.extend(nla(IPVS_DEST_ATTR_WEIGHT, &weight.to_ne_bytes()));
    if let Some(f) = family {
        d.extend(nla(IPVS_DEST_ATTR_ADDR_FAMILY, &f.to_ne_bytes()));
    }
    reply(
        IPVS_CMD_NEW_DEST,
        &nla(IPVS_CMD_ATTR_DEST | NLA_F_NESTED, &d),
    )
}

/// A kernel stand-in: answers each request (decoded from the bytes `Live` would send) with
/// datagrams decoded by `decode_datagram`, as `Live` decodes the kernel's.
struct Recorded {
    services: Vec<u8>,
    dests: Vec<(VirtualServer, Vec<u8>)>,
    requests: Vec<IpvsMessage>,
}

impl Transport for Recorded {
    fn dump(&mut self, request: &IpvsMessage) -> Result<Vec<IpvsMessage>, ReadError> {
        let bytes = encode_request(request, 0x1c, 1);
        let sent = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&bytes).unwrap();
        assert_eq!(sent.header.flags, NLM_F_REQUEST | NLM_F_DUMP);
        let NetlinkPayload::InnerMessage(m) = sent.payload else {
            panic!("not a request: {sent:?}");
        };
        self.requests.push(m.payload.clone());
        let datagram = match &m.payload {
            IpvsMessage::GetServices => self.services.clone(),
            IpvsMessage::GetDests(vs) => self
                .dests
                .iter()
                .find(|(v, _)| v == vs)
                .map(|(_, d)| d.clone())
                .unwrap_or_else(done),
            other => panic!("unexpected request {other:?}"),
        };
        let (messages, finished) = decode_datagram(&datagram)?;
        assert!(finished, "the dump must end with NLMSG_DONE");
        Ok(messages)
    }
}

#[test]
fn a_draining_real_server_is_no_longer_a_route() {
    let mut services = service_reply(&web());
    services.extend(done());
    let mut dests = dest_reply([10, 244, 0, 36], 0, Some(AF_INET));
    dests.extend(dest_reply([10, 244, 0, 38], 1, None));
    dests.extend(done());
    let mut kernel = Recorded {
        services,
        dests: vec![(web(), dests)],
        requests: Vec::new(),
    };
    let ipvs = read(&mut kernel).unwrap();
    assert_eq!(ipvs.servers.len(), 1);
    assert_eq!(
        ipvs.routes.describe(),
        ["10.96.114.246:80 tcp -> 10.244.0.38:8080 (-)"]
    );
    assert_eq!(
        kernel.requests,
        [IpvsMessage::GetServices, IpvsMessage::GetDests(web())]
    );
}

#[test]
fn no_virtual_servers_is_no_ipvs_mode() {
    let mut kernel = Recorded {
        services: done(),
        dests: Vec::new(),
        requests: Vec::new(),
    };
    assert_eq!(read(&mut kernel).unwrap(), Ipvs::default());
}

#[test]
fn a_kernel_error_and_a_message_without_a_destination_are_one_clear_error() {
    let mut err = Vec::new();
    err.extend_from_slice(&36u32.to_ne_bytes());
    err.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
    err.extend_from_slice(&[0; 10]);
    err.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
    err.extend_from_slice(&[0; 16]);
    match decode_datagram(&err) {
        Err(ReadError::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
        other => panic!("{other:?}"),
    }
    let bad = reply(IPVS_CMD_NEW_DEST, &nla(IPVS_CMD_ATTR_SERVICE, &[]));
    assert!(matches!(decode_datagram(&bad), Err(ReadError::Parse(_))));
    assert_eq!(
        parse_dest(&nla(IPVS_CMD_ATTR_SERVICE, &[])),
        Err(ParseError::Attribute {
            what: "destination"
        })
    );
}

#[test]
fn a_recorded_dump_serializes_as_hex_and_replays() {
    let mut services = service_reply(&web());
    services.extend(done());
    let mut dests = dest_reply([10, 244, 0, 38], 1, Some(AF_INET));
    dests.extend(done());
    let dumps = vec![
        Dump {
            request: encode_request(&IpvsMessage::GetServices, 0x1c, 1),
            replies: vec![services],
        },
        Dump {
            request: encode_request(&IpvsMessage::GetDests(web()), 0x1c, 2),
            replies: vec![dests],
        },
    ];
    let json = serde_json::to_string(&dumps).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let hex = value[0]["request"].as_str().unwrap();
    assert_eq!(hex.len(), 2 * dumps[0].request.len());
    assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
    let back: Vec<Dump> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, dumps);
    assert_eq!(
        read(&mut Replay::new(&back)).unwrap().routes.describe(),
        ["10.96.114.246:80 tcp -> 10.244.0.38:8080 (-)"]
    );
    // A request nothing was recorded for is an error, not an empty answer.
    assert!(read(&mut Replay::new(&back[..1])).is_err());
}

/// A kernel stand-in holding IPVS as a model: virtual servers 10.96.0.<i>:80 with real
/// servers 10.244.<i>.<j>:8080 and their weights; it answers dumps as the kernel does (an
/// unknown virtual server's GET_DEST dump ends empty).
#[derive(Default)]
struct Model {
    servers: std::collections::BTreeMap<u8, std::collections::BTreeMap<u8, u32>>,
}

fn model_vs(i: u8) -> VirtualServer {
    VirtualServer {
        service: ServiceAddr(SocketAddr::from(([10, 96, 0, i], 80))),
        protocol: Protocol::Tcp,
    }
}

impl Transport for Model {
    fn dump(&mut self, request: &IpvsMessage) -> Result<Vec<IpvsMessage>, ReadError> {
        let mut datagram = Vec::new();
        match request {
            IpvsMessage::GetServices => {
                for i in self.servers.keys() {
                    datagram.extend(service_reply(&model_vs(*i)));
                }
            }
            IpvsMessage::GetDests(vs) => {
                let i = (1..=255).find(|i| model_vs(*i) == *vs);
                for (j, w) in i.and_then(|i| self.servers.get(&i)).into_iter().flatten() {
                    datagram.extend(dest_reply([10, 244, i.unwrap(), *j], *w, None));
                }
            }
            other => panic!("unexpected request {other:?}"),
        }
        datagram.extend(done());
        Ok(decode_datagram(&datagram)?.0)
    }
}

/// One of kube-proxy's changes to the model: (virtual server, real server, what).
#[derive(Clone, Copy, Debug)]
enum Op {
    NewService,
    DelService,
    NewDest(u32),
    SetDest(u32),
    DelDest,
}

fn op() -> impl proptest::strategy::Strategy<Value = (u8, u8, Op)> {
    use proptest::prelude::*;
    (
        1..6u8,
        1..5u8,
        prop_oneof![
            Just(Op::NewService),
            Just(Op::DelService),
            (0..3u32).prop_map(Op::NewDest),
            (0..3u32).prop_map(Op::SetDest),
            Just(Op::DelDest),
        ],
    )
}

proptest::proptest! {
    /// Re-reading only the virtual server a request named keeps the watcher's IPVS equal to
    /// a whole read, and reports exactly what a whole read's diff would.
    #[test]
    fn rereading_the_named_virtual_server_equals_a_whole_read(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let mut kernel = Model::default();
        kernel.servers.insert(1, [(1, 1), (2, 1)].into());
        let mut state = read(&mut kernel).unwrap();
        for (i, j, op) in ops {
            let dests = kernel.servers.get_mut(&i);
            match (op, dests) {
                (Op::NewService, None) => {
                    kernel.servers.insert(i, Default::default());
                }
                (Op::DelService, Some(_)) => {
                    kernel.servers.remove(&i);
                }
                (Op::NewDest(w) | Op::SetDest(w), Some(d)) => {
                    d.insert(j, w);
                }
                (Op::DelDest, Some(d)) => {
                    d.remove(&j);
                }
                // The kernel refuses it; the trigger still reports the send.
                _ => {}
            }
            use zdt_common::genl::*;
            let cmd = match op {
                Op::NewService => IPVS_CMD_NEW_SERVICE,
                Op::DelService => IPVS_CMD_DEL_SERVICE,
                Op::NewDest(_) => IPVS_CMD_NEW_DEST,
                Op::SetDest(_) => IPVS_CMD_SET_DEST,
                Op::DelDest => IPVS_CMD_DEL_DEST,
            };
            let before = state.routes.clone();
            let change = reread_server(&mut kernel, &mut state, &model_vs(i), cmd).unwrap();
            let whole = read(&mut kernel).unwrap();
            proptest::prop_assert_eq!(&state, &whole);
            let mut expected = before.diff(&whole.routes);
            let mut got = change;
            for c in [&mut expected, &mut got] {
                c.added.sort_by_key(|r| r.route);
                c.removed.sort_by_key(|r| r.route);
            }
            proptest::prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        let _ = decode_datagram(&bytes);
        let _ = parse_service(&bytes);
        let _ = parse_dest(&bytes);
        let _ = requested_server(&bytes);
    }
}
