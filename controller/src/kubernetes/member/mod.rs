//! Member-cluster watchers: the one place Lifeline reads a member cluster's API. Per
//! cluster at most two watch streams, scoped to the services policies reference, behind
//! the cluster's [`Budget`]; their result is a [`MemberView`] on a `watch` channel.
//!
//! ```text
//!  MemberHandle::set_services ─► scope ─┐
//!                                       ▼
//!  supervisor task ─┬─ EndpointSlices  kubernetes.io/service-name in (a,b,..)  ─┐
//!  (per cluster)    └─ Services        lifeline.dev/global=true  (LoadBalancer) ─┤ list once,
//!                                                                              │ then watch
//!        Budget (token bucket, Retry-After, circuit) ◄── every request ────────┘ from its rv
//!                                       │
//!                    Index ─► MemberView ─► watch::Receiver<MemberView>
//! ```
//!
//! **Selecting Services.** EndpointSlices carry `kubernetes.io/service-name`, so one
//! set-based label selector names exactly the referenced services. Services themselves
//! cannot be selected by several names (field selectors have no `in`), and one stream per
//! service would break the O(1) streams rule. So the Service stream selects the label
//! [`GLOBAL_LABEL`]`=true`, which operators put on Services that serve a global name, and
//! it is opened only for clusters whose addresses are the LoadBalancer ingress: an
//! `EndpointSlice` cluster needs no Service stream at all. Labelled Services that no
//! policy references are received but not reported; a referenced Service without the
//! label shows `service_found: false` (its slices still give readiness).
//! When every referenced service lives in one namespace, both streams are namespaced.
//!
//! **Streams.** Each stream lists once (`resourceVersion=0`, served from the API
//! server's watch cache) and then watches from the list's resourceVersion with
//! bookmarks, so the version stays fresh while nothing it selects changes (a real API
//! server sends one only once its resourceVersion has moved on). A stream that ends or
//! breaks is resumed from the last version seen; only `410 Gone` relists. A changed scope
//! reopens the streams and relists once. Nothing is polled; Nodes and Pods are never read.
//!
//! **Why not `kube::runtime::watcher`** (which the management cluster's reader uses):
//! measured with `bench-watch` on a real kube-apiserver (2,000 EndpointSlices, 20
//! services selected), both make the same requests and carry the same bytes to sync,
//! while idle and through 100 changes. They part where the incident lives. Refused
//! (403) for 10 s, this watcher sent 1 request and waits out the budget's long pause;
//! `watcher` with its default backoff sent 8 (9 with `resourceVersion=0`, 4 streaming),
//! one per backoff step, per stream, per cluster. After an outage that ends in `410
//! Gone`, this watcher was current 1.4–2.2 s after the API came back, `watcher`
//! 3.8–7.0 s (its backoff had grown through the outage). And `watcher` hides
//! bookmarks, which is how this one tells an idle stream from a dead one.
//!
//! **Reachability** comes from the budget (answers, failures, watch traffic) and is
//! reported apart from service data: when the API goes quiet, the last known addresses
//! stay in the view; the engine decides what a stale source means.

mod index;
mod kubeconfig;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::StreamExt as _;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Resource,
    api::{ListParams, ObjectList, WatchEvent, WatchParams},
};
use lifeline_crds::AddressSource;
use lifeline_model::Backoff;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tracing::{Instrument as _, debug, error, info, info_span, warn};

pub use self::kubeconfig::{kube_config_from_bytes, kube_config_from_path};
pub use crate::kubernetes::budget::ControlPlane;
use crate::kubernetes::budget::{Budget, BudgetConfig};
use index::Index;

/// The label operators put on Services that serve a global name (value `true`); the
/// Service stream selects it.
pub const GLOBAL_LABEL: &str = "lifeline.dev/global";
/// The label Kubernetes puts on every EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A referenced service: `(namespace, name)`.
pub type ServiceKey = (String, String);

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

// === Errors ===

