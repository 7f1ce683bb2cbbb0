//! One leadership term: from being elected (or starting, with the embedded store) to
//! shutting down, being deposed, or failing.
//!
//! ```text
//!  LeaderTerm::begin   last decision ─► policies (fresh, else the last good set; with
//!        │             neither, wait: DNS keeps answering) ─► fleet, prober, status task
//!        ▼
//!  lead(): select! only dispatches ─┬─ probe result       ─► on_probe
//!                                   ├─ overrides changed  ─► decide
//!                                   ├─ every second       ─► on_tick (reload, fleet, status)
//!                                   ├─ every 100 ms       ─► decide when due
//!                                   └─ stop               ─► end: save the decision
//!        ▼
//!  TermEnd { Shutdown, Deposed, Failed(..) }
//! ```
//!
//! A policy set enters a term in one place ([`LeaderTerm::adopt`]) and is compiled into
//! probe targets and engine policies in one place ([`LeaderTerm::recompile`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    hash::{Hash, Hasher},
    net::IpAddr,
    panic::AssertUnwindSafe,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime},
};

use futures::FutureExt as _;
use lifeline_crds::{
    FailoverPolicy, MemberCluster,
    document::PolicySnapshot,
    validate::{self, DocumentRef, SetReason, ZoneRule},
};
use lifeline_engine::{self as engine, Decision, Observation, Override, Signals};
use lifeline_etcd::Leader;
use lifeline_model::hold::{PolicyHold, PolicyRelease};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    admin::AdminState,
    config::Config,
    documents::Documents,
    fleet::Fleet,
    guard::{self, Quarantine},
    management::{ManagementSource, ManagementView},
    metrics::{Metrics, ResultLabels},
    policies,
    probe::{ProbeResult, Prober},
    publish::{Publisher, ZoneRecords},
    status::{StatusInput, StatusTask},
    store::Store,
    sweep,
};

/// How a leadership term ended.
#[derive(Debug)]
pub enum TermEnd {
    /// The process is shutting down.
    Shutdown,
    /// Leadership was lost (the lease expired or another replica took over).
    Deposed,
    /// The term could not go on (its state could not be read, the prober not started).
    Failed(anyhow::Error),
}

/// What every term of this process shares.
pub(crate) struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub state: Arc<AdminState>,
    pub policy_feed: PolicyFeed,
    /// This replica's name in leader election, status and Events.
    pub identity: String,
    /// The namespace Lifeline runs in.
    pub namespace: String,
    /// The key that seals cached member kubeconfigs, when one is configured and loads.
    pub credential_key: Option<Arc<crate::credentials::SealKey>>,
    /// Honour the test-only fault annotation ([`TEST_FAULT`]). Tests set it; nothing
    /// else does.
    pub test_faults: bool,
}

/// Annotation on a FailoverPolicy that makes deciding it panic (`panic`) or never return
/// (`hang`), or the process abort between saving a decision that changes its answers
/// and publishing it (`abort-before-publish`), or the leader stop for good between
/// making such a decision and saving it (`hang-before-save`, once per process, for a
/// test to kill it there), when the process was started with test
/// faults enabled (`LIFELINE_TEST_FAULTS=1`): how tests prove that one poisoned policy
/// cannot stop DNS or the other policies, and that a crash at the worst moment loses
/// no decision.
pub const TEST_FAULT: &str = "lifeline.dev/test-fault";

/// Longest a decision may take before it counts as hung (deciding 10,000 policies takes
/// well under a second).
const DECIDE_LIMIT: Duration = Duration::from_secs(5);

/// What the test fault annotation asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TestFault {
    Panic,
    Hang,
    AbortBeforePublish,
    HangBeforeSave,
}

/// Where policy documents come from, and what was last seen of them.
pub(crate) struct PolicyFeed {
    pub docs: Documents,
    /// Modification stamps of the files at the last load.
    stamps: Vec<Option<(SystemTime, u64)>>,
    zones: Vec<ZoneRule>,
    /// The management cluster's client and namespace, for `Documents::Kubernetes`.
    management_client: Option<(kube::Client, Option<String>)>,
    /// The management cluster's view while this replica leads.
    management: Option<(
        ManagementSource,
        tokio::sync::watch::Receiver<ManagementView>,
    )>,
    /// Cross-document problems of the last Kubernetes load, by policy id: the policy
    /// is left out of the set (a hostname owned by an older policy, a zone it may not
    /// publish in) or served with the problem reported (an unknown cluster).
    pub set_problems: BTreeMap<String, (SetReason, String)>,
}

