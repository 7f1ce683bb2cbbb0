//! Where the controller keeps what must survive a restart: the last decision (hysteresis
//! and ramp state included), operator overrides with their audit trail, and the last good
//! set of policy documents (so steering continues when the policy source is broken or
//! unreachable at start).
//!
//! [`Store`] is the one handle the run loop and the admin API hold, over two backends:
//!
//! ```text
//!  Store::Embedded  one process: files in a directory; records go to the in-process
//!                   DNS server (which persists its own snapshot)
//!  Store::Etcd      replicas: everything in etcd; writes fenced by the leader key
//! ```
//!
//! Readers (overrides, audit, decision, policies) work on any replica. What only the
//! leader writes (records, decision, policies) goes through a [`Writer`], which only a
//! leader is given: the embedded store has one writer by construction, and on etcd the
//! writer carries the election's [`Leader`] key that fences each write.
//!
//! The embedded store keeps each item as one JSON file in a directory (mode 0700, files
//! 0600), replaced atomically (write to a temporary file, fsync, rename, fsync the
//! directory); temporary files a crash left behind are removed when the store opens. A
//! file that fails to decode is reported and treated as absent; it is never overwritten
//! until a good value replaces it, and it never crashes the process.
//!
//! Overrides are the exception to "treated as absent": an unreadable `overrides.json`
//! must not lift an operator's drain. Every write also refreshes `overrides.good.json`;
//! while `overrides.json` is unreadable the good copy is in force, the file is reported
//! in [`EmbeddedStore::unreadable`], and override changes are refused until it is
//! repaired or removed.

use std::{fs, path::PathBuf, sync::Arc, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::kubernetes::credentials::SealedKubeconfig;
use lifeline_engine::{Decision, Override};
use lifeline_etcd::Leader;
use lifeline_model::{
    Update,
    hold::{PolicyHold, PolicyRelease},
};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot encode: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Etcd(#[from] lifeline_etcd::store::Error),
    /// The embedded store was opened without a DNS server to publish to.
    #[error("this store has no DNS server to publish records to")]
    NoDnsServer,
    #[error("the DNS server refused the update: {0}")]
    Dns(#[from] lifeline_dns::Error),
    /// A stored file that must not be replaced blindly is unreadable.
    #[error(
        "{path} is unreadable ({problem}); its last good copy stays in force and changes are refused until the file is repaired or removed"
    )]
    Unreadable { path: PathBuf, problem: Unusable },
    /// A cluster name that cannot name a stored file.
    #[error("{0:?} cannot name a stored file (empty, starts with '.', or contains '/')")]
    BadName(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a stored file that exists cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    #[error("unknown format {0}")]
    Format(u32),
    #[error("does not decode: {0}")]
    Decode(serde_json::Error),
}

/// Format version of every stored file; a file with another version is not read.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    format: u32,
    value: T,
}

pub use lifeline_crds::document::PolicySnapshot;
pub use lifeline_model::overrides::AuditEntry;

/// Where overrides live: this process's directory, or etcd shared by every replica and
/// reachable by `lifeline ctl` without any leader or Kubernetes API.
#[derive(Clone, Debug)]
pub enum Store {
    Embedded(Arc<EmbeddedStore>),
    Etcd(lifeline_etcd::EtcdStore),
}

impl Store {
    /// Every override (expired ones included; the engine ignores those).
    pub async fn overrides(&self) -> Result<Vec<Override>> {
        match self {
            Store::Embedded(s) => Ok(off_runtime(s, |s| s.overrides()).await),
            Store::Etcd(s) => Ok(s.overrides().await?),
        }
    }

    /// Adds or replaces (by id) an override, recording it in the audit trail.
    pub async fn put_override(&self, o: Override, by: &str) -> Result<()> {
        match self {
            Store::Embedded(s) => {
                let by = by.to_owned();
                off_runtime(s, move |s| s.put_override(o, &by)).await
            }
            Store::Etcd(s) => Ok(s.put_override(&o, by).await?),
        }
    }

