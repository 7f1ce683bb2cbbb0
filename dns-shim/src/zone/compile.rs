//! Turning snapshots into answers that are ready to send.
//!
//! Every answer the shim can give for a name that exists is serialised here, once per
//! snapshot, as the bytes that follow the question section ("tail"). Answering a query
//! is then a hash lookup plus copying a header, the client's own question and the tail.
//! This works because the question we echo always has the same length as the name we
//! looked up (only letter case may differ), so compression pointers into it stay valid.
//!
//! Per-query choice among targets is also decided here: each address RRset becomes a
//! "wheel": its records serialised once, back to back, plus the positions replies start
//! at (every position in turn, or a smooth weighted sequence). A reply copies
//! `maxAnswers` records from its starting position on, wrapping around, so memory per
//! name is linear in its targets. There is one wheel per client region when geo
//! selection applies; the server picks a slot.
//!
//! A record set too large for any DNS message (even over TCP) is refused here with the
//! reason, never cut: see [`crate::records::check_records`].

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    net::IpAddr,
    sync::Arc,
    time::SystemTime,
};

use ipnet::IpNet;
use tracing::warn;

pub use crate::records::{MAX_TAIL, keep_last_good};
use crate::{
    config::{GeoPrefix, ZoneConfig},
    records::{check_records, srv_rdata, txt_rdata, wire_or_root},
    wire::{self, TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_NS, TYPE_SOA, TYPE_SRV, TYPE_TXT},
};
use lifeline_model::{AddressSet, NameRecords, Target, ZoneSnapshot};

/// Resolution of the weighted sequence: weights are scaled to about this many slots
/// (every weighted target gets at least one).
const MAX_WHEEL: usize = 64;

/// FNV-1a: names are short and attacker-chosen only in content, not in volume per
/// bucket that matters here; SipHash would cost more than the rest of the lookup.
#[derive(Default, Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

pub type NameMap<V> = HashMap<Box<[u8]>, V, BuildHasherDefault<Fnv>>;

// === answers ===

/// The answer section of the replies for one RRset: fixed records, then `take` records
/// of the ring from a starting position on, wrapping around.
#[derive(Clone, Debug, Default)]
pub struct Wheel {
    /// Records every reply starts with (an alias's CNAME, or the whole answer when there
    /// is nothing to choose), and how many there are.
    head: Box<[u8]>,
    head_an: u16,
    /// Records to choose among, each exactly `rr_len` bytes, back to back.
    ring: Box<[u8]>,
    rr_len: usize,
    /// Ring records per reply.
    take: usize,
    /// Ring positions replies start at, in turn; empty means every position in order.
    leaders: Box<[u32]>,
}

/// The bytes of one reply's answer section, in order, and its record count.
#[derive(Clone, Copy, Debug)]
pub struct Picked<'a> {
    pub an: u16,
    pub parts: [&'a [u8]; 3],
}

impl Wheel {
    /// A reply that is always the same.
    fn fixed(an: u16, bytes: Vec<u8>) -> Self {
        Self {
            head: bytes.into(),
            head_an: an,
            ..Self::default()
        }
    }

    fn ring_len(&self) -> usize {
        self.ring.len().checked_div(self.rr_len).unwrap_or(0)
    }

    /// Distinct starting points (1 for a fixed reply).
    pub fn slots(&self) -> usize {
        match (self.ring_len(), self.leaders.len()) {
            (0, _) => 1,
            (n, 0) => n,
            (_, l) => l,
        }
    }

    /// The reply for per-query counter `spin`.
    pub fn pick(&self, spin: usize) -> Picked<'_> {
        let n = self.ring_len();
        if n == 0 {
            return Picked {
                an: self.head_an,
                parts: [&self.head, &[], &[]],
            };
        }
        let lead = if self.leaders.is_empty() {
            spin % n
        } else {
            self.leaders[spin % self.leaders.len()] as usize % n
        };
        let take = self.take.min(n);
        let end = lead + take;
        let r = self.rr_len;
        let (first, second) = if end <= n {
            (&self.ring[lead * r..end * r], &[][..])
        } else {
            (&self.ring[lead * r..], &self.ring[..(end - n) * r])
        };
        Picked {
            // `check_records` bounds the bytes, so the count fits.
            an: self
                .head_an
                .saturating_add(u16::try_from(take).unwrap_or(u16::MAX)),
            parts: [&self.head, first, second],
        }
    }

    /// The same wheel with `an` records of `bytes` in front of every reply.
    fn prefixed(&self, an: u16, bytes: &[u8]) -> Self {
        Self {
            head: [bytes, &self.head].concat().into(),
            head_an: self.head_an.saturating_add(an),
            ..self.clone()
        }
    }

    /// Bytes held, for memory accounting in tests and benchmarks.
    pub fn heap_bytes(&self) -> usize {
        self.head.len() + self.ring.len() + self.leaders.len() * 4
    }
}

/// The alternatives for one answer.
#[derive(Clone, Debug)]
pub struct Choice {
    /// Wheel used when the client's region has no wheel of its own.
    pub all: Wheel,
    /// Wheels of targets in one region, by region id.
    pub by_region: Box<[(u16, Wheel)]>,
}

