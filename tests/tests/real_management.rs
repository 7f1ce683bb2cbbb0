//! `lifeline run` with the `kubernetes` policy source against three real kube-apiservers:
//! one management cluster and two members (skipped, saying so, when the binaries from
//! `tests/control-plane/build.sh` are absent).
//!
//! Every identity is the one `deploy/rbac/` binds, checked by the real RBAC authoriser:
//! Lifeline reads its CRs and the member kubeconfig Secrets, writes status by
//! server-side apply, and creates Events as the management ServiceAccount; it watches
//! each member as the member reader. The test creates the Services, their
//! LoadBalancer status and EndpointSlices (no controllers run), and real HTTP backends
//! on loopback.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use lifeline_testkit::control_plane::{ApiServer, Options};
use lifeline_testkit::{
    Backend, ControlPlanes, dns::await_exactly, eventually_async, free_addr, free_port,
};
use lifeline_tests::harness::inprocess::{Running, zone_line};
use lifeline_tests::real::{self, apply, kubectl};
use serde_json::{Value, json};

const ZONE: &str = "real.lifeline.test";
const NAME: &str = "web.real.lifeline.test";
const MANAGER: &str = "system:serviceaccount:lifeline-system:lifeline";
const READER: &str = "system:serviceaccount:lifeline-system:lifeline-member-reader";
const SA_GROUPS: &[&str] = &[
    "system:serviceaccounts",
    "system:serviceaccounts:lifeline-system",
];

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn get_json(s: &ApiServer, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    Ok(serde_json::from_str(&kubectl(s, &all, None)?)?)
}

fn policy(port: u16) -> Value {
    json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "FailoverPolicy",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "hostname": NAME,
            "service": {"name": "web"},
            "targets": [{"cluster": "one"}, {"cluster": "two", "priority": 1}],
            "healthCheck": {"http": {"port": port}, "interval": "200ms", "timeout": "150ms",
                            "unhealthyThreshold": 2, "healthyThreshold": 2},
            "failback": {"holdDown": "0s", "rampDuration": "0s"}
        }
    })
}

