//! Shared helpers for the shim's tests: a snapshot of the test kit's zone, a running shim
//! on loopback, and a small client built on hickory-proto's message encoder and decoder.

// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

use std::{collections::BTreeMap, time::SystemTime};

use hickory_proto::{op::Message, rr::RecordType};
use lifeline_dns::{
    AddressSet, Cname, DnsConfig, GeoPrefix, NameRecords, Shim, ShimHandle, Srv, SrvSet, Target,
    TxtSet, ZoneSnapshot,
};
pub use lifeline_testkit::fixtures::{ZONE, zone_config};

/// A runtime for the synchronous tests: two workers, timers and I/O.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A loopback-only config with ephemeral ports and the given data directory.
pub fn dns_config(data_dir: &std::path::Path) -> DnsConfig {
    DnsConfig {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp: vec!["127.0.0.1:0".parse().unwrap()],
        data_dir: data_dir.to_owned(),
        geo: vec![
            GeoPrefix {
                prefix: "10.1.0.0/16".parse().unwrap(),
                region: "eu-west".into(),
            },
            GeoPrefix {
                prefix: "10.2.0.0/16".parse().unwrap(),
                region: "us-east".into(),
            },
            GeoPrefix {
                prefix: "127.0.0.0/8".parse().unwrap(),
                region: "us-east".into(),
            },
        ],
        ..DnsConfig::default()
    }
}

pub fn target(addr: &str, cluster: &str, region: &str, weight: u32) -> Target {
    Target {
        address: addr.parse().unwrap(),
        cluster: cluster.into(),
        region: region.into(),
        weight,
        share: None,
    }
}

pub fn address(ttl: u32, targets: Vec<Target>) -> NameRecords {
    NameRecords {
        address: Some(AddressSet {
            ttl,
            targets,
            max_answers: None,
            geo: false,
            standby: Vec::new(),
        }),
        ..NameRecords::default()
    }
}

/// The zone most tests use.
pub fn snapshot(revision: u64) -> ZoneSnapshot {
    let mut names = BTreeMap::new();
    names.insert(
        "www".to_owned(),
        address(60, vec![target("192.0.2.1", "c1", "eu-west", 1)]),
    );
    names.insert(
        "dual".to_owned(),
        address(
            60,
            vec![
                target("192.0.2.10", "c1", "eu-west", 1),
                target("2001:db8::10", "c1", "eu-west", 1),
            ],
        ),
    );
    names.insert(
        "rr".to_owned(),
        address(
            30,
            vec![
                target("192.0.2.21", "c1", "eu-west", 1),
                target("192.0.2.22", "c2", "us-east", 1),
                target("192.0.2.23", "c3", "ap-south", 1),
            ],
        ),
    );
    names.insert(
        "weighted".to_owned(),
        address(
            30,
            vec![
                target("192.0.2.31", "c1", "eu-west", 3),
                target("192.0.2.32", "c2", "us-east", 1),
            ],
        ),
    );
    let mut geo = address(
        30,
        vec![
            target("192.0.2.41", "c1", "eu-west", 1),
            target("192.0.2.42", "c2", "us-east", 1),
            target("192.0.2.43", "c3", "ap-south", 1),
        ],
    );
    if let Some(a) = geo.address.as_mut() {
        a.geo = true;
        a.max_answers = Some(1);
    }
    names.insert("geo".to_owned(), geo);
    // Forty addresses do not fit in 512 bytes (16 bytes each + header).
    let big: Vec<Target> = (1..=40)
        .map(|i| target(&format!("198.51.100.{i}"), "c1", "eu-west", 1))
        .collect();
    names.insert("big".to_owned(), address(60, big));
    names.insert(
        "_http._tcp.svc".to_owned(),
        NameRecords {
            srv: Some(SrvSet {
                ttl: 60,
                records: vec![Srv {
                    priority: 10,
                    weight: 5,
                    port: 8080,
                    target: "www.global.example.com".into(),
                }],
            }),
            ..NameRecords::default()
        },
    );
    names.insert(
        "info".to_owned(),
        NameRecords {
            txt: Some(TxtSet {
                ttl: 60,
                records: vec!["v=lifeline1".into()],
            }),
            ..NameRecords::default()
        },
    );
    names.insert(
        "alias".to_owned(),
        NameRecords {
            cname: Some(Cname {
                ttl: 60,
                target: "www.global.example.com.".into(),
            }),
            ..NameRecords::default()
        },
    );
    names.insert(
        "deep.under.ent".to_owned(),
        address(60, vec![target("192.0.2.50", "c1", "eu-west", 1)]),
    );
    ZoneSnapshot {
        format: 1,
        zone: ZONE.into(),
        revision,
        decided_at: SystemTime::now(),
        names,
    }
}

/// A shim with `dns` (its data directory replaced by a fresh one, returned too), with
/// `snapshot` applied when given.
pub async fn start_with(
    dns: DnsConfig,
    snapshot: Option<ZoneSnapshot>,
) -> (ShimHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsConfig {
        data_dir: dir.path().to_owned(),
        ..dns
    };
    let shim = Shim::start(&dns, &[zone_config()]).await.unwrap();
    if let Some(s) = snapshot {
        shim.apply(lifeline_dns::Update::Replace(s)).unwrap();
    }
    (shim, dir)
}

/// [`start_with`] the loopback configuration of [`dns_config`].
pub async fn start_serving(snapshot: Option<ZoneSnapshot>) -> (ShimHandle, tempfile::TempDir) {
    start_with(dns_config(std::path::Path::new("")), snapshot).await
}

/// A shim serving the zone most tests use.
pub async fn start() -> (ShimHandle, tempfile::TempDir) {
    start_serving(Some(snapshot(1))).await
}

pub use lifeline_testkit::dns::{
    Ask, addresses, authority_soa_serial, message, raw_tcp, raw_udp, raw_udp_from,
};

/// One query to the shim's first UDP socket.
pub fn udp(shim: &ShimHandle, name: &str, rtype: RecordType, ask: &Ask) -> Message {
    lifeline_testkit::dns::udp(shim.udp_addrs()[0], name, rtype, ask)
}

/// One query to the shim's first TCP socket.
pub fn tcp(shim: &ShimHandle, name: &str, rtype: RecordType, ask: &Ask) -> Message {
    lifeline_testkit::dns::tcp(shim.tcp_addrs()[0], name, rtype, ask)
}

/// [`udp`] without EDNS, with id 0.
pub fn plain_udp(shim: &ShimHandle, name: &str, rtype: RecordType) -> Message {
    udp(shim, name, rtype, &Ask::default())
}

/// [`tcp`] without EDNS, with id 0.
pub fn plain_tcp(shim: &ShimHandle, name: &str, rtype: RecordType) -> Message {
    tcp(shim, name, rtype, &Ask::default())
}
