//! Which addresses a policy answers: pins first, then its strategy over the eligible
//! targets, then `whenAllUnhealthy`.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use lifeline_model::Strategy;

use crate::{
    Answer, Health, Outcome, Override, OverrideAction, Policy, PolicyDecision, TargetSpec,
    TargetState, WhenAllUnhealthy,
    decision::{mul, mul_div},
};

/// A target and its weight in answers.
type Chosen<'a> = Vec<(&'a TargetSpec, u32)>;

/// Picks the answers of one policy from its targets' states.
pub(crate) fn choose(
    policy: &Policy,
    targets: &BTreeMap<Arc<str>, TargetState>,
    overrides: &[&Override],
    prev: Option<&PolicyDecision>,
) -> (Vec<Answer>, Outcome) {
    // An explicit pin wins over everything, health included.
    let pinned = pinned(policy, overrides);
    if !pinned.is_empty() {
        return (answers_for(&pinned), Outcome::Pinned);
    }
    let chosen = by_strategy(policy, targets, overrides);
    if !chosen.is_empty() {
        return (answers_for(&chosen), Outcome::Normal);
    }
    let (answers, outcome) = when_all_unhealthy(policy, targets, overrides, prev);
    // Targets whose addresses are not known (their source is unreachable after a
    // restart, say) must not turn a served name into an empty one: keep what was
    // answered. Only `Empty` may answer nothing.
    if answers.is_empty()
        && outcome != Outcome::Empty
        && let Some(p) = prev.filter(|p| !p.answers.is_empty())
    {
        return (p.answers.clone(), Outcome::LastKnownGood);
    }
    (answers, outcome)
}

/// A target's weight: the last weight override that applies to it, else its own.
fn weight(policy: &Policy, overrides: &[&Override], t: &TargetSpec) -> u32 {
    (overrides.iter())
        .filter_map(|o| match o.action {
            OverrideAction::Weight(w) if o.applies_to(&policy.id, &t.cluster) => Some(w),
            _ => None,
        })
        .next_back()
        .unwrap_or(t.weight)
}

/// Full weight (at least 1) for each target: how pinned targets, and every target when
/// all fail open, are answered.
fn full_weight<'a>(
    policy: &Policy,
    overrides: &[&Override],
    targets: impl Iterator<Item = &'a TargetSpec>,
) -> Chosen<'a> {
    targets
        .map(|t| (t, mul(weight(policy, overrides, t).max(1), 1000)))
        .collect()
}

/// The addresses of the chosen targets, sorted, each address once.
fn answers_for(chosen: &[(&TargetSpec, u32)]) -> Vec<Answer> {
    let mut out: Vec<Answer> = (chosen.iter())
        .flat_map(|(t, w)| {
            t.addresses.iter().map(move |a| Answer {
                cluster: t.cluster.clone(),
                address: *a,
                region: t.region.clone(),
                weight: *w,
            })
        })
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.address == b.address);
    out
}

/// The targets an operator pinned.
fn pinned<'a>(policy: &'a Policy, overrides: &[&Override]) -> Chosen<'a> {
    let pin = |t: &&TargetSpec| {
        (overrides.iter())
            .any(|o| o.action == OverrideAction::Pin && o.applies_to(&policy.id, &t.cluster))
    };
    full_weight(policy, overrides, policy.targets.iter().filter(pin))
}

/// The eligible targets the policy's strategy answers, with their weights scaled by
/// their ramp shares.
fn by_strategy<'a>(
    policy: &'a Policy,
    targets: &BTreeMap<Arc<str>, TargetState>,
    overrides: &[&Override],
) -> Chosen<'a> {
    let state = |t: &TargetSpec| &targets[&t.cluster];
    let weight_of = |t: &TargetSpec| weight(policy, overrides, t);
    let eligible: Vec<&TargetSpec> = (policy.targets.iter())
        .filter(|t| !t.addresses.is_empty() && !state(t).drained && state(t).health.eligible())
        .collect();
    let scaled = |t: &TargetSpec, base: u32| mul(base, state(t).share);
    match policy.strategy {
        Strategy::Failover => failover_tiers(
            &eligible,
            |t| state(t).health == Health::Ramping,
            |t| (weight_of(t), state(t).share),
        ),
        Strategy::Weighted => {
            let weighted: Vec<&TargetSpec> = (eligible.iter().copied())
                .filter(|t| weight_of(t) > 0)
                .collect();
            // Weight 0 is a standby: answered only when nothing with weight is.
            let pool = if weighted.is_empty() {
                eligible
            } else {
                weighted
            };
            (pool.into_iter())
                .map(|t| (t, scaled(t, weight_of(t).max(1))))
                .collect()
        }
        Strategy::RoundRobin | Strategy::Geo => {
            eligible.iter().map(|t| (*t, scaled(t, 1))).collect()
        }
    }
}

