//! The shim's etcd source against a real etcd and a real shim on loopback: initial
//! load, per-name patches, watch resumption after an etcd restart, resync after a
//! compaction, serving through an outage, and bad values.

mod common;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use common::{shim_config, start_shim, write_committed};
use etcd_client::{Client, TxnOp};
use lifeline_dns::{AddressSet, NameRecords, ShimHandle, Target, ZoneSnapshot, source};
use lifeline_etcd::{
    EtcdConnect, EtcdSource,
    source::{EtcdSourceStats, VALUE_LIMIT, encode_value, record_key},
};
use lifeline_testkit::{
    Etcd, Proxy,
    etcd::lead,
    eventually,
    fixtures::{ZONE, drain, zone_config},
};
use parking_lot::Mutex;

const PREFIX: &str = "/lifeline";
const WAIT: Duration = Duration::from_secs(20);

/// An A record whose address encodes `n`, so a test can read a sequence number back.
fn numbered(n: u32) -> NameRecords {
    NameRecords {
        address: Some(AddressSet {
            ttl: 30,
            targets: vec![Target {
                address: IpAddr::V4(Ipv4Addr::new(10, 0, (n / 256) as u8, (n % 256) as u8)),
                cluster: "c1".into(),
                region: "r1".into(),
                weight: 1,
                share: None,
            }],
            max_answers: None,
            geo: false,
            standby: Vec::new(),
        }),
        ..NameRecords::default()
    }
}

fn number_of(records: &NameRecords) -> Option<u32> {
    match records.address.as_ref()?.targets.first()?.address {
        IpAddr::V4(a) => {
            let o = a.octets();
            Some(u32::from(o[2]) * 256 + u32::from(o[3]))
        }
        IpAddr::V6(_) => None,
    }
}

/// Writes `name` = numbered(n), committed as a publish is, and returns the etcd
/// revision of the write.
async fn put(client: &mut Client, name: &str, n: u32) -> i64 {
    let value = encode_value(&numbered(n), Some(std::time::SystemTime::now())).unwrap();
    write_committed(
        client,
        PREFIX,
        vec![TxnOp::put(record_key(PREFIX, ZONE, name), value, None)],
    )
    .await
}

/// Deletes `name`, committed as a publish is; returns the revision.
async fn delete(client: &mut Client, name: &str) -> i64 {
    write_committed(
        client,
        PREFIX,
        vec![TxnOp::delete(record_key(PREFIX, ZONE, name), None)],
    )
    .await
}

fn snapshot(shim: &ShimHandle) -> Option<ZoneSnapshot> {
    shim.snapshot(ZONE)
}

fn number(shim: &ShimHandle, name: &str) -> Option<u32> {
    number_of(snapshot(shim)?.names.get(name)?)
}

fn connected(shim: &ShimHandle) -> Option<bool> {
    shim.state()
        .sources
        .iter()
        .find(|s| s.name.starts_with("etcd:"))
        .map(|s| s.connected)
}

fn spawn_source(
    shim: &ShimHandle,
    connect: EtcdConnect,
) -> (tokio::task::JoinHandle<()>, Arc<EtcdSourceStats>) {
    let src = EtcdSource::new(connect, PREFIX)
        .with_backoff(Duration::from_millis(50), Duration::from_millis(500));
    let stats = src.stats();
    (source::spawn(Box::new(src), shim.clone()), stats)
}