impl Choice {
    fn one(an: u16, bytes: Vec<u8>) -> Self {
        Self {
            all: Wheel::fixed(an, bytes),
            by_region: Box::new([]),
        }
    }

    /// Whether the client's region changes the answer (so ECS scope must say so).
    pub fn is_geo(&self) -> bool {
        !self.by_region.is_empty()
    }

    /// Picks the reply for a client in `region`, `spin` being a per-query counter.
    pub fn pick(&self, region: Option<u16>, spin: usize) -> Picked<'_> {
        region
            .and_then(|r| self.by_region.iter().find(|(id, _)| *id == r))
            .map_or(&self.all, |(_, w)| w)
            .pick(spin)
    }

    /// Bytes held by every wheel.
    pub fn heap_bytes(&self) -> usize {
        self.all.heap_bytes()
            + self
                .by_region
                .iter()
                .map(|(_, w)| w.heap_bytes())
                .sum::<usize>()
    }
}

/// One possible reply for a name: rcode plus alternatives.
#[derive(Clone, Debug)]
pub struct Answer {
    pub rcode: u8,
    pub choice: Choice,
}

/// Everything the server knows about one existing name (or empty non-terminal).
#[derive(Clone, Debug)]
pub struct NameEntry {
    /// Answers by query type.
    pub typed: Box<[(u16, Answer)]>,
    /// Answer for every other type: the CNAME for an alias; `None` means NODATA,
    /// which the server writes itself (it is the same SOA for every name).
    pub other: Option<Answer>,
    /// Answer to ANY: one RRset, RFC 8482.
    pub any: u16,
}

impl NameEntry {
    /// The answer for `qtype`; `None` is NODATA.
    pub fn answer(&self, qtype: u16) -> Option<&Answer> {
        let qtype = if qtype == wire::TYPE_ANY {
            self.any
        } else {
            qtype
        };
        self.typed
            .iter()
            .find(|(t, _)| *t == qtype)
            .map(|(_, a)| a)
            .or(self.other.as_ref())
    }
}

// === geo ===

/// Client prefix → region id, longest prefix first.
#[derive(Clone, Debug, Default)]
pub struct GeoTable {
    prefixes: Vec<(IpNet, u16)>,
    regions: Vec<String>,
}

impl GeoTable {
    pub fn new(geo: &[GeoPrefix]) -> Self {
        let mut regions: Vec<String> = Vec::new();
        let mut prefixes = Vec::new();
        for g in geo {
            let id = match regions.iter().position(|r| *r == g.region) {
                Some(i) => i,
                None => {
                    regions.push(g.region.clone());
                    regions.len() - 1
                }
            };
            prefixes.push((g.prefix.trunc(), id as u16));
        }
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.prefix_len()));
        Self { prefixes, regions }
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// Region id of a client address.
    pub fn region_of(&self, ip: IpAddr) -> Option<u16> {
        if self.prefixes.is_empty() {
            return None;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.prefixes
            .iter()
            .find(|(p, _)| p.contains(&ip))
            .map(|(_, id)| *id)
    }

    /// Region id of a region name, if any prefix maps to it.
    pub fn id_of(&self, region: &str) -> Option<u16> {
        self.regions
            .iter()
            .position(|r| r == region)
            .map(|i| i as u16)
    }
}

// === zones ===

/// A zone compiled from its configuration and current snapshot.
#[derive(Debug)]
pub struct ZoneTable {
    pub origin: String,
    pub apex: Box<[u8]>,
    pub revision: u64,
    /// The SOA serial answered (see [`crate::zone::serial`]).
    pub serial: u32,
    pub decided_at: SystemTime,
    /// SOA record rdata.
    pub soa_rdata: Box<[u8]>,
    /// TTL of the SOA in negative answers (RFC 2308 §5: min of SOA TTL and MINIMUM).
    pub negative_ttl: u32,
    pub names: NameMap<NameEntry>,
    /// Names in the snapshot that could not be served (outside the zone, bad syntax).
    pub rejected: Vec<(String, String)>,
    /// Number of names in the snapshot.
    pub name_count: usize,
    /// TTLs are capped because the data is stale.
    pub ttl_capped: bool,
    /// The cap, when capped: zone transfers carry the TTLs queries get.
    pub ttl_cap: Option<u32>,
    /// Set while `names` is not built yet: answers are built per query from the
    /// snapshot instead (see [`index_zone`]).
    pub lazy: Option<Lazy>,
    /// The zone's configuration (SOA and NS data, who may transfer it).
    pub config: Arc<ZoneConfig>,
    /// The snapshot answers are made from, overrides applied: what a zone transfer
    /// sends. Set by the shim; a table built without one refuses transfers.
    pub served: Option<Arc<ZoneSnapshot>>,
    /// The changes that led to `served`, for IXFR; `None` when there are none to
    /// offer (overrides change what is served, or nothing was kept).
    pub history: Option<crate::zone::history::History>,
    /// Names whose drain this shim did not apply because it would have left them no
    /// target: they keep their answer.
    pub drains_kept: usize,
}

