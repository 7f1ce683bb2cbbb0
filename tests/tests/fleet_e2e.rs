//! `lifeline run` with a member cluster reached through its API (the emulator): addresses
//! come from EndpointSlices, zero ready endpoints fails over, and an API blackout
//! freezes the answer instead of moving it.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use lifeline_controller::{
    config::Config,
    run::{self, Documents},
};
use lifeline_tests::kube::{Emulator, EmulatorConfig, install_crypto_provider};
use serde_json::json;

const ZONE: &str = "fleet.lifeline.test";
const NAME: &str = "web.fleet.lifeline.test";

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The A addresses answered for the test name, `None` on no reply or an error code.
fn query_a(server: SocketAddr) -> Option<Vec<IpAddr>> {
    lifeline_tests::harness::dns::answer_a(server, NAME).ok()
}

async fn wait_for(dns: SocketAddr, want: IpAddr, limit: Duration) {
    lifeline_testkit::dns::await_exactly(dns, NAME, want, limit).await;
}

fn slice(ready: bool) -> serde_json::Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.9"], "conditions": {"ready": ready}}],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_give_addresses_and_readiness_and_a_blackout_freezes_answers() {
    install_crypto_provider();
    let emu = Emulator::start(EmulatorConfig::http()).await.unwrap();
    emu.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
        .unwrap();
    emu.create(slice(true)).unwrap();
    // Unrelated objects the watcher must not be told about.
    for i in 0..20 {
        let mut s = slice(true);
        s["metadata"]["name"] = json!(format!("other-{i}"));
        s["metadata"]["labels"]["kubernetes.io/service-name"] = json!(format!("other-{i}"));
        emu.create(s).unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    emu.write_kubeconfig(&d.join("member.kubeconfig")).unwrap();
    std::fs::write(
        d.join("docs.yaml"),
        format!(
            "apiVersion: lifeline.dev/v1alpha1\nkind: MemberCluster\nmetadata: {{name: member}}\nspec: {{region: a, addressSource: EndpointSlice, kubeconfigPath: \"{kc}\"}}\n---\n\
apiVersion: lifeline.dev/v1alpha1\nkind: MemberCluster\nmetadata: {{name: standby}}\nspec: {{region: b, addressSource: Static, addresses: [\"127.0.0.10\"]}}\n---\n\
apiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: web, namespace: shop}}\nspec:\n  hostname: {NAME}\n  service: {{name: web}}\n  targets: [{{cluster: member, priority: 0}}, {{cluster: standby, priority: 1}}]\n  failback: {{holdDown: 0s, rampDuration: 0s}}\n",
            kc = d.join("member.kubeconfig").display()
        ),
    )
    .unwrap();
    let dns = lifeline_testkit::free_addr();
    let config = Config::from_bytes(
        format!(
            "zones:\n  - {{origin: {ZONE}, primaryNs: ns1.{ZONE}, hostmaster: h.{ZONE}, nameservers: [ns1.{ZONE}]}}\n\
dns: {{udp: [\"{dns}\"], tcp: [\"{dns}\"], dataDir: {d}/snap}}\n\
store: {{type: embedded, dataDir: {d}/store}}\n\
policySource: {{type: files, paths: [docs.yaml]}}\n",
            d = d.display()
        )
        .as_bytes(),
    )
    .unwrap();
    let documents = run::documents_of(&config, &d.join("lifeline.yaml")).unwrap();
    assert!(matches!(documents, Documents::Files(_)));
    let admin = tokio::net::TcpListener::bind((lifeline_testkit::loopback(), 0))
        .await
        .unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run::run(
        run::Options {
            config,
            documents,
            admin,
            admin_token: None,
            admin_routes: Vec::new(),
            on_ready: None,
            test_faults: false,
        },
        async move {
            let _ = rx.await;
        },
    ));

    // The address comes from the EndpointSlice.
    wait_for(dns, ip(9), Duration::from_secs(20)).await;
    let lists = emu.counts().count(
        Some(lifeline_tests::kube::Verb::List),
        Some("endpointslices"),
        None,
    );
    let watches = emu.counts().count(
        Some(lifeline_tests::kube::Verb::Watch),
        Some("endpointslices"),
        None,
    );
    eprintln!("endpointslices: {lists} list(s), {watches} watch(es)");
    assert_eq!(lists, 1, "one initial list");

    // Zero ready endpoints is an unhealthy hint; without a health check it decides.
    emu.merge_patch(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        Some("shop"),
        "web-abc",
        &json!({"endpoints": [{"addresses": ["127.0.0.9"], "conditions": {"ready": false}}]}),
        false,
    )
    .unwrap();
    wait_for(dns, ip(10), Duration::from_secs(10)).await;
    emu.merge_patch(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        Some("shop"),
        "web-abc",
        &json!({"endpoints": [{"addresses": ["127.0.0.9"], "conditions": {"ready": true}}]}),
        false,
    )
    .unwrap();
    wait_for(dns, ip(9), Duration::from_secs(10)).await;

    // The member's API goes dark: the answer freezes (onSourceUnavailable: Freeze).
    emu.outage().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    for _ in 0..20 {
        assert_eq!(query_a(dns).as_deref(), Some(&[ip(9)][..]));
    }
    emu.restore().await.unwrap();
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
