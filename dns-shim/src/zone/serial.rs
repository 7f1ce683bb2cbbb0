//! The SOA serial's rule: every change to what a zone answers moves the serial, the
//! serial never goes back, and servers given the same changes give the same serial.
//!
//! ```text
//!  what a zone answers = records (revision) + overrides in force + zone settings
//!                        + the stale TTL cap          ──digest──► basis
//!  basis unchanged  ─► serial unchanged (a restart, a lazy compile, a replayed start)
//!  basis changed    ─► serial = next(serial, stamp)
//!                        stamp: when the change was made, in Unix seconds
//!                          records       the decision's `decidedAt` (the leader's)
//!                          an override   its `createdAt`; an expiry its `expiresAt`
//!                          otherwise     now (a clear, settings, the stale cap)
//!                        next: the stamp when it is ahead, else serial + 1
//! ```
//!
//! Why time, as Knot's `serial-policy: unixtime` does, and not a counter: a counter
//! lives somewhere, and every place it could live is lost in some fault we serve
//! through. A revision restarts with a restored etcd, a data directory with its volume.
//! The clock is there after both, and it has moved on. A server that lost everything
//! starts at "now", which is ahead of any serial it gave before (unless changes came
//! faster than one a second for longer than it was down; see [`next`]). And because the
//! stamps come with the changes, replicas fed the same changes land on the same serial
//! without talking to each other; two that drifted apart (one missed a burst of changes
//! under a second apart) agree again at the next change a second later. `dateserial`
//! (YYYYMMDDnn) allows 100 changes a day before it runs ahead of its own date; a
//! controller fails over more often than that.
//!
//! A stamp is never taken past this server's clock, so a leader whose clock runs ahead
//! cannot push the serial where a restarted server would not find it.
//!
//! The serial and the basis it was given for are kept in `<zone>.serial` beside the
//! snapshots. A start that finds the same basis serves the same serial (a secondary need
//! not transfer anything); any other start moves it.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ZoneConfig;

const SUFFIX: &str = ".serial";

/// The serial a zone answers with, and a digest of what it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    pub serial: u32,
    /// Digest of the records' revision, the overrides in force, the zone's settings and
    /// the TTL cap ([`basis`]).
    pub basis: u64,
}

/// The serial after `prev` for a change made at `stamp` (Unix seconds): `stamp` when it
/// is ahead of `prev` in RFC 1982 terms, else `prev + 1`. Never behind `prev`.
pub fn next(prev: u32, stamp: u32) -> u32 {
    let ahead = stamp.wrapping_sub(prev);
    if ahead != 0 && ahead < 1 << 31 {
        stamp
    } else {
        prev.wrapping_add(1)
    }
}

/// `at` in Unix seconds, at most `now`'s (see the module docs), in the 32 bits a serial
/// holds.
pub fn stamp(at: SystemTime, now: SystemTime) -> u32 {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    secs(at).min(secs(now)) as u32
}

/// What a zone answers, as a digest: equal digests answer the same.
pub fn basis(revision: u64, overrides: u64, settings: u64, ttl_cap: Option<u32>) -> u64 {
    let mut h = Sha256::new();
    h.update(revision.to_be_bytes());
    h.update(overrides.to_be_bytes());
    h.update(settings.to_be_bytes());
    h.update(ttl_cap.map_or(u64::MAX, u64::from).to_be_bytes());
    first_u64(&h.finalize())
}

/// Digest of the settings that shape a zone's answers: SOA fields, name servers and
/// their addresses. Who may transfer it and who is notified change no answer.
pub fn settings_digest(zone: &ZoneConfig) -> u64 {
    let shaping = ZoneConfig {
        namespaces: None,
        allow_cross_namespace_services: false,
        transfer: None,
        ..zone.clone()
    };
    let bytes = serde_json::to_vec(&shaping).unwrap_or_default();
    first_u64(&Sha256::digest(&bytes))
}

