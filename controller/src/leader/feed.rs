//! Where policy documents come from (inline, files, or the management cluster's CRs),
//! and what was last seen of them.

use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use lifeline_crds::{
    document::PolicySnapshot,
    validate::{SetReason, ZoneRule},
};
use tracing::warn;

use super::arbitrate::arbitrate;

use crate::{
    documents::Documents,
    kubernetes::management::{ManagementSource, ManagementView},
    store::Store,
};

/// Where policy documents come from, and what was last seen of them.
pub(crate) struct PolicyFeed {
    pub docs: Documents,
    /// Modification stamps of the files at the last load.
    stamps: Vec<Option<(SystemTime, u64)>>,
    zones: Vec<ZoneRule>,
    /// The management cluster's client and namespace, for `Documents::Kubernetes`.
    pub(super) management_client: Option<(kube::Client, Option<String>)>,
    /// The management cluster's view while this replica leads.
    pub(super) management: Option<(
        ManagementSource,
        tokio::sync::watch::Receiver<ManagementView>,
    )>,
    /// Cross-document problems of the last Kubernetes load, by policy id: the policy
    /// is left out of the set (a hostname owned by an older policy, a zone it may not
    /// publish in) or served with the problem reported (an unknown cluster).
    pub set_problems: BTreeMap<String, (SetReason, String)>,
    /// What the last set loaded means (see [`meaning`]).
    meaning: Option<(String, u64)>,
}

impl PolicyFeed {
    pub fn new(
        docs: Documents,
        zones: Vec<ZoneRule>,
        management_client: Option<(kube::Client, Option<String>)>,
    ) -> Self {
        Self {
            docs,
            stamps: Vec::new(),
            zones,
            management_client,
            management: None,
            set_problems: BTreeMap::new(),
            meaning: None,
        }
    }

    fn stamp(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
        paths
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
            })
            .collect()
    }

    /// Loads the documents. `Err` says why the set is unusable; the caller keeps its last
    /// good set.
    pub(super) fn load(&mut self) -> Result<PolicySnapshot, Unusable> {
        let loaded = self.read();
        if let Ok(set) = &loaded {
            self.meaning = Some(meaning(set));
        }
        loaded
    }

    /// Loads the documents again when they changed and now make a set that means
    /// something else than the last set loaded; `None` otherwise. The leader's own
    /// status writes change the CRs' resource versions, and an editor may save a file
    /// unchanged: neither is a new policy set.
    pub(super) fn reload(&mut self) -> Option<Result<PolicySnapshot, Unusable>> {
        if !self.changed() {
            return None;
        }
        let before = self.meaning.clone();
        let loaded = self.load();
        match &loaded {
            Ok(_) if self.meaning == before => None,
            _ => Some(loaded),
        }
    }

    fn read(&mut self) -> Result<PolicySnapshot, Unusable> {
        match &self.docs {
            Documents::Inline { policies, clusters } => Ok(PolicySnapshot {
                policies: policies.clone(),
                clusters: clusters.clone(),
            }),
            Documents::Files(paths) => {
                self.stamps = Self::stamp(paths);
                let loaded = crate::documents::load(paths, &self.zones);
                if !loaded.is_valid() {
                    return Err(Unusable::Invalid(loaded.problems));
                }
                Ok(PolicySnapshot {
                    policies: loaded.policies.into_iter().map(|(_, p)| p).collect(),
                    clusters: loaded.clusters.into_iter().map(|(_, c)| c).collect(),
                })
            }
            Documents::Kubernetes { .. } => {
                let Some((_, view)) = self.management.as_mut() else {
                    return Err(Unusable::NotWatched);
                };
                let view = view.borrow_and_update().clone();
                if !view.synced {
                    return Err(Unusable::NotListed {
                        reachable: view.connected,
                    });
                }
                // Invalid objects keep their last good version in the view; they are
                // reported, not fatal to the rest of the set.
                for (object, problems) in &view.problems {
                    for p in problems {
                        warn!(%object, problem = %p, "invalid object in the management cluster");
                    }
                }
                let clusters: Vec<_> = view.clusters.into_values().collect();
                let (policies, set_problems) = arbitrate(
                    view.policies.into_values().collect(),
                    &clusters,
                    &self.zones,
                );
                self.set_problems = set_problems;
                Ok(PolicySnapshot { policies, clusters })
            }
        }
    }

    /// True when a file changed since the last load. Polling the modification time and
    /// size once a second is enough for files an operator edits, and it also sees the
    /// symlink swaps of a mounted ConfigMap, which inotify-style watches can miss.
    fn changed(&self) -> bool {
        match &self.docs {
            Documents::Files(paths) => Self::stamp(paths) != self.stamps,
            Documents::Inline { .. } => false,
            Documents::Kubernetes { .. } => self
                .management
                .as_ref()
                .is_some_and(|(_, view)| view.has_changed().unwrap_or(false)),
        }
    }
}

