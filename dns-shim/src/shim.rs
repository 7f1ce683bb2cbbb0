//! The running shim: snapshot lifecycle, sockets, and the handle the controller feeds.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use parking_lot::Mutex;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, info_span, warn};

use crate::{
    Error, Result,
    config::{DnsConfig, ZoneConfig},
    disk::{
        journal, snapshots as persist,
        writer::{Item, Persister},
    },
    engine::Engine,
    metrics::{Counters, ShimMetrics, StateView},
    net,
    rrl::RateLimiter,
    wire,
    zone::{
        self as compile, CompileOptions, Compiled, GeoTable, ZoneTable,
        serial::{self, Served},
    },
};
use lifeline_model::{Update, ZoneSnapshot, overrides::Override};

/// Zones with at least this many names are indexed at start and compiled afterwards.
const LAZY_FROM: usize = 10_000;

/// How long [`ShimHandle::shutdown`] waits for writes still queued to reach the disk.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// Entry point: `Shim::start` loads persisted snapshots, then opens sockets.
#[derive(Debug)]
pub struct Shim;

/// What a shim keeps besides its snapshots.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// Keep the break-glass overrides handed to [`ShimHandle::set_overrides`] on disk,
    /// and apply the last ones kept from the first answer on, so a replica restarted
    /// while its store is down keeps the drains it knew. Only for shims whose overrides
    /// come from a store (a `lifeline dns` replica); a shim that is never handed
    /// overrides must not pick up a set another process left in its directory.
    pub break_glass: bool,
    /// Hold, persist and compile zones but open no socket: the view of a controller
    /// whose DNS is answered by a `lifeline dns` process of its own. `dns.udp` and
    /// `dns.tcp` are ignored.
    pub no_sockets: bool,
}

impl Shim {
    /// Starts the shim: loads the newest valid persisted snapshot of every zone and
    /// installs it *before* binding any socket, so the first query is answered from
    /// disk even if no source is reachable. Must be called inside a tokio runtime.
    pub async fn start(dns: &DnsConfig, zones: &[ZoneConfig]) -> Result<ShimHandle> {
        Self::start_with(dns, zones, StartOptions::default()).await
    }

    /// [`Self::start`] with options.
    pub async fn start_with(
        dns: &DnsConfig,
        zones: &[ZoneConfig],
        options: StartOptions,
    ) -> Result<ShimHandle> {
        let mut dns = dns.clone();
        if options.no_sockets {
            dns.udp.clear();
            dns.tcp.clear();
        }
        let dns = &dns;
        let problems: Vec<_> = crate::config::validate(dns, zones)
            .into_iter()
            .filter(|(path, _)| !(options.no_sockets && path == "dns.udp"))
            .collect();
        if !problems.is_empty() {
            return Err(Error::Config(problems));
        }
        let inner = Arc::new(Inner::new(dns, zones, options)?);
        {
            let persister = inner.persister.clone();
            let dir = inner.data_dir.clone();
            let engine = inner.engine.clone();
            std::thread::Builder::new()
                .name("lifeline-persist".into())
                .spawn(move || persister.run(&dir, &engine.counters.persist_failures))
                .map_err(|e| Error::Task(format!("cannot start the snapshot writer: {e}")))?;
        }
        if options.break_glass {
            inner.load_persisted_overrides();
        }
        inner.load_persisted();

        // Owns what is started from here on: if a later bind fails, dropping it stops
        // the sockets already serving.
        let running = Arc::new(Running {
            persister: inner.persister.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let mut udp_addrs = Vec::new();
        for addr in &dns.udp {
            let socket = net::bind_udp(*addr).map_err(|source| Error::Bind {
                addr: *addr,
                source,
            })?;
            udp_addrs.push(socket.local_addr().map_err(|source| Error::Bind {
                addr: *addr,
                source,
            })?);
            let thread = net::spawn_udp(socket, inner.engine.clone(), running.stop.clone())
                .map_err(|source| Error::Bind {
                    addr: *addr,
                    source,
                })?;
            running.threads.lock().push(thread);
        }
        let mut tcp_addrs = Vec::new();
        for addr in &dns.tcp {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    addr: *addr,
                    source,
                })?;
            tcp_addrs.push(listener.local_addr().map_err(|source| Error::Bind {
                addr: *addr,
                source,
            })?);
            running
                .tasks
                .lock()
                .push(net::spawn_tcp(listener, inner.engine.clone()));
        }
        if inner
            .writer
            .lock()
            .tables
            .values()
            .any(|t| t.lazy.is_some())
        {
            let inner = inner.clone();
            tokio::task::spawn_blocking(move || inner.finish_lazy());
        }
        // Re-evaluates staleness once a second; TTLs drop to `staleTtl` when it flips.
        let ticker = {
            let inner = Arc::downgrade(&inner);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let Some(inner) = inner.upgrade() else { return };
                    inner.refresh_staleness();
                }
            })
        };
        running.tasks.lock().push(ticker);
        for zone in &inner.zones {
            let (Some(transfer), Some(serials)) = (&zone.transfer, inner.serials.get(&zone.origin))
            else {
                continue;
            };
            for secondary in &transfer.notify {
                let task = crate::xfr::notify::tell(
                    zone.origin.clone(),
                    *secondary,
                    serials.subscribe(),
                    inner.engine.clone(),
                );
                running.tasks.lock().push(tokio::spawn(task));
            }
        }
        info!(udp = ?udp_addrs, tcp = ?tcp_addrs, ready = inner.state().ready, "dns shim listening");
        Ok(ShimHandle {
            inner,
            running,
            udp_addrs,
            tcp_addrs,
        })
    }
}

