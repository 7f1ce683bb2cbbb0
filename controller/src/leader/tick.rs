//! What the leader does between decisions: probe results become observations, and once
//! a second it reloads documents, shows CR status, keeps the store tidy and follows the
//! member views.

use std::time::{Duration, SystemTime};

use lifeline_engine::Observation;
use tracing::{info, warn};

use super::term::LeaderTerm;
use crate::{kubernetes::status::StatusInput, metrics::ResultLabels, probe::ProbeResult};

impl LeaderTerm<'_> {
    /// A probe result: counted, and kept for the next decision.
    pub fn on_probe(&mut self, r: ProbeResult) {
        let result = if r.ok { "ok" } else { "fail" };
        let labels = ResultLabels {
            result: result.into(),
        };
        self.shared.metrics.probes.get_or_create(&labels).inc();
        let observation = Observation {
            at: r.at,
            ok: r.ok,
            detail: r.detail,
        };
        let target = self.signals.targets.entry(r.key).or_default();
        target.observations.push(observation);
        self.dirty = true;
    }

    /// Once a second: reloaded documents, status for the CRs, the store's upkeep, and
    /// member views.
    pub async fn on_tick(&mut self) {
        self.reload_documents().await;
        self.update_status();
        if self.policies_unsaved {
            self.save_policies().await;
        }
        self.check_release().await;
        self.prune_audit().await;
        self.drop_expired_overrides().await;
        self.report_unreadable();
        self.follow_fleet().await;
    }

    /// Saves the set in force as the last good set. A failure is counted, and the save
    /// is tried again each tick until it succeeds: until then a restart without the
    /// policy source would start from an older set, or from none.
    pub async fn save_policies(&mut self) {
        match self.writer.save_policies(&self.current).await {
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

    /// Considers the documents again when they changed; invalid ones leave the set in
    /// force as it is.
    async fn reload_documents(&mut self) {
        let Some(reloaded) = self.shared.policy_feed.reload() else {
            return;
        };
        match reloaded {
            Ok(snapshot) => {
                info!(
                    policies = snapshot.policies.len(),
                    clusters = snapshot.clusters.len(),
                    "policy documents reloaded"
                );
                self.consider(snapshot).await;
            }
            Err(unusable) => {
                let problems = unusable.problems();
                self.shared.metrics.policy_errors.inc();
                for p in &problems {
                    warn!(problem = %p, "policy documents are invalid; keeping the last good set");
                }
            }
        }
    }

    /// Hands the status task what the CRs' status shows.
    fn update_status(&self) {
        let (Some(task), Some((_, view))) = (&self.status, &self.shared.policy_feed.management)
        else {
            return;
        };
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

    /// Logs and counts stored files whose last good copy is in force, when their number
    /// changes.
    fn report_unreadable(&self) {
        let unreadable = self.store.unreadable();
        let gauge = &self.shared.metrics.store_unreadable;
        if unreadable.len() as i64 != gauge.get() {
            for problem in &unreadable {
                tracing::error!(%problem, "a stored file is unreadable; its last good copy is in force and changes to it are refused until it is repaired or removed");
            }
            gauge.set(unreadable.len() as i64);
        }
    }

    /// Member views: a kubeconfig that could not be loaded is tried again (with
    /// backoff); new addresses recompile the set; readiness becomes observations for
    /// policies without a health check.
    async fn follow_fleet(&mut self) {
        if self.fleet.reload_due() {
            self.fleet.reconcile(&self.current, self.writer).await;
        }
        if !self.fleet.changed() {
            return;
        }
        if self.fleet.discovered(&self.current) != self.discovered {
            self.recompile();
        }
        for (key, obs) in self.fleet.hints(&self.current, SystemTime::now()) {
            let target = self.signals.targets.entry(key).or_default();
            target.observations.push(obs);
        }
        self.dirty = true;
    }

    /// Drops audit entries older than `audit.retention`, hourly, so the trail stays
    /// bounded.
    async fn prune_audit(&mut self) {
        let hour = Duration::from_secs(3600);
        if self.last_prune.is_some_and(|t| t.elapsed() < hour) {
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
        let recently =
            (self.last_expiry_sweep).is_some_and(|t| t.elapsed() < Duration::from_secs(5));
        let expired = self.overrides.list.iter().any(|o| !o.is_active(now));
        if self.overrides.unreadable || !expired || recently {
            return;
        }
        self.last_expiry_sweep = Some(tokio::time::Instant::now());
        let removed = (self.store)
            .remove_overrides(move |o| !o.is_active(now), "expiry")
            .await;
        match removed {
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
}
