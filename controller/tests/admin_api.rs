//! The admin API in-process over real sockets: overrides move DNS answers, every bad
//! request gets a clear error, and authorization is enforced.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

mod common;

use common::{json_body, text_body};
use lifeline_controller::{
    admin::{self, AdminState},
    config::Config,
    run::{self, Documents},
    store::{EmbeddedStore, Store},
};
use lifeline_testkit::{
    Backend,
    dns::{answer_a, await_exactly},
    fixtures::{static_cluster, zone_line},
    free_port, loopback,
};
use serde_json::{Value, json};

const ZONE: &str = "admin.lifeline.test";
const NAME: &str = "web.admin.lifeline.test";

struct Running {
    admin: String,
    dns: SocketAddr,
    /// The addresses of cluster `one` (priority 0) and `two` (priority 1).
    one: IpAddr,
    two: IpAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
    _backends: Vec<Backend>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn start(token: Option<&str>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (loopback(), loopback());
    let port = free_port(&[one, two]);
    let backends = vec![
        Backend::start(SocketAddr::new(one, port)).await,
        Backend::start(SocketAddr::new(two, port)).await,
    ];
    let dns = lifeline_testkit::free_addr();
    let config = Config::from_bytes(
        format!(
            "zones:\n{zone}\
dns: {{udp: [\"{dns}\"], tcp: [\"{dns}\"], dataDir: {d}/snap}}\n\
store: {{type: embedded, dataDir: {d}/store}}\n\
policySource: {{type: files, paths: [unused.yaml]}}\n",
            zone = zone_line(ZONE),
            d = dir.path().display()
        )
        .as_bytes(),
    )
    .unwrap();
    let docs = format!(
        "{}---\n{}---\n\
apiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: web, namespace: shop}}\nspec:\n  hostname: {NAME}\n  targets: [{{cluster: one, priority: 0}}, {{cluster: two, priority: 1}}]\n  healthCheck: {{http: {{port: {port}}}, interval: 200ms, timeout: 150ms}}\n",
        static_cluster("one", "a", one),
        static_cluster("two", "b", two),
    );
    let mut policies = Vec::new();
    let mut clusters = Vec::new();
    for value in lifeline_crds::document::parse_yaml_stream(&docs).unwrap() {
        match lifeline_crds::document::decode_document(value) {
            (Some(lifeline_crds::document::Document::FailoverPolicy(p)), _) => policies.push(p),
            (Some(lifeline_crds::document::Document::MemberCluster(c)), _) => clusters.push(c),
            (None, problems) => panic!("{problems:?}"),
        }
    }
    let listener = tokio::net::TcpListener::bind((loopback(), 0))
        .await
        .unwrap();
    let admin = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let options = run::Options {
        config,
        documents: Documents::Inline { policies, clusters },
        admin: listener,
        admin_token: token.map(str::to_owned),
        admin_routes: Vec::new(),
        on_ready: None,
        test_faults: false,
    };
    let task = tokio::spawn(run::run(options, async move {
        let _ = stop_rx.await;
    }));
    let running = Running {
        admin,
        dns,
        one,
        two,
        stop: Some(stop_tx),
        task,
        _dir: dir,
        _backends: backends,
    };
    wait_answer(dns, one).await;
    running
}

async fn wait_answer(dns: SocketAddr, want: IpAddr) {
    await_exactly(dns, NAME, want, Duration::from_secs(10)).await;
}

/// `GET /v1/overrides`: the overrides in force and the audit trail.
async fn overrides_listed(http: &reqwest::Client, admin: &str) -> Value {
    json_body(http.get(format!("{admin}/v1/overrides"))).await
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_through_the_admin_api_moves_the_answer_and_clearing_it_moves_it_back() {
    let lifeline = start(None).await;
    let http = client();
    let resp = http
        .post(format!("{}/v1/overrides", lifeline.admin))
        .json(&json!({"cluster": "one", "action": "drain", "for": "10m", "author": "alice", "reason": "upgrade"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["author"], "alice");
    wait_answer(lifeline.dns, lifeline.two).await;

    let status = json_body(http.get(format!("{}/v1/status", lifeline.admin))).await;
    let policy = &status["policies"][0];
    assert_eq!(policy["name"], "shop/web");
    assert_eq!(policy["answers"], json!([lifeline.two.to_string()]));
    let one = policy["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["cluster"] == "one")
        .unwrap();
    assert_eq!(one["state"], "Draining");
    assert_eq!(status["activeOverrides"], 1);

    let listed = overrides_listed(&http, &lifeline.admin).await;
    assert_eq!(listed["overrides"].as_array().unwrap().len(), 1);
    assert_eq!(listed["audit"][0]["action"], "set");
    // Audited as the caller authorization found, with the author the request named.
    assert_eq!(listed["audit"][0]["by"], "loopback");
    assert_eq!(listed["audit"][0]["override"]["author"], "alice");

    let resp = http
        .delete(format!("{}/v1/overrides?cluster=one", lifeline.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    wait_answer(lifeline.dns, lifeline.one).await;
    lifeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_sent_at_the_same_moment_each_get_an_id_of_their_own_and_all_stay() {
    let lifeline = start(None).await;
    let http = client();
    let sends = (0..64).map(|i| {
        let http = http.clone();
        let url = format!("{}/v1/overrides", lifeline.admin);
        let cluster = if i % 2 == 0 { "one" } else { "two" };
        async move {
            let resp = http
                .post(url)
                .json(&json!({"cluster": cluster, "action": "weight", "weight": 10 + i, "for": "10m", "author": "burst", "reason": format!("request {i}")}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            (status, body["id"].as_str().unwrap_or_default().to_owned())
        }
    });
    // Eight at a time: the admin API takes 16 connections from one address.
    use futures::StreamExt as _;
    let created: Vec<(u16, String)> = futures::stream::iter(sends)
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(
        created.iter().all(|(status, _)| *status == 201),
        "{created:?}"
    );
    let ids: std::collections::BTreeSet<&str> = created.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), 64, "ids repeat: {created:?}");
    let listed = overrides_listed(&http, &lifeline.admin).await;
    let in_force: std::collections::BTreeSet<&str> = listed["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["id"].as_str())
        .collect();
    assert_eq!(in_force, ids, "every 201 is an override in force");
    lifeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_override_leaves_the_set_in_force_and_the_audit_keeps_it() {
    let lifeline = start(None).await;
    let http = client();
    let created = json_body(
        http.post(format!("{}/v1/overrides", lifeline.admin))
            .json(&json!({"cluster": "two", "action": "drain", "for": "1s", "author": "a", "reason": "short"})),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let url = format!("{}/v1/overrides", lifeline.admin);
    let audit = lifeline_testkit::eventually_async(
        Duration::from_secs(20),
        "the expired override is removed, by expiry",
        || async {
            let listed: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            let audit = listed["audit"].as_array()?.clone();
            audit
                .iter()
                .any(|e| {
                    e["action"] == "cleared"
                        && e["by"] == "expiry"
                        && e["override"]["id"] == id.as_str()
                })
                .then_some(audit)
        },
    )
    .await;
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "set" && e["override"]["id"] == id.as_str()),
        "the audit keeps when it was set: {audit:?}"
    );
    lifeline.stop().await;
}

#[test]
fn a_full_override_list_is_refused_with_the_numbers() {
    let max = lifeline_model::limits::OVERRIDES_MAX;
    let full = lifeline_controller::admin::Full::new(max, max).to_string();
    assert!(full.contains("the most allowed (1000)"), "{full}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_override_requests_are_rejected_with_the_field_named() {
    let lifeline = start(None).await;
    let http = client();
    let post = |body: Value| {
        let http = http.clone();
        let url = format!("{}/v1/overrides", lifeline.admin);
        async move {
            let resp = http.post(url).json(&body).send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            (
                status,
                body["error"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    let base =
        json!({"cluster": "one", "action": "drain", "for": "10m", "author": "a", "reason": "r"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    // A name the policy set does not define is refused as unprocessable, naming it.
    for (body, expect) in [
        (
            with("cluster", json!("nope")),
            "cluster: unknown cluster \"nope\" (known: one, two)",
        ),
        (
            with("policy", json!("shop/nope")),
            "policy: unknown policy \"shop/nope\" (known: shop/web)",
        ),
        (
            with("policy", json!("web")),
            "policy: unknown policy \"default/web\"",
        ),
    ] {
        let (status, error) = post(body).await;
        assert_eq!(status, 422, "{expect}: {error}");
        assert!(error.contains(expect), "expected {expect:?} in {error:?}");
    }
    // (The secondary, so the answer checked at the end stays where it is.)
    let (status, error) = post(json!({"cluster": "two", "policy": "shop/web", "action": "drain", "for": "10m", "author": "a", "reason": "r"})).await;
    assert_eq!(status, 201, "a known policy is taken: {error}");
    let cases = [
        (
            with("action", json!("explode")),
            "action: unknown action \"explode\"",
        ),
        (
            with("for", json!("forever")),
            "for: invalid duration \"forever\"",
        ),
        (
            with("for", json!("1000h")),
            "for: \"1000h\" must be more than 0 and at most 168h",
        ),
        (with("reason", json!(" ")), "reason: must not be empty"),
        (
            with("action", json!("weight")),
            "weight: is required when action is weight",
        ),
        (
            with("cluster", json!(7)),
            "invalid override request at cluster",
        ),
        (with("surprise", json!(true)), "unknown field `surprise`"),
    ];
    for (body, expect) in cases {
        let (status, error) = post(body).await;
        assert_eq!(status, 400, "{expect}: {error}");
        assert!(error.contains(expect), "expected {expect:?} in {error:?}");
    }
    let resp = http
        .post(format!("{}/v1/overrides", lifeline.admin))
        .header("content-type", "application/json")
        .body("{\"cluster\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = http
        .post(format!("{}/v1/overrides", lifeline.admin))
        .body(vec![b'x'; 200 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413, "oversized bodies are refused");
    let resp = http
        .delete(format!("{}/v1/overrides/does-not-exist", lifeline.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // Still serving after all that.
    assert_eq!(answer_a(lifeline.dns, NAME).ok(), Some(vec![lifeline.one]));
    lifeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_is_required_for_v1_routes_but_not_for_health() {
    let lifeline = start(Some("s3cret")).await;
    let http = client();
    let code =
        |req: reqwest::RequestBuilder| async move { req.send().await.unwrap().status().as_u16() };
    let url = format!("{}/v1/status", lifeline.admin);
    assert_eq!(code(http.get(&url)).await, 401);
    assert_eq!(code(http.get(&url).bearer_auth("wrong")).await, 401);
    assert_eq!(code(http.get(&url).bearer_auth("s3cret")).await, 200);
    // A change made with the token is audited as the token's identity, whatever author
    // the request claims.
    let overrides = format!("{}/v1/overrides", lifeline.admin);
    let set = http
        .post(&overrides)
        .bearer_auth("s3cret")
        .json(&json!({"cluster": "one", "action": "drain", "for": "1m", "author": "mallory-claims-alice", "reason": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 201);
    let cleared = http
        .delete(format!("{overrides}?cluster=one"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 200);
    let listed = json_body(http.get(&overrides).bearer_auth("s3cret")).await;
    let by: Vec<&str> = listed["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["by"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["token:admin", "token:admin"], "{listed}");
    assert_eq!(
        code(http.get(format!("{}/healthz", lifeline.admin))).await,
        200
    );
    assert_eq!(
        code(http.get(format!("{}/readyz", lifeline.admin))).await,
        200
    );
    let metrics = text_body(http.get(format!("{}/metrics", lifeline.admin))).await;
    assert!(metrics.contains("lifeline_decisions_total"), "{metrics}");
    assert!(
        metrics.contains("lifeline_targets{state=\"Healthy\"}"),
        "{metrics}"
    );
    lifeline.stop().await;
}

#[tokio::test]
async fn without_a_token_v1_routes_are_refused_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(AdminState {
        view: Default::default(),
        store: Store::Embedded(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).into(),
        token: None,
        token_identity: "admin".into(),
        // As if bound to 0.0.0.0: the test itself only ever binds loopback.
        loopback: false,
        dns_ready: Box::new(|| false),
        registry: Default::default(),
        overrides_changed: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(admin::serve(
        listener,
        state,
        Vec::new(),
        std::future::pending(),
    ));
    let http = client();
    let resp = http.get(format!("{base}/v1/status")).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no admin token is configured")
    );
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(
        ready
            .text()
            .await
            .unwrap()
            .contains("no DNS snapshot loaded")
    );
    server.abort();
}
