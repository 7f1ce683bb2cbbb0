//! Data-plane health probes: the one place that talks HTTP(S) or raw TCP to the addresses
//! Lifeline hands out.
//!
//! ```text
//!   set_targets(specs) ──► one task per TargetKey ──► round: a batch of its addresses,
//!                                                      each probe holding one permit of
//!                                                      the global semaphore
//!   results: mpsc::Sender<ProbeResult> ◄──────────────┘
//! ```
//!
//! Each target has its own task, so a slow or hanging target only ever delays itself. The
//! cost is bounded whatever a policy says:
//! - the semaphore bounds the probes (connections) in flight across all targets, and a
//!   probe's future exists only once it holds a permit;
//! - a round probes at most [`limits::PROBE_ADDRESSES_PER_ROUND`] addresses of its target:
//!   the ones that failed last (up to half the batch), then the next in turn, so a target
//!   of 10,000 addresses is covered over rounds, not all at once;
//! - every HTTPS probe shares one TLS configuration, its trust roots parsed once.
//!
//! A target is healthy when no address's latest probe failed: a round reports failing
//! while any address is failing, naming the first. With no more addresses than a batch,
//! that is simply "every address passed this round". After [`Prober::set_targets`]
//! returns, no result is sent for a target it removed or replaced.

mod http;

use std::{
    collections::{BTreeMap, HashMap},
    error::Error as StdError,
    fmt, io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use lifeline_crds::{HealthCheck, HttpScheme};
use lifeline_model::limits;
use parking_lot::Mutex;
use rand::Rng;
use tokio::{
    sync::{Semaphore, mpsc},
    task::{JoinHandle, JoinSet},
    time::Instant,
};
use tracing::{Instrument, debug, info, info_span, warn};

/// Interval used when a document's interval cannot be parsed (documents are validated
/// before they get here, so this is a last resort, matching the CRD default).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Timeout used when a document's timeout cannot be parsed (the CRD default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first probe of a new target lands at a random point within its interval, but no
/// later than this: spreading start-up load matters, yet a new target should not wait a
/// long interval before it has any health at all.
const FIRST_PROBE_SPREAD: Duration = Duration::from_secs(5);
/// Each later interval is stretched or shrunk by up to this fraction, so targets that
/// started together drift apart instead of probing in lockstep.
const JITTER: f64 = 0.1;

// === Errors ===

/// What can go wrong setting up the prober. Failures of individual probes are not errors:
/// they are results with `ok: false`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared TLS configuration could not be built.
    #[error("building the TLS configuration: {0}")]
    Tls(String),
    /// A certificate given as an extra trust root could not be parsed.
    #[error("parsing trusted CA certificates: {0}")]
    Certificate(String),
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why one address failed its probe. Its text is the reason a result, the status and the
/// logs show, so it stays short and names the failing step.
#[derive(Debug, Clone, thiserror::Error)]
enum Failure {
    /// No TCP connection (refused, unreachable, ...).
    #[error("{0}")]
    Connect(String),
    /// A verified HTTPS check on a machine without trust roots; `.0` is `": why"` when
    /// the system said why, else empty.
    #[error("tls: no trusted CA certificates on this machine{0}")]
    NoTrustRoots(String),
    /// The check's host cannot be presented as a TLS server name.
    #[error("tls: host is not a valid server name: {0}")]
    ServerName(String),
    /// The TLS handshake failed (a certificate refused, above all).
    #[error("{0}")]
    Handshake(String),
    /// The HTTP request could not be sent or answered.
    #[error("{0}")]
    Exchange(String),
    /// An answer whose status is not a healthy one (any 2xx when `expected` is empty).
    #[error("status {status} not {}", wanted(expected))]
    Status { status: u16, expected: Vec<u16> },
    /// Nothing within the probe's timeout.
    #[error("timeout after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

fn wanted(expected: &[u16]) -> String {
    if expected.is_empty() {
        "2xx".to_owned()
    } else {
        format!("in {expected:?}")
    }
}

// === Types ===

/// Identifies one probed target: a policy and one of its member clusters (the same key
/// the engine uses, so results feed it without conversion).
pub use lifeline_engine::TargetKey;

/// What one probe of one address does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// An HTTP(S) GET; healthy when the status is in `expected_status`.
    Http {
        /// Use TLS.
        https: bool,
        /// Port on each address.
        port: u16,
        /// Request path; a missing leading `/` is added.
        path: String,
        /// Host header, and for HTTPS the TLS server name (SNI and certificate name).
        /// `None` sends the address itself.
        host: Option<String>,
        /// Statuses that count as healthy; empty means any 2xx. Redirects are not
        /// followed, so a 3xx is judged against this set.
        expected_status: Vec<u16>,
        /// Accept any server certificate (HTTPS only).
        insecure_skip_verify: bool,
    },
    /// A TCP connect; healthy when the handshake completes.
    Tcp {
        /// Port on each address.
        port: u16,
    },
}

/// Everything needed to probe one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The target.
    pub key: TargetKey,
    /// Every address of the target; a round succeeds only when every address passes
    /// (a partly broken target is reported failing, naming the address).
    pub addresses: Vec<IpAddr>,
    /// What to do with each address.
    pub check: Check,
    /// Time between rounds (jittered by ±10%).
    pub interval: Duration,
    /// Time from the start of a round to the next while the target is unsettled: its last
    /// result contradicts the outcome the thresholds last confirmed (or none is confirmed
    /// yet). At most `threshold - 1` rounds in a row are fast, so the extra load per change
    /// of health is bounded. Never longer than `interval`.
    pub fast_interval: Duration,
    /// Time one address may take before it counts as failed.
    pub timeout: Duration,
    /// Consecutive failures that confirm a target down (the policy's
    /// `unhealthyThreshold`, which the engine applies; here it only ends fast rounds).
    pub unhealthy_threshold: u32,
    /// Consecutive successes that confirm a target up (`healthyThreshold`).
    pub healthy_threshold: u32,
}

