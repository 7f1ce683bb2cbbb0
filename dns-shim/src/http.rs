//! Serving an HTTP router with bounds, for the admin surfaces of `lifeline run` and
//! `lifeline dns`: these must stay reachable for kubelet probes, Prometheus and the
//! operator's break-glass calls while a client misbehaves.
//!
//! ```text
//!  accept ─► over the total or per-address cap? ─► closed at once (no queueing)
//!         └► HTTP/1.1 connection:
//!              request head within `header_timeout` (idle keep-alive included),
//!              each request, body included, answered within `request_timeout` (408),
//!              the connection closed after `lifetime` (gracefully, then forcibly)
//! ```
//!
//! A connection that holds a slot without sending, or dribbles a header a byte at a
//! time, loses it after `header_timeout`; a body sent slowly gets 408 after
//! `request_timeout`. Connections from one address count against its own cap, so one
//! noisy client cannot take the slots a probe from another address needs.

use std::{
    collections::HashMap, convert::Infallible, future::Future, net::IpAddr, sync::Arc,
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
    response::{IntoResponse, Response},
};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tower::ServiceExt as _;
use tracing::debug;

/// Bounds on one HTTP listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one address.
    pub max_per_address: usize,
    /// Time to receive a request head, from connect or from the previous answer.
    pub header_timeout: Duration,
    /// Time to read a request's body and answer it.
    pub request_timeout: Duration,
    /// Longest a connection stays open.
    pub lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_per_address: 16,
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            lifetime: Duration::from_secs(120),
        }
    }
}

/// Open connections, in total and by address.
#[derive(Default)]
struct Slots {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// A held slot, given back when the connection ends.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock();
        s.total -= 1;
        if let Some(n) = s.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                s.by_address.remove(&self.address);
            }
        }
    }
}

fn take_slot(slots: &Arc<Mutex<Slots>>, address: IpAddr, limits: &Limits) -> Option<Slot> {
    let mut s = slots.lock();
    let mine = s.by_address.get(&address).copied().unwrap_or(0);
    if s.total >= limits.max_connections || mine >= limits.max_per_address {
        return None;
    }
    s.total += 1;
    *s.by_address.entry(address).or_insert(0) += 1;
    Some(Slot {
        slots: slots.clone(),
        address,
    })
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes; then stops
/// accepting and lets open connections finish their request (bounded).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let timeout = limits.request_timeout;
    let router = router.layer(axum::middleware::from_fn(
        move |req: Request<Body>, next: axum::middleware::Next| async move {
            match tokio::time::timeout(timeout, next.run(req)).await {
                Ok(r) => r,
                Err(_) => (
                    StatusCode::REQUEST_TIMEOUT,
                    "the request was not received and answered in time\n",
                )
                    .into_response(),
            }
        },
    ));
    let slots = Arc::new(Mutex::new(Slots::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.as_mut() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, or a connection reset before accept: pause
                    // briefly rather than spin.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Some(slot) = take_slot(&slots, peer.ip(), &limits) else {
            debug!(%peer, "connection refused: over the connection limit");
            drop(stream);
            continue;
        };
        let router = router.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let router = router.clone();
                async move {
                    let r: Result<Response, Infallible> = router.oneshot(req.map(Body::new)).await;
                    r
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = tokio::time::sleep(limits.lifetime) => None,
                _ = stop.wait_for(|s| *s) => None,
            };
            if ended.is_none() {
                // Finish the request in flight, then close; a client that does not let
                // go is cut off.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(limits.request_timeout, conn.as_mut()).await;
            }
            if let Some(Err(e)) = ended {
                debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
    let _ = stop_tx.send(true);
    Ok(())
}
