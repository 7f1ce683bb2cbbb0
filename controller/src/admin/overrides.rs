//! Break-glass overrides and the release of a held policy change: requests checked
//! and turned into what the store keeps.

use std::{collections::BTreeSet, sync::Arc, time::SystemTime};

use axum::{
    Json,
    body::Bytes,
    extract::{Extension, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use lifeline_engine::{Override, OverrideAction};
use lifeline_model::hold::{PolicyHold, PolicyRelease};

use super::{AdminState, Caller, MAX_OVERRIDE, error, not_connected, request};

/// `POST /v1/policy-change/release` body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The fingerprint of the held change, as status shows it.
    pub fingerprint: String,
    pub author: String,
    pub reason: String,
}

/// Why a release is refused.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseRefused {
    #[error("author and reason are required")]
    Unsigned,
    #[error("no policy change is held")]
    NothingHeld,
    #[error(
        "the held change is {held}, not {asked}: it changed since you looked; check `lifeline ctl status` again"
    )]
    Changed { held: String, asked: String },
}

/// Checks a release against what is held and turns it into the stored form.
pub fn release_from_request(
    req: ReleaseRequest,
    held: Option<&PolicyHold>,
    now: SystemTime,
) -> Result<PolicyRelease, ReleaseRefused> {
    if req.author.trim().is_empty() || req.reason.trim().is_empty() {
        return Err(ReleaseRefused::Unsigned);
    }
    match held {
        None => Err(ReleaseRefused::NothingHeld),
        Some(h) if h.fingerprint != req.fingerprint => Err(ReleaseRefused::Changed {
            held: h.fingerprint.clone(),
            asked: req.fingerprint,
        }),
        Some(_) => Ok(PolicyRelease {
            fingerprint: req.fingerprint,
            by: req.author,
            reason: req.reason,
            at: now,
        }),
    }
}

pub(super) async fn release_policy_change(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    let (req, store) = match request::<ReleaseRequest>(&state, &body, "release") {
        Ok(parts) => parts,
        Err(refused) => return *refused,
    };
    let held = match store.policy_hold().await {
        Ok(h) => h,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the held policy change: {e}"),
            );
        }
    };
    let author = req.author.clone();
    let mut release = match release_from_request(req, held.as_ref(), SystemTime::now()) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::CONFLICT, e.to_string()),
    };
    release.by = caller.0;
    if let Err(e) = store.release_policy_change(&release).await {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store the release: {e}"),
        );
    }
    tracing::info!(fingerprint = %release.fingerprint, by = %release.by, %author, reason = %release.reason, "policy change released");
    state.overrides_changed.notify_one();
    (StatusCode::ACCEPTED, Json(release)).into_response()
}

pub(super) async fn list_overrides(State(state): State<Arc<AdminState>>) -> Response {
    let Some(store) = state.store() else {
        return not_connected();
    };
    let now = SystemTime::now();
    let (overrides, audit) = match (store.overrides().await, store.audit().await) {
        (Ok(o), Ok(a)) => (o, a),
        (Err(e), _) | (_, Err(e)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the store: {e}"),
            );
        }
    };
    let active: Vec<Override> = overrides.into_iter().filter(|o| o.is_active(now)).collect();
    Json(json!({ "overrides": active, "audit": audit })).into_response()
}

/// `POST /v1/overrides` body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverrideRequest {
    pub cluster: String,
    /// Limit to one policy (`namespace/name`).
    #[serde(default)]
    pub policy: Option<String>,
    /// `drain`, `pin` or `weight`.
    pub action: String,
    /// Required for `weight`.
    #[serde(default)]
    pub weight: Option<u32>,
    /// How long it lasts, e.g. `"30m"`.
    #[serde(rename = "for")]
    pub duration: String,
    pub author: String,
    pub reason: String,
}

/// The clusters and policies an override may name: those of a policy set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    pub clusters: BTreeSet<String>,
    /// Policy ids (`namespace/name`).
    pub policies: BTreeSet<String>,
}

impl Known {
    /// What `snapshot` defines.
    pub fn of(snapshot: &lifeline_crds::document::PolicySnapshot) -> Self {
        Self {
            clusters: snapshot
                .clusters
                .iter()
                .filter_map(|c| c.metadata.name.clone())
                .collect(),
            policies: snapshot
                .policies
                .iter()
                .map(lifeline_crds::FailoverPolicy::id)
                .collect(),
        }
    }

    /// Nothing is known yet (no policy set was ever saved): any name is taken.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty() && self.policies.is_empty()
    }
}

/// Why an override request is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The request is malformed (400).
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// It names a cluster or policy the policy set does not define (422).
    #[error("{0}")]
    Unknown(String),
}

