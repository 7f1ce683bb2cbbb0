//! `MemberCluster`: one per member cluster that serves traffic for global names.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How Lifeline reaches a member cluster and how it finds the addresses to hand out.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "lifeline.dev",
    version = "v1alpha1",
    kind = "MemberCluster",
    plural = "memberclusters",
    singular = "membercluster",
    shortname = "mc",
    category = "lifeline",
    status = "MemberClusterStatus",
    printcolumn = r#"{"name":"Region","type":"string","jsonPath":".spec.region"}"#,
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".spec.zone","priority":1}"#,
    printcolumn = r#"{"name":"Control Plane","type":"string","jsonPath":".status.controlPlane"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.addressSource != 'Static' || (has(self.addresses) && size(self.addresses) > 0)").message("addresses must list at least one address when addressSource is Static").field_path(".addresses"))]
#[x_kube(validation = Rule::new("self.addressSource == 'Static' || has(self.kubeconfigSecretRef) || has(self.kubeconfigPath)").message("addressSource LoadBalancer or EndpointSlice needs API access: set kubeconfigSecretRef or kubeconfigPath").field_path(".kubeconfigSecretRef"))]
#[x_kube(validation = Rule::new("!(has(self.kubeconfigSecretRef) && has(self.kubeconfigPath))").message("set either kubeconfigSecretRef or kubeconfigPath, not both").field_path(".kubeconfigPath"))]
pub struct MemberClusterSpec {
    /// Region label used by `Geo` policies, e.g. `eu-west`.
    #[schemars(length(min = 1, max = 63))]
    pub region: String,
    /// Optional availability-zone label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Secret in the management cluster holding a kubeconfig for this cluster's API.
    /// Absent for a static cluster whose addresses are listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<SecretKeyRef>,
    /// Path of a kubeconfig file, for the `files` policy source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_path: Option<String>,
    /// Client-side budget for requests to this cluster's API server.
    #[serde(default)]
    pub api_budget: ApiBudget,
    /// Where the addresses handed to clients come from.
    #[serde(default)]
    pub address_source: AddressSource,
    /// Fixed addresses (IPv4 or IPv6); required when `addressSource` is `Static`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = lifeline_model::limits::CLUSTER_ADDRESSES_MAX))]
    pub addresses: Vec<String>,
}

/// A key of a Secret.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Secret namespace; defaults to Lifeline's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Key inside the Secret's data.
    #[serde(default = "default_kubeconfig_key")]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".to_owned()
}

/// Client-side token bucket toward one API server. The defaults are deliberately
/// small: Lifeline must never be the load that saturates an API server.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiBudget {
    /// Sustained requests per second.
    #[serde(default = "default_qps")]
    #[schemars(range(min = 0.01, max = 100.0))]
    pub qps: f64,
    /// Requests allowed in a burst.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 1000))]
    pub burst: u32,
}

impl Default for ApiBudget {
    fn default() -> Self {
        Self {
            qps: default_qps(),
            burst: default_burst(),
        }
    }
}

fn default_qps() -> f64 {
    2.0
}
fn default_burst() -> u32 {
    5
}

/// Where the addresses clients should get are found.
#[derive(JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddressSource {
    /// The Service's `status.loadBalancer.ingress` IPs.
    #[default]
    LoadBalancer,
    /// The ready addresses of the Service's EndpointSlices.
    EndpointSlice,
    /// The `addresses` listed in this spec (no API access needed).
    Static,
}

/// Observed state of a member cluster.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberClusterStatus {
    /// `Reachable`, `Unreachable` or `Unknown`: the control plane only, never target health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlaneState>,
    /// When `controlPlane` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// Last successful response from the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<Time>,
    /// Number of watch streams currently open (at most two).
    #[serde(default)]
    pub watches_open: u32,
    /// API requests made to this cluster since the leader started.
    #[serde(default)]
    pub api_requests: u64,
    /// Standard conditions (`Ready`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Reachability of a member cluster's API server.
#[derive(JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlPlaneState {
    Reachable,
    Unreachable,
    Unknown,
}
