//! The cross-document checks applied to CRs: each policy is judged on its own, so one
//! conflicting CR cannot block the others (as one bad file blocks its whole set).

use std::collections::{BTreeMap, BTreeSet};

use lifeline_crds::{
    FailoverPolicy, MemberCluster,
    validate::{self, DocumentRef, SetReason, ZoneRule},
};
use tracing::warn;

/// The policies kept, and the problems found, by policy id: a policy is left out (a
/// hostname owned by an older policy, a zone it may not publish in) or served with the
/// problem reported (an unknown cluster).
pub(super) fn arbitrate(
    policies: Vec<FailoverPolicy>,
    clusters: &[MemberCluster],
    zones: &[ZoneRule],
) -> (Vec<FailoverPolicy>, BTreeMap<String, (SetReason, String)>) {
    let refs: Vec<&FailoverPolicy> = policies.iter().collect();
    let cluster_refs: Vec<&MemberCluster> = clusters.iter().collect();
    let mut excluded = BTreeSet::new();
    let mut problems = BTreeMap::new();
    for p in validate::cross_check(&refs, &cluster_refs, zones) {
        let DocumentRef::Policy(i) = p.document else {
            continue;
        };
        let id = policies[i].id();
        warn!(policy = %id, reason = p.reason.as_str(), problem = %p.problem, "policy not served as written");
        if p.reason.excludes() {
            excluded.insert(i);
        }
        problems
            .entry(id)
            .or_insert((p.reason, p.problem.to_string()));
    }
    let kept = policies
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !excluded.contains(i))
        .map(|(_, p)| p)
        .collect();
    (kept, problems)
}
