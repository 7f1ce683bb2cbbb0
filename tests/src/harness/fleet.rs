//! A simulated fleet on loopback: member clusters (an API server each, plus a real HTTP
//! backend on the member's own 127.0.0.x address), a management-cluster API server
//! holding the CRs, a real etcd, and Lifeline replicas running in this process.
//!
//! The API servers are our emulator ([`ApiBackend::Emulator`]) or real kube-apiservers
//! ([`ApiBackend::Real`], from `tests/control-plane/build.sh`). On real servers Lifeline
//! uses the identities and RBAC of `deploy/rbac/`, and members publish the backend
//! address as a LoadBalancer Service (a real server refuses loopback EndpointSlice
//! addresses). Lifeline reaches each real server through a [`FaultProxy`], which counts
//! its requests and injects the faults a real server cannot be asked for (429 on demand,
//! hanging requests, dropped watches).
//!
//! ```text
//!  management emulator (127.0.0.1)  CRDs, MemberClusters m0..mN (kubeconfigSecretRef ──►
//!     │ policies, clusters, secrets  Secrets in lifeline-system), FailoverPolicies web0..
//!     ▼
//!  replica 0..R  lifeline_controller::run::run, store etcd (lease 2 s), own DNS/admin/dirs
//!     │ leader only: watch ──► member emulator mI (127.0.0.(10+I))  EndpointSlice shop/web
//!     │              probe  ──► backend 127.0.0.(10+I):port /healthz
//!     ▼
//!  etcd (the test kit's) ──► every replica's DNS
//! ```
//!
//! Policy `webK` lists every member as a target, `mI` at priority `I`, so the answer is
//! the lowest-numbered member whose backend is healthy.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use base64::Engine as _;
use lifeline_controller::{config::Config, run};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use lifeline_testkit::control_plane::{ApiServer, Options};
use lifeline_testkit::{
    Backend, ControlPlanes, Etcd, backend::Behaviour, fixtures::zone_line, free_addr, free_port,
};

use super::{dns, inprocess::Running};
use crate::kube::{
    Emulator, EmulatorConfig, Fault, FaultProxy, FaultRule, install_crypto_provider,
};
use crate::real;

/// The zone every scenario's names live in.
pub const ZONE: &str = "incident.lifeline.test";
pub const PREFIX: &str = "/lifeline-incident";

/// What to build.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    pub members: usize,
    pub replicas: usize,
    /// Policies `web0..`, each over every member, with HTTP checks.
    pub policies: usize,
    /// Further policies after those, with no health check: their targets' health is
    /// only what the member API says (its endpoints' readiness).
    pub hint_only_policies: usize,
    /// `failback.holdDown`, `rampDuration` (humantime text) and `rampSteps`.
    pub hold_down: String,
    pub ramp_duration: String,
    pub ramp_steps: u32,
    /// `engine.maxConcurrentRamps`.
    pub max_concurrent_ramps: usize,
    /// API budget toward every API server (members and management).
    pub qps: f64,
    pub burst: u32,
    /// Member kubeconfigs as files (`kubeconfigPath`) instead of Secrets in the
    /// management cluster (`kubeconfigSecretRef`).
    pub kubeconfig_files: bool,
    pub backend: ApiBackend,
    /// A test fault annotation (`lifeline.dev/test-fault`) on policy `web0`, honoured
    /// by every replica.
    pub test_fault: Option<&'static str>,
}

/// What the API servers are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ApiBackend {
    /// Our Kubernetes API emulator (faults on demand).
    #[default]
    Emulator,
    /// Real kube-apiservers over a real etcd.
    Real,
}

impl ApiBackend {
    pub fn name(self) -> &'static str {
        match self {
            ApiBackend::Emulator => "emulator",
            ApiBackend::Real => "real kube-apiserver",
        }
    }
}

/// API server `i` of the fleet: a new emulator listening on `listen`, or real server `i`
/// reached as `user`.
async fn api_for(
    planes: Option<&ControlPlanes>,
    i: usize,
    listen: IpAddr,
    user: &'static str,
) -> anyhow::Result<Api> {
    Ok(match planes {
        None => Api::Emulator(
            Emulator::start(EmulatorConfig {
                listen: SocketAddr::new(listen, 0),
                ..EmulatorConfig::http()
            })
            .await?,
        ),
        Some(p) => {
            let server = p.server(i);
            let addr: SocketAddr = server.url().trim_start_matches("https://").parse()?;
            let proxy = FaultProxy::start(addr, server.ca_pem(), server.token(user)).await?;
            Api::Real { server, proxy }
        }
    })
}