/// Sockets and tasks, stopped when the last handle is dropped or on `shutdown`.
#[derive(Debug)]
struct Running {
    persister: Arc<Persister>,
    stop: Arc<AtomicBool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Running {
    fn stop(&self) {
        // The writer thread drains what is queued and then ends.
        self.persister.stop();
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The controller's handle on a running shim. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShimHandle {
    inner: Arc<Inner>,
    running: Arc<Running>,
    udp_addrs: Vec<SocketAddr>,
    tcp_addrs: Vec<SocketAddr>,
}

impl ShimHandle {
    /// Applies an update: compiles and swaps it in (queries see it at once), then queues
    /// it for the snapshot writer, which persists it on its own thread: a slow or
    /// stalled disk delays neither answers nor the next update. Blocking (compiling);
    /// from async code prefer [`Self::apply_async`]. [`Self::flush`] waits for the disk.
    pub fn apply(&self, update: Update) -> Result<Applied> {
        self.inner.apply(update)
    }

    /// [`Self::apply`] on a blocking thread.
    pub async fn apply_async(&self, update: Update) -> Result<Applied> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.apply(update))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    /// Readiness, per-zone revision and age, and source status.
    pub fn state(&self) -> ShimState {
        self.inner.state()
    }

    /// Replaces the operator overrides the shim applies by itself (the active,
    /// cluster-wide ones; see [`lifeline_model::overrides`]) and recompiles what it serves.
    /// Expiries are noticed within a second.
    pub fn set_overrides(&self, overrides: Vec<lifeline_model::overrides::Override>) {
        self.inner.set_overrides(overrides);
    }

    /// Records whether a snapshot source is connected. While any source is connected
    /// the data counts as current; when all are gone the age keeps growing from the
    /// last moment one was, and answers turn stale after `staleAfter`.
    pub fn set_source_connected(&self, source: &str, connected: bool) {
        self.inner.set_source_connected(source, connected);
    }

    /// The current snapshot of a zone, if any.
    pub fn snapshot(&self, zone: &str) -> Option<ZoneSnapshot> {
        let origin = wire::normalize(zone, "").ok()?;
        self.inner
            .writer
            .lock()
            .snapshots
            .get(&origin)
            .map(|s| (**s).clone())
    }

    /// Metrics to register in a prometheus-client registry.
    pub fn metrics(&self) -> ShimMetrics {
        ShimMetrics {
            view: self.inner.clone(),
        }
    }

    /// The answering core (used by tests and benchmarks to answer without sockets).
    pub fn engine(&self) -> Arc<Engine> {
        self.inner.engine.clone()
    }

    /// Bound UDP addresses (resolves port 0).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_addrs
    }

    /// Bound TCP addresses (resolves port 0).
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp_addrs
    }

    /// Waits until everything applied so far has been written (or its write failed),
    /// for at most `limit`. `Some(true)` when the newest state of every zone (and the
    /// break-glass overrides) is on disk, `Some(false)` when a write failed (the next
    /// change tries again), `None` when the writer is still busy (a stalled disk).
    pub fn flush(&self, limit: Duration) -> Option<bool> {
        self.inner.persister.flush(limit)
    }

    /// Stops answering: closes sockets and tasks, then gives queued writes a few
    /// seconds to reach the disk.
    pub fn shutdown(&self) {
        self.running.stop();
        for t in self.running.threads.lock().drain(..) {
            let _ = t.join();
        }
        if self.flush(SHUTDOWN_FLUSH).is_none() {
            warn!(
                "the data directory did not take the last snapshot within {SHUTDOWN_FLUSH:?}; a restart serves the one before it"
            );
        }
    }
}

/// What an applied update changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub zone: String,
    pub revision: u64,
    /// Names that were skipped, with why.
    pub rejected: Vec<(String, String)>,
}

/// Readiness and freshness of the shim.
#[derive(Debug, Clone, PartialEq)]
pub struct ShimState {
    /// Every configured zone has a snapshot loaded and served.
    pub ready: bool,
    /// Some zone is served with stale TTLs.
    pub stale: bool,
    pub zones: Vec<ZoneState>,
    pub sources: Vec<SourceState>,
    /// Persisted or received snapshots rejected since start.
    pub load_errors: u64,
}

