//! The shim's etcd feed: per-name record keys in etcd become shim updates.
//!
//! ```text
//!  etcd  {prefix}/records/{zone}/{name} = {"format":1,"value":NameRecords,"decidedAt":..}
//!    │
//!    ├─ full load: paged range read at one revision R ──► Update::Replace per zone (rev R)
//!    │
//!    └─ watch from R+1 ─► each response folded ──► Update::Patch per zone (newest rev)
//!          │
//!          ├─ stream ends / errors (etcd restart, network): source "disconnected",
//!          │   backoff with jitter, re-open from last seen revision + 1
//!          └─ start revision compacted, or another etcd (cluster id changed, revision
//!             went back): full load again (the only times we resync)
//! ```
//!
//! Writes over etcd's transaction size are split, so a publish may land as several
//! revisions. Its last transaction also puts the commit marker `{prefix}/records/@commit`:
//! watched changes are held until a marker arrives and then applied together, at the
//! marker's revision, and a full load reads the records as of the newest marker. So a
//! shim never serves half of a publish, not even one a leader died in the middle of
//! (those changes wait for the next leader's publish, which completes them). Records
//! written by a version without markers (records present, no marker) are followed as
//! before, response by response, until the first marker shows up.
//!
//! The shim's revision for a zone is the etcd revision of the newest change applied, so
//! it only ever grows and a replayed event is refused by [`ShimHandle::apply`]. One
//! exception: when a full load finds etcd's current revision below what the shim serves
//! (etcd restored from a backup or replaced, so its revisions restarted), the source
//! follows the new etcd with its revisions shifted above the served one rather than
//! freezing DNS until etcd's counter catches up.
//!
//! Nothing here ever removes a served record because etcd is unreachable: a broken
//! connection only flips the source to disconnected. Deletions reach the shim only as
//! delete events (or, after a compaction, as names missing from a full load of a zone
//! this source has seen in etcd before). A value that does not decode, has another
//! format version or is larger than [`VALUE_LIMIT`] is logged, counted in the shim's
//! load errors, and skipped; the name keeps its last good records.
//!
//! This module also holds what the controller's etcd store shares with the shim: the
//! key layout of records, the versioned value envelope, and connection options.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, WatchOptions,
    WatchResponse,
};
use lifeline_model::Backoff;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tracing::{debug, info, warn};

use lifeline_dns::{ShimHandle, SnapshotSource};
use lifeline_model::{NameRecords, Update, ZonePatch, ZoneSnapshot};

/// Largest value accepted from etcd; anything bigger is reported and ignored.
pub const VALUE_LIMIT: usize = 1 << 20;

/// Format version of every value Lifeline stores in etcd.
pub const FORMAT: u32 = 1;

/// Largest gRPC message the clients accept: a page of values may exceed tonic's 4 MiB
/// default even though each value is under [`VALUE_LIMIT`].
pub const MAX_MESSAGE: usize = 64 << 20;

/// Keys read per page during a full load.
const PAGE: i64 = 256;

/// Errors of etcd access shared by the shim source and the controller's store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("reading {}: {source}", path.display())]
    Tls {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid etcd options: {0}")]
    Options(String),
}

// === value envelope ===

/// Why a stored value was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadValue {
    #[error("value of {0} bytes is over the {VALUE_LIMIT}-byte limit")]
    TooLarge(usize),
    #[error("format version {0} is not supported (expected {FORMAT})")]
    Format(u32),
    #[error("not a versioned envelope: {0}")]
    Envelope(String),
    #[error("value does not decode: {0}")]
    Value(String),
}

/// A decoded value with the envelope's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<T> {
    pub value: T,
    /// When the controller decided this value (record values carry it).
    pub decided_at: Option<SystemTime>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<T> {
    format: u32,
    value: T,
    /// RFC 3339; kept as text so a malformed time is a decode error of this value only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    decided_at: Option<String>,
}

/// Encodes `value` in the versioned envelope `{"format": 1, "value": ..}`.
pub fn encode_value<T: Serialize>(
    value: &T,
    decided_at: Option<SystemTime>,
) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&Envelope {
        format: FORMAT,
        value,
        decided_at: decided_at.map(|t| lifeline_model::time::format(t).to_string()),
    })
}