/// What a lazily compiled zone answers from: the snapshot, and a way from a query name
/// to its key there.
#[derive(Debug)]
pub struct Lazy {
    snapshot: Arc<ZoneSnapshot>,
    keys: Keys,
    zone: ZoneConfig,
    geo: Arc<GeoTable>,
    opts: CompileOptions,
}

#[derive(Debug)]
enum Keys {
    /// Every key is in canonical form (lowercase, relative to the zone, no trailing
    /// dot), so a query name turns into its key by text and no index is needed: the
    /// cheapest start. Holds the empty non-terminals (wire form).
    Canonical { ents: NameMap<()> },
    /// Wire name → key; `None` for empty non-terminals and the bare apex.
    Index(NameMap<Option<Box<str>>>),
}

impl Lazy {
    fn records(&self, name: &[u8], apex: &[u8]) -> Option<&NameRecords> {
        match &self.keys {
            Keys::Index(index) => self.snapshot.names.get(index.get(name)?.as_deref()?),
            Keys::Canonical { .. } => {
                let recs = self.snapshot.names.get(&relative_key(name, apex)?)?;
                check_records(recs, false).is_none().then_some(recs)
            }
        }
    }

    fn exists(&self, name: &[u8], apex: &[u8]) -> bool {
        match &self.keys {
            Keys::Index(index) => index.contains_key(name),
            Keys::Canonical { ents } => {
                name == apex || ents.contains_key(name) || self.records(name, apex).is_some()
            }
        }
    }
}

/// The canonical snapshot key of a wire name inside `apex` ("www" for www.<apex>).
fn relative_key(name: &[u8], apex: &[u8]) -> Option<String> {
    let rel = name.get(..name.len().checked_sub(apex.len())?)?;
    let mut key = String::with_capacity(rel.len());
    let mut i = 0;
    while i < rel.len() {
        let len = usize::from(rel[i]);
        let label = std::str::from_utf8(rel.get(i + 1..i + 1 + len)?).ok()?;
        // A dot inside a label cannot be spelled as a key.
        if label.contains('.') {
            return None;
        }
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(label);
        i += 1 + len;
    }
    (!key.is_empty()).then_some(key)
}

/// Whether `key` is spelled exactly as [`relative_key`] would produce it for a name in
/// the zone `origin` (so both directions agree without normalising).
fn is_canonical(key: &str, origin: &str) -> bool {
    !key.is_empty()
        && key.len() + origin.len() + 3 <= wire::MAX_NAME
        && key.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|c| {
                    c.is_ascii_graphic() && !c.is_ascii_uppercase() && c != b'\\' && c != b'"'
                })
        })
        && key != "@"
        && key != origin
        && !(key.len() > origin.len()
            && key.ends_with(origin)
            && key.as_bytes()[key.len() - origin.len() - 1] == b'.')
}

impl ZoneTable {
    /// The entry of `name`: from the compiled tables, or built now for a lazy table.
    pub fn entry(&self, name: &[u8]) -> Option<std::borrow::Cow<'_, NameEntry>> {
        if let Some(e) = self.names.get(name) {
            return Some(std::borrow::Cow::Borrowed(e));
        }
        let lazy = self.lazy.as_ref()?;
        if !lazy.exists(name, &self.apex) {
            return None;
        }
        let lookup = |w: &[u8]| lazy.records(w, &self.apex);
        let cx = Cx {
            zone: &lazy.zone,
            apex: &self.apex,
            soa_rdata: &self.soa_rdata,
            geo: &lazy.geo,
            opts: lazy.opts,
            lookup: &lookup,
        };
        Some(std::borrow::Cow::Owned(
            cx.entry(name, lazy.records(name, &self.apex)),
        ))
    }
}

/// Knobs that change the bytes of answers.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompileOptions {
    /// Cap every TTL at this value (serving stale data, RFC 8767).
    pub ttl_cap: Option<u32>,
    /// The SOA serial; the revision's low 32 bits when absent (a table built outside
    /// a shim, which keeps the serial's rule in [`crate::zone::serial`]).
    pub serial: Option<u32>,
}

impl CompileOptions {
    /// Every TTL served, from whatever source: at most a day (what validation allows a
    /// policy), then the stale cap. A snapshot file or store value that skipped
    /// validation cannot make resolvers keep an answer for years.
    pub(crate) fn ttl(&self, ttl: u32) -> u32 {
        let ttl = ttl.min(lifeline_model::limits::TTL_MAX);
        self.ttl_cap.map_or(ttl, |c| ttl.min(c))
    }
}

/// The parts of a zone shared by the full and the lazy build.
struct Prepared<V> {
    origin: String,
    apex: Box<[u8]>,
    /// Servable names by wire form, each with what `prepare`'s caller keeps of it.
    records: NameMap<V>,
    rejected: Vec<(String, String)>,
    serial: u32,
    soa_rdata: Vec<u8>,
    negative_ttl: u32,
    config: Arc<ZoneConfig>,
}

