//! The etcd store against a real etcd: fenced leader writes, shared decision, overrides
//! with their audit trail, mirrored policies, and bad values that are reported and
//! ignored.

mod common;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use common::txt;
use lifeline_crds::document::PolicySnapshot;
use lifeline_dns::{NameRecords, Update, ZoneSnapshot};
use lifeline_engine::{
    Answer, Decision, Health, Outcome, Override, OverrideAction, PolicyDecision, TargetState,
};
use lifeline_etcd::{
    EtcdStore,
    source::{VALUE_LIMIT, encode_value, record_key},
};
use lifeline_testkit::{
    Etcd,
    etcd::lead,
    examples,
    fixtures::{ZONE, drain},
    within,
};

/// No test here waits for a lease to expire (they revoke or resign): a long TTL keeps a
/// late renewal on a loaded machine from fencing off a write by accident.
const TTL: Duration = Duration::from_secs(10);

async fn store(etcd: &Etcd) -> EtcdStore {
    etcd.store("/lifeline").await
}

fn names(pairs: &[(&str, &str)]) -> BTreeMap<String, NameRecords> {
    pairs
        .iter()
        .map(|(n, t)| ((*n).to_owned(), txt(t)))
        .collect()
}

/// A decision over `n` policies with three targets each; `bump` changes one policy.
fn big_decision(n: usize, bump: Option<usize>) -> Decision {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let policies = (0..n)
        .map(|i| {
            let answers: Vec<Answer> = (0..3u8)
                .map(|c| Answer {
                    cluster: format!("cluster-{c}").into(),
                    address: format!("10.{c}.{}.{}", i / 256, i % 256).parse().unwrap(),
                    region: format!("region-{c}").into(),
                    weight: 1000,
                })
                .collect();
            let targets = (0..3)
                .map(|c| {
                    (
                        format!("cluster-{c}").into(),
                        TargetState {
                            health: Health::Healthy,
                            since: at,
                            reason: "probe ok".into(),
                            ok_streak: if bump == Some(i) { 99 } else { 3 },
                            fail_streak: 0,
                            ramp_started: None,
                            share: 1000,
                            drained: false,
                            last_detail: "HTTP 200 in 3 ms".into(),
                        },
                    )
                })
                .collect();
            let pd = PolicyDecision {
                hostname: format!("svc-{i}.global.example.com"),
                ttl: 30,
                max_answers: 8,
                strategy: lifeline_crds::Strategy::Failover,
                answers: answers.clone(),
                outcome: Outcome::Normal,
                targets,
                last_good: answers,
                changed_at: at,
                basis: 0,
                resumed: false,
                standby: Vec::new(),
            };
            (format!("team-{}/svc-{i}", i % 7), Arc::new(pd))
        })
        .collect();
    Decision {
        revision: 5,
        changed_at: Some(at),
        policies,
        alarms: Vec::new(),
    }
}

/// A drain of `eu-west-1` with the id `id`.
fn an_override(id: &str) -> Override {
    Override {
        id: id.to_owned(),
        ..drain("eu-west-1")
    }
}

