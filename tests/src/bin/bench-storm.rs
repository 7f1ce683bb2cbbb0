//! The incident on a real control plane, with and without Lifeline's FlowSchema, side
//! by side (see `lifeline_tests::storm` for the timeline).
//!
//! ```text
//! cargo run --release -p lifeline-tests --bin bench-storm -- [--clients 48] [--seconds 30] [--objects 300] [--inflight 8]
//! ```
//!
//! Exits non-zero when any DNS answer during a storm was empty or failed. Needs the
//! binaries from `tests/control-plane/build.sh` (or `KUBEBUILDER_ASSETS`).

use std::time::Duration;

use anyhow::{Result, bail};
use lifeline_tests::number_arg;
use lifeline_tests::storm::{self, StormConfig};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let base = StormConfig::default();
    let base = StormConfig {
        clients: number_arg(&args, "--clients", base.clients)?,
        duration: Duration::from_secs(number_arg(
            &args,
            "--seconds",
            base.duration.as_secs() as usize,
        )? as u64),
        objects: number_arg(&args, "--objects", base.objects)?,
        inflight: number_arg(&args, "--inflight", base.inflight as usize)? as u32,
        ..base
    };
    println!(
        "storm: {} clients listing {} ConfigMaps of {} KiB for {} s; member kube-apiserver with --max-requests-inflight={}",
        base.clients,
        base.objects,
        base.object_bytes / 1024,
        base.duration.as_secs(),
        base.inflight
    );
    let mut reports = Vec::new();
    for flow_schema in [false, true] {
        let config = StormConfig {
            flow_schema,
            ..base.clone()
        };
        let Some(report) = storm::run(&config).await? else {
            bail!("no control-plane binaries: run tests/control-plane/build.sh first");
        };
        reports.push(report);
    }
    println!("{}", storm::table(&reports));
    for r in &reports {
        storm::check_answers(r)?;
    }
    Ok(())
}
