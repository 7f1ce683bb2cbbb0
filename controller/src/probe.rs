//! Data-plane health probes: the one place that talks HTTP(S) or raw TCP to the addresses
//! Lifeline hands out.
//!
//! ```text
//!   set_targets(specs) ──► one task per TargetKey ──(global semaphore)──► round
//!                                                                          │ every address,
//!                                                                          │ concurrently
//!   results: mpsc::Sender<ProbeResult> ◄───────────────────────────────────┘
//! ```
//!
//! Each target has its own task, so a slow or hanging target only ever delays itself; the
//! semaphore bounds how many rounds are in flight across all targets. A round probes every
//! address of the target and succeeds only when all of them pass. After [`Prober::set_targets`]
//! returns, no result is sent for a target it removed or replaced.

use std::{
    collections::HashMap,
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
use reqwest::{Client, ClientBuilder, header, redirect};
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
    /// The shared HTTP client could not be built.
    #[error("building the HTTP client")]
    Client(#[source] reqwest::Error),
    /// A certificate given as an extra trust root could not be parsed.
    #[error("parsing trusted CA certificates")]
    Certificate(#[source] reqwest::Error),
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    /// Rounds in flight across all targets.
    semaphore: Arc<Semaphore>,
    results: mpsc::Sender<ProbeResult>,
    /// The client for plain HTTP, shared by every target: the URL names the address and
    /// the Host header carries the name, so nothing in it is per target.
    http: Client,
    /// Extra trust roots for HTTPS, on top of the system's.
    extra_roots: Vec<reqwest::Certificate>,
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
    /// `concurrency`: probe rounds in flight at once across all targets (at least 1).
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
        // The process is meant to install the provider at start; doing it here too (if
        // nobody has) turns a forgotten install into a working prober instead of a panic
        // inside reqwest.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let extra_roots = if ca_pem.is_empty() {
            Vec::new()
        } else {
            reqwest::Certificate::from_pem_bundle(ca_pem).map_err(Error::Certificate)?
        };
        let http = client_builder().build().map_err(Error::Client)?;
        Ok(Self {
            shared: Arc::new(Shared {
                semaphore: Arc::new(Semaphore::new(concurrency.max(1))),
                results,
                http,
                extra_roots,
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

/// The settings every probe client shares.
fn client_builder() -> ClientBuilder {
    Client::builder()
        // Health must be measured on the path clients take; a proxy (or the transparent
        // one these machines have) would answer for a dead backend.
        .no_proxy()
        // A redirect is an answer of the backend we probe; following it would judge some
        // other server.
        .redirect(redirect::Policy::none())
        // No idle connections kept: every round opens a fresh connection, so a backend
        // that stopped accepting connections is noticed even if an old one still works.
        // One handshake per interval per address is a negligible cost.
        .pool_max_idle_per_host(0)
        .user_agent(concat!("lifeline-probe/", env!("CARGO_PKG_VERSION")))
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
    let probes = plan(&shared, &spec);
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
        let Ok(permit) = shared.semaphore.clone().acquire_owned().await else {
            return;
        };
        let started = Instant::now();
        // Boxed: a round's future is large and lives only while the round runs, so a
        // sleeping target (nearly all of them, nearly always) does not carry its space.
        let result = Box::pin(round(&spec, &probes)).await;
        drop(permit);

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

/// How to probe one address, prepared once per task.
#[derive(Clone)]
enum AddressProbe {
    Http {
        client: Client,
        url: String,
        host: Option<String>,
        expected: Vec<u16>,
    },
    Tcp,
    /// The probe could not be set up (e.g. its client failed to build); every round
    /// reports this reason.
    Broken(String),
}

/// Prepares the per-address probes of a target.
///
/// Plain HTTP uses the shared client with the address in the URL and the name in the
/// Host header. HTTPS must present the name as the TLS server name (SNI, so the backend
/// picks the certificate clients get, and certificate verification against that name),
/// which reqwest takes only from the URL; so the URL carries the name and a client per
/// address pins that name to the address with `resolve`. Those clients are built once
/// per task, not per round.
fn plan(shared: &Shared, spec: &ProbeSpec) -> Vec<(SocketAddr, AddressProbe)> {
    spec.addresses
        .iter()
        .map(|ip| match &spec.check {
            Check::Tcp { port } => (SocketAddr::new(*ip, *port), AddressProbe::Tcp),
            Check::Http {
                https,
                port,
                path,
                host,
                expected_status,
                insecure_skip_verify,
            } => {
                let addr = SocketAddr::new(*ip, *port);
                let path = if path.starts_with('/') {
                    path.clone()
                } else {
                    format!("/{path}")
                };
                // A host that is itself an IP literal cannot be pinned with `resolve`
                // (reqwest never resolves literals), so it is probed like no host.
                let tls_name = host
                    .as_deref()
                    .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                    .filter(|h| !h.is_empty() && h.parse::<IpAddr>().is_err());
                let (client, url) = match (https, tls_name) {
                    (false, _) => (Ok(shared.http.clone()), format!("http://{addr}{path}")),
                    (true, None) => (
                        https_client(shared, None, *insecure_skip_verify),
                        format!("https://{addr}{path}"),
                    ),
                    (true, Some(name)) => (
                        https_client(shared, Some((&name, addr)), *insecure_skip_verify),
                        format!("https://{name}:{port}{path}"),
                    ),
                };
                let probe = match client {
                    Ok(client) => AddressProbe::Http {
                        client,
                        url,
                        host: host.clone(),
                        expected: expected_status.clone(),
                    },
                    Err(e) => {
                        warn!(%addr, error = %error_chain(&e), "cannot build HTTPS probe client");
                        AddressProbe::Broken(format!("client setup failed: {}", innermost(&e)))
                    }
                };
                (addr, probe)
            }
        })
        .collect()
}

fn https_client(
    shared: &Shared,
    pin: Option<(&str, SocketAddr)>,
    insecure_skip_verify: bool,
) -> reqwest::Result<Client> {
    let mut builder = client_builder()
        .tls_danger_accept_invalid_certs(insecure_skip_verify)
        .tls_certs_merge(shared.extra_roots.iter().cloned());
    if let Some((name, addr)) = pin {
        builder = builder.resolve(name, addr);
    }
    builder.build()
}

/// Probes every address of a target at once and folds the outcomes.
async fn round(spec: &ProbeSpec, probes: &[(SocketAddr, AddressProbe)]) -> ProbeResult {
    let started = Instant::now();
    let outcomes: Vec<(SocketAddr, Result<String, String>)> = match probes {
        [] => Vec::new(),
        // The common case needs no extra task.
        [(addr, probe)] => vec![(
            *addr,
            probe_address(*addr, probe.clone(), spec.timeout).await,
        )],
        many => {
            let mut set = JoinSet::new();
            for (i, (addr, probe)) in many.iter().enumerate() {
                let (addr, probe, timeout) = (*addr, probe.clone(), spec.timeout);
                set.spawn(async move { (i, addr, probe_address(addr, probe, timeout).await) });
            }
            let mut done = Vec::with_capacity(many.len());
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok(outcome) => done.push(outcome),
                    // Only a panic inside a probe gets here; count it as that address failing.
                    Err(e) => warn!(error = %e, "probe subtask failed"),
                }
            }
            done.sort_by_key(|(i, ..)| *i);
            let mut outcomes: Vec<_> = done.into_iter().map(|(_, a, o)| (a, o)).collect();
            for (addr, _) in many {
                if !outcomes.iter().any(|(a, _)| a == addr) {
                    outcomes.push((*addr, Err("probe task failed".to_owned())));
                }
            }
            outcomes
        }
    };
    let latency = started.elapsed();

    let failures: Vec<_> = outcomes
        .iter()
        .filter_map(|(addr, o)| o.as_ref().err().map(|reason| (addr, reason)))
        .collect();
    let (ok, detail) = match (failures.as_slice(), outcomes.first()) {
        (_, None) => (false, "no addresses to probe".to_owned()),
        ([], Some((_, first))) => (true, first.clone().unwrap_or_default()),
        ([(addr, reason)], _) => (false, format!("{reason} at {addr}")),
        ([(addr, reason), rest @ ..], _) => (
            false,
            format!("{reason} at {addr} (+{} more failing)", rest.len()),
        ),
    };
    ProbeResult {
        key: spec.key.clone(),
        at: SystemTime::now(),
        ok,
        detail,
        latency,
    }
}

/// Probes one address; `Ok` carries the success detail, `Err` the reason it failed.
async fn probe_address(
    addr: SocketAddr,
    probe: AddressProbe,
    timeout: Duration,
) -> Result<String, String> {
    let attempt = async {
        match probe {
            AddressProbe::Tcp => tokio::net::TcpStream::connect(addr)
                .await
                .map(|_| "connected".to_owned())
                .map_err(|e| describe_io(&e).unwrap_or_else(|| format!("connect failed: {e}"))),
            AddressProbe::Http {
                client,
                url,
                host,
                expected,
            } => {
                let mut request = client.get(&url);
                if let Some(host) = &host {
                    request = request.header(header::HOST, host);
                }
                // Only the status matters; the body is never read, and dropping the
                // response closes the connection (no pooling).
                let response = request.send().await.map_err(|e| describe(&e))?;
                let status = response.status();
                let healthy = if expected.is_empty() {
                    status.is_success()
                } else {
                    expected.contains(&status.as_u16())
                };
                if healthy {
                    Ok(status.to_string())
                } else if expected.is_empty() {
                    Err(format!("status {} not 2xx", status.as_u16()))
                } else {
                    Err(format!("status {} not in {expected:?}", status.as_u16()))
                }
            }
            AddressProbe::Broken(reason) => Err(reason),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!(
            "timeout after {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// A short reason for a failed request, from the most telling error in its chain.
fn describe(err: &reqwest::Error) -> String {
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
    let what = if err.is_connect() {
        "connect failed"
    } else {
        "request failed"
    };
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

/// The whole chain, for logs.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Settle;

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
