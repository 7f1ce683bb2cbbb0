//! The journal: the changes made to a zone since its last snapshot file, appended one
//! after the other, so an update costs the bytes of what changed instead of a whole
//! zone written again.
//!
//! File `<zone>@<base>.journal` sits beside `<zone>@<base>.snapshot` and holds what came
//! after revision `base`:
//!
//! ```text
//! lifeline-journal 1 base=<base>\n
//! entry*   entry = length (u32, big endian) · SHA-256 of the body (32 bytes) · body
//!          body  = JSON {"from": <revision>, "patch": ZonePatch}
//! ```
//!
//! An entry is appended with one write and made durable with `fdatasync` before the
//! write counts as done. Each entry names the revision it applies to, so the chain is
//! checked as it is read. Reading stops at the first entry that is cut short, fails its
//! checksum, does not decode or does not follow the one before: a crash during an
//! append leaves exactly such a torn last entry, which is dropped (and cut off the
//! file, so later appends follow good ones), while every entry before it is used.
//!
//! The writer compacts: after [`Limits::entries`] entries or [`Limits::bytes`] bytes it
//! writes a whole snapshot at the newest revision and starts an empty journal on it.
//! That runs on the persistence thread, never on the answering path; a crash in the
//! middle leaves the previous snapshot and its journal, which still hold everything.

use std::{
    fs,
    io::{self, Read as _, Write as _},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use lifeline_model::{ZonePatch, ZoneSnapshot};

/// File name suffix of journals.
pub const SUFFIX: &str = ".journal";
const MAGIC: &str = "lifeline-journal";
const VERSION: u32 = 1;
/// Bytes before an entry's body: its length and its checksum.
const ENTRY_HEAD: usize = 4 + 32;
/// Largest entry read back: a patch of every name of a large zone fits; a length field
/// a torn write left as garbage cannot make the reader allocate more.
const ENTRY_MAX: usize = 256 << 20;

pub use crate::config::JournalLimits as Limits;
pub use crate::zone::history::Before;

/// One change: `patch` applies to the zone at revision `from`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub from: u64,
    pub patch: ZonePatch,
    /// The SOA serials the change took the zone between, for IXFR after a restart;
    /// absent in entries written before serials were kept (those offer no IXFR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serials: Option<[u32; 2]>,
}

/// The journal's path for the snapshot of `zone` at `base`.
pub fn path(dir: &Path, zone: &str, base: u64) -> PathBuf {
    dir.join(format!("{zone}@{base:020}{SUFFIX}"))
}

/// Encodes one entry as it is appended.
pub fn encode(entry: &Entry) -> serde_json::Result<Vec<u8>> {
    let body = serde_json::to_vec(entry)?;
    let mut out = Vec::with_capacity(ENTRY_HEAD + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&Sha256::digest(&body));
    out.extend_from_slice(&body);
    Ok(out)
}

/// Why reading a journal stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    #[error("not a journal of revision {0} (bad header)")]
    Header(u64),
    #[error("entry at byte {at} is cut short (a write that did not finish)")]
    Torn { at: u64 },
    #[error("entry at byte {at} fails its checksum")]
    Checksum { at: u64 },
    #[error("entry at byte {at} does not decode: {reason}")]
    Decode { at: u64, reason: String },
    #[error("entry at byte {at} applies to revision {from}, but the zone is at {have}")]
    Chain { at: u64, from: u64, have: u64 },
}

/// What replaying a journal did.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Entries applied, oldest first, each with the records its names had before it.
    pub entries: Vec<(Entry, Before)>,
    /// Bytes of the good part of the file (header and applied entries).
    pub good_bytes: u64,
    /// Why reading stopped early, if it did; everything after is dropped.
    pub stopped: Option<Stop>,
}

/// Applies the journal of `snapshot`'s revision in `dir` to `snapshot`, in place, as far
/// as its entries are whole and follow each other. A missing journal replays nothing.
/// The file is cut after the last good entry so that appends go on from there.
pub fn replay(dir: &Path, snapshot: &mut ZoneSnapshot) -> io::Result<Replayed> {
    snapshot.normalize_keys();
    let base = snapshot.revision;
    let file_path = path(dir, &snapshot.zone, base);
    let mut bytes = Vec::new();
    match fs::File::open(&file_path) {
        Ok(mut f) => f.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Replayed::default()),
        Err(e) => return Err(e),
    };
    let out = replay_bytes(&bytes, snapshot, base);
    if out.stopped.is_some() {
        let f = fs::OpenOptions::new().write(true).open(&file_path)?;
        f.set_len(out.good_bytes)?;
        f.sync_all()?;
    }
    Ok(out)
}

fn header(base: u64) -> String {
    format!("{MAGIC} {VERSION} base={base}\n")
}