/// What can go wrong before a watcher runs. Once running, a watcher has no errors: API
/// trouble shows in [`MemberView::control_plane`] and the logs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A kubeconfig is malformed; the message names what is wrong.
    #[error("invalid kubeconfig: {0}")]
    Kubeconfig(String),
    /// A kubeconfig file could not be read.
    #[error("reading kubeconfig {path}")]
    KubeconfigFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The budget or the client could not be built.
    #[error(transparent)]
    Budget(#[from] crate::kubernetes::budget::Error),
}

// === Options and views ===

/// Timings and scope of a watcher. The defaults suit production; tests shorten them.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchOptions {
    /// Open the Service stream (needed for LoadBalancer ingress addresses).
    pub watch_services: bool,
    /// Server-side lifetime of one watch request (`timeoutSeconds`); it is then resumed.
    pub watch_timeout: Duration,
    /// With neither events nor bookmarks for this long a stream is presumed dead and
    /// resumed. Longer than `watch_timeout`, so a healthy server always ends first.
    pub idle_timeout: Duration,
    /// First pause after a failed request; doubles (with jitter) up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest pause between failed attempts (the budget's circuit caps the rate further).
    pub backoff_max: Duration,
    /// A watch that ends sooner than this without delivering anything counts as a
    /// failure, so a server that closes every watch at once is not hammered.
    pub min_watch_life: Duration,
    /// Page size of the initial lists.
    pub page_size: u32,
    /// Longest time a whole list (every page, bodies included) may take; the budget
    /// times only response heads.
    pub list_timeout: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            watch_services: true,
            watch_timeout: Duration::from_secs(290),
            idle_timeout: Duration::from_secs(320),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            min_watch_life: Duration::from_secs(1),
            page_size: 500,
            list_timeout: Duration::from_secs(60),
        }
    }
}

impl WatchOptions {
    /// Defaults for a MemberCluster's `addressSource`: the Service stream only for
    /// `LoadBalancer`. `Static` clusters need no watcher at all.
    pub fn for_address_source(source: AddressSource) -> Self {
        Self {
            watch_services: source == AddressSource::LoadBalancer,
            ..Self::default()
        }
    }
}

/// What Lifeline knows about one member cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberView {
    /// The MemberCluster's name.
    pub cluster: String,
    /// Reachability of the API server; never a statement about the services' health.
    pub control_plane: ControlPlane,
    /// Last answer (or watch event or bookmark) from the API server.
    pub last_contact: Option<SystemTime>,
    /// Requests sent to this cluster's API server so far (see [`MemberHandle::budget`]
    /// for the counters by verb).
    pub requests: u64,
    /// Watch streams open right now (0..=2).
    pub watches_open: u32,
    /// Bookmarks received so far: each one moves the version a stream resumes from
    /// while nothing it watches changes.
    pub bookmarks: u64,
    /// Every stream of the current scope has finished its initial list.
    pub synced: bool,
    /// Services and EndpointSlices held: what the selectors returned.
    pub objects: ObjectCounts,
    /// One entry per service in scope, whether or not the cluster has it.
    pub services: BTreeMap<ServiceKey, ServiceView>,
    /// Requests the API server refused (401 or 403) and not yet allowed since, one line
    /// each: `list endpointslices: 403 Forbidden: <server's message>`. Retried at the
    /// longest backoff: a missing grant takes a person to fix.
    pub denied: Vec<String>,
}

/// Objects received and held, per stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectCounts {
    pub services: usize,
    pub endpoint_slices: usize,
}

/// One referenced service as seen in one member cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceView {
    /// The Service object was received (it carries [`GLOBAL_LABEL`]`=true`).
    pub service_found: bool,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: BTreeSet<IpAddr>,
    /// `status.loadBalancer.ingress[].hostname` (cannot become A/AAAA answers directly).
    pub load_balancer_hostnames: BTreeSet<String>,
    /// Addresses of ready endpoints over all the service's EndpointSlices.
    pub ready_addresses: BTreeSet<IpAddr>,
    /// Ready endpoints over all slices.
    pub ready_endpoints: u32,
    /// EndpointSlices that name this service.
    pub endpoint_slices: u32,
}

impl ServiceView {
    /// Zero ready endpoints: a hint that the service is unhealthy in this cluster. Only a
    /// hint: probes of the data plane decide.
    pub fn unhealthy_hint(&self) -> bool {
        self.ready_endpoints == 0
    }
}

