//! One decision, as a short sequence of phases over one record per policy and target:
//!
//! ```text
//!  entries             which policies are decided again; their targets' evidence folded in
//!  hold_mass_failures  the blast-radius guard holds back many failures at once
//!  start_ramps         paced failback: recovered targets ramp, a few policies at a time
//!  ramp_shares         each ramping target's share of its weight
//!  answers             each policy's answers, and the decision's revision
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    ops::Range,
    sync::Arc,
    time::SystemTime,
};

use crate::{
    Alarm, Decision, EngineConfig, Health, Outcome, Override, Policy, PolicyDecision, PolicyId,
    Signals, SourceState, TargetSignal, TargetSpec, TargetState, blast_radius,
    entry::{Entry, Target},
    failback, health, overrides, selection,
};

/// Borrowed lookups by policy id, with a hasher much faster than the default for short
/// keys.
type Index<'a, V> = HashMap<&'a str, V, foldhash::fast::RandomState>;

/// See [`crate::decide`]; `reuse: false` decides every policy afresh.
pub(crate) fn decide_with(
    config: &EngineConfig,
    policies: &[Policy],
    signals: &Signals,
    overrides: &[Override],
    previous: &Decision,
    now: SystemTime,
    reuse: bool,
) -> Decision {
    let overrides = overrides::active(overrides, now);
    let signals = SignalIndex::of(signals);
    // While the guard holds, every policy is decided each round: its release touches
    // targets of every policy, and it is rare.
    let tripped_before = blast_radius::was_tripped(&config.blast_radius, previous);
    let reuse = reuse && !tripped_before;
    let mut entries = entries(policies, &signals, &overrides, previous, now, reuse);
    let alarms = blast_radius::hold_mass_failures(
        &config.blast_radius,
        &mut entries,
        previous,
        tripped_before,
        now,
    );
    failback::start_ramps(&mut entries, config.max_concurrent_ramps, now);
    failback::ramp_shares(&mut entries, now);
    answers(entries, &overrides, previous, alarms, now)
}

/// Each policy's entry: kept whole when nothing is new for it and none of its states
/// moves with time (a hold-down or ramp in progress), else its targets with their new
/// evidence folded in.
fn entries<'a>(
    policies: &'a [Policy],
    signals: &SignalIndex<'_>,
    overrides: &[&Override],
    previous: &'a Decision,
    now: SystemTime,
    reuse: bool,
) -> Vec<Entry<'a>> {
    let previous_of: Index<&Arc<PolicyDecision>> = (previous.policies.iter())
        .map(|(id, p)| (id.as_str(), p))
        .collect();
    let at_rest = |p: &PolicyDecision| {
        (p.targets.values()).all(|t| {
            matches!(
                t.health,
                Health::Unknown | Health::Healthy | Health::Unhealthy
            )
        })
    };
    let entry = |policy: &'a Policy| {
        let basis = overrides::basis(policy, overrides);
        let prev = previous_of.get(policy.id.as_str()).copied();
        let kept = reuse
            && prev.is_some_and(|p| p.basis == basis && !signals.news(&policy.id) && at_rest(p));
        let fold = |spec: &'a TargetSpec| {
            let prev = prev.and_then(|p| p.targets.get(&spec.cluster));
            let signal = signals.of_target(&policy.id, &spec.cluster);
            let state = health::fold(policy, prev, signal, now);
            Target { spec, prev, state }
        };
        let targets = match kept {
            true => Vec::new(),
            false => policy.targets.iter().map(fold).collect(),
        };
        Entry {
            policy,
            basis,
            prev,
            kept,
            targets,
        }
    };
    policies.iter().map(entry).collect()
}

/// The decision the entries make. Answers are collected before the map is built: built
/// from sorted entries at once is linear, inserted one by one is a search each.
fn answers(
    entries: Vec<Entry<'_>>,
    overrides: &[&Override],
    previous: &Decision,
    alarms: Vec<Alarm>,
    now: SystemTime,
) -> Decision {
    let mut decided: Vec<(PolicyId, Arc<PolicyDecision>)> = Vec::with_capacity(entries.len());
    let mut changed = false;
    for entry in entries {
        let id = entry.policy.id.clone();
        match entry.prev.filter(|_| entry.kept) {
            Some(kept) => decided.push((id, Arc::clone(kept))),
            None => {
                let (decision, same) = decide_policy(entry, overrides, now);
                changed |= !same;
                decided.push((id, Arc::new(decision)));
            }
        }
    }
    let mut out = Decision {
        revision: previous.revision,
        changed_at: previous.changed_at,
        policies: decided.into_iter().collect(),
        alarms,
    };
    if changed || out.policies.len() != previous.policies.len() {
        out.revision = out.revision.saturating_add(1);
        out.changed_at = Some(now);
    }
    out
}

