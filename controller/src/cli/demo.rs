//! `lifeline demo`: three simulated member clusters on loopback, real probes, real DNS.
//!
//! Each simulated cluster is an HTTP backend on its own loopback address
//! (127.0.0.2, .3, .4) whose `/healthz` answers 200 until it is told to fail. Four
//! policies, one per strategy, steer `*.demo.lifeline.test` between them.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use lifeline_crds::document::{self, Document};
use serde_json::json;

use crate::{
    admin::AdminState,
    config::Config,
    run::{self, Documents},
};

/// The simulated clusters: name, region, loopback address.
const CLUSTERS: [(&str, &str, [u8; 4]); 3] = [
    ("eu-west-1", "eu-west", [127, 0, 0, 2]),
    ("us-east-1", "us-east", [127, 0, 0, 3]),
    ("ap-south-1", "ap-south", [127, 0, 0, 4]),
];

/// The demo's zone.
pub const ZONE: &str = "demo.lifeline.test";

/// Options of `lifeline demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub dns: SocketAddr,
    pub admin: SocketAddr,
    pub backend_port: u16,
    /// Where state is kept; a temporary directory when `None`.
    pub data_dir: Option<PathBuf>,
    /// Print the status table as it changes.
    pub watch: bool,
}

/// Fail/heal switches of the simulated clusters.
#[derive(Debug, Default)]
struct Backends {
    failed: BTreeMap<String, Arc<AtomicBool>>,
}

impl Backends {
    /// Makes the named simulated cluster fail or heal; false for an unknown cluster.
    fn set_failed(&self, cluster: &str, failed: bool) -> bool {
        match self.failed.get(cluster) {
            Some(flag) => {
                flag.store(failed, Ordering::Relaxed);
                tracing::info!(%cluster, failed, "simulated cluster changed");
                true
            }
            None => false,
        }
    }

    /// `POST /v1/demo/clusters/{name}/fail|heal`, added to the admin API from here.
    fn routes(self: Arc<Self>) -> Router {
        Router::new()
            .route("/clusters/{name}/{action}", post(switch))
            .with_state(self)
    }
}

async fn switch(
    State(backends): State<Arc<Backends>>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let failed = match action.as_str() {
        "fail" => true,
        "heal" => false,
        other => {
            let message = format!("unknown action {other:?}: expected fail or heal");
            return (StatusCode::NOT_FOUND, Json(json!({ "error": message }))).into_response();
        }
    };
    if backends.set_failed(&name, failed) {
        Json(json!({ "cluster": name, "failed": failed })).into_response()
    } else {
        let message = format!("unknown simulated cluster {name:?}");
        (StatusCode::NOT_FOUND, Json(json!({ "error": message }))).into_response()
    }
}

/// The demo configuration file, as text (validated by the same code as a user's file).
fn config_text(o: &DemoOptions, data_dir: &std::path::Path) -> String {
    let geo = "  geo:\n    - {prefix: 10.1.0.0/16, region: eu-west}\n    - {prefix: 10.2.0.0/16, region: us-east}\n    - {prefix: 10.3.0.0/16, region: ap-south}\n";
    format!(
        "zones:\n  - origin: {ZONE}\n    primaryNs: ns1.{ZONE}\n    hostmaster: hostmaster.{ZONE}\n    nameservers: [ns1.{ZONE}]\n    negativeTtl: 5\n\
dns:\n  udp: [\"{dns}\"]\n  tcp: [\"{dns}\"]\n  dataDir: {snap}\n{geo}\
admin:\n  listen: \"{admin}\"\n\
store:\n  type: embedded\n  dataDir: {store}\n\
policySource:\n  type: files\n  paths: [inline]\n\
defaults:\n  probe: {{interval: 1s, timeout: 500ms, concurrency: 16}}\n\
engine:\n  blastRadius: {{enabled: true, fraction: 0.9, window: 10s, minTargets: 6}}\n  maxConcurrentRamps: 2\n",
        dns = o.dns,
        admin = o.admin,
        snap = data_dir.join("snapshots").display(),
        store = data_dir.join("store").display(),
    )
}

