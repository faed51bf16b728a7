//! The dataplane decoders' fuzz run: the iptables-legacy table reader (IPT_SO_GET_INFO /
//! IPT_SO_GET_ENTRIES blobs), the nftables netlink decoder and the IPVS generic-netlink codec
//! take bytes from the kernel; whatever those bytes are (random, or real ones with bits
//! flipped, bytes overwritten, cut short), they answer Ok or Err, never panic or loop. 256
//! cases per property in CI; `PROPTEST_CASES` raises it for a longer run.

use std::path::PathBuf;

use kubectl_zdt::dataplane::{Family, ipvs, nft_decode, xtables};
use proptest::prelude::*;

fn fixture(path: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every request and reply datagram of the recorded IPVS dumps.
fn ipvs_datagrams() -> Vec<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct Fixture {
        dumps: Vec<ipvs::Dump>,
    }
    let mut out = Vec::new();
    for state in ["initial", "draining", "deleted", "readded"] {
        let f: Fixture = serde_json::from_slice(&fixture(&format!("ipvs/{state}.json"))).unwrap();
        for d in f.dumps {
            out.push(d.request);
            out.extend(d.replies);
        }
    }
    out
}

/// A change to real bytes: a bit flipped, a stretch overwritten, the end cut off, or the first
/// netlink header's length set to another length within the datagram (framing that still
/// parses, so the decoder's own bounds are what is tested).
#[derive(Debug, Clone)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Overwrite(prop::sample::Index, Vec<u8>),
    Cut(prop::sample::Index),
    Length(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<prop::sample::Index>(),
            prop::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, v)| Mutation::Overwrite(i, v)),
        any::<prop::sample::Index>().prop_map(Mutation::Cut),
        any::<prop::sample::Index>().prop_map(Mutation::Length),
    ]
}

fn mutate(bytes: &[u8], changes: &[Mutation]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for m in changes {
        if b.is_empty() {
            break;
        }
        match m {
            Mutation::Flip(i, bit) => {
                let at = i.index(b.len());
                b[at] ^= 1 << bit;
            }
            Mutation::Overwrite(i, v) => {
                let at = i.index(b.len());
                let end = (at + v.len()).min(b.len());
                b[at..end].copy_from_slice(&v[..end - at]);
            }
            Mutation::Cut(i) => b.truncate(i.index(b.len())),
            Mutation::Length(i) if b.len() > 16 => {
                let len = 16 + i.index(b.len() - 15);
                b[..4].copy_from_slice(&u32::try_from(len).unwrap().to_ne_bytes());
            }
            Mutation::Length(_) => {}
        }
    }
    b
}

#[test]
fn the_real_bytes_decode() {
    let info = xtables::parse_info(&fixture("xtables/v1.36-nat.info")).unwrap();
    assert!(xtables::parse(Family::V4, &info, &fixture("xtables/v1.36-nat.entries")).is_ok());
    let datagrams = ipvs_datagrams();
    assert!(datagrams.len() > 8);
    for d in &datagrams {
        assert!(
            ipvs::decode_datagram(d).is_ok() || ipvs::requested_server(d).is_some(),
            "a recorded datagram that decodes as neither reply nor request"
        );
    }
}

proptest! {
    #[test]
    fn the_iptables_table_reader_answers_any_blob(
        info_changes in prop::collection::vec(mutation(), 0..3),
        entry_changes in prop::collection::vec(mutation(), 1..6),
        random in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let real_info = fixture("xtables/v1.36-nat.info");
        let entries = fixture("xtables/v1.36-nat.entries");
        let _ = xtables::parse_info(&random);
        let info = xtables::parse_info(&real_info).unwrap();
        let _ = xtables::parse(Family::V4, &info, &mutate(&entries, &entry_changes));
        let _ = xtables::parse(Family::V6, &info, &mutate(&entries, &entry_changes));
        let _ = xtables::parse(Family::V4, &info, &random);
        // A damaged info with the real entries: its sizes and hook offsets are believed, and
        // must never send the reader past the blob.
        if let Ok(bad) = xtables::parse_info(&mutate(&real_info, &info_changes)) {
            let _ = xtables::parse(Family::V4, &bad, &entries);
        }
    }

    #[test]
    fn the_nftables_decoder_answers_any_datagram(
        random in prop::collection::vec(any::<u8>(), 0..256),
        changes in prop::collection::vec(mutation(), 1..6),
        which in any::<prop::sample::Index>(),
    ) {
        let _ = nft_decode::deserialize(&random);
        // Netlink framing as the IPVS replies have it, with other payloads.
        let datagrams = ipvs_datagrams();
        let real = &datagrams[which.index(datagrams.len())];
        let _ = nft_decode::deserialize(&mutate(real, &changes));
    }

    #[test]
    fn the_ipvs_codec_answers_any_datagram(
        random in prop::collection::vec(any::<u8>(), 0..256),
        changes in prop::collection::vec(mutation(), 1..6),
        which in any::<prop::sample::Index>(),
    ) {
        let _ = ipvs::decode_datagram(&random);
        let _ = ipvs::requested_server(&random);
        let datagrams = ipvs_datagrams();
        let damaged = mutate(&datagrams[which.index(datagrams.len())], &changes);
        let _ = ipvs::decode_datagram(&damaged);
        let _ = ipvs::requested_server(&damaged);
    }
}
