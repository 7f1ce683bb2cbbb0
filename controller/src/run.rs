//! `lifeline run`: the controller with the embedded DNS shim, in one process.
//!
//! Start-up order is what keeps discovery alive across restarts:
//!
//! 1. start the DNS shim, which loads its persisted snapshot *before* binding sockets,
//!    so the first query after a restart is answered from disk, before anything else
//!    (store, etcd, policies) is reachable;
//! 2. start the admin API;
//! 3. lead: read the last decision (hysteresis and ramp state included), load the
//!    policy documents (or the last good set if they are broken), start the prober,
//!    then decide and publish in a loop.
//!
//! ```text
//!  store: embedded                       store: etcd (every replica)
//!  ───────────────                       ──────────────────────────
//!  always the leader                     campaign ─► leader? ─► lead() until the lease is lost
//!  lead() ─► shim.apply (in process)     lead() ─► fenced writes to etcd
//!                                        every shim ◄── etcd watch (EtcdSource)
//!                                        followers: serve DNS + admin, refresh status
//! ```
//!
//! The loop decides whenever probe results arrive (batched per 100 ms), when overrides
//! change, and at least once a second (hold-downs, ramps and expiries move with time).

use std::{future::Future, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use lifeline_dns::{Shim, ShimHandle};
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use lifeline_etcd::{EtcdStore, Leadership};
use lifeline_model::Backoff;

pub use crate::documents::Documents;
use crate::{
    admin::{self, AdminState, ExtraRoutes},
    config::{Config, PolicySource, StoreConfig},
    leader::{self, PolicyFeed, Shared, TermEnd},
    metrics::Metrics,
    publish::{Publisher, ZoneRecords},
    store::{EmbeddedStore, Store, Writer},
};

/// A callback run once the controller is serving.
pub type OnReady = Box<dyn FnOnce(Arc<AdminState>, ShimHandle) + Send>;

/// Everything `run` needs.
pub struct Options {
    pub config: Config,
    pub documents: Documents,
    /// Bound admin listener (bound by the caller so a port clash fails early and tests
    /// can use port 0).
    pub admin: tokio::net::TcpListener,
    /// Bearer token for the admin API's `/v1` routes (read by the caller from the
    /// environment variable the configuration names).
    pub admin_token: Option<String>,
    /// Routes added under the admin API's `/v1` (the demo's fail/heal switches).
    pub admin_routes: ExtraRoutes,
    /// Called with the admin state once everything is up (the demo prints from it).
    pub on_ready: Option<OnReady>,
    /// Honour the test-only fault annotation (`lifeline run` sets it from
    /// `LIFELINE_TEST_FAULTS=1`; nothing else does, except tests).
    pub test_faults: bool,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("documents", &self.documents)
            .finish_non_exhaustive()
    }
}

