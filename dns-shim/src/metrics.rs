//! Metrics. The answering path only bumps plain atomics; a prometheus-client
//! [`Collector`] turns them, and the shim's state, into metrics at scrape time. That
//! keeps label lookups and locks off the per-query path, and lets the controller
//! register the same collector in its own registry.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use crate::wire;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Query types counted by name; the rest are "other".
const QTYPES: [(u16, &str); 9] = [
    (wire::TYPE_A, "A"),
    (wire::TYPE_AAAA, "AAAA"),
    (wire::TYPE_SRV, "SRV"),
    (wire::TYPE_TXT, "TXT"),
    (wire::TYPE_CNAME, "CNAME"),
    (wire::TYPE_SOA, "SOA"),
    (wire::TYPE_NS, "NS"),
    (wire::TYPE_ANY, "ANY"),
    (0, "other"),
];
const RCODES: [(u16, &str); 8] = [
    (0, "NOERROR"),
    (1, "FORMERR"),
    (2, "SERVFAIL"),
    (3, "NXDOMAIN"),
    (4, "NOTIMP"),
    (5, "REFUSED"),
    (wire::RCODE_BADVERS, "BADVERS"),
    (u16::MAX, "other"),
];
/// Upper bounds of the response size buckets, bytes.
const SIZE_BUCKETS: [u64; 8] = [64, 128, 256, 512, 1024, 1232, 4096, 65535];

/// Counters bumped by the answering path.
#[derive(Debug)]
pub struct Counters {
    queries: Box<[AtomicU64]>,
    sizes: [AtomicU64; SIZE_BUCKETS.len()],
    size_sum: AtomicU64,
    pub stale_answers: Count,
    pub truncated: Count,
    pub dropped: Count,
    pub rate_limited: Count,
    /// Snapshots or override sets that could not be written (disk full, unwritable directory).
    pub persist_failures: Count,
    /// Zone transfers sent whole (AXFR, or IXFR answered with the whole zone).
    pub transfers_full: Count,
    /// IXFR answered with only what changed since the secondary's serial.
    pub transfers_incremental: Count,
    /// IXFR requests from a secondary already at the current serial.
    pub transfers_current: Count,
    /// Zone-transfer requests refused (not allowed, not a zone apex, over UDP).
    pub transfers_refused: Count,
    /// Transfers refused because the zone or the client prefix had as many running as
    /// allowed (also counted in `transfers_refused`).
    pub transfers_busy: Count,
    /// NOTIFY messages a secondary acknowledged.
    pub notifies_acknowledged: Count,
    /// NOTIFY attempts that got no acknowledgement (timed out, refused, unreachable).
    pub notifies_failed: Count,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            queries: (0..QTYPES.len() * RCODES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sizes: Default::default(),
            size_sum: AtomicU64::new(0),
            stale_answers: Count::default(),
            truncated: Count::default(),
            dropped: Count::default(),
            rate_limited: Count::default(),
            persist_failures: Count::default(),
            transfers_full: Count::default(),
            transfers_incremental: Count::default(),
            transfers_current: Count::default(),
            transfers_refused: Count::default(),
            transfers_busy: Count::default(),
            notifies_acknowledged: Count::default(),
            notifies_failed: Count::default(),
        }
    }
}

impl Counters {
    /// Records one response.
    pub fn record(&self, qtype: u16, rcode: u16, size: usize, stale: bool) {
        let t = QTYPES
            .iter()
            .position(|(c, _)| *c == qtype)
            .unwrap_or(QTYPES.len() - 1);
        let r = RCODES
            .iter()
            .position(|(c, _)| *c == rcode)
            .unwrap_or(RCODES.len() - 1);
        self.queries[t * RCODES.len() + r].fetch_add(1, Ordering::Relaxed);
        let b = SIZE_BUCKETS
            .iter()
            .position(|b| size as u64 <= *b)
            .unwrap_or(SIZE_BUCKETS.len() - 1);
        self.sizes[b].fetch_add(1, Ordering::Relaxed);
        self.size_sum.fetch_add(size as u64, Ordering::Relaxed);
        if stale {
            self.stale_answers.inc();
        }
    }

