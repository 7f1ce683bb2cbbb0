//! The etcd store: what replicas share, and leader election with fenced writes.
//!
//! Same role as [`the embedded store`], but in etcd so every replica (and
//! `lifeline ctl`, with no Kubernetes API at all) sees the same state:
//!
//! ```text
//!  {prefix}/records/{zone}/{name}     NameRecords of one DNS name   (leader, fenced)
//!  {prefix}/decision                  Decision head: revision, time (leader, fenced)
//!                                     and alarms
//!  {prefix}/decision/policies/{ns}/{name}                            (leader, fenced)
//!                                     one policy's PolicyDecision: hysteresis and
//!                                     ramps survive a leader change
//!  {prefix}/policies/{ns}/{name}      mirrored FailoverPolicy       (leader, fenced)
//!  {prefix}/clusters/{name}           mirrored MemberCluster        (leader, fenced)
//!  {prefix}/overrides/{id}            Override                      (anyone: admin API, ctl)
//!  {prefix}/audit/{millis}-{id}-{n}   AuditEntry, written in the same transaction
//!  {prefix}/policy-change/held        PolicyHold: a sweeping change  (leader, fenced)
//!                                     held back
//!  {prefix}/policy-change/release     PolicyRelease of that change  (anyone: admin API, ctl)
//!  {prefix}/credentials/{cluster}     a member kubeconfig, sealed   (leader, fenced)
//!                                     by the controller's key
//!  {prefix}/election/{lease}          etcd election keys (campaign with a leased key)
//! ```
//!
//! Every value is the envelope `{"format": 1, "value": ...}` (record values also carry
//! `decidedAt`), validated on read by [`crate::source::decode_value`]. A bad
//! value (garbage, another format version, undecodable, over 1 MiB) is logged, counted
//! ([`EtcdStore::bad_values`]) and ignored: the reader gets the key's last good value
//! instead, from etcd's history of that key or else from what this process last read.
//!
//! # Leadership and fencing
//!
//! ```text
//!  Leadership::campaign ─ lease grant (TTL) ─ keep-alive task ─ election campaign ─► Leader
//!                                                  │ lease gone / no renewal within TTL
//!                                                  ▼
//!                                   leader.is_current() == false, leader.lost() completes
//!
//!  fenced write = Txn IF create_revision({prefix}/election/{lease}) == leader.revision
//!                     THEN puts/deletes           ELSE -> Error::NotLeader
//! ```
//!
//! The election key exists only while the leader's lease lives, and a new leader's key
//! has a newer create revision, so a deposed leader (lease expired while it was paused,
//! or revoked) cannot write even if it has not noticed yet.
//!
//! ```ignore
//! let store = EtcdStore::connect(&EtcdConnect::new(["http://127.0.0.1:2379"]), "/lifeline").await?;
//! let leader = Leadership::new(&store, "replica-a", Duration::from_secs(10)).campaign().await?;
//! let mut decision = store.load_decision().await?.unwrap_or_default();
//! // ... decide ...
//! store.save_decision(&leader, &decision).await?;               // Err(NotLeader) once deposed
//! for update in publisher.updates(&decision, now) {
//!     store.publish_update(&leader, &update).await?;              // per-name keys, fenced
//! }
//! tokio::select! { _ = leader.lost() => { /* stop leader-only work, campaign again */ } ... }
//! ```

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, Txn, TxnOp};
use lifeline_crds::document::PolicySnapshot;
use lifeline_engine::{Decision, Override, PolicyDecision};
use lifeline_model::{
    Backoff, NameRecords, Update,
    hold::{PolicyHold, PolicyRelease},
    overrides::AuditEntry,
};
use parking_lot::Mutex;
use serde::{Serialize, de::DeserializeOwned};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::source::{
    self as etcd_source, EtcdConnect, VALUE_LIMIT, decode_value, encode_value, record_key, timed,
};

/// etcd rejects transactions with more operations than `--max-txn-ops` (128 by
/// default); larger writes are split into several fenced transactions.
const TXN_OPS: usize = 100;

/// How many older versions of a key are tried when its current value is bad.
const HISTORY_STEPS: usize = 8;

/// Errors of the etcd store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Etcd(#[from] etcd_source::Error),
    /// The write was fenced off: this process no longer holds the leader key.
    #[error("not the leader: leadership was lost or taken over")]
    NotLeader,
    #[error("cannot encode {key}: {source}")]
    Encode {
        key: String,
        source: serde_json::Error,
    },
    #[error("{key}: value of {size} bytes is over the {VALUE_LIMIT}-byte limit")]
    TooLarge { key: String, size: usize },
    /// A zone, name, namespace or id that cannot be a key segment.
    #[error("{0:?} cannot be part of a key (empty or contains '/')")]
    InvalidKey(String),
    /// A write that checks what others write at the same time lost the race too often.
    #[error("{0} kept changing while this write was tried; try again")]
    Contended(&'static str),
}

