//! The API budget: a tower layer in front of every request Lifeline makes to one member
//! cluster's API server, so the controller can never be the load that kills it.
//!
//! ```text
//!  kube::Client ─► BudgetService::call(request)
//!                    │ 1. Retry-After gate   a 429/503 said "not before T": nothing is sent
//!                    │                       before T, by any caller of this client
//!                    │ 2. circuit gate       after `failure_threshold` failures in a row:
//!                    │                       one probe at a time, one per `probe_interval`
//!                    │ 3. token bucket       `qps` sustained, `burst` at once (governor)
//!                    ▼
//!                  count (total, by verb) ─► kube's own stack (auth, base URI, hyper)
//!                    │
//!                    ▼ response head, or error, or `request_timeout`
//!                  outcome ─► State { retry-after, failures, circuit, reachability }
//! ```
//!
//! Requests are delayed, never rejected: a caller simply waits for its turn, so watchers
//! need no special error handling to respect the budget. A watch counts as one request
//! when it is opened; its stream does not pass through the layer again.
//!
//! Failures are 5xx answers, connection errors and answers slower than `request_timeout`
//! (for a watch, only its response head is timed). A 429 is an answer: the server is
//! alive, only busy, so it closes the circuit and moves the Retry-After gate instead.
//! kube's own retry layer is turned off by [`Budget::client`]: it would resend 429s and
//! 503s below this layer, out of the budget's sight.

use std::{
    collections::BTreeMap,
    fmt,
    future::Future,
    num::NonZeroU32,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use governor::{
    Quota, RateLimiter,
    clock::Clock,
    middleware::NoOpMiddleware,
    state::{InMemoryState, NotKeyed},
};
use http::{Request, Response, StatusCode};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::Instant,
};
use tower::{BoxError, Layer, Service, ServiceExt as _};
use tracing::{debug, info, warn};

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

// === Errors ===

/// What can go wrong setting up a budget or a client, or sending through it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The budget's numbers cannot make a token bucket.
    #[error("invalid API budget: {0}")]
    Invalid(String),
    /// kube could not build its client stack (TLS material, auth, proxy).
    #[error("building the Kubernetes client")]
    Client(#[source] kube::Error),
    /// No response head arrived in time; counted as a failure of the API server.
    #[error("no response from the API server within {0:?}")]
    Timeout(Duration),
}

// === Configuration ===

/// How much load one member cluster's API server may get from Lifeline.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    /// Sustained requests per second (the token bucket's refill rate).
    pub qps: f64,
    /// Requests allowed back to back (the bucket's size).
    pub burst: u32,
    /// While the circuit is open, at most one attempt per this interval.
    pub probe_interval: Duration,
    /// Failures in a row that open the circuit.
    pub failure_threshold: u32,
    /// Longest wait for a response head; longer counts as a failure.
    pub request_timeout: Duration,
    /// Gate applied after a 429 without a usable `Retry-After`.
    pub default_retry_after: Duration,
    /// Cap on a server's `Retry-After`, so a bogus value cannot silence a cluster for days.
    pub max_retry_after: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        let spec = lifeline_crds::ApiBudget::default();
        Self {
            qps: spec.qps,
            burst: spec.burst,
            probe_interval: Duration::from_secs(30),
            failure_threshold: 3,
            request_timeout: Duration::from_secs(30),
            default_retry_after: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(600),
        }
    }
}

impl From<&lifeline_crds::ApiBudget> for BudgetConfig {
    /// The MemberCluster's `spec.apiBudget`, with the default circuit and timeouts.
    fn from(spec: &lifeline_crds::ApiBudget) -> Self {
        Self {
            qps: spec.qps,
            burst: spec.burst,
            ..Self::default()
        }
    }
}

impl BudgetConfig {
    fn quota(&self) -> Result<Quota> {
        if !(self.qps.is_finite() && self.qps > 0.0) {
            return Err(Error::Invalid(format!(
                "qps must be a positive number, got {}",
                self.qps
            )));
        }
        let burst = NonZeroU32::new(self.burst)
            .ok_or_else(|| Error::Invalid("burst must be at least 1".to_owned()))?;
        // Sub-nanosecond periods are not representable; 1e9 qps is far past any real need.
        let period = Duration::from_secs_f64(1.0 / self.qps.min(1e9));
        Quota::with_period(period)
            .map(|q| q.allow_burst(burst))
            .ok_or_else(|| Error::Invalid(format!("qps {} is too large", self.qps)))
    }
}

