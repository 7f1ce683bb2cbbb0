//! The Kubernetes manifests in `deploy/`: the rendered overlays are what kustomize makes
//! of the sources, every object is one its Kubernetes type fully understands, the
//! configuration they mount passes Lifeline's own validation, and the overlays keep the
//! promises their comments make (non-root, no capabilities, ports, spread, budgets).
//!
//! Generated files (`deploy/rendered/*.yaml`, the copies under `deploy/base/generated/`)
//! are refreshed with
//! `LIFELINE_UPDATE_DEPLOY=1 cargo test -p lifeline-tests --test deploy_manifests`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use lifeline_controller::config::{Config, PolicySource, StoreConfig};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

const OVERLAYS: [&str; 2] = ["ha", "single"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn updating() -> bool {
    std::env::var_os("LIFELINE_UPDATE_DEPLOY").is_some()
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| path.display().to_string())
}

/// The documents of a YAML stream, without empty ones.
fn documents(text: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn rendered(overlay: &str) -> Result<Vec<Value>> {
    documents(&read(
        &repo().join(format!("deploy/rendered/{overlay}.yaml")),
    )?)
}

/// `kubectl kustomize DIR`, or `None` when kubectl is not installed.
fn kustomize(dir: &Path) -> Result<Option<String>> {
    let output = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("running kubectl"),
    };
    ensure!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(Some(String::from_utf8(output.stdout)?))
}

// === strict parsing ===

/// Numbers compared by value (a schema's `minimum: 1` comes back as `1.0`), nulls and
/// absent fields alike.
fn normalise(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(items) => Value::Array(items.iter().map(normalise).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalise(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The first path where two values differ.
fn first_difference(path: &str, want: &Value, got: &Value) -> Option<String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let keys: BTreeSet<&String> = w.keys().chain(g.keys()).collect();
            keys.into_iter().find_map(|k| {
                let p = format!("{path}.{k}");
                match (w.get(k), g.get(k)) {
                    (Some(a), Some(b)) => first_difference(&p, a, b),
                    (Some(_), None) => Some(format!("{p}: unknown to the type (dropped)")),
                    (None, Some(_)) => Some(format!("{p}: added by the type")),
                    (None, None) => None,
                }
            })
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => w
            .iter()
            .zip(g)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(&format!("{path}[{i}]"), a, b)),
        _ if want == got => None,
        _ => Some(format!("{path}: {want} became {got}")),
    }
}

/// Decodes `doc` into `T` and back; any field `T` does not know is an error.
fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<()> {
    let typed: T = serde_json::from_value(doc.clone())?;
    let back = serde_json::to_value(&typed)?;
    let (want, got) = (normalise(doc), normalise(&back));
    match first_difference("", &want, &got) {
        None => Ok(()),
        Some(diff) => bail!("{diff}"),
    }
}

/// Checks one object against the Kubernetes type of its kind; an unknown kind fails.
fn parse_strictly(doc: &Value) -> Result<()> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    match kind {
        "Namespace" => round_trip::<Namespace>(doc),
        "ServiceAccount" => round_trip::<ServiceAccount>(doc),
        "ClusterRole" => round_trip::<ClusterRole>(doc),
        "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(doc),
        "Role" => round_trip::<Role>(doc),
        "RoleBinding" => round_trip::<RoleBinding>(doc),
        "ConfigMap" => round_trip::<ConfigMap>(doc),
        "Secret" => round_trip::<Secret>(doc),
        "Deployment" => round_trip::<Deployment>(doc),
        "Job" => round_trip::<Job>(doc),
        "Service" => round_trip::<Service>(doc),
        "PersistentVolumeClaim" => round_trip::<PersistentVolumeClaim>(doc),
        "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(doc),
        "NetworkPolicy" => round_trip::<NetworkPolicy>(doc),
        "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(doc),
        other => bail!("no Kubernetes type known for kind {other:?}"),
    }
    .with_context(|| format!("{kind} {name}"))
}