// === Handle ===

/// A running watcher for one member cluster; dropping it stops the watcher and closes
/// its streams.
pub struct MemberHandle {
    view: watch::Receiver<MemberView>,
    scope: watch::Sender<BTreeSet<ServiceKey>>,
    budget: Budget,
    task: JoinHandle<()>,
}

impl fmt::Debug for MemberHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberHandle")
            .field("cluster", &self.view.borrow().cluster)
            .field("scope", &self.scope.borrow().len())
            .finish_non_exhaustive()
    }
}

impl MemberHandle {
    /// The cluster's view; changes whenever services, reachability or counters change.
    pub fn view(&self) -> watch::Receiver<MemberView> {
        self.view.clone()
    }

    /// Re-scopes the streams to these services. A different set reopens the streams and
    /// relists once; the same set does nothing.
    pub fn set_services(&self, services: BTreeSet<ServiceKey>) {
        self.scope.send_if_modified(|s| {
            if *s == services {
                false
            } else {
                *s = services;
                true
            }
        });
    }

    /// The cluster's API budget (counters by verb, circuit state).
    pub fn budget(&self) -> &Budget {
        &self.budget
    }
}

impl Drop for MemberHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts member-cluster watchers.
#[derive(Debug)]
pub struct MemberWatcher;

impl MemberWatcher {
    /// Starts watching one member cluster (inside a tokio runtime). `config` is the
    /// cluster's kube configuration (see [`kube_config_from_bytes`]); every request made
    /// for it goes through a fresh [`Budget`] built from `budget`.
    pub fn spawn(
        name: String,
        config: kube::Config,
        budget: BudgetConfig,
        services: BTreeSet<ServiceKey>,
        options: WatchOptions,
    ) -> Result<MemberHandle> {
        let budget = Budget::new(budget)?;
        let client = budget.client(config)?;
        let (view_tx, view) = watch::channel(MemberView {
            cluster: name.clone(),
            control_plane: ControlPlane::Unknown,
            last_contact: None,
            requests: 0,
            watches_open: 0,
            bookmarks: 0,
            synced: false,
            objects: ObjectCounts::default(),
            services: BTreeMap::new(),
            denied: Vec::new(),
        });
        let (scope, scope_rx) = watch::channel(services);
        let shared = Arc::new(Shared {
            cluster: name.clone(),
            budget: budget.clone(),
            index: Mutex::new(Index::default()),
            streams: Mutex::new(StreamState::default()),
            view: view_tx,
        });
        let task = tokio::spawn(
            supervise(shared, client, options, scope_rx)
                .instrument(info_span!("member", cluster = %name)),
        );
        Ok(MemberHandle {
            view,
            scope,
            budget,
            task,
        })
    }

    /// Starts the watcher a MemberCluster asks for: its `apiBudget` (default circuit and
    /// timeouts) and the Service stream only for `addressSource: LoadBalancer`. `None`
    /// for a `Static` cluster, which needs no API access.
    pub fn spawn_for(
        cluster: &lifeline_crds::MemberCluster,
        config: kube::Config,
        services: BTreeSet<ServiceKey>,
    ) -> Result<Option<MemberHandle>> {
        use kube::ResourceExt as _;
        let spec = &cluster.spec;
        if spec.address_source == AddressSource::Static {
            return Ok(None);
        }
        Self::spawn(
            cluster.name_any(),
            config,
            BudgetConfig::from(&spec.api_budget),
            services,
            WatchOptions::for_address_source(spec.address_source),
        )
        .map(Some)
    }
}

// === Supervisor ===

/// State shared by the supervisor and its streams.
struct Shared {
    cluster: String,
    budget: Budget,
    index: Mutex<Index>,
    streams: Mutex<StreamState>,
    view: watch::Sender<MemberView>,
}

#[derive(Debug, Default)]
struct StreamState {
    scope: BTreeSet<ServiceKey>,
    watches_open: u32,
    bookmarks: u64,
    /// Streams running for this scope, and how many have listed.
    expected: u32,
    listed: u32,
    /// Per stream kind: the last refusal (401/403), cleared by the next success.
    denied: BTreeMap<&'static str, String>,
}