fn replay_bytes(bytes: &[u8], snapshot: &mut ZoneSnapshot, base: u64) -> Replayed {
    let mut out = Replayed::default();
    let head = header(base);
    if !bytes.starts_with(head.as_bytes()) {
        out.stopped = Some(Stop::Header(base));
        return out;
    }
    let mut at = head.len();
    out.good_bytes = at as u64;
    while at < bytes.len() {
        let pos = at as u64;
        let Some(fixed) = bytes.get(at..at + ENTRY_HEAD) else {
            out.stopped = Some(Stop::Torn { at: pos });
            break;
        };
        let len = u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]) as usize;
        let body = match bytes.get(at + ENTRY_HEAD..at + ENTRY_HEAD + len) {
            Some(body) if len <= ENTRY_MAX => body,
            _ => {
                out.stopped = Some(Stop::Torn { at: pos });
                break;
            }
        };
        if Sha256::digest(body).as_slice() != &fixed[4..] {
            out.stopped = Some(Stop::Checksum { at: pos });
            break;
        }
        let entry: Entry = match serde_json::from_slice(body) {
            Ok(e) => e,
            Err(e) => {
                out.stopped = Some(Stop::Decode {
                    at: pos,
                    reason: e.to_string(),
                });
                break;
            }
        };
        if entry.from != snapshot.revision
            || !crate::zone::serial::moves_forward(entry.from, entry.patch.revision)
        {
            out.stopped = Some(Stop::Chain {
                at: pos,
                from: entry.from,
                have: snapshot.revision,
            });
            break;
        }
        let before = touched_before(&entry.patch, snapshot);
        entry.patch.apply_in_place(snapshot);
        out.entries.push((entry, before));
        at += ENTRY_HEAD + len;
        out.good_bytes = at as u64;
    }
    out
}