/// The identities `deploy/rbac/` binds, as static-token users on real servers.
const MANAGER: &str = "system:serviceaccount:lifeline-system:lifeline";
const READER: &str = "system:serviceaccount:lifeline-system:lifeline-member-reader";
const SA_GROUPS: &[&str] = &[
    "system:serviceaccounts",
    "system:serviceaccounts:lifeline-system",
];

/// One API server of the fleet.
#[derive(Debug)]
pub enum Api {
    Emulator(Emulator),
    Real {
        server: std::sync::Arc<ApiServer>,
        /// Lifeline's way in, as the user `deploy/rbac/` binds.
        proxy: FaultProxy,
    },
}

impl Api {
    /// Total outage: the emulator closes its port; a real server is killed.
    pub async fn outage(&self) {
        match self {
            Api::Emulator(e) => e.outage().await,
            Api::Real { server, .. } => server.kill(),
        }
    }

    /// Ends an outage (a real server starts again and is ready).
    pub async fn restore(&self) -> anyhow::Result<()> {
        match self {
            Api::Emulator(e) => Ok(e.restore().await?),
            Api::Real { server, .. } => {
                server.start_again().await;
                Ok(())
            }
        }
    }

    /// Every request from Lifeline gets `fault` from now on (a real server's proxy
    /// offers 429 and hanging).
    pub fn inject(&self, fault: Fault) {
        match self {
            Api::Emulator(e) => {
                e.inject(FaultRule::new(fault));
            }
            Api::Real { proxy, .. } => proxy.inject(&fault),
        }
    }

    pub fn clear_faults(&self) {
        match self {
            Api::Emulator(e) => e.clear_faults(),
            Api::Real { proxy, .. } => proxy.clear_faults(),
        }
    }

    /// Ends every open watch.
    pub fn drop_watches(&self) {
        match self {
            Api::Emulator(e) => e.drop_watches(),
            Api::Real { proxy, .. } => proxy.drop_connections(),
        }
    }

    /// Requests from Lifeline so far (a watch counts when opened).
    pub fn requests(&self) -> u64 {
        match self {
            Api::Emulator(e) => e.counts().total(),
            Api::Real { proxy, .. } => proxy.requests(),
        }
    }

    /// A kubeconfig for Lifeline.
    pub fn kubeconfig_yaml(&self) -> String {
        match self {
            Api::Emulator(e) => e.kubeconfig_yaml(),
            Api::Real { proxy, .. } => proxy.kubeconfig_yaml(),
        }
    }

    /// Creates (or, on a real server, applies) an object as an administrator.
    pub fn create(&self, obj: Value) -> anyhow::Result<()> {
        match self {
            Api::Emulator(e) => {
                e.create(obj)?;
            }
            Api::Real { server, .. } => real::apply(server, &obj)?,
        }
        Ok(())
    }
}

impl Default for FleetSpec {
    fn default() -> Self {
        Self {
            members: 3,
            replicas: 2,
            policies: 1,
            hint_only_policies: 0,
            hold_down: "0s".into(),
            ramp_duration: "0s".into(),
            ramp_steps: 4,
            max_concurrent_ramps: 2,
            qps: 2.0,
            burst: 5,
            kubeconfig_files: false,
            backend: ApiBackend::Emulator,
            test_fault: None,
        }
    }
}

/// The data-plane address of member `i`.
pub fn member_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + i as u8))
}

/// The hostname of policy `k`.
pub fn hostname(k: usize) -> String {
    format!("web{k}.{ZONE}")
}

// === replicas ===

/// One in-process `lifeline run`.
#[derive(Debug)]
pub struct Replica {
    pub dns: SocketAddr,
    pub admin: SocketAddr,
    config: String,
    test_faults: bool,
    running: Option<Running>,
}

