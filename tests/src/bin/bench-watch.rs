//! The member watcher's own list/watch against kube's `runtime::watcher`, on one real
//! kube-apiserver, phase by phase: initial sync, idle, changes, a forced 410, refusal.
//!
//! ```text
//! cargo run --release -p lifeline-tests --bin bench-watch -- [--slices 2000] [--services 200]
//!     [--selected 20] [--changes 100] [--idle 120] [--noise 1] [--outages 3]
//!     [--page-size 500] [--refused 30]
//!     [--variants ours,watcher,watcher-rv0,streaming] [--dump]
//! ```
//!
//! `--slices` EndpointSlices (10 endpoints each) spread over `--services` Services in one
//! namespace; every approach selects `--selected` of them with
//! `kubernetes.io/service-name in (...)`. Each variant runs alone, in turn, through the
//! same [`Budget`] layer (default `BudgetConfig`) and through a counting TCP relay:
//!
//! ```text
//! ours         MemberWatcher (EndpointSlice stream only), WatchOptions defaults but page_size
//! watcher      watcher::Config::default().labels(..).any_semantic().page_size(N).timeout(290),
//!              .default_backoff(): the knobs closest to ours
//! watcher-rv0  the same with page_size = None (kube sends resourceVersion=0 only without a
//!              limit)
//! streaming    watcher::Config::default().labels(..).streaming_lists().timeout(290)
//! ```
//!
//! Phases: sync (spawn until the view holds every selected slice); idle (`--idle` s in
//! which only unselected slices change, `--noise` writes a second); changes (`--changes` patches of selected slices, one at a time, each waited
//! for in the view); 410 (the relay cut, the API server killed, etcd's revision bumped
//! and compacted, the server started again, then the relay restored: the resume finds
//! its resourceVersion too old; `--outages` times); refused (`--refused` s as a user without any grant).
//! Requests are counted by the budget (a failed attempt included) and by the API
//! server's `/metrics` (`apiserver_request_total`, endpointslices only; the counters of
//! a restarted server are joined across the restart); bytes are what the relay carried
//! (TLS included). Figures only: nothing here asserts a time.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt as _, watcher},
};
use lifeline_controller::kubernetes::budget::{Budget, BudgetConfig, BudgetStats, Verb};
use lifeline_controller::kubernetes::member::{
    MemberHandle, MemberView, MemberWatcher, WatchOptions, kube_config_from_bytes,
};
use lifeline_crds::AddressSource;
use lifeline_testkit::{
    ControlPlanes,
    control_plane::{ApiServer, Options},
};
use lifeline_tests::number_arg;
use parking_lot::Mutex;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::watch,
    task::JoinHandle,
};

const NAMESPACE: &str = "bench";
/// Endpoints per EndpointSlice.
const ENDPOINTS: usize = 10;
/// Longest wait for any one thing the bench waits for (a sync, a change, a recovery).
const WAIT_LIMIT: Duration = Duration::from_secs(180);
/// A user the API server knows and RBAC grants nothing.
const NOBODY: &str = "nobody";

#[derive(Debug, Clone)]
struct Args {
    slices: usize,
    services: usize,
    selected: usize,
    changes: usize,
    idle: Duration,
    refused: Duration,
    /// Writes per second to unselected slices while idle.
    noise: usize,
    /// Forced 410s per variant.
    outages: usize,
    page_size: u32,
    variants: Vec<Variant>,
    dump: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Ours,
    Watcher,
    WatcherRv0,
    Streaming,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Ours => "ours",
            Variant::Watcher => "watcher",
            Variant::WatcherRv0 => "watcher-rv0",
            Variant::Streaming => "streaming",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ours" => Variant::Ours,
            "watcher" => Variant::Watcher,
            "watcher-rv0" => Variant::WatcherRv0,
            "streaming" => Variant::Streaming,
            other => bail!("unknown variant {other}"),
        })
    }
}