/// The outcome of one round of one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    /// The target.
    pub key: TargetKey,
    /// Wall-clock time the round finished (SystemTime, the engine is fed wall-clock time).
    pub at: SystemTime,
    /// Every address passed.
    pub ok: bool,
    /// Short human reason: "200 OK", "connect refused at 127.0.0.2:8080",
    /// "timeout after 1s at 127.0.0.2:8080", "status 503 not in [200] at 127.0.0.2:8080".
    pub detail: String,
    /// How long the round took (the slowest address).
    pub latency: Duration,
}

/// Converts a policy's health check into a [`Check`] with its interval and timeout.
///
/// `default_host` (the policy's hostname) becomes the Host header and TLS server name
/// unless the check names its own host. Returns `None` when the check has neither an
/// HTTP nor a TCP part, or its port is out of range; validation rejects both, so this
/// only guards against documents that skipped it.
pub fn check_from_spec(
    hc: &HealthCheck,
    default_host: &str,
) -> Option<(Check, Duration, Duration)> {
    let check = if let Some(http) = &hc.http {
        let host = http
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .or_else(|| (!default_host.is_empty()).then(|| default_host.to_owned()));
        Check::Http {
            https: http.scheme == HttpScheme::Https,
            port: port(http.port)?,
            path: http.path.clone(),
            host,
            expected_status: http.expected_status.clone(),
            insecure_skip_verify: http.insecure_skip_verify,
        }
    } else if let Some(tcp) = &hc.tcp {
        Check::Tcp {
            port: port(tcp.port)?,
        }
    } else {
        return None;
    };
    // Clamped to the documented bounds as well: a document that skipped validation must
    // neither busy-loop against someone's backend nor overflow the schedule.
    let interval = hc
        .interval
        .parse()
        .ok()
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_INTERVAL)
        .clamp(limits::PROBE_INTERVAL_MIN, limits::PROBE_INTERVAL_MAX);
    // A probe that may outlast its interval would overlap the next round.
    let timeout = hc
        .timeout
        .parse()
        .ok()
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_TIMEOUT)
        .min(interval);
    Some((check, interval, timeout))
}

/// A health check's `fastInterval`, clamped to `[PROBE_INTERVAL_MIN, interval]` (the
/// bounds validation enforces) and defaulting to the shortest interval.
pub fn fast_interval_from_spec(hc: &HealthCheck, interval: Duration) -> Duration {
    hc.fast_interval
        .parse()
        .ok()
        .unwrap_or(limits::PROBE_INTERVAL_MIN)
        .clamp(
            limits::PROBE_INTERVAL_MIN,
            interval.max(limits::PROBE_INTERVAL_MIN),
        )
}

