//! When a policy change is held, and how a held change is named: the rule, with no
//! state of its own.

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::Hasher,
    time::SystemTime,
};

use lifeline_crds::document::PolicySnapshot;
use lifeline_model::{hold::PolicyHold, name::canonical};

/// Hostname → policies serving it.
fn hostnames(set: &PolicySnapshot) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in &set.policies {
        out.entry(canonical(&p.spec.hostname))
            .or_default()
            .push(p.id());
    }
    out
}

/// The hold `incoming` calls for when it replaces `current`, or `None` when it may be
/// applied now. `max_share` is the share of served names one change may remove.
pub(super) fn check(
    current: &PolicySnapshot,
    incoming: &PolicySnapshot,
    max_share: f64,
    now: SystemTime,
) -> Option<PolicyHold> {
    let before = hostnames(current);
    let after = hostnames(incoming);
    let removed: Vec<String> = before
        .keys()
        .filter(|h| !after.contains_key(*h))
        .cloned()
        .collect();
    let served = before.len();
    let everything = !removed.is_empty() && after.is_empty();
    let too_many = removed.len() >= 2 && removed.len() as f64 > max_share * served as f64;
    if !(everything || too_many) {
        return None;
    }
    let kept: BTreeSet<String> = incoming
        .policies
        .iter()
        .map(lifeline_crds::FailoverPolicy::id)
        .collect();
    let policies: Vec<String> = current
        .policies
        .iter()
        .map(lifeline_crds::FailoverPolicy::id)
        .filter(|id| !kept.contains(id))
        .collect();
    let reason = if everything {
        format!("the new policy set serves no name; it would remove all {served}")
    } else {
        format!(
            "the new policy set would stop serving {} of {served} names (more than {:.0}%)",
            removed.len(),
            max_share * 100.0
        )
    };
    Some(PolicyHold {
        fingerprint: fingerprint(incoming),
        removed,
        policies,
        served,
        reason,
        since: now,
    })
}

/// A short, stable identity of a policy set's content: the specs and names of its
/// documents, not their metadata, so a relist of the same objects keeps it.
pub(in crate::leader) fn fingerprint(set: &PolicySnapshot) -> String {
    let mut h = lifeline_dns::zone::Fnv::default();
    let mut feed = |v: serde_json::Value| h.write(v.to_string().as_bytes());
    for p in &set.policies {
        feed(serde_json::json!([p.id(), p.spec]));
    }
    for c in &set.clusters {
        feed(serde_json::json!([c.metadata.name, c.spec]));
    }
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeline_crds::FailoverPolicy;

    fn set(names: &[&str]) -> PolicySnapshot {
        PolicySnapshot {
            policies: names
                .iter()
                .map(|n| {
                    serde_json::from_value::<FailoverPolicy>(serde_json::json!({
                        "apiVersion": "lifeline.dev/v1alpha1", "kind": "FailoverPolicy",
                        "metadata": {"name": n, "namespace": "shop"},
                        "spec": {"hostname": format!("{n}.global.example.com"), "targets": [{"cluster": "a"}]},
                    }))
                    .unwrap()
                })
                .collect(),
            clusters: Vec::new(),
        }
    }

    #[test]
    fn removing_everything_or_more_than_the_share_is_held() {
        let now = SystemTime::now();
        let four = set(&["a", "b", "c", "d"]);
        let none = check(&four, &set(&[]), 0.25, now).expect("held");
        assert_eq!(none.removed.len(), 4);
        assert!(none.reason.contains("serves no name"), "{}", none.reason);
        let half = check(&four, &set(&["a", "b"]), 0.25, now).expect("held");
        assert_eq!(half.policies, ["shop/c", "shop/d"]);
        // One at a time stays immediate, even past the share.
        assert_eq!(check(&four, &set(&["a", "b", "c"]), 0.25, now), None);
        assert_eq!(check(&set(&["a", "b"]), &set(&["a"]), 0.25, now), None);
        // The last name is "everything".
        assert!(check(&set(&["a"]), &set(&[]), 0.25, now).is_some());
        // Additions and renames within the share are fine.
        assert_eq!(
            check(&four, &set(&["a", "b", "c", "e", "f"]), 0.25, now),
            None
        );
        // Share 1 holds only "everything".
        assert_eq!(check(&four, &set(&["a"]), 1.0, now), None);
    }

    #[test]
    fn the_fingerprint_follows_content_not_metadata() {
        let a = set(&["a", "b"]);
        let mut relisted = a.clone();
        relisted.policies[0].metadata.resource_version = Some("99".into());
        assert_eq!(fingerprint(&a), fingerprint(&relisted));
        let mut edited = a.clone();
        edited.policies[0].spec.ttl = 5;
        assert_ne!(fingerprint(&a), fingerprint(&edited));
    }
}
