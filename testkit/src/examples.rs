//! The committed example documents in `deploy/examples`, decoded and checked as a set
//! the way `lifeline validate` checks policy files given without a configuration.

use std::path::PathBuf;

use lifeline_crds::{
    document::{self, Document, PolicySnapshot},
    validate,
};

/// `deploy/examples` in this checkout.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

/// The MemberClusters of `clusters.yaml` and the FailoverPolicies of `policies.yaml`,
/// with every problem found in them, each document's and the set's (empty when valid).
pub fn policies() -> (PolicySnapshot, Vec<String>) {
    let mut snapshot = PolicySnapshot::default();
    let mut problems = Vec::new();
    for file in ["clusters.yaml", "policies.yaml"] {
        let path = dir().join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let values = document::parse_yaml_stream(&text)
            .unwrap_or_else(|p| panic!("{}: {p}", path.display()));
        for value in values {
            let (doc, found) = document::decode_document(value);
            problems.extend(found.iter().map(|p| format!("{file}: {p}")));
            match doc {
                Some(Document::FailoverPolicy(p)) => snapshot.policies.push(p),
                Some(Document::MemberCluster(c)) => snapshot.clusters.push(c),
                None => {}
            }
        }
    }
    let policies: Vec<_> = snapshot.policies.iter().collect();
    let clusters: Vec<_> = snapshot.clusters.iter().collect();
    problems.extend(
        validate::cross_check(&policies, &clusters, &[])
            .into_iter()
            .map(|p| format!("the set: {}", p.problem)),
    );
    (snapshot, problems)
}
