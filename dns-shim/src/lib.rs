//! Lifeline's authoritative DNS shim.

pub mod config;

pub use config::{DnsConfig, GeoPrefix, RateLimitConfig, ZoneConfig};
