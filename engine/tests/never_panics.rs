//! `decide` never panics, whatever it is given: policies with every bounded value at its
//! edges (and, separately, values no validation would pass, as a store could hold),
//! arbitrary signal histories with clocks that jump both ways, arbitrary overrides, and
//! restarts from a persisted decision, including one edited to extremes. Along the same
//! histories, with policies edited on the way, deciding only what changed gives exactly
//! the decision that deciding everything afresh gives.
//!
//! Tests run in debug builds, where integer overflow panics, so these properties also
//! prove the arithmetic is checked or saturating.
//!
//! 2,000 cases per property in a normal run; set `LIFELINE_PROPTEST_CASES` for more.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use lifeline_engine::{
    Decision, EngineConfig, Observation, OnSourceUnavailable, Override, OverrideAction, Policy,
    Signals, SourceState, TargetKey, TargetSignal, TargetSpec, WhenAllUnhealthy, decide,
    decide_afresh,
};
use lifeline_model::{Strategy as Plan, limits};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("LIFELINE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// `lo..=hi`, with both ends drawn often: bugs live at the bounds.
fn edged<T>(lo: T, hi: T) -> impl Strategy<Value = T>
where
    T: Copy + std::fmt::Debug + 'static,
    std::ops::RangeInclusive<T>: Strategy<Value = T>,
{
    prop_oneof![1 => Just(lo), 1 => Just(hi), 3 => lo..=hi]
}

fn edged_duration(lo: Duration, hi: Duration) -> impl Strategy<Value = Duration> {
    edged(lo.as_millis() as u64, hi.as_millis() as u64).prop_map(Duration::from_millis)
}

/// Any duration at all, as a hand-edited store could hold.
fn wild_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        any::<u64>().prop_map(Duration::from_secs),
        (0u64..1_000_000).prop_map(Duration::from_millis),
    ]
}

fn address(i: u8) -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u8..4).prop_map(move |b| IpAddr::V4(Ipv4Addr::new(10, i, 0, b))),
        (0u16..4).prop_map(move |b| IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            u16::from(i),
            0,
            0,
            0,
            0,
            0,
            b
        ))),
    ]
}

#[derive(Clone, Copy, Debug)]
enum Bounds {
    /// Only what validation accepts.
    Valid,
    /// Anything the types can hold.
    Wild,
}

fn target(i: u8, bounds: Bounds) -> impl Strategy<Value = TargetSpec> {
    let (prio, weight): (BoxedStrategy<u32>, BoxedStrategy<u32>) = match bounds {
        Bounds::Valid => (
            edged(0, limits::PRIORITY_MAX).boxed(),
            edged(0, limits::WEIGHT_MAX).boxed(),
        ),
        Bounds::Wild => (any::<u32>().boxed(), any::<u32>().boxed()),
    };
    (
        prio,
        weight,
        prop::collection::vec(address(i), 0..4),
        0u8..3,
    )
        .prop_map(move |(priority, weight, addresses, region)| TargetSpec {
            cluster: format!("c{i}").into(),
            region: format!("r{region}").into(),
            priority,
            weight,
            addresses,
        })
}

fn policy(n: usize, bounds: Bounds) -> impl Strategy<Value = Policy> {
    // Mostly a handful of targets, sometimes the maximum.
    let count = prop_oneof![6 => 1usize..6, 1 => Just(limits::TARGETS_MAX)];
    let targets =
        count.prop_flat_map(move |c| (0..c).map(|i| target(i as u8, bounds)).collect::<Vec<_>>());
    let long = || match bounds {
        Bounds::Valid => edged_duration(Duration::ZERO, limits::LONG_DURATION_MAX).boxed(),
        Bounds::Wild => wild_duration().boxed(),
    };
    let small = |lo: u32, hi: u32| match bounds {
        Bounds::Valid => edged(lo, hi).boxed(),
        Bounds::Wild => any::<u32>().boxed(),
    };
    let when = prop_oneof![
        Just(WhenAllUnhealthy::ServeAll),
        Just(WhenAllUnhealthy::LastKnownGood),
        Just(WhenAllUnhealthy::Empty),
        prop::collection::vec(address(250), 0..=limits::ADDRESSES_MAX)
            .prop_map(WhenAllUnhealthy::Fallback),
    ];
    let source = prop_oneof![
        Just(OnSourceUnavailable::Freeze),
        long().prop_map(|max_stale| OnSourceUnavailable::TreatAsUnhealthy { max_stale }),
    ];
    let strategy = prop_oneof![
        Just(Plan::Failover),
        Just(Plan::Weighted),
        Just(Plan::RoundRobin),
        Just(Plan::Geo)
    ];
    (
        (strategy, targets, when, source),
        (
            small(limits::THRESHOLD_MIN, limits::THRESHOLD_MAX),
            small(limits::THRESHOLD_MIN, limits::THRESHOLD_MAX),
            long(),
            long(),
            small(limits::RAMP_STEPS_MIN, limits::RAMP_STEPS_MAX),
            small(limits::TTL_MIN, limits::TTL_MAX),
        ),
    )
        .prop_map(
            move |((strategy, targets, when, source), (ut, ht, hold, ramp, steps, ttl))| Policy {
                id: format!("ns/p{n}"),
                // Two policies may share a hostname; the engine must not care.
                hostname: format!("p{}.global.example.com", n % 2),
                ttl,
                max_answers: limits::MAX_ANSWERS_DEFAULT,
                strategy,
                targets,
                unhealthy_threshold: ut,
                healthy_threshold: ht,
                when_all_unhealthy: when,
                on_source_unavailable: source,
                hold_down: hold,
                ramp_duration: ramp,
                ramp_steps: steps,
            },
        )
}

