//! The incident on a real control plane: a "telemetry rollout" of many clients, each
//! listing every ConfigMap in the cluster over and over, saturates a member
//! kube-apiserver whose concurrency is deliberately small. Lifeline runs beside it
//! (in-process `lifeline run`, DNS over real sockets), with or without the FlowSchema and
//! PriorityLevelConfiguration from `deploy/rbac/member-cluster.yaml`.
//!
//! ```text
//!  t=0        storm starts (clients × LIST /api/v1/configmaps, 20 ServiceAccounts)
//!  t=warm     a fresh member watcher with Lifeline's identity starts (a replica
//!             restarted mid-storm): how long until it has listed and watches
//!  t=1/3      the Service gains a second LoadBalancer address: how long until answered
//!  t=2/3      both backends of the stormed cluster die: how long until the standby
//!             cluster answers
//!  end        DNS answers over the whole storm: ok, empty, failed
//! ```
//!
//! Used by `tests/real_storm.rs` (short, asserts no failed or empty answer) and by
//! `bench-storm` (longer, prints both modes side by side).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use lifeline_controller::kubernetes::budget::{BudgetConfig, BudgetStats};
use lifeline_controller::kubernetes::member::{
    MemberWatcher, WatchOptions, kube_config_from_bytes,
};
use lifeline_testkit::control_plane::{ApiServer, Options};
use lifeline_testkit::{Backend, ControlPlanes, free_addr, free_port};
use serde_json::{Value, json};

use crate::harness::dns::LoadGen;
use crate::harness::inprocess::{Running, zone_line};
use crate::real::{apply, kubectl, load_balancer_service, repo, set_load_balancer};

const ZONE: &str = "storm.lifeline.test";
const NAME: &str = "web.storm.lifeline.test";
const READER: &str = "system:serviceaccount:lifeline-system:lifeline-member-reader";
const AGENTS: usize = 20;

/// One storm's shape.
#[derive(Debug, Clone)]
pub struct StormConfig {
    /// Apply the FlowSchema and PriorityLevelConfiguration for Lifeline.
    pub flow_schema: bool,
    /// Concurrent telemetry clients.
    pub clients: usize,
    pub duration: Duration,
    /// ConfigMaps in the cluster, and bytes of data in each: the size of every LIST.
    pub objects: usize,
    pub object_bytes: usize,
    /// `--max-requests-inflight` (the mutating limit is half of it).
    pub inflight: u32,
}

impl Default for StormConfig {
    fn default() -> Self {
        Self {
            flow_schema: true,
            clients: 200,
            duration: Duration::from_secs(30),
            objects: 300,
            object_bytes: 16 * 1024,
            inflight: 8,
        }
    }
}

/// What one storm showed.
#[derive(Debug, Clone, Default)]
pub struct StormReport {
    pub flow_schema: bool,
    /// Telemetry LISTs: completed, refused with 429, failed otherwise (timeouts too).
    pub storm_ok: u64,
    pub storm_429: u64,
    pub storm_failed: u64,
    /// The member watcher started mid-storm: its API requests and their outcome.
    pub watcher: BudgetStats,
    /// From its start until it had listed and both watches were open.
    pub watcher_synced_after: Option<Duration>,
    /// Whether both its watches stayed open from then to the end.
    pub watches_stayed_open: bool,
    /// From the new LoadBalancer address to it being answered.
    pub new_address_after: Option<Duration>,
    /// From the backends' death to the standby answering alone.
    pub failover_after: Option<Duration>,
    pub dns_queries: usize,
    pub dns_empty: usize,
    pub dns_failed: usize,
    /// Queries whose first attempt failed (no reply, then a second attempt; or an error).
    pub dns_first_try_failed: usize,
    /// The API server's own account, per priority level.
    pub levels: BTreeMap<String, Level>,
}

/// One APF priority level as the API server's `/metrics` reports it at the storm's end.
#[derive(Debug, Clone, Copy, Default)]
pub struct Level {
    /// Requests that went through the level's queues, and their mean wait in seconds.
    pub queued: u64,
    pub mean_wait: f64,
    /// Requests rejected with 429.
    pub rejected: u64,
    /// Seats: the nominal share, and the limit in force (after borrowing and lending).
    pub nominal_seats: u64,
    pub current_seats: u64,
}

