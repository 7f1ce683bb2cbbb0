//! What the engine gives: the decision, with each policy's answers and each target's
//! state.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::SystemTime};

use lifeline_model::Strategy;
use serde::{Deserialize, Serialize};

use crate::{Policy, PolicyId};

/// The engine's output, and its memory: the next call receives it as `previous`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Increases whenever any answer changes.
    pub revision: u64,
    /// When the answers last changed.
    #[serde(with = "opt_time_text", default)]
    pub changed_at: Option<SystemTime>,
    /// Shared between decisions: a policy nothing new touched keeps its entry as it
    /// was, not a copy.
    pub policies: BTreeMap<PolicyId, Arc<PolicyDecision>>,
    pub alarms: Vec<Alarm>,
}

/// The decision for one policy.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDecision {
    pub hostname: String,
    pub ttl: u32,
    /// Addresses per reply, at most (decisions stored before the field existed get
    /// the default).
    #[serde(default = "default_max_answers")]
    pub max_answers: u16,
    pub strategy: Strategy,
    /// What DNS answers, sorted by (cluster, address).
    pub answers: Vec<Answer>,
    pub outcome: Outcome,
    /// Per cluster.
    pub targets: BTreeMap<Arc<str>, TargetState>,
    /// The last answers that came from eligible targets, for `LastKnownGood`.
    pub last_good: Vec<Answer>,
    /// When `answers` last changed.
    #[serde(with = "lifeline_model::time::rfc3339")]
    pub changed_at: SystemTime,
    /// A digest of the policy and the overrides this was decided from (see `overrides::basis`);
    /// 0 when unknown, as after a restart: then it is decided afresh.
    #[serde(skip)]
    pub basis: u64,
    /// The answers were taken from what DNS served when a leader started without a
    /// usable decision (see [`PolicyDecision::resumed_from`]). They are kept while any
    /// target's health is still unconfirmed, so a restart never moves an answer on
    /// anything but probes: a dead primary is not answered again because nobody
    /// remembered it was dead. An operator override on the policy ends it at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// Healthy targets held in reserve behind `answers`, tier by tier, the next to
    /// answer first: a Failover policy's lower-priority tiers, a Weighted policy's
    /// weight-0 targets. Published with the records, so a replica with no leader can
    /// move the answer there when an operator drains the answered clusters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standby: Vec<Vec<Answer>>,
}

impl PolicyDecision {
    /// An entry that keeps serving `answers` (what DNS serves now) until every target of
    /// `policy` has a confirmed health: for a leader that starts with no decision.
    pub fn resumed_from(policy: &Policy, answers: Vec<Answer>, now: SystemTime) -> Self {
        Self {
            hostname: policy.hostname.clone(),
            ttl: policy.ttl,
            max_answers: policy.max_answers,
            strategy: policy.strategy,
            last_good: answers.clone(),
            answers,
            outcome: Outcome::Normal,
            targets: BTreeMap::new(),
            changed_at: now,
            basis: 0,
            resumed: true,
            standby: Vec::new(),
        }
    }
}

/// Equal when everything decided is: `basis` is how it was reached, not what it says (a
/// decision read back from storage has none).
impl PartialEq for PolicyDecision {
    fn eq(&self, other: &Self) -> bool {
        let Self {
            hostname,
            ttl,
            max_answers,
            strategy,
            answers,
            outcome,
            targets,
            last_good,
            changed_at,
            basis: _,
            resumed,
            standby,
        } = self;
        *hostname == other.hostname
            && *ttl == other.ttl
            && *max_answers == other.max_answers
            && *strategy == other.strategy
            && *answers == other.answers
            && *outcome == other.outcome
            && *targets == other.targets
            && *last_good == other.last_good
            && *changed_at == other.changed_at
            && *resumed == other.resumed
            && *standby == other.standby
    }
}

fn default_max_answers() -> u16 {
    lifeline_model::limits::MAX_ANSWERS_DEFAULT
}

/// `a × b` for weights and shares, saturating instead of overflowing: weights can come
/// from overrides and stored decisions that never passed validation.
pub(crate) fn mul(a: u32, b: u32) -> u32 {
    a.saturating_mul(b)
}

/// `a × b / c` without overflow in between (`c` = 0 gives 0).
pub(crate) fn mul_div(a: u32, b: u32, c: u32) -> u32 {
    if c == 0 {
        return 0;
    }
    u32::try_from(u64::from(a) * u64::from(b) / u64::from(c)).unwrap_or(u32::MAX)
}

/// One address handed out, with what the shim needs to choose per query.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub cluster: Arc<str>,
    pub address: IpAddr,
    pub region: Arc<str>,
    /// Share of answers, in thousandths of the target's weight (ramps scale it down).
    pub weight: u32,
}

/// How a policy's answers were chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// From eligible targets by the strategy.
    Normal,
    /// Pinned by an override.
    Pinned,
    /// No eligible target: every target answered (fail open).
    ServeAll,
    /// No eligible target: the last good answers.
    LastKnownGood,
    /// No eligible target: nothing answered, as the policy asks.
    Empty,
    /// No eligible target: the policy's fallback addresses.
    Fallback,
}

/// Health of one target, with the memory hysteresis needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetState {
    pub health: Health,
    /// When `health` last changed.
    #[serde(with = "lifeline_model::time::rfc3339")]
    pub since: SystemTime,
    /// Why, in a few words. Shared text: a decision clones every target's state, and
    /// most reasons do not change between decisions.
    pub reason: Arc<str>,
    pub ok_streak: u32,
    pub fail_streak: u32,
    /// Set while ramping.
    #[serde(with = "opt_time_text", default)]
    pub ramp_started: Option<SystemTime>,
    /// Share of full weight in thousandths (1000 unless ramping).
    pub share: u32,
    /// An active drain override applies.
    pub drained: bool,
    /// The last observation's detail.
    #[serde(default)]
    pub last_detail: Arc<str>,
}

/// Health states; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Health {
    Unknown,
    Healthy,
    Unhealthy,
    Recovering,
    Ramping,
}

impl Health {
    /// May this target be answered in normal operation?
    pub(crate) fn eligible(self) -> bool {
        matches!(self, Health::Unknown | Health::Healthy | Health::Ramping)
    }
}

/// Something an operator should look at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alarm {
    pub kind: AlarmKind,
    pub message: String,
    #[serde(with = "lifeline_model::time::rfc3339")]
    pub since: SystemTime,
}

/// Kinds of alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmKind {
    /// Many targets failed at once; their failures were not acted on.
    SystemicFailureSuspected,
}

impl Decision {
    /// True when `other` holds the very same entry for every policy (shared, not equal):
    /// then nothing about any policy changed between the two. Cheap: no entry is compared.
    pub fn shares_entries_with(&self, other: &Decision) -> bool {
        self.policies.len() == other.policies.len()
            && self
                .policies
                .iter()
                .zip(&other.policies)
                .all(|((a, pa), (b, pb))| Arc::ptr_eq(pa, pb) && a == b)
    }
}

/// Serde adapter for optional times as RFC 3339 text (the shim's adapter covers the
/// plain case).
mod opt_time_text {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&lifeline_model::time::format(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_rfc3339_weak(&t).map_err(D::Error::custom))
            .transpose()
    }
}