/// The example clusters and policies, which must be valid.
fn example_policies() -> PolicySnapshot {
    let (snapshot, problems) = examples::policies();
    assert!(problems.is_empty(), "{problems:?}");
    snapshot
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_cannot_overwrite_the_new_leaders_records() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let (a, b) = (store(&etcd).await, store(&etcd).await);
    let old = lead(&a, "replica-a", TTL).await;
    a.publish_records(
        &old,
        ZONE,
        &names(&[("www", "from-a")]),
        &[],
        SystemTime::now(),
    )
    .await
    .unwrap();

    // Depose A behind its back (its lease revoked), and let B win.
    let mut client = etcd.client().await;
    client.lease_revoke(old.lease_id()).await.unwrap();
    let new = lead(&b, "replica-b", TTL).await;
    b.publish_records(
        &new,
        ZONE,
        &names(&[("www", "from-b")]),
        &[],
        SystemTime::now(),
    )
    .await
    .unwrap();

    // A still tries to write (as a paused process would on waking up): the fence holds,
    // whatever A itself believes about its leadership.
    let err = a
        .publish_records(
            &old,
            ZONE,
            &names(&[("www", "stale-a"), ("api", "stale-a")]),
            &["other".to_owned()],
            SystemTime::now(),
        )
        .await
        .unwrap_err();
    assert!(err.is_not_leader(), "expected NotLeader, got {err}");
    let err = a
        .save_decision(
            &old,
            &Decision {
                revision: 99,
                ..Decision::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.is_not_leader(), "expected NotLeader, got {err}");
    assert!(!old.is_current(), "a fenced write marks leadership lost");

    let records = b.records().await.unwrap();
    assert_eq!(records[ZONE], names(&[("www", "from-b")]));
    assert_eq!(b.load_decision().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_survives_a_leader_change() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let (a, b) = (store(&etcd).await, store(&etcd).await);
    let leader = lead(&a, "replica-a", TTL).await;
    let decision = Decision {
        revision: 42,
        ..big_decision(3, None)
    };
    a.save_decision(&leader, &decision).await.unwrap();
    within(Duration::from_secs(5), leader.resign())
        .await
        .unwrap();
    let next = lead(&b, "replica-b", TTL).await;
    assert!(next.is_current());
    assert_eq!(b.load_decision().await.unwrap(), Some(decision));

    // The new leader's first save also removes what the old one saved and it no
    // longer has.
    let smaller = Decision {
        revision: 43,
        ..big_decision(2, Some(1))
    };
    b.save_decision(&next, &smaller).await.unwrap();
    assert_eq!(a.load_decision().await.unwrap(), Some(smaller));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_publishes_per_name_keys_and_deletes_names_it_no_longer_lists() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let s = store(&etcd).await;
    let leader = lead(&s, "replica-a", TTL).await;
    let snapshot = |rev, pairs: &[(&str, &str)]| {
        Update::Replace(ZoneSnapshot {
            names: names(pairs),
            ..ZoneSnapshot::empty(ZONE, rev, SystemTime::now())
        })
    };
    s.publish_update(&leader, &snapshot(1, &[("www", "1"), ("api", "1")]))
        .await
        .unwrap();
    s.publish_update(&leader, &snapshot(2, &[("www", "2"), ("db", "2")]))
        .await
        .unwrap();
    assert_eq!(
        s.records().await.unwrap()[ZONE],
        names(&[("www", "2"), ("db", "2")])
    );
    // More names than one etcd transaction may hold.
    let many: Vec<(String, String)> = (0..250).map(|i| (format!("n{i}"), i.to_string())).collect();
    let many_ref: Vec<(&str, &str)> = many.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    s.publish_update(&leader, &snapshot(3, &many_ref))
        .await
        .unwrap();
    assert_eq!(s.records().await.unwrap()[ZONE], names(&many_ref));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_racing_for_the_last_places_never_pass_the_override_limit() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let s = std::sync::Arc::new(store(&etcd).await);
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.put_override_within(&an_override(&format!("o{i}")), "alice", 5)
                    .await
            })
        })
        .collect();
    let mut taken = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(None) => taken += 1,
            Ok(Some(in_force)) => assert!(in_force >= 5, "refused with {in_force} in force"),
            Err(e) => assert!(e.to_string().contains("try again"), "{e}"),
        }
    }
    let stored = s.overrides().await.unwrap().len();
    assert!(
        taken <= 5 && stored == taken,
        "{taken} taken, {stored} stored"
    );
    assert!(taken >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_are_audited_and_need_no_leader() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let s = store(&etcd).await;
    s.put_override(&an_override("a"), "alice").await.unwrap();
    s.put_override(&an_override("b"), "bob").await.unwrap();
    let ids = |os: Vec<Override>| os.into_iter().map(|o| o.id).collect::<Vec<_>>();
    assert_eq!(ids(s.overrides().await.unwrap()), ["a", "b"]);
    let removed = s.remove_overrides(|o| o.id == "a", "carol").await.unwrap();
    assert_eq!(ids(removed), ["a"]);
    assert_eq!(ids(s.overrides().await.unwrap()), ["b"]);
    let trail: Vec<(String, String, String)> = s
        .audit()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.by, e.r#override.id))
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("set", "alice", "a"),
        ("set", "bob", "b"),
        ("cleared", "carol", "a"),
    ]
    .iter()
    .map(|(x, y, z)| ((*x).into(), (*y).into(), (*z).into()))
    .collect();
    assert_eq!(trail, expected);
    assert!(
        s.put_override(&an_override("no/slash"), "eve")
            .await
            .is_err()
    );

    // Pruning keeps entries at or after the cut-off.
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(s.prune_audit(hour_ago).await.unwrap(), 0);
    let soon = SystemTime::now() + Duration::from_secs(1);
    assert_eq!(s.prune_audit(soon).await.unwrap(), 3);
    assert!(s.audit().await.unwrap().is_empty());
    assert_eq!(
        ids(s.overrides().await.unwrap()),
        ["b"],
        "overrides untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_are_reported_and_ignored_and_the_last_good_value_is_kept() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let s = store(&etcd).await;
    let leader = lead(&s, "replica-a", TTL).await;
    let good = Decision {
        revision: 7,
        ..Decision::default()
    };
    s.save_decision(&leader, &good).await.unwrap();
    s.put_override(&an_override("a"), "alice").await.unwrap();
    s.publish_records(
        &leader,
        ZONE,
        &names(&[("www", "good")]),
        &[],
        SystemTime::now(),
    )
    .await
    .unwrap();

    let mut client = etcd.client().await;
    let huge = encode_value(&"x".repeat(VALUE_LIMIT), None).unwrap();
    let bad_values: [(&str, Vec<u8>); 4] = [
        ("garbage", b"\x00\xff not json".to_vec()),
        (
            "wrong format",
            br#"{"format":2,"value":{"revision":8}}"#.to_vec(),
        ),
        (
            "undecodable",
            br#"{"format":1,"value":{"revision":"eight"}}"#.to_vec(),
        ),
        ("huge", huge),
    ];
    for (what, bytes) in bad_values {
        let before = s.bad_values();
        client
            .put("/lifeline/decision", bytes.clone(), None)
            .await
            .unwrap();
        client
            .put("/lifeline/overrides/a", bytes.clone(), None)
            .await
            .unwrap();
        client
            .put(record_key("/lifeline", ZONE, "www"), bytes, None)
            .await
            .unwrap();
        assert_eq!(
            s.load_decision().await.unwrap(),
            Some(good.clone()),
            "{what}: the decision falls back to the last good value"
        );
        let overrides = s.overrides().await.unwrap();
        assert_eq!(overrides.len(), 1, "{what}: override kept");
        assert_eq!(overrides[0].id, "a");
        assert_eq!(
            s.records().await.unwrap()[ZONE],
            names(&[("www", "good")]),
            "{what}: records keep their last good value"
        );
        assert!(s.bad_values() >= before + 3, "{what}: reported");
    }

    // A fresh process, which never read the good values, finds them in etcd's history.
    let fresh = store(&etcd).await;
    assert_eq!(fresh.load_decision().await.unwrap(), Some(good));
    // A value with no good version at all is simply absent.
    client
        .put("/lifeline/overrides/zz", b"garbage".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(fresh.overrides().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_policies_let_a_replica_start_without_the_management_cluster() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let snapshot = example_policies();
    assert!(!snapshot.policies.is_empty() && !snapshot.clusters.is_empty());
    let json = |s: &PolicySnapshot| {
        let mut v: Vec<String> = s
            .policies
            .iter()
            .map(|p| serde_json::to_string(p).unwrap())
            .chain(s.clusters.iter().map(|c| serde_json::to_string(c).unwrap()))
            .collect();
        v.sort();
        v
    };

    let s = store(&etcd).await;
    let leader = lead(&s, "replica-a", TTL).await;
    s.mirror_policies(&leader, &snapshot).await.unwrap();
    let replica = store(&etcd).await;
    assert_eq!(
        json(&replica.load_policies().await.unwrap()),
        json(&snapshot)
    );

    // A document that disappears from the source disappears from the mirror.
    let mut fewer = snapshot.clone();
    fewer.policies.pop();
    s.mirror_policies(&leader, &fewer).await.unwrap();
    assert_eq!(json(&replica.load_policies().await.unwrap()), json(&fewer));

    // Only the leader mirrors.
    leader.resign().await.unwrap();
    let err = s.mirror_policies(&leader, &snapshot).await.unwrap_err();
    assert!(err.is_not_leader(), "expected NotLeader, got {err}");
    assert_eq!(json(&replica.load_policies().await.unwrap()), json(&fewer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_decision_is_saved_in_parts_and_only_changed_policies_are_rewritten() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let s = store(&etcd).await;
    let leader = lead(&s, "replica-a", TTL).await;
    // Far over etcd's 1.5 MiB request limit as one value.
    let decision = big_decision(3000, None);
    let size = serde_json::to_vec(&decision).unwrap().len();
    assert!(size > 2 << 20, "the test decision is {size} bytes");
    within(Duration::from_secs(60), s.save_decision(&leader, &decision))
        .await
        .unwrap();
    let replica = store(&etcd).await;
    assert_eq!(replica.load_decision().await.unwrap(), Some(decision));

    // One policy changes, one disappears: two policy keys and the head are written.
    let mut next = big_decision(3000, Some(17));
    next.policies.remove("team-0/svc-0");
    next.revision = 6;
    let mut client = etcd.client().await;
    let before = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    s.save_decision(&leader, &next).await.unwrap();
    let resp = client
        .get(
            "/lifeline/decision",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let rewritten: Vec<String> = resp
        .kvs()
        .iter()
        .filter(|kv| kv.mod_revision() > before)
        .map(|kv| kv.key_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        rewritten,
        [
            "/lifeline/decision",
            "/lifeline/decision/policies/team-3/svc-17"
        ]
    );
    assert_eq!(replica.load_decision().await.unwrap(), Some(next));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_save_cut_short_between_its_transactions_is_not_read_half_applied() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let s = store(&etcd).await;
    let leader = lead(&s, "replica-a", TTL).await;
    // 250 policies: three transactions, the head in the last.
    let saved = big_decision(250, None);
    s.save_decision(&leader, &saved).await.unwrap();

    // The next save dies after its first transactions: one policy rewritten, one
    // deleted, and no new head (what a leader killed mid-save leaves).
    let next = big_decision(250, Some(5));
    let changed = next
        .policies
        .iter()
        .find(|(id, pd)| saved.policies.get(*id) != Some(*pd))
        .map(|(id, pd)| (id.clone(), pd.clone()))
        .expect("one policy differs");
    let mut client = etcd.client().await;
    client
        .put(
            format!("/lifeline/decision/policies/{}", changed.0),
            encode_value(&changed.1, None).unwrap(),
            None,
        )
        .await
        .unwrap();
    client
        .delete("/lifeline/decision/policies/team-0/svc-0", None)
        .await
        .unwrap();

    // A successor reads the last whole save, not a mix of two.
    let successor = store(&etcd).await;
    assert_eq!(successor.load_decision().await.unwrap(), Some(saved));

    // Once a save completes, that is what is read (saved by a store that learns what
    // etcd holds, as the next term of a leader does).
    let mut done = next.clone();
    done.revision += 1;
    store(&etcd)
        .await
        .save_decision(&leader, &done)
        .await
        .unwrap();
    assert_eq!(successor.load_decision().await.unwrap(), Some(done));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_decode_but_break_the_rules_are_ignored_and_counted() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let snapshot = example_policies();
    let s = store(&etcd).await;
    let leader = lead(&s, "replica-a", TTL).await;
    s.mirror_policies(&leader, &snapshot).await.unwrap();

    // Someone with etcd access writes a mirrored policy that decodes but is invalid
    // (ttl 0), and an override whose weight is far out of range.
    let mut client = etcd.client().await;
    let listed = client
        .get(
            "/lifeline/policies/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    let key = listed.kvs().first().unwrap().key_str().unwrap().to_owned();
    let mut bad = snapshot
        .policies
        .iter()
        .find(|p| key.ends_with(p.metadata.name.as_deref().unwrap_or("?")))
        .expect("the key names a mirrored policy")
        .clone();
    let bad_name = bad.metadata.name.clone().unwrap();
    bad.spec.ttl = 0;
    client
        .put(key.as_str(), encode_value(&bad, None).unwrap(), None)
        .await
        .unwrap();
    let heavy = Override {
        action: OverrideAction::Weight(lifeline_model::limits::WEIGHT_MAX * 1000),
        ..an_override("heavy")
    };
    client
        .put(
            "/lifeline/overrides/heavy",
            encode_value(&heavy, None).unwrap(),
            None,
        )
        .await
        .unwrap();
    s.put_override(&an_override("fine"), "alice").await.unwrap();

    let replica = store(&etcd).await;
    let policies = replica.load_policies().await.unwrap();
    assert_eq!(policies.policies.len(), snapshot.policies.len() - 1);
    assert!(
        policies
            .policies
            .iter()
            .all(|p| p.metadata.name.as_deref() != Some(bad_name.as_str())),
        "the invalid mirrored policy is not used"
    );
    assert_eq!(policies.clusters.len(), snapshot.clusters.len());
    let ids: Vec<String> = replica
        .overrides()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(ids, ["fine"], "the out-of-range weight is not acted on");
    assert_eq!(replica.bad_values(), 2, "both are counted");
}
