//! One decision round, in the order that keeps every replica safe:
//!
//! ```text
//!  read overrides ─► next decision ─► show ─► persist ─► publish ─► metrics
//! ```
//!
//! Status shows a decision before it is published, so the admin API never lags behind
//! what DNS answers. A decision is saved before it is published: a leader that dies in
//! between hands its successor this decision, never an older one that could bring back
//! a target whose failover DNS already answers.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use lifeline_engine::Decision;
use tracing::{info, warn};

use super::{
    panic_boundary::Owned,
    saved::{fingerprint, saved_print},
    term::{LeaderTerm, Overrides},
};
use crate::admin::View;

/// Longest a decision may take before it counts as hung (deciding 10,000 policies takes
/// well under a second).
const DECIDE_LIMIT: Duration = Duration::from_secs(5);

impl LeaderTerm<'_> {
    /// Decides, shows the decision, saves it when something that must survive a restart
    /// changed, and publishes it.
    pub async fn round(&mut self) {
        self.read_overrides().await;
        let now = SystemTime::now();
        let next = self.next_decision(now).await;
        self.show(&next);
        self.faults.before_save(&self.decision, &next).await;
        self.persist(&next).await;
        self.faults.before_publish(&self.decision, &next);
        self.publish(&next, now).await;
        self.shared.metrics.observe(&next, now);
        self.decision = next;
    }

    /// Whether the 100 ms tick should decide: something changed, or a second passed
    /// (hold-downs, ramps and expiries move with time).
    pub fn due(&self) -> bool {
        self.dirty || self.last_decide.elapsed() >= Duration::from_secs(1)
    }

    /// Reads the overrides. A store that cannot be read keeps the last overrides known:
    /// losing a source must not drop an operator's drain.
    async fn read_overrides(&mut self) {
        match self.store.overrides().await {
            Ok(list) => {
                if self.overrides.unreadable {
                    info!("overrides readable again");
                }
                self.overrides = Overrides {
                    list,
                    unreadable: false,
                };
            }
            // Logged once per outage, not once per decision.
            Err(e) if !self.overrides.unreadable => {
                self.overrides.unreadable = true;
                warn!(error = %e, "cannot read overrides; using the last ones read");
            }
            Err(_) => {}
        }
    }

    /// The engine's next decision from the signals gathered since the last one, behind
    /// the panic boundary.
    async fn next_decision(&mut self, now: SystemTime) -> Arc<Decision> {
        for (key, source) in self.fleet.sources(&self.current) {
            self.signals.targets.entry(key).or_default().source = source;
        }
        let inputs = Owned {
            config: self.shared.config.engine.clone(),
            policies: self.policies.clone(),
            signals: Arc::new(std::mem::take(&mut self.signals)),
            overrides: Arc::new(self.overrides.list.clone()),
            previous: self.decision.clone(),
            now,
            fault: self.faults.in_decision(),
        };
        let next = (self.decider)
            .decide(inputs, &mut self.quarantine, DECIDE_LIMIT)
            .await;
        self.dirty = false;
        self.last_decide = tokio::time::Instant::now();
        self.shared.metrics.decisions.inc();
        Arc::new(next)
    }

    /// Shows `next`: the admin view (one value, replaced whole), logs, metrics, and the
    /// CRs' Events.
    fn show(&mut self, next: &Arc<Decision>) {
        let view = self.shared.state.view();
        let metrics = &self.shared.metrics;
        metrics.quarantined.set(self.quarantine.len() as i64);
        log_changes(&self.decision, next);
        if let (Some(task), Some((_, management))) =
            (&self.status, &self.shared.policy_feed.management)
        {
            let policies = &management.borrow().policies;
            if view.quarantined != self.quarantine {
                let newly = (self.quarantine.iter())
                    .filter(|(id, _)| !view.quarantined.contains_key(*id))
                    .map(|(id, why)| (id.clone(), why.clone()))
                    .collect();
                task.record_quarantined(&newly, policies);
            }
            if next.revision != self.decision.revision {
                task.record_changes(&self.decision, next, policies);
            }
        }
        self.shared.state.show(View {
            decision: next.clone(),
            decided: true,
            quarantined: self.quarantine.clone(),
            known: self.known.clone(),
            followed_at: None,
        });
    }

    /// Shows a new set of clusters and policies overrides may name, at once.
    pub fn show_known(&self) {
        let view = self.shared.state.view();
        self.shared.state.show(View {
            known: self.known.clone(),
            ..(*view).clone()
        });
    }

    /// Saves `next` when what must survive a restart changed, or the last save failed.
    async fn persist(&mut self, next: &Decision) {
        // The same entries as the decision before have its fingerprint: not hashed again.
        if !next.shares_entries_with(&self.decision) {
            self.saved.print = fingerprint(next);
        }
        let wanted = saved_print(self.saved.print, next);
        if !self.saved.failed
            && wanted == self.saved.last
            && next.revision == self.decision.revision
        {
            return;
        }
        match self.writer.save_decision(next).await {
            Ok(()) => {
                self.saved.last = wanted;
                self.saved.failed = false;
            }
            // Published all the same, and saved again at the next decision (at least
            // once a second, whether or not anything changes). Holding the answers back
            // until the store takes them would keep a dead target answered for as long
            // as the disk (or etcd) fails; publishing unsaved only risks, after a crash
            // in this window, a successor starting from the older decision until its
            // probes confirm the failure again. On etcd a leader that cannot save
            // cannot publish either: both writes are fenced.
            Err(e) => {
                self.saved.failed = true;
                self.shared.metrics.save_errors.inc();
                warn!(error = %e, "cannot save the decision; publishing it unsaved");
            }
        }
    }

    /// Publishes what changed in `next`. A failure makes the next update a whole zone,
    /// and the next round come soon.
    async fn publish(&mut self, next: &Decision, now: SystemTime) {
        for update in self.publisher.updates(next, now) {
            let zone = update.zone().to_owned();
            if let Err(e) = self.writer.publish(update).await {
                self.shared.metrics.publish_errors.inc();
                warn!(%zone, error = %e, "publishing failed; republishing the whole zone next time");
                self.publisher.reset();
                self.dirty = true;
                return;
            }
        }
    }
}

fn log_changes(before: &Decision, after: &Decision) {
    if after.revision != before.revision {
        for (id, p) in &after.policies {
            if before.policies.get(id).map(|b| &b.answers) != Some(&p.answers) {
                let answers: Vec<String> = (p.answers.iter())
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