fn parse_args() -> Result<Args> {
    let args: Vec<String> = std::env::args().collect();
    let variants = match args.iter().position(|a| a == "--variants") {
        Some(i) => args
            .get(i + 1)
            .context("--variants needs a value")?
            .split(',')
            .map(Variant::parse)
            .collect::<Result<_>>()?,
        None => vec![
            Variant::Ours,
            Variant::Watcher,
            Variant::WatcherRv0,
            Variant::Streaming,
        ],
    };
    let secs = |name, default| -> Result<Duration> {
        Ok(Duration::from_secs(number_arg(&args, name, default)? as u64))
    };
    Ok(Args {
        slices: number_arg(&args, "--slices", 2000)?,
        services: number_arg(&args, "--services", 200)?.max(1),
        selected: number_arg(&args, "--selected", 20)?.max(1),
        changes: number_arg(&args, "--changes", 100)?,
        idle: secs("--idle", 120)?,
        noise: number_arg(&args, "--noise", 1)?,
        outages: number_arg(&args, "--outages", 3)?,
        refused: secs("--refused", 30)?,
        page_size: number_arg(&args, "--page-size", 500)? as u32,
        variants,
        dump: args.iter().any(|a| a == "--dump"),
    })
}

// === The cluster's objects ===

fn service_name(i: usize) -> String {
    format!("svc-{i:03}")
}

/// The selected services: every `services / selected`-th one.
fn selected_services(args: &Args) -> Vec<String> {
    let step = (args.services / args.selected).max(1);
    (0..args.services)
        .step_by(step)
        .take(args.selected)
        .map(service_name)
        .collect()
}

/// `(slice name, service name)` of every slice; slices are dealt to services in turn.
fn all_slices(args: &Args) -> Vec<(String, String)> {
    (0..args.slices)
        .map(|i| {
            let svc = i % args.services;
            (
                format!("{}-{}", service_name(svc), i / args.services),
                service_name(svc),
            )
        })
        .collect()
}

fn endpoints(first: IpAddr, slice: usize) -> serde_json::Value {
    let eps: Vec<_> = (0..ENDPOINTS)
        .map(|e| {
            let ip = if e == 0 {
                first.to_string()
            } else {
                format!("10.{}.{}.{e}", slice / 256, slice % 256)
            };
            json!({"addresses": [ip], "conditions": {"ready": true}})
        })
        .collect();
    json!(eps)
}

async fn create_slices(api: &Api<EndpointSlice>, args: &Args) -> Result<()> {
    let results: Vec<Result<_, kube::Error>> =
        futures::stream::iter(all_slices(args).into_iter().enumerate())
            .map(|(i, (name, service))| {
                let api = api.clone();
                async move {
                    let first: IpAddr = format!("10.{}.{}.0", i / 256, i % 256).parse().unwrap();
                    let slice: EndpointSlice = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
                    "addressType": "IPv4",
                    "endpoints": endpoints(first, i),
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
                }))
                .expect("an EndpointSlice");
                    api.create(&PostParams::default(), &slice).await
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
    for r in results {
        r.context("creating the EndpointSlices")?;
    }
    Ok(())
}

/// The `i`-th change: the selected slice it patches, its service, and the new address
/// of that slice's first endpoint (unique over the whole run).
struct Change {
    slice: String,
    service: String,
    address: IpAddr,
}

struct Changer {
    api: Api<EndpointSlice>,
    targets: Vec<(usize, String, String)>,
    /// Slices no variant selects (for noise).
    unselected: Vec<String>,
    next: usize,
}

impl Changer {
    fn new(api: Api<EndpointSlice>, args: &Args) -> Self {
        let selected: BTreeSet<String> = selected_services(args).into_iter().collect();
        let targets = all_slices(args)
            .into_iter()
            .enumerate()
            .filter(|(_, (_, svc))| selected.contains(svc))
            .map(|(i, (slice, svc))| (i, slice, svc))
            .collect();
        let unselected = all_slices(args)
            .into_iter()
            .filter(|(_, svc)| !selected.contains(svc))
            .map(|(slice, _)| slice)
            .collect();
        Self {
            api,
            targets,
            unselected,
            next: 0,
        }
    }

