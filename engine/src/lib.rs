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

#![forbid(unsafe_code)]

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use lifeline_model::Strategy;
use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// `namespace/name` of a FailoverPolicy.
pub type PolicyId = String;

/// Engine-wide settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineConfig {
    /// Freeze instead of moving traffic when many targets fail at once.
    #[serde(default)]
    pub blast_radius: BlastRadius,
    /// At most this many policies ramp traffic back at the same time.
    #[serde(default = "default_max_ramps")]
    pub max_concurrent_ramps: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            blast_radius: BlastRadius::default(),
            max_concurrent_ramps: default_max_ramps(),
        }
    }
}

fn default_max_ramps() -> usize {
    2
}

/// The blast-radius guard: when more than `fraction` of all targets turn unhealthy
/// within `window`, the observer is more likely broken than the world. Their answers
/// are held and `SystemicFailureSuspected` is raised until no more than `fraction` are
/// failing. Then every failure streak starts again, so a target still down moves its
/// answers only after `unhealthyThreshold` failures seen after the hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlastRadius {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Fraction of all targets (0..1).
    #[serde(default = "default_fraction")]
    pub fraction: f64,
    /// Window over which failures are counted.
    #[serde(default = "default_window", with = "lifeline_model::duration::text")]
    pub window: Duration,
    /// Below this many targets in total the guard stays off (one of two failing is
    /// not a systemic signal).
    #[serde(default = "default_min_targets")]
    pub min_targets: usize,
}

impl Default for BlastRadius {
    fn default() -> Self {
        Self {
            enabled: true,
            fraction: default_fraction(),
            window: default_window(),
            min_targets: default_min_targets(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_fraction() -> f64 {
    0.5
}
fn default_window() -> Duration {
    Duration::from_secs(60)
}
fn default_min_targets() -> usize {
    4
}

/// A policy as the engine sees it: validated, with addresses resolved.
#[derive(Clone, Debug, PartialEq, Hash)]
pub struct Policy {
    pub id: PolicyId,
    pub hostname: String,
    pub ttl: u32,
    /// Addresses per reply, at most; the DNS server rotates through the rest.
    pub max_answers: u16,
    pub strategy: Strategy,
    pub targets: Vec<TargetSpec>,
    /// Consecutive failures that make a target unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive successes that make an unhealthy target recover.
    pub healthy_threshold: u32,
    pub when_all_unhealthy: WhenAllUnhealthy,
    pub on_source_unavailable: OnSourceUnavailable,
    pub hold_down: Duration,
    pub ramp_duration: Duration,
    pub ramp_steps: u32,
}

/// One member cluster that can answer for a policy.
#[derive(Clone, Debug, PartialEq, Hash)]
pub struct TargetSpec {
    /// Shared text: every decision copies it into answers and state maps.
    pub cluster: Arc<str>,
    pub region: Arc<str>,
    pub priority: u32,
    pub weight: u32,
    pub addresses: Vec<IpAddr>,
}

/// What to answer when no target is eligible.
#[derive(Clone, Debug, PartialEq, Hash)]
pub enum WhenAllUnhealthy {
    ServeAll,
    LastKnownGood,
    Empty,
    Fallback(Vec<IpAddr>),
}

/// What to do while a target's signal source is unavailable.
#[derive(Clone, Copy, Debug, PartialEq, Hash)]
pub enum OnSourceUnavailable {
    Freeze,
    TreatAsUnhealthy { max_stale: Duration },
}

/// Identifies a target: a policy and one of its clusters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TargetKey {
    pub policy: PolicyId,
    pub cluster: String,
}

impl TargetKey {
    pub fn new(policy: impl Into<String>, cluster: impl Into<String>) -> Self {
        Self {
            policy: policy.into(),
            cluster: cluster.into(),
        }
    }
}

/// New evidence about targets since the previous decision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Signals {
    pub targets: BTreeMap<TargetKey, TargetSignal>,
}

/// Evidence about one target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetSignal {
    /// Probe (or readiness-hint) results since the previous decision, oldest first.
    pub observations: Vec<Observation>,
    /// Whether the source of this target's evidence is currently reachable.
    pub source: SourceState,
}

/// One health observation.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub at: SystemTime,
    pub ok: bool,
    pub detail: String,
}