impl<V> Prepared<V> {
    /// The table of the zone: `names` compiled ahead, and `lazy`, when set, what is
    /// built per query.
    fn into_table(
        self,
        snapshot: &ZoneSnapshot,
        opts: CompileOptions,
        names: NameMap<NameEntry>,
        lazy: Option<Lazy>,
    ) -> ZoneTable {
        ZoneTable {
            origin: self.origin,
            apex: self.apex,
            revision: snapshot.revision,
            serial: self.serial,
            decided_at: snapshot.decided_at,
            soa_rdata: self.soa_rdata.into(),
            negative_ttl: self.negative_ttl,
            names,
            rejected: self.rejected,
            name_count: snapshot.names.len(),
            ttl_capped: opts.ttl_cap.is_some(),
            ttl_cap: opts.ttl_cap,
            lazy,
            config: self.config,
            served: None,
            history: None,
            drains_kept: 0,
        }
    }
}

fn prepare<'s, V>(
    zone: &ZoneConfig,
    snapshot: &'s ZoneSnapshot,
    opts: CompileOptions,
    keep: impl Fn(&'s str, &'s NameRecords) -> V,
) -> Prepared<V> {
    let origin = wire::normalize(&zone.origin, "").unwrap_or_default();
    let apex: Box<[u8]> = wire::encode(&origin).unwrap_or_else(|_| vec![0]).into();
    let mut rejected = Vec::new();

    // Normalise names first: the same name may appear in two spellings.
    let mut records: NameMap<V> = NameMap::default();
    records.reserve(snapshot.names.len() + 1);
    for (name, recs) in &snapshot.names {
        match wire::owner_to_wire(name, &apex) {
            Ok(w) => {
                if let Some(problem) = check_records(recs, w == apex) {
                    rejected.push((name.clone(), problem));
                } else if records.insert(w, keep(name, recs)).is_some() {
                    rejected.push((name.clone(), "duplicate name".into()));
                }
            }
            Err(e) => rejected.push((name.clone(), e.to_string())),
        }
    }
    for (name, problem) in &rejected {
        warn!(zone = %origin, %name, %problem, "record skipped");
    }

    let serial = opts
        .serial
        .unwrap_or_else(|| crate::zone::serial::of_revision(snapshot.revision));
    let mut soa_rdata = Vec::new();
    soa_rdata.extend(wire_or_root(&zone.primary_ns));
    soa_rdata.extend(wire_or_root(&zone.hostmaster));
    for v in [
        serial,
        zone.refresh,
        zone.retry,
        zone.expire,
        zone.negative_ttl,
    ] {
        soa_rdata.extend_from_slice(&v.to_be_bytes());
    }
    let negative_ttl = opts.ttl(zone.ttl.min(zone.negative_ttl));
    Prepared {
        origin,
        apex,
        records,
        rejected,
        serial,
        soa_rdata,
        negative_ttl,
        config: Arc::new(zone.clone()),
    }
}

/// Compiles one zone. Never fails: a name that cannot be served is skipped and listed in
/// `rejected`, so one bad record cannot take the rest of the zone down.
pub fn compile_zone(
    zone: &ZoneConfig,
    snapshot: &ZoneSnapshot,
    geo: &GeoTable,
    opts: CompileOptions,
) -> ZoneTable {
    let p = prepare(zone, snapshot, opts, |_, recs| recs);
    let lookup = |w: &[u8]| p.records.get(w).copied();
    let cx = Cx {
        zone,
        apex: &p.apex,
        soa_rdata: &p.soa_rdata,
        geo,
        opts,
        lookup: &lookup,
    };
    let names = build_entries(&cx, &p.records, &p.apex);
    p.into_table(snapshot, opts, names, None)
}

/// Indexes a zone without pre-serialising its answers: a fraction of the work of
/// [`compile_zone`], so a restarted shim with a large zone answers sooner. Answers are
/// then built per query (slower, same bytes) until a full compile replaces the table.
pub fn index_zone(
    zone: &ZoneConfig,
    snapshot: Arc<ZoneSnapshot>,
    geo: Arc<GeoTable>,
    opts: CompileOptions,
) -> ZoneTable {
    let origin = wire::normalize(&zone.origin, "").unwrap_or_default();
    let canonical = snapshot.names.keys().all(|k| is_canonical(k, &origin));
    if canonical {
        return index_canonical(zone, snapshot, geo, opts);
    }
    let mut p = prepare(zone, &snapshot, opts, |key, _| Some(Box::<str>::from(key)));
    let mut index = std::mem::take(&mut p.records);
    index.entry(p.apex.clone()).or_insert(None);
    let owners: Vec<Box<[u8]>> = index
        .keys()
        .filter(|k| k.len() > p.apex.len() + 1)
        .filter(|k| wire::parent(k).is_some_and(|parent| !index.contains_key(parent)))
        .cloned()
        .collect();
    // Empty non-terminals: the few owners whose parent is not a name themselves.
    for name in owners {
        let mut cur: &[u8] = &name;
        while let Some(parent) = wire::parent(cur) {
            if parent.len() < p.apex.len() || index.contains_key(parent) {
                break;
            }
            index.insert(parent.into(), None);
            cur = parent;
        }
    }
    let lazy = Lazy {
        snapshot: snapshot.clone(),
        keys: Keys::Index(index),
        zone: zone.clone(),
        geo,
        opts,
    };
    p.into_table(&snapshot, opts, NameMap::default(), Some(lazy))
}

