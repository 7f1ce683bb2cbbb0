//! The shim's HTTP surface: `/metrics`, `/healthz`, `/readyz`, `/state`.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::shim::ShimHandle;

#[derive(Debug, Clone)]
struct AdminState {
    shim: ShimHandle,
    registry: Arc<Registry>,
}

/// Routes for the standalone command. The controller mounts its own metrics endpoint
/// and registers [`ShimHandle::metrics`] there instead.
pub fn router(shim: ShimHandle) -> Router {
    let registry = Arc::new(shim.metrics().registry());
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/state", get(state))
        .with_state(AdminState { shim, registry })
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "metrics encoding failed".to_owned(),
        ),
    }
}

/// Ready once every zone has a snapshot: before that the shim would SERVFAIL.
async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let state = s.shim.state();
    if state.ready {
        (StatusCode::OK, "ready".to_owned())
    } else {
        let missing: Vec<String> = state
            .zones
            .iter()
            .filter(|z| z.revision.is_none())
            .map(|z| z.origin.clone())
            .collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no snapshot for: {}", missing.join(", ")),
        )
    }
}

async fn state(State(s): State<AdminState>) -> impl IntoResponse {
    let st = s.shim.state();
    Json(json!({
        "ready": st.ready,
        "stale": st.stale,
        "loadErrors": st.load_errors,
        "zones": st.zones.iter().map(|z| json!({
            "origin": z.origin,
            "revision": z.revision,
            "decidedAt": z.decided_at.map(|t| lifeline_model::time::format(t).to_string()),
            "ageSeconds": z.age.map(|a| a.as_secs_f64()),
            "names": z.names,
            "rejected": z.rejected,
            "stale": z.stale,
        })).collect::<Vec<_>>(),
        "sources": st.sources.iter().map(|s| json!({
            "name": s.name,
            "connected": s.connected,
            "since": lifeline_model::time::format(s.since).to_string(),
        })).collect::<Vec<_>>(),
    }))
}