/// One zone's served data.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneState {
    pub origin: String,
    pub revision: Option<u64>,
    /// The SOA serial answered (see [`crate::zone::serial`]).
    pub serial: Option<u32>,
    /// Names whose drain was not applied here because it would have left them no
    /// target (they keep their answer).
    pub drains_kept: usize,
    pub decided_at: Option<SystemTime>,
    /// Time since the decision behind the served data.
    pub age: Option<Duration>,
    pub names: usize,
    pub rejected: usize,
    pub stale: bool,
}

/// One snapshot source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceState {
    pub name: String,
    pub connected: bool,
    pub since: SystemTime,
}

// === impl Inner ===

#[derive(Debug)]
struct Inner {
    engine: Arc<Engine>,
    zones: Vec<ZoneConfig>,
    geo: Arc<GeoTable>,
    data_dir: PathBuf,
    stale_after: Duration,
    stale_ttl: u32,
    writer: Mutex<Writer>,
    sources: Mutex<BTreeMap<String, SourceState>>,
    load_errors: AtomicU64,
    /// Operator overrides from the store; the active cluster-wide ones are applied at
    /// compile time (break-glass without a leader).
    overrides: Mutex<Vec<lifeline_model::overrides::Override>>,
    /// Ids of the overrides active at the last compile, to notice expiries.
    overrides_applied: Mutex<Vec<String>>,
    /// Generation of the break-glass overrides on disk; `None` when they are not kept.
    overrides_generation: Option<AtomicU64>,
    persister: Arc<Persister>,
    /// The changes kept per zone for IXFR, oldest first, at most
    /// [`crate::zone::history::HISTORY_BYTES`] of them.
    history: Mutex<BTreeMap<String, Vec<Arc<crate::zone::history::Change>>>>,
    /// Serial last published per zone whose secondaries are notified.
    serials: BTreeMap<String, watch::Sender<Option<u32>>>,
    /// Digest of each zone's answer-shaping settings, by origin.
    settings: BTreeMap<String, u64>,
}

/// Writer-side state; only `apply` and the staleness ticker take this lock, never a query.
#[derive(Debug, Default)]
struct Writer {
    /// Current snapshot per zone origin.
    snapshots: BTreeMap<String, Arc<ZoneSnapshot>>,
    tables: BTreeMap<String, Arc<ZoneTable>>,
    /// Last moment a source vouched for the data (connected or delivered an update).
    confirmed_at: Option<SystemTime>,
    /// The serial each zone answers with, and the basis it was given for.
    served: BTreeMap<String, Served>,
}

impl StateView for Inner {
    fn counters(&self) -> &Counters {
        &self.engine.counters
    }
    fn state(&self) -> ShimState {
        Inner::state(self)
    }
}

impl Inner {
    fn new(dns: &DnsConfig, zones: &[ZoneConfig], options: StartOptions) -> Result<Self> {
        let zones: Vec<ZoneConfig> = zones
            .iter()
            .map(|z| {
                let mut z = z.clone();
                z.origin = wire::normalize(&z.origin, "").unwrap_or_default();
                z
            })
            .collect();
        let serials = zones
            .iter()
            .filter(|z| z.transfer.as_ref().is_some_and(|t| !t.notify.is_empty()))
            .map(|z| (z.origin.clone(), watch::Sender::new(None)))
            .collect();
        let settings = zones
            .iter()
            .map(|z| (z.origin.clone(), serial::settings_digest(z)))
            .collect();
        let geo = Arc::new(GeoTable::new(&dns.geo));
        let stale_after = dns.stale_after;
        let limiter = dns.rate_limit.as_ref().map(RateLimiter::new);
        let engine = Engine::new(
            Compiled {
                zones: Vec::new(),
                geo: geo.clone(),
                stale: false,
                pending: zones
                    .iter()
                    .map(|z| wire::encode(&z.origin).unwrap_or_default().into())
                    .collect(),
            },
            limiter,
            dns.max_udp_payload,
        );
        Ok(Self {
            engine: Arc::new(engine),
            zones,
            geo,
            data_dir: dns.data_dir.clone(),
            stale_after,
            stale_ttl: dns.stale_ttl,
            writer: Mutex::new(Writer::default()),
            sources: Mutex::new(BTreeMap::new()),
            load_errors: AtomicU64::new(0),
            overrides: Mutex::new(Vec::new()),
            overrides_applied: Mutex::new(Vec::new()),
            overrides_generation: options.break_glass.then(|| AtomicU64::new(0)),
            persister: Arc::new(Persister::new(dns.journal.limits())),
            history: Mutex::new(BTreeMap::new()),
            serials,
            settings,
        })
    }

    /// Restores the newest valid break-glass overrides kept on disk. A corrupt newest
    /// copy falls back to the one before it; every skipped file counts as a load error.
    fn load_persisted_overrides(&self) {
        let (set, errors) = persist::load_overrides(&self.data_dir);
        self.load_errors
            .fetch_add(errors.len() as u64, Ordering::Relaxed);
        let Some(set) = set else {
            if !errors.is_empty() {
                warn!(dir = %self.data_dir.display(), "no readable break-glass overrides on disk; none applied until the store answers");
            }
            return;
        };
        info!(
            generation = set.generation,
            count = set.overrides.len(),
            "break-glass overrides restored from disk"
        );
        if let Some(g) = &self.overrides_generation {
            g.store(set.generation, Ordering::Relaxed);
        }
        *self.overrides.lock() = set.overrides;
        *self.overrides_applied.lock() = self.active_override_ids();
    }

