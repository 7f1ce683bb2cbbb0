//! A Lifeline zone is delegation-ready: zonemaster-cli (Debian) tests it undelegated,
//! with its in-zone name server given on the command line as the parent's glue would,
//! and finds the name server's address in the zone as the glue says, no NXDOMAIN for
//! it, the same name server at parent and child, and a resolvable SOA MNAME.
//!
//! zonemaster-cli always asks port 53, so the zone listens on port 53 of a loopback
//! address of the test's own (root is needed to bind it).

use std::{
    net::{SocketAddr, UdpSocket},
    path::Path,
    process::Command,
    time::Duration,
};

mod common;

use common::spawn_run;
use lifeline_testkit::{dns::await_exactly, fixtures::static_cluster, free_addr, loopback};

const ZONE: &str = "deleg.lifeline.test";

/// Zonemaster test cases that report a broken delegation to in-zone name servers (the
/// others it prints here are about loopback addresses and having one server only).
const DELEGATION_FAULTS: [&str; 4] = ["CONSISTENCY05", "DELEGATION05", "DELEGATION07", "ZONE01"];

fn write_files(dir: &Path, dns: SocketAddr, admin: SocketAddr) {
    std::fs::write(
        dir.join("lifeline.yaml"),
        format!(
            "zones:\n  - origin: {ZONE}\n    primaryNs: ns1.{ZONE}\n    hostmaster: hostmaster.{ZONE}\n    nameservers: [ns1.{ZONE}]\n    nameserverAddresses: {{ns1.{ZONE}: [\"{ip}\"]}}\n\
dns: {{udp: [\"{dns}\"], tcp: [\"{dns}\"], dataDir: {d}/snapshots}}\n\
admin: {{listen: \"{admin}\"}}\n\
store: {{type: embedded, dataDir: {d}/store}}\n\
policySource: {{type: files, paths: [docs.yaml]}}\n",
            ip = dns.ip(),
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("docs.yaml"),
        format!(
            "{}---\n\
apiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: web, namespace: shop}}\nspec: {{hostname: web.{ZONE}, targets: [{{cluster: a}}]}}\n",
            static_cluster("a", "r", "192.0.2.10"),
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zonemaster_finds_the_zone_ready_for_delegation_to_its_own_name_server() {
    if Command::new("zonemaster-cli")
        .arg("--version")
        .output()
        .is_err()
    {
        lifeline_testkit::skipped(
            "zonemaster-cli is not installed (Debian package zonemaster-cli)",
        );
        return;
    }
    let dns = SocketAddr::new(loopback(), 53);
    if UdpSocket::bind(dns).is_err() {
        lifeline_testkit::skipped(format!("cannot bind {dns} (port 53 needs root)"));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), dns, free_addr());
    let _lifeline = spawn_run(&dir.path().join("lifeline.yaml"), false);
    await_exactly(
        dns,
        &format!("ns1.{ZONE}"),
        dns.ip(),
        Duration::from_secs(15),
    )
    .await;

    let out = tokio::task::spawn_blocking(move || {
        Command::new("zonemaster-cli")
            .args(["--no-ipv6", "--level", "NOTICE", "--show-testcase"])
            .arg("--ns")
            .arg(format!("ns1.{ZONE}/{}", dns.ip()))
            .arg(ZONE)
            .output()
            .expect("run zonemaster-cli")
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        report.contains("DELEGATION01"),
        "zonemaster did not test the delegation: {report}"
    );
    let faults: Vec<&str> = report
        .lines()
        .filter(|l| DELEGATION_FAULTS.iter().any(|f| l.contains(f)))
        .collect();
    assert!(
        faults.is_empty(),
        "delegation faults: {faults:#?}\n{report}"
    );
}