/// The demo's MemberClusters and FailoverPolicies.
fn documents_text(port: u16) -> String {
    let mut out = String::new();
    for (name, region, ip) in CLUSTERS {
        let ip = Ipv4Addr::from(ip);
        out += &format!(
            "apiVersion: lifeline.dev/v1alpha1\nkind: MemberCluster\nmetadata: {{name: {name}}}\nspec:\n  region: {region}\n  addressSource: Static\n  addresses: [\"{ip}\"]\n---\n"
        );
    }
    let check = format!(
        "  healthCheck:\n    http: {{port: {port}, path: /healthz}}\n    interval: 500ms\n    timeout: 400ms\n    unhealthyThreshold: 2\n    healthyThreshold: 2\n  failback: {{holdDown: 10s, rampDuration: 20s, rampSteps: 4}}\n"
    );
    let targets_tiered = "  targets:\n    - {cluster: eu-west-1, priority: 0}\n    - {cluster: us-east-1, priority: 1}\n    - {cluster: ap-south-1, priority: 2}\n";
    let targets_flat = "  targets:\n    - {cluster: eu-west-1, weight: 60}\n    - {cluster: us-east-1, weight: 30}\n    - {cluster: ap-south-1, weight: 10}\n";
    for (name, strategy, targets) in [
        ("checkout", "Failover", targets_tiered),
        ("search", "Weighted", targets_flat),
        ("assets", "RoundRobin", targets_flat),
        ("api", "Geo", targets_flat),
    ] {
        out += &format!(
            "apiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  hostname: {name}.{ZONE}\n  ttl: 5\n  strategy: {strategy}\n{targets}{check}---\n"
        );
    }
    out
}

async fn healthz(State(failed): State<Arc<AtomicBool>>) -> (StatusCode, &'static str) {
    if failed.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "simulated failure\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// Runs the demo until `shutdown` completes.
pub async fn run(
    options: DemoOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Held to the end: the temporary directory is removed when it is dropped.
    let (data_dir, _temp) = data_dir(&options)?;
    let config = demo_config(&options, &data_dir)?;
    let documents = demo_documents(options.backend_port)?;
    let backends = start_backends(options.backend_port).await?;
    let admin = tokio::net::TcpListener::bind(options.admin)
        .await
        .with_context(|| format!("binding the admin API on {}", options.admin))?;
    let admin_token = std::env::var(&config.admin.token_env)
        .ok()
        .filter(|t| !t.is_empty());
    run::run(
        run::Options {
            config,
            documents,
            admin,
            admin_token,
            admin_routes: vec![("/v1/demo", Arc::new(backends).routes())],
            on_ready: Some(announce(&options)),
            test_faults: false,
        },
        shutdown,
    )
    .await
}

/// Where state is kept: the chosen directory, or a temporary one (returned with it).
fn data_dir(options: &DemoOptions) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match &options.data_dir {
        Some(d) => Ok((d.clone(), None)),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("lifeline-demo-")
                .tempdir()?;
            Ok((temp.path().to_owned(), Some(temp)))
        }
    }
}

fn demo_config(options: &DemoOptions, data_dir: &std::path::Path) -> anyhow::Result<Config> {
    Config::from_bytes(config_text(options, data_dir).as_bytes()).map_err(|problems| {
        anyhow::anyhow!(
            "demo configuration is invalid: {}",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })
}

fn demo_documents(port: u16) -> anyhow::Result<Documents> {
    let mut policies = Vec::new();
    let mut clusters = Vec::new();
    let docs = document::parse_yaml_stream(&documents_text(port))
        .map_err(|p| anyhow::anyhow!("demo documents: {p}"))?;
    for value in docs {
        match document::decode_document(value) {
            (Some(Document::FailoverPolicy(p)), problems) if problems.is_empty() => {
                policies.push(p)
            }
            (Some(Document::MemberCluster(c)), problems) if problems.is_empty() => clusters.push(c),
            (_, problems) => anyhow::bail!("demo document is invalid: {problems:?}"),
        }
    }
    Ok(Documents::Inline { policies, clusters })
}

/// Starts the simulated clusters' HTTP backends, each healthy until switched.
async fn start_backends(port: u16) -> anyhow::Result<Backends> {
    let mut backends = Backends::default();
    for (name, _, ip) in CLUSTERS {
        let flag = Arc::new(AtomicBool::new(false));
        backends.failed.insert(name.to_owned(), flag.clone());
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding simulated cluster {name} on {addr}"))?;
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route(
                "/",
                get(move || async move { format!("hello from {name}\n") }),
            )
            .with_state(flag);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(cluster = name, error = %e, "simulated cluster stopped");
            }
        });
    }
    Ok(backends)
}

