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

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime},
};

use anyhow::Context;
use lifeline_crds::{FailoverPolicy, MemberCluster};
use lifeline_dns::{Shim, ShimHandle};
use parking_lot::RwLock;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use lifeline_engine::{self as engine, Decision, Health, Observation, Override, Signals};

use crate::{
    admin::{self, AdminState, DemoControl},
    config::{Config, PolicySource, StoreConfig},
    documents,
    etcd::{EtcdStore, Leader, Leadership},
    fleet::Fleet,
    management::{ManagementSource, ManagementView},
    policies::{self, PolicySet},
    probe::{ProbeResult, Prober},
    publish::Publisher,
    store::{EmbeddedStore, PolicySnapshot, Store},
};

/// Where the policy documents come from.
#[derive(Debug, Clone)]
pub enum Documents {
    /// Files, re-read when they change.
    Files(Vec<PathBuf>),
    /// A fixed set (the demo).
    Inline {
        policies: Vec<FailoverPolicy>,
        clusters: Vec<MemberCluster>,
    },
    /// CRs in the management cluster, watched from `run` (in-cluster configuration
    /// when no kubeconfig is given).
    Kubernetes {
        kubeconfig: Option<PathBuf>,
        namespace: Option<String>,
    },
}

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
    pub demo: Option<Arc<dyn DemoControl>>,
    /// Called with the admin state once everything is up (the demo prints from it).
    pub on_ready: Option<OnReady>,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// Controller metrics.
#[derive(Default)]
struct Metrics {
    decisions: Counter,
    answer_changes: Counter,
    revision: Gauge,
    decision_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    targets: Family<StateLabels, Gauge>,
    alarms: Gauge,
    probes: Family<ResultLabels, Counter>,
    policy_errors: Counter,
    publish_errors: Counter,
}

impl Metrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "lifeline_decisions",
            "Decisions made",
            self.decisions.clone(),
        );
        r.register(
            "lifeline_answer_changes",
            "Decisions that changed some answer",
            self.answer_changes.clone(),
        );
        r.register(
            "lifeline_decision_revision",
            "Revision of the current decision",
            self.revision.clone(),
        );
        r.register(
            "lifeline_decision_age_seconds",
            "Seconds since the answers last changed",
            self.decision_age.clone(),
        );
        r.register(
            "lifeline_targets",
            "Targets by health state",
            self.targets.clone(),
        );
        r.register("lifeline_alarms", "Active alarms", self.alarms.clone());
        r.register(
            "lifeline_probe_results",
            "Probe results by outcome",
            self.probes.clone(),
        );
        r.register(
            "lifeline_policy_load_errors",
            "Policy reloads rejected (the last good set stays in force)",
            self.policy_errors.clone(),
        );
        r.register(
            "lifeline_publish_errors",
            "Updates the DNS shim refused",
            self.publish_errors.clone(),
        );
    }

    fn observe(&self, d: &Decision, now: SystemTime) {
        self.revision.set(d.revision as i64);
        self.decision_age.set(d.changed_at.map_or(0.0, |t| {
            now.duration_since(t).unwrap_or_default().as_secs_f64()
        }));
        self.alarms.set(d.alarms.len() as i64);
        let mut counts: BTreeMap<String, i64> = [
            "Unknown",
            "Healthy",
            "Unhealthy",
            "Recovering",
            "Ramping",
            "Draining",
        ]
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect();
        for p in d.policies.values() {
            for t in p.targets.values() {
                let key = if t.drained {
                    "Draining".to_owned()
                } else {
                    format!("{:?}", t.health)
                };
                *counts.entry(key).or_default() += 1;
            }
        }
        for (state, n) in counts {
            self.targets.get_or_create(&StateLabels { state }).set(n);
        }
    }
}

/// The last good documents: freshly loaded when valid, else what the store holds.
struct PolicyState {
    docs: Documents,
    /// Modification stamps of the files at the last load.
    stamps: Vec<Option<(SystemTime, u64)>>,
    zones: Vec<String>,
    /// The management cluster's client and namespace, for `Documents::Kubernetes`.
    management_client: Option<(kube::Client, Option<String>)>,
    /// The management cluster's view while this replica leads.
    management: Option<(
        ManagementSource,
        tokio::sync::watch::Receiver<ManagementView>,
    )>,
}

