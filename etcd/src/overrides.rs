//! Break-glass overrides from etcd, applied by the shim itself.
//!
//! Every replica's shim reads `{prefix}/overrides/` every couple of seconds and hands
//! the set to [`ShimHandle::set_overrides`], which applies the active cluster-wide ones
//! to what it serves (see [`lifeline_model::overrides`]). So `lifeline ctl --etcd drain X`
//! changes answers even when no leader is running, as long as etcd is.
//!
//! Polling, not a watch: overrides change rarely, a small range read every 2 s per
//! replica is negligible load, expiry needs a periodic look anyway, and a poll has no
//! stream to resume after an etcd restart. While etcd is unreachable the last set read
//! stays in force; a bad value is reported and skipped. The shim keeps the set on disk,
//! so a replica restarted while etcd is down starts with it too.

use std::{collections::BTreeMap, future::Future, pin::Pin, time::Duration};

use etcd_client::{Client, GetOptions};
use tracing::{debug, info, warn};

use lifeline_dns::{ShimHandle, SnapshotSource};
use lifeline_model::overrides::Override;

use crate::source::{EtcdConnect, decode_value, timed};

/// How often overrides are read.
pub const POLL: Duration = Duration::from_secs(2);

/// Keeps a shim's overrides in step with etcd. It runs beside the record source (see
/// [`lifeline_dns::source::spawn`]) but does not vouch for the records' freshness, so it never
/// reports itself connected.
#[derive(Debug, Clone)]
pub struct EtcdOverrides {
    connect: EtcdConnect,
    prefix: String,
}

impl EtcdOverrides {
    /// Overrides under `{prefix}/overrides/`.
    pub fn new(connect: EtcdConnect, prefix: impl Into<String>) -> Self {
        Self {
            connect,
            prefix: prefix.into(),
        }
    }
}

impl SnapshotSource for EtcdOverrides {
    fn name(&self) -> String {
        format!("etcd-overrides:{}", self.prefix.trim_end_matches('/'))
    }

    fn run(self: Box<Self>, shim: ShimHandle) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(poll(self.connect, self.prefix, shim))
    }

    fn sets_overrides(&self) -> bool {
        true
    }
}

async fn poll(connect: EtcdConnect, prefix: String, shim: ShimHandle) {
    let dir = format!("{}/overrides/", prefix.trim_end_matches('/'));
    let mut client: Option<Client> = None;
    let mut last: Option<BTreeMap<String, Override>> = None;
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        if client.is_none() {
            match connect.connect().await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    debug!(error = %e, "etcd unreachable; keeping the overrides already read");
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let read = timed(
            connect.request_timeout(),
            c.get(dir.as_bytes(), Some(GetOptions::new().with_prefix())),
        )
        .await;
        let resp = match read {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "cannot read overrides; keeping the ones already read");
                client = None;
                continue;
            }
        };
        let mut current = BTreeMap::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let decoded = decode_value::<Override>(kv.value())
                .map_err(|e| e.to_string())
                .and_then(|d| match d.value.action {
                    // Anyone with etcd access can write here: never act on a weight
                    // outside the documented range.
                    lifeline_model::OverrideAction::Weight(w)
                        if w > lifeline_model::limits::WEIGHT_MAX =>
                    {
                        Err(format!(
                            "weight {w} is out of range (at most {})",
                            lifeline_model::limits::WEIGHT_MAX
                        ))
                    }
                    _ => Ok(d.value),
                });
            match decoded {
                Ok(o) => {
                    current.insert(key, o);
                }
                Err(e) => {
                    // The last good value of that key stays, if there was one.
                    warn!(%key, error = %e, "bad override value in etcd; ignored");
                    if let Some(old) = last.as_ref().and_then(|l| l.get(&key)) {
                        current.insert(key, old.clone());
                    }
                }
            }
        }
        if last.as_ref() != Some(&current) {
            info!(count = current.len(), "overrides from etcd changed");
            shim.set_overrides(current.values().cloned().collect());
            last = Some(current);
        }
    }
}