// === Public state ===

/// Reachability of an API server, as the budget saw it. This is about the control plane
/// only: an unreachable API says nothing about whether the cluster serves traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ControlPlane {
    /// Nothing sent or answered yet.
    #[default]
    Unknown,
    /// The last attempt got an answer (any status below 500, a 429 included).
    Reachable,
    /// Attempts fail since `since` (the first failure of the current streak).
    Unreachable { since: SystemTime },
}

impl ControlPlane {
    /// The engine's view of this source: only a known outage is `Unavailable`.
    pub fn source_state(&self) -> lifeline_engine::SourceState {
        match self {
            Self::Unreachable { since } => {
                lifeline_engine::SourceState::Unavailable { since: *since }
            }
            Self::Unknown | Self::Reachable => lifeline_engine::SourceState::Available,
        }
    }
}

impl From<ControlPlane> for lifeline_crds::ControlPlaneState {
    fn from(cp: ControlPlane) -> Self {
        match cp {
            ControlPlane::Unknown => Self::Unknown,
            ControlPlane::Reachable => Self::Reachable,
            ControlPlane::Unreachable { .. } => Self::Unreachable,
        }
    }
}

/// The verb of a request, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    Other,
}

impl Verb {
    const ALL: [Verb; 8] = [
        Verb::Get,
        Verb::List,
        Verb::Watch,
        Verb::Create,
        Verb::Update,
        Verb::Patch,
        Verb::Delete,
        Verb::Other,
    ];

