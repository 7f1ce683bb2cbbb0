//! Bounded waiting. Every wait has a limit in time and in count, and says what it was
//! waiting for when the limit passes.

use std::{future::Future, time::Duration};

/// Awaits `f` for at most `limit`; panics with a clear message on timeout.
pub async fn within<T>(limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}"))
}

/// Polls `check` every 20 ms until it returns `Some` or `limit` passes (then panics
/// naming `what`).
pub async fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = tokio::time::Instant::now();
    // Bounded by `limit` and by a count (limit / 20 ms + 1).
    let max = (limit.as_millis() / 20) as usize + 1;
    for _ in 0..max {
        if let Some(v) = check() {
            return v;
        }
        if start.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check().unwrap_or_else(|| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Like [`eventually`] for a check that is itself async: polls every 100 ms.
pub async fn eventually_async<T, F: Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let start = tokio::time::Instant::now();
    // Bounded by `limit` and by a count (limit / 100 ms + 1).
    for _ in 0..limit.as_millis() / 100 + 1 {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match check().await {
        Some(v) => v,
        None => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `f` every 20 ms from a plain thread until it is true or `limit` passes;
/// returns whether it became true.
pub fn poll(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    // Bounded by `limit` and by a count.
    for _ in 0..limit.as_millis() / 20 + 1 {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Logs to the test output, filtered by `RUST_LOG` (nothing when unset).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}