    /// Installs the newest valid persisted generation of every zone.
    fn load_persisted(&self) {
        let _span = info_span!("load_persisted", dir = %self.data_dir.display()).entered();
        let mut w = self.writer.lock();
        for zone in &self.zones {
            let loaded = persist::load_newest(&self.data_dir, &zone.origin);
            self.load_errors
                .fetch_add(loaded.errors.len() as u64, Ordering::Relaxed);
            match loaded.snapshot {
                Some((mut snapshot, path)) => {
                    let base = snapshot.revision;
                    self.replay_journal(&mut snapshot);
                    info!(zone = %zone.origin, base, revision = snapshot.revision, path = %path.display(), "persisted snapshot loaded");
                    let snapshot = Arc::new(snapshot);
                    let stale = self.is_stale(&w, &snapshot);
                    // The serial kept beside the snapshots; without one (a lost volume,
                    // or a first start of this version) the one a secondary may hold
                    // from the revision, which the clock then moves past.
                    let kept = serial::load(&self.data_dir, &zone.origin).unwrap_or(Served {
                        serial: crate::zone::serial::of_revision(snapshot.revision),
                        basis: 0,
                    });
                    w.served.insert(zone.origin.clone(), kept);
                    let now = SystemTime::now();
                    // Large zones are only indexed now and compiled once sockets are open:
                    // answering sooner beats answering faster during a restart. The
                    // overrides in force apply from the first answer either way.
                    let table = if snapshot.names.len() >= LAZY_FROM {
                        self.index(&mut w, zone, &snapshot, stale, now)
                    } else {
                        self.compile(&mut w, zone, &snapshot, stale, now)
                    };
                    w.tables.insert(zone.origin.clone(), Arc::new(table));
                    w.snapshots.insert(zone.origin.clone(), snapshot);
                }
                None => {
                    warn!(zone = %zone.origin, "no valid persisted snapshot; zone answers SERVFAIL until a source delivers one")
                }
            }
        }
        self.publish(&w);
    }

    /// Applies the journal kept beside `snapshot`'s file, and lets the writer append
    /// after its last good entry.
    fn replay_journal(&self, snapshot: &mut ZoneSnapshot) {
        let base = snapshot.revision;
        match journal::replay(&self.data_dir, snapshot) {
            Ok(replayed) => {
                if let Some(stop) = &replayed.stopped {
                    self.load_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(zone = %snapshot.zone, base, revision = snapshot.revision, reason = %stop, "journal read up to its last good entry; the rest is dropped");
                }
                let count = replayed.entries.len();
                for (entry, before) in replayed.entries {
                    // An entry without serials breaks the chain IXFR follows.
                    let change = entry
                        .serials
                        .map(|[from, to]| crate::zone::history::Change::new(from, to, before));
                    self.remember(&snapshot.zone, change);
                }
                if replayed.good_bytes > 0
                    && let Ok(appender) = journal::Appender::resume(
                        &self.data_dir,
                        &snapshot.zone,
                        base,
                        snapshot.revision,
                        count,
                        replayed.good_bytes,
                    )
                {
                    self.persister.resume(&snapshot.zone, appender);
                }
            }
            Err(e) => {
                self.load_errors.fetch_add(1, Ordering::Relaxed);
                warn!(zone = %snapshot.zone, base, error = %e, "journal unreadable; serving the snapshot it builds on");
            }
        }
    }

    fn compile_options(&self, stale: bool, serial: u32) -> CompileOptions {
        CompileOptions {
            ttl_cap: stale.then_some(self.stale_ttl),
            serial: Some(serial),
        }
    }

    /// What `snapshot` answers with the overrides in force.
    fn effective(&self, snapshot: &Arc<ZoneSnapshot>) -> Effective {
        let overrides = self.overrides.lock();
        let now = SystemTime::now();
        let applied = lifeline_model::overrides::apply_reporting(snapshot, &overrides, now);
        if !applied.kept.is_empty() {
            warn!(zone = %snapshot.zone, names = applied.kept.len(), first = %applied.kept[0], "a drain would leave these names no target; they keep their answer");
        }
        let kept = applied.kept.len();
        match applied.snapshot {
            std::borrow::Cow::Borrowed(_) => Effective {
                snapshot: snapshot.clone(),
                overrides: 0,
                kept,
            },
            std::borrow::Cow::Owned(changed) => {
                let active = overrides
                    .iter()
                    .filter(|o| o.policy.is_none() && o.is_active(now));
                Effective {
                    snapshot: Arc::new(changed),
                    overrides: serial::overrides_digest(active).max(1),
                    kept,
                }
            }
        }
    }

