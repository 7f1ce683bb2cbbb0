//! With policies from CRs (the emulator), a hostname has one owner: a FailoverPolicy in
//! another namespace claiming a name already served gets `Ready=False` reason
//! `HostnameConflict` naming the owner, and does not move the answer; the oldest claimant
//! wins and the next takes over when it goes. A zone may restrict which namespaces
//! publish names in it. A restart that would drop every policy (a wrong namespace filter)
//! is held, with a Warning Event on the policies it would remove. A policy whose decision
//! panics is reported on its CR and by an Event.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use k8s_openapi::api::events::v1::Event;
use lifeline_crds::FailoverPolicy;
use lifeline_testkit::{dns::await_exactly, eventually_async, free_addr};
use lifeline_tests::{
    harness::inprocess::{Running, zone_line},
    kube::{Emulator, EmulatorConfig, install_crypto_provider},
};
use serde_json::json;

const OPEN: &str = "own.lifeline.test";
const CLOSED: &str = "closed.lifeline.test";

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn start_lifeline(dir: &Path, dns: SocketAddr, namespace: Option<&str>) -> Running {
    let ns = namespace.map_or(String::new(), |n| format!(", namespace: {n}"));
    let config = format!(
        "zones:\n{}{}\
dns: {{udp: [\"{dns}\"], tcp: [\"{dns}\"], dataDir: {d}/snap}}\n\
store: {{type: embedded, dataDir: {d}/store}}\n\
policySource: {{type: kubernetes, kubeconfig: {d}/kubeconfig.yaml{ns}}}\n",
        zone_line(OPEN),
        zone_line(CLOSED).replace("]}", "], namespaces: [team-a]}"),
        d = dir.display()
    );
    Running::start(&config, dir).await
}

fn policy(namespace: &str, name: &str, hostname: &str, cluster: &str) -> serde_json::Value {
    json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "FailoverPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"hostname": hostname, "ttl": 5, "targets": [{"cluster": cluster}]}
    })
}

/// The `Ready` condition of a policy as (status, reason, message), once it has one.
async fn ready(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Option<(String, String, String)> {
    let api: kube::Api<FailoverPolicy> = kube::Api::namespaced(client.clone(), namespace);
    let p = api.get(name).await.ok()?;
    let c = p
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status, c.reason, c.message))
}

/// The note of the first Event in `namespace` with `reason` (about the object `name`,
/// when given), once there is one.
async fn event_note(
    client: &kube::Client,
    namespace: &str,
    reason: &str,
    name: Option<&str>,
) -> String {
    let events: kube::Api<Event> = kube::Api::namespaced(client.clone(), namespace);
    eventually_async(Duration::from_secs(20), reason, || async {
        events
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some(reason)
                    && name.is_none_or(|n| {
                        e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(n)
                    })
            })
            .and_then(|e| e.note)
    })
    .await
}