/// The refusal line for a 401 or 403 answer; `None` for any other error.
fn refusal(verb: &str, kind: &str, error: &kube::Error) -> Option<String> {
    match error {
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => Some(format!(
            "{verb} {kind}: {} {}: {}",
            s.code, s.reason, s.message
        )),
        _ => None,
    }
}

impl Shared {
    /// Records (or, with `None`, leaves alone) a refusal of `kind`; returns whether there
    /// was one. A new refusal is logged as an error once: it needs a person.
    fn note_refusal(&self, kind: &'static str, refusal: Option<String>) -> bool {
        let Some(line) = refusal else {
            return false;
        };
        let mut streams = self.streams.lock();
        if streams.denied.get(kind) != Some(&line) {
            error!(cluster = %self.cluster, refused = %line,
                "the member API server refuses a request Lifeline needs; grant deploy/rbac/member-cluster.yaml");
            streams.denied.insert(kind, line);
        }
        true
    }

    /// Recomputes the view; receivers wake only when something changed.
    fn publish(&self) {
        let (objects, services, watches_open, bookmarks, synced, denied) = {
            let streams = self.streams.lock();
            let index = self.index.lock();
            let (svc, slices) = index.counts();
            (
                ObjectCounts {
                    services: svc,
                    endpoint_slices: slices,
                },
                index.services_view(&streams.scope),
                streams.watches_open,
                streams.bookmarks,
                streams.listed >= streams.expected,
                streams.denied.values().cloned().collect(),
            )
        };
        let next = MemberView {
            cluster: self.cluster.clone(),
            control_plane: self.budget.control_plane(),
            last_contact: self.budget.last_contact(),
            requests: self.budget.requests(),
            watches_open,
            bookmarks,
            synced,
            objects,
            services,
            denied,
        };
        self.view.send_if_modified(|v| {
            if *v == next {
                false
            } else {
                *v = next;
                true
            }
        });
    }
}

async fn supervise(
    shared: Arc<Shared>,
    client: kube::Client,
    options: WatchOptions,
    mut scope_rx: watch::Receiver<BTreeSet<ServiceKey>>,
) {
    let mut budget_rx = shared.budget.subscribe();
    // Bounded by the handle: the loop ends when the scope sender is dropped.
    loop {
        let scope = scope_rx.borrow_and_update().clone();
        let plan = Plan::new(&scope, &options);
        {
            let mut s = shared.streams.lock();
            s.scope = scope.clone();
            s.expected = plan.streams();
            s.listed = 0;
        }
        info!(
            services = scope.len(),
            streams = plan.streams(),
            namespace = plan.namespace.as_deref().unwrap_or("*"),
            "watching member cluster"
        );
        shared.publish();
        {
            let streams = run_plan(&shared, &client, &plan, &options);
            tokio::pin!(streams);
            let mut ended = false;
            // Bounded: ends when the scope changes or the handle is dropped.
            loop {
                tokio::select! {
                    () = &mut streams, if !ended => {
                        // Stream loops never end (an empty plan waits forever); should
                        // one ever return, say so and keep serving scope changes.
                        warn!("member streams ended unexpectedly");
                        ended = true;
                    }
                    changed = scope_rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                    changed = budget_rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        shared.publish();
                    }
                }
            }
        }
        // The old streams are dropped, so their watches are closed; the new lists will
        // replace what they held.
        shared.streams.lock().watches_open = 0;
    }
}

/// The selectors for one scope.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    /// `Some` when every referenced service is in this namespace.
    namespace: Option<String>,
    /// `kubernetes.io/service-name in (...)`; `None` when the scope is empty.
    slices: Option<String>,
    /// `lifeline.dev/global=true` when Services are watched and the scope is not empty.
    services: Option<String>,
}