impl PolicyState {
    fn stamp(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
        paths
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
            })
            .collect()
    }

    /// Loads the documents. `Err` carries every problem; the caller keeps its last good set.
    fn load(&mut self) -> Result<PolicySnapshot, Vec<String>> {
        match &self.docs {
            Documents::Inline { policies, clusters } => Ok(PolicySnapshot {
                policies: policies.clone(),
                clusters: clusters.clone(),
            }),
            Documents::Files(paths) => {
                self.stamps = Self::stamp(paths);
                let loaded = documents::load(paths, &self.zones);
                if !loaded.is_valid() {
                    return Err(loaded.problems.iter().map(ToString::to_string).collect());
                }
                Ok(PolicySnapshot {
                    policies: loaded.policies.into_iter().map(|(_, p)| p).collect(),
                    clusters: loaded.clusters.into_iter().map(|(_, c)| c).collect(),
                })
            }
            Documents::Kubernetes { .. } => {
                let Some((_, view)) = self.management.as_mut() else {
                    return Err(vec![
                        "the management cluster is not being watched".to_owned(),
                    ]);
                };
                let view = view.borrow_and_update().clone();
                if !view.synced {
                    return Err(vec![format!(
                        "the management cluster has not been listed yet (reachable: {})",
                        view.connected
                    )]);
                }
                // Invalid objects keep their last good version in the view; they are
                // reported, not fatal to the rest of the set.
                for (object, problems) in &view.problems {
                    for p in problems {
                        warn!(%object, problem = %p, "invalid object in the management cluster");
                    }
                }
                Ok(PolicySnapshot {
                    policies: view.policies.into_values().collect(),
                    clusters: view.clusters.into_values().collect(),
                })
            }
        }
    }

    /// True when a file changed since the last load. Polling the modification time and
    /// size once a second is enough for files an operator edits, and it also sees the
    /// symlink swaps of a mounted ConfigMap, which inotify-style watches can miss.
    fn changed(&self) -> bool {
        match &self.docs {
            Documents::Files(paths) => Self::stamp(paths) != self.stamps,
            Documents::Inline { .. } => false,
            Documents::Kubernetes { .. } => self
                .management
                .as_ref()
                .is_some_and(|(_, view)| view.has_changed().unwrap_or(false)),
        }
    }
}

fn cluster_names(snapshot: &PolicySnapshot) -> BTreeSet<String> {
    snapshot
        .clusters
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect()
}

/// Compact view of target health, to save the decision only when something that must
/// survive a restart changed (streak counters alone are not worth an fsync each probe).
fn fingerprint(d: &Decision) -> Vec<(String, Arc<str>, Health, bool)> {
    d.policies
        .iter()
        .flat_map(|(id, p)| {
            p.targets
                .iter()
                .map(move |(c, t)| (id.clone(), c.clone(), t.health, t.drained))
        })
        .collect()
}

/// Where the leader's results go.
enum Output<'a> {
    /// One process: the shim in process, state on local disk.
    Local {
        shim: &'a ShimHandle,
        store: &'a EmbeddedStore,
    },
    /// Replicas: every write fenced by the leader's election key.
    Etcd {
        store: &'a EtcdStore,
        leader: &'a Leader,
    },
}

impl Output<'_> {
    async fn publish(&self, update: lifeline_dns::Update) -> anyhow::Result<()> {
        match self {
            Output::Local { shim, .. } => {
                shim.apply_async(update).await?;
            }
            Output::Etcd { store, leader } => {
                store.publish_update(leader, &update).await?;
            }
        }
        Ok(())
    }

    async fn save_decision(&self, decision: &Decision) -> anyhow::Result<()> {
        match self {
            Output::Local { store, .. } => store.save_decision(decision)?,
            Output::Etcd { store, leader } => store.save_decision(leader, decision).await?,
        }
        Ok(())
    }

    async fn load_decision(&self) -> anyhow::Result<Option<Decision>> {
        Ok(match self {
            Output::Local { store, .. } => store.load_decision(),
            Output::Etcd { store, .. } => store.load_decision().await?,
        })
    }

    async fn save_policies(&self, snapshot: &PolicySnapshot) -> anyhow::Result<()> {
        match self {
            Output::Local { store, .. } => store.save_policies(snapshot)?,
            Output::Etcd { store, leader } => store.mirror_policies(leader, snapshot).await?,
        }
        Ok(())
    }

    async fn load_policies(&self) -> anyhow::Result<Option<PolicySnapshot>> {
        Ok(match self {
            Output::Local { store, .. } => store.load_policies(),
            Output::Etcd { store, .. } => {
                let s = store.load_policies().await?;
                (!s.policies.is_empty() || !s.clusters.is_empty()).then_some(s)
            }
        })
    }

    async fn overrides(&self) -> anyhow::Result<Vec<Override>> {
        Ok(match self {
            Output::Local { store, .. } => store.overrides(),
            Output::Etcd { store, .. } => store.overrides().await?,
        })
    }
}