fn of_kind<T: DeserializeOwned>(docs: &[Value], kind: &str) -> Result<Vec<T>> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| Ok(serde_json::from_value(d.clone())?))
        .collect()
}

fn one<T: DeserializeOwned>(docs: &[Value], kind: &str) -> Result<T> {
    let mut all = of_kind::<T>(docs, kind)?;
    ensure!(all.len() == 1, "expected one {kind}, found {}", all.len());
    Ok(all.remove(0))
}

/// The Lifeline configuration an overlay mounts.
fn config_of(docs: &[Value]) -> Result<Config> {
    let map: ConfigMap = one(docs, "ConfigMap")?;
    let text = map
        .data
        .as_ref()
        .and_then(|d| d.get("lifeline.yaml"))
        .context("the ConfigMap has no lifeline.yaml")?;
    Config::from_bytes(text.as_bytes()).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("lifeline.yaml is invalid: {}", list.join("; "))
    })
}

// === generated files ===

/// Compares (or, when updating, rewrites) a generated file.
fn check_generated(path: &Path, want: &str, drifted: &mut Vec<String>) -> Result<()> {
    let current = std::fs::read_to_string(path).unwrap_or_default();
    if current == want {
        return Ok(());
    }
    if updating() {
        std::fs::write(path, want).with_context(|| path.display().to_string())?;
    } else {
        drifted.push(path.display().to_string());
    }
    Ok(())
}

#[test]
fn the_base_copies_of_the_crds_and_the_management_rbac_match_their_sources() -> Result<()> {
    let root = repo();
    let mut drifted = Vec::new();
    let mut crds = Vec::new();
    for entry in std::fs::read_dir(root.join("crds"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            crds.push(path);
        }
    }
    ensure!(crds.len() == 2, "expected two CRD files, found {crds:?}");
    for source in &crds {
        let name = source.file_name().context("file name")?;
        let copy = root.join("deploy/base/generated/crds").join(name);
        check_generated(&copy, &read(source)?, &mut drifted)?;
        let listed = format!("generated/crds/{}", name.to_string_lossy());
        ensure!(
            read(&root.join("deploy/base/kustomization.yaml"))?.contains(&listed),
            "deploy/base/kustomization.yaml does not list {listed}"
        );
    }
    check_generated(
        &root.join("deploy/base/generated/rbac/management-cluster.yaml"),
        &read(&root.join("deploy/rbac/management-cluster.yaml"))?,
        &mut drifted,
    )?;
    ensure!(
        drifted.is_empty(),
        "out of date: {drifted:?}; run LIFELINE_UPDATE_DEPLOY=1 cargo test -p lifeline-tests --test deploy_manifests"
    );
    Ok(())
}

#[test]
fn the_rendered_overlays_are_what_kustomize_makes_of_the_sources() -> Result<()> {
    let root = repo();
    let mut drifted = Vec::new();
    for overlay in OVERLAYS {
        let Some(text) = kustomize(&root.join("deploy/overlays").join(overlay))? else {
            lifeline_testkit::skipped(format_args!(
                "kubectl not found: not checking deploy/rendered/{overlay}.yaml for drift"
            ));
            continue;
        };
        let path = root.join(format!("deploy/rendered/{overlay}.yaml"));
        if updating() {
            check_generated(&path, &text, &mut drifted)?;
        } else if documents(&text)? != rendered(overlay)? {
            // Compared as documents, so a kubectl that formats YAML differently agrees.
            drifted.push(path.display().to_string());
        }
    }
    ensure!(
        drifted.is_empty(),
        "out of date: {drifted:?}; run LIFELINE_UPDATE_DEPLOY=1 cargo test -p lifeline-tests --test deploy_manifests"
    );
    Ok(())
}

// === strictness ===

#[test]
fn every_rendered_object_is_fully_understood_by_its_kubernetes_type() -> Result<()> {
    for overlay in OVERLAYS {
        let docs = rendered(overlay)?;
        ensure!(docs.len() >= 12, "{overlay}: only {} objects", docs.len());
        for doc in &docs {
            parse_strictly(doc).with_context(|| format!("deploy/rendered/{overlay}.yaml"))?;
        }
    }
    Ok(())
}

