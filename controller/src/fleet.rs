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
//! A kubeconfig read from a Secret is sealed into the store (see [`crate::credentials`])
//! when a key is configured. When the Secret cannot be read or no longer holds a usable
//! kubeconfig (the management API is down at a restart, or someone broke the Secret),
//! the cached copy is used instead, and a warning says so. Each Secret in use is read
//! again every `recheckInterval`; a change restarts that cluster's watcher with it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use lifeline_crds::{AddressSource, FailoverPolicy, MemberCluster, SecretKeyRef};
use tokio::sync::watch;
use tracing::{info, warn};

use lifeline_engine::{Observation, SourceState, TargetKey};

use crate::{
    budget::BudgetConfig,
    credentials::SealKey,
    member::{self, MemberHandle, MemberView, MemberWatcher, ServiceKey, WatchOptions},
    policies::policy_id,
    store::{PolicySnapshot, Store, Writer},
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
    /// Where kubeconfigs read from Secrets are kept, sealed; `None`: not kept.
    cache: Option<CredentialCache>,
    /// How often a Secret in use is read again.
    recheck: Duration,
    /// Digest of the bytes each cluster's Secret last held, as last read.
    seen: BTreeMap<String, Digest>,
    /// Clusters whose kubeconfig this term has sealed into the store.
    sealed: BTreeSet<String>,
}

/// The store and key that keep member kubeconfigs read from Secrets.
#[derive(Clone, Debug)]
pub struct CredentialCache {
    pub store: Store,
    pub key: std::sync::Arc<SealKey>,
}

type Digest = [u8; 32];

