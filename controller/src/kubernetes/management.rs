//! The `kubernetes` policy source: FailoverPolicy and MemberCluster CRs watched in the
//! management cluster.
//!
//! ```text
//!  management API ──watch (DynamicObject)──► decode + validate each object
//!                                              │ good  → replaces that object's entry
//!                                              │ bad   → problem recorded, previous good
//!                                              │         version of that object kept
//!                                              ▼
//!                               watch::Sender<ManagementView> ──► lead loop
//! ```
//!
//! Objects are watched untyped and decoded one by one, so one malformed CR cannot break
//! the stream for the others. When the API goes away the view keeps its last contents
//! (and says it is disconnected): steering continues on the last known policies, which
//! the leader also mirrors into its store for restarts.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject},
    runtime::{WatchStreamExt, watcher},
};
use lifeline_crds::{
    FailoverPolicy, MemberCluster, document,
    validate::{self, Problem},
};
use tokio::sync::watch;
use tracing::{info, warn};

/// What the management cluster says, as last seen.
#[derive(Clone, Debug, Default)]
pub struct ManagementView {
    /// Last good version of each policy, by `namespace/name`.
    pub policies: BTreeMap<String, FailoverPolicy>,
    /// Last good version of each member cluster, by name.
    pub clusters: BTreeMap<String, MemberCluster>,
    /// Problems of objects whose current version is invalid, by `Kind namespace/name`.
    pub problems: BTreeMap<String, Vec<Problem>>,
    /// Both watches have completed their first list.
    pub synced: bool,
    /// The API answered recently; `since` is when this last changed.
    pub connected: bool,
    pub since: Option<SystemTime>,
}

/// Watches the management cluster until dropped.
pub struct ManagementSource {
    client: Client,
    view: watch::Receiver<ManagementView>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ManagementSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementSource").finish_non_exhaustive()
    }
}

impl Drop for ManagementSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ManagementSource {
    /// Starts watching; FailoverPolicies in `namespace` (all when `None`).
    pub fn spawn(client: Client, namespace: Option<String>) -> Self {
        let (tx, view) = watch::channel(ManagementView::default());
        let tx = std::sync::Arc::new(tx);
        let synced = std::sync::Arc::new(parking_lot::Mutex::new((false, false)));
        let policy_ar = ApiResource::erase::<FailoverPolicy>(&());
        let cluster_ar = ApiResource::erase::<MemberCluster>(&());
        let policies: Api<DynamicObject> = match &namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &policy_ar),
            None => Api::all_with(client.clone(), &policy_ar),
        };
        let clusters: Api<DynamicObject> = Api::all_with(client.clone(), &cluster_ar);
        let tasks = vec![
            tokio::spawn(run_watch(
                policies,
                Kind::Policy,
                tx.clone(),
                synced.clone(),
            )),
            tokio::spawn(run_watch(clusters, Kind::Cluster, tx, synced)),
        ];
        Self {
            client,
            view,
            tasks,
        }
    }

    /// The management cluster's client (for writing status).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The view; changes are signalled through the receiver.
    pub fn view(&self) -> watch::Receiver<ManagementView> {
        self.view.clone()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Policy,
    Cluster,
}

fn key_of(obj: &DynamicObject, kind: Kind) -> String {
    let name = obj.metadata.name.clone().unwrap_or_default();
    match kind {
        Kind::Policy => format!("{}/{name}", lifeline_crds::namespace_of(&obj.metadata)),
        Kind::Cluster => name,
    }
}

/// Decodes and validates one object; `Err` carries every problem.
fn decode(obj: &DynamicObject, kind: Kind) -> Result<Decoded, Vec<Problem>> {
    let value = serde_json::to_value(obj).map_err(|e| vec![Problem::new("", e.to_string())])?;
    match kind {
        Kind::Policy => checked(value, validate::failover_policy).map(Decoded::Policy),
        Kind::Cluster => checked(value, validate::member_cluster).map(Decoded::Cluster),
    }
}

