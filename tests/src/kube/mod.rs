//! A Kubernetes API emulator for tests: a real HTTP(S) server on loopback that speaks
//! enough of the Kubernetes API for kubectl and kube-rs, with fault injection and
//! request accounting. One emulator stands for one cluster's API server.
//!
//! ```text
//!   Emulator (handle) ──> Shared ──> Store    objects, global resourceVersion, bounded
//!        │                  │                  event history, CRD-defined resources
//!        │                  ├──> Faults   rules (latency/429/5xx/hang) + request counters
//!        │                  └──> accept loop ─> connections ─> server::handle
//!        └── outage(): drop the listener and every connection; restore(): re-bind
//! ```
//!
//! Typical use:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use lifeline_tests::kube::{Emulator, EmulatorConfig, Fault, FaultRule, Verb};
//! let emu = Emulator::start(EmulatorConfig::https()).await?;
//! let client = emu.client().await?;                    // kube::Client trusting the CA
//! let id = emu.inject(FaultRule::new(Fault::TooManyRequests { retry_after_seconds: 1 }).verbs([Verb::List]));
//! emu.clear_fault(id);
//! emu.outage().await;                                  // port closed
//! emu.restore().await?;                                // same port again
//! let lists = emu.counts().count(Some(Verb::List), Some("services"), None);
//! # let _ = (client, lists); Ok(()) }
//! ```
//!
//! Faithful enough to rely on: discovery with short names, one global resourceVersion,
//! optimistic concurrency, watches that resume from a resourceVersion or get `410 Gone`,
//! bookmarks, label/field selectors (also turning MODIFIED into ADDED/DELETED as objects
//! enter or leave a selection), paging, the status subresource, generation, finalizers,
//! custom resources pruned, defaulted and validated against their CRD's OpenAPI schema
//! (`fieldValidation=Strict` rejects unknown fields), server-side printing from printer
//! columns, and `Status` errors worded like the real server's.
//!
//! What is approximate: `/openapi/v3` only declares that the server validates fields
//! (so kubectl leaves validation to it; it has no schemas, `/openapi/v2` is 404), CEL
//! rules and formats are not evaluated, server-side apply merges the applied fields
//! without field ownership or conflicts, strategic merge patch behaves like a merge patch,
//! lists are served from the current state whatever resourceVersion they ask for (a
//! compacted one still gets `410`), deleting a namespace removes its objects at once,
//! protobuf request bodies are understood only for Namespace, ConfigMap and Secret (what
//! kubectl's typed `create` commands send), and responses are always JSON.

mod control;
mod crd;
mod discovery;
pub mod fault_proxy;
mod faults;
mod patch;
mod protobuf;
mod selector;
mod server;
mod store;
mod table;
mod tls;
mod watching;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use fault_proxy::FaultProxy;
pub use faults::{Fault, FaultFilter, FaultId, FaultRule, RequestCounts, RequestKey, Verb};
pub use selector::{FieldSelector, LabelSelector};
pub use store::{ApiError, GroupResource, PatchType, ResourceDef, Store};
pub use tls::{TlsMaterial, kubeconfig};

use server::Shared;

/// Errors starting or restoring an emulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The TLS configuration was rejected.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Writing the kubeconfig failed.
    #[error("writing the kubeconfig: {0}")]
    Io(#[from] std::io::Error),
    /// A kube client could not be built from the emulator's kubeconfig.
    #[error("building a kube client: {0}")]
    Client(String),
    /// A direct store call was rejected, as the API would reject it.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A YAML stream given to [`Emulator::apply_yaml`] did not parse.
    #[error("parsing YAML: {0}")]
    Yaml(String),
}

/// `Result` with the emulator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to run an emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where to listen; port 0 picks a free port. Keep it on loopback.
    pub listen: SocketAddr,
    /// Serve HTTPS with a generated CA and leaf certificate.
    pub tls: bool,
    /// Events kept for watches to resume from; older resourceVersions get `410 Gone`.
    pub history: usize,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Largest accepted request body; larger ones get `413`.
    pub max_body_bytes: usize,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            // An address of its own: a port on 127.0.0.1 released by an outage could be
            // taken by any outgoing connection's ephemeral port before the restore.
            listen: SocketAddr::new(lifeline_testkit::loopback(), 0),
            tls: false,
            history: 1000,
            bookmark_interval: Duration::from_secs(5),
            max_body_bytes: 3 * 1024 * 1024,
        }
    }
}

impl EmulatorConfig {
    /// Plain HTTP on a free port of a loopback address of its own.
    pub fn http() -> Self {
        Self::default()
    }

    /// HTTPS on a free port of a loopback address of its own.
    pub fn https() -> Self {
        Self {
            tls: true,
            ..Self::default()
        }
    }

    /// Keep only this many events of history.
    pub fn history(mut self, events: usize) -> Self {
        self.history = events;
        self
    }

    /// Bookmark period.
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = every;
        self
    }
}

/// A running emulator; dropping it stops serving.
#[derive(Debug)]
pub struct Emulator {
    shared: Arc<Shared>,
    tls: Option<TlsMaterial>,
}

