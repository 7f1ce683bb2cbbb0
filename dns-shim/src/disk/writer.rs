//! The writer of what the shim keeps on disk, on a thread of its own: answers never
//! wait for a disk.
//!
//! A zone's change is appended to its journal (see [`crate::disk::journal`]): the bytes of
//! what changed, made durable with one `fdatasync`. A whole snapshot is written instead
//! when there is no journal to append to (the first write, or one that failed), when
//! changes were dropped from the queue, and after the journal reaches its limits
//! (compaction); an empty journal then starts on the new snapshot.
//!
//! Only the newest state of each key waits. Changes queued while the disk is slow are
//! kept in order up to [`PENDING_CHANGES_MAX`]; past that they are dropped for the
//! newest snapshot, so a stalled disk costs one whole write when it comes back, never
//! an unbounded backlog.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::{Condvar, Mutex};
use tracing::{debug, warn};

use crate::{
    disk::{
        journal::{self, Appender, Entry, Limits},
        snapshots as persist,
    },
    metrics::Count,
};
use lifeline_model::ZoneSnapshot;

/// Changes of one zone held while the disk is busy before they give way to a whole
/// snapshot.
pub const PENDING_CHANGES_MAX: usize = 4096;

/// One thing to write.
#[derive(Debug)]
pub(crate) enum Item {
    /// A zone's newest snapshot, and the changes that led to it from what was written
    /// or queued before; `None` when only a whole snapshot will do.
    Zone {
        snapshot: Arc<ZoneSnapshot>,
        changes: Option<Vec<Entry>>,
    },
    Overrides(Arc<persist::OverrideSet>),
    /// The serial a zone answers with, and what it was given for.
    Serial {
        zone: String,
        served: crate::zone::serial::Served,
    },
}

#[derive(Debug, Default)]
pub(crate) struct Persister {
    queue: Mutex<Queue>,
    changed: Condvar,
    /// Open journals by zone; only the writer thread appends.
    journals: Mutex<HashMap<String, Appender>>,
    limits: Limits,
}

#[derive(Debug, Default)]
struct Queue {
    pending: BTreeMap<String, Item>,
    /// A batch is being written.
    busy: bool,
    /// Keys whose last write failed.
    failed: BTreeSet<String>,
    stopped: bool,
}

impl Persister {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Appends go on to `appender`, the journal found at start.
    pub(crate) fn resume(&self, zone: &str, appender: Appender) {
        self.journals.lock().insert(zone.to_owned(), appender);
    }

    pub(crate) fn queue(&self, key: String, item: Item) {
        let mut q = self.queue.lock();
        let item = match (q.pending.remove(&key), item) {
            (
                Some(Item::Zone {
                    changes: Some(mut before),
                    ..
                }),
                Item::Zone {
                    snapshot,
                    changes: Some(after),
                },
            ) if before.len() + after.len() <= PENDING_CHANGES_MAX => {
                before.extend(after);
                Item::Zone {
                    snapshot,
                    changes: Some(before),
                }
            }
            (Some(Item::Zone { .. }), Item::Zone { snapshot, .. }) => Item::Zone {
                snapshot,
                changes: None,
            },
            (_, item) => item,
        };
        q.pending.insert(key, item);
        drop(q);
        self.changed.notify_all();
    }

    pub(crate) fn stop(&self) {
        self.queue.lock().stopped = true;
        self.changed.notify_all();
    }

    pub(crate) fn flush(&self, limit: Duration) -> Option<bool> {
        let deadline = Instant::now() + limit;
        let mut q = self.queue.lock();
        while q.busy || !q.pending.is_empty() {
            if self.changed.wait_until(&mut q, deadline).timed_out() {
                return None;
            }
        }
        Some(q.failed.is_empty())
    }

    /// The writer loop: ends once stopped with nothing left to write.
    pub(crate) fn run(&self, dir: &Path, failures: &Count) {
        loop {
            let batch = {
                let mut q = self.queue.lock();
                while q.pending.is_empty() && !q.stopped {
                    self.changed.wait(&mut q);
                }
                if q.pending.is_empty() {
                    return;
                }
                q.busy = true;
                std::mem::take(&mut q.pending)
            };
            for (key, item) in batch {
                let written = match &item {
                    Item::Zone { snapshot, changes } => {
                        self.write_zone(dir, snapshot, changes.as_deref()).map_err(|e| {
                            warn!(zone = %snapshot.zone, revision = snapshot.revision, error = %e, "zone not persisted; answers go on from memory, and the next update writes again");
                        })
                    }
                    Item::Overrides(set) => persist::write_overrides(dir, set).map(drop).map_err(|e| {
                        warn!(generation = set.generation, error = %e, "break-glass overrides not persisted; they stay in force in memory, and the next change writes again");
                    }),
                    Item::Serial { zone, served } => crate::zone::serial::write(dir, zone, served).map_err(|e| {
                        warn!(%zone, serial = served.serial, error = %e, "serial not kept; a restart moves it again from the clock");
                    }),
                };
                let mut q = self.queue.lock();
                if written.is_ok() {
                    q.failed.remove(&key);
                } else {
                    failures.inc();
                    q.failed.insert(key);
                }
            }
            self.queue.lock().busy = false;
            self.changed.notify_all();
        }
    }

    /// Appends `changes` to the zone's journal when they follow it, and writes a whole
    /// snapshot when they cannot be appended or the journal is due for compaction.
    fn write_zone(
        &self,
        dir: &Path,
        snapshot: &ZoneSnapshot,
        changes: Option<&[Entry]>,
    ) -> crate::Result<()> {
        let zone = &snapshot.zone;
        let mut journals = self.journals.lock();
        if let (Some(changes), Some(j)) = (changes, journals.get_mut(zone))
            && changes.first().is_some_and(|c| c.from == j.head)
        {
            match j.append(changes) {
                Ok(bytes) => {
                    debug!(%zone, revision = j.head, bytes, entries = j.entries, "changes appended to the journal");
                    if !j.due(self.limits) {
                        return Ok(());
                    }
                }
                Err(e) => {
                    warn!(%zone, error = %e, "journal append failed; writing a whole snapshot instead");
                    journals.remove(zone);
                }
            }
        }
        // A whole snapshot, then an empty journal on it. A crash between the two leaves
        // the new snapshot without a journal, which holds everything.
        journals.remove(zone);
        persist::write(dir, snapshot)?;
        let appender =
            Appender::start(dir, zone, snapshot.revision).map_err(|source| crate::Error::Io {
                path: journal::path(dir, zone, snapshot.revision),
                source,
            })?;
        journals.insert(zone.clone(), appender);
        journal::prune(dir, zone, &persist::revisions(dir, zone));
        debug!(%zone, revision = snapshot.revision, "whole snapshot written; journal started on it");
        Ok(())
    }
}
