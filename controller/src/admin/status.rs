//! `GET /v1/status`: what the leader decided, as operators read it.

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use lifeline_engine::{Decision, Health, Override};
use lifeline_model::hold::PolicyHold;

use super::AdminState;

/// `GET /v1/status` body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub revision: u64,
    /// Seconds since the answers last changed.
    pub decision_age_seconds: Option<f64>,
    pub alarms: Vec<StatusAlarm>,
    pub policies: Vec<PolicyStatus>,
    pub active_overrides: usize,
    /// Policies not being decided (deciding them panicked), with why; their last
    /// answers are still served.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quarantined: BTreeMap<String, String>,
    /// A policy change held back because it would stop serving many names; the set
    /// in force is still served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<PolicyHold>,
    /// Stored files that cannot be read (their last good copy is in force).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub store_problems: Vec<String>,
    /// Set on a follower: this status is the leader's decision as read from the store,
    /// refreshed every few seconds, so it may lag the leader by that much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followed: Option<Followed>,
}

/// How a follower's status relates to the leader's.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Followed {
    /// When the decision was read from the store.
    pub read_at: String,
    /// How often it is read.
    pub refresh_seconds: u64,
}

/// How often a follower reads the leader's decision for its status.
pub const FOLLOW_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusAlarm {
    pub kind: String,
    pub message: String,
    pub since: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    pub name: String,
    pub hostname: String,
    pub strategy: String,
    pub outcome: String,
    pub answers: Vec<String>,
    pub targets: Vec<TargetStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    pub cluster: String,
    pub state: String,
    pub reason: String,
    pub since: String,
}

/// Builds the status document from a decision.
pub fn status_of(decision: &Decision, overrides: &[Override], now: SystemTime) -> Status {
    let time = |t: SystemTime| lifeline_model::time::format(t).to_string();
    Status {
        revision: decision.revision,
        decision_age_seconds: decision
            .changed_at
            .map(|t| now.duration_since(t).unwrap_or_default().as_secs_f64()),
        alarms: decision
            .alarms
            .iter()
            .map(|a| StatusAlarm {
                kind: format!("{:?}", a.kind),
                message: a.message.clone(),
                since: time(a.since),
            })
            .collect(),
        policies: decision
            .policies
            .iter()
            .map(|(id, p)| PolicyStatus {
                name: id.clone(),
                hostname: p.hostname.clone(),
                strategy: format!("{:?}", p.strategy),
                outcome: format!("{:?}", p.outcome),
                answers: p.answers.iter().map(|a| a.address.to_string()).collect(),
                targets: p
                    .targets
                    .iter()
                    .map(|(cluster, t)| TargetStatus {
                        cluster: cluster.to_string(),
                        state: if t.drained {
                            "Draining".to_owned()
                        } else if t.health == Health::Ramping {
                            format!("Ramping({}%)", t.share / 10)
                        } else {
                            format!("{:?}", t.health)
                        },
                        reason: t.reason.to_string(),
                        since: time(t.since),
                    })
                    .collect(),
            })
            .collect(),
        active_overrides: overrides.iter().filter(|o| o.is_active(now)).count(),
        quarantined: BTreeMap::new(),
        held: None,
        store_problems: Vec::new(),
        followed: None,
    }
}

pub(super) async fn status(State(state): State<Arc<AdminState>>) -> Response {
    let view = state.view();
    // Status must work while the store is down: overrides are then reported unknown (0).
    let store = state.store();
    let (overrides, held, store_problems) = match store {
        Some(store) => (
            store.overrides().await.unwrap_or_default(),
            store.policy_hold().await.ok().flatten(),
            store.unreadable(),
        ),
        None => (Vec::new(), None, Vec::new()),
    };
    let mut status = status_of(&view.decision, &overrides, SystemTime::now());
    status.quarantined = view.quarantined.clone();
    status.held = held;
    status.store_problems = store_problems;
    status.followed = view.followed_at.map(|t| Followed {
        read_at: lifeline_model::time::format(t).to_string(),
        refresh_seconds: FOLLOW_REFRESH.as_secs(),
    });
    Json(status).into_response()
}
