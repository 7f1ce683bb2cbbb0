//! `lifeline dns` with 100,000 names in a 256 MiB memory cgroup (the `dns` container's
//! limit in `deploy/base`): the first load from `dns.sourceDir` fits, and 64
//! secondaries that stall mid-transfer cannot take it over the limit while UDP goes on
//! being answered.
//!
//! Memory figures are printed; what is asserted is the cgroup's limit (no OOM kill).

mod common;

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use common::spawn;
use lifeline_dns::{AddressSet, NameRecords, Target, ZoneSnapshot};
use lifeline_testkit::{
    cgroup::MemoryCage,
    dns::{Answer, answer_a},
    fixtures::zone_line,
    free_addr,
};

const ZONE: &str = "mem.lifeline.test";
const NAMES: usize = 100_000;
const LIMIT: u64 = 256 << 20;

/// The zone with every name answered by `cluster`.
fn zone(revision: u64, cluster: u8) -> Vec<u8> {
    let mut s = ZoneSnapshot::empty(ZONE, revision, SystemTime::now());
    for i in 0..NAMES {
        let address = IpAddr::from([10, (i >> 8) as u8, i as u8, 1 + cluster]);
        s.names.insert(
            format!("svc-{i}"),
            NameRecords {
                address: Some(AddressSet {
                    ttl: 30,
                    targets: vec![Target {
                        address,
                        cluster: format!("c{cluster}"),
                        region: "eu".into(),
                        weight: 1000,
                        share: None,
                    }],
                    max_answers: None,
                    geo: false,
                    standby: Vec::new(),
                }),
                ..NameRecords::default()
            },
        );
    }
    serde_json::to_vec(&s).unwrap()
}

/// Writes a zone file the way `lifeline run` does: whole, then renamed into place.
fn export(dir: &Path, bytes: &[u8]) {
    let tmp = dir.join(".zone.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{ZONE}.json"))).unwrap();
}

/// Resident memory of `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Waits until the last name answers `want`, for at most `limit`.
fn await_last(dns: SocketAddr, want: IpAddr, limit: Duration) -> Duration {
    let start = Instant::now();
    let name = format!("svc-{}.{ZONE}", NAMES - 1);
    loop {
        if let Answer::Addresses(a) = answer_a(dns, &name)
            && a == [want]
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{name} never answered {want} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A secondary that asks for the whole zone and then stops reading.
fn stalled_axfr(dns: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect_timeout(&dns, Duration::from_secs(5)).ok()?;
    let mut m = hickory_proto::op::Message::query();
    m.metadata.id = 7;
    m.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii(format!("{ZONE}.")).unwrap(),
        hickory_proto::rr::RecordType::AXFR,
    ));
    let bytes = m.to_vec().unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    s.write_all(&framed).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut first = [0u8; 2];
    s.read_exact(&mut first).ok()?;
    Some(s)
}

#[test]
fn a_dns_server_of_100000_names_loads_and_outlasts_64_stalled_transfers_within_256_mib() {
    let cage = match MemoryCage::new(LIMIT) {
        Ok(cage) => cage,
        Err(why) => {
            lifeline_testkit::skipped(format!("no memory cgroup: {why}"));
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let export_dir = dir.path().join("export");
    std::fs::create_dir(&export_dir).unwrap();
    let dns = free_addr();
    let config = dir.path().join("lifeline.yaml");
    let zone_line = zone_line(ZONE).replace(
        "nameservers: [ns1.mem.lifeline.test]}",
        "nameservers: [ns1.mem.lifeline.test], transfer: {allow: [\"127.0.0.0/8\"]}}",
    );
    std::fs::write(
        &config,
        format!(
            "zones:\n{zone_line}dns: {{udp: [\"{dns}\"], tcp: [\"{dns}\"], dataDir: {d}/snapshots, sourceDir: {d}/export}}\n",
            d = dir.path().display(),
        ),
    )
    .unwrap();

    // Started empty and moved into the cgroup before it reads anything.
    let mut server = spawn(&["dns"], &config);
    cage.add(server.pid()).unwrap();
    export(&export_dir, &zone(2, 0));
    let first = IpAddr::from([10, ((NAMES - 1) >> 8) as u8, (NAMES - 1) as u8, 1]);
    let took = await_last(dns, first, Duration::from_secs(180));
    let loaded = rss_mib(server.pid());
    println!("first load from sourceDir: answered after {took:?}, {loaded:.0} MiB");

    // Queries from another thread the whole time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut good, mut bad) = (0usize, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match answer_a(dns, &format!("svc-7.{ZONE}")) {
                    Answer::Addresses(a) if a.len() == 1 => good += 1,
                    _ => bad += 1,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (good, bad)
        })
    };

    // 64 secondaries from one /24 ask for the zone and stop reading.
    let held: Vec<TcpStream> = (0..64).filter_map(|_| stalled_axfr(dns)).collect();
    std::thread::sleep(Duration::from_secs(2));
    let holding = rss_mib(server.pid());
    println!(
        "64 stalled transfers ({} got a first message): {holding:.0} MiB",
        held.len()
    );
    assert!(server.exited().is_none(), "the DNS server died");
    drop(held);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (good, bad) = sampler.join().unwrap();
    println!("UDP answered {good} times, {bad} without one address");

    assert!(server.exited().is_none(), "the DNS server died");
    assert_eq!(
        cage.oom_kills().unwrap_or(0),
        0,
        "the cgroup counts an OOM kill"
    );
    assert_eq!(bad, 0, "every query was answered");
    assert!(good > 0);
    drop(server);
}
