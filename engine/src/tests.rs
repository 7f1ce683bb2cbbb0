//! Table tests for each strategy and transition, and property tests for the invariants.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, SystemTime},
};

use std::sync::Arc;

use lifeline_model::Strategy as Plan;
use proptest::prelude::*;

use super::{
    AlarmKind, BlastRadius, Decision, EngineConfig, Health, Observation, OnSourceUnavailable,
    Outcome, Override, OverrideAction, Policy, Signals, SourceState, TargetKey, TargetSignal,
    TargetSpec, WhenAllUnhealthy, decide,
};

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn target(cluster: &str, priority: u32, weight: u32, last: u8) -> TargetSpec {
    TargetSpec {
        cluster: cluster.into(),
        region: format!("region-{cluster}").into(),
        priority,
        weight,
        addresses: vec![ip(last)],
    }
}

fn policy(strategy: Plan, targets: Vec<TargetSpec>) -> Policy {
    Policy {
        id: "shop/checkout".to_owned(),
        hostname: "checkout.global.example.com".to_owned(),
        ttl: 30,
        max_answers: 8,
        strategy,
        targets,
        unhealthy_threshold: 2,
        healthy_threshold: 2,
        when_all_unhealthy: WhenAllUnhealthy::ServeAll,
        on_source_unavailable: OnSourceUnavailable::Freeze,
        hold_down: Duration::from_secs(30),
        ramp_duration: Duration::from_secs(40),
        ramp_steps: 4,
    }
}

fn three_tiers() -> Policy {
    policy(
        Plan::Failover,
        vec![
            target("a", 0, 100, 2),
            target("b", 1, 100, 3),
            target("c", 2, 100, 4),
        ],
    )
}

/// `n` copies of [`three_tiers`], each with an id and hostname of its own.
fn numbered(n: usize) -> Vec<Policy> {
    (0..n)
        .map(|i| {
            let mut p = three_tiers();
            p.id = format!("shop/p{i}");
            p.hostname = format!("p{i}.global.example.com");
            p
        })
        .collect()
}

fn no_guard() -> EngineConfig {
    EngineConfig {
        blast_radius: BlastRadius {
            enabled: false,
            ..BlastRadius::default()
        },
        ..EngineConfig::default()
    }
}

/// Drives the engine through time, one decision per step.
struct Sim {
    config: EngineConfig,
    policies: Vec<Policy>,
    overrides: Vec<Override>,
    decision: Decision,
    now: SystemTime,
}

impl Sim {
    fn new(policies: Vec<Policy>) -> Self {
        Self::with_config(no_guard(), policies)
    }

    fn with_config(config: EngineConfig, policies: Vec<Policy>) -> Self {
        let mut sim = Self {
            config,
            policies,
            overrides: Vec::new(),
            decision: Decision::default(),
            now: t0(),
        };
        sim.step(&[]);
        sim
    }

    /// Advances one second and decides with one observation per listed (cluster, ok)
    /// for the first policy.
    fn step(&mut self, results: &[(&str, bool)]) -> &Decision {
        self.now += Duration::from_secs(1);
        let mut signals = Signals::default();
        for (cluster, ok) in results {
            signals
                .targets
                .entry(TargetKey::new(&self.policies[0].id, *cluster))
                .or_default()
                .observations
                .push(Observation {
                    at: self.now,
                    ok: *ok,
                    detail: if *ok {
                        "200 OK".into()
                    } else {
                        "connect refused".into()
                    },
                });
        }
        self.decide(&signals)
    }

    fn decide(&mut self, signals: &Signals) -> &Decision {
        self.decision = decide(
            &self.config,
            &self.policies,
            signals,
            &self.overrides,
            &self.decision,
            self.now,
        );
        &self.decision
    }

    fn clusters(&self) -> Vec<String> {
        let mut c: Vec<String> = self.decision.policies[&self.policies[0].id]
            .answers
            .iter()
            .map(|a| a.cluster.to_string())
            .collect();
        c.dedup();
        c
    }

    fn outcome(&self) -> Outcome {
        self.decision.policies[&self.policies[0].id].outcome
    }

    fn health(&self, cluster: &str) -> Health {
        self.decision.policies[&self.policies[0].id].targets[cluster].health
    }

    fn wait(&mut self, secs: u64, results: &[(&str, bool)]) {
        for _ in 0..secs {
            self.step(results);
        }
    }
}

// === strategies ===

#[test]
fn failover_answers_the_lowest_tier_only() {
    let sim = Sim::new(vec![three_tiers()]);
    assert_eq!(sim.clusters(), ["a"]);
    assert_eq!(sim.outcome(), Outcome::Normal);
}