fn policies(bounds: Bounds) -> impl Strategy<Value = Vec<Policy>> {
    (1usize..4).prop_flat_map(move |n| (0..n).map(|i| policy(i, bounds)).collect::<Vec<_>>())
}

/// How the clock moves between decisions: small steps, long gaps, and backwards.
#[derive(Clone, Debug)]
enum Tick {
    Forward(Duration),
    Backward(Duration),
}

fn tick() -> impl Strategy<Value = Tick> {
    prop_oneof![
        6 => (0u64..5_000).prop_map(|ms| Tick::Forward(Duration::from_millis(ms))),
        2 => edged_duration(Duration::ZERO, limits::LONG_DURATION_MAX * 2).prop_map(Tick::Forward),
        1 => (0u64..100_000).prop_map(|s| Tick::Backward(Duration::from_secs(s))),
    ]
}

/// One step of history: time moves, some targets report, overrides change, and the
/// process may restart from what it persisted.
#[derive(Clone, Debug)]
struct Step {
    tick: Tick,
    reports: Vec<Report>,
    overrides: Vec<(usize, Option<usize>, u8, u32, i64)>,
    restart: Option<Edit>,
    /// A policy edited before this step: its index, a new strategy and a new weight for
    /// its first target.
    touch: Option<(usize, u8, u32)>,
}

/// Policy index, target index, observations as (ok, offset from now in ms, either
/// sign), and when the source became unavailable (offset in ms) if it is.
type Report = (usize, usize, Vec<(bool, i64)>, Option<i64>);

/// What a restart does to the persisted decision before it is read back.
#[derive(Clone, Copy, Debug)]
enum Edit {
    None,
    /// Counters and shares at their maxima, as a corrupted or hand-edited store might.
    Extremes,
    /// Forget everything (a lost store).
    Empty,
}

fn step() -> impl Strategy<Value = Step> {
    let report = (
        0usize..4,
        0usize..70,
        prop::collection::vec((any::<bool>(), -100_000i64..100_000), 0..4),
        prop::option::weighted(0.2, -10_000_000i64..10_000_000),
    );
    let ov = (
        0usize..5,
        prop::option::of(0usize..4),
        0u8..3,
        prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>(), 0u32..2000],
        -100_000i64..100_000,
    );
    (
        tick(),
        prop::collection::vec(report, 0..8),
        prop::collection::vec(ov, 0..3),
        prop::option::weighted(
            0.2,
            prop_oneof![Just(Edit::None), Just(Edit::Extremes), Just(Edit::Empty)],
        ),
        prop::option::weighted(0.15, (0usize..4, 0u8..4, 0u32..=limits::WEIGHT_MAX)),
    )
        .prop_map(|(tick, reports, overrides, restart, touch)| Step {
            tick,
            reports,
            overrides,
            restart,
            touch,
        })
}

fn shift(t: SystemTime, ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        t.checked_add(d).unwrap_or(t)
    } else {
        t.checked_sub(d).unwrap_or(t)
    }
}

fn extremes(decision: &mut Decision) {
    decision.revision = u64::MAX;
    for p in decision.policies.values_mut() {
        let p = std::sync::Arc::make_mut(p);
        for t in p.targets.values_mut() {
            t.ok_streak = u32::MAX;
            t.fail_streak = u32::MAX;
            t.share = u32::MAX;
        }
        for a in p.answers.iter_mut().chain(p.last_good.iter_mut()) {
            a.weight = u32::MAX;
        }
    }
}

