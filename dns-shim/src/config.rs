//! Configuration the DNS shim needs: the zones it is authoritative for, where it listens,
//! where it keeps its snapshots, and how it maps clients to regions.
//!
//! These types are embedded in the process configuration file (`lifeline.yaml`), so
//! every struct rejects unknown fields.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One zone served authoritatively, with the data for its SOA and NS records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneConfig {
    /// Zone apex, e.g. `global.example.com` (a trailing dot is optional).
    pub origin: String,
    /// Primary name server for the SOA MNAME field.
    pub primary_ns: String,
    /// Responsible mailbox in DNS form for the SOA RNAME field (`hostmaster.example.com`).
    pub hostmaster: String,
    /// Names of the NS records at the apex; at least one.
    pub nameservers: Vec<String>,
    /// TTL of SOA and NS records, seconds.
    #[serde(default = "default_zone_ttl")]
    pub ttl: u32,
    /// SOA refresh, seconds.
    #[serde(default = "default_refresh")]
    pub refresh: u32,
    /// SOA retry, seconds.
    #[serde(default = "default_retry")]
    pub retry: u32,
    /// SOA expire, seconds.
    #[serde(default = "default_expire")]
    pub expire: u32,
    /// SOA minimum: the TTL of negative answers (RFC 2308), seconds.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: u32,
    /// Namespaces whose FailoverPolicies may publish names in this zone; every
    /// namespace when absent. The DNS server ignores it; the controller enforces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// Addresses of the zone's own name servers that lie inside it (`ns1.<zone>`),
    /// answered authoritatively so that the parent zone can delegate to them. Keys must
    /// be names listed in `nameservers`; no policy may claim any name server.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nameserver_addresses: BTreeMap<String, Vec<IpAddr>>,
    /// FailoverPolicies publishing names in this zone may look for their service in
    /// another namespace than their own (`spec.service.namespace`). Off by default: on
    /// a management cluster shared by teams, a policy must not publish another team's
    /// service.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_cross_namespace_services: bool,
    /// Zone transfer to secondary servers (Lifeline as a hidden primary); off when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferConfig>,
}

/// Who may copy a zone, and who is told when it changes.
///
/// ```yaml
/// transfer:
///   allow: ["192.0.2.0/24"]     # source prefixes that may AXFR/IXFR over TCP
///   notify: ["192.0.2.53:53"]   # secondaries sent a NOTIFY on each new serial
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransferConfig {
    /// Source prefixes allowed to transfer the zone; every other client is refused.
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// Secondaries told of each new serial (RFC 1996), as `address:port`.
    #[serde(default)]
    pub notify: Vec<SocketAddr>,
    /// Transfers of this zone sent at once; one more is refused (REFUSED, counted) and
    /// the secondary retries later.
    #[serde(default = "default_max_transfers")]
    pub max_transfers: usize,
    /// Transfers sent at once to one client prefix (/24 for IPv4, /56 for IPv6), so
    /// one host cannot take every place from the others.
    #[serde(default = "default_max_transfers_per_prefix")]
    pub max_transfers_per_prefix: usize,
}

fn default_max_transfers() -> usize {
    16
}

fn default_max_transfers_per_prefix() -> usize {
    4
}

/// Most transfers a zone may allow at once: each holds a thread while it is sent.
pub const TRANSFERS_MAX: usize = 256;

/// Most secondaries a zone may notify, and most prefixes it may allow: each costs
/// work on every change.
pub const TRANSFER_PEERS_MAX: usize = 64;

fn default_zone_ttl() -> u32 {
    3600
}
fn default_refresh() -> u32 {
    3600
}
fn default_retry() -> u32 {
    600
}
fn default_expire() -> u32 {
    604_800
}
fn default_negative_ttl() -> u32 {
    30
}

/// Settings of the DNS server itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsConfig {
    /// UDP listen addresses.
    #[serde(default = "default_listen")]
    pub udp: Vec<SocketAddr>,
    /// TCP listen addresses.
    #[serde(default = "default_listen")]
    pub tcp: Vec<SocketAddr>,
    /// Directory where snapshots are persisted (two generations are kept).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Client prefix → region table for `Geo` answers; longest prefix wins.
    #[serde(default)]
    pub geo: Vec<GeoPrefix>,
    /// TTL given to answers once the snapshot is older than `staleAfter` (RFC 8767 suggests 30).
    #[serde(default = "default_stale_ttl")]
    pub stale_ttl: u32,
    /// Age after which the snapshot counts as stale, e.g. `"5m"`.
    #[serde(
        default = "default_stale_after",
        with = "lifeline_model::duration::text"
    )]
    pub stale_after: Duration,
    /// Optional response-rate limiting per client prefix; off when absent.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Directory watched for snapshot JSON files (`lifeline dns`); none when absent.
    #[serde(default)]
    pub source_dir: Option<PathBuf>,
    /// Largest UDP response sent and the EDNS payload size advertised, bytes.
    #[serde(default = "default_max_udp_payload")]
    pub max_udp_payload: u16,
    /// When a zone's journal of changes is folded into a new snapshot file.
    #[serde(default)]
    pub journal: JournalConfig,
}

