//! One term's state, how it begins and ends, and how a policy set is put in force:
//! [`LeaderTerm::adopt`] is the one way in, and [`LeaderTerm::recompile`] the one place
//! it is compiled into probe targets and engine policies.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use lifeline_crds::document::PolicySnapshot;
use lifeline_engine::{self as engine, Decision, Override, Signals};
use lifeline_model::hold::PolicyHold;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    faults::Faults,
    feed::usable_policies,
    panic_boundary::{Decider, Quarantine},
    saved::Saved,
    shared::{Shared, TermEnd, TermError},
};
use crate::{
    admin::Known,
    kubernetes::fleet::{CredentialCache, Fleet},
    kubernetes::status::StatusTask,
    policies,
    probe::{ProbeResult, Prober},
    publish::{Publisher, ZoneRecords},
    store::{Store, Writer},
};

/// The overrides in force.
#[derive(Debug, Default)]
pub(super) struct Overrides {
    pub list: Vec<Override>,
    /// The store cannot be read: the last overrides read stay in force.
    pub unreadable: bool,
}

/// One term's state. Each event has one method; `lead` only dispatches.
pub(super) struct LeaderTerm<'a> {
    pub shared: &'a mut Shared,
    /// Reads (overrides, releases, the last good set): any replica may make them.
    pub store: Store,
    /// Writes: only a leader holds one.
    pub writer: Writer<'a>,
    pub publisher: Publisher,
    pub decision: Arc<Decision>,
    /// What of `decision` is known to be saved.
    pub saved: Saved,
    /// The compiled policies, shared with the decider thread.
    pub policies: Arc<Vec<engine::Policy>>,
    /// Runs decisions on a thread of its own, with a deadline.
    pub decider: Decider,
    /// The policy documents in force, and the clusters and policies overrides may name.
    pub current: PolicySnapshot,
    pub known: Arc<Known>,
    /// The policy set in force could not be saved as the last good set: retried each
    /// tick, since a restart without the policy source starts from it.
    pub policies_unsaved: bool,
    pub fleet: Fleet,
    /// Member addresses found through member APIs, as last compiled.
    pub discovered: BTreeMap<(String, String), Vec<IpAddr>>,
    pub prober: Prober,
    /// CR status and Events (policy source `kubernetes`), in a task of their own so a
    /// hanging management API never holds up a decision.
    pub status: Option<StatusTask>,
    pub overrides: Overrides,
    /// Observations since the last decision.
    pub signals: Signals,
    /// Something changed since the last decision.
    pub dirty: bool,
    pub last_decide: tokio::time::Instant,
    /// Policies whose decision panics: not decided, their last answers kept.
    pub quarantine: Quarantine,
    pub faults: Faults,
    /// A sweeping policy change held back, with the set it would put in force.
    pub held: Option<(PolicyHold, PolicySnapshot)>,
    /// When the audit trail was last pruned, and expired overrides last removed.
    pub last_prune: Option<tokio::time::Instant>,
    pub last_expiry_sweep: Option<tokio::time::Instant>,
}

