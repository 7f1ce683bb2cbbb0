//! The incident scenarios against a simulated fleet (member and management API servers,
//! real backends, a real etcd, in-process Lifeline replicas): each asserts on the full
//! history of DNS answers and on the API request counters. Each runs on our API
//! emulator, and again on real kube-apiservers when `tests/control-plane/build.sh` has
//! built them (the `_on_real_api_servers` tests skip, saying so, otherwise). Set
//! `LIFELINE_REPLAY_SCALE` to run every phase longer.

use lifeline_testkit::{ControlPlanes, Etcd};
use lifeline_tests::harness::{Scale, fleet::ApiBackend, scenarios::Scenario};

/// One fleet at a time: several at once on a 2-core machine would measure contention,
/// not Lifeline.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs a scenario at `LIFELINE_REPLAY_SCALE` (1 by default) on the emulator, prints
/// its report and fails on any violation; skipped when etcd is not installed.
async fn replay(scenario: Scenario) {
    replay_on(scenario, ApiBackend::Emulator).await;
}

async fn replay_on(scenario: Scenario, backend: ApiBackend) {
    if !Etcd::available() {
        lifeline_testkit::skipped("/usr/bin/etcd is not installed (Debian package etcd-server)");
        return;
    }
    if backend == ApiBackend::Real && !ControlPlanes::available() {
        if std::env::var("LIFELINE_REQUIRE_CONTROL_PLANE").as_deref() == Ok("1") {
            panic!("real control planes are required here; run tests/control-plane/build.sh");
        }
        lifeline_testkit::skipped("no real control plane; run tests/control-plane/build.sh");
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let report = scenario
        .run(Scale::from_env(1.0), backend)
        .await
        .expect("the scenario could set up its fleet");
    eprintln!("{report}");
    report.assert_passed();
}

/// The same scenarios on real kube-apiservers, with the faults a real server cannot be
/// asked for (429s, hangs) from a proxy in front of each.
mod on_real_api_servers {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn saturated_api_servers_never_fail_an_answer_nor_get_more_than_the_budget() {
        replay_on(Scenario::ApiSaturation, ApiBackend::Real).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_primary_fails_over_fast_and_fails_back_after_hold_down_ramped() {
        replay_on(Scenario::BackendFailover, ApiBackend::Real).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_api_going_dark_leaves_answers_unchanged() {
        replay_on(Scenario::MemberApiDark, ApiBackend::Real).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_killed_mid_failover_is_replaced_and_the_failover_completes_without_flapping()
    {
        replay_on(Scenario::LeaderKilled, ApiBackend::Real).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_restarted_without_management_serve_from_snapshots_and_still_steer() {
        replay_on(Scenario::RestartWithoutManagement, ApiBackend::Real).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_restarted_without_management_still_steer_members_whose_kubeconfig_is_a_secret()
     {
        replay_on(Scenario::RestartWithoutManagementSecrets, ApiBackend::Real).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_dns_replica_keeps_answering_the_last_good_records() {
        replay_on(Scenario::LoneDnsReplica, ApiBackend::Real).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_clusters_recovering_at_once_ramp_back_a_few_at_a_time() {
        replay_on(Scenario::MassRecovery, ApiBackend::Real).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_api_servers_never_fail_an_answer_nor_get_more_than_the_budget() {
    replay(Scenario::ApiSaturation).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_fails_over_fast_and_fails_back_after_hold_down_ramped() {
    replay(Scenario::BackendFailover).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_api_going_dark_leaves_answers_unchanged() {
    replay(Scenario::MemberApiDark).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_leaves_answers_unchanged_and_changes_flow_when_it_returns() {
    replay(Scenario::EtcdDown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_probe_failing_at_once_freezes_answers_and_raises_the_alarm() {
    replay(Scenario::SystemicFalseSignal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_failover_is_replaced_and_the_failover_completes_without_flapping() {
    replay(Scenario::LeaderKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_after_deciding_and_before_saving_is_succeeded_without_the_dead_primary() {
    replay(Scenario::LeaderKilledBeforeSaving).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_restarted_without_management_serve_from_snapshots_and_still_steer() {
    replay(Scenario::RestartWithoutManagement).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_dns_replica_keeps_answering_the_last_good_records() {
    replay(Scenario::LoneDnsReplica).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clusters_recovering_at_once_ramp_back_a_few_at_a_time() {
    replay(Scenario::MassRecovery).await;
}

/// Member kubeconfigs read from Secrets are sealed into etcd while the management API
/// is up; replicas restarted while it is down open them from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_restarted_without_management_still_steer_members_whose_kubeconfig_is_a_secret() {
    replay(Scenario::RestartWithoutManagementSecrets).await;
}