/// [`index_zone`] for a snapshot whose keys are all canonical: only the empty
/// non-terminals are computed (none in a flat zone); names are looked up by text.
fn index_canonical(
    zone: &ZoneConfig,
    snapshot: Arc<ZoneSnapshot>,
    geo: Arc<GeoTable>,
    opts: CompileOptions,
) -> ZoneTable {
    let empty = ZoneSnapshot::empty(
        snapshot.zone.clone(),
        snapshot.revision,
        snapshot.decided_at,
    );
    // SOA and negative TTL come from the zone alone; no names needed.
    let p = prepare(zone, &empty, opts, |_, _| ());
    let servable = |key: &str| {
        snapshot
            .names
            .get(key)
            .is_some_and(|r| check_records(r, false).is_none())
    };
    let mut ents: NameMap<()> = NameMap::default();
    for key in snapshot.names.keys().filter(|k| k.contains('.')) {
        let mut rest = key.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if !servable(parent)
                && let Ok(w) = wire::owner_to_wire(parent, &p.apex)
            {
                ents.insert(w, ());
            }
            rest = parent;
        }
    }
    let lazy = Lazy {
        snapshot: snapshot.clone(),
        keys: Keys::Canonical { ents },
        zone: zone.clone(),
        geo,
        opts,
    };
    // Prepared from no names, so nothing is rejected yet: the full compile that replaces
    // this table reports what it rejects.
    p.into_table(&snapshot, opts, NameMap::default(), Some(lazy))
}

/// Zones this large are compiled on two threads: it halves warm start on big zones.
const PARALLEL_FROM: usize = 20_000;

fn build_entries(cx: &Cx<'_>, records: &NameMap<&NameRecords>, apex: &[u8]) -> NameMap<NameEntry> {
    let all: Vec<(&[u8], &NameRecords)> = records.iter().map(|(n, r)| (&n[..], *r)).collect();
    let compile = |part: &[(&[u8], &NameRecords)]| -> Vec<(Box<[u8]>, NameEntry)> {
        part.iter()
            .map(|(name, recs)| ((*name).into(), cx.entry(name, Some(recs))))
            .collect()
    };
    let parts: Vec<Vec<(Box<[u8]>, NameEntry)>> = if all.len() >= PARALLEL_FROM {
        let (a, b) = all.split_at(all.len() / 2);
        std::thread::scope(|scope| {
            let other = scope.spawn(|| compile(b));
            let mine = compile(a);
            vec![mine, other.join().unwrap_or_default()]
        })
    } else {
        vec![compile(&all)]
    };
    let mut names: NameMap<NameEntry> = NameMap::default();
    names.reserve(records.len() + 1);
    for part in parts {
        names.extend(part);
    }
    if !names.contains_key(apex) {
        names.insert(apex.into(), cx.entry(apex, None));
    }
    // Empty non-terminals exist (NODATA, not NXDOMAIN: RFC 8020).
    for name in records.keys() {
        let mut cur: &[u8] = name;
        while let Some(p) = wire::parent(cur) {
            if p.len() < apex.len() || names.contains_key(p) {
                break;
            }
            names.insert(p.into(), cx.entry(p, None));
            cur = p;
        }
    }
    names
}

struct Cx<'a> {
    zone: &'a ZoneConfig,
    apex: &'a [u8],
    soa_rdata: &'a [u8],
    geo: &'a GeoTable,
    opts: CompileOptions,
    /// Records of another name of the zone (for following a CNAME).
    lookup: &'a (dyn Fn(&[u8]) -> Option<&'a NameRecords> + Sync),
}

/// Offset of the question name in every response.
const QNAME_AT: usize = wire::HEADER_LEN;

