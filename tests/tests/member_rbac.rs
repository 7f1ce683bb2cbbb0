//! The RBAC manifests in `deploy/rbac/` grant exactly what Lifeline uses: every request a
//! member watcher makes (recorded by the emulator) is allowed by the member ClusterRole,
//! and neither role holds wildcards or anything beyond its documented rules.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role};
use lifeline_controller::kubernetes::budget::BudgetConfig;
use lifeline_controller::kubernetes::member::{
    MemberWatcher, WatchOptions, kube_config_from_bytes,
};
use lifeline_tests::kube::{Emulator, EmulatorConfig, Verb};
use serde_json::{Value, json};

fn documents(file: &str) -> Result<Vec<Value>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/rbac")
        .join(file);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn of_kind<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> Result<Vec<T>> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| Ok(serde_json::from_value(d.clone())?))
        .collect()
}

/// `(group, resource, verb)` triples a list of rules grants.
fn grants(rules: &[PolicyRule]) -> Result<BTreeSet<(String, String, String)>> {
    let mut out = BTreeSet::new();
    for rule in rules {
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        for g in &groups {
            for r in &resources {
                for v in &rule.verbs {
                    if [g, r, v].iter().any(|s| s.contains('*')) {
                        bail!("wildcard in {rule:?}");
                    }
                    out.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    Ok(out)
}

fn triples(items: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    items
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
        })
        .collect()
}

#[test]
fn the_member_role_is_read_only_on_services_and_endpointslices() -> Result<()> {
    let docs = documents("member-cluster.yaml")?;
    let roles: Vec<ClusterRole> = of_kind(&docs, "ClusterRole")?;
    ensure!(roles.len() == 1 && of_kind::<Role>(&docs, "Role")?.is_empty());
    let granted = grants(roles[0].rules.as_deref().unwrap_or_default())?;
    let read = &["list", "watch"][..];
    ensure!(
        granted
            == triples(&[
                ("", "services", read),
                ("discovery.k8s.io", "endpointslices", read)
            ]),
        "{granted:?}"
    );
    let bindings: Vec<ClusterRoleBinding> = of_kind(&docs, "ClusterRoleBinding")?;
    ensure!(
        bindings.len() == 1
            && bindings[0].role_ref.name == roles[0].metadata.name.clone().unwrap_or_default()
    );
    Ok(())
}

#[test]
fn the_management_role_reads_policies_writes_only_status_and_events_and_gets_only_named_secrets_in_its_namespace()
-> Result<()> {
    let docs = documents("management-cluster.yaml")?;
    let roles: Vec<ClusterRole> = of_kind(&docs, "ClusterRole")?;
    ensure!(roles.len() == 1);
    let granted = grants(roles[0].rules.as_deref().unwrap_or_default())?;
    let read = &["get", "list", "watch"][..];
    let status = &["get", "patch", "update"][..];
    let events = &["create", "patch"][..];
    ensure!(
        granted
            == triples(&[
                ("lifeline.dev", "failoverpolicies", read),
                ("lifeline.dev", "memberclusters", read),
                ("lifeline.dev", "failoverpolicies/status", status),
                ("lifeline.dev", "memberclusters/status", status),
                ("", "events", events),
                ("events.k8s.io", "events", events),
            ]),
        "{granted:?}"
    );
    let ns_roles: Vec<Role> = of_kind(&docs, "Role")?;
    ensure!(ns_roles.len() == 1);
    ensure!(ns_roles[0].metadata.namespace.as_deref() == Some("lifeline-system"));
    let rules = ns_roles[0].rules.as_deref().unwrap_or_default();
    let secrets = grants(rules)?;
    ensure!(
        secrets == triples(&[("", "secrets", &["get"])]),
        "{secrets:?}"
    );
    // Only named Secrets: those the example MemberClusters refer to.
    let named: BTreeSet<String> = rules[0].resource_names.iter().flatten().cloned().collect();
    let examples = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/clusters.yaml"),
    )?;
    let referred: BTreeSet<String> = serde_saphyr::from_multiple::<serde_json::Value>(&examples)?
        .iter()
        .filter_map(|c| {
            c.pointer("/spec/kubeconfigSecretRef/name")?
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    ensure!(
        !named.is_empty() && named == referred,
        "named {named:?}, examples refer to {referred:?}"
    );
    Ok(())
}

#[tokio::test]
async fn every_request_a_member_watcher_makes_is_allowed_by_the_member_role() -> Result<()> {
    lifeline_tests::kube::install_crypto_provider();
    let emu = Emulator::start(EmulatorConfig::http()).await?;
    emu.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))?;
    let scope = [
        ("shop".to_owned(), "web".to_owned()),
        ("default".to_owned(), "api".to_owned()),
    ]
    .into();
    let config = kube_config_from_bytes(emu.kubeconfig_yaml().as_bytes()).await?;
    let h = MemberWatcher::spawn(
        "rbac".into(),
        config,
        BudgetConfig::default(),
        scope,
        WatchOptions::default(),
    )?;
    let mut rx = h.view();
    tokio::time::timeout(
        Duration::from_secs(20),
        rx.wait_for(|v| v.synced && v.watches_open == 2),
    )
    .await??;
    emu.drop_watches();
    // Long enough for the dropped watches to be resumed (after at most one backoff).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let docs = documents("member-cluster.yaml")?;
    let roles: Vec<ClusterRole> = of_kind(&docs, "ClusterRole")?;
    let granted = grants(roles[0].rules.as_deref().unwrap_or_default())?;
    let counts = emu.counts();
    ensure!(counts.total() > 0);
    for (key, n) in &counts.0 {
        let verb = match key.verb {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            other => bail!("the watcher sent a {other:?} request to {}", key.resource),
        };
        let (resource, group) = key.resource.split_once('.').unwrap_or((&key.resource, ""));
        println!("{n} × {verb} {resource} (group {group:?})");
        ensure!(
            granted.contains(&(group.to_owned(), resource.to_owned(), verb.to_owned())),
            "{verb} {resource}.{group} is not granted by deploy/rbac/member-cluster.yaml"
        );
    }
    Ok(())
}
