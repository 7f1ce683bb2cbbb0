//! The emulator's object store: resource registry, objects, resource versions, and the
//! bounded event history that watches replay from.
//!
//! ```text
//!   write (create/update/patch/delete) ──lock──> objects[group/resource][(ns, name)]
//!                                          │
//!                                          ├─> rv += 1 (one global counter, like etcd)
//!                                          ├─> history.push(Event)   (bounded; trimming it
//!                                          │                          raises `compacted`)
//!                                          └─> broadcast(Event)      (live watches)
//! ```
//!
//! A watch from resourceVersion `R` is served when every event after `R` is still in the
//! history (`R >= compacted`), otherwise it gets `410 Gone`. Subscribing to the broadcast
//! and copying the history happen under the same lock, so no event falls between them.
//! Objects are plain JSON (`serde_json::Value`), so any custom resource can be stored.
//! Registering a `CustomResourceDefinition` registers its resource; deleting it removes
//! the resource and its objects.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::crd::{apply_defaults, crd_resource, prune_unknown, validate};
use super::patch;

/// A stored object.
pub type Object = Value;

/// `(group, resource)`: the key objects of one kind are stored under (shared by versions).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupResource {
    /// API group, `""` for the core group.
    pub group: String,
    /// Plural resource name, e.g. `services`.
    pub resource: String,
}

impl GroupResource {
    /// `services` for the core group, `failoverpolicies.lifeline.dev` otherwise: the form
    /// Kubernetes uses in messages, and the emulator's request counters use.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// One additional printer column of a resource (from a CRD, or built in).
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    /// Column header.
    pub name: String,
    /// OpenAPI type: `string`, `integer`, `number`, `boolean` or `date`.
    pub kind: String,
    /// Simple JSONPath into the object, e.g. `.spec.hostname`.
    pub json_path: String,
    /// Shown by `kubectl get -o wide` only when above zero.
    pub priority: i64,
}

/// A served resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceDef {
    /// API group, `""` for core.
    pub group: String,
    /// Served versions; the first is the preferred (and storage) version.
    pub versions: Vec<String>,
    /// Kind, e.g. `Service`.
    pub kind: String,
    /// Plural resource name, e.g. `services`.
    pub plural: String,
    /// Singular name, lower case.
    pub singular: String,
    /// Short names for kubectl (`svc`, `fp`).
    pub short_names: Vec<String>,
    /// Categories (`all`, `lifeline`).
    pub categories: Vec<String>,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Whether `/status` is a subresource (then the main resource ignores `.status`).
    pub status_subresource: bool,
    /// Columns after NAME in table output.
    pub columns: Vec<PrinterColumn>,
    /// Registered from a CRD (removed with it) rather than built in.
    pub custom: bool,
    /// The CRD's OpenAPI v3 schema of the storage version, for defaulting.
    pub schema: Option<Value>,
}

impl ResourceDef {
    fn builtin(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            versions: vec![version.into()],
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            short_names: Vec::new(),
            categories: Vec::new(),
            namespaced,
            status_subresource: false,
            columns: Vec::new(),
            custom: false,
            schema: None,
        }
    }

    fn short(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    fn in_categories(mut self, categories: &[&str]) -> Self {
        self.categories = categories.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    /// The storage key.
    pub fn group_resource(&self) -> GroupResource {
        GroupResource {
            group: self.group.clone(),
            resource: self.plural.clone(),
        }
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// The preferred version.
    pub fn preferred_version(&self) -> &str {
        &self.versions[0]
    }
}

/// A Kubernetes API error, rendered as a `Status` object.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `Conflict`, ...).
    pub reason: &'static str,
    /// Human-readable message, worded like the real API server's.
    pub message: String,
    /// `details` of the Status (name, group, kind), when known.
    pub details: Option<Value>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, gr: &GroupResource, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": gr.group, "kind": gr.resource}));
        self
    }

    /// 404 for a named object.
    pub fn not_found(gr: &GroupResource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", gr.qualified()),
        )
        .about(gr, name)
    }

    /// 404 for a path the server does not serve.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 422.
    pub fn invalid(gr: &GroupResource, name: &str, message: impl std::fmt::Display) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {message}", gr.qualified()),
        )
        .about(gr, name)
    }

    /// 409 for a stale resourceVersion.
    pub fn conflict(gr: &GroupResource, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                gr.qualified()
            ),
        )
        .about(gr, name)
    }

    /// 410 for a resourceVersion older than the retained history.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            status["details"] = d.clone();
        }
        status
    }
}

