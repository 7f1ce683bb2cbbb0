//! Lifeline's Kubernetes API: group `lifeline.dev`, version `v1alpha1`.
//!
//! ```text
//!  MemberCluster (cluster-scoped, `mc`)        FailoverPolicy (namespaced, `fp`)
//!  ├─ region / zone                            ├─ hostname, ttl, recordTypes
//!  ├─ kubeconfigSecretRef | kubeconfigPath     ├─ service (name, namespace, portName)
//!  ├─ apiBudget (qps, burst)                   ├─ targets[cluster, priority, weight]
//!  └─ addressSource + addresses                ├─ strategy, healthCheck
//!                                              ├─ whenAllUnhealthy, onSourceUnavailable
//!                                              └─ failback (holdDown, rampDuration)
//! ```
//!
//! The same documents are accepted as CRs or as YAML files. Validation lives twice,
//! on purpose: in the CRD schema (OpenAPI ranges, enums and CEL rules, enforced by the
//! API server) and in [`validate`], which mirrors those rules for files and for CRs that
//! reached us from an API server with an older schema, and reports every problem with
//! its field path.

#![forbid(unsafe_code)]

pub mod document;
mod failover_policy;
mod member_cluster;
pub mod validate;

pub use failover_policy::*;
pub use lifeline_model::duration::{DURATION_PATTERN, Duration, parse_duration};
pub use member_cluster::*;

use kube::CustomResourceExt;

/// The API group of every Lifeline resource.
pub const GROUP: &str = "lifeline.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of Lifeline documents.
pub const API_VERSION: &str = "lifeline.dev/v1alpha1";

/// Each CRD with the file name it is committed under in `crds/`.
pub fn crd_files() -> Vec<(&'static str, String)> {
    vec![
        (
            "failoverpolicies.lifeline.dev.yaml",
            crd_yaml(&FailoverPolicy::crd()),
        ),
        (
            "memberclusters.lifeline.dev.yaml",
            crd_yaml(&MemberCluster::crd()),
        ),
    ]
}

/// All CRDs as one multi-document YAML stream, as `lifeline crds` prints it.
pub fn crds_yaml() -> String {
    crd_files()
        .into_iter()
        .map(|(_, yaml)| yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

fn crd_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    // Serialising a CRD we built ourselves cannot fail; a failure is a programming error.
    serde_saphyr::to_string(crd).expect("CRD serialises to YAML")
}