#[test]
fn every_manifest_the_kind_scripts_apply_is_fully_understood_by_its_type() -> Result<()> {
    let root = repo();
    for file in [
        "member/hello.yaml",
        "member/reader-token.yaml",
        "member/storm.yaml",
    ] {
        let path = root.join("deploy/kind/manifests").join(file);
        for doc in documents(&read(&path)?)? {
            parse_strictly(&doc).with_context(|| path.display().to_string())?;
        }
    }
    match kustomize(&root.join("deploy/kind/manifests/management"))? {
        Some(text) => {
            for doc in documents(&text)? {
                parse_strictly(&doc).context("deploy/kind/manifests/management")?;
            }
        }
        None => lifeline_testkit::skipped(
            "kubectl not found: not rendering deploy/kind/manifests/management",
        ),
    }
    Ok(())
}

#[test]
fn every_namespaced_object_lands_in_lifeline_system() -> Result<()> {
    const CLUSTER_SCOPED: [&str; 4] = [
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
    ];
    for overlay in OVERLAYS {
        for doc in rendered(overlay)? {
            let kind = doc["kind"].as_str().unwrap_or_default();
            let namespace = &doc["metadata"]["namespace"];
            if CLUSTER_SCOPED.contains(&kind) {
                ensure!(namespace.is_null(), "{overlay}: {kind} is cluster-scoped");
            } else {
                ensure!(
                    namespace == "lifeline-system",
                    "{overlay}: {kind} {} is in namespace {namespace}",
                    doc["metadata"]["name"]
                );
            }
        }
    }
    Ok(())
}

#[test]
fn a_field_the_type_does_not_know_fails_the_strict_parse() {
    let typo = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replica": 3, "selector": {}, "template": {}},
    });
    let err = parse_strictly(&typo).unwrap_err();
    assert!(format!("{err:#}").contains(".spec.replica"), "{err:#}");
    let unknown = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {}});
    assert!(parse_strictly(&unknown).is_err());
}

// === what the overlays promise ===

#[test]
fn the_mounted_configuration_passes_lifeline_validation_and_reads_policies_from_crs() -> Result<()>
{
    for overlay in OVERLAYS {
        let config = config_of(&rendered(overlay)?).context(overlay)?;
        ensure!(
            matches!(
                config.policy_source,
                PolicySource::Kubernetes {
                    kubeconfig: None,
                    ..
                }
            ),
            "{overlay}: policy source must be kubernetes with in-cluster configuration"
        );
        let snapshots = config.dns.data_dir.to_string_lossy().into_owned();
        ensure!(
            snapshots.starts_with("/var/lib/lifeline/"),
            "{overlay}: dns.dataDir {snapshots} is not on the data volume"
        );
    }
    let single = config_of(&rendered("single")?)?;
    ensure!(
        matches!(&single.store, StoreConfig::Embedded { data_dir } if data_dir.starts_with("/var/lib/lifeline")),
        "single: the embedded store must live on the data volume"
    );
    let ha = config_of(&rendered("ha")?)?;
    ensure!(
        matches!(&ha.store, StoreConfig::Etcd { tls: Some(_), .. }),
        "ha: etcd with TLS"
    );
    Ok(())
}

/// The pod spec of an overlay's Deployment, as JSON for short paths.
fn pod_spec(docs: &[Value]) -> Result<Value> {
    let deployment: Deployment = one(docs, "Deployment")?;
    let spec = deployment.spec.template.spec;
    Ok(serde_json::to_value(spec.context("pod spec")?)?)
}

/// The container of an overlay's pod named `name`.
fn container<'a>(pod: &'a Value, name: &str) -> Result<&'a Value> {
    pod["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .with_context(|| format!("no container {name}"))
}

