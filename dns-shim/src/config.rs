//! Configuration the DNS shim needs: the zones it is authoritative for, where it listens,
//! where it keeps its snapshots, and how it maps clients to regions.
//!
//! These types are embedded in the process configuration file (`lifeline.yaml`), so
//! every struct rejects unknown fields.

use std::{net::SocketAddr, path::PathBuf};

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
}

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
    #[serde(default = "default_stale_after")]
    pub stale_after: String,
    /// Optional response-rate limiting per client prefix; off when absent.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
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
fn default_stale_after() -> String {
    "5m".to_owned()
}

/// A client prefix mapped to a region name (the `region` of MemberClusters).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GeoPrefix {
    pub prefix: IpNet,
    pub region: String,
}

/// Response-rate limiting: responses per second allowed per client prefix.
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
