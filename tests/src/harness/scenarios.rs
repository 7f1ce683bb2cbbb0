//! The incident scenarios. Each builds its own [`Fleet`], drives one failure, and
//! returns a [`ScenarioReport`]: what the load generator saw, how fast answers moved,
//! how many API requests each API server got, and every violated expectation.
//!
//! ```text
//!  Run::begin(fleet) ─ LoadGen on every replica, API counters read
//!     │ the scenario's faults, with `report.check(..)` on what must hold
//!  Run::end(report) ─ history → queries / failed / empty, API request deltas
//! ```
//!
//! Durations are multiplied by [`Scale`] (`LIFELINE_REPLAY_SCALE`): 1 in CI, more in
//! the `incident-replay` report.

use std::{
    fmt,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{
    dns::{History, LoadGen},
    fleet::{Fleet, FleetSpec, hostname, member_ip},
};
use crate::kube::{Fault, FaultRule};

/// How much longer than in CI every phase lasts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale(pub f64);

impl Scale {
    /// `LIFELINE_REPLAY_SCALE`, or `default` when unset or not a positive number.
    pub fn from_env(default: f64) -> Scale {
        let v = std::env::var("LIFELINE_REPLAY_SCALE")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v > 0.0 && *v <= 100.0);
        Scale(v.unwrap_or(default))
    }

    /// `secs` seconds, scaled.
    pub fn secs(self, secs: f64) -> Duration {
        Duration::from_secs_f64(secs * self.0)
    }
}

/// What one scenario saw; `violations` empty means it passed.
#[derive(Clone, Debug, Default)]
pub struct ScenarioReport {
    pub name: String,
    pub duration: Duration,
    pub queries: usize,
    pub failed: usize,
    pub empty: usize,
    /// The slowest measured move of the answers (every replica settled) after an event.
    pub max_change_latency: Option<Duration>,
    /// API requests per API server during the scenario, management first.
    pub api_requests: Vec<(String, u64)>,
    pub notes: Vec<String>,
    pub violations: Vec<String>,
}

impl ScenarioReport {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// Records a violation unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.violations.push(what());
        }
    }

    fn latency(&mut self, took: Option<Duration>, bound: Duration, what: &str) {
        match took {
            Some(t) => {
                self.max_change_latency = Some(self.max_change_latency.unwrap_or_default().max(t));
                self.notes.push(format!("{what}: {:.2} s", t.as_secs_f64()));
                self.check(t <= bound, || format!("{what} took {t:?}, bound {bound:?}"));
            }
            None => self
                .violations
                .push(format!("{what}: answers never settled")),
        }
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// Panics with the whole report unless it passed (for tests).
    pub fn assert_passed(&self) {
        assert!(self.passed(), "{self}");
    }
}

impl fmt::Display for ScenarioReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {:.1} s, {} queries, {} failed, {} empty, max change latency {}",
            self.name,
            self.duration.as_secs_f64(),
            self.queries,
            self.failed,
            self.empty,
            self.max_change_latency
                .map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
        )?;
        writeln!(f, "  API requests: {}", requests_text(&self.api_requests))?;
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        for v in &self.violations {
            writeln!(f, "  VIOLATION: {v}")?;
        }
        Ok(())
    }
}

