//! The admin HTTP API: health, readiness, metrics, status and break-glass overrides.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | the process is alive |
//! | `GET /readyz` | DNS has a snapshot loaded (it can answer) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/status` | policies, answers, target states, decision age, alarms |
//! | `GET /v1/overrides` | active overrides and the audit trail |
//! | `POST /v1/overrides` | drain / pin / weight a cluster, with expiry, author, reason |
//! | `DELETE /v1/overrides/{id}` or `?cluster=NAME` | clear overrides |
//!
//! `/v1` routes need `Authorization: Bearer <token>` when a token is configured. Without
//! a token, they are served only on a loopback listener; elsewhere they are refused.
//! Changes are audited as made by `token:<admin.tokenIdentity>` (or `loopback`); the
//! `author` a request gives is kept beside it, as the override's author.
//!
//! The API speaks plain HTTP/1.1. Put TLS in front of it (a service mesh sidecar, or a
//! TLS-terminating proxy on the pod) when it is reachable beyond the node. Connections,
//! header and body times are bounded ([`lifeline_dns::http::Limits`]), so probes and
//! operators get through while a client misbehaves.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Extension, Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use lifeline_engine::{Decision, Health, Override, OverrideAction};
use lifeline_model::hold::{PolicyHold, PolicyRelease};

use crate::store::Store;

/// Longest override an operator can set in one request.
const MAX_OVERRIDE: Duration = Duration::from_secs(7 * 24 * 3600);

/// What the admin API reads and changes.
pub struct AdminState {
    /// What the decision loop shows: one value, replaced whole, so a reader never sees
    /// a decision and a quarantine from different rounds.
    pub view: watch::Sender<Arc<View>>,
    /// Where overrides are kept; unset until the store is reachable (etcd may be down
    /// while DNS already answers).
    pub store: OnceLock<Store>,
    /// Bearer token for `/v1` routes.
    pub token: Option<String>,
    /// Who a change made with the token is recorded as, in the audit trail.
    pub token_identity: String,
    /// True when the listener is loopback-only (tokenless access is then allowed).
    pub loopback: bool,
    /// Whether the DNS shim has a snapshot loaded.
    pub dns_ready: Box<dyn Fn() -> bool + Send + Sync>,
    /// Metrics of the controller and the shim.
    pub registry: Registry,
    /// Woken when overrides change, so the controller decides again at once.
    pub overrides_changed: tokio::sync::Notify,
}

/// What the leader decided (or, on a follower, what it last read of the leader's
/// decision), with what goes with it.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The latest decision.
    pub decision: Arc<Decision>,
    /// False until a decision is made or read.
    pub decided: bool,
    /// Policies the leader stopped deciding because deciding them panics, with why
    /// (their last answers stay).
    pub quarantined: crate::leader::Quarantine,
    /// Clusters and policies of the set in force (set by the leader), to refuse
    /// overrides naming something that does not exist. Empty on a follower, which reads
    /// the saved set instead.
    pub known: Arc<Known>,
    /// When a follower last read the leader's decision from the store; `None` while
    /// this replica decides itself.
    pub followed_at: Option<SystemTime>,
}

impl AdminState {
    /// The view as it stands.
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// Replaces the view.
    pub fn show(&self, view: View) {
        self.view.send_replace(Arc::new(view));
    }

    /// The store, once reachable.
    fn store(&self) -> Option<Store> {
        self.store.get().cloned()
    }
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("loopback", &self.loopback)
            .finish_non_exhaustive()
    }
}

/// Routes a caller adds under `/v1` (behind the same authorization), each nested at its
/// path: how `lifeline demo` adds its fail/heal switches without the admin API knowing
/// about them.
pub type ExtraRoutes = Vec<(&'static str, Router)>;

/// The router; `state` is shared with the controller loop.
pub fn router(state: Arc<AdminState>, extra: ExtraRoutes) -> Router<()> {
    let mut v1 = Router::new()
        .route("/v1/status", get(status))
        .route(
            "/v1/overrides",
            get(list_overrides)
                .post(create_override)
                .delete(clear_overrides),
        )
        .route("/v1/overrides/{id}", axum::routing::delete(delete_override))
        .route(
            "/v1/policy-change/release",
            axum::routing::post(release_policy_change),
        );
    for (path, routes) in extra {
        v1 = v1.nest_service(path, routes);
    }
    let v1 = v1.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        authorize,
    ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

/// Serves the router until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    extra: ExtraRoutes,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    lifeline_dns::http::serve(
        listener,
        router(state, extra),
        lifeline_dns::http::Limits::default(),
        shutdown,
    )
    .await
}

