//! The SOA serial's rule, over the wire: replicas given the same changes answer the same
//! serial, a restart with the same content keeps it, and every change to what is
//! answered (records, overrides, zone settings, the stale TTL cap) moves it forward.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use hickory_proto::rr::{RecordType, SerialNumber};
use lifeline_dns::{Shim, ShimHandle, Update, ZonePatch};
use lifeline_model::overrides::{Override, OverrideAction};

fn served(shim: &ShimHandle) -> u32 {
    shim.state().zones[0].serial.expect("the zone is served")
}

/// The serial in the SOA a client gets, which must be the one the state reports.
fn answered(shim: &ShimHandle) -> u32 {
    let m = plain_udp(shim, "nope.global.example.com.", RecordType::A);
    authority_soa_serial(&m).expect("a negative answer carries the SOA")
}

fn ahead(later: u32, earlier: u32) -> bool {
    SerialNumber::new(later) > SerialNumber::new(earlier)
}

/// Waits until the clock's second is past `serial`, as two changes a second or more
/// apart are.
fn clock_past(serial: u32) {
    for _ in 0..100 {
        let now = lifeline_dns::serial::stamp(SystemTime::now(), SystemTime::now());
        if ahead(now, serial) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the clock never passed {serial}");
}

fn move_www(revision: u64, address: &str, decided_at: SystemTime) -> Update {
    let mut upsert = std::collections::BTreeMap::new();
    upsert.insert("www".to_owned(), address_records(address));
    Update::Patch(ZonePatch {
        zone: "global.example.com".into(),
        revision,
        decided_at,
        upsert,
        delete: Vec::new(),
    })
}

fn address_records(address: &str) -> lifeline_dns::NameRecords {
    common::address(60, vec![target(address, "c1", "eu-west", 1)])
}

fn drain(cluster: &str, created_at: SystemTime, lasts: Duration) -> Override {
    Override {
        id: format!("drain-{cluster}"),
        cluster: cluster.into(),
        policy: None,
        action: OverrideAction::Drain,
        created_at,
        expires_at: created_at + lasts,
        author: "oncall".into(),
        reason: "test".into(),
    }
}

#[test]
fn replicas_given_the_same_changes_answer_the_same_serial() {
    let rt = rt();
    let (a, _da) = rt.block_on(start());
    std::thread::sleep(Duration::from_millis(1200));
    let (b, _db) = rt.block_on(start());
    // Each started from its own clock.
    clock_past(served(&a).max(served(&b)));

    // A change decided by the leader reaches the replicas at different moments.
    let decided = SystemTime::now();
    a.apply(move_www(2, "192.0.2.2", decided)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    b.apply(move_www(2, "192.0.2.2", decided)).unwrap();
    assert_eq!(served(&a), served(&b), "same change, same serial");
    // A second change within the same second: one step each, still equal.
    a.apply(move_www(3, "192.0.2.3", decided)).unwrap();
    b.apply(move_www(3, "192.0.2.3", decided)).unwrap();
    assert_eq!(served(&a), served(&b));

    // The same drain read from the store by both (no leader), then its expiry.
    clock_past(served(&a));
    let set = vec![drain("c2", SystemTime::now(), Duration::from_millis(2500))];
    a.set_overrides(set.clone());
    std::thread::sleep(Duration::from_millis(300));
    b.set_overrides(set);
    let drained = served(&a);
    assert_eq!(drained, served(&b), "same drain, same serial");
    let rr = |shim: &ShimHandle| {
        let mut ips = addresses(&plain_udp(shim, "rr.global.example.com.", RecordType::A));
        ips.sort();
        ips
    };
    assert_eq!(rr(&a).len(), 2, "the drain is applied");
    assert!(lifeline_testkit::poll(Duration::from_secs(10), || {
        served(&a) != drained && served(&b) != drained
    }));
    assert_eq!(served(&a), served(&b), "the same expiry, the same serial");
    assert!(ahead(served(&a), drained));
    assert_eq!(rr(&a).len(), 3, "the expired drain no longer applies");
    for shim in [&a, &b] {
        assert_eq!(answered(shim), served(shim));
        shim.shutdown();
    }
}

#[test]
fn a_restart_keeps_the_serial_of_the_same_content_and_new_settings_move_it() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let dns = dns_config(dir.path());
    let zone = zone_config();
    let shim = rt
        .block_on(Shim::start(&dns, std::slice::from_ref(&zone)))
        .unwrap();
    shim.apply(Update::Replace(snapshot(1))).unwrap();
    let first = served(&shim);
    assert_eq!(shim.flush(Duration::from_secs(30)), Some(true));
    shim.shutdown();
    drop(shim);

    let shim = rt
        .block_on(Shim::start(&dns, std::slice::from_ref(&zone)))
        .unwrap();
    assert_eq!(served(&shim), first, "nothing changed, nothing to transfer");
    assert_eq!(answered(&shim), first);
    shim.shutdown();
    drop(shim);

    // A shorter negative TTL changes what is answered, under the same records.
    let mut changed = zone.clone();
    changed.negative_ttl = 5;
    let shim = rt
        .block_on(Shim::start(&dns, std::slice::from_ref(&changed)))
        .unwrap();
    let moved = served(&shim);
    assert!(ahead(moved, first), "{first} then {moved}");
    assert_eq!(answered(&shim), moved);
    shim.shutdown();
    drop(shim);

    // Who may transfer the zone changes no answer: the serial stays.
    let mut listed = changed.clone();
    listed.transfer = Some(lifeline_dns::TransferConfig {
        allow: vec!["127.0.0.0/8".parse().unwrap()],
        notify: Vec::new(),
        max_transfers: 16,
        max_transfers_per_prefix: 4,
    });
    let shim = rt
        .block_on(Shim::start(&dns, std::slice::from_ref(&listed)))
        .unwrap();
    assert_eq!(served(&shim), moved);
    shim.shutdown();
}

#[test]
fn serving_stale_and_current_again_each_move_the_serial() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mut old = snapshot(1);
    old.decided_at = SystemTime::now() - Duration::from_secs(3600);
    lifeline_dns::snapshots::write(dir.path(), &old).unwrap();
    let mut dns = dns_config(dir.path());
    dns.stale_after = Duration::from_secs(1);
    let shim = rt.block_on(Shim::start(&dns, &[zone_config()])).unwrap();
    assert!(shim.state().stale, "an hour-old snapshot and no source");
    let stale = served(&shim);
    // A source vouches for the data: full TTLs again, under a new serial.
    shim.set_source_connected("store", true);
    assert!(!shim.state().stale);
    let current = served(&shim);
    assert!(ahead(current, stale), "{stale} then {current}");
    // It goes away; staleAfter later the TTLs are capped again, under a new serial.
    shim.set_source_connected("store", false);
    assert!(lifeline_testkit::poll(Duration::from_secs(10), || shim
        .state()
        .stale));
    let again = served(&shim);
    assert!(ahead(again, current), "{current} then {again}");
    assert_eq!(answered(&shim), again);
    shim.shutdown();
}

