//! Operator overrides: the record the controller's engine obeys, and the part of it the
//! shim can apply on its own when no leader is running (break-glass).
//!
//! ```text
//!  lifeline ctl --etcd drain eu-west-1 ─► {prefix}/overrides/{id}
//!        │                                   │
//!        ▼ (leader running)                  ▼ (every shim, leader or not)
//!  engine::decide honours it:          apply(): drop / pin / reweight that cluster's
//!  health-aware, per policy            targets in the served snapshot, never emptying
//!                                      a name
//! ```
//!
//! The shim only sees what the leader last published: the answer, and the healthy
//! tiers held in reserve behind it (`AddressSet::standby`). On its own it can take a
//! cluster out (drain; draining the whole answer moves it to the next tier that was
//! healthy), narrow a name to a cluster in its answer or in reserve (pin), or change a
//! weight. It cannot bring in a target the leader saw unhealthy, it never empties a
//! name, and it applies only cluster-wide overrides (a policy-scoped one needs the
//! leader, which knows which names a policy owns). Applying an override the leader
//! already applied changes nothing, so both layers can act at once.

use std::{borrow::Cow, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::records::{NameRecords, Target, ZoneSnapshot};

/// An operator override, with expiry and an audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    pub id: String,
    pub cluster: String,
    /// Limit to one policy (`namespace/name`); all policies targeting the cluster when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub action: OverrideAction,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: SystemTime,
    #[serde(with = "crate::time::rfc3339")]
    pub expires_at: SystemTime,
    pub author: String,
    pub reason: String,
}

impl Override {
    /// An expired override has no effect.
    pub fn is_active(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }

    /// True when it applies to `cluster` as a target of `policy`.
    pub fn applies_to(&self, policy: &str, cluster: &str) -> bool {
        self.cluster == cluster && self.policy.as_deref().is_none_or(|p| p == policy)
    }
}

/// What an override does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type", content = "weight")]
pub enum OverrideAction {
    /// Take the cluster out of answers.
    Drain,
    /// Answer only the pinned cluster(s), whatever their health.
    Pin,
    /// Replace the cluster's weight.
    Weight(u32),
}

/// The snapshot with the active cluster-wide overrides applied; borrowed unchanged when
/// none applies. Weights are in the controller's scale (thousandths of a target weight).
pub fn apply<'a>(
    snapshot: &'a ZoneSnapshot,
    overrides: &[Override],
    now: SystemTime,
) -> Cow<'a, ZoneSnapshot> {
    apply_reporting(snapshot, overrides, now).snapshot
}

/// What [`apply_reporting`] made of a snapshot.
#[derive(Debug)]
pub struct Applied<'a> {
    pub snapshot: Cow<'a, ZoneSnapshot>,
    /// Names a drain would have left with no target at all (none in the answer, none
    /// in reserve): they keep the answer they had.
    pub kept: Vec<String>,
}

/// [`apply`], and the names whose drain was not applied because nothing would be left.
pub fn apply_reporting<'a>(
    snapshot: &'a ZoneSnapshot,
    overrides: &[Override],
    now: SystemTime,
) -> Applied<'a> {
    let active: Vec<&Override> = overrides
        .iter()
        .filter(|o| o.policy.is_none() && o.is_active(now))
        .collect();
    if active.is_empty() {
        return Applied {
            snapshot: Cow::Borrowed(snapshot),
            kept: Vec::new(),
        };
    }
    let mut out = snapshot.clone();
    let mut kept = Vec::new();
    for (name, records) in out.names.iter_mut() {
        if !apply_name(records, &active) {
            kept.push(name.clone());
        }
    }
    let snapshot = if out == *snapshot {
        Cow::Borrowed(snapshot)
    } else {
        Cow::Owned(out)
    };
    Applied { snapshot, kept }
}

