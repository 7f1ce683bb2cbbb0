//! `FailoverPolicy`: one per global name; how its answers are chosen among member clusters.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, ObjectMeta, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;
use lifeline_model::limits;

/// Desired steering for one global hostname.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "lifeline.dev",
    version = "v1alpha1",
    kind = "FailoverPolicy",
    plural = "failoverpolicies",
    singular = "failoverpolicy",
    shortname = "fp",
    category = "lifeline",
    namespaced,
    status = "FailoverPolicyStatus",
    printcolumn = r#"{"name":"Hostname","type":"string","jsonPath":".spec.hostname"}"#,
    printcolumn = r#"{"name":"Strategy","type":"string","jsonPath":".spec.strategy"}"#,
    printcolumn = r#"{"name":"Answer","type":"string","jsonPath":".status.answerSummary"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.targets) != has(self.targetSelector)").message("exactly one of targets or targetSelector must be set").field_path(".targets"))]
pub struct FailoverPolicySpec {
    /// The global name answered, e.g. `checkout.global.example.com`; must fall inside a
    /// zone the DNS shim serves.
    #[schemars(length(min = 1, max = 253))]
    pub hostname: String,
    /// TTL of the answers, in seconds.
    #[serde(default = "default_ttl")]
    #[schemars(range(min = limits::TTL_MIN, max = limits::TTL_MAX))]
    pub ttl: u32,
    /// Addresses in one reply, at most. Each reply carries a different subset, chosen
    /// by weight and rotation, so every address still gets its share of clients.
    #[serde(default = "default_max_answers")]
    #[schemars(range(min = limits::MAX_ANSWERS_MIN, max = limits::MAX_ANSWERS_MAX))]
    pub max_answers: u16,
    /// Record types published; SRV needs `service.portName`.
    #[serde(default = "default_record_types")]
    #[schemars(length(min = 1, max = 3))]
    pub record_types: Vec<RecordType>,
    /// The Service to find in each member cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// Member clusters that can serve this name. Exactly one of `targets` and
    /// `targetSelector` is set. A list keyed by `cluster`: the API server itself refuses
    /// a cluster named twice, at the second entry's index, and server-side apply merges
    /// entries by cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::TARGETS_MAX))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["cluster"]))]
    pub targets: Option<Vec<Target>>,
    /// Label selector over MemberClusters; every match becomes a target with priority 0
    /// and weight 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_selector: Option<LabelSelector>,
    /// How answers are chosen among healthy targets.
    #[serde(default)]
    pub strategy: Strategy,
    /// Data-plane health check of every target address. Without one, health comes
    /// from control-plane readiness hints only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// What to answer when no target is healthy.
    #[serde(default)]
    pub when_all_unhealthy: WhenAllUnhealthy,
    /// What to do when a target's source of truth (its cluster's API) is unreachable.
    #[serde(default)]
    pub on_source_unavailable: OnSourceUnavailable,
    /// Pacing of traffic returning to a recovered target.
    #[serde(default)]
    pub failback: Failback,
}

fn default_ttl() -> u32 {
    30
}

fn default_max_answers() -> u16 {
    limits::MAX_ANSWERS_DEFAULT
}

fn default_record_types() -> Vec<RecordType> {
    vec![RecordType::A]
}

/// DNS record types a policy can publish.
#[derive(
    JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum RecordType {
    A,
    #[serde(rename = "AAAA")]
    Aaaa,
    #[serde(rename = "SRV")]
    Srv,
}

/// A Service in each member cluster.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRef {
    /// Service name.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Namespace; defaults to the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Named port published in SRV records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
}

/// One member cluster serving this name.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    /// Name of a MemberCluster.
    #[schemars(length(min = 1, max = 253))]
    pub cluster: String,
    /// Tier: `Failover` answers with the lowest tier that has a healthy target.
    #[serde(default)]
    #[schemars(range(min = 0, max = limits::PRIORITY_MAX))]
    pub priority: u32,
    /// Relative share of answers within its tier (`Weighted`, ramps). 0 keeps the
    /// target as a standby that only serves when nothing else can.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = limits::WEIGHT_MAX))]
    pub weight: u32,
    /// Fixed addresses for this target, overriding the cluster's address source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::ADDRESSES_MAX))]
    pub addresses: Vec<String>,
}

