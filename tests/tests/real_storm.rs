//! The incident on a real member kube-apiserver (skipped, saying so, when the binaries
//! from `tests/control-plane/build.sh` are absent): a telemetry storm of cluster-wide
//! LISTs saturates it, with and without Lifeline's FlowSchema. In both cases every DNS
//! answer during the storm is a real answer (none empty, none failed), a new
//! LoadBalancer address is picked up from the open watch, and the death of the stormed
//! cluster's backends moves the answers to the standby. The figures are printed; run
//! `bench-storm` for a longer storm.

use std::time::Duration;

use anyhow::{Result, ensure};
use lifeline_tests::storm::{self, StormConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_through_a_telemetry_storm_with_and_without_the_flow_schema() -> Result<()> {
    let mut reports = Vec::new();
    for flow_schema in [false, true] {
        let config = StormConfig {
            flow_schema,
            clients: 64,
            duration: Duration::from_secs(15),
            objects: 200,
            ..StormConfig::default()
        };
        let Some(report) = storm::run(&config).await? else {
            return Ok(());
        };
        reports.push(report);
    }
    println!("{}", storm::table(&reports));
    for r in &reports {
        storm::check_answers(r)?;
        ensure!(
            r.new_address_after.is_some(),
            "the new address was never answered: {r:?}"
        );
        ensure!(
            r.failover_after.is_some(),
            "the standby never took over: {r:?}"
        );
        // Saturated: the telemetry's requests queued for seats (the server's own count).
        let low = r.levels.get("workload-low").copied().unwrap_or_default();
        ensure!(
            low.queued > 0 && (low.mean_wait > 0.0 || low.rejected > 0),
            "the storm never made requests wait: {r:?}"
        );
    }
    Ok(())
}
