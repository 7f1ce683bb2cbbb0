//! The leader's member clusters: one watcher per MemberCluster that needs API access,
//! and what their views mean for the engine.
//!
//! ```text
//!  policy set ─► reconcile() ─► MemberWatcher per cluster (scoped to referenced services)
//!                                   │ MemberView (addresses, readiness, control plane)
//!                                   ▼
//!          discovered()  addresses for targets whose cluster is not Static
//!          hints()       readiness observations, only for policies without a health
//!                        check (with one, probes of the data plane decide)
//!          sources()     control-plane reachability of hint-only targets, which feeds
//!                        `onSourceUnavailable` (freeze, or give up after maxStale)
//! ```
//!
//! Static clusters need no watcher. A cluster whose kubeconfig cannot be loaded is
//! reported (its MemberCluster status says why) and left without a watcher; its targets
//! keep their last known state. Loading is tried again with a backoff from 1 s to 60 s,
//! so a Secret that is fixed later is picked up without any change to the policies.
//!
//! A kubeconfig read from a Secret is sealed into the store (see [`crate::kubernetes::credentials`])
//! when a key is configured. When the Secret cannot be read or no longer holds a usable
//! kubeconfig (the management API is down at a restart, or someone broke the Secret),
//! the cached copy is used instead, and a warning says so. Each Secret in use is read
//! again every `recheckInterval`; a change restarts that cluster's watcher with it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use lifeline_crds::{AddressSource, FailoverPolicy, MemberCluster};
use lifeline_engine::{Observation, SourceState, TargetKey};
use lifeline_model::Backoff;
use tracing::{info, warn};

use crate::{
    kubernetes::budget::BudgetConfig,
    kubernetes::member::{MemberHandle, MemberView, MemberWatcher, ServiceKey, WatchOptions},
    store::{PolicySnapshot, Writer},
};

mod kubeconfigs;

pub use kubeconfigs::{CacheError, CredentialCache, LoadError};
use kubeconfigs::{Kubeconfigs, SecretFollower};

/// Watchers of the member clusters, owned by the leader.
pub struct Fleet {
    watchers: BTreeMap<String, Watched>,
    /// Clusters whose kubeconfig could not be loaded: why, and when to try again.
    unloaded: BTreeMap<String, Unloaded>,
    kubeconfigs: Kubeconfigs,
}

#[derive(Debug)]
struct Unloaded {
    reason: LoadError,
    pauses: Backoff,
    retry_at: Instant,
}

/// Pauses between attempts to load a kubeconfig: 1 s, doubling, up to a minute.
fn reload_pauses() -> Backoff {
    Backoff::unjittered(Duration::from_secs(1), Duration::from_secs(60))
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("watchers", &self.watchers)
            .finish_non_exhaustive()
    }
}

/// The namespace Lifeline runs in (for Secrets without one): the pod's namespace when
/// in a cluster, else `lifeline-system`. Read once at start.
pub fn own_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "lifeline-system".to_owned())
}

#[derive(Debug)]
struct Watched {
    /// What the watcher was started from; a change restarts it.
    spec: lifeline_crds::MemberClusterSpec,
    handle: MemberHandle,
    view: tokio::sync::watch::Receiver<MemberView>,
    /// For a kubeconfig from a Secret: what notices the Secret change.
    follower: Option<SecretFollower>,
}

/// The service a policy looks for, as `(namespace, name)`.
fn service_of(p: &FailoverPolicy) -> Option<ServiceKey> {
    let s = p.spec.service.as_ref()?;
    let ns = s.namespace.as_deref().unwrap_or(p.namespace_or_default());
    Some((ns.to_owned(), s.name.clone()))
}

fn needs_watcher(c: &MemberCluster) -> bool {
    c.spec.address_source != AddressSource::Static
}

/// The targets of policies without a health check, which member views judge, with
/// their policy.
fn hint_only(snapshot: &PolicySnapshot) -> impl Iterator<Item = (&FailoverPolicy, &str)> {
    (snapshot.policies.iter())
        .filter(|p| p.spec.health_check.is_none())
        .flat_map(|p| (p.spec.targets.iter().flatten()).map(move |t| (p, t.cluster.as_str())))
}

/// The clusters that need a watcher, by name, with the services their policies look for.
type Wanted<'a> = BTreeMap<String, (&'a MemberCluster, BTreeSet<ServiceKey>)>;

