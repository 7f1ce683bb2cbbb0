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

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use lifeline_crds::{AddressSource, FailoverPolicy, MemberCluster};
use tracing::{info, warn};

use lifeline_engine::{Observation, SourceState, TargetKey};

use crate::{
    budget::BudgetConfig,
    member::{self, MemberHandle, MemberView, MemberWatcher, ServiceKey, WatchOptions},
    policies::policy_id,
    store::PolicySnapshot,
};

/// Watchers of the member clusters, owned by the leader.
#[derive(Default)]
pub struct Fleet {
    watchers: BTreeMap<String, Watched>,
    /// Clusters whose kubeconfig could not be loaded: why, and when to try again.
    unloaded: BTreeMap<String, Unloaded>,
    /// The management cluster's client, to read `kubeconfigSecretRef` Secrets.
    management: Option<kube::Client>,
    /// Where a `kubeconfigSecretRef` without a namespace points: Lifeline's own.
    namespace: String,
}

#[derive(Debug)]
struct Unloaded {
    reason: String,
    failures: u32,
    retry_at: Instant,
}

/// The pause after the `failures`-th failure in a row to load a kubeconfig.
fn reload_pause(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60))
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

/// Reads a member kubeconfig from a Secret in the management cluster.
async fn kubeconfig_from_secret(
    client: &kube::Client,
    r: &lifeline_crds::SecretKeyRef,
    default_namespace: &str,
) -> Result<kube::Config, String> {
    let ns = r
        .namespace
        .clone()
        .unwrap_or_else(|| default_namespace.to_owned());
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), &ns);
    let secret = secrets
        .get(&r.name)
        .await
        .map_err(|e| format!("cannot read Secret {ns}/{}: {e}", r.name))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .ok_or_else(|| format!("Secret {ns}/{} has no key {:?}", r.name, r.key))?;
    member::kube_config_from_bytes(&bytes.0)
        .await
        .map_err(|e| format!("Secret {ns}/{} key {:?}: {e}", r.name, r.key))
}

#[derive(Debug)]
struct Watched {
    /// What the watcher was started from; a change restarts it.
    spec: lifeline_crds::MemberClusterSpec,
    handle: MemberHandle,
    view: tokio::sync::watch::Receiver<MemberView>,
}

/// The service a policy looks for, as `(namespace, name)`.
fn service_of(p: &FailoverPolicy) -> Option<ServiceKey> {
    let s = p.spec.service.as_ref()?;
    let ns = s
        .namespace
        .clone()
        .or_else(|| p.metadata.namespace.clone())
        .unwrap_or_else(|| "default".to_owned());
    Some((ns, s.name.clone()))
}

fn needs_watcher(c: &MemberCluster) -> bool {
    c.spec.address_source != AddressSource::Static
}

impl Fleet {
    /// A fleet that can read member kubeconfigs from Secrets through `management`
    /// (those without a namespace in `namespace`).
    pub fn with_management(management: Option<kube::Client>, namespace: String) -> Self {
        Self {
            watchers: BTreeMap::new(),
            unloaded: BTreeMap::new(),
            management,
            namespace,
        }
    }