impl From<etcd_client::Error> for Error {
    fn from(e: etcd_client::Error) -> Self {
        Error::Etcd(e.into())
    }
}

impl Error {
    /// True when a fenced write was refused because leadership is gone.
    pub fn is_not_leader(&self) -> bool {
        matches!(self, Error::NotLeader)
    }
}

/// Result with the module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The shared store. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    timeout: Duration,
    bad_values: Arc<AtomicU64>,
    /// Last good encoded value per key read by this process: the fallback when a key's
    /// current value is bad and etcd's history no longer has an older good one.
    last_good: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// What this process last saved of the decision, per policy key, and under which
    /// leadership (election key revision): the base of the next save's diff.
    saved_decision: Arc<Mutex<Option<(i64, EncodedValues)>>>,
}

/// Encoded values by key.
type EncodedValues = HashMap<String, Vec<u8>>;

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("bad_values", &self.bad_values.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to etcd; keys live under `prefix` (e.g. `/lifeline`).
    pub async fn connect(connect: &EtcdConnect, prefix: &str) -> Result<Self> {
        let client = connect.connect().await?;
        Ok(Self::from_client(client, prefix, connect.request_timeout()))
    }

    /// A store over an existing client.
    pub fn from_client(client: Client, prefix: &str, timeout: Duration) -> Self {
        Self {
            client,
            prefix: prefix.trim_end_matches('/').to_owned(),
            timeout,
            bad_values: Arc::default(),
            last_good: Arc::default(),
            saved_decision: Arc::default(),
        }
    }

    /// The etcd client (for callers that need more than this API).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The key prefix, without a trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Bad values seen (and ignored) since start.
    pub fn bad_values(&self) -> u64 {
        self.bad_values.load(Ordering::Relaxed)
    }

    fn key(&self, parts: &[&str]) -> Result<String> {
        let mut key = self.prefix.clone();
        for p in parts {
            if p.is_empty() || p.contains('/') {
                return Err(Error::InvalidKey((*p).to_owned()));
            }
            key.push('/');
            key.push_str(p);
        }
        Ok(key)
    }

    fn election_name(&self) -> String {
        format!("{}/election", self.prefix)
    }

    fn encode<T: Serialize>(
        key: &str,
        value: &T,
        decided_at: Option<SystemTime>,
    ) -> Result<Vec<u8>> {
        let bytes = encode_value(value, decided_at).map_err(|source| Error::Encode {
            key: key.to_owned(),
            source,
        })?;
        if bytes.len() > VALUE_LIMIT {
            // Readers would ignore it; refusing here makes the writer see the problem.
            return Err(Error::TooLarge {
                key: key.to_owned(),
                size: bytes.len(),
            });
        }
        Ok(bytes)
    }

    // === reads ===

    async fn get(&self, key: &str, opts: Option<GetOptions>) -> Result<etcd_client::GetResponse> {
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(etcd_source::MAX_MESSAGE);
        Ok(timed(self.timeout, kv.get(key, opts)).await?)
    }

    /// Decodes one stored key-value, falling back to its last good value when bad.
    async fn decode_kv<T: DeserializeOwned>(&self, kv: &KeyValue) -> Option<T> {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        match decode_value::<T>(kv.value()) {
            Ok(d) => {
                self.last_good.lock().insert(key, kv.value().to_vec());
                Some(d.value)
            }
            Err(reason) => {
                self.bad_values.fetch_add(1, Ordering::Relaxed);
                warn!(%key, %reason, revision = kv.mod_revision(), "bad value in etcd ignored; using the last good one");
                self.last_good_of(&key, kv.mod_revision()).await
            }
        }
    }

    /// The newest good value of `key` older than `revision`: etcd's history first (a
    /// few versions back, until compaction), then what this process last read.
    async fn last_good_of<T: DeserializeOwned>(&self, key: &str, revision: i64) -> Option<T> {
        let mut rev = revision - 1;
        for _ in 0..HISTORY_STEPS {
            if rev <= 0 {
                break;
            }
            let Ok(resp) = self
                .get(key, Some(GetOptions::new().with_revision(rev)))
                .await
            else {
                break; // compacted or unreachable
            };
            let Some(old) = resp.kvs().first() else { break };
            if let Ok(d) = decode_value::<T>(old.value()) {
                debug!(%key, revision = old.mod_revision(), "last good value found in etcd history");
                return Some(d.value);
            }
            rev = old.mod_revision() - 1;
        }
        let cached = self.last_good.lock().get(key).cloned()?;
        decode_value::<T>(&cached).ok().map(|d| d.value)
    }

    async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let resp = self.get(key, None).await?;
        match resp.kvs().first() {
            Some(kv) => Ok(self.decode_kv(kv).await),
            None => Ok(None),
        }
    }

    /// Every good value under `dir` (a prefix ending in '/'), in key order.
    async fn read_dir<T: DeserializeOwned>(&self, dir: &str) -> Result<Vec<(String, T)>> {
        self.read_dir_at(dir, None).await
    }

    /// [`Self::read_dir`] as of etcd revision `at` (now when `None`).
    async fn read_dir_at<T: DeserializeOwned>(
        &self,
        dir: &str,
        at: Option<i64>,
    ) -> Result<Vec<(String, T)>> {
        let mut opts = GetOptions::new().with_prefix();
        if let Some(at) = at {
            opts = opts.with_revision(at);
        }
        let resp = self.get(dir, Some(opts)).await?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            if let Some(v) = self.decode_kv(kv).await {
                out.push((String::from_utf8_lossy(kv.key()).into_owned(), v));
            }
        }
        Ok(out)
    }

    async fn keys_under(&self, dir: &str) -> Result<BTreeSet<String>> {
        let resp = self
            .get(dir, Some(GetOptions::new().with_prefix().with_keys_only()))
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect())
    }

    // === fenced writes ===

    /// Runs `ops` in transactions that succeed only while `leader` holds the election
    /// key. Returns the etcd revision of the last transaction.
    async fn fenced(&self, leader: &Leader, ops: Vec<TxnOp>) -> Result<i64> {
        let mut revision = 0;
        for chunk in ops.chunks(TXN_OPS) {
            let txn = Txn::new()
                .when([Compare::create_revision(
                    leader.key.clone(),
                    CompareOp::Equal,
                    leader.revision,
                )])
                .and_then(chunk.to_vec());
            let mut kv = self.client.kv_client();
            let resp = timed(self.timeout, kv.txn(txn)).await?;
            if !resp.succeeded() {
                warn!(identity = %leader.identity, lease = leader.lease, "write fenced off: no longer the leader");
                leader.mark_lost();
                return Err(Error::NotLeader);
            }
            revision = resp.header().map_or(revision, |h| h.revision());
        }
        Ok(revision)
    }

    /// Publishes one zone's changed names: upserts and deletes in fenced transactions
    /// (one, unless more than 100 names change), the last of which also puts the
    /// records commit marker, so readers take the publish whole or not at all (see
    /// [`etcd_source::records_commit_key`]). Returns the etcd revision written.
    pub async fn publish_records(
        &self,
        leader: &Leader,
        zone: &str,
        upserts: &BTreeMap<String, NameRecords>,
        deletes: &[String],
        decided_at: SystemTime,
    ) -> Result<i64> {
        let mut ops = Vec::with_capacity(upserts.len() + deletes.len());
        for name in deletes {
            self.key(&["records", zone, name])?;
            ops.push(TxnOp::delete(record_key(&self.prefix, zone, name), None));
        }
        for (name, records) in upserts {
            self.key(&["records", zone, name])?;
            let key = record_key(&self.prefix, zone, name);
            let value = Self::encode(&key, records, Some(decided_at))?;
            ops.push(TxnOp::put(key, value, None));
        }
        if ops.is_empty() {
            return Ok(0);
        }
        let marker = etcd_source::RecordsCommit {
            zone: zone.to_owned(),
            upserts: upserts.len(),
            deletes: deletes.len(),
        };
        let key = etcd_source::records_commit_key(&self.prefix);
        let value = Self::encode(&key, &marker, Some(decided_at))?;
        ops.push(TxnOp::put(key, value, None));
        let revision = self.fenced(leader, ops).await?;
        info!(%zone, upserts = upserts.len(), deletes = deletes.len(), revision, "records published to etcd");
        Ok(revision)
    }

    /// Publishes a shim update as per-name keys: a patch as is; a replace also deletes
    /// the zone's names that it no longer lists.
    pub async fn publish_update(&self, leader: &Leader, update: &Update) -> Result<i64> {
        match update {
            Update::Patch(p) => {
                self.publish_records(leader, &p.zone, &p.upsert, &p.delete, p.decided_at)
                    .await
            }
            Update::Replace(s) => {
                let dir = format!("{}/", self.key(&["records", &s.zone])?);
                let deletes: Vec<String> = self
                    .keys_under(&dir)
                    .await?
                    .into_iter()
                    .filter_map(|k| k.strip_prefix(&dir).map(str::to_owned))
                    .filter(|n| !s.names.contains_key(n))
                    .collect();
                self.publish_records(leader, &s.zone, &s.names, &deletes, s.decided_at)
                    .await
            }
        }
    }

    /// The records currently in etcd, zone → name → records (bad values replaced by
    /// their last good value, or left out). A new leader seeds its publisher from this.
    pub async fn records(&self) -> Result<BTreeMap<String, BTreeMap<String, NameRecords>>> {
        let dir = etcd_source::records_prefix(&self.prefix);
        let marker = etcd_source::records_commit_key(&self.prefix);
        let mut out: BTreeMap<String, BTreeMap<String, NameRecords>> = BTreeMap::new();
        let resp = self
            .get(&dir, Some(GetOptions::new().with_prefix()))
            .await?;
        let mut read = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs().iter().filter(|kv| kv.key() != marker.as_bytes()) {
            if let Some(v) = self.decode_kv::<NameRecords>(kv).await {
                read.push((String::from_utf8_lossy(kv.key()).into_owned(), v));
            }
        }
        for (key, records) in read {
            if let Some((zone, name)) = etcd_source::parse_record_key(&dir, &key) {
                out.entry(zone.to_owned())
                    .or_default()
                    .insert(name.to_owned(), records);
            }
        }
        Ok(out)
    }

    /// Key of one policy's part of the decision; a policy id is `namespace/name`.
    fn decision_policy_key(&self, id: &str) -> Result<String> {
        let mut parts = vec!["decision", "policies"];
        parts.extend(id.split('/'));
        self.key(&parts)
    }

    /// Saves the engine's decision (fenced), split so no value nears etcd's request
    /// limit however many policies there are: `{prefix}/decision/policies/{ns}/{name}`
    /// per policy, written only when it changed since this leader's last save, then
    /// the head `{prefix}/decision` (revision, time, alarms) last. A save over the
    /// transaction limit takes several transactions; one cut short (the leader killed
    /// between them) leaves some policies newer than the head, and [`Self::load_decision`]
    /// reads the policies as of the head's revision, so a successor never starts from
    /// half of a save.
    pub async fn save_decision(&self, leader: &Leader, decision: &Decision) -> Result<()> {
        let dir = format!("{}/", self.key(&["decision", "policies"])?);
        let primed =
            matches!(&*self.saved_decision.lock(), Some((rev, _)) if *rev == leader.revision);
        let saved = if primed {
            self.saved_decision
                .lock()
                .take()
                .map(|(_, saved)| saved)
                .unwrap_or_default()
        } else {
            // New term: learn what etcd holds so unchanged policies are not rewritten
            // and policies that are gone get deleted.
            let resp = self
                .get(&dir, Some(GetOptions::new().with_prefix()))
                .await?;
            resp.kvs()
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        kv.value().to_vec(),
                    )
                })
                .collect()
        };
        let mut wanted: HashMap<String, Vec<u8>> = HashMap::with_capacity(decision.policies.len());
        let mut ops = Vec::new();
        for (id, pd) in &decision.policies {
            let key = self.decision_policy_key(id)?;
            let value = Self::encode(&key, pd, None)?;
            if saved.get(&key) != Some(&value) {
                ops.push(TxnOp::put(key.clone(), value.clone(), None));
            }
            wanted.insert(key, value);
        }
        for key in saved.keys().filter(|k| !wanted.contains_key(*k)) {
            ops.push(TxnOp::delete(key.clone(), None));
        }
        let head_key = self.key(&["decision"])?;
        let head = Decision {
            revision: decision.revision,
            changed_at: decision.changed_at,
            policies: BTreeMap::new(),
            alarms: decision.alarms.clone(),
        };
        let changed = ops.len();
        ops.push(TxnOp::put(
            head_key.clone(),
            Self::encode(&head_key, &head, None)?,
            None,
        ));
        self.fenced(leader, ops).await?;
        debug!(
            revision = decision.revision,
            changed, "decision saved to etcd"
        );
        *self.saved_decision.lock() = Some((leader.revision, wanted));
        Ok(())
    }

    /// The last decision, if a good one exists: the head and every policy's part as of
    /// the head's revision, so a save cut short between its transactions is not read
    /// half-applied (a bad part falls back to its last good value, or is left out and
    /// starts fresh). When that revision is compacted the current parts are read.
    pub async fn load_decision(&self) -> Result<Option<Decision>> {
        let resp = self.get(&self.key(&["decision"])?, None).await?;
        let (head, at) = match resp.kvs().first() {
            Some(kv) => (
                self.decode_kv::<Decision>(kv).await,
                Some(kv.mod_revision()),
            ),
            None => (None, None),
        };
        let dir = format!("{}/", self.key(&["decision", "policies"])?);
        let parts = match self.read_dir_at::<PolicyDecision>(&dir, at).await {
            Err(e) if at.is_some() && e.to_string().contains("compacted") => {
                warn!(revision = ?at, "the last decision save is compacted; reading the current policy parts, which may hold part of an unfinished save");
                self.read_dir::<PolicyDecision>(&dir).await?
            }
            read => read?,
        };
        if head.is_none() && parts.is_empty() {
            return Ok(None);
        }
        let mut decision = head.unwrap_or_default();
        for (key, pd) in parts {
            if let Some(id) = key.strip_prefix(&dir) {
                decision
                    .policies
                    .insert(id.to_owned(), std::sync::Arc::new(pd));
            }
        }
        Ok(Some(decision))
    }

    /// Mirrors the policy documents (fenced): changed documents are written, documents
    /// no longer present are deleted.
    pub async fn mirror_policies(&self, leader: &Leader, snapshot: &PolicySnapshot) -> Result<()> {
        let mut wanted: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for p in &snapshot.policies {
            let name = p.metadata.name.as_deref().unwrap_or_default();
            let key = self.key(&["policies", p.namespace_or_default(), name])?;
            let value = Self::encode(&key, p, None)?;
            wanted.insert(key, value);
        }
        for c in &snapshot.clusters {
            let name = c.metadata.name.as_deref().unwrap_or_default();
            let key = self.key(&["clusters", name])?;
            let value = Self::encode(&key, c, None)?;
            wanted.insert(key, value);
        }
        let mut current: HashMap<String, Vec<u8>> = HashMap::new();
        for dir in ["policies", "clusters"] {
            let resp = self
                .get(
                    &format!("{}/", self.key(&[dir])?),
                    Some(GetOptions::new().with_prefix()),
                )
                .await?;
            for kv in resp.kvs() {
                current.insert(
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                );
            }
        }
        let mut ops = Vec::new();
        for key in current.keys().filter(|k| !wanted.contains_key(*k)) {
            ops.push(TxnOp::delete(key.clone(), None::<DeleteOptions>));
        }
        for (key, value) in wanted {
            if current.get(&key) != Some(&value) {
                ops.push(TxnOp::put(key, value, None));
            }
        }
        if !ops.is_empty() {
            let changed = ops.len();
            self.fenced(leader, ops).await?;
            info!(changed, "policy documents mirrored to etcd");
        }
        Ok(())
    }

    /// The mirrored policy documents (bad ones skipped with a report).
    pub async fn load_policies(&self) -> Result<PolicySnapshot> {
        let policies = self
            .read_dir(&format!("{}/", self.key(&["policies"])?))
            .await?;
        let clusters = self
            .read_dir(&format!("{}/", self.key(&["clusters"])?))
            .await?;
        // What etcd holds is input like any other: validated again before use.
        let keep = |key: &str, problems: Vec<lifeline_crds::validate::Problem>| {
            if problems.is_empty() {
                return true;
            }
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            warn!(%key, problems = ?list, "mirrored document is invalid; ignored");
            self.bad_values.fetch_add(1, Ordering::Relaxed);
            false
        };
        let policies = policies
            .into_iter()
            .filter(|(k, p)| keep(k, lifeline_crds::validate::failover_policy(p)))
            .map(|(_, v)| v)
            .collect();
        let clusters = clusters
            .into_iter()
            .filter(|(k, c)| keep(k, lifeline_crds::validate::member_cluster(c)))
            .map(|(_, v)| v)
            .collect();
        Ok(PolicySnapshot { policies, clusters })
    }

    // === overrides (not fenced: operators must reach them without a leader) ===

    /// Every override in etcd (expired ones included; the engine ignores those).
    pub async fn overrides(&self) -> Result<Vec<Override>> {
        let all: Vec<Override> = self.values_under("overrides").await?;
        // Anyone with etcd access can write here: a weight outside the documented range
        // is ignored (and counted), never acted on.
        Ok(all
            .into_iter()
            .filter(|o| match o.action {
                lifeline_model::OverrideAction::Weight(w)
                    if w > lifeline_model::limits::WEIGHT_MAX =>
                {
                    warn!(id = %o.id, weight = w, max = lifeline_model::limits::WEIGHT_MAX, "override weight out of range; ignored");
                    self.bad_values.fetch_add(1, Ordering::Relaxed);
                    false
                }
                _ => true,
            })
            .collect())
    }

    /// The good values under `{prefix}/{segment}/`, in key order.
    async fn values_under<T: DeserializeOwned>(&self, segment: &str) -> Result<Vec<T>> {
        let dir = format!("{}/", self.key(&[segment])?);
        Ok(self
            .read_dir(&dir)
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    fn audit_op(&self, entry: &AuditEntry) -> Result<TxnOp> {
        let millis = entry
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        // Zero-padded so key order is time order; the random tail keeps two changes of
        // one id within a millisecond apart.
        let name = format!(
            "{millis:013}-{}-{:08x}",
            entry.r#override.id,
            rand::random::<u32>()
        );
        let key = self.key(&["audit", &name])?;
        let value = Self::encode(&key, entry, None)?;
        Ok(TxnOp::put(key, value, None))
    }

    /// Adds or replaces (by id) an override, with its audit entry in the same
    /// transaction.
    pub async fn put_override(&self, o: &Override, by: &str) -> Result<()> {
        self.put_override_within(o, by, usize::MAX).await.map(drop)
    }

    /// [`Self::put_override`] while fewer than `max` other overrides are in force at
    /// `o.created_at`: counted and written in one transaction that fails when any
    /// override was written since the count, so two writers racing for the last place
    /// cannot both take it. `Some(in force)` when there is no room.
    pub async fn put_override_within(
        &self,
        o: &Override,
        by: &str,
        max: usize,
    ) -> Result<Option<usize>> {
        let dir = format!("{}/", self.key(&["overrides"])?);
        let key = self.key(&["overrides", &o.id])?;
        // Bounded: a writer that loses eight races in a row is told to try again.
        for _ in 0..8 {
            let resp = self
                .get(&dir, Some(GetOptions::new().with_prefix()))
                .await?;
            let read_at = resp.header().map_or(0, |h| h.revision());
            let mut in_force = 0;
            for kv in resp.kvs() {
                if let Some(x) = self.decode_kv::<Override>(kv).await
                    && x.id != o.id
                    && x.is_active(o.created_at)
                {
                    in_force += 1;
                }
            }
            if in_force >= max {
                return Ok(Some(in_force));
            }
            let value = Self::encode(&key, o, None)?;
            let audit = self.audit_op(&AuditEntry::set(o.clone(), by, SystemTime::now()))?;
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(dir.clone(), CompareOp::Less, read_at + 1).with_prefix(),
                ])
                .and_then([TxnOp::put(key.clone(), value, None), audit]);
            let mut kv = self.client.kv_client();
            if timed(self.timeout, kv.txn(txn)).await?.succeeded() {
                info!(id = %o.id, cluster = %o.cluster, %by, "override set in etcd");
                return Ok(None);
            }
        }
        Err(Error::Contended("the overrides"))
    }

    /// Removes overrides matching `pred`, each with an audit entry, and returns them.
    /// An override changed concurrently (between read and delete) is left alone.
    pub async fn remove_overrides(
        &self,
        pred: impl Fn(&Override) -> bool,
        by: &str,
    ) -> Result<Vec<Override>> {
        let dir = format!("{}/", self.key(&["overrides"])?);
        let resp = self
            .get(&dir, Some(GetOptions::new().with_prefix()))
            .await?;
        let mut removed = Vec::new();
        for kv in resp.kvs() {
            let Some(o) = self.decode_kv::<Override>(kv).await else {
                continue;
            };
            if !pred(&o) {
                continue;
            }
            let audit = self.audit_op(&AuditEntry::cleared(o.clone(), by, SystemTime::now()))?;
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    kv.key(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::delete(kv.key(), None), audit]);
            let mut client = self.client.kv_client();
            if timed(self.timeout, client.txn(txn)).await?.succeeded() {
                info!(id = %o.id, %by, "override cleared in etcd");
                removed.push(o);
            }
        }
        Ok(removed)
    }

    /// The audit trail, oldest first.
    pub async fn audit(&self) -> Result<Vec<AuditEntry>> {
        self.values_under("audit").await
    }

    /// Deletes audit entries older than `before` (the trail otherwise grows forever);
    /// returns how many went. Keys start with the zero-padded time, so this is one
    /// range delete.
    pub async fn prune_audit(&self, before: SystemTime) -> Result<i64> {
        let dir = format!("{}/", self.key(&["audit"])?);
        let millis = before
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let end = format!("{dir}{millis:013}");
        let mut kv = self.client.kv_client();
        let resp = timed(
            self.timeout,
            kv.delete(dir, Some(DeleteOptions::new().with_range(end))),
        )
        .await?;
        info!(deleted = resp.deleted(), "audit entries pruned");
        Ok(resp.deleted())
    }

    // === held policy changes ===

    /// The policy change the leader is holding, if any.
    pub async fn policy_hold(&self) -> Result<Option<PolicyHold>> {
        self.read(&self.key(&["policy-change", "held"])?).await
    }

    /// Records (or, with `None`, clears) the held change; fenced like every leader write.
    pub async fn save_policy_hold(&self, leader: &Leader, hold: Option<&PolicyHold>) -> Result<()> {
        let key = self.key(&["policy-change", "held"])?;
        let op = match hold {
            Some(h) => TxnOp::put(key.clone(), Self::encode(&key, h, None)?, None),
            None => TxnOp::delete(key, None),
        };
        self.fenced(leader, vec![op]).await?;
        Ok(())
    }

    /// An operator's release (any replica, or `lifeline ctl --etcd` with no leader).
    pub async fn release_policy_change(&self, release: &PolicyRelease) -> Result<()> {
        let key = self.key(&["policy-change", "release"])?;
        let value = Self::encode(&key, release, None)?;
        let mut kv = self.client.kv_client();
        timed(self.timeout, kv.put(key, value, None)).await?;
        info!(fingerprint = %release.fingerprint, by = %release.by, "policy change released in etcd");
        Ok(())
    }

    /// The last release written, if any.
    pub async fn policy_release(&self) -> Result<Option<PolicyRelease>> {
        self.read(&self.key(&["policy-change", "release"])?).await
    }

    // === cached member credentials (sealed by the controller; opaque here) ===

    /// The sealed kubeconfig cached for `cluster`, if any.
    pub async fn credential<T: DeserializeOwned>(&self, cluster: &str) -> Result<Option<T>> {
        self.read(&self.key(&["credentials", cluster])?).await
    }

    /// Caches (or, with `None`, forgets) the sealed kubeconfig of `cluster`; fenced.
    pub async fn save_credential<T: Serialize>(
        &self,
        leader: &Leader,
        cluster: &str,
        sealed: Option<&T>,
    ) -> Result<()> {
        let key = self.key(&["credentials", cluster])?;
        let op = match sealed {
            Some(v) => TxnOp::put(key.clone(), Self::encode(&key, v, None)?, None),
            None => TxnOp::delete(key, None),
        };
        self.fenced(leader, vec![op]).await?;
        Ok(())
    }

    /// Identity of the current leader, if any.
    pub async fn leader_identity(&self) -> Result<Option<String>> {
        let mut election = self.client.election_client();
        match timed(self.timeout, election.leader(self.election_name())).await {
            Ok(resp) => Ok(resp
                .kv()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())),
            // etcd answers "election: no leader" as an error status.
            Err(etcd_source::Error::Etcd(etcd_client::Error::GRpcStatus(s)))
                if s.message().contains("no leader") =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

// === Leadership ===

/// A candidate for leadership. See the module docs.
#[derive(Debug, Clone)]
pub struct Leadership {
    store: EtcdStore,
    identity: String,
    ttl: Duration,
}

impl Leadership {
    /// A candidate named `identity` (shown as the leader's value), whose lease lasts
    /// `ttl` (whole seconds, at least 1) without renewal.
    pub fn new(store: &EtcdStore, identity: impl Into<String>, ttl: Duration) -> Self {
        Self {
            store: store.clone(),
            identity: identity.into(),
            ttl: Duration::from_secs(ttl.as_secs().max(1)),
        }
    }

    /// Waits until elected. Retries (with backoff and jitter) through etcd outages and
    /// lost leases; callers bound it by racing it against their shutdown.
    pub async fn campaign(&self) -> Result<Leader> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let name = self.store.election_name();
        // Bounded per attempt by the lease: losing it ends the attempt.
        loop {
            let mut leases = self.store.client.lease_client();
            let lease = match timed(
                self.store.timeout,
                leases.grant(self.ttl.as_secs() as i64, None),
            )
            .await
            {
                Ok(l) => l.id(),
                Err(e) => {
                    warn!(identity = %self.identity, error = %e, "cannot get an etcd lease; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            let (tx, rx) = watch::channel(true);
            let mut lost = rx.clone();
            let tx = Arc::new(tx);
            let keeper = tokio::spawn(
                keep_alive(self.store.client.clone(), lease, self.ttl, tx.clone())
                    .instrument(info_span!("lease_keepalive", identity = %self.identity, lease)),
            );
            let mut election = self.store.client.election_client();
            let started = Instant::now();
            tokio::select! {
                r = election.campaign(name.clone(), self.identity.clone(), lease) => match r {
                    Ok(resp) => match resp.leader() {
                        Some(key) => {
                            info!(identity = %self.identity, lease, revision = key.rev(), waited_ms = started.elapsed().as_millis() as u64, "elected leader");
                            return Ok(Leader {
                                identity: self.identity.clone(),
                                key: key.key().to_vec(),
                                revision: key.rev(),
                                lease,
                                state: rx,
                                tx,
                                keeper,
                                client: self.store.client.clone(),
                                timeout: self.store.timeout,
                            });
                        }
                        None => warn!(identity = %self.identity, "campaign answered without a leader key; retrying"),
                    },
                    Err(e) => warn!(identity = %self.identity, error = %e, "campaign failed; retrying"),
                },
                _ = lost.wait_for(|current| !*current) => {
                    warn!(identity = %self.identity, lease, "lease lost while campaigning; starting over");
                }
            }
            keeper.abort();
            // Best effort: a lease left behind would only expire after its TTL.
            let _ = timed(self.store.timeout, leases.revoke(lease)).await;
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// Renews `lease` every third of its TTL; flips `state` to false when etcd says the
/// lease is gone or no renewal succeeded before the lease would have expired.
async fn keep_alive(client: Client, lease: i64, ttl: Duration, state: Arc<watch::Sender<bool>>) {
    let every = ttl / 3;
    // Give up a little before etcd can expire the lease, so a partitioned leader stops
    // acting before a successor starts (writes are fenced anyway; this covers the
    // leader's other side effects). Times are taken before each request is sent, which
    // also errs on the early side.
    let margin = (ttl / 6).min(Duration::from_secs(1));
    let mut deadline = Instant::now() + ttl - margin;
    let mut stream = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            warn!(
                lease,
                "lease not renewed in time; leadership considered lost"
            );
            state.send_replace(false);
            return;
        }
        if stream.is_none() {
            let mut leases = client.lease_client();
            match tokio::time::timeout(every, leases.keep_alive(lease)).await {
                Ok(Ok(s)) => stream = Some(s),
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(reason))) => {
                    warn!(lease, %reason, "lease gone; leadership lost");
                    state.send_replace(false);
                    return;
                }
                Ok(Err(e)) => debug!(lease, error = %e, "cannot open lease keep-alive"),
                Err(_) => debug!(lease, "opening lease keep-alive timed out"),
            }
        }
        let sent = Instant::now();
        let mut renewed_ok = false;
        if let Some((keeper, responses)) = stream.as_mut() {
            let renewed = tokio::time::timeout(every, async {
                keeper.keep_alive().await?;
                responses.message().await
            })
            .await;
            match renewed {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                    deadline = sent + Duration::from_secs(resp.ttl() as u64) - margin;
                    renewed_ok = true;
                }
                Ok(Ok(Some(_))) => {
                    warn!(lease, "lease expired or revoked; leadership lost");
                    state.send_replace(false);
                    return;
                }
                _ => stream = None,
            }
        }
        // After a failure, retry sooner: a short blip should not cost the lease.
        let pause = if renewed_ok {
            every
        } else {
            (every / 4).max(Duration::from_millis(100))
        };
        tokio::time::sleep_until((sent + pause).min(deadline)).await;
    }
}

/// Proof of leadership, passed to every fenced write. Dropping it stops renewing the
/// lease (the way a crash would: another candidate takes over after the TTL); call
/// [`Leader::resign`] to hand over at once.
pub struct Leader {
    identity: String,
    /// The election key `{prefix}/election/{lease}` and its create revision: the fence.
    key: Vec<u8>,
    revision: i64,
    lease: i64,
    state: watch::Receiver<bool>,
    tx: Arc<watch::Sender<bool>>,
    keeper: JoinHandle<()>,
    client: Client,
    timeout: Duration,
}

impl fmt::Debug for Leader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leader")
            .field("identity", &self.identity)
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("revision", &self.revision)
            .field("lease", &self.lease)
            .field("current", &self.is_current())
            .finish_non_exhaustive()
    }
}

impl Leader {
    /// Whether leadership is still believed held (the fence decides for writes).
    pub fn is_current(&self) -> bool {
        *self.state.borrow()
    }

    /// Completes when leadership is lost (lease expired, revoked, or a write fenced).
    pub async fn lost(&self) {
        let mut rx = self.state.clone();
        let _ = rx.wait_for(|current| !*current).await;
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The lease behind the leadership.
    pub fn lease_id(&self) -> i64 {
        self.lease
    }

    /// Create revision of the election key (increases with every new leadership).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    fn mark_lost(&self) {
        self.tx.send_replace(false);
    }

    /// Gives leadership up now by revoking the lease (its election key goes with it).
    /// Takes `&self` so a caller can resign while other borrows of the leader (a term
    /// that just ended) are still in scope; the handle is useless afterwards.
    pub async fn resign(&self) -> Result<()> {
        self.keeper.abort();
        self.mark_lost();
        let mut leases = self.client.lease_client();
        timed(self.timeout, leases.revoke(self.lease)).await?;
        info!(identity = %self.identity, lease = self.lease, "resigned leadership");
        Ok(())
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}
