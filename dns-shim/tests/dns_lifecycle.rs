//! Snapshot lifecycle: persistence, restart, corruption, patches, sources, staleness,
//! and the admin endpoints.

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use common::*;
use hickory_proto::{op::ResponseCode, rr::RecordType};
use lifeline_dns::{DirectorySource, Shim, Update, ZonePatch, snapshots as persist, source};
use lifeline_testkit::{
    disk::{FreezableDisk, SmallDisk},
    fixtures::drain,
};

/// A generous bound for writes to a healthy local disk; hitting it means the writer is stuck.
const FLUSH: Duration = Duration::from_secs(30);

fn www(shim: &lifeline_dns::ShimHandle) -> Vec<IpAddr> {
    addresses(&plain_udp(shim, "www.global.example.com.", RecordType::A))
}

/// Snapshot files of the zone in `dir`, sorted.
fn generations(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "snapshot"))
        .collect();
    v.sort();
    v
}

fn with_www(revision: u64, addr: &str) -> lifeline_dns::ZoneSnapshot {
    let mut s = snapshot(revision);
    s.names.insert(
        "www".into(),
        address(60, vec![target(addr, "c1", "eu-west", 1)]),
    );
    s
}

#[test]
fn a_restarted_shim_answers_from_the_persisted_snapshot_with_no_source() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let dns = dns_config(dir.path());
    {
        let shim = rt.block_on(Shim::start(&dns, &[zone_config()])).unwrap();
        assert!(!shim.state().ready, "nothing loaded yet");
        shim.apply(Update::Replace(with_www(7, "192.0.2.77")))
            .unwrap();
        assert_eq!(shim.flush(FLUSH), Some(true), "written");
        shim.shutdown();
    }
    let shim = rt.block_on(Shim::start(&dns, &[zone_config()])).unwrap();
    let state = shim.state();
    assert!(state.ready, "ready from disk alone: {state:?}");
    assert_eq!(state.zones[0].revision, Some(7));
    assert!(state.sources.is_empty(), "no source at all");
    assert_eq!(www(&shim), vec!["192.0.2.77".parse::<IpAddr>().unwrap()]);
    shim.shutdown();
}

#[test]
fn the_data_directory_and_its_files_are_private_even_when_the_directory_was_not() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let shim = rt
        .block_on(Shim::start(&dns_config(&data), &[zone_config()]))
        .unwrap();
    assert_eq!(mode(&data), 0o700, "an existing 0755 directory is narrowed");
    shim.apply(Update::Replace(with_www(1, "192.0.2.1")))
        .unwrap();
    assert_eq!(shim.flush(FLUSH), Some(true));
    let files = generations(&data);
    assert!(!files.is_empty());
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    shim.shutdown();
}

/// The loopback configuration with a whole snapshot written for every change (the
/// journal compacted after each entry).
fn snapshot_every_change() -> lifeline_dns::DnsConfig {
    lifeline_dns::DnsConfig {
        journal: lifeline_dns::JournalConfig {
            compact_after_entries: 1,
            ..Default::default()
        },
        ..dns_config(std::path::Path::new(""))
    }
}

#[test]
fn two_generations_are_kept_on_disk() {
    let rt = rt();
    let (shim, dir) = rt.block_on(start_with(snapshot_every_change(), None));
    for rev in 1..=5 {
        shim.apply(Update::Replace(with_www(rev, "192.0.2.1")))
            .unwrap();
        // Each one on disk before the next (queued ones would only keep the newest).
        assert_eq!(shim.flush(FLUSH), Some(true));
    }
    let files = generations(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[1].to_string_lossy().contains("00000000000000000005"));
    assert!(files[0].to_string_lossy().contains("00000000000000000004"));
    shim.shutdown();
}

/// A data directory left by a shim that wrote two generations, revision 1 (www at
/// 192.0.2.101) and then revision 2 (www at 192.0.2.102); with its snapshot files.
fn two_generations(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
    let (shim, dir) = rt.block_on(start_with(snapshot_every_change(), None));
    shim.apply(Update::Replace(with_www(1, "192.0.2.101")))
        .unwrap();
    assert_eq!(shim.flush(FLUSH), Some(true));
    shim.apply(Update::Replace(with_www(2, "192.0.2.102")))
        .unwrap();
    shim.shutdown();
    let files = generations(dir.path());
    (dir, files)
}