impl<'a> LeaderTerm<'a> {
    /// Resumes the last decision and waits for a usable policy set (DNS keeps answering
    /// from its snapshot meanwhile), unless `stop` ends the term first.
    pub async fn begin(
        shared: &'a mut Shared,
        writer: Writer<'a>,
        publisher: Publisher,
        served: &ZoneRecords,
        results: mpsc::Sender<ProbeResult>,
        stop: &mut std::pin::Pin<&mut impl Future<Output = TermEnd>>,
    ) -> Result<LeaderTerm<'a>, TermEnd> {
        let store = writer.store();
        let stored = store.load_decision().await;
        let stored = stored.map_err(|e| TermEnd::Failed(TermError::ReadDecision(e)))?;
        let resume = stored.is_none();
        let decision = stored.unwrap_or_default();
        info!(
            revision = decision.revision,
            policies = decision.policies.len(),
            "resumed the last decision"
        );
        let (current, fresh) = tokio::select! {
            end = stop.as_mut() => return Err(end),
            current = usable_policies(&mut shared.policy_feed, &store) => current,
        };
        // Documents that changed while no replica led are guarded like any other change:
        // against the last good set.
        let last_good = match fresh {
            true => store.load_policies().await.ok().flatten(),
            false => None,
        };
        let concurrency = shared.config.defaults.probe.concurrency as usize;
        let prober =
            Prober::new(concurrency, results).map_err(|e| TermEnd::Failed(TermError::Prober(e)))?;
        let (fleet, status) = Self::watchers(shared, &store);
        let mut term = LeaderTerm {
            shared,
            store,
            writer,
            publisher,
            saved: Saved::of(&decision),
            decision: Arc::new(decision),
            policies: Arc::new(Vec::new()),
            decider: Decider::new(),
            current: PolicySnapshot::default(),
            known: Arc::default(),
            policies_unsaved: false,
            fleet,
            discovered: BTreeMap::new(),
            prober,
            status,
            overrides: Overrides::default(),
            signals: Signals::default(),
            dirty: true,
            last_decide: tokio::time::Instant::now(),
            quarantine: Quarantine::new(),
            faults: Faults::default(),
            held: None,
            last_prune: None,
            last_expiry_sweep: None,
        };
        term.put_first_set(current, last_good).await;
        if resume {
            term.resume_from_dns(served);
        }
        Ok(term)
    }

    /// The member watchers and the CR status task, with the management cluster's client
    /// when policies come from it.
    fn watchers(shared: &Shared, store: &Store) -> (Fleet, Option<StatusTask>) {
        let management = shared
            .policy_feed
            .management
            .as_ref()
            .map(|(source, _)| source.client());
        let cache = shared.credential_key.clone().map(|key| CredentialCache {
            store: store.clone(),
            key,
        });
        let fleet = Fleet::with_management(management.clone(), shared.namespace.clone())
            .with_credentials(cache, shared.config.member_credentials.recheck_interval);
        let status = management.map(|client| {
            StatusTask::spawn(client, Duration::from_secs(5), shared.identity.clone())
        });
        (fleet, status)
    }

    /// With no decision to resume (lost, or unreadable with its good copy), each
    /// health-checked policy starts from the answers DNS serves now, and keeps them
    /// until probes have confirmed every one of its targets: a restart never answers a
    /// dead primary again just because nobody remembered it was dead. (Without a
    /// health check nothing would ever confirm a target, so those start afresh.)
    fn resume_from_dns(&mut self, served: &ZoneRecords) {
        let checked: BTreeSet<String> = (self.current.policies.iter())
            .filter(|p| p.spec.health_check.is_some())
            .map(lifeline_crds::FailoverPolicy::id)
            .collect();
        let now = SystemTime::now();
        let mut decision = (*self.decision).clone();
        let mut resumed = 0usize;
        for policy in self.policies.iter().filter(|p| checked.contains(&p.id)) {
            let Some(answers) = self.publisher.served_answers(served, &policy.hostname) else {
                continue;
            };
            let resumed_policy = engine::PolicyDecision::resumed_from(policy, answers, now);
            decision
                .policies
                .insert(policy.id.clone(), Arc::new(resumed_policy));
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

    /// Puts a policy set in force: saved as the last good set, member watchers
    /// reconciled, then compiled.
    pub async fn adopt(&mut self, snapshot: PolicySnapshot) {
        self.current = snapshot;
        self.save_policies().await;
        // New documents may carry the fix: decide every policy again.
        self.quarantine.clear();
        self.faults = Faults::of(self.shared.test_faults, &self.current);
        self.fleet.reconcile(&self.current, self.writer).await;
        self.known = Arc::new(Known::of(&self.current));
        self.show_known();
        self.recompile();
    }

    /// Compiles the policies in force with the addresses member APIs report, and hands
    /// the probe targets to the prober.
    pub fn recompile(&mut self) {
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

    /// Stops probing and saves the decision; a failed save turns the end into `Failed`.
    pub async fn end(self, end: TermEnd) -> TermEnd {
        drop(self.prober);
        match self.writer.save_decision(&self.decision).await {
            Ok(()) => end,
            Err(e) => TermEnd::Failed(TermError::SaveDecision(e)),
        }
    }
}
