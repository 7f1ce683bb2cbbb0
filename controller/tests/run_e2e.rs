//! `lifeline run` as a real process, with real HTTP backends on loopback and real DNS
//! queries: failover, hold-down before failback, restart from the persisted state, and
//! a broken policy edit that must not disturb answers.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

mod common;

use lifeline_testkit::{
    Backend,
    dns::{answer_a, await_answer, await_exactly, query_a},
    fixtures::static_cluster,
    free_addr, free_port,
    process::Process,
};

const ZONE: &str = "e2e.lifeline.test";
const NAME: &str = "checkout.e2e.lifeline.test";

fn primary() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))
}
fn secondary() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))
}

fn start(config: &Path) -> Process {
    common::spawn_run(config, false)
}

fn write_files(
    dir: &Path,
    dns: SocketAddr,
    admin: SocketAddr,
    backend_port: u16,
    extra_policy: &str,
) {
    std::fs::write(
        dir.join("lifeline.yaml"),
        format!(
            "zones:\n  - origin: {ZONE}\n    primaryNs: ns1.{ZONE}\n    hostmaster: hostmaster.{ZONE}\n    nameservers: [ns1.{ZONE}]\n\
dns:\n  udp: [\"{dns}\"]\n  tcp: [\"{dns}\"]\n  dataDir: {d}/snapshots\n\
admin:\n  listen: \"{admin}\"\n\
store:\n  type: embedded\n  dataDir: {d}/store\n\
policySource:\n  type: files\n  paths: [clusters.yaml, policies.yaml]\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("clusters.yaml"),
        format!(
            "{}---\n{}",
            static_cluster("primary", "eu", primary()),
            static_cluster("secondary", "us", secondary()),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("policies.yaml"),
        format!(
            "apiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: checkout, namespace: shop}}\nspec:\n  hostname: {NAME}\n  ttl: 5\n  strategy: Failover\n  targets:\n    - {{cluster: primary, priority: 0}}\n    - {{cluster: secondary, priority: 1}}\n  healthCheck:\n    http: {{port: {backend_port}, path: /healthz}}\n    interval: 200ms\n    timeout: 150ms\n    unhealthyThreshold: 2\n    healthyThreshold: 2\n  failback: {{holdDown: 3s, rampDuration: 0s}}\n{extra_policy}"
        ),
    )
    .unwrap();
}

/// A temporary directory with the configuration and documents, and the ports they use.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    dns: SocketAddr,
    admin: SocketAddr,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(&[primary(), secondary()]);
    let (dns, admin) = (free_addr(), free_addr());
    write_files(dir.path(), dns, admin, port, "");
    Setup {
        dir,
        port,
        dns,
        admin,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_over_and_returns_only_after_hold_down() {
    let Setup { dir, port, dns, .. } = setup();
    let mut a = Backend::start(SocketAddr::new(primary(), port)).await;
    let _b = Backend::start(SocketAddr::new(secondary(), port)).await;
    let lifeline = start(&dir.path().join("lifeline.yaml"));

    let (ips, _) = await_answer(dns, NAME, Duration::from_secs(15), |ips| ips == [primary()]).await;
    assert_eq!(ips, [primary()]);

    // Kill the primary: the answer moves to the secondary.
    a.kill().await;
    let (_, took) = await_answer(dns, NAME, Duration::from_secs(15), |ips| {
        ips == [secondary()]
    })
    .await;
    eprintln!("failover observed after {took:?}");

    // Heal it: for the 3 s hold-down (minus time to see two successes) answers stay put.
    let _a = Backend::start(SocketAddr::new(primary(), port)).await;
    let healed = Instant::now();
    let early = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        while healed.elapsed() < Duration::from_millis(2500) {
            if let Some(ips) = query_a(dns, NAME).ok() {
                seen.push(ips);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        seen
    })
    .await
    .unwrap();
    assert!(!early.is_empty());
    assert!(
        early.iter().all(|ips| ips == &[secondary()]),
        "answer moved back during hold-down: {early:?}"
    );
    let (_, after) =
        await_answer(dns, NAME, Duration::from_secs(8), |ips| ips == [primary()]).await;
    eprintln!(
        "failback observed {:?} after healing",
        healed.elapsed().max(after)
    );
    lifeline.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_answers_from_persisted_state_before_probing() {
    let Setup { dir, port, dns, .. } = setup();
    let _b = Backend::start(SocketAddr::new(secondary(), port)).await;
    // The primary never starts: the first run settles on the secondary.
    let lifeline = start(&dir.path().join("lifeline.yaml"));
    await_exactly(dns, NAME, secondary(), Duration::from_secs(15)).await;
    lifeline.stop();

    // Restart with the primary now up. The first answers must still be the secondary:
    // they come from the persisted snapshot and decision, and the primary must pass
    // its hold-down before it gets traffic back.
    let _a = Backend::start(SocketAddr::new(primary(), port)).await;
    let lifeline = start(&dir.path().join("lifeline.yaml"));
    let first = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let lifeline_testkit::dns::Answer::Addresses(ips) = query_a(dns, NAME) {
                return ips;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no DNS answer after restart");
    })
    .await
    .unwrap();
    assert_eq!(
        first,
        vec![secondary()],
        "a NOERROR answer with the secondary"
    );
    await_exactly(dns, NAME, primary(), Duration::from_secs(10)).await;
    lifeline.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_policy_edit_keeps_the_last_good_set_and_a_fixed_one_applies() {
    let Setup {
        dir,
        port,
        dns,
        admin,
    } = setup();
    let _a = Backend::start(SocketAddr::new(primary(), port)).await;
    let _b = Backend::start(SocketAddr::new(secondary(), port)).await;
    let lifeline = start(&dir.path().join("lifeline.yaml"));
    await_exactly(dns, NAME, primary(), Duration::from_secs(15)).await;

    // A syntax error: nothing changes, and it keeps serving.
    std::fs::write(dir.path().join("policies.yaml"), "apiVersion: [broken\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for _ in 0..20 {
        assert_eq!(answer_a(dns, NAME).ok(), Some(vec![primary()]));
    }

    // A valid edit that adds a name is picked up.
    let extra = format!(
        "---\napiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: search, namespace: shop}}\nspec:\n  hostname: search.{ZONE}\n  targets: [{{cluster: secondary}}]\n"
    );
    write_files(dir.path(), dns, admin, port, &extra);
    await_exactly(
        dns,
        &format!("search.{ZONE}"),
        secondary(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(answer_a(dns, NAME).ok(), Some(vec![primary()]));
    lifeline.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zones_own_name_server_is_answered_with_its_configured_address() {
    let s = setup();
    let config = s.dir.path().join("lifeline.yaml");
    let nameservers = format!("    nameservers: [ns1.{ZONE}]\n");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &nameservers,
        &format!("{nameservers}    nameserverAddresses: {{ns1.{ZONE}: [\"192.0.2.53\"]}}\n"),
    );
    std::fs::write(&config, text).unwrap();
    let _lifeline = start(&config);
    let ns1 = format!("ns1.{ZONE}");
    await_exactly(
        s.dns,
        &ns1,
        "192.0.2.53".parse().unwrap(),
        Duration::from_secs(15),
    )
    .await;
    // Beside the policy's own name, and authoritatively (the AA flag), as a delegation
    // to it needs.
    assert!(!answer_a(s.dns, NAME).addresses().is_empty());
    if lifeline_testkit::dns::Dig::available() {
        let dig = lifeline_testkit::dns::Dig::query(s.dns, &ns1, &[]).expect("dig runs");
        assert_eq!(dig.answers(), ["192.0.2.53"], "{}", dig.text);
        let flags = dig
            .text
            .lines()
            .find(|l| l.starts_with(";; flags:"))
            .unwrap_or_default();
        assert!(flags.contains(" aa"), "not authoritative: {}", dig.text);
    } else {
        lifeline_testkit::skipped("the AA flag check needs dig, which is not installed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_ca_bundle_http_checks_decide_and_https_ones_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(&[primary(), secondary()]);
    let (dns, admin) = (free_addr(), free_addr());
    let secure = format!(
        "---\napiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: secure, namespace: shop}}\nspec:\n  hostname: secure.{ZONE}\n  targets: [{{cluster: primary}}, {{cluster: secondary, priority: 1}}]\n  healthCheck: {{http: {{scheme: https, port: {port}}}, interval: 200ms, timeout: 150ms, unhealthyThreshold: 2}}\n"
    );
    write_files(dir.path(), dns, admin, port, &secure);
    // Its failures are expected here; the guard against systemic failure would hold
    // the HTTP policy's failover back.
    let config = dir.path().join("lifeline.yaml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("engine: {blastRadius: {enabled: false}}\n");
    std::fs::write(&config, text).unwrap();
    let mut a = Backend::start(SocketAddr::new(primary(), port)).await;
    let _b = Backend::start(SocketAddr::new(secondary(), port)).await;
    // No CA bundle: rustls-native-certs reads only these when they are set.
    let empty = dir.path().join("no-certs");
    std::fs::create_dir(&empty).unwrap();
    let mut command = common::lifeline(&["run"], &config);
    command
        .env("SSL_CERT_FILE", dir.path().join("no-such-bundle.pem"))
        .env("SSL_CERT_DIR", &empty);
    let mut lifeline = Process::spawn(command);

    // HTTP decides as ever.
    await_exactly(dns, NAME, primary(), Duration::from_secs(15)).await;
    a.kill().await;
    await_exactly(dns, NAME, secondary(), Duration::from_secs(15)).await;

    // HTTPS says why it fails.
    let why = lifeline_testkit::eventually_async(
        Duration::from_secs(15),
        "the HTTPS policy's targets report the missing CA bundle",
        || async {
            let status = common::get(admin, "/v1/status");
            let reason = status.contains("no trusted CA certificates on this machine");
            reason.then_some(status)
        },
    )
    .await;
    assert!(why.contains("shop/secure"), "{why}");
    // And leadership never failed over it.
    let metrics = common::get(admin, "/metrics");
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("lifeline_leader_term_failures_total"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("missing");
    assert_eq!(failures, "0", "leader term failures: {failures}");
    assert!(lifeline.is_running());
}