/// Reachability of the source of a target's evidence (its prober, or its cluster's API
/// when health comes from readiness hints).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum SourceState {
    #[default]
    Available,
    Unavailable {
        since: SystemTime,
    },
}

/// Operator overrides (from the admin API or the store). The type is shared with the
/// DNS shim, which applies cluster-wide ones by itself when no leader is running.
pub use lifeline_model::overrides::{Override, OverrideAction};

/// The engine's output, and its memory: the next call receives it as `previous`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Increases whenever any answer changes.
    pub revision: u64,
    /// When the answers last changed.
    #[serde(with = "opt_time_text", default)]
    pub changed_at: Option<SystemTime>,
    /// Shared between decisions: a policy nothing new touched keeps its entry as it
    /// was, not a copy.
    pub policies: BTreeMap<PolicyId, Arc<PolicyDecision>>,
    pub alarms: Vec<Alarm>,
}

/// The decision for one policy.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDecision {
    pub hostname: String,
    pub ttl: u32,
    /// Addresses per reply, at most (decisions stored before the field existed get
    /// the default).
    #[serde(default = "default_max_answers")]
    pub max_answers: u16,
    pub strategy: Strategy,
    /// What DNS answers, sorted by (cluster, address).
    pub answers: Vec<Answer>,
    pub outcome: Outcome,
    /// Per cluster.
    pub targets: BTreeMap<Arc<str>, TargetState>,
    /// The last answers that came from eligible targets, for `LastKnownGood`.
    pub last_good: Vec<Answer>,
    /// When `answers` last changed.
    #[serde(with = "lifeline_model::time::rfc3339")]
    pub changed_at: SystemTime,
    /// A digest of the policy and the overrides this was decided from (see [`basis`]);
    /// 0 when unknown, as after a restart: then it is decided afresh.
    #[serde(skip)]
    pub basis: u64,
    /// The answers were taken from what DNS served when a leader started without a
    /// usable decision (see [`PolicyDecision::resumed_from`]). They are kept while any
    /// target's health is still unconfirmed, so a restart never moves an answer on
    /// anything but probes: a dead primary is not answered again because nobody
    /// remembered it was dead. An operator override on the policy ends it at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
}

impl PolicyDecision {
    /// An entry that keeps serving `answers` (what DNS serves now) until every target of
    /// `policy` has a confirmed health: for a leader that starts with no decision.
    pub fn resumed_from(policy: &Policy, answers: Vec<Answer>, now: SystemTime) -> Self {
        Self {
            hostname: policy.hostname.clone(),
            ttl: policy.ttl,
            max_answers: policy.max_answers,
            strategy: policy.strategy,
            last_good: answers.clone(),
            answers,
            outcome: Outcome::Normal,
            targets: BTreeMap::new(),
            changed_at: now,
            basis: 0,
            resumed: true,
        }
    }
}

/// Equal when everything decided is: `basis` is how it was reached, not what it says (a
/// decision read back from storage has none).
impl PartialEq for PolicyDecision {
    fn eq(&self, other: &Self) -> bool {
        let Self {
            hostname,
            ttl,
            max_answers,
            strategy,
            answers,
            outcome,
            targets,
            last_good,
            changed_at,
            basis: _,
            resumed,
        } = self;
        *hostname == other.hostname
            && *ttl == other.ttl
            && *max_answers == other.max_answers
            && *strategy == other.strategy
            && *answers == other.answers
            && *outcome == other.outcome
            && *targets == other.targets
            && *last_good == other.last_good
            && *changed_at == other.changed_at
            && *resumed == other.resumed
    }
}

fn default_max_answers() -> u16 {
    lifeline_model::limits::MAX_ANSWERS_DEFAULT
}

/// `a × b` for weights and shares, saturating instead of overflowing: weights can come
/// from overrides and stored decisions that never passed validation.
fn mul(a: u32, b: u32) -> u32 {
    a.saturating_mul(b)
}

