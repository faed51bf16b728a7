//! IPVS dumps as they went over the socket, kept from the kernel ([`super::Live::record`]) and
//! played back ([`Replay`]) through the same decoder.

use std::io;

use super::{
    ParseError, ReadError,
    reader::Transport,
    wire::{IpvsMessage, decode_datagram},
};

/// One dump as it went over the socket: the request sent and every reply datagram received,
/// up to the one holding NLMSG_DONE. Hex in JSON (the fixtures of tests/fixtures/ipvs).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dump {
    #[serde(with = "hex")]
    pub request: Vec<u8>,
    #[serde(with = "hex_list")]
    pub replies: Vec<Vec<u8>>,
}

mod hex {
    use data_encoding::HEXLOWER;
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&HEXLOWER.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        HEXLOWER
            .decode(String::deserialize(d)?.as_bytes())
            .map_err(D::Error::custom)
    }
}

mod hex_list {
    use data_encoding::HEXLOWER;
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| HEXLOWER.encode(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|h| HEXLOWER.decode(h.as_bytes()).map_err(D::Error::custom))
            .collect()
    }
}

/// Recorded dumps played back: each request is answered with the replies recorded for the
/// same request (matched by what it asks for, not by sequence number or family id), decoded by
/// `decode_datagram` exactly as [`Live`] decodes the kernel's.
pub struct Replay<'a> {
    dumps: &'a [Dump],
}

impl<'a> Replay<'a> {
    pub fn new(dumps: &'a [Dump]) -> Self {
        Self { dumps }
    }
}

impl Transport for Replay<'_> {
    fn dump(&mut self, request: &IpvsMessage) -> Result<Vec<IpvsMessage>, ReadError> {
        let dump = self
            .dumps
            .iter()
            .find(|d| {
                decode_datagram(&d.request).is_ok_and(|(m, _)| m.as_slice() == [request.clone()])
            })
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no recorded dump answers {request:?}"),
                )
            })?;
        let mut out = Vec::new();
        for datagram in &dump.replies {
            let (messages, done) = decode_datagram(datagram)?;
            out.extend(messages);
            if done {
                return Ok(out);
            }
        }
        Err(ParseError::Framing.into())
    }
}