/// A zone of `n` Failover names answered by c1 with c2 in reserve.
fn tiered_zone(n: usize) -> lifeline_dns::ZoneSnapshot {
    let mut s = lifeline_dns::ZoneSnapshot::empty("global.example.com", 1, SystemTime::now());
    for i in 0..n {
        let mut records = common::address(30, vec![target("192.0.2.1", "c1", "eu-west", 1)]);
        if let Some(set) = records.address.as_mut() {
            set.standby = vec![vec![target("192.0.2.2", "c2", "us-east", 1)]];
        }
        s.names.insert(format!("svc{i}"), records);
    }
    s
}

#[test]
fn a_replica_restarted_with_its_store_down_answers_the_drain_from_its_first_reply() {
    // 100 names compile at start; 12,000 are only indexed then and compiled later: the
    // drain must hold from the first reply either way.
    for n in [100, 12_000] {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let dns = dns_config(dir.path());
        let options = lifeline_dns::StartOptions {
            break_glass: true,
            ..Default::default()
        };
        let shim = rt
            .block_on(Shim::start_with(&dns, &[zone_config()], options))
            .unwrap();
        shim.apply(Update::Replace(tiered_zone(n))).unwrap();
        shim.set_overrides(vec![drain(
            "c1",
            SystemTime::now(),
            Duration::from_secs(600),
        )]);
        let last = format!("svc{}.global.example.com.", n - 1);
        let answer = |shim: &ShimHandle| addresses(&plain_udp(shim, &last, RecordType::A));
        assert_eq!(
            answer(&shim),
            ["192.0.2.2".parse::<std::net::IpAddr>().unwrap()]
        );
        let serial = served(&shim);
        assert_eq!(shim.flush(Duration::from_secs(60)), Some(true));
        shim.shutdown();
        drop(shim);

        let shim = rt
            .block_on(Shim::start_with(&dns, &[zone_config()], options))
            .unwrap();
        assert_eq!(
            answer(&shim),
            ["192.0.2.2".parse::<std::net::IpAddr>().unwrap()],
            "{n} names: the first reply after a restart is drained"
        );
        assert_eq!(
            served(&shim),
            serial,
            "{n} names: the same answers, the same serial"
        );
        shim.shutdown();
    }
}

#[test]
fn a_large_zone_replaced_whole_answers_the_new_records_and_reports_what_it_refused() {
    // At 12,000 names an update is indexed first and compiled once the old tables are
    // gone; by the time `apply` returns the compiled table is in place.
    let rt = rt();
    let (shim, _dir) = rt.block_on(start_serving(Some(tiered_zone(12_000))));
    let mut next = tiered_zone(12_000);
    next.revision = 2;
    for records in next.names.values_mut() {
        if let Some(set) = records.address.as_mut() {
            set.targets[0].address = "192.0.2.9".parse().unwrap();
        }
    }
    // One name no message can carry (CNAME beside other data) is refused, by name.
    next.names.insert(
        "bad".into(),
        lifeline_dns::NameRecords {
            cname: Some(lifeline_dns::Cname {
                ttl: 30,
                target: "x.example.".into(),
            }),
            ..common::address(30, vec![target("192.0.2.3", "c1", "eu-west", 1)])
        },
    );
    let applied = shim.apply(Update::Replace(next)).unwrap();
    assert!(
        applied.rejected.iter().any(|(name, _)| name == "bad"),
        "{:?}",
        applied.rejected
    );
    let answer = addresses(&plain_udp(
        &shim,
        "svc11999.global.example.com.",
        RecordType::A,
    ));
    assert_eq!(answer, ["192.0.2.9".parse::<std::net::IpAddr>().unwrap()]);
    let zone = &shim.state().zones[0];
    assert_eq!(zone.revision, Some(2));
    assert_eq!(zone.rejected, 1);
    shim.shutdown();
}