#[test]
fn unhealthy_primary_fails_over_to_secondary() {
    let mut sim = Sim::new(vec![three_tiers()]);
    sim.step(&[("a", false)]);
    assert_eq!(
        sim.clusters(),
        ["a"],
        "one failure is below the threshold of 2"
    );
    sim.step(&[("a", false)]);
    assert_eq!(sim.clusters(), ["b"]);
    assert_eq!(sim.health("a"), Health::Unhealthy);
    sim.step(&[("a", false), ("b", false)]);
    sim.step(&[("a", false), ("b", false)]);
    assert_eq!(sim.clusters(), ["c"]);
}

#[test]
fn weighted_answers_every_healthy_target_with_its_weight() {
    let sim = Sim::new(vec![policy(
        Plan::Weighted,
        vec![
            target("a", 0, 70, 2),
            target("b", 0, 30, 3),
            target("c", 0, 0, 4),
        ],
    )]);
    let answers = &sim.decision.policies["shop/checkout"].answers;
    let weights: Vec<(String, u32)> = answers
        .iter()
        .map(|a| (a.cluster.to_string(), a.weight))
        .collect();
    assert_eq!(
        weights,
        [("a".to_owned(), 70_000), ("b".to_owned(), 30_000)],
        "weight 0 is a standby"
    );
}

#[test]
fn weighted_standby_serves_when_weighted_targets_fail() {
    let mut sim = Sim::new(vec![policy(
        Plan::Weighted,
        vec![target("a", 0, 70, 2), target("c", 0, 0, 4)],
    )]);
    sim.wait(2, &[("a", false)]);
    assert_eq!(sim.clusters(), ["c"]);
}

/// The clusters held in reserve, tier by tier.
fn reserve(sim: &Sim) -> Vec<Vec<String>> {
    (sim.decision.policies[&sim.policies[0].id].standby.iter())
        .map(|tier| tier.iter().map(|a| a.cluster.to_string()).collect())
        .collect()
}

#[test]
fn failover_holds_the_healthy_lower_tiers_in_reserve() {
    let mut sim = Sim::new(vec![three_tiers()]);
    assert_eq!(reserve(&sim), [["b"], ["c"]]);
    sim.wait(2, &[("b", false)]);
    assert_eq!(sim.clusters(), ["a"]);
    assert_eq!(reserve(&sim), [["c"]], "an unhealthy tier is no reserve");
    sim.wait(2, &[("a", false), ("b", false)]);
    assert_eq!(sim.clusters(), ["c"]);
    assert!(reserve(&sim).is_empty(), "nothing healthy is left behind c");
    // Failing open answers every target: nothing is held back.
    sim.wait(2, &[("a", false), ("b", false), ("c", false)]);
    assert_eq!(sim.outcome(), Outcome::ServeAll);
    assert!(reserve(&sim).is_empty());
}

#[test]
fn weighted_holds_its_weight_0_targets_in_reserve() {
    let sim = Sim::new(vec![policy(
        Plan::Weighted,
        vec![target("a", 0, 70, 2), target("c", 0, 0, 4)],
    )]);
    assert_eq!(sim.clusters(), ["a"]);
    assert_eq!(reserve(&sim), [["c"]]);
}

#[test]
fn a_replica_draining_the_answer_alone_answers_what_the_leader_would() {
    use lifeline_model::{AddressSet, NameRecords, Target, ZoneSnapshot};
    // b is down; a answers, c waits in reserve.
    let mut sim = Sim::new(vec![three_tiers()]);
    sim.wait(2, &[("b", false)]);
    let pd = &sim.decision.policies["shop/checkout"];
    let target = |a: &super::Answer| Target {
        address: a.address,
        cluster: a.cluster.to_string(),
        region: a.region.to_string(),
        weight: a.weight,
        share: None,
    };
    let mut published = ZoneSnapshot::empty("global.example.com", 1, t0());
    published.names.insert(
        "checkout".into(),
        NameRecords {
            address: Some(AddressSet {
                ttl: 30,
                targets: pd.answers.iter().map(target).collect(),
                max_answers: None,
                geo: false,
                standby: (pd.standby.iter())
                    .map(|tier| tier.iter().map(target).collect())
                    .collect(),
            }),
            ..NameRecords::default()
        },
    );
    // The operator drains a: the leader decides again, the replica applies it alone.
    let drain = an_override("a", OverrideAction::Drain, 600);
    sim.overrides.push(drain.clone());
    sim.step(&[("b", false)]);
    let at_replica = lifeline_model::overrides::apply(&published, &[drain], t0());
    let replica: Vec<String> = at_replica.names["checkout"]
        .address
        .as_ref()
        .unwrap()
        .targets
        .iter()
        .map(|t| t.cluster.clone())
        .collect();
    assert_eq!(sim.clusters(), ["c"]);
    assert_eq!(
        replica,
        sim.clusters(),
        "the same answer with or without a leader"
    );
}

