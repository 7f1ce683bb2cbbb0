//! The HTTP side: accepting connections (plain or TLS), routing Kubernetes API paths,
//! discovery, the verbs, watch streams, and the `/_emulator/` control endpoints.
//!
//! ```text
//!  accept loop ──> connection task (hyper HTTP/1.1, killed on outage)
//!                    └─> handle(request)
//!                          ├─ /_emulator/...        control: faults, counters, outage
//!                          ├─ route(path)           discovery | resource request
//!                          ├─ count + fault rules   (latency, 429, 5xx, hang)
//!                          └─ verb                  store call -> JSON / Table / watch stream
//! ```
//!
//! Discovery documents live in `discovery`, watch streams in `watching`, and the control
//! endpoints in `control`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use axum::body::{Body, Bytes};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::control::control;
use super::discovery::{
    api_group, api_groups, openapi_group_version, openapi_root, resource_list, version,
};
use super::faults::{Faults, RequestKey, Verb, Verdict};
use super::selector::{FieldSelector, LabelSelector};
use super::store::{ApiError, ApiResult, Object, PatchType, ResourceDef, Store};
use super::watching::watch_response;
use super::{EmulatorConfig, Error, crd, protobuf, table};

/// State shared by the accept loop, every connection and the [`super::Emulator`] handle.
pub(crate) struct Shared {
    pub store: Store,
    pub faults: Faults,
    pub config: EmulatorConfig,
    /// The bound address; restored outages re-bind exactly this.
    pub addr: SocketAddr,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Bumped to end every open watch stream.
    pub drop_watches: watch::Sender<u64>,
    /// Bumped to close every open connection.
    pub kill_connections: watch::Sender<u64>,
    /// The accept loop; `None` during an outage.
    pub listener: Mutex<Option<JoinHandle<()>>>,
    /// Watch streams currently open.
    pub open_watches: AtomicUsize,
}

