//! `lifeline run`: the controller with the embedded DNS shim, in one process.
//!
//! Start-up order is what keeps discovery alive across restarts:
//!
//! 1. open the store and read the last decision (hysteresis and ramp state included);
//! 2. start the DNS shim, which loads its persisted snapshot *before* binding sockets,
//!    so the first query after a restart is answered from disk;
//! 3. load the policy documents (or the last good set from the store if they are broken);
//! 4. start the admin API and the prober, then decide and publish in a loop.
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

use crate::{
    admin::{self, AdminState, DemoControl},
    config::{Config, PolicySource, StoreConfig},
    documents,
    engine::{self, Decision, Health, Observation, Signals},
    policies::{self, PolicySet},
    probe::{ProbeResult, Prober},
    publish::Publisher,
    store::{EmbeddedStore, PolicySnapshot},
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
        PolicySource::Kubernetes { .. } => {
            anyhow::bail!(
                "policySource type kubernetes is not supported by this build; use type files"
            )
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
        }
    }

    /// True when a file changed since the last load. Polling the modification time and
    /// size once a second is enough for files an operator edits, and it also sees the
    /// symlink swaps of a mounted ConfigMap, which inotify-style watches can miss.
    fn changed(&self) -> bool {
        match &self.docs {
            Documents::Files(paths) => Self::stamp(paths) != self.stamps,
            Documents::Inline { .. } => false,
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
fn fingerprint(d: &Decision) -> Vec<(String, String, Health, bool)> {
    d.policies
        .iter()
        .flat_map(|(id, p)| {
            p.targets
                .iter()
                .map(move |(c, t)| (id.clone(), c.clone(), t.health, t.drained))
        })
        .collect()
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

    // 1. Store and the last decision.
    let store_dir = match &config.store {
        StoreConfig::Embedded { data_dir } => data_dir.clone(),
        StoreConfig::Etcd { .. } => {
            anyhow::bail!("store type etcd is not supported by this build; use type embedded")
        }
    };
    let store = Arc::new(EmbeddedStore::open(&store_dir).context("opening the store")?);
    let mut decision = store.load_decision().unwrap_or_default();
    info!(
        revision = decision.revision,
        policies = decision.policies.len(),
        "resumed the last decision"
    );

    // 2. DNS from the persisted snapshot, then sockets.
    let shim = Shim::start(&config.dns, &config.zones)
        .await
        .context("starting DNS")?;
    shim.set_source_connected("controller", true);
    let start_revision = shim
        .state()
        .zones
        .iter()
        .filter_map(|z| z.revision)
        .max()
        .unwrap_or(0);
    let mut publisher = Publisher::new(&config.zone_origins(), start_revision);
    info!(udp = ?shim.udp_addrs(), tcp = ?shim.tcp_addrs(), ready = shim.state().ready, "DNS answering");

    // 3. Policies: fresh if valid, else the last good set.
    let mut policy_state = PolicyState {
        docs: documents,
        stamps: Vec::new(),
        zones: config.zone_origins(),
    };
    let mut current = match policy_state.load() {
        Ok(snapshot) => {
            store
                .save_policies(&snapshot)
                .context("saving the policy set")?;
            snapshot
        }
        Err(problems) => {
            for p in &problems {
                warn!(problem = %p, "policy documents are invalid");
            }
            store.load_policies().with_context(|| {
                format!(
                    "policy documents are invalid ({} problems) and no last good set is stored",
                    problems.len()
                )
            })?
        }
    };
    let mut set: PolicySet =
        policies::compile(&current.policies, &current.clusters, &BTreeMap::new());
    for w in &set.warnings {
        warn!(warning = %w, "policy set");
    }

    // 4. Admin API and prober.
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    shim.metrics().register(&mut registry);
    let admin_addr: SocketAddr = admin.local_addr()?;
    let dns_for_ready = shim.clone();
    let state = Arc::new(AdminState {
        decision: RwLock::new(Arc::new(decision.clone())),
        store: store.clone(),
        clusters: RwLock::new(cluster_names(&current)),
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

    let (tx, mut results) = mpsc::channel::<ProbeResult>(4096);
    let prober = Prober::new(config.defaults.probe.concurrency as usize, tx)
        .context("starting the prober")?;
    prober.set_targets(set.probes.clone());

    if let Some(f) = on_ready {
        f(state.clone(), shim.clone());
    }

    let mut shutdown = std::pin::pin!(shutdown);
    let mut signals = Signals::default();
    let mut dirty = true;
    let mut last_decide = tokio::time::Instant::now();
    let mut last_saved = fingerprint(&decision);
    let mut decide_tick = tokio::time::interval(Duration::from_millis(100));
    let mut reload_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(r) = results.recv() => {
                metrics.probes.get_or_create(&ResultLabels { result: if r.ok { "ok".into() } else { "fail".into() } }).inc();
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
                            if let Err(e) = store.save_policies(&snapshot) {
                                warn!(error = %e, "cannot save the policy set");
                            }
                            current = snapshot;
                            set = policies::compile(&current.policies, &current.clusters, &BTreeMap::new());
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
                continue;
            }
            _ = decide_tick.tick() => {
                if !dirty && last_decide.elapsed() < Duration::from_secs(1) {
                    continue;
                }
            }
        }
        // Decide.
        let now = SystemTime::now();
        let overrides = store.overrides();
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
        if next.revision != decision.revision {
            metrics.answer_changes.inc();
            for (id, p) in &next.policies {
                let before = decision.policies.get(id).map(|b| &b.answers);
                if before != Some(&p.answers) {
                    let answers: Vec<String> =
                        p.answers.iter().map(|a| a.address.to_string()).collect();
                    info!(policy = %id, outcome = ?p.outcome, answers = ?answers, "answers changed");
                }
            }
        }
        for alarm in &next.alarms {
            if !decision.alarms.iter().any(|a| a.kind == alarm.kind) {
                warn!(kind = ?alarm.kind, message = %alarm.message, "alarm raised");
            }
        }
        for update in publisher.updates(&next, now) {
            let zone = update.zone().to_owned();
            if let Err(e) = shim.apply_async(update).await {
                metrics.publish_errors.inc();
                warn!(%zone, error = %e, "DNS shim refused an update; republishing the whole zone next time");
                publisher.reset();
            }
        }
        let print = fingerprint(&next);
        if print != last_saved || next.revision != decision.revision {
            if let Err(e) = store.save_decision(&next) {
                warn!(error = %e, "cannot save the decision");
            }
            last_saved = print;
        }
        metrics.observe(&next, now);
        decision = next;
        *state.decision.write() = Arc::new(decision.clone());
        state.decided.store(true, Ordering::Relaxed);
    }

    info!("shutting down");
    drop(prober);
    if let Err(e) = store.save_decision(&decision) {
        warn!(error = %e, "cannot save the decision");
    }
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    let _ = stop_rx;
    shim.shutdown();
    Ok(())
}
