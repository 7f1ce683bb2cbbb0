//! DNS never shares the controller's fate: `lifeline run` as a real process with a policy
//! whose decision panics, or never returns (the test-only fault annotation, honoured only
//! with `LIFELINE_TEST_FAULTS=1`). The process stays up, every name keeps answering, the
//! poisoned policy keeps its last answers and is reported, the other policy still fails
//! over, and a restart (kill -9) does not crash on it either.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

mod common;

use common::{ConfigFile, embedded_store, etcd_store, json_body, spawn_run, text_body};
use lifeline_testkit::{
    Backend,
    dns::{answer_a, await_exactly},
    fixtures::static_cluster,
    free_addr, loopback,
    process::Process,
};
use serde_json::Value;

const ZONE: &str = "fate.lifeline.test";
const CHECKOUT: &str = "checkout.fate.lifeline.test";
const SEARCH: &str = "search.fate.lifeline.test";
/// The policy documents' files.
const DOCUMENTS: [&str; 2] = ["clusters.yaml", "policies.yaml"];

/// `lifeline run` with test faults on.
fn start(config: &Path) -> Process {
    spawn_run(config, true)
}

/// A test's files in a fresh directory: one process's configuration and documents, with
/// no fault yet.
struct Setup {
    dir: tempfile::TempDir,
    /// The primary's and the secondary's address.
    ips: [IpAddr; 2],
    /// The backends' port: the policies' health check port.
    port: u16,
    dns: SocketAddr,
    admin: SocketAddr,
}

impl Setup {
    /// The files, and both clusters' backends up (the primary's first).
    async fn new() -> (Setup, [Backend; 2]) {
        let dir = tempfile::tempdir().unwrap();
        let ips = [loopback(), loopback()];
        let backends = Backend::start_on(ips).await;
        let port = backends[0].addr.port();
        let (dns, admin) = (free_addr(), free_addr());
        write_files(dir.path(), dns, admin, ips, port);
        let setup = Setup {
            dir,
            ips,
            port,
            dns,
            admin,
        };
        (setup, backends)
    }
}

/// `lifeline.yaml`, the clusters, and the two policies (no fault yet).
fn write_files(dir: &Path, dns: SocketAddr, admin: SocketAddr, ips: [IpAddr; 2], port: u16) {
    ConfigFile {
        zone: ZONE,
        dns,
        snapshots: dir.join("snapshots"),
        admin,
        store: embedded_store(&dir.join("store")),
        documents: &DOCUMENTS,
    }
    .write(&dir.join("lifeline.yaml"));
    std::fs::write(
        dir.join("clusters.yaml"),
        format!(
            "{}---\n{}",
            static_cluster("primary", "eu", ips[0]),
            static_cluster("secondary", "us", ips[1]),
        ),
    )
    .unwrap();
    write_policies(dir, port, None);
}

/// Waits until `dns` answers both names with `ip`.
async fn both_answer(dns: SocketAddr, ip: IpAddr, limit: Duration) {
    for name in [CHECKOUT, SEARCH] {
        await_exactly(dns, name, ip, limit).await;
    }
}

