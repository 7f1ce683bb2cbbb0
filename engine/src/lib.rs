//! The decision engine: a pure function from what Lifeline knows to what DNS answers.
//!
//! ```text
//!  policies ─┐
//!  signals  ─┼─► decide(.., previous, now) ─► Decision { answers per policy,
//!  overrides ┤                                           target states + reasons,
//!  previous ─┘                                           alarms, revision }
//! ```
//!
//! Everything that makes failover safe lives here and nowhere else: hysteresis,
//! fail-open, freezing on lost sources, the blast-radius guard, paced failback and
//! operator overrides. The crate has no I/O and no clock (its dependencies are the model
//! and serde; the crate graph keeps it that way): `now` is an argument, so the
//! same inputs always give the same decision and tests can walk through time freely.
//!
//! Per target (one member cluster of one policy) the health state machine is:
//!
//! ```text
//!  Unknown ──ok×healthy──► Healthy ──fail×unhealthy──► Unhealthy
//!     └──fail×unhealthy────────────────────────────────►   │
//!                                                           ok×healthy
//!  Healthy ◄──rampDuration── Ramping ◄──holdDown + slot── Recovering
//! ```
//! A failure streak reaching the threshold sends Recovering and Ramping back to Unhealthy.
//!
//! | module | what |
//! |---|---|
//! | `config` | engine-wide settings |
//! | `inputs` | policies, their targets, and signals |
//! | `decision` | answers per policy, and each target's state |
//! | `round` | one decision, in phases over one record per policy and target |
//! | `entry` | that record |
//! | `health` | evidence folded into a target's health, with hysteresis |
//! | `blast_radius` | the guard that holds back many failures at once |
//! | `failback` | hold-down, ramps, and how many policies ramp at once |
//! | `overrides` | which overrides are in force, and what they drain |
//! | `selection` | which addresses a policy answers |

#![forbid(unsafe_code)]

use std::time::SystemTime;

mod blast_radius;
mod config;
mod decision;
mod entry;
mod failback;
mod health;
mod inputs;
mod overrides;
mod round;
mod selection;

#[cfg(test)]
mod tests;

pub use config::{BlastRadius, EngineConfig};
pub use decision::{
    Alarm, AlarmKind, Answer, Decision, Health, Outcome, PolicyDecision, TargetState,
};
pub use inputs::{
    Observation, OnSourceUnavailable, Policy, PolicyId, Signals, SourceState, TargetKey,
    TargetSignal, TargetSpec, WhenAllUnhealthy,
};
/// Operator overrides (from the admin API or the store). The type is shared with the
/// DNS shim, which applies cluster-wide ones by itself when no leader is running.
pub use lifeline_model::overrides::{Override, OverrideAction};

/// Computes the next decision. Pure: no I/O, no clock; `now` is the decision time.
///
/// Only policies with something new are decided again: a signal, a change to the policy
/// or to the overrides that apply to it, or a state that moves with time (a hold-down
/// or ramp in progress). Every other policy keeps its previous entry, shared; deciding
/// it afresh would give the same result (the engine's tests check this on random
/// histories).
pub fn decide(
    config: &EngineConfig,
    policies: &[Policy],
    signals: &Signals,
    overrides: &[Override],
    previous: &Decision,
    now: SystemTime,
) -> Decision {
    round::decide_with(config, policies, signals, overrides, previous, now, true)
}

/// [`decide`] with every policy decided afresh, nothing reused: the same result, at the
/// cost of the whole fleet. For tests and benchmarks that compare the two.
pub fn decide_afresh(
    config: &EngineConfig,
    policies: &[Policy],
    signals: &Signals,
    overrides: &[Override],
    previous: &Decision,
    now: SystemTime,
) -> Decision {
    round::decide_with(config, policies, signals, overrides, previous, now, false)
}