fn wanted_watchers(snapshot: &PolicySnapshot) -> Wanted<'_> {
    let mut wanted = Wanted::new();
    for c in snapshot.clusters.iter().filter(|c| needs_watcher(c)) {
        if let Some(name) = &c.metadata.name {
            wanted.insert(name.clone(), (c, BTreeSet::new()));
        }
    }
    for p in &snapshot.policies {
        let Some(service) = service_of(p) else {
            continue;
        };
        for t in p.spec.targets.iter().flatten() {
            if let Some((_, services)) = wanted.get_mut(&t.cluster) {
                services.insert(service.clone());
            }
        }
    }
    wanted
}

impl Fleet {
    /// A fleet that can read member kubeconfigs from Secrets through `management`
    /// (those without a namespace in `namespace`).
    pub fn with_management(management: Option<kube::Client>, namespace: String) -> Self {
        Self {
            watchers: BTreeMap::new(),
            unloaded: BTreeMap::new(),
            kubeconfigs: Kubeconfigs::new(management, namespace),
        }
    }

    /// Keeps kubeconfigs read from Secrets in `cache`, and reads each Secret in use
    /// again every `recheck`.
    pub fn with_credentials(mut self, cache: Option<CredentialCache>, recheck: Duration) -> Self {
        self.kubeconfigs.cache = cache;
        self.kubeconfigs.recheck = recheck;
        self
    }

    /// Starts, re-scopes and stops watchers to match the policy set. `writer` caches
    /// member kubeconfigs in the store.
    pub async fn reconcile(&mut self, snapshot: &PolicySnapshot, writer: Writer<'_>) {
        let wanted = wanted_watchers(snapshot);
        self.stop_unwanted(&wanted);
        self.unloaded.retain(|name, _| wanted.contains_key(name));
        let keep = |name: &str| wanted.contains_key(name);
        self.kubeconfigs.forget(keep, writer).await;
        let now = Instant::now();
        for (name, (cluster, services)) in wanted {
            if let Some(w) = self.watchers.get(&name) {
                w.handle.set_services(services);
            } else if self.unloaded.get(&name).is_none_or(|u| u.retry_at <= now) {
                match self.start(&name, cluster, services, writer).await {
                    Ok(watched) => {
                        self.unloaded.remove(&name);
                        self.watchers.insert(name, watched);
                    }
                    Err(reason) => self.failed(name, reason, now),
                }
            }
        }
    }

    /// Stops the watchers of clusters no longer wanted or changed, and of those whose
    /// Secret rotated (they start again).
    fn stop_unwanted(&mut self, wanted: &Wanted<'_>) {
        self.watchers.retain(|name, w| {
            let keep = wanted.get(name).is_some_and(|(c, _)| c.spec == w.spec);
            let rotated = w.follower.as_ref().is_some_and(SecretFollower::changed);
            if !keep {
                info!(cluster = %name, "member cluster watcher stopped");
            } else if rotated {
                info!(cluster = %name, "member kubeconfig Secret changed; watcher restarted");
            }
            keep && !rotated
        });
    }

    /// Loads the kubeconfig of `cluster` and starts its watcher.
    async fn start(
        &mut self,
        name: &str,
        cluster: &MemberCluster,
        services: BTreeSet<ServiceKey>,
        writer: Writer<'_>,
    ) -> Result<Watched, LoadError> {
        let (config, in_use) = self.kubeconfigs.load(name, cluster, writer).await?;
        let options = WatchOptions::for_address_source(cluster.spec.address_source);
        let budget = BudgetConfig::from(&cluster.spec.api_budget);
        let handle = MemberWatcher::spawn(name.to_owned(), config, budget, services, options)
            .map_err(LoadError::Start)?;
        info!(cluster = %name, "member cluster watcher started");
        Ok(Watched {
            spec: cluster.spec.clone(),
            view: handle.view(),
            handle,
            follower: self.kubeconfigs.follower(name, cluster, in_use),
        })
    }

    /// Records why `name` has no watcher, and when to try again.
    fn failed(&mut self, name: String, reason: LoadError, now: Instant) {
        let mut pauses = match self.unloaded.remove(&name) {
            Some(u) => u.pauses,
            None => reload_pauses(),
        };
        let pause = pauses.next_delay();
        warn!(cluster = %name, error = %reason, retry_in = ?pause, "member cluster has no watcher");
        let unloaded = Unloaded {
            reason,
            pauses,
            retry_at: now + pause,
        };
        self.unloaded.insert(name, unloaded);
    }