fn default_weight() -> u32 {
    100
}

pub use lifeline_model::Strategy;

/// A data-plane health check. Exactly one of `http` and `tcp` is set.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.http) != has(self.tcp)").message("exactly one of http or tcp must be set"))]
#[x_kube(validation = Rule::new("duration(self.timeout) <= duration(self.interval)").message("timeout must not exceed interval").field_path(".timeout"))]
#[x_kube(validation = Rule::new("duration(self.interval) >= duration('100ms') && duration(self.interval) <= duration('1h')").message("interval must be between 100ms and 1h").field_path(".interval"))]
#[x_kube(validation = Rule::new("duration(self.fastInterval) >= duration('100ms') && duration(self.fastInterval) <= duration(self.interval)").message("fastInterval must be at least 100ms and not exceed interval").field_path(".fastInterval"))]
pub struct HealthCheck {
    /// HTTP or HTTPS GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    /// TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    /// Time between probes of one target.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// Time between probes of a target whose last result contradicts its confirmed
    /// health, until the thresholds confirm the change or the old state returns (HAProxy's
    /// `fastinter`): one failure on a 10 s interval is re-checked at once, not 10 s later.
    #[serde(default = "default_fast_interval")]
    pub fast_interval: Duration,
    /// Time a probe may take before it counts as failed.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Consecutive failures before a healthy target becomes unhealthy.
    #[serde(default = "default_unhealthy_threshold")]
    #[schemars(range(min = limits::THRESHOLD_MIN, max = limits::THRESHOLD_MAX))]
    pub unhealthy_threshold: u32,
    /// Consecutive successes before an unhealthy target becomes healthy.
    #[serde(default = "default_healthy_threshold")]
    #[schemars(range(min = limits::THRESHOLD_MIN, max = limits::THRESHOLD_MAX))]
    pub healthy_threshold: u32,
}

fn default_interval() -> Duration {
    Duration::new("10s")
}
fn default_fast_interval() -> Duration {
    Duration::new(limits::PROBE_FAST_INTERVAL_DEFAULT_TEXT)
}
fn default_timeout() -> Duration {
    Duration::new("2s")
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_healthy_threshold() -> u32 {
    2
}

/// HTTP(S) GET probe.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCheck {
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: HttpScheme,
    /// Port on the target address.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
    /// Request path; starts with `/`.
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = 2048))]
    pub path: String,
    /// Host header (and TLS server name); defaults to the policy's hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Statuses that count as healthy.
    #[serde(default = "default_expected_status")]
    #[schemars(length(min = 1, max = limits::EXPECTED_STATUS_MAX))]
    pub expected_status: Vec<u16>,
    /// Skip TLS certificate verification (off by default).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

fn default_path() -> String {
    "/healthz".to_owned()
}
fn default_expected_status() -> Vec<u16> {
    vec![200]
}

/// URL scheme of an HTTP check.
#[derive(JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpScheme {
    #[default]
    Http,
    Https,
}

/// TCP connect probe.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpCheck {
    /// Port on the target address.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
}

/// Behaviour when no target is healthy.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.mode != 'Fallback' || (has(self.fallbackAddresses) && size(self.fallbackAddresses) > 0)").message("fallbackAddresses must list at least one address when mode is Fallback").field_path(".fallbackAddresses"))]
pub struct WhenAllUnhealthy {
    /// What to answer.
    #[serde(default)]
    pub mode: AllUnhealthyMode,
    /// Addresses answered in `Fallback` mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::ADDRESSES_MAX))]
    pub fallback_addresses: Vec<String>,
}

/// What to answer when no target is healthy.
#[derive(JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllUnhealthyMode {
    /// Fail open: answer every target (a broken health check must not black-hole a name).
    #[default]
    ServeAll,
    /// Keep the last answer that had healthy targets.
    LastKnownGood,
    /// Answer nothing (NODATA).
    Empty,
    /// Answer `fallbackAddresses`.
    Fallback,
}