/// Writes the two policies; `fault` (`panic` or `hang`) goes on `search` as the test
/// fault annotation.
fn write_policies(dir: &Path, port: u16, fault: Option<&str>) {
    let policy = |name: &str, annotation: &str| {
        format!(
            "apiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: {name}, namespace: shop{annotation}}}\nspec:\n  hostname: {name}.{ZONE}\n  ttl: 5\n  targets: [{{cluster: primary, priority: 0}}, {{cluster: secondary, priority: 1}}]\n  healthCheck: {{http: {{port: {port}}}, interval: 200ms, timeout: 150ms, unhealthyThreshold: 2, healthyThreshold: 2}}\n  failback: {{holdDown: 3s, rampDuration: 0s}}\n"
        )
    };
    let fault = fault
        .map(|kind| format!(", annotations: {{lifeline.dev/test-fault: {kind}}}"))
        .unwrap_or_default();
    let text = format!(
        "{}---\n{}",
        policy("checkout", ""),
        policy("search", &fault)
    );
    // Replace atomically: the controller polls the file and must never read half of it.
    let tmp = dir.join("policies.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("policies.yaml")).unwrap();
}

/// `/v1/status`, polled until `check` holds (at most 30 s: finding a hung policy takes
/// two 5 s deadlines).
async fn status_until(admin: SocketAddr, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{admin}/v1/status");
    lifeline_testkit::eventually_async(Duration::from_secs(30), what, || async {
        let resp = http.get(&url).send().await.ok()?;
        let body: Value = resp.json().await.ok()?;
        check(&body).then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_whose_decision_panics_is_quarantined_and_dns_and_the_others_go_on() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (s, [mut primary, _secondary]) = Setup::new().await;
    let config = s.dir.path().join("lifeline.yaml");

    let mut lifeline = start(&config);
    both_answer(s.dns, s.ips[0], Duration::from_secs(15)).await;

    // Poison `search`: deciding it now panics, on every decision.
    write_policies(s.dir.path(), s.port, Some("panic"));
    let status = status_until(s.admin, "search quarantined", |s| {
        s["quarantined"]["shop/search"].is_string()
    })
    .await;
    let reason = status["quarantined"]["shop/search"].as_str().unwrap();
    assert!(reason.contains("panicked"), "{reason}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let metrics = text_body(http.get(format!("http://{}/metrics", s.admin))).await;
    assert!(
        metrics.contains("lifeline_quarantined_policies 1"),
        "{metrics}"
    );

    // The primary dies: `checkout` still fails over; `search` keeps its last answer.
    primary.kill().await;
    await_exactly(s.dns, CHECKOUT, s.ips[1], Duration::from_secs(10)).await;
    assert_eq!(
        answer_a(s.dns, SEARCH).ok(),
        Some(vec![s.ips[0]]),
        "a quarantined policy keeps serving its last answers"
    );
    assert!(lifeline.is_running(), "the process survives the panics");

    // kill -9 and start again with the poisoned policy still there: no crash loop, and
    // both names answer from the persisted state.
    drop(lifeline);
    let mut lifeline = start(&config);
    await_exactly(s.dns, CHECKOUT, s.ips[1], Duration::from_secs(15)).await;
    assert_eq!(answer_a(s.dns, SEARCH).ok(), Some(vec![s.ips[0]]));
    status_until(s.admin, "search quarantined again after the restart", |s| {
        s["quarantined"]["shop/search"].is_string()
    })
    .await;
    assert!(lifeline.is_running(), "the restarted process survives too");

    // The fix: the annotation goes, the policy is decided again and fails over too.
    write_policies(s.dir.path(), s.port, None);
    await_exactly(s.dns, SEARCH, s.ips[1], Duration::from_secs(15)).await;
    status_until(s.admin, "the quarantine lifted", |s| {
        s.get("quarantined").is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_whose_decision_never_returns_is_quarantined_and_the_others_go_on() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (s, [mut primary, _secondary]) = Setup::new().await;
    let mut lifeline = start(&s.dir.path().join("lifeline.yaml"));
    both_answer(s.dns, s.ips[0], Duration::from_secs(15)).await;

    // Deciding `search` now never returns. Meanwhile DNS answers every name.
    write_policies(s.dir.path(), s.port, Some("hang"));
    let status = status_until(s.admin, "search quarantined as hung", |s| {
        s["quarantined"]["shop/search"].is_string()
    })
    .await;
    let reason = status["quarantined"]["shop/search"].as_str().unwrap();
    assert!(reason.contains("did not finish"), "{reason}");
    assert_eq!(answer_a(s.dns, SEARCH).ok(), Some(vec![s.ips[0]]));

    // The other policy is still decided: it fails over.
    primary.kill().await;
    await_exactly(s.dns, CHECKOUT, s.ips[1], Duration::from_secs(10)).await;
    assert_eq!(
        answer_a(s.dns, SEARCH).ok(),
        Some(vec![s.ips[0]]),
        "the hung policy keeps its last answers"
    );
    assert!(lifeline.is_running());
}

/// A replica's configuration: its own DNS, admin and data directories, the shared etcd
/// and the shared documents. The 4 s lease keeps a loaded machine from handing the lead
/// to another replica by accident (these tests choose who leads).
fn write_replica(dir: &Path, n: usize, dns: SocketAddr, admin: SocketAddr, etcd: &str) {
    ConfigFile {
        zone: ZONE,
        dns,
        snapshots: dir.join(format!("snapshots-{n}")),
        admin,
        store: etcd_store(etcd, "/fate", "4s"),
        documents: &DOCUMENTS,
    }
    .write(&dir.join(format!("replica-{n}.yaml")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_a_poisoned_policy_stops_no_replica_and_no_leader_that_takes_over() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(etcd) = lifeline_testkit::etcd::Etcd::start().await else {
        eprintln!("etcd not installed; skipped");
        return;
    };
    // The single-process files, then two replicas sharing etcd.
    let (s, [mut primary, _secondary]) = Setup::new().await;
    let replicas: Vec<(SocketAddr, SocketAddr)> =
        (0..2).map(|_| (free_addr(), free_addr())).collect();
    for (n, (dns, admin)) in replicas.iter().enumerate() {
        write_replica(s.dir.path(), n, *dns, *admin, &etcd.endpoint());
    }
    let mut running: Vec<Process> = (0..2)
        .map(|n| start(&s.dir.path().join(format!("replica-{n}.yaml"))))
        .collect();
    for (dns, _) in &replicas {
        both_answer(*dns, s.ips[0], Duration::from_secs(20)).await;
    }

    // Poison `search`; the leader quarantines it, whichever replica that is.
    write_policies(s.dir.path(), s.port, Some("panic"));
    let quarantined = |s: &Value| s["quarantined"]["shop/search"].is_string();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let leader = lifeline_testkit::eventually_async(
        Duration::from_secs(30),
        "a replica quarantines search",
        || async {
            for (i, (_, admin)) in replicas.iter().enumerate() {
                let url = format!("http://{admin}/v1/status");
                let Ok(resp) = http.get(&url).send().await else {
                    continue;
                };
                if resp.json::<Value>().await.is_ok_and(|s| quarantined(&s)) {
                    return Some(i);
                }
            }
            None
        },
    )
    .await;

    // The follower says its status is the leader's decision as read from etcd.
    let follower = replicas[1 - leader].1;
    status_until(follower, "the follower's status says it follows", |s| {
        s["followed"]["readAt"].is_string() && s["revision"].as_u64() > Some(0)
    })
    .await;
    let own = json_body(http.get(format!("http://{}/v1/status", replicas[leader].1))).await;
    assert!(own.get("followed").is_none(), "{own}");

    // Every replica answers both names; `checkout` still fails over on each of them.
    primary.kill().await;
    for (dns, _) in &replicas {
        await_exactly(*dns, CHECKOUT, s.ips[1], Duration::from_secs(15)).await;
        assert_eq!(answer_a(*dns, SEARCH).ok(), Some(vec![s.ips[0]]));
    }
    assert!(
        running.iter_mut().all(Process::is_running),
        "no replica crashed"
    );

    // The leader dies (kill -9): the other replica leads, meets the same poisoned
    // policy, quarantines it as well, and keeps answering.
    drop(running.remove(leader));
    let (dns, admin) = replicas[1 - leader];
    status_until(admin, "the new leader quarantines search", quarantined).await;
    assert_eq!(answer_a(dns, CHECKOUT).ok(), Some(vec![s.ips[1]]));
    assert_eq!(answer_a(dns, SEARCH).ok(), Some(vec![s.ips[0]]));
    assert!(
        running[0].is_running(),
        "the new leader survives the panics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_saving_and_publishing_a_failover_never_brings_the_dead_primary_back() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (s, [mut primary, _secondary]) = Setup::new().await;
    write_policies(s.dir.path(), s.port, Some("abort-before-publish"));
    let config = s.dir.path().join("lifeline.yaml");
    let mut lifeline = start(&config);
    both_answer(s.dns, s.ips[0], Duration::from_secs(15)).await;

    // The primary dies; the failover decision is made and saved, then the process
    // aborts (as kill -9 would) before publishing it.
    primary.kill().await;
    lifeline_testkit::eventually_async(Duration::from_secs(15), "the process aborts", || {
        let running = lifeline.is_running();
        async move { (!running).then_some(()) }
    })
    .await;
    let saved: Value =
        serde_json::from_slice(&std::fs::read(s.dir.path().join("store/decision.json")).unwrap())
            .unwrap();
    let answered = saved["value"]["policies"]["shop/search"]["answers"].to_string();
    assert!(
        answered.contains(&s.ips[1].to_string()) && !answered.contains(&s.ips[0].to_string()),
        "the saved decision is older than the one being published: {answered}"
    );

    // Restarted (faults off): the saved failover is published, and the dead primary
    // never comes back.
    let _restarted = spawn_run(&config, false);
    both_answer(s.dns, s.ips[1], Duration::from_secs(15)).await;
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        for name in [SEARCH, CHECKOUT] {
            let got = answer_a(s.dns, name);
            assert_eq!(
                got.addresses(),
                [s.ips[1]],
                "{name} went back to the dead primary"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_a_leader_killed_between_saving_and_publishing_a_failover_is_succeeded_without_the_dead_primary()
 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(etcd) = lifeline_testkit::etcd::Etcd::start().await else {
        eprintln!("etcd not installed; skipped");
        return;
    };
    let (s, [mut primary, _secondary]) = Setup::new().await;
    write_policies(s.dir.path(), s.port, Some("abort-before-publish"));
    let replicas: Vec<(SocketAddr, SocketAddr)> =
        (0..2).map(|_| (free_addr(), free_addr())).collect();
    for (n, (dns, admin)) in replicas.iter().enumerate() {
        write_replica(s.dir.path(), n, *dns, *admin, &etcd.endpoint());
    }
    // Replica 0 leads (it starts alone) and honours the fault; replica 1 does not.
    let mut leader = start(&s.dir.path().join("replica-0.yaml"));
    await_exactly(replicas[0].0, SEARCH, s.ips[0], Duration::from_secs(20)).await;
    let _follower = spawn_run(&s.dir.path().join("replica-1.yaml"), false);
    both_answer(replicas[1].0, s.ips[0], Duration::from_secs(20)).await;

    // The primary dies; the leader saves the failover to etcd and aborts (as kill -9
    // would) before publishing it.
    primary.kill().await;
    lifeline_testkit::eventually_async(Duration::from_secs(15), "the leader aborts", || {
        let running = leader.is_running();
        async move { (!running).then_some(()) }
    })
    .await;
    let store = etcd.store("/fate").await;
    let saved = store
        .load_decision()
        .await
        .unwrap()
        .expect("a saved decision");
    let answered =
        serde_json::to_value(&saved.policies["shop/search"]).unwrap()["answers"].to_string();
    assert!(
        answered.contains(&s.ips[1].to_string()) && !answered.contains(&s.ips[0].to_string()),
        "the failover was saved before the crash: {answered}"
    );

    // The follower takes over from the saved failover: both names move to the
    // secondary, and no replica answers the dead primary again.
    both_answer(replicas[1].0, s.ips[1], Duration::from_secs(20)).await;
    let _restarted = spawn_run(&s.dir.path().join("replica-0.yaml"), false);
    both_answer(replicas[0].0, s.ips[1], Duration::from_secs(20)).await;
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        for (dns, _) in &replicas {
            for name in [SEARCH, CHECKOUT] {
                assert_eq!(
                    answer_a(*dns, name).addresses(),
                    [s.ips[1]],
                    "{dns} answered {name} with the dead primary"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What happens to the store's decision files while the process is down.
#[derive(Clone, Copy, Debug)]
enum Loss {
    /// Both copies deleted.
    Removed,
    /// Both copies overwritten with bytes that do not decode.
    Corrupted,
}

/// Runs, kills -9, loses the decision (`loss`), restarts, and samples both names every
/// 20 ms for 5 s after the restart: every answer must be the one served before the
/// kill. With `primary_alive` false the primary is killed (and failed over from) first.
async fn restart_without_the_decision(primary_alive: bool, loss: Loss) {
    let (s, [mut primary, _secondary]) = Setup::new().await;
    let config = s.dir.path().join("lifeline.yaml");
    let lifeline = spawn_run(&config, false);
    both_answer(s.dns, s.ips[0], Duration::from_secs(15)).await;
    let expected = if primary_alive {
        s.ips[0]
    } else {
        primary.kill().await;
        both_answer(s.dns, s.ips[1], Duration::from_secs(15)).await;
        s.ips[1]
    };
    // Let the decision be saved, then kill -9.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(lifeline);
    let store = s.dir.path().join("store");
    for file in ["decision.json", "decision.good.json"] {
        let path = store.join(file);
        assert!(path.exists(), "{file} was not saved");
        match loss {
            Loss::Removed => std::fs::remove_file(&path).unwrap(),
            Loss::Corrupted => std::fs::write(&path, b"{\"format\":1,\"value\":{\"rev").unwrap(),
        }
    }

    let _restarted = spawn_run(&config, false);
    let case = format!("primary alive: {primary_alive}, decision {loss:?}");
    let sampler = tokio::task::spawn_blocking(move || {
        let until = std::time::Instant::now() + Duration::from_secs(5);
        let (mut answered, mut wrong) = (0usize, Vec::new());
        while std::time::Instant::now() < until {
            for name in [CHECKOUT, SEARCH] {
                // A short wait: a reply lost while the process starts must not hide the
                // few hundred milliseconds a wrong answer would last.
                let answer =
                    lifeline_testkit::dns::query_a_within(s.dns, name, Duration::from_millis(50));
                match answer.ok() {
                    Some(ips) if ips == [expected] => answered += 1,
                    Some(ips) => wrong.push(format!("{name}: {ips:?}")),
                    // A lost reply is not an answer; what is answered is what counts.
                    None => {}
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (answered, wrong)
    });
    let (answered, wrong) = sampler.await.unwrap();
    assert!(
        wrong.is_empty(),
        "{case}: answers moved after the restart (expected only {expected}): {:?}",
        &wrong[..wrong.len().min(5)]
    );
    assert!(answered > 100, "{case}: only {answered} answers in 5 s");
    // Probes have confirmed every target by now; the answer is still the same one.
    assert_eq!(
        answer_a(s.dns, CHECKOUT).ok(),
        Some(vec![expected]),
        "{case}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_its_decision_never_answers_a_dead_primary_again() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    restart_without_the_decision(false, Loss::Removed).await;
    restart_without_the_decision(false, Loss::Corrupted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_its_decision_keeps_answering_a_live_primary() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    restart_without_the_decision(true, Loss::Removed).await;
    restart_without_the_decision(true, Loss::Corrupted).await;
}