/// When the journal of changes is folded into a whole snapshot (whichever comes
/// first). Smaller numbers make restarts replay less and write whole zones more often.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JournalConfig {
    /// Changes after which a snapshot is written.
    #[serde(default = "default_compact_entries")]
    pub compact_after_entries: u32,
    /// Journal bytes after which a snapshot is written.
    #[serde(default = "default_compact_bytes")]
    pub compact_after_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            compact_after_entries: default_compact_entries(),
            compact_after_bytes: default_compact_bytes(),
        }
    }
}

fn default_compact_entries() -> u32 {
    JournalLimits::default().entries as u32
}
fn default_compact_bytes() -> u64 {
    JournalLimits::default().bytes
}

impl JournalConfig {
    pub(crate) fn limits(&self) -> JournalLimits {
        JournalLimits {
            entries: self.compact_after_entries as usize,
            bytes: self.compact_after_bytes,
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            udp: default_listen(),
            tcp: default_listen(),
            data_dir: default_data_dir(),
            geo: Vec::new(),
            stale_ttl: default_stale_ttl(),
            stale_after: default_stale_after(),
            rate_limit: None,
            source_dir: None,
            max_udp_payload: default_max_udp_payload(),
            journal: JournalConfig::default(),
        }
    }
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 5353))]
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/lifeline")
}
fn default_stale_ttl() -> u32 {
    30
}
/// 1232 bytes: the DNS Flag Day 2020 value, which fits unfragmented in IPv6's minimum
/// MTU with headroom for tunnels.
fn default_max_udp_payload() -> u16 {
    1232
}
fn default_stale_after() -> Duration {
    Duration::from_secs(300)
}

/// A client prefix mapped to a region name (the `region` of MemberClusters).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GeoPrefix {
    pub prefix: IpNet,
    pub region: String,
}

/// Response-rate limiting: responses per second allowed per client prefix.
///
/// Off unless `dns.rateLimit` is present. Applies to UDP only (TCP cannot be spoofed
/// for reflection and is never limited). Over the limit, responses are dropped, except
/// that every second one "slips" out truncated (TC set, no records) so a legitimate
/// client sharing a busy prefix retries over TCP. Example:
/// `rateLimit: {responsesPerSecond: 50, ipv4PrefixLen: 24, ipv6PrefixLen: 56}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Responses per second per prefix.
    pub responses_per_second: u32,
    /// IPv4 prefix length that groups clients (default 24).
    #[serde(default = "default_v4_prefix")]
    pub ipv4_prefix_len: u8,
    /// IPv6 prefix length that groups clients (default 56).
    #[serde(default = "default_v6_prefix")]
    pub ipv6_prefix_len: u8,
}

fn default_v4_prefix() -> u8 {
    24
}
fn default_v6_prefix() -> u8 {
    56
}

impl DnsConfig {
    /// Every problem with the `dns` section, as (field path, problem).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut err = |path: String, msg: String| p.push((path, msg));
        if self.udp.is_empty() && self.tcp.is_empty() {
            err("dns.udp".into(), "no UDP or TCP listen address".into());
        }
        if self.data_dir.as_os_str().is_empty() {
            err("dns.dataDir".into(), "must not be empty".into());
        }
        if self.stale_after.is_zero() {
            err("dns.staleAfter".into(), "must be positive".into());
        }
        if self.stale_ttl == 0 {
            err("dns.staleTtl".into(), "must be at least 1 second".into());
        }
        if !(512..=4096).contains(&self.max_udp_payload) {
            err(
                "dns.maxUdpPayload".into(),
                format!("{} is outside 512..=4096", self.max_udp_payload),
            );
        }
        for (i, g) in self.geo.iter().enumerate() {
            if g.region.trim().is_empty() {
                err(format!("dns.geo[{i}].region"), "must not be empty".into());
            }
            if self.geo[..i]
                .iter()
                .any(|o| o.prefix.trunc() == g.prefix.trunc())
            {
                err(
                    format!("dns.geo[{i}].prefix"),
                    format!("{} listed twice", g.prefix),
                );
            }
        }
        if self.journal.compact_after_entries == 0 || self.journal.compact_after_bytes == 0 {
            err(
                "dns.journal".into(),
                "compactAfterEntries and compactAfterBytes must be at least 1".into(),
            );
        }
        if let Some(r) = &self.rate_limit {
            if r.responses_per_second == 0 {
                err(
                    "dns.rateLimit.responsesPerSecond".into(),
                    "must be at least 1 (remove rateLimit to turn limiting off)".into(),
                );
            }
            if r.ipv4_prefix_len > 32 {
                err(
                    "dns.rateLimit.ipv4PrefixLen".into(),
                    "must be at most 32".into(),
                );
            }
            if r.ipv6_prefix_len > 128 {
                err(
                    "dns.rateLimit.ipv6PrefixLen".into(),
                    "must be at most 128".into(),
                );
            }
        }
        p
    }
}