#[test]
fn a_corrupt_newest_generation_falls_back_to_the_previous_one() {
    let rt = rt();
    let (dir, files) = two_generations(&rt);
    // Flip one byte in the body of the newest: the checksum no longer matches.
    let mut bytes = std::fs::read(&files[1]).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x20;
    std::fs::write(&files[1], bytes).unwrap();

    let dns = dns_config(dir.path());
    let shim = rt.block_on(Shim::start(&dns, &[zone_config()])).unwrap();
    let state = shim.state();
    assert!(state.ready);
    // The previous generation's journal still holds the change that made the newest.
    assert_eq!(state.zones[0].revision, Some(2));
    assert_eq!(state.load_errors, 1, "the corrupt file is reported");
    assert_eq!(www(&shim), vec!["192.0.2.102".parse::<IpAddr>().unwrap()]);
    shim.shutdown();
}

#[test]
fn a_truncated_newest_generation_is_skipped() {
    let rt = rt();
    let (dir, files) = two_generations(&rt);
    let bytes = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &bytes[..bytes.len() / 2]).unwrap();
    // Without the previous generation's journal, its snapshot is what is left.
    let journal = files[0].with_extension("journal");
    std::fs::remove_file(&journal).unwrap();

    let shim = rt
        .block_on(Shim::start(&dns_config(dir.path()), &[zone_config()]))
        .unwrap();
    assert_eq!(shim.state().zones[0].revision, Some(1));
    assert_eq!(www(&shim), vec!["192.0.2.101".parse::<IpAddr>().unwrap()]);
    shim.shutdown();
}

#[test]
fn with_every_generation_corrupt_the_shim_is_not_ready_but_keeps_running() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path()
            .join("global.example.com@00000000000000000003.snapshot"),
        b"lifeline-snapshot 2 sha256=00 len=3\n{}}",
    )
    .unwrap();
    std::fs::write(
        dir.path()
            .join("global.example.com@00000000000000000002.snapshot"),
        b"\x00\xff garbage without a header",
    )
    .unwrap();
    std::fs::write(
        dir.path()
            .join("global.example.com@00000000000000000001.snapshot"),
        b"",
    )
    .unwrap();
    let shim = rt
        .block_on(Shim::start(&dns_config(dir.path()), &[zone_config()]))
        .unwrap();
    let state = shim.state();
    assert!(!state.ready);
    assert_eq!(state.load_errors, 3);
    // In-zone names: SERVFAIL (not a cacheable NXDOMAIN); other names: REFUSED.
    let m = plain_udp(&shim, "www.global.example.com.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let m = plain_udp(&shim, "example.org.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    // A source delivering a snapshot makes it ready.
    shim.apply(Update::Replace(snapshot(4))).unwrap();
    assert!(shim.state().ready);
    assert_eq!(www(&shim).len(), 1);
    shim.shutdown();
}