    /// Patches the next selected slice; retried a few times (the admin client's pooled
    /// connection may be a dead one right after a restart).
    async fn change(&mut self) -> Result<Change> {
        let n = self.next;
        self.next += 1;
        let (i, slice, service) = self.targets[n % self.targets.len()].clone();
        let address: IpAddr = format!("172.16.{}.{}", n / 256 % 256, n % 256).parse()?;
        let patch = json!({"endpoints": endpoints(address, i)});
        let mut last = None;
        for _ in 0..10 {
            match self
                .api
                .patch(&slice, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    return Ok(Change {
                        slice,
                        service,
                        address,
                    });
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(last.unwrap()).context("patching a slice")
    }
}

// === A counting TCP relay ===

/// A loopback relay in front of the API server that counts the bytes it carries and the
/// connections it accepts, and can be cut (open connections dropped, new ones closed).
struct Relay {
    addr: SocketAddr,
    down: Arc<AtomicU64>,
    up: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    blocked: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // Bounded by the connection: ends on EOF or an error.
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        count.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Relay {
    async fn start(target: SocketAddr) -> Result<Relay> {
        let listener = tokio::net::TcpListener::bind((lifeline_testkit::loopback(), 0)).await?;
        let addr = listener.local_addr()?;
        let (down, up, accepted) = (Arc::default(), Arc::default(), Arc::default());
        let blocked = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (down, up, accepted, blocked, conns): (
                Arc<AtomicU64>,
                Arc<AtomicU64>,
                Arc<AtomicU64>,
                _,
                _,
            ) = (
                Arc::clone(&down),
                Arc::clone(&up),
                Arc::clone(&accepted),
                blocked.clone(),
                conns.clone(),
            );
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if blocked.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let (down, up) = (down.clone(), up.clone());
                    conns.lock().push(tokio::spawn(async move {
                        let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        let (ir, iw) = inbound.into_split();
                        let (or, ow) = outbound.into_split();
                        tokio::join!(pump(ir, ow, up), pump(or, iw, down));
                    }));
                }
            })
        };
        Ok(Relay {
            addr,
            down,
            up,
            accepted,
            blocked,
            conns,
            accept,
        })
    }

    fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
        if blocked {
            for c in self.conns.lock().drain(..) {
                c.abort();
            }
        }
    }

    fn counters(&self) -> Wire {
        Wire {
            down: self.down.load(Ordering::Relaxed),
            up: self.up.load(Ordering::Relaxed),
            connections: self.accepted.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Wire {
    down: u64,
    up: u64,
    connections: u64,
}

impl std::ops::Sub for Wire {
    type Output = Wire;
    fn sub(self, o: Wire) -> Wire {
        Wire {
            down: self.down - o.down,
            up: self.up - o.up,
            connections: self.connections - o.connections,
        }
    }
}

/// A kubeconfig for `user` that reaches `s` through the relay (the certificate is
/// checked against a name it carries, not the relay's address).
fn relayed_kubeconfig(s: &ApiServer, user: &str, relay: SocketAddr) -> String {
    s.kubeconfig(user)
        .replace(&s.url(), &format!("https://{relay}"))
        .replace(
            "    certificate-authority-data:",
            "    tls-server-name: kubernetes.default.svc\n    certificate-authority-data:",
        )
}

// === The API server's own counts ===

/// The endpointslices series of the server's `/metrics`, name{labels} → value.
type Series = BTreeMap<String, f64>;

async fn scrape(s: &ApiServer) -> Series {
    let text = s.get("admin", "/metrics").await.unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#') && l.to_lowercase().contains("endpointslice"))
        .filter(|l| !l.contains("_bucket{"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn sub(a: &Series, b: &Series) -> Series {
    a.iter()
        .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

fn add(a: &Series, b: &Series) -> Series {
    let mut out = a.clone();
    for (k, v) in b {
        *out.entry(k.clone()).or_default() += v;
    }
    out
}

/// Sum of the series of `name` whose labels contain every one of `labels`.
fn total(s: &Series, name: &str, labels: &[&str]) -> f64 {
    s.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

/// Server-side counts of one phase, joined across a restart of the server.
struct ServerCounts {
    base: Series,
    carried: Series,
}

impl ServerCounts {
    async fn start(s: &ApiServer) -> Self {
        Self {
            base: scrape(s).await,
            carried: Series::new(),
        }
    }

    /// Before the server is killed: keep what it counted so far.
    async fn before_restart(&mut self, s: &ApiServer) {
        self.carried = add(&self.carried, &sub(&scrape(s).await, &self.base));
    }

    /// Right after it is back (and before any client can reach it).
    async fn after_restart(&mut self, s: &ApiServer) {
        self.base = scrape(s).await;
    }

    async fn end(&self, s: &ApiServer) -> Series {
        add(&self.carried, &sub(&scrape(s).await, &self.base))
    }
}

// === Client-side request log ===

/// Every request the budget sends (its `API request` debug event), in order.
#[derive(Clone, Default)]
struct RequestLog(Arc<Mutex<Vec<String>>>);

struct UriField(Option<String>);

impl tracing::field::Visit for UriField {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "uri" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RequestLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut uri = UriField(None);
        event.record(&mut uri);
        if let Some(uri) = uri.0 {
            self.0.lock().push(uri);
        }
    }
}

impl RequestLog {
    fn install(&self) {
        use tracing_subscriber::{
            Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
        };
        let capture = self
            .clone()
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.target() == "lifeline_controller::kubernetes::budget"
                    && m.name().contains("event")
            }));
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_filter(tracing_subscriber::EnvFilter::from_default_env());
        tracing_subscriber::registry()
            .with(fmt)
            .with(capture)
            .init();
    }

    fn len(&self) -> usize {
        self.0.lock().len()
    }

    fn since(&self, from: usize) -> Vec<String> {
        self.0.lock()[from..].to_vec()
    }
}

// === The approaches under test ===

/// What a `watcher` consumer keeps: each slice's ready addresses, as our index does.
#[derive(Debug, Clone, Default)]
struct WatcherView {
    synced: bool,
    /// `Event::Init`s seen: the first list and every relist.
    inits: u64,
    errors: u64,
    last_error: String,
    slices: HashMap<String, Vec<IpAddr>>,
}

fn ready_addresses(slice: &EndpointSlice) -> Vec<IpAddr> {
    slice
        .endpoints
        .iter()
        .flatten()
        .filter(|ep| ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|ep| ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()))
        .collect()
}

fn name_of(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
}

/// Feeds a watcher stream into a view, as a switch would feed our index.
async fn consume(
    stream: impl futures::Stream<Item = Result<watcher::Event<EndpointSlice>, watcher::Error>>,
    tx: watch::Sender<WatcherView>,
) {
    let mut stream = std::pin::pin!(stream);
    let mut relist: Option<HashMap<String, Vec<IpAddr>>> = None;
    // Bounded by the task's abort when the variant ends.
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => {
                relist = Some(HashMap::new());
                tx.send_modify(|v| v.inits += 1);
            }
            Ok(watcher::Event::InitApply(s)) => {
                if let Some(buf) = relist.as_mut() {
                    buf.insert(name_of(&s), ready_addresses(&s));
                }
            }
            Ok(watcher::Event::InitDone) => {
                let listed = relist.take().unwrap_or_default();
                tx.send_modify(|v| {
                    v.slices = listed;
                    v.synced = true;
                });
            }
            Ok(watcher::Event::Apply(s)) => tx.send_modify(|v| {
                v.slices.insert(name_of(&s), ready_addresses(&s));
            }),
            Ok(watcher::Event::Delete(s)) => tx.send_modify(|v| {
                v.slices.remove(&name_of(&s));
            }),
            Err(e) => tx.send_modify(|v| {
                v.errors += 1;
                v.last_error = e.to_string();
            }),
        }
    }
}