impl Plan {
    fn new(scope: &BTreeSet<ServiceKey>, options: &WatchOptions) -> Self {
        if scope.is_empty() {
            return Self {
                namespace: None,
                slices: None,
                services: None,
            };
        }
        let namespaces: BTreeSet<&str> = scope.iter().map(|(ns, _)| ns.as_str()).collect();
        let names: BTreeSet<&str> = scope.iter().map(|(_, n)| n.as_str()).collect();
        let names: Vec<&str> = names.into_iter().collect();
        Self {
            namespace: (namespaces.len() == 1)
                .then(|| namespaces.first().map(|s| (*s).to_owned()))
                .flatten(),
            slices: Some(format!("{SERVICE_NAME_LABEL} in ({})", names.join(","))),
            services: options
                .watch_services
                .then(|| format!("{GLOBAL_LABEL}=true")),
        }
    }

    fn streams(&self) -> u32 {
        u32::from(self.slices.is_some()) + u32::from(self.services.is_some())
    }

    fn api<K>(&self, client: &kube::Client) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
}

async fn run_plan(shared: &Shared, client: &kube::Client, plan: &Plan, options: &WatchOptions) {
    let slices = async {
        match &plan.slices {
            Some(sel) => run_stream::<EndpointSlice>(shared, plan.api(client), sel, options).await,
            None => std::future::pending().await,
        }
    };
    let services = async {
        match &plan.services {
            Some(sel) => run_stream::<Service>(shared, plan.api(client), sel, options).await,
            None => std::future::pending().await,
        }
    };
    tokio::join!(slices, services);
}

// === Streams ===

/// A kind of object a stream feeds into the index.
trait Indexed:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug + Send + 'static
{
    const KIND: &'static str;
    fn apply(index: &mut Index, obj: &Self);
    fn delete(index: &mut Index, obj: &Self);
    fn reset(index: &mut Index, items: &[Self]);
}

impl Indexed for Service {
    const KIND: &'static str = "services";
    fn apply(index: &mut Index, obj: &Self) {
        index.apply_service(obj);
    }
    fn delete(index: &mut Index, obj: &Self) {
        index.delete_service(obj);
    }
    fn reset(index: &mut Index, items: &[Self]) {
        index.reset_services(items);
    }
}

impl Indexed for EndpointSlice {
    const KIND: &'static str = "endpointslices";
    fn apply(index: &mut Index, obj: &Self) {
        index.apply_slice(obj);
    }
    fn delete(index: &mut Index, obj: &Self) {
        index.delete_slice(obj);
    }
    fn reset(index: &mut Index, items: &[Self]) {
        index.reset_slices(items);
    }
}

/// Why a watch ended.
#[derive(Debug)]
enum WatchEnd {
    /// The server closed it (its timeout): resume at once.
    Closed { delivered: bool },
    /// `410 Gone`: the version is too old; relist.
    Gone,
    /// Broken or silent; resume after a pause.
    Failed(String),
}

/// Jittered exponential pauses between failed attempts.
struct Pauses(Backoff);

impl Pauses {
    fn new(options: &WatchOptions) -> Self {
        Self(Backoff::new(options.backoff_min, options.backoff_max))
    }

    fn reset(&mut self) {
        self.0.reset();
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0.next_delay()).await;
    }

    /// After a refusal (401/403) the longest pause at once: retrying sooner cannot help
    /// until someone changes the grant, and it only adds load. Otherwise [`Pauses::wait`].
    async fn wait_after(&mut self, refused: bool) {
        if refused {
            tokio::time::sleep(self.0.max()).await;
        } else {
            self.wait().await;
        }
    }
}

/// One stream: list once, then watch from the last version seen, forever.
async fn run_stream<K: Indexed>(
    shared: &Shared,
    api: Api<K>,
    selector: &str,
    options: &WatchOptions,
) {
    let mut stream = ListWatch {
        shared,
        api,
        selector,
        options,
        version: None,
        pauses: Pauses::new(options),
    };
    // Bounded by the supervisor, which drops this future on re-scope or shutdown.
    loop {
        let Some(rv) = stream.listed_version().await else {
            continue;
        };
        let Some((end, opened)) = stream.watch_from(&rv).await else {
            continue;
        };
        stream.resume_after(end, opened).await;
    }
}

/// One stream's selection and where it resumes.
struct ListWatch<'a, K> {
    shared: &'a Shared,
    api: Api<K>,
    selector: &'a str,
    options: &'a WatchOptions,
    /// The last resourceVersion seen; `None` lists afresh.
    version: Option<String>,
    pauses: Pauses,
}

