//! The `kubernetes` policy source against the Kubernetes API emulator: policies come from
//! CRs, an invalid CR keeps its last good version, and with the management API down a
//! restarted `lifeline run` keeps serving and steering on the policies it had, then
//! catches up when the API returns.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use base64::Engine as _;
use lifeline_testkit::{Backend, dns::await_exactly, eventually_async, free_addr, free_port};
use lifeline_tests::{
    harness::inprocess::{Running, zone_line},
    kube::{Emulator, EmulatorConfig, install_crypto_provider},
};
use serde_json::json;

const ZONE: &str = "mgmt.lifeline.test";
const NAME: &str = "web.mgmt.lifeline.test";

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The A addresses answered, `None` on no reply or an error code.
fn query_a(server: SocketAddr, name: &str) -> Option<Vec<IpAddr>> {
    lifeline_tests::harness::dns::answer_a(server, name).ok()
}

async fn wait_for(dns: SocketAddr, name: &'static str, want: IpAddr, limit: Duration) {
    await_exactly(dns, name, want, limit).await;
}

/// Polls `check` every 100 ms for up to 15 s; a timeout names `what` was awaited.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    check: impl Fn() -> F,
) -> T {
    eventually_async(Duration::from_secs(15), what, check).await
}

async fn start_lifeline(dir: &Path, dns: SocketAddr) -> Running {
    let config = format!(
        "zones:\n{}dns: {{udp: [\"{dns}\"], tcp: [\"{dns}\"], dataDir: {d}/snap}}\n\
store: {{type: embedded, dataDir: {d}/store}}\n\
policySource: {{type: kubernetes, kubeconfig: {d}/kubeconfig.yaml}}\n",
        zone_line(ZONE),
        d = dir.display()
    );
    Running::start(&config, dir).await
}