/// Digest of a list of the overrides in force (their ids and what they do).
pub fn overrides_digest<'a>(
    overrides: impl Iterator<Item = &'a lifeline_model::overrides::Override>,
) -> u64 {
    let mut h = Sha256::new();
    for o in overrides {
        h.update(o.id.as_bytes());
        h.update([0]);
        h.update(o.cluster.as_bytes());
        h.update([0]);
        h.update(format!("{:?}", o.action).as_bytes());
        h.update([0]);
    }
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// Where the serial of `zone` is kept.
pub fn path(dir: &Path, zone: &str) -> PathBuf {
    dir.join(format!("{zone}{SUFFIX}"))
}

/// The serial kept for `zone`; `None` when there is none or it does not read (then the
/// zone starts from the clock).
pub fn load(dir: &Path, zone: &str) -> Option<Served> {
    let bytes = std::fs::read(path(dir, zone)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Keeps `served` as the serial of `zone` (creating the data directory when it is not
/// there yet: a zone's serial may be kept before its first snapshot).
pub fn write(dir: &Path, zone: &str, served: &Served) -> crate::Result<()> {
    let bytes = serde_json::to_vec(served)?;
    crate::disk::snapshots::write_atomic(dir, &format!("{zone}{SUFFIX}"), &bytes).map(drop)
}

/// SOA serial of a zone revision where no serial rule applies (a table compiled outside
/// a shim): its low 32 bits. A shim's zones follow [`crate::zone::serial`].
pub fn of_revision(revision: u64) -> u32 {
    revision as u32
}

/// Whether a secondary holding revision `have` sees revision `next` as newer
/// (RFC 1982 §3.2: a step of 1 to 2^31-1).
pub fn moves_forward(have: u64, next: u64) -> bool {
    next > have && next - have < 1 << 31
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_stamp_ahead_is_the_serial_and_one_behind_moves_it_by_one() {
        assert_eq!(next(100, 200), 200);
        assert_eq!(next(200, 200), 201);
        assert_eq!(next(200, 150), 201);
        // Across the 32-bit wrap the stamp still counts as ahead.
        assert_eq!(next(u32::MAX - 5, 3), 3);
        // A stamp 2^31 or more away reads as behind: one step instead.
        assert_eq!(next(10, 10 + (1 << 31)), 11);
    }

    #[test]
    fn a_serial_from_an_old_revision_moves_to_the_clock() {
        // A server that answered with revision-based serials (small numbers) and one
        // that lost its volume both land on the clock, which is ahead of either.
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(next(7, stamp(now, now)), 1_800_000_000);
        assert_eq!(next(4_000_000, stamp(now, now)), 1_800_000_000);
    }

    #[test]
    fn a_stamp_from_a_clock_ahead_is_taken_as_now() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(stamp(now + Duration::from_secs(3600), now), 1_800_000_000);
        assert_eq!(stamp(now - Duration::from_secs(5), now), 1_799_999_995);
    }

    #[test]
    fn only_settings_that_shape_answers_move_the_basis() {
        let zone: ZoneConfig = serde_json::from_value(serde_json::json!({
            "origin": "z.test", "primaryNs": "ns1.z.test", "hostmaster": "h.z.test",
            "nameservers": ["ns1.z.test"],
        }))
        .unwrap();
        let mut listed = zone.clone();
        listed.transfer = Some(crate::config::TransferConfig {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            notify: vec![],
            max_transfers: 16,
            max_transfers_per_prefix: 4,
        });
        assert_eq!(settings_digest(&zone), settings_digest(&listed));
        let mut refreshed = zone.clone();
        refreshed.refresh = 60;
        assert_ne!(settings_digest(&zone), settings_digest(&refreshed));
        let mut two = zone.clone();
        two.nameservers.push("ns2.z.test".into());
        assert_ne!(settings_digest(&zone), settings_digest(&two));
        assert_ne!(basis(1, 0, 0, None), basis(1, 0, 0, Some(30)));
        assert_ne!(basis(1, 0, 0, None), basis(2, 0, 0, None));
    }

    #[test]
    fn the_kept_serial_reads_back_and_a_torn_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        // The data directory does not exist yet: the first write makes it.
        let data = dir.path().join("data");
        let served = Served {
            serial: 42,
            basis: 7,
        };
        write(&data, "z.test", &served).unwrap();
        assert_eq!(load(&data, "z.test"), Some(served));
        std::fs::write(path(&data, "z.test"), b"{\"serial\":4").unwrap();
        assert_eq!(load(&data, "z.test"), None);
    }

    #[test]
    fn serials_move_forward_in_rfc_1982_terms() {
        assert!(moves_forward(1, 2));
        assert!(moves_forward(1, 1 + (1 << 31) - 1));
        assert!(!moves_forward(1, 1 + (1 << 31)));
        assert!(!moves_forward(5, 5));
        assert!(!moves_forward(5, 4));
        // Across the 32-bit wrap the serial still reads as newer.
        let have = u64::from(u32::MAX) - 1;
        let next = have + 10;
        assert!(moves_forward(have, next));
        assert!(next_ahead(of_revision(next), of_revision(have)));
        assert!(of_revision(next) < of_revision(have));
    }

    fn next_ahead(a: u32, b: u32) -> bool {
        let d = a.wrapping_sub(b);
        d != 0 && d < 1 << 31
    }
}