#[test]
fn the_checksummed_format_rejects_every_single_byte_truncation() {
    let bytes = persist::encode(&snapshot(9)).unwrap();
    assert!(persist::decode(&bytes).is_ok());
    for cut in 0..bytes.len() {
        assert!(persist::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn a_patch_changes_single_names_and_keeps_the_rest() {
    let rt = rt();
    let (shim, _dir) = rt.block_on(start());
    let mut upsert = BTreeMap::new();
    upsert.insert(
        "new.global.example.com".to_owned(),
        address(60, vec![target("192.0.2.200", "c9", "eu-west", 1)]),
    );
    shim.apply(Update::Patch(ZonePatch {
        zone: ZONE.into(),
        revision: 2,
        decided_at: SystemTime::now(),
        upsert,
        delete: vec!["INFO".into()],
    }))
    .unwrap();
    let new = plain_udp(&shim, "new.global.example.com.", RecordType::A);
    assert_eq!(
        addresses(&new),
        vec!["192.0.2.200".parse::<IpAddr>().unwrap()]
    );
    let gone = plain_udp(&shim, "info.global.example.com.", RecordType::TXT);
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(www(&shim), vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(shim.snapshot(ZONE).unwrap().revision, 2);
    shim.shutdown();
}

#[test]
fn updates_that_are_not_newer_are_refused_and_change_nothing() {
    let rt = rt();
    let (shim, _dir) = rt.block_on(start());
    shim.apply(Update::Replace(with_www(5, "192.0.2.5")))
        .unwrap();
    let err = shim
        .apply(Update::Replace(with_www(4, "192.0.2.4")))
        .unwrap_err();
    assert!(err.is_stale_revision(), "{err}");
    let err = shim
        .apply(Update::Replace(with_www(5, "192.0.2.4")))
        .unwrap_err();
    assert!(err.is_stale_revision(), "{err}");
    assert_eq!(www(&shim), vec!["192.0.2.5".parse::<IpAddr>().unwrap()]);
    let mut other = snapshot(9);
    other.zone = "other.example.net".into();
    assert!(shim.apply(Update::Replace(other)).is_err());
    shim.shutdown();
}

#[test]
fn bad_names_in_a_snapshot_are_skipped_and_the_rest_served() {
    let rt = rt();
    let mut s = snapshot(3);
    s.names.insert(
        "outside.example.org.".into(),
        address(60, vec![target("192.0.2.9", "c1", "eu-west", 1)]),
    );
    s.names.insert(
        "bad..label".into(),
        address(60, vec![target("192.0.2.9", "c1", "eu-west", 1)]),
    );
    let (shim, _dir) = rt.block_on(start_serving(None));
    let applied = shim.apply(Update::Replace(s)).unwrap();
    assert_eq!(applied.rejected.len(), 2, "{:?}", applied.rejected);
    assert_eq!(www(&shim).len(), 1);
    assert_eq!(shim.state().zones[0].rejected, 2);
    shim.shutdown();
}

#[test]
fn the_directory_source_applies_files_and_losing_it_keeps_the_records() {
    let rt = rt();
    let feed = tempfile::tempdir().unwrap();
    let (shim, _dir) = rt.block_on(start_serving(None));
    let src = DirectorySource::new(feed.path()).with_interval(Duration::from_millis(50));
    let task = {
        let _g = rt.enter();
        source::spawn(Box::new(src), shim.clone())
    };
    // A half-written file is reported, then the real one applied.
    std::fs::write(feed.path().join("broken.json"), b"{\"zone\": ").unwrap();
    std::fs::write(
        feed.path().join("zone.json"),
        serde_json::to_vec(&with_www(3, "192.0.2.33")).unwrap(),
    )
    .unwrap();
    assert!(lifeline_testkit::poll(Duration::from_secs(5), || shim
        .state()
        .ready));
    assert_eq!(www(&shim), vec!["192.0.2.33".parse::<IpAddr>().unwrap()]);
    assert!(shim.state().sources.iter().all(|s| s.connected));
    assert!(shim.state().load_errors >= 1);

    // A patch file on top.
    let patch = serde_json::json!({
        "kind": "patch", "zone": ZONE, "revision": 4,
        "decidedAt": "2026-01-01T00:00:00Z",
        "upsert": {"www": {"address": {"ttl": 60, "targets": [{"address": "192.0.2.44"}]}}},
    });
    std::fs::write(feed.path().join("zz-patch.json"), patch.to_string()).unwrap();
    assert!(lifeline_testkit::poll(Duration::from_secs(5), || {
        www(&shim) == vec!["192.0.2.44".parse::<IpAddr>().unwrap()]
    }));

    // The writer goes back in revision: ignored, the newer records stay, and it is
    // counted (and logged at warn level) rather than passed over in silence.
    let errors = shim.state().load_errors;
    std::fs::write(
        feed.path().join("zone.json"),
        serde_json::to_vec(&with_www(2, "192.0.2.22")).unwrap(),
    )
    .unwrap();
    assert!(
        lifeline_testkit::poll(Duration::from_secs(5), || shim.state().load_errors > errors),
        "a revision going back was not reported"
    );
    assert_eq!(www(&shim), vec!["192.0.2.44".parse::<IpAddr>().unwrap()]);

    // The directory disappears: the source is disconnected, the records stay.
    drop(feed);
    assert!(lifeline_testkit::poll(Duration::from_secs(5), || {
        shim.state().sources.iter().all(|s| !s.connected)
    }));
    assert_eq!(www(&shim), vec!["192.0.2.44".parse::<IpAddr>().unwrap()]);
    assert!(shim.state().ready);
    task.abort();
    shim.shutdown();
}

#[test]
fn stale_data_is_still_served_with_capped_ttls() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mut old = snapshot(1);
    old.decided_at = SystemTime::now() - Duration::from_secs(3600);
    persist::write(dir.path(), &old).unwrap();
    let mut dns = dns_config(dir.path());
    dns.stale_after = Duration::from_secs(300);
    let shim = rt.block_on(Shim::start(&dns, &[zone_config()])).unwrap();
    let state = shim.state();
    assert!(state.stale, "{state:?}");
    assert!(state.zones[0].age.unwrap() >= Duration::from_secs(3600));
    let m = plain_udp(&shim, "www.global.example.com.", RecordType::A);
    assert_eq!(addresses(&m).len(), 1, "stale data is served, not dropped");
    assert_eq!(m.answers[0].ttl, 30, "TTL capped at staleTtl");
    assert!(shim.engine().counters().stale_answers.get() >= 1);
    // A connected source makes the data current again: full TTLs.
    shim.set_source_connected("controller", true);
    let m = plain_udp(&shim, "www.global.example.com.", RecordType::A);
    assert_eq!(m.answers[0].ttl, 60);
    assert!(!shim.state().stale);
    shim.shutdown();
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    (status, out)
}

#[test]
fn admin_endpoints_report_health_readiness_and_metrics() {
    let rt = rt();
    let (shim, _dir) = rt.block_on(start_serving(None));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = lifeline_dns::admin::router(shim.clone());
    rt.spawn(async move { axum::serve(listener, app).await });

    assert_eq!(http_get(addr, "/healthz").0, 200);
    assert_eq!(http_get(addr, "/readyz").0, 503, "no snapshot yet");
    shim.apply(Update::Replace(snapshot(12))).unwrap();
    shim.set_source_connected("controller", true);
    assert_eq!(http_get(addr, "/readyz").0, 200);
    plain_udp(&shim, "www.global.example.com.", RecordType::A);
    plain_udp(&shim, "nope.global.example.com.", RecordType::A);
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    for needle in [
        "lifeline_dns_queries_total{type=\"A\",rcode=\"NOERROR\"} 1",
        "lifeline_dns_queries_total{type=\"A\",rcode=\"NXDOMAIN\"} 1",
        "lifeline_dns_snapshot_revision{zone=\"global.example.com\"} 12",
        "lifeline_dns_snapshot_age_seconds{zone=\"global.example.com\"}",
        "lifeline_dns_source_connected{source=\"controller\"} 1",
        "lifeline_dns_response_size_bytes_count 2",
        "lifeline_dns_stale_answers_total 0",
        "lifeline_dns_ready 1",
    ] {
        assert!(body.contains(needle), "missing {needle:?} in\n{body}");
    }
    let (_, state) = http_get(addr, "/state");
    assert!(state.contains("\"revision\":12"), "{state}");
    shim.shutdown();
}

#[test]
fn the_standalone_command_serves_until_shutdown() {
    let rt = rt();
    let data = tempfile::tempdir().unwrap();
    persist::write(data.path(), &with_www(2, "192.0.2.22")).unwrap();
    // An address of its own for the standalone run (it binds what it is told).
    let server = lifeline_testkit::free_addr();
    let mut dns = dns_config(data.path());
    dns.udp = vec![server];
    dns.tcp = vec![];
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = rt.spawn(async move {
        lifeline_dns::standalone::run(&dns, &[zone_config()], None, async {
            let _ = rx.await;
        })
        .await
    });
    let q = message("www.global.example.com.", RecordType::A, &Ask::default())
        .to_vec()
        .unwrap();
    assert!(lifeline_testkit::poll(Duration::from_secs(5), || raw_udp(
        server, &q
    )
    .is_some()));
    let m = hickory_proto::op::Message::from_vec(&raw_udp(server, &q).unwrap()).unwrap();
    assert_eq!(addresses(&m), vec!["192.0.2.22".parse::<IpAddr>().unwrap()]);
    tx.send(()).unwrap();
    rt.block_on(run).unwrap().unwrap();
}

#[test]
fn the_config_yaml_shape_deserialises_and_validation_names_fields() {
    // The same document as lifeline.yaml's `zones` and `dns` sections, as JSON.
    let zones: Vec<lifeline_dns::ZoneConfig> = serde_json::from_value(serde_json::json!([{
        "origin": "global.example.com",
        "primaryNs": "ns1.global.example.com",
        "hostmaster": "hostmaster.example.com",
        "nameservers": ["ns1.global.example.com", "ns2.global.example.com"],
    }]))
    .unwrap();
    let dns: lifeline_dns::DnsConfig = serde_json::from_value(serde_json::json!({
        "udp": ["127.0.0.1:5353"],
        "tcp": ["127.0.0.1:5353"],
        "dataDir": "/var/lib/lifeline",
        "geo": [{"prefix": "10.1.0.0/16", "region": "eu-west"}],
    }))
    .unwrap();
    assert!(lifeline_dns::config::validate(&dns, &zones).is_empty());
    assert_eq!(dns.stale_after, Duration::from_secs(300));
    // A duration outside the grammar fails decoding, naming it.
    let err = serde_json::from_value::<lifeline_dns::DnsConfig>(serde_json::json!({
        "udp": ["127.0.0.1:5353"], "dataDir": "/var/lib/lifeline", "staleAfter": "soon",
    }))
    .unwrap_err()
    .to_string();
    assert!(err.contains("invalid duration \"soon\""), "{err}");

    let mut bad_zone = zones[0].clone();
    bad_zone.origin = "bad..zone".into();
    bad_zone.nameservers.clear();
    let mut bad_dns = dns.clone();
    bad_dns.stale_after = Duration::ZERO;
    bad_dns.geo[0].region = " ".into();
    let problems = lifeline_dns::config::validate(&bad_dns, &[zones[0].clone(), bad_zone]);
    let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "zones[1].origin",
            "zones[1].nameservers",
            "dns.staleAfter",
            "dns.geo[0].region"
        ],
        "{problems:?}"
    );
    assert!(
        serde_json::from_value::<lifeline_dns::DnsConfig>(serde_json::json!({"udpp": []})).is_err(),
        "unknown fields are rejected"
    );
}

#[test]
fn large_snapshots_round_trip_through_the_parallel_paths() {
    let mut s = snapshot(77);
    // The file keeps milliseconds.
    s.decided_at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
    for i in 0..30_000u32 {
        let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xFF, i & 0xFF);
        s.names.insert(
            format!("host{i}"),
            address(300, vec![target(&ip, "c1", "eu-west", 1)]),
        );
    }
    let bytes = persist::encode(&s).unwrap();
    assert!(bytes.len() > 2 << 20, "big enough for the parallel parser");
    let back = persist::decode(&bytes).unwrap();
    assert!(back == s, "round trip changed the snapshot");
    // A flipped byte in the second half is caught by the checksum.
    let mut bad = bytes.clone();
    let i = bad.len() - 100;
    bad[i] ^= 1;
    assert!(persist::decode(&bad).is_err());

    let geo = lifeline_dns::zone::GeoTable::default();
    let table = lifeline_dns::zone::compile_zone(
        &zone_config(),
        &s,
        &geo,
        lifeline_dns::zone::CompileOptions::default(),
    );
    assert!(table.rejected.is_empty());
    assert!(table.names.len() > 30_000);
    assert!(
        table.names.contains_key(
            lifeline_dns::wire::encode("host29999.global.example.com")
                .unwrap()
                .as_slice()
        )
    );
}