impl PolicyFeed {
    pub fn new(
        docs: Documents,
        zones: Vec<ZoneRule>,
        management_client: Option<(kube::Client, Option<String>)>,
    ) -> Self {
        Self {
            docs,
            stamps: Vec::new(),
            zones,
            management_client,
            management: None,
            set_problems: BTreeMap::new(),
        }
    }

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
                let loaded = crate::documents::load(paths, &self.zones);
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
                let clusters: Vec<_> = view.clusters.into_values().collect();
                let (policies, set_problems) = arbitrate(
                    view.policies.into_values().collect(),
                    &clusters,
                    &self.zones,
                );
                self.set_problems = set_problems;
                Ok(PolicySnapshot { policies, clusters })
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

/// Applies the cross-document checks to CRs: each policy is judged on its own, so one
/// conflicting CR cannot block the others (as one bad file blocks its whole set).
fn arbitrate(
    policies: Vec<FailoverPolicy>,
    clusters: &[MemberCluster],
    zones: &[ZoneRule],
) -> (Vec<FailoverPolicy>, BTreeMap<String, (SetReason, String)>) {
    let refs: Vec<&FailoverPolicy> = policies.iter().collect();
    let cluster_refs: Vec<&MemberCluster> = clusters.iter().collect();
    let mut excluded = BTreeSet::new();
    let mut problems = BTreeMap::new();
    for p in validate::cross_check(&refs, &cluster_refs, zones) {
        let DocumentRef::Policy(i) = p.document else {
            continue;
        };
        let id = crate::policies::policy_id(&policies[i]);
        warn!(policy = %id, reason = p.reason.as_str(), problem = %p.problem, "policy not served as written");
        if p.reason.excludes() {
            excluded.insert(i);
        }
        problems
            .entry(id)
            .or_insert((p.reason, p.problem.to_string()));
    }
    let kept = policies
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !excluded.contains(i))
        .map(|(_, p)| p)
        .collect();
    (kept, problems)
}

/// Leads until `stop` completes (with `Shutdown` or `Deposed`) or the term fails. The
/// management cluster is watched only during the term, so its load does not grow with
/// the number of replicas.
///
/// `served` is what DNS serves as the term begins: a term that finds no decision to
/// resume starts from those answers (see [`LeaderTerm::resume_from_dns`]).
pub(crate) async fn lead(
    shared: &mut Shared,
    store: &Store,
    leader: Option<&Leader>,
    publisher: Publisher,
    served: ZoneRecords,
    stop: impl Future<Output = TermEnd>,
) -> TermEnd {
    if let Some((client, namespace)) = shared.policy_feed.management_client.clone() {
        let source = ManagementSource::spawn(client, namespace);
        let view = source.view();
        shared.policy_feed.management = Some((source, view));
    }
    let mut stop = std::pin::pin!(stop);
    // A panic anywhere in the term ends the term, not the process: DNS answers from its
    // own threads and the caller starts a new term.
    let end = AssertUnwindSafe(async {
        let (tx, mut results) = mpsc::channel::<ProbeResult>(4096);
        let mut term =
            match LeaderTerm::begin(shared, store, leader, publisher, &served, tx, &mut stop).await
            {
                Ok(term) => term,
                Err(end) => return end,
            };
        let mut decide_tick = tokio::time::interval(Duration::from_millis(100));
        let mut reload_tick = tokio::time::interval(Duration::from_secs(1));
        let state = term.shared.state.clone();
        let end = loop {
            tokio::select! {
                end = &mut stop => break end,
                Some(r) = results.recv() => term.on_probe(r),
                _ = state.overrides_changed.notified() => term.decide().await,
                _ = reload_tick.tick() => term.on_tick().await,
                _ = decide_tick.tick() => if term.due() { term.decide().await },
            }
        };
        term.end(end).await
    })
    .catch_unwind()
    .await
    .unwrap_or_else(|payload| {
        TermEnd::Failed(anyhow::anyhow!(
            "the leader term panicked: {}",
            guard::panic_text(payload.as_ref())
        ))
    });
    shared.policy_feed.management = None;
    if matches!(end, TermEnd::Failed(_)) {
        shared.metrics.term_failures.inc();
    }
    end
}