#[test]
fn round_robin_and_geo_answer_all_healthy_targets_equally() {
    for strategy in [Plan::RoundRobin, Plan::Geo] {
        let mut sim = Sim::new(vec![policy(
            strategy,
            vec![
                target("a", 0, 70, 2),
                target("b", 1, 30, 3),
                target("c", 2, 10, 4),
            ],
        )]);
        sim.wait(2, &[("b", false)]);
        assert_eq!(sim.clusters(), ["a", "c"], "{strategy:?}");
        let answers = &sim.decision.policies["shop/checkout"].answers;
        assert!(answers.iter().all(|a| a.weight == 1000), "{strategy:?}");
        assert_eq!(
            &*answers[0].region, "region-a",
            "answers carry the region for geo selection"
        );
    }
}

// === when all are unhealthy ===

fn all_down(mode: WhenAllUnhealthy) -> Sim {
    let mut p = three_tiers();
    p.when_all_unhealthy = mode;
    let mut sim = Sim::new(vec![p]);
    sim.wait(2, &[("a", false), ("b", false), ("c", false)]);
    sim
}

#[test]
fn serve_all_fails_open_when_every_target_is_unhealthy() {
    let sim = all_down(WhenAllUnhealthy::ServeAll);
    assert_eq!(sim.outcome(), Outcome::ServeAll);
    assert_eq!(sim.clusters(), ["a", "b", "c"]);
}

#[test]
fn empty_answers_nothing_when_every_target_is_unhealthy() {
    let sim = all_down(WhenAllUnhealthy::Empty);
    assert_eq!(sim.outcome(), Outcome::Empty);
    assert!(sim.clusters().is_empty());
}

#[test]
fn fallback_answers_the_fallback_addresses() {
    let sim = all_down(WhenAllUnhealthy::Fallback(vec![ip(200)]));
    assert_eq!(sim.outcome(), Outcome::Fallback);
    assert_eq!(
        sim.decision.policies["shop/checkout"].answers[0].address,
        ip(200)
    );
}

#[test]
fn last_known_good_keeps_the_last_healthy_answer() {
    let mut p = three_tiers();
    p.when_all_unhealthy = WhenAllUnhealthy::LastKnownGood;
    let mut sim = Sim::new(vec![p]);
    sim.wait(2, &[("a", false)]);
    assert_eq!(sim.clusters(), ["b"]);
    sim.wait(2, &[("a", false), ("b", false), ("c", false)]);
    assert_eq!(sim.outcome(), Outcome::LastKnownGood);
    assert_eq!(sim.clusters(), ["b"]);
}

// === failback ===

#[test]
fn recovered_primary_waits_out_hold_down_then_ramps_in_steps() {
    let mut sim = Sim::new(vec![three_tiers()]);
    sim.wait(2, &[("a", false)]);
    assert_eq!(sim.clusters(), ["b"]);
    sim.wait(2, &[("a", true)]);
    assert_eq!(sim.health("a"), Health::Recovering);
    sim.wait(29, &[("a", true)]);
    assert_eq!(sim.clusters(), ["b"], "still in hold-down");
    sim.wait(1, &[("a", true)]);
    assert_eq!(sim.health("a"), Health::Ramping);
    let shares = |sim: &Sim| -> Vec<(String, u32)> {
        sim.decision.policies["shop/checkout"]
            .answers
            .iter()
            .map(|a| (a.cluster.to_string(), a.weight))
            .collect()
    };
    assert_eq!(
        shares(&sim),
        [("a".into(), 25_000), ("b".into(), 75_000)],
        "first of 4 steps"
    );
    sim.wait(10, &[("a", true)]);
    assert_eq!(shares(&sim), [("a".into(), 50_000), ("b".into(), 50_000)]);
    sim.wait(30, &[("a", true)]);
    assert_eq!(sim.health("a"), Health::Healthy);
    assert_eq!(sim.clusters(), ["a"]);
}

#[test]
fn a_failure_during_the_ramp_sends_the_target_back_to_unhealthy() {
    let mut sim = Sim::new(vec![three_tiers()]);
    sim.wait(2, &[("a", false)]);
    sim.wait(33, &[("a", true)]);
    assert_eq!(sim.health("a"), Health::Ramping);
    sim.wait(2, &[("a", false)]);
    assert_eq!(sim.health("a"), Health::Unhealthy);
    assert_eq!(sim.clusters(), ["b"]);
}

#[test]
fn at_most_n_policies_ramp_at_once() {
    let policies = numbered(4);
    let mut sim = Sim::new(policies.clone());
    let all = |ok: bool| {
        let mut s = Signals::default();
        for p in &policies {
            s.targets
                .entry(TargetKey::new(&p.id, "a"))
                .or_default()
                .observations
                .push(Observation {
                    at: SystemTime::UNIX_EPOCH,
                    ok,
                    detail: String::new(),
                });
        }
        s
    };
    for ok in [false, false, true, true] {
        sim.now += Duration::from_secs(1);
        sim.decide(&all(ok));
    }
    sim.now += Duration::from_secs(31);
    sim.decide(&all(true));
    let ramping = sim
        .decision
        .policies
        .values()
        .filter(|p| p.targets["a"].health == Health::Ramping)
        .count();
    assert_eq!(ramping, 2, "max_concurrent_ramps is 2");
    let waiting = &sim.decision.policies["shop/p3"].targets["a"];
    assert_eq!(waiting.health, Health::Recovering);
    assert!(
        waiting.reason.contains("waiting for a ramp slot"),
        "{}",
        waiting.reason
    );
}