enum Running {
    Ours(MemberHandle),
    Watcher {
        budget: Budget,
        view: watch::Receiver<WatcherView>,
        task: JoinHandle<()>,
    },
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Watcher { task, .. } = self {
            task.abort();
        }
    }
}

fn selector(args: &Args) -> String {
    format!(
        "kubernetes.io/service-name in ({})",
        selected_services(args).join(",")
    )
}

async fn spawn(variant: Variant, kubeconfig: &str, args: &Args) -> Result<Running> {
    let config = kube_config_from_bytes(kubeconfig.as_bytes()).await?;
    if variant == Variant::Ours {
        let scope = selected_services(args)
            .into_iter()
            .map(|s| (NAMESPACE.to_owned(), s))
            .collect();
        let options = WatchOptions {
            page_size: args.page_size,
            ..WatchOptions::for_address_source(AddressSource::EndpointSlice)
        };
        let handle = MemberWatcher::spawn(
            "bench".to_owned(),
            config,
            BudgetConfig::default(),
            scope,
            options,
        )?;
        return Ok(Running::Ours(handle));
    }
    let budget = Budget::new(BudgetConfig::default())?;
    let client = budget.client(config)?;
    let api: Api<EndpointSlice> = Api::namespaced(client, NAMESPACE);
    let base = watcher::Config::default()
        .labels(&selector(args))
        .timeout(290);
    let config = match variant {
        Variant::Watcher => base.any_semantic().page_size(args.page_size),
        Variant::WatcherRv0 => watcher::Config {
            page_size: None,
            ..base.any_semantic()
        },
        Variant::Streaming => base.streaming_lists(),
        Variant::Ours => unreachable!(),
    };
    let (tx, view) = watch::channel(WatcherView::default());
    let task = tokio::spawn(consume(watcher(api, config).default_backoff(), tx));
    Ok(Running::Watcher { budget, view, task })
}