    /// Starts, re-scopes and stops watchers to match the policy set.
    pub async fn reconcile(&mut self, snapshot: &PolicySnapshot) {
        let mut wanted: BTreeMap<String, (&MemberCluster, BTreeSet<ServiceKey>)> = BTreeMap::new();
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
        self.watchers.retain(|name, w| {
            let keep = wanted.get(name).is_some_and(|(c, _)| c.spec == w.spec);
            if !keep {
                info!(cluster = %name, "member cluster watcher stopped");
            }
            keep
        });
        self.unloaded.retain(|name, _| wanted.contains_key(name));
        let now = Instant::now();
        for (name, (cluster, services)) in wanted {
            if let Some(w) = self.watchers.get(&name) {
                w.handle.set_services(services);
                continue;
            }
            if self.unloaded.get(&name).is_some_and(|u| u.retry_at > now) {
                continue;
            }
            let loaded: Result<kube::Config, String> = match (
                &cluster.spec.kubeconfig_path,
                &cluster.spec.kubeconfig_secret_ref,
            ) {
                (Some(path), _) => member::kube_config_from_path(std::path::Path::new(path))
                    .await
                    .map_err(|e| e.to_string()),
                (None, Some(r)) => match &self.management {
                    // Bounded: a hanging management API must not stall the leader.
                    Some(client) => tokio::time::timeout(
                        std::time::Duration::from_secs(3),
                        kubeconfig_from_secret(client, r, &self.namespace),
                    )
                    .await
                    .unwrap_or_else(|_| Err("timed out reading the Secret".to_owned())),
                    None => Err("kubeconfigSecretRef needs policySource kubernetes; use kubeconfigPath with files".to_owned()),
                },
                (None, None) => Err("no kubeconfig for a cluster that needs API access".to_owned()),
            };
            let config = match loaded {
                Ok(c) => c,
                Err(reason) => {
                    let failures = self.unloaded.get(&name).map_or(0, |u| u.failures) + 1;
                    let pause = reload_pause(failures);
                    warn!(cluster = %name, error = %reason, retry_in = ?pause, "cannot load the member kubeconfig");
                    self.unloaded.insert(
                        name,
                        Unloaded {
                            reason,
                            failures,
                            retry_at: now + pause,
                        },
                    );
                    continue;
                }
            };
            self.unloaded.remove(&name);
            let options = WatchOptions::for_address_source(cluster.spec.address_source);
            let budget = BudgetConfig::from(&cluster.spec.api_budget);
            match MemberWatcher::spawn(name.clone(), config, budget, services, options) {
                Ok(handle) => {
                    info!(cluster = %name, "member cluster watcher started");
                    let view = handle.view();
                    self.watchers.insert(
                        name,
                        Watched {
                            spec: cluster.spec.clone(),
                            handle,
                            view,
                        },
                    );
                }
                Err(e) => {
                    warn!(cluster = %name, error = %e, "cannot start the member watcher");
                    let failures = self.unloaded.get(&name).map_or(0, |u| u.failures) + 1;
                    self.unloaded.insert(
                        name,
                        Unloaded {
                            reason: format!("cannot start the watcher: {e}"),
                            failures,
                            retry_at: now + reload_pause(failures),
                        },
                    );
                }
            }
        }
    }

    /// Whether a cluster whose kubeconfig could not be loaded is due another try.
    pub fn reload_due(&self) -> bool {
        let now = Instant::now();
        self.unloaded.values().any(|u| u.retry_at <= now)
    }

    /// Why each cluster without a watcher has none, by cluster name.
    pub fn unloaded(&self) -> BTreeMap<String, String> {
        self.unloaded
            .iter()
            .map(|(n, u)| (n.clone(), u.reason.clone()))
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
                out.insert((t.cluster.clone(), policy_id(p)), addresses);
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
        let views = self.views();
        let mut out = Vec::new();
        for p in snapshot
            .policies
            .iter()
            .filter(|p| p.spec.health_check.is_none())
        {
            let Some(service) = service_of(p) else {
                continue;
            };
            for t in p.spec.targets.iter().flatten() {
                let Some(s) = views.get(&t.cluster).and_then(|v| v.services.get(&service)) else {
                    continue;
                };
                let ok = !s.unhealthy_hint();
                out.push((
                    TargetKey::new(policy_id(p), &t.cluster),
                    Observation {
                        at,
                        ok,
                        detail: format!("{} ready endpoints", s.ready_endpoints),
                    },
                ));
            }
        }
        out
    }

    /// Control-plane reachability of hint-only targets (targets with a health check are
    /// judged by the data plane, which an API outage does not stop).
    pub fn sources(&self, snapshot: &PolicySnapshot) -> BTreeMap<TargetKey, SourceState> {
        let views = self.views();
        let mut out = BTreeMap::new();
        for p in snapshot
            .policies
            .iter()
            .filter(|p| p.spec.health_check.is_none())
        {
            for t in p.spec.targets.iter().flatten() {
                if let Some(view) = views.get(&t.cluster) {
                    out.insert(
                        TargetKey::new(policy_id(p), &t.cluster),
                        view.control_plane.source_state(),
                    );
                }
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
        let pauses: Vec<u64> = (1..=9).map(|n| reload_pause(n).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