impl Cx<'_> {
    fn entry(&self, name: &[u8], recs: Option<&NameRecords>) -> NameEntry {
        let mut typed: Vec<(u16, Answer)> = Vec::new();
        let owner = wire::pointer(QNAME_AT);
        let is_apex = name == self.apex;
        if is_apex {
            let mut soa = Vec::new();
            wire::put_rr(
                &mut soa,
                &owner,
                TYPE_SOA,
                self.opts.ttl(self.zone.ttl),
                self.soa_rdata,
            );
            typed.push((TYPE_SOA, positive(1, soa)));
            let mut ns = Vec::new();
            let mut count = 0;
            for n in &self.zone.nameservers {
                wire::put_rr(
                    &mut ns,
                    &owner,
                    TYPE_NS,
                    self.opts.ttl(self.zone.ttl),
                    &wire_or_root(n),
                );
                count += 1;
            }
            typed.push((TYPE_NS, positive(count, ns)));
        }
        let mut other = None;
        if let Some(recs) = recs {
            if let Some(c) = &recs.cname {
                self.alias(name, c, &mut typed, &mut other);
            } else {
                self.data(recs, &owner, &mut typed);
            }
        }
        let any = [TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_SRV, TYPE_TXT, TYPE_SOA]
            .into_iter()
            .find(|t| typed.iter().any(|(x, _)| x == t))
            .unwrap_or(0);
        NameEntry {
            typed: typed.into(),
            other,
            any,
        }
    }

    /// RRsets of a name that is not an alias, owned by `owner`.
    fn data(&self, recs: &NameRecords, owner: &[u8], typed: &mut Vec<(u16, Answer)>) {
        if let Some(set) = &recs.address {
            for (rtype, v4) in [(TYPE_A, true), (TYPE_AAAA, false)] {
                if let Some(choice) = self.addresses(set, v4, owner) {
                    typed.push((
                        rtype,
                        Answer {
                            rcode: wire::RCODE_NOERROR,
                            choice,
                        },
                    ));
                }
            }
        }
        if let Some(srv) = &recs.srv
            && !srv.records.is_empty()
        {
            let mut out = Vec::new();
            for r in &srv.records {
                wire::put_rr(
                    &mut out,
                    owner,
                    TYPE_SRV,
                    self.opts.ttl(srv.ttl),
                    &srv_rdata(r),
                );
            }
            typed.push((TYPE_SRV, positive(srv.records.len(), out)));
        }
        if let Some(txt) = &recs.txt
            && !txt.records.is_empty()
        {
            let mut out = Vec::new();
            for r in &txt.records {
                wire::put_rr(
                    &mut out,
                    owner,
                    TYPE_TXT,
                    self.opts.ttl(txt.ttl),
                    &txt_rdata(r),
                );
            }
            typed.push((TYPE_TXT, positive(txt.records.len(), out)));
        }
    }

    /// An alias: the CNAME itself, plus the target's data when the target is ours
    /// (one level; resolvers chase further chains themselves).
    fn alias(
        &self,
        _name: &[u8],
        c: &lifeline_model::Cname,
        typed: &mut Vec<(u16, Answer)>,
        other: &mut Option<Answer>,
    ) {
        let target = wire_or_root(&c.target);
        let mut cname = Vec::new();
        wire::put_rr(
            &mut cname,
            &wire::pointer(QNAME_AT),
            TYPE_CNAME,
            self.opts.ttl(c.ttl),
            &target,
        );
        let answer = positive(1, cname.clone());
        *other = Some(answer.clone());
        typed.push((TYPE_CNAME, answer));
        let Some(recs) = (self.lookup)(target.as_slice()) else {
            return;
        };
        if recs.cname.is_some() {
            return;
        }
        // The CNAME's rdata sits right after its fixed fields; the target's records
        // point there. The offset depends on the question length, which is this name's.
        let qlen = _name.len() + 4;
        let target_at = QNAME_AT + qlen + 2 + 10;
        let mut chased = Vec::new();
        self.data(recs, &wire::pointer(target_at), &mut chased);
        for (rtype, answer) in chased {
            let choice = Choice {
                all: answer.choice.all.prefixed(1, &cname),
                by_region: answer
                    .choice
                    .by_region
                    .iter()
                    .map(|(r, w)| (*r, w.prefixed(1, &cname)))
                    .collect(),
            };
            typed.push((
                rtype,
                Answer {
                    rcode: wire::RCODE_NOERROR,
                    choice,
                },
            ));
        }
    }

    fn addresses(&self, set: &AddressSet, v4: bool, owner: &[u8]) -> Option<Choice> {
        let ttl = self.opts.ttl(set.ttl);
        let mut family = set.targets.iter().filter(|t| t.address.is_ipv4() == v4);
        let first = family.next()?;
        if family.next().is_none() {
            // One target: nothing to choose, and by far the most common case.
            let mut bytes = Vec::with_capacity(owner.len() + 26);
            put_address(&mut bytes, owner, ttl, first);
            return Some(Choice::one(1, bytes));
        }
        let targets: Vec<&Target> = set
            .targets
            .iter()
            .filter(|t| t.address.is_ipv4() == v4)
            .collect();
        let max = set.max_answers.map_or(usize::MAX, usize::from).max(1);
        let all = wheel(&targets, max, ttl, owner);
        let mut by_region = Vec::new();
        if set.geo && !self.geo.is_empty() {
            let mut seen: Vec<u16> = Vec::new();
            for t in &targets {
                let Some(id) = self.geo.id_of(&t.region) else {
                    continue;
                };
                if seen.contains(&id) {
                    continue;
                }
                seen.push(id);
                let local: Vec<&Target> = targets
                    .iter()
                    .copied()
                    .filter(|x| x.region == t.region)
                    .collect();
                by_region.push((id, wheel(&local, max, ttl, owner)));
            }
        }
        Some(Choice {
            all,
            by_region: by_region.into(),
        })
    }
}

fn positive(count: usize, bytes: Vec<u8>) -> Answer {
    Answer {
        rcode: wire::RCODE_NOERROR,
        // `check_records` bounds the bytes of every RRset, so the count fits.
        choice: Choice::one(u16::try_from(count).unwrap_or(u16::MAX), bytes),
    }
}