/// One term's state. Each event has one method; `lead` only dispatches.
struct LeaderTerm<'a> {
    shared: &'a mut Shared,
    store: &'a Store,
    leader: Option<&'a Leader>,
    publisher: Publisher,
    decision: Arc<Decision>,
    /// The compiled policies, shared with the decider thread.
    policies: Arc<Vec<engine::Policy>>,
    /// Runs decisions on a thread of its own, with a deadline.
    decider: guard::Decider,
    /// The policy documents in force.
    current: PolicySnapshot,
    fleet: Fleet,
    /// Member addresses found through member APIs, as last compiled.
    discovered: BTreeMap<(String, String), Vec<IpAddr>>,
    prober: Prober,
    /// CR status and Events (policy source `kubernetes`), in a task of their own so a
    /// hanging management API never holds up a decision.
    status: Option<StatusTask>,
    overrides: Vec<Override>,
    /// False while overrides cannot be read (the last ones read stay in force).
    overrides_ok: bool,
    /// Observations since the last decision.
    signals: Signals,
    /// Something changed since the last decision.
    dirty: bool,
    last_decide: tokio::time::Instant,
    /// What survived the last save (see [`saved_print`]).
    last_saved: u64,
    /// The fingerprint of `decision`'s entries.
    print: u64,
    /// The last decision could not be saved: the next one is saved whatever changed.
    unsaved: bool,
    /// The policy set in force could not be saved as the last good set: retried each
    /// tick, since a restart without the policy source starts from it.
    policies_unsaved: bool,
    /// Policies whose decision panics: not decided, their last answers kept.
    quarantine: Quarantine,
    /// Policies carrying the test fault annotation (only with test faults on).
    faults: BTreeMap<String, TestFault>,
    /// A sweeping policy change held back, with the set it would put in force.
    held: Option<(PolicyHold, PolicySnapshot)>,
    /// When the audit trail was last pruned.
    last_prune: Option<tokio::time::Instant>,
    /// When expired overrides were last removed.
    last_expiry_sweep: Option<tokio::time::Instant>,
}