/// What every leadership term shares.
struct Term {
    config: Config,
    metrics: Arc<Metrics>,
    state: Arc<AdminState>,
    policy_state: PolicyState,
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
        demo,
        on_ready,
    } = options;

    // 1. DNS from the persisted snapshot, then sockets: nothing else is needed to answer.
    let shim = Shim::start(&config.dns, &config.zones)
        .await
        .context("starting DNS")?;
    info!(udp = ?shim.udp_addrs(), tcp = ?shim.tcp_addrs(), ready = shim.state().ready, "DNS answering");

    // 2. Admin API.
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    shim.metrics().register(&mut registry);
    let admin_addr: SocketAddr = admin.local_addr()?;
    let dns_for_ready = shim.clone();
    let state = Arc::new(AdminState {
        decision: RwLock::new(Arc::new(Decision::default())),
        store: RwLock::new(None),
        clusters: RwLock::new(BTreeSet::new()),
        token: admin_token,
        loopback: admin::is_loopback(&admin_addr),
        decided: Default::default(),
        dns_ready: Box::new(move || dns_for_ready.state().ready),
        registry,
        overrides_changed: tokio::sync::Notify::new(),
        demo,
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut admin_stop = stop_rx.clone();
    let admin_task = tokio::spawn(admin::serve(admin, state.clone(), async move {
        let _ = admin_stop.wait_for(|s| *s).await;
    }));
    info!(%admin_addr, "admin API listening");
    if let Some(f) = on_ready {
        f(state.clone(), shim.clone());
    }

    let mut ctx = Term {
        policy_state: PolicyState {
            // Building the client contacts nothing; only the leader watches (see
            // `lead_until`), so management API load does not grow with replicas.
            management_client: match &documents {
                Documents::Kubernetes {
                    kubeconfig,
                    namespace,
                } => Some((
                    management_client(kubeconfig.as_deref(), &config).await?,
                    namespace.clone(),
                )),
                _ => None,
            },
            management: None,
            docs: documents,
            stamps: Vec::new(),
            zones: config.zone_origins(),
        },
        config,
        metrics,
        state,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let result = match ctx.config.store.clone() {
        StoreConfig::Embedded { data_dir } => {
            run_embedded(&mut ctx, &shim, &data_dir, shutdown.as_mut()).await
        }
        StoreConfig::Etcd { lease_ttl, .. } => {
            let ttl = lease_ttl.parse().unwrap_or(Duration::from_secs(10));
            run_replica(&mut ctx, &shim, ttl, shutdown.as_mut()).await
        }
    };

    info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    shim.shutdown();
    result
}

async fn run_embedded(
    ctx: &mut Term,
    shim: &ShimHandle,
    data_dir: &Path,
    shutdown: std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
) -> anyhow::Result<()> {
    let store = Arc::new(EmbeddedStore::open(data_dir).context("opening the store")?);
    *ctx.state.store.write() = Some(Store::Embedded(store.clone()));
    shim.set_source_connected("controller", true);
    let start_revision = shim
        .state()
        .zones
        .iter()
        .filter_map(|z| z.revision)
        .max()
        .unwrap_or(0);
    let publisher = Publisher::new(&ctx.config.zone_origins(), start_revision);
    let output = Output::Local {
        shim,
        store: &store,
    };
    lead(ctx, &output, publisher, shutdown).await
}

/// A replica: serves DNS from etcd, campaigns, and leads while elected.
async fn run_replica(
    ctx: &mut Term,
    shim: &ShimHandle,
    ttl: Duration,
    mut shutdown: std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
) -> anyhow::Result<()> {
    let (connect, prefix) = ctx
        .config
        .store
        .etcd_connect()
        .context("etcd store settings")?;
    // Every replica's shim, the leader's included, is fed from etcd.
    let source = lifeline_dns::source::spawn(
        Box::new(lifeline_dns::etcd_source::EtcdSource::new(
            connect.clone(),
            prefix.clone(),
        )),
        shim.clone(),
    );
    // And applies break-glass overrides itself, so they hold with no leader.
    let overrides_source = lifeline_dns::source::spawn(
        Box::new(lifeline_dns::etcd_overrides::EtcdOverrides::new(
            connect.clone(),
            prefix.clone(),
        )),
        shim.clone(),
    );
    let identity = replica_identity();
    let result = async {
        // Connecting fails fast while etcd is down; DNS is already answering, so retry.
        let store = loop {
            tokio::select! {
                _ = shutdown.as_mut() => return Ok(()),
                r = EtcdStore::connect(&connect, &prefix) => match r {
                    Ok(s) => break s,
                    Err(e) => {
                        warn!(error = %e, "cannot reach etcd yet; DNS keeps answering from its snapshot");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
            }
        };
        *ctx.state.store.write() = Some(Store::Etcd(store.clone()));
        let leadership = Leadership::new(&store, identity.clone(), ttl);
        loop {
            info!(%identity, "campaigning for leadership");
            let leader = tokio::select! {
                _ = shutdown.as_mut() => return Ok(()),
                l = leadership.campaign() => l?,
                // Followers keep their status view fresh from the leader's decision.
                _ = follow_status(&store, &ctx.state) => unreachable!("follow_status never returns"),
            };
            info!(%identity, "elected leader");
            // Seed the publisher with what etcd holds, so the first publish is a patch.
            let mut publisher = Publisher::new(&ctx.config.zone_origins(), 0);
            match store.records().await {
                Ok(records) => publisher.seed(records),
                Err(e) => warn!(error = %e, "cannot read published records; republishing every zone"),
            }
            let (done, term) = {
                let output = Output::Etcd { store: &store, leader: &leader };
                let stop = async {
                    tokio::select! {
                        _ = shutdown.as_mut() => true,
                        _ = leader.lost() => false,
                    }
                };
                lead_until(ctx, &output, publisher, stop).await
            };
            if let Err(e) = term {
                warn!(error = %e, "leadership term ended with an error");
            }
            if done {
                let _ = leader.resign().await;
                return Ok(());
            }
            warn!(%identity, "lost leadership; campaigning again");
        }
    }
    .await;
    source.abort();
    overrides_source.abort();
    result
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
    let budget = crate::budget::Budget::new((&config.defaults.api_budget).into())
        .context("management API budget")?;
    budget.client(kube_config).context("management API client")
}

/// Refreshes the admin status from the decision in etcd while this replica follows.
async fn follow_status(store: &EtcdStore, state: &AdminState) {
    loop {
        if let Ok(Some(d)) = store.load_decision().await {
            *state.decision.write() = Arc::new(d);
            state.decided.store(true, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
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

/// Leads until `shutdown` completes (single-process mode).
async fn lead(
    ctx: &mut Term,
    output: &Output<'_>,
    publisher: Publisher,
    shutdown: std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
) -> anyhow::Result<()> {
    let (_, result) = lead_until(ctx, output, publisher, async {
        shutdown.await;
        true
    })
    .await;
    result
}

/// One leadership term: decide and publish until `stop` completes. Returns `stop`'s
/// value (true: shut down) with the term's outcome. The management cluster is watched
/// only during the term.
async fn lead_until(
    ctx: &mut Term,
    output: &Output<'_>,
    publisher: Publisher,
    stop: impl Future<Output = bool>,
) -> (bool, anyhow::Result<()>) {
    if let Some((client, namespace)) = ctx.policy_state.management_client.clone() {
        let source = ManagementSource::spawn(client, namespace);
        let view = source.view();
        ctx.policy_state.management = Some((source, view));
    }
    let outcome = lead_term(ctx, output, publisher, stop).await;
    ctx.policy_state.management = None;
    outcome
}

async fn lead_term(
    ctx: &mut Term,
    output: &Output<'_>,
    mut publisher: Publisher,
    stop: impl Future<Output = bool>,
) -> (bool, anyhow::Result<()>) {
    let Term {
        config,
        metrics,
        state,
        policy_state,
    } = ctx;
    let mut stop = std::pin::pin!(stop);

    let mut decision = match output.load_decision().await {
        Ok(d) => d.unwrap_or_default(),
        Err(e) => return (false, Err(e.context("reading the last decision"))),
    };
    info!(
        revision = decision.revision,
        policies = decision.policies.len(),
        "resumed the last decision"
    );

    // Policies: fresh if valid, else the last good set; with neither, wait (DNS keeps
    // answering from its snapshot) rather than publish an empty set.
    let mut waiting_logged = false;
    let mut current = loop {
        match policy_state.load() {
            Ok(snapshot) => {
                if let Err(e) = output.save_policies(&snapshot).await {
                    warn!(error = %e, "cannot save the policy set");
                }
                break snapshot;
            }
            Err(problems) => {
                match output.load_policies().await {
                    Ok(Some(s)) => {
                        for p in &problems {
                            warn!(problem = %p, "policy documents unavailable; using the last good set");
                        }
                        break s;
                    }
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "cannot read the last good policy set"),
                }
                if !waiting_logged {
                    for p in &problems {
                        warn!(problem = %p, "no usable policy set yet; DNS keeps answering from its snapshot");
                    }
                    waiting_logged = true;
                }
                tokio::select! {
                    done = &mut stop => return (done, Ok(())),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    // Member clusters that need API access get a watcher (leader only).
    let mut fleet = Fleet::with_management(
        policy_state
            .management
            .as_ref()
            .map(|(source, _)| source.client()),
    );
    // With CRs as the source, the leader writes their status and Events, in a task of
    // their own so a hanging management API cannot hold up a decision.
    let status_task = policy_state.management.as_ref().map(|(source, _)| {
        crate::status::StatusTask::spawn(
            source.client(),
            Duration::from_secs(5),
            replica_identity(),
        )
    });
    fleet.reconcile(&current).await;
    let mut discovered = fleet.discovered(&current);
    let mut set: PolicySet = policies::compile(&current.policies, &current.clusters, &discovered);
    for w in &set.warnings {
        warn!(warning = %w, "policy set");
    }
    *state.clusters.write() = cluster_names(&current);

    let (tx, mut results) = mpsc::channel::<ProbeResult>(4096);
    let prober = match Prober::new(config.defaults.probe.concurrency as usize, tx) {
        Ok(p) => p,
        Err(e) => {
            return (
                false,
                Err(anyhow::Error::new(e).context("starting the prober")),
            );
        }
    };
    prober.set_targets(set.probes.clone());

    let mut overrides: Vec<Override> = Vec::new();
    let mut overrides_ok = true;
    let mut signals = Signals::default();
    let mut dirty = true;
    let mut last_decide = tokio::time::Instant::now();
    let mut last_saved = fingerprint(&decision);
    let mut decide_tick = tokio::time::interval(Duration::from_millis(100));
    let mut reload_tick = tokio::time::interval(Duration::from_secs(1));
    let done = loop {
        tokio::select! {
            done = &mut stop => break done,
            Some(r) = results.recv() => {
                let result = if r.ok { "ok" } else { "fail" };
                metrics.probes.get_or_create(&ResultLabels { result: result.into() }).inc();
                signals.targets.entry(r.key)
                    .or_default()
                    .observations
                    .push(Observation { at: r.at, ok: r.ok, detail: r.detail });
                dirty = true;
                continue;
            }
            // Overrides changed: decide now.
            _ = state.overrides_changed.notified() => {}
            _ = reload_tick.tick() => {
                if policy_state.changed() {
                    match policy_state.load() {
                        Ok(snapshot) => {
                            info!(policies = snapshot.policies.len(), clusters = snapshot.clusters.len(), "policy documents reloaded");
                            if let Err(e) = output.save_policies(&snapshot).await {
                                warn!(error = %e, "cannot save the policy set");
                            }
                            current = snapshot;
                            fleet.reconcile(&current).await;
                            discovered = fleet.discovered(&current);
                            set = policies::compile(&current.policies, &current.clusters, &discovered);
                            for w in &set.warnings {
                                warn!(warning = %w, "policy set");
                            }
                            prober.set_targets(set.probes.clone());
                            *state.clusters.write() = cluster_names(&current);
                            dirty = true;
                        }
                        Err(problems) => {
                            metrics.policy_errors.inc();
                            for p in &problems {
                                warn!(problem = %p, "policy documents are invalid; keeping the last good set");
                            }
                        }
                    }
                }
                if let (Some(task), Some((_, view))) =
                    (status_task.as_ref(), policy_state.management.as_ref())
                {
                    let view = view.borrow().clone();
                    task.update(crate::status::StatusInput {
                        decision: Arc::new(decision.clone()),
                        policies: view.policies.into_values().collect(),
                        clusters: view.clusters.into_values().collect(),
                        problems: view.problems,
                        views: fleet.views(),
                    });
                }
                // Member views: new addresses recompile the set; readiness becomes
                // observations for policies without a health check.
                if fleet.changed() {
                    let now_discovered = fleet.discovered(&current);
                    if now_discovered != discovered {
                        discovered = now_discovered;
                        set = policies::compile(&current.policies, &current.clusters, &discovered);
                        prober.set_targets(set.probes.clone());
                    }
                    for (key, obs) in fleet.hints(&current, SystemTime::now()) {
                        signals.targets.entry(key).or_default().observations.push(obs);
                    }
                    dirty = true;
                }
                continue;
            }
            _ = decide_tick.tick() => {
                if !dirty && last_decide.elapsed() < Duration::from_secs(1) {
                    continue;
                }
            }
        }
        // Decide. A store that cannot be read keeps the last overrides known: losing a
        // source must not drop an operator's drain.
        match output.overrides().await {
            Ok(o) => {
                if !overrides_ok {
                    info!("overrides readable again");
                }
                overrides_ok = true;
                overrides = o;
            }
            // Logged once per outage, not once per decision.
            Err(e) if overrides_ok => {
                overrides_ok = false;
                warn!(error = %e, "cannot read overrides; using the last ones read");
            }
            Err(_) => {}
        }
        let now = SystemTime::now();
        for (key, source) in fleet.sources(&current) {
            signals.targets.entry(key).or_default().source = source;
        }
        let next = engine::decide(
            &config.engine,
            &set.policies,
            &signals,
            &overrides,
            &decision,
            now,
        );
        signals = Signals::default();
        dirty = false;
        last_decide = tokio::time::Instant::now();
        metrics.decisions.inc();
        log_changes(&decision, &next);
        if let (Some(task), Some((_, view))) =
            (status_task.as_ref(), policy_state.management.as_ref())
            && next.revision != decision.revision
        {
            task.record_changes(&decision, &next, &view.borrow().policies);
        }
        // Status shows the decision before it is published, so the admin API never
        // lags behind what DNS answers.
        *state.decision.write() = Arc::new(next.clone());
        state.decided.store(true, Ordering::Relaxed);
        let mut published = true;
        for update in publisher.updates(&next, now) {
            let zone = update.zone().to_owned();
            if let Err(e) = output.publish(update).await {
                metrics.publish_errors.inc();
                warn!(%zone, error = %e, "publishing failed; republishing the whole zone next time");
                publisher.reset();
                published = false;
                break;
            }
        }
        let print = fingerprint(&next);
        if print != last_saved || next.revision != decision.revision {
            match output.save_decision(&next).await {
                Ok(()) => last_saved = print,
                Err(e) => warn!(error = %e, "cannot save the decision"),
            }
        }
        metrics.observe(&next, now);
        decision = next;
        if !published {
            // Retry soon rather than waiting for the next change.
            dirty = true;
        }
    };

    drop(prober);
    let saved = output.save_decision(&decision).await;
    (done, saved.context("saving the decision"))
}

fn log_changes(before: &Decision, after: &Decision) {
    if after.revision != before.revision {
        for (id, p) in &after.policies {
            if before.policies.get(id).map(|b| &b.answers) != Some(&p.answers) {
                let answers: Vec<String> = p
                    .answers
                    .iter()
                    .map(|a| format!("{}@{}", a.address, a.weight))
                    .collect();
                info!(policy = %id, outcome = ?p.outcome, answers = ?answers, "answers changed");
            }
        }
    }
    for alarm in &after.alarms {
        if !before.alarms.iter().any(|a| a.kind == alarm.kind) {
            warn!(kind = ?alarm.kind, message = %alarm.message, "alarm raised");
        }
    }
}
