//! Member-cluster watchers against a real kube-apiserver (skipped, saying so, when the
//! binaries from `tests/control-plane/build.sh` are absent). No controllers run: the
//! test creates Services and EndpointSlices itself.
//!
//! - `deploy/rbac/member-cluster.yaml`, bound by the real RBAC authoriser, is enough;
//!   without any one of its grants the watcher reports the refusal (Forbidden) instead
//!   of retrying at its normal pace.
//! - Watches that end on their timeout resume from where they were without a list,
//!   resume after the API server restarts, and relist after etcd compaction answers
//!   410 Gone.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use lifeline_controller::kubernetes::budget::{BudgetConfig, ControlPlane};
use lifeline_controller::kubernetes::member::{
    MemberHandle, MemberView, MemberWatcher, ServiceKey, WatchOptions, kube_config_from_bytes,
};
use lifeline_testkit::control_plane::{ApiServer, Options};
use lifeline_testkit::{ControlPlanes, Proxy};
use lifeline_tests::real::apply;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::timeout;

/// The identity `deploy/rbac/member-cluster.yaml` binds: its ServiceAccount, given here
/// as a static-token user with the groups a ServiceAccount token would carry.
const READER: &str = "system:serviceaccount:lifeline-system:lifeline-member-reader";
const READER_GROUPS: &[&str] = &[
    "system:serviceaccounts",
    "system:serviceaccounts:lifeline-system",
];

fn rbac_documents() -> Result<Vec<Value>> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rbac/member-cluster.yaml");
    let text = std::fs::read_to_string(&path)?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// A global Service `shop/web` and one EndpointSlice for it with one ready address.
fn web(s: &ApiServer, address: &str) -> Result<()> {
    let (ok, out, err) = s.kubectl("admin", &["create", "namespace", "shop"], None);
    ensure!(ok, "{out}{err}");
    apply(
        s,
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "shop", "name": "web", "labels": {"lifeline.dev/global": "true"}},
            "spec": {"ports": [{"name": "http", "port": 80}]}
        }),
    )?;
    slice(s, "web-1", address)
}

fn slice(s: &ApiServer, name: &str, address: &str) -> Result<()> {
    apply(
        s,
        &json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "shop", "name": name,
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 8080}]
        }),
    )
}

fn scope() -> BTreeSet<ServiceKey> {
    [("shop".to_owned(), "web".to_owned())].into()
}

fn options() -> WatchOptions {
    WatchOptions {
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        ..WatchOptions::default()
    }
}

async fn spawn(kubeconfig: &str, options: WatchOptions) -> Result<MemberHandle> {
    let config = kube_config_from_bytes(kubeconfig.as_bytes()).await?;
    Ok(MemberWatcher::spawn(
        "real".to_owned(),
        config,
        BudgetConfig::default(),
        scope(),
        options,
    )?)
}

fn addresses(v: &MemberView) -> BTreeSet<IpAddr> {
    v.services
        .values()
        .flat_map(|s| s.ready_addresses.iter().copied())
        .collect()
}

