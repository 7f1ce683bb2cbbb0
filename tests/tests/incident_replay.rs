//! The incident scenarios against a simulated fleet (member and management API
//! emulators, real backends, a real etcd, in-process Lifeline replicas): each asserts on
//! the full history of DNS answers and on the API request counters. Set
//! `LIFELINE_REPLAY_SCALE` to run every phase longer.

use lifeline_tests::harness::{Scale, ScenarioReport, etcd::Etcd, scenarios};

/// One fleet at a time: several at once on a 2-core machine would measure contention,
/// not Lifeline.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Prints a scenario's report and fails on a violation.
fn check(report: anyhow::Result<ScenarioReport>) {
    let report = report.expect("the scenario could set up its fleet");
    eprintln!("{report}");
    report.assert_passed();
}

fn scale() -> Option<Scale> {
    if !Etcd::available() {
        eprintln!("SKIPPED: /usr/bin/etcd is not installed (Debian package etcd-server)");
        return None;
    }
    Some(Scale::from_env(1.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_api_servers_never_fail_an_answer_nor_get_more_than_the_budget() {
    let Some(scale) = scale() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    check(scenarios::api_saturation(scale).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_fails_over_fast_and_fails_back_after_hold_down_ramped() {
    let Some(scale) = scale() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    check(scenarios::backend_failover_and_failback(scale).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_api_going_dark_leaves_answers_unchanged() {
    let Some(scale) = scale() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    check(scenarios::member_api_dark(scale).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_leaves_answers_unchanged_and_changes_flow_when_it_returns() {
    let Some(scale) = scale() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    check(scenarios::etcd_down(scale).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_probe_failing_at_once_freezes_answers_and_raises_the_alarm() {
    let Some(scale) = scale() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    check(scenarios::systemic_false_signal(scale).await);
}
