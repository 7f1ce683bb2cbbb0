//! The blast-radius guard: when more than `blastRadius.fraction` of all targets turn
//! unhealthy within `blastRadius.window`, the observer is more likely broken than the
//! world. Their failures are held back (their answers stay) and
//! `SystemicFailureSuspected` is raised until no more than that fraction is failing.
//! When it lets go, every failure streak starts again, so a target still down moves
//! its answers only after `unhealthyThreshold` failures seen after the hold.

use std::time::SystemTime;

use crate::{
    Alarm, AlarmKind, BlastRadius, Decision, Health, TargetState,
    entry::{Entry, Target},
    health::initial_state,
};

/// The reason of a target whose failure the guard holds back.
const HELD: &str = "failure held back: systemic failure suspected";

/// Whether the guard was tripped in the previous decision (its alarm is up).
pub(crate) fn was_tripped(config: &BlastRadius, previous: &Decision) -> bool {
    config.enabled
        && (previous.alarms.iter()).any(|a| a.kind == AlarmKind::SystemicFailureSuspected)
}

/// The guard against marking many targets unhealthy at once. Judges the round: while
/// the guard holds, a target that turned unhealthy this round keeps its old health; the
/// round it lets go, failures seen while it held are not trusted. Returns the alarm it
/// raises, if any.
pub(crate) fn hold_mass_failures(
    config: &BlastRadius,
    entries: &mut [Entry<'_>],
    previous: &Decision,
    tripped_before: bool,
    now: SystemTime,
) -> Vec<Alarm> {
    let alarm = judge(config, entries, previous, tripped_before, now);
    let tripped = alarm.is_some();
    // The round the guard lets go, the fleet's return is not in step either: a target
    // whose next probe has not come yet, or whose failure was in flight, still has the
    // failure streak it built while everything failed, and would move its answers
    // although it is as healthy as the rest.
    let release = tripped_before && !tripped;
    if tripped || release {
        for target in entries.iter_mut().flat_map(|e| e.targets.iter_mut()) {
            if target.fresh_failure() {
                hold_back(target, tripped, now);
            }
            if release {
                forget_held(&mut target.state);
            }
        }
    }
    alarm.into_iter().collect()
}

/// The alarm, when more than the fraction of all targets is failing. Once it holds, the
/// guard is judged every round, so it stays up while most targets fail and not only in
/// rounds where one crosses its threshold.
fn judge(
    config: &BlastRadius,
    entries: &[Entry<'_>],
    previous: &Decision,
    tripped_before: bool,
    now: SystemTime,
) -> Option<Alarm> {
    let total: usize = entries.iter().map(|e| e.policy.targets.len()).sum();
    // Only a policy decided again can have a fresh failure; the others count as they
    // stand (their state is their previous one).
    let decided = || entries.iter().flat_map(|e| e.targets.iter());
    let fresh = decided().filter(|t| t.fresh_failure()).count();
    if !config.enabled || total < config.min_targets.max(1) || (fresh == 0 && !tripped_before) {
        return None;
    }
    let kept = || {
        (entries.iter().filter(|e| e.kept))
            .filter_map(|e| e.prev)
            .flat_map(|p| p.targets.values().map(|s| (s, Some(s.health))))
    };
    let all = || decided().map(|t| (&t.state, t.before())).chain(kept());
    let recent = all()
        .filter(|(s, before)| {
            *before == Some(Health::Unhealthy)
                && now.duration_since(s.since).unwrap_or_default() <= config.window
        })
        .count();
    // Targets failing now but not yet past their threshold count too: when a whole
    // fleet starts failing at once, probe rounds are not in step, and counting only
    // threshold crossings would let the first few move before the rest show.
    let suspects = all()
        .filter(|(s, _)| s.health != Health::Unhealthy && s.fail_streak > 0)
        .count();
    let failing = fresh + recent + suspects;
    if failing as f64 <= config.fraction * total as f64 {
        return None;
    }
    let since = (previous.alarms.iter())
        .find(|a| a.kind == AlarmKind::SystemicFailureSuspected)
        .map_or(now, |a| a.since);
    Some(Alarm {
        kind: AlarmKind::SystemicFailureSuspected,
        message: format!(
            "{failing} of {total} targets turned unhealthy within {}s; holding the last decision instead of moving traffic",
            config.window.as_secs()
        ),
        since,
    })
}

/// A target that turned unhealthy this round keeps its previous health. While the guard
/// holds, its streaks stay, so it still counts as failing in the next round's tally; the
/// round it lets go, its failure must be confirmed afresh.
fn hold_back(target: &mut Target<'_>, tripped: bool, now: SystemTime) {
    let state = &mut target.state;
    let (ok, fail) = (state.ok_streak, state.fail_streak);
    let detail = std::mem::take(&mut state.last_detail);
    *state = target.prev.cloned().unwrap_or_else(|| initial_state(now));
    state.ok_streak = ok;
    state.last_detail = detail;
    (state.fail_streak, state.reason) = if tripped {
        (fail, HELD.into())
    } else {
        (0, "failure to be confirmed after a systemic failure".into())
    };
}

/// The round the guard lets go: failures seen while it held are not trusted, and every
/// streak starts again; a target really down is confirmed by new failures.
fn forget_held(state: &mut TargetState) {
    if state.health != Health::Unhealthy {
        state.fail_streak = 0;
    }
    if &*state.reason == HELD {
        state.reason = "failures seen during a systemic failure were not trusted".into();
    }
}