async fn nxdomain(dns: SocketAddr, name: &str) -> bool {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        lifeline_testkit::dns::answer_a(dns, &name)
            == lifeline_testkit::dns::Answer::Error("NXDomain".into())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostname_has_one_owner_and_zones_choose_their_namespaces() {
    install_crypto_provider();
    let emu = Emulator::start(EmulatorConfig::http()).await.unwrap();
    emu.install_lifeline_crds().unwrap();
    for ns in ["team-a", "team-b"] {
        emu.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .unwrap();
    }
    for (name, last) in [("one", 7u8), ("two", 8u8)] {
        emu.create(json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "MemberCluster",
            "metadata": {"name": name},
            "spec": {"region": name, "addressSource": "Static", "addresses": [ip(last).to_string()]}
        }))
        .unwrap();
    }
    let web = format!("web.{OPEN}");
    emu.create(policy("team-a", "web", &web, "one")).unwrap();
    emu.create(policy("team-a", "api", &format!("api.{CLOSED}"), "one"))
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    emu.write_kubeconfig(&dir.path().join("kubeconfig.yaml"))
        .unwrap();
    let dns = free_addr();
    let lifeline = start_lifeline(dir.path(), dns, None).await;
    await_exactly(dns, &web, ip(7), Duration::from_secs(20)).await;
    await_exactly(
        dns,
        &format!("api.{CLOSED}"),
        ip(7),
        Duration::from_secs(10),
    )
    .await;
    let client = emu.client().await.unwrap();

    // team-b claims the same hostname later, and a name in a zone closed to it.
    emu.create(policy("team-b", "web", &web, "two")).unwrap();
    emu.create(policy("team-b", "shop", &format!("shop.{CLOSED}"), "two"))
        .unwrap();
    let (status, reason, message) =
        eventually_async(Duration::from_secs(15), "HostnameConflict", || async {
            ready(&client, "team-b", "web")
                .await
                .filter(|(_, r, _)| r == "HostnameConflict")
        })
        .await;
    assert_eq!(status, "False");
    assert!(message.contains("team-a/web"), "{reason}: {message}");
    let (_, _, message) =
        eventually_async(Duration::from_secs(15), "NamespaceNotAllowed", || async {
            ready(&client, "team-b", "shop")
                .await
                .filter(|(_, r, _)| r == "NamespaceNotAllowed")
        })
        .await;
    assert!(message.contains("team-a"), "{message}");
    // The owner keeps its status and its answer; the refused name is not served.
    eventually_async(Duration::from_secs(15), "the owner Ready", || async {
        ready(&client, "team-a", "web")
            .await
            .filter(|(s, _, _)| s == "True")
    })
    .await;
    for _ in 0..20 {
        let got = lifeline_testkit::dns::answer_a(dns, &web);
        assert_eq!(
            got.addresses(),
            [ip(7)],
            "the later claimant must not take the name"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(nxdomain(dns, &format!("shop.{CLOSED}")).await);

    // The owner goes: the next claimant takes over.
    emu.delete(
        "lifeline.dev/v1alpha1",
        "FailoverPolicy",
        Some("team-a"),
        "web",
    )
    .unwrap();
    await_exactly(dns, &web, ip(8), Duration::from_secs(15)).await;
    lifeline.stop().await;

    // Restarted watching a namespace with no policies: every name would go, so the
    // change is held and the names stay.
    let lifeline = start_lifeline(dir.path(), dns, Some("nobody")).await;
    let note = event_note(&client, "team-a", "PolicyChangeHeld", None).await;
    assert!(note.contains("lifeline ctl release"), "{note}");
    for _ in 0..20 {
        let got = lifeline_testkit::dns::answer_a(dns, &format!("api.{CLOSED}"));
        assert_eq!(got.addresses(), [ip(7)], "a held change keeps the names");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lifeline.stop().await;
}

/// A policy whose decision panics (the test-only fault) is reported on its CR, with
/// `Ready=False` reason `Quarantined`, and by a Warning Event; the other policy is Ready
/// and its name answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_policy_is_reported_on_its_cr_and_by_an_event() {
    install_crypto_provider();
    let emu = Emulator::start(EmulatorConfig::http()).await.unwrap();
    emu.install_lifeline_crds().unwrap();
    emu.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}))
        .unwrap();
    emu.create(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "MemberCluster",
        "metadata": {"name": "one"},
        "spec": {"region": "one", "addressSource": "Static", "addresses": [ip(7).to_string()]}
    }))
    .unwrap();
    let fine = format!("fine.{OPEN}");
    emu.create(policy("team-a", "fine", &fine, "one")).unwrap();
    let mut poisoned = policy("team-a", "poisoned", &format!("poisoned.{OPEN}"), "one");
    poisoned["metadata"]["annotations"] = json!({"lifeline.dev/test-fault": "panic"});
    emu.create(poisoned).unwrap();

    let dir = tempfile::tempdir().unwrap();
    emu.write_kubeconfig(&dir.path().join("kubeconfig.yaml"))
        .unwrap();
    let dns = free_addr();
    let config = format!(
        "zones:\n{}dns: {{udp: [\"{dns}\"], tcp: [\"{dns}\"], dataDir: {d}/snap}}\n\
store: {{type: embedded, dataDir: {d}/store}}\n\
policySource: {{type: kubernetes, kubeconfig: {d}/kubeconfig.yaml}}\n",
        zone_line(OPEN),
        d = dir.path().display()
    );
    let lifeline = Running::start_with_faults(&config, dir.path()).await;
    await_exactly(dns, &fine, ip(7), Duration::from_secs(20)).await;
    let client = emu.client().await.unwrap();

    let (_, _, message) = eventually_async(
        Duration::from_secs(20),
        "Ready=False Quarantined",
        || async {
            ready(&client, "team-a", "poisoned")
                .await
                .filter(|(s, r, _)| s == "False" && r == "Quarantined")
        },
    )
    .await;
    assert!(message.contains("panicked"), "{message}");
    let note = event_note(&client, "team-a", "Quarantined", Some("poisoned")).await;
    assert!(note.contains("last answers stay"), "{note}");
    eventually_async(
        Duration::from_secs(15),
        "the other policy Ready",
        || async {
            ready(&client, "team-a", "fine")
                .await
                .filter(|(s, _, _)| s == "True")
        },
    )
    .await;
    lifeline.stop().await;
}