#[test]
fn a_lazily_indexed_zone_answers_exactly_like_a_compiled_one() {
    // Canonical keys take the index-free road; mixed spellings need the index.
    let mut canonical = snapshot(5);
    // A name that cannot be served (CNAME plus data) with a child: it is an empty
    // non-terminal, not NXDOMAIN, on both roads.
    let mut conflict = address(60, vec![target("192.0.2.7", "c1", "eu-west", 1)]);
    conflict.cname = Some(lifeline_dns::Cname {
        ttl: 60,
        target: "www.global.example.com.".into(),
    });
    canonical.names.insert("conflict".into(), conflict);
    canonical.names.insert(
        "child.conflict".into(),
        address(60, vec![target("192.0.2.8", "c1", "eu-west", 1)]),
    );
    let mut mixed = canonical.clone();
    let www = mixed.names.remove("www").unwrap();
    mixed.names.insert("WWW.Global.Example.Com.".into(), www);
    mixed.names.insert(
        "bad..name".into(),
        address(60, vec![target("192.0.2.9", "c1", "eu-west", 1)]),
    );
    let mut compared = 0;
    for snap in [canonical, mixed] {
        compared += compare_lazy_and_full(&snap);
    }
    assert_eq!(compared, 2 * 117);
}

fn compare_lazy_and_full(snap: &lifeline_dns::ZoneSnapshot) -> usize {
    use lifeline_dns::zone::{CompileOptions, Compiled, GeoTable, compile_zone, index_zone};
    let geo = std::sync::Arc::new(GeoTable::default());
    let engine = |table| {
        lifeline_dns::Engine::new(
            Compiled {
                zones: vec![std::sync::Arc::new(table)],
                geo: geo.clone(),
                stale: false,
                pending: vec![],
            },
            None,
            1232,
        )
    };
    let full = engine(compile_zone(
        &zone_config(),
        snap,
        &geo,
        CompileOptions::default(),
    ));
    let lazy_table = index_zone(
        &zone_config(),
        std::sync::Arc::new(snap.clone()),
        geo.clone(),
        CompileOptions::default(),
    );
    assert!(lazy_table.lazy.is_some() && lazy_table.names.is_empty());
    let lazy = engine(lazy_table);
    let src = "127.0.0.1:5300".parse().unwrap();
    let mut compared = 0;
    // Names whose answer does not rotate, every type and outcome.
    for name in [
        "www",
        "dual",
        "alias",
        "_http._tcp.svc",
        "info",
        "deep.under.ent",
        "under.ent",
        "ent",
        "nope",
        "",
        "x.nope",
        "conflict",
        "child.conflict",
    ] {
        let fqdn = if name.is_empty() {
            format!("{ZONE}.")
        } else {
            format!("{name}.{ZONE}.")
        };
        for t in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::SRV,
            RecordType::TXT,
            RecordType::CNAME,
            RecordType::SOA,
            RecordType::NS,
            RecordType::ANY,
            RecordType::MX,
        ] {
            let q = message(&fqdn, t, &Ask::default()).to_vec().unwrap();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            assert!(full.respond(&q, src, lifeline_dns::Transport::Udp, &mut a));
            assert!(lazy.respond(&q, src, lifeline_dns::Transport::Udp, &mut b));
            assert_eq!(a, b, "{fqdn} {t}");
            compared += 1;
        }
    }
    compared
}