fn port(port: u32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

// === impl Prober ===

/// Runs one probe task per target and sends every round's result to a channel.
///
/// Dropping the prober stops every task.
pub struct Prober {
    shared: Arc<Shared>,
    tasks: Mutex<HashMap<TargetKey, Task>>,
}

/// What every probe task shares.
struct Shared {
    /// Address probes (connections) in flight across all targets.
    semaphore: Arc<Semaphore>,
    results: mpsc::Sender<ProbeResult>,
    /// One TLS configuration per verification mode, for every HTTPS probe.
    tls: http::Tls,
}

/// A running target.
struct Task {
    /// Shared with the running task (one copy per target, not two).
    spec: Arc<ProbeSpec>,
    /// Cleared (under the lock) before the task is aborted; the task sends only while
    /// holding the lock and seeing `true`, so nothing is sent after it is stopped.
    live: Arc<Mutex<bool>>,
    handle: JoinHandle<()>,
}

impl Prober {
    /// `concurrency`: address probes (connections) in flight at once across all targets
    /// (at least 1).
    pub fn new(concurrency: usize, results: mpsc::Sender<ProbeResult>) -> Result<Self> {
        Self::with_extra_roots(concurrency, results, &[])
    }

    /// Like [`Prober::new`], and HTTPS probes with verification on also trust the CA
    /// certificates in `ca_pem` (a PEM bundle; may be empty), besides the system's roots.
    pub fn with_extra_roots(
        concurrency: usize,
        results: mpsc::Sender<ProbeResult>,
        ca_pem: &[u8],
    ) -> Result<Self> {
        let tls = http::Tls::new(ca_pem)?;
        Ok(Self {
            shared: Arc::new(Shared {
                semaphore: Arc::new(Semaphore::new(concurrency.max(1))),
                results,
                tls,
            }),
            tasks: Mutex::new(HashMap::new()),
        })
    }

    /// Reconciles the running probe tasks with `specs`: starts new targets, stops removed ones,
    /// restarts changed ones; unchanged ones keep their schedule. Must be called inside a tokio runtime.
    ///
    /// When it returns, no further result is sent for a removed or replaced spec.
    pub fn set_targets(&self, specs: Vec<ProbeSpec>) {
        let mut wanted: HashMap<TargetKey, ProbeSpec> = HashMap::with_capacity(specs.len());
        for spec in specs {
            if let Some(earlier) = wanted.insert(spec.key.clone(), spec) {
                warn!(policy = %earlier.key.policy, cluster = %earlier.key.cluster, "duplicate probe target; the last one wins");
            }
        }
        let mut tasks = self.tasks.lock();
        let mut stopped = 0usize;
        tasks.retain(|key, task| {
            if wanted.get(key) == Some(&*task.spec) {
                wanted.remove(key);
                true
            } else {
                task.stop();
                stopped += 1;
                false
            }
        });
        let started = wanted.len();
        for (key, spec) in wanted {
            tasks.insert(key, Task::spawn(self.shared.clone(), spec));
        }
        debug!(
            targets = tasks.len(),
            started, stopped, "probe targets reconciled"
        );
    }

    /// Number of targets being probed.
    pub fn len(&self) -> usize {
        self.tasks.lock().len()
    }

    /// No target is being probed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for (_, task) in self.tasks.get_mut().drain() {
            task.stop();
        }
    }
}

impl fmt::Debug for Prober {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prober")
            .field("targets", &self.len())
            .field("free_permits", &self.shared.semaphore.available_permits())
            .finish_non_exhaustive()
    }
}

// === impl Task ===

impl Task {
    fn spawn(shared: Arc<Shared>, spec: ProbeSpec) -> Self {
        let spec = Arc::new(spec);
        let live = Arc::new(Mutex::new(true));
        let span = info_span!("probe", policy = %spec.key.policy, cluster = %spec.key.cluster);
        let handle = tokio::spawn(run_target(shared, spec.clone(), live.clone()).instrument(span));
        Self { spec, live, handle }
    }

    fn stop(&self) {
        *self.live.lock() = false;
        self.handle.abort();
    }
}

