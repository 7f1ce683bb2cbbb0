//! `lifeline dns`: the shim on its own, as an edge replica.
//!
//! Order matters: persisted snapshot → sockets → sources → admin HTTP. The shim answers
//! from disk before anything else is reachable.

use std::{future::Future, net::SocketAddr};

use tracing::{info, warn};

use crate::{
    Error, Result,
    config::{DnsConfig, ZoneConfig},
    shim::Shim,
    source::{self, DirectorySource},
};

/// Runs the standalone shim until `shutdown` completes.
///
/// `admin` is where `/metrics`, `/healthz`, `/readyz` and `/state` are served (none
/// when `None`). With `dns.sourceDir` set, that directory is watched for snapshot files.
pub async fn run(
    dns: &DnsConfig,
    zones: &[ZoneConfig],
    admin: Option<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    run_with_sources(dns, zones, admin, Vec::new(), shutdown).await
}

/// [`run`] with further sources (a store watch, for instance) besides `dns.sourceDir`.
/// They start after the persisted snapshot is served and the sockets are open.
pub async fn run_with_sources(
    dns: &DnsConfig,
    zones: &[ZoneConfig],
    admin: Option<SocketAddr>,
    sources: Vec<Box<dyn source::SnapshotSource>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let options = crate::shim::StartOptions {
        break_glass: sources.iter().any(|s| s.sets_overrides()),
        no_sockets: false,
    };
    let shim = Shim::start_with(dns, zones, options).await?;
    let mut tasks = Vec::new();
    if let Some(dir) = &dns.source_dir {
        tasks.push(source::spawn(
            Box::new(DirectorySource::new(dir.clone())),
            shim.clone(),
        ));
    } else if sources.is_empty() {
        warn!("no dns.sourceDir and no store: serving persisted snapshots only");
    }
    for s in sources {
        tasks.push(source::spawn(s, shim.clone()));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = match admin {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { addr, source })?;
            info!(addr = %listener.local_addr().unwrap_or(addr), "admin http listening");
            let app = crate::admin::router(shim.clone());
            let mut rx = stop_rx.clone();
            Some(tokio::spawn(async move {
                let served =
                    crate::http::serve(listener, app, crate::http::Limits::default(), async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = served {
                    warn!(error = %e, "admin http server ended");
                }
            }))
        }
        None => None,
    };
    shutdown.await;
    info!("shutting down dns shim");
    let _ = stop_tx.send(true);
    for t in tasks {
        t.abort();
    }
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    shim.shutdown();
    Ok(())
}