impl Running {
    fn budget(&self) -> &Budget {
        match self {
            Running::Ours(h) => h.budget(),
            Running::Watcher { budget, .. } => budget,
        }
    }

    /// Lists the view has completed: list requests for ours (one page each here),
    /// `Init`s for a watcher.
    fn lists(&self) -> u64 {
        match self {
            Running::Ours(h) => verb(&h.budget().stats(), Verb::List),
            Running::Watcher { view, .. } => view.borrow().inits,
        }
    }

    /// Waits (bounded) until `pred` holds for the view; the time it took.
    async fn wait(
        &self,
        what: &str,
        ours: impl Fn(&MemberView) -> bool,
        theirs: impl Fn(&WatcherView) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        let waited = match self {
            Running::Ours(h) => {
                let mut rx = h.view();
                tokio::time::timeout(WAIT_LIMIT, async move {
                    rx.wait_for(|v| ours(v)).await.map(drop)
                })
                .await
            }
            Running::Watcher { view, .. } => {
                let mut rx = view.clone();
                tokio::time::timeout(WAIT_LIMIT, async move {
                    rx.wait_for(|v| theirs(v)).await.map(drop)
                })
                .await
            }
        };
        match waited {
            Ok(Ok(())) => Ok(start.elapsed()),
            _ => bail!(
                "timed out after {WAIT_LIMIT:?} waiting for {what}; {}",
                self.describe()
            ),
        }
    }

    async fn synced(&self, slices: usize) -> Result<Duration> {
        self.wait(
            "the initial sync",
            |v| v.synced && v.watches_open >= 1 && v.objects.endpoint_slices == slices,
            |v| v.synced && v.slices.len() == slices,
        )
        .await
    }

    async fn seen(&self, change: &Change) -> Result<Duration> {
        let key = (NAMESPACE.to_owned(), change.service.clone());
        let address = change.address;
        self.wait(
            "a change",
            |v| {
                v.services
                    .get(&key)
                    .is_some_and(|s| s.ready_addresses.contains(&address))
            },
            |v| {
                v.slices
                    .get(&change.slice)
                    .is_some_and(|a| a.contains(&address))
            },
        )
        .await
    }

    fn describe(&self) -> String {
        match self {
            Running::Ours(h) => {
                let v = h.view().borrow().clone();
                format!(
                    "ours: synced {}, watches {}, slices {}, denied {:?}, {:?}",
                    v.synced,
                    v.watches_open,
                    v.objects.endpoint_slices,
                    v.denied,
                    h.budget().stats()
                )
            }
            Running::Watcher { view, budget, .. } => {
                let v = view.borrow().clone();
                format!(
                    "watcher: synced {}, inits {}, slices {}, errors {} ({}), {:?}",
                    v.synced,
                    v.inits,
                    v.slices.len(),
                    v.errors,
                    v.last_error,
                    budget.stats()
                )
            }
        }
    }

    /// A watcher's last error (ours logs instead).
    fn last_error(&self) -> Option<String> {
        match self {
            Running::Ours(_) => None,
            Running::Watcher { view, .. } => Some(view.borrow().last_error.clone()),
        }
    }

    fn bookmarks(&self) -> Option<u64> {
        match self {
            Running::Ours(h) => Some(h.view().borrow().bookmarks),
            Running::Watcher { .. } => None,
        }
    }
}

fn verb(s: &BudgetStats, v: Verb) -> u64 {
    s.by_verb.get(&v).copied().unwrap_or(0)
}

// === Phases ===

/// What one phase of one variant cost.
struct Phase {
    variant: Variant,
    name: String,
    client: BudgetStats,
    wire: Wire,
    server: Series,
    elapsed: Duration,
    note: String,
    uris: Vec<String>,
}