/// Runs a history. Panics are what the properties are about; besides, revisions never
/// go back, every policy is decided, a decision always persists and reads back, and
/// deciding only what changed equals deciding all afresh at every step.
fn walk(policies: &[Policy], steps: &[Step], start: SystemTime) -> Result<(), TestCaseError> {
    let config = EngineConfig::default();
    let mut now = start;
    let mut decision = Decision::default();
    let mut afresh = Decision::default();
    let mut policies = policies.to_vec();
    let policies = &mut policies;
    for s in steps {
        if let Some((p, strategy, weight)) = s.touch
            && let Some(policy) = policies.get_mut(p)
        {
            policy.strategy = [Plan::Failover, Plan::Weighted, Plan::RoundRobin, Plan::Geo]
                [usize::from(strategy % 4)];
            if let Some(t) = policy.targets.first_mut() {
                t.weight = weight;
            }
        }
        let policies: &[Policy] = policies;
        now = match s.tick {
            Tick::Forward(d) => now.checked_add(d).unwrap_or(now),
            Tick::Backward(d) => now.checked_sub(d).unwrap_or(now),
        };
        let mut signals = Signals::default();
        for (p, t, observations, unavailable) in &s.reports {
            let Some(policy) = policies.get(*p) else {
                continue;
            };
            // Reports for targets that do not exist are part of the test.
            let cluster = policy
                .targets
                .get(*t)
                .map_or_else(|| format!("ghost{t}"), |t| t.cluster.to_string());
            signals.targets.insert(
                TargetKey::new(&policy.id, cluster),
                TargetSignal {
                    observations: observations
                        .iter()
                        .map(|(ok, at)| Observation {
                            at: shift(now, *at),
                            ok: *ok,
                            detail: String::new(),
                        })
                        .collect(),
                    source: unavailable.map_or(SourceState::Available, |ms| {
                        SourceState::Unavailable {
                            since: shift(now, ms),
                        }
                    }),
                },
            );
        }
        let overrides: Vec<Override> = s
            .overrides
            .iter()
            .enumerate()
            .map(|(i, (cluster, policy, action, weight, expires))| Override {
                id: format!("o{i}"),
                cluster: format!("c{cluster}"),
                policy: policy.and_then(|p| policies.get(p)).map(|p| p.id.clone()),
                action: match action {
                    0 => OverrideAction::Drain,
                    1 => OverrideAction::Pin,
                    _ => OverrideAction::Weight(*weight),
                },
                reason: String::new(),
                author: String::new(),
                created_at: now,
                expires_at: shift(now, *expires),
            })
            .collect();
        let before = decision.revision;
        decision = decide(&config, policies, &signals, &overrides, &decision, now);
        afresh = decide_afresh(&config, policies, &signals, &overrides, &afresh, now);
        prop_assert_eq!(
            &decision,
            &afresh,
            "deciding what changed differs from afresh"
        );
        prop_assert!(decision.revision >= before, "revision went back");
        prop_assert!(
            decision.policies.keys().eq(policies
                .iter()
                .map(|p| &p.id)
                .collect::<std::collections::BTreeSet<_>>()),
            "a policy is missing from the decision"
        );
        if let Some(edit) = s.restart {
            let text = serde_json::to_vec(&decision)
                .map_err(|e| TestCaseError::fail(format!("decision does not serialise: {e}")))?;
            decision = serde_json::from_slice(&text).map_err(|e| {
                TestCaseError::fail(format!("persisted decision does not decode: {e}"))
            })?;
            match edit {
                Edit::None => {}
                Edit::Extremes => extremes(&mut decision),
                Edit::Empty => decision = Decision::default(),
            }
            afresh = decision.clone();
        }
    }
    Ok(())
}

fn start() -> impl Strategy<Value = SystemTime> {
    prop_oneof![
        Just(SystemTime::UNIX_EPOCH),
        (0u64..4_000_000_000).prop_map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
        // Close to the last instant a stored decision can record.
        Just(SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_000)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn decide_never_panics_on_valid_policies(
        policies in policies(Bounds::Valid),
        steps in prop::collection::vec(step(), 1..25),
        start in start(),
    ) {
        walk(&policies, &steps, start)?;
    }

    #[test]
    fn decide_never_panics_on_values_no_validation_would_pass(
        policies in policies(Bounds::Wild),
        steps in prop::collection::vec(step(), 1..25),
        start in start(),
    ) {
        walk(&policies, &steps, start)?;
    }
}