/// Applies the overrides to one name, as the engine would with the health the leader
/// last published: pins narrow the answer to the pinned clusters (taken from reserve
/// when none is answered), drains take clusters out (and move the answer to the first
/// tier in reserve with a target left when none is), weights replace weights. False
/// when a drain would have left nothing: the answer stays as it was.
fn apply_name(records: &mut NameRecords, active: &[&Override]) -> bool {
    let Some(set) = records.address.as_mut() else {
        return true;
    };
    let has = |t: &Target, action: fn(&OverrideAction) -> bool| {
        active
            .iter()
            .any(|o| o.cluster == t.cluster && action(&o.action))
    };
    let pinned = |t: &Target| has(t, |a| *a == OverrideAction::Pin);
    let drained = |t: &Target| has(t, |a| *a == OverrideAction::Drain);
    // Pins: keep only pinned clusters, from the answer or else the first tier in
    // reserve that has one.
    if set.targets.iter().any(pinned) {
        set.targets.retain(pinned);
    } else if let Some(tier) = set.standby.iter().find(|tier| tier.iter().any(pinned)) {
        set.targets = tier.iter().filter(|t| pinned(t)).cloned().collect();
    }
    // Drains: take the cluster out; when that empties the answer, the first tier in
    // reserve with a target left answers; when none has, nothing changes.
    let mut applied = true;
    if set.targets.iter().any(drained) {
        if set.targets.iter().any(|t| !drained(t)) {
            set.targets.retain(|t| !drained(t));
        } else {
            let next = set.standby.iter().find_map(|tier| {
                let left: Vec<Target> = tier.iter().filter(|t| !drained(t)).cloned().collect();
                (!left.is_empty()).then_some(left)
            });
            match next {
                Some(left) => set.targets = left,
                None => applied = false,
            }
        }
    }
    for t in &mut set.targets {
        let weight = active.iter().rev().find_map(|o| match o.action {
            OverrideAction::Weight(w) if o.cluster == t.cluster => Some(w),
            _ => None,
        });
        if let Some(w) = weight {
            // In the controller's scale, and ramped as the leader ramps it.
            let share = t.share.map_or(1000, |s| s.min(1000));
            t.weight = w.saturating_mul(share);
        }
    }
    applied
}

/// One change to the overrides, for `lifeline ctl overrides` and the logs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    #[serde(with = "crate::time::rfc3339")]
    pub at: SystemTime,
    /// `set` or `cleared`.
    pub action: String,
    pub by: String,
    pub r#override: Override,
}

impl AuditEntry {
    /// `by` set `o` at `at`.
    pub fn set(o: Override, by: &str, at: SystemTime) -> Self {
        Self::of("set", o, by, at)
    }

    /// `by` cleared `o` at `at`.
    pub fn cleared(o: Override, by: &str, at: SystemTime) -> Self {
        Self::of("cleared", o, by, at)
    }