impl<K: Indexed> ListWatch<'_, K> {
    /// The version to watch from: the last one seen, or else a new list's, which resets
    /// the index. `None` when the list failed (after the pause that follows).
    async fn listed_version(&mut self) -> Option<String> {
        if let Some(rv) = &self.version {
            return Some(rv.clone());
        }
        let kind = K::KIND;
        let listed = tokio::time::timeout(
            self.options.list_timeout,
            list::<K>(&self.api, self.selector, self.options.page_size),
        )
        .await
        .unwrap_or_else(|_| Err(kube::Error::Service("list timed out".into())));
        match listed {
            Ok((items, rv)) => {
                info!(kind, objects = items.len(), %rv, "listed");
                K::reset(&mut self.shared.index.lock(), &items);
                {
                    let mut streams = self.shared.streams.lock();
                    streams.listed += 1;
                    streams.denied.remove(kind);
                }
                self.shared.publish();
                self.version = Some(rv.clone());
                Some(rv)
            }
            Err(error) => {
                warn!(kind, error = %kubeconfig::error_chain(&error), "list failed");
                self.pause_after("list", &error).await;
                None
            }
        }
    }

    /// Watches from `rv` until the watch ends; returns how it ended and when it opened.
    /// `None` when it could not be opened (an expired version is forgotten, so the next
    /// round lists).
    async fn watch_from(&mut self, rv: &str) -> Option<(WatchEnd, Instant)> {
        let kind = K::KIND;
        let params = WatchParams::default()
            .labels(self.selector)
            .timeout(self.options.watch_timeout.as_secs().clamp(1, 294) as u32);
        let stream = match self.api.watch(&params, rv).await {
            Ok(stream) => stream,
            Err(kube::Error::Api(status)) if status.code == 410 => {
                info!(kind, %rv, "resourceVersion expired; relisting");
                self.version = None;
                return None;
            }
            Err(error) => {
                debug!(kind, %rv, error = %kubeconfig::error_chain(&error), "watch failed to open");
                self.pause_after("watch", &error).await;
                return None;
            }
        };
        let shared = self.shared;
        shared.streams.lock().denied.remove(kind);
        let opened = Instant::now();
        shared.streams.lock().watches_open += 1;
        shared.publish();
        let end = follow::<K>(shared, stream, &mut self.version, self.options.idle_timeout).await;
        {
            let mut s = shared.streams.lock();
            s.watches_open = s.watches_open.saturating_sub(1);
        }
        shared.publish();
        Some((end, opened))
    }

    /// A failed request is published (a refusal named) and paused after.
    async fn pause_after(&mut self, verb: &str, error: &kube::Error) {
        let kind = K::KIND;
        let refused = self.shared.note_refusal(kind, refusal(verb, kind, error));
        self.shared.publish();
        self.pauses.wait_after(refused).await;
    }

    /// Resumes at once after a watch the server closed in the normal way, and pauses
    /// first after one that broke or closed as soon as it opened.
    async fn resume_after(&mut self, end: WatchEnd, opened: Instant) {
        let kind = K::KIND;
        match end {
            WatchEnd::Closed { delivered }
                if delivered || opened.elapsed() >= self.options.min_watch_life =>
            {
                debug!(kind, "watch closed by the server; resuming");
                self.pauses.reset();
            }
            WatchEnd::Closed { .. } => {
                debug!(kind, "watch closed at once; pausing before resuming");
                self.pauses.wait().await;
            }
            WatchEnd::Gone => {
                info!(kind, "resourceVersion expired during the watch; relisting");
                self.version = None;
            }
            WatchEnd::Failed(reason) => {
                info!(kind, %reason, "watch broke; resuming from the last version");
                self.pauses.wait().await;
            }
        }
    }
}