    /// The serial `zone` answers with for this basis: the one it has when nothing that
    /// shapes its answers changed, else the next one for a change made at `stamp`.
    fn serial_for(
        &self,
        w: &mut Writer,
        zone: &ZoneConfig,
        revision: u64,
        overrides: u64,
        stale: bool,
        stamp: SystemTime,
    ) -> u32 {
        let settings = self.settings.get(&zone.origin).copied().unwrap_or_default();
        let basis = serial::basis(
            revision,
            overrides,
            settings,
            stale.then_some(self.stale_ttl),
        );
        let prev = w.served.get(&zone.origin).copied();
        if let Some(p) = prev.filter(|p| p.basis == basis) {
            return p.serial;
        }
        let now = SystemTime::now();
        let stamp = serial::stamp(stamp, now);
        // A zone seen for the first time starts from the clock: whatever a secondary
        // holds from before (a lost volume) was given at an earlier second.
        let serial = match prev {
            Some(p) => serial::next(p.serial, stamp),
            None => serial::stamp(now, now),
        };
        let served = Served { serial, basis };
        w.served.insert(zone.origin.clone(), served);
        self.persister.queue(
            format!("{SERIAL_KEY}{}", zone.origin),
            Item::Serial {
                zone: zone.origin.clone(),
                served,
            },
        );
        serial
    }

    /// What `snapshot` answers with the overrides in force, and the serial its basis
    /// gets (a change made at `stamp` moves it).
    fn effective_with_serial(
        &self,
        w: &mut Writer,
        zone: &ZoneConfig,
        snapshot: &Arc<ZoneSnapshot>,
        stale: bool,
        stamp: SystemTime,
    ) -> (Effective, u32) {
        let effective = self.effective(snapshot);
        let serial = self.serial_for(
            w,
            zone,
            snapshot.revision,
            effective.overrides,
            stale,
            stamp,
        );
        (effective, serial)
    }

    /// Indexes what `snapshot` answers without compiling it (see
    /// [`compile::index_zone`]): a large zone answers from this table until
    /// [`Self::compile_indexed`] swaps in the compiled one.
    fn index(
        &self,
        w: &mut Writer,
        zone: &ZoneConfig,
        snapshot: &Arc<ZoneSnapshot>,
        stale: bool,
        stamp: SystemTime,
    ) -> ZoneTable {
        let (effective, serial) = self.effective_with_serial(w, zone, snapshot, stale, stamp);
        let table = compile::index_zone(
            zone,
            effective.snapshot.clone(),
            self.geo.clone(),
            self.compile_options(stale, serial),
        );
        self.served_from(zone, table, effective)
    }

    /// Compiles what `snapshot` answers.
    fn compile(
        &self,
        w: &mut Writer,
        zone: &ZoneConfig,
        snapshot: &Arc<ZoneSnapshot>,
        stale: bool,
        stamp: SystemTime,
    ) -> ZoneTable {
        let (effective, serial) = self.effective_with_serial(w, zone, snapshot, stale, stamp);
        self.build(zone, effective, stale, serial)
    }

    /// The table of an effective snapshot under `serial`.
    fn build(
        &self,
        zone: &ZoneConfig,
        effective: Effective,
        stale: bool,
        serial: u32,
    ) -> ZoneTable {
        let table = compile::compile_zone(
            zone,
            &effective.snapshot,
            &self.geo,
            self.compile_options(stale, serial),
        );
        self.served_from(zone, table, effective)
    }

    /// `table` with what it was made from: the snapshot transfers send, the drains it
    /// left undone, and the IXFR history (none while overrides change what is served).
    fn served_from(
        &self,
        zone: &ZoneConfig,
        mut table: ZoneTable,
        effective: Effective,
    ) -> ZoneTable {
        if effective.overrides == 0 {
            table.history = self.history_of(&zone.origin);
        }
        table.served = Some(effective.snapshot);
        table.drains_kept = effective.kept;
        table
    }

    /// The changes kept for `origin`, as a table holds them.
    fn history_of(&self, origin: &str) -> Option<crate::zone::history::History> {
        let history = self.history.lock();
        let changes = history.get(origin)?;
        (!changes.is_empty()).then(|| changes.as_slice().into())
    }

    /// Keeps `change` for IXFR, or forgets the zone's changes when there is none to
    /// keep (a whole new snapshot).
    fn remember(&self, origin: &str, change: Option<crate::zone::history::Change>) {
        let mut history = self.history.lock();
        let changes = history.entry(origin.to_owned()).or_default();
        match change {
            Some(c) => {
                changes.push(Arc::new(c));
                // The newest changes that fit the budget; older ones go.
                let mut total = 0;
                let keep = changes
                    .iter()
                    .rev()
                    .take_while(|c| {
                        total += c.bytes;
                        total <= crate::zone::history::HISTORY_BYTES
                    })
                    .count();
                let excess = changes.len() - keep;
                changes.drain(..excess);
            }
            None => changes.clear(),
        }
    }