/// The SOA in the authority section of a negative answer; its owner (the apex) is a
/// pointer into the question, which always ends with the apex.
pub fn put_negative_soa(out: &mut Vec<u8>, apex_at: usize, ttl: u32, soa_rdata: &[u8]) {
    wire::put_rr(out, &wire::pointer(apex_at), TYPE_SOA, ttl, soa_rdata);
}

fn put_address(out: &mut Vec<u8>, owner: &[u8], ttl: u32, t: &Target) {
    match t.address {
        IpAddr::V4(a) => wire::put_rr(out, owner, TYPE_A, ttl, &a.octets()),
        IpAddr::V6(a) => wire::put_rr(out, owner, TYPE_AAAA, ttl, &a.octets()),
    }
}

/// The wheel of `targets`: their records once, in order, and where replies start.
///
/// Equal weights: every position in turn, so each target leads equally often. Unequal
/// weights: a smooth weighted sequence of leaders, the rest follow in ring order. Weight
/// 0 targets are left out unless no target has weight. Memory is linear in the targets.
fn wheel(targets: &[&Target], max: usize, ttl: u32, owner: &[u8]) -> Wheel {
    let weighted: Vec<&Target> = targets.iter().copied().filter(|t| t.weight > 0).collect();
    // Weight 0 everywhere means "no preference", not "nothing to say".
    let pool: Vec<&Target> = if weighted.is_empty() {
        targets.to_vec()
    } else {
        weighted
    };
    let mut ring = Vec::new();
    let mut rr_len = 0;
    for t in &pool {
        let before = ring.len();
        put_address(&mut ring, owner, ttl, t);
        rr_len = ring.len() - before;
    }
    let leaders = if pool.iter().all(|t| t.weight == pool[0].weight) {
        Vec::new()
    } else {
        weighted_sequence(&pool)
    };
    Wheel {
        head: Box::default(),
        head_an: 0,
        ring: ring.into(),
        rr_len,
        take: pool.len().min(max),
        leaders: leaders.into(),
    }
}

/// A smooth sequence of ring positions in which each target leads in proportion to its
/// weight, scaled to about [`MAX_WHEEL`] slots (at least one each). Target `i` with `s`
/// slots leads at the points `(k + ½) / s`; merging every target's points in order
/// spreads each one's turns evenly. O(slots · log slots).
fn weighted_sequence(pool: &[&Target]) -> Vec<u32> {
    let total: u64 = pool.iter().map(|t| u64::from(t.weight)).sum();
    let scale = (MAX_WHEEL as u64).min(total).max(1);
    let slots: Vec<u64> = pool
        .iter()
        .map(|t| (u64::from(t.weight) * scale).div_ceil(total.max(1)).max(1))
        .collect();
    // (numerator 2k+1, denominator 2s, target): compared by cross-multiplying.
    let mut points: Vec<(u64, u64, u32)> = slots
        .iter()
        .enumerate()
        .flat_map(|(i, &s)| (0..s).map(move |k| (2 * k + 1, 2 * s, i as u32)))
        .collect();
    points.sort_by(|a, b| (a.0 * b.1).cmp(&(b.0 * a.1)).then(a.2.cmp(&b.2)));
    points.into_iter().map(|(_, _, i)| i).collect()
}

/// All compiled zones plus what answering needs besides them.
#[derive(Debug, Default)]
pub struct Compiled {
    /// Zones, most specific (longest apex) first so nested zones win.
    pub zones: Vec<Arc<ZoneTable>>,
    pub geo: Arc<GeoTable>,
    /// Answers carry capped TTLs because the data is older than `staleAfter`.
    pub stale: bool,
    /// Apexes of configured zones that have no snapshot yet: SERVFAIL, never NXDOMAIN,
    /// so resolvers ask another server instead of caching a denial.
    pub pending: Vec<Box<[u8]>>,
}

