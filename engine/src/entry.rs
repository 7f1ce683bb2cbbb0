//! The record a decision works on: one entry per policy, with one target record per
//! target it decides again.

use std::sync::Arc;

use crate::{Health, Policy, PolicyDecision, TargetSpec, TargetState};

/// One target of a policy decided again this round.
pub(crate) struct Target<'a> {
    pub spec: &'a TargetSpec,
    /// Its state in the previous decision, if it had one.
    pub prev: Option<&'a TargetState>,
    /// Its state after this round's evidence.
    pub state: TargetState,
}

impl Target<'_> {
    /// The health it had in the previous decision.
    pub fn before(&self) -> Option<Health> {
        self.prev.map(|p| p.health)
    }

    /// It turned unhealthy this round.
    pub fn fresh_failure(&self) -> bool {
        self.state.health == Health::Unhealthy && self.before() != Some(Health::Unhealthy)
    }
}

/// One policy this round.
pub(crate) struct Entry<'a> {
    pub policy: &'a Policy,
    /// What it is decided from besides its targets (see `overrides::basis`).
    pub basis: u64,
    /// Its entry in the previous decision.
    pub prev: Option<&'a Arc<PolicyDecision>>,
    /// Kept whole from the previous decision: nothing new touched it.
    pub kept: bool,
    /// Its targets, in the policy's order; empty when kept.
    pub targets: Vec<Target<'a>>,
}