    /// Ids of the overrides in force now.
    fn active_override_ids(&self) -> Vec<String> {
        let now = SystemTime::now();
        self.overrides
            .lock()
            .iter()
            .filter(|o| o.policy.is_none() && o.is_active(now))
            .map(|o| o.id.clone())
            .collect()
    }

    /// Recompiles every zone (overrides changed or expired at `stamp`).
    fn recompile_all(&self, stamp: SystemTime) {
        *self.overrides_applied.lock() = self.active_override_ids();
        let mut w = self.writer.lock();
        let origins: Vec<String> = w.snapshots.keys().cloned().collect();
        for origin in origins {
            let Some(zone) = self.zones.iter().find(|z| z.origin == origin) else {
                continue;
            };
            let snapshot = w.snapshots[&origin].clone();
            let stale = self.is_stale(&w, &snapshot);
            let table = self.compile(&mut w, zone, &snapshot, stale, stamp);
            w.tables.insert(origin, Arc::new(table));
        }
        self.publish(&w);
    }

    fn set_overrides(&self, overrides: Vec<Override>) {
        if let Some(generation) = &self.overrides_generation {
            let set = persist::OverrideSet {
                generation: generation.fetch_add(1, Ordering::Relaxed) + 1,
                overrides: overrides.clone(),
            };
            self.persister
                .queue(OVERRIDES_KEY.to_owned(), Item::Overrides(Arc::new(set)));
        }
        let stamp = {
            let mut held = self.overrides.lock();
            let stamp = overrides_changed_at(&held, &overrides, SystemTime::now());
            *held = overrides;
            stamp
        };
        self.recompile_all(stamp);
    }

    /// Replaces lazily indexed tables with fully compiled ones. The compile runs without
    /// the writer lock; a table that changed meanwhile (an update arrived) is left alone.
    fn finish_lazy(&self) {
        let lazy: Vec<Arc<ZoneTable>> = (self.writer.lock().tables.values())
            .filter(|t| t.lazy.is_some())
            .cloned()
            .collect();
        for table in lazy {
            let Some(zone) = self.zones.iter().find(|z| z.origin == table.origin) else {
                continue;
            };
            self.compile_indexed(zone, &table, Vec::new());
            info!(zone = %table.origin, "zone fully compiled");
        }
    }

    /// Compiles the zone `indexed` was built from and swaps it in, unless something
    /// replaced `indexed` meanwhile; the names it could not serve, `kept` among them.
    fn compile_indexed(
        &self,
        zone: &ZoneConfig,
        indexed: &Arc<ZoneTable>,
        kept: Vec<(String, String)>,
    ) -> Vec<(String, String)> {
        let Some(snapshot) = self.writer.lock().snapshots.get(&zone.origin).cloned() else {
            return kept;
        };
        // The same basis as the indexed table: the same serial.
        let mut full = self.build(
            zone,
            self.effective(&snapshot),
            indexed.ttl_capped,
            indexed.serial,
        );
        full.rejected.extend(kept);
        let rejected = full.rejected.clone();
        let mut w = self.writer.lock();
        if w.tables
            .get(&zone.origin)
            .is_some_and(|cur| Arc::ptr_eq(cur, indexed))
        {
            w.tables.insert(zone.origin.clone(), Arc::new(full));
            self.publish(&w);
        }
        rejected
    }

    /// Whether a zone's data is stale: no source has vouched for it for `staleAfter`.
    fn is_stale(&self, w: &Writer, snapshot: &ZoneSnapshot) -> bool {
        if self.sources.lock().values().any(|s| s.connected) {
            return false;
        }
        let fresh_at = w
            .confirmed_at
            .map_or(snapshot.decided_at, |c| c.max(snapshot.decided_at));
        SystemTime::now()
            .duration_since(fresh_at)
            .unwrap_or_default()
            > self.stale_after
    }

    /// Swaps in tables built from the writer state.
    fn publish(&self, w: &Writer) {
        let mut zones: Vec<Arc<ZoneTable>> = w.tables.values().cloned().collect();
        zones.sort_by_key(|z| std::cmp::Reverse(z.apex.len()));
        let stale = w.snapshots.values().any(|s| self.is_stale(w, s));
        let pending = self
            .zones
            .iter()
            .filter(|z| !w.tables.contains_key(&z.origin))
            .map(|z| wire::encode(&z.origin).unwrap_or_default().into())
            .collect();
        self.engine.swap(Compiled {
            zones,
            geo: self.geo.clone(),
            stale,
            pending,
        });
        // Secondaries hear of a serial once it is answered here.
        for (origin, serials) in &self.serials {
            if let Some(table) = w.tables.get(origin) {
                let serial = Some(table.serial);
                serials.send_if_modified(|s| std::mem::replace(s, serial) != serial);
            }
        }
    }