/// Lists every page; returns the items and the list's resourceVersion.
async fn list<K: Indexed>(
    api: &Api<K>,
    selector: &str,
    page_size: u32,
) -> Result<(Vec<K>, String), kube::Error> {
    // `resourceVersion=0` lets the API server answer from its watch cache instead of a
    // quorum read of etcd: the cheapest list there is.
    let mut params = ListParams::default()
        .labels(selector)
        .limit(page_size)
        .match_any();
    let mut items = Vec::new();
    // Bounded: a list of a label-selected scope is a handful of pages; 10,000 is a
    // guard against a server that hands out continue tokens forever.
    for _ in 0..10_000 {
        let page: ObjectList<K> = api.list(&params).await?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => {
                // Later pages follow the first page's snapshot, named by the token.
                params = ListParams::default().labels(selector).limit(page_size);
                params.continue_token = Some(token);
            }
            None => {
                let rv = page.metadata.resource_version.unwrap_or_default();
                return Ok((items, rv));
            }
        }
    }
    Err(kube::Error::Service("list paging did not end".into()))
}

/// Feeds one open watch into the index until it ends.
async fn follow<K: Indexed>(
    shared: &Shared,
    stream: impl futures::Stream<Item = Result<WatchEvent<K>, kube::Error>>,
    version: &mut Option<String>,
    idle_timeout: Duration,
) -> WatchEnd {
    let mut stream = std::pin::pin!(stream);
    let mut delivered = false;
    // Bounded by the server's watch timeout and by the idle timeout.
    loop {
        let next = match tokio::time::timeout(idle_timeout, stream.next()).await {
            Err(_) => return WatchEnd::Failed(format!("nothing received for {idle_timeout:?}")),
            Ok(None) => return WatchEnd::Closed { delivered },
            Ok(Some(Err(error))) => return WatchEnd::Failed(kubeconfig::error_chain(&error)),
            Ok(Some(Ok(event))) => event,
        };
        shared.budget.note_contact();
        delivered = true;
        let rv_of = |o: &K| o.meta().resource_version.clone();
        match next {
            WatchEvent::Added(obj) | WatchEvent::Modified(obj) => {
                K::apply(&mut shared.index.lock(), &obj);
                if let Some(rv) = rv_of(&obj) {
                    *version = Some(rv);
                }
            }
            WatchEvent::Deleted(obj) => {
                K::delete(&mut shared.index.lock(), &obj);
                if let Some(rv) = rv_of(&obj) {
                    *version = Some(rv);
                }
            }
            WatchEvent::Bookmark(bookmark) => {
                *version = Some(bookmark.metadata.resource_version);
                shared.streams.lock().bookmarks += 1;
            }
            WatchEvent::Error(status) if status.code == 410 => return WatchEnd::Gone,
            WatchEvent::Error(status) => {
                return WatchEnd::Failed(format!("{} ({})", status.message, status.code));
            }
        }
        shared.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(keys: &[(&str, &str)]) -> BTreeSet<ServiceKey> {
        keys.iter()
            .map(|(ns, n)| ((*ns).to_owned(), (*n).to_owned()))
            .collect()
    }

    #[test]
    fn one_namespace_gives_namespaced_streams_selected_by_name() {
        let plan = Plan::new(
            &scope(&[("shop", "web"), ("shop", "api")]),
            &WatchOptions::default(),
        );
        assert_eq!(plan.namespace.as_deref(), Some("shop"));
        assert_eq!(
            plan.slices.as_deref(),
            Some("kubernetes.io/service-name in (api,web)")
        );
        assert_eq!(plan.services.as_deref(), Some("lifeline.dev/global=true"));
        assert_eq!(plan.streams(), 2);
    }

    #[test]
    fn several_namespaces_watch_cluster_wide_with_each_name_once() {
        let plan = Plan::new(
            &scope(&[("a", "web"), ("b", "web"), ("b", "db")]),
            &WatchOptions::for_address_source(AddressSource::EndpointSlice),
        );
        assert_eq!(plan.namespace, None);
        assert_eq!(
            plan.slices.as_deref(),
            Some("kubernetes.io/service-name in (db,web)")
        );
        assert_eq!((plan.services.as_deref(), plan.streams()), (None, 1));
    }

    #[test]
    fn an_empty_scope_opens_no_stream() {
        assert_eq!(
            Plan::new(&BTreeSet::new(), &WatchOptions::default()).streams(),
            0
        );
    }
}