    /// Adds (or replaces by id) an override while fewer than `max` others are in force,
    /// checked and written as one step; `Some(in force)` when there is no room.
    pub async fn put_override_within(
        &self,
        o: Override,
        by: &str,
        max: usize,
    ) -> Result<Option<usize>> {
        match self {
            Store::Embedded(s) => {
                let by = by.to_owned();
                off_runtime(s, move |s| s.put_override_within(o, &by, max)).await
            }
            Store::Etcd(s) => Ok(s.put_override_within(&o, by, max).await?),
        }
    }

    /// Removes overrides matching `pred`, recording each in the audit trail.
    pub async fn remove_overrides(
        &self,
        pred: impl Fn(&Override) -> bool + Send + 'static,
        by: &str,
    ) -> Result<Vec<Override>> {
        match self {
            Store::Embedded(s) => {
                let by = by.to_owned();
                off_runtime(s, move |s| s.remove_overrides(pred, &by)).await
            }
            Store::Etcd(s) => Ok(s.remove_overrides(pred, by).await?),
        }
    }

    /// Removes audit entries older than `before`; returns how many.
    pub async fn prune_audit(&self, before: SystemTime) -> Result<usize> {
        match self {
            Store::Embedded(s) => off_runtime(s, move |s| s.prune_audit(before)).await,
            Store::Etcd(s) => Ok(usize::try_from(s.prune_audit(before).await?).unwrap_or(0)),
        }
    }

    /// The audit trail, oldest first.
    pub async fn audit(&self) -> Result<Vec<AuditEntry>> {
        match self {
            Store::Embedded(s) => Ok(off_runtime(s, |s| s.audit()).await),
            Store::Etcd(s) => Ok(s.audit().await?),
        }
    }

    /// Stored files that cannot be read and whose last good copy is in force (the
    /// embedded store; etcd counts its bad values itself).
    pub fn unreadable(&self) -> Vec<String> {
        match self {
            Store::Embedded(s) => s.unreadable(),
            Store::Etcd(_) => Vec::new(),
        }
    }

    /// The policy change the leader is holding, if any.
    pub async fn policy_hold(&self) -> Result<Option<PolicyHold>> {
        match self {
            Store::Embedded(s) => Ok(off_runtime(s, |s| {
                s.read::<Option<PolicyHold>>("policy-hold.json").flatten()
            })
            .await),
            Store::Etcd(s) => Ok(s.policy_hold().await?),
        }
    }

    /// Releases a held change (any replica, or ctl).
    pub async fn release_policy_change(&self, release: &PolicyRelease) -> Result<()> {
        match self {
            Store::Embedded(s) => {
                let bytes = EmbeddedStore::encode("policy-release.json", release)?;
                off_runtime(s, move |s| s.write_encoded("policy-release.json", &bytes)).await
            }
            Store::Etcd(s) => Ok(s.release_policy_change(release).await?),
        }
    }

    /// The last release written, if any.
    pub async fn policy_release(&self) -> Result<Option<PolicyRelease>> {
        match self {
            Store::Embedded(s) => Ok(off_runtime(s, |s| s.read("policy-release.json")).await),
            Store::Etcd(s) => Ok(s.policy_release().await?),
        }
    }

    /// The last saved decision; `None` when none was ever saved (or none decodes).
    pub async fn load_decision(&self) -> Result<Option<Decision>> {
        match self {
            Store::Embedded(s) => Ok(off_runtime(s, |s| s.load_decision()).await),
            Store::Etcd(s) => Ok(s.load_decision().await?),
        }
    }

    /// The last good policy documents; `None` when no set was ever saved. (An empty set
    /// is never saved: the loop waits for a usable one instead.)
    pub async fn load_policies(&self) -> Result<Option<PolicySnapshot>> {
        match self {
            Store::Embedded(s) => Ok(off_runtime(s, |s| s.load_policies()).await),
            Store::Etcd(s) => {
                let saved = s.load_policies().await?;
                Ok((!saved.policies.is_empty() || !saved.clusters.is_empty()).then_some(saved))
            }
        }
    }

    /// The sealed kubeconfig cached for `cluster`, if any (any replica).
    pub async fn credential(&self, cluster: &str) -> Result<Option<SealedKubeconfig>> {
        match self {
            Store::Embedded(s) => {
                let name = credential_file(cluster)?;
                Ok(off_runtime(s, move |s| s.read(&name)).await)
            }
            Store::Etcd(s) => Ok(s.credential(cluster).await?),
        }
    }
}