    fn apply(&self, update: Update) -> Result<Applied> {
        let origin = wire::normalize(update.zone(), "")
            .map_err(|_| Error::UnknownZone(update.zone().to_owned()))?;
        let zone = self
            .zones
            .iter()
            .find(|z| z.origin == origin)
            .ok_or_else(|| Error::UnknownZone(origin.clone()))?;
        let mut w = self.writer.lock();
        let current = w.snapshots.get(&origin);
        if let Some(cur) = current
            && update.revision() <= cur.revision
        {
            return Err(Error::StaleRevision {
                zone: origin,
                have: cur.revision,
                got: update.revision(),
            });
        }
        if let Some(cur) = current
            && !crate::zone::serial::moves_forward(cur.revision, update.revision())
        {
            return Err(Error::SerialJump {
                zone: origin,
                have: cur.revision,
                got: update.revision(),
            });
        }
        let (mut next, patch) = match update {
            Update::Replace(mut s) => {
                s.normalize_keys();
                (s, None)
            }
            Update::Patch(p) => match current {
                Some(cur) => {
                    let mut next = ZoneSnapshot::clone(cur);
                    p.apply_in_place(&mut next);
                    (next, Some(p))
                }
                None => return Err(Error::NoBase(origin)),
            },
        };
        if next.format != lifeline_model::FORMAT_VERSION {
            return Err(Error::Format(next.format));
        }
        next.zone = origin.clone();
        // A name whose new records cannot be served keeps the records it had.
        let kept = match w.snapshots.get(&origin) {
            Some(cur) => {
                let touched = patch.as_ref().map(|p| journal::touched_keys(p, &next));
                compile::keep_last_good(zone, &mut next, cur, touched.as_deref())
            }
            None => Vec::new(),
        };
        for (name, problem) in &kept {
            warn!(zone = %origin, %name, %problem, "records refused");
        }
        w.confirmed_at = Some(SystemTime::now());
        let from = w.served.get(&origin).map(|s| s.serial);
        let entry = w
            .snapshots
            .get(&origin)
            .and_then(|cur| Some((cur, change_of(cur, &next, patch.as_ref())?)))
            .map(|(cur, entry)| {
                let before = journal::touched_before(&entry.patch, cur);
                (entry, before)
            });
        let next = Arc::new(next);
        // A large zone is indexed now and compiled once the old tables are gone: two
        // compiled copies of it at once would double what the server needs at its peak
        // (at 100,000 names, more than the `dns` container's 256 MiB).
        let lazy = next.names.len() >= LAZY_FROM;
        let mut table = if lazy {
            self.index(&mut w, zone, &next, false, next.decided_at)
        } else {
            self.compile(&mut w, zone, &next, false, next.decided_at)
        };
        let (changes, change) = match (entry, from) {
            (Some((mut entry, before)), Some(from)) => {
                entry.serials = Some([from, table.serial]);
                let change = crate::zone::history::Change::new(from, table.serial, before);
                (Some(vec![entry]), Some(change))
            }
            (Some((entry, _)), None) => (Some(vec![entry]), None),
            (None, _) => (None, None),
        };
        self.remember(&origin, change);
        // The table was built before this change was kept; an overridden one offers none.
        if table.served.as_ref().is_some_and(|s| Arc::ptr_eq(s, &next)) {
            table.history = self.history_of(&origin);
        }
        table.rejected.extend(kept.iter().cloned());
        let mut rejected = table.rejected.clone();
        let table = Arc::new(table);
        w.tables.insert(origin.clone(), table.clone());
        let revision = next.revision;
        w.snapshots.insert(origin.clone(), next);
        self.publish(&w);
        // Served first, persisted second and elsewhere: a slow disk must not delay new
        // answers, nor the next update, nor anything that reads the writer state.
        self.persister.queue(
            origin.clone(),
            Item::Zone {
                snapshot: w.snapshots[&origin].clone(),
                changes,
            },
        );
        drop(w);
        if lazy {
            rejected = self.compile_indexed(zone, &table, kept);
        }
        info!(zone = %origin, revision, rejected = rejected.len(), "snapshot applied");
        Ok(Applied {
            zone: origin,
            revision,
            rejected,
        })
    }

    /// Recompiles zones whose staleness changed (TTL cap on or off).
    fn refresh_staleness(&self) {
        if self.active_override_ids() != *self.overrides_applied.lock() {
            info!("an override started or expired; recompiling");
            let now = SystemTime::now();
            // Stamped with the moment it expired, which every replica agrees on.
            let stamp = (self.overrides.lock().iter())
                .filter(|o| o.policy.is_none() && !o.is_active(now))
                .map(|o| o.expires_at)
                .max()
                .unwrap_or(now);
            self.recompile_all(stamp);
        }
        let mut w = self.writer.lock();
        let mut changed = false;
        let origins: Vec<String> = w.snapshots.keys().cloned().collect();
        for origin in origins {
            let stale = self.is_stale(&w, &w.snapshots[&origin]);
            let was = w.tables.get(&origin).is_some_and(|t| t.ttl_capped);
            if stale != was
                && let Some(zone) = self.zones.iter().find(|z| z.origin == origin)
            {
                info!(zone = %origin, stale, "zone staleness changed");
                let snapshot = w.snapshots[&origin].clone();
                let table = self.compile(&mut w, zone, &snapshot, stale, SystemTime::now());
                w.tables.insert(origin, Arc::new(table));
                changed = true;
            }
        }
        if changed {
            self.publish(&w);
        }
    }

