//! Shared helpers for the shim's tests: a zone, a snapshot, a running shim on loopback,
//! and a small client built on hickory-proto's message encoder and decoder.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, SystemTime},
};

use hickory_proto::{
    op::{Edns, Message, Query},
    rr::{Name, RData, RecordType, rdata::opt::ClientSubnet},
};
use lifeline_dns::{
    AddressSet, Cname, DnsConfig, GeoPrefix, NameRecords, Shim, ShimHandle, Srv, SrvSet, Target,
    TxtSet, ZoneConfig, ZoneSnapshot,
};

pub const ZONE: &str = "global.example.com";

pub fn zone_config() -> ZoneConfig {
    serde_json::from_value(serde_json::json!({
        "origin": ZONE,
        "primaryNs": "ns1.global.example.com",
        "hostmaster": "hostmaster.example.com",
        "nameservers": ["ns1.global.example.com", "ns2.global.example.com"],
    }))
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
    }
}

pub fn address(ttl: u32, targets: Vec<Target>) -> NameRecords {
    NameRecords {
        address: Some(AddressSet {
            ttl,
            targets,
            max_answers: None,
            geo: false,
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

/// A shim started with `snapshot` applied, on loopback.
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

pub async fn start() -> (ShimHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    start_with(dns_config(dir.path()), Some(snapshot(1))).await
}

/// Options of one test query.
#[derive(Clone, Debug, Default)]
pub struct Ask {
    pub payload: Option<u16>,
    pub ecs: Option<(IpAddr, u8)>,
    pub id: u16,
}

pub fn message(name: &str, rtype: RecordType, ask: &Ask) -> Message {
    let mut m = Message::query();
    m.metadata.id = ask.id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if ask.payload.is_some() || ask.ecs.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(ask.payload.unwrap_or(1232));
        if let Some((ip, prefix)) = ask.ecs {
            edns.options_mut()
                .insert(hickory_proto::rr::rdata::opt::EdnsOption::Subnet(
                    ClientSubnet::new(ip, prefix, 0),
                ));
        }
        m.set_edns(edns);
    }
    m
}

/// Sends raw bytes over UDP and returns the raw reply, or None after a timeout.
pub fn raw_udp(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    raw_udp_from("127.0.0.1", server, bytes)
}

pub fn raw_udp_from(local: &str, server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind((local, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    sock.send_to(bytes, server).unwrap();
    let mut buf = vec![0u8; 65_536];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

pub fn raw_tcp(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).unwrap();
    buf
}

pub fn udp(shim: &ShimHandle, name: &str, rtype: RecordType, ask: &Ask) -> Message {
    let m = message(name, rtype, ask);
    let reply = raw_udp(shim.udp_addrs()[0], &m.to_vec().unwrap()).expect("no UDP reply");
    Message::from_vec(&reply).unwrap()
}

pub fn tcp(shim: &ShimHandle, name: &str, rtype: RecordType, ask: &Ask) -> Message {
    let m = message(name, rtype, ask);
    let reply = raw_tcp(shim.tcp_addrs()[0], &m.to_vec().unwrap());
    Message::from_vec(&reply).unwrap()
}

/// Addresses in the answer section, in order.
pub fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// Serial of the SOA in the authority section, if any.
pub fn authority_soa_serial(m: &Message) -> Option<u32> {
    m.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    })
}