impl Replica {
    /// Starts (again) with the same configuration, ports and data directories.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.running.is_none(), "replica already running");
        let config = Config::from_bytes(self.config.as_bytes())
            .map_err(|p| anyhow::anyhow!("replica configuration: {p:?}"))?;
        let documents = run::documents_of(&config, std::path::Path::new("/"))?;
        // Bound by us so the admin port stays the same across restarts.
        let admin = tokio::net::TcpListener::bind(self.admin).await?;
        self.running = Some(Running::spawn(config, documents, admin, self.test_faults));
        Ok(())
    }

    /// Asks the replica to shut down and waits (at most 30 s) until it has; returns how
    /// long that took.
    pub async fn stop(&mut self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(30))
                .await
                .context("replica did not stop cleanly")?;
        }
        Ok(start.elapsed())
    }

    /// Drops the replica's main task without a clean shutdown, as close to `kill -9`
    /// as one process allows: its lease keepalive ends with it, so the lease is left to
    /// expire. Tasks it spawned detached (its DNS sockets among them) may live on, so
    /// scenarios stop judging its answers from here on.
    pub async fn kill(&mut self) {
        if let Some(r) = self.running.take() {
            r.abort().await;
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// `GET path` on the admin API, body as text (HTTP/1.0, so the body ends at close).
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        let fetch = async {
            let mut s = tokio::net::TcpStream::connect(self.admin).await?;
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: lifeline\r\n\r\n").as_bytes())
                .await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            let text = String::from_utf8_lossy(&buf).into_owned();
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
            body.context("no HTTP body")
        };
        tokio::time::timeout(Duration::from_secs(3), fetch)
            .await
            .context("admin API timed out")?
    }

    /// `/v1/status` as JSON.
    pub async fn status(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&self.admin_get("/v1/status").await?)?)
    }

    /// `lifeline_decisions_total`: only the leader decides, so it grows only there.
    pub async fn decisions(&self) -> Option<u64> {
        let metrics = self.admin_get("/metrics").await.ok()?;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("lifeline_decisions_total "))
            .and_then(|v| v.trim().parse().ok())
    }
}

// === fleet ===

/// One simulated member cluster.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub api: Api,
    pub backend: Backend,
}

/// Everything a scenario runs against; dropping it stops every part.
#[derive(Debug)]
pub struct Fleet {
    pub spec: FleetSpec,
    pub management: Api,
    pub members: Vec<Member>,
    pub etcd: Etcd,
    pub replicas: Vec<Replica>,
    /// Backends' port (the same on every member address).
    pub port: u16,
    /// The real control planes (management first), when the backend is real.
    _planes: Option<ControlPlanes>,
    _dir: tempfile::TempDir,
}

use lifeline_testkit::init_tracing;