#[test]
fn a_restart_with_a_large_zone_answers_at_once_and_compiles_in_the_background() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mut s = snapshot(8);
    for i in 0..12_000u32 {
        let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xFF, i & 0xFF);
        s.names.insert(
            format!("host{i}"),
            address(300, vec![target(&ip, "c1", "eu-west", 1)]),
        );
    }
    persist::write(dir.path(), &s).unwrap();
    let shim = rt
        .block_on(Shim::start(&dns_config(dir.path()), &[zone_config()]))
        .unwrap();
    assert!(shim.state().ready);
    let m = plain_udp(&shim, "host11999.global.example.com.", RecordType::A);
    assert_eq!(
        addresses(&m),
        vec!["10.0.46.223".parse::<IpAddr>().unwrap()]
    );
    assert!(lifeline_testkit::poll(Duration::from_secs(20), || {
        shim.engine().compiled().zones[0].lazy.is_none()
    }));
    let m = plain_udp(&shim, "host11999.global.example.com.", RecordType::A);
    assert_eq!(
        addresses(&m),
        vec!["10.0.46.223".parse::<IpAddr>().unwrap()]
    );
    let nx = plain_udp(&shim, "host12000.global.example.com.", RecordType::A);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    shim.shutdown();
}

#[test]
fn a_failed_start_releases_the_sockets_it_already_opened() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let ip = lifeline_testkit::loopback();
    let taken = std::net::TcpListener::bind((ip, 0)).unwrap();
    let udp_port = lifeline_testkit::free_port(&[ip]);
    let mut dns = dns_config(dir.path());
    dns.udp = vec![std::net::SocketAddr::new(ip, udp_port)];
    dns.tcp = vec![taken.local_addr().unwrap()];
    let err = rt
        .block_on(Shim::start(&dns, &[zone_config()]))
        .unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err}");
    // The UDP socket bound before the failure is closed again (its thread polls).
    assert!(lifeline_testkit::poll(Duration::from_secs(3), || {
        std::net::UdpSocket::bind((ip, udp_port)).is_ok()
    }));
}