/// `Result` with an [`ApiError`].
pub type ApiResult<T> = Result<T, ApiError>;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventKind {
    /// The watch event type string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history and sent to live watches.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion of this change.
    pub rv: u64,
    /// Which resource changed.
    pub gr: GroupResource,
    /// What happened.
    pub kind: EventKind,
    /// The object after the change (for deletes: the last state, with the delete's rv).
    pub object: Arc<Object>,
    /// The object before the change, so selector watches can turn a MODIFIED that leaves
    /// the selection into a DELETED.
    pub previous: Option<Arc<Object>>,
}

/// Where a new watch starts.
#[derive(Debug)]
pub struct WatchStart {
    /// For watches without a resourceVersion: the current objects (synthetic ADDED).
    pub initial: Vec<Arc<Object>>,
    /// Retained events after the requested resourceVersion.
    pub replay: Vec<Arc<Event>>,
    /// Live events after the replay.
    pub live: broadcast::Receiver<Arc<Event>>,
    /// resourceVersion the watch has caught up to once `initial` and `replay` are sent.
    pub start_rv: u64,
}

/// How a write reaches an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json` (built-in types only; approximated as merge).
    Strategic,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml` (server-side apply, approximated).
    Apply,
}

struct Inner {
    rv: u64,
    resources: Vec<Arc<ResourceDef>>,
    objects: HashMap<GroupResource, BTreeMap<(String, String), Arc<Object>>>,
    history: VecDeque<Arc<Event>>,
    history_capacity: usize,
    /// Every event with `rv <= compacted` has been dropped from the history.
    compacted: u64,
    next_cluster_ip: u32,
}

/// The shared object store.
pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("Store")
            .field("rv", &inner.rv)
            .field("resources", &inner.resources.len())
            .field("history", &inner.history.len())
            .finish()
    }
}

fn builtin_resources() -> Vec<ResourceDef> {
    vec![
        ResourceDef::builtin("", "v1", "Namespace", "namespaces", false)
            .short(&["ns"])
            .with_status(),
        ResourceDef::builtin("", "v1", "Service", "services", true)
            .short(&["svc"])
            .in_categories(&["all"])
            .with_status(),
        ResourceDef::builtin("", "v1", "Secret", "secrets", true),
        ResourceDef::builtin("", "v1", "ConfigMap", "configmaps", true).short(&["cm"]),
        ResourceDef::builtin("", "v1", "Event", "events", true).short(&["ev"]),
        ResourceDef::builtin(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            true,
        ),
        ResourceDef::builtin("events.k8s.io", "v1", "Event", "events", true).short(&["ev"]),
        ResourceDef::builtin("coordination.k8s.io", "v1", "Lease", "leases", true),
        ResourceDef::builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        )
        .short(&["crd", "crds"])
        .with_status(),
    ]
}

const CRDS: (&str, &str) = ("apiextensions.k8s.io", "customresourcedefinitions");

/// Now, to the second, in RFC 3339 (the precision Kubernetes timestamps have).
pub fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

fn meta(obj: &Object, field: &str) -> Option<String> {
    obj.get("metadata")?.get(field)?.as_str().map(str::to_owned)
}

fn set_meta(obj: &mut Object, field: &str, value: Value) {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"][field] = value;
}

/// The object without the fields the server owns, to tell real changes from no-ops.
fn comparable(obj: &Object) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("generation");
        m.remove("managedFields");
    }
    o
}

/// The object without metadata and status: what `generation` tracks.
fn spec_part(obj: &Object) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    o
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl Store {
    /// An empty store with the built-in resources and namespaces, keeping at most
    /// `history_capacity` events for watches to resume from.
    pub fn new(history_capacity: usize) -> Self {
        let (events, _) = broadcast::channel(4096);
        let store = Self {
            inner: Mutex::new(Inner {
                rv: 1,
                resources: builtin_resources().into_iter().map(Arc::new).collect(),
                objects: HashMap::new(),
                history: VecDeque::new(),
                history_capacity: history_capacity.max(1),
                compacted: 1,
                next_cluster_ip: 1,
            }),
            events,
        };
        let ns = store
            .resolve("", "v1", "namespaces")
            .expect("namespaces are built in");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            store
                .create(&ns, None, obj, false)
                .expect("fresh store accepts the standard namespaces");
        }
        store
    }

    /// The current (latest) resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.inner.lock().rv
    }

    /// The served resources.
    pub fn resources(&self) -> Vec<Arc<ResourceDef>> {
        self.inner.lock().resources.clone()
    }

    /// Finds a served resource by group, version and plural.
    pub fn resolve(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.inner
            .lock()
            .resources
            .iter()
            .find(|r| {
                r.group == group && r.plural == plural && r.versions.iter().any(|v| v == version)
            })
            .cloned()
    }

    /// Finds a served resource by `apiVersion` and `kind` (for the library's typed helpers).
    pub fn resolve_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceDef>> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.inner
            .lock()
            .resources
            .iter()
            .find(|r| r.group == group && r.kind == kind && r.versions.iter().any(|v| v == version))
            .cloned()
    }

    /// Drops the whole event history: any watch or continue token from before now gets
    /// `410 Gone`.
    pub fn compact(&self) {
        let mut inner = self.inner.lock();
        inner.history.clear();
        inner.compacted = inner.rv;
    }

    /// The oldest resourceVersion a watch can still start from.
    pub fn compacted_rv(&self) -> u64 {
        self.inner.lock().compacted
    }

    /// Checks that a resourceVersion is not older than the retained history.
    pub fn check_not_compacted(&self, rv: u64) -> ApiResult<()> {
        let compacted = self.inner.lock().compacted;
        if rv < compacted {
            return Err(ApiError::gone(format!(
                "too old resource version: {rv} ({compacted})"
            )));
        }
        Ok(())
    }

    /// Lists objects (sorted by namespace, then name) and the list's resourceVersion.
    pub fn list(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        filter: impl Fn(&Object) -> bool,
    ) -> (Vec<Arc<Object>>, u64) {
        let inner = self.inner.lock();
        let items = inner
            .objects
            .get(&def.group_resource())
            .map(|objs| {
                objs.iter()
                    .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
                    .map(|(_, o)| o)
                    .filter(|o| filter(o))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        (items, inner.rv)
    }

    /// Reads one object.
    pub fn get(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<Arc<Object>> {
        let gr = def.group_resource();
        let key = (namespace.unwrap_or_default().to_owned(), name.to_owned());
        self.inner
            .lock()
            .objects
            .get(&gr)
            .and_then(|objs| objs.get(&key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&gr, name))
    }

    /// Subscribes to changes of one resource after `from` (`None`: start from the current
    /// state, delivered as synthetic ADDED events).
    pub fn watch(&self, def: &ResourceDef, from: Option<u64>) -> ApiResult<WatchStart> {
        let inner = self.inner.lock();
        let gr = def.group_resource();
        let live = self.events.subscribe();
        match from {
            None => {
                let initial = inner
                    .objects
                    .get(&gr)
                    .map(|o| o.values().cloned().collect())
                    .unwrap_or_default();
                Ok(WatchStart {
                    initial,
                    replay: Vec::new(),
                    live,
                    start_rv: inner.rv,
                })
            }
            Some(rv) if rv < inner.compacted => Err(ApiError::gone(format!(
                "too old resource version: {rv} ({})",
                inner.compacted
            ))),
            Some(rv) => {
                let replay = inner
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && e.gr == gr)
                    .cloned()
                    .collect();
                Ok(WatchStart {
                    initial: Vec::new(),
                    replay,
                    live,
                    start_rv: inner.rv.max(rv),
                })
            }
        }
    }

    /// Creates an object. `namespace` is the namespace from the URL.
    pub fn create(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        mut obj: Object,
        dry_run: bool,
    ) -> ApiResult<Arc<Object>> {
        let gr = def.group_resource();
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON or YAML object",
            ));
        }
        check_type(def, &obj)?;
        let mut inner = self.inner.lock();
        let name = match (
            meta(&obj, "name").filter(|n| !n.is_empty()),
            meta(&obj, "generateName"),
        ) {
            (Some(name), _) => name,
            (None, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
            _ => {
                return Err(ApiError::invalid(
                    &gr,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        };
        validate_name(&gr, &name)?;
        let ns = scope_namespace(def, namespace, &obj, &name)?;
        if let Some(ns) = &ns {
            let key = (String::new(), ns.clone());
            let exists = inner
                .objects
                .get(&gr_namespaces())
                .is_some_and(|o| o.contains_key(&key));
            if !exists {
                return Err(ApiError::not_found(&gr_namespaces(), ns));
            }
        }
        let key = (ns.clone().unwrap_or_default(), name.clone());
        if inner.objects.get(&gr).is_some_and(|o| o.contains_key(&key)) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", gr.qualified()),
            )
            .about(&gr, &name));
        }
        set_meta(&mut obj, "name", json!(name));
        if let Some(ns) = &ns {
            set_meta(&mut obj, "namespace", json!(ns));
        }
        obj["apiVersion"] = json!(def.api_version(def.preferred_version()));
        obj["kind"] = json!(def.kind);
        set_meta(&mut obj, "uid", json!(uuid_v4()));
        set_meta(&mut obj, "creationTimestamp", json!(now_rfc3339()));
        set_meta(&mut obj, "generation", json!(1));
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("managedFields");
        }
        // Custom resources with a status subresource drop status on create.
        if def.status_subresource && def.custom {
            obj.as_object_mut().map(|m| m.remove("status"));
        }
        inner.on_create(def, &mut obj)?;
        if let Some(schema) = &def.schema {
            conform(def, &mut obj, schema)?;
        }
        if dry_run {
            return Ok(Arc::new(obj));
        }
        let rv = inner.bump();
        set_meta(&mut obj, "resourceVersion", json!(rv.to_string()));
        let obj = Arc::new(obj);
        inner
            .objects
            .entry(gr.clone())
            .or_default()
            .insert(key, obj.clone());
        self.record(
            &mut inner,
            Event {
                rv,
                gr,
                kind: EventKind::Added,
                object: obj.clone(),
                previous: None,
            },
        );
        Ok(obj)
    }

    /// Replaces an object (PUT). With `status_only`, only `.status` is taken from `obj`.
    pub fn update(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        obj: Object,
        status_only: bool,
        dry_run: bool,
    ) -> ApiResult<Arc<Object>> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON or YAML object",
            ));
        }
        check_type(def, &obj)?;
        let mut inner = self.inner.lock();
        let old = inner.lookup(def, namespace, name)?;
        self.write(
            &mut inner,
            def,
            namespace,
            name,
            old,
            obj,
            status_only,
            dry_run,
        )
    }

    /// Patches an object; a server-side apply of an absent object creates it.
    // The arguments mirror the parts of a PATCH request one for one; bundling them in a
    // struct would only move the same list elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        kind: PatchType,
        body: &Value,
        status_only: bool,
        dry_run: bool,
    ) -> ApiResult<(Arc<Object>, bool)> {
        let gr = def.group_resource();
        if kind == PatchType::Strategic && def.custom {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        let mut inner = self.inner.lock();
        let old = match inner.lookup(def, namespace, name) {
            Ok(old) => old,
            Err(_) if kind == PatchType::Apply && !status_only => {
                drop(inner);
                let mut obj = body.clone();
                if !obj.is_object() {
                    return Err(ApiError::bad_request(
                        "the applied configuration must be an object",
                    ));
                }
                match meta(&obj, "name") {
                    Some(n) if n != name => {
                        return Err(ApiError::bad_request(format!(
                            "the name of the object ({n}) does not match the name on the URL ({name})"
                        )));
                    }
                    _ => set_meta(&mut obj, "name", json!(name)),
                }
                return self.create(def, namespace, obj, dry_run).map(|o| (o, true));
            }
            Err(e) => return Err(e),
        };
        let patched = match kind {
            PatchType::Merge | PatchType::Strategic => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                let mut doc = (*old).clone();
                patch::merge_patch(&mut doc, body);
                doc
            }
            PatchType::Json => patch::json_patch(&old, body).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the JSON patch could not be applied: {e}"),
                )
                .about(&gr, name)
            })?,
            PatchType::Apply => {
                if !body.is_object() {
                    return Err(ApiError::bad_request(
                        "the applied configuration must be an object",
                    ));
                }
                check_type(def, body)?;
                let mut doc = (*old).clone();
                patch::apply_merge(&mut doc, body);
                doc
            }
        };
        self.write(
            &mut inner,
            def,
            namespace,
            name,
            old,
            patched,
            status_only,
            dry_run,
        )
        .map(|o| (o, false))
    }

    /// Deletes an object. Objects with finalizers only get a `deletionTimestamp`; they go
    /// when an update empties their finalizers.
    pub fn delete(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        precondition_rv: Option<&str>,
        dry_run: bool,
    ) -> ApiResult<Arc<Object>> {
        let gr = def.group_resource();
        let mut inner = self.inner.lock();
        let old = inner.lookup(def, namespace, name)?;
        if precondition_rv
            .is_some_and(|want| meta(&old, "resourceVersion").as_deref() != Some(want))
        {
            return Err(ApiError::conflict(&gr, name));
        }
        if dry_run {
            return Ok(old);
        }
        let has_finalizers = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(old);
            }
            let mut obj = (*old).clone();
            set_meta(&mut obj, "deletionTimestamp", json!(now_rfc3339()));
            let rv = inner.bump();
            set_meta(&mut obj, "resourceVersion", json!(rv.to_string()));
            let obj = Arc::new(obj);
            let key = (namespace.unwrap_or_default().to_owned(), name.to_owned());
            inner
                .objects
                .entry(gr.clone())
                .or_default()
                .insert(key, obj.clone());
            self.record(
                &mut inner,
                Event {
                    rv,
                    gr,
                    kind: EventKind::Modified,
                    object: obj.clone(),
                    previous: Some(old),
                },
            );
            return Ok(obj);
        }
        Ok(self.remove(&mut inner, def, namespace.unwrap_or_default(), name))
    }

    /// Deletes every object of a resource in a namespace (or everywhere) that `filter` keeps.
    pub fn delete_collection(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        filter: impl Fn(&Object) -> bool,
    ) -> Vec<Arc<Object>> {
        let (items, _) = self.list(def, namespace, filter);
        items
            .iter()
            .filter_map(|o| {
                let name = meta(o, "name")?;
                let ns = meta(o, "namespace");
                self.delete(def, ns.as_deref(), &name, None, false).ok()
            })
            .collect()
    }

    // === writes under the lock ===

    // Shared by update and patch, which both arrive with all of these.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        inner: &mut Inner,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        old: Arc<Object>,
        new: Object,
        status_only: bool,
        dry_run: bool,
    ) -> ApiResult<Arc<Object>> {
        let gr = def.group_resource();
        if !new.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        if let Some(n) = meta(&new, "name").filter(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if let (Some(ns), Some(body_ns)) = (namespace, meta(&new, "namespace"))
            && ns != body_ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let old_rv = meta(&old, "resourceVersion").unwrap_or_default();
        if meta(&new, "resourceVersion").is_some_and(|rv| !rv.is_empty() && rv != old_rv) {
            return Err(ApiError::conflict(&gr, name));
        }
        let mut obj = if status_only {
            let mut o = (*old).clone();
            match new.get("status") {
                Some(s) => o["status"] = s.clone(),
                None => {
                    o.as_object_mut().map(|m| m.remove("status"));
                }
            }
            o
        } else {
            let mut o = new;
            if def.status_subresource {
                match old.get("status") {
                    Some(s) => o["status"] = s.clone(),
                    None => {
                        o.as_object_mut().map(|m| m.remove("status"));
                    }
                }
            }
            o
        };
        // The server owns these; clients cannot change them.
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            match old.pointer(&format!("/metadata/{field}")) {
                Some(v) => set_meta(&mut obj, field, v.clone()),
                None => {
                    obj["metadata"].as_object_mut().map(|m| m.remove(field));
                }
            }
        }
        set_meta(&mut obj, "name", json!(name));
        if let Some(ns) = namespace {
            set_meta(&mut obj, "namespace", json!(ns));
        }
        obj["apiVersion"] = json!(def.api_version(def.preferred_version()));
        obj["kind"] = json!(def.kind);
        set_meta(&mut obj, "resourceVersion", json!(old_rv));
        inner.on_update(def, &old, &mut obj)?;
        if let Some(schema) = &def.schema {
            conform(def, &mut obj, schema)?;
        }
        if comparable(&obj) == comparable(&old) {
            return Ok(old);
        }
        if spec_part(&obj) != spec_part(&old) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            set_meta(&mut obj, "generation", json!(generation + 1));
        }
        if dry_run {
            return Ok(Arc::new(obj));
        }
        let finalized = obj.pointer("/metadata/deletionTimestamp").is_some()
            && obj
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(|f| f.is_empty());
        let rv = inner.bump();
        set_meta(&mut obj, "resourceVersion", json!(rv.to_string()));
        let obj = Arc::new(obj);
        let key = (namespace.unwrap_or_default().to_owned(), name.to_owned());
        inner
            .objects
            .entry(gr.clone())
            .or_default()
            .insert(key, obj.clone());
        self.record(
            inner,
            Event {
                rv,
                gr,
                kind: EventKind::Modified,
                object: obj.clone(),
                previous: Some(old),
            },
        );
        if finalized {
            return Ok(self.remove(inner, def, namespace.unwrap_or_default(), name));
        }
        Ok(obj)
    }

    /// Removes an object that exists, with a DELETED event, and what depends on it.
    fn remove(
        &self,
        inner: &mut Inner,
        def: &ResourceDef,
        namespace: &str,
        name: &str,
    ) -> Arc<Object> {
        let gr = def.group_resource();
        let key = (namespace.to_owned(), name.to_owned());
        let Some(old) = inner.objects.get_mut(&gr).and_then(|o| o.remove(&key)) else {
            return Arc::new(Value::Null);
        };
        let rv = inner.bump();
        let mut gone = (*old).clone();
        set_meta(&mut gone, "resourceVersion", json!(rv.to_string()));
        let gone = Arc::new(gone);
        self.record(
            inner,
            Event {
                rv,
                gr: gr.clone(),
                kind: EventKind::Deleted,
                object: gone.clone(),
                previous: Some(old.clone()),
            },
        );
        // Cascades: a namespace takes its objects, a CRD its resource and objects.
        if gr == gr_namespaces() {
            let namespaced: Vec<Arc<ResourceDef>> = inner
                .resources
                .iter()
                .filter(|r| r.namespaced)
                .cloned()
                .collect();
            for r in namespaced {
                let names: Vec<String> = inner
                    .objects
                    .get(&r.group_resource())
                    .map(|o| {
                        o.keys()
                            .filter(|(ns, _)| ns == name)
                            .map(|(_, n)| n.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                for n in names {
                    self.remove(inner, &r, name, &n);
                }
            }
        } else if (gr.group.as_str(), gr.resource.as_str()) == CRDS
            && let Ok(crd_def) = crd_resource(&old)
        {
            let keys: Vec<(String, String)> = inner
                .objects
                .get(&crd_def.group_resource())
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            for (ns, n) in keys {
                self.remove(inner, &crd_def, &ns, &n);
            }
            inner
                .resources
                .retain(|r| !(r.custom && r.group_resource() == crd_def.group_resource()));
        }
        gone
    }

    fn record(&self, inner: &mut Inner, event: Event) {
        let event = Arc::new(event);
        inner.history.push_back(event.clone());
        while inner.history.len() > inner.history_capacity {
            if let Some(dropped) = inner.history.pop_front() {
                inner.compacted = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event);
    }
}

/// Prunes, defaults and validates a custom resource, as the API server does on writes.
fn conform(def: &ResourceDef, obj: &mut Object, schema: &Value) -> ApiResult<()> {
    prune_unknown(obj, schema);
    apply_defaults(obj, schema);
    let errors = validate(obj, schema);
    if errors.is_empty() {
        return Ok(());
    }
    let name = meta(obj, "name").unwrap_or_default();
    let listed = if errors.len() == 1 {
        errors[0].clone()
    } else {
        format!("[{}]", errors.join(", "))
    };
    // kubectl prints each cause as `field: message`.
    let causes: Vec<Value> = errors
        .iter()
        .map(|e| {
            let (field, message) = e.split_once(": ").unwrap_or(("", e));
            json!({"reason": "FieldValueInvalid", "field": field, "message": message})
        })
        .collect();
    let mut err = ApiError::new(
        422,
        "Invalid",
        format!("{}.{} \"{name}\" is invalid: {listed}", def.kind, def.group),
    );
    err.details =
        Some(json!({"name": name, "group": def.group, "kind": def.kind, "causes": causes}));
    Err(err)
}

fn gr_namespaces() -> GroupResource {
    GroupResource {
        group: String::new(),
        resource: "namespaces".into(),
    }
}

/// Rejects a body whose `kind` or `apiVersion` is not this resource's.
fn check_type(def: &ResourceDef, obj: &Object) -> ApiResult<()> {
    if let Some(kind) = obj
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        && kind != def.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind {kind:?} of the object does not match the resource {} (kind {:?})",
            def.group_resource().qualified(),
            def.kind
        )));
    }
    if let Some(api_version) = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
        && !def
            .versions
            .iter()
            .any(|v| def.api_version(v) == api_version)
    {
        return Err(ApiError::bad_request(format!(
            "the apiVersion {api_version:?} of the object does not match the resource {}",
            def.group_resource().qualified()
        )));
    }
    Ok(())
}

/// DNS-1123 subdomain, as most resource names must be.
fn validate_name(gr: &GroupResource, name: &str) -> ApiResult<()> {
    let ok = name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            gr,
            name,
            format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
            ),
        ))
    }
}

/// The namespace an object belongs in: the URL's, which the body may repeat but not contradict.
fn scope_namespace(
    def: &ResourceDef,
    url: Option<&str>,
    obj: &Object,
    name: &str,
) -> ApiResult<Option<String>> {
    let body = meta(obj, "namespace").filter(|n| !n.is_empty());
    if !def.namespaced {
        return Ok(None);
    }
    match (url, body) {
        (Some(u), Some(b)) if u != b => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        (Some(u), _) => Ok(Some(u.to_owned())),
        (None, Some(b)) => Ok(Some(b)),
        (None, None) => Err(ApiError::invalid(
            &def.group_resource(),
            name,
            "metadata.namespace: Required value",
        )),
    }
}

fn uuid_v4() -> String {
    let b: [u8; 16] = rand::random();
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        h(0..4),
        h(4..6),
        &h(6..8)[1..],
        8 | (b[8] & 3),
        &h(8..10)[1..],
        h(10..16)
    )
}

impl Inner {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn lookup(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<Arc<Object>> {
        let gr = def.group_resource();
        let key = (namespace.unwrap_or_default().to_owned(), name.to_owned());
        self.objects
            .get(&gr)
            .and_then(|o| o.get(&key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&gr, name))
    }

    /// Per-kind behaviour on create: defaults a real API server fills in.
    fn on_create(&mut self, def: &ResourceDef, obj: &mut Object) -> ApiResult<()> {
        match (def.group.as_str(), def.plural.as_str()) {
            ("", "namespaces") => {
                obj["status"] = json!({"phase": "Active"});
                if obj.get("spec").is_none() {
                    obj["spec"] = json!({"finalizers": ["kubernetes"]});
                }
            }
            ("", "services") => {
                let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
                let external = spec.get("type").and_then(Value::as_str) == Some("ExternalName");
                let mut spec = spec;
                if spec.get("type").is_none() {
                    spec["type"] = json!("ClusterIP");
                }
                if !external
                    && spec
                        .get("clusterIP")
                        .is_none_or(|ip| ip.as_str().is_none_or(str::is_empty))
                {
                    // Deterministic, unique-enough addresses from 10.96.0.0/12.
                    let n = self.next_cluster_ip;
                    self.next_cluster_ip += 1;
                    let ip = format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff);
                    spec["clusterIP"] = json!(ip);
                    spec["clusterIPs"] = json!([ip]);
                }
                obj["spec"] = spec;
                if obj.get("status").is_none() {
                    obj["status"] = json!({"loadBalancer": {}});
                }
            }
            ("", "secrets") => fold_string_data(obj),
            CRDS => self.register_crd(def, obj, None)?,
            _ => {}
        }
        Ok(())
    }

    fn on_update(&mut self, def: &ResourceDef, old: &Object, obj: &mut Object) -> ApiResult<()> {
        match (def.group.as_str(), def.plural.as_str()) {
            ("", "secrets") => fold_string_data(obj),
            // A replacement that leaves the allocated cluster IP out keeps it, as the real
            // server does; clients rarely echo it back.
            ("", "services") => {
                for field in ["clusterIP", "clusterIPs"] {
                    let missing = obj
                        .pointer(&format!("/spec/{field}"))
                        .is_none_or(Value::is_null);
                    if let (true, Some(ip), Some(spec)) = (
                        missing,
                        old.pointer(&format!("/spec/{field}")),
                        obj.get_mut("spec").and_then(Value::as_object_mut),
                    ) {
                        spec.insert(field.to_owned(), ip.clone());
                    }
                }
            }
            CRDS => self.register_crd(def, obj, Some(old))?,
            _ => {}
        }
        Ok(())
    }

    /// Serves the resource a CRD defines and marks the CRD established. An update keeps
    /// the conditions it already has, so re-applying an unchanged CRD is a no-op.
    fn register_crd(
        &mut self,
        def: &ResourceDef,
        obj: &mut Object,
        old: Option<&Object>,
    ) -> ApiResult<()> {
        let name = meta(obj, "name").unwrap_or_default();
        let resource =
            crd_resource(obj).map_err(|e| ApiError::invalid(&def.group_resource(), &name, e))?;
        let now = now_rfc3339();
        let condition = |t: &str, reason: &str| json!({"type": t, "status": "True", "reason": reason, "message": "", "lastTransitionTime": now});
        let conditions = old
            .and_then(|o| o.pointer("/status/conditions"))
            .cloned()
            .unwrap_or_else(|| {
                json!([
                    condition("NamesAccepted", "NoConflicts"),
                    condition("Established", "InitialNamesAccepted")
                ])
            });
        obj["status"] = json!({
            "acceptedNames": obj.pointer("/spec/names").cloned().unwrap_or_default(),
            "storedVersions": [resource.preferred_version()],
            "conditions": conditions,
        });
        let gr = resource.group_resource();
        self.resources
            .retain(|r| !(r.custom && r.group_resource() == gr));
        self.resources.push(Arc::new(resource));
        Ok(())
    }
}

/// Secrets: `stringData` is write-only and folds into base64 `data`.
fn fold_string_data(obj: &mut Object) {
    use base64::Engine as _;
    let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
    else {
        return;
    };
    if !obj.get("data").is_some_and(Value::is_object) {
        obj["data"] = json!({});
    }
    for (k, v) in string_data {
        let text = v
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string());
        obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": {}})
    }

    #[test]
    fn writes_bump_one_global_resource_version_and_stale_updates_conflict() {
        let store = Store::new(100);
        let def = store.resolve("", "v1", "services").unwrap();
        let a = store
            .create(&def, Some("default"), svc("a"), false)
            .unwrap();
        let rv_a: u64 = meta(&a, "resourceVersion").unwrap().parse().unwrap();
        let b = store
            .create(&def, Some("default"), svc("b"), false)
            .unwrap();
        assert_eq!(meta(&b, "resourceVersion").unwrap(), (rv_a + 1).to_string());
        let mut changed = (*a).clone();
        changed["spec"]["ports"] = json!([{"port": 80}]);
        let updated = store
            .update(&def, Some("default"), "a", changed.clone(), false, false)
            .unwrap();
        assert_eq!(updated["metadata"]["generation"], json!(2));
        let err = store
            .update(&def, Some("default"), "a", changed, false, false)
            .unwrap_err();
        assert_eq!(err.code, 409);
    }

    #[test]
    fn a_watch_from_before_the_retained_history_is_gone() {
        let store = Store::new(2);
        let def = store.resolve("", "v1", "services").unwrap();
        let start = store.current_rv();
        for n in ["a", "b", "c"] {
            store.create(&def, Some("default"), svc(n), false).unwrap();
        }
        assert_eq!(store.watch(&def, Some(start)).unwrap_err().code, 410);
        let recent = store.current_rv() - 1;
        assert_eq!(store.watch(&def, Some(recent)).unwrap().replay.len(), 1);
    }

    #[test]
    fn a_crd_serves_its_resource_until_it_is_deleted() {
        let store = Store::new(100);
        let crds = store
            .resolve("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .unwrap();
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Cluster",
                     "names": {"kind": "Widget", "plural": "widgets", "shortNames": ["wd"]},
                     "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}]}
        });
        store.create(&crds, None, crd, false).unwrap();
        let def = store.resolve("example.com", "v1", "widgets").unwrap();
        assert!(def.status_subresource && !def.namespaced);
        let w = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"a": 1}, "status": {"x": 1}});
        let created = store.create(&def, None, w, false).unwrap();
        assert!(
            created.get("status").is_none(),
            "create drops status when /status is a subresource"
        );
        store
            .delete(&crds, None, "widgets.example.com", None, false)
            .unwrap();
        assert!(store.resolve("example.com", "v1", "widgets").is_none());
    }
}
