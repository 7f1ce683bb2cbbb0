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
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::watch;

use lifeline_engine::Decision;

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
    pub quarantined: crate::leader::panic_boundary::Quarantine,
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
        .route("/v1/status", get(status::status))
        .route(
            "/v1/overrides",
            get(overrides::list_overrides)
                .post(overrides::create_override)
                .delete(overrides::clear_overrides),
        )
        .route(
            "/v1/overrides/{id}",
            axum::routing::delete(overrides::delete_override),
        )
        .route(
            "/v1/policy-change/release",
            axum::routing::post(overrides::release_policy_change),
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

/// The answer while the store is not connected yet.
fn not_connected() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the store is not reachable yet; DNS keeps answering meanwhile",
    )
}

/// A `/v1` request's JSON body, and the store it changes; the answer to send instead
/// when the body is malformed (naming where) or the store is not reachable yet.
fn request<T: serde::de::DeserializeOwned>(
    state: &AdminState,
    body: &[u8],
    what: &str,
) -> Result<(T, Store), Box<Response>> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let req = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = format!("invalid {what} request at {path}: {}", e.inner());
        Box::new(error(StatusCode::BAD_REQUEST, message))
    })?;
    let store = state.store().ok_or_else(|| Box::new(not_connected()))?;
    Ok((req, store))
}

mod overrides;
mod status;

pub use overrides::*;
pub use status::*;
