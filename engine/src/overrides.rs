//! Operator overrides as the engine applies them: which are in force, which drain a
//! target, and what they add to a policy's basis. Pins and weights are applied where
//! answers are chosen (`selection`).

use std::time::SystemTime;

use crate::{Override, OverrideAction, Policy};

/// The overrides in force at `now`.
pub(crate) fn active(overrides: &[Override], now: SystemTime) -> Vec<&Override> {
    overrides.iter().filter(|o| o.is_active(now)).collect()
}

/// Whether an override in force drains `cluster` of `policy`.
pub(crate) fn drains(overrides: &[&Override], policy: &str, cluster: &str) -> bool {
    overrides
        .iter()
        .any(|o| o.action == OverrideAction::Drain && o.applies_to(policy, cluster))
}

/// Whether any override in force names a target of `policy`.
pub(crate) fn touches(overrides: &[&Override], policy: &Policy) -> bool {
    (policy.targets.iter()).any(|t| {
        overrides
            .iter()
            .any(|o| o.applies_to(&policy.id, &t.cluster))
    })
}

/// A digest of what a policy's decision is made from besides its targets' states and
/// signals: the policy itself and the active overrides that apply to it. Never 0 (the
/// value of a decision read back from storage, which is decided afresh).
pub(crate) fn basis(policy: &Policy, overrides: &[&Override]) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::default().build_hasher();
    policy.hash(&mut h);
    for o in overrides {
        if policy
            .targets
            .iter()
            .any(|t| o.applies_to(&policy.id, &t.cluster))
        {
            o.hash(&mut h);
        }
    }
    h.finish() | 1
}