    fn of(action: &str, o: Override, by: &str, at: SystemTime) -> Self {
        Self {
            at,
            action: action.to_owned(),
            by: by.to_owned(),
            r#override: o,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::Duration};

    use super::*;
    use crate::records::AddressSet;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn snapshot() -> ZoneSnapshot {
        let target = |cluster: &str, last: u8| Target {
            address: IpAddr::from([127, 0, 0, last]),
            cluster: cluster.to_owned(),
            region: String::new(),
            weight: 100_000,
            share: None,
        };
        let mut s = ZoneSnapshot::empty("z.test", 1, now());
        s.names.insert(
            "web".to_owned(),
            NameRecords {
                address: Some(AddressSet {
                    ttl: 30,
                    targets: vec![target("a", 2), target("b", 3)],
                    max_answers: None,
                    geo: false,
                    standby: Vec::new(),
                }),
                ..NameRecords::default()
            },
        );
        s
    }

    fn ovr(cluster: &str, action: OverrideAction, expires_in: u64) -> Override {
        Override {
            id: format!("{cluster}-{action:?}"),
            cluster: cluster.to_owned(),
            policy: None,
            action,
            created_at: now(),
            expires_at: now() + Duration::from_secs(expires_in),
            author: "oncall".to_owned(),
            reason: "test".to_owned(),
        }
    }

    fn clusters(s: &ZoneSnapshot) -> Vec<(String, u32)> {
        s.names["web"]
            .address
            .as_ref()
            .unwrap()
            .targets
            .iter()
            .map(|t| (t.cluster.clone(), t.weight))
            .collect()
    }

    #[test]
    fn a_weight_override_on_a_replica_keeps_the_leaders_ramp() {
        let mut s = snapshot();
        // The leader ramps `a` back at a quarter of its weight.
        let set = s.names.get_mut("web").unwrap().address.as_mut().unwrap();
        set.targets[0].weight = 25_000;
        set.targets[0].share = Some(250);
        let out = apply(
            &s,
            &[
                ovr("a", OverrideAction::Weight(40), 60),
                ovr("b", OverrideAction::Weight(40), 60),
            ],
            now(),
        );
        assert_eq!(
            clusters(&out),
            [("a".to_owned(), 10_000), ("b".to_owned(), 40_000)],
            "the override replaces the weight, the ramp still scales it"
        );
    }

    #[test]
    fn a_drain_removes_the_cluster_but_never_empties_a_name() {
        let s = snapshot();
        let out = apply(&s, &[ovr("a", OverrideAction::Drain, 60)], now());
        assert_eq!(clusters(&out), [("b".to_owned(), 100_000)]);
        let both = [
            ovr("a", OverrideAction::Drain, 60),
            ovr("b", OverrideAction::Drain, 60),
        ];
        assert_eq!(
            clusters(&apply(&s, &both, now())).len(),
            2,
            "draining everything changes nothing"
        );
    }

    /// `web` answered by `a`, with `b` then `c` in reserve (a Failover policy).
    fn tiered() -> ZoneSnapshot {
        let mut s = snapshot();
        let set = s.names.get_mut("web").unwrap().address.as_mut().unwrap();
        let mut b = set.targets.pop().unwrap();
        let mut c = b.clone();
        c.cluster = "c".into();
        c.address = IpAddr::from([127, 0, 0, 4]);
        b.weight = 7_000;
        set.standby = vec![vec![b], vec![c]];
        s
    }

    #[test]
    fn draining_the_answered_tier_moves_the_answer_to_the_next_tier_in_reserve() {
        let s = tiered();
        let out = apply_reporting(&s, &[ovr("a", OverrideAction::Drain, 60)], now());
        assert_eq!(clusters(&out.snapshot), [("b".to_owned(), 7_000)]);
        assert!(out.kept.is_empty());
        // Drained too, the next tier in reserve answers.
        let both = [
            ovr("a", OverrideAction::Drain, 60),
            ovr("b", OverrideAction::Drain, 60),
        ];
        assert_eq!(
            clusters(&apply(&s, &both, now())),
            [("c".to_owned(), 100_000)]
        );
    }

    #[test]
    fn a_drain_that_would_leave_nothing_keeps_the_answer_and_says_so() {
        let s = tiered();
        let all = [
            ovr("a", OverrideAction::Drain, 60),
            ovr("b", OverrideAction::Drain, 60),
            ovr("c", OverrideAction::Drain, 60),
        ];
        let out = apply_reporting(&s, &all, now());
        assert_eq!(clusters(&out.snapshot), [("a".to_owned(), 100_000)]);
        assert_eq!(out.kept, ["web"]);
        // A drain of a cluster the name does not answer is no refusal.
        let out = apply_reporting(&s, &[ovr("zz", OverrideAction::Drain, 60)], now());
        assert!(out.kept.is_empty());
        assert!(matches!(out.snapshot, Cow::Borrowed(_)));
    }

    #[test]
    fn a_pin_of_a_cluster_in_reserve_answers_it() {
        let s = tiered();
        assert_eq!(
            clusters(&apply(&s, &[ovr("c", OverrideAction::Pin, 60)], now())),
            [("c".to_owned(), 100_000)]
        );
    }

    #[test]
    fn a_pin_keeps_only_that_cluster_when_it_is_answered() {
        let s = snapshot();
        assert_eq!(
            clusters(&apply(&s, &[ovr("b", OverrideAction::Pin, 60)], now())),
            [("b".to_owned(), 100_000)]
        );
        assert_eq!(
            clusters(&apply(&s, &[ovr("zz", OverrideAction::Pin, 60)], now())).len(),
            2
        );
    }

    #[test]
    fn weights_are_replaced_in_the_controllers_scale() {
        let s = snapshot();
        let out = apply(&s, &[ovr("a", OverrideAction::Weight(5), 60)], now());
        assert_eq!(
            clusters(&out),
            [("a".to_owned(), 5_000), ("b".to_owned(), 100_000)]
        );
    }

    #[test]
    fn expired_and_policy_scoped_overrides_are_ignored() {
        let s = snapshot();
        let expired = ovr("a", OverrideAction::Drain, 0);
        let mut scoped = ovr("a", OverrideAction::Drain, 60);
        scoped.policy = Some("shop/web".to_owned());
        assert!(matches!(
            apply(&s, &[expired, scoped], now()),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn overrides_round_trip_through_json_in_the_stored_shape() {
        let o = ovr("a", OverrideAction::Weight(7), 60);
        let text = serde_json::to_string(&o).unwrap();
        assert!(
            text.contains(r#""action":{"type":"weight","weight":7}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Override>(&text).unwrap(), o);
    }
}
