//! Fault injection and request accounting.
//!
//! Every API request (not the `/_emulator/` control endpoints) is first counted under
//! `(verb, resource, user agent)`, then checked against the fault rules in order:
//! latency rules add up and let the request go on; the first matching terminal rule
//! (`429`, an error status, or a hang) decides the answer. A rule can be limited to some
//! verbs, resources or user agents, and to a number of uses. A hanging request waits
//! until its rule is removed (then it is served normally) or the client gives up.

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The verb of a request, as the API server's audit log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// GET one object.
    Get,
    /// GET a collection.
    List,
    /// GET a collection with `watch=true` (or a `/watch/` path).
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH (any patch type, including server-side apply).
    Patch,
    /// DELETE one object.
    Delete,
    /// DELETE a collection.
    Deletecollection,
    /// Discovery, `/version`, `/openapi`, and other paths that are not resources.
    NonResource,
}

/// What a matching request suffers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Fault {
    /// Delay the answer (cumulative with other latency rules).
    Latency {
        /// Added delay in milliseconds.
        millis: u64,
    },
    /// `429 TooManyRequests` with a `Retry-After` header.
    TooManyRequests {
        /// Value of `Retry-After`, in seconds.
        retry_after_seconds: u64,
    },
    /// An error `Status` with this code (`500` InternalError, `503` ServiceUnavailable, ...).
    Error {
        /// HTTP status code.
        code: u16,
    },
    /// Never answer while the rule exists.
    Hang,
}

/// Which requests a rule applies to; empty lists match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultFilter {
    /// Verbs the rule applies to.
    #[serde(default)]
    pub verbs: Vec<Verb>,
    /// Resources, as plural (`services`) or qualified plural (`failoverpolicies.lifeline.dev`).
    #[serde(default)]
    pub resources: Vec<String>,
    /// A substring the client's user agent must contain.
    #[serde(default)]
    pub user_agent: Option<String>,
}

/// A fault and the requests it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultRule {
    /// What happens.
    pub fault: Fault,
    /// To which requests.
    #[serde(default)]
    pub filter: FaultFilter,
    /// How many requests it applies to before it expires; `None` is until removed.
    #[serde(default)]
    pub times: Option<u32>,
}

impl FaultRule {
    /// A rule for every request.
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            filter: FaultFilter::default(),
            times: None,
        }
    }

    /// Only these verbs.
    pub fn verbs(mut self, verbs: impl IntoIterator<Item = Verb>) -> Self {
        self.filter.verbs = verbs.into_iter().collect();
        self
    }

    /// Only these resources (`services`, `failoverpolicies.lifeline.dev`, or the plural alone).
    pub fn resources(mut self, resources: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.filter.resources = resources.into_iter().map(Into::into).collect();
        self
    }

    /// Only clients whose user agent contains this.
    pub fn user_agent(mut self, contains: impl Into<String>) -> Self {
        self.filter.user_agent = Some(contains.into());
        self
    }

    /// Only the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }
}

/// Identifies an injected rule, to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FaultId(pub u64);

/// What a request is, for matching and counting.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestKey {
    /// The verb.
    pub verb: Verb,
    /// Qualified plural (`services`, `endpointslices.discovery.k8s.io`, with `/status` for
    /// the subresource), or the path for non-resource requests.
    pub resource: String,
    /// The client's `User-Agent` header.
    pub user_agent: String,
}

impl FaultFilter {
    fn matches(&self, key: &RequestKey) -> bool {
        let base = key.resource.split('/').next().unwrap_or_default();
        let plural = base.split('.').next().unwrap_or_default();
        (self.verbs.is_empty() || self.verbs.contains(&key.verb))
            && (self.resources.is_empty()
                || self
                    .resources
                    .iter()
                    .any(|r| r == &key.resource || r == base || r == plural))
            && self
                .user_agent
                .as_ref()
                .is_none_or(|ua| key.user_agent.contains(ua.as_str()))
    }
}

/// A snapshot of the request counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts(pub BTreeMap<RequestKey, u64>);

impl RequestCounts {
    /// Requests matching every given criterion (`None` matches anything). `resource`
    /// matches the qualified plural or the bare plural; `user_agent` is a substring.
    pub fn count(
        &self,
        verb: Option<Verb>,
        resource: Option<&str>,
        user_agent: Option<&str>,
    ) -> u64 {
        let filter = FaultFilter {
            verbs: verb.into_iter().collect(),
            resources: resource.into_iter().map(str::to_owned).collect(),
            user_agent: user_agent.map(str::to_owned),
        };
        self.0
            .iter()
            .filter(|(k, _)| filter.matches(k))
            .map(|(_, n)| n)
            .sum()
    }

    /// All requests.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// The rule set and counters, shared by all connections.
#[derive(Debug)]
pub struct Faults {
    rules: Mutex<(u64, Vec<(FaultId, FaultRule)>)>,
    /// Bumped on every rule change, to wake hanging requests.
    changed: watch::Sender<u64>,
    counts: Mutex<BTreeMap<RequestKey, u64>>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            rules: Mutex::new((0, Vec::new())),
            changed: watch::channel(0).0,
            counts: Mutex::default(),
        }
    }
}

/// What the server should do with a request after the fault rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Proceed,
    /// Answer 429 with this Retry-After.
    TooManyRequests(u64),
    /// Answer with this error code.
    Error(u16),
}

impl Faults {
    /// Adds a rule; it applies to requests that arrive from now on.
    pub fn inject(&self, rule: FaultRule) -> FaultId {
        let mut rules = self.rules.lock();
        rules.0 += 1;
        let id = FaultId(rules.0);
        tracing::info!(id = id.0, fault = ?rule.fault, filter = ?rule.filter, "fault injected");
        rules.1.push((id, rule));
        drop(rules);
        self.changed.send_modify(|g| *g += 1);
        id
    }

