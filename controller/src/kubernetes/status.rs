//! Writes what Lifeline decided back to the FailoverPolicy and MemberCluster CRs.
//!
//! Best effort and gentle on the management API: a status is written with server-side
//! apply (field manager `lifeline`) only when it changed, at most once per object per
//! `min_interval`; a failed write is retried on a later call. Steering never waits on it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use lifeline_crds::{
    FailoverPolicy, FailoverPolicyStatus, MemberCluster, MemberClusterStatus, TargetState,
    TargetStatus,
    validate::{Problem, SetReason},
};
use serde_json::{Value, json};
use tracing::{debug, warn};

use lifeline_engine::{AlarmKind, Decision, Health, Outcome, PolicyDecision};
use lifeline_model::hold::PolicyHold;

use crate::kubernetes::member::MemberView;

/// Coalesces and rate-limits status writes.
pub struct StatusWriter {
    client: Client,
    min_interval: Duration,
    /// Per object: the status last written and when.
    written: HashMap<String, (Value, tokio::time::Instant)>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("written", &self.written.len())
            .finish_non_exhaustive()
    }
}

fn time(t: SystemTime) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::try_from(t)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    since: SystemTime,
) -> Condition {
    Condition {
        type_: kind.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: time(since),
    }
}

/// Addresses listed in `status.answers`; the rest are counted in `answerSummary`.
const STATUS_ANSWERS: usize = 64;
/// Addresses named in an event's note (Events hold about 1 KB of text).
const EVENT_ANSWERS: usize = 8;

/// The status of one policy from the decision (or from its problems when invalid).
/// A quarantined policy (`quarantined`: why) is not Ready, and says so. A policy that a
/// held change would remove (`held`: why) says so in a `RemovalHeld` condition.
pub fn policy_status(
    p: &FailoverPolicy,
    decision: &Decision,
    problems: Option<&Vec<Problem>>,
    quarantined: Option<&String>,
    held: Option<&String>,
    set_problem: Option<&(SetReason, String)>,
) -> FailoverPolicyStatus {
    let generation = p.metadata.generation;
    let now = SystemTime::now();
    let not_ready = |reason: &str, message: String| FailoverPolicyStatus {
        conditions: vec![condition("Ready", false, reason, message, generation, now)],
        observed_generation: generation,
        ..FailoverPolicyStatus::default()
    };
    // Left out of the set: another policy owns the hostname, or its zone refuses it.
    if let Some((reason, message)) = set_problem.filter(|(r, _)| r.excludes()) {
        return not_ready(reason.as_str(), message.clone());
    }
    if let Some(problems) = problems {
        return not_ready("InvalidSpec", joined(problems));
    }
    let Some(pd) = decision.policies.get(&p.id()) else {
        let (reason, message) = undecided(quarantined);
        return not_ready(reason, message);
    };
    let answers = listed_answers(pd);
    let summary = answer_summary(&answers, pd.answers.len());
    let ready = match quarantined {
        Some(why) => condition(
            "Ready",
            false,
            "Quarantined",
            format!("not decided ({why}); serving its last answers: {summary}"),
            generation,
            now,
        ),
        None => ready_condition(pd, &summary, generation),
    };
    let mut conditions = vec![ready, degraded_condition(pd, generation)];
    let raised = |kind: &str, ok: bool, reason: &str, message: &String| {
        condition(kind, ok, reason, message.clone(), generation, now)
    };
    conditions.extend(quarantined.map(|why| raised("Quarantined", true, "DecisionFailed", why)));
    conditions.extend(
        set_problem
            .map(|(reason, message)| raised("ResolvedRefs", false, reason.as_str(), message)),
    );
    conditions.extend(held.map(|why| raised("RemovalHeld", true, "SweepingChange", why)));
    conditions.extend(systemic_condition(decision, generation));
    FailoverPolicyStatus {
        targets: pd
            .targets
            .iter()
            .map(|(cluster, t)| target_status(cluster, t))
            .collect(),
        answers,
        answer_summary: Some(summary),
        decision_revision: Some(decision.revision),
        decided_at: Some(time(pd.changed_at)),
        conditions,
        observed_generation: generation,
    }
}