#[test]
fn a_full_disk_is_counted_answers_go_on_and_the_next_persist_after_space_returns_lands() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(_disk) = SmallDisk::mount(&data, "256k") else {
        lifeline_testkit::skipped("cannot mount a small tmpfs here (needs root)");
        return;
    };
    // Every change a whole snapshot: a journal entry may still fit in a block the
    // journal already holds.
    let dns = lifeline_dns::DnsConfig {
        data_dir: data.clone(),
        ..snapshot_every_change()
    };
    let shim = rt.block_on(Shim::start(&dns, &[zone_config()])).unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    shim.metrics().register(&mut registry);
    let failures = |registry: &prometheus_client::registry::Registry| {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("lifeline_dns_persist_failures_total "))
            .map(|v| v.trim().parse::<u64>().unwrap())
            .expect("the persist failure metric is exported")
    };
    shim.apply(Update::Replace(with_www(1, "192.0.2.1")))
        .unwrap();
    assert_eq!(shim.flush(FLUSH), Some(true));
    assert_eq!(failures(&registry), 0);

    // Fill the disk to the last byte.
    let filler = data.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&[0]).is_ok() {}
    }
    shim.apply(Update::Replace(with_www(2, "192.0.2.2")))
        .unwrap();
    assert_eq!(
        shim.flush(FLUSH),
        Some(false),
        "nothing can be written to a full disk"
    );
    // The snapshot failed, and the serial kept beside it may have too.
    let failed = failures(&registry);
    assert!((1..=2).contains(&failed), "{failed} failures");
    let leftovers: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "a failed write left {leftovers:?}");
    assert_eq!(www(&shim), vec!["192.0.2.2".parse::<IpAddr>().unwrap()]);
    assert_eq!(tcp_www(&shim), vec!["192.0.2.2".parse::<IpAddr>().unwrap()]);

    // Space returns: the next update is written, and a restart answers from it.
    std::fs::remove_file(&filler).unwrap();
    shim.apply(Update::Replace(with_www(3, "192.0.2.3")))
        .unwrap();
    assert_eq!(shim.flush(FLUSH), Some(true));
    assert_eq!(
        failures(&registry),
        failed,
        "nothing failed once space returned"
    );
    shim.shutdown();
    let shim = rt.block_on(Shim::start(&dns, &[zone_config()])).unwrap();
    assert_eq!(shim.state().zones[0].revision, Some(3));
    assert_eq!(www(&shim), vec!["192.0.2.3".parse::<IpAddr>().unwrap()]);
    shim.shutdown();
}

