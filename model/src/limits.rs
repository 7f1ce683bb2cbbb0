//! Upper (and lower) bounds of every number an operator can write in a Lifeline document.
//!
//! The CRD schema carries the same bounds (OpenAPI `minimum`/`maximum`/`maxItems`, and
//! CEL rules for durations), the Rust validation checks them for files, and the engine,
//! prober and DNS server clamp to them for data that never passed validation (read back
//! from etcd or disk). A test compares the generated CRDs with these constants.
//!
//! Why these values:
//! - **TTL ≤ 1 day**: a longer TTL outlives any failover; resolvers cap near there anyway.
//! - **Hold-down, ramp and maxStale ≤ 7 days**: a week covers a weekend change freeze and
//!   still keeps every `SystemTime` sum far from overflow.
//! - **Probe interval 100 ms to 1 hour**: a target probed less often than hourly is not
//!   health-checked; ten probes a second per address is already load, not more signal.
//! - **Thresholds, ramp steps ≤ 100**: beyond that hysteresis is a stuck switch.
//! - **Weight ≤ 1000, priority ≤ 100**: permille resolution, and tiers an operator can read.
//! - **Targets ≤ 64 per policy**, **64 addresses per target or fallback list**: a
//!   policy lists member clusters, not endpoints.
//! - **maxAnswers 1..=64, default 8** (Route 53 multivalue answers 8): 64 A records still
//!   fit a 1232-byte UDP reply; more is never useful to one client.
//! - **10,000 static addresses per MemberCluster**: about 400 KB of JSON at worst, well
//!   inside an object's 1.5 MiB limit in etcd.

use std::time::Duration;

/// Answer TTL, seconds.
pub const TTL_MIN: u32 = 1;
pub const TTL_MAX: u32 = 86_400;

/// Targets of one policy.
pub const TARGETS_MAX: usize = 64;
/// Addresses listed on one target, or as fallback addresses.
pub const ADDRESSES_MAX: usize = 64;
/// Target priority (tier).
pub const PRIORITY_MAX: u32 = 100;
/// Target weight (0 is a standby).
pub const WEIGHT_MAX: u32 = 1000;

/// Addresses handed out in one reply.
pub const MAX_ANSWERS_MIN: u16 = 1;
pub const MAX_ANSWERS_MAX: u16 = 64;
/// When a policy does not say: Route 53 multivalue answers' figure.
pub const MAX_ANSWERS_DEFAULT: u16 = 8;

/// Consecutive probe results that change a target's health.
pub const THRESHOLD_MIN: u32 = 1;
pub const THRESHOLD_MAX: u32 = 100;
/// Steps of a failback ramp.
pub const RAMP_STEPS_MIN: u32 = 1;
pub const RAMP_STEPS_MAX: u32 = 100;

/// Probe interval.
pub const PROBE_INTERVAL_MIN: Duration = Duration::from_millis(100);
pub const PROBE_INTERVAL_MAX: Duration = Duration::from_secs(3600);
/// Probe timeout (and never more than the interval).
pub const PROBE_TIMEOUT_MAX: Duration = PROBE_INTERVAL_MAX;
/// Hold-down, ramp duration and `maxStale`.
pub const LONG_DURATION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// The same bounds as the CEL literals in the CRD schema.
pub const PROBE_INTERVAL_MIN_TEXT: &str = "100ms";
pub const PROBE_INTERVAL_MAX_TEXT: &str = "1h";
pub const LONG_DURATION_MAX_TEXT: &str = "168h";
/// A health check's `fastInterval` when it does not say: the shortest interval, so a
/// first failure is confirmed (or dismissed) as soon as probing allows.
pub const PROBE_FAST_INTERVAL_DEFAULT_TEXT: &str = PROBE_INTERVAL_MIN_TEXT;

/// Static addresses of one MemberCluster.
pub const CLUSTER_ADDRESSES_MAX: usize = 10_000;
/// Addresses of one target probed in one round. A target with more is probed in
/// rotating batches of this many: its failing addresses again first (up to half the
/// batch), then the next addresses in turn, so each address is checked every
/// `ceil(addresses / batch)` rounds at worst. Bounds the connections one target can hold.
pub const PROBE_ADDRESSES_PER_ROUND: usize = 32;
/// Operator overrides in force at once (expired ones leave the set; the audit keeps
/// them). Far more than any incident needs, and it bounds what every decision and every
/// replica's DNS server reads.
pub const OVERRIDES_MAX: usize = 1000;
/// Expected HTTP statuses of one check.
pub const EXPECTED_STATUS_MAX: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_duration;

    #[test]
    fn texts_match_the_durations() {
        assert_eq!(
            parse_duration(PROBE_INTERVAL_MIN_TEXT),
            Ok(PROBE_INTERVAL_MIN)
        );
        assert_eq!(
            parse_duration(PROBE_INTERVAL_MAX_TEXT),
            Ok(PROBE_INTERVAL_MAX)
        );
        assert_eq!(
            parse_duration(LONG_DURATION_MAX_TEXT),
            Ok(LONG_DURATION_MAX)
        );
    }
}