impl<'a> LeaderTerm<'a> {
    /// Resumes the last decision and waits for a usable policy set (DNS keeps answering
    /// from its snapshot meanwhile), unless `stop` ends the term first.
    async fn begin(
        shared: &'a mut Shared,
        store: &'a Store,
        leader: Option<&'a Leader>,
        publisher: Publisher,
        served: &ZoneRecords,
        results: mpsc::Sender<ProbeResult>,
        stop: &mut std::pin::Pin<&mut impl Future<Output = TermEnd>>,
    ) -> Result<LeaderTerm<'a>, TermEnd> {
        let resume;
        let decision = match store.load_decision().await {
            Ok(d) => {
                resume = d.is_none();
                d.unwrap_or_default()
            }
            Err(e) => {
                return Err(TermEnd::Failed(
                    anyhow::Error::new(e).context("reading the last decision"),
                ));
            }
        };
        info!(
            revision = decision.revision,
            policies = decision.policies.len(),
            "resumed the last decision"
        );
        let (current, fresh) = tokio::select! {
            end = stop.as_mut() => return Err(end),
            current = usable_policies(&mut shared.policy_feed, store) => current,
        };
        // Documents that changed while no replica led are guarded like any other change:
        // against the last good set.
        let last_good = if fresh {
            store.load_policies().await.ok().flatten()
        } else {
            None
        };
        let prober = Prober::new(shared.config.defaults.probe.concurrency as usize, results)
            .map_err(|e| TermEnd::Failed(anyhow::Error::new(e).context("starting the prober")))?;
        let management = shared
            .policy_feed
            .management
            .as_ref()
            .map(|(source, _)| source.client());
        let cache = shared
            .credential_key
            .clone()
            .map(|key| crate::fleet::CredentialCache {
                store: store.clone(),
                key,
            });
        let fleet = Fleet::with_management(management.clone(), shared.namespace.clone())
            .with_credentials(cache, shared.config.member_credentials.recheck_interval);
        let status = management.map(|client| {
            StatusTask::spawn(client, Duration::from_secs(5), shared.identity.clone())
        });
        let mut term = LeaderTerm {
            shared,
            store,
            leader,
            publisher,
            last_saved: saved_print(fingerprint(&decision), &decision),
            print: fingerprint(&decision),
            unsaved: false,
            policies_unsaved: false,
            decision: Arc::new(decision),
            policies: Arc::new(Vec::new()),
            decider: guard::Decider::new(),
            current: PolicySnapshot::default(),
            fleet,
            discovered: BTreeMap::new(),
            prober,
            status,
            overrides: Vec::new(),
            overrides_ok: true,
            signals: Signals::default(),
            dirty: true,
            last_decide: tokio::time::Instant::now(),
            quarantine: Quarantine::new(),
            faults: BTreeMap::new(),
            held: None,
            last_prune: None,
            last_expiry_sweep: None,
        };
        let share = term.shared.config.policy_changes.max_removed_share;
        match last_good {
            Some(last) if sweep::check(&last, &current, share, SystemTime::now()).is_some() => {
                term.adopt(last).await;
                term.consider(current).await;
            }
            _ => {
                term.adopt(current).await;
                term.clear_hold().await;
            }
        }
        if resume {
            term.resume_from_dns(served);
        }
        Ok(term)
    }

    /// With no decision to resume (lost, or unreadable with its good copy), each
    /// health-checked policy starts from the answers DNS serves now, and keeps them
    /// until probes have confirmed every one of its targets: a restart never answers a
    /// dead primary again just because nobody remembered it was dead. (Without a
    /// health check nothing would ever confirm a target, so those start afresh.)
    fn resume_from_dns(&mut self, served: &ZoneRecords) {
        let checked: BTreeSet<String> = self
            .current
            .policies
            .iter()
            .filter(|p| p.spec.health_check.is_some())
            .map(crate::policies::policy_id)
            .collect();
        let zones: Vec<String> = self
            .shared
            .config
            .zone_origins()
            .iter()
            .map(|z| lifeline_crds::validate::normalize_name(z))
            .collect();
        let now = SystemTime::now();
        let mut decision = (*self.decision).clone();
        let mut resumed = 0usize;
        for policy in self.policies.iter().filter(|p| checked.contains(&p.id)) {
            let Some(set) = crate::publish::served_addresses(served, &zones, &policy.hostname)
            else {
                continue;
            };
            let mut answers: Vec<engine::Answer> = set
                .targets
                .iter()
                .map(|t| engine::Answer {
                    cluster: t.cluster.as_str().into(),
                    address: t.address,
                    region: t.region.as_str().into(),
                    weight: t.weight,
                })
                .collect();
            if answers.is_empty() {
                continue;
            }
            answers.sort_by(|a, b| (&a.cluster, a.address).cmp(&(&b.cluster, b.address)));
            decision.policies.insert(
                policy.id.clone(),
                Arc::new(engine::PolicyDecision::resumed_from(policy, answers, now)),
            );
            resumed += 1;
        }
        if resumed > 0 {
            info!(
                resumed,
                "no decision to resume: policies keep the answers DNS serves until probes confirm each target"
            );
            self.decision = Arc::new(decision);
            // Targets not yet listed by their member API are probed at the served
            // addresses (see `addresses_to_compile`).
            self.recompile();
        }
    }

    /// Saves the set in force as the last good set. A failure is counted, and the save
    /// is tried again each tick until it succeeds: until then a restart without the
    /// policy source would start from an older set, or from none.
    async fn save_policies(&mut self) {
        match self.store.save_policies(self.leader, &self.current).await {
            Ok(()) => {
                if self.policies_unsaved {
                    info!("the policy set in force is saved as the last good set again");
                }
                self.policies_unsaved = false;
            }
            Err(e) => {
                if !self.policies_unsaved {
                    warn!(error = %e, "cannot save the policy set; trying again every second");
                }
                self.shared.metrics.policy_save_errors.inc();
                self.policies_unsaved = true;
            }
        }
    }

    /// Puts a policy set in force: saved as the last good set, member watchers
    /// reconciled, then compiled.
    async fn adopt(&mut self, snapshot: PolicySnapshot) {
        self.current = snapshot;
        self.save_policies().await;
        // New documents may carry the fix: decide every policy again.
        self.quarantine.clear();
        self.faults = if self.shared.test_faults {
            self.current
                .policies
                .iter()
                .filter_map(|p| {
                    let kind = match p.metadata.annotations.as_ref()?.get(TEST_FAULT)?.as_str() {
                        "panic" => TestFault::Panic,
                        "hang" => TestFault::Hang,
                        "abort-before-publish" => TestFault::AbortBeforePublish,
                        "hang-before-save" => TestFault::HangBeforeSave,
                        _ => return None,
                    };
                    Some((crate::policies::policy_id(p), kind))
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        self.fleet.reconcile(&self.current, self.leader).await;
        *self.shared.state.known.write() = crate::admin::Known::of(&self.current);
        self.recompile();
    }

    /// Puts `incoming` in force, unless it would stop serving too many names at once:
    /// then it is held (the set in force stays) and reported, until it is released or
    /// a later change supersedes it.
    async fn consider(&mut self, incoming: PolicySnapshot) {
        let share = self.shared.config.policy_changes.max_removed_share;
        let Some(mut hold) = sweep::check(&self.current, &incoming, share, SystemTime::now())
        else {
            self.clear_hold().await;
            self.adopt(incoming).await;
            return;
        };
        if let Some((old, _)) = &self.held {
            if old.fingerprint == hold.fingerprint {
                return;
            }
            hold.since = old.since;
        }
        warn!(
            fingerprint = %hold.fingerprint,
            removed = hold.removed.len(),
            served = hold.served,
            names = ?hold.removed.iter().take(10).collect::<Vec<_>>(),
            reason = %hold.reason,
            "policy change held: the set in force keeps being served; release it with `lifeline ctl release {}`",
            hold.fingerprint
        );
        self.shared
            .metrics
            .held_names
            .set(hold.removed.len() as i64);
        if let Err(e) = self.store.save_policy_hold(self.leader, Some(&hold)).await {
            warn!(error = %e, "cannot record the held policy change");
        }
        if let Some(task) = &self.status {
            task.record_held(&hold, &self.current.policies);
        }
        self.held = Some((hold, incoming));
    }

    /// Forgets a held change (superseded, released, or none at the start of a term).
    async fn clear_hold(&mut self) {
        let had = self.held.take();
        self.shared.metrics.held_names.set(0);
        let stored = self.store.policy_hold().await.ok().flatten();
        if had.is_some() || stored.is_some() {
            if let Some((h, _)) = &had {
                info!(fingerprint = %h.fingerprint, "held policy change no longer held");
            }
            if let Err(e) = self.store.save_policy_hold(self.leader, None).await {
                warn!(error = %e, "cannot clear the held policy change");
            }
        }
    }

    /// Drops audit entries older than `audit.retention`, hourly, so the trail stays
    /// bounded.
    async fn prune_audit(&mut self) {
        if self
            .last_prune
            .is_some_and(|t| t.elapsed() < Duration::from_secs(3600))
        {
            return;
        }
        self.last_prune = Some(tokio::time::Instant::now());
        let before = SystemTime::now()
            .checked_sub(self.shared.config.audit.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match self.store.prune_audit(before).await {
            Ok(0) => {}
            Ok(n) => info!(removed = n, "audit entries past their retention removed"),
            Err(e) => warn!(error = %e, "cannot prune the audit trail"),
        }
    }

    /// Takes expired overrides out of the set in force, at most every 5 s, so the set
    /// stays bounded by what is active; the audit trail records each one.
    async fn drop_expired_overrides(&mut self) {
        let now = SystemTime::now();
        if !self.overrides_ok
            || !self.overrides.iter().any(|o| !o.is_active(now))
            || self
                .last_expiry_sweep
                .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        self.last_expiry_sweep = Some(tokio::time::Instant::now());
        match self
            .store
            .remove_overrides(move |o| !o.is_active(now), "expiry")
            .await
        {
            Ok(gone) if !gone.is_empty() => {
                info!(
                    removed = gone.len(),
                    "expired overrides left the set in force"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot remove expired overrides"),
        }
    }

    /// Applies the held change once an operator released it (by its fingerprint).
    async fn check_release(&mut self) {
        let Some((hold, _)) = &self.held else {
            return;
        };
        // A release applies to this hold, not to an earlier one of the same content that
        // was released and later undone (a minute allows for clock skew with `ctl`).
        let current = |r: &PolicyRelease| {
            r.fingerprint == hold.fingerprint && r.at + Duration::from_secs(60) >= hold.since
        };
        let release = match self.store.policy_release().await {
            Ok(Some(r)) if current(&r) => r,
            Ok(_) => return,
            Err(e) => {
                debug!(error = %e, "cannot read policy change releases");
                return;
            }
        };
        let Some((hold, incoming)) = self.held.take() else {
            return;
        };
        info!(
            fingerprint = %hold.fingerprint,
            by = %release.by,
            reason = %release.reason,
            removed = hold.removed.len(),
            "held policy change released; applying it"
        );
        self.clear_hold().await;
        self.adopt(incoming).await;
    }

    /// Compiles the policies in force with the addresses member APIs report, and hands
    /// the probe targets to the prober.
    fn recompile(&mut self) {
        self.discovered = self.fleet.discovered(&self.current);
        let set = policies::compile(
            &self.current.policies,
            &self.current.clusters,
            &self.addresses_to_compile(),
        );
        // Held once, here and by the decider; the prober keeps the probe specs.
        self.policies = Arc::new(set.policies);
        for w in &set.warnings {
            warn!(warning = %w, "policy set");
        }
        self.prober.set_targets(set.probes);
        self.dirty = true;
    }

    /// Member addresses to compile with: what member views report, and for targets
    /// whose view has not finished its first list (a new term, a member API that is
    /// down) the addresses they were last answered with, so a leader change or a
    /// restart never moves traffic to whichever member listed first. Compiling from
    /// these also keeps such targets probed: data-plane checks need no member API.
    fn addresses_to_compile(&self) -> BTreeMap<(String, String), Vec<IpAddr>> {
        let mut out = self.discovered.clone();
        for (id, prev) in &self.decision.policies {
            for a in prev.answers.iter().chain(&prev.last_good) {
                let key = (a.cluster.to_string(), id.clone());
                if self.discovered.contains_key(&key) {
                    continue;
                }
                let known = out.entry(key).or_default();
                if !known.contains(&a.address) {
                    known.push(a.address);
                }
            }
        }
        for known in out.values_mut() {
            known.sort();
        }
        out
    }

    fn on_probe(&mut self, r: ProbeResult) {
        let result = if r.ok { "ok" } else { "fail" };
        self.shared
            .metrics
            .probes
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        self.signals
            .targets
            .entry(r.key)
            .or_default()
            .observations
            .push(Observation {
                at: r.at,
                ok: r.ok,
                detail: r.detail,
            });
        self.dirty = true;
    }

    /// Once a second: reloaded documents, status for the CRs, and member views.
    async fn on_tick(&mut self) {
        if self.shared.policy_feed.changed() {
            match self.shared.policy_feed.load() {
                Ok(snapshot) => {
                    info!(
                        policies = snapshot.policies.len(),
                        clusters = snapshot.clusters.len(),
                        "policy documents reloaded"
                    );
                    self.consider(snapshot).await;
                }
                Err(problems) => {
                    self.shared.metrics.policy_errors.inc();
                    for p in &problems {
                        warn!(problem = %p, "policy documents are invalid; keeping the last good set");
                    }
                }
            }
        }
        if let (Some(task), Some((_, view))) = (
            self.status.as_ref(),
            self.shared.policy_feed.management.as_ref(),
        ) {
            let view = view.borrow().clone();
            task.update(StatusInput {
                decision: self.decision.clone(),
                policies: view.policies.into_values().collect(),
                clusters: view.clusters.into_values().collect(),
                problems: view.problems,
                views: self.fleet.views(),
                unloaded: self.fleet.unloaded(),
                quarantined: self.quarantine.clone(),
                held: self.held.as_ref().map(|(h, _)| h.clone()),
                set_problems: self.shared.policy_feed.set_problems.clone(),
            });
        }
        if self.policies_unsaved {
            self.save_policies().await;
        }
        self.check_release().await;
        self.prune_audit().await;
        self.drop_expired_overrides().await;
        let unreadable = self.store.unreadable();
        if unreadable.len() as i64 != self.shared.metrics.store_unreadable.get() {
            for problem in &unreadable {
                tracing::error!(%problem, "a stored file is unreadable; its last good copy is in force and changes to it are refused until it is repaired or removed");
            }
            self.shared
                .metrics
                .store_unreadable
                .set(unreadable.len() as i64);
        }
        // A member kubeconfig that could not be loaded is tried again (with backoff).
        if self.fleet.reload_due() {
            self.fleet.reconcile(&self.current, self.leader).await;
        }
        // Member views: new addresses recompile the set; readiness becomes observations
        // for policies without a health check.
        if self.fleet.changed() {
            if self.fleet.discovered(&self.current) != self.discovered {
                self.recompile();
            }
            for (key, obs) in self.fleet.hints(&self.current, SystemTime::now()) {
                self.signals
                    .targets
                    .entry(key)
                    .or_default()
                    .observations
                    .push(obs);
            }
            self.dirty = true;
        }
    }

    /// Whether the 100 ms tick should decide: something changed, or a second passed
    /// (hold-downs, ramps and expiries move with time).
    fn due(&self) -> bool {
        self.dirty || self.last_decide.elapsed() >= Duration::from_secs(1)
    }

    /// Whether a policy with test fault `fault` changes its (non-empty) answers in `next`.
    fn fault_hit(&self, fault: TestFault, next: &Decision) -> bool {
        self.faults.iter().any(|(id, f)| {
            let before = self.decision.policies.get(id).map(|p| &p.answers);
            *f == fault
                && before.is_some_and(|b| !b.is_empty())
                && before != next.policies.get(id).map(|p| &p.answers)
        })
    }

    /// Decides, shows the decision in status, publishes it, and saves it when something
    /// that must survive a restart changed.
    async fn decide(&mut self) {
        // A store that cannot be read keeps the last overrides known: losing a source
        // must not drop an operator's drain.
        match self.store.overrides().await {
            Ok(o) => {
                if !self.overrides_ok {
                    info!("overrides readable again");
                }
                self.overrides_ok = true;
                self.overrides = o;
            }
            // Logged once per outage, not once per decision.
            Err(e) if self.overrides_ok => {
                self.overrides_ok = false;
                warn!(error = %e, "cannot read overrides; using the last ones read");
            }
            Err(_) => {}
        }
        let now = SystemTime::now();
        for (key, source) in self.fleet.sources(&self.current) {
            self.signals.targets.entry(key).or_default().source = source;
        }
        let fault = (!self.faults.is_empty()).then(|| {
            let faults = self.faults.clone();
            Arc::new(move |set: &[engine::Policy]| {
                for p in set {
                    match faults.get(&p.id) {
                        Some(TestFault::Panic) => panic!("test fault in policy {}", p.id),
                        Some(TestFault::Hang) => loop {
                            std::thread::sleep(Duration::from_secs(3600));
                        },
                        Some(TestFault::AbortBeforePublish | TestFault::HangBeforeSave) | None => {}
                    }
                }
            }) as Arc<guard::Fault<'static>>
        });
        let inputs = guard::Owned {
            config: self.shared.config.engine.clone(),
            policies: self.policies.clone(),
            signals: Arc::new(std::mem::take(&mut self.signals)),
            overrides: Arc::new(self.overrides.clone()),
            previous: self.decision.clone(),
            now,
            fault,
        };
        let next = self
            .decider
            .decide(inputs, &mut self.quarantine, DECIDE_LIMIT)
            .await;
        if *self.shared.state.quarantined.read() != self.quarantine {
            let newly: Quarantine = {
                let known = self.shared.state.quarantined.read();
                self.quarantine
                    .iter()
                    .filter(|(id, _)| !known.contains_key(*id))
                    .map(|(id, why)| (id.clone(), why.clone()))
                    .collect()
            };
            if let (Some(task), Some((_, view))) = (
                self.status.as_ref(),
                self.shared.policy_feed.management.as_ref(),
            ) {
                task.record_quarantined(&newly, &view.borrow().policies);
            }
            *self.shared.state.quarantined.write() = self.quarantine.clone();
        }
        self.shared
            .metrics
            .quarantined
            .set(self.quarantine.len() as i64);
        self.signals = Signals::default();
        self.dirty = false;
        self.last_decide = tokio::time::Instant::now();
        let shared = &*self.shared;
        shared.metrics.decisions.inc();
        log_changes(&self.decision, &next);
        if let (Some(task), Some((_, view))) =
            (self.status.as_ref(), shared.policy_feed.management.as_ref())
            && next.revision != self.decision.revision
        {
            task.record_changes(&self.decision, &next, &view.borrow().policies);
        }
        // Status shows the decision before it is published, so the admin API never
        // lags behind what DNS answers.
        let next = Arc::new(next);
        *shared.state.decision.write() = next.clone();
        *shared.state.decision_read_at.write() = None;
        shared.state.decided.store(true, Ordering::Relaxed);
        // Saved before it is published: a leader that dies in between hands its
        // successor this decision, never an older one that could bring back a target
        // whose failover DNS already answers.
        // Once per process: a successor in the same process (tests run replicas side by
        // side) decides normally.
        static HUNG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if self.fault_hit(TestFault::HangBeforeSave, &next) && !HUNG.swap(true, Ordering::Relaxed) {
            tracing::error!("test fault: the leader stops between deciding and saving a decision");
            std::future::pending::<()>().await;
        }
        // The same entries as the decision before have its fingerprint: not hashed again.
        let print = if next.shares_entries_with(&self.decision) {
            self.print
        } else {
            fingerprint(&next)
        };
        let saved = saved_print(print, &next);
        if self.unsaved || saved != self.last_saved || next.revision != self.decision.revision {
            self.unsaved = true;
            match self.store.save_decision(self.leader, &next).await {
                Ok(()) => {
                    self.last_saved = saved;
                    self.unsaved = false;
                }
                // Published all the same, and saved again at the next decision (at least
                // once a second, whether or not anything changes). Holding
                // the answers back until the store takes them would keep a dead target
                // answered for as long as the disk (or etcd) fails; publishing unsaved
                // only risks, after a crash in this window, a successor starting from the
                // older decision until its probes confirm the failure again. On etcd a
                // leader that cannot save cannot publish either: both writes are fenced.
                Err(e) => {
                    shared.metrics.save_errors.inc();
                    warn!(error = %e, "cannot save the decision; publishing it unsaved");
                }
            }
        }
        if self.fault_hit(TestFault::AbortBeforePublish, &next) {
            tracing::error!("test fault: aborting between saving and publishing a decision");
            std::process::abort();
        }
        let mut published = true;
        for update in self.publisher.updates(&next, now) {
            let zone = update.zone().to_owned();
            if let Err(e) = self.store.publish(self.leader, update).await {
                shared.metrics.publish_errors.inc();
                warn!(%zone, error = %e, "publishing failed; republishing the whole zone next time");
                self.publisher.reset();
                published = false;
                break;
            }
        }
        shared.metrics.observe(&next, now);
        self.decision = next;
        self.print = print;
        if !published {
            // Retry soon rather than waiting for the next change.
            self.dirty = true;
        }
    }

    /// Stops probing and saves the decision; a failed save turns the end into `Failed`.
    async fn end(self, end: TermEnd) -> TermEnd {
        drop(self.prober);
        match self.store.save_decision(self.leader, &self.decision).await {
            Ok(()) => end,
            Err(e) => TermEnd::Failed(anyhow::Error::new(e).context("saving the decision")),
        }
    }
}

/// Policies to start a term with: fresh if valid, else the last good set; with neither,
/// polls once a second (DNS keeps answering from its snapshot) rather than publish an
/// empty set.
/// The flag is true for freshly loaded documents, false for the stored set.
async fn usable_policies(source: &mut PolicyFeed, store: &Store) -> (PolicySnapshot, bool) {
    let mut waiting_logged = false;
    loop {
        match source.load() {
            Ok(snapshot) => return (snapshot, true),
            Err(problems) => {
                match store.load_policies().await {
                    Ok(Some(s)) => {
                        for p in &problems {
                            warn!(problem = %p, "policy documents unavailable; using the last good set");
                        }
                        return (s, false);
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
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A hash of what must survive a restart: every target's health and drain, by policy
/// and cluster. The decision is saved only when it changes (streak counters alone are
/// not worth an fsync each probe). A hash, not a copy: a copy of 100,000 targets held
/// between decisions cost 8 MiB.
fn fingerprint(d: &Decision) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (id, p) in &d.policies {
        id.hash(&mut h);
        p.targets.len().hash(&mut h);
        for (cluster, t) in &p.targets {
            cluster.hash(&mut h);
            t.health.hash(&mut h);
            t.drained.hash(&mut h);
        }
    }
    h.finish()
}

/// What a saved decision must match: its entries' fingerprint and its alarms. Followers
/// show the saved decision, so an alarm raised or cleared is saved even when no target
/// changed (the systemic guard holds every target where it was).
fn saved_print(entries: u64, d: &Decision) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    entries.hash(&mut h);
    for a in &d.alarms {
        std::mem::discriminant(&a.kind).hash(&mut h);
    }
    h.finish()
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
