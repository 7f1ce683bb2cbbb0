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

use anyhow::{Context as _, Result, bail};
use lifeline_tests::storm::{self, StormConfig};

fn arg(args: &[String], name: &str, default: usize) -> Result<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .with_context(|| format!("{name} takes a number")),
        None => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let base = StormConfig::default();
    let base = StormConfig {
        clients: arg(&args, "--clients", base.clients)?,
        duration: Duration::from_secs(
            arg(&args, "--seconds", base.duration.as_secs() as usize)? as u64
        ),
        objects: arg(&args, "--objects", base.objects)?,
        inflight: arg(&args, "--inflight", base.inflight as usize)? as u32,
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
