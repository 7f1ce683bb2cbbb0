//! The `/_emulator/` control endpoints, for driving a standalone emulator with curl:
//! request counters, fault rules, dropping watches or connections, compaction, and timed
//! outages (timed, because the endpoint goes down with the port).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::{Method, Response};
use serde_json::{Value, json};

use super::faults::{FaultId, FaultRule};
use super::server::{Query, Shared, error_response, json_response, read_body};
use super::store::ApiError;

pub(super) async fn control(
    shared: &Arc<Shared>,
    method: &Method,
    rest: &str,
    query: &Query,
    body: Incoming,
) -> Response<Body> {
    let ok = |v: Value| json_response(200, &v);
    match (method, rest) {
        (&Method::GET, "requests") => {
            let counts = shared.faults.counts();
            let rows: Vec<Value> = counts
                .0
                .iter()
                .map(|(k, n)| json!({"verb": k.verb, "resource": k.resource, "userAgent": k.user_agent, "count": n}))
                .collect();
            ok(json!({"total": counts.total(), "requests": rows}))
        }
        (&Method::DELETE, "requests") => {
            shared.faults.reset_counts();
            ok(json!({}))
        }
        (&Method::GET, "faults") => {
            let rules: Vec<Value> = shared
                .faults
                .rules()
                .into_iter()
                .map(|(id, r)| json!({"id": id.0, "rule": r}))
                .collect();
            ok(json!({"faults": rules}))
        }
        (&Method::POST, "faults") => {
            let parsed = match read_body(body, shared.config.max_body_bytes).await {
                Ok(bytes) => serde_json::from_slice::<FaultRule>(&bytes)
                    .map_err(|e| ApiError::bad_request(format!("invalid fault rule: {e}"))),
                Err(e) => Err(e),
            };
            match parsed {
                Ok(rule) => ok(json!({"id": shared.faults.inject(rule).0})),
                Err(e) => error_response(&e),
            }
        }
        (&Method::DELETE, "faults") => {
            shared.faults.clear_all();
            ok(json!({}))
        }
        (&Method::DELETE, r) if r.starts_with("faults/") => {
            match r["faults/".len()..].parse::<u64>() {
                Ok(id) if shared.faults.clear(FaultId(id)) => ok(json!({})),
                _ => error_response(&ApiError::new(404, "NotFound", "no such fault")),
            }
        }
        (&Method::POST, "drop-watches") => {
            shared.drop_watches.send_modify(|g| *g += 1);
            ok(json!({}))
        }
        (&Method::POST, "drop-connections") => {
            let shared = shared.clone();
            tokio::spawn(async move {
                // Let this response reach the client before its connection is cut too.
                tokio::time::sleep(Duration::from_millis(100)).await;
                shared.kill_connections.send_modify(|g| *g += 1);
            });
            ok(json!({}))
        }
        (&Method::POST, "compact") => {
            shared.store.compact();
            ok(json!({"compactedResourceVersion": shared.store.compacted_rv().to_string()}))
        }
        (&Method::GET, "watches") => {
            ok(json!({"open": shared.open_watches.load(Ordering::SeqCst)}))
        }
        (&Method::POST, "outage") => {
            // The control endpoint goes down with the port, so the outage ends by itself.
            let secs = query
                .get("seconds")
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(5)
                .min(3600);
            let shared = shared.clone();
            tokio::spawn(async move {
                // Let this response reach the client before the connection is cut.
                tokio::time::sleep(Duration::from_millis(100)).await;
                shared.outage().await;
                tokio::time::sleep(Duration::from_secs(secs)).await;
                if let Err(error) = shared.restore().await {
                    tracing::error!(%error, "could not restore after outage");
                }
            });
            ok(json!({"outageSeconds": secs}))
        }
        _ => error_response(&ApiError::no_route()),
    }
}
