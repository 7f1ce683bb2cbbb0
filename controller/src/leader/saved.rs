//! What of the decision in force is known to be saved, so a round saves only when
//! something that must survive a restart changed.

use std::hash::{Hash, Hasher};

use lifeline_engine::Decision;

/// What of the decision in force is known to be saved.
#[derive(Debug)]
pub(super) struct Saved {
    /// The fingerprint of the decision's entries.
    pub print: u64,
    /// What survived the last save (see [`saved_print`]).
    pub last: u64,
    /// The last save failed: the next decision is saved whatever changed.
    pub failed: bool,
}

impl Saved {
    /// A decision as it was read from the store.
    pub fn of(d: &Decision) -> Self {
        let print = fingerprint(d);
        Self {
            print,
            last: saved_print(print, d),
            failed: false,
        }
    }
}

/// A hash of what must survive a restart: every target's health and drain, by policy
/// and cluster. The decision is saved only when it changes (streak counters alone are
/// not worth an fsync each probe). A hash, not a copy: a copy of 100,000 targets held
/// between decisions cost 8 MiB.
pub(super) fn fingerprint(d: &Decision) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (id, p) in &d.policies {
        id.hash(&mut h);
        p.targets.len().hash(&mut h);
        for (cluster, t) in &p.targets {
            cluster.hash(&mut h);
            t.health.hash(&mut h);
            t.drained.hash(&mut h);
        }
    }
    h.finish()
}

/// What a saved decision must match: its entries' fingerprint and its alarms. Followers
/// show the saved decision, so an alarm raised or cleared is saved even when no target
/// changed (the blast-radius guard holds every target where it was).
pub(super) fn saved_print(entries: u64, d: &Decision) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    entries.hash(&mut h);
    for a in &d.alarms {
        std::mem::discriminant(&a.kind).hash(&mut h);
    }
    h.finish()
}