    /// Removes one rule; whether it existed.
    pub fn clear(&self, id: FaultId) -> bool {
        let mut rules = self.rules.lock();
        let before = rules.1.len();
        rules.1.retain(|(i, _)| *i != id);
        let removed = rules.1.len() != before;
        drop(rules);
        self.changed.send_modify(|g| *g += 1);
        removed
    }

    /// Removes every rule (and so releases hanging requests).
    pub fn clear_all(&self) {
        self.rules.lock().1.clear();
        self.changed.send_modify(|g| *g += 1);
        tracing::info!("faults cleared");
    }

    /// The current rules.
    pub fn rules(&self) -> Vec<(FaultId, FaultRule)> {
        self.rules.lock().1.clone()
    }

    /// Counts a request.
    pub fn count(&self, key: &RequestKey) {
        *self.counts.lock().entry(key.clone()).or_default() += 1;
    }

    /// The counters so far.
    pub fn counts(&self) -> RequestCounts {
        RequestCounts(self.counts.lock().clone())
    }

    /// Zeroes the counters.
    pub fn reset_counts(&self) {
        self.counts.lock().clear();
    }

    /// Applies the rules to a request: sleeps for latency, waits while a hang rule
    /// matches, and says whether to serve it.
    pub async fn apply(&self, key: &RequestKey) -> Verdict {
        let mut changed = self.changed.subscribe();
        // Bounded: each pass either returns or waits for a rule change.
        loop {
            let (latency, terminal) = self.take(key);
            if latency > Duration::ZERO {
                tokio::time::sleep(latency).await;
            }
            match terminal {
                Some((
                    _,
                    Fault::TooManyRequests {
                        retry_after_seconds,
                    },
                )) => {
                    return Verdict::TooManyRequests(retry_after_seconds);
                }
                Some((_, Fault::Error { code })) => return Verdict::Error(code),
                Some((id, Fault::Hang)) => {
                    tracing::debug!(id = id.0, verb = ?key.verb, resource = %key.resource, "request hangs");
                    // Wait until this rule is gone, then look at the rules again.
                    loop {
                        if changed.changed().await.is_err() {
                            return Verdict::Error(503);
                        }
                        if !self.rules.lock().1.iter().any(|(i, _)| *i == id) {
                            break;
                        }
                    }
                }
                Some((_, Fault::Latency { .. })) | None => return Verdict::Proceed,
            }
        }
    }

    /// Matches the rules: total latency, and the first terminal fault. Uses up `times`.
    fn take(&self, key: &RequestKey) -> (Duration, Option<(FaultId, Fault)>) {
        let mut rules = self.rules.lock();
        let mut latency = Duration::ZERO;
        let mut terminal = None;
        for (id, rule) in rules.1.iter_mut() {
            if rule.times == Some(0) || !rule.filter.matches(key) {
                continue;
            }
            match &rule.fault {
                Fault::Latency { millis } => latency += Duration::from_millis(*millis),
                other if terminal.is_none() => terminal = Some((*id, other.clone())),
                _ => continue,
            }
            if let Some(n) = rule.times.as_mut() {
                *n -= 1;
            }
        }
        rules.1.retain(|(_, r)| r.times != Some(0));
        (latency, terminal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(verb: Verb, resource: &str) -> RequestKey {
        RequestKey {
            verb,
            resource: resource.into(),
            user_agent: "kubectl/v1.32".into(),
        }
    }

    #[test]
    fn filters_match_verbs_resources_and_agents() {
        let f = FaultRule::new(Fault::Hang)
            .verbs([Verb::List])
            .resources(["failoverpolicies"])
            .filter;
        assert!(f.matches(&key(Verb::List, "failoverpolicies.lifeline.dev")));
        assert!(!f.matches(&key(Verb::Watch, "failoverpolicies.lifeline.dev")));
        assert!(!f.matches(&key(Verb::List, "services")));
        let ua = FaultRule::new(Fault::Hang).user_agent("kubectl").filter;
        assert!(ua.matches(&key(Verb::Get, "x")));
    }

    #[test]
    fn rules_read_from_the_control_endpoints_json() {
        let rule: FaultRule = serde_json::from_str(
            r#"{"fault":{"type":"tooManyRequests","retryAfterSeconds":2},"filter":{"verbs":["list","watch"],"userAgent":"kubectl"},"times":1}"#,
        )
        .unwrap();
        assert_eq!(
            rule,
            FaultRule::new(Fault::TooManyRequests {
                retry_after_seconds: 2
            })
            .verbs([Verb::List, Verb::Watch])
            .user_agent("kubectl")
            .times(1)
        );
        let hang: FaultRule = serde_json::from_str(r#"{"fault":{"type":"hang"}}"#).unwrap();
        assert_eq!(hang, FaultRule::new(Fault::Hang));
        let latency: FaultRule =
            serde_json::from_str(r#"{"fault":{"type":"latency","millis":5}}"#).unwrap();
        assert_eq!(latency.fault, Fault::Latency { millis: 5 });
    }

    #[tokio::test]
    async fn a_limited_rule_expires_after_its_uses() {
        let faults = Faults::default();
        faults.inject(FaultRule::new(Fault::Error { code: 503 }).times(1));
        assert_eq!(
            faults.apply(&key(Verb::Get, "services")).await,
            Verdict::Error(503)
        );
        assert_eq!(
            faults.apply(&key(Verb::Get, "services")).await,
            Verdict::Proceed
        );
        assert!(faults.rules().is_empty());
    }
}