/// Every problem of an invalid spec, in one condition message.
fn joined(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a policy has no decision yet: quarantined (`why`), or simply not reached.
fn undecided(quarantined: Option<&String>) -> (&'static str, String) {
    match quarantined {
        Some(why) => (
            "Quarantined",
            format!("not decided ({why}); nothing served yet"),
        ),
        None => ("Pending", "not decided yet".to_owned()),
    }
}

/// A name can have thousands of addresses; a status lists a bounded number of them.
fn listed_answers(pd: &PolicyDecision) -> Vec<String> {
    pd.answers
        .iter()
        .take(STATUS_ANSWERS)
        .map(|a| a.address.to_string())
        .collect()
}

/// The listed answers in one short line, with the full count when it is cut.
fn answer_summary(listed: &[String], total: usize) -> String {
    let mut summary = listed.join(",");
    if summary.len() > 60 {
        summary.truncate(40);
        summary.push_str(&format!("... ({total} addresses)"));
    }
    summary
}

/// Ready when something healthy (or pinned) is answered.
fn ready_condition(pd: &PolicyDecision, summary: &str, generation: Option<i64>) -> Condition {
    let ready = !pd.answers.is_empty() && matches!(pd.outcome, Outcome::Normal | Outcome::Pinned);
    condition(
        "Ready",
        ready,
        &format!("{:?}", pd.outcome),
        format!(
            "answering {}",
            if summary.is_empty() {
                "nothing"
            } else {
                summary
            }
        ),
        generation,
        pd.changed_at,
    )
}

/// Degraded while any target is unhealthy.
fn degraded_condition(pd: &PolicyDecision, generation: Option<i64>) -> Condition {
    let unhealthy = pd
        .targets
        .values()
        .filter(|t| t.health == Health::Unhealthy)
        .count();
    condition(
        "Degraded",
        unhealthy > 0,
        if unhealthy > 0 {
            "TargetsUnhealthy"
        } else {
            "AllTargetsHealthy"
        },
        format!("{unhealthy} of {} targets unhealthy", pd.targets.len()),
        generation,
        pd.changed_at,
    )
}

/// The fleet-wide alarm, repeated on every policy while it is raised.
fn systemic_condition(decision: &Decision, generation: Option<i64>) -> Option<Condition> {
    let alarm = decision
        .alarms
        .iter()
        .find(|a| a.kind == AlarmKind::SystemicFailureSuspected)?;
    Some(condition(
        "SystemicFailureSuspected",
        true,
        "BlastRadius",
        alarm.message.clone(),
        generation,
        alarm.since,
    ))
}

/// One target's state as the CR shows it: a drained target is Draining whatever its health.
fn target_status(cluster: &str, t: &lifeline_engine::TargetState) -> TargetStatus {
    TargetStatus {
        cluster: cluster.to_string(),
        state: if t.drained {
            TargetState::Draining
        } else {
            match t.health {
                Health::Healthy => TargetState::Healthy,
                Health::Unhealthy => TargetState::Unhealthy,
                Health::Unknown => TargetState::Unknown,
                Health::Recovering | Health::Ramping => TargetState::Recovering,
            }
        },
        reason: t.reason.to_string(),
        last_transition_time: Some(time(t.since)),
        details: BTreeMap::new(),
    }
}

/// The status of a member cluster read from no API: static, or its kubeconfig not
/// loaded (`unloaded` says why).
fn without_view(
    generation: Option<i64>,
    unloaded: Option<&str>,
    now: SystemTime,
) -> MemberClusterStatus {
    let ready = match unloaded {
        Some(reason) => condition(
            "Ready",
            false,
            "KubeconfigUnavailable",
            format!("{reason}; retried with backoff, its targets keep their last known state"),
            generation,
            now,
        ),
        None => condition(
            "Ready",
            true,
            "Static",
            "addresses are listed; no API access needed".to_owned(),
            generation,
            now,
        ),
    };
    MemberClusterStatus {
        conditions: vec![ready],
        observed_generation: generation,
        ..MemberClusterStatus::default()
    }
}

/// The status of one member cluster from its watcher's view (`None`: a static cluster,
/// or one whose kubeconfig could not be loaded, `unloaded` says why).
pub fn cluster_status(
    c: &MemberCluster,
    view: Option<&MemberView>,
    unloaded: Option<&str>,
) -> MemberClusterStatus {
    let generation = c.metadata.generation;
    let now = SystemTime::now();
    let Some(view) = view else {
        return without_view(generation, unloaded, now);
    };
    let since = match view.control_plane {
        crate::kubernetes::budget::ControlPlane::Unreachable { since } => Some(time(since)),
        _ => None,
    };
    let reachable = matches!(
        view.control_plane,
        crate::kubernetes::budget::ControlPlane::Reachable
    );
    let ready = if !view.denied.is_empty() {
        // Reachable, but refused: say what is refused, so nobody mistakes it for an
        // outage. The API server's own message names the user and the resource.
        condition(
            "Ready",
            false,
            "Forbidden",
            format!(
                "the API server refuses {}; grant the rules in deploy/rbac/member-cluster.yaml",
                view.denied.join("; ")
            ),
            generation,
            now,
        )
    } else {
        condition(
            "Ready",
            reachable && view.synced,
            if reachable {
                "Reachable"
            } else {
                "Unreachable"
            },
            format!("{} watch streams open", view.watches_open),
            generation,
            now,
        )
    };
    MemberClusterStatus {
        control_plane: Some(view.control_plane.into()),
        since,
        last_contact: view.last_contact.map(time),
        watches_open: view.watches_open,
        api_requests: view.requests,
        conditions: vec![ready],
        observed_generation: generation,
    }
}

impl StatusWriter {
    pub fn new(client: Client, min_interval: Duration) -> Self {
        Self {
            client,
            min_interval,
            written: HashMap::new(),
        }
    }

    /// Writes the statuses that changed and are due.
    pub async fn write(&mut self, input: &StatusInput) {
        let StatusInput {
            decision,
            policies,
            clusters,
            problems,
            views,
            unloaded,
            quarantined,
            held,
            set_problems,
        } = input;
        let held = held.as_ref();
        let held_why = held.map(|h| {
            format!(
                "a policy change that would remove this policy is held: {} (release it with `lifeline ctl release {}`)",
                h.reason, h.fingerprint
            )
        });
        for p in policies {
            let id = p.id();
            let status = policy_status(
                p,
                decision,
                problems.get(&format!("FailoverPolicy {id}")),
                quarantined.get(&id),
                held_why
                    .as_ref()
                    .filter(|_| held.is_some_and(|h| h.policies.contains(&id))),
                set_problems.get(&id),
            );
            let api: Api<FailoverPolicy> =
                Api::namespaced(self.client.clone(), p.namespace_or_default());
            let name = p.metadata.name.clone().unwrap_or_default();
            self.write_one(
                &format!("fp/{id}"),
                api,
                &name,
                "FailoverPolicy",
                serde_json::to_value(status).unwrap_or_default(),
            )
            .await;
        }
        for c in clusters {
            let name = c.metadata.name.clone().unwrap_or_default();
            let status =
                cluster_status(c, views.get(&name), unloaded.get(&name).map(String::as_str));
            let api: Api<MemberCluster> = Api::all(self.client.clone());
            self.write_one(
                &format!("mc/{name}"),
                api,
                &name,
                "MemberCluster",
                serde_json::to_value(status).unwrap_or_default(),
            )
            .await;
        }
    }

    async fn write_one<K>(&mut self, key: &str, api: Api<K>, name: &str, kind: &str, status: Value)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        // Times inside conditions move on every call for some states; compare without
        // them so "unchanged" means unchanged.
        let comparable = strip_times(&status);
        if let Some((last, at)) = self.written.get(key)
            && (strip_times(last) == comparable || at.elapsed() < self.min_interval)
        {
            return;
        }
        let body =
            json!({"apiVersion": lifeline_crds::API_VERSION, "kind": kind, "status": status});
        let params = PatchParams::apply("lifeline").force();
        match api.patch_status(name, &params, &Patch::Apply(&body)).await {
            Ok(_) => {
                debug!(object = %key, "status written");
                self.written
                    .insert(key.to_owned(), (status, tokio::time::Instant::now()));
            }
            Err(e) => warn!(object = %key, error = %e, "cannot write status; will retry"),
        }
    }
}