/// `a × b / c` without overflow in between (`c` = 0 gives 0).
fn mul_div(a: u32, b: u32, c: u32) -> u32 {
    if c == 0 {
        return 0;
    }
    u32::try_from(u64::from(a) * u64::from(b) / u64::from(c)).unwrap_or(u32::MAX)
}

/// One address handed out, with what the shim needs to choose per query.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub cluster: Arc<str>,
    pub address: IpAddr,
    pub region: Arc<str>,
    /// Share of answers, in thousandths of the target's weight (ramps scale it down).
    pub weight: u32,
}

/// How a policy's answers were chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// From eligible targets by the strategy.
    Normal,
    /// Pinned by an override.
    Pinned,
    /// No eligible target: every target answered (fail open).
    ServeAll,
    /// No eligible target: the last good answers.
    LastKnownGood,
    /// No eligible target: nothing answered, as the policy asks.
    Empty,
    /// No eligible target: the policy's fallback addresses.
    Fallback,
}

/// Health of one target, with the memory hysteresis needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetState {
    pub health: Health,
    /// When `health` last changed.
    #[serde(with = "lifeline_model::time::rfc3339")]
    pub since: SystemTime,
    /// Why, in a few words. Shared text: a decision clones every target's state, and
    /// most reasons do not change between decisions.
    pub reason: Arc<str>,
    pub ok_streak: u32,
    pub fail_streak: u32,
    /// Set while ramping.
    #[serde(with = "opt_time_text", default)]
    pub ramp_started: Option<SystemTime>,
    /// Share of full weight in thousandths (1000 unless ramping).
    pub share: u32,
    /// An active drain override applies.
    pub drained: bool,
    /// The last observation's detail.
    #[serde(default)]
    pub last_detail: Arc<str>,
}

/// Health states; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Health {
    Unknown,
    Healthy,
    Unhealthy,
    Recovering,
    Ramping,
}

impl Health {
    /// May this target be answered in normal operation?
    fn eligible(self) -> bool {
        matches!(self, Health::Unknown | Health::Healthy | Health::Ramping)
    }
}

/// Something an operator should look at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alarm {
    pub kind: AlarmKind,
    pub message: String,
    #[serde(with = "lifeline_model::time::rfc3339")]
    pub since: SystemTime,
}

/// Kinds of alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmKind {
    /// Many targets failed at once; their failures were not acted on.
    SystemicFailureSuspected,
}

/// The reason of a target whose failure the blast-radius guard holds back.
const HELD: &str = "failure held back: systemic failure suspected";

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
    decide_with(config, policies, signals, overrides, previous, now, true)
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
    decide_with(config, policies, signals, overrides, previous, now, false)
}

