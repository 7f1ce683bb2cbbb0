//! Replays the incident scenarios against a simulated fleet on loopback and prints one
//! table row each: how long it ran, how many DNS queries were made, how many failed or
//! came back empty, the slowest answer change, and the API requests per API server.
//!
//! ```text
//!  cargo run --release -p lifeline-tests --bin incident-replay [-- FILTER]
//!  LIFELINE_REPLAY_SCALE=N   every phase N times longer (default 3; the tests use 1)
//!  LIFELINE_REPLAY_BACKEND=emulator|real|both   which API servers (default: both when
//!                            the real control-plane binaries are built, else emulator)
//! ```
//!
//! Each row names the backend it ran on. Exits non-zero when any scenario violated an
//! expectation; the violations are printed under the table. Needs `/usr/bin/etcd`.

use std::{io::Write as _, time::Duration};

use lifeline_testkit::{ControlPlanes, Etcd};
use lifeline_tests::harness::{
    Scale, ScenarioReport,
    fleet::ApiBackend,
    scenarios::{Scenario, requests_text},
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    anyhow::ensure!(
        Etcd::available(),
        "/usr/bin/etcd is not installed (Debian package etcd-server)"
    );
    let filter = std::env::args().nth(1).unwrap_or_default();
    let scale = Scale::from_env(3.0);
    eprintln!(
        "scale {}: every phase {}x as long as in CI",
        scale.0, scale.0
    );
    let backends = match std::env::var("LIFELINE_REPLAY_BACKEND").as_deref() {
        Ok("emulator") => vec![ApiBackend::Emulator],
        Ok("real") => vec![ApiBackend::Real],
        Ok("both") => vec![ApiBackend::Emulator, ApiBackend::Real],
        Ok(other) => anyhow::bail!("LIFELINE_REPLAY_BACKEND={other}: use emulator, real or both"),
        Err(_) if ControlPlanes::available() => vec![ApiBackend::Emulator, ApiBackend::Real],
        Err(_) => vec![ApiBackend::Emulator],
    };
    let mut reports: Vec<ScenarioReport> = Vec::new();
    for backend in backends {
        for scenario in Scenario::ALL {
            let label = format!("{scenario:?}");
            if !label.to_lowercase().contains(&filter.to_lowercase()) {
                continue;
            }
            eprint!("running {label} on the {} ... ", backend.name());
            let _ = std::io::stderr().flush();
            // Each scenario bounds its own phases; this is the backstop.
            let run = scenario.run(scale, backend);
            let report = match tokio::time::timeout(Duration::from_secs(600), run).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => ScenarioReport {
                    name: label.clone(),
                    backend: backend.name(),
                    violations: vec![format!("setup failed: {e:#}")],
                    ..ScenarioReport::default()
                },
                Err(_) => ScenarioReport {
                    name: label.clone(),
                    backend: backend.name(),
                    violations: vec!["did not finish within 10 minutes".into()],
                    ..ScenarioReport::default()
                },
            };
            eprintln!("{}", if report.passed() { "ok" } else { "FAILED" });
            reports.push(report);
        }
    }
    println!(
        "| scenario | API servers | duration | DNS queries | failed / first-try failed / empty | max answer-change latency | API requests (during scenario) | result |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &reports {
        println!(
            "| {} | {} | {:.1} s | {} | {} / {} / {} | {} | {} | {} |",
            r.name,
            r.backend,
            r.duration.as_secs_f64(),
            r.queries,
            r.failed,
            r.first_try_failed,
            r.empty,
            r.max_change_latency
                .map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
            requests_text(&r.api_requests),
            if r.passed() { "pass" } else { "FAIL" }
        );
    }
    println!();
    for r in &reports {
        print!("{r}");
    }
    let failed = reports.iter().filter(|r| !r.passed()).count();
    if failed > 0 {
        eprintln!("{failed} scenario(s) violated expectations");
        std::process::exit(1);
    }
    Ok(())
}
