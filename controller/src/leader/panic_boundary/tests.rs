use std::{net::IpAddr, sync::Arc, time::Duration};

use lifeline_engine::{OnSourceUnavailable, TargetSpec, WhenAllUnhealthy};
use lifeline_model::Strategy;

use super::*;

/// A one-cluster Failover policy `shop/{name}` answering 192.0.2.`last`.
pub(crate) fn policy(name: &str, last: u8) -> Policy {
    Policy {
        id: format!("shop/{name}"),
        hostname: format!("{name}.global.example.com"),
        ttl: 30,
        max_answers: 8,
        strategy: Strategy::Failover,
        targets: vec![TargetSpec {
            cluster: "one".into(),
            region: "eu".into(),
            priority: 0,
            weight: 100,
            addresses: vec![IpAddr::from([192, 0, 2, last])],
        }],
        unhealthy_threshold: 2,
        healthy_threshold: 2,
        when_all_unhealthy: WhenAllUnhealthy::ServeAll,
        on_source_unavailable: OnSourceUnavailable::Freeze,
        hold_down: Duration::from_secs(30),
        ramp_duration: Duration::ZERO,
        ramp_steps: 1,
    }
}

fn run(
    policies: &[Policy],
    previous: &Decision,
    quarantine: &mut Quarantine,
    fault: Option<&Fault<'_>>,
) -> Decision {
    let config = EngineConfig::default();
    let signals = Signals::default();
    let inputs = Inputs {
        config: &config,
        policies,
        signals: &signals,
        overrides: &[],
        previous,
        now: SystemTime::now(),
    };
    decide(inputs, quarantine, fault)
}

#[test]
fn a_policy_that_panics_is_quarantined_keeps_its_answers_and_the_rest_are_decided() {
    let before = [policy("a", 1), policy("b", 2)];
    let mut quarantine = Quarantine::new();
    let first = run(&before, &Decision::default(), &mut quarantine, None);
    assert!(quarantine.is_empty());
    let a_answers = first.policies["shop/a"].answers.clone();
    assert!(!a_answers.is_empty());

    // `a` now panics; `b` changes address and must still be decided.
    let after = [policy("a", 1), policy("b", 3)];
    let poison = |set: &[Policy]| {
        if set.iter().any(|p| p.id == "shop/a") {
            panic!("poisoned");
        }
    };
    let next = run(&after, &first, &mut quarantine, Some(&poison));
    assert_eq!(quarantine.keys().collect::<Vec<_>>(), ["shop/a"]);
    assert!(quarantine["shop/a"].contains("poisoned"));
    assert_eq!(
        next.policies["shop/a"].answers, a_answers,
        "last answers kept"
    );
    assert_eq!(
        next.policies["shop/b"].answers[0].address,
        IpAddr::from([192, 0, 2, 3])
    );

    // Once quarantined it is not retried, and its absence is not a change.
    let again = run(&after, &next, &mut quarantine, Some(&poison));
    assert_eq!(again.revision, next.revision);
    assert_eq!(again.policies.len(), 2);
}

#[test]
fn policies_that_only_panic_together_freeze_the_previous_decision() {
    let set = [policy("a", 1), policy("b", 2)];
    let mut quarantine = Quarantine::new();
    let first = run(&set, &Decision::default(), &mut quarantine, None);
    let together = |set: &[Policy]| {
        if set.len() > 1 {
            panic!("only together");
        }
    };
    let next = run(&set, &first, &mut quarantine, Some(&together));
    assert!(quarantine.is_empty(), "neither panics alone");
    assert_eq!(next, first, "nothing is emptied or moved");
}

#[tokio::test]
async fn a_policy_whose_decision_never_returns_is_quarantined_on_its_own() {
    let set = Arc::new(vec![policy("a", 1), policy("b", 2)]);
    let mut quarantine = Quarantine::new();
    let mut decider = Decider::new();
    let owned = |previous: Arc<Decision>, fault: Option<Arc<Fault<'static>>>| Owned {
        config: EngineConfig::default(),
        policies: set.clone(),
        signals: Arc::default(),
        overrides: Arc::default(),
        previous,
        now: SystemTime::now(),
        fault,
    };
    // Far above what deciding two policies takes, even on a loaded machine.
    let limit = Duration::from_secs(2);
    let first = decider
        .decide(owned(Arc::default(), None), &mut quarantine, limit)
        .await;
    assert_eq!(first.policies.len(), 2);

    let hang: Arc<Fault<'static>> = Arc::new(|set: &[Policy]| {
        if set.iter().any(|p| p.id == "shop/a") {
            // Bounded so the abandoned thread ends with the test process anyway.
            std::thread::sleep(Duration::from_secs(30));
        }
    });
    let next = decider
        .decide(
            owned(Arc::new(first.clone()), Some(hang)),
            &mut quarantine,
            limit,
        )
        .await;
    assert_eq!(quarantine.keys().collect::<Vec<_>>(), ["shop/a"]);
    assert!(quarantine["shop/a"].contains("did not finish"));
    assert_eq!(next.policies["shop/a"], first.policies["shop/a"]);
    assert_eq!(next.policies.len(), 2);
    assert_eq!(
        decider.abandoned(),
        2,
        "the full attempt and a's own attempt"
    );
}
