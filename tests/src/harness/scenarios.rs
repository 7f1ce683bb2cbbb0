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
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use super::{
    dns::{Asked, History, LoadGen},
    fleet::{ApiBackend, Fleet, FleetSpec, hostname, member_ip},
};
use crate::kube::Fault;

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
    /// What the API servers were: the emulator or real kube-apiservers.
    pub backend: &'static str,
    pub duration: Duration,
    /// DNS queries: A over UDP, AAAA over UDP and A over TCP to every replica.
    pub queries: usize,
    /// Failed after a stub resolver's one retry (a new connection over TCP).
    pub failed: usize,
    /// Failed at the first attempt (lost reply, then retried; or an error).
    pub first_try_failed: usize,
    /// Failed, by what was asked: A/UDP, AAAA/UDP, A/TCP.
    pub failed_by_kind: [usize; 3],
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

    /// Failover to `to` after `at`: `moved` is the harness's wait for it, the latency
    /// comes from the history (every replica settled on `to` for good).
    fn failover(
        &mut self,
        history: &History,
        at: Instant,
        moved: &anyhow::Result<Duration>,
        bound: Duration,
        what: &str,
    ) {
        self.check(moved.is_ok(), || format!("{what}: {}", error_text(moved)));
        let took = history.settled_after(at, only(member_ip(1)));
        self.latency(took.filter(|_| moved.is_ok()), bound, what);
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
            "{} [{}]: {:.1} s, {} queries (A/UDP, AAAA/UDP, A/TCP), {} failed ({} / {} / {}), {} failed at the first try, {} empty, max change latency {}",
            self.name,
            self.backend,
            self.duration.as_secs_f64(),
            self.queries,
            self.failed,
            self.failed_by_kind[0],
            self.failed_by_kind[1],
            self.failed_by_kind[2],
            self.first_try_failed,
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
    /// Answers recorded by earlier load generators of this run.
    earlier: History,
    /// Replicas whose answers do not count (killed, or down for a restart), from when
    /// and until when (`None`: to the end).
    ignored: Vec<(usize, Instant, Option<Instant>)>,
    started: Instant,
    counts: Vec<(String, u64)>,
    report: ScenarioReport,
}

/// DNS queries per replica every 20 ms; the generator's own limit is the scenario's
/// expected length plus a margin, so it ends even if a scenario forgets to stop it.
const EVERY: Duration = Duration::from_millis(20);

/// A restarted replica answers from its persisted snapshot within this of starting.
const RESTART_ANSWER_BOUND: Duration = Duration::from_secs(1);