/// The eligible targets a policy's strategy holds in reserve behind `answers`, tier by
/// tier (see [`PolicyDecision::standby`]): for `Failover` each lower-priority tier, with
/// the weights it would answer with; for `Weighted` the weight-0 targets while targets
/// with weight answer. Other strategies answer every eligible target already.
pub(crate) fn reserve(
    policy: &Policy,
    targets: &BTreeMap<Arc<str>, TargetState>,
    overrides: &[&Override],
    answers: &[Answer],
) -> Vec<Vec<Answer>> {
    let state = |t: &TargetSpec| &targets[&t.cluster];
    let answered = |t: &TargetSpec| answers.iter().any(|a| a.cluster == t.cluster);
    let waiting: Vec<&TargetSpec> = (policy.targets.iter())
        .filter(|t| !t.addresses.is_empty() && !state(t).drained && state(t).health.eligible())
        .filter(|t| !answered(t))
        .collect();
    match policy.strategy {
        Strategy::Failover => {
            let highest = (policy.targets.iter())
                .filter(|t| answered(t))
                .map(|t| t.priority)
                .max();
            let tiers: BTreeSet<u32> = (waiting.iter())
                .map(|t| t.priority)
                .filter(|p| highest.is_none_or(|h| *p > h))
                .collect();
            (tiers.into_iter())
                .map(|tier| {
                    let members: Chosen<'_> = (waiting.iter())
                        .filter(|t| t.priority == tier)
                        .map(|t| (*t, mul(weight(policy, overrides, t).max(1), state(t).share)))
                        .collect();
                    answers_for(&members)
                })
                .collect()
        }
        Strategy::Weighted => {
            let idle: Chosen<'_> = (waiting.iter())
                .filter(|t| weight(policy, overrides, t) == 0)
                .map(|t| (*t, mul(1, state(t).share)))
                .collect();
            match idle.is_empty() {
                true => Vec::new(),
                false => vec![answers_for(&idle)],
            }
        }
        Strategy::RoundRobin | Strategy::Geo => Vec::new(),
    }
}

/// The answers when no target is eligible, as the policy's `whenAllUnhealthy` says.
fn when_all_unhealthy(
    policy: &Policy,
    targets: &BTreeMap<Arc<str>, TargetState>,
    overrides: &[&Override],
    prev: Option<&PolicyDecision>,
) -> (Vec<Answer>, Outcome) {
    match &policy.when_all_unhealthy {
        WhenAllUnhealthy::Empty => (Vec::new(), Outcome::Empty),
        WhenAllUnhealthy::Fallback(addresses) => {
            let mut answers: Vec<Answer> = (addresses.iter())
                .map(|a| Answer {
                    cluster: "fallback".into(),
                    address: *a,
                    region: "".into(),
                    weight: 1000,
                })
                .collect();
            answers.sort();
            answers.dedup();
            (answers, Outcome::Fallback)
        }
        WhenAllUnhealthy::LastKnownGood if prev.is_some_and(|p| !p.last_good.is_empty()) => (
            prev.map(|p| p.last_good.clone()).unwrap_or_default(),
            Outcome::LastKnownGood,
        ),
        WhenAllUnhealthy::LastKnownGood | WhenAllUnhealthy::ServeAll => {
            // Fail open: a broken health check must not black-hole a name. Drained
            // targets stay out unless nothing else is left.
            let drained = |t: &&TargetSpec| targets[&t.cluster].drained;
            let undrained = full_weight(
                policy,
                overrides,
                policy.targets.iter().filter(|t| !drained(t)),
            );
            let all = if undrained.iter().any(|(t, _)| !t.addresses.is_empty()) {
                undrained
            } else {
                full_weight(policy, overrides, policy.targets.iter())
            };
            (answers_for(&all), Outcome::ServeAll)
        }
    }
}

/// `Failover`: the lowest priority tier with an eligible target. While that tier is only
/// ramping back, it shares answers with the next tier that is fully healthy, in
/// proportion to the ramp.
fn failover_tiers<'a>(
    eligible: &[&'a TargetSpec],
    is_ramping: impl Fn(&TargetSpec) -> bool,
    weight_share: impl Fn(&TargetSpec) -> (u32, u32),
) -> Vec<(&'a TargetSpec, u32)> {
    let tiers: BTreeSet<u32> = eligible.iter().map(|t| t.priority).collect();
    let mut out = Vec::new();
    let mut carried = 0u32; // share (thousandths) still to hand to lower-priority tiers
    for (i, tier) in tiers.iter().enumerate() {
        let members: Vec<&TargetSpec> = eligible
            .iter()
            .copied()
            .filter(|t| t.priority == *tier)
            .collect();
        let fully_healthy = members.iter().any(|t| !is_ramping(t));
        let share_of_tier = if i == 0 { 1000 } else { carried };
        if fully_healthy {
            for t in members {
                let (w, share) = weight_share(t);
                out.push((t, mul_div(mul(w.max(1), share), share_of_tier, 1000)));
            }
            break;
        }
        // Every member is ramping: give them their ramp share and carry the rest down.
        let ramp = members
            .iter()
            .map(|t| weight_share(t).1)
            .max()
            .unwrap_or(1000);
        for t in members {
            let (w, share) = weight_share(t);
            out.push((t, mul_div(mul(w.max(1), share), share_of_tier, 1000).max(1)));
        }
        carried = mul_div(share_of_tier, 1000u32.saturating_sub(ramp), 1000);
        if carried == 0 {
            break;
        }
    }
    out
}
