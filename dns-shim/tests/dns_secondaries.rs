//! Lifeline as a hidden primary for real secondaries: NSD, Knot and BIND from Debian's
//! packages each transfer the zone, are told of a failover by NOTIFY, take it as an
//! incremental transfer, answer the new address, and follow a restarted Lifeline
//! without a whole transfer: its journal still holds the difference.
//!
//! Each test prints how long the secondary took from the update being applied here to
//! answering the new address. That figure is reported, never asserted.

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use hickory_proto::rr::RecordType;
use lifeline_dns::{DnsConfig, Shim, ShimHandle, Update, ZoneConfig, ZonePatch};
use lifeline_testkit::{
    dns::{Answer, query_within, wait_for_answer},
    net::{free_port, loopback},
    process::{Process, owned},
    skip::skipped,
};

/// Longest wait for a secondary to start, transfer, or follow a change.
const LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Nsd,
    Knot,
    Bind,
}

impl Kind {
    fn program(self) -> &'static str {
        match self {
            Kind::Nsd => "/usr/sbin/nsd",
            Kind::Knot => "/usr/sbin/knotd",
            Kind::Bind => "/usr/sbin/named",
        }
    }

    /// Writes the secondary's configuration into `dir` and returns its command: it
    /// listens on `at`, transfers `ZONE` from `primary`, and takes NOTIFY from loopback.
    fn command(self, dir: &Path, at: SocketAddr, primary: SocketAddr) -> Command {
        let d = dir.display();
        let (ip, port) = (at.ip(), at.port());
        let (pip, pport) = (primary.ip(), primary.port());
        let conf = dir.join("secondary.conf");
        let text = match self {
            Kind::Nsd => format!(
                "server:\n  ip-address: {ip}@{port}\n  port: {port}\n  server-count: 1\n  \
                 username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  \
                 zonelistfile: \"{d}/zone.list\"\n  xfrdfile: \"{d}/xfrd.state\"\n  \
                 xfrdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  logfile: \"{d}/log\"\n  \
                 verbosity: 2\n  xfrd-reload-timeout: 0\n\
                 remote-control:\n  control-enable: no\n\
                 zone:\n  name: {ZONE}\n  zonefile: \"{d}/zone\"\n  \
                 request-xfr: {pip}@{pport} NOKEY\n  allow-notify: 127.0.0.0/8 NOKEY\n"
            ),
            Kind::Knot => format!(
                "server:\n  listen: {ip}@{port}\n  rundir: \"{d}\"\n\
                 database:\n  storage: \"{d}/db\"\n\
                 log:\n  - target: \"{d}/log\"\n    any: info\n\
                 remote:\n  - id: lifeline\n    address: {pip}@{pport}\n\
                 acl:\n  - id: notify-from-loopback\n    address: 127.0.0.0/8\n    action: notify\n\
                 zone:\n  - domain: {ZONE}\n    storage: \"{d}\"\n    file: zone\n    \
                 master: lifeline\n    acl: notify-from-loopback\n    zonefile-sync: -1\n    \
                 zonefile-load: none\n    journal-content: none\n"
            ),
            Kind::Bind => format!(
                "options {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  \
                 session-keyfile \"{d}/session.key\";\n  managed-keys-directory \"{d}\";\n  \
                 listen-on port {port} {{ {ip}; }};\n  listen-on-v6 {{ none; }};\n  \
                 recursion no;\n  dnssec-validation no;\n  notify no;\n  allow-query {{ any; }};\n}};\n\
                 controls {{ }};\n\
                 zone \"{ZONE}\" {{\n  type secondary;\n  primaries {{ {pip} port {pport}; }};\n  \
                 file \"{d}/zone\";\n  allow-notify {{ 127.0.0.0/8; }};\n}};\n"
            ),
        };
        std::fs::write(&conf, text).unwrap();
        let mut cmd = owned(Path::new(self.program()));
        match self {
            Kind::Nsd => cmd.args(["-d", "-c"]).arg(&conf),
            Kind::Knot => cmd.arg("-c").arg(&conf),
            Kind::Bind => cmd.args(["-g", "-c"]).arg(&conf),
        };
        let log = std::fs::File::create(dir.join("stderr")).unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        cmd
    }
}

fn zone(primary_allow: &str, notify: SocketAddr) -> ZoneConfig {
    let mut zone = serde_json::to_value(zone_config()).unwrap();
    zone["transfer"] =
        serde_json::json!({"allow": [primary_allow], "notify": [notify.to_string()]});
    serde_json::from_value(zone).unwrap()
}