/// Once the demo answers: print how to use it, then (when watching) the status table.
fn announce(options: &DemoOptions) -> run::OnReady {
    let watch = options.watch;
    let dns = options.dns;
    let admin_url = format!("http://{}", options.admin);
    Box::new(
        move |state: Arc<AdminState>, _shim: lifeline_dns::ShimHandle| {
            println!("{}", instructions(dns, &admin_url));
            if watch {
                tokio::spawn(print_status(state));
            }
        },
    )
}

fn instructions(dns: SocketAddr, admin: &str) -> String {
    let (host, port) = (dns.ip(), dns.port());
    // The binary that is running, so the commands work as printed (no second build).
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| {
            let cwd = std::env::current_dir().ok()?;
            Some(p.strip_prefix(&cwd).map(|r| r.to_owned()).unwrap_or(p))
        })
        .map_or_else(|| "lifeline".to_owned(), |p| p.display().to_string());
    format!(
        "\nLifeline demo: three simulated clusters (eu-west-1 127.0.0.2, us-east-1 127.0.0.3, ap-south-1 127.0.0.4)\n\
DNS on {dns}, admin API on {admin}\n\n\
Ask DNS:\n  dig @{host} -p {port} checkout.{ZONE}        # Failover: eu-west-1 first\n  \
dig @{host} -p {port} search.{ZONE}          # Weighted 60/30/10\n  \
dig @{host} -p {port} assets.{ZONE}          # RoundRobin\n  \
dig @{host} -p {port} api.{ZONE} +subnet=10.2.0.1/24   # Geo: us-east for 10.2/16\n\n\
Fail and heal a cluster:\n  curl -X POST {admin}/v1/demo/clusters/eu-west-1/fail\n  curl -X POST {admin}/v1/demo/clusters/eu-west-1/heal\n\
A healed cluster waits out a 10 s hold-down, then its share ramps 25% -> 100% over 20 s.\n\
At most 2 policies ramp at once (engine.maxConcurrentRamps), so a policy whose turn has\n\
not come waits longer than the hold-down: recovery is paced, not a stampede.\n\n\
Operate:\n  {exe} ctl --admin {admin} status\n  {exe} ctl --admin {admin} drain us-east-1 --for 10m --reason 'maintenance'\n  {exe} ctl --admin {admin} clear us-east-1\n"
    )
}

/// Prints the status table whenever it changes.
async fn print_status(state: Arc<AdminState>) {
    let mut last = String::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let decision = state.view().decision.clone();
        let overrides = match state.store.get() {
            Some(store) => store.overrides().await.unwrap_or_default(),
            None => Vec::new(),
        };
        let status = crate::admin::status_of(&decision, &overrides, std::time::SystemTime::now());
        let mut table = crate::cli::ctl::render_status(&status);
        // The age line changes every second; compare without it.
        let body = table
            .split_once('\n')
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        if body != last {
            last = body;
            table.insert_str(
                0,
                &format!(
                    "\n--- {} ---\n",
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                ),
            );
            print!("{table}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_configuration_and_documents_are_valid() {
        let options = DemoOptions {
            dns: "127.0.0.1:5353".parse().unwrap(),
            admin: "127.0.0.1:8080".parse().unwrap(),
            backend_port: 18080,
            data_dir: None,
            watch: false,
        };
        let config =
            Config::from_bytes(config_text(&options, std::path::Path::new("/tmp/x")).as_bytes());
        assert!(config.is_ok(), "{:?}", config.err());
        let docs = document::parse_yaml_stream(&documents_text(18080)).unwrap();
        assert_eq!(docs.len(), 7);
        for d in docs {
            let (doc, problems) = document::decode_document(d);
            assert!(doc.is_some() && problems.is_empty(), "{problems:?}");
        }
    }
}