fn policy(port: u16, primary_priority: u32, tcp_too: bool) -> serde_json::Value {
    let mut check = json!({"http": {"port": port}, "interval": "200ms", "timeout": "150ms",
        "unhealthyThreshold": 2, "healthyThreshold": 2});
    if tcp_too {
        check["tcp"] = json!({"port": port});
    }
    json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "FailoverPolicy",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "hostname": NAME,
            "targets": [
                {"cluster": "one", "priority": primary_priority},
                {"cluster": "two", "priority": 1}
            ],
            "healthCheck": check,
            "failback": {"holdDown": "0s", "rampDuration": "0s"}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_come_from_crs_and_survive_a_management_outage_and_a_restart() {
    install_crypto_provider();
    // Captured, and printed only when the test fails: what the leader did is the first
    // thing to read then.
    lifeline_testkit::init_tracing();
    let emu = Emulator::start(EmulatorConfig::http()).await.unwrap();
    emu.install_lifeline_crds().unwrap();
    emu.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
        .unwrap();
    for (name, last) in [("one", 7u8), ("two", 8u8)] {
        emu.create(json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "MemberCluster",
            "metadata": {"name": name},
            "spec": {"region": name, "addressSource": "Static", "addresses": [ip(last).to_string()]}
        }))
        .unwrap();
    }
    let port = free_port(&[ip(7), ip(8)]);
    emu.create(policy(port, 0, false)).unwrap();
    let one = Backend::start(SocketAddr::new(ip(7), port)).await;
    let two = Backend::start(SocketAddr::new(ip(8), port)).await;

    let dir = tempfile::tempdir().unwrap();
    emu.write_kubeconfig(&dir.path().join("kubeconfig.yaml"))
        .unwrap();
    let dns = free_addr();
    let lifeline = start_lifeline(dir.path(), dns).await;
    wait_for(dns, NAME, ip(7), Duration::from_secs(20)).await;

    // The leader writes what it decided into the CR's status.
    let client = emu.client().await.unwrap();
    let policies: kube::Api<lifeline_crds::FailoverPolicy> =
        kube::Api::namespaced(client.clone(), "shop");
    let ready = |p: &lifeline_crds::FailoverPolicy| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned())
    };
    // The first status can be written before the first probe results (targets still
    // Unknown); wait for the one written after both targets were seen healthy.
    let status = eventually(
        "the status written after both targets were seen healthy",
        || async {
            let p = policies.get("web").await.ok()?;
            let s = p.status.as_ref()?;
            let probed = s
                .targets
                .iter()
                .all(|t| t.state != lifeline_crds::TargetState::Unknown);
            (s.answers == ["127.0.0.7"] && probed).then_some(p)
        },
    )
    .await;
    assert_eq!(ready(&status).unwrap().status, "True");
    let targets = &status.status.as_ref().unwrap().targets;
    assert_eq!(targets.len(), 2);
    assert!(
        targets
            .iter()
            .all(|t| t.state == lifeline_crds::TargetState::Healthy),
        "{targets:?}"
    );
    let clusters: kube::Api<lifeline_crds::MemberCluster> = kube::Api::all(client.clone());
    eventually("the cluster's Static condition", || async {
        let c = clusters.get("one").await.ok()?;
        (c.status?.conditions.first()?.reason == "Static").then_some(())
    })
    .await;

    // An edit the API server accepts but Lifeline's rules reject (both http and tcp,
    // a CEL rule the emulator does not run) is ignored: the last good version stays.
    emu.apply_yaml(&serde_json::to_string(&policy(port, 5, true)).unwrap())
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(query_a(dns, NAME).as_deref(), Some(&[ip(7)][..]));
    // ...and the CR says why: Ready=False with the field path.
    let invalid = eventually("Ready=False on the invalid policy", || async {
        let p = policies.get("web").await.ok()?;
        let c = ready(&p)?;
        (c.status == "False").then_some(c)
    })
    .await;
    assert_eq!(invalid.reason, "InvalidSpec");
    assert!(
        invalid
            .message
            .contains("spec.healthCheck: exactly one of http or tcp must be set"),
        "{}",
        invalid.message
    );
    // A valid edit applies: "one" moves below "two".
    emu.merge_patch(
        "lifeline.dev/v1alpha1",
        "FailoverPolicy",
        Some("shop"),
        "web",
        &json!({"spec": {"healthCheck": {"tcp": null}}}),
        false,
    )
    .unwrap();
    wait_for(dns, NAME, ip(8), Duration::from_secs(10)).await;
    // The change is told as an Event on the policy.
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(client.clone(), "shop");
    let event = eventually("the Event for the invalid policy", || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("AnswersChanged"))
    })
    .await;
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("web")
    );
    assert!(
        event
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("127.0.0.7 -> 127.0.0.8"),
        "{event:?}"
    );

    // The management API goes away and Lifeline restarts meanwhile.
    emu.outage().await;
    lifeline.stop().await;
    let lifeline = start_lifeline(dir.path(), dns).await;
    assert_eq!(
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            loop {
                if let Some(ips) = query_a(dns, NAME) {
                    return ips;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no answer after restart"
                );
            }
        })
        .await
        .unwrap(),
        [ip(8)],
        "answers come from the persisted snapshot"
    );
    // ...and it still steers, on the policies it had: "two" dies, "one" takes over.
    drop(two);
    wait_for(dns, NAME, ip(7), Duration::from_secs(10)).await;

    // The API returns: a new policy is picked up.
    emu.restore().await.unwrap();
    let _two = Backend::start(SocketAddr::new(ip(8), port)).await;
    emu.create(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "FailoverPolicy",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"hostname": format!("api.{ZONE}"), "targets": [{"cluster": "two"}]}
    }))
    .unwrap();
    // The management watcher retried through the outage with kube's default backoff,
    // whose pause grows to 30 s: the API's return is seen within that, and the new
    // policy listed and decided after it. The limit allows both; this checks that it
    // is picked up, not how fast (a CI run saw it miss a 30 s limit).
    wait_for(
        dns,
        "api.mgmt.lifeline.test",
        ip(8),
        Duration::from_secs(60),
    )
    .await;
    lifeline.stop().await;
    drop(one);
}