impl ZoneConfig {
    /// Every problem with this zone, paths prefixed with `path` (e.g. `zones[0]`).
    pub fn validate(&self, path: &str) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let name_ok = |n: &str| match crate::wire::normalize(n, "") {
            Ok(n) if n.is_empty() => Err("the root zone is not supported".to_owned()),
            Ok(n) => Ok(n),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = name_ok(&self.origin) {
            p.push((format!("{path}.origin"), e));
        }
        if let Err(e) = name_ok(&self.primary_ns) {
            p.push((format!("{path}.primaryNs"), e));
        }
        if let Err(e) = name_ok(&self.hostmaster) {
            p.push((format!("{path}.hostmaster"), e));
        }
        if self.nameservers.is_empty() {
            p.push((
                format!("{path}.nameservers"),
                "at least one is required".into(),
            ));
        }
        for (i, n) in self.nameservers.iter().enumerate() {
            if let Err(e) = name_ok(n) {
                p.push((format!("{path}.nameservers[{i}]"), e));
            }
        }
        let origin = crate::wire::normalize(&self.origin, "").unwrap_or_default();
        let servers: Vec<String> = self
            .nameservers
            .iter()
            .filter_map(|n| crate::wire::normalize(n, "").ok())
            .collect();
        for (name, addresses) in &self.nameserver_addresses {
            let at = format!("{path}.nameserverAddresses[{name:?}]");
            let Ok(normal) = crate::wire::normalize(name, "") else {
                p.push((at, "is not a valid DNS name".into()));
                continue;
            };
            if !servers.contains(&normal) {
                p.push((at, "is not one of the zone's nameservers".into()));
            } else if normal != origin && !normal.ends_with(&format!(".{origin}")) {
                p.push((
                    at,
                    format!(
                        "is not inside zone {origin}: only in-zone name servers need addresses here"
                    ),
                ));
            } else if addresses.is_empty()
                || addresses.len() > lifeline_model::limits::ADDRESSES_MAX
            {
                p.push((
                    at,
                    format!(
                        "must list 1 to {} addresses",
                        lifeline_model::limits::ADDRESSES_MAX
                    ),
                ));
            }
        }
        if self.retry > self.refresh {
            p.push((format!("{path}.retry"), "should not exceed refresh".into()));
        }
        if let Some(t) = &self.transfer {
            if t.allow.is_empty() && t.notify.is_empty() {
                p.push((
                    format!("{path}.transfer"),
                    "lists no allowed prefix and no secondary to notify (remove transfer to turn it off)".into(),
                ));
            }
            for (field, len) in [("allow", t.allow.len()), ("notify", t.notify.len())] {
                if len > TRANSFER_PEERS_MAX {
                    p.push((
                        format!("{path}.transfer.{field}"),
                        format!("lists {len}; at most {TRANSFER_PEERS_MAX}"),
                    ));
                }
            }
            for (i, a) in t.notify.iter().enumerate() {
                if a.port() == 0 || a.ip().is_unspecified() {
                    p.push((
                        format!("{path}.transfer.notify[{i}]"),
                        format!("{a} is not an address a NOTIFY can be sent to"),
                    ));
                }
                if let Some(first) = t.notify[..i].iter().position(|b| b == a) {
                    p.push((
                        format!("{path}.transfer.notify[{i}]"),
                        format!("{a} is listed already (notify[{first}]); each secondary once"),
                    ));
                }
            }
            for (field, n) in [
                ("maxTransfers", t.max_transfers),
                ("maxTransfersPerPrefix", t.max_transfers_per_prefix),
            ] {
                if !(1..=TRANSFERS_MAX).contains(&n) {
                    p.push((
                        format!("{path}.transfer.{field}"),
                        format!("{n} is outside 1..={TRANSFERS_MAX}"),
                    ));
                }
            }
        }
        p
    }
}

/// Validates the zones and the `dns` section together: every problem, with its path.
pub fn validate(dns: &DnsConfig, zones: &[ZoneConfig]) -> Vec<(String, String)> {
    let mut p = Vec::new();
    if zones.is_empty() {
        p.push(("zones".into(), "at least one zone is required".into()));
    }
    let mut seen: Vec<String> = Vec::new();
    for (i, z) in zones.iter().enumerate() {
        p.extend(z.validate(&format!("zones[{i}]")));
        if let Ok(o) = crate::wire::normalize(&z.origin, "") {
            if seen.contains(&o) {
                p.push((
                    format!("zones[{i}].origin"),
                    format!("zone {o} listed twice"),
                ));
            }
            seen.push(o);
        }
    }
    p.extend(dns.validate());
    p
}

/// When the journal is folded into a new snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalLimits {
    /// Entries after which a snapshot is written.
    pub entries: usize,
    /// Journal bytes after which a snapshot is written.
    pub bytes: u64,
}

impl Default for JournalLimits {
    fn default() -> Self {
        Self {
            entries: 10_000,
            bytes: 16 << 20,
        }
    }
}