// === sources, guard, overrides ===

#[test]
fn frozen_source_keeps_state_and_answers() {
    let mut sim = Sim::new(vec![three_tiers()]);
    let mut signals = Signals::default();
    signals.targets.insert(
        TargetKey::new("shop/checkout", "a"),
        TargetSignal {
            observations: vec![
                Observation {
                    at: t0(),
                    ok: false,
                    detail: String::new()
                };
                5
            ],
            source: SourceState::Unavailable { since: t0() },
        },
    );
    for _ in 0..600 {
        sim.now += Duration::from_secs(1);
        sim.decide(&signals);
    }
    assert_eq!(sim.clusters(), ["a"]);
}

#[test]
fn treat_as_unhealthy_gives_up_after_max_stale() {
    let mut p = three_tiers();
    p.on_source_unavailable = OnSourceUnavailable::TreatAsUnhealthy {
        max_stale: Duration::from_secs(60),
    };
    let mut sim = Sim::new(vec![p]);
    let mut signals = Signals::default();
    signals.targets.insert(
        TargetKey::new("shop/checkout", "a"),
        TargetSignal {
            observations: Vec::new(),
            source: SourceState::Unavailable { since: sim.now },
        },
    );
    sim.now += Duration::from_secs(59);
    sim.decide(&signals);
    assert_eq!(sim.clusters(), ["a"]);
    sim.now += Duration::from_secs(2);
    sim.decide(&signals);
    assert_eq!(sim.clusters(), ["b"]);
}

#[test]
fn blast_radius_guard_freezes_when_most_targets_fail_at_once() {
    let policies = numbered(3);
    let mut sim = Sim::with_config(EngineConfig::default(), policies.clone());
    let before = sim.decision.clone();
    let mut signals = Signals::default();
    for p in &policies {
        for c in ["a", "b", "c"] {
            signals
                .targets
                .entry(TargetKey::new(&p.id, c))
                .or_default()
                .observations
                .push(Observation {
                    at: t0(),
                    ok: false,
                    detail: "network unreachable".into(),
                });
        }
    }
    for _ in 0..5 {
        sim.now += Duration::from_secs(1);
        sim.decide(&signals);
    }
    assert_eq!(sim.decision.alarms.len(), 1);
    assert_eq!(
        sim.decision.alarms[0].kind,
        AlarmKind::SystemicFailureSuspected
    );
    for (id, p) in &sim.decision.policies {
        assert_eq!(p.answers, before.policies[id].answers, "{id} answers held");
    }
}

#[test]
fn blast_radius_guard_lets_a_single_failure_through() {
    let policies = numbered(3);
    let mut sim = Sim::with_config(EngineConfig::default(), policies);
    sim.wait(2, &[("a", false)]);
    assert!(sim.decision.alarms.is_empty());
    assert_eq!(sim.clusters(), ["b"]);
}

/// One observation per listed (cluster, ok) for every policy of `sim`, a second later.
fn step_all(sim: &mut Sim, results: &[(&str, bool)]) {
    let mut signals = Signals::default();
    for p in &sim.policies {
        for (cluster, ok) in results {
            signals
                .targets
                .entry(TargetKey::new(&p.id, *cluster))
                .or_default()
                .observations
                .push(Observation {
                    at: sim.now,
                    ok: *ok,
                    detail: if *ok { "200" } else { "refused" }.into(),
                });
        }
    }
    sim.now += Duration::from_secs(1);
    sim.decide(&signals);
}

/// Every answer of every policy, by policy.
fn every_answer(sim: &Sim) -> Vec<Vec<String>> {
    sim.decision
        .policies
        .values()
        .map(|p| p.answers.iter().map(|a| a.cluster.to_string()).collect())
        .collect()
}

