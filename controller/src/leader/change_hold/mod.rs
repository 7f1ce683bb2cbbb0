//! The change hold: a new policy set that would stop serving many names at once is held,
//! and the set in force keeps being served, until an operator releases it or a later
//! change supersedes it.
//!
//! Such a change rarely means what it says. A file edited down to its MemberClusters, a
//! CR relist that comes back empty, a deleted CRD, a wrong namespace or label filter all
//! look like "remove every name", and resolvers would cache the NXDOMAINs that follow.
//! Holding is the safe side of the trade: the cost is that a deliberate mass removal
//! needs one extra command. Removing one name at a time is never held (unless it is the
//! last one).

use std::time::{Duration, SystemTime};

use lifeline_crds::document::PolicySnapshot;
use lifeline_model::hold::PolicyRelease;
use tracing::{debug, info, warn};

use super::term::LeaderTerm;

pub(super) mod rule;

use rule::check;

impl LeaderTerm<'_> {
    /// Puts the term's first set in force: `current`, unless it is a sweeping change
    /// from `last_good`, which then stays in force with `current` held.
    pub async fn put_first_set(
        &mut self,
        current: PolicySnapshot,
        last_good: Option<PolicySnapshot>,
    ) {
        let share = self.shared.config.policy_changes.max_removed_share;
        match last_good {
            Some(last) if check(&last, &current, share, SystemTime::now()).is_some() => {
                self.adopt(last).await;
                self.consider(current).await;
            }
            _ => {
                self.adopt(current).await;
                self.clear_hold().await;
            }
        }
    }

    /// Puts `incoming` in force, unless it would stop serving too many names at once:
    /// then it is held (the set in force stays) and reported, until it is released or
    /// a later change supersedes it.
    pub async fn consider(&mut self, incoming: PolicySnapshot) {
        let share = self.shared.config.policy_changes.max_removed_share;
        let Some(mut hold) = check(&self.current, &incoming, share, SystemTime::now()) else {
            self.clear_hold().await;
            self.adopt(incoming).await;
            return;
        };
        if let Some((old, _)) = &self.held {
            if old.fingerprint == hold.fingerprint {
                return;
            }
            hold.since = old.since;
        }
        warn!(
            fingerprint = %hold.fingerprint,
            removed = hold.removed.len(),
            served = hold.served,
            names = ?hold.removed.iter().take(10).collect::<Vec<_>>(),
            reason = %hold.reason,
            "policy change held: the set in force keeps being served; release it with `lifeline ctl release {}`",
            hold.fingerprint
        );
        self.shared
            .metrics
            .held_names
            .set(hold.removed.len() as i64);
        if let Err(e) = self.writer.save_policy_hold(Some(&hold)).await {
            warn!(error = %e, "cannot record the held policy change");
        }
        if let Some(task) = &self.status {
            task.record_held(&hold, &self.current.policies);
        }
        self.held = Some((hold, incoming));
    }

    /// Forgets a held change (superseded, released, or none at the start of a term).
    pub async fn clear_hold(&mut self) {
        let had = self.held.take();
        self.shared.metrics.held_names.set(0);
        let stored = self.store.policy_hold().await.ok().flatten();
        if had.is_some() || stored.is_some() {
            if let Some((h, _)) = &had {
                info!(fingerprint = %h.fingerprint, "held policy change no longer held");
            }
            if let Err(e) = self.writer.save_policy_hold(None).await {
                warn!(error = %e, "cannot clear the held policy change");
            }
        }
    }

    /// Applies the held change once an operator released it (by its fingerprint).
    pub async fn check_release(&mut self) {
        let Some((hold, _)) = &self.held else {
            return;
        };
        // A release applies to this hold, not to an earlier one of the same content that
        // was released and later undone (a minute allows for clock skew with `ctl`).
        let current = |r: &PolicyRelease| {
            r.fingerprint == hold.fingerprint && r.at + Duration::from_secs(60) >= hold.since
        };
        let release = match self.store.policy_release().await {
            Ok(Some(r)) if current(&r) => r,
            Ok(_) => return,
            Err(e) => {
                debug!(error = %e, "cannot read policy change releases");
                return;
            }
        };
        let Some((hold, incoming)) = self.held.take() else {
            return;
        };
        info!(
            fingerprint = %hold.fingerprint,
            by = %release.by,
            reason = %release.reason,
            removed = hold.removed.len(),
            "held policy change released; applying it"
        );
        self.clear_hold().await;
        self.adopt(incoming).await;
    }
}
