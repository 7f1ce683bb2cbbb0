//! A real DNS shim on loopback for the controller's etcd tests (everything else they
//! share comes from the test kit).

#![allow(dead_code)]

use lifeline_dns::{DnsConfig, Shim, ShimHandle, ZoneConfig};

pub const ZONE: &str = "global.example.com";

pub fn zone_config() -> ZoneConfig {
    serde_json::from_value(serde_json::json!({
        "origin": ZONE,
        "primaryNs": "ns1.global.example.com",
        "hostmaster": "hostmaster.example.com",
        "nameservers": ["ns1.global.example.com"],
    }))
    .unwrap()
}

/// A real shim on a loopback address of its own, persisting into `data_dir`.
pub async fn start_shim(data_dir: &std::path::Path) -> ShimHandle {
    let ip = lifeline_testkit::loopback();
    let dns = DnsConfig {
        udp: vec![std::net::SocketAddr::new(ip, 0)],
        tcp: vec![std::net::SocketAddr::new(ip, 0)],
        data_dir: data_dir.to_owned(),
        ..DnsConfig::default()
    };
    Shim::start(&dns, &[zone_config()]).await.unwrap()
}
