//! What the engine takes: policies and their targets, and the signals about each target.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use lifeline_model::Strategy;
use serde::{Deserialize, Serialize};

/// `namespace/name` of a FailoverPolicy.
pub type PolicyId = String;

/// A policy as the engine sees it: validated, with addresses resolved.
#[derive(Clone, Debug, PartialEq, Hash)]
pub struct Policy {
    pub id: PolicyId,
    pub hostname: String,
    pub ttl: u32,
    /// Addresses per reply, at most; the DNS server rotates through the rest.
    pub max_answers: u16,
    pub strategy: Strategy,
    pub targets: Vec<TargetSpec>,
    /// Consecutive failures that make a target unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive successes that make an unhealthy target recover.
    pub healthy_threshold: u32,
    pub when_all_unhealthy: WhenAllUnhealthy,
    pub on_source_unavailable: OnSourceUnavailable,
    pub hold_down: Duration,
    pub ramp_duration: Duration,
    pub ramp_steps: u32,
}

/// One member cluster that can answer for a policy.
#[derive(Clone, Debug, PartialEq, Hash)]
pub struct TargetSpec {
    /// Shared text: every decision copies it into answers and state maps.
    pub cluster: Arc<str>,
    pub region: Arc<str>,
    pub priority: u32,
    pub weight: u32,
    pub addresses: Vec<IpAddr>,
}

/// What to answer when no target is eligible.
#[derive(Clone, Debug, PartialEq, Hash)]
pub enum WhenAllUnhealthy {
    ServeAll,
    LastKnownGood,
    Empty,
    Fallback(Vec<IpAddr>),
}

/// What to do while a target's signal source is unavailable.
#[derive(Clone, Copy, Debug, PartialEq, Hash)]
pub enum OnSourceUnavailable {
    Freeze,
    TreatAsUnhealthy { max_stale: Duration },
}

/// Identifies a target: a policy and one of its clusters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TargetKey {
    pub policy: PolicyId,
    pub cluster: String,
}

impl TargetKey {
    pub fn new(policy: impl Into<String>, cluster: impl Into<String>) -> Self {
        Self {
            policy: policy.into(),
            cluster: cluster.into(),
        }
    }
}

/// New evidence about targets since the previous decision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Signals {
    pub targets: BTreeMap<TargetKey, TargetSignal>,
}

/// Evidence about one target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetSignal {
    /// Probe (or readiness-hint) results since the previous decision, oldest first.
    pub observations: Vec<Observation>,
    /// Whether the source of this target's evidence is currently reachable.
    pub source: SourceState,
}

/// One health observation.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub at: SystemTime,
    pub ok: bool,
    pub detail: String,
}

/// Reachability of the source of a target's evidence (its prober, or its cluster's API
/// when health comes from readiness hints).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum SourceState {
    #[default]
    Available,
    Unavailable {
        since: SystemTime,
    },
}