/// Reads API Priority and Fairness figures from the server's `/metrics`.
fn priority_levels(metrics: &str) -> BTreeMap<String, Level> {
    let mut out: BTreeMap<String, Level> = BTreeMap::new();
    let level_of = |line: &str| -> Option<String> {
        let start = line.find("priority_level=\"")? + "priority_level=\"".len();
        let end = line[start..].find('"')? + start;
        Some(line[start..end].to_owned())
    };
    let value_of = |line: &str| -> f64 {
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some(level) = level_of(line) else {
            continue;
        };
        let e = out.entry(level).or_default();
        let v = value_of(line);
        let name = line.split('{').next().unwrap_or_default();
        match name {
            "apiserver_flowcontrol_request_wait_duration_seconds_count" => e.queued += v as u64,
            "apiserver_flowcontrol_request_wait_duration_seconds_sum" => e.mean_wait += v,
            "apiserver_flowcontrol_rejected_requests_total" => e.rejected += v as u64,
            "apiserver_flowcontrol_nominal_limit_seats" => e.nominal_seats = v as u64,
            "apiserver_flowcontrol_current_limit_seats" => e.current_seats = v as u64,
            _ => {}
        }
    }
    for e in out.values_mut() {
        e.mean_wait = if e.queued > 0 {
            e.mean_wait / e.queued as f64
        } else {
            0.0
        };
    }
    out
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn agent(i: usize) -> String {
    format!("system:serviceaccount:telemetry:agent-{i}")
}

/// The member cluster: Lifeline's RBAC (with or without its flow schema), the
/// telemetry agents' read access, the bulk objects, and `shop/web` as a LoadBalancer
/// Service at `address`.
async fn prepare(s: &ApiServer, config: &StormConfig, address: IpAddr) -> Result<()> {
    let path = repo("deploy/rbac/member-cluster.yaml");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&std::fs::read_to_string(path)?)?;
    for doc in docs.iter().filter(|d| !d.is_null()) {
        let flow = matches!(
            doc["kind"].as_str(),
            Some("FlowSchema" | "PriorityLevelConfiguration")
        );
        if !flow || config.flow_schema {
            apply(s, doc)?;
        }
    }
    for ns in ["telemetry", "bulk", "shop"] {
        kubectl(s, &["create", "namespace", ns], None)?;
    }
    apply(
        s,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "telemetry"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]}),
    )?;
    apply(
        s,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "telemetry"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "telemetry"},
                "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io",
                              "name": "system:serviceaccounts:telemetry"}]}),
    )?;
    // The bulk objects, created by the (exempt) admin before the storm.
    let client = client_for(s, "admin").await?;
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client, "bulk");
    let filler = "x".repeat(config.object_bytes);
    let results: Vec<Result<_, kube::Error>> = futures::stream::iter(0..config.objects)
        .map(|i| {
            let (api, filler) = (api.clone(), filler.clone());
            async move {
                let cm = serde_json::from_value(json!({
                    "metadata": {"name": format!("bulk-{i}")},
                    "data": {"payload": filler}
                }))
                .expect("a ConfigMap");
                api.create(&Default::default(), &cm).await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        r.context("creating the bulk ConfigMaps")?;
    }
    load_balancer_service(s, "shop", "web", 80, &[address])
}

async fn client_for(s: &ApiServer, user: &str) -> Result<kube::Client> {
    let mut config = kube_config_from_bytes(s.kubeconfig(user).as_bytes()).await?;
    // Count 429s instead of retrying them.
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}

/// Runs one storm against a fresh control plane.
pub async fn run(config: &StormConfig) -> Result<Option<StormReport>> {
    crate::kube::install_crypto_provider();
    let mut opts = Options::default()
        .user(
            READER,
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:lifeline-system",
            ],
        )
        .arg(&format!("--max-requests-inflight={}", config.inflight))
        .arg(&format!(
            "--max-mutating-requests-inflight={}",
            (config.inflight / 2).max(1)
        ));
    for i in 0..AGENTS {
        opts = opts.user(
            &agent(i),
            &["system:serviceaccounts", "system:serviceaccounts:telemetry"],
        );
    }
    let Some(planes) = ControlPlanes::start(1, opts).await else {
        return Ok(None);
    };
    let s = &planes[0];
    let (a, c, standby) = (ip(31), ip(33), ip(32));
    let port = free_port(&[a, c, standby]);
    prepare(s, config, a).await?;
    let backend_a = Backend::start(SocketAddr::new(a, port)).await;
    let backend_c = Backend::start(SocketAddr::new(c, port)).await;
    let _standby = Backend::start(SocketAddr::new(standby, port)).await;

    // Lifeline: the stormed cluster first, a static standby second.
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("member.kubeconfig"), s.kubeconfig(READER))?;
    std::fs::write(
        d.join("docs.yaml"),
        format!(
            "apiVersion: lifeline.dev/v1alpha1\nkind: MemberCluster\nmetadata: {{name: stormed}}\n\
spec: {{region: a, addressSource: LoadBalancer, kubeconfigPath: \"{kc}\"}}\n---\n\
apiVersion: lifeline.dev/v1alpha1\nkind: MemberCluster\nmetadata: {{name: standby}}\n\
spec: {{region: b, addressSource: Static, addresses: [\"{standby}\"]}}\n---\n\
apiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: web, namespace: shop}}\n\
spec:\n  hostname: {NAME}\n  service: {{name: web}}\n  maxAnswers: 8\n  targets: [{{cluster: stormed, priority: 0}}, {{cluster: standby, priority: 1}}]\n  healthCheck: {{http: {{port: {port}}}, interval: 200ms, timeout: 150ms, unhealthyThreshold: 2, healthyThreshold: 2}}\n  failback: {{holdDown: 0s, rampDuration: 0s}}\n",
            kc = d.join("member.kubeconfig").display()
        ),
    )?;
    let dns = free_addr();
    let lifeline_config = format!(
        "zones:\n{}dns: {{udp: [\"{dns}\"], tcp: [\"{dns}\"], dataDir: {d}/snap}}\n\
store: {{type: embedded, dataDir: {d}/store}}\n\
policySource: {{type: files, paths: [docs.yaml]}}\n",
        zone_line(ZONE),
        d = d.display()
    );
    let lifeline = Running::start(&lifeline_config, d).await;
    lifeline_testkit::dns::await_exactly(dns, NAME, a, Duration::from_secs(30)).await;

    // The storm.
    let started = Instant::now();
    let deadline = started + config.duration;
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        agents.push(client_for(s, &agent(i)).await?);
    }
    let clients: Vec<_> = (0..config.clients)
        .map(|i| {
            let (client, counts) = (agents[i % AGENTS].clone(), counts.clone());
            tokio::spawn(async move {
                // Bounded by the deadline.
                while Instant::now() < deadline {
                    let request = http::Request::get("/api/v1/configmaps")
                        .body(Vec::new())
                        .expect("a request");
                    let outcome =
                        tokio::time::timeout(Duration::from_secs(30), client.request_text(request))
                            .await;
                    let slot = match outcome {
                        Ok(Ok(_)) => 0,
                        Ok(Err(kube::Error::Api(s))) if s.code == 429 => 1,
                        _ => 2,
                    };
                    counts[slot].fetch_add(1, Ordering::Relaxed);
                    if slot != 0 {
                        // A refused agent comes back at once, as a naive client does.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    let load = LoadGen::start(
        vec![dns],
        NAME,
        Duration::from_millis(20),
        config.duration + Duration::from_secs(5),
    );

    // A replica restarted mid-storm: a fresh watcher with Lifeline's identity.
    tokio::time::sleep(config.duration / 6).await;
    let watcher_config = kube_config_from_bytes(s.kubeconfig(READER).as_bytes()).await?;
    let watcher_started = Instant::now();
    let watcher = MemberWatcher::spawn(
        "stormed".to_owned(),
        watcher_config,
        BudgetConfig::default(),
        [("shop".to_owned(), "web".to_owned())].into(),
        WatchOptions::default(),
    )?;
    let view = watcher.view();
    let watch_task = {
        let mut view = view.clone();
        tokio::spawn(async move {
            // Bounded by the storm: the task is aborted at its end.
            let synced = view
                .wait_for(|v| v.synced && v.watches_open == 2)
                .await
                .is_ok();
            let at = watcher_started.elapsed();
            let mut stayed = synced;
            while view.changed().await.is_ok() {
                if view.borrow().watches_open < 2 {
                    stayed = false;
                }
            }
            (synced.then_some(at), stayed)
        })
    };

    // A second address appears at a third of the storm.
    sleep_until(started + config.duration / 3).await;
    set_load_balancer(s, "shop", "web", &[a, c])?;
    let added = Instant::now();

    // Both of the stormed cluster's backends die at two thirds.
    sleep_until(started + config.duration * 2 / 3).await;
    drop(backend_a);
    drop(backend_c);
    let killed = Instant::now();

    sleep_until(deadline).await;
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(35), c).await;
    }
    let history = load.finish().await;
    let watcher_stats = watcher.budget().stats();
    let synced_view = view.borrow().clone();
    drop(watcher);
    let (synced_after, stayed) =
        match tokio::time::timeout(Duration::from_secs(1), watch_task).await {
            Ok(Ok(r)) => r,
            _ => (None, false),
        };
    lifeline.stop().await;
    let metrics = s.get("admin", "/metrics").await.unwrap_or_default();
    if let Ok(dir) = std::env::var("LIFELINE_STORM_METRICS") {
        let _ = std::fs::write(
            format!("{dir}/metrics-{}.txt", config.flow_schema),
            &metrics,
        );
    }
    let levels = priority_levels(&metrics);

    let before_kill = history.since(added);
    let new_address_after = before_kill
        .0
        .iter()
        .find(|x| x.at < killed && x.answer.addresses().contains(&c))
        .map(|x| x.at.duration_since(added));
    let failover_after = history.settled_after(killed, |ips| ips == [standby]);
    Ok(Some(StormReport {
        flow_schema: config.flow_schema,
        storm_ok: counts[0].load(Ordering::Relaxed),
        storm_429: counts[1].load(Ordering::Relaxed),
        storm_failed: counts[2].load(Ordering::Relaxed),
        watcher: watcher_stats,
        watcher_synced_after: synced_after,
        watches_stayed_open: stayed && synced_view.watches_open == 2,
        new_address_after,
        failover_after,
        dns_queries: history.queries(),
        dns_empty: history.empty().len(),
        dns_failed: history.failed().len(),
        dns_first_try_failed: history.first_try_failed().len(),
        levels,
    }))
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || "never".to_owned(),
        |d| format!("{:.2} s", d.as_secs_f64()),
    )
}

/// The reports side by side, one row per figure.
pub fn table(reports: &[StormReport]) -> String {
    let mut rows: BTreeMap<usize, (String, Vec<String>)> = BTreeMap::new();
    let mut row = |n: usize, name: &str, value: String| {
        rows.entry(n)
            .or_insert_with(|| (name.to_owned(), Vec::new()))
            .1
            .push(value);
    };
    for r in reports {
        row(
            0,
            "telemetry LISTs ok / 429 / failed",
            format!("{} / {} / {}", r.storm_ok, r.storm_429, r.storm_failed),
        );
        row(
            1,
            "restarted watcher: requests",
            r.watcher.requests.to_string(),
        );
        row(
            2,
            "restarted watcher: 429s (Retry-After honoured)",
            r.watcher.throttled.to_string(),
        );
        row(
            3,
            "restarted watcher: failures",
            r.watcher.failures.to_string(),
        );
        row(
            4,
            "restarted watcher: listed and watching after",
            secs(r.watcher_synced_after),
        );
        row(
            5,
            "restarted watcher: watches stayed open",
            r.watches_stayed_open.to_string(),
        );
        row(
            6,
            "new LoadBalancer address answered after",
            secs(r.new_address_after),
        );
        row(
            7,
            "backends killed: standby answers after",
            secs(r.failover_after),
        );
        row(
            8,
            "DNS queries / empty / failed",
            format!("{} / {} / {}", r.dns_queries, r.dns_empty, r.dns_failed),
        );
        row(
            9,
            "DNS queries failed at the first attempt",
            r.dns_first_try_failed.to_string(),
        );
        for (n, name) in ["workload-low", "lifeline"].iter().enumerate() {
            let l = r.levels.get(*name).copied().unwrap_or_default();
            row(
                10 + 2 * n,
                &format!("APF {name}: requests / mean wait / 429"),
                format!("{} / {:.2} s / {}", l.queued, l.mean_wait, l.rejected),
            );
            row(
                11 + 2 * n,
                &format!("APF {name}: seats nominal / in force"),
                format!("{} / {}", l.nominal_seats, l.current_seats),
            );
        }
    }
    let mut out = format!(
        "{:<48}{}\n",
        "",
        reports
            .iter()
            .map(|r| format!(
                "{:>26}",
                if r.flow_schema {
                    "with flow schema"
                } else {
                    "without flow schema"
                }
            ))
            .collect::<String>()
    );
    for (name, values) in rows.values() {
        out.push_str(&format!(
            "{name:<48}{}\n",
            values
                .iter()
                .map(|v| format!("{v:>26}"))
                .collect::<String>()
        ));
    }
    out
}

/// Fails when any DNS answer during the storm was empty or failed.
pub fn check_answers(r: &StormReport) -> Result<()> {
    if r.dns_empty > 0 || r.dns_failed > 0 {
        bail!(
            "{}: {} empty and {} failed DNS answers during the storm",
            if r.flow_schema {
                "with the flow schema"
            } else {
                "without it"
            },
            r.dns_empty,
            r.dns_failed
        );
    }
    Ok(())
}
