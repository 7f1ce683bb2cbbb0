//! Faults that tests ask for, so they can prove that one poisoned policy cannot stop DNS
//! or the other policies, and that a crash at the worst moment loses no decision.
//!
//! A test puts the annotation [`TEST_FAULT`] on a FailoverPolicy and starts the process
//! with test faults enabled (`LIFELINE_TEST_FAULTS=1`). Without that, [`Faults`] is
//! empty and each of its three hooks (in the decision, before saving, before
//! publishing) returns at once.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lifeline_crds::document::PolicySnapshot;
use lifeline_engine::{Decision, Policy};

use super::panic_boundary::Fault;

/// Annotation on a FailoverPolicy that makes deciding it panic (`panic`) or never return
/// (`hang`), or the process abort between saving a decision that changes its answers
/// and publishing it (`abort-before-publish`), or the leader stop for good between
/// making such a decision and saving it (`hang-before-save`, once per process, for a
/// test to kill it there), when test faults are enabled.
pub const TEST_FAULT: &str = "lifeline.dev/test-fault";

/// What the annotation asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Panic,
    Hang,
    AbortBeforePublish,
    HangBeforeSave,
}

/// The faults asked for by the policy set in force, by policy id.
#[derive(Clone, Debug, Default)]
pub(super) struct Faults {
    by_policy: BTreeMap<String, Kind>,
}

/// `hang-before-save` stops one leader per process: tests run replicas side by side in
/// one process, and the successor must decide normally.
static HUNG_BEFORE_SAVE: AtomicBool = AtomicBool::new(false);

impl Faults {
    /// The faults `set` asks for when `enabled`; none otherwise.
    pub fn of(enabled: bool, set: &PolicySnapshot) -> Self {
        if !enabled {
            return Self::default();
        }
        let by_policy = set
            .policies
            .iter()
            .filter_map(|p| {
                let kind = match p.metadata.annotations.as_ref()?.get(TEST_FAULT)?.as_str() {
                    "panic" => Kind::Panic,
                    "hang" => Kind::Hang,
                    "abort-before-publish" => Kind::AbortBeforePublish,
                    "hang-before-save" => Kind::HangBeforeSave,
                    _ => return None,
                };
                Some((p.id(), kind))
            })
            .collect();
        Self { by_policy }
    }

    /// What the panic boundary runs with the policies it decides: a panic, or a hang,
    /// for each policy that asks for one.
    pub fn in_decision(&self) -> Option<Arc<Fault<'static>>> {
        if self.by_policy.is_empty() {
            return None;
        }
        let faults = self.by_policy.clone();
        Some(Arc::new(move |set: &[Policy]| {
            for p in set {
                match faults.get(&p.id) {
                    Some(Kind::Panic) => panic!("test fault in policy {}", p.id),
                    Some(Kind::Hang) => loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    },
                    Some(Kind::AbortBeforePublish | Kind::HangBeforeSave) | None => {}
                }
            }
        }))
    }

    /// Between deciding and saving: never returns, once per process, when `next`
    /// changes the answers of a policy that asks for it.
    pub async fn before_save(&self, before: &Decision, next: &Decision) {
        if self.hit(Kind::HangBeforeSave, before, next)
            && !HUNG_BEFORE_SAVE.swap(true, Ordering::Relaxed)
        {
            tracing::error!("test fault: the leader stops between deciding and saving a decision");
            std::future::pending::<()>().await;
        }
    }

    /// Between saving and publishing: aborts the process when `next` changes the
    /// answers of a policy that asks for it.
    pub fn before_publish(&self, before: &Decision, next: &Decision) {
        if self.hit(Kind::AbortBeforePublish, before, next) {
            tracing::error!("test fault: aborting between saving and publishing a decision");
            std::process::abort();
        }
    }

    /// Whether a policy asking for `kind` changes its (non-empty) answers in `next`.
    fn hit(&self, kind: Kind, before: &Decision, next: &Decision) -> bool {
        self.by_policy.iter().any(|(id, k)| {
            let was = before.policies.get(id).map(|p| &p.answers);
            *k == kind
                && was.is_some_and(|b| !b.is_empty())
                && was != next.policies.get(id).map(|p| &p.answers)
        })
    }
}