/// Decodes and validates a stored value: size limit first (so a huge value is never
/// parsed), then the envelope and its format version, then the value itself.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<Decoded<T>, BadValue> {
    if bytes.len() > VALUE_LIMIT {
        return Err(BadValue::TooLarge(bytes.len()));
    }
    let env: Envelope<serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| BadValue::Envelope(e.to_string()))?;
    if env.format != FORMAT {
        return Err(BadValue::Format(env.format));
    }
    let decided_at = match env.decided_at {
        Some(t) => Some(
            humantime::parse_rfc3339_weak(&t)
                .map_err(|e| BadValue::Value(format!("decidedAt: {e}")))?,
        ),
        None => None,
    };
    let value = serde_json::from_value(env.value).map_err(|e| BadValue::Value(e.to_string()))?;
    Ok(Decoded { value, decided_at })
}

// === key layout ===

/// `{prefix}/records/`: the parent of every record key.
pub fn records_prefix(prefix: &str) -> String {
    format!("{}/records/", prefix.trim_end_matches('/'))
}

/// `{prefix}/records/{zone}/{name}`.
pub fn record_key(prefix: &str, zone: &str, name: &str) -> String {
    format!("{}{zone}/{name}", records_prefix(prefix))
}

/// `{prefix}/records/@commit`: put in the last transaction of every publish of records.
/// No zone is called `@commit/...` (a zone name has no `@`), and it has no `/` after the
/// records prefix, so it is never taken for a record key.
pub fn records_commit_key(prefix: &str) -> String {
    format!("{}@commit", records_prefix(prefix))
}

/// What the commit marker holds; readers use only its revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordsCommit {
    pub zone: String,
    pub upserts: usize,
    pub deletes: usize,
}

/// Splits a record key into `(zone, name)`; `None` when it does not have that shape.
pub fn parse_record_key<'a>(records_prefix: &str, key: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = key.strip_prefix(records_prefix)?;
    let (zone, name) = rest.split_once('/')?;
    (!zone.is_empty() && !name.is_empty() && !name.contains('/')).then_some((zone, name))
}

/// The first key after every key that starts with `prefix` (etcd's range end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): the whole key space from `prefix` on.
    vec![0]
}

// === connection ===

/// TLS material for etcd (PEM files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTlsFiles {
    pub ca_file: PathBuf,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// How to reach etcd. Endpoints are `http://host:port` or, with TLS, `https://...`.
#[derive(Clone, Default)]
pub struct EtcdConnect {
    pub endpoints: Vec<String>,
    pub tls: Option<EtcdTlsFiles>,
    /// User name and password for etcd authentication.
    pub user: Option<(String, String)>,
    /// Time allowed to open a connection (default 3 s).
    pub connect_timeout: Option<Duration>,
    /// Time allowed for one unary request (default 5 s).
    pub request_timeout: Option<Duration>,
}

impl fmt::Debug for EtcdConnect {
    // Hand-written so the password never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConnect")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl EtcdConnect {
    /// Plain-text connection to `endpoints`.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// The per-request timeout used around unary calls.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(Duration::from_secs(5))
    }

    /// Builds etcd-client options. No per-request timeout is set there: it would also cut
    /// long-lived watch and campaign calls; unary calls are wrapped by [`timed`] instead.
    pub fn options(&self) -> Result<ConnectOptions, Error> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout.unwrap_or(Duration::from_secs(3)))
            // HTTP/2 pings notice a silently dead peer (partition) that TCP would not.
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &self.user {
            opts = opts.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &self.tls {
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|source| Error::Tls {
                    path: path.clone(),
                    source,
                })
            };
            let mut config =
                TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca_file)?));
            match (&tls.cert_file, &tls.key_file) {
                (Some(cert), Some(key)) => {
                    config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
                }
                (None, None) => {}
                _ => {
                    return Err(Error::Options(
                        "a client certificate needs both certFile and keyFile".into(),
                    ));
                }
            }
            opts = opts.with_tls(config);
        }
        Ok(opts)
    }

    /// Connects. Without credentials this does not contact etcd (channels connect on
    /// first use), so it succeeds while etcd is down; with credentials it authenticates.
    pub async fn connect(&self) -> Result<Client, Error> {
        if self.endpoints.is_empty() {
            return Err(Error::Options("no etcd endpoints".into()));
        }
        let opts = self.options()?;
        timed(
            self.request_timeout(),
            Client::connect(&self.endpoints, Some(opts)),
        )
        .await
    }
}

