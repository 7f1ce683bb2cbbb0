//! A policy-set change held back because it would stop serving many names at once, and
//! an operator's release of it.
//!
//! The leader writes the hold to its store (a file beside the embedded store, or etcd),
//! so every replica's admin API and `lifeline ctl --etcd` can show it; a release is
//! written to the same store by any of them and acted on by the leader.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// What is held and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyHold {
    /// Identifies the held set. A release names it, so a change that differs from the
    /// one an operator looked at is never released by mistake.
    pub fingerprint: String,
    /// Hostnames the change would stop serving.
    pub removed: Vec<String>,
    /// Policies (`namespace/name`) the change would drop.
    pub policies: Vec<String>,
    /// Hostnames served now.
    pub served: usize,
    /// Why it is held, in words.
    pub reason: String,
    /// When it was first held.
    #[serde(with = "crate::time::rfc3339")]
    pub since: SystemTime,
}

/// An operator's release of the held change with `fingerprint`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRelease {
    pub fingerprint: String,
    /// Who released it.
    pub by: String,
    /// Why (kept with the release for the log).
    #[serde(default)]
    pub reason: String,
    #[serde(with = "crate::time::rfc3339")]
    pub at: SystemTime,
}