#[test]
fn dns_and_the_controller_run_unprivileged_in_containers_of_their_own_and_dns_answers_on_port_53()
-> Result<()> {
    for overlay in OVERLAYS {
        let docs = rendered(overlay)?;
        let pod = pod_spec(&docs)?;
        let containers = pod["containers"].as_array().context("containers")?;
        ensure!(containers.len() == 2, "{overlay}: two containers");
        let dns_c = container(&pod, "dns")?;
        let c = container(&pod, "controller")?;
        ensure!(
            dns_c["args"] == json!(["dns", "--config", "/etc/lifeline/lifeline.yaml"])
                && c["args"] == json!(["run", "--config", "/etc/lifeline/lifeline.yaml"]),
            "{overlay}: args {} / {}",
            dns_c["args"],
            c["args"]
        );
        ensure!(pod["securityContext"]["runAsNonRoot"] == true, "{overlay}");
        for each in [dns_c, c] {
            let sc = &each["securityContext"];
            ensure!(
                sc["readOnlyRootFilesystem"] == true
                    && sc["allowPrivilegeEscalation"] == false
                    && sc["capabilities"] == json!({"drop": ["ALL"]}),
                "{overlay}: container securityContext {sc}"
            );
            ensure!(
                each["resources"]["requests"].is_object()
                    && each["resources"]["limits"]["memory"].is_string(),
                "{overlay}: {}: resources with a memory limit of its own",
                each["name"]
            );
        }
        ensure!(
            c["livenessProbe"]["httpGet"] == json!({"path": "/healthz", "port": "admin"})
                && c["readinessProbe"]["httpGet"] == json!({"path": "/readyz", "port": "admin"})
                && dns_c["livenessProbe"]["httpGet"]
                    == json!({"path": "/healthz", "port": "dns-admin"})
                && dns_c["readinessProbe"]["httpGet"]
                    == json!({"path": "/readyz", "port": "dns-admin"}),
            "{overlay}: probes"
        );
        let env = c["env"].as_array().context("env")?;
        ensure!(
            env.iter().any(|e| e["name"] == "POD_NAMESPACE"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"),
            "{overlay}: POD_NAMESPACE from the downward API"
        );
        let config = config_of(&docs)?;
        ensure!(
            config.dns_server.separate,
            "{overlay}: lifeline.yaml must say dnsServer.separate"
        );
        if matches!(config.store, StoreConfig::Embedded { .. }) {
            let export = config.dns.source_dir.as_ref().context("dns.sourceDir")?;
            ensure!(
                export.starts_with("/var/lib/lifeline"),
                "{overlay}: dns.sourceDir {} is not on the shared data volume",
                export.display()
            );
        }
        ensure!(
            env.iter()
                .any(|e| e["name"] == config.admin.token_env.as_str()
                    && e["valueFrom"]["secretKeyRef"]["name"] == "lifeline-admin-token"),
            "{overlay}: the admin token comes from the lifeline-admin-token Secret"
        );

        // Named container ports match what lifeline.yaml listens on.
        let port = |c: &Value, name: &str| {
            c["ports"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .and_then(|p| p["containerPort"].as_u64())
        };
        let dns_admin = config.dns_server.admin.context("dnsServer.admin")?;
        ensure!(
            config
                .dns
                .udp
                .iter()
                .all(|a| Some(u64::from(a.port())) == port(dns_c, "dns-udp"))
                && config
                    .dns
                    .tcp
                    .iter()
                    .all(|a| Some(u64::from(a.port())) == port(dns_c, "dns-tcp"))
                && Some(u64::from(dns_admin.port())) == port(dns_c, "dns-admin")
                && Some(u64::from(config.admin.listen.port())) == port(c, "admin"),
            "{overlay}: container ports do not match lifeline.yaml"
        );
        ensure!(
            config.dns.udp.iter().all(|a| a.port() >= 1024),
            "{overlay}: a port below 1024 would need NET_BIND_SERVICE"
        );

        let services: Vec<Service> = of_kind(&docs, "Service")?;
        let dns = services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("lifeline-dns"))
            .context("the lifeline-dns Service")?;
        ensure!(
            dns.spec
                .as_ref()
                .and_then(|s| s.publish_not_ready_addresses)
                == Some(true),
            "{overlay}: the DNS Service must publish pods whose controller is restarting"
        );
        let ports = serde_json::to_value(&dns.spec.as_ref().context("spec")?.ports)?;
        ensure!(
            ports
                == json!([
                    {"name": "dns-udp", "port": 53, "protocol": "UDP", "targetPort": "dns-udp"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": "dns-tcp"},
                ]),
            "{overlay}: DNS Service ports {ports}"
        );
        // Every Service selects the controller's pods.
        let labels = serde_json::to_value(
            one::<Deployment>(&docs, "Deployment")?
                .spec
                .template
                .metadata
                .context("template metadata")?
                .labels,
        )?;
        for s in &services {
            let selector = serde_json::to_value(&s.spec.as_ref().context("spec")?.selector)?;
            for (k, v) in selector.as_object().context("selector")? {
                ensure!(labels[k] == *v, "{overlay}: Service selector {k}={v}");
            }
        }
    }
    Ok(())
}

#[test]
fn every_volume_the_config_names_is_mounted_and_writable_paths_are_only_the_data_volume()
-> Result<()> {
    for overlay in OVERLAYS {
        let docs = rendered(overlay)?;
        let pod = pod_spec(&docs)?;
        for c in pod["containers"].as_array().context("containers")? {
            let mounts = c["volumeMounts"].as_array().context("mounts")?;
            let writable: Vec<&Value> = mounts.iter().filter(|m| m["readOnly"] != true).collect();
            ensure!(
                writable.len() == 1 && writable[0]["mountPath"] == "/var/lib/lifeline",
                "{overlay}: {}: writable mounts {writable:?}",
                c["name"]
            );
        }
        let config = config_of(&docs)?;
        if let StoreConfig::Etcd { tls: Some(tls), .. } = &config.store {
            // The projected config volume carries each TLS file at the configured path.
            let sources = pod["volumes"][0]["projected"]["sources"].to_string();
            for file in [
                Some(&tls.ca_file),
                tls.cert_file.as_ref(),
                tls.key_file.as_ref(),
            ]
            .into_iter()
            .flatten()
            {
                let relative = file.strip_prefix("/etc/lifeline").with_context(|| {
                    format!("{overlay}: {} outside /etc/lifeline", file.display())
                })?;
                ensure!(
                    sources.contains(&format!("\"{}\"", relative.display())),
                    "{overlay}: {} is not projected into the config volume",
                    file.display()
                );
            }
        }
    }
    Ok(())
}

#[test]
fn ha_spreads_three_replicas_and_keeps_two_through_disruptions() -> Result<()> {
    let docs = rendered("ha")?;
    let deployment: Deployment = one(&docs, "Deployment")?;
    let spec = deployment.spec;
    ensure!(spec.replicas == Some(3));
    let pod = pod_spec(&docs)?;
    let anti = &pod["affinity"]["podAntiAffinity"];
    ensure!(
        anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"]
            == "kubernetes.io/hostname"
            && anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"]
                == "topology.kubernetes.io/zone",
        "anti-affinity {anti}"
    );
    let pdb = serde_json::to_value(one::<PodDisruptionBudget>(&docs, "PodDisruptionBudget")?)?;
    ensure!(
        pdb["spec"]["minAvailable"] == 2 && pdb["spec"].get("maxUnavailable").is_none(),
        "{pdb}"
    );
    let config = config_of(&docs)?;
    if let StoreConfig::Etcd {
        password_env: Some(var),
        ..
    } = &config.store
    {
        // Both talk to etcd: the controller to lead, `dns` to follow the records.
        for name in ["controller", "dns"] {
            let env = container(&pod, name)?["env"].to_string();
            ensure!(env.contains(var.as_str()), "{var} is not set in {name}");
        }
    }
    Ok(())
}

#[test]
fn single_keeps_its_store_on_a_claim_and_recreates_the_pod() -> Result<()> {
    let docs = rendered("single")?;
    let spec = one::<Deployment>(&docs, "Deployment")?.spec;
    ensure!(spec.replicas == Some(1));
    let strategy = serde_json::to_value(&spec.strategy)?;
    ensure!(strategy == json!({"type": "Recreate"}), "{strategy}");
    let claim: PersistentVolumeClaim = one(&docs, "PersistentVolumeClaim")?;
    let pod = pod_spec(&docs)?;
    let data = pod["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == "data"))
        .context("data volume")?;
    ensure!(
        data["persistentVolumeClaim"]["claimName"] == json!(claim.metadata.name)
            && data.get("emptyDir").is_none(),
        "{data}"
    );
    Ok(())
}

// === kind and optional pieces ===

#[test]
fn the_kind_demo_policy_is_valid_and_points_at_the_member_workload() -> Result<()> {
    let root = repo();
    let zones = config_of(&rendered("single")?)?.zone_rules();
    let loaded = lifeline_controller::documents::load(
        &[root.join("deploy/kind/manifests/management/lifeline-demo.yaml")],
        &zones,
    );
    let problems: Vec<String> = loaded.problems.iter().map(ToString::to_string).collect();
    ensure!(loaded.is_valid(), "{problems:?}");
    ensure!(loaded.policies.len() == 1 && loaded.clusters.len() == 2);
    let policy = &loaded.policies[0].1;
    let wanted = policy.spec.service.as_ref().context("service")?;

    let member = documents(&read(
        &root.join("deploy/kind/manifests/member/hello.yaml"),
    )?)?;
    let service: Service = one(&member, "Service")?;
    ensure!(
        Some(&wanted.name) == service.metadata.name.as_ref()
            && wanted.namespace == service.metadata.namespace,
        "the policy looks for {wanted:?}"
    );
    let labels = service.metadata.labels.clone().unwrap_or_default();
    ensure!(
        labels.get("lifeline.dev/global").map(String::as_str) == Some("true"),
        "the member Service lacks lifeline.dev/global=true"
    );
    let spec = service.spec.context("spec")?;
    ensure!(spec.type_.as_deref() == Some("LoadBalancer"));
    let health = serde_json::to_value(&policy.spec.health_check)?;
    let ports = spec.ports.unwrap_or_default();
    ensure!(
        ports
            .iter()
            .any(|p| json!(p.port) == health["http"]["port"]),
        "the health check port {} is not a port of the Service",
        health["http"]["port"]
    );
    Ok(())
}

#[test]
fn the_servicemonitor_component_scrapes_the_admin_service() -> Result<()> {
    let root = repo();
    let monitor = documents(&read(
        &root.join("deploy/components/servicemonitor/servicemonitor.yaml"),
    )?)?;
    ensure!(monitor.len() == 1 && monitor[0]["kind"] == "ServiceMonitor");
    let docs = rendered("single")?;
    let admin: Service = of_kind::<Service>(&docs, "Service")?
        .into_iter()
        .find(|s| s.metadata.name.as_deref() == Some("lifeline-admin"))
        .context("lifeline-admin")?;
    let labels = serde_json::to_value(&admin.metadata.labels)?;
    for (k, v) in monitor[0]["spec"]["selector"]["matchLabels"]
        .as_object()
        .context("matchLabels")?
    {
        ensure!(labels[k] == *v, "the admin Service lacks {k}={v}");
    }
    // Composed with an overlay, it lands next to the admin Service.
    // kustomize takes only relative paths to other directories: work two levels down.
    std::fs::create_dir_all(root.join("target"))?;
    let scratch = tempfile::tempdir_in(root.join("target"))?;
    let up = "../../deploy";
    std::fs::write(
        scratch.path().join("kustomization.yaml"),
        format!(
            "resources: [{up}/overlays/single]\ncomponents: [{up}/components/servicemonitor]\n"
        ),
    )?;
    match kustomize(scratch.path())? {
        Some(text) => {
            let composed = documents(&text)?;
            let monitors: Vec<&Value> = composed
                .iter()
                .filter(|d| d["kind"] == "ServiceMonitor")
                .collect();
            ensure!(
                monitors.len() == 1 && monitors[0]["metadata"]["namespace"] == "lifeline-system",
                "{monitors:?}"
            );
        }
        None => lifeline_testkit::skipped(
            "kubectl not found: not composing the servicemonitor component",
        ),
    }
    let port = &monitor[0]["spec"]["endpoints"][0]["port"];
    let ports = serde_json::to_value(&admin.spec.context("spec")?.ports)?;
    ensure!(
        ports
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["name"] == *port)),
        "no admin Service port named {port}"
    );
    Ok(())
}

/// `NAME=value` assignments of `deploy/kind/lib.sh` (words of arrays split on spaces).
fn kind_setting(name: &str) -> Result<Vec<String>> {
    let lib = read(&repo().join("deploy/kind/lib.sh"))?;
    let line = lib
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .with_context(|| format!("{name} is not set in deploy/kind/lib.sh"))?;
    Ok(line
        .trim_matches(|c| c == '(' || c == ')')
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

#[test]
fn the_kind_scripts_use_the_names_and_files_the_manifests_define() -> Result<()> {
    let root = repo();
    let loaded = lifeline_controller::documents::load(
        &[root.join("deploy/kind/manifests/management/lifeline-demo.yaml")],
        &[],
    );
    let clusters: Vec<String> = loaded
        .clusters
        .iter()
        .filter_map(|(_, c)| c.metadata.name.clone())
        .collect();
    ensure!(kind_setting("MEMBER_NAMES")? == clusters, "{clusters:?}");
    for (_, cluster) in &loaded.clusters {
        let secret = cluster
            .spec
            .kubeconfig_secret_ref
            .as_ref()
            .context("secret")?;
        let name = cluster.metadata.name.as_deref().unwrap_or_default();
        ensure!(
            secret.name == format!("{name}-kubeconfig") && secret.key == "kubeconfig",
            "up.sh creates {name}-kubeconfig with key kubeconfig, not {secret:?}"
        );
    }
    let hostname = &loaded.policies[0].1.spec.hostname;
    ensure!(kind_setting("GLOBAL_NAME")? == std::slice::from_ref(hostname));

    // Every file the scripts apply or build from exists.
    let pattern = regex::Regex::new(r#"\$(KIND_DIR|REPO_ROOT)/([A-Za-z0-9_./-]+)"#)?;
    let mut used = 0;
    for script in ["up.sh", "e2e.sh", "down.sh"] {
        let text = read(&root.join("deploy/kind").join(script))?;
        for caps in pattern.captures_iter(&text) {
            let base = if &caps[1] == "KIND_DIR" {
                root.join("deploy/kind")
            } else {
                root.clone()
            };
            let path = base.join(&caps[2]);
            used += 1;
            ensure!(
                path.exists(),
                "{script} uses {} which does not exist",
                path.display()
            );
        }
    }
    ensure!(used >= 6, "only {used} paths found in the scripts");
    Ok(())
}

#[test]
fn the_coredns_stub_domain_forwards_the_zone_lifeline_serves() -> Result<()> {
    let corefile = read(&repo().join("deploy/coredns/Corefile.global"))?;
    let zones = config_of(&rendered("single")?)?.zone_origins();
    let block = corefile
        .lines()
        .find(|l| l.trim_end().ends_with('{') && !l.starts_with([' ', '#']))
        .context("no server block")?;
    ensure!(
        zones.iter().any(|z| block.starts_with(&format!("{z}:53 "))),
        "{block:?} does not serve one of {zones:?}"
    );
    ensure!(corefile.contains("forward . LIFELINE_DNS_IP:53"));
    Ok(())
}