/// A policy decided again, and whether its answers are the same as before.
fn decide_policy(
    entry: Entry<'_>,
    overrides: &[&Override],
    now: SystemTime,
) -> (PolicyDecision, bool) {
    let Entry {
        policy,
        basis,
        prev,
        targets,
        ..
    } = entry;
    let prev = prev.map(|p| &**p);
    let targets: BTreeMap<Arc<str>, TargetState> = (targets.into_iter())
        .map(
            |Target {
                 spec, mut state, ..
             }| {
                state.drained = overrides::drains(overrides, &policy.id, &spec.cluster);
                (spec.cluster.clone(), state)
            },
        )
        .collect();
    // Answers resumed from DNS at a start without a decision stay until probes have
    // confirmed every target one way or the other (or an operator acts).
    let resumed = prev.filter(|p| {
        p.resumed
            && targets.values().any(|s| s.health == Health::Unknown)
            && !overrides::touches(overrides, policy)
    });
    let (answers, outcome) = match resumed {
        Some(p) => (p.answers.clone(), p.outcome),
        None => selection::choose(policy, &targets, overrides, prev),
    };
    let standby = match (outcome, resumed) {
        (Outcome::Normal, None) => selection::reserve(policy, &targets, overrides, &answers),
        _ => Vec::new(),
    };
    let last_good = match outcome == Outcome::Normal && resumed.is_none() {
        true => answers.clone(),
        false => prev.map(|p| p.last_good.clone()).unwrap_or_default(),
    };
    let same = prev.is_some_and(|p| {
        p.answers == answers && p.hostname == policy.hostname && p.ttl == policy.ttl
    });
    let changed_at = match same {
        true => prev.map_or(now, |p| p.changed_at),
        false => now,
    };
    let decision = PolicyDecision {
        hostname: policy.hostname.clone(),
        ttl: policy.ttl,
        max_answers: policy.max_answers,
        strategy: policy.strategy,
        answers,
        outcome,
        targets,
        last_good,
        changed_at,
        basis,
        resumed: resumed.is_some(),
        standby,
    };
    (decision, same)
}

/// Signals by policy, borrowed: they are ordered by (policy, cluster), so each policy's
/// signals are one contiguous run. One hash per policy, not per target, and no key is
/// built.
struct SignalIndex<'a> {
    flat: Vec<(&'a str, &'a TargetSignal)>,
    runs: Index<'a, Range<usize>>,
    none: TargetSignal,
}

impl<'a> SignalIndex<'a> {
    fn of(signals: &'a Signals) -> Self {
        let flat = (signals.targets.iter())
            .map(|(k, v)| (k.cluster.as_str(), v))
            .collect();
        let mut runs: Index<Range<usize>> = Index::default();
        for (i, k) in signals.targets.keys().enumerate() {
            runs.entry(k.policy.as_str()).or_insert(i..i).end = i + 1;
        }
        Self {
            flat,
            runs,
            none: TargetSignal::default(),
        }
    }

    fn run(&self, policy: &str) -> &[(&'a str, &'a TargetSignal)] {
        self.runs.get(policy).map_or(&[], |r| &self.flat[r.clone()])
    }

    /// The signal of one target; an empty one when there is none.
    fn of_target(&self, policy: &str, cluster: &str) -> &TargetSignal {
        (self.run(policy).iter())
            .find(|(c, _)| *c == cluster)
            .map_or(&self.none, |(_, s)| *s)
    }

    /// Something new for `policy`. A signal without observations from an available
    /// source says nothing new (the controller sends one each round for every target
    /// whose health comes from readiness hints).
    fn news(&self, policy: &str) -> bool {
        (self.run(policy).iter())
            .any(|(_, s)| !s.observations.is_empty() || s.source != SourceState::Available)
    }
}
