//! Response-rate limiting per client prefix (UDP only; off unless configured).
//!
//! An authoritative server on UDP can be used to reflect traffic at a spoofed victim.
//! Each client prefix (a /24 or /56 by default) gets a token bucket refilled at
//! `responsesPerSecond`; beyond it responses are dropped, except that every second
//! limited response "slips" out truncated, so a real client behind a busy prefix can
//! still retry over TCP, which is never limited.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use ipnet::IpNet;
use parking_lot::Mutex;

use crate::config::RateLimitConfig;

const SHARDS: usize = 16;
/// Buckets idle this long are forgotten, bounding memory under address scans.
const IDLE_SECS: f64 = 60.0;
const MAX_PER_SHARD: usize = 65_536;

/// What to do with one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Over the limit: send only a truncated reply.
    Slip,
    Drop,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: f64,
    limited: u64,
}

/// Token buckets keyed by client prefix.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    v4_len: u8,
    v6_len: u8,
    start: Instant,
    shards: Vec<Mutex<HashMap<IpNet, Bucket>>>,
    limited: AtomicU64,
}

impl RateLimiter {
    pub fn new(cfg: &RateLimitConfig) -> Self {
        Self {
            rate: f64::from(cfg.responses_per_second.max(1)),
            v4_len: cfg.ipv4_prefix_len.min(32),
            v6_len: cfg.ipv6_prefix_len.min(128),
            start: Instant::now(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            limited: AtomicU64::new(0),
        }
    }

    /// Charges one response to `ip`'s prefix.
    pub fn check(&self, ip: IpAddr) -> Verdict {
        let prefix = match ip {
            IpAddr::V4(a) => IpNet::new(IpAddr::V4(a), self.v4_len),
            IpAddr::V6(a) => IpNet::new(IpAddr::V6(a), self.v6_len),
        }
        .map(|p| p.trunc())
        .unwrap_or_else(|_| IpNet::from(ip));
        let now = self.start.elapsed().as_secs_f64();
        let shard = &self.shards[shard_of(&prefix)];
        let mut map = shard.lock();
        if map.len() >= MAX_PER_SHARD {
            map.retain(|_, b| now - b.last < IDLE_SECS);
        }
        let b = map.entry(prefix).or_insert(Bucket {
            tokens: self.rate,
            last: now,
            limited: 0,
        });
        b.tokens = (b.tokens + (now - b.last) * self.rate).min(self.rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Verdict::Pass;
        }
        b.limited += 1;
        self.limited.fetch_add(1, Ordering::Relaxed);
        if b.limited.is_multiple_of(2) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

fn shard_of(p: &IpNet) -> usize {
    let h = match p.addr() {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            (v >> 64) as u64 ^ v as u64
        }
    };
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
}