    fn set_source_connected(&self, source: &str, connected: bool) {
        let now = SystemTime::now();
        {
            let mut sources = self.sources.lock();
            let entry = sources
                .entry(source.to_owned())
                .or_insert_with(|| SourceState {
                    name: source.to_owned(),
                    connected: !connected,
                    since: now,
                });
            if entry.connected != connected {
                entry.connected = connected;
                entry.since = now;
                info!(source, connected, "snapshot source status changed");
            }
        }
        // Losing a source is also a moment the data was last known current.
        self.writer.lock().confirmed_at = Some(now);
        self.refresh_staleness();
    }

    fn state(&self) -> ShimState {
        let now = SystemTime::now();
        let w = self.writer.lock();
        let zones: Vec<ZoneState> = self
            .zones
            .iter()
            .map(|z| {
                let s = w.snapshots.get(&z.origin);
                let t = w.tables.get(&z.origin);
                ZoneState {
                    origin: z.origin.clone(),
                    revision: s.map(|s| s.revision),
                    serial: t.map(|t| t.serial),
                    drains_kept: t.map_or(0, |t| t.drains_kept),
                    decided_at: s.map(|s| s.decided_at),
                    age: s.map(|s| s.age(now)),
                    names: t.map_or(0, |t| t.name_count),
                    rejected: t.map_or(0, |t| t.rejected.len()),
                    stale: t.is_some_and(|t| t.ttl_capped),
                }
            })
            .collect();
        ShimState {
            ready: !zones.is_empty() && zones.iter().all(|z| z.revision.is_some()),
            stale: zones.iter().any(|z| z.stale),
            zones,
            sources: self.sources.lock().values().cloned().collect(),
            load_errors: self.load_errors.load(Ordering::Relaxed),
        }
    }
}

impl ShimHandle {
    /// Counts a snapshot a source rejected before it reached `apply` (undecodable,
    /// failed its checks), so `/state` and the metrics show it.
    pub fn count_load_error(&self) {
        self.inner.load_errors.fetch_add(1, Ordering::Relaxed);
    }
}

// === the snapshot writer ===

/// Queue key of the break-glass overrides (zone keys are origins, which never hold `@`).
const OVERRIDES_KEY: &str = "@overrides";

/// A zone's snapshot with the overrides in force applied.
struct Effective {
    snapshot: Arc<ZoneSnapshot>,
    /// Digest of the overrides when they change the snapshot; 0 when they change nothing.
    overrides: u64,
    /// Names a drain would have left with no target (they keep their answer).
    kept: usize,
}

/// Queue key prefix of a zone's serial.
const SERIAL_KEY: &str = "@serial/";

/// When the overrides in force changed from `old` to `new`, as every replica reading the
/// same store would say: the newest `createdAt` of those that came into force and
/// `expiresAt` of those that ran out; `now` for one cleared early, which carries no time.
fn overrides_changed_at(old: &[Override], new: &[Override], now: SystemTime) -> SystemTime {
    let in_force = |set: &[Override]| -> Vec<Override> {
        set.iter()
            .filter(|o| o.policy.is_none() && o.is_active(now))
            .cloned()
            .collect()
    };
    let (old, new) = (in_force(old), in_force(new));
    let came = new
        .iter()
        .filter(|o| !old.contains(o))
        .map(|o| o.created_at);
    let went = old.iter().filter(|o| !new.contains(o)).map(|o| {
        if o.expires_at <= now {
            o.expires_at
        } else {
            now
        }
    });
    came.chain(went).max().unwrap_or(now)
}

/// The journal entry taking `cur` to `next`: the names `patch` touched, or for a whole
/// snapshot the names that differ. `None` when a whole snapshot is the smaller write.
fn change_of(
    cur: &ZoneSnapshot,
    next: &ZoneSnapshot,
    patch: Option<&lifeline_model::ZonePatch>,
) -> Option<journal::Entry> {
    let mut upsert = BTreeMap::new();
    let mut delete = Vec::new();
    let mut consider = |key: &String| match next.names.get(key) {
        Some(r) if cur.names.get(key) != Some(r) => {
            upsert.insert(key.clone(), r.clone());
        }
        Some(_) => {}
        None if cur.names.contains_key(key) => delete.push(key.clone()),
        None => {}
    };
    match patch {
        Some(p) => journal::touched_keys(p, next)
            .iter()
            .for_each(&mut consider),
        None => {
            cur.names
                .keys()
                .chain(next.names.keys())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .for_each(&mut consider);
            if upsert.len() + delete.len() > next.names.len() / 2 + 16 {
                return None;
            }
        }
    }
    Some(journal::Entry {
        serials: None,
        from: cur.revision,
        patch: lifeline_model::ZonePatch {
            zone: next.zone.clone(),
            revision: next.revision,
            decided_at: next.decided_at,
            upsert,
            delete,
        },
    })
}