// === impl Shared: lifecycle ===

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Starts accepting on an already bound listener.
    pub fn serve(self: &Arc<Self>, listener: TcpListener) {
        let shared = self.clone();
        let task = tokio::spawn(
            async move {
                // Bounded by the task's life: the loop ends when the task is aborted.
                loop {
                    match listener.accept().await {
                        Ok((stream, peer)) => {
                            let shared = shared.clone();
                            tokio::spawn(
                                serve_connection(shared, stream)
                                    .instrument(tracing::debug_span!("connection", %peer)),
                            );
                        }
                        Err(error) => {
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
            .instrument(tracing::info_span!("kube-emulator", addr = %self.addr)),
        );
        if let Some(old) = self.listener.lock().replace(task) {
            old.abort();
        }
    }

    /// Closes the port and every open connection.
    pub async fn outage(&self) {
        let task = self.listener.lock().take();
        if let Some(task) = task {
            task.abort();
            // Wait for the listener to be dropped, so the port is closed on return.
            let _ = task.await;
        }
        self.kill_connections.send_modify(|g| *g += 1);
        tracing::info!(addr = %self.addr, "outage: port closed");
    }

    /// Re-binds the same port after an outage.
    pub async fn restore(self: &Arc<Self>) -> Result<(), Error> {
        if self.listener.lock().is_some() {
            return Ok(());
        }
        let mut last = None;
        // Bounded retries: the old socket may linger for a moment.
        for _ in 0..100 {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => {
                    self.serve(listener);
                    tracing::info!(addr = %self.addr, "outage over: port open");
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(Error::Bind {
            addr: self.addr,
            source: last.unwrap_or_else(|| std::io::Error::other("bind failed")),
        })
    }

    /// Whether the port is closed.
    pub fn is_down(&self) -> bool {
        self.listener.lock().is_none()
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let mut kill = shared.kill_connections.subscribe();
    let _ = stream.set_nodelay(true);
    match shared.tls.clone() {
        Some(acceptor) => {
            let tls = tokio::select! {
                r = acceptor.accept(stream) => match r {
                    Ok(s) => s,
                    Err(error) => {
                        tracing::debug!(%error, "TLS handshake failed");
                        return;
                    }
                },
                _ = kill.changed() => return,
            };
            serve_io(shared, TokioIo::new(tls), kill).await;
        }
        None => serve_io(shared, TokioIo::new(stream), kill).await,
    }
}

async fn serve_io<I>(shared: Arc<Shared>, io: I, mut kill: watch::Receiver<u64>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::select! {
        r = conn => if let Err(error) = r {
            tracing::debug!(%error, "connection ended with an error");
        },
        // Dropping the connection closes the socket: that is the outage.
        _ = kill.changed() => {}
    }
}

// === responses ===

pub(super) fn json_response(code: u16, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Adds a `Warning` header per unknown field, which kubectl prints.
pub(super) fn with_warnings(mut resp: Response<Body>, unknown: &[String]) -> Response<Body> {
    for field in unknown {
        let text = format!("299 - \"unknown field \\\"{field}\\\"\"");
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

pub(super) fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

pub(super) fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Gone",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

// === requests ===

/// Decodes `%XX` and `+` in a query component.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) type Query = HashMap<String, String>;

fn parse_query(q: Option<&str>) -> Query {
    q.unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// A request for a resource, once the path is understood.
#[derive(Debug, Clone)]
pub(super) struct ResourceRequest {
    pub(super) def: Arc<ResourceDef>,
    pub(super) version: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
    watch_path: bool,
}

#[derive(Debug)]
enum Route {
    Version,
    OpenApiRoot,
    OpenApi(String, String),
    Api,
    Apis,
    Group(String),
    GroupVersion(String, String),
    Resource(ResourceRequest),
}

fn route(store: &Store, path: &str) -> ApiResult<Route> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["openapi", "v3"] => return Ok(Route::OpenApiRoot),
        ["openapi", "v3", "api", v] => return Ok(Route::OpenApi(String::new(), (*v).to_owned())),
        ["openapi", "v3", "apis", g, v] => {
            return Ok(Route::OpenApi((*g).to_owned(), (*v).to_owned()));
        }
        ["api"] => return Ok(Route::Api),
        ["apis"] => return Ok(Route::Apis),
        ["apis", g] => return Ok(Route::Group((*g).to_owned())),
        ["api", v] => return Ok(Route::GroupVersion(String::new(), (*v).to_owned())),
        ["apis", g, v] => return Ok(Route::GroupVersion((*g).to_owned(), (*v).to_owned())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    let (watch_path, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    // `namespaces/x/status` is the namespace's own subresource; `namespaces/x/svc...` is
    // a namespaced resource.
    let (namespace, rest) = match rest {
        ["namespaces", ns, r, tail @ ..]
            if !(tail.is_empty() && (*r == "status" || *r == "finalize")) =>
        {
            (Some((*ns).to_owned()), &rest[2..])
        }
        rest => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some((*n).to_owned()), None),
        [p, n, s] => (*p, Some((*n).to_owned()), Some(*s)),
        _ => return Err(ApiError::no_route()),
    };
    let def = store
        .resolve(group, version, plural)
        .ok_or_else(ApiError::no_route)?;
    if namespace.is_some() && !def.namespaced {
        return Err(ApiError::no_route());
    }
    let status = match sub {
        None => false,
        Some("status") if def.status_subresource => true,
        Some(_) => return Err(ApiError::no_route()),
    };
    Ok(Route::Resource(ResourceRequest {
        def,
        version: version.to_owned(),
        namespace,
        name,
        status,
        watch_path,
    }))
}

fn verb_of(method: &Method, rr: &ResourceRequest, query: &Query) -> Verb {
    let watch =
        rr.watch_path || matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    match (method, rr.name.is_some()) {
        (&Method::GET, _) if watch => Verb::Watch,
        (&Method::GET, true) => Verb::Get,
        (&Method::GET, false) => Verb::List,
        (&Method::POST, _) => Verb::Create,
        (&Method::PUT, _) => Verb::Update,
        (&Method::PATCH, _) => Verb::Patch,
        (&Method::DELETE, true) => Verb::Delete,
        (&Method::DELETE, false) => Verb::Deletecollection,
        _ => Verb::NonResource,
    }
}

/// Serves one request.
async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parse_query(parts.uri.query());
    if let Some(rest) = path.strip_prefix("/_emulator/") {
        return control(&shared, &parts.method, rest, &query, body).await;
    }
    let header = |name: hyper::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let user_agent = header(hyper::header::USER_AGENT);
    let accept = header(hyper::header::ACCEPT);
    let content_type = header(CONTENT_TYPE);
    let routed = route(&shared.store, &path);
    let key = match &routed {
        Ok(Route::Resource(rr)) => {
            let mut resource = rr.def.group_resource().qualified();
            if rr.status {
                resource.push_str("/status");
            }
            RequestKey {
                verb: verb_of(&parts.method, rr, &query),
                resource,
                user_agent,
            }
        }
        _ => RequestKey {
            verb: Verb::NonResource,
            resource: path.clone(),
            user_agent,
        },
    };
    shared.faults.count(&key);
    tracing::debug!(method = %parts.method, %path, verb = ?key.verb, agent = %key.user_agent, "request");
    match shared.faults.apply(&key).await {
        Verdict::Proceed => {}
        Verdict::TooManyRequests(secs) => {
            let e = ApiError::new(
                429,
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later (injected)",
            );
            let mut resp = error_response(&ApiError {
                details: Some(json!({"retryAfterSeconds": secs})),
                ..e
            });
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
            return resp;
        }
        Verdict::Error(code) => {
            return error_response(&ApiError::new(
                code,
                reason_for(code),
                format!("injected fault: HTTP {code}"),
            ));
        }
    }
    let result = match routed {
        Ok(Route::Version) => Ok(json_response(200, &version())),
        Ok(Route::OpenApiRoot) => Ok(json_response(200, &openapi_root(&shared.store))),
        Ok(Route::OpenApi(g, v)) => {
            openapi_group_version(&shared.store, &g, &v).map(|d| json_response(200, &d))
        }
        Ok(Route::Api) => Ok(json_response(
            200,
            &json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}],
            }),
        )),
        Ok(Route::Apis) => Ok(json_response(200, &api_groups(&shared.store))),
        Ok(Route::Group(g)) => api_group(&shared.store, &g).map(|v| json_response(200, &v)),
        Ok(Route::GroupVersion(g, v)) => {
            resource_list(&shared.store, &g, &v).map(|v| json_response(200, &v))
        }
        Ok(Route::Resource(rr)) => {
            let ctx = Ctx {
                shared: &shared,
                rr,
                query: &query,
                table: accept.contains("as=Table"),
            };
            serve_resource(ctx, key.verb, &content_type, body).await
        }
        Err(e) => Err(e),
    };
    result.unwrap_or_else(|e| error_response(&e))
}

// === resources ===

pub(super) struct Ctx<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) rr: ResourceRequest,
    query: &'a Query,
    /// The client asked for a `Table` (kubectl's human-readable output).
    pub(super) table: bool,
}

impl Ctx<'_> {
    pub(super) fn q(&self, k: &str) -> Option<&str> {
        self.query
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn dry_run(&self) -> bool {
        self.q("dryRun").is_some()
    }

    fn ns(&self) -> Option<&str> {
        self.rr.namespace.as_deref()
    }

    /// The object as the requested version presents it.
    fn present(&self, obj: &Object) -> Value {
        let mut o = obj.clone();
        o["apiVersion"] = json!(self.rr.def.api_version(&self.rr.version));
        o
    }

    fn single(&self, code: u16, obj: &Object) -> Response<Body> {
        let o = self.present(obj);
        if self.table {
            let rv = o
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or_default();
            json_response(
                code,
                &table::table(
                    &self.rr.def,
                    [&o],
                    json!({"resourceVersion": rv}),
                    self.full_object(),
                ),
            )
        } else {
            json_response(code, &o)
        }
    }

    /// Field validation of a custom resource body (`fieldValidation=Strict|Warn|Ignore`):
    /// fields the schema does not know fail a strict request and are warnings otherwise.
    /// They are pruned from the stored object either way.
    fn check_fields(&self, body: &Value) -> ApiResult<Vec<String>> {
        let (Some(schema), false) = (
            &self.rr.def.schema,
            self.q("fieldValidation") == Some("Ignore"),
        ) else {
            return Ok(Vec::new());
        };
        let unknown = crd::prune_unknown(&mut body.clone(), schema);
        if !unknown.is_empty() && self.q("fieldValidation") == Some("Strict") {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                list.join(", ")
            )));
        }
        Ok(unknown)
    }

    pub(super) fn full_object(&self) -> bool {
        self.q("includeObject") == Some("Object")
    }

    /// Namespace plus label and field selectors as one predicate.
    pub(super) fn filter(&self) -> ApiResult<impl Fn(&Object) -> bool + Send + Sync + 'static> {
        let labels = LabelSelector::parse(self.q("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let mut fields = self.q("fieldSelector").unwrap_or_default().to_owned();
        // A watch on `.../name` is a watch with `metadata.name=name`.
        if let Some(name) = &self.rr.name {
            if !fields.is_empty() {
                fields.push(',');
            }
            fields.push_str(&format!("metadata.name={name}"));
        }
        let fields = FieldSelector::parse(&fields).map_err(ApiError::bad_request)?;
        let ns = self.rr.namespace.clone();
        Ok(move |o: &Object| {
            ns.as_deref().is_none_or(|ns| {
                o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
            }) && labels.matches(o)
                && fields.matches(o)
        })
    }
}

pub(super) async fn read_body(body: Incoming, limit: usize) -> ApiResult<Bytes> {
    axum::body::to_bytes(Body::new(body), limit)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.to_string().contains("length limit"))
                || e.to_string().contains("length limit");
            if too_large {
                ApiError::new(
                    413,
                    "RequestEntityTooLarge",
                    format!("the request body is larger than {limit} bytes"),
                )
            } else {
                ApiError::bad_request(format!("reading the request body: {e}"))
            }
        })
}