/// The right to write what only the leader writes: the decision, the last good policy
/// set, the held change, cached member credentials and the records every DNS server
/// serves. The embedded store has one writer by construction; on etcd a writer is made
/// from the election's [`Leader`], and every write it makes is fenced by that key.
#[derive(Clone, Copy, Debug)]
pub enum Writer<'a> {
    Embedded(&'a Arc<EmbeddedStore>),
    Etcd(&'a lifeline_etcd::EtcdStore, &'a Leader),
}

impl Writer<'_> {
    /// The store this writer writes to, for reads.
    pub fn store(&self) -> Store {
        match *self {
            Writer::Embedded(s) => Store::Embedded(s.clone()),
            Writer::Etcd(s, _) => Store::Etcd(s.clone()),
        }
    }

    /// Records (`None`: clears) the held change.
    pub async fn save_policy_hold(&self, hold: Option<&PolicyHold>) -> Result<()> {
        match *self {
            Writer::Embedded(s) => {
                let bytes = EmbeddedStore::encode("policy-hold.json", &hold)?;
                off_runtime(s, move |s| s.write_encoded("policy-hold.json", &bytes)).await
            }
            Writer::Etcd(s, l) => Ok(s.save_policy_hold(l, hold).await?),
        }
    }

    /// Saves the decision.
    pub async fn save_decision(&self, decision: &Decision) -> Result<()> {
        match *self {
            Writer::Embedded(s) => {
                let bytes = EmbeddedStore::encode(DECISION, decision)?;
                off_runtime(s, move |s| s.write_decision_encoded(&bytes)).await
            }
            Writer::Etcd(s, l) => Ok(s.save_decision(l, decision).await?),
        }
    }

    /// Saves the last good policy documents.
    pub async fn save_policies(&self, snapshot: &PolicySnapshot) -> Result<()> {
        match *self {
            Writer::Embedded(s) => {
                let bytes = EmbeddedStore::encode(POLICIES, snapshot)?;
                off_runtime(s, move |s| s.write_encoded(POLICIES, &bytes)).await
            }
            Writer::Etcd(s, l) => Ok(s.mirror_policies(l, snapshot).await?),
        }
    }

    /// Caches (or, with `None`, forgets) the sealed kubeconfig of `cluster`.
    pub async fn save_credential(
        &self,
        cluster: &str,
        sealed: Option<&SealedKubeconfig>,
    ) -> Result<()> {
        match *self {
            Writer::Embedded(s) => {
                let name = credential_file(cluster)?;
                let bytes = sealed
                    .map(|v| EmbeddedStore::encode(&name, v))
                    .transpose()?;
                off_runtime(s, move |s| match bytes {
                    Some(bytes) => s.write_encoded(&name, &bytes),
                    None => match fs::remove_file(s.dir.join(&name)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
                            path: s.dir.join(name),
                            source: e,
                        }),
                        _ => Ok(()),
                    },
                })
                .await
            }
            Writer::Etcd(s, l) => Ok(s.save_credential(l, cluster, sealed).await?),
        }
    }

    /// Publishes records: to the in-process DNS server, or to etcd where
    /// every replica's DNS server reads them.
    pub async fn publish(&self, update: Update) -> Result<()> {
        match *self {
            Writer::Embedded(s) => {
                let shim = s.dns.as_ref().ok_or(Error::NoDnsServer)?;
                let applied = shim.apply_async(update).await?;
                if s.export.is_some()
                    && let Some(snapshot) = shim.snapshot(&applied.zone)
                {
                    // The whole zone: `lifeline dns` takes each file as it stands, and a
                    // write that failed is made good by the next one.
                    let bytes = serde_json::to_vec(&snapshot).map_err(|source| Error::Encode {
                        path: PathBuf::from(&applied.zone),
                        source,
                    })?;
                    off_runtime(s, move |s| s.export_zone(&applied.zone, &bytes)).await?;
                }
                Ok(())
            }
            Writer::Etcd(s, l) => {
                s.publish_update(l, &update).await?;
                Ok(())
            }
        }
    }
}

mod embedded;

pub use embedded::EmbeddedStore;
use embedded::{DECISION, POLICIES, credential_file, off_runtime};