fn tcp_www(shim: &lifeline_dns::ShimHandle) -> Vec<IpAddr> {
    addresses(&plain_tcp(shim, "www.global.example.com.", RecordType::A))
}

/// `GET path` with the 1 s the readiness promise allows: the status code, or why not.
fn http_status_within_a_second(addr: std::net::SocketAddr, path: &str) -> Result<u16, String> {
    lifeline_testkit::http::status_within(addr, path, Duration::from_secs(1))
}

#[test]
fn a_stalled_disk_delays_neither_answers_nor_updates_nor_readiness() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(disk) = FreezableDisk::mount(&data) else {
        lifeline_testkit::skipped(
            "cannot loop-mount an ext4 image here (needs root, mkfs.ext4, loop devices)",
        );
        return;
    };
    let dns = dns_config(&data);
    let shim = rt.block_on(Shim::start(&dns, &[zone_config()])).unwrap();
    shim.set_source_connected("test", true);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let admin = listener.local_addr().unwrap();
    rt.spawn(lifeline_dns::http::serve(
        listener,
        lifeline_dns::admin::router(shim.clone()),
        lifeline_dns::http::Limits::default(),
        std::future::pending(),
    ));
    shim.apply(Update::Replace(with_www(1, "192.0.2.1")))
        .unwrap();
    assert_eq!(shim.flush(FLUSH), Some(true));

    // Stall the disk for 10 s; a thread thaws it then whatever the test is doing.
    let thawer = disk
        .stall_for(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("fsfreeze -f {}", data.display()));

    // Updates keep arriving, a second apart, well inside the stall.
    for rev in 2..=5u64 {
        let addr = format!("192.0.2.{rev}");
        shim.apply(Update::Replace(with_www(rev, &addr))).unwrap();
        let want = vec![addr.parse::<IpAddr>().unwrap()];
        assert_eq!(www(&shim), want, "UDP answers revision {rev}");
        assert_eq!(tcp_www(&shim), want, "TCP answers revision {rev}");
        assert_eq!(http_status_within_a_second(admin, "/readyz"), Ok(200));
        assert_eq!(http_status_within_a_second(admin, "/metrics"), Ok(200));
        assert_eq!(shim.state().zones[0].revision, Some(rev));
        // The stall is real: the writer is still inside the frozen filesystem.
        assert_eq!(
            shim.flush(Duration::ZERO),
            None,
            "revision {rev} is answered while the disk has not taken revision 2"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // Once the disk answers again the newest revision is written, and a restart serves it.
    thawer.join().unwrap();
    assert_eq!(shim.flush(FLUSH), Some(true));
    shim.shutdown();
    let shim = rt.block_on(Shim::start(&dns, &[zone_config()])).unwrap();
    assert_eq!(shim.state().zones[0].revision, Some(5));
    assert_eq!(www(&shim), vec!["192.0.2.5".parse::<IpAddr>().unwrap()]);
    shim.shutdown();
}

fn rr(shim: &lifeline_dns::ShimHandle) -> Vec<IpAddr> {
    let mut v = addresses(&plain_udp(shim, "rr.global.example.com.", RecordType::A));
    v.sort();
    v
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn break_glass_overrides_outlive_a_restart_and_a_corrupt_newest_copy_falls_back() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let dns = dns_config(dir.path());
    let edge = lifeline_dns::StartOptions {
        break_glass: true,
        ..Default::default()
    };
    let shim = rt
        .block_on(Shim::start_with(&dns, &[zone_config()], edge))
        .unwrap();
    shim.apply(Update::Replace(snapshot(1))).unwrap();
    shim.set_overrides(vec![drain("c1")]);
    assert_eq!(shim.flush(FLUSH), Some(true));
    shim.set_overrides(vec![drain("c2")]);
    assert_eq!(shim.flush(FLUSH), Some(true));
    assert_eq!(rr(&shim), ips(&["192.0.2.21", "192.0.2.23"]));
    shim.shutdown();

    // Restarted with no source at all: the newest set is in force from the first answer.
    let shim = rt
        .block_on(Shim::start_with(&dns, &[zone_config()], edge))
        .unwrap();
    assert_eq!(rr(&shim), ips(&["192.0.2.21", "192.0.2.23"]));
    shim.shutdown();

    // A shim that is never handed overrides ignores what another process left.
    let shim = rt.block_on(Shim::start(&dns, &[zone_config()])).unwrap();
    assert_eq!(rr(&shim), ips(&["192.0.2.21", "192.0.2.22", "192.0.2.23"]));
    shim.shutdown();

    // Corrupt the newest copy: the one before it is applied, and the bad one counted.
    let mut kept: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "overrides"))
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 2, "two generations kept: {kept:?}");
    let mut bytes = std::fs::read(&kept[1]).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x01;
    std::fs::write(&kept[1], bytes).unwrap();
    let shim = rt
        .block_on(Shim::start_with(&dns, &[zone_config()], edge))
        .unwrap();
    assert_eq!(rr(&shim), ips(&["192.0.2.22", "192.0.2.23"]));
    assert_eq!(shim.state().load_errors, 1, "the corrupt copy is reported");
    // The next change is a newer generation than either file, and is what a restart reads.
    shim.set_overrides(Vec::new());
    assert_eq!(shim.flush(FLUSH), Some(true));
    shim.shutdown();
    let shim = rt
        .block_on(Shim::start_with(&dns, &[zone_config()], edge))
        .unwrap();
    assert_eq!(rr(&shim), ips(&["192.0.2.21", "192.0.2.22", "192.0.2.23"]));
    shim.shutdown();
}