fn digest(bytes: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// Where a Secret reference points, as `namespace/name/key`.
fn secret_text(r: &SecretKeyRef, default_namespace: &str) -> String {
    let ns = r.namespace.as_deref().unwrap_or(default_namespace);
    format!("{ns}/{}/{}", r.name, r.key)
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

/// Reads the bytes a Secret holds under its key, in the management cluster.
async fn secret_bytes(
    client: &kube::Client,
    r: &SecretKeyRef,
    default_namespace: &str,
) -> Result<Vec<u8>, String> {
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
    secret
        .data
        .and_then(|mut d| d.remove(&r.key))
        .map(|b| b.0)
        .ok_or_else(|| format!("Secret {ns}/{} has no key {:?}", r.name, r.key))
}

/// Reads a Secret again every `every` and counts changes of its bytes (from `seen`).
/// Unreadable moments change nothing: only bytes that differ count.
fn follow_secret(
    client: kube::Client,
    r: SecretKeyRef,
    namespace: String,
    mut seen: Option<Digest>,
    every: Duration,
) -> SecretFollower {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let read = tokio::time::timeout(
                Duration::from_secs(10),
                secret_bytes(&client, &r, &namespace),
            )
            .await;
            if let Ok(Ok(bytes)) = read {
                let d = digest(&bytes);
                if seen != Some(d) {
                    seen = Some(d);
                    if tx.send(Some(d)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    SecretFollower { rx, task }
}

/// A task that notices when a Secret in use changes.
#[derive(Debug)]
struct SecretFollower {
    rx: watch::Receiver<Option<Digest>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SecretFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SecretFollower {
    fn changed(&self) -> bool {
        self.rx.has_changed().unwrap_or(false)
    }
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
            cache: None,
            recheck: Duration::from_secs(30),
            seen: BTreeMap::new(),
            sealed: BTreeSet::new(),
        }
    }

    /// Keeps kubeconfigs read from Secrets in `cache`, and reads each Secret in use
    /// again every `recheck`.
    pub fn with_credentials(mut self, cache: Option<CredentialCache>, recheck: Duration) -> Self {
        self.cache = cache;
        self.recheck = recheck;
        self
    }

    /// The kubeconfig of `name` from its Secret, or else from the sealed copy in the
    /// store; a fresh read is sealed into the store when it differs from that copy.
    async fn load_from_secret(
        &mut self,
        name: &str,
        r: &SecretKeyRef,
        writer: Writer<'_>,
    ) -> Result<(kube::Config, Digest), String> {
        let Some(client) = &self.management else {
            return Err(
                "kubeconfigSecretRef needs policySource kubernetes; use kubeconfigPath with files"
                    .to_owned(),
            );
        };
        let secret = secret_text(r, &self.namespace);
        // Bounded: a hanging management API must not stall the leader.
        let read = tokio::time::timeout(
            Duration::from_secs(3),
            secret_bytes(client, r, &self.namespace),
        )
        .await
        .unwrap_or_else(|_| Err("timed out reading the Secret".to_owned()));
        let fresh = match read {
            Ok(bytes) => {
                self.seen.insert(name.to_owned(), digest(&bytes));
                match member::kube_config_from_bytes(&bytes).await {
                    Ok(config) => Ok((config, bytes)),
                    Err(e) => Err(format!(
                        "Secret {}/{} key {:?}: {e}",
                        r.namespace.as_deref().unwrap_or(&self.namespace),
                        r.name,
                        r.key
                    )),
                }
            }
            Err(e) => Err(e),
        };
        let Some(cache) = self.cache.clone() else {
            return fresh.map(|(config, bytes)| (config, digest(&bytes)));
        };
        let cached = match cache.store.credential(name).await {
            Ok(Some(sealed)) => cache
                .key
                .open(name, &secret, &sealed)
                .map(|plain| (plain, sealed.fetched_at)),
            Ok(None) => Err("no cached copy".to_owned()),
            Err(e) => Err(format!("cannot read the cached copy: {e}")),
        };
        match fresh {
            Ok((config, bytes)) => {
                let same = matches!(&cached, Ok((plain, _)) if *plain == bytes);
                if !same {
                    let sealed = cache.key.seal(name, &secret, &bytes);
                    match writer.save_credential(name, Some(&sealed)).await {
                        Ok(()) => info!(cluster = %name, "member kubeconfig cached, sealed"),
                        Err(e) => {
                            warn!(cluster = %name, error = %e, "cannot cache the member kubeconfig")
                        }
                    }
                }
                self.sealed.insert(name.to_owned());
                Ok((config, digest(&bytes)))
            }
            Err(problem) => {
                let (plain, fetched_at) = cached.map_err(|why| format!("{problem}; {why}"))?;
                let config = member::kube_config_from_bytes(&plain)
                    .await
                    .map_err(|e| format!("{problem}; the cached copy is unusable: {e}"))?;
                warn!(
                    cluster = %name,
                    error = %problem,
                    fetched_at = %lifeline_model::time::format(fetched_at),
                    "using the cached member kubeconfig"
                );
                Ok((config, digest(&plain)))
            }
        }
    }

    /// Starts, re-scopes and stops watchers to match the policy set. `writer` caches
    /// member kubeconfigs in the store.
    pub async fn reconcile(&mut self, snapshot: &PolicySnapshot, writer: Writer<'_>) {
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
            let rotated = w.follower.as_ref().is_some_and(SecretFollower::changed);
            if !keep {
                info!(cluster = %name, "member cluster watcher stopped");
            } else if rotated {
                info!(cluster = %name, "member kubeconfig Secret changed; watcher restarted");
            }
            keep && !rotated
        });
        self.unloaded.retain(|name, _| wanted.contains_key(name));
        self.seen.retain(|name, _| wanted.contains_key(name));
        let gone: Vec<String> = self
            .sealed
            .iter()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            self.sealed.remove(&name);
            if self.cache.is_some()
                && let Err(e) = writer.save_credential(&name, None).await
            {
                warn!(cluster = %name, error = %e, "cannot forget the cached member kubeconfig");
            }
        }
        let now = Instant::now();
        for (name, (cluster, services)) in wanted {
            if let Some(w) = self.watchers.get(&name) {
                w.handle.set_services(services);
                continue;
            }
            if self.unloaded.get(&name).is_some_and(|u| u.retry_at > now) {
                continue;
            }
            let loaded: Result<(kube::Config, Option<Digest>), String> = match (
                &cluster.spec.kubeconfig_path,
                &cluster.spec.kubeconfig_secret_ref,
            ) {
                (Some(path), _) => member::kube_config_from_path(std::path::Path::new(path))
                    .await
                    .map(|c| (c, None))
                    .map_err(|e| e.to_string()),
                (None, Some(r)) => self
                    .load_from_secret(&name, r, writer)
                    .await
                    .map(|(c, d)| (c, Some(d))),
                (None, None) => Err("no kubeconfig for a cluster that needs API access".to_owned()),
            };
            let (config, in_use) = match loaded {
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
                    let follower = match (
                        &self.management,
                        &cluster.spec.kubeconfig_secret_ref,
                        in_use,
                    ) {
                        (Some(client), Some(r), Some(in_use)) => Some(follow_secret(
                            client.clone(),
                            r.clone(),
                            self.namespace.clone(),
                            Some(self.seen.get(&name).copied().unwrap_or(in_use)),
                            self.recheck,
                        )),
                        _ => None,
                    };
                    self.watchers.insert(
                        name,
                        Watched {
                            spec: cluster.spec.clone(),
                            handle,
                            view,
                            follower,
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