impl Fleet {
    /// Builds the fleet and waits until every replica answers every name with member 0.
    pub async fn start(spec: FleetSpec) -> anyhow::Result<Fleet> {
        init_tracing();
        install_crypto_provider();
        let dir = tempfile::tempdir()?;
        let etcd = Etcd::start().await.context("etcd is not installed")?;
        let planes = match spec.backend {
            ApiBackend::Emulator => None,
            ApiBackend::Real => {
                let opts = Options::default()
                    .user(MANAGER, SA_GROUPS)
                    .user(READER, SA_GROUPS);
                Some(
                    ControlPlanes::start(spec.members + 1, opts)
                        .await
                        .context("no real control plane binaries")?,
                )
            }
        };
        let management = api_for(planes.as_ref(), 0, lifeline_testkit::loopback(), MANAGER).await?;
        match &management {
            Api::Emulator(e) => e.install_lifeline_crds()?,
            Api::Real { server, .. } => real::install_crds(server)?,
        }
        for ns in ["shop", "lifeline-system"] {
            management.create(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )?;
        }
        if let Api::Real { server, .. } = &management {
            real::apply_file(server, "deploy/rbac/management-cluster.yaml")?;
            let secrets: Vec<String> = (0..spec.members)
                .map(|i| format!("m{i}-kubeconfig"))
                .collect();
            real::allow_kubeconfig_secrets(server, &secrets)?;
        }
        let ips: Vec<IpAddr> = (0..spec.members).map(member_ip).collect();
        let port = free_port(&ips);
        let mut members = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            let name = format!("m{i}");
            let api = api_for(planes.as_ref(), i + 1, *ip, READER).await?;
            api.create(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
            )?;
            let source = match &api {
                Api::Emulator(_) => {
                    api.create(json!({
                        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"name": "web-1", "namespace": "shop",
                                     "labels": {"kubernetes.io/service-name": "web"}},
                        "addressType": "IPv4",
                        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
                        "ports": [{"name": "http", "port": port, "protocol": "TCP"}]
                    }))?;
                    "EndpointSlice"
                }
                Api::Real { server, .. } => {
                    // A real server refuses loopback EndpointSlice addresses: the backend
                    // is the Service's LoadBalancer address, as a cloud would publish it.
                    real::apply_file(server, "deploy/rbac/member-cluster.yaml")?;
                    real::load_balancer_service(server, "shop", "web", port, &[*ip])?;
                    "LoadBalancer"
                }
            };
            management.create(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": format!("{name}-kubeconfig"), "namespace": "lifeline-system"},
                "data": {"kubeconfig": base64::engine::general_purpose::STANDARD.encode(api.kubeconfig_yaml())}
            }))?;
            let mut cluster = json!({"region": format!("r{i}"), "addressSource": source,
                "apiBudget": {"qps": spec.qps, "burst": spec.burst}});
            if spec.kubeconfig_files {
                let path = dir.path().join(format!("{name}.kubeconfig"));
                std::fs::write(&path, api.kubeconfig_yaml())?;
                cluster["kubeconfigPath"] = json!(path);
            } else {
                cluster["kubeconfigSecretRef"] =
                    json!({"name": format!("{name}-kubeconfig"), "namespace": "lifeline-system"});
            }
            management.create(json!({
                "apiVersion": "lifeline.dev/v1alpha1", "kind": "MemberCluster",
                "metadata": {"name": name}, "spec": cluster
            }))?;
            let backend =
                Backend::try_serve(&Behaviour::default(), SocketAddr::new(*ip, port)).await?;
            members.push(Member { name, api, backend });
        }
        for k in 0..spec.policies + spec.hint_only_policies {
            let targets: Vec<Value> = (0..spec.members)
                .map(|i| json!({"cluster": format!("m{i}"), "priority": i}))
                .collect();
            let mut policy = json!({
                "apiVersion": "lifeline.dev/v1alpha1", "kind": "FailoverPolicy",
                "metadata": {
                    "name": format!("web{k}"), "namespace": "shop",
                    "annotations": match spec.test_fault {
                        Some(fault) if k == 0 => json!({lifeline_controller::leader::TEST_FAULT: fault}),
                        _ => json!({}),
                    },
                },
                "spec": {
                    "hostname": hostname(k), "ttl": 5, "service": {"name": "web"},
                    "targets": targets,
                    "failback": {"holdDown": spec.hold_down, "rampDuration": spec.ramp_duration,
                                 "rampSteps": spec.ramp_steps}
                }
            });
            if k < spec.policies {
                // The scenarios time their faults against whole probe intervals (a leader
                // killed one failed probe into a failover), so no fast re-checks here.
                policy["spec"]["healthCheck"] = json!({
                    "http": {"port": port}, "interval": "200ms", "fastInterval": "200ms", "timeout": "150ms",
                    "unhealthyThreshold": 2, "healthyThreshold": 2,
                });
            }
            management.create(policy)?;
        }
        let kubeconfig = dir.path().join("management.kubeconfig");
        std::fs::write(&kubeconfig, management.kubeconfig_yaml())?;
        // Every replica seals member kubeconfigs from Secrets with the same key.
        let key = dir.path().join("credential.key");
        std::fs::write(&key, rand::random::<[u8; 32]>())?;
        let mut replicas = Vec::new();
        for i in 0..spec.replicas {
            let (dns, admin) = (free_addr(), free_addr());
            let d = dir.path().join(format!("replica-{i}"));
            std::fs::create_dir_all(&d)?;
            let config = format!(
                "zones:\n{zone}\
dns: {{udp: [\"{dns}\"], tcp: [\"{dns}\"], dataDir: {snap}}}\n\
admin: {{listen: \"{admin}\"}}\n\
store: {{type: etcd, endpoints: [\"{etcd}\"], prefix: {PREFIX}, leaseTtl: 2s}}\n\
policySource: {{type: kubernetes, kubeconfig: {kc}}}\n\
defaults: {{apiBudget: {{qps: {qps}, burst: {burst}}}}}\n\
engine: {{blastRadius: {{enabled: true, fraction: 0.5, window: 60s, minTargets: 3}}, maxConcurrentRamps: {ramps}}}\n\
memberCredentials: {{keyFile: {key}}}\n",
                zone = zone_line(ZONE),
                key = key.display(),
                snap = d.join("snap").display(),
                etcd = etcd.endpoint(),
                kc = kubeconfig.display(),
                qps = spec.qps,
                burst = spec.burst,
                ramps = spec.max_concurrent_ramps,
            );
            let mut replica = Replica {
                dns,
                admin,
                config,
                test_faults: spec.test_fault.is_some(),
                running: None,
            };
            replica.start().await?;
            replicas.push(replica);
        }
        let fleet = Fleet {
            spec,
            management,
            members,
            etcd,
            replicas,
            port,
            _planes: planes,
            _dir: dir,
        };
        fleet
            .wait_all_answer(&[member_ip(0)], Duration::from_secs(30))
            .await
            .context("fleet never answered with member 0")?;
        Ok(fleet)
    }

    /// Every replica's DNS address.
    pub fn dns_addrs(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|r| r.dns).collect()
    }

    /// Waits until every running replica answers every policy name with exactly `want`.
    pub async fn wait_all_answer(
        &self,
        want: &[IpAddr],
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let servers: Vec<SocketAddr> = self
            .replicas
            .iter()
            .filter(|r| r.is_running())
            .map(|r| r.dns)
            .collect();
        let names: Vec<String> = (0..self.spec.policies).map(hostname).collect();
        let want = want.to_vec();
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let mut last = dns::Answer::NoReply;
            // Bounded by `limit` and by its count of 20 ms steps.
            for _ in 0..=limit.as_millis() / 20 {
                if start.elapsed() > limit {
                    break;
                }
                let all = servers.iter().all(|s| {
                    names.iter().all(|n| {
                        last = dns::query_a(*s, n);
                        last.addresses() == want
                    })
                });
                if all {
                    return Ok(start.elapsed());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            anyhow::bail!("answers never became {want:?} within {limit:?}; last {last:?}")
        })
        .await?
    }

    /// API requests each API server has received so far: `management`, then `m0..`.
    pub fn api_counts(&self) -> Vec<(String, u64)> {
        std::iter::once(("management".to_owned(), self.management.requests()))
            .chain(
                self.members
                    .iter()
                    .map(|m| (m.name.clone(), m.api.requests())),
            )
            .collect()
    }

    /// Every API server, management first.
    pub fn api_servers(&self) -> Vec<&Api> {
        std::iter::once(&self.management)
            .chain(self.members.iter().map(|m| &m.api))
            .collect()
    }

    /// The index of the replica that leads: the one whose decision counter moves.
    pub async fn leader(&self) -> Option<usize> {
        let before: Vec<Option<u64>> =
            futures::future::join_all(self.replicas.iter().map(|r| r.decisions())).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let after: Vec<Option<u64>> =
            futures::future::join_all(self.replicas.iter().map(|r| r.decisions())).await;
        (0..self.replicas.len()).find(|&i| {
            self.replicas[i].is_running()
                && matches!((before[i], after[i]), (Some(b), Some(a)) if a > b)
        })
    }

    /// The replica that leads after `old`, looked for until one is found or `limit`
    /// passes. The answers can move before the successor is elected (a failover the old
    /// leader published just before it died), so one look is not enough.
    pub async fn successor_of(&self, old: usize, limit: Duration) -> Option<usize> {
        let started = std::time::Instant::now();
        let mut found = None;
        // Bounded by `limit`; each look takes 600 ms.
        while started.elapsed() < limit {
            found = self.leader().await;
            if found.is_some_and(|s| s != old) {
                break;
            }
        }
        found
    }

    /// The data directories and configuration live as long as the fleet.
    pub fn dir(&self) -> PathBuf {
        self._dir.path().to_owned()
    }

    /// Stops every replica (best effort, each bounded) before the rest is dropped.
    pub async fn shutdown(mut self) {
        for r in &mut self.replicas {
            if let Err(e) = r.stop().await {
                tracing::warn!(error = %e, "replica did not stop cleanly");
            }
        }
    }
}