impl Run {
    /// Starts the fleet, lets it run a second with load, then starts the clock.
    async fn begin(name: &str, spec: FleetSpec, expected: Duration) -> anyhow::Result<Run> {
        let backend = spec.backend.name();
        let fleet = Fleet::start(spec).await?;
        let load = LoadGen::start(
            fleet.dns_addrs(),
            &hostname(0),
            EVERY,
            expected + Duration::from_secs(60),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(Run {
            counts: fleet.api_counts(),
            started: Instant::now(),
            load,
            earlier: History::default(),
            ignored: Vec::new(),
            fleet,
            report: ScenarioReport {
                backend,
                ..ScenarioReport::new(name)
            },
        })
    }

    /// API requests each server got since the start of the run.
    fn api_delta(&self, since: &[(String, u64)]) -> Vec<(String, u64)> {
        delta(since, &self.fleet.api_counts())
    }

    /// Stops the load generator, keeping what it recorded, and starts a new one on
    /// `servers` (indices into the history stay those of `fleet.dns_addrs()` when
    /// `servers` is that list).
    async fn swap_load(&mut self, servers: Vec<std::net::SocketAddr>, limit: Duration) {
        let old = std::mem::replace(
            &mut self.load,
            LoadGen::start(servers, &hostname(0), EVERY, limit),
        );
        self.earlier.0.extend(old.finish().await.0);
    }

    /// Stops load and fleet; fills in the totals and requires every answer to be a
    /// non-empty NOERROR.
    async fn end(mut self) -> (ScenarioReport, History) {
        self.swap_load(Vec::new(), Duration::ZERO).await;
        let ignored = std::mem::take(&mut self.ignored);
        let history = History(
            std::mem::take(&mut self.earlier)
                .0
                .into_iter()
                .filter(|s| {
                    !ignored.iter().any(|(i, from, until)| {
                        // Answered after it went down, and asked before it was back (a
                        // query in flight then times out after its first answer).
                        s.server == *i && s.at >= *from && until.is_none_or(|u| s.sent <= u)
                    })
                })
                .collect(),
        );
        let mut report = self.report;
        report.duration = self.started.elapsed();
        report.api_requests = delta(&self.counts, &self.fleet.api_counts());
        report.queries = history.queries();
        report.failed = history.failed().len();
        report.first_try_failed = history.first_try_failed().len();
        report.failed_by_kind =
            [Asked::UdpA, Asked::UdpAaaa, Asked::TcpA].map(|k| history.failed_of(k));
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

    /// Ends a run whose leader, replica `leader`, was killed (judged from `killed`):
    /// waits until every survivor answers member 1 and another replica leads, lets
    /// `after` pass, ends the run, and checks that a new leader took over, that the
    /// survivors answered the failover (`what`) in time, and that none went back to the
    /// dead primary once they had moved. Returns the report and the successor.
    async fn end_after_leader_killed(
        self,
        leader: usize,
        killed: Instant,
        after: Duration,
        what: &str,
    ) -> (ScenarioReport, Option<usize>) {
        let moved = self
            .fleet
            .wait_all_answer(&[member_ip(1)], Duration::from_secs(15))
            .await;
        let successor = self
            .fleet
            .successor_of(leader, Duration::from_secs(10))
            .await;
        tokio::time::sleep(after).await;
        let (mut report, history) = self.end().await;
        report.check(successor.is_some_and(|s| s != leader), || {
            format!("no new leader after killing replica {leader}: {successor:?}")
        });
        // Judged on the survivors: lease TTL (2 s) + election + the failover itself.
        let survivors = history.without(leader);
        let bound = Duration::from_secs(2) + FAILOVER_BOUND + Duration::from_secs(2);
        report.failover(&survivors, killed, &moved, bound, what);
        let settled = survivors
            .any_since(killed, |a| a == [member_ip(1)])
            .first()
            .map(|s| s.at);
        let flaps = settled.map_or(0, |t| {
            survivors.any_since(t, |a| a.contains(&member_ip(0))).len()
        });
        report.check(flaps == 0, || {
            format!("{flaps} answers went back to the dead primary")
        });
        (report, successor)
    }
}

/// An error's chain on one line (no backtrace), or `ok`.
fn error_text<T>(r: &anyhow::Result<T>) -> String {
    r.as_ref()
        .err()
        .map_or_else(|| "ok".to_owned(), |e| format!("{e:#}"))
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

/// Polls replica `i`'s `/v1/status` every 100 ms for at most `limit` until `found`
/// returns something.
async fn poll_status<T>(
    fleet: &Fleet,
    i: usize,
    limit: Duration,
    found: impl Fn(&serde_json::Value) -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    // Bounded by `limit` and by its count of 100 ms steps.
    for _ in 0..=limit.as_millis() / 100 {
        if start.elapsed() > limit {
            break;
        }
        if let Some(v) = fleet.replicas[i]
            .status()
            .await
            .ok()
            .as_ref()
            .and_then(&found)
        {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The state text (`Healthy`, `Ramping(25%)`, ...) of `cluster` in every policy.
fn target_states(status: &serde_json::Value, cluster: &str) -> Vec<String> {
    let policies = status["policies"].as_array().cloned().unwrap_or_default();
    policies
        .iter()
        .filter_map(|p| {
            p["targets"].as_array()?.iter().find_map(|t| {
                (t["cluster"] == cluster).then(|| t["state"].as_str().unwrap_or("").to_owned())
            })
        })
        .collect()
}

/// Failover must finish within: unhealthyThreshold (2) × interval (200 ms) + timeout
/// (150 ms), plus decision, etcd publish and watch delivery. Two seconds is generous for
/// a 2-core CI machine yet far below any DNS TTL that matters.
const FAILOVER_BOUND: Duration = Duration::from_secs(3);

// === 1. a primary backend dies and heals ===

/// The primary's backend dies: answers move to the secondary within the failover
/// bound. It heals: nothing goes back before the hold-down ends, then traffic ramps.
pub async fn backend_failover_and_failback(
    scale: Scale,
    backend: ApiBackend,
) -> anyhow::Result<ScenarioReport> {
    let hold_down = scale.secs(3.0);
    let ramp = scale.secs(4.0);
    let spec = FleetSpec {
        hold_down: format!("{}ms", hold_down.as_millis()),
        ramp_duration: format!("{}ms", ramp.as_millis()),
        ramp_steps: 4,
        backend,
        ..FleetSpec::default()
    };
    let mut run = Run::begin(
        "1 primary backend dies, heals",
        spec,
        hold_down + ramp + scale.secs(8.0),
    )
    .await?;
    let killed = Instant::now();
    run.fleet.members[0].backend.kill().await;
    let moved = run
        .fleet
        .wait_all_answer(&[member_ip(1)], Duration::from_secs(15))
        .await;
    tokio::time::sleep(scale.secs(2.0)).await;
    let leader = run.fleet.leader().await.unwrap_or(0);
    let healed = Instant::now();
    run.fleet.members[0].backend.revive().await?;
    // The ramp hands out both addresses per query by weight, so "done" is judged from
    // the history afterwards, not from one lucky round of answers. Meanwhile the
    // leader's status gives the primary's state, step by step.
    let mut states: Vec<String> = Vec::new();
    let watch_until = healed + hold_down + ramp + Duration::from_secs(3);
    // Bounded by `watch_until`: one look every 100 ms.
    while Instant::now() < watch_until {
        if let Ok(status) = run.fleet.replicas[leader].status().await
            && let Some(state) = target_states(&status, "m0").into_iter().next()
            && states.last() != Some(&state)
        {
            states.push(state);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended = Instant::now();
    let (mut report, history) = run.end().await;
    report.check(moved.is_ok(), || {
        format!("no failover: {}", error_text(&moved))
    });
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
    // Every step of the ramp in order, each a quarter more of the primary's share, and
    // then healthy.
    let steps: Vec<u32> = states
        .iter()
        .filter_map(|s| s.strip_prefix("Ramping(")?.strip_suffix("%)")?.parse().ok())
        .collect();
    report
        .notes
        .push(format!("the primary's states on the leader: {states:?}"));
    report.check(steps == [25, 50, 75, 100], || {
        format!("ramp steps {steps:?}, expected [25, 50, 75, 100] (4 steps)")
    });
    report.check(states.last().map(String::as_str) == Some("Healthy"), || {
        format!("the ramp did not end healthy: {states:?}")
    });
    let done = history.settled_between(healed, ended, only(member_ip(0)));
    report.notes.push(format!(
        "failback complete {:.2} s after healing (hold-down + ramp {:.1} s)",
        done.unwrap_or_default().as_secs_f64(),
        (hold_down + ramp).as_secs_f64()
    ));
    report.check(done.is_some_and(|d| d >= hold_down + ramp / 2), || {
        format!("failback finished after {done:?}, before hold-down + ramp")
    });
    report.check(
        done.is_some_and(|d| d <= hold_down + ramp + Duration::from_secs(3)),
        || format!("failback finished after {done:?}, well past hold-down + ramp"),
    );
    Ok(report)
}

// === 2. one member's API goes dark ===

/// Member 0's API server disappears (port closed) while its backend keeps serving: the
/// answers do not change at all, neither for a policy with HTTP checks nor for one
/// whose only signal is that API (its targets are frozen as they were, not failed).
pub async fn member_api_dark(scale: Scale, backend: ApiBackend) -> anyhow::Result<ScenarioReport> {
    let dark = scale.secs(8.0);
    let run = Run::begin(
        "2 member API dark",
        FleetSpec {
            backend,
            hint_only_policies: 1,
            ..FleetSpec::default()
        },
        dark + Duration::from_secs(4),
    )
    .await?;
    let hinted = hostname(1);
    // Its answer settles once every member's view has listed (on a real server the
    // last member's LoadBalancer address can come a second after the others): the
    // outage must change nothing of the settled answer.
    let hinted_before = settled_answer(
        run.fleet.dns_addrs()[0],
        &hinted,
        Duration::from_secs(3),
        Duration::from_secs(30),
    )
    .await?;
    let before = hinted_before.addresses().to_vec();
    let leader = run.fleet.leader().await.unwrap_or(0);
    run.fleet.members[0].api.outage().await;
    // The hint-only policy's m0 target: frozen, with the reason saying so.
    let frozen = poll_status(&run.fleet, leader, dark, |s| {
        let policy = s["policies"]
            .as_array()?
            .iter()
            .find(|p| p["hostname"].as_str() == Some(hinted.as_str()))?;
        let m0 = policy["targets"]
            .as_array()?
            .iter()
            .find(|t| t["cluster"] == "m0")?;
        m0["reason"]
            .as_str()
            .filter(|r| r.contains("frozen"))
            .map(str::to_owned)
    })
    .await;
    let mut hinted_during = Vec::new();
    let until = Instant::now() + dark;
    // Bounded by `dark`: one sample of every replica a second.
    while Instant::now() < until {
        for dns in run.fleet.dns_addrs() {
            let name = hinted.clone();
            hinted_during
                .push(tokio::task::spawn_blocking(move || super::dns::answer_a(dns, &name)).await?);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
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
    // Its answer before the outage is whatever the API's hints made it (on a real
    // server, with no EndpointSlices for loopback addresses, every target is unknown
    // and the policy fails open); the outage must change nothing of it.
    report.check(hinted_before.ok().is_some_and(|a| !a.is_empty()), || {
        format!("{hinted} had no answer before the outage")
    });
    report.check(frozen.is_some(), || {
        format!("{hinted}'s m0 target was never reported frozen while its API was dark")
    });
    report.notes.push(format!(
        "{hinted} (no health check) during the outage: m0 {}",
        frozen.unwrap_or_default()
    ));
    let moved: Vec<_> = hinted_during
        .iter()
        .filter(|a| a.addresses() != before.as_slice())
        .collect();
    report.check(!hinted_during.is_empty() && moved.is_empty(), || {
        format!(
            "{hinted} answered other than before the outage ({before:?}) {} of {} times, e.g. {:?}",
            moved.len(),
            hinted_during.len(),
            moved.first()
        )
    });
    Ok(report)
}

/// The answer for `name` once it has stayed the same for `quiet` (polled every 250 ms,
/// for at most `limit`).
async fn settled_answer(
    dns: SocketAddr,
    name: &str,
    quiet: Duration,
    limit: Duration,
) -> anyhow::Result<super::dns::Answer> {
    let start = Instant::now();
    let mut last: Option<(super::dns::Answer, Instant)> = None;
    // Bounded by `limit` and by its count of 250 ms steps.
    for _ in 0..=limit.as_millis() / 250 {
        let name = name.to_owned();
        let now = tokio::task::spawn_blocking(move || super::dns::query_a(dns, &name)).await?;
        match &last {
            Some((answer, since)) if *answer == now => {
                if since.elapsed() >= quiet {
                    return Ok(now);
                }
            }
            _ => last = Some((now, Instant::now())),
        }
        if start.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!("{name} did not keep one answer for {quiet:?} within {limit:?}: last {last:?}")
}

// === 3. the incident: every API server saturated ===

/// Every API server (members and management) answers 429 with Retry-After, then hangs,
/// while backends stay up. DNS never fails or empties, Lifeline stays inside its API
/// budget and honours Retry-After, and a real backend failure still fails over.
pub async fn api_saturation(scale: Scale, backend: ApiBackend) -> anyhow::Result<ScenarioReport> {
    let retry_after = 2u64;
    let throttled = scale.secs(8.0);
    let hanging = scale.secs(8.0);
    let spec = FleetSpec {
        replicas: 3,
        backend,
        ..FleetSpec::default()
    };
    let (qps, burst) = (spec.qps, spec.burst);
    let mut run = Run::begin(
        "3 every API server 429/hangs",
        spec,
        throttled + hanging + Duration::from_secs(4),
    )
    .await?;
    let before = run.fleet.api_counts();
    let storm = Instant::now();
    for api in run.fleet.api_servers() {
        api.inject(Fault::TooManyRequests {
            retry_after_seconds: retry_after,
        });
        // Open watches are cut, so every client must come back into the storm.
        api.drop_watches();
    }
    tokio::time::sleep(throttled).await;
    let mid = run.fleet.api_counts();
    let throttled_requests = delta(&before, &mid);
    for api in run.fleet.api_servers() {
        api.clear_faults();
        api.inject(Fault::Hang);
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
    report.failover(
        &history,
        killed,
        &moved,
        FAILOVER_BOUND,
        "failover during the API storm",
    );
    // The budget: only the leader talks to any API server, management included (the
    // other replicas follow the leader through the store), so however many replicas
    // run, each server sees at most one client's budget.
    let secs = storm_len.as_secs_f64();
    for (name, n) in &during {
        let bound = burst as f64 + qps * secs;
        report.check(*n as f64 <= bound, || {
            format!("{name}: {n} requests in {secs:.1} s of storm, budget {bound:.0}")
        });
    }
    // Retry-After: after a 429, no caller of that client sends before it expires. Its
    // callers may all pass the gate in the same instant, so allow one request per
    // caller per Retry-After period.
    let periods = throttled.as_secs_f64() / retry_after as f64 + 1.0;
    for (name, n) in &throttled_requests {
        // Management: the leader's two watches (policies, clusters) and its status and
        // event writers. A member: the leader's watch streams.
        let callers = if name == "management" { 4.0 } else { 2.0 };
        let bound = (callers * periods).ceil();
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
pub async fn etcd_down(scale: Scale, backend: ApiBackend) -> anyhow::Result<ScenarioReport> {
    let down = scale.secs(8.0);
    let mut run = Run::begin(
        "5 etcd down, back",
        FleetSpec {
            backend,
            ..FleetSpec::default()
        },
        down + Duration::from_secs(20),
    )
    .await?;
    let stopped = Instant::now();
    run.fleet.etcd.stop();
    tokio::time::sleep(down).await;
    run.fleet.etcd.start_again().await;
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
    report.failover(
        &history,
        killed,
        &moved,
        Duration::from_secs(10),
        "failover after etcd returned",
    );
    Ok(report)
}

// === 9. systemic false signal ===

/// Every backend's listener closes at once: the observer is more likely broken than
/// the world. The blast-radius guard freezes the answers and raises
/// `SystemicFailureSuspected` instead of emptying or shuffling them.
pub async fn systemic_false_signal(
    scale: Scale,
    backend: ApiBackend,
) -> anyhow::Result<ScenarioReport> {
    let hold = scale.secs(6.0);
    let mut run = Run::begin(
        "9 every probe fails at once",
        FleetSpec {
            backend,
            ..FleetSpec::default()
        },
        hold + Duration::from_secs(15),
    )
    .await?;
    // The leader's status is live; followers copy the stored decision every 2 s.
    let leader = run.fleet.leader().await.unwrap_or(0);
    let cut = Instant::now();
    futures::future::join_all(run.fleet.members.iter_mut().map(|m| m.backend.kill())).await;
    let systemic = |status: &serde_json::Value| {
        let alarms = status["alarms"].as_array()?;
        alarms
            .iter()
            .any(|a| a["kind"] == "SystemicFailureSuspected")
            .then(|| cut.elapsed())
    };
    let alarm = poll_status(&run.fleet, leader, Duration::from_secs(10), systemic).await;
    let follower = (leader + 1) % run.fleet.replicas.len();
    let on_follower = poll_status(&run.fleet, follower, Duration::from_secs(5), systemic).await;
    run.report.notes.push(format!(
        "a follower's /v1/status showed the alarm: {}",
        on_follower.map_or("no (within 5 s)".to_owned(), |d| format!(
            "after {:.1} s",
            d.as_secs_f64()
        ))
    ));
    tokio::time::sleep(hold).await;
    for m in &mut run.fleet.members {
        m.backend.revive().await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut report, history) = run.end().await;
    report.check(alarm.is_some(), || {
        "no SystemicFailureSuspected alarm in /v1/status".into()
    });
    // The alarm is saved even though no target changed, so every replica shows it.
    report.check(on_follower.is_some(), || {
        "a follower's /v1/status never showed the SystemicFailureSuspected alarm".into()
    });
    report
        .notes
        .push(format!("alarm raised {alarm:?} after every backend died"));
    // The guard counts targets failing but not yet past their threshold too, so the
    // first target to cross it is held back like the rest: no answer moves at all, on
    // any replica, from the cut to the end (the backends' return included).
    let changes = history.since(cut).changes();
    report.notes.push(format!(
        "{} answer change(s) across {} replicas after the cut",
        changes.len(),
        history.servers().len()
    ));
    report.check(changes.is_empty(), || {
        format!(
            "answers moved before or after the guard tripped: {} change(s), e.g. {:?}",
            changes.len(),
            changes.first()
        )
    });
    Ok(report)
}

// === 4. management down, every replica restarted ===

/// The management API is gone and every Lifeline replica restarts: each answers from
/// its persisted snapshot at once, a leader is elected from etcd, and it still steers.
///
/// With `kubeconfig_files` the member kubeconfigs are files; otherwise they are Secrets
/// in the (unreachable) management cluster.
pub async fn restart_without_management(
    scale: Scale,
    backend: ApiBackend,
    kubeconfig_files: bool,
) -> anyhow::Result<ScenarioReport> {
    let dark = scale.secs(4.0);
    let name = if kubeconfig_files {
        "4 management down, all restarted"
    } else {
        "4b as 4, member kubeconfigs in Secrets"
    };
    let mut run = Run::begin(
        name,
        FleetSpec {
            kubeconfig_files,
            backend,
            ..FleetSpec::default()
        },
        dark + Duration::from_secs(25),
    )
    .await?;
    run.fleet.management.outage().await;
    // Every replica down at once. The load keeps running on all of them: a replica's
    // queries count again from its first answer after its restart.
    let down = Instant::now();
    for (i, r) in run.fleet.replicas.iter_mut().enumerate() {
        let took = r.stop().await?;
        run.report.notes.push(format!(
            "replica {i} shut down in {:.1} s with the management API gone",
            took.as_secs_f64()
        ));
    }
    let mut first = Vec::new();
    for (i, r) in run.fleet.replicas.iter_mut().enumerate() {
        r.start().await?;
        // The sockets open a moment after the task starts; from then on it must answer.
        let dns = r.dns;
        let started = Instant::now();
        let answer = tokio::task::spawn_blocking(move || {
            // Bounded: 100 tries of at most 300 ms.
            (0..100)
                .map(|_| super::dns::query_a(dns, &hostname(0)))
                .find(|a| *a != super::dns::Answer::NoReply)
        })
        .await?;
        let answered = Instant::now();
        run.ignored.push((i, down, Some(answered)));
        first.push((answered.duration_since(started), answer));
    }
    let restarted = Instant::now();
    tokio::time::sleep(dark).await;
    let killed = Instant::now();
    run.fleet.members[0].backend.kill().await;
    let moved = run
        .fleet
        .wait_all_answer(&[member_ip(1)], Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    run.fleet.management.restore().await?;
    let (mut report, history) = run.end().await;
    for (i, (took, answer)) in first.iter().enumerate() {
        report.notes.push(format!(
            "replica {i} answered {:.2} s after its restart: {answer:?}",
            took.as_secs_f64()
        ));
        report.check(
            answer
                .as_ref()
                .is_some_and(|a| a.addresses() == [member_ip(0)]),
            || format!("replica {i}'s first answer after the restart: {answer:?}"),
        );
        // From its persisted snapshot, before any source: at once means well inside a
        // DNS client's first retry.
        report.check(*took <= RESTART_ANSWER_BOUND, || {
            format!("replica {i} first answered {took:?} after its restart, bound {RESTART_ANSWER_BOUND:?}")
        });
    }
    let stale = history.any_since(restarted, |a| a != [member_ip(0)]);
    let before_kill = stale.iter().filter(|s| s.at < killed).count();
    report.check(before_kill == 0, || {
        format!("{before_kill} answers after the restart were not the primary's")
    });
    report.failover(
        &history,
        killed,
        &moved,
        Duration::from_secs(10),
        "failover after restarting without management",
    );
    Ok(report)
}

// === 6. leader killed during a failover ===

/// The primary's backend dies and, before the failover is through, the leader is
/// killed: the next leader completes the failover and no surviving replica ever hands
/// the dead primary out again.
pub async fn leader_killed_during_failover(
    scale: Scale,
    backend: ApiBackend,
) -> anyhow::Result<ScenarioReport> {
    let after = scale.secs(4.0);
    let mut run = Run::begin(
        "6 leader killed mid-failover",
        FleetSpec {
            backend,
            ..FleetSpec::default()
        },
        after + Duration::from_secs(20),
    )
    .await?;
    let leader = run
        .fleet
        .leader()
        .await
        .ok_or_else(|| anyhow::anyhow!("no leader found"))?;
    let killed = Instant::now();
    run.fleet.members[0].backend.kill().await;
    // One failed probe in (of the two that make it unhealthy): the decision is pending.
    tokio::time::sleep(Duration::from_millis(250)).await;
    run.fleet.replicas[leader].kill().await;
    run.ignored.push((leader, Instant::now(), None));
    let (mut report, successor) = run
        .end_after_leader_killed(leader, killed, after, "failover across the leader's death")
        .await;
    report
        .notes
        .push(format!("killed replica {leader}; new leader {successor:?}"));
    Ok(report)
}

/// The primary's backend dies; the leader decides the failover and, before it saves
/// that decision, stops for good (a test fault) and is killed there. Its successor has
/// only the older decision in the store: it must find the failure itself, and no
/// surviving replica may hand the dead primary out once the failover is answered.
pub async fn leader_killed_before_saving(
    scale: Scale,
    backend: ApiBackend,
) -> anyhow::Result<ScenarioReport> {
    let after = scale.secs(4.0);
    let mut run = Run::begin(
        "6b leader killed after deciding, before saving",
        FleetSpec {
            backend,
            test_fault: Some("hang-before-save"),
            ..FleetSpec::default()
        },
        after + Duration::from_secs(25),
    )
    .await?;
    let leader = run
        .fleet
        .leader()
        .await
        .ok_or_else(|| anyhow::anyhow!("no leader found"))?;
    let died = Instant::now();
    run.fleet.members[0].backend.kill().await;
    // The leader's status shows a decision as soon as it is made, before it is saved.
    let failover = member_ip(1).to_string();
    let decided = poll_status(&run.fleet, leader, Duration::from_secs(10), |s| {
        let answers = s["policies"].as_array()?.first()?["answers"]
            .as_array()?
            .clone();
        (answers.len() == 1 && answers[0] == failover.as_str()).then(|| died.elapsed())
    })
    .await;
    let killed = Instant::now();
    run.fleet.replicas[leader].kill().await;
    run.ignored.push((leader, killed, None));
    let (mut report, successor) = run
        .end_after_leader_killed(leader, killed, after, "failover by the successor")
        .await;
    report.check(decided.is_some(), || {
        "the leader never showed the failover decision it was to be killed after".into()
    });
    report.notes.push(format!(
        "replica {leader} decided the failover {:.2} s after the death and was killed before saving it; new leader {successor:?}",
        decided.unwrap_or_default().as_secs_f64()
    ));
    Ok(report)
}

// === 7. one `lifeline dns` replica outlives everything ===

/// A standalone DNS replica (the `lifeline dns` code path: persisted snapshot plus an
/// etcd watch) is the only thing left: controllers, etcd, every API server and every
/// backend are gone. It keeps answering the last good records.
pub async fn lone_dns_replica(scale: Scale, backend: ApiBackend) -> anyhow::Result<ScenarioReport> {
    let alone = scale.secs(20.0);
    let mut run = Run::begin(
        "7 only a lifeline dns replica left",
        FleetSpec {
            backend,
            ..FleetSpec::default()
        },
        alone + Duration::from_secs(20),
    )
    .await?;
    let addr = lifeline_testkit::free_addr();
    let dir = run.fleet.dir().join("edge");
    let dns: lifeline_dns::DnsConfig = serde_json::from_value(serde_json::json!({
        "udp": [addr], "tcp": [addr], "dataDir": dir,
    }))?;
    let zones: Vec<lifeline_dns::ZoneConfig> = serde_json::from_value(serde_json::json!([{
        "origin": super::fleet::ZONE, "primaryNs": format!("ns1.{}", super::fleet::ZONE),
        "hostmaster": format!("h.{}", super::fleet::ZONE),
        "nameservers": [format!("ns1.{}", super::fleet::ZONE)],
    }]))?;
    let source = lifeline_etcd::EtcdSource::new(run.fleet.etcd.connect(), super::fleet::PREFIX);
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let edge = tokio::spawn(async move {
        lifeline_dns::standalone::run_with_sources(
            &dns,
            &zones,
            None,
            vec![Box::new(source)],
            async move {
                let _ = rx.await;
            },
        )
        .await
    });
    // It is fed from etcd like every replica.
    let fed = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        // Bounded: 300 tries, 15 s.
        for _ in 0..300 {
            if start.elapsed() > Duration::from_secs(15) {
                break;
            }
            if super::dns::query_a(addr, &hostname(0)).addresses() == [member_ip(0)] {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })
    .await?;
    anyhow::ensure!(fed, "the standalone DNS replica never answered from etcd");
    // Everything else goes.
    run.swap_load(vec![addr], alone + Duration::from_secs(30))
        .await;
    let gone = Instant::now();
    for r in &mut run.fleet.replicas {
        r.stop().await?;
    }
    run.fleet.etcd.stop();
    for api in run.fleet.api_servers() {
        api.outage().await;
    }
    for m in &mut run.fleet.members {
        m.backend.kill().await;
    }
    tokio::time::sleep(alone).await;
    // The load ends before the lone replica does: its answers are what is judged, and
    // restoring the API servers afterwards (seconds each, for real ones) is only
    // tidying up.
    run.swap_load(Vec::new(), Duration::ZERO).await;
    let _ = stop.send(());
    let stopped = tokio::time::timeout(Duration::from_secs(10), edge).await;
    for api in run.fleet.api_servers() {
        api.restore().await?;
    }
    let (mut report, history) = run.end().await;
    report.check(matches!(stopped, Ok(Ok(Ok(())))), || {
        format!("the standalone replica did not stop cleanly: {stopped:?}")
    });
    let lone = history.since(gone);
    report.notes.push(format!(
        "{} queries to the lone replica over {:.0} s",
        lone.queries(),
        alone.as_secs_f64()
    ));
    let wrong = lone.any_since(gone, |a| a != [member_ip(0)]).len();
    report.check(wrong == 0, || {
        format!("{wrong} answers differ from the last good record")
    });
    Ok(report)
}

// === 8. many clusters recover at once ===

/// Several policies fail over together and then all recover at the same moment: at
/// most `maxConcurrentRamps` of them ramp at once, and each ends on the primary.
pub async fn mass_recovery_is_paced(
    scale: Scale,
    backend: ApiBackend,
) -> anyhow::Result<ScenarioReport> {
    let ramp = scale.secs(3.0);
    let spec = FleetSpec {
        policies: 4,
        max_concurrent_ramps: 2,
        hold_down: "1s".into(),
        ramp_duration: format!("{}ms", ramp.as_millis()),
        ramp_steps: 3,
        backend,
        ..FleetSpec::default()
    };
    let (policies, max_ramps) = (spec.policies, spec.max_concurrent_ramps);
    let mut run = Run::begin(
        "8 mass recovery paced",
        spec,
        ramp * 3 + Duration::from_secs(20),
    )
    .await?;
    run.fleet.members[0].backend.kill().await;
    run.fleet
        .wait_all_answer(&[member_ip(1)], Duration::from_secs(15))
        .await?;
    // Followers refresh their status from etcd every 2 s; the leader's is live.
    let leader = run.fleet.leader().await.unwrap_or(0);
    let healed = Instant::now();
    run.fleet.members[0].backend.revive().await?;
    // Watch the decision as it goes: how many policies ramp at once.
    let mut most = 0;
    let mut seen_ramping = 0;
    let limit = ramp * (policies as u32 / max_ramps as u32 + 1) + Duration::from_secs(10);
    // Bounded by `limit` and by its count of 100 ms steps.
    for _ in 0..=limit.as_millis() / 100 {
        if healed.elapsed() > limit {
            break;
        }
        if let Ok(status) = run.fleet.replicas[leader].status().await {
            let states = target_states(&status, "m0");
            let ramping = states.iter().filter(|s| s.starts_with("Ramping")).count();
            most = most.max(ramping);
            seen_ramping += usize::from(ramping > 0);
            if states.len() == policies && states.iter().all(|s| s == "Healthy") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back = run
        .fleet
        .wait_all_answer(&[member_ip(0)], Duration::from_secs(10))
        .await;
    let done = healed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut report, history) = run.end().await;
    report.notes.push(format!(
        "at most {most} of {policies} policies ramping at once (limit {max_ramps}); all back after {:.1} s",
        done.as_secs_f64()
    ));
    report.check(most <= max_ramps, || {
        format!("{most} policies ramped at once, limit {max_ramps}")
    });
    report.check(seen_ramping > 0, || "no ramp was ever observed".into());
    report.check(back.is_ok(), || {
        format!("not every policy came back: {}", error_text(&back))
    });
    // Paced: the last policy can only start once a slot frees, after a full ramp.
    report.check(done >= ramp * 2, || {
        format!("every policy was back after {done:?}, faster than two ramps in sequence")
    });
    // No flapping: once the primary is answered alone at the end, it stays.
    let end = history.0.last().map(|s| s.at).unwrap_or(healed);
    let settled = history.settled_between(healed, end, only(member_ip(0)));
    report.check(settled.is_some(), || {
        "the primary's answers did not settle".into()
    });
    Ok(report)
}

// === registry ===

/// Every scenario, in the order the report prints them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    BackendFailover,
    MemberApiDark,
    ApiSaturation,
    RestartWithoutManagement,
    RestartWithoutManagementSecrets,
    EtcdDown,
    LeaderKilled,
    LeaderKilledBeforeSaving,
    LoneDnsReplica,
    MassRecovery,
    SystemicFalseSignal,
}

impl Scenario {
    pub const ALL: [Scenario; 11] = [
        Scenario::BackendFailover,
        Scenario::MemberApiDark,
        Scenario::ApiSaturation,
        Scenario::RestartWithoutManagement,
        Scenario::RestartWithoutManagementSecrets,
        Scenario::EtcdDown,
        Scenario::LeaderKilled,
        Scenario::LeaderKilledBeforeSaving,
        Scenario::LoneDnsReplica,
        Scenario::MassRecovery,
        Scenario::SystemicFalseSignal,
    ];

    /// Runs the scenario on a fresh fleet whose API servers are `backend`.
    pub async fn run(self, scale: Scale, backend: ApiBackend) -> anyhow::Result<ScenarioReport> {
        match self {
            Scenario::BackendFailover => backend_failover_and_failback(scale, backend).await,
            Scenario::MemberApiDark => member_api_dark(scale, backend).await,
            Scenario::ApiSaturation => api_saturation(scale, backend).await,
            Scenario::RestartWithoutManagement => {
                restart_without_management(scale, backend, true).await
            }
            Scenario::RestartWithoutManagementSecrets => {
                restart_without_management(scale, backend, false).await
            }
            Scenario::EtcdDown => etcd_down(scale, backend).await,
            Scenario::LeaderKilled => leader_killed_during_failover(scale, backend).await,
            Scenario::LeaderKilledBeforeSaving => leader_killed_before_saving(scale, backend).await,
            Scenario::LoneDnsReplica => lone_dns_replica(scale, backend).await,
            Scenario::MassRecovery => mass_recovery_is_paced(scale, backend).await,
            Scenario::SystemicFalseSignal => systemic_false_signal(scale, backend).await,
        }
    }
}