impl Compiled {
    /// The zone that holds wire name `name`.
    pub fn zone_of(&self, name: &[u8]) -> Option<&ZoneTable> {
        self.zones
            .iter()
            .find(|z| wire::is_within(name, &z.apex))
            .map(|z| z.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(addr: &str, weight: u32) -> Target {
        Target {
            address: addr.parse().unwrap(),
            cluster: String::new(),
            region: String::new(),
            weight,
            share: None,
        }
    }

    /// Every reply of a wheel, one per slot, as its bytes and record count.
    fn replies(w: &Wheel) -> Vec<(u16, Vec<u8>)> {
        (0..w.slots())
            .map(|spin| {
                let p = w.pick(spin);
                (p.an, p.parts.concat())
            })
            .collect()
    }

    fn leaders(w: &Wheel) -> Vec<u8> {
        // Last octet of the first A record in each reply (owner 2 + fixed 10 + 3 bytes).
        replies(w).iter().map(|(_, b)| b[15]).collect()
    }

    #[test]
    fn no_ttl_served_is_longer_than_a_day_whatever_the_input_says() {
        let opts = CompileOptions::default();
        assert_eq!(opts.ttl(u32::MAX), lifeline_model::limits::TTL_MAX);
        assert_eq!(opts.ttl(30), 30);
        let stale = CompileOptions {
            ttl_cap: Some(30),
            ..CompileOptions::default()
        };
        assert_eq!(stale.ttl(u32::MAX), 30);
    }

    #[test]
    fn equal_weights_give_every_rotation_once() {
        let ts = [t("10.0.0.1", 1), t("10.0.0.2", 1), t("10.0.0.3", 1)];
        let refs: Vec<&Target> = ts.iter().collect();
        let w = wheel(&refs, usize::MAX, 60, &wire::pointer(12));
        assert_eq!(leaders(&w), [1, 2, 3]);
        assert!(replies(&w).iter().all(|(an, b)| *an == 3 && b.len() == 48));
    }

    #[test]
    fn unequal_weights_lead_in_proportion_and_smoothly() {
        let ts = [t("10.0.0.1", 3), t("10.0.0.2", 1)];
        let refs: Vec<&Target> = ts.iter().collect();
        let w = wheel(&refs, 1, 60, &wire::pointer(12));
        let l = leaders(&w);
        assert_eq!(l.iter().filter(|x| **x == 1).count(), 3);
        assert_eq!(l.iter().filter(|x| **x == 2).count(), 1);
        assert!(
            replies(&w).iter().all(|(an, _)| *an == 1),
            "maxAnswers honoured"
        );
    }

    #[test]
    fn zero_weights_are_used_only_when_nothing_else_has_weight() {
        let ts = [t("10.0.0.1", 0), t("10.0.0.2", 5)];
        let refs: Vec<&Target> = ts.iter().collect();
        let w = wheel(&refs, usize::MAX, 60, &wire::pointer(12));
        assert_eq!(leaders(&w), [2]);
        assert_eq!(w.pick(0).an, 1);
        let zeros = [t("10.0.0.1", 0), t("10.0.0.2", 0)];
        let refs: Vec<&Target> = zeros.iter().collect();
        assert_eq!(wheel(&refs, usize::MAX, 60, &wire::pointer(12)).slots(), 2);
    }

    #[test]
    fn huge_weights_keep_the_wheel_small() {
        let ts = [
            t("10.0.0.1", 1_000_000),
            t("10.0.0.2", 1),
            t("10.0.0.3", 250_000),
        ];
        let refs: Vec<&Target> = ts.iter().collect();
        let w = wheel(&refs, usize::MAX, 60, &wire::pointer(12));
        assert!(w.slots() <= MAX_WHEEL + ts.len(), "{}", w.slots());
        assert!(
            leaders(&w).contains(&2),
            "every weighted target leads sometimes"
        );
    }

    fn many(n: usize, weight: impl Fn(usize) -> u32) -> Vec<Target> {
        (0..n)
            .map(|i| {
                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i as u32);
                t(&ip.to_string(), weight(i))
            })
            .collect()
    }

    #[test]
    fn memory_per_name_is_linear_in_its_targets() {
        for weight in [|_| 100, |i| (i % 7) as u32 + 1] {
            let small = many(500, weight);
            let large = many(5_000, weight);
            // No maxAnswers: every reply holds every target, the worst case.
            let bytes = |ts: &[Target]| {
                let refs: Vec<&Target> = ts.iter().collect();
                wheel(&refs, usize::MAX, 60, &wire::pointer(12)).heap_bytes()
            };
            let (s, l) = (bytes(&small), bytes(&large));
            // Ten times the targets, about ten times the bytes (not a hundred).
            assert!(l <= 11 * s, "500 targets: {s} bytes, 5k: {l} bytes");
            assert!(l <= 5_000 * (16 + 4) + 64, "{l} bytes for 5k targets");
        }
    }

    #[test]
    fn a_window_wraps_around_the_ring_and_covers_every_target() {
        let ts = many(10, |_| 1);
        let refs: Vec<&Target> = ts.iter().collect();
        let w = wheel(&refs, 4, 60, &wire::pointer(12));
        assert_eq!(w.slots(), 10);
        let last = w.pick(8);
        assert_eq!(last.an, 4);
        let firsts: Vec<u8> = [last.parts[1], last.parts[2]]
            .concat()
            .chunks(16)
            .map(|rr| rr[15])
            .collect();
        assert_eq!(firsts, [8, 9, 0, 1]);
        let mut seen = std::collections::BTreeSet::new();
        for spin in 0..w.slots() {
            for rr in w.pick(spin).parts.concat()[..].chunks(16) {
                seen.insert(rr[15]);
            }
        }
        assert_eq!(seen.len(), 10);
    }

    #[test]
    fn record_sets_too_large_for_any_message_are_refused_with_the_reason() {
        let set = |n: usize, max: Option<u16>| NameRecords {
            address: Some(AddressSet {
                ttl: 30,
                targets: many(n, |_| 1),
                max_answers: max,
                geo: false,
                standby: Vec::new(),
            }),
            ..NameRecords::default()
        };
        assert_eq!(check_records(&set(10_000, Some(8)), false), None);
        assert_eq!(check_records(&set(4_000, None), false), None);
        let problem = check_records(&set(10_000, None), false).expect("refused");
        assert!(
            problem.contains("10000 A records take 160000 bytes"),
            "{problem}"
        );
    }
}
