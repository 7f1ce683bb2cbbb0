//! The zone compiler never panics, whatever a snapshot holds: names of any spelling,
//! thousands of targets, any weights and `maxAnswers` (zero included), CNAMEs to
//! anywhere, SRV and TXT sets of any size. Every name it serves is answered with a
//! well-formed message over UDP (within the client's size, or TC) and over TCP (within
//! what a length prefix can frame), from both the full and the lazy (indexed) build.
//!
//! 2,000 cases in a normal run; set `LIFELINE_PROPTEST_CASES` for more.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::SystemTime,
};

use common::*;
use hickory_proto::{op::Message, rr::RecordType};
use lifeline_dns::{
    AddressSet, Cname, Engine, NameRecords, Srv, SrvSet, Target, Transport, TxtSet, ZoneSnapshot,
    zone::{CompileOptions, Compiled, GeoTable, compile_zone, index_zone},
};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("LIFELINE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn label() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        "[a-z0-9]{1,8}",
        "[A-Za-z0-9_-]{0,70}",
        Just("*".to_owned()),
        Just(String::new()),
    ]
}

/// Keys as a source might write them: relative, absolute, with or without the zone,
/// upper case, too long, empty labels.
fn key() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        4 => prop::collection::vec(label(), 1..4).prop_map(|l| l.join(".")),
        1 => label().prop_map(|l| format!("{l}.{ZONE}.")),
        1 => label().prop_map(|l| format!("{l}.elsewhere.org.")),
        1 => Just("@".to_owned()),
        1 => Just(String::new()),
        1 => (1usize..300).prop_map(|n| "a".repeat(n)),
    ]
}

fn address() -> impl Strategy<Value = IpAddr> + Clone {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
    ]
}

fn targets() -> impl Strategy<Value = Vec<Target>> {
    let one = (address(), any::<u32>(), 0u8..3).prop_map(|(address, weight, r)| Target {
        address,
        cluster: format!("c{r}"),
        region: ["eu-west", "us-east", "nowhere"][usize::from(r)].to_owned(),
        weight: weight % 4 * (weight >> 30).max(1),
        share: None,
    });
    prop_oneof![
        20 => prop::collection::vec(one.clone(), 0..20),
        1 => prop::collection::vec(one, 500..4500),
    ]
}

fn records() -> impl Strategy<Value = NameRecords> {
    let ttl = prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()];
    let address = (
        ttl.clone(),
        targets(),
        prop::option::of(any::<u16>()),
        any::<bool>(),
    )
        .prop_map(|(ttl, targets, max_answers, geo)| AddressSet {
            ttl,
            targets,
            max_answers,
            geo,
            standby: Vec::new(),
        });
    let target_name = prop_oneof![
        key().prop_map(|k| format!("{k}.{ZONE}.")),
        key(),
        Just(".".to_owned()),
    ];
    let cname = (ttl.clone(), target_name.clone()).prop_map(|(ttl, target)| Cname { ttl, target });
    let one_srv = (any::<u16>(), any::<u16>(), any::<u16>(), target_name).prop_map(
        |(priority, weight, port, target)| Srv {
            priority,
            weight,
            port,
            target,
        },
    );
    let srv = (
        ttl.clone(),
        prop_oneof![
            20 => prop::collection::vec(one_srv.clone(), 0..5),
            1 => prop::collection::vec(one_srv, 2000..3000),
        ],
    )
        .prop_map(|(ttl, records)| SrvSet { ttl, records });
    let txt = (
        ttl,
        prop::collection::vec(
            prop_oneof!["[ -~]{0,40}", (0usize..70_000).prop_map(|n| "x".repeat(n))],
            0..4,
        ),
    )
        .prop_map(|(ttl, records)| TxtSet { ttl, records });
    (
        prop::option::of(address),
        prop::option::weighted(0.2, cname),
        prop::option::weighted(0.2, srv),
        prop::option::weighted(0.2, txt),
    )
        .prop_map(|(address, cname, srv, txt)| NameRecords {
            address,
            cname,
            srv,
            txt,
        })
}

fn snapshot_of(names: Vec<(String, NameRecords)>, revision: u64) -> ZoneSnapshot {
    ZoneSnapshot {
        format: lifeline_model::FORMAT_VERSION,
        zone: ZONE.to_owned(),
        revision,
        decided_at: SystemTime::UNIX_EPOCH,
        names: names.into_iter().collect(),
    }
}

/// Asks for every type of every name, over UDP at three sizes and over TCP.
fn ask_everything(engine: &Engine, keys: &[String]) -> Result<(), TestCaseError> {
    let src: SocketAddr = "10.1.2.3:5300".parse().unwrap();
    let mut out = Vec::new();
    for key in keys {
        let name = if key.ends_with('.') {
            key.clone()
        } else if key.is_empty() || key == "@" {
            format!("{ZONE}.")
        } else {
            format!("{key}.{ZONE}.")
        };
        for rtype in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::SRV,
            RecordType::TXT,
            RecordType::ANY,
        ] {
            for (payload, transport) in [
                (None, Transport::Udp),
                (Some(512), Transport::Udp),
                (Some(1232), Transport::Udp),
                (Some(1232), Transport::Tcp),
            ] {
                let ask = Ask {
                    payload,
                    ..Ask::default()
                };
                let Ok(query) = std::panic::catch_unwind(|| message(&name, rtype, &ask).to_vec())
                else {
                    continue; // a name the client library itself cannot encode
                };
                let Ok(query) = query else { continue };
                prop_assert!(
                    engine.respond(&query, src, transport, &mut out),
                    "{name} {rtype:?} dropped"
                );
                match transport {
                    Transport::Udp => {
                        let limit = usize::from(payload.unwrap_or(512));
                        prop_assert!(
                            out.len() <= limit,
                            "{name} {rtype:?}: {} bytes over UDP {limit}",
                            out.len()
                        );
                    }
                    Transport::Tcp => {
                        prop_assert!(out.len() <= 65_535, "{name}: {} bytes", out.len())
                    }
                }
                let parsed = Message::from_vec(&out);
                prop_assert!(
                    parsed.is_ok(),
                    "{name} {rtype:?}: malformed reply ({} bytes): {:?}",
                    out.len(),
                    parsed.err()
                );
            }
        }
    }
    Ok(())
}

fn engine_for(table: lifeline_dns::zone::ZoneTable, geo: Arc<GeoTable>) -> Engine {
    Engine::new(
        Compiled {
            zones: vec![Arc::new(table)],
            geo,
            stale: false,
            pending: vec![],
        },
        None,
        1232,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_snapshot_compiles_and_every_served_name_answers_well_formed(
        names in prop::collection::vec((key(), records()), 0..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let dns = dns_config(dir.path());
        let geo = Arc::new(GeoTable::new(&dns.geo));
        let keys: Vec<String> = names.iter().map(|(k, _)| k.clone()).collect();
        let snapshot = snapshot_of(names, 7);
        let full = compile_zone(&zone_config(), &snapshot, &geo, CompileOptions { ttl_cap: Some(5), ..CompileOptions::default() });
        ask_everything(&engine_for(full, geo.clone()), &keys)?;
        let lazy = index_zone(&zone_config(), Arc::new(snapshot), geo.clone(), CompileOptions::default());
        ask_everything(&engine_for(lazy, geo), &keys)?;
    }
}