/// Behaviour when the source of truth for a target goes quiet.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("duration(self.maxStale) <= duration('168h')").message("maxStale must be at most 168h (7 days)").field_path(".maxStale"))]
pub struct OnSourceUnavailable {
    /// `Freeze` keeps the last known state; `TreatAsUnhealthy` gives up after `maxStale`.
    #[serde(default)]
    pub mode: SourceUnavailableMode,
    /// How long state may be stale before `TreatAsUnhealthy` applies.
    #[serde(default = "default_max_stale")]
    pub max_stale: Duration,
}

impl Default for OnSourceUnavailable {
    fn default() -> Self {
        Self {
            mode: SourceUnavailableMode::default(),
            max_stale: default_max_stale(),
        }
    }
}

fn default_max_stale() -> Duration {
    Duration::new("5m")
}

/// See [`OnSourceUnavailable`].
#[derive(JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceUnavailableMode {
    #[default]
    Freeze,
    TreatAsUnhealthy,
}

/// Pacing of failback to a recovered target.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("duration(self.holdDown) <= duration('168h')").message("holdDown must be at most 168h (7 days)").field_path(".holdDown"))]
#[x_kube(validation = Rule::new("duration(self.rampDuration) <= duration('168h')").message("rampDuration must be at most 168h (7 days)").field_path(".rampDuration"))]
pub struct Failback {
    /// How long a recovered target must stay healthy before it gets traffic again.
    #[serde(default = "default_hold_down")]
    pub hold_down: Duration,
    /// Time over which its share ramps from the first step to full.
    #[serde(default = "default_ramp_duration")]
    pub ramp_duration: Duration,
    /// Number of equal steps of the ramp.
    #[serde(default = "default_ramp_steps")]
    #[schemars(range(min = limits::RAMP_STEPS_MIN, max = limits::RAMP_STEPS_MAX))]
    pub ramp_steps: u32,
}

impl Default for Failback {
    fn default() -> Self {
        Self {
            hold_down: default_hold_down(),
            ramp_duration: default_ramp_duration(),
            ramp_steps: default_ramp_steps(),
        }
    }
}

fn default_hold_down() -> Duration {
    Duration::new("60s")
}
fn default_ramp_duration() -> Duration {
    Duration::new("2m")
}
fn default_ramp_steps() -> u32 {
    4
}

/// Where a policy that names no namespace lives, as the API server defaults it.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The namespace `metadata` names, [`DEFAULT_NAMESPACE`] when it names none.
pub fn namespace_of(metadata: &ObjectMeta) -> &str {
    metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
}

impl FailoverPolicy {
    /// `namespace/name`: how a policy is named everywhere (decisions, status,
    /// overrides, the store), the namespace defaulted as the API server does.
    pub fn id(&self) -> String {
        let name = self.metadata.name.as_deref().unwrap_or_default();
        format!("{}/{name}", namespace_of(&self.metadata))
    }

    /// The policy's namespace, defaulted.
    pub fn namespace_or_default(&self) -> &str {
        namespace_of(&self.metadata)
    }
}

/// Observed state of a policy, written by the leader.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailoverPolicyStatus {
    /// Per-target health.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetStatus>,
    /// Addresses currently answered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<String>,
    /// `answers` as one short string for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_summary: Option<String>,
    /// Revision of the decision that produced `answers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_revision: Option<u64>,
    /// When that decision was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Time>,
    /// `Ready` (False with reason `HostnameConflict`, `NamespaceNotAllowed`,
    /// `HostnameOutsideZones`, `InvalidSpec` or `Quarantined` when the policy is not
    /// served as written), `Degraded`, `Quarantined` (deciding it fails; its last answers
    /// stay), `RemovalHeld` (a policy change that would remove it is held),
    /// `ResolvedRefs` (False: a target names an unknown MemberCluster),
    /// `SystemicFailureSuspected`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Health of one target as the engine sees it.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    pub cluster: String,
    pub state: TargetState,
    /// Why it is in that state, in a few words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// Extra detail (e.g. the last probe error), keyed by address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

/// Health state of a target.
#[derive(JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetState {
    Healthy,
    Unhealthy,
    Unknown,
    Draining,
    Recovering,
}