    /// kube tags each request with a `&'static str` extension naming its operation
    /// (`"list"`, `"watch"`, `"patch_status"`, ...); the method is the fallback.
    fn of<B>(req: &Request<B>) -> Self {
        if let Some(op) = req.extensions().get::<&'static str>() {
            let op = *op;
            return match op {
                _ if op.starts_with("watch") => Verb::Watch,
                _ if op.starts_with("list") => Verb::List,
                _ if op.starts_with("get") => Verb::Get,
                _ if op.starts_with("create") => Verb::Create,
                _ if op.starts_with("replace") => Verb::Update,
                _ if op.starts_with("patch") => Verb::Patch,
                _ if op.starts_with("delete") => Verb::Delete,
                _ => Verb::Other,
            };
        }
        let watch = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
        match *req.method() {
            http::Method::GET if watch => Verb::Watch,
            http::Method::GET => Verb::Get,
            http::Method::POST => Verb::Create,
            http::Method::PUT => Verb::Update,
            http::Method::PATCH => Verb::Patch,
            http::Method::DELETE => Verb::Delete,
            _ => Verb::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters since the budget was created, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStats {
    /// Requests sent (each attempt, failed connects included; a watch once, when opened).
    pub requests: u64,
    /// `requests` by verb.
    pub by_verb: BTreeMap<Verb, u64>,
    /// Answers with status 429.
    pub throttled: u64,
    /// Failed attempts (5xx, connection errors, timeouts).
    pub failures: u64,
    /// Attempts let through while the circuit was open.
    pub probes: u64,
    /// Times the circuit opened.
    pub circuit_opened: u64,
}

// === Budget ===

/// One member cluster's budget; cheap to clone, all clones share the bucket and counters.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

struct Inner {
    config: BudgetConfig,
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>,
    clock: TokioClock,
    state: Mutex<State>,
    /// One permit: the single probe allowed in flight while the circuit is open.
    probe: Arc<Semaphore>,
    sent: [AtomicU64; Verb::ALL.len()],
    throttled: AtomicU64,
    failures: AtomicU64,
    probes: AtomicU64,
    circuit_opened: AtomicU64,
    /// Bumped after every outcome, so a watcher can republish counters and reachability.
    changes: watch::Sender<u64>,
}

#[derive(Debug)]
struct State {
    /// Nothing may be sent before this (from a 429 or 503 `Retry-After`).
    retry_after_until: Option<Instant>,
    /// Failures in a row; reset by any answer below 500.
    consecutive_failures: u32,
    circuit: Circuit,
    reachability: ControlPlane,
    last_contact: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed,
    /// The next probe may leave at `next_probe`.
    Open {
        next_probe: Instant,
    },
}

/// governor on tokio's clock, so paused-time tests and the gates agree on what "now" is.
#[derive(Debug, Clone)]
struct TokioClock {
    start: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("config", &self.inner.config)
            .field("state", &*self.inner.state.lock())
            .finish_non_exhaustive()
    }
}

/// How a request ended, as far as the budget cares.
enum Outcome {
    Answered {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    Failed,
}

impl Budget {
    /// A budget with its own bucket; fails on a non-positive `qps` or a zero `burst`.
    pub fn new(config: BudgetConfig) -> Result<Self> {
        let quota = config.quota()?;
        let clock = TokioClock {
            start: Instant::now(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
                clock,
                config,
                state: Mutex::new(State {
                    retry_after_until: None,
                    consecutive_failures: 0,
                    circuit: Circuit::Closed,
                    reachability: ControlPlane::Unknown,
                    last_contact: None,
                }),
                probe: Arc::new(Semaphore::new(1)),
                sent: Default::default(),
                throttled: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                probes: AtomicU64::new(0),
                circuit_opened: AtomicU64::new(0),
                changes: watch::channel(0).0,
            }),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &BudgetConfig {
        &self.inner.config
    }

    /// The tower layer that puts a service behind this budget.
    pub fn layer(&self) -> BudgetLayer {
        BudgetLayer {
            budget: self.clone(),
        }
    }

    /// A kube client whose every request goes through this budget. kube's built-in retry
    /// is turned off: retries must pass the budget too, and the callers do them.
    pub fn client(&self, mut config: kube::Config) -> Result<kube::Client> {
        config.default_retry = false;
        let builder = kube::client::ClientBuilder::try_from(config).map_err(Error::Client)?;
        Ok(builder.with_layer(&self.layer()).build())
    }

    /// The counters so far.
    pub fn stats(&self) -> BudgetStats {
        let i = &self.inner;
        let by_verb: BTreeMap<Verb, u64> = Verb::ALL
            .iter()
            .map(|v| (*v, i.sent[v.index()].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        BudgetStats {
            requests: by_verb.values().sum(),
            by_verb,
            throttled: i.throttled.load(Ordering::Relaxed),
            failures: i.failures.load(Ordering::Relaxed),
            probes: i.probes.load(Ordering::Relaxed),
            circuit_opened: i.circuit_opened.load(Ordering::Relaxed),
        }
    }

    /// Requests sent so far (all verbs).
    pub fn requests(&self) -> u64 {
        self.inner
            .sent
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// Reachability of the API server.
    pub fn control_plane(&self) -> ControlPlane {
        self.inner.state.lock().reachability
    }

    /// When the API server last answered (or sent a watch event).
    pub fn last_contact(&self) -> Option<SystemTime> {
        self.inner.state.lock().last_contact
    }

    /// Whether the circuit is open (attempts limited to one per probe interval).
    pub fn circuit_open(&self) -> bool {
        matches!(self.inner.state.lock().circuit, Circuit::Open { .. })
    }

    /// Changes whenever a request ends or reachability changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Something arrived from the server outside a request/response exchange (an event
    /// or bookmark on an open watch): it is alive.
    pub(crate) fn note_contact(&self) {
        let changed = {
            let mut s = self.inner.state.lock();
            s.last_contact = Some(SystemTime::now());
            s.consecutive_failures = 0;
            let was = s.reachability;
            s.reachability = ControlPlane::Reachable;
            s.circuit = Circuit::Closed;
            was != ControlPlane::Reachable
        };
        if changed {
            self.inner.changes.send_modify(|g| *g += 1);
        }
    }

    /// Waits until a request may be sent; returns the probe permit when it is the single
    /// attempt allowed through an open circuit.
    async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let inner = &self.inner;
        // Bounded: every pass waits for a gate that opens at a finite time, and each gate
        // moves only when the server answers again.
        loop {
            if self.wait_retry_after().await {
                continue;
            }
            let mut permit = None;
            if self.circuit_open() {
                let p = inner
                    .probe
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the probe semaphore is never closed");
                // The previous probe may have closed the circuit while we queued.
                let next = match inner.state.lock().circuit {
                    Circuit::Open { next_probe } => Some(next_probe),
                    Circuit::Closed => None,
                };
                if let Some(next) = next {
                    tokio::time::sleep_until(next).await;
                    if self.retry_after_pending() {
                        continue;
                    }
                    let mut s = inner.state.lock();
                    // Still open (a watch event may have closed it meanwhile): this
                    // request is the probe, and the next one waits a full interval.
                    if let Circuit::Open { next_probe } = &mut s.circuit {
                        *next_probe = Instant::now() + inner.config.probe_interval;
                        inner.probes.fetch_add(1, Ordering::Relaxed);
                        permit = Some(p);
                    }
                }
            }
            // Bounded: governor names the instant a token is due; tokio sleeps until then.
            while let Err(not_until) = inner.limiter.check() {
                tokio::time::sleep(not_until.wait_time_from(inner.clock.now())).await;
            }
            // A 429 may have landed while this request waited for a token.
            if self.retry_after_pending() {
                continue;
            }
            return permit;
        }
    }

    fn retry_after_pending(&self) -> bool {
        self.inner
            .state
            .lock()
            .retry_after_until
            .is_some_and(|t| t > Instant::now())
    }

    /// Sleeps out a pending Retry-After; whether it had to.
    async fn wait_retry_after(&self) -> bool {
        let until = self.inner.state.lock().retry_after_until;
        match until {
            Some(t) if t > Instant::now() => {
                tokio::time::sleep_until(t).await;
                true
            }
            _ => false,
        }
    }

    fn count(&self, verb: Verb) {
        self.inner.sent[verb.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn record(&self, verb: Verb, outcome: Outcome) {
        let inner = &self.inner;
        let cfg = &inner.config;
        let now = Instant::now();
        let mut s = inner.state.lock();
        match outcome {
            Outcome::Answered {
                status,
                retry_after,
            } if !status.is_server_error() => {
                if status == StatusCode::TOO_MANY_REQUESTS {
                    inner.throttled.fetch_add(1, Ordering::Relaxed);
                    let wait = retry_after
                        .unwrap_or(cfg.default_retry_after)
                        .min(cfg.max_retry_after);
                    let until = now + wait;
                    s.retry_after_until = Some(s.retry_after_until.map_or(until, |u| u.max(until)));
                    info!(
                        ?verb,
                        retry_after_ms = wait.as_millis() as u64,
                        "API server throttled us; holding every request"
                    );
                }
                s.last_contact = Some(SystemTime::now());
                s.consecutive_failures = 0;
                if s.circuit != Circuit::Closed {
                    info!("API server answers again; circuit closed");
                }
                s.circuit = Circuit::Closed;
                s.reachability = ControlPlane::Reachable;
            }
            answered_or_failed => {
                inner.failures.fetch_add(1, Ordering::Relaxed);
                // An overloaded server's 503 may carry Retry-After too: honour it.
                if let Outcome::Answered {
                    retry_after: Some(wait),
                    ..
                } = answered_or_failed
                {
                    let until = now + wait.min(cfg.max_retry_after);
                    s.retry_after_until = Some(s.retry_after_until.map_or(until, |u| u.max(until)));
                }
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                if matches!(
                    s.reachability,
                    ControlPlane::Unknown | ControlPlane::Reachable
                ) {
                    s.reachability = ControlPlane::Unreachable {
                        since: SystemTime::now(),
                    };
                }
                if s.circuit == Circuit::Closed && s.consecutive_failures >= cfg.failure_threshold {
                    inner.circuit_opened.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        failures = s.consecutive_failures,
                        probe_interval_ms = cfg.probe_interval.as_millis() as u64,
                        "API server keeps failing; circuit open, probing gently"
                    );
                    s.circuit = Circuit::Open {
                        next_probe: now + cfg.probe_interval,
                    };
                }
            }
        }
        drop(s);
        inner.changes.send_modify(|g| *g += 1);
    }
}

/// `Retry-After` in seconds (the form API servers send); HTTP dates are not used by them.
fn retry_after<B>(resp: &Response<B>) -> Option<Duration> {
    let v = resp.headers().get(http::header::RETRY_AFTER)?;
    let secs: u64 = v.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

// === impl BudgetLayer ===

/// Puts a service behind a [`Budget`]; see the module docs.
#[derive(Debug, Clone)]
pub struct BudgetLayer {
    budget: Budget,
}

impl<S> Layer<S> for BudgetLayer {
    type Service = BudgetService<S>;

    fn layer(&self, inner: S) -> BudgetService<S> {
        BudgetService {
            // kube hands us a boxed, non-`Clone` stack; the lock is held only to get the
            // inner service ready and start the call, never while waiting for a budget.
            inner: Arc::new(tokio::sync::Mutex::new(inner)),
            budget: self.budget.clone(),
        }
    }
}

/// The service [`BudgetLayer`] makes.
pub struct BudgetService<S> {
    inner: Arc<tokio::sync::Mutex<S>>,
    budget: Budget,
}

impl<S> Clone for BudgetService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            budget: self.budget.clone(),
        }
    }
}

impl<S> fmt::Debug for BudgetService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetService")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for BudgetService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is decided per request in `call`, where waiting can be asynchronous
        // without holding the shared inner service.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let inner = self.inner.clone();
        let budget = self.budget.clone();
        Box::pin(async move {
            let verb = Verb::of(&req);
            let _probe = budget.admit().await;
            budget.count(verb);
            debug!(?verb, uri = %req.uri(), "API request");
            let call = async {
                let fut = {
                    let mut svc = inner.lock().await;
                    svc.ready().await.map_err(Into::into)?;
                    svc.call(req)
                };
                fut.await.map_err(Into::into)
            };
            let timeout = budget.inner.config.request_timeout;
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(resp)) => {
                    budget.record(
                        verb,
                        Outcome::Answered {
                            status: resp.status(),
                            retry_after: retry_after(&resp),
                        },
                    );
                    Ok(resp)
                }
                Ok(Err(error)) => {
                    debug!(?verb, %error, "API request failed");
                    budget.record(verb, Outcome::Failed);
                    Err(error)
                }
                Err(_) => {
                    debug!(
                        ?verb,
                        timeout_ms = timeout.as_millis() as u64,
                        "API request timed out"
                    );
                    budget.record(verb, Outcome::Failed);
                    Err(Box::new(Error::Timeout(timeout)) as BoxError)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A fake API server: answers each request with the next status of a script (the last
    /// one repeats), `0` meaning a connection error; records when each request arrived.
    #[derive(Clone)]
    struct Script {
        statuses: Arc<Vec<u16>>,
        retry_after: Option<u64>,
        next: Arc<AtomicUsize>,
        arrivals: Arc<Mutex<Vec<Instant>>>,
    }

    impl Script {
        fn new(statuses: &[u16], retry_after: Option<u64>) -> Self {
            Self {
                statuses: Arc::new(statuses.to_vec()),
                retry_after,
                next: Arc::default(),
                arrivals: Arc::default(),
            }
        }

        fn arrivals(&self) -> Vec<Duration> {
            let a = self.arrivals.lock();
            a.iter().map(|t| t.duration_since(a[0])).collect()
        }
    }

    impl Service<Request<()>> for Script {
        type Response = Response<()>;
        type Error = BoxError;
        type Future = Pin<Box<dyn Future<Output = Result<Response<()>, BoxError>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            self.arrivals.lock().push(Instant::now());
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            let status = self.statuses[i.min(self.statuses.len() - 1)];
            let retry_after = self.retry_after;
            Box::pin(async move {
                if status == 0 {
                    return Err("connection refused".into());
                }
                let mut resp = Response::new(());
                *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                if let Some(secs) = retry_after.filter(|_| status == 429) {
                    resp.headers_mut()
                        .insert(http::header::RETRY_AFTER, secs.into());
                }
                Ok(resp)
            })
        }
    }

    fn budget(qps: f64, burst: u32) -> Budget {
        Budget::new(BudgetConfig {
            qps,
            burst,
            ..BudgetConfig::default()
        })
        .unwrap()
    }

    async fn send(svc: &mut BudgetService<Script>, n: usize) {
        for _ in 0..n {
            let _ = svc.call(Request::new(())).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_sustained_rate() {
        let script = Script::new(&[200], None);
        let b = budget(2.0, 5);
        let mut svc = b.layer().layer(script.clone());
        send(&mut svc, 9).await;
        let at = script.arrivals();
        assert!(
            at[4] < Duration::from_millis(1),
            "burst of 5 at once: {at:?}"
        );
        // Four more at 2 per second: the last one 2 s after the burst.
        assert!(
            at[8] >= Duration::from_millis(1999) && at[8] < Duration::from_millis(2100),
            "{at:?}"
        );
        assert_eq!(b.stats().requests, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_sent_before_retry_after_elapses() {
        let script = Script::new(&[429, 429, 200], Some(3));
        let b = budget(100.0, 100);
        let mut svc = b.layer().layer(script.clone());
        send(&mut svc, 3).await;
        let at = script.arrivals();
        assert!(at[1] >= Duration::from_secs(3), "{at:?}");
        assert!(at[2] >= at[1] + Duration::from_secs(3), "{at:?}");
        assert_eq!(b.stats().throttled, 2);
        assert_eq!(
            b.control_plane(),
            ControlPlane::Reachable,
            "a 429 is an answer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_failures_open_the_circuit_and_probes_are_spaced() {
        let script = Script::new(&[0, 503, 0, 0, 0, 0, 200], None);
        let b = budget(100.0, 100);
        let mut svc = b.layer().layer(script.clone());
        send(&mut svc, 3).await;
        assert!(b.circuit_open());
        assert!(matches!(
            b.control_plane(),
            ControlPlane::Unreachable { .. }
        ));
        send(&mut svc, 4).await;
        let at = script.arrivals();
        // Three quick failures, then one attempt per 30 s until the API answers.
        assert!(at[2] < Duration::from_secs(1), "{at:?}");
        for w in at[2..].windows(2) {
            assert!(w[1] - w[0] >= Duration::from_secs(30), "{at:?}");
        }
        assert!(!b.circuit_open());
        assert_eq!(b.control_plane(), ControlPlane::Reachable);
        let stats = b.stats();
        assert_eq!(
            (stats.failures, stats.probes, stats.circuit_opened),
            (6, 4, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_probe_while_the_circuit_is_open() {
        let script = Script::new(&[0, 0, 0, 0, 200], None);
        let b = budget(100.0, 100);
        let mut svc = b.layer().layer(script.clone());
        send(&mut svc, 3).await;
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let mut svc = svc.clone();
            tasks.push(tokio::spawn(
                async move { svc.call(Request::new(())).await },
            ));
        }
        for t in tasks {
            let _ = t.await;
        }
        let at = script.arrivals();
        // Probe 1 (t≈30 s) fails, probe 2 (t≈60 s) succeeds, then the rest go at once.
        assert_eq!(at.len(), 8, "{at:?}");
        assert!(
            at[3] >= Duration::from_secs(30) && at[4] >= Duration::from_secs(60),
            "{at:?}"
        );
        assert!(at[7] - at[4] < Duration::from_secs(1), "{at:?}");
    }

    #[test]
    fn a_budget_without_rate_or_burst_is_rejected() {
        assert!(
            Budget::new(BudgetConfig {
                qps: 0.0,
                ..BudgetConfig::default()
            })
            .is_err()
        );
        assert!(
            Budget::new(BudgetConfig {
                burst: 0,
                ..BudgetConfig::default()
            })
            .is_err()
        );
        assert!(
            Budget::new(BudgetConfig {
                qps: f64::NAN,
                ..BudgetConfig::default()
            })
            .is_err()
        );
    }
}
