//! Start-up time and memory of the real control planes the tests start.
//!
//! ```text
//! cargo run --release -p lifeline-tests --bin bench-control-plane -- [--planes 4] [--rounds 3]
//! ```
//!
//! Each round starts one etcd and `--planes` kube-apiservers over it (as
//! `ControlPlanes::start` does in the tests), and reports the time from the first spawn
//! until every `/readyz` says ok, and the resident memory of all the processes then and
//! 10 s later (API servers keep filling caches after they are ready). Needs the binaries
//! from `tests/control-plane/build.sh` (or `KUBEBUILDER_ASSETS`).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use lifeline_testkit::{ControlPlanes, control_plane::Options};
use lifeline_tests::number_arg;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let planes = number_arg(&args, "--planes", 4)?;
    let rounds = number_arg(&args, "--rounds", 3)?.max(1);
    println!("control planes: {planes} kube-apiservers over one etcd, {rounds} rounds");
    println!(
        "{:>5} {:>12} {:>14} {:>14}",
        "round", "ready (s)", "RSS ready", "RSS +10 s"
    );
    let mut times = Vec::new();
    let mut settled = Vec::new();
    for round in 1..=rounds {
        let start = Instant::now();
        let Some(cp) = ControlPlanes::start(planes, Options::default()).await else {
            bail!("no control-plane binaries: run tests/control-plane/build.sh first");
        };
        let ready = start.elapsed();
        let rss_ready = cp.rss_bytes();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let rss_later = cp.rss_bytes();
        println!(
            "{round:>5} {:>12.1} {:>10.0} MiB {:>10.0} MiB",
            ready.as_secs_f64(),
            mib(rss_ready),
            mib(rss_later)
        );
        times.push(ready);
        settled.push(rss_later);
        drop(cp);
    }
    times.sort();
    settled.sort();
    println!(
        "median: ready in {:.1} s, {:.0} MiB resident ({:.0} MiB per API server incl. its share of etcd)",
        times[times.len() / 2].as_secs_f64(),
        mib(settled[settled.len() / 2]),
        mib(settled[settled.len() / 2]) / planes as f64
    );
    Ok(())
}