/// `value` decoded as a `T` that `validate` finds no problem with.
fn checked<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    validate: fn(&T) -> Vec<Problem>,
) -> Result<T, Vec<Problem>> {
    let object: T = document::decode(value).map_err(|p| vec![p])?;
    let problems = validate(&object);
    if problems.is_empty() {
        Ok(object)
    } else {
        Err(problems)
    }
}

enum Decoded {
    Policy(FailoverPolicy),
    Cluster(MemberCluster),
}

fn label(kind: Kind, key: &str) -> String {
    match kind {
        Kind::Policy => format!("FailoverPolicy {key}"),
        Kind::Cluster => format!("MemberCluster {key}"),
    }
}

fn apply(view: &mut ManagementView, obj: &DynamicObject, kind: Kind) {
    let key = key_of(obj, kind);
    match decode(obj, kind) {
        Ok(Decoded::Policy(p)) => {
            view.policies.insert(key.clone(), p);
            view.problems.remove(&label(kind, &key));
        }
        Ok(Decoded::Cluster(c)) => {
            view.clusters.insert(key.clone(), c);
            view.problems.remove(&label(kind, &key));
        }
        Err(problems) => {
            for p in &problems {
                warn!(object = %label(kind, &key), problem = %p, "invalid object; keeping its last good version");
            }
            view.problems.insert(label(kind, &key), problems);
        }
    }
}

fn remove(view: &mut ManagementView, key: &str, kind: Kind) {
    match kind {
        Kind::Policy => view.policies.remove(key).map(drop),
        Kind::Cluster => view.clusters.remove(key).map(drop),
    };
    view.problems.remove(&label(kind, key));
}

fn set_connected(view: &mut ManagementView, connected: bool) {
    if view.connected != connected {
        view.connected = connected;
        view.since = Some(SystemTime::now());
        if connected {
            info!("management API reachable");
        } else {
            warn!("management API unreachable; steering on the last known policies");
        }
    }
}

async fn run_watch(
    api: Api<DynamicObject>,
    kind: Kind,
    tx: std::sync::Arc<watch::Sender<ManagementView>>,
    synced: std::sync::Arc<parking_lot::Mutex<(bool, bool)>>,
) {
    // A relist buffers objects until it completes, then replaces this kind's entries:
    // objects that are gone are removed only once the API has said so in full.
    let mut relist: Option<BTreeMap<String, DynamicObject>> = None;
    let config = watcher::Config::default().any_semantic();
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => relist = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(obj)) => {
                if let Some(buf) = relist.as_mut() {
                    buf.insert(key_of(&obj, kind), obj);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let listed = relist.take().unwrap_or_default();
                let both = {
                    let mut s = synced.lock();
                    match kind {
                        Kind::Policy => s.0 = true,
                        Kind::Cluster => s.1 = true,
                    }
                    s.0 && s.1
                };
                tx.send_modify(|view| {
                    set_connected(view, true);
                    let present: Vec<String> = match kind {
                        Kind::Policy => view.policies.keys().cloned().collect(),
                        Kind::Cluster => view.clusters.keys().cloned().collect(),
                    };
                    for key in present.iter().filter(|k| !listed.contains_key(*k)) {
                        remove(view, key, kind);
                    }
                    for obj in listed.values() {
                        apply(view, obj, kind);
                    }
                    view.synced = both;
                });
            }
            Ok(watcher::Event::Apply(obj)) => tx.send_modify(|view| {
                set_connected(view, true);
                apply(view, &obj, kind);
            }),
            Ok(watcher::Event::Delete(obj)) => tx.send_modify(|view| {
                set_connected(view, true);
                remove(view, &key_of(&obj, kind), kind);
            }),
            Err(e) => {
                // Keep everything; the watcher backs off and retries by itself.
                warn!(kind = ?kind, error = %e, "management watch failed");
                tx.send_if_modified(|view| {
                    let was = view.connected;
                    set_connected(view, false);
                    was
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