/// The schedule of one target: rounds at its interval with jitter, until stopped or the
/// receiver is gone.
async fn run_target(shared: Arc<Shared>, spec: Arc<ProbeSpec>, live: Arc<Mutex<bool>>) {
    let mut health = Health::default();
    let interval = spec
        .interval
        .clamp(limits::PROBE_INTERVAL_MIN, limits::PROBE_INTERVAL_MAX);
    let fast_interval = spec
        .fast_interval
        .clamp(limits::PROBE_INTERVAL_MIN, interval);
    let mut next = Instant::now() + first_offset(interval);
    let mut last_ok = None;
    let mut settle = Settle::new(spec.unhealthy_threshold, spec.healthy_threshold);
    loop {
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        // Boxed: a round's future is large and lives only while the round runs, so a
        // sleeping target (nearly all of them, nearly always) does not carry its space.
        let result = Box::pin(round(&shared, &spec, &mut health)).await;

        debug!(ok = result.ok, detail = %result.detail, latency_ms = result.latency.as_millis() as u64, "probe round");
        if last_ok != Some(result.ok) {
            info!(ok = result.ok, detail = %result.detail, "probe outcome changed");
            last_ok = Some(result.ok);
        }
        let ok = result.ok;
        // Wait for room outside the lock, then send under it (see `Task::live`).
        let Ok(slot) = shared.results.reserve().await else {
            debug!("result receiver closed; probe task ends");
            return;
        };
        {
            let live = live.lock();
            if !*live {
                return;
            }
            slot.send(result);
        }

        if settle.observe(ok) {
            // Confirm or dismiss the change now instead of an interval later. Counted from
            // this round's start, like the interval: a round that timed out (a black hole)
            // is followed at once, not a further fast interval later.
            next = (started + fast_interval).max(Instant::now());
        } else {
            // Keep to the planned schedule, but skip rounds missed while waiting for a
            // permit or for room in the channel rather than firing them back to back.
            next += jittered(interval);
            next = next.max(Instant::now());
        }
    }
}

/// Tracks whether a target's results have settled: the same outcome `threshold` times in
/// a row confirms it, as the engine's hysteresis does.
#[derive(Debug)]
struct Settle {
    unhealthy_threshold: u32,
    healthy_threshold: u32,
    /// The outcome last confirmed; `None` before the first confirmation.
    confirmed: Option<bool>,
    /// The latest outcome and how many times in a row it came.
    streak: Option<(bool, u32)>,
}

impl Settle {
    fn new(unhealthy_threshold: u32, healthy_threshold: u32) -> Self {
        Self {
            unhealthy_threshold: unhealthy_threshold.max(1),
            healthy_threshold: healthy_threshold.max(1),
            confirmed: None,
            streak: None,
        }
    }

    /// Records one round's outcome; true while the target is unsettled, i.e. the next
    /// round should come at the fast interval.
    fn observe(&mut self, ok: bool) -> bool {
        let run = match self.streak {
            Some((last, n)) if last == ok => n.saturating_add(1),
            _ => 1,
        };
        self.streak = Some((ok, run));
        let threshold = if ok {
            self.healthy_threshold
        } else {
            self.unhealthy_threshold
        };
        if run >= threshold {
            self.confirmed = Some(ok);
        }
        self.confirmed != Some(ok)
    }
}

fn first_offset(interval: Duration) -> Duration {
    rand::rng().random_range(Duration::ZERO..=interval.min(FIRST_PROBE_SPREAD))
}

fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(1.0 - JITTER..=1.0 + JITTER))
}

// === Rounds ===

/// What a target's task remembers between rounds: which addresses failed at their latest
/// probe (with why), and where the rotation goes on. Its size grows with failing
/// addresses only; addresses that pass cost nothing here.
#[derive(Debug, Default)]
struct Health {
    /// Index into the spec's addresses → the reason its latest probe failed.
    failing: BTreeMap<usize, String>,
    /// The next address the rotation probes.
    next: usize,
    /// The failing address the next round re-checks first.
    next_failing: usize,
}

impl Health {
    /// The addresses the next round probes, at most `batch`: failing ones first (up to
    /// half the batch, rotating among them), then the rotation, never one twice.
    fn batch(&mut self, len: usize, batch: usize) -> Vec<usize> {
        if len <= batch {
            return (0..len).collect();
        }
        let mut chosen = Vec::with_capacity(batch);
        let retries = self
            .failing
            .range(self.next_failing..)
            .chain(self.failing.range(..self.next_failing))
            .map(|(i, _)| *i)
            .take((batch / 2).max(1));
        chosen.extend(retries);
        self.next_failing = chosen.last().map_or(0, |i| i + 1);
        let mut walked = 0;
        while chosen.len() < batch && walked < len {
            let i = self.next;
            self.next = (self.next + 1) % len;
            walked += 1;
            if !chosen.contains(&i) {
                chosen.push(i);
            }
        }
        chosen
    }
}