/// Runs an etcd call with a deadline.
pub async fn timed<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r.map_err(Error::from),
        Err(_) => Err(Error::Timeout(limit)),
    }
}

// === the source ===

/// Feeds a shim from `{prefix}/records/` in etcd. See the module docs.
#[derive(Debug, Clone)]
pub struct EtcdSource {
    connect: EtcdConnect,
    prefix: String,
    backoff: (Duration, Duration),
    stats: Arc<EtcdSourceStats>,
}

/// What a running [`EtcdSource`] has done, for metrics and tests.
#[derive(Debug, Default)]
pub struct EtcdSourceStats {
    full_loads: AtomicU64,
    watches_opened: AtomicU64,
    events: AtomicU64,
    bad_values: AtomicU64,
    revision: AtomicI64,
}

impl EtcdSourceStats {
    /// Full reads of every record (the first one, and one per compacted resume).
    pub fn full_loads(&self) -> u64 {
        self.full_loads.load(Ordering::Relaxed)
    }

    /// Watches opened (the first, and one per resume after a broken stream).
    pub fn watches_opened(&self) -> u64 {
        self.watches_opened.load(Ordering::Relaxed)
    }

    /// Watch events received.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Values skipped because they were bad.
    pub fn bad_values(&self) -> u64 {
        self.bad_values.load(Ordering::Relaxed)
    }

    /// Newest etcd revision reflected in what the source fed the shim.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Relaxed)
    }
}

impl EtcdSource {
    /// A source reading records under `prefix` (e.g. `/lifeline`).
    pub fn new(connect: EtcdConnect, prefix: impl Into<String>) -> Self {
        Self {
            connect,
            prefix: prefix.into(),
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            stats: Arc::default(),
        }
    }

    /// Counters of this source; keep a clone before handing the source to the shim.
    pub fn stats(&self) -> Arc<EtcdSourceStats> {
        self.stats.clone()
    }

    /// Reconnect backoff bounds (default 100 ms to 5 s, with jitter).
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max);
        self
    }
}

impl SnapshotSource for EtcdSource {
    fn name(&self) -> String {
        format!("etcd:{}", self.prefix.trim_end_matches('/'))
    }

