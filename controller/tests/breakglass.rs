//! Break-glass: with no leader and no Kubernetes API, `lifeline ctl --etcd drain` changes
//! what a standalone `lifeline dns` replica answers, the replica keeps the drain across
//! a restart while etcd is down, and `clear` undoes it.

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{ConfigFile, etcd_store, etcd_target, spawn};
use lifeline_testkit::{
    Backend, Etcd, dns::await_answer, fixtures::static_cluster, free_addr, free_port, loopback,
};

const ZONE: &str = "bg.lifeline.test";
const NAME: &str = "web.bg.lifeline.test";
const PREFIX: &str = "/lifeline-breakglass";

/// `lifeline ctl --etcd` against this test's prefix: whether it succeeded, and what it
/// printed (stdout, then stderr).
fn run_ctl(etcd: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .arg("ctl")
        .args(etcd_target(etcd, PREFIX))
        .args(args)
        .output()
        .expect("run lifeline ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `lifeline ctl --etcd` that must succeed; what it printed.
fn ctl(etcd: &str, args: &[&str]) -> String {
    let (ok, stdout, stderr) = run_ctl(etcd, args);
    assert!(ok, "ctl {args:?} failed: {stdout}{stderr}");
    stdout
}

/// `lifeline ctl --etcd` that must fail; what it printed.
fn ctl_refused(etcd: &str, args: &[&str]) -> String {
    let (ok, stdout, stderr) = run_ctl(etcd, args);
    assert!(!ok, "ctl {args:?} succeeded: {stdout}{stderr}");
    format!("{stdout}{stderr}")
}

/// Waits until the answer holds exactly the addresses in `want` (in any order).
async fn wait_for(dns: SocketAddr, want: &[IpAddr], limit: Duration) {
    let mut want = want.to_vec();
    want.sort();
    await_answer(dns, NAME, limit, move |ips| ips == want).await;
}

/// The shared policy: both clusters answered, half each.
const WEIGHTED: &str = "strategy: Weighted\n  targets: [{cluster: primary, weight: 50}, {cluster: secondary, weight: 50}]";

/// Primary answered, secondary in reserve.
const FAILOVER: &str = "strategy: Failover\n  targets: [{cluster: primary, priority: 0}, {cluster: secondary, priority: 1}]";

/// Waits for the leader's lease to expire once it is gone.
async fn until_no_leader(store: &lifeline_etcd::EtcdStore) {
    let start = Instant::now();
    while store.leader_identity().await.unwrap().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the leader's lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn config(
    dir: &Path,
    name: &str,
    etcd: &str,
    members: (IpAddr, IpAddr),
    port: u16,
) -> (SocketAddr, std::path::PathBuf) {
    config_with(dir, name, etcd, members, port, WEIGHTED)
}

fn config_with(
    dir: &Path,
    name: &str,
    etcd: &str,
    (primary, secondary): (IpAddr, IpAddr),
    port: u16,
    strategy: &str,
) -> (SocketAddr, std::path::PathBuf) {
    let (dns, admin) = (free_addr(), free_addr());
    let path = dir.join(format!("{name}.yaml"));
    ConfigFile {
        zone: ZONE,
        dns,
        snapshots: dir.join(format!("snap-{name}")),
        admin,
        store: etcd_store(etcd, PREFIX, "2s"),
        documents: &["docs.yaml"],
    }
    .write(&path);
    std::fs::write(
        dir.join("docs.yaml"),
        format!(
            "{}---\n{}---\n\
apiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: web, namespace: shop}}\nspec:\n  hostname: {NAME}\n  {strategy}\n  healthCheck: {{http: {{port: {port}}}, interval: 200ms, timeout: 150ms}}\n",
            static_cluster("primary", "a", primary),
            static_cluster("secondary", "b", secondary),
        ),
    )
    .unwrap();
    (dns, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_against_etcd_drains_a_cluster_on_a_standalone_dns_replica_with_no_leader() {
    let Some(mut etcd) = Etcd::start().await else {
        return;
    };
    let endpoint = etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let members = (loopback(), loopback());
    let port = free_port(&[members.0, members.1]);
    let _a = Backend::start(SocketAddr::new(members.0, port)).await;
    let _b = Backend::start(SocketAddr::new(members.1, port)).await;
    let (run_dns, run_config) = config(dir.path(), "run", &endpoint, members, port);
    let (edge_dns, edge_config) = config(dir.path(), "edge", &endpoint, members, port);

    // A leader publishes the records once, then goes away for good.
    let leader = spawn(&["run"], &run_config);
    wait_for(run_dns, &[members.0, members.1], Duration::from_secs(20)).await;
    let edge = spawn(&["dns"], &edge_config);
    wait_for(edge_dns, &[members.0, members.1], Duration::from_secs(20)).await;
    drop(leader);
    let store = etcd.store(PREFIX).await;
    until_no_leader(&store).await;

    // A name the mirrored policy set does not define is refused, naming it, and
    // nothing is written.
    for (args, expect) in [
        (vec!["drain", "nope"], "unknown cluster \"nope\""),
        (
            vec!["drain", "primary", "--policy", "shop/nope"],
            "unknown policy \"shop/nope\"",
        ),
    ] {
        let refused = ctl_refused(
            &endpoint,
            &[
                &args[..],
                &["--for", "10m", "--reason", "typo", "--author", "oncall"],
            ]
            .concat(),
        );
        assert!(refused.contains(expect), "expected {expect:?} in {refused}");
    }
    assert!(
        !ctl(&endpoint, &["overrides"]).contains("typo"),
        "a refused override was stored"
    );

    // Break glass: drain the primary straight through etcd.
    let out = ctl(
        &endpoint,
        &[
            "drain",
            "primary",
            "--for",
            "10m",
            "--reason",
            "api servers down",
            "--author",
            "oncall",
        ],
    );
    assert!(out.contains("override drain-primary-"), "{out}");
    wait_for(edge_dns, &[members.1], Duration::from_secs(10)).await;
    let listed = ctl(&endpoint, &["overrides"]);
    assert!(
        listed.contains("primary") && listed.contains("api servers down"),
        "{listed}"
    );
    let status = ctl(&endpoint, &["status"]);
    assert!(status.starts_with("leader: none"), "{status}");

    // The replica keeps the drain beside its snapshot: killed and restarted while etcd
    // is down, its very first answer is still drained.
    let kept = dir.path().join("snap-edge");
    let start = Instant::now();
    while !std::fs::read_dir(&kept)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".overrides"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the drain never reached {}",
            kept.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    etcd.stop();
    drop(edge); // SIGKILL
    let edge = spawn(&["dns"], &edge_config);
    let first = tokio::task::spawn_blocking(move || {
        // Bounded: 200 tries of at most 500 ms.
        (0..200)
            .find_map(|_| {
                let answer = lifeline_testkit::dns::query_a(edge_dns, NAME).ok();
                if answer.is_none() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                answer
            })
            .expect("the restarted replica never answered")
    })
    .await
    .unwrap();
    assert_eq!(
        first,
        vec![members.1],
        "restarted with etcd down, the replica still applies the drain"
    );
    etcd.start_again().await;

    // And back.
    let out = ctl(&endpoint, &["clear", "primary"]);
    assert_eq!(out.trim(), "cleared 1 override(s)");
    wait_for(edge_dns, &[members.0, members.1], Duration::from_secs(10)).await;
    drop(edge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_leader_draining_the_answered_tier_moves_replicas_to_the_next_and_an_empty_drain_is_refused()
 {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let endpoint = etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let members = (loopback(), loopback());
    let port = free_port(&[members.0, members.1]);
    let _a = Backend::start(SocketAddr::new(members.0, port)).await;
    let _b = Backend::start(SocketAddr::new(members.1, port)).await;
    let (run_dns, run_config) = config_with(dir.path(), "run", &endpoint, members, port, FAILOVER);
    let (edge_dns, edge_config) =
        config_with(dir.path(), "edge", &endpoint, members, port, FAILOVER);

    // The leader answers the primary and publishes the secondary in reserve (once both
    // are seen healthy), then goes away for good.
    let leader = spawn(&["run"], &run_config);
    wait_for(run_dns, &[members.0], Duration::from_secs(20)).await;
    let store = etcd.store(PREFIX).await;
    let start = Instant::now();
    loop {
        let records = store.records().await.unwrap();
        let reserve = (records.get(ZONE).and_then(|names| names.get("web")))
            .and_then(|r| r.address.as_ref())
            .map_or(0, |a| a.standby.len());
        if reserve == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the secondary never reached the published reserve: {records:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let edge = spawn(&["dns"], &edge_config);
    wait_for(edge_dns, &[members.0], Duration::from_secs(20)).await;
    drop(leader);
    until_no_leader(&store).await;

    // Draining the answered cluster: ctl says where the replicas will answer, and warns
    // that no leader runs; the replica moves to the tier in reserve.
    let out = ctl(
        &endpoint,
        &[
            "drain",
            "primary",
            "--for",
            "10m",
            "--reason",
            "region on fire",
            "--author",
            "oncall",
        ],
    );
    assert!(
        out.contains(&format!("{NAME}: primary -> secondary")),
        "{out}"
    );
    assert!(out.contains("warning: no leader holds the lease"), "{out}");
    let drained = Instant::now();
    wait_for(edge_dns, &[members.1], Duration::from_secs(10)).await;
    println!(
        "the replica answered the next tier {:?} after ctl returned",
        drained.elapsed()
    );

    // Draining the secondary too would leave the name nothing: refused, naming it, and
    // not written.
    let refused = ctl_refused(
        &endpoint,
        &[
            "drain",
            "secondary",
            "--for",
            "10m",
            "--reason",
            "both",
            "--author",
            "oncall",
        ],
    );
    assert!(
        refused.contains("would leave 1 name(s) with no target") && refused.contains(NAME),
        "{refused}"
    );
    assert!(!ctl(&endpoint, &["overrides"]).contains("both"));
    wait_for(edge_dns, &[members.1], Duration::from_secs(2)).await;
    drop(edge);
}