/// The keys of the names `patch` touches in `snapshot`, sorted, each once.
pub fn touched_keys(patch: &ZonePatch, snapshot: &ZoneSnapshot) -> Vec<String> {
    let mut keys: Vec<String> = patch
        .delete
        .iter()
        .chain(patch.upsert.keys())
        .map(|n| snapshot.key_of(n))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The records the names `patch` touches have in `snapshot` now (keys in key form).
pub fn touched_before(patch: &ZonePatch, snapshot: &ZoneSnapshot) -> Before {
    touched_keys(patch, snapshot)
        .into_iter()
        .map(|k| {
            let before = snapshot.names.get(&k).cloned();
            (k, before)
        })
        .collect()
}

/// The open journal of one zone, appended to by the persistence thread.
#[derive(Debug)]
pub struct Appender {
    file: fs::File,
    /// Revision of the snapshot file the journal builds on.
    pub base: u64,
    /// Revision after the last entry.
    pub head: u64,
    pub entries: usize,
    pub bytes: u64,
}

impl Appender {
    /// Starts an empty journal on the snapshot file of `zone` at `base` (replacing any
    /// journal of that revision), durable before it returns.
    pub fn start(dir: &Path, zone: &str, base: u64) -> io::Result<Self> {
        let p = path(dir, zone, base);
        let head = header(base);
        crate::disk::files::replace(&p, head.as_bytes()).map_err(|e| e.source)?;
        Self::resume(dir, zone, base, base, 0, head.len() as u64)
    }

    /// Opens the existing journal of `zone` at `base`, whose good part ends at `bytes`
    /// after `entries` entries reaching revision `head`.
    pub fn resume(
        dir: &Path,
        zone: &str,
        base: u64,
        head: u64,
        entries: usize,
        bytes: u64,
    ) -> io::Result<Self> {
        let file = fs::OpenOptions::new()
            .append(true)
            .mode(0o600)
            .open(path(dir, zone, base))?;
        Ok(Self {
            file,
            base,
            head,
            entries,
            bytes,
        })
    }

    /// Appends `entries` (which must follow the head) with one write, then makes them
    /// durable. On error the journal must not be appended to again: the caller writes
    /// a whole snapshot instead.
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<u64> {
        let mut batch = Vec::new();
        for e in entries {
            batch.extend(encode(e).map_err(io::Error::other)?);
        }
        self.file.write_all(&batch)?;
        self.file.sync_data()?;
        if let Some(last) = entries.last() {
            self.head = last.patch.revision;
        }
        self.entries += entries.len();
        self.bytes += batch.len() as u64;
        Ok(batch.len() as u64)
    }

    /// Whether the journal has grown past `limits` and a snapshot should be written.
    pub fn due(&self, limits: Limits) -> bool {
        self.entries >= limits.entries || self.bytes >= limits.bytes
    }
}

/// Removes the journals in `dir` of `zone` whose snapshot is not in `keep`.
pub fn prune(dir: &Path, zone: &str, keep: &[u64]) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((stem, base)) = name
            .strip_suffix(SUFFIX)
            .and_then(|s| s.rsplit_once('@'))
            .and_then(|(s, b)| Some((s, b.parse::<u64>().ok()?)))
        else {
            continue;
        };
        if stem == zone && !keep.contains(&base) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::SystemTime};

    use super::*;
    use lifeline_model::NameRecords;

    fn txt(text: &str) -> NameRecords {
        NameRecords {
            txt: Some(lifeline_model::TxtSet {
                ttl: 60,
                records: vec![text.into()],
            }),
            ..NameRecords::default()
        }
    }

    fn change(from: u64, name: &str, text: &str) -> Entry {
        Entry {
            from,
            patch: ZonePatch {
                zone: "z.example".into(),
                revision: from + 1,
                decided_at: SystemTime::UNIX_EPOCH,
                upsert: BTreeMap::from([(name.to_owned(), txt(text))]),
                delete: Vec::new(),
            },
            serials: None,
        }
    }

    #[test]
    fn every_cut_of_the_last_entry_drops_it_and_keeps_all_before() {
        let dir = tempfile::tempdir().unwrap();
        let base = ZoneSnapshot::empty("z.example", 10, SystemTime::UNIX_EPOCH);
        let mut a = Appender::start(dir.path(), "z.example", 10).unwrap();
        a.append(&[change(10, "a", "one"), change(11, "b", "two")])
            .unwrap();
        let whole_two = fs::read(path(dir.path(), "z.example", 10)).unwrap();
        a.append(&[change(12, "a", "three")]).unwrap();
        let whole = fs::read(path(dir.path(), "z.example", 10)).unwrap();
        for cut in whole_two.len()..whole.len() {
            let mut s = base.clone();
            let r = replay_bytes(&whole[..cut], &mut s, 10);
            assert_eq!(r.entries.len(), 2, "cut at {cut}");
            assert_eq!(s.revision, 12);
            assert_eq!(s.names["a"], txt("one"));
            assert_eq!(r.good_bytes, whole_two.len() as u64);
            assert!(
                cut == whole_two.len() || matches!(r.stopped, Some(Stop::Torn { .. })),
                "{:?}",
                r.stopped
            );
        }
        let mut s = base.clone();
        let r = replay_bytes(&whole, &mut s, 10);
        assert!(r.stopped.is_none());
        assert_eq!((s.revision, &s.names["a"]), (13, &txt("three")));
        assert_eq!(r.entries[2].1, [("a".to_owned(), Some(txt("one")))]);
    }

    #[test]
    fn a_flipped_byte_or_a_broken_chain_stops_the_replay_there_and_the_file_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Appender::start(dir.path(), "z.example", 1).unwrap();
        a.append(&[change(1, "a", "one"), change(2, "a", "two")])
            .unwrap();
        let p = path(dir.path(), "z.example", 1);
        let mut bytes = fs::read(&p).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x20;
        fs::write(&p, &bytes).unwrap();
        let mut s = ZoneSnapshot::empty("z.example", 1, SystemTime::UNIX_EPOCH);
        let r = replay(dir.path(), &mut s).unwrap();
        assert!(
            matches!(r.stopped, Some(Stop::Checksum { .. })),
            "{:?}",
            r.stopped
        );
        assert_eq!(s.revision, 2);
        assert_eq!(
            fs::metadata(&p).unwrap().len(),
            r.good_bytes,
            "cut after the good entry"
        );

        // An entry that does not follow the zone's revision is not applied.
        let mut a = Appender::resume(dir.path(), "z.example", 1, 2, 1, r.good_bytes).unwrap();
        a.append(&[change(7, "b", "gap")]).unwrap();
        let mut s = ZoneSnapshot::empty("z.example", 1, SystemTime::UNIX_EPOCH);
        let r = replay(dir.path(), &mut s).unwrap();
        assert!(
            matches!(
                r.stopped,
                Some(Stop::Chain {
                    from: 7,
                    have: 2,
                    ..
                })
            ),
            "{:?}",
            r.stopped
        );
        assert!(!s.names.contains_key("b"));
    }

    #[test]
    fn a_journal_of_another_revision_is_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Appender::start(dir.path(), "z.example", 1).unwrap();
        a.append(&[change(1, "a", "one")]).unwrap();
        fs::rename(
            path(dir.path(), "z.example", 1),
            path(dir.path(), "z.example", 5),
        )
        .unwrap();
        let mut s = ZoneSnapshot::empty("z.example", 5, SystemTime::UNIX_EPOCH);
        let r = replay(dir.path(), &mut s).unwrap();
        assert!(matches!(r.stopped, Some(Stop::Header(5))));
        assert!(s.names.is_empty());
    }
}