fn decide_with(
    config: &EngineConfig,
    policies: &[Policy],
    signals: &Signals,
    overrides: &[Override],
    previous: &Decision,
    now: SystemTime,
    reuse: bool,
) -> Decision {
    let overrides: Vec<&Override> = overrides.iter().filter(|o| o.is_active(now)).collect();
    let empty = TargetSignal::default();
    // Borrowed index by policy: signals are ordered by (policy, cluster), so each
    // policy's signals are one contiguous run. One hash per policy, not per target, and
    // no key is built.
    let flat: Vec<(&str, &TargetSignal)> = signals
        .targets
        .iter()
        .map(|(k, v)| (k.cluster.as_str(), v))
        .collect();
    let mut runs: Index<std::ops::Range<usize>> = Index::default();
    for (i, k) in signals.targets.keys().enumerate() {
        runs.entry(k.policy.as_str()).or_insert(i..i).end = i + 1;
    }
    let signal_of = |policy: &str, cluster: &str| -> &TargetSignal {
        runs.get(policy)
            .and_then(|r| flat[r.clone()].iter().find(|(c, _)| *c == cluster))
            .map_or(&empty, |(_, s)| *s)
    };

    let previous_of: Index<&Arc<PolicyDecision>> = previous
        .policies
        .iter()
        .map(|(id, p)| (id.as_str(), p))
        .collect();

    // While the blast-radius guard holds, every policy is decided each round: its
    // release touches targets of every policy (below), and it is rare.
    let guard = &config.blast_radius;
    let was_holding = guard.enabled
        && previous
            .alarms
            .iter()
            .any(|a| a.kind == AlarmKind::SystemicFailureSuspected);
    let reuse = reuse && !was_holding;

    // 0. What each policy is decided from, and which policies keep their previous
    //    entry: nothing new for them, and no state of theirs that moves with time.
    let bases: Vec<u64> = policies.iter().map(|p| basis(p, &overrides)).collect();
    // A signal without observations from an available source says nothing new (the
    // controller sends one each round for every target whose health comes from
    // readiness hints).
    let news = |policy: &str| {
        runs.get(policy).is_some_and(|r| {
            flat[r.clone()]
                .iter()
                .any(|(_, s)| !s.observations.is_empty() || s.source != SourceState::Available)
        })
    };
    let kept: Vec<Option<&Arc<PolicyDecision>>> = policies
        .iter()
        .zip(&bases)
        .map(|(policy, &b)| {
            let prev = *previous_of.get(policy.id.as_str())?;
            let at_rest = || {
                prev.targets.values().all(|t| {
                    matches!(
                        t.health,
                        Health::Unknown | Health::Healthy | Health::Unhealthy
                    )
                })
            };
            (reuse && prev.basis == b && !news(&policy.id) && at_rest()).then_some(prev)
        })
        .collect();

    // 1. Fold new evidence into each target's state (hysteresis, source freeze).
    //    `states[p][t]` is target `t` of `policies[p]`, with its previous health; empty
    //    for a policy that keeps its previous entry.
    let mut states: Vec<Vec<(TargetState, Option<Health>)>> = policies
        .iter()
        .zip(&kept)
        .map(|(policy, kept)| {
            if kept.is_some() {
                return Vec::new();
            }
            let prev_policy = previous_of.get(policy.id.as_str()).copied();
            policy
                .targets
                .iter()
                .map(|target| {
                    let prev = prev_policy.and_then(|p| p.targets.get(&target.cluster));
                    let signal = signal_of(&policy.id, &target.cluster);
                    (fold(policy, prev, signal, now), prev.map(|p| p.health))
                })
                .collect()
        })
        .collect();
    let total: usize = policies.iter().map(|p| p.targets.len()).sum();

    // 2. Blast-radius guard: many new failures at once are held back.
    let mut alarms = Vec::new();
    let is_fresh = |s: &TargetState, prev: &Option<Health>| {
        s.health == Health::Unhealthy && *prev != Some(Health::Unhealthy)
    };
    // Only a policy decided again can have a fresh failure; the others count as they
    // stand (their state is their previous one).
    let fresh = states
        .iter()
        .flatten()
        .filter(|(s, prev)| is_fresh(s, prev))
        .count();
    // Once it holds, the guard is judged every round, so it stays up while most targets
    // fail and not only in rounds where one crosses its threshold.
    let mut tripped = false;
    if guard.enabled && total >= guard.min_targets.max(1) && (fresh > 0 || was_holding) {
        let kept_states = || {
            kept.iter()
                .flatten()
                .flat_map(|p| p.targets.values().map(|s| (s, Some(s.health))))
        };
        let all = || {
            states
                .iter()
                .flatten()
                .map(|(s, prev)| (s, *prev))
                .chain(kept_states())
        };
        let recent = all()
            .filter(|(s, prev)| {
                *prev == Some(Health::Unhealthy)
                    && now.duration_since(s.since).unwrap_or_default() <= guard.window
            })
            .count();
        // Targets failing now but not yet past their threshold count too: when a
        // whole fleet starts failing at once, probe rounds are not in step, and counting
        // only threshold crossings would let the first few move before the rest show.
        let suspects = all()
            .filter(|(s, _)| s.health != Health::Unhealthy && s.fail_streak > 0)
            .count();
        let failing = fresh + recent + suspects;
        tripped = failing as f64 > guard.fraction * total as f64;
        if tripped {
            let since = previous
                .alarms
                .iter()
                .find(|a| a.kind == AlarmKind::SystemicFailureSuspected)
                .map_or(now, |a| a.since);
            alarms.push(Alarm {
                kind: AlarmKind::SystemicFailureSuspected,
                message: format!(
                    "{failing} of {total} targets turned unhealthy within {}s; holding the last decision instead of moving traffic",
                    guard.window.as_secs()
                ),
                since,
            });
        }
    }
    // While the guard holds, a target that turned unhealthy this round keeps its old
    // health; its streaks stay, so it still counts as failing in the next round's tally.
    //
    // The round the guard lets go, the fleet's return is not in step either: a target
    // whose next probe has not come yet, or whose failure was in flight, still has the
    // failure streak it built while everything failed, and would move its answers
    // although it is as healthy as the rest. Failures seen while the guard held are not
    // trusted: every streak starts again, and a target really down is confirmed by
    // `unhealthyThreshold` new failures.
    let release = was_holding && !tripped;
    if tripped || release {
        for (policy, row) in policies.iter().zip(states.iter_mut()) {
            let prev_policy = previous_of.get(policy.id.as_str()).copied();
            for (target, (state, prev_health)) in policy.targets.iter().zip(row.iter_mut()) {
                if is_fresh(state, prev_health) {
                    let prev = prev_policy.and_then(|p| p.targets.get(&target.cluster));
                    let (ok, fail) = (state.ok_streak, state.fail_streak);
                    let detail = std::mem::take(&mut state.last_detail);
                    *state = prev.cloned().unwrap_or_else(|| initial_state(now));
                    state.ok_streak = ok;
                    state.last_detail = detail;
                    (state.fail_streak, state.reason) = if tripped {
                        (fail, HELD.into())
                    } else {
                        (0, "failure to be confirmed after a systemic failure".into())
                    };
                }
                if release {
                    if state.health != Health::Unhealthy {
                        state.fail_streak = 0;
                    }
                    if &*state.reason == HELD {
                        state.reason =
                            "failures seen during a systemic failure were not trusted".into();
                    }
                }
            }
        }
    }

    // 3. Paced failback: recovered targets past their hold-down start ramping, a
    //    bounded number of policies at a time (oldest recovery first). A policy with a
    //    target recovering or ramping is always decided again, so `states` holds them
    //    all.
    let mut ramping: BTreeSet<usize> = states
        .iter()
        .enumerate()
        .filter(|(_, row)| row.iter().any(|(s, _)| s.health == Health::Ramping))
        .map(|(p, _)| p)
        .collect();
    let mut waiting: Vec<(SystemTime, usize, usize)> = Vec::new();
    for (p, row) in states.iter().enumerate() {
        for (t, (s, _)) in row.iter().enumerate() {
            // A hold-down so long that it passes the end of time never ends.
            let ends = s.since.checked_add(policies[p].hold_down);
            if s.health == Health::Recovering && ends.is_some_and(|end| now >= end) {
                waiting.push((s.since, p, t));
            }
        }
    }
    waiting.sort();
    for (_, p, t) in waiting {
        let policy = &policies[p];
        let state = &mut states[p][t].0;
        if policy.ramp_duration.is_zero() {
            set_health(state, Health::Healthy, now, "recovered");
        } else if ramping.contains(&p) || ramping.len() < config.max_concurrent_ramps {
            ramping.insert(p);
            set_health(
                state,
                Health::Ramping,
                now,
                "recovered; ramping traffic back",
            );
            state.ramp_started = Some(now);
        } else {
            state.reason = format!(
                "recovered; waiting for a ramp slot ({} policies ramping)",
                ramping.len()
            )
            .into();
        }
    }

    // 4. Ramp shares.
    for (policy, row) in policies.iter().zip(states.iter_mut()) {
        for (state, _) in row.iter_mut() {
            state.share = 1000;
            if state.health != Health::Ramping {
                continue;
            }
            let started = state.ramp_started.unwrap_or(state.since);
            let elapsed = now.duration_since(started).unwrap_or_default();
            if elapsed >= policy.ramp_duration {
                set_health(state, Health::Healthy, now, "ramp complete");
                state.ramp_started = None;
            } else {
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

    // 5. Answers, collected before the map is built: built from sorted entries at once
    //    is linear, inserted one by one is a search each.
    let mut decided: Vec<(PolicyId, Arc<PolicyDecision>)> = Vec::with_capacity(policies.len());
    let mut changed = false;
    for (((policy, row), kept), &basis) in policies.iter().zip(states).zip(&kept).zip(&bases) {
        if let Some(kept) = kept {
            decided.push((policy.id.clone(), Arc::clone(kept)));
            continue;
        }
        let prev = previous_of.get(policy.id.as_str()).map(|p| &***p);
        let mut targets = BTreeMap::new();
        for (t, (mut state, _)) in policy.targets.iter().zip(row) {
            state.drained = overrides
                .iter()
                .any(|o| o.action == OverrideAction::Drain && o.applies_to(&policy.id, &t.cluster));
            targets.insert(t.cluster.clone(), state);
        }
        // Answers resumed from DNS at a start without a decision stay until probes
        // have confirmed every target one way or the other (or an operator acts).
        let resumed = prev.filter(|p| {
            p.resumed
                && targets.values().any(|s| s.health == Health::Unknown)
                && !policy.targets.iter().any(|t| {
                    overrides
                        .iter()
                        .any(|o| o.applies_to(&policy.id, &t.cluster))
                })
        });
        let (answers, outcome) = match resumed {
            Some(p) => (p.answers.clone(), p.outcome),
            None => choose(policy, &targets, &overrides, prev),
        };
        let last_good = if outcome == Outcome::Normal && resumed.is_none() {
            answers.clone()
        } else {
            prev.map(|p| p.last_good.clone()).unwrap_or_default()
        };
        let same = prev.is_some_and(|p| {
            p.answers == answers && p.hostname == policy.hostname && p.ttl == policy.ttl
        });
        if !same {
            changed = true;
        }
        decided.push((
            policy.id.clone(),
            Arc::new(PolicyDecision {
                hostname: policy.hostname.clone(),
                ttl: policy.ttl,
                max_answers: policy.max_answers,
                strategy: policy.strategy,
                answers,
                outcome,
                targets,
                last_good,
                changed_at: if same {
                    prev.map_or(now, |p| p.changed_at)
                } else {
                    now
                },
                basis,
                resumed: resumed.is_some(),
            }),
        ));
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

impl Decision {
    /// True when `other` holds the very same entry for every policy (shared, not equal):
    /// then nothing about any policy changed between the two. Cheap: no entry is compared.
    pub fn shares_entries_with(&self, other: &Decision) -> bool {
        self.policies.len() == other.policies.len()
            && self
                .policies
                .iter()
                .zip(&other.policies)
                .all(|((a, pa), (b, pb))| Arc::ptr_eq(pa, pb) && a == b)
    }
}

/// Borrowed lookups by policy id, with a hasher much faster than the default for short
/// keys (two of these are built at every decision).
type Index<'a, V> = HashMap<&'a str, V, foldhash::fast::RandomState>;

/// A digest of what a policy's decision is made from besides its targets' states and
/// signals: the policy itself and the active overrides that apply to it. Never 0 (the
/// value of a decision read back from storage, which is decided afresh).
fn basis(policy: &Policy, overrides: &[&Override]) -> u64 {
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

fn initial_state(now: SystemTime) -> TargetState {
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

fn set_health(state: &mut TargetState, health: Health, at: SystemTime, reason: &str) {
    if state.health != health {
        state.health = health;
        state.since = at;
    }
    if &*state.reason != reason {
        state.reason = reason.into();
    }
}

/// Applies a target's new evidence to its previous state.
fn fold(
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

/// Picks the answers of one policy from its targets' states.
fn choose(
    policy: &Policy,
    targets: &BTreeMap<Arc<str>, TargetState>,
    overrides: &[&Override],
    prev: Option<&PolicyDecision>,
) -> (Vec<Answer>, Outcome) {
    let weight_of = |t: &TargetSpec| {
        overrides
            .iter()
            .filter_map(|o| match o.action {
                OverrideAction::Weight(w) if o.applies_to(&policy.id, &t.cluster) => Some(w),
                _ => None,
            })
            .next_back()
            .unwrap_or(t.weight)
    };
    let answers_for = |chosen: &[(&TargetSpec, u32)]| -> Vec<Answer> {
        let mut out: Vec<Answer> = chosen
            .iter()
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
    };

    // An explicit pin wins over everything, health included.
    let pinned: Vec<(&TargetSpec, u32)> = policy
        .targets
        .iter()
        .filter(|t| {
            overrides
                .iter()
                .any(|o| o.action == OverrideAction::Pin && o.applies_to(&policy.id, &t.cluster))
        })
        .map(|t| (t, mul(weight_of(t).max(1), 1000)))
        .collect();
    if !pinned.is_empty() {
        return (answers_for(&pinned), Outcome::Pinned);
    }

    let state = |t: &TargetSpec| &targets[&t.cluster];
    let eligible: Vec<&TargetSpec> = policy
        .targets
        .iter()
        .filter(|t| !t.addresses.is_empty() && !state(t).drained && state(t).health.eligible())
        .collect();
    let scaled = |t: &TargetSpec, base: u32| mul(base, state(t).share);
    let chosen: Vec<(&TargetSpec, u32)> = match policy.strategy {
        Strategy::Failover => failover_tiers(
            &eligible,
            |t| state(t).health == Health::Ramping,
            |t| (weight_of(t), state(t).share),
        ),
        Strategy::Weighted => {
            let weighted: Vec<&TargetSpec> = eligible
                .iter()
                .copied()
                .filter(|t| weight_of(t) > 0)
                .collect();
            // Weight 0 is a standby: answered only when nothing with weight is.
            let pool = if weighted.is_empty() {
                eligible.clone()
            } else {
                weighted
            };
            pool.into_iter()
                .map(|t| (t, scaled(t, weight_of(t).max(1))))
                .collect()
        }
        Strategy::RoundRobin | Strategy::Geo => {
            eligible.iter().map(|t| (*t, scaled(t, 1))).collect()
        }
    };
    if !chosen.is_empty() {
        return (answers_for(&chosen), Outcome::Normal);
    }

    let (answers, outcome) = when_all_unhealthy(policy, &state, &weight_of, &answers_for, prev);
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

/// The answers when no target is eligible, as the policy's `whenAllUnhealthy` says.
fn when_all_unhealthy<'a>(
    policy: &'a Policy,
    state: &impl Fn(&TargetSpec) -> &'a TargetState,
    weight_of: &impl Fn(&TargetSpec) -> u32,
    answers_for: &impl Fn(&[(&TargetSpec, u32)]) -> Vec<Answer>,
    prev: Option<&PolicyDecision>,
) -> (Vec<Answer>, Outcome) {
    match &policy.when_all_unhealthy {
        WhenAllUnhealthy::Empty => (Vec::new(), Outcome::Empty),
        WhenAllUnhealthy::Fallback(addresses) => {
            let mut answers: Vec<Answer> = addresses
                .iter()
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
            let undrained: Vec<(&TargetSpec, u32)> = policy
                .targets
                .iter()
                .filter(|t| !state(t).drained)
                .map(|t| (t, mul(weight_of(t).max(1), 1000)))
                .collect();
            let all: Vec<(&TargetSpec, u32)> =
                if undrained.iter().any(|(t, _)| !t.addresses.is_empty()) {
                    undrained
                } else {
                    policy
                        .targets
                        .iter()
                        .map(|t| (t, mul(weight_of(t).max(1), 1000)))
                        .collect()
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

/// Serde adapter for optional times as RFC 3339 text (the shim's adapter covers the
/// plain case).
mod opt_time_text {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&lifeline_model::time::format(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_rfc3339_weak(&t).map_err(D::Error::custom))
            .transpose()
    }
}
