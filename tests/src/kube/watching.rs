//! Watch streams: newline-delimited `{"type": ..., "object": ...}` events.
//!
//! The store is subscribed to while the request is handled, so the watch starts exactly
//! then; a spawned task replays retained history (or the current objects when no
//! resourceVersion was given), then forwards live events, filtered by namespace and
//! selectors, with periodic BOOKMARKs when asked. It ends when the client goes away, on
//! `timeoutSeconds`, when watches are dropped on command, or with a `410` ERROR event
//! when it falls too far behind the broadcast.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use hyper::Response;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument as _;

use super::server::{Ctx, Shared};
use super::store::{ApiError, ApiResult, Event, EventKind, Object, ResourceDef};
use super::table;

/// Counts a watch as open for as long as its task lives.
struct OpenWatch(Arc<Shared>);

impl OpenWatch {
    fn new(shared: Arc<Shared>) -> Self {
        shared.open_watches.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

struct WatchTask {
    shared: Arc<Shared>,
    def: Arc<ResourceDef>,
    api_version: String,
    filter: Box<dyn Fn(&Object) -> bool + Send + Sync>,
    table: bool,
    full_object: bool,
    tx: mpsc::Sender<Bytes>,
}

impl WatchTask {
    async fn send(&self, kind: &str, object: Value) -> bool {
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        self.tx.send(Bytes::from(line)).await.is_ok()
    }

    async fn send_object(&self, kind: EventKind, obj: &Object) -> bool {
        let mut o = obj.clone();
        o["apiVersion"] = json!(self.api_version);
        let o = if self.table {
            let rv = o
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or_default();
            table::table(
                &self.def,
                [&o],
                json!({"resourceVersion": rv}),
                self.full_object,
            )
        } else {
            o
        };
        self.send(kind.as_str(), o).await
    }

    async fn bookmark(&self, rv: u64, initial_events_end: bool) -> bool {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let kind = self.def.kind.clone();
        self.send(
            "BOOKMARK",
            json!({"kind": kind, "apiVersion": self.api_version, "metadata": metadata}),
        )
        .await
    }

    /// Sends what a change means to this watch's selection: a MODIFIED that enters the
    /// selection is an ADDED, one that leaves it a DELETED.
    async fn event(&self, ev: &Event) -> bool {
        let now = (self.filter)(&ev.object);
        let before = ev.previous.as_ref().is_some_and(|p| (self.filter)(p));
        let kind = match (ev.kind, before, now) {
            (EventKind::Added, _, true) => EventKind::Added,
            (EventKind::Deleted, true, _) | (EventKind::Deleted, _, true) => EventKind::Deleted,
            (EventKind::Modified, true, true) => EventKind::Modified,
            (EventKind::Modified, false, true) => EventKind::Added,
            (EventKind::Modified, true, false) => EventKind::Deleted,
            _ => return true,
        };
        self.send_object(kind, &ev.object).await
    }
}

pub(super) fn watch_response(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    let filter = ctx.filter()?;
    let from = match ctx.q("resourceVersion") {
        None | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?,
        ),
    };
    // Zero means "the server's default", which here is no limit.
    let timeout = ctx
        .q("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs);
    let bookmarks = ctx.q("allowWatchBookmarks") == Some("true");
    let send_initial = ctx.q("sendInitialEvents") == Some("true");
    // Subscribing now (not in the task) makes the watch start exactly at this request.
    let start = ctx
        .shared
        .store
        .watch(&ctx.rr.def, if send_initial { None } else { from });
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let task = WatchTask {
        shared: ctx.shared.clone(),
        def: ctx.rr.def.clone(),
        api_version: ctx.rr.def.api_version(&ctx.rr.version),
        filter: Box::new(filter),
        table: ctx.table,
        full_object: ctx.full_object(),
        tx,
    };
    let span =
        tracing::debug_span!("watch", resource = %ctx.rr.def.group_resource().qualified(), ?from);
    let interval = ctx.shared.config.bookmark_interval;
    // Counted from here, so the count is right as soon as the response is on its way.
    let open = OpenWatch::new(ctx.shared.clone());
    tokio::spawn(
        async move {
            let _open = open;
            let mut dropped = task.shared.drop_watches.subscribe();
            let start = match start {
                Ok(s) => s,
                Err(e) => {
                    task.send("ERROR", e.to_status()).await;
                    return;
                }
            };
            let mut last_rv = start.start_rv;
            for obj in &start.initial {
                if (task.filter)(obj) && !task.send_object(EventKind::Added, obj).await {
                    return;
                }
            }
            if send_initial && bookmarks && !task.bookmark(last_rv, true).await {
                return;
            }
            for ev in &start.replay {
                last_rv = last_rv.max(ev.rv);
                if !task.event(ev).await {
                    return;
                }
            }
            let mut live = start.live;
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            // Bounded by the client, the timeout, drops, and the broadcast closing.
            loop {
                tokio::select! {
                    _ = task.tx.closed() => break,
                    _ = dropped.changed() => {
                        tracing::debug!("watch dropped on command");
                        break;
                    }
                    _ = sleep_until(deadline) => break,
                    _ = ticker.tick(), if bookmarks => {
                        if !task.bookmark(last_rv, false).await {
                            break;
                        }
                    }
                    r = live.recv() => match r {
                        Ok(ev) => {
                            if ev.rv <= last_rv {
                                continue;
                            }
                            last_rv = ev.rv;
                            if ev.gr == task.def.group_resource() && !task.event(&ev).await {
                                break;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "watch fell behind");
                            let e = ApiError::gone(format!("watch fell behind by {n} events; relist"));
                            task.send("ERROR", e.to_status()).await;
                            break;
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            }
        }
        .instrument(span),
    );
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
