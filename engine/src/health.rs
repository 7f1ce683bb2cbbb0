//! One target's health: evidence folded into its state with hysteresis (see the state
//! machine in the crate docs).

use std::time::SystemTime;

use crate::{Health, OnSourceUnavailable, Policy, SourceState, TargetSignal, TargetState};

/// The state of a target never seen before.
pub(crate) fn initial_state(now: SystemTime) -> TargetState {
    TargetState {
        health: Health::Unknown,
        since: now,
        reason: "no observation yet".into(),
        ok_streak: 0,
        fail_streak: 0,
        ramp_started: None,
        share: 1000,
        drained: false,
        last_detail: "".into(),
    }
}

/// Moves `state` to `health` (its `since` only when the health changes), for `reason`.
pub(crate) fn set_health(state: &mut TargetState, health: Health, at: SystemTime, reason: &str) {
    if state.health != health {
        state.health = health;
        state.since = at;
    }
    if &*state.reason != reason {
        state.reason = reason.into();
    }
}

/// Applies a target's new evidence to its previous state: hysteresis, and the freeze
/// (or give-up) while its source is unavailable.
pub(crate) fn fold(
    policy: &Policy,
    prev: Option<&TargetState>,
    signal: &TargetSignal,
    now: SystemTime,
) -> TargetState {
    let mut state = prev.cloned().unwrap_or_else(|| initial_state(now));
    if let SourceState::Unavailable { since } = signal.source {
        let stale = now.duration_since(since).unwrap_or_default();
        match policy.on_source_unavailable {
            OnSourceUnavailable::TreatAsUnhealthy { max_stale } if stale >= max_stale => {
                set_health(
                    &mut state,
                    Health::Unhealthy,
                    now,
                    "source unavailable longer than maxStale",
                );
                state.ramp_started = None;
            }
            _ => {
                state.reason =
                    format!("source unavailable for {}s; state frozen", stale.as_secs()).into();
            }
        }
        return state;
    }
    for obs in &signal.observations {
        if *state.last_detail != *obs.detail {
            state.last_detail = obs.detail.as_str().into();
        }
        if obs.ok {
            state.ok_streak = state.ok_streak.saturating_add(1);
            state.fail_streak = 0;
        } else {
            state.fail_streak = state.fail_streak.saturating_add(1);
            state.ok_streak = 0;
        }
        match state.health {
            Health::Unknown if state.ok_streak >= policy.healthy_threshold => {
                set_health(&mut state, Health::Healthy, obs.at, "healthy");
            }
            Health::Unknown | Health::Healthy | Health::Recovering | Health::Ramping
                if state.fail_streak >= policy.unhealthy_threshold =>
            {
                let reason = format!("{} consecutive failures: {}", state.fail_streak, obs.detail);
                set_health(&mut state, Health::Unhealthy, obs.at, &reason);
                state.ramp_started = None;
            }
            Health::Unhealthy if state.ok_streak >= policy.healthy_threshold => {
                if policy.hold_down.is_zero() && policy.ramp_duration.is_zero() {
                    set_health(&mut state, Health::Healthy, obs.at, "recovered");
                } else {
                    set_health(
                        &mut state,
                        Health::Recovering,
                        obs.at,
                        "recovered; in hold-down",
                    );
                }
            }
            _ => {}
        }
    }
    state
}