#[test]
fn after_a_systemic_failure_a_target_must_fail_again_before_its_answers_move() {
    let mut policies = numbered(3);
    for p in &mut policies {
        p.hold_down = Duration::ZERO;
        p.ramp_duration = Duration::ZERO;
    }
    let all_ok = [("a", true), ("b", true), ("c", true)];
    let all_down = [("a", false), ("b", false), ("c", false)];
    let on_a = vec![vec!["a".to_owned()]; 3];
    let on_b = vec![vec!["b".to_owned()]; 3];
    let systemic = |sim: &Sim| {
        sim.decision
            .alarms
            .iter()
            .any(|a| a.kind == AlarmKind::SystemicFailureSuspected)
    };
    for really_down in [false, true] {
        let mut sim = Sim::with_config(EngineConfig::default(), policies.clone());
        for _ in 0..2 {
            step_all(&mut sim, &all_ok);
        }
        assert_eq!(every_answer(&sim), on_a);
        // The first failures cross no threshold; from the second on, all are held.
        step_all(&mut sim, &all_down);
        for _ in 0..3 {
            step_all(&mut sim, &all_down);
            assert!(systemic(&sim), "every target failing is held");
        }
        // A round with nothing new: the guard still holds.
        step_all(&mut sim, &[]);
        assert!(systemic(&sim), "the guard lets go only when failures stop");
        assert_eq!(every_answer(&sim), on_a);

        // The fleet returns, out of step: b and c answer again while a's failure (a probe
        // sent before its return) lands in the same round. The guard lets go, and a's
        // streak from the held time does not move the answers.
        step_all(&mut sim, &[("a", false), ("b", true), ("c", true)]);
        assert!(!systemic(&sim));
        assert_eq!(
            every_answer(&sim),
            on_a,
            "moved on a failure seen while held"
        );
        let still_held: Vec<&str> = sim
            .decision
            .policies
            .values()
            .flat_map(|p| p.targets.values())
            .map(|t| &*t.reason)
            .filter(|r| r.starts_with("failure held back"))
            .collect();
        assert!(still_held.is_empty(), "stale reasons: {still_held:?}");
        if really_down {
            // A target really down is confirmed by a full threshold of new failures.
            step_all(&mut sim, &[("a", false)]);
            assert_eq!(every_answer(&sim), on_a, "moved after one new failure");
            step_all(&mut sim, &[("a", false)]);
            assert_eq!(every_answer(&sim), on_b, "a down for good moves after two");
        } else {
            step_all(&mut sim, &all_ok);
            step_all(&mut sim, &all_ok);
            assert_eq!(every_answer(&sim), on_a);
        }
        assert!(!systemic(&sim));
    }
}

fn an_override(cluster: &str, action: OverrideAction, expires_in: u64) -> Override {
    Override {
        id: format!("{cluster}-{action:?}"),
        cluster: cluster.into(),
        policy: None,
        action,
        created_at: t0(),
        expires_at: t0() + Duration::from_secs(expires_in),
        author: "oncall".to_owned(),
        reason: "test".to_owned(),
    }
}

#[test]
fn drain_moves_traffic_and_expires() {
    let mut sim = Sim::new(vec![three_tiers()]);
    sim.overrides
        .push(an_override("a", OverrideAction::Drain, 10));
    sim.step(&[]);
    assert_eq!(sim.clusters(), ["b"]);
    assert!(sim.decision.policies["shop/checkout"].targets["a"].drained);
    sim.wait(10, &[]);
    assert_eq!(sim.clusters(), ["a"], "an expired override has no effect");
}

#[test]
fn pin_wins_over_health() {
    let mut sim = Sim::new(vec![three_tiers()]);
    sim.wait(2, &[("c", false)]);
    sim.overrides
        .push(an_override("c", OverrideAction::Pin, 100));
    sim.step(&[]);
    assert_eq!(sim.clusters(), ["c"]);
    assert_eq!(sim.outcome(), Outcome::Pinned);
}

#[test]
fn weight_override_replaces_the_weight() {
    let mut sim = Sim::new(vec![policy(
        Plan::Weighted,
        vec![target("a", 0, 70, 2), target("b", 0, 30, 3)],
    )]);
    sim.overrides
        .push(an_override("a", OverrideAction::Weight(0), 100));
    sim.step(&[]);
    assert_eq!(sim.clusters(), ["b"]);
}

#[test]
fn revision_changes_only_when_answers_change() {
    let mut sim = Sim::new(vec![three_tiers()]);
    let r = sim.decision.revision;
    sim.wait(5, &[("a", true), ("b", true)]);
    assert_eq!(sim.decision.revision, r);
    sim.wait(2, &[("a", false)]);
    assert_eq!(sim.decision.revision, r + 1);
}

#[test]
fn decisions_round_trip_through_json() {
    let mut sim = Sim::new(vec![three_tiers()]);
    sim.wait(2, &[("a", false)]);
    let text = serde_json::to_string(&sim.decision).unwrap();
    let back: Decision = serde_json::from_str(&text).unwrap();
    assert_eq!(back, sim.decision);
}

// === properties ===

fn arb_policy() -> impl Strategy<Value = Policy> {
    arb_policy_of(prop_oneof![
        Just(Plan::Failover),
        Just(Plan::Weighted),
        Just(Plan::RoundRobin),
        Just(Plan::Geo)
    ])
}