/// Probes one batch of a target's addresses, each holding a permit of the global
/// semaphore while it runs, and folds the outcome into the target's health.
async fn round(shared: &Arc<Shared>, spec: &ProbeSpec, health: &mut Health) -> ProbeResult {
    let started = Instant::now();
    let batch = health.batch(spec.addresses.len(), limits::PROBE_ADDRESSES_PER_ROUND);
    let mut set = JoinSet::new();
    let mut first_ok: Option<(usize, String)> = None;
    let mut outcomes = Vec::with_capacity(batch.len());
    for &i in &batch {
        // A probe exists only once it holds a permit: what is in flight is bounded
        // across all targets, whatever their number or size.
        let Ok(permit) = shared.semaphore.clone().acquire_owned().await else {
            break;
        };
        let addr = spec.addresses[i];
        let (shared, spec_check, timeout) = (shared.clone(), spec.check.clone(), spec.timeout);
        set.spawn(async move {
            let outcome = probe_address(&shared, addr, &spec_check, timeout).await;
            drop(permit);
            (i, outcome)
        });
    }
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(outcome) => outcomes.push(outcome),
            // Only a panic inside a probe gets here; the address is counted failing below.
            Err(e) => warn!(error = %e, "probe subtask failed"),
        }
    }
    for &i in &batch {
        match outcomes.iter().position(|(j, _)| *j == i) {
            Some(at) => match outcomes.swap_remove(at).1 {
                Ok(detail) => {
                    health.failing.remove(&i);
                    if first_ok.as_ref().is_none_or(|(j, _)| i < *j) {
                        first_ok = Some((i, detail));
                    }
                }
                Err(reason) => {
                    health.failing.insert(i, reason.to_string());
                }
            },
            None => {
                health.failing.insert(i, "probe task failed".to_owned());
            }
        }
    }
    let latency = started.elapsed();

    let (ok, detail) = match (health.failing.iter().next(), first_ok) {
        _ if spec.addresses.is_empty() => (false, "no addresses to probe".to_owned()),
        (None, Some((_, detail))) => (true, detail),
        (None, None) => (false, "no address probed".to_owned()),
        (Some((i, reason)), _) => {
            let addr = SocketAddr::new(spec.addresses[*i], spec.check.port());
            match health.failing.len() - 1 {
                0 => (false, format!("{reason} at {addr}")),
                more => (false, format!("{reason} at {addr} (+{more} more failing)")),
            }
        }
    };
    ProbeResult {
        key: spec.key.clone(),
        at: SystemTime::now(),
        ok,
        detail,
        latency,
    }
}

impl Check {
    fn port(&self) -> u16 {
        match self {
            Check::Http { port, .. } | Check::Tcp { port } => *port,
        }
    }
}