/// Where a phase's figures are read: the relay, the server's `/metrics`, the request log.
struct Meters<'a> {
    relay: &'a Relay,
    server: &'a ApiServer,
    log: &'a RequestLog,
}

/// Counters at a phase's start.
struct Mark {
    client: BudgetStats,
    wire: Wire,
    server: ServerCounts,
    at: Instant,
    log: usize,
}

impl Mark {
    /// `client` is the budget's count now (zero before a variant is spawned).
    async fn take(client: BudgetStats, m: &Meters<'_>) -> Mark {
        Mark {
            client,
            wire: m.relay.counters(),
            server: ServerCounts::start(m.server).await,
            at: Instant::now(),
            log: m.log.len(),
        }
    }

    async fn finish(
        self,
        variant: Variant,
        name: &str,
        run: &Running,
        m: &Meters<'_>,
        note: String,
    ) -> Phase {
        let now = run.budget().stats();
        let by_verb = now
            .by_verb
            .iter()
            .map(|(v, n)| (*v, n - self.client.by_verb.get(v).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        Phase {
            variant,
            name: name.to_owned(),
            client: BudgetStats {
                requests: now.requests - self.client.requests,
                by_verb,
                throttled: now.throttled - self.client.throttled,
                failures: now.failures - self.client.failures,
                probes: now.probes - self.client.probes,
                circuit_opened: now.circuit_opened - self.client.circuit_opened,
            },
            wire: m.relay.counters() - self.wire,
            server: self.server.end(m.server).await,
            elapsed: self.at.elapsed(),
            note,
            uris: m.log.since(self.log),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// One forced 410 (see [`run_variant`]); the phase it made.
async fn outage(
    variant: Variant,
    run: &Running,
    planes: &ControlPlanes,
    changer: &mut Changer,
    meters: &Meters<'_>,
    trial: usize,
) -> Result<Phase> {
    let (s, relay) = (meters.server, meters.relay);
    let mut mark = Mark::take(run.budget().stats(), meters).await;
    let lists_before = run.lists();
    relay.set_blocked(true);
    mark.server.before_restart(s).await;
    s.kill();
    {
        let mut etcd = planes.etcd().client().await;
        let put = etcd.put("/bench/bump", "x", None).await?;
        let revision = put.header().context("etcd header")?.revision();
        planes.etcd().compact(revision).await;
    }
    s.start_again().await;
    mark.server.after_restart(s).await;
    // A change the client can only learn from the restarted server.
    let change = changer.change().await?;
    let cut = mark.at.elapsed();
    relay.set_blocked(false);
    let back = run.seen(&change).await?;
    let relisted = if run.lists() > lists_before {
        "relisted"
    } else {
        "no relist"
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let note = format!(
        "cut {:.0} s; view current {:.1} s after the relay reopened; {relisted}{}",
        cut.as_secs_f64(),
        back.as_secs_f64(),
        run.last_error()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default()
    );
    Ok(mark
        .finish(variant, &format!("410 #{trial}"), run, meters, note)
        .await)
}

/// Patches unselected slices `per_second` times a second until `until`: the cluster
/// stays busy (its resourceVersion moves on, so bookmarks flow) while nothing the
/// watchers select changes.
async fn noise(api: Api<EndpointSlice>, names: Vec<String>, per_second: usize, until: Duration) {
    if per_second == 0 || names.is_empty() {
        tokio::time::sleep(until).await;
        return;
    }
    let start = Instant::now();
    let every = Duration::from_secs(1) / per_second as u32;
    // Bounded by `until`.
    for i in 0.. {
        if start.elapsed() >= until {
            break;
        }
        let patch = json!({"metadata": {"annotations": {"bench/noise": i.to_string()}}});
        let _ = api
            .patch(
                &names[i % names.len()],
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await;
        tokio::time::sleep(every).await;
    }
}

/// One variant through every phase.
async fn run_variant(
    variant: Variant,
    planes: &ControlPlanes,
    changer: &mut Changer,
    log: &RequestLog,
    args: &Args,
) -> Result<Vec<Phase>> {
    let server = planes.server(0);
    let s: &ApiServer = &server;
    let target: SocketAddr = s.url().trim_start_matches("https://").parse()?;
    let relay = Relay::start(target).await?;
    let kubeconfig = relayed_kubeconfig(s, "admin", relay.addr);
    let meters = Meters {
        relay: &relay,
        server: s,
        log,
    };
    let expected = changer.targets.len();
    let mut phases = Vec::new();
    println!("== {}", variant.name());

    // Sync.
    let mark = Mark::take(BudgetStats::default(), &meters).await;
    let run = spawn(variant, &kubeconfig, args).await?;
    let sync = run.synced(expected).await?;
    // Let the watch that follows the list open before the phase is closed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sync_phase = mark
        .finish(
            variant,
            "sync",
            &run,
            &meters,
            format!("synced in {}", ms(sync)),
        )
        .await;
    println!("   sync: {}", sync_phase.note);
    phases.push(sync_phase);

    // Idle.
    let mark = Mark::take(run.budget().stats(), &meters).await;
    let bookmarks = run.bookmarks();
    noise(
        changer.api.clone(),
        changer.unselected.clone(),
        args.noise,
        args.idle,
    )
    .await;
    let note = match (bookmarks, run.bookmarks()) {
        (Some(a), Some(b)) => format!("{} bookmarks seen", b - a),
        _ => "bookmarks not visible to the consumer".to_owned(),
    };
    let p = mark
        .finish(
            variant,
            &format!("idle {} s", args.idle.as_secs()),
            &run,
            &meters,
            note,
        )
        .await;
    println!("   idle: {}", p.note);
    phases.push(p);

    // Changes.
    let mark = Mark::take(run.budget().stats(), &meters).await;
    let mut latencies = Vec::with_capacity(args.changes);
    for _ in 0..args.changes {
        let sent = Instant::now();
        let change = changer.change().await?;
        run.seen(&change).await?;
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    let note = format!(
        "change→view median {}, p90 {}, max {}",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    let p = mark
        .finish(
            variant,
            &format!("{} changes", args.changes),
            &run,
            &meters,
            note,
        )
        .await;
    println!("   changes: {}", p.note);
    phases.push(p);

    // Forced 410s: the client is cut off while the server restarts over a compacted
    // etcd whose revision moved on, so the resourceVersion it resumes from is too old
    // for the new watch cache and for etcd alike. Each trial after the first uses a
    // fresh instance, so no trial starts with a backoff grown by the one before.
    let mut run = Some(run);
    for trial in 1..=args.outages {
        let run = match run.take() {
            Some(run) => run,
            None => {
                let fresh = spawn(variant, &kubeconfig, args).await?;
                fresh.synced(expected).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                fresh
            }
        };
        let p = outage(variant, &run, planes, changer, &meters, trial).await?;
        println!("   {}: {}", p.name, p.note);
        phases.push(p);
    }

    // Refused: every request answered 403 for a while.
    if !args.refused.is_zero() {
        let relay403 = Relay::start(target).await?;
        let meters403 = Meters {
            relay: &relay403,
            server: s,
            log,
        };
        let mark = Mark::take(BudgetStats::default(), &meters403).await;
        let nobody = spawn(variant, &relayed_kubeconfig(s, NOBODY, relay403.addr), args).await?;
        tokio::time::sleep(args.refused).await;
        let mut p = mark
            .finish(
                variant,
                &format!("403 for {} s", args.refused.as_secs()),
                &nobody,
                &meters403,
                String::new(),
            )
            .await;
        p.note = format!("{} requests refused", p.client.requests);
        println!("   403: {}", p.note);
        phases.push(p);
    }
    Ok(phases)
}

// === Report ===

fn kib(b: f64) -> String {
    format!("{:.1}", b / 1024.0)
}

/// Watches the server opened during a phase: those that ended (`apiserver_request_total`
/// counts a watch when it ends) plus the change in those open.
fn server_watches(s: &Series) -> f64 {
    let es = "resource=\"endpointslices\"";
    total(s, "apiserver_request_total", &[es, "verb=\"WATCH\""])
        + total(s, "apiserver_longrunning_requests", &[es, "verb=\"WATCH\""])
}

fn table(phases: &[Phase]) -> String {
    let es = "resource=\"endpointslices\"";
    let mut out = String::new();
    writeln!(
        out,
        "{:<11} {:<11} {:>5} | {:>4} {:>4} {:>5} {:>4} | {:>4} {:>5} {:>4} {:>4} | {:>8} {:>6} {:>5} | {:>8} {:>8} | note",
        "variant", "phase", "secs", "req", "list", "watch", "fail",
        "LIST", "WATCH", "cons", "410", "down KiB", "up KiB", "conns", "listKiB", "evtKiB"
    )
    .unwrap();
    for p in phases {
        let s = &p.server;
        writeln!(
            out,
            "{:<11} {:<11} {:>5.1} | {:>4} {:>4} {:>5} {:>4} | {:>4} {:>5} {:>4} {:>4} | {:>8} {:>6} {:>5} | {:>8} {:>8} | {}",
            p.variant.name(),
            p.name,
            p.elapsed.as_secs_f64(),
            p.client.requests,
            verb(&p.client, Verb::List),
            verb(&p.client, Verb::Watch),
            p.client.failures,
            total(s, "apiserver_request_total", &[es, "verb=\"LIST\""]) as i64,
            server_watches(s) as i64,
            total(s, "apiserver_watch_cache_consistent_read_total", &[]) as i64,
            total(s, "apiserver_request_total", &[es, "code=\"410\""]) as i64,
            kib(p.wire.down as f64),
            kib(p.wire.up as f64),
            p.wire.connections,
            kib(total(s, "apiserver_response_sizes_sum", &[es, "verb=\"LIST\""])),
            kib(total(s, "apiserver_watch_events_sizes_sum", &[])),
            p.note
        )
        .unwrap();
    }
    out
}

/// The query of each variant's first list or initial watch.
fn first_requests(phases: &[Phase]) -> String {
    let mut out = String::new();
    for p in phases.iter().filter(|p| p.name == "sync") {
        for uri in p.uris.iter().take(3) {
            writeln!(out, "{:<12} {uri}", p.variant.name()).unwrap();
        }
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = parse_args()?;
    lifeline_tests::kube::install_crypto_provider();
    let log = RequestLog::default();
    log.install();
    println!(
        "watch: {} EndpointSlices x {} endpoints over {} services in {NAMESPACE}; {} selected ({} slices); \
         page size {}; {} changes; idle {} s with {} unselected writes/s; {} forced 410s",
        args.slices,
        ENDPOINTS,
        args.services,
        args.selected,
        all_slices(&args)
            .iter()
            .filter(|(_, s)| selected_services(&args).contains(s))
            .count(),
        args.page_size,
        args.changes,
        args.idle.as_secs(),
        args.noise,
        args.outages
    );
    let opts = Options::default().user(NOBODY, &[]);
    let Some(planes) = ControlPlanes::start(1, opts).await else {
        bail!("no control-plane binaries: run tests/control-plane/build.sh first");
    };
    let s = planes.server(0);
    let (ok, out, err) = s.kubectl("admin", &["create", "namespace", NAMESPACE], None);
    if !ok {
        bail!("creating the namespace: {out}{err}");
    }
    let admin =
        kube::Client::try_from(kube_config_from_bytes(s.kubeconfig("admin").as_bytes()).await?)?;
    let api: Api<EndpointSlice> = Api::namespaced(admin, NAMESPACE);
    let created = Instant::now();
    create_slices(&api, &args).await?;
    println!(
        "created {} slices in {:.1} s",
        args.slices,
        created.elapsed().as_secs_f64()
    );
    let mut changer = Changer::new(api, &args);

    let mut phases = Vec::new();
    for variant in args.variants.clone() {
        phases.extend(run_variant(variant, &planes, &mut changer, &log, &args).await?);
    }

    println!();
    println!(
        "client side: req/list/watch = requests the budget sent (fail = attempts without an answer); \
         down/up/conns = bytes (TLS included) and TCP connections through the relay.\n\
         server side, endpointslices only: LIST/WATCH = requests (watches opened); cons = lists \
         answered as consistent reads from the watch cache (each costs the server one etcd read \
         of the current revision first); 410 = answers with HTTP status 410; listKiB = LIST response bytes; evtKiB = watch \
         event bytes."
    );
    print!("{}", table(&phases));
    println!("\nfirst requests of each variant's sync:");
    print!("{}", first_requests(&phases));
    if args.dump {
        for p in &phases {
            println!("\n-- {} {}: server series", p.variant.name(), p.name);
            for (k, v) in &p.server {
                println!("   {k} {v}");
            }
            println!("   requests: {:?}", p.uris);
        }
    }
    Ok(())
}