fn arb_policy_of(plans: impl Strategy<Value = Plan>) -> impl Strategy<Value = Policy> {
    (
        plans,
        prop::collection::vec((0u32..3, 0u32..5), 1..5),
        prop_oneof![
            Just(WhenAllUnhealthy::ServeAll),
            Just(WhenAllUnhealthy::LastKnownGood),
            Just(WhenAllUnhealthy::Empty),
            Just(WhenAllUnhealthy::Fallback(vec![ip(250)]))
        ],
        1u32..4,
        1u32..4,
    )
        .prop_map(|(strategy, targets, when, ut, ht)| {
            let mut p = policy(
                strategy,
                targets
                    .iter()
                    .enumerate()
                    .map(|(i, (prio, w))| target(&format!("c{i}"), *prio, *w, i as u8 + 2))
                    .collect(),
            );
            p.when_all_unhealthy = when;
            p.unhealthy_threshold = ut;
            p.healthy_threshold = ht;
            p.hold_down = Duration::from_secs(3);
            p.ramp_duration = Duration::from_secs(4);
            p
        })
}

/// Steps: per second, per target: Some(ok) observation or None; plus drains.
fn arb_steps(targets: usize) -> impl Strategy<Value = Vec<Vec<(Option<bool>, bool)>>> {
    prop::collection::vec(
        prop::collection::vec(
            (prop::option::of(any::<bool>()), prop::bool::weighted(0.1)),
            targets,
        ),
        1..40,
    )
}

fn run(policy: &Policy, steps: &[Vec<(Option<bool>, bool)>]) -> Vec<Decision> {
    let mut sim = Sim::new(vec![policy.clone()]);
    let mut out = vec![sim.decision.clone()];
    for step in steps {
        sim.now += Duration::from_secs(1);
        sim.overrides = step
            .iter()
            .enumerate()
            .filter(|(_, (_, drain))| *drain)
            .map(|(i, _)| {
                let mut o = an_override(&format!("c{i}"), OverrideAction::Drain, 0);
                o.expires_at = sim.now + Duration::from_secs(1);
                o
            })
            .collect();
        let mut signals = Signals::default();
        for (i, (obs, _)) in step.iter().enumerate() {
            if let Some(ok) = obs {
                signals
                    .targets
                    .entry(TargetKey::new(&policy.id, format!("c{i}")))
                    .or_default()
                    .observations
                    .push(Observation {
                        at: sim.now,
                        ok: *ok,
                        detail: String::new(),
                    });
            }
        }
        sim.decide(&signals);
        out.push(sim.decision.clone());
    }
    out
}

