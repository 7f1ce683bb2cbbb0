//! A real DNS shim on loopback for the etcd adapter's tests, a record, and a publish
//! written by hand (everything else they share comes from the test kit).

#![allow(dead_code)]

use std::{net::SocketAddr, path::Path, time::Duration};

use lifeline_dns::{DnsConfig, NameRecords, Shim, ShimHandle, TxtSet};
use lifeline_testkit::fixtures::{ZONE, zone_config};

/// A shim's configuration: UDP and TCP on a loopback address of its own (ephemeral
/// ports), persisting into `data_dir`.
pub fn shim_config(data_dir: &Path) -> DnsConfig {
    let ip = lifeline_testkit::loopback();
    DnsConfig {
        udp: vec![SocketAddr::new(ip, 0)],
        tcp: vec![SocketAddr::new(ip, 0)],
        data_dir: data_dir.to_owned(),
        ..DnsConfig::default()
    }
}

/// A real shim serving the test zone, persisting into `data_dir`.
pub async fn start_shim(data_dir: &Path) -> ShimHandle {
    Shim::start(&shim_config(data_dir), &[zone_config()])
        .await
        .unwrap()
}

/// A name's records: one TXT record holding `text`, TTL 30 s.
pub fn txt(text: &str) -> NameRecords {
    NameRecords {
        txt: Some(TxtSet {
            ttl: 30,
            records: vec![text.to_owned()],
        }),
        ..NameRecords::default()
    }
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
        Duration::from_secs(5),
        client.txn(etcd_client::Txn::new().and_then(ops)),
    )
    .await
    .unwrap();
    resp.header().unwrap().revision()
}