/// The documents a configuration points at, with relative paths resolved against the
/// configuration file's directory.
pub fn documents_of(config: &Config, config_path: &Path) -> anyhow::Result<Documents> {
    match &config.policy_source {
        PolicySource::Files { paths } => {
            let base = config_path.parent().unwrap_or(Path::new("."));
            Ok(Documents::Files(
                paths.iter().map(|p| base.join(p)).collect(),
            ))
        }
        PolicySource::Kubernetes {
            kubeconfig,
            namespace,
        } => {
            let base = config_path.parent().unwrap_or(Path::new("."));
            Ok(Documents::Kubernetes {
                kubeconfig: kubeconfig.as_ref().map(|p| base.join(p)),
                namespace: namespace.clone(),
            })
        }
    }
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Options {
        config,
        documents,
        admin,
        admin_token,
        admin_routes,
        on_ready,
        test_faults,
    } = options;
    // 1. DNS from the persisted snapshot, then sockets: nothing else is needed to answer.
    let shim = start_dns(&config).await?;
    // 2. Admin API.
    let metrics = Arc::new(Metrics::default());
    let admin_token = (admin_token, config.admin.token_identity.clone());
    let (state, stop_admin) = start_admin(admin, admin_token, admin_routes, &metrics, &shim)?;
    if let Some(f) = on_ready {
        f(state.clone(), shim.clone());
    }
    // 3. Lead, or campaign to.
    let management_client = match &documents {
        Documents::Kubernetes {
            kubeconfig,
            namespace,
        } => Some((
            management_client(kubeconfig.as_deref(), &config).await?,
            namespace.clone(),
        )),
        _ => None,
    };
    let mut shared = Shared {
        // Building the client contacts nothing; only the leader watches (see
        // `leader::lead`), so management API load does not grow with replicas.
        policy_feed: PolicyFeed::new(documents, config.zone_rules(), management_client),
        credential_key: credential_key(&config),
        config,
        metrics,
        state,
        identity: replica_identity(),
        namespace: crate::kubernetes::fleet::own_namespace(),
        // Set only by tests.
        test_faults,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let result = match shared.config.store.clone() {
        StoreConfig::Embedded { data_dir } => {
            run_embedded(&mut shared, &shim, &data_dir, shutdown.as_mut()).await
        }
        StoreConfig::Etcd { lease_ttl, .. } => {
            run_replica(&mut shared, &shim, lease_ttl, shutdown.as_mut()).await
        }
    };
    info!("shutting down");
    stop_admin.stop().await;
    shim.shutdown();
    result
}

/// Starts DNS from its persisted snapshot. With a separate DNS server this process keeps
/// the same view without sockets, beside (not in) the directory of the `lifeline dns`
/// that answers.
async fn start_dns(config: &Config) -> anyhow::Result<ShimHandle> {
    let shim = if config.dns_server.separate {
        let mut dns = config.dns.clone();
        let mut own = dns.data_dir.clone().into_os_string();
        own.push("-controller");
        dns.data_dir = own.into();
        dns.source_dir = None;
        let options = lifeline_dns::StartOptions {
            no_sockets: true,
            ..Default::default()
        };
        Shim::start_with(&dns, &config.zones, options).await
    } else {
        Shim::start(&config.dns, &config.zones).await
    }
    .context("starting DNS")?;
    info!(udp = ?shim.udp_addrs(), tcp = ?shim.tcp_addrs(), ready = shim.state().ready, "DNS answering");
    Ok(shim)
}

/// The admin API's task, and how to stop it.
struct AdminTask {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl AdminTask {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Serves the admin API on `admin`, with the controller's and the DNS server's metrics.
/// `token` is the bearer token, if any, and who a change made with it is recorded as.
fn start_admin(
    admin: tokio::net::TcpListener,
    (token, token_identity): (Option<String>, String),
    routes: ExtraRoutes,
    metrics: &Metrics,
    shim: &ShimHandle,
) -> anyhow::Result<(Arc<AdminState>, AdminTask)> {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    shim.metrics().register(&mut registry);
    let admin_addr: SocketAddr = admin.local_addr()?;
    let dns = shim.clone();
    let state = Arc::new(AdminState {
        view: Default::default(),
        store: Default::default(),
        token,
        token_identity,
        loopback: admin::is_loopback(&admin_addr),
        dns_ready: Box::new(move || dns.state().ready),
        registry,
        overrides_changed: tokio::sync::Notify::new(),
    });
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let until = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let task = tokio::spawn(admin::serve(admin, state.clone(), routes, until));
    info!(%admin_addr, "admin API listening");
    Ok((state, AdminTask { stop, task }))
}

/// The key for cached member kubeconfigs. A key file that cannot be used is reported
/// and nothing is cached: the Secrets are still read, and DNS is never held up by it.
fn credential_key(config: &Config) -> Option<Arc<crate::kubernetes::credentials::SealKey>> {
    let path = config.member_credentials.key_file.as_ref()?;
    match crate::kubernetes::credentials::SealKey::from_file(path) {
        Ok(key) => {
            info!(
                key_id = key.id(),
                "member kubeconfigs read from Secrets are cached, sealed"
            );
            Some(Arc::new(key))
        }
        Err(e) => {
            tracing::error!(error = %e, "member kubeconfigs will not be cached: a restart while the management API is down cannot reach members whose kubeconfig is in a Secret");
            None
        }
    }
}

async fn run_embedded(
    shared: &mut Shared,
    shim: &ShimHandle,
    data_dir: &Path,
    shutdown: std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
) -> anyhow::Result<()> {
    let mut store = EmbeddedStore::open(data_dir)
        .context("opening the store")?
        .publishing_to(shim.clone());
    if shared.config.dns_server.separate
        && let Some(dir) = &shared.config.dns.source_dir
    {
        store = store.exporting_to(dir).context("opening dns.sourceDir")?;
    }
    let store = Arc::new(store);
    let _ = shared.state.store.set(Store::Embedded(store.clone()));
    shim.set_source_connected("controller", true);
    let mut shutdown = shutdown;
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        // Each term publishes on top of what the DNS server holds now.
        let start_revision = shim
            .state()
            .zones
            .iter()
            .filter_map(|z| z.revision)
            .max()
            .unwrap_or(0);
        let publisher = Publisher::new(&shared.config.zone_origins(), start_revision)
            .with_fixed(shared.config.nameserver_records());
        let stop = async {
            shutdown.as_mut().await;
            TermEnd::Shutdown
        };
        // What DNS serves now: a term with no decision to resume starts from it.
        let served = shared
            .config
            .zone_origins()
            .iter()
            .filter_map(|origin| {
                let snapshot = shim.snapshot(origin)?;
                Some((lifeline_model::name::canonical(origin), snapshot.names))
            })
            .collect();
        let writer = Writer::Embedded(&store);
        match leader::lead(shared, writer, publisher, served, stop).await {
            TermEnd::Shutdown | TermEnd::Deposed => return Ok(()),
            // Never exit for a controller failure while DNS can answer: retry, paced.
            TermEnd::Failed(e) => {
                let pause = backoff.next_delay();
                warn!(error = format!("{e:#}"), retry_in = ?pause, "the controller failed; DNS keeps answering from its snapshot");
                tokio::select! {
                    _ = shutdown.as_mut() => return Ok(()),
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// A replica: serves DNS from etcd, campaigns, and leads while elected.
async fn run_replica(
    shared: &mut Shared,
    shim: &ShimHandle,
    ttl: Duration,
    mut shutdown: std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
) -> anyhow::Result<()> {
    let (connect, prefix) = shared
        .config
        .store
        .etcd_connect()
        .context("etcd store settings")?;
    // Every replica's shim, the leader's included, is fed from etcd.
    let source = lifeline_dns::source::spawn(
        Box::new(lifeline_etcd::EtcdSource::new(
            connect.clone(),
            prefix.clone(),
        )),
        shim.clone(),
    );
    // And applies break-glass overrides itself, so they hold with no leader.
    let overrides_source = lifeline_dns::source::spawn(
        Box::new(lifeline_etcd::EtcdOverrides::new(
            connect.clone(),
            prefix.clone(),
        )),
        shim.clone(),
    );
    let identity = shared.identity.clone();
    let result = async {
        let etcd = tokio::select! {
            _ = shutdown.as_mut() => return Ok(()),
            etcd = connect_etcd(&connect, &prefix) => etcd,
        };
        let _ = shared.state.store.set(Store::Etcd(etcd.clone()));
        let leadership = Leadership::new(&etcd, identity.clone(), ttl);
        loop {
            info!(%identity, "campaigning for leadership");
            let leader = tokio::select! {
                _ = shutdown.as_mut() => return Ok(()),
                l = leadership.campaign() => l?,
                // Followers keep their status view fresh from the leader's decision.
                _ = follow_status(&etcd, &shared.state) => unreachable!("follow_status never returns"),
            };
            info!(%identity, "elected leader");
            let (publisher, served) = publisher_from_etcd(&etcd, &shared.config).await;
            let stop = async {
                tokio::select! {
                    _ = shutdown.as_mut() => TermEnd::Shutdown,
                    _ = leader.lost() => TermEnd::Deposed,
                }
            };
            let writer = Writer::Etcd(&etcd, &leader);
            match leader::lead(shared, writer, publisher, served, stop).await {
                TermEnd::Shutdown => {
                    let _ = leader.resign().await;
                    return Ok(());
                }
                TermEnd::Deposed => warn!(%identity, "lost leadership; campaigning again"),
                TermEnd::Failed(e) => {
                    warn!(error = format!("{e:#}"), "leadership term failed; resigning and campaigning again after 1 s");
                    let _ = leader.resign().await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    .await;
    source.abort();
    overrides_source.abort();
    result
}

/// Connects to etcd. Connecting fails fast while etcd is down; DNS is already
/// answering, so this retries every second until it succeeds.
async fn connect_etcd(connect: &lifeline_etcd::source::EtcdConnect, prefix: &str) -> EtcdStore {
    loop {
        match EtcdStore::connect(connect, prefix).await {
            Ok(s) => return s,
            Err(e) => {
                warn!(error = %e, "cannot reach etcd yet; DNS keeps answering from its snapshot");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A publisher seeded with what etcd holds, so a term's first publish is a patch, and
/// those records: what every replica serves, where a term with no decision to resume
/// starts from.
async fn publisher_from_etcd(etcd: &EtcdStore, config: &Config) -> (Publisher, ZoneRecords) {
    let mut publisher =
        Publisher::new(&config.zone_origins(), 0).with_fixed(config.nameserver_records());
    match etcd.records().await {
        Ok(records) => {
            publisher.seed(records.clone());
            (publisher, records)
        }
        Err(e) => {
            warn!(error = %e, "cannot read published records; republishing every zone");
            (publisher, Default::default())
        }
    }
}

/// A client for the management cluster, under the same API budget as member clusters.
async fn management_client(
    kubeconfig: Option<&Path>,
    config: &Config,
) -> anyhow::Result<kube::Client> {
    let kube_config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the management kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using the management kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster()
            .context("in-cluster configuration for the management cluster")?,
    };
    let budget = crate::kubernetes::budget::Budget::new((&config.defaults.api_budget).into())
        .context("management API budget")?;
    budget.client(kube_config).context("management API client")
}

/// Refreshes the admin status from the decision in etcd while this replica follows.
async fn follow_status(store: &EtcdStore, state: &AdminState) {
    loop {
        if let Ok(Some(d)) = store.load_decision().await {
            let view = admin::View {
                decision: Arc::new(d),
                decided: true,
                followed_at: Some(std::time::SystemTime::now()),
                ..(*state.view()).clone()
            };
            state.show(view);
        }
        tokio::time::sleep(admin::FOLLOW_REFRESH).await;
    }
}

fn replica_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "lifeline".to_owned());
    format!("{host}-{}", std::process::id())
}
