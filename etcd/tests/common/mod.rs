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

/// Runs `ops` and the records commit marker in one transaction, as a leader's publish
/// does; returns its revision.
pub async fn write_committed(
    client: &mut etcd_client::Client,
    prefix: &str,
    mut ops: Vec<etcd_client::TxnOp>,
) -> i64 {
    let marker = lifeline_etcd::source::encode_value(
        &lifeline_etcd::source::RecordsCommit {
            zone: ZONE.into(),
            upserts: ops.len(),
            deletes: 0,
        },
        None,
    )
    .unwrap();
    ops.push(etcd_client::TxnOp::put(
        lifeline_etcd::source::records_commit_key(prefix),
        marker,
        None,
    ));
    let resp = lifeline_testkit::within(
        std::time::Duration::from_secs(5),
        client.txn(etcd_client::Txn::new().and_then(ops)),
    )
    .await
    .unwrap();
    resp.header().unwrap().revision()
}