fn start_primary(
    rt: &tokio::runtime::Runtime,
    data: &Path,
    at: SocketAddr,
    zone: &ZoneConfig,
) -> ShimHandle {
    let dns = DnsConfig {
        udp: vec![at],
        tcp: vec![at],
        ..dns_config(data)
    };
    rt.block_on(Shim::start(&dns, std::slice::from_ref(zone)))
        .unwrap()
}

/// A patch moving `www` to `address` at `revision`.
fn failover(revision: u64, address: &str) -> Update {
    let mut patch = ZonePatch {
        zone: ZONE.into(),
        revision,
        decided_at: std::time::SystemTime::now(),
        upsert: Default::default(),
        delete: Vec::new(),
    };
    patch.upsert.insert(
        "www".into(),
        common::address(60, vec![target(address, "c2", "us-east", 1)]),
    );
    Update::Patch(patch)
}

/// The zone's SOA as `server` answers it.
fn soa(server: SocketAddr) -> Option<hickory_proto::rr::rdata::SOA> {
    let m = lifeline_testkit::dns::udp(
        server,
        &format!("{ZONE}."),
        RecordType::SOA,
        &Default::default(),
    );
    m.answers.iter().find_map(|r| match &r.data {
        hickory_proto::rr::RData::SOA(soa) => Some(soa.clone()),
        _ => None,
    })
}

fn soa_serial(server: SocketAddr) -> Option<u32> {
    soa(server).map(|s| s.serial)
}