    /// Responses counted so far for a query type name and rcode name (for tests).
    pub fn queries(&self, qtype: &str, rcode: &str) -> u64 {
        let t = QTYPES.iter().position(|(_, n)| *n == qtype);
        let r = RCODES.iter().position(|(_, n)| *n == rcode);
        match (t, r) {
            (Some(t), Some(r)) => self.queries[t * RCODES.len() + r].load(Ordering::Relaxed),
            _ => 0,
        }
    }
}

/// Point-in-time view of the shim used by the collector.
pub(crate) trait StateView: Send + Sync + std::fmt::Debug + 'static {
    fn counters(&self) -> &Counters;
    fn state(&self) -> crate::ShimState;
}

/// The shim's metrics as a prometheus-client collector.
#[derive(Debug, Clone)]
pub struct ShimMetrics {
    pub(crate) view: Arc<dyn StateView>,
}

impl ShimMetrics {
    /// Adds the shim's metrics to `registry` (names start with `lifeline_dns_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }

    /// A registry holding only the shim's metrics, for the standalone command.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::default();
        self.register(&mut r);
        r
    }
}

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    m.encode_counter::<NoLabelSet, _, u64>(&v, None)
}

impl Collector for ShimMetrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let c = self.view.counters();
        {
            let mut m = enc.encode_descriptor(
                "lifeline_dns_queries",
                "DNS responses sent, by query type and response code",
                None,
                MetricType::Counter,
            )?;
            for (ti, (_, tname)) in QTYPES.iter().enumerate() {
                for (ri, (_, rname)) in RCODES.iter().enumerate() {
                    let v = c.queries[ti * RCODES.len() + ri].load(Ordering::Relaxed);
                    if v == 0 {
                        continue;
                    }
                    let labels = [("type", *tname), ("rcode", *rname)];
                    let f = m.encode_family(&labels)?;
                    v.encode_with(f)?;
                }
            }
        }
        counter(
            &mut enc,
            "lifeline_dns_stale_answers",
            "Responses served while the snapshot was older than staleAfter",
            c.stale_answers.get(),
        )?;
        counter(
            &mut enc,
            "lifeline_dns_truncated",
            "UDP responses truncated (TC set) because they did not fit",
            c.truncated.get(),
        )?;
        counter(
            &mut enc,
            "lifeline_dns_dropped",
            "Requests dropped without a response (too short, or not a query)",
            c.dropped.get(),
        )?;
        counter(
            &mut enc,
            "lifeline_dns_rate_limited",
            "UDP responses dropped or slipped by response-rate limiting",
            c.rate_limited.get(),
        )?;
        counter(
            &mut enc,
            "lifeline_dns_persist_failures",
            "Snapshots (or break-glass override sets) applied and answered but not written to the data directory (disk full, unwritable); the next change tries again",
            c.persist_failures.get(),
        )?;
        for (name, help, value) in [
            (
                "lifeline_dns_transfers_full",
                "Zone transfers sent whole: AXFR, or IXFR answered with the whole zone",
                c.transfers_full.get(),
            ),
            (
                "lifeline_dns_transfers_incremental",
                "IXFR answered with only what changed since the secondary's serial",
                c.transfers_incremental.get(),
            ),
            (
                "lifeline_dns_transfers_current",
                "IXFR requests from a secondary that already had the current serial",
                c.transfers_current.get(),
            ),
            (
                "lifeline_dns_transfers_refused",
                "Zone-transfer requests refused: source not allowed, name not a zone apex, over UDP, or too many running",
                c.transfers_refused.get(),
            ),
            (
                "lifeline_dns_transfers_busy",
                "Zone-transfer requests refused because the zone or the client prefix had as many transfers running as allowed",
                c.transfers_busy.get(),
            ),
            (
                "lifeline_dns_notifies_acknowledged",
                "NOTIFY messages a secondary acknowledged",
                c.notifies_acknowledged.get(),
            ),
            (
                "lifeline_dns_notifies_failed",
                "NOTIFY attempts left unacknowledged (timed out, refused or unreachable); each is retried with backoff",
                c.notifies_failed.get(),
            ),
        ] {
            counter(&mut enc, name, help, value)?;
        }
        {
            let mut m = enc.encode_descriptor(
                "lifeline_dns_response_size_bytes",
                "Size of DNS responses",
                None,
                MetricType::Histogram,
            )?;
            // Per-bucket counts; the encoder accumulates them and prints +Inf for MAX.
            let buckets: Vec<(f64, u64)> = SIZE_BUCKETS
                .iter()
                .zip(&c.sizes)
                .map(|(b, n)| (*b as f64, n.load(Ordering::Relaxed)))
                .chain(std::iter::once((f64::MAX, 0)))
                .collect();
            let count = buckets.iter().map(|(_, n)| n).sum();
            m.encode_histogram::<NoLabelSet>(
                c.size_sum.load(Ordering::Relaxed) as f64,
                count,
                &buckets,
                None,
            )?;
        }

        let state = self.view.state();
        {
            let mut m = enc.encode_descriptor(
                "lifeline_dns_ready",
                "1 when a snapshot is loaded and served",
                None,
                MetricType::Gauge,
            )?;
            m.encode_gauge(&i64::from(state.ready))?;
        }
        counter(
            &mut enc,
            "lifeline_dns_snapshot_load_errors",
            "Persisted or received snapshots rejected as corrupt or invalid",
            state.load_errors,
        )?;
        for (name, help) in [
            (
                "lifeline_dns_snapshot_revision",
                "Revision of the snapshot served per zone",
            ),
            (
                "lifeline_dns_soa_serial",
                "SOA serial answered per zone (moves with every change to what is answered)",
            ),
            (
                "lifeline_dns_drains_not_applied",
                "Names per zone whose break-glass drain this server did not apply because it would leave them no target; they keep their answer",
            ),
            (
                "lifeline_dns_snapshot_age_seconds",
                "Age of the decision behind the served snapshot per zone",
            ),
            (
                "lifeline_dns_snapshot_names",
                "Names in the served snapshot per zone",
            ),
            (
                "lifeline_dns_snapshot_rejected_records",
                "Names in the snapshot that could not be served per zone",
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for z in &state.zones {
                let labels = [("zone", z.origin.as_str())];
                let f = m.encode_family(&labels)?;
                match name {
                    "lifeline_dns_snapshot_revision" => z.revision.unwrap_or(0).encode_gauge(f)?,
                    "lifeline_dns_soa_serial" => {
                        u64::from(z.serial.unwrap_or(0)).encode_gauge(f)?
                    }
                    "lifeline_dns_drains_not_applied" => (z.drains_kept as u64).encode_gauge(f)?,
                    "lifeline_dns_snapshot_age_seconds" => {
                        z.age.map_or(-1.0, |a| a.as_secs_f64()).encode_gauge(f)?
                    }
                    "lifeline_dns_snapshot_names" => (z.names as u64).encode_gauge(f)?,
                    _ => (z.rejected as u64).encode_gauge(f)?,
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "lifeline_dns_source_connected",
                "1 while a snapshot source is connected",
                None,
                MetricType::Gauge,
            )?;
            for s in &state.sources {
                let labels = [("source", s.name.as_str())];
                let f = m.encode_family(&labels)?;
                i64::from(s.connected).encode_gauge(f)?;
            }
        }
        Ok(())
    }
}

/// Small helpers so the collector can encode plain numbers.
trait EncodeNumber {
    fn encode_with(self, m: prometheus_client::encoding::MetricEncoder<'_>) -> std::fmt::Result;
    fn encode_gauge(self, m: prometheus_client::encoding::MetricEncoder<'_>) -> std::fmt::Result;
}

impl EncodeNumber for u64 {
    fn encode_with(
        self,
        mut m: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> std::fmt::Result {
        m.encode_counter::<NoLabelSet, _, u64>(&self, None)
    }
    fn encode_gauge(
        self,
        mut m: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> std::fmt::Result {
        m.encode_gauge(&self)
    }
}

impl EncodeNumber for f64 {
    fn encode_with(
        self,
        mut m: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> std::fmt::Result {
        m.encode_counter::<NoLabelSet, _, f64>(&self, None)
    }
    fn encode_gauge(
        self,
        mut m: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> std::fmt::Result {
        m.encode_gauge(&self)
    }
}

impl EncodeNumber for i64 {
    fn encode_with(
        self,
        mut m: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> std::fmt::Result {
        m.encode_gauge(&self)
    }
    fn encode_gauge(
        self,
        mut m: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> std::fmt::Result {
        m.encode_gauge(&self)
    }
}