    fn run(self: Box<Self>, shim: ShimHandle) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let name = self.name();
            let mut feed = Feed {
                shim,
                records_prefix: records_prefix(&self.prefix),
                commit_key: records_commit_key(&self.prefix),
                committed: true,
                held: Vec::new(),
                name,
                zones: BTreeMap::new(),
                seen_zones: BTreeSet::new(),
                last_revision: 0,
                needs_load: true,
                offset: 0,
                cluster_id: None,
                timeout: self.connect.request_timeout(),
                stats: self.stats.clone(),
            };
            let mut backoff = Backoff::new(self.backoff.0, self.backoff.1);
            let mut client: Option<Client> = None;
            loop {
                let c = match &client {
                    Some(c) => c.clone(),
                    None => match self.connect.connect().await {
                        Ok(c) => {
                            client = Some(c.clone());
                            c
                        }
                        Err(e) => {
                            feed.disconnected(&e.to_string());
                            tokio::time::sleep(backoff.next_delay()).await;
                            continue;
                        }
                    },
                };
                if feed.needs_load {
                    if let Err(e) = feed.full_load(&c).await {
                        feed.disconnected(&e.to_string());
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                    backoff.reset();
                }
                match feed.follow(&c, &mut backoff).await {
                    Stop::Reload(reason) => {
                        info!(
                            source = %feed.name,
                            revision = feed.last_revision,
                            %reason,
                            "cannot resume the watch; loading everything again"
                        );
                        feed.needs_load = true;
                        // Paced like a reconnect, so a reload that keeps failing to
                        // resume cannot spin.
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Stop::Broken(reason) => {
                        feed.disconnected(&reason);
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        })
    }
}

/// One good record value as last seen in etcd.
#[derive(Debug, Clone)]
struct Entry {
    records: NameRecords,
    decided_at: Option<SystemTime>,
}

/// A watched record change, held until the publish it belongs to is committed.
struct Held {
    zone: String,
    name: String,
    /// `None`: deleted.
    entry: Option<Entry>,
}

/// One zone's changes folded from a watch response.
#[derive(Default)]
struct Pending {
    upsert: BTreeMap<String, NameRecords>,
    delete: BTreeSet<String>,
    decided_at: Option<SystemTime>,
}

/// Why following the watch stopped.
enum Stop {
    /// The history to resume from is gone (compacted) or is another etcd's.
    Reload(&'static str),
    Broken(String),
}

/// The source's view of etcd: the last good value of every record key.
struct Feed {
    shim: ShimHandle,
    name: String,
    records_prefix: String,
    /// zone → name → last good value. Bad values never replace an entry.
    zones: BTreeMap<String, BTreeMap<String, Entry>>,
    /// Zones ever seen with keys in etcd; only these are replaced by a full load, so a
    /// zone etcd never held keeps its persisted snapshot.
    seen_zones: BTreeSet<String>,
    /// Newest etcd revision reflected in `zones` (with commit markers, the newest
    /// marker's, or a progress notification's while nothing is held).
    last_revision: i64,
    /// Key of the commit marker.
    commit_key: String,
    /// Whether the writer puts commit markers (see the module docs); changes are held
    /// until one arrives. Off only for records written by a version without them.
    committed: bool,
    /// Watched changes since the last marker, oldest first.
    held: Vec<Held>,
    needs_load: bool,
    /// Added to etcd revisions to make shim revisions; non-zero only after etcd was
    /// found behind the served data (see `full_load`). Never decreases.
    offset: u64,
    /// Cluster id of the etcd the data came from, checked when a watch resumes.
    cluster_id: Option<u64>,
    timeout: Duration,
    stats: Arc<EtcdSourceStats>,
}

impl Feed {
    fn disconnected(&self, reason: &str) {
        warn!(source = %self.name, %reason, resume_from = self.last_revision + 1, "etcd unreachable; serving the records already held");
        self.shim.set_source_connected(&self.name, false);
    }

    fn bad_value(&self, key: &str, reason: &dyn fmt::Display) {
        warn!(source = %self.name, %key, %reason, "bad record value in etcd ignored; the last good value is kept");
        self.stats.bad_values.fetch_add(1, Ordering::Relaxed);
        self.shim.count_load_error();
    }

    /// Reads every record key as of the newest commit marker and replaces each zone
    /// seen in etcd.
    async fn full_load(&mut self, client: &Client) -> Result<(), Error> {
        let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let marker = timed(self.timeout, kv.get(self.commit_key.clone(), None)).await?;
        // The state the shim takes is that of `revision`; the records are read as of
        // the last commit at or before it, and the watch replays what came after.
        let revision = marker.header().map_or(0, |h| h.revision());
        self.cluster_id = marker.header().map(|h| h.cluster_id());
        let committed_at = marker.kvs().first().map(|m| m.mod_revision());
        let (next, read_at) = match committed_at {
            Some(at) => match self.read_records(&mut kv, at).await {
                Ok(next) => (next, at),
                Err(Error::Etcd(e)) if e.to_string().contains("compacted") => {
                    warn!(source = %self.name, commit = at, "the last commit's revision is compacted; loading the current records, which may hold part of an unfinished publish");
                    (self.read_records(&mut kv, revision).await?, revision)
                }
                Err(e) => return Err(e),
            },
            None => (self.read_records(&mut kv, revision).await?, revision),
        };
        // Records without any marker were written by a version that puts none.
        self.committed = committed_at.is_some() || next.is_empty();
        if !self.committed {
            info!(source = %self.name, "records carry no commit marker (an older writer); following them change by change");
        }
        self.held.clear();
        // Counted once read, before the shim sees it, so whoever observes the shim's
        // new data also observes the count.
        self.stats.full_loads.fetch_add(1, Ordering::Relaxed);
        self.seen_zones.extend(next.keys().cloned());
        // etcd's revision never goes down, so a zone served at a revision above etcd's
        // current one was fed by another etcd (restored from a backup, or replaced).
        // Refusing etcd until it catches up would freeze DNS for as long; follow it
        // instead, with the shim's revisions shifted above what is served.
        let served = self
            .seen_zones
            .iter()
            .filter_map(|z| self.shim.snapshot(z))
            .map(|s| s.revision)
            .max()
            .unwrap_or(0);
        if served > revision as u64 + self.offset {
            let offset = served - revision as u64 + 1;
            warn!(source = %self.name, served, etcd = revision, offset, "etcd is behind the served data (restored or replaced); following it with a revision offset");
            self.offset = offset;
        }
        let now = SystemTime::now();
        for zone in self.seen_zones.clone() {
            let names = next.get(&zone).cloned().unwrap_or_default();
            let decided_at = names
                .values()
                .filter_map(|e| e.decided_at)
                .max()
                .unwrap_or(now);
            let snapshot = ZoneSnapshot {
                names: names
                    .iter()
                    .map(|(n, e)| (n.clone(), e.records.clone()))
                    .collect(),
                ..ZoneSnapshot::empty(zone.clone(), revision as u64 + self.offset, decided_at)
            };
            self.apply(Update::Replace(snapshot)).await;
        }
        info!(source = %self.name, revision, read_at, zones = next.len(), names = next.values().map(BTreeMap::len).sum::<usize>(), "records loaded from etcd");
        self.zones = next;
        self.last_revision = read_at;
        self.needs_load = false;
        self.stats.revision.store(revision, Ordering::Relaxed);
        self.shim.set_source_connected(&self.name, true);
        Ok(())
    }

    /// Every record key as of `revision`, paged.
    async fn read_records(
        &self,
        kv: &mut etcd_client::KvClient,
        revision: i64,
    ) -> Result<BTreeMap<String, BTreeMap<String, Entry>>, Error> {
        let end = prefix_end(self.records_prefix.as_bytes());
        let mut start = self.records_prefix.as_bytes().to_vec();
        let mut next: BTreeMap<String, BTreeMap<String, Entry>> = BTreeMap::new();
        // Bounded: each page advances `start` past the keys it returned.
        loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(PAGE)
                .with_revision(revision);
            let resp = timed(self.timeout, kv.get(start.clone(), Some(opts))).await?;
            for kv in resp.kvs() {
                if kv.key() != self.commit_key.as_bytes() {
                    self.load_kv(&mut next, kv.key(), kv.value());
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok(next)
    }

    /// Decodes one key of a full load into `into`, keeping the previous good value of
    /// the name when this one is bad.
    fn load_kv(
        &self,
        into: &mut BTreeMap<String, BTreeMap<String, Entry>>,
        key: &[u8],
        value: &[u8],
    ) {
        let key = String::from_utf8_lossy(key);
        let Some((zone, name)) = parse_record_key(&self.records_prefix, &key) else {
            self.bad_value(&key, &"key is not {prefix}/records/{zone}/{name}");
            return;
        };
        let entry = match decode_value::<NameRecords>(value) {
            Ok(d) => Entry {
                records: d.value,
                decided_at: d.decided_at,
            },
            Err(reason) => {
                self.bad_value(&key, &reason);
                // Last good value: what this source read before, else what the shim
                // serves (a persisted snapshot after a restart); never "no records".
                match self.zones.get(zone).and_then(|z| z.get(name)) {
                    Some(old) => old.clone(),
                    None => match self
                        .shim
                        .snapshot(zone)
                        .and_then(|s| s.names.get(name).cloned())
                    {
                        Some(records) => Entry {
                            records,
                            decided_at: None,
                        },
                        None => return,
                    },
                }
            }
        };
        into.entry(zone.to_owned())
            .or_default()
            .insert(name.to_owned(), entry);
    }

    /// Watches from `last_revision + 1` and applies events until the stream ends.
    async fn follow(&mut self, client: &Client, backoff: &mut Backoff) -> Stop {
        // Changes held from a previous stream are replayed from `last_revision + 1`.
        self.held.clear();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.last_revision + 1)
            .with_progress_notify();
        let mut watch = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        let mut stream = match timed(
            self.timeout,
            watch.watch(self.records_prefix.clone(), Some(opts)),
        )
        .await
        {
            Ok(s) => s,
            Err(e) => return Stop::Broken(format!("cannot open watch: {e}")),
        };
        // Bounded by the stream: every iteration consumes one message or returns.
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Stop::Broken("watch stream ended".into()),
                Err(e) => return Stop::Broken(format!("watch stream failed: {e}")),
            };
            if resp.compact_revision() > 0 {
                return Stop::Reload("the resume revision was compacted");
            }
            if resp.canceled() {
                return Stop::Broken(format!("watch canceled: {}", resp.cancel_reason()));
            }
            if resp.created() {
                // Resuming by revision is only sound on the same etcd history: a
                // replaced cluster has another id, a restored one a lower revision.
                if let Some(h) = resp.header() {
                    if self.cluster_id.is_some_and(|id| id != h.cluster_id()) {
                        return Stop::Reload("etcd cluster id changed (replaced)");
                    }
                    if h.revision() < self.last_revision {
                        return Stop::Reload("etcd revision went back (restored)");
                    }
                }
                info!(source = %self.name, from = self.last_revision + 1, "watching etcd records");
                self.stats.watches_opened.fetch_add(1, Ordering::Relaxed);
                self.shim.set_source_connected(&self.name, true);
                backoff.reset();
            }
            if resp.events().is_empty() && !resp.created() {
                // A progress notification: everything up to the header's revision has
                // been delivered, so a later resume can start there and is less likely
                // to land on compacted history.
                // Not while changes are held: they would not be replayed.
                if let Some(h) = resp.header()
                    && self.held.is_empty()
                {
                    self.last_revision = self.last_revision.max(h.revision());
                }
                continue;
            }
            self.apply_events(&resp).await;
        }
    }

    /// Takes a watch response: record changes are held, and each commit marker applies
    /// what is held as one patch per zone at the marker's revision. Without markers
    /// (an older writer), the whole response is applied at its newest revision. A
    /// response holds many revisions when the watch catches up (after a reconnect, or a
    /// burst of writes); folding them compiles and persists each zone once instead of
    /// once per revision, and the end state is the same because later events on a name
    /// replace earlier ones.
    async fn apply_events(&mut self, resp: &WatchResponse) {
        let events = resp.events();
        let mut newest = self.last_revision;
        for event in events {
            let Some(kv) = event.kv() else { continue };
            newest = newest.max(kv.mod_revision());
            if kv.key() == self.commit_key.as_bytes() {
                if event.event_type() == EventType::Put {
                    if !self.committed {
                        info!(source = %self.name, "the writer puts commit markers now; changes are applied per publish");
                        self.committed = true;
                    }
                    self.commit(kv.mod_revision()).await;
                }
                continue;
            }
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some((zone, name)) = parse_record_key(&self.records_prefix, &key) else {
                self.bad_value(&key, &"key is not {prefix}/records/{zone}/{name}");
                continue;
            };
            let (zone, name) = (zone.to_owned(), name.to_owned());
            let entry = match event.event_type() {
                EventType::Put => match decode_value::<NameRecords>(kv.value()) {
                    Ok(d) => Some(Entry {
                        records: d.value,
                        decided_at: d.decided_at,
                    }),
                    Err(reason) => {
                        // The name keeps its last good records: nothing to change.
                        self.bad_value(&key, &reason);
                        continue;
                    }
                },
                EventType::Delete => None,
            };
            self.held.push(Held { zone, name, entry });
        }
        if !self.committed {
            self.commit(newest).await;
        }
        if self.held.is_empty() {
            self.last_revision = self.last_revision.max(newest);
            self.stats
                .revision
                .store(self.last_revision, Ordering::Relaxed);
        } else {
            debug!(source = %self.name, held = self.held.len(), "record changes held until their publish is committed");
        }
        // Counted once taken, so whoever sees the count also sees their effect.
        self.stats
            .events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
    }

    /// Applies the held changes as one patch per zone at `revision`.
    async fn commit(&mut self, revision: i64) {
        let mut patches: BTreeMap<String, Pending> = BTreeMap::new();
        for Held { zone, name, entry } in std::mem::take(&mut self.held) {
            let p = patches.entry(zone.clone()).or_default();
            match entry {
                Some(e) => {
                    p.delete.remove(&name);
                    p.upsert.insert(name.clone(), e.records.clone());
                    p.decided_at = p.decided_at.max(e.decided_at);
                    self.zones.entry(zone.clone()).or_default().insert(name, e);
                    self.seen_zones.insert(zone);
                }
                None => {
                    p.upsert.remove(&name);
                    p.delete.insert(name.clone());
                    if let Some(z) = self.zones.get_mut(&zone) {
                        z.remove(&name);
                    }
                }
            }
        }
        let now = SystemTime::now();
        for (zone, p) in patches {
            let patch = ZonePatch {
                decided_at: p.decided_at.unwrap_or(now),
                zone,
                revision: revision as u64 + self.offset,
                upsert: p.upsert,
                delete: p.delete.into_iter().collect(),
            };
            self.apply(Update::Patch(patch)).await;
        }
        self.last_revision = self.last_revision.max(revision);
        self.stats
            .revision
            .store(self.last_revision, Ordering::Relaxed);
    }

    /// Applies one update, falling back to a whole-zone replace when the shim has no
    /// snapshot of the zone to patch yet.
    async fn apply(&self, update: Update) {
        let (zone, revision) = (update.zone().to_owned(), update.revision());
        let is_replace = matches!(update, Update::Replace(_));
        match self.shim.apply_async(update).await {
            Ok(a) => {
                debug!(source = %self.name, zone = %a.zone, revision, rejected = a.rejected.len(), "etcd records applied")
            }
            Err(lifeline_dns::Error::StaleRevision { have, got, .. }) if have == got => {}
            Err(lifeline_dns::Error::StaleRevision { have, got, .. }) => {
                // Normal for a replayed patch; for a replace it means the shim serves a
                // newer revision than etcd has (a restored or new etcd), which needs an
                // operator: serving the old data is the safe choice until etcd passes it.
                if is_replace {
                    warn!(source = %self.name, %zone, served = have, etcd = got, "shim serves a newer revision than etcd holds; keeping the served data");
                } else {
                    debug!(source = %self.name, %zone, served = have, etcd = got, "etcd change not newer than served data");
                }
            }
            Err(lifeline_dns::Error::NoBase(_)) => {
                let names = self.zones.get(&zone).cloned().unwrap_or_default();
                let decided_at = names
                    .values()
                    .filter_map(|e| e.decided_at)
                    .max()
                    .unwrap_or_else(SystemTime::now);
                let snapshot = ZoneSnapshot {
                    names: names.into_iter().map(|(n, e)| (n, e.records)).collect(),
                    ..ZoneSnapshot::empty(zone.clone(), revision, decided_at)
                };
                Box::pin(self.apply(Update::Replace(snapshot))).await;
            }
            Err(e) => {
                warn!(source = %self.name, %zone, revision, error = %e, "etcd records rejected by the shim");
                self.shim.count_load_error();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_round_trip_and_reject_other_shapes() {
        let p = records_prefix("/lifeline/");
        assert_eq!(p, "/lifeline/records/");
        let key = record_key("/lifeline", "example.com", "www.example.com");
        assert_eq!(
            parse_record_key(&p, &key),
            Some(("example.com", "www.example.com"))
        );
        assert_eq!(parse_record_key(&p, "/lifeline/records/example.com"), None);
        assert_eq!(parse_record_key(&p, "/lifeline/records/z/a/b"), None);
        assert_eq!(parse_record_key(&p, "/other/records/z/a"), None);
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn values_are_validated_before_use() {
        let good = encode_value(&NameRecords::default(), Some(SystemTime::UNIX_EPOCH)).unwrap();
        let d = decode_value::<NameRecords>(&good).unwrap();
        assert_eq!(d.value, NameRecords::default());
        assert_eq!(d.decided_at, Some(SystemTime::UNIX_EPOCH));
        assert!(matches!(
            decode_value::<NameRecords>(b"garbage"),
            Err(BadValue::Envelope(_))
        ));
        assert_eq!(
            decode_value::<NameRecords>(br#"{"format":2,"value":{}}"#),
            Err(BadValue::Format(2))
        );
        assert!(matches!(
            decode_value::<NameRecords>(br#"{"format":1,"value":{"bogus":1}}"#),
            Err(BadValue::Value(_))
        ));
        let huge = vec![b' '; VALUE_LIMIT + 1];
        assert_eq!(
            decode_value::<NameRecords>(&huge),
            Err(BadValue::TooLarge(VALUE_LIMIT + 1))
        );
    }
}