/// Why the documents make no usable policy set.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unusable {
    /// Every problem the documents have, per document and across them.
    #[error("{} problems in the policy documents", .0.len())]
    Invalid(Vec<crate::documents::Report>),
    #[error("the management cluster is not being watched")]
    NotWatched,
    #[error("the management cluster has not been listed yet (reachable: {reachable})")]
    NotListed { reachable: bool },
}

impl Unusable {
    /// Each problem, as an operator reads it.
    pub fn problems(&self) -> Vec<String> {
        match self {
            Unusable::Invalid(reports) => reports.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// What a policy set means: its content's fingerprint (each document's name and spec,
/// as the change hold knows it) and a digest of the documents' annotations, which carry
/// test faults. Resource versions, managed fields and status are left out.
fn meaning(set: &PolicySnapshot) -> (String, u64) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let policies = set.policies.iter().map(|p| &p.metadata.annotations);
    for annotations in policies.chain(set.clusters.iter().map(|c| &c.metadata.annotations)) {
        annotations.hash(&mut h);
    }
    (super::change_hold::rule::fingerprint(set), h.finish())
}

/// Policies to start a term with: fresh if valid, else the last good set; with neither,
/// polls once a second (DNS keeps answering from its snapshot) rather than publish an
/// empty set.
/// The flag is true for freshly loaded documents, false for the stored set.
pub(super) async fn usable_policies(
    source: &mut PolicyFeed,
    store: &Store,
) -> (PolicySnapshot, bool) {
    let mut waiting_logged = false;
    loop {
        match source.load() {
            Ok(snapshot) => return (snapshot, true),
            Err(unusable) => {
                let problems = unusable.problems();
                match store.load_policies().await {
                    Ok(Some(s)) => {
                        for p in &problems {
                            warn!(problem = %p, "policy documents unavailable; using the last good set");
                        }
                        return (s, false);
                    }
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "cannot read the last good policy set"),
                }
                if !waiting_logged {
                    for p in &problems {
                        warn!(problem = %p, "no usable policy set yet; DNS keeps answering from its snapshot");
                    }
                    waiting_logged = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::TEST_FAULT;
    use lifeline_crds::FailoverPolicy;

    const POLICY: &str = "apiVersion: lifeline.dev/v1alpha1
kind: MemberCluster
metadata: {name: one}
spec: {region: eu, addressSource: Static, addresses: [192.0.2.1]}
---
apiVersion: lifeline.dev/v1alpha1
kind: FailoverPolicy
metadata: {name: web, namespace: shop}
spec: {hostname: web.global.example.com, ttl: TTL, targets: [{cluster: one}]}
";

    #[test]
    fn a_file_saved_unchanged_is_not_a_new_set_and_an_edit_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policies.yaml");
        std::fs::write(&path, POLICY.replace("TTL", "30")).unwrap();
        let mut feed = PolicyFeed::new(Documents::Files(vec![path.clone()]), Vec::new(), None);
        assert_eq!(feed.load().unwrap().policies.len(), 1);
        assert!(feed.reload().is_none(), "nothing changed");

        // Saved again with the same content: the stamp moves, the meaning does not.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::write(&path, POLICY.replace("TTL", "30")).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(later).unwrap();
        assert!(feed.changed(), "the stamp moved");
        assert!(feed.reload().is_none(), "the same set is not reloaded");

        std::fs::write(&path, POLICY.replace("TTL", "60")).unwrap();
        file.set_modified(later + Duration::from_secs(5)).unwrap();
        let edited = feed.reload().expect("an edit is a new set").unwrap();
        assert_eq!(edited.policies[0].spec.ttl, 60);
    }

    #[test]
    fn meaning_follows_specs_and_annotations_not_versions_or_status() {
        let policy: FailoverPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "FailoverPolicy",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"hostname": "web.global.example.com", "targets": [{"cluster": "one"}]},
        }))
        .unwrap();
        let set = |p: &FailoverPolicy| PolicySnapshot {
            policies: vec![p.clone()],
            clusters: Vec::new(),
        };
        let mut written = policy.clone();
        written.metadata.resource_version = Some("42".into());
        written.status = Some(Default::default());
        assert_eq!(meaning(&set(&policy)), meaning(&set(&written)));
        let mut annotated = policy.clone();
        annotated.metadata.annotations = Some([(TEST_FAULT.into(), "panic".into())].into());
        assert_ne!(meaning(&set(&policy)), meaning(&set(&annotated)));
        let mut edited = policy.clone();
        edited.spec.ttl = 5;
        assert_ne!(meaning(&set(&policy)), meaning(&set(&edited)));
    }
}