fn follows_lifeline(kind: Kind) {
    if !Path::new(kind.program()).exists() {
        skipped(format!(
            "{} is not installed (Debian package {kind:?})",
            kind.program()
        ));
        return;
    }
    let rt = rt();
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // BIND listens only on addresses an interface holds: 127.0.0.1 of the loopback
    // range. The others bind any address of it, so each gets one of its own.
    let (pip, sip) = match kind {
        Kind::Bind => (loopback(), IpAddr::from([127, 0, 0, 1])),
        _ => (loopback(), loopback()),
    };
    let primary = SocketAddr::new(pip, free_port(&[pip]));
    let secondary = SocketAddr::new(sip, free_port(&[sip]));
    let zone = zone("127.0.0.0/8", secondary);
    let www = format!("www.{ZONE}.");
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };

    let shim = start_primary(&rt, data.path(), primary, &zone);
    shim.apply(Update::Replace(snapshot(1))).unwrap();
    let _server = Process::spawn(kind.command(work.path(), secondary, primary));
    let (first, took) = wait_for_answer(secondary, &www, LIMIT, |ips| ips == [ip("192.0.2.1")]);
    println!("{kind:?}: first transfer answered {first:?} {took:?} after start");
    assert_eq!(soa_serial(secondary), served_serial(&shim));
    let geo = query_within(
        secondary,
        &format!("geo.{ZONE}."),
        RecordType::A,
        false,
        Duration::from_secs(2),
    );
    assert_eq!(
        geo,
        Answer::Addresses(vec![ip("192.0.2.41"), ip("192.0.2.42"), ip("192.0.2.43")]),
        "a secondary serves every address, with no geo choice or maxAnswers subset"
    );

    // A failover decided here reaches the secondary through NOTIFY and a transfer.
    let applied = Instant::now();
    shim.apply(failover(2, "192.0.2.2")).unwrap();
    let (_, _) = wait_for_answer(secondary, &www, LIMIT, |ips| ips == [ip("192.0.2.2")]);
    println!(
        "{kind:?}: failover answered by the secondary {:?} after it was applied here",
        applied.elapsed()
    );
    assert_eq!(soa_serial(secondary), served_serial(&shim));
    assert!(shim.engine().counters().notifies_acknowledged.get() >= 1);
    assert_eq!(
        shim.engine().counters().transfers_incremental.get(),
        1,
        "the failover went out as an incremental transfer"
    );

    // A restarted Lifeline tells the secondary its serial again; the secondary, already
    // current, transfers nothing until the next change.
    shim.shutdown();
    drop(shim);
    let shim = start_primary(&rt, data.path(), primary, &zone);
    let engine = shim.engine();
    let counters = engine.counters();
    let start = Instant::now();
    while counters.notifies_acknowledged.get() == 0 {
        assert!(
            start.elapsed() < LIMIT,
            "{kind:?} never acknowledged the restarted primary's NOTIFY"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    shim.apply(failover(3, "192.0.2.3")).unwrap();
    wait_for_answer(secondary, &www, LIMIT, |ips| ips == [ip("192.0.2.3")]);
    assert_eq!(
        (
            counters.transfers_full.get(),
            counters.transfers_incremental.get()
        ),
        (0, 1),
        "the restart transferred nothing; the change after it went out as a difference \
         from the journal"
    );
    assert_eq!(soa_serial(secondary), served_serial(&shim));

    // Break-glass at the primary: a drain applied here (no leader) moves the serial,
    // and the secondary stops answering the drained cluster.
    let rr = format!("rr.{ZONE}.");
    shim.set_overrides(vec![drain("c2")]);
    let (_, took) = wait_for_answer(secondary, &rr, LIMIT, |ips| {
        let mut ips = ips.to_vec();
        ips.sort();
        ips == [ip("192.0.2.21"), ip("192.0.2.23")]
    });
    println!(
        "{kind:?}: a drain at the primary answered by the secondary {took:?} after it was set"
    );
    assert_eq!(soa_serial(secondary), served_serial(&shim));

    // Zone settings change: a second name server and a shorter refresh reach the
    // secondary under a new serial.
    shim.shutdown();
    drop(shim);
    let mut changed = zone.clone();
    changed.refresh = 120;
    changed.retry = 60;
    changed.nameservers.push("ns3.example.net".into());
    let shim = start_primary(&rt, data.path(), primary, &changed);
    shim.set_overrides(vec![drain("c2")]);
    let start = Instant::now();
    while soa_refresh(secondary) != Some(120) {
        assert!(
            start.elapsed() < LIMIT,
            "{kind:?} never took the new SOA refresh"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "{kind:?}: new zone settings answered by the secondary {:?} after the restart",
        start.elapsed()
    );
    assert_eq!(soa_serial(secondary), served_serial(&shim));

    // The data volume is lost: the primary starts from nothing, a source hands it the
    // zone again at a revision far below what it had, with the drained cluster's
    // address moved. The serial comes from the clock, past what the secondary holds
    // (once the clock has passed the last serial: the time a pod takes to move).
    let held = served_serial(&shim).unwrap();
    shim.shutdown();
    drop(shim);
    for entry in std::fs::read_dir(data.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let start = Instant::now();
    while lifeline_dns::serial::stamp(std::time::SystemTime::now(), std::time::SystemTime::now())
        <= held
    {
        assert!(
            start.elapsed() < LIMIT,
            "the clock never passed serial {held}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let shim = start_primary(&rt, data.path(), primary, &changed);
    let mut lost = snapshot(1);
    lost.names.insert(
        "www".into(),
        common::address(60, vec![target("192.0.2.9", "c3", "ap-south", 1)]),
    );
    shim.apply(Update::Replace(lost)).unwrap();
    let (_, took) = wait_for_answer(secondary, &www, LIMIT, |ips| ips == [ip("192.0.2.9")]);
    println!(
        "{kind:?}: after a lost data directory the secondary answered the new address {took:?} later"
    );
    assert_eq!(soa_serial(secondary), served_serial(&shim));
}

/// The serial the primary answers with.
fn served_serial(shim: &ShimHandle) -> Option<u32> {
    shim.state().zones[0].serial
}

fn soa_refresh(server: SocketAddr) -> Option<u32> {
    soa(server).map(|s| s.refresh as u32)
}

/// A cluster-wide drain of `cluster` for an hour, as a replica reads it from its store.
fn drain(cluster: &str) -> lifeline_model::overrides::Override {
    let now = std::time::SystemTime::now();
    lifeline_model::overrides::Override {
        id: format!("drain-{cluster}"),
        cluster: cluster.into(),
        policy: None,
        action: lifeline_model::overrides::OverrideAction::Drain,
        created_at: now,
        expires_at: now + Duration::from_secs(3600),
        author: "oncall".into(),
        reason: "test".into(),
    }
}

#[test]
fn nsd_follows_lifeline_as_a_hidden_primary() {
    follows_lifeline(Kind::Nsd);
}

#[test]
fn knot_follows_lifeline_as_a_hidden_primary() {
    follows_lifeline(Kind::Knot);
}

#[test]
fn bind_follows_lifeline_as_a_hidden_primary() {
    follows_lifeline(Kind::Bind);
}
