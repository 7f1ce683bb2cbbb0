//! Paced failback: a recovered target waits out its hold-down, then ramps its share of
//! answers back in steps, and only a bounded number of policies ramp at once (oldest
//! recovery first), so a recovery does not stampede.

use std::{collections::BTreeSet, time::SystemTime};

use crate::{Health, decision::mul_div, entry::Entry, health::set_health};

/// Recovered targets past their hold-down start ramping, at most `max_concurrent`
/// policies at a time. A policy with a target recovering or ramping is always decided
/// again, so the entries hold them all.
pub(crate) fn start_ramps(entries: &mut [Entry<'_>], max_concurrent: usize, now: SystemTime) {
    let mut ramping: BTreeSet<usize> = (entries.iter().enumerate())
        .filter(|(_, e)| e.targets.iter().any(|t| t.state.health == Health::Ramping))
        .map(|(p, _)| p)
        .collect();
    let mut waiting: Vec<(SystemTime, usize, usize)> = Vec::new();
    for (p, entry) in entries.iter().enumerate() {
        for (t, target) in entry.targets.iter().enumerate() {
            let s = &target.state;
            // A hold-down so long that it passes the end of time never ends.
            let ends = s.since.checked_add(entry.policy.hold_down);
            if s.health == Health::Recovering && ends.is_some_and(|end| now >= end) {
                waiting.push((s.since, p, t));
            }
        }
    }
    waiting.sort();
    for (_, p, t) in waiting {
        let entry = &mut entries[p];
        let state = &mut entry.targets[t].state;
        if entry.policy.ramp_duration.is_zero() {
            set_health(state, Health::Healthy, now, "recovered");
        } else if ramping.contains(&p) || ramping.len() < max_concurrent {
            ramping.insert(p);
            set_health(
                state,
                Health::Ramping,
                now,
                "recovered; ramping traffic back",
            );
            state.ramp_started = Some(now);
        } else {
            let reason = format!(
                "recovered; waiting for a ramp slot ({} policies ramping)",
                ramping.len()
            );
            state.reason = reason.into();
        }
    }
}

/// Each target's share of its weight, in thousandths: 1000, or the step its ramp has
/// reached; a ramp that has run its course ends.
pub(crate) fn ramp_shares(entries: &mut [Entry<'_>], now: SystemTime) {
    for entry in entries.iter_mut() {
        let policy = entry.policy;
        for state in entry.targets.iter_mut().map(|t| &mut t.state) {
            state.share = 1000;
            if state.health != Health::Ramping {
                continue;
            }
            let started = state.ramp_started.unwrap_or(state.since);
            let elapsed = now.duration_since(started).unwrap_or_default();
            if elapsed >= policy.ramp_duration {
                set_health(state, Health::Healthy, now, "ramp complete");
                state.ramp_started = None;
                continue;
            }
            let steps = policy.ramp_steps.max(1);
            let step_len = policy.ramp_duration / steps;
            let step = if step_len.is_zero() {
                steps
            } else {
                let done = elapsed.as_nanos() / step_len.as_nanos();
                u32::try_from(done.saturating_add(1)).map_or(steps, |s| s.min(steps))
            };
            state.share = mul_div(1000, step, steps);
        }
    }
}