/// The A addresses the shim answers for `name` over real UDP (sorted).
fn query_a(server: SocketAddr, name: &str) -> Vec<IpAddr> {
    lifeline_testkit::dns::query_a_within(server, name, Duration::from_secs(2))
        .ok()
        .expect("a NOERROR DNS reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_loads_existing_records_then_applies_changes_as_patches() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let mut client = etcd.client().await;
    put(&mut client, "www", 1).await;
    let loaded_rev = put(&mut client, "api", 1).await;

    let dir = tempfile::tempdir().unwrap();
    let shim = start_shim(dir.path()).await;
    let (task, stats) = spawn_source(&shim, etcd.connect());
    let snap = eventually(WAIT, "initial load", || {
        snapshot(&shim).filter(|s| s.names.len() == 2)
    })
    .await;
    assert_eq!(snap.revision, loaded_rev as u64, "zone revision is etcd's");
    assert_eq!(connected(&shim), Some(true));

    put(&mut client, "www", 2).await;
    let delete_rev = delete(&mut client, "api").await as u64;
    let snap = eventually(WAIT, "patches", || {
        snapshot(&shim).filter(|s| s.revision == delete_rev)
    })
    .await;
    assert_eq!(snap.names.keys().collect::<Vec<_>>(), ["www"]);
    assert_eq!(number(&shim, "www"), Some(2));
    assert_eq!(
        query_a(shim.udp_addrs()[0], "www.global.example.com."),
        [IpAddr::from([10, 0, 0, 2])]
    );
    assert_eq!(stats.full_loads(), 1);
    assert_eq!(
        stats.events(),
        4,
        "one put and one delete event, each with its commit marker"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_resumes_after_an_etcd_restart_and_a_compaction_without_missing_an_update() {
    let Some(mut etcd) = Etcd::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shim = start_shim(dir.path()).await;
    let (task, stats) = spawn_source(&shim, etcd.connect());

    // Every value of "latest" the shim ever serves, sampled; it must never go back.
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let sampler = {
        let (shim, seen) = (shim.clone(), seen.clone());
        tokio::spawn(async move {
            // Bounded: at most 20 000 samples of 2 ms (40 s); aborted at the end.
            for _ in 0..20_000 {
                if let Some(n) = number(&shim, "latest") {
                    let mut s = seen.lock();
                    if s.last() != Some(&n) {
                        s.push(n);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    let mut client = etcd.client().await;
    let mut last_rev = 0;
    for i in 0..10 {
        put(&mut client, &format!("seq-{i}"), i).await;
        last_rev = put(&mut client, "latest", i).await;
    }
    eventually(WAIT, "first ten updates", || {
        (number(&shim, "latest") == Some(9)).then_some(())
    })
    .await;

    etcd.stop();
    eventually(WAIT, "source reported disconnected", || {
        (connected(&shim) == Some(false)).then_some(())
    })
    .await;
    assert_eq!(
        snapshot(&shim).unwrap().names.len(),
        11,
        "nothing removed while etcd is down"
    );
    etcd.start_again().await;

    let mut client = etcd.client().await;
    for i in 10..20 {
        put(&mut client, &format!("seq-{i}"), i).await;
        last_rev = put(&mut client, "latest", i).await;
    }
    eventually(WAIT, "updates written after the restart", || {
        (number(&shim, "latest") == Some(19)).then_some(())
    })
    .await;
    // Compacting history the source has already seen must not disturb its watch.
    etcd.compact(last_rev).await;
    for i in 20..30 {
        put(&mut client, &format!("seq-{i}"), i).await;
        last_rev = put(&mut client, "latest", i).await;
    }

    let snap = eventually(WAIT, "every update after the restart", || {
        snapshot(&shim).filter(|s| s.revision == last_rev as u64)
    })
    .await;
    sampler.abort();
    let expected: BTreeSet<String> = (0..30)
        .map(|i| format!("seq-{i}"))
        .chain(["latest".to_owned()])
        .collect();
    assert_eq!(
        snap.names.keys().cloned().collect::<BTreeSet<_>>(),
        expected
    );
    for i in 0..30 {
        assert_eq!(number(&shim, &format!("seq-{i}")), Some(i));
    }
    assert_eq!(number(&shim, "latest"), Some(29));
    let seen = seen.lock().clone();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "updates were served out of order: {seen:?}"
    );
    assert_eq!(connected(&shim), Some(true));
    assert_eq!(
        stats.full_loads(),
        1,
        "the restart was bridged by resuming the watch, not by reloading"
    );
    assert!(stats.watches_opened() >= 2, "the watch was re-opened");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_resume_revision_triggers_a_full_resync() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    // The source reaches etcd through a proxy the test can cut, so it is certainly away
    // while the history it needs is compacted.
    let proxy = Proxy::start(etcd.client_addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let shim = start_shim(dir.path()).await;
    let (task, stats) = spawn_source(&shim, EtcdConnect::new([proxy.endpoint()]));

    let mut client = etcd.client().await;
    put(&mut client, "www", 1).await;
    put(&mut client, "api", 1).await;
    eventually(WAIT, "initial records", || {
        snapshot(&shim).filter(|s| s.names.len() == 2)
    })
    .await;

    proxy.set_blocked(true);
    eventually(WAIT, "source reported disconnected", || {
        (connected(&shim) == Some(false)).then_some(())
    })
    .await;
    put(&mut client, "www", 2).await;
    put(&mut client, "db", 2).await;
    let rev = delete(&mut client, "api").await;
    etcd.compact(rev).await;
    assert_eq!(
        snapshot(&shim).unwrap().names.len(),
        2,
        "nothing changes while the source is cut off"
    );

    proxy.set_blocked(false);
    let snap = eventually(WAIT, "resync after compaction", || {
        snapshot(&shim).filter(|s| s.revision == rev as u64)
    })
    .await;
    assert_eq!(
        snap.names.keys().collect::<Vec<_>>(),
        ["db", "www"],
        "the deletion that happened during the gap is applied by the resync"
    );
    assert_eq!(number(&shim, "www"), Some(2));
    eventually(WAIT, "source reported connected", || {
        (connected(&shim) == Some(true)).then_some(())
    })
    .await;
    assert_eq!(stats.full_loads(), 2, "one initial load, one resync");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_keeps_every_record_while_etcd_is_down_and_takes_new_writes_after() {
    let Some(mut etcd) = Etcd::start().await else {
        return;
    };
    let mut client = etcd.client().await;
    for i in 0..5 {
        put(&mut client, &format!("n{i}"), i).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let shim = start_shim(dir.path()).await;
    let (task, stats) = spawn_source(&shim, etcd.connect());
    eventually(WAIT, "initial records", || {
        snapshot(&shim).filter(|s| s.names.len() == 5)
    })
    .await;

    etcd.stop();
    eventually(WAIT, "source reported disconnected", || {
        (connected(&shim) == Some(false)).then_some(())
    })
    .await;
    // Several reconnect attempts fail meanwhile; answers keep flowing over the wire.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(snapshot(&shim).unwrap().names.len(), 5);
    let server = shim.udp_addrs()[0];
    for i in 0..5u8 {
        let answers = tokio::task::spawn_blocking(move || {
            query_a(server, &format!("n{i}.global.example.com."))
        })
        .await
        .unwrap();
        assert_eq!(answers, [IpAddr::from([10, 0, 0, i])]);
    }
    assert!(shim.state().ready);

    etcd.start_again().await;
    let mut client = etcd.client().await;
    let rev = put(&mut client, "after", 77).await;
    eventually(WAIT, "the write after the restart", || {
        snapshot(&shim).filter(|s| s.revision == rev as u64)
    })
    .await;
    assert_eq!(number(&shim, "after"), Some(77));
    assert_eq!(snapshot(&shim).unwrap().names.len(), 6);
    assert_eq!(connected(&shim), Some(true));
    assert_eq!(stats.full_loads(), 1, "resumed, not reloaded");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_record_values_are_skipped_and_the_last_good_records_stay() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let mut client = etcd.client().await;
    put(&mut client, "www", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let shim = start_shim(dir.path()).await;
    let (task, stats) = spawn_source(&shim, etcd.connect());
    eventually(WAIT, "initial records", || number(&shim, "www")).await;
    let errors_before = shim.state().load_errors;

    let huge = encode_value(&"x".repeat(VALUE_LIMIT), None).unwrap();
    let bad: [(&str, Vec<u8>); 4] = [
        ("www", b"{ not json".to_vec()),
        ("www", br#"{"format":2,"value":{}}"#.to_vec()),
        (
            "api",
            br#"{"format":1,"value":{"address":"nope"}}"#.to_vec(),
        ),
        ("db", huge),
    ];
    for (name, bytes) in bad {
        client
            .put(record_key(PREFIX, ZONE, name), bytes, None)
            .await
            .unwrap();
    }
    // A good write after the bad ones: once it is served, the bad ones were processed.
    put(&mut client, "marker", 5).await;
    eventually(WAIT, "marker", || number(&shim, "marker")).await;
    assert_eq!(number(&shim, "www"), Some(1), "last good value kept");
    let names: Vec<String> = snapshot(&shim).unwrap().names.into_keys().collect();
    assert_eq!(names, ["marker", "www"]);
    assert!(
        shim.state().load_errors >= errors_before + 4,
        "each bad value is counted"
    );
    assert_eq!(stats.bad_values(), 4);
    task.abort();

    // A restarted shim (persisted snapshot) with a fresh source doing a full load keeps
    // serving the last good "www" although etcd holds garbage for it.
    shim.shutdown();
    drop(shim);
    let shim = start_shim(dir.path()).await;
    assert_eq!(number(&shim, "www"), Some(1), "served from disk");
    let (task, stats) = spawn_source(&shim, etcd.connect());
    let rev = put(&mut client, "after", 6).await;
    eventually(WAIT, "full load plus the next write", || {
        snapshot(&shim).filter(|s| s.revision == rev as u64)
    })
    .await;
    assert_eq!(number(&shim, "www"), Some(1));
    assert_eq!(number(&shim, "marker"), Some(5));
    assert!(
        stats.bad_values() >= 2,
        "the full load met the bad values too"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaders_fenced_publish_reaches_the_shim_within_a_fraction_of_a_second() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let store = etcd.store(PREFIX).await;
    let leader = lead(&store, "replica-a", Duration::from_secs(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let shim = start_shim(dir.path()).await;
    let (task, _stats) = spawn_source(&shim, etcd.connect());

    let mut latencies = Vec::new();
    for n in 0..20u32 {
        let upsert = [("www".to_owned(), numbered(n))].into_iter().collect();
        let started = tokio::time::Instant::now();
        store
            .publish_records(&leader, ZONE, &upsert, &[], std::time::SystemTime::now())
            .await
            .unwrap();
        eventually(Duration::from_secs(5), "published change", || {
            (number(&shim, "www") == Some(n)).then_some(())
        })
        .await;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "publish → shim serving: median {:?}, max {:?} over {} changes (debug build, 20 ms polling)",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        latencies.len()
    );
    // Each change arrived (within `eventually`'s bound); the figures are printed, not
    // asserted: a test machine's load is not the shim's latency.
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shim_follows_an_etcd_restored_with_lower_revisions_instead_of_freezing() {
    let Some(old) = Etcd::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shim = start_shim(dir.path()).await;
    let (task, _) = spawn_source(&shim, old.connect());
    let mut client = old.client().await;
    let mut rev = 0;
    for n in 0..30 {
        rev = put(&mut client, "www", n).await;
    }
    eventually(WAIT, "old etcd's records", || {
        snapshot(&shim).filter(|s| s.revision == rev as u64)
    })
    .await;
    task.abort();
    drop(old);

    // A new etcd (as after a restore from an older backup): revisions start again.
    let Some(new) = Etcd::start().await else {
        return;
    };
    let mut client = new.client().await;
    let low = put(&mut client, "www", 500).await;
    assert!((low as u64) < snapshot(&shim).unwrap().revision);
    let (task, _) = spawn_source(&shim, new.connect());
    eventually(WAIT, "the new etcd's value", || {
        (number(&shim, "www") == Some(500)).then_some(())
    })
    .await;
    // And it keeps following it.
    put(&mut client, "api", 501).await;
    eventually(WAIT, "a later write", || number(&shim, "api")).await;
    assert_eq!(number(&shim, "www"), Some(500));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_source_notices_another_etcd_behind_its_endpoint_and_reloads() {
    let Some(first) = Etcd::start().await else {
        return;
    };
    let Some(second) = Etcd::start().await else {
        return;
    };
    let proxy = Proxy::start(first.client_addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let shim = start_shim(dir.path()).await;
    let (task, stats) = spawn_source(&shim, EtcdConnect::new([proxy.endpoint()]));

    let mut a = first.client().await;
    let mut rev = 0;
    for n in 0..20 {
        rev = put(&mut a, "www", n).await;
    }
    eventually(WAIT, "first etcd's records", || {
        snapshot(&shim).filter(|s| s.revision == rev as u64)
    })
    .await;

    // The second etcd has a short history of its own: resuming there by revision
    // would wait for revisions it will not reach for a long time.
    let mut b = second.client().await;
    put(&mut b, "www", 700).await;
    put(&mut b, "db", 701).await;
    proxy.set_target(second.client_addr());
    eventually(WAIT, "the second etcd's records", || {
        (number(&shim, "www") == Some(700) && number(&shim, "db") == Some(701)).then_some(())
    })
    .await;
    assert_eq!(stats.full_loads(), 2);
    put(&mut b, "api", 702).await;
    eventually(WAIT, "a later write to the second etcd", || {
        number(&shim, "api")
    })
    .await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_cut_short_between_its_transactions_is_never_served_half() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let mut client = etcd.client().await;
    let record = |n: u32| encode_value(&numbered(n), Some(std::time::SystemTime::now())).unwrap();
    write_committed(
        &mut client,
        PREFIX,
        vec![
            TxnOp::put(record_key(PREFIX, ZONE, "www"), record(1), None),
            TxnOp::put(record_key(PREFIX, ZONE, "api"), record(1), None),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let running = start_shim(&dir.path().join("running")).await;
    let (task, stats) = spawn_source(&running, etcd.connect());
    eventually(WAIT, "first publish", || {
        snapshot(&running).filter(|s| s.names.len() == 2)
    })
    .await;

    // Two transactions of a publish whose leader died before its last one: the
    // commit marker never comes.
    let seen = stats.events();
    client
        .put(record_key(PREFIX, ZONE, "www"), record(2), None)
        .await
        .unwrap();
    client
        .delete(record_key(PREFIX, ZONE, "api"), None)
        .await
        .unwrap();
    eventually(WAIT, "both changes watched", || {
        (stats.events() >= seen + 2).then_some(())
    })
    .await;
    assert_eq!(number(&running, "www"), Some(1), "held, not served");
    assert_eq!(number(&running, "api"), Some(1), "held, not served");

    // A replica starting now loads the last whole publish.
    let starting = start_shim(&dir.path().join("starting")).await;
    let (task2, _) = spawn_source(&starting, etcd.connect());
    eventually(WAIT, "full load", || snapshot(&starting)).await;
    assert_eq!(number(&starting, "www"), Some(1));
    assert_eq!(number(&starting, "api"), Some(1));

    // The next publish commits, and both take everything at once.
    let rev = put(&mut client, "db", 3).await as u64;
    for shim in [&running, &starting] {
        let snap = eventually(WAIT, "next publish", || {
            snapshot(shim).filter(|s| s.revision == rev)
        })
        .await;
        let names: Vec<&String> = snap.names.keys().collect();
        assert_eq!(names, ["db", "www"]);
        assert_eq!(number(shim, "www"), Some(2));
        assert_eq!(number(shim, "db"), Some(3));
    }
    task.abort();
    task2.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_without_commit_markers_are_followed_change_by_change() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let mut client = etcd.client().await;
    let record = |n: u32| encode_value(&numbered(n), Some(std::time::SystemTime::now())).unwrap();
    // A writer that puts no marker (an older version).
    client
        .put(record_key(PREFIX, ZONE, "www"), record(1), None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shim = start_shim(dir.path()).await;
    let (task, _) = spawn_source(&shim, etcd.connect());
    eventually(WAIT, "load", || number(&shim, "www")).await;
    client
        .put(record_key(PREFIX, ZONE, "www"), record(2), None)
        .await
        .unwrap();
    eventually(WAIT, "unmarked change", || {
        (number(&shim, "www") == Some(2)).then_some(())
    })
    .await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shim_never_takes_an_override_weight_outside_the_documented_range() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shim = lifeline_dns::Shim::start_with(
        &shim_config(dir.path()),
        &[zone_config()],
        lifeline_dns::StartOptions {
            break_glass: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let task = source::spawn(
        Box::new(lifeline_etcd::overrides::EtcdOverrides::new(
            etcd.connect(),
            PREFIX,
        )),
        shim.clone(),
    );
    let mut client = etcd.client().await;
    for (id, weight) in [("heavy", 5_000_000), ("fine", 10)] {
        let o = lifeline_model::Override {
            id: id.into(),
            action: lifeline_model::OverrideAction::Weight(weight),
            ..drain("c1")
        };
        client
            .put(
                format!("{PREFIX}/overrides/{id}"),
                encode_value(&o, None).unwrap(),
                None,
            )
            .await
            .unwrap();
    }
    // What the shim applies is what it keeps on disk. Read without `load_overrides`,
    // which also clears the writer's temporary files (it is meant for start-up).
    let newest = || {
        let mut kept: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path())
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "overrides"))
            .collect();
        kept.sort();
        let bytes = std::fs::read(kept.last()?).ok()?;
        lifeline_dns::snapshots::decode_overrides(&bytes).ok()
    };
    let kept = eventually(WAIT, "overrides applied and kept", || {
        newest().filter(|s| !s.overrides.is_empty())
    })
    .await;
    let ids: Vec<&str> = kept.overrides.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["fine"]);
    task.abort();
}
