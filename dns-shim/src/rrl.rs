//! Response-rate limiting per client prefix (UDP only; off unless configured).
//!
//! An authoritative server on UDP can be used to reflect traffic at a spoofed victim.
//! Each client prefix (a /24 or /56 by default) gets a token bucket refilled at
//! `responsesPerSecond`; beyond it responses are dropped, except that every second
//! limited response "slips" out truncated, so a real client behind a busy prefix can
//! still retry over TCP, which is never limited.
//!
//! The table has a fixed size ([`CAPACITY`] prefixes): a flood from any number of
//! distinct (spoofed) prefixes evicts the least recently charged entries of one small
//! set at a time, so memory stays bounded and each response costs the same.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use ipnet::IpNet;
use parking_lot::Mutex;

use crate::config::RateLimitConfig;

const SHARDS: usize = 16;
/// Sets per shard and prefixes per set: the table holds at most
/// `SHARDS * SETS * WAYS` (65,536) prefixes, whatever the spread of source addresses,
/// and a response looks at no more than `WAYS` of them.
const SETS: usize = 1024;
const WAYS: usize = 4;
/// Prefixes tracked at most.
pub const CAPACITY: usize = SHARDS * SETS * WAYS;

/// What to do with one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Over the limit: send only a truncated reply.
    Slip,
    Drop,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    prefix: IpNet,
    tokens: f64,
    last: f64,
    limited: u64,
}

/// One set: up to `WAYS` prefixes; a new prefix replaces the least recently used.
type Set = [Option<Bucket>; WAYS];

/// Token buckets keyed by client prefix, in a fixed-size set-associative table: a
/// flood of distinct prefixes evicts the least recently charged ones instead of
/// growing the table, and a busy prefix (charged often) stays.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    v4_len: u8,
    v6_len: u8,
    start: Instant,
    shards: Vec<Mutex<Vec<Set>>>,
    limited: AtomicU64,
}

impl RateLimiter {
    pub fn new(cfg: &RateLimitConfig) -> Self {
        Self {
            rate: f64::from(cfg.responses_per_second.max(1)),
            v4_len: cfg.ipv4_prefix_len.min(32),
            v6_len: cfg.ipv6_prefix_len.min(128),
            start: Instant::now(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(vec![[None; WAYS]; SETS]))
                .collect(),
            limited: AtomicU64::new(0),
        }
    }

    /// Prefixes tracked now (at most [`CAPACITY`]).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().iter().flatten().flatten().count())
            .sum()
    }

    /// Charges one response to `ip`'s prefix.
    pub fn check(&self, ip: IpAddr) -> Verdict {
        // An IPv4 client on a dual-stack socket arrives as `::ffff:a.b.c.d`: as an IPv6
        // address every IPv4 client would share one /56 bucket.
        let ip = ip.to_canonical();
        let prefix = match ip {
            IpAddr::V4(a) => IpNet::new(IpAddr::V4(a), self.v4_len),
            IpAddr::V6(a) => IpNet::new(IpAddr::V6(a), self.v6_len),
        }
        .map(|p| p.trunc())
        .unwrap_or_else(|_| IpNet::from(ip));
        let now = self.start.elapsed().as_secs_f64();
        let h = hash_of(&prefix);
        let shard = &self.shards[(h >> 60) as usize % SHARDS];
        let mut sets = shard.lock();
        let set = &mut sets[((h >> 40) as usize) % SETS];
        let way = match set
            .iter()
            .position(|b| b.is_some_and(|b| b.prefix == prefix))
        {
            Some(i) => i,
            None => {
                // An empty way, else the one charged longest ago.
                let i = set.iter().position(Option::is_none).unwrap_or_else(|| {
                    (0..WAYS)
                        .min_by(|&a, &b| {
                            let last = |i: usize| set[i].map_or(f64::MIN, |b| b.last);
                            last(a).total_cmp(&last(b))
                        })
                        .unwrap_or(0)
                });
                set[i] = Some(Bucket {
                    prefix,
                    tokens: self.rate,
                    last: now,
                    limited: 0,
                });
                i
            }
        };
        let Some(b) = set[way].as_mut() else {
            return Verdict::Pass;
        };
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

fn hash_of(p: &IpNet) -> u64 {
    let h = match p.addr() {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            (v >> 64) as u64 ^ v as u64
        }
    };
    // Fibonacci hashing spreads neighbouring prefixes over shards and sets.
    h.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn ipv4_clients_of_a_dual_stack_socket_have_buckets_of_their_own() {
        let rrl = limiter(1);
        let mapped = |a: u8| IpAddr::V6(std::net::Ipv4Addr::new(192, 0, a, 1).to_ipv6_mapped());
        // One client of 192.0.1.0/24 spends its bucket (bounded: a bucket holds little)...
        let mut spent = 0;
        while rrl.check(mapped(1)) == Verdict::Pass {
            spent += 1;
            assert!(spent < 1000, "the bucket never ran out");
        }
        // ...and a client of another /24 still has its own.
        assert_eq!(rrl.check(mapped(2)), Verdict::Pass);
        // The mapped form and the plain form are one client.
        assert_ne!(
            rrl.check(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 1, 9))),
            Verdict::Pass
        );
    }

    fn limiter(rate: u32) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            responses_per_second: rate,
            ipv4_prefix_len: 24,
            ipv6_prefix_len: 56,
        })
    }

    #[test]
    fn a_flood_of_a_million_prefixes_stays_within_the_table_and_spares_a_busy_one() {
        let rrl = limiter(5);
        let busy = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1));
        let mut busy_limited = 0;
        let mut times = Vec::new();
        let started = Instant::now();
        for i in 0..1_000_000u64 {
            // Distinct /56 prefixes, as a spoofed scan would send.
            let a = u128::from(i) << 72 | (0x2a00u128 << 112);
            rrl.check(IpAddr::V6(Ipv6Addr::from(a)));
            if i % 100 == 0 && rrl.check(busy) != Verdict::Pass {
                busy_limited += 1;
            }
            if i % 100_000 == 99_999 {
                times.push(started.elapsed());
            }
        }
        assert!(
            rrl.tracked() <= CAPACITY,
            "{} prefixes tracked",
            rrl.tracked()
        );
        // The busy prefix was charged 10,000 times at 5 per second: it stayed in the
        // table (a fresh bucket every time would never limit it).
        assert!(
            busy_limited > 9_000,
            "busy prefix limited {busy_limited} times"
        );
        let per: Vec<String> = times
            .windows(2)
            .map(|w| format!("{:?}", (w[1] - w[0]) / 100_000))
            .collect();
        eprintln!("per check, by 100k block: {per:?}");
    }

    #[test]
    fn neighbouring_prefixes_spread_over_the_whole_table() {
        let rrl = limiter(5);
        for i in 0..CAPACITY as u128 {
            rrl.check(IpAddr::V6(Ipv6Addr::from(i << 72)));
        }
        // Hashing /56 prefixes that differ only in their low bits must still use most
        // of the sets, or a scan would evict busy prefixes early.
        assert!(
            rrl.tracked() > CAPACITY / 2,
            "{} of {CAPACITY}",
            rrl.tracked()
        );
    }
}