fn strip_times(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.ends_with("Time") && k.as_str() != "since")
                .map(|(k, v)| (k.clone(), strip_times(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_times).collect()),
        other => other.clone(),
    }
}

/// What the status task needs from one decision.
#[derive(Debug, Clone, Default)]
pub struct StatusInput {
    pub decision: Arc<Decision>,
    pub policies: Vec<FailoverPolicy>,
    pub clusters: Vec<MemberCluster>,
    pub problems: BTreeMap<String, Vec<Problem>>,
    pub views: BTreeMap<String, MemberView>,
    /// Clusters whose kubeconfig could not be loaded, and why.
    pub unloaded: BTreeMap<String, String>,
    /// Policies not being decided, with why.
    pub quarantined: BTreeMap<String, String>,
    /// A sweeping policy change being held.
    pub held: Option<PolicyHold>,
    /// Cross-document problems by policy id.
    pub set_problems: BTreeMap<String, (SetReason, String)>,
}

/// An Event to publish about a policy.
#[derive(Debug, Clone)]
pub struct PolicyEvent {
    pub policy: FailoverPolicy,
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
    /// A repeat of the same condition (same reason about the same policy) only counts
    /// up the first Event's series. Off for Events whose note is the news (which
    /// answers changed to what): each of those is an Event of its own, or a failover
    /// minutes after the first answers would read as the first answers again.
    pub aggregate: bool,
}