/// Which policies keep their previous entry (the very same one, shared) and which are
/// decided again. The property tests show reuse never changes a result; this shows it
/// happens.
#[test]
fn only_policies_with_something_new_are_decided_again() {
    let named = |name: &str| Policy {
        id: format!("shop/{name}"),
        hostname: format!("{name}.global.example.com"),
        ..three_tiers()
    };
    let policies = [
        named("heard"),
        named("hint"),
        named("quiet"),
        named("edited"),
    ];
    let config = no_guard();
    // One observation, `ok` or not, for each of `policies`' targets.
    let report = |policies: &[&Policy], ok: bool, at: SystemTime| {
        let mut signals = Signals::default();
        for p in policies {
            for t in &p.targets {
                signals.targets.insert(
                    TargetKey::new(&p.id, &*t.cluster),
                    TargetSignal {
                        observations: vec![Observation {
                            at,
                            ok,
                            detail: if ok { "200 OK" } else { "refused" }.into(),
                        }],
                        source: SourceState::Available,
                    },
                );
            }
        }
        signals
    };
    // Two rounds of successes: every target healthy, nothing moving with time.
    let all: Vec<&Policy> = policies.iter().collect();
    let mut d = Decision::default();
    for s in 0..2 {
        let at = t0() + Duration::from_secs(s);
        d = decide(&config, &policies, &report(&all, true, at), &[], &d, at);
    }
    let at = t0() + Duration::from_secs(5);
    // "heard" reports again; "hint" gets a signal with no news (the controller sends
    // one for readiness-hint targets each round); "quiet" gets nothing; "edited"
    // changes its TTL.
    let mut signals = report(&[&policies[0]], true, at);
    signals
        .targets
        .insert(TargetKey::new("shop/hint", "a"), TargetSignal::default());
    let mut next_policies = policies.clone();
    next_policies[3].ttl = 60;
    let next = decide(&config, &next_policies, &signals, &[], &d, at);
    let shared = |id: &str| Arc::ptr_eq(&next.policies[id], &d.policies[id]);
    assert!(
        !shared("shop/heard"),
        "a policy with an observation was kept"
    );
    assert!(
        shared("shop/hint"),
        "a signal with no news made a policy decided again"
    );
    assert!(
        shared("shop/quiet"),
        "a policy with nothing new was decided again"
    );
    assert!(!shared("shop/edited"), "an edited policy was kept");
    assert_eq!(next.policies["shop/edited"].ttl, 60);

    // A target in hold-down moves with time: its policy is decided at every round. Its
    // policy's targets fail twice, then succeed twice.
    let quiet = &next_policies[2];
    let mut d = next;
    for (s, ok) in [(6, false), (7, false), (8, true), (9, true)] {
        let at = t0() + Duration::from_secs(s);
        d = decide(
            &config,
            &next_policies,
            &report(&[quiet], ok, at),
            &[],
            &d,
            at,
        );
    }
    assert_eq!(
        d.policies["shop/quiet"].targets["a"].health,
        Health::Recovering
    );
    let at = t0() + Duration::from_secs(12);
    let later = decide(&config, &next_policies, &Signals::default(), &[], &d, at);
    assert!(
        !Arc::ptr_eq(&later.policies["shop/quiet"], &d.policies["shop/quiet"]),
        "a policy in hold-down was kept"
    );
    assert!(Arc::ptr_eq(
        &later.policies["shop/hint"],
        &d.policies["shop/hint"]
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_answers_a_drained_or_unhealthy_target_unless_failing_open(
        (policy, steps) in arb_policy().prop_flat_map(|p| { let n = p.targets.len(); (Just(p), arb_steps(n)) })
    ) {
        for d in run(&policy, &steps) {
            let pd = &d.policies[&policy.id];
            if pd.outcome != Outcome::Normal { continue; }
            for a in &pd.answers {
                let t = &pd.targets[&a.cluster];
                prop_assert!(!t.drained, "drained {} answered", a.cluster);
                prop_assert!(matches!(t.health, Health::Healthy | Health::Unknown | Health::Ramping), "{:?} answered", t.health);
            }
        }
    }

    #[test]
    fn never_answers_empty_unless_the_policy_says_empty(
        (policy, steps) in arb_policy().prop_flat_map(|p| { let n = p.targets.len(); (Just(p), arb_steps(n)) })
    ) {
        for d in run(&policy, &steps) {
            let pd = &d.policies[&policy.id];
            if policy.when_all_unhealthy != WhenAllUnhealthy::Empty {
                prop_assert!(!pd.answers.is_empty());
            }
        }
    }

    #[test]
    fn failover_respects_priority_order(
        (policy, steps) in arb_policy_of(Just(Plan::Failover)).prop_flat_map(|p| { let n = p.targets.len(); (Just(p), arb_steps(n)) })
    ) {
        for d in run(&policy, &steps) {
            let pd = &d.policies[&policy.id];
            if pd.outcome != Outcome::Normal { continue; }
            let prio = |c: &str| policy.targets.iter().find(|t| &*t.cluster == c).unwrap().priority;
            let best_eligible = policy.targets.iter()
                .filter(|t| { let s = &pd.targets[&t.cluster]; !s.drained && matches!(s.health, Health::Healthy | Health::Unknown | Health::Ramping) })
                .map(|t| t.priority).min().unwrap();
            let lowest_answered = pd.answers.iter().map(|a| prio(&a.cluster)).min().unwrap();
            prop_assert_eq!(lowest_answered, best_eligible);
            // A lower tier is only answered beside a tier that is ramping back.
            for a in &pd.answers {
                if prio(&a.cluster) > best_eligible {
                    prop_assert!(pd.answers.iter().any(|b| pd.targets[&b.cluster].health == Health::Ramping));
                }
            }
        }
    }

    #[test]
    fn flapping_faster_than_the_thresholds_never_changes_the_answer(
        policy in arb_policy(), pattern in prop::collection::vec(any::<bool>(), 1..60)
    ) {
        // Healthy start, then runs of failures shorter than unhealthyThreshold broken
        // by single successes: the answer must stay put.
        let mut p = policy;
        p.unhealthy_threshold = p.unhealthy_threshold.max(2);
        let mut sim = Sim::new(vec![p.clone()]);
        let start = sim.decision.policies[&p.id].answers.clone();
        let mut fails = 0;
        for flip in pattern {
            let ok = if flip && fails + 1 < p.unhealthy_threshold { fails += 1; false } else { fails = 0; true };
            let results: Vec<(String, bool)> = p.targets.iter().map(|t| (t.cluster.to_string(), ok)).collect();
            let refs: Vec<(&str, bool)> = results.iter().map(|(c, ok)| (c.as_str(), *ok)).collect();
            sim.step(&refs);
            prop_assert_eq!(&sim.decision.policies[&p.id].answers, &start);
        }
    }

    #[test]
    fn with_a_frozen_source_answers_do_not_change(
        (policy, steps) in arb_policy().prop_flat_map(|p| { let n = p.targets.len(); (Just(p), arb_steps(n)) })
    ) {
        // A drain in the last step would expire during the frozen phase and rightly
        // change the answer; freezing is about signals, not overrides.
        prop_assume!(steps.last().unwrap().iter().all(|(_, drain)| !drain));
        let history = run(&policy, &steps);
        let last = history.last().unwrap().clone();
        let mut signals = Signals::default();
        for t in &policy.targets {
            signals.targets.insert(TargetKey::new(&policy.id, &*t.cluster), TargetSignal {
                observations: vec![Observation { at: t0(), ok: false, detail: String::new() }; 4],
                source: SourceState::Unavailable { since: t0() },
            });
        }
        let mut prev = last.clone();
        let mut now = t0() + Duration::from_secs(10_000);
        for _ in 0..10 {
            now += Duration::from_secs(1);
            prev = decide(&no_guard(), std::slice::from_ref(&policy), &signals, &[], &prev, now);
            // Ramps may still complete (time passes), but nothing new is learned, so
            // no answer may move to or from a target because of the frozen signals.
            let before: Vec<&Arc<str>> = last.policies[&policy.id].answers.iter().map(|a| &a.cluster).collect();
            let after: Vec<&Arc<str>> = prev.policies[&policy.id].answers.iter().map(|a| &a.cluster).collect();
            let ramping_before = last.policies[&policy.id].targets.values().any(|t| matches!(t.health, Health::Ramping | Health::Recovering));
            if !ramping_before {
                prop_assert_eq!(before, after);
            }
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_decision(
        (policy, steps) in arb_policy().prop_flat_map(|p| { let n = p.targets.len(); (Just(p), arb_steps(n)) })
    ) {
        prop_assert_eq!(run(&policy, &steps), run(&policy, &steps));
    }
}

#[test]
fn targets_whose_addresses_are_unknown_never_empty_a_served_name() {
    let mut sim = Sim::new(vec![three_tiers()]);
    assert_eq!(sim.clusters(), ["a"]);
    // A restart with the member APIs unreachable: no target has an address yet.
    for t in &mut sim.policies[0].targets {
        t.addresses.clear();
    }
    sim.step(&[]);
    assert_eq!(sim.clusters(), ["a"], "the last answer is kept");
    assert_eq!(sim.outcome(), Outcome::LastKnownGood);
    // A policy that asks for Empty still gets it.
    sim.policies[0].when_all_unhealthy = WhenAllUnhealthy::Empty;
    sim.step(&[]);
    assert!(sim.clusters().is_empty());
}

// === a start without a decision ===

/// A sim whose previous decision is what DNS served at start: the answers of `served`.
fn resumed_sim(served: &str) -> Sim {
    let policy = three_tiers();
    let answer = policy
        .targets
        .iter()
        .find(|t| &*t.cluster == served)
        .map(|t| super::Answer {
            cluster: t.cluster.clone(),
            address: t.addresses[0],
            region: t.region.clone(),
            weight: 1000 * t.weight,
        })
        .unwrap();
    let mut previous = Decision::default();
    previous.policies.insert(
        policy.id.clone(),
        Arc::new(super::PolicyDecision::resumed_from(
            &policy,
            vec![answer],
            t0(),
        )),
    );
    Sim {
        config: no_guard(),
        policies: vec![policy],
        overrides: Vec::new(),
        decision: previous,
        now: t0(),
    }
}

#[test]
fn answers_resumed_from_dns_stay_until_probes_confirm_every_target() {
    // DNS served the secondary (the primary had died) when the decision was lost.
    let mut sim = resumed_sim("b");
    sim.step(&[]);
    assert_eq!(
        sim.clusters(),
        ["b"],
        "nothing probed yet: DNS's answer stays"
    );
    sim.step(&[("a", false), ("b", true), ("c", true)]);
    assert_eq!(
        sim.clusters(),
        ["b"],
        "one failure of the primary is below its threshold: still not confirmed"
    );
    sim.step(&[("a", false), ("b", true), ("c", true)]);
    assert_eq!(sim.health("a"), Health::Unhealthy);
    assert_eq!(
        sim.clusters(),
        ["b"],
        "every target confirmed: the engine agrees"
    );
    assert!(!sim.decision.policies["shop/checkout"].resumed);

    // Alive after all: confirmed healthy, and the engine's choice takes over.
    let mut sim = resumed_sim("b");
    sim.step(&[("a", true), ("b", true), ("c", true)]);
    assert_eq!(sim.clusters(), ["b"]);
    sim.step(&[("a", true), ("b", true), ("c", true)]);
    assert_eq!(
        sim.clusters(),
        ["a"],
        "a primary probed healthy is answered"
    );
}

#[test]
fn an_operator_override_ends_resumed_answers_at_once() {
    let mut sim = resumed_sim("a");
    sim.overrides.push(Override {
        id: "drain-a".to_owned(),
        policy: None,
        cluster: "a".to_owned(),
        action: OverrideAction::Drain,
        created_at: t0(),
        expires_at: t0() + Duration::from_secs(3600),
        author: "test".to_owned(),
        reason: String::new(),
    });
    sim.step(&[]);
    assert_eq!(
        sim.clusters(),
        ["b"],
        "a drain applies without waiting for probes"
    );
}
