//! A policy change that would stop serving many names at once is held, with the old
//! answers still served, until an operator releases it with `lifeline ctl`: through the
//! admin API, or straight through etcd. Removing one policy stays immediate.
//! `lifeline run` and `lifeline ctl` are real processes; DNS is queried over UDP.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

mod common;

use common::{
    ConfigFile, admin_target, ctl, embedded_store, etcd_store, etcd_target, get, spawn_run,
};
use lifeline_testkit::{
    dns::{Answer, answer_a, query_a},
    fixtures::static_cluster,
    free_addr,
    process::Process,
};
use serde_json::Value;

const ZONE: &str = "sweep.lifeline.test";
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

fn host(n: &str) -> String {
    format!("{n}.{ZONE}")
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// `lifeline.yaml` in `dir`, with `store` (the `store:` section).
fn config(dir: &Path, dns: SocketAddr, admin: SocketAddr, store: String) {
    ConfigFile {
        zone: ZONE,
        dns,
        snapshots: dir.join("snapshots"),
        admin,
        store,
        documents: &["docs.yaml"],
    }
    .write(&dir.join("lifeline.yaml"));
}

/// The cluster and a policy per name in `names`, in one file.
fn documents(dir: &Path, names: &[&str]) {
    let mut text = static_cluster("main", "eu", ip(7));
    for n in names {
        text += &format!(
            "---\napiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: {n}, namespace: shop}}\nspec: {{hostname: {h}, ttl: 5, targets: [{{cluster: main}}]}}\n",
            h = host(n)
        );
    }
    // Written whole, then renamed: the reload never sees half a file.
    let tmp = dir.join("docs.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join("docs.yaml")).unwrap();
}

/// Polls until `name` answers as `want` says; panics with the last answer after `limit`.
fn wait(dns: SocketAddr, name: &str, limit: Duration, want: impl Fn(&Answer) -> bool) {
    let deadline = Instant::now() + limit;
    let mut last = Answer::NoReply;
    while Instant::now() < deadline {
        last = query_a(dns, &host(name));
        if want(&last) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{name}: last answer {last:?}");
}

fn served(a: &Answer) -> bool {
    a.addresses() == [ip(7)]
}

fn nxdomain(a: &Answer) -> bool {
    *a == Answer::Error("NXDomain".to_owned())
}

/// Waits until the status shows a held change; returns it.
fn held(admin: SocketAddr) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status: Value = serde_json::from_str(&get(admin, "/v1/status")).unwrap_or(Value::Null);
        if status["held"].is_object() {
            return status["held"].clone();
        }
        assert!(Instant::now() < deadline, "no held change in {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts with four names, removes one (immediate), then empties the file (held).
fn serve_then_sweep(dir: &Path, dns: SocketAddr, admin: SocketAddr) -> Process {
    documents(dir, &NAMES);
    let lifeline = spawn_run(&dir.join("lifeline.yaml"), false);
    for n in NAMES {
        wait(dns, n, Duration::from_secs(20), served);
    }
    // One policy removed on purpose: gone at once, nothing held.
    documents(dir, &NAMES[..3]);
    wait(dns, "d", Duration::from_secs(10), nxdomain);
    let status: Value = serde_json::from_str(&get(admin, "/v1/status")).unwrap();
    assert!(status["held"].is_null(), "{status}");

    // The file edited down to its MemberCluster: held, every name still answers.
    documents(dir, &[]);
    let hold = held(admin);
    assert_eq!(hold["removed"].as_array().map(Vec::len), Some(3), "{hold}");
    assert!(
        hold["reason"].as_str().unwrap().contains("serves no name"),
        "{hold}"
    );
    let metrics = get(admin, "/metrics");
    assert!(
        metrics.contains("lifeline_policy_change_held_names 3"),
        "{metrics}"
    );
    // Well past a reload (1 s) and a decision: still answered.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for n in &NAMES[..3] {
            let a = answer_a(dns, &host(n));
            assert!(
                served(&a),
                "{n} stopped answering while the change is held: {a:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    lifeline
}

#[test]
fn a_sweeping_edit_is_held_until_released_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let (dns, admin) = (free_addr(), free_addr());
    config(
        dir.path(),
        dns,
        admin,
        embedded_store(&dir.path().join("store")),
    );
    let lifeline = serve_then_sweep(dir.path(), dns, admin);
    let target = admin_target(admin);

    let (ok, text) = ctl(&target, &["status"]);
    assert!(ok && text.contains("HELD policy change"), "{text}");
    let hold = held(admin);
    let fingerprint = hold["fingerprint"].as_str().unwrap().to_owned();
    // A release must name the change that is held.
    let (ok, text) = ctl(
        &target,
        &["release", "0123456789abcdef", "--reason", "typo"],
    );
    assert!(!ok && text.contains("not 0123456789abcdef"), "{text}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(served(&answer_a(dns, &host("a"))));

    let (ok, text) = ctl(
        &target,
        &["release", &fingerprint, "--reason", "retiring the zone"],
    );
    assert!(ok, "{text}");
    for n in &NAMES[..3] {
        wait(dns, n, Duration::from_secs(10), nxdomain);
    }
    let status: Value = serde_json::from_str(&get(admin, "/v1/status")).unwrap();
    assert!(status["held"].is_null(), "{status}");
    assert!(get(admin, "/metrics").contains("lifeline_policy_change_held_names 0"));
    lifeline.stop();
}

#[test]
fn a_held_change_survives_a_restart_and_is_released_through_etcd() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(etcd) = runtime.block_on(lifeline_testkit::etcd::Etcd::start()) else {
        eprintln!("etcd not installed; skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (dns, admin) = (free_addr(), free_addr());
    let store = etcd_store(&etcd.endpoint(), "/sweep", "2s");
    config(dir.path(), dns, admin, store);
    let lifeline = serve_then_sweep(dir.path(), dns, admin);
    let fingerprint = held(admin)["fingerprint"].as_str().unwrap().to_owned();

    // A restart reads the same file: the change is still held against the last good set.
    lifeline.stop();
    let lifeline = spawn_run(&dir.path().join("lifeline.yaml"), false);
    for n in &NAMES[..3] {
        wait(dns, n, Duration::from_secs(20), served);
    }
    assert_eq!(
        held(admin)["fingerprint"].as_str(),
        Some(fingerprint.as_str())
    );

    // Break-glass: no admin API, straight to etcd.
    let target = etcd_target(&etcd.endpoint(), "/sweep");
    let (ok, text) = ctl(&target, &["status"]);
    assert!(ok && text.contains(&fingerprint), "{text}");
    let (ok, text) = ctl(&target, &["release", &fingerprint, "--reason", "intended"]);
    assert!(ok, "{text}");
    for n in &NAMES[..3] {
        wait(dns, n, Duration::from_secs(10), nxdomain);
    }
    lifeline.stop();
}