async fn wait_view(
    rx: &mut watch::Receiver<MemberView>,
    what: &str,
    pred: impl FnMut(&MemberView) -> bool,
) -> Result<MemberView> {
    let limit = Duration::from_secs(30);
    let waited = match timeout(limit, rx.wait_for(pred)).await {
        Ok(v) => Some(v.map(|v| v.clone())),
        Err(_) => None,
    };
    match waited {
        Some(v) => Ok(v?),
        None => bail!(
            "timed out after {limit:?} waiting for {what}; view: {:?}",
            rx.borrow()
        ),
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_role_is_enough_and_each_missing_grant_is_reported_as_forbidden() -> Result<()> {
    lifeline_tests::kube::install_crypto_provider();
    let opts = Options::default().user(READER, READER_GROUPS);
    let Some(planes) = ControlPlanes::start(1, opts).await else {
        return Ok(());
    };
    let s = &planes[0];
    let docs = rbac_documents()?;
    for doc in &docs {
        apply(s, doc)?;
    }
    web(s, "10.9.0.1")?;
    let kubeconfig = s.kubeconfig(READER);

    // With the role as shipped: synced, both streams open, nothing refused.
    let h = spawn(&kubeconfig, options()).await?;
    let mut rx = h.view();
    let v = wait_view(&mut rx, "a synced view", |v| {
        v.synced && v.watches_open == 2 && !addresses(v).is_empty()
    })
    .await?;
    ensure!(v.denied.is_empty(), "{:?}", v.denied);
    ensure!(addresses(&v) == [ip("10.9.0.1")].into());
    drop(h);

    // Without each grant in turn, the watcher names what is refused.
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .context("the ClusterRole")?
        .clone();
    let rules = role["rules"].as_array().context("rules")?.clone();
    let mut report = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let resource = rule["resources"][0]
            .as_str()
            .context("resource")?
            .to_owned();
        let verbs: Vec<String> = rule["verbs"]
            .as_array()
            .context("verbs")?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        for verb in &verbs {
            let mut reduced = role.clone();
            let kept: Vec<&String> = verbs.iter().filter(|v| *v != verb).collect();
            reduced["rules"][i]["verbs"] = json!(kept);
            apply(s, &reduced)?;
            let h = spawn(&kubeconfig, options()).await?;
            let mut rx = h.view();
            let v = wait_view(
                &mut rx,
                &format!("a refusal without {verb} {resource}"),
                |v| !v.denied.is_empty(),
            )
            .await?;
            let line = v.denied.join("; ");
            report.push(format!("without {verb} {resource}: {line}"));
            ensure!(
                line.contains(&format!("{verb} {resource}")) && line.contains("403"),
                "without {verb} on {resource} the refusal says: {line}"
            );
            ensure!(
                line.contains(READER),
                "the server's message names the user: {line}"
            );
            // The cluster's status says Forbidden, not Unreachable.
            let mc: lifeline_crds::MemberCluster = serde_json::from_value(json!({
                "apiVersion": "lifeline.dev/v1alpha1", "kind": "MemberCluster",
                "metadata": {"name": "real"},
                "spec": {"region": "a", "addressSource": "EndpointSlice"}
            }))?;
            let status =
                lifeline_controller::kubernetes::status::cluster_status(&mc, Some(&v), None);
            let ready = &status.conditions[0];
            ensure!(
                ready.status == "False" && ready.reason == "Forbidden",
                "{ready:?}"
            );
            ensure!(
                v.control_plane == ControlPlane::Reachable,
                "a refusal is an answer: {:?}",
                v.control_plane
            );
            // It does not loop: a refused request is retried after the longest pause
            // (2 s here) at once, so 5 s see at most three retries (plain exponential
            // backoff from 100 ms would send five or more).
            let before = h.budget().stats().requests;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let retries = h.budget().stats().requests - before;
            ensure!(
                retries <= 3,
                "without {verb} {resource}: {retries} requests in 5 s after the refusal"
            );
            drop(h);
        }
        apply(s, &role)?;
    }
    println!("{}", report.join("\n"));
    ensure!(report.len() == 4, "{report:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_without_relisting_on_timeout_and_after_an_api_server_restart() -> Result<()>
{
    lifeline_tests::kube::install_crypto_provider();
    let Some(planes) = ControlPlanes::start(1, Options::default()).await else {
        return Ok(());
    };
    web(&planes[0], "10.9.0.1")?;
    let kubeconfig = planes[0].kubeconfig("admin");
    // Short watches, so several end while the test waits. The real server sends a
    // bookmark before each deadline; the watcher resumes from it.
    let h = spawn(
        &kubeconfig,
        WatchOptions {
            watch_timeout: Duration::from_secs(5),
            ..options()
        },
    )
    .await?;
    let mut rx = h.view();
    let first = wait_view(&mut rx, "a synced view", |v| {
        v.synced && v.watches_open == 2
    })
    .await?;
    let before = h.budget().stats();
    let contact = first.last_contact.context("a contact time")?;
    // Nothing the watches select changes for 12 s: every watch ends at least once and is
    // opened again from its last resourceVersion, never with a new list. Objects they do
    // not select change meanwhile, so the server's resourceVersion moves on and its
    // bookmarks carry it to the watcher.
    for i in 0..6 {
        apply(
            &planes[0],
            &json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": "shop", "name": format!("noise-{i}")},
                "spec": {"ports": [{"name": "http", "port": 80}]}
            }),
        )?;
        apply(
            &planes[0],
            &json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"namespace": "shop", "name": format!("noise-{i}"),
                             "labels": {"kubernetes.io/service-name": format!("noise-{i}")}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.9.9.9"], "conditions": {"ready": true}}],
                "ports": [{"name": "http", "port": 8080}]
            }),
        )?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let after = h.budget().stats();
    // Both watches open again (one may be between its end and its resume right now).
    let quiet = wait_view(&mut rx, "both watches open after the quiet", |v| {
        v.watches_open == 2
    })
    .await?;
    let count = |s: &lifeline_controller::kubernetes::budget::BudgetStats, verb| {
        s.by_verb.get(&verb).copied().unwrap_or(0)
    };
    use lifeline_controller::kubernetes::budget::Verb;
    println!(
        "12 s without selected changes: {} watch re-opens, {} lists",
        count(&after, Verb::Watch) - count(&before, Verb::Watch),
        count(&after, Verb::List) - count(&before, Verb::List)
    );
    ensure!(
        count(&after, Verb::Watch) >= count(&before, Verb::Watch) + 2,
        "both watches ended and were opened again: {before:?} -> {after:?}"
    );
    ensure!(
        count(&after, Verb::List) == count(&before, Verb::List),
        "no relist: {before:?} -> {after:?}"
    );
    ensure!(quiet.last_contact.is_some_and(|t| t > contact), "{quiet:?}");
    // The resumes came from bookmarks: the server sent them on both quiet streams.
    println!(
        "bookmarks received in those 12 s: {}",
        quiet.bookmarks - first.bookmarks
    );
    ensure!(
        quiet.bookmarks >= first.bookmarks + 2,
        "the server sent bookmarks before its deadlines: {} -> {}",
        first.bookmarks,
        quiet.bookmarks
    );

    // The API server dies: the view keeps its addresses; after the restart the watches
    // resume and a new endpoint arrives.
    planes[0].kill();
    let down = wait_view(&mut rx, "the outage", |v| {
        matches!(v.control_plane, ControlPlane::Unreachable { .. })
    })
    .await?;
    ensure!(addresses(&down) == [ip("10.9.0.1")].into(), "{down:?}");
    planes[0].start_again().await;
    slice(&planes[0], "web-2", "10.9.0.2")?;
    let back = wait_view(&mut rx, "the new endpoint", |v| {
        addresses(v) == [ip("10.9.0.1"), ip("10.9.0.2")].into()
    })
    .await?;
    ensure!(back.synced, "{back:?}");
    // The other stream may still be backing off from the outage; it reopens too.
    wait_view(&mut rx, "both watches open after the restart", |v| {
        v.watches_open == 2
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_after_compaction_gets_410_and_relists_to_the_current_state() -> Result<()>
{
    lifeline_tests::kube::install_crypto_provider();
    // Without the watch cache the API server resumes watches from etcd itself, so a
    // compacted resourceVersion is answered 410 Gone at once.
    let opts = Options::default().arg("--watch-cache=false");
    let Some(planes) = ControlPlanes::start(1, opts).await else {
        return Ok(());
    };
    let s = &planes[0];
    web(s, "10.9.0.1")?;
    // The watcher reaches the server through a hop the test can cut.
    let addr: std::net::SocketAddr = s.url().trim_start_matches("https://").parse()?;
    let proxy = Proxy::start(addr).await;
    let kubeconfig = s
        .kubeconfig("admin")
        .replace(&s.url(), &format!("https://{}", proxy.addr()));
    // The certificate names the server's address, not the proxy's: check it by the
    // name it also carries.
    let kubeconfig = kubeconfig.replace(
        "    certificate-authority-data:",
        "    tls-server-name: kubernetes.default.svc\n    certificate-authority-data:",
    );
    let h = spawn(&kubeconfig, options()).await?;
    let mut rx = h.view();
    wait_view(&mut rx, "a synced view", |v| {
        v.synced && v.watches_open == 2 && addresses(v) == [ip("10.9.0.1")].into()
    })
    .await?;

    // Cut off, the watcher misses a deletion and a creation, and etcd compacts the
    // history it would resume from.
    proxy.set_blocked(true);
    let (ok, out, err) = s.kubectl(
        "admin",
        &["-n", "shop", "delete", "endpointslice", "web-1"],
        None,
    );
    ensure!(ok, "{out}{err}");
    slice(s, "web-3", "10.9.0.3")?;
    let mut etcd = planes.etcd().client().await;
    let revision = etcd
        .get("/", None)
        .await?
        .header()
        .context("etcd header")?
        .revision();
    planes.etcd().compact(revision).await;
    let lists = |h: &MemberHandle| {
        h.budget()
            .stats()
            .by_verb
            .get(&lifeline_controller::kubernetes::budget::Verb::List)
            .copied()
            .unwrap_or(0)
    };
    let lists_before = lists(&h);
    proxy.set_blocked(false);

    let v = wait_view(&mut rx, "the relisted state, watched again", |v| {
        addresses(v) == [ip("10.9.0.3")].into() && v.watches_open == 2
    })
    .await?;
    ensure!(v.synced, "{v:?}");
    // A watch resumes from its last version and relists only on 410 Gone (the test of
    // watch timeouts above shows no list without one): the compaction is what made it
    // list again.
    let relists = lists(&h) - lists_before;
    ensure!(
        relists >= 1,
        "the watcher got the new state without a relist ({relists} lists): no 410 came"
    );
    Ok(())
}
