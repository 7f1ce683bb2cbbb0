//! `lifeline run` with names backed by 10,000 addresses: one from ten EndpointSlices of
//! 1,000 ready endpoints each in a member cluster (the emulator), one from a static
//! MemberCluster listing 10,000 addresses. Every reply, checked with `dig` over UDP
//! (EDNS 1232, 512, none) and TCP, carries the default maxAnswers (8) addresses, without
//! TC, and replies rotate through the set.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use lifeline_testkit::dns::Dig;
use lifeline_tests::{
    harness::inprocess::{Running, zone_line},
    kube::{Emulator, EmulatorConfig, install_crypto_provider},
};
use serde_json::json;

const ZONE: &str = "large.lifeline.test";

fn address(block: u32, i: u32) -> String {
    Ipv4Addr::from(0x0a00_0000 + (block << 16) + i).to_string()
}

fn slice(n: u32) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = (0..1000)
        .map(|i| json!({"addresses": [address(1, n * 1000 + i)], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("web-{n}"), "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_of_ten_thousand_addresses_answer_max_answers_at_a_time() {
    if !Dig::available() {
        eprintln!("dig not installed; skipped");
        return;
    }
    install_crypto_provider();
    let emu = Emulator::start(EmulatorConfig::http()).await.unwrap();
    emu.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
        .unwrap();
    for n in 0..10 {
        emu.create(slice(n)).unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    emu.write_kubeconfig(&d.join("member.kubeconfig")).unwrap();
    let statics: Vec<String> = (0..10_000)
        .map(|i| format!("\"{}\"", address(2, i)))
        .collect();
    std::fs::write(
        d.join("docs.yaml"),
        format!(
            "apiVersion: lifeline.dev/v1alpha1\nkind: MemberCluster\nmetadata: {{name: member}}\nspec: {{region: a, addressSource: EndpointSlice, kubeconfigPath: \"{kc}\"}}\n---\n\
apiVersion: lifeline.dev/v1alpha1\nkind: MemberCluster\nmetadata: {{name: fixed}}\nspec: {{region: b, addressSource: Static, addresses: [{statics}]}}\n---\n\
apiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: web, namespace: shop}}\nspec: {{hostname: web.{ZONE}, service: {{name: web}}, targets: [{{cluster: member}}]}}\n---\n\
apiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: fixed, namespace: shop}}\nspec: {{hostname: fixed.{ZONE}, targets: [{{cluster: fixed}}]}}\n",
            kc = d.join("member.kubeconfig").display(),
            statics = statics.join(", "),
        ),
    )
    .unwrap();
    let dns = lifeline_testkit::free_addr();
    let lifeline = Running::start(
        &format!(
            "zones:\n{}dns: {{udp: [\"{dns}\"], tcp: [\"{dns}\"], dataDir: {d}/snap}}\n\
store: {{type: embedded, dataDir: {d}/store}}\n\
policySource: {{type: files, paths: [docs.yaml]}}\n",
            zone_line(ZONE),
            d = d.display()
        ),
        d,
    )
    .await;

    let checked = tokio::task::spawn_blocking(move || {
        for (name, block) in [("web", 1), ("fixed", 2)] {
            let fqdn = format!("{name}.{ZONE}");
            // Wait until the whole set is published (the first slices may land alone).
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let mut seen = BTreeSet::new();
            while seen.len() < 100 && std::time::Instant::now() < deadline {
                if let Some(d) = Dig::query(dns, &fqdn, &["+tcp"]) {
                    seen.extend(d.answers());
                }
            }
            assert!(
                seen.len() >= 100,
                "{fqdn}: only {} addresses seen",
                seen.len()
            );
            for transport in [
                &["+bufsize=1232"][..],
                &["+bufsize=512"],
                &["+noedns"],
                &["+tcp"],
            ] {
                let mut distinct = BTreeSet::new();
                for _ in 0..10 {
                    let d = Dig::query(dns, &fqdn, transport).expect("dig runs");
                    assert_eq!(d.status(), "NOERROR", "{fqdn} {transport:?}: {}", d.text);
                    assert!(!d.truncated(), "{fqdn} {transport:?}: {}", d.text);
                    let answers = d.answers();
                    assert_eq!(answers.len(), 8, "{fqdn} {transport:?}: {}", d.text);
                    assert!(d.size() <= 512, "{fqdn} {transport:?}: {} bytes", d.size());
                    for a in &answers {
                        let ip: Ipv4Addr = a.parse().unwrap();
                        assert_eq!((u32::from(ip) >> 16) & 0xff, block, "{fqdn}: {a}");
                    }
                    distinct.extend(answers);
                }
                assert!(
                    distinct.len() > 8,
                    "{fqdn} {transport:?}: replies do not rotate"
                );
            }
        }
    })
    .await;

    lifeline.stop_within(Duration::from_secs(20)).await;
    checked.unwrap();
}