/// True when every address the listener is bound to is loopback.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Who made a `/v1` request, as authorization established it: `token:<identity>` for
/// the bearer token, `loopback` for a tokenless loopback listener. This, not the
/// `author` a request names, is the audit trail's `by`.
#[derive(Clone, Debug)]
struct Caller(String);

async fn authorize(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match &state.token {
        Some(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match given {
                Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => {
                    request
                        .extensions_mut()
                        .insert(Caller(format!("token:{}", state.token_identity)));
                    next.run(request).await
                }
                Some(_) => error(StatusCode::UNAUTHORIZED, "invalid bearer token"),
                None => error(
                    StatusCode::UNAUTHORIZED,
                    "missing Authorization: Bearer <token> header",
                ),
            }
        }
        None if state.loopback => {
            request
                .extensions_mut()
                .insert(Caller("loopback".to_owned()));
            next.run(request).await
        }
        None => error(
            StatusCode::FORBIDDEN,
            "no admin token is configured and the admin API listens beyond loopback: refusing /v1 requests",
        ),
    }
}

/// Compares secrets without an early exit that would leak the matching prefix length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Ready means "can answer DNS": a snapshot is loaded. It deliberately does not wait
/// for a decision, because the DNS Service routes by readiness and a replica that
/// restarts while etcd or every API is down must still serve its persisted snapshot.
async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let decided = state.view().decided;
    if (state.dns_ready)() {
        let note = if decided {
            ""
        } else {
            " (serving the persisted snapshot; no decision yet)"
        };
        (StatusCode::OK, format!("ready{note}\n")).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no DNS snapshot loaded yet\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /v1/status` body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub revision: u64,
    /// Seconds since the answers last changed.
    pub decision_age_seconds: Option<f64>,
    pub alarms: Vec<StatusAlarm>,
    pub policies: Vec<PolicyStatus>,
    pub active_overrides: usize,
    /// Policies not being decided (deciding them panicked), with why; their last
    /// answers are still served.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quarantined: BTreeMap<String, String>,
    /// A policy change held back because it would stop serving many names; the set
    /// in force is still served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<PolicyHold>,
    /// Stored files that cannot be read (their last good copy is in force).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub store_problems: Vec<String>,
    /// Set on a follower: this status is the leader's decision as read from the store,
    /// refreshed every few seconds, so it may lag the leader by that much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followed: Option<Followed>,
}

/// How a follower's status relates to the leader's.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Followed {
    /// When the decision was read from the store.
    pub read_at: String,
    /// How often it is read.
    pub refresh_seconds: u64,
}

/// How often a follower reads the leader's decision for its status.
pub const FOLLOW_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusAlarm {
    pub kind: String,
    pub message: String,
    pub since: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    pub name: String,
    pub hostname: String,
    pub strategy: String,
    pub outcome: String,
    pub answers: Vec<String>,
    pub targets: Vec<TargetStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    pub cluster: String,
    pub state: String,
    pub reason: String,
    pub since: String,
}

/// Builds the status document from a decision.
pub fn status_of(decision: &Decision, overrides: &[Override], now: SystemTime) -> Status {
    let time = |t: SystemTime| lifeline_model::time::format(t).to_string();
    Status {
        revision: decision.revision,
        decision_age_seconds: decision
            .changed_at
            .map(|t| now.duration_since(t).unwrap_or_default().as_secs_f64()),
        alarms: decision
            .alarms
            .iter()
            .map(|a| StatusAlarm {
                kind: format!("{:?}", a.kind),
                message: a.message.clone(),
                since: time(a.since),
            })
            .collect(),
        policies: decision
            .policies
            .iter()
            .map(|(id, p)| PolicyStatus {
                name: id.clone(),
                hostname: p.hostname.clone(),
                strategy: format!("{:?}", p.strategy),
                outcome: format!("{:?}", p.outcome),
                answers: p.answers.iter().map(|a| a.address.to_string()).collect(),
                targets: p
                    .targets
                    .iter()
                    .map(|(cluster, t)| TargetStatus {
                        cluster: cluster.to_string(),
                        state: if t.drained {
                            "Draining".to_owned()
                        } else if t.health == Health::Ramping {
                            format!("Ramping({}%)", t.share / 10)
                        } else {
                            format!("{:?}", t.health)
                        },
                        reason: t.reason.to_string(),
                        since: time(t.since),
                    })
                    .collect(),
            })
            .collect(),
        active_overrides: overrides.iter().filter(|o| o.is_active(now)).count(),
        quarantined: BTreeMap::new(),
        held: None,
        store_problems: Vec::new(),
        followed: None,
    }
}

/// The answer while the store is not connected yet.
fn not_connected() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the store is not reachable yet; DNS keeps answering meanwhile",
    )
}

async fn status(State(state): State<Arc<AdminState>>) -> Response {
    let view = state.view();
    // Status must work while the store is down: overrides are then reported unknown (0).
    let store = state.store();
    let (overrides, held, store_problems) = match store {
        Some(store) => (
            store.overrides().await.unwrap_or_default(),
            store.policy_hold().await.ok().flatten(),
            store.unreadable(),
        ),
        None => (Vec::new(), None, Vec::new()),
    };
    let mut status = status_of(&view.decision, &overrides, SystemTime::now());
    status.quarantined = view.quarantined.clone();
    status.held = held;
    status.store_problems = store_problems;
    status.followed = view.followed_at.map(|t| Followed {
        read_at: lifeline_model::time::format(t).to_string(),
        refresh_seconds: FOLLOW_REFRESH.as_secs(),
    });
    Json(status).into_response()
}

/// `POST /v1/policy-change/release` body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The fingerprint of the held change, as status shows it.
    pub fingerprint: String,
    pub author: String,
    pub reason: String,
}

/// Why a release is refused.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseRefused {
    #[error("author and reason are required")]
    Unsigned,
    #[error("no policy change is held")]
    NothingHeld,
    #[error(
        "the held change is {held}, not {asked}: it changed since you looked; check `lifeline ctl status` again"
    )]
    Changed { held: String, asked: String },
}

/// Checks a release against what is held and turns it into the stored form.
pub fn release_from_request(
    req: ReleaseRequest,
    held: Option<&PolicyHold>,
    now: SystemTime,
) -> Result<PolicyRelease, ReleaseRefused> {
    if req.author.trim().is_empty() || req.reason.trim().is_empty() {
        return Err(ReleaseRefused::Unsigned);
    }
    match held {
        None => Err(ReleaseRefused::NothingHeld),
        Some(h) if h.fingerprint != req.fingerprint => Err(ReleaseRefused::Changed {
            held: h.fingerprint.clone(),
            asked: req.fingerprint,
        }),
        Some(_) => Ok(PolicyRelease {
            fingerprint: req.fingerprint,
            by: req.author,
            reason: req.reason,
            at: now,
        }),
    }
}

/// A `/v1` request's JSON body, and the store it changes; the answer to send instead
/// when the body is malformed (naming where) or the store is not reachable yet.
fn request<T: serde::de::DeserializeOwned>(
    state: &AdminState,
    body: &[u8],
    what: &str,
) -> Result<(T, Store), Response> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let req = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = format!("invalid {what} request at {path}: {}", e.inner());
        error(StatusCode::BAD_REQUEST, message)
    })?;
    let store = state.store().ok_or_else(not_connected)?;
    Ok((req, store))
}

async fn release_policy_change(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    let (req, store) = match request::<ReleaseRequest>(&state, &body, "release") {
        Ok(parts) => parts,
        Err(refused) => return refused,
    };
    let held = match store.policy_hold().await {
        Ok(h) => h,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the held policy change: {e}"),
            );
        }
    };
    let author = req.author.clone();
    let mut release = match release_from_request(req, held.as_ref(), SystemTime::now()) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::CONFLICT, e.to_string()),
    };
    release.by = caller.0;
    if let Err(e) = store.release_policy_change(&release).await {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store the release: {e}"),
        );
    }
    tracing::info!(fingerprint = %release.fingerprint, by = %release.by, %author, reason = %release.reason, "policy change released");
    state.overrides_changed.notify_one();
    (StatusCode::ACCEPTED, Json(release)).into_response()
}

async fn list_overrides(State(state): State<Arc<AdminState>>) -> Response {
    let Some(store) = state.store() else {
        return not_connected();
    };
    let now = SystemTime::now();
    let (overrides, audit) = match (store.overrides().await, store.audit().await) {
        (Ok(o), Ok(a)) => (o, a),
        (Err(e), _) | (_, Err(e)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the store: {e}"),
            );
        }
    };
    let active: Vec<Override> = overrides.into_iter().filter(|o| o.is_active(now)).collect();
    Json(json!({ "overrides": active, "audit": audit })).into_response()
}

/// `POST /v1/overrides` body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverrideRequest {
    pub cluster: String,
    /// Limit to one policy (`namespace/name`).
    #[serde(default)]
    pub policy: Option<String>,
    /// `drain`, `pin` or `weight`.
    pub action: String,
    /// Required for `weight`.
    #[serde(default)]
    pub weight: Option<u32>,
    /// How long it lasts, e.g. `"30m"`.
    #[serde(rename = "for")]
    pub duration: String,
    pub author: String,
    pub reason: String,
}

/// The clusters and policies an override may name: those of a policy set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    pub clusters: BTreeSet<String>,
    /// Policy ids (`namespace/name`).
    pub policies: BTreeSet<String>,
}

impl Known {
    /// What `snapshot` defines.
    pub fn of(snapshot: &lifeline_crds::document::PolicySnapshot) -> Self {
        Self {
            clusters: snapshot
                .clusters
                .iter()
                .filter_map(|c| c.metadata.name.clone())
                .collect(),
            policies: snapshot
                .policies
                .iter()
                .map(crate::policies::policy_id)
                .collect(),
        }
    }

    /// Nothing is known yet (no policy set was ever saved): any name is taken.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty() && self.policies.is_empty()
    }
}

/// Why an override request is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The request is malformed (400).
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// It names a cluster or policy the policy set does not define (422).
    #[error("{0}")]
    Unknown(String),
}

impl Refused {
    fn status(&self) -> StatusCode {
        match self {
            Refused::Invalid(_) => StatusCode::BAD_REQUEST,
            Refused::Unknown(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// Checks a request and turns it into an override with an id of its own: two requests
/// never share an id, however close together they come, so one never replaces the
/// other.
pub fn override_from_request(
    req: OverrideRequest,
    known: &Known,
    now: SystemTime,
) -> Result<Override, Refused> {
    use Refused::{Invalid, Unknown};
    if req.cluster.is_empty() {
        return Err(Invalid(self::Invalid::NoCluster));
    }
    let list = |names: &BTreeSet<String>| names.iter().cloned().collect::<Vec<_>>().join(", ");
    if !known.is_empty() && !known.clusters.contains(&req.cluster) {
        return Err(Unknown(format!(
            "cluster: unknown cluster {:?} (known: {})",
            req.cluster,
            list(&known.clusters)
        )));
    }
    let policy = req
        .policy
        .as_deref()
        .map(lifeline_crds::validate::policy_id_from_text);
    if let Some(id) = &policy
        && !known.is_empty()
        && !known.policies.contains(id)
    {
        return Err(Unknown(format!(
            "policy: unknown policy {id:?} (known: {})",
            list(&known.policies)
        )));
    }
    let req = OverrideRequest { policy, ..req };
    Ok(override_checked(req, now)?)
}

/// What is malformed in an override request.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("cluster: must not be empty")]
    NoCluster,
    #[error("weight: {0} is out of range: must be between 0 and 1000")]
    WeightRange(u32),
    #[error("weight: is required when action is weight")]
    NoWeight,
    #[error("weight: is only allowed when action is weight")]
    NeedlessWeight,
    #[error("action: unknown action {0:?}: expected drain, pin or weight")]
    Action(String),
    #[error("for: {0}")]
    Duration(String),
    #[error("for: {0:?} must be more than 0 and at most 168h")]
    DurationRange(String),
    #[error("author: must not be empty")]
    NoAuthor,
    #[error("reason: must not be empty")]
    NoReason,
}

/// As many overrides are in force as are allowed.
#[derive(Debug, thiserror::Error)]
#[error("{active} overrides are in force, the most allowed ({max}); clear some first")]
pub struct Full {
    active: usize,
    max: usize,
}

/// `Err` when [`lifeline_model::limits::OVERRIDES_MAX`] overrides are in force already.
pub fn room_for_one_more(all: &[Override], now: SystemTime) -> Result<(), Full> {
    let active = all.iter().filter(|o| o.is_active(now)).count();
    let max = lifeline_model::limits::OVERRIDES_MAX;
    if active >= max {
        return Err(Full { active, max });
    }
    Ok(())
}

fn override_checked(req: OverrideRequest, now: SystemTime) -> Result<Override, Invalid> {
    let action = match (req.action.as_str(), req.weight) {
        ("drain", None) => OverrideAction::Drain,
        ("pin", None) => OverrideAction::Pin,
        ("weight", Some(w)) if w <= 1000 => OverrideAction::Weight(w),
        ("weight", Some(w)) => return Err(Invalid::WeightRange(w)),
        ("weight", None) => return Err(Invalid::NoWeight),
        ("drain" | "pin", Some(_)) => return Err(Invalid::NeedlessWeight),
        (other, _) => return Err(Invalid::Action(other.to_owned())),
    };
    let duration = lifeline_crds::parse_duration(&req.duration)
        .map_err(|e| Invalid::Duration(e.to_string()))?;
    if duration.is_zero() || duration > MAX_OVERRIDE {
        return Err(Invalid::DurationRange(req.duration));
    }
    if req.author.trim().is_empty() {
        return Err(Invalid::NoAuthor);
    }
    if req.reason.trim().is_empty() {
        return Err(Invalid::NoReason);
    }
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    // The time orders ids for a reader; 64 random bits make them unique across
    // requests, replicas and `ctl --etcd` alike.
    let nonce: u64 = rand::random();
    Ok(Override {
        id: format!("{}-{}-{millis}-{nonce:016x}", req.action, req.cluster),
        cluster: req.cluster,
        policy: req.policy,
        action,
        created_at: now,
        expires_at: now + duration,
        author: req.author,
        reason: req.reason,
    })
}

async fn create_override(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    let (req, store) = match request::<OverrideRequest>(&state, &body, "override") {
        Ok(parts) => parts,
        Err(refused) => return refused,
    };
    // The leader knows the set in force; a follower reads the set the leader saved.
    let mut known = (*state.view().known).clone();
    if known.is_empty() {
        match store.load_policies().await {
            Ok(saved) => known = saved.as_ref().map(Known::of).unwrap_or_default(),
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot read the policy set to check the override against: {e}"),
                );
            }
        }
    }
    let o = match override_from_request(req, &known, SystemTime::now()) {
        Ok(o) => o,
        Err(e) => return error(e.status(), e.to_string()),
    };
    match store.overrides().await {
        Ok(all) => {
            if let Err(full) = room_for_one_more(&all, o.created_at) {
                return error(StatusCode::CONFLICT, full.to_string());
            }
        }
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the overrides in force: {e}"),
            );
        }
    }
    let by = caller.0;
    if let Err(e) = store.put_override(o.clone(), &by).await {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store override: {e}"),
        );
    }
    tracing::info!(id = %o.id, cluster = %o.cluster, action = ?o.action, %by, author = %o.author, reason = %o.reason, "override set");
    state.overrides_changed.notify_one();
    (StatusCode::CREATED, Json(o)).into_response()
}

async fn delete_override(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let Some(store) = state.store() else {
        return not_connected();
    };
    let wanted = id.clone();
    match store
        .remove_overrides(move |o| o.id == wanted, &caller.0)
        .await
    {
        Ok(removed) if removed.is_empty() => {
            error(StatusCode::NOT_FOUND, format!("no override with id {id:?}"))
        }
        Ok(removed) => {
            tracing::info!(%id, "override cleared");
            state.overrides_changed.notify_one();
            Json(json!({ "cleared": removed })).into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store change: {e}"),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct ClearQuery {
    cluster: Option<String>,
}

async fn clear_overrides(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ClearQuery>,
) -> Response {
    let Some(cluster) = q.cluster.filter(|c| !c.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "cluster: query parameter is required (?cluster=NAME)",
        );
    };
    let Some(store) = state.store() else {
        return not_connected();
    };
    match store
        .remove_overrides(
            {
                let cluster = cluster.clone();
                move |o| o.cluster == cluster
            },
            &caller.0,
        )
        .await
    {
        Ok(removed) => {
            tracing::info!(%cluster, count = removed.len(), "overrides cleared");
            state.overrides_changed.notify_one();
            Json(json!({ "cleared": removed })).into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store change: {e}"),
        ),
    }
}
