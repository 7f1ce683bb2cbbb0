//! Where snapshots come from.
//!
//! A [`SnapshotSource`] delivers [`Update`]s to a running shim and reports whether it
//! is connected. Sources only ever add or replace data: losing one (etcd down, directory
//! unreadable, controller gone) changes the shim's "connected" and "age" readings, never
//! what it serves. Three feeds fit this seam: the controller calling
//! [`ShimHandle::apply`] in-process, [`DirectorySource`] for `lifeline dns`, and a store
//! watch (etcd) that turns watch events into updates.

use std::{
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    time::{Duration, SystemTime},
};

use tracing::{Instrument, debug, info, info_span, warn};

use crate::{Error, shim::ShimHandle};
use lifeline_model::{Update, ZoneSnapshot};

/// A feed of snapshots for a running shim.
pub trait SnapshotSource: Send + 'static {
    /// Name used in logs, state and the `source` label of metrics.
    fn name(&self) -> String;

    /// Feeds `shim` until the returned future is dropped. Implementations call
    /// [`ShimHandle::set_source_connected`] as their connection comes and goes, and
    /// [`ShimHandle::apply`] for every update; they never clear data.
    fn run(self: Box<Self>, shim: ShimHandle) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// Whether it hands the shim break-glass overrides ([`ShimHandle::set_overrides`]);
    /// a shim fed by such a source keeps them on disk (see
    /// [`crate::shim::StartOptions::break_glass`]).
    fn sets_overrides(&self) -> bool {
        false
    }
}

/// Spawns a source as a named task.
pub fn spawn(source: Box<dyn SnapshotSource>, shim: ShimHandle) -> tokio::task::JoinHandle<()> {
    let span = info_span!("snapshot_source", source = %source.name());
    tokio::spawn(source.run(shim).instrument(span))
}

/// Watches a directory of JSON files, each a [`ZoneSnapshot`] or an [`Update`].
///
/// Files are polled (no inotify: the directory may be a mounted ConfigMap or a network
/// volume where events are unreliable). A file is (re)read when its size or mtime
/// changes; writers should write to a temporary name and rename. A file that does not
/// parse, or names an unknown zone, is reported and skipped; an older revision than
/// the one served is ignored.
#[derive(Debug, Clone)]
pub struct DirectorySource {
    dir: PathBuf,
    interval: Duration,
}

impl DirectorySource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            interval: Duration::from_millis(500),
        }
    }

    /// Poll interval (default 500 ms).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }
}

impl SnapshotSource for DirectorySource {
    fn name(&self) -> String {
        format!("dir:{}", self.dir.display())
    }

    fn run(self: Box<Self>, shim: ShimHandle) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let name = self.name();
            let mut seen: HashMap<PathBuf, (u64, SystemTime)> = HashMap::new();
            let mut tick = tokio::time::interval(self.interval);
            loop {
                tick.tick().await;
                let files = match list(&self.dir) {
                    Ok(f) => f,
                    Err(e) => {
                        debug!(dir = %self.dir.display(), error = %e, "snapshot directory unreadable");
                        shim.set_source_connected(&name, false);
                        continue;
                    }
                };
                shim.set_source_connected(&name, true);
                // Oldest revision first is not knowable before reading; sorting by name
                // keeps the order stable, and stale revisions are refused by apply.
                for (path, stamp) in files {
                    if seen.get(&path) == Some(&stamp) {
                        continue;
                    }
                    seen.insert(path.clone(), stamp);
                    let update = match read_update(&path).await {
                        Ok(u) => u,
                        Err(reason) => {
                            warn!(path = %path.display(), %reason, "snapshot file skipped");
                            shim.count_load_error();
                            continue;
                        }
                    };
                    match shim.apply_async(update).await {
                        Ok(a) => {
                            info!(path = %path.display(), zone = %a.zone, revision = a.revision, "snapshot file applied")
                        }
                        // The same revision again is a file rewritten as it was; an
                        // older one means whoever writes the directory went back (a
                        // restored backup, a second writer): served data stays, and an
                        // operator should know.
                        Err(Error::StaleRevision { zone, have, got }) if got < have => {
                            warn!(path = %path.display(), %zone, served = have, file = got, "snapshot file goes back in revision; it is ignored and the newer served data stays");
                            shim.count_load_error();
                        }
                        Err(Error::StaleRevision { .. }) => {
                            debug!(path = %path.display(), "snapshot file not newer than served data")
                        }
                        Err(e) => {
                            warn!(path = %path.display(), error = %e, "snapshot file rejected");
                            shim.count_load_error();
                        }
                    }
                }
            }
        })
    }
}

fn list(dir: &Path) -> std::io::Result<Vec<(PathBuf, (u64, SystemTime))>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        out.push((path, (meta.len(), mtime)));
    }
    out.sort();
    Ok(out)
}

/// Why a file in the directory is skipped.
#[derive(Debug, thiserror::Error)]
enum BadFile {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// JSON with a `kind`, but not an update of that kind.
    #[error("invalid update: {0}")]
    Update(#[source] serde_json::Error),
    /// JSON without a `kind`, but not a snapshot.
    #[error("invalid snapshot: {0}")]
    Snapshot(#[source] serde_json::Error),
}

/// Reads a file holding either an update (`{"kind": "replace"|"patch", ...}`) or a bare
/// snapshot. The document is parsed straight into its type: a generic JSON tree of a
/// large zone would take several times the memory the zone itself does, and the
/// allocator keeps much of that after it is freed.
async fn read_update(path: &Path) -> Result<Update, BadFile> {
    let bytes = tokio::fs::read(path).await?;
    tokio::task::spawn_blocking(move || parse_update(&bytes))
        .await
        .map_err(|e| BadFile::Io(std::io::Error::other(e)))?
}

/// Whether a document names its kind; nothing else of it is kept.
#[derive(serde::Deserialize)]
struct Peek {
    #[serde(default)]
    kind: Option<serde::de::IgnoredAny>,
}

fn parse_update(bytes: &[u8]) -> Result<Update, BadFile> {
    let peek: Peek = serde_json::from_slice(bytes).map_err(BadFile::Json)?;
    if peek.kind.is_some() {
        serde_json::from_slice(bytes).map_err(BadFile::Update)
    } else {
        serde_json::from_slice::<ZoneSnapshot>(bytes)
            .map(Update::Replace)
            .map_err(BadFile::Snapshot)
    }
}