/// A member: its reader role, and `shop/web` as a LoadBalancer Service whose ingress
/// address is `address` (the test writes the status a cloud controller would). A real
/// API server refuses loopback addresses in EndpointSlices, so the loopback backends
/// are reached through the LoadBalancer address; the EndpointSlice carries the
/// readiness hint.
fn member(s: &ApiServer, address: IpAddr) -> Result<()> {
    real::apply_file(s, "deploy/rbac/member-cluster.yaml")?;
    kubectl(s, &["create", "namespace", "shop"], None)?;
    real::load_balancer_service(s, "shop", "web", 80, &[address])?;
    apply(
        s,
        &json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "shop", "name": "web-1",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.1"], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 80}]
        }),
    )
}

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    check: impl FnMut() -> F,
) -> T {
    eventually_async(Duration::from_secs(30), what, check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifeline_steers_from_crs_on_real_api_servers_with_the_deploy_rbac() -> Result<()> {
    lifeline_tests::kube::install_crypto_provider();
    let opts = Options::default()
        .user(MANAGER, SA_GROUPS)
        .user(READER, SA_GROUPS);
    let Some(planes) = ControlPlanes::start(3, opts).await else {
        return Ok(());
    };
    let (mgmt, one, two) = (&planes[0], &planes[1], &planes[2]);

    // Management: CRDs, the controller's RBAC, kubeconfig Secrets, clusters, a policy.
    real::install_crds(mgmt)?;
    real::apply_file(mgmt, "deploy/rbac/management-cluster.yaml")?;
    real::allow_kubeconfig_secrets(mgmt, &["one-kubeconfig".into(), "two-kubeconfig".into()])?;
    kubectl(mgmt, &["create", "namespace", "shop"], None)?;
    let port = free_port(&[ip(21), ip(22)]);
    for (name, s, address) in [("one", one, ip(21)), ("two", two, ip(22))] {
        member(s, address)?;
        let secret = format!("{name}-kubeconfig");
        apply(
            mgmt,
            &json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": secret, "namespace": "lifeline-system"},
                "data": {"kubeconfig": base64::engine::general_purpose::STANDARD.encode(s.kubeconfig(READER))}
            }),
        )?;
        apply(
            mgmt,
            &json!({
                "apiVersion": "lifeline.dev/v1alpha1", "kind": "MemberCluster",
                "metadata": {"name": name},
                "spec": {"region": name, "addressSource": "LoadBalancer",
                         "kubeconfigSecretRef": {"name": secret, "namespace": "lifeline-system"}}
            }),
        )?;
    }
    // The real authoriser lets Lifeline read the Secrets its Role names, and no other.
    apply(
        mgmt,
        &json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "unrelated", "namespace": "lifeline-system"},
                "stringData": {"password": "not for lifeline"}}),
    )?;
    for (secret, allowed) in [("one-kubeconfig", true), ("unrelated", false)] {
        let (ok, _, err) = mgmt.kubectl(
            MANAGER,
            &["-n", "lifeline-system", "get", "secret", secret],
            None,
        );
        ensure!(
            ok == allowed && (allowed || err.contains("forbidden")),
            "reading Secret {secret} as Lifeline: allowed {ok}, {err}"
        );
    }
    apply(mgmt, &policy(port))?;
    let backend_one = Backend::start(SocketAddr::new(ip(21), port)).await;
    let _backend_two = Backend::start(SocketAddr::new(ip(22), port)).await;

    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("kubeconfig.yaml"), mgmt.kubeconfig(MANAGER))?;
    let dns = free_addr();
    let config = format!(
        "zones:\n{}dns: {{udp: [\"{dns}\"], tcp: [\"{dns}\"], dataDir: {d}/snap}}\n\
store: {{type: embedded, dataDir: {d}/store}}\n\
policySource: {{type: kubernetes, kubeconfig: {d}/kubeconfig.yaml}}\n",
        zone_line(ZONE),
        d = dir.path().display()
    );
    let lifeline = Running::start(&config, dir.path()).await;
    await_exactly(dns, NAME, ip(21), Duration::from_secs(30)).await;

    // Status by server-side apply: Ready, both targets probed, and the status fields
    // owned by the field manager "lifeline" through the status subresource.
    let status = eventually("a Ready status with both targets healthy", || async {
        let p = get_json(
            mgmt,
            &["-n", "shop", "get", "fp", "web", "--show-managed-fields"],
        )
        .ok()?;
        let s = &p["status"];
        let healthy = s["targets"]
            .as_array()?
            .iter()
            .all(|t| t["state"] == "Healthy");
        (s["answers"] == json!(["127.0.0.21"]) && healthy).then_some(p)
    })
    .await;
    let ready = status["status"]["conditions"]
        .as_array()
        .context("conditions")?
        .iter()
        .find(|c| c["type"] == "Ready")
        .context("Ready")?
        .clone();
    ensure!(ready["status"] == "True", "{ready}");
    let owners: Vec<&Value> = status["metadata"]["managedFields"]
        .as_array()
        .context("managedFields")?
        .iter()
        .filter(|m| m["manager"] == "lifeline")
        .collect();
    ensure!(
        owners.len() == 1
            && owners[0]["operation"] == "Apply"
            && owners[0]["subresource"] == "status"
            && owners[0]["fieldsV1"]["f:status"].get("f:answers").is_some(),
        "lifeline owns the status by apply: {owners:?}"
    );
    for cluster in ["one", "two"] {
        let mc = eventually("a Ready MemberCluster", || async {
            let c = get_json(mgmt, &["get", "mc", cluster]).ok()?;
            (c["status"]["conditions"][0]["status"] == "True").then_some(c)
        })
        .await;
        ensure!(
            mc["status"]["conditions"][0]["reason"] == "Reachable",
            "{mc}"
        );
    }

    // An update the server's own rules reject (both http and tcp, a CEL rule) never
    // reaches Lifeline: the server names the field, and answers stay.
    let mut bad = policy(port);
    bad["spec"]["healthCheck"]["tcp"] = json!({"port": port});
    let (ok, _, err) = mgmt.kubectl(
        "admin",
        &["apply", "--server-side", "-f", "-"],
        Some(&bad.to_string()),
    );
    ensure!(!ok && err.contains("spec.healthCheck"), "{err}");

    // One the server accepts but only Lifeline can check (a target no MemberCluster
    // names): the policy goes on being served on the targets it can resolve, and the CR
    // says which reference is broken.
    let mut unknown = policy(port);
    unknown["spec"]["targets"][1]["cluster"] = json!("three");
    apply(mgmt, &unknown)?;
    let unresolved = eventually("ResolvedRefs=False for the unknown cluster", || async {
        let p = get_json(mgmt, &["-n", "shop", "get", "fp", "web"]).ok()?;
        let c = p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "ResolvedRefs")?
            .clone();
        (c["status"] == "False").then_some(c)
    })
    .await;
    ensure!(unresolved["reason"] == "UnknownCluster", "{unresolved}");
    ensure!(
        unresolved["message"]
            .as_str()
            .unwrap_or_default()
            .contains("\"three\""),
        "{unresolved}"
    );
    await_exactly(dns, NAME, ip(21), Duration::from_secs(5)).await;
    apply(mgmt, &policy(port))?;

    // The primary's backend dies: Lifeline fails over and says so in an Event.
    drop(backend_one);
    await_exactly(dns, NAME, ip(22), Duration::from_secs(30)).await;
    let event = eventually("an AnswersChanged Event", || async {
        let list = get_json(mgmt, &["-n", "shop", "get", "events.events.k8s.io"]).ok()?;
        list["items"]
            .as_array()?
            .iter()
            .find(|e| {
                e["reason"] == "AnswersChanged"
                    && e["note"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("127.0.0.22")
            })
            .cloned()
    })
    .await;
    ensure!(event["regarding"]["name"] == "web", "{event}");
    ensure!(
        event["reportingController"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{event}"
    );

    lifeline.stop().await;
    Ok(())
}