/// Parses a body as JSON, or as YAML when the content type says so (or JSON fails).
pub(super) fn parse_body(bytes: &[u8], content_type: &str) -> ApiResult<Value> {
    if content_type.contains("protobuf") {
        return protobuf::decode(bytes).map_err(|e| ApiError::new(415, "UnsupportedMediaType", e));
    }
    if content_type.contains("cbor") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml ({content_type})"
            ),
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let json = serde_json::from_str::<Value>(text);
    match json {
        Ok(v) => Ok(v),
        Err(json_err) if content_type.contains("yaml") => serde_saphyr::from_str::<Value>(text)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}")))
            .and_then(|v| {
                if v.is_null() {
                    Err(ApiError::bad_request(format!(
                        "empty YAML body ({json_err})"
                    )))
                } else {
                    Ok(v)
                }
            }),
        Err(e) => Err(ApiError::bad_request(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

async fn serve_resource(
    ctx: Ctx<'_>,
    verb: Verb,
    content_type: &str,
    body: Incoming,
) -> ApiResult<Response<Body>> {
    let store = &ctx.shared.store;
    let def = ctx.rr.def.clone();
    let limit = ctx.shared.config.max_body_bytes;
    let needs_name = || {
        ctx.rr.name.clone().ok_or_else(|| {
            ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        })
    };
    match verb {
        Verb::Get => {
            let obj = store.get(&def, ctx.ns(), &needs_name()?)?;
            Ok(ctx.single(200, &obj))
        }
        Verb::List => list(&ctx),
        Verb::Watch => watch_response(&ctx),
        Verb::Create => {
            if ctx.rr.name.is_some() {
                return Err(ApiError::new(
                    405,
                    "MethodNotAllowed",
                    "POST is not allowed on a named object",
                ));
            }
            if def.namespaced && ctx.rr.namespace.is_none() {
                return Err(ApiError::no_route());
            }
            let obj = parse_body(&read_body(body, limit).await?, content_type)?;
            let warnings = ctx.check_fields(&obj)?;
            let created = store.create(&def, ctx.ns(), obj, ctx.dry_run())?;
            Ok(with_warnings(ctx.single(201, &created), &warnings))
        }
        Verb::Update => {
            let name = needs_name()?;
            let obj = parse_body(&read_body(body, limit).await?, content_type)?;
            let warnings = ctx.check_fields(&obj)?;
            let updated = store.update(&def, ctx.ns(), &name, obj, ctx.rr.status, ctx.dry_run())?;
            Ok(with_warnings(ctx.single(200, &updated), &warnings))
        }
        Verb::Patch => {
            let name = needs_name()?;
            let media = content_type.split(';').next().unwrap_or_default().trim();
            let kind = match media {
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/json-patch+json" => PatchType::Json,
                "application/apply-patch+yaml" | "application/apply-patch+json" => PatchType::Apply,
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the body of the request was in an unknown format: {other:?}"),
                    ));
                }
            };
            if kind == PatchType::Apply && ctx.q("fieldManager").is_none() {
                return Err(ApiError::bad_request(
                    "PATCH /apply: fieldManager is required for apply requests",
                ));
            }
            let patch = parse_body(
                &read_body(body, limit).await?,
                if kind == PatchType::Apply {
                    "yaml"
                } else {
                    "json"
                },
            )?;
            let warnings = if kind == PatchType::Json {
                Vec::new()
            } else {
                ctx.check_fields(&patch)?
            };
            let (obj, created) = store.patch(
                &def,
                ctx.ns(),
                &name,
                kind,
                &patch,
                ctx.rr.status,
                ctx.dry_run(),
            )?;
            Ok(with_warnings(
                ctx.single(if created { 201 } else { 200 }, &obj),
                &warnings,
            ))
        }
        Verb::Delete => {
            let name = needs_name()?;
            let bytes = read_body(body, limit).await?;
            // DeleteOptions are optional; their rv precondition is honoured.
            let options = if bytes.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                parse_body(&bytes, content_type)?
            };
            let precondition = options
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str);
            let dry_run = ctx.dry_run()
                || options
                    .get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty());
            let gone = store.delete(&def, ctx.ns(), &name, precondition, dry_run)?;
            Ok(ctx.single(200, &gone))
        }
        Verb::Deletecollection => {
            let filter = ctx.filter()?;
            let gone = store.delete_collection(&def, ctx.ns(), filter);
            let items: Vec<Value> = gone.iter().map(|o| ctx.present(o)).collect();
            Ok(json_response(
                200,
                &json!({
                    "kind": format!("{}List", def.kind), "apiVersion": def.api_version(&ctx.rr.version),
                    "metadata": {"resourceVersion": store.current_rv().to_string()}, "items": items,
                }),
            ))
        }
        Verb::NonResource => Err(ApiError::new(405, "MethodNotAllowed", "method not allowed")),
    }
}

fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"rv": rv, "ns": ns, "name": name}).to_string())
}

fn decode_continue(token: &str) -> ApiResult<(u64, String, String)> {
    use base64::Engine as _;
    let bad = || ApiError::bad_request("continue key is not valid");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(bad)
    };
    Ok((
        v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?,
        s("ns")?,
        s("name")?,
    ))
}

fn list(ctx: &Ctx<'_>) -> ApiResult<Response<Body>> {
    let store = &ctx.shared.store;
    let def = &ctx.rr.def;
    if let Some(rv) = ctx.q("resourceVersion").filter(|rv| *rv != "0") {
        let rv: u64 = rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?;
        if ctx.q("resourceVersionMatch") == Some("Exact") {
            store.check_not_compacted(rv)?;
        }
    }
    let filter = ctx.filter()?;
    let (items, current_rv) = store.list(def, ctx.ns(), filter);
    let (list_rv, after) = match ctx.q("continue") {
        Some(token) => {
            let (rv, ns, name) = decode_continue(token)?;
            store.check_not_compacted(rv).map_err(|_| {
                ApiError::gone("The provided continue parameter is too old to display a consistent list result. \
                    You can start a new list without the continue parameter.")
            })?;
            (rv, Some((ns, name)))
        }
        None => (current_rv, None),
    };
    let key = |o: &Object| {
        let s = |p: &str| {
            o.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        (s("/metadata/namespace"), s("/metadata/name"))
    };
    let mut page: Vec<Arc<Object>> = items
        .into_iter()
        .filter(|o| after.as_ref().is_none_or(|a| key(o) > *a))
        .collect();
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if let Some(limit) = ctx
        .q("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        && page.len() > limit
    {
        let remaining = page.len() - limit;
        page.truncate(limit);
        let (ns, name) = key(page.last().expect("limit is positive"));
        metadata["continue"] = json!(encode_continue(list_rv, &ns, &name));
        metadata["remainingItemCount"] = json!(remaining);
    }
    let items: Vec<Value> = page.iter().map(|o| ctx.present(o)).collect();
    if ctx.table {
        return Ok(json_response(
            200,
            &table::table(def, &items, metadata, ctx.full_object()),
        ));
    }
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", def.kind),
            "apiVersion": def.api_version(&ctx.rr.version),
            "metadata": metadata,
            "items": items,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let q = parse_query(Some(
            "labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=true&x=%zz",
        ));
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "%zz");
    }

    #[test]
    fn paths_route_to_namespaced_cluster_and_status_requests() {
        let store = Store::new(10);
        let Ok(Route::Resource(r)) = route(&store, "/api/v1/namespaces/shop/services/a/status")
        else {
            panic!()
        };
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_deref(), r.status),
            (Some("shop"), Some("a"), true)
        );
        let Ok(Route::Resource(r)) = route(&store, "/api/v1/namespaces/shop") else {
            panic!()
        };
        assert_eq!(
            (r.def.plural.as_str(), r.name.as_deref()),
            ("namespaces", Some("shop"))
        );
        let Ok(Route::Resource(r)) = route(&store, "/api/v1/namespaces/shop/status") else {
            panic!()
        };
        assert!(r.status && r.namespace.is_none());
        let Ok(Route::Resource(r)) =
            route(&store, "/apis/discovery.k8s.io/v1/watch/endpointslices")
        else {
            panic!()
        };
        assert!(r.watch_path);
        assert_eq!(route(&store, "/apis/nope/v1/things").unwrap_err().code, 404);
        assert_eq!(
            route(&store, "/api/v1/namespaces/x/namespaces")
                .unwrap_err()
                .code,
            404
        );
    }
}