/// `management=12 m0=3 ...`
pub fn requests_text(requests: &[(String, u64)]) -> String {
    requests
        .iter()
        .map(|(n, c)| format!("{n}={c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A scenario in progress: the fleet, the load generator and the counters at the start.
struct Run {
    fleet: Fleet,
    load: LoadGen,
    started: Instant,
    counts: Vec<(String, u64)>,
    report: ScenarioReport,
}

/// DNS queries per replica every 20 ms; the generator's own limit is the scenario's
/// expected length plus a margin, so it ends even if a scenario forgets to stop it.
const EVERY: Duration = Duration::from_millis(20);

impl Run {
    async fn begin(name: &str, spec: FleetSpec, expected: Duration) -> anyhow::Result<Run> {
        let fleet = Fleet::start(spec).await?;
        let load = LoadGen::start(
            fleet.dns_addrs(),
            &hostname(0),
            EVERY,
            expected + Duration::from_secs(60),
        );
        Ok(Run {
            counts: fleet.api_counts(),
            started: Instant::now(),
            load,
            fleet,
            report: ScenarioReport::new(name),
        })
    }

    /// API requests each server got since the start of the run.
    fn api_delta(&self, since: &[(String, u64)]) -> Vec<(String, u64)> {
        delta(since, &self.fleet.api_counts())
    }

    /// Stops load and fleet; fills in the totals and requires every answer to be a
    /// non-empty NOERROR.
    async fn end(mut self) -> (ScenarioReport, History) {
        let history = std::mem::replace(
            &mut self.load,
            LoadGen::start(Vec::new(), "", EVERY, Duration::ZERO),
        )
        .finish()
        .await;
        let mut report = self.report;
        report.duration = self.started.elapsed();
        report.api_requests = delta(&self.counts, &self.fleet.api_counts());
        report.queries = history.queries();
        report.failed = history.failed().len();
        report.empty = history.empty().len();
        report.check(report.queries > 0, || "no DNS queries were made".into());
        let bad: Vec<String> = history
            .failed()
            .into_iter()
            .chain(history.empty())
            .take(5)
            .map(|s| {
                format!(
                    "replica {} at +{:?}: {:?}",
                    s.server,
                    s.at.duration_since(self.started),
                    s.answer
                )
            })
            .collect();
        let (failed, empty) = (report.failed, report.empty);
        report.check(bad.is_empty(), || {
            format!("{failed} failed and {empty} empty answers, e.g. {bad:?}")
        });
        self.fleet.shutdown().await;
        (report, history)
    }
}

fn delta(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .map(|(n, a)| {
            let b = before.iter().find(|(m, _)| m == n).map_or(0, |(_, b)| *b);
            (n.clone(), a.saturating_sub(b))
        })
        .collect()
}

fn only(ip: IpAddr) -> impl Fn(&[IpAddr]) -> bool {
    move |a| a == [ip]
}

/// Failover must finish within: unhealthyThreshold (2) × interval (200 ms) + timeout
/// (150 ms), plus decision, etcd publish and watch delivery. Two seconds is generous for
/// a 2-core CI machine yet far below any DNS TTL that matters.
const FAILOVER_BOUND: Duration = Duration::from_secs(3);

// === 1. a primary backend dies and heals ===

/// The primary's backend dies: answers move to the secondary within the failover
/// bound. It heals: nothing goes back before the hold-down ends, then traffic ramps.
pub async fn backend_failover_and_failback(scale: Scale) -> anyhow::Result<ScenarioReport> {
    let hold_down = scale.secs(3.0);
    let ramp = scale.secs(4.0);
    let spec = FleetSpec {
        hold_down: format!("{}ms", hold_down.as_millis()),
        ramp_duration: format!("{}ms", ramp.as_millis()),
        ramp_steps: 4,
        ..FleetSpec::default()
    };
    let mut run = Run::begin(
        "1 primary backend dies, heals",
        spec,
        hold_down + ramp + scale.secs(8.0),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    run.fleet.members[0].backend.kill().await;
    let moved = run
        .fleet
        .wait_all_answer(&[member_ip(1)], Duration::from_secs(15))
        .await;
    tokio::time::sleep(scale.secs(2.0)).await;
    let healed = Instant::now();
    run.fleet.members[0].backend.revive().await?;
    // The ramp hands out both addresses per query by weight, so "done" is judged from
    // the history afterwards, not from one lucky round of answers.
    tokio::time::sleep(hold_down + ramp + Duration::from_secs(3)).await;
    let ended = Instant::now();
    let (mut report, history) = run.end().await;
    report.check(moved.is_ok(), || format!("no failover: {moved:?}"));
    report.latency(
        history.settled_between(killed, healed, only(member_ip(1))),
        FAILOVER_BOUND,
        "failover after the primary died",
    );
    // Nothing answers the primary during its hold-down.
    let back = history.any_since(healed, |a| a.contains(&member_ip(0)));
    let first_back = back.first().map(|s| s.at.duration_since(healed));
    report.notes.push(format!(
        "first answer with the primary {:.2} s after it healed (hold-down {:.1} s)",
        first_back.unwrap_or_default().as_secs_f64(),
        hold_down.as_secs_f64()
    ));
    report.check(first_back.is_some_and(|d| d >= hold_down), || {
        format!("primary answered {first_back:?} after healing, hold-down {hold_down:?}")
    });
    // Ramped: after the first answer with the primary, the secondary still got some.
    let ramp_start = healed + first_back.unwrap_or_default();
    let shared = history
        .0
        .iter()
        .filter(|s| s.at >= ramp_start && s.answer.addresses().contains(&member_ip(1)))
        .count();
    report.notes.push(format!(
        "{shared} answers still went to the secondary during the ramp"
    ));
    report.check(shared > 0, || "failback was a step, not a ramp".into());
    let done = history.settled_between(healed, ended, only(member_ip(0)));
    report.notes.push(format!(
        "failback complete {:.2} s after healing (hold-down + ramp {:.1} s)",
        done.unwrap_or_default().as_secs_f64(),
        (hold_down + ramp).as_secs_f64()
    ));
    report.check(done.is_some_and(|d| d >= hold_down + ramp / 2), || {
        format!("failback finished after {done:?}, before hold-down + ramp")
    });
    report.latency(
        done.map(|d| d.saturating_sub(hold_down + ramp)),
        Duration::from_secs(3),
        "failback completion beyond hold-down + ramp",
    );
    Ok(report)
}

// === 2. one member's API goes dark ===

/// Member 0's API server disappears (port closed) while its backend keeps serving: the
/// answers do not change at all.
pub async fn member_api_dark(scale: Scale) -> anyhow::Result<ScenarioReport> {
    let dark = scale.secs(8.0);
    let run = Run::begin(
        "2 member API dark",
        FleetSpec::default(),
        dark + Duration::from_secs(4),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.fleet.members[0].api.outage().await;
    tokio::time::sleep(dark).await;
    run.fleet.members[0].api.restore().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut report, history) = run.end().await;
    let changes = history.changes();
    report.check(changes.is_empty(), || {
        format!("answers changed: {:?}", &changes[..changes.len().min(3)])
    });
    let other = history.any_since(history.0.first().map_or(Instant::now(), |s| s.at), |a| {
        a != [member_ip(0)]
    });
    report.check(other.is_empty(), || {
        format!("{} answers were not the primary", other.len())
    });
    Ok(report)
}

// === 3. the incident: every API server saturated ===

/// Every API server (members and management) answers 429 with Retry-After, then hangs,
/// while backends stay up. DNS never fails or empties, Lifeline stays inside its API
/// budget and honours Retry-After, and a real backend failure still fails over.
pub async fn api_saturation(scale: Scale) -> anyhow::Result<ScenarioReport> {
    let retry_after = 2u64;
    let throttled = scale.secs(8.0);
    let hanging = scale.secs(8.0);
    let spec = FleetSpec {
        replicas: 3,
        ..FleetSpec::default()
    };
    let (qps, burst, replicas) = (spec.qps, spec.burst, spec.replicas);
    let mut run = Run::begin(
        "3 every API server 429/hangs",
        spec,
        throttled + hanging + Duration::from_secs(4),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = run.fleet.api_counts();
    let storm = Instant::now();
    for api in run.fleet.api_servers() {
        api.inject(FaultRule::new(Fault::TooManyRequests {
            retry_after_seconds: retry_after,
        }));
        // Open watches are cut, so every client must come back into the storm.
        api.drop_watches();
    }
    tokio::time::sleep(throttled).await;
    let mid = run.fleet.api_counts();
    let throttled_requests = delta(&before, &mid);
    for api in run.fleet.api_servers() {
        api.clear_faults();
        api.inject(FaultRule::new(Fault::Hang));
        api.drop_watches();
    }
    tokio::time::sleep(hanging / 2).await;
    // Probes are data-plane: steering still works with every control plane unusable.
    let killed = Instant::now();
    run.fleet.members[0].backend.kill().await;
    let moved = run
        .fleet
        .wait_all_answer(&[member_ip(1)], Duration::from_secs(15))
        .await;
    let rest = (hanging / 2).saturating_sub(killed.elapsed());
    tokio::time::sleep(rest).await;
    let storm_len = storm.elapsed();
    let during = run.api_delta(&before);
    for api in run.fleet.api_servers() {
        api.clear_faults();
    }
    let (mut report, history) = run.end().await;
    report.check(moved.is_ok(), || {
        format!("no failover during the storm: {moved:?}")
    });
    report.latency(
        history
            .settled_after(killed, only(member_ip(1)))
            .filter(|_| moved.is_ok()),
        FAILOVER_BOUND,
        "failover during the API storm",
    );
    // The budget: only the leader talks to members; every replica watches management.
    let secs = storm_len.as_secs_f64();
    for (name, n) in &during {
        let clients = if name == "management" {
            replicas as f64
        } else {
            1.0
        };
        let bound = clients * (burst as f64 + qps * secs);
        report.check(*n as f64 <= bound, || {
            format!("{name}: {n} requests in {secs:.1} s of storm, budget {bound:.0}")
        });
    }
    // Retry-After: after a 429, no caller of that client sends before it expires. A
    // client has a few callers (watches, status, events) that may pass the gate in the
    // same instant, so allow that many per Retry-After period.
    let periods = throttled.as_secs_f64() / retry_after as f64 + 1.0;
    for (name, n) in &throttled_requests {
        let (clients, callers) = if name == "management" {
            (replicas as f64, 4.0)
        } else {
            (1.0, 2.0)
        };
        let bound = (clients * callers * periods).ceil();
        report.check(*n as f64 <= bound, || {
            format!("{name}: {n} requests while answering 429 (Retry-After {retry_after} s), at most {bound} honour it")
        });
    }
    report.notes.push(format!(
        "API requests while 429: {}; during the whole storm ({secs:.1} s): {}",
        requests_text(&throttled_requests),
        requests_text(&during)
    ));
    Ok(report)
}

// === 5. etcd down ===

/// etcd dies: every replica keeps answering, unchanged. It returns: a backend failure
/// reaches every replica again.
pub async fn etcd_down(scale: Scale) -> anyhow::Result<ScenarioReport> {
    let down = scale.secs(8.0);
    let mut run = Run::begin(
        "5 etcd down, back",
        FleetSpec::default(),
        down + Duration::from_secs(20),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped = Instant::now();
    run.fleet.etcd.stop();
    tokio::time::sleep(down).await;
    run.fleet.etcd.start_again().await?;
    let restarted = Instant::now();
    let unchanged = run.load.snapshot();
    let wrong = unchanged.any_since(stopped, |a| a != [member_ip(0)]).len();
    run.report.check(wrong == 0, || {
        format!("{wrong} answers changed while etcd was down")
    });
    // Changes flow again once a leader is back (lease 2 s) and publishes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    run.fleet.members[0].backend.kill().await;
    let moved = run
        .fleet
        .wait_all_answer(&[member_ip(1)], Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut report, history) = run.end().await;
    report.notes.push(format!(
        "etcd back {:.1} s before the backend died",
        killed.duration_since(restarted).as_secs_f64()
    ));
    report.check(moved.is_ok(), || {
        format!("no change after etcd returned: {moved:?}")
    });
    report.latency(
        history
            .settled_after(killed, only(member_ip(1)))
            .filter(|_| moved.is_ok()),
        Duration::from_secs(10),
        "failover after etcd returned",
    );
    Ok(report)
}

// === 9. systemic false signal ===

/// Every backend's listener closes at once: the observer is more likely broken than
/// the world. The blast-radius guard freezes the answers and raises
/// `SystemicFailureSuspected` instead of emptying or shuffling them.
pub async fn systemic_false_signal(scale: Scale) -> anyhow::Result<ScenarioReport> {
    let hold = scale.secs(6.0);
    let mut run = Run::begin(
        "9 every probe fails at once",
        FleetSpec::default(),
        hold + Duration::from_secs(15),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cut = Instant::now();
    futures::future::join_all(run.fleet.members.iter_mut().map(|m| m.backend.kill())).await;
    let mut alarm = None;
    // Bounded: 100 polls of the status, about 10 s.
    for _ in 0..100 {
        let status = run.fleet.replicas[0].status().await.ok();
        let kinds: Vec<String> = status
            .as_ref()
            .and_then(|s| s["alarms"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a["kind"].as_str().map(str::to_owned))
            .collect();
        if kinds.iter().any(|k| k == "SystemicFailureSuspected") {
            alarm = Some(cut.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(hold).await;
    for m in &mut run.fleet.members {
        m.backend.revive().await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut report, history) = run.end().await;
    report.check(alarm.is_some(), || {
        "no SystemicFailureSuspected alarm in /v1/status".into()
    });
    report
        .notes
        .push(format!("alarm raised {alarm:?} after every backend died"));
    let moved = history.any_since(cut, |a| a != [member_ip(0)]);
    report.check(moved.is_empty(), || {
        format!(
            "{} answers moved off the primary, e.g. {:?}",
            moved.len(),
            moved.first().map(|s| &s.answer)
        )
    });
    Ok(report)
}