/// A management emulator with a MemberCluster `one` whose kubeconfig is the Secret
/// `lifeline-system/member-kubeconfig` holding `kubeconfig`, a policy `shop/web` on it,
/// and a member emulator serving `shop/web` at 127.0.0.11.
async fn secret_fleet(kubeconfig: impl FnOnce(&Emulator) -> String) -> (Emulator, Emulator) {
    install_crypto_provider();
    let management = Emulator::start(EmulatorConfig::http()).await.unwrap();
    let member = Emulator::start(EmulatorConfig::https()).await.unwrap();
    management.install_lifeline_crds().unwrap();
    for ns in ["shop", "lifeline-system"] {
        management
            .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .unwrap();
    }
    management
        .create(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "member-kubeconfig", "namespace": "lifeline-system"},
            "data": {"kubeconfig": base64::engine::general_purpose::STANDARD.encode(kubeconfig(&member))}
        }))
        .unwrap();
    management
        .create(json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "MemberCluster",
            "metadata": {"name": "one"},
            "spec": {"region": "a", "addressSource": "EndpointSlice",
                     "kubeconfigSecretRef": {"name": "member-kubeconfig", "namespace": "lifeline-system"}}
        }))
        .unwrap();
    management
        .create(json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "FailoverPolicy",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"hostname": NAME, "service": {"name": "web"}, "targets": [{"cluster": "one"}]}
        }))
        .unwrap();
    member
        .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
        .unwrap();
    member
        .create(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.11"], "conditions": {"ready": true}}]
        }))
        .unwrap();
    (management, member)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_kubeconfig_is_read_from_a_secret_in_the_management_cluster() {
    let (management, _member) = secret_fleet(|m| m.kubeconfig_yaml()).await;
    let dir = tempfile::tempdir().unwrap();
    management
        .write_kubeconfig(&dir.path().join("kubeconfig.yaml"))
        .unwrap();
    let dns = free_addr();
    let lifeline = start_lifeline(dir.path(), dns).await;
    wait_for(dns, NAME, ip(11), Duration::from_secs(20)).await;
    let secret_reads =
        management
            .counts()
            .count(Some(lifeline_tests::kube::Verb::Get), Some("secrets"), None);
    assert_eq!(
        secret_reads, 1,
        "the Secret is read once, when the watcher starts"
    );
    lifeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_kubeconfig_that_cannot_be_loaded_is_reported_and_retried_until_it_loads() {
    let (management, member) = secret_fleet(|_| "clusters: [not, a, kubeconfig".to_owned()).await;
    let dir = tempfile::tempdir().unwrap();
    management
        .write_kubeconfig(&dir.path().join("kubeconfig.yaml"))
        .unwrap();
    let dns = free_addr();
    let lifeline = start_lifeline(dir.path(), dns).await;
    let client = management.client().await.unwrap();
    let clusters: kube::Api<lifeline_crds::MemberCluster> = kube::Api::all(client);
    let ready = |c: lifeline_crds::MemberCluster| c.status?.conditions.into_iter().next();
    let unavailable = eventually("KubeconfigUnavailable on the cluster", || async {
        let c = ready(clusters.get("one").await.ok()?)?;
        (c.reason == "KubeconfigUnavailable").then_some(c)
    })
    .await;
    assert_eq!(unavailable.status, "False");
    assert!(
        unavailable
            .message
            .contains("Secret lifeline-system/member-kubeconfig key \"kubeconfig\""),
        "{}",
        unavailable.message
    );

    // The Secret is fixed; nothing else changes. The next retry loads it.
    management
        .merge_patch(
            "v1",
            "Secret",
            Some("lifeline-system"),
            "member-kubeconfig",
            &json!({"data": {"kubeconfig": base64::engine::general_purpose::STANDARD.encode(member.kubeconfig_yaml())}}),
            false,
        )
        .unwrap();
    wait_for(dns, NAME, ip(11), Duration::from_secs(30)).await;
    let reachable = eventually(
        "Reachable on the cluster once its kubeconfig loads",
        || async {
            let c = ready(clusters.get("one").await.ok()?)?;
            (c.reason == "Reachable").then_some(c)
        },
    )
    .await;
    assert_eq!(reachable.status, "True");
    lifeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_kubeconfig_from_a_secret_is_cached_sealed_followed_when_it_changes_and_kept_when_it_breaks()
 {
    let (management, _first) = secret_fleet(|m| m.kubeconfig_yaml()).await;
    let dir = tempfile::tempdir().unwrap();
    management
        .write_kubeconfig(&dir.path().join("kubeconfig.yaml"))
        .unwrap();
    std::fs::write(dir.path().join("credential.key"), [9u8; 32]).unwrap();
    let dns = free_addr();
    let config = format!(
        "zones:\n{}dns: {{udp: [\"{dns}\"], tcp: [\"{dns}\"], dataDir: {d}/snap}}\n\
store: {{type: embedded, dataDir: {d}/store}}\n\
policySource: {{type: kubernetes, kubeconfig: {d}/kubeconfig.yaml}}\n\
memberCredentials: {{keyFile: {d}/credential.key, recheckInterval: 1s}}\n",
        zone_line(ZONE),
        d = dir.path().display()
    );
    let lifeline = Running::start(&config, dir.path()).await;
    wait_for(dns, NAME, ip(11), Duration::from_secs(20)).await;

    // Cached in the store, private, and nothing of the kubeconfig readable in it.
    let cached = dir.path().join("store/credential-one.json");
    let sealed = eventually("the sealed copy in the store", || async {
        std::fs::read_to_string(&cached).ok()
    })
    .await;
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&cached).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{cached:?} has mode {mode:o}");
    for plain in ["apiVersion", "server:", "clusters", "127.0.0.1"] {
        assert!(!sealed.contains(plain), "{plain:?} readable in {sealed}");
    }

    // The Secret now points at another cluster: followed without any other change.
    let second = Emulator::start(EmulatorConfig::https()).await.unwrap();
    second
        .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
        .unwrap();
    let slice = |address: &str| {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "conditions": {"ready": true}}]
        })
    };
    second.create(slice("127.0.0.12")).unwrap();
    let set_secret = |text: String| {
        management
            .merge_patch(
                "v1",
                "Secret",
                Some("lifeline-system"),
                "member-kubeconfig",
                &json!({"data": {"kubeconfig": base64::engine::general_purpose::STANDARD.encode(text)}}),
                false,
            )
            .unwrap();
    };
    set_secret(second.kubeconfig_yaml());
    wait_for(dns, NAME, ip(12), Duration::from_secs(20)).await;
    let resealed = eventually("the copy resealed for the second cluster", || async {
        std::fs::read_to_string(&cached)
            .ok()
            .filter(|now| *now != sealed)
    })
    .await;

    // Someone breaks the Secret: the cached copy (the second cluster's) stays in use,
    // and its watcher still follows that cluster.
    let reads = || {
        management
            .counts()
            .count(Some(lifeline_tests::kube::Verb::Get), Some("secrets"), None)
    };
    let before = reads();
    set_secret("clusters: [not, a, kubeconfig".to_owned());
    eventually("three reads of the broken Secret", || async {
        (reads() >= before + 3).then_some(())
    })
    .await;
    assert_eq!(query_a(dns, NAME), Some(vec![ip(12)]));
    second
        .merge_patch(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            Some("shop"),
            "web-1",
            &json!({"endpoints": [{"addresses": ["127.0.0.13"], "conditions": {"ready": true}}]}),
            false,
        )
        .unwrap();
    wait_for(dns, NAME, ip(13), Duration::from_secs(20)).await;
    assert_eq!(
        std::fs::read_to_string(&cached).unwrap(),
        resealed,
        "a broken Secret must not replace the good cached copy"
    );
    lifeline.stop().await;
}