/// Status and Events run in their own task: a slow or hanging management API must
/// never hold up a decision. The newest input replaces an unwritten older one; events
/// beyond the queue's capacity are dropped (and logged), never waited for.
#[derive(Debug)]
pub struct StatusTask {
    input: tokio::sync::watch::Sender<StatusInput>,
    events: tokio::sync::mpsc::Sender<PolicyEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StatusTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StatusTask {
    /// Starts the task; statuses are written at most every `min_interval` per object.
    pub fn spawn(client: Client, min_interval: Duration, identity: String) -> Self {
        let (input, mut rx) = tokio::sync::watch::channel(StatusInput::default());
        let (events, mut events_rx) = tokio::sync::mpsc::channel::<PolicyEvent>(64);
        let reporter = kube::runtime::events::Reporter {
            controller: "lifeline".to_owned(),
            instance: Some(identity),
        };
        // The recorder keeps the Events it made for 6 minutes and turns a repeat into a
        // series of the cached one.
        let recorder = kube::runtime::events::Recorder::new(client.clone(), reporter.clone());
        let events_client = client.clone();
        let mut writer = StatusWriter::new(client, min_interval);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let input = rx.borrow_and_update().clone();
                        if !input.policies.is_empty() || !input.clusters.is_empty() {
                            writer
                                .write(&input)
                                .await;
                        }
                    }
                    Some(ev) = events_rx.recv() => {
                        let event = kube::runtime::events::Event {
                            type_: if ev.warning {
                                kube::runtime::events::EventType::Warning
                            } else {
                                kube::runtime::events::EventType::Normal
                            },
                            reason: ev.reason.to_owned(),
                            note: Some(ev.note.chars().take(1000).collect()),
                            action: "Steer".to_owned(),
                            secondary: None,
                        };
                        let reference = kube::Resource::object_ref(&ev.policy, &());
                        let published = if ev.aggregate {
                            recorder.publish(&event, &reference).await
                        } else {
                            // A recorder with nothing cached always creates a new Event.
                            kube::runtime::events::Recorder::new(events_client.clone(), reporter.clone())
                                .publish(&event, &reference)
                                .await
                        };
                        if let Err(e) = published {
                            warn!(error = %e, reason = ev.reason, "cannot publish an event");
                        }
                    }
                }
            }
        });
        Self {
            input,
            events,
            task,
        }
    }

    /// Hands over the newest state to write.
    pub fn update(&self, input: StatusInput) {
        self.input.send_replace(input);
    }

    /// Queues a Warning Event for each policy newly quarantined, without waiting.
    pub fn record_quarantined(
        &self,
        newly: &BTreeMap<String, String>,
        policies: &BTreeMap<String, FailoverPolicy>,
    ) {
        for (id, why) in newly {
            let Some(policy) = policies.get(id) else {
                continue;
            };
            let event = PolicyEvent {
                policy: policy.clone(),
                warning: true,
                reason: "Quarantined",
                note: format!("not decided ({why}); its last answers stay"),
                aggregate: true,
            };
            if self.events.try_send(event).is_err() {
                debug!("event queue full; event dropped");
            }
        }
    }

    /// Queues a Warning Event on each policy (of `policies`, the set in force) that a
    /// newly held change would remove.
    pub fn record_held(&self, hold: &PolicyHold, policies: &[FailoverPolicy]) {
        for policy in policies.iter().filter(|p| hold.policies.contains(&p.id())) {
            let event = PolicyEvent {
                policy: policy.clone(),
                warning: true,
                reason: "PolicyChangeHeld",
                note: format!(
                    "{}; still served. Release with `lifeline ctl release {}`",
                    hold.reason, hold.fingerprint
                ),
                aggregate: true,
            };
            if self.events.try_send(event).is_err() {
                debug!("event queue full; event dropped");
            }
        }
    }

    /// Queues Events for what changed between two decisions (failover, failback, all
    /// unhealthy, systemic failure), without waiting.
    pub fn record_changes(
        &self,
        before: &Decision,
        after: &Decision,
        policies: &BTreeMap<String, FailoverPolicy>,
    ) {
        let queue = |policy: &FailoverPolicy, warning: bool, reason: &'static str, note: String| {
            let event = PolicyEvent {
                policy: policy.clone(),
                warning,
                reason,
                note,
                aggregate: false,
            };
            if self.events.try_send(event).is_err() {
                debug!(reason, "event queue full; event dropped");
            }
        };
        for (id, pd) in &after.policies {
            let Some(policy) = policies.get(id) else {
                continue;
            };
            let Some(old) = before.policies.get(id) else {
                continue;
            };
            if old.answers == pd.answers {
                continue;
            }
            let list = |p: &lifeline_engine::PolicyDecision| {
                let mut text = p
                    .answers
                    .iter()
                    .take(EVENT_ANSWERS)
                    .map(|a| a.address.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                if p.answers.len() > EVENT_ANSWERS {
                    text.push_str(&format!(",... ({} in all)", p.answers.len()));
                }
                text
            };
            let note = format!("answers {} -> {} ({:?})", list(old), list(pd), pd.outcome);
            let went_down = pd.targets.iter().any(|(c, t)| {
                t.health == Health::Unhealthy
                    && old
                        .targets
                        .get(c)
                        .is_some_and(|o| o.health != Health::Unhealthy)
            });
            let came_back = pd.targets.iter().any(|(c, t)| {
                matches!(t.health, Health::Healthy | Health::Ramping)
                    && old
                        .targets
                        .get(c)
                        .is_some_and(|o| matches!(o.health, Health::Unhealthy | Health::Recovering))
            });
            match pd.outcome {
                Outcome::ServeAll | Outcome::Empty | Outcome::Fallback | Outcome::LastKnownGood => {
                    queue(policy, true, "AllTargetsUnhealthy", note)
                }
                _ if went_down => queue(policy, true, "Failover", note),
                _ if came_back => queue(policy, false, "Failback", note),
                _ => queue(policy, false, "AnswersChanged", note),
            }
        }
        for alarm in &after.alarms {
            if before.alarms.iter().any(|a| a.kind == alarm.kind) {
                continue;
            }
            // One event for the fleet-wide alarm, on the first policy, not one per policy.
            if let Some(policy) = policies.values().next() {
                queue(
                    policy,
                    true,
                    "SystemicFailureSuspected",
                    alarm.message.clone(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use lifeline_engine::{EngineConfig, Signals};

    use super::*;

    #[test]
    fn a_quarantined_policy_is_not_ready_and_says_why() {
        let cr: FailoverPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "FailoverPolicy",
            "metadata": {"name": "web", "namespace": "shop", "generation": 3},
            "spec": {"hostname": "web.global.example.com", "targets": [{"cluster": "one"}]}
        }))
        .unwrap();
        let policy = crate::leader::panic_boundary::tests::policy("web", 1);
        let decision = lifeline_engine::decide(
            &EngineConfig::default(),
            &[policy],
            &Signals::default(),
            &[],
            &Decision::default(),
            SystemTime::now(),
        );
        let normal = policy_status(&cr, &decision, None, None, None, None);
        assert!(!normal.conditions.iter().any(|c| c.type_ == "Quarantined"));

        let why = "deciding it panicked: boom".to_owned();
        let status = policy_status(&cr, &decision, None, Some(&why), None, None);
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "Quarantined");
        assert!(ready.message.contains("192.0.2.1"), "{}", ready.message);
        let q = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Quarantined")
            .unwrap();
        assert_eq!(
            (q.status.as_str(), q.message.as_str()),
            ("True", why.as_str())
        );
        assert_eq!(
            status.answers,
            ["192.0.2.1"],
            "its last answers are still reported"
        );
    }
}