/// Installs the process-wide rustls provider (ring) that kube clients need; harmless when
/// one is already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Emulator {
    /// Binds and starts serving.
    pub async fn start(config: EmulatorConfig) -> Result<Self> {
        let tls = if config.tls {
            Some(TlsMaterial::generate(config.listen.ip())?)
        } else {
            None
        };
        let acceptor = match &tls {
            Some(m) => Some(tokio_rustls::TlsAcceptor::from(m.server_config()?)),
            None => None,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Store::new(config.history),
            faults: faults::Faults::default(),
            config,
            addr,
            tls: acceptor,
            drop_watches: watch::channel(0).0,
            kill_connections: watch::channel(0).0,
            listener: Mutex::new(None),
            open_watches: AtomicUsize::new(0),
        });
        shared.serve(listener);
        tracing::info!(%addr, tls = tls.is_some(), "kube emulator started");
        Ok(Self { shared, tls })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://<address>:<port>` or `https://...`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.shared.addr)
    }

    /// The CA clients must trust (HTTPS only), PEM.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// A kubeconfig for this emulator (context `kube-emulator`, namespace `default`).
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig(&self.url(), self.ca_pem())
    }

    /// Writes the kubeconfig to a file.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())?;
        Ok(())
    }

    /// The kube client configuration for this emulator, to adjust before building a
    /// client (kube 5 retries 429/503/504 by itself unless `default_retry` is turned off).
    pub async fn kube_config(&self) -> Result<kube::Config> {
        install_crypto_provider();
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml())
            .map_err(|e| Error::Client(e.to_string()))?;
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Client(e.to_string()))
    }

    /// A kube client configured from this emulator's kubeconfig.
    pub async fn client(&self) -> Result<kube::Client> {
        let config = self.kube_config().await?;
        kube::Client::try_from(config).map_err(|e| Error::Client(e.to_string()))
    }

    /// The object store, for setting up and inspecting state without HTTP.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Creates an object directly in the store (no request counted, no faults), resolving
    /// its resource from `apiVersion` and `kind`.
    pub fn create(&self, obj: Value) -> Result<Value> {
        let (def, ns) = self.resolve(&obj)?;
        Ok((*self.shared.store.create(&def, ns.as_deref(), obj, false)?).clone())
    }

    /// Server-side-applies every document of a YAML stream directly in the store: absent
    /// objects are created, present ones get the documents' fields merged in. Returns the
    /// stored objects.
    pub fn apply_yaml(&self, yaml: &str) -> Result<Vec<Value>> {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(yaml).map_err(|e| Error::Yaml(e.to_string()))?;
        let mut out = Vec::new();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let (def, ns) = self.resolve(&doc)?;
            let name = doc
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let (obj, _) = self.shared.store.patch(
                &def,
                ns.as_deref(),
                &name,
                PatchType::Apply,
                &doc,
                false,
                false,
            )?;
            out.push((*obj).clone());
        }
        Ok(out)
    }

    /// Installs Lifeline's CRDs (FailoverPolicy `fp`, MemberCluster `mc`) as generated by
    /// `lifeline-crds`.
    pub fn install_lifeline_crds(&self) -> Result<()> {
        self.apply_yaml(&lifeline_crds::crds_yaml()).map(drop)
    }

    /// Deletes an object directly in the store.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value> {
        let def = self
            .shared
            .store
            .resolve_kind(api_version, kind)
            .ok_or_else(ApiError::no_route)?;
        Ok((*self
            .shared
            .store
            .delete(&def, namespace, name, None, false)?)
        .clone())
    }

    /// Merge-patches an object directly in the store (`status` only when `status` is set).
    pub fn merge_patch(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
        status: bool,
    ) -> Result<Value> {
        let def = self
            .shared
            .store
            .resolve_kind(api_version, kind)
            .ok_or_else(ApiError::no_route)?;
        let (obj, _) = self.shared.store.patch(
            &def,
            namespace,
            name,
            PatchType::Merge,
            patch,
            status,
            false,
        )?;
        Ok((*obj).clone())
    }

    fn resolve(&self, obj: &Value) -> Result<(Arc<ResourceDef>, Option<String>)> {
        let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
        let def = self
            .shared
            .store
            .resolve_kind(s("/apiVersion"), s("/kind"))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "no resource serves {} {}",
                    s("/apiVersion"),
                    s("/kind")
                ))
            })?;
        let ns = def
            .namespaced
            .then(|| s("/metadata/namespace").to_owned())
            .filter(|n| !n.is_empty());
        Ok((def, ns))
    }

    /// Adds a fault rule; returns its id for [`Self::clear_fault`].
    pub fn inject(&self, rule: FaultRule) -> FaultId {
        self.shared.faults.inject(rule)
    }

    /// Removes one fault rule (hanging requests it held are then served).
    pub fn clear_fault(&self, id: FaultId) -> bool {
        self.shared.faults.clear(id)
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.shared.faults.clear_all();
    }

    /// Ends every open watch stream (clients see the stream close and must re-watch).
    pub fn drop_watches(&self) {
        self.shared.drop_watches.send_modify(|g| *g += 1);
    }

    /// Cuts every open connection abruptly (watches included) without closing the port:
    /// clients see a reset mid-stream and reconnect.
    pub fn drop_connections(&self) {
        self.shared.kill_connections.send_modify(|g| *g += 1);
    }

    /// Watch streams open right now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// Total outage: closes the port and every connection. Returns once the port is closed.
    pub async fn outage(&self) {
        self.shared.outage().await;
    }

    /// Ends an outage: binds the same port again.
    pub async fn restore(&self) -> Result<()> {
        self.shared.restore().await
    }

    /// Whether the emulator is in an outage.
    pub fn is_down(&self) -> bool {
        self.shared.is_down()
    }

    /// Drops the watch history: every older resourceVersion now gets `410 Gone`.
    pub fn compact(&self) {
        self.shared.store.compact();
    }

    /// The request counters so far.
    pub fn counts(&self) -> RequestCounts {
        self.shared.faults.counts()
    }

    /// Zeroes the request counters.
    pub fn reset_counts(&self) {
        self.shared.faults.reset_counts();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(task) = self.shared.listener.lock().take() {
            task.abort();
        }
        self.shared.kill_connections.send_modify(|g| *g += 1);
    }
}
