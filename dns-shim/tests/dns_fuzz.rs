//! Fuzzing the packet handler: whatever bytes arrive, the engine never panics and
//! either answers with a well-formed response or drops the packet for a stated reason.
//!
//! 100k cases per property in a normal run; set `LIFELINE_FUZZ_CASES` for longer runs.

mod common;

use std::{net::SocketAddr, sync::Arc};

use common::*;
use hickory_proto::{op::Message, rr::RecordType};
use lifeline_dns::{
    Engine, Transport,
    zone::{CompileOptions, Compiled, GeoTable, compile_zone},
};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("LIFELINE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn engine() -> Engine {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns_config(dir.path());
    let geo = Arc::new(GeoTable::new(&dns.geo));
    let zone = compile_zone(
        &zone_config(),
        &snapshot(1),
        &geo,
        CompileOptions::default(),
    );
    Engine::new(
        Compiled {
            zones: vec![Arc::new(zone)],
            geo,
            stale: false,
            pending: vec![],
        },
        None,
        1232,
    )
}

/// Valid queries to mutate: hits, misses, every type we serve, with and without EDNS.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for name in [
        "www.global.example.com.",
        "Big.Global.Example.Com.",
        "alias.global.example.com.",
        "nope.global.example.com.",
        "under.ent.global.example.com.",
        "example.org.",
        "geo.global.example.com.",
    ] {
        for t in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::ANY,
            RecordType::SRV,
        ] {
            for ask in [
                Ask::default(),
                Ask {
                    payload: Some(1232),
                    ..Ask::default()
                },
                Ask {
                    ecs: Some(("10.1.0.0".parse().unwrap(), 16)),
                    ..Ask::default()
                },
            ] {
                out.push(message(name, t, &ask).to_vec().unwrap());
            }
        }
    }
    out
}

/// The property: no panic; a reply is a well-formed response to this request; no reply
/// only for packets too short to carry a header or that are themselves responses.
fn check(engine: &Engine, raw: &[u8], tcp: bool) -> Result<(), TestCaseError> {
    let src: SocketAddr = "10.1.2.3:5300".parse().unwrap();
    let transport = if tcp { Transport::Tcp } else { Transport::Udp };
    let mut out = Vec::new();
    let answered = engine.respond(raw, src, transport, &mut out);
    if !answered {
        prop_assert!(
            raw.len() < 12 || raw[2] & 0x80 != 0,
            "dropped a packet that deserved an answer: {raw:02x?}"
        );
        return Ok(());
    }
    prop_assert!(out.len() >= 12);
    prop_assert_eq!(&out[..2], &raw[..2], "id echoed");
    prop_assert!(out[2] & 0x80 != 0, "QR set");
    prop_assert!(out[3] & 0x80 == 0, "RA clear");
    if !tcp {
        prop_assert!(out.len() <= 1232, "UDP reply of {} bytes", out.len());
    }
    let parsed = Message::from_vec(&out);
    prop_assert!(parsed.is_ok(), "malformed reply {out:02x?} to {raw:02x?}");
    Ok(())
}

#[test]
fn random_bytes_never_panic_and_are_answered_or_dropped() {
    let engine = engine();
    let config = ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(raw in proptest::collection::vec(any::<u8>(), 0..600), tcp in any::<bool>())| {
        check(&engine, &raw, tcp)?;
    });
}

#[test]
fn mutated_queries_never_panic_and_are_answered_or_dropped() {
    let engine = engine();
    let seeds = seeds();
    let n = seeds.len();
    let config = ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    // Mutations: overwrite bytes, cut the tail, or append junk.
    let strategy = (
        0..n,
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        proptest::option::of(any::<prop::sample::Index>()),
        proptest::collection::vec(any::<u8>(), 0..8),
        any::<bool>(),
    );
    proptest!(config, |((seed, edits, cut, tail, tcp) in strategy)| {
        let mut raw = seeds[seed].clone();
        for (at, byte) in edits {
            let i = at.index(raw.len());
            raw[i] = byte;
        }
        if let Some(c) = cut {
            raw.truncate(c.index(raw.len() + 1));
        }
        raw.extend_from_slice(&tail);
        check(&engine, &raw, tcp)?;
    });
}

#[test]
fn pathological_packets_get_the_right_rcode() {
    let engine = engine();
    let src: SocketAddr = "127.0.0.1:5300".parse().unwrap();
    let mut out = Vec::new();
    let header = |flags: u16, qd: u16, ar: u16| {
        let mut h = vec![0xAB, 0xCD];
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&qd.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]);
        h.extend_from_slice(&ar.to_be_bytes());
        h
    };
    let rcode = |out: &[u8]| out[3] & 0x0F;
    // Pointer loop between two names.
    let mut looped = header(0, 1, 0);
    looped.extend_from_slice(b"\x01a\xC0\x0C\x00\x01\x00\x01");
    assert!(engine.respond(&looped, src, Transport::Udp, &mut out));
    assert_eq!(rcode(&out), 1, "FORMERR");
    // Forward pointer past the end.
    let mut forward = header(0, 1, 0);
    forward.extend_from_slice(b"\xC0\xFF\x00\x01\x00\x01");
    assert!(engine.respond(&forward, src, Transport::Udp, &mut out));
    assert_eq!(rcode(&out), 1);
    // A label longer than 63 bytes.
    let mut long = header(0, 1, 0);
    long.push(64);
    long.extend_from_slice(&[b'a'; 64]);
    long.extend_from_slice(b"\x00\x00\x01\x00\x01");
    assert!(engine.respond(&long, src, Transport::Udp, &mut out));
    assert_eq!(rcode(&out), 1);
    // Two OPT records: FORMERR (RFC 6891 §6.1.1).
    let mut two_opt = header(0, 1, 2);
    two_opt.extend_from_slice(b"\x03www\x06global\x07example\x03com\x00\x00\x01\x00\x01");
    let opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00";
    two_opt.extend_from_slice(opt);
    two_opt.extend_from_slice(opt);
    assert!(engine.respond(&two_opt, src, Transport::Udp, &mut out));
    assert_eq!(rcode(&out), 1);
    // An oversized datagram full of zeros claiming one question: answered, not crashed.
    let mut huge = header(0, 1, 0);
    huge.resize(65_000, 0);
    assert!(engine.respond(&huge, src, Transport::Udp, &mut out));
    // OPT as the question type: FORMERR.
    let mut qopt = header(0, 1, 0);
    qopt.extend_from_slice(b"\x03www\x06global\x07example\x03com\x00\x00\x29\x00\x01");
    assert!(engine.respond(&qopt, src, Transport::Udp, &mut out));
    assert_eq!(rcode(&out), 1);
}