    /// Whether a cluster whose kubeconfig could not be loaded is due another try, or a
    /// Secret in use has changed.
    pub fn reload_due(&self) -> bool {
        let now = Instant::now();
        self.unloaded.values().any(|u| u.retry_at <= now)
            || self
                .watchers
                .values()
                .any(|w| w.follower.as_ref().is_some_and(SecretFollower::changed))
    }

    /// Why each cluster without a watcher has none, by cluster name.
    pub fn unloaded(&self) -> BTreeMap<String, String> {
        self.unloaded
            .iter()
            .map(|(n, u)| (n.clone(), u.reason.to_string()))
            .collect()
    }

    /// True when any view changed since the last call.
    pub fn changed(&mut self) -> bool {
        let mut any = false;
        for w in self.watchers.values_mut() {
            if w.view.has_changed().unwrap_or(false) {
                w.view.borrow_and_update();
                any = true;
            }
        }
        any
    }

    /// The views, by cluster name.
    pub fn views(&self) -> BTreeMap<String, MemberView> {
        self.watchers
            .iter()
            .map(|(n, w)| (n.clone(), w.view.borrow().clone()))
            .collect()
    }

    /// Addresses found through the APIs, by `(cluster, policy id)`.
    /// Addresses of each (cluster, policy) whose member view has finished its first
    /// list; targets of views still listing are absent.
    pub fn discovered(&self, snapshot: &PolicySnapshot) -> BTreeMap<(String, String), Vec<IpAddr>> {
        let views = self.views();
        let mut out = BTreeMap::new();
        for p in &snapshot.policies {
            let Some(service) = service_of(p) else {
                continue;
            };
            for t in p.spec.targets.iter().flatten() {
                let (Some(view), Some(cluster)) = (
                    views.get(&t.cluster),
                    snapshot
                        .clusters
                        .iter()
                        .find(|c| c.metadata.name.as_deref() == Some(&t.cluster)),
                ) else {
                    continue;
                };
                // Before its first full list a view knows nothing yet: "no address"
                // from it would move traffic away from a target that may be fine.
                if !view.synced {
                    continue;
                }
                let Some(s) = view.services.get(&service) else {
                    continue;
                };
                let addresses: Vec<IpAddr> = match cluster.spec.address_source {
                    AddressSource::LoadBalancer => s.load_balancer_ips.iter().copied().collect(),
                    AddressSource::EndpointSlice => s.ready_addresses.iter().copied().collect(),
                    AddressSource::Static => continue,
                };
                out.insert((t.cluster.clone(), p.id()), addresses);
            }
        }
        out
    }

    /// Readiness hints as observations, for targets of policies without a health check.
    pub fn hints(
        &self,
        snapshot: &PolicySnapshot,
        at: SystemTime,
    ) -> Vec<(TargetKey, Observation)> {
        let mut out = Vec::new();
        for (p, cluster) in hint_only(snapshot) {
            let (Some(service), Some(w)) = (service_of(p), self.watchers.get(cluster)) else {
                continue;
            };
            let view = w.view.borrow();
            let Some(s) = view.services.get(&service) else {
                continue;
            };
            let observation = Observation {
                at,
                ok: !s.unhealthy_hint(),
                detail: format!("{} ready endpoints", s.ready_endpoints),
            };
            out.push((TargetKey::new(p.id(), cluster), observation));
        }
        out
    }

    /// Control-plane reachability of hint-only targets (targets with a health check are
    /// judged by the data plane, which an API outage does not stop).
    pub fn sources(&self, snapshot: &PolicySnapshot) -> BTreeMap<TargetKey, SourceState> {
        let mut out = BTreeMap::new();
        for (p, cluster) in hint_only(snapshot) {
            if let Some(w) = self.watchers.get(cluster) {
                let state = w.view.borrow().control_plane.source_state();
                out.insert(TargetKey::new(p.id(), cluster), state);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_reloads_back_off_from_one_second_to_a_minute() {
        let mut pauses = reload_pauses();
        let pauses: Vec<u64> = (1..=9).map(|_| pauses.next_delay().as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