impl Refused {
    fn status(&self) -> StatusCode {
        match self {
            Refused::Invalid(_) => StatusCode::BAD_REQUEST,
            Refused::Unknown(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// Checks a request and turns it into an override with an id of its own: two requests
/// never share an id, however close together they come, so one never replaces the
/// other.
pub fn override_from_request(
    req: OverrideRequest,
    known: &Known,
    now: SystemTime,
) -> Result<Override, Refused> {
    use Refused::{Invalid, Unknown};
    if req.cluster.is_empty() {
        return Err(Invalid(self::Invalid::NoCluster));
    }
    let list = |names: &BTreeSet<String>| names.iter().cloned().collect::<Vec<_>>().join(", ");
    if !known.is_empty() && !known.clusters.contains(&req.cluster) {
        return Err(Unknown(format!(
            "cluster: unknown cluster {:?} (known: {})",
            req.cluster,
            list(&known.clusters)
        )));
    }
    let policy = req
        .policy
        .as_deref()
        .map(lifeline_crds::validate::policy_id_from_text);
    if let Some(id) = &policy
        && !known.is_empty()
        && !known.policies.contains(id)
    {
        return Err(Unknown(format!(
            "policy: unknown policy {id:?} (known: {})",
            list(&known.policies)
        )));
    }
    let req = OverrideRequest { policy, ..req };
    Ok(override_checked(req, now)?)
}

/// What is malformed in an override request.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("cluster: must not be empty")]
    NoCluster,
    #[error("weight: {0} is out of range: must be between 0 and 1000")]
    WeightRange(u32),
    #[error("weight: is required when action is weight")]
    NoWeight,
    #[error("weight: is only allowed when action is weight")]
    NeedlessWeight,
    #[error("action: unknown action {0:?}: expected drain, pin or weight")]
    Action(String),
    #[error("for: {0}")]
    Duration(String),
    #[error("for: {0:?} must be more than 0 and at most 168h")]
    DurationRange(String),
    #[error("author: must not be empty")]
    NoAuthor,
    #[error("reason: must not be empty")]
    NoReason,
}

/// As many overrides are in force as are allowed.
#[derive(Debug, thiserror::Error)]
#[error("{active} overrides are in force, the most allowed ({max}); clear some first")]
pub struct Full {
    active: usize,
    max: usize,
}

impl Full {
    pub fn new(active: usize, max: usize) -> Self {
        Self { active, max }
    }
}

fn override_checked(req: OverrideRequest, now: SystemTime) -> Result<Override, Invalid> {
    let action = match (req.action.as_str(), req.weight) {
        ("drain", None) => OverrideAction::Drain,
        ("pin", None) => OverrideAction::Pin,
        ("weight", Some(w)) if w <= 1000 => OverrideAction::Weight(w),
        ("weight", Some(w)) => return Err(Invalid::WeightRange(w)),
        ("weight", None) => return Err(Invalid::NoWeight),
        ("drain" | "pin", Some(_)) => return Err(Invalid::NeedlessWeight),
        (other, _) => return Err(Invalid::Action(other.to_owned())),
    };
    let duration = lifeline_crds::parse_duration(&req.duration)
        .map_err(|e| Invalid::Duration(e.to_string()))?;
    if duration.is_zero() || duration > MAX_OVERRIDE {
        return Err(Invalid::DurationRange(req.duration));
    }
    if req.author.trim().is_empty() {
        return Err(Invalid::NoAuthor);
    }
    if req.reason.trim().is_empty() {
        return Err(Invalid::NoReason);
    }
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    // The time orders ids for a reader; 64 random bits make them unique across
    // requests, replicas and `ctl --etcd` alike.
    let nonce: u64 = rand::random();
    Ok(Override {
        id: format!("{}-{}-{millis}-{nonce:016x}", req.action, req.cluster),
        cluster: req.cluster,
        policy: req.policy,
        action,
        created_at: now,
        expires_at: now + duration,
        author: req.author,
        reason: req.reason,
    })
}

pub(super) async fn create_override(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    let (req, store) = match request::<OverrideRequest>(&state, &body, "override") {
        Ok(parts) => parts,
        Err(refused) => return *refused,
    };
    // The leader knows the set in force; a follower reads the set the leader saved.
    let mut known = (*state.view().known).clone();
    if known.is_empty() {
        match store.load_policies().await {
            Ok(saved) => known = saved.as_ref().map(Known::of).unwrap_or_default(),
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot read the policy set to check the override against: {e}"),
                );
            }
        }
    }
    let o = match override_from_request(req, &known, SystemTime::now()) {
        Ok(o) => o,
        Err(e) => return error(e.status(), e.to_string()),
    };
    // Counted and written in one step: concurrent requests cannot pass the limit.
    let by = caller.0;
    let max = lifeline_model::limits::OVERRIDES_MAX;
    match store.put_override_within(o.clone(), &by, max).await {
        Ok(None) => {}
        Ok(Some(active)) => return error(StatusCode::CONFLICT, Full { active, max }.to_string()),
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot store override: {e}"),
            );
        }
    }
    tracing::info!(id = %o.id, cluster = %o.cluster, action = ?o.action, %by, author = %o.author, reason = %o.reason, "override set");
    state.overrides_changed.notify_one();
    (StatusCode::CREATED, Json(o)).into_response()
}

pub(super) async fn delete_override(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let Some(store) = state.store() else {
        return not_connected();
    };
    let wanted = id.clone();
    match store
        .remove_overrides(move |o| o.id == wanted, &caller.0)
        .await
    {
        Ok(removed) if removed.is_empty() => {
            error(StatusCode::NOT_FOUND, format!("no override with id {id:?}"))
        }
        Ok(removed) => {
            tracing::info!(%id, "override cleared");
            state.overrides_changed.notify_one();
            Json(json!({ "cleared": removed })).into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store change: {e}"),
        ),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ClearQuery {
    cluster: Option<String>,
}

pub(super) async fn clear_overrides(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ClearQuery>,
) -> Response {
    let Some(cluster) = q.cluster.filter(|c| !c.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "cluster: query parameter is required (?cluster=NAME)",
        );
    };
    let Some(store) = state.store() else {
        return not_connected();
    };
    match store
        .remove_overrides(
            {
                let cluster = cluster.clone();
                move |o| o.cluster == cluster
            },
            &caller.0,
        )
        .await
    {
        Ok(removed) => {
            tracing::info!(%cluster, count = removed.len(), "overrides cleared");
            state.overrides_changed.notify_one();
            Json(json!({ "cleared": removed })).into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store change: {e}"),
        ),
    }
}
