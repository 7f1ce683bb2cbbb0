//! The controller's own metrics (the DNS server registers its own beside them).

use std::time::SystemTime;

use lifeline_engine::{Decision, Health};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub result: String,
}

/// Controller metrics.
#[derive(Default)]
pub(crate) struct Metrics {
    pub decisions: Counter,
    answer_changes: Counter,
    revision: Gauge,
    decision_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    targets: Family<StateLabels, Gauge>,
    alarms: Gauge,
    pub probes: Family<ResultLabels, Counter>,
    pub policy_errors: Counter,
    pub quarantined: Gauge,
    pub held_names: Gauge,
    pub store_unreadable: Gauge,
    pub term_failures: Counter,
    pub publish_errors: Counter,
    pub save_errors: Counter,
    pub policy_save_errors: Counter,
}

impl Metrics {
    pub fn register(&self, r: &mut Registry) {
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
            "lifeline_leader_term_failures",
            "Leadership terms that failed or panicked (the controller restarts; DNS answers on)",
            self.term_failures.clone(),
        );
        r.register(
            "lifeline_quarantined_policies",
            "Policies not decided because deciding them panics (their last answers stay)",
            self.quarantined.clone(),
        );
        r.register(
            "lifeline_policy_change_held_names",
            "Names a held policy change would stop serving (0: nothing held)",
            self.held_names.clone(),
        );
        r.register(
            "lifeline_store_unreadable_files",
            "Stored files that cannot be read; their last good copy is in force",
            self.store_unreadable.clone(),
        );
        r.register(
            "lifeline_publish_errors",
            "Updates the DNS shim refused",
            self.publish_errors.clone(),
        );
        r.register(
            "lifeline_decision_save_errors",
            "Decisions published without having been saved (the store refused or failed the write)",
            self.save_errors.clone(),
        );
        r.register(
            "lifeline_policy_save_errors",
            "Failed saves of the last good policy set (retried every second until one succeeds)",
            self.policy_save_errors.clone(),
        );
    }

    pub fn observe(&self, d: &Decision, now: SystemTime) {
        self.revision.set(d.revision as i64);
        self.decision_age.set(d.changed_at.map_or(0.0, |t| {
            now.duration_since(t).unwrap_or_default().as_secs_f64()
        }));
        self.alarms.set(d.alarms.len() as i64);
        // Counted without an allocation per target: this runs at every decision.
        let mut counts = [
            ("Unknown", 0i64),
            ("Healthy", 0),
            ("Unhealthy", 0),
            ("Recovering", 0),
            ("Ramping", 0),
            ("Draining", 0),
        ];
        for p in d.policies.values() {
            for t in p.targets.values() {
                let i = match (t.drained, t.health) {
                    (true, _) => 5,
                    (false, Health::Unknown) => 0,
                    (false, Health::Healthy) => 1,
                    (false, Health::Unhealthy) => 2,
                    (false, Health::Recovering) => 3,
                    (false, Health::Ramping) => 4,
                };
                counts[i].1 += 1;
            }
        }
        for (state, n) in counts {
            self.targets
                .get_or_create(&StateLabels {
                    state: state.to_owned(),
                })
                .set(n);
        }
    }
}
