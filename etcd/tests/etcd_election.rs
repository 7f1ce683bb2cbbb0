//! Leader election against a real etcd: one leader at a time, takeover when the
//! leader's lease is revoked or simply stops being renewed (a crashed process).

use std::time::Duration;

use lifeline_etcd::{EtcdStore, Leadership};
use lifeline_testkit::{Etcd, Proxy, etcd::lead, within};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(2);
/// For tests that must not lose a lease by accident, or that compare two moments a
/// fraction of the TTL apart: a loaded machine can delay a renewal or a wake-up by
/// hundreds of milliseconds, which a 2 s lease does not absorb.
const STEADY_TTL: Duration = Duration::from_secs(6);

async fn store(etcd: &Etcd) -> EtcdStore {
    etcd.store("/lifeline").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_two_candidates_leads_and_the_other_takes_over_when_the_lease_is_revoked() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let (a, b) = (store(&etcd).await, store(&etcd).await);
    let leader_a = lead(&a, "replica-a", STEADY_TTL).await;
    assert!(leader_a.is_current());

    // B campaigns while A leads: it must not win.
    let candidate_b = Leadership::new(&b, "replica-b", STEADY_TTL);
    let mut campaign_b = tokio::spawn(async move { candidate_b.campaign().await });
    let waited = tokio::time::timeout(Duration::from_secs(3), &mut campaign_b).await;
    assert!(
        waited.is_err(),
        "a second candidate was elected while the first still led"
    );
    assert_eq!(
        a.leader_identity().await.unwrap().as_deref(),
        Some("replica-a")
    );

    // Revoke A's lease from outside, as an operator or an expired lease would.
    let revoked_at = Instant::now();
    let mut client = etcd.client().await;
    client.lease_revoke(leader_a.lease_id()).await.unwrap();
    let leader_b = within(Duration::from_secs(10), campaign_b)
        .await
        .unwrap()
        .unwrap();
    let takeover = revoked_at.elapsed();
    println!("takeover after lease revocation: {takeover:?}");
    assert!(leader_b.is_current());
    assert!(leader_b.revision() > leader_a.revision());
    assert_eq!(
        b.leader_identity().await.unwrap().as_deref(),
        Some("replica-b")
    );

    // A learns it lost within about a third of the TTL (its next renewal).
    within(Duration::from_secs(5), leader_a.lost()).await;
    assert!(!leader_a.is_current());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_is_replaced_once_its_lease_expires() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let (a, b) = (store(&etcd).await, store(&etcd).await);
    let leader_a = lead(&a, "replica-a", TTL).await;
    let candidate_b = Leadership::new(&b, "replica-b", TTL);
    let campaign_b = tokio::spawn(async move { candidate_b.campaign().await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Dropping the leader stops its renewals without revoking: what kill -9 leaves.
    let crashed_at = Instant::now();
    drop(leader_a);
    let leader_b = within(Duration::from_secs(10), campaign_b)
        .await
        .unwrap()
        .unwrap();
    let takeover = crashed_at.elapsed();
    println!("takeover after a leader crash (lease TTL {TTL:?}): {takeover:?}");
    assert!(leader_b.is_current());
    assert!(
        takeover < TTL + Duration::from_secs(3),
        "takeover took {takeover:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resigning_leader_hands_over_at_once() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let (a, b) = (store(&etcd).await, store(&etcd).await);
    let leader_a = lead(&a, "replica-a", STEADY_TTL).await;
    let candidate_b = Leadership::new(&b, "replica-b", STEADY_TTL);
    let campaign_b = tokio::spawn(async move { candidate_b.campaign().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resigned_at = Instant::now();
    within(Duration::from_secs(5), leader_a.resign())
        .await
        .unwrap();
    let leader_b = within(Duration::from_secs(5), campaign_b)
        .await
        .unwrap()
        .unwrap();
    println!("takeover after resignation: {:?}", resigned_at.elapsed());
    assert!(
        resigned_at.elapsed() < STEADY_TTL,
        "resigning must not wait for the TTL"
    );
    assert!(leader_b.is_current());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_keeps_its_lease_alive_well_past_the_ttl() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let a = store(&etcd).await;
    let leader = lead(&a, "replica-a", TTL).await;
    tokio::time::sleep(TTL * 3).await;
    assert!(leader.is_current());
    // The fence still accepts its writes.
    a.save_decision(&leader, &Default::default()).await.unwrap();
    assert_eq!(
        a.leader_identity().await.unwrap().as_deref(),
        Some("replica-a")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_steps_down_before_another_can_take_over() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    // A reaches etcd through a proxy the test cuts: a partition, not a crash.
    let proxy = Proxy::start(etcd.client_addr()).await;
    let mut via_proxy = etcd.connect();
    via_proxy.endpoints = vec![proxy.endpoint()];
    via_proxy.request_timeout = Some(Duration::from_millis(500));
    let a = EtcdStore::connect(&via_proxy, "/lifeline").await.unwrap();
    let b = store(&etcd).await;
    let leader_a = lead(&a, "replica-a", STEADY_TTL).await;
    let candidate_b = Leadership::new(&b, "replica-b", STEADY_TTL);
    let campaign_b = tokio::spawn(async move {
        let leader = candidate_b.campaign().await;
        (leader, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let cut_at = Instant::now();
    proxy.set_blocked(true);
    within(Duration::from_secs(10), leader_a.lost()).await;
    let a_stepped_down = Instant::now();
    let (leader_b, b_elected) = within(Duration::from_secs(10), campaign_b).await.unwrap();
    let leader_b = leader_b.unwrap();
    println!(
        "partitioned leader stepped down after {:?}; new leader elected after {:?}",
        a_stepped_down - cut_at,
        b_elected - cut_at
    );
    assert!(
        a_stepped_down <= b_elected,
        "the old leader must give up before the new one starts"
    );

    // Healed: the old leader's writes are fenced off, the new leader's go through.
    proxy.set_blocked(false);
    let err = within(
        Duration::from_secs(10),
        a.save_decision(&leader_a, &Default::default()),
    )
    .await
    .unwrap_err();
    assert!(err.is_not_leader(), "expected NotLeader, got {err}");
    b.save_decision(&leader_b, &Default::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_keeps_leadership_through_a_quick_etcd_restart() {
    let Some(mut etcd) = Etcd::start().await else {
        return;
    };
    // Long enough that etcd's restart on a loaded machine fits inside it.
    let ttl = Duration::from_secs(12);
    let a = store(&etcd).await;
    let leader = lead(&a, "replica-a", ttl).await;
    let stopped_at = Instant::now();
    etcd.stop();
    etcd.start_again().await;
    println!("etcd was down for {:?}", stopped_at.elapsed());
    // etcd renews every lease when it comes back, and the keeper reconnects.
    tokio::time::sleep(ttl).await;
    assert!(
        leader.is_current(),
        "a short etcd outage must not cost leadership"
    );
    within(
        Duration::from_secs(10),
        a.save_decision(&leader, &Default::default()),
    )
    .await
    .unwrap();
}