/// Probes one address; `Ok` carries the success detail, `Err` the reason it failed.
async fn probe_address(
    shared: &Shared,
    ip: IpAddr,
    check: &Check,
    timeout: Duration,
) -> Result<String, Failure> {
    let addr = SocketAddr::new(ip, check.port());
    let attempt = async {
        match check {
            Check::Tcp { .. } => tokio::net::TcpStream::connect(addr)
                .await
                .map(|_| "connected".to_owned())
                .map_err(|e| connect_failure(&e)),
            Check::Http {
                https,
                path,
                host,
                expected_status,
                insecure_skip_verify,
                ..
            } => {
                let path = if path.starts_with('/') {
                    std::borrow::Cow::Borrowed(path.as_str())
                } else {
                    std::borrow::Cow::Owned(format!("/{path}"))
                };
                let status = http::get(
                    &shared.tls,
                    http::Get {
                        addr,
                        tls: https.then_some(*insecure_skip_verify),
                        host: host.as_deref(),
                        path: &path,
                    },
                )
                .await?;
                let healthy = if expected_status.is_empty() {
                    status.is_success()
                } else {
                    expected_status.contains(&status.as_u16())
                };
                if healthy {
                    Ok(status.to_string())
                } else {
                    Err(Failure::Status {
                        status: status.as_u16(),
                        expected: expected_status.clone(),
                    })
                }
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Failure::Timeout(timeout)),
    }
}

/// A failed connect, by the socket error's name when it has one an operator knows.
fn connect_failure(e: &io::Error) -> Failure {
    Failure::Connect(describe_io(e).unwrap_or_else(|| format!("connect failed: {e}")))
}

/// A short reason for a failed exchange, from the most telling error in its chain;
/// `what` names the step when nothing in the chain is more specific.
fn describe_chain(err: &(dyn StdError + 'static), what: &str) -> String {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return format!("tls: {tls}");
        }
        cur = match e.downcast_ref::<io::Error>() {
            Some(io) => {
                if let Some(reason) = describe_io(io) {
                    return reason;
                }
                // io::Error's `source` skips its own payload, which is where TLS errors
                // travel (sometimes in a further io::Error), so descend into it instead.
                match io.get_ref() {
                    Some(payload) => Some(payload as &(dyn StdError + 'static)),
                    None => io.source(),
                }
            }
            None => e.source(),
        };
    }
    format!("{what}: {}", innermost(err))
}

/// Names the socket failures an operator recognises at a glance.
fn describe_io(e: &io::Error) -> Option<String> {
    let reason = match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect refused",
        io::ErrorKind::ConnectionReset => "connection reset",
        io::ErrorKind::ConnectionAborted => "connection aborted",
        io::ErrorKind::TimedOut => "connect timed out",
        io::ErrorKind::HostUnreachable => "host unreachable",
        io::ErrorKind::NetworkUnreachable => "network unreachable",
        io::ErrorKind::UnexpectedEof => "connection closed early",
        _ => return None,
    };
    Some(reason.to_owned())
}

/// The deepest error's message, which is usually the specific one.
fn innermost(err: &(dyn StdError + 'static)) -> String {
    let mut e = err;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{Health, Settle};

    #[test]
    fn a_target_with_few_addresses_probes_every_one_each_round() {
        let mut health = Health::default();
        health.failing.insert(3, "down".into());
        for _ in 0..3 {
            assert_eq!(health.batch(5, 32), vec![0, 1, 2, 3, 4]);
        }
    }

    #[test]
    fn a_large_target_is_covered_in_rotating_batches_and_its_failing_addresses_come_first() {
        let (len, batch) = (10_000, 32);
        let mut health = Health::default();
        let mut seen = BTreeSet::new();
        let mut rounds = 0;
        while seen.len() < len {
            let chosen = health.batch(len, batch);
            assert!(chosen.len() <= batch, "{}", chosen.len());
            let unique: BTreeSet<_> = chosen.iter().collect();
            assert_eq!(unique.len(), chosen.len(), "an address twice in one round");
            seen.extend(chosen);
            rounds += 1;
        }
        assert_eq!(
            rounds,
            len.div_ceil(batch),
            "every address within ceil(n / batch) rounds"
        );

        // Failing addresses are checked again at every round, ahead of the rotation.
        for i in [17, 5_000, 9_999] {
            health.failing.insert(i, "down".into());
        }
        for _ in 0..5 {
            let chosen = health.batch(len, batch);
            assert_eq!(&chosen[..3], &[17, 5_000, 9_999]);
            assert_eq!(chosen.len(), batch);
        }

        // More failing than half a batch: they take turns, and the rotation still moves.
        health.failing = (0..100).map(|i| (i * 7, "down".to_owned())).collect();
        let mut retried = BTreeSet::new();
        let before = health.next;
        for _ in 0..7 {
            let chosen = health.batch(len, batch);
            retried.extend(
                chosen
                    .iter()
                    .filter(|i| health.failing.contains_key(i))
                    .copied(),
            );
            assert!(chosen.len() == batch);
        }
        assert_eq!(
            retried.len(),
            100,
            "every failing address re-checked in turn"
        );
        assert_ne!(health.next, before, "the rotation kept going");
    }

    /// Which of a sequence of outcomes leave the target unsettled (next round fast).
    fn fast_after(unhealthy: u32, healthy: u32, outcomes: &[bool]) -> Vec<bool> {
        let mut settle = Settle::new(unhealthy, healthy);
        outcomes.iter().map(|ok| settle.observe(*ok)).collect()
    }

    #[test]
    fn a_first_failure_is_rechecked_fast_until_the_threshold_confirms_it() {
        // Up confirmed after two, then three failures confirm down.
        let got = fast_after(3, 2, &[true, true, false, false, false, false]);
        assert_eq!(got, [true, false, true, true, false, false]);
    }

    #[test]
    fn a_failure_dismissed_by_the_next_success_returns_to_the_normal_interval() {
        let got = fast_after(2, 2, &[true, true, false, true, true]);
        assert_eq!(got, [true, false, true, false, false]);
    }

    #[test]
    fn recovery_of_a_confirmed_down_target_is_rechecked_fast_too() {
        let got = fast_after(2, 3, &[false, false, true, true, true, false]);
        assert_eq!(got, [true, false, true, true, false, true]);
    }

    #[test]
    fn a_threshold_of_one_never_needs_a_fast_round() {
        let got = fast_after(1, 1, &[true, false, true, false]);
        assert_eq!(got, [false, false, false, false]);
    }
}
