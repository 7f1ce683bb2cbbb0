//! Snapshots on disk: one file per zone and revision, checksummed, written atomically.
//! The changes made since each snapshot sit beside it in its journal
//! ([`crate::disk::journal`]); a snapshot is written when the journal is folded into one.
//!
//! File `<zone>@<revision>.snapshot` in the data directory holds one line of header
//! (`lifeline-snapshot 2 sha256=<hex> len=<bytes>`) and the [`ZoneSnapshot`] as JSON
//! lines (its header, then one `[name, records]` per line). A
//! new generation is written to a temporary file, fsynced, renamed into place, and the
//! directory fsynced, so a crash leaves either the old or the new file, never half of
//! one. The newest two valid generations are kept: if the newest turns out unreadable
//! (disk trouble, truncation by hand), the one before it is served instead. The
//! directory is private (0700) and files are 0600; temporary files a crash left behind
//! are removed by [`load_newest`].
//!
//! Break-glass overrides (what a `lifeline dns` replica read from the store last) are
//! kept beside the snapshots under the same rules: `break-glass@<generation>.overrides`,
//! a `lifeline-overrides 1 sha256=<hex> len=<bytes>` header line over a JSON body, a new
//! generation per change written the same atomic way, the newest two valid ones kept,
//! and a corrupt newest one skipped for the one before it.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use serde::{Deserialize, Serialize};

use crate::{Error, Result, files};
use lifeline_model::{FORMAT_VERSION, NameRecords, ZoneSnapshot, overrides::Override};

const MAGIC: &str = "lifeline-snapshot";
const SUFFIX: &str = ".snapshot";

const OVERRIDES_MAGIC: &str = "lifeline-overrides";
const OVERRIDES_SUFFIX: &str = ".overrides";
const OVERRIDES_STEM: &str = "break-glass";
const OVERRIDES_VERSION: u32 = 1;

fn file_name(stem: &str, generation: u64, suffix: &str) -> String {
    format!("{stem}@{generation:020}{suffix}")
}

/// Parses `<stem>@<generation><suffix>`.
fn parse_file_name<'a>(name: &'a str, suffix: &str) -> Option<(&'a str, u64)> {
    let stem = name.strip_suffix(suffix)?;
    let (stem, generation) = stem.rsplit_once('@')?;
    Some((stem, generation.parse().ok()?))
}

/// Version of the file layout (header line + JSON lines), independent of the record
/// model's own format version.
const FILE_VERSION: u32 = 2;

/// Bodies this large are parsed on two threads.
const PARALLEL_FROM: usize = 1 << 20;

/// The snapshot minus its names: the first line of the body.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Meta {
    format: u32,
    zone: String,
    revision: u64,
    #[serde(with = "lifeline_model::time::rfc3339")]
    decided_at: std::time::SystemTime,
}

/// Serialises a snapshot into the on-disk format. The body is JSON lines: the snapshot's
/// header, then one `[name, records]` per line, so a large file can be parsed in
/// parallel at start-up (warm start is on the critical path of every restart).
pub fn encode(snapshot: &ZoneSnapshot) -> Result<Vec<u8>> {
    let mut body = serde_json::to_vec(&Meta {
        format: snapshot.format,
        zone: snapshot.zone.clone(),
        revision: snapshot.revision,
        decided_at: snapshot.decided_at,
    })?;
    body.push(b'\n');
    for entry in &snapshot.names {
        serde_json::to_writer(&mut body, &entry)?;
        body.push(b'\n');
    }
    Ok(frame(MAGIC, FILE_VERSION, &body))
}

/// The header line (magic, version, checksum and length of the body) followed by the body.
fn frame(magic: &str, version: u32, body: &[u8]) -> Vec<u8> {
    let digest = hex::encode(Sha256::digest(body));
    let mut out = format!("{magic} {version} sha256={digest} len={}\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// Why a persisted file is not used. Such a file is skipped (and counted), never served.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("no header line")]
    NoHeader,
    #[error("header is not UTF-8")]
    HeaderEncoding,
    /// The header's first word is not the file kind's magic.
    #[error("not a {0} file")]
    Magic(&'static str),
    #[error("bad file version")]
    BadVersion,
    #[error("file version {0} not supported")]
    Version(u32),
    #[error("no checksum")]
    NoChecksum,
    #[error("no length")]
    NoLength,
    /// The body is not as long as the header says.
    #[error("truncated or padded: {actual} bytes, header says {header}")]
    Length { actual: usize, header: usize },
    #[error("checksum mismatch")]
    Checksum,
    #[error("no snapshot header")]
    NoSnapshotHeader,
    #[error("invalid snapshot header: {0}")]
    SnapshotHeader(#[source] serde_json::Error),
    /// The record model's format version, not the file layout's.
    #[error("format version {0} not supported")]
    Format(u32),
    #[error("invalid record line: {0}")]
    RecordLine(#[source] serde_json::Error),
    /// A thread parsing half of a large body panicked.
    #[error("parser failed")]
    Parser,
    #[error("invalid overrides: {0}")]
    Overrides(#[source] serde_json::Error),
    /// A snapshot file whose content is another zone or revision than its name says.
    #[error(
        "content is zone {zone} revision {revision}, file name says {named_zone} {named_revision}"
    )]
    MisnamedSnapshot {
        zone: String,
        revision: u64,
        named_zone: String,
        named_revision: u64,
    },
    /// An overrides file whose content is another generation than its name says.
    #[error("content is generation {generation}, file name says {named}")]
    MisnamedOverrides { generation: u64, named: u64 },
}

/// Splits a framed file into its expected checksum and its body, checking the magic,
/// the version and the length (the checksum is left to the caller, who may verify it
/// while parsing).
fn unframe<'a>(
    bytes: &'a [u8],
    magic: &'static str,
    want: u32,
) -> Result<(&'a str, &'a [u8]), Unreadable> {
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(Unreadable::NoHeader)?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| Unreadable::HeaderEncoding)?;
    let body = &bytes[nl + 1..];
    let mut parts = header.split(' ');
    if parts.next() != Some(magic) {
        return Err(Unreadable::Magic(magic));
    }
    let version: u32 = parts
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or(Unreadable::BadVersion)?;
    if version != want {
        return Err(Unreadable::Version(version));
    }
    let digest = parts
        .next()
        .and_then(|p| p.strip_prefix("sha256="))
        .ok_or(Unreadable::NoChecksum)?;
    let len: usize = parts
        .next()
        .and_then(|p| p.strip_prefix("len="))
        .and_then(|l| l.parse().ok())
        .ok_or(Unreadable::NoLength)?;
    if body.len() != len {
        return Err(Unreadable::Length {
            actual: body.len(),
            header: len,
        });
    }
    Ok((digest, body))
}

/// Reads the on-disk format: length and checksum are verified, and nothing parsed is
/// used unless both hold.
pub fn decode(bytes: &[u8]) -> Result<ZoneSnapshot, Unreadable> {
    let (digest, body) = unframe(bytes, MAGIC, FILE_VERSION)?;
    let meta_end = body
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(Unreadable::NoSnapshotHeader)?;
    let lines = &body[meta_end + 1..];
    // Checksum and parsing run side by side; the result is discarded if the sum is wrong.
    let (sum_ok, parsed) = if body.len() >= PARALLEL_FROM {
        let mid = lines.len() / 2;
        let cut = lines[mid..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(lines.len(), |p| mid + p + 1);
        let (a, b) = lines.split_at(cut);
        std::thread::scope(|scope| {
            let sum = scope.spawn(|| hex::encode(Sha256::digest(body)) == digest);
            let second = scope.spawn(|| parse_lines(b));
            let first = parse_lines(a);
            let second = second.join().unwrap_or(Err(Unreadable::Parser));
            let sum = sum.join().unwrap_or(false);
            (
                sum,
                first.and_then(|mut f| {
                    f.extend(second?);
                    Ok(f)
                }),
            )
        })
    } else {
        (
            hex::encode(Sha256::digest(body)) == digest,
            parse_lines(lines),
        )
    };
    if !sum_ok {
        return Err(Unreadable::Checksum);
    }
    let meta: Meta =
        serde_json::from_slice(&body[..meta_end]).map_err(Unreadable::SnapshotHeader)?;
    if meta.format != FORMAT_VERSION {
        return Err(Unreadable::Format(meta.format));
    }
    Ok(ZoneSnapshot {
        format: meta.format,
        zone: meta.zone,
        revision: meta.revision,
        decided_at: meta.decided_at,
        names: parsed?.into_iter().collect(),
    })
}

fn parse_lines(lines: &[u8]) -> Result<Vec<(String, NameRecords)>, Unreadable> {
    lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).map_err(Unreadable::RecordLine))
        .collect()
}

/// Writes a new generation for the snapshot's zone and prunes old ones.
pub fn write(dir: &Path, snapshot: &ZoneSnapshot) -> Result<PathBuf> {
    let bytes = encode(snapshot)?;
    let path = write_atomic(
        dir,
        &file_name(&snapshot.zone, snapshot.revision, SUFFIX),
        &bytes,
    )?;
    prune(dir, &snapshot.zone, SUFFIX, snapshot.revision, |p| {
        read(p).is_ok()
    });
    debug!(zone = %snapshot.zone, revision = snapshot.revision, path = %path.display(), "snapshot persisted");
    Ok(path)
}

/// Writes `bytes` as `dir/name` (see [`files::replace`]), creating `dir` private to
/// this user when it does not exist.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let io = |files::WriteError { path, source }| Error::Io { path, source };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
    let path = dir.join(name);
    files::replace(&path, bytes).map_err(io)?;
    Ok(path)
}

/// Narrows an existing data directory that others may read to 0700: snapshots and
/// break-glass overrides are private, whoever created the directory first.
fn narrow(dir: &Path) {
    let Ok(meta) = fs::metadata(dir) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        match fs::set_permissions(dir, fs::Permissions::from_mode(0o700)) {
            Ok(()) => {
                info!(dir = %dir.display(), from = format!("{mode:o}"), "data directory narrowed to 0700")
            }
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "data directory is readable by others and cannot be narrowed")
            }
        }
    }
}

/// Removes the temporaries of `<stem>@<generation><suffix>` files: what a crash during a
/// write leaves.
fn remove_stray_temporaries(dir: &Path, stem: &str, suffix: &str) {
    narrow(dir);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stray = files::temporary_of(&name)
            .and_then(|n| parse_file_name(n, suffix))
            .is_some_and(|(s, _)| s == stem);
        if stray && fs::remove_file(entry.path()).is_ok() {
            debug!(file = %entry.path().display(), "removed a temporary file left by a crash");
        }
    }
}

/// Generations of `stem` in `dir`, newest first.
fn generations(dir: &Path, stem: &str, suffix: &str) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (s, generation) = parse_file_name(&name, suffix)?;
            (s == stem).then(|| (generation, e.path()))
        })
        .collect();
    out.sort_by_key(|g| std::cmp::Reverse(g.0));
    out
}

/// Revisions of the snapshot files of `zone` in `dir`, newest first.
pub(crate) fn revisions(dir: &Path, zone: &str) -> Vec<u64> {
    generations(dir, zone, SUFFIX)
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

/// Keeps `keep` (just written) and the newest valid older generation; removes the rest.
fn prune(dir: &Path, stem: &str, suffix: &str, keep: u64, valid: impl Fn(&Path) -> bool) {
    let mut kept_previous = false;
    for (generation, path) in generations(dir, stem, suffix) {
        if generation == keep {
            continue;
        }
        if !kept_previous && generation < keep && valid(&path) {
            kept_previous = true;
            continue;
        }
        if let Err(e) = fs::remove_file(&path) {
            warn!(path = %path.display(), error = %e, "could not remove an old generation");
        }
    }
}

fn read(path: &Path) -> Result<ZoneSnapshot, Unreadable> {
    decode(&fs::read(path)?)
}

/// Result of looking for the newest usable generation of a zone.
#[derive(Debug, Default)]
pub struct Loaded {
    pub snapshot: Option<(ZoneSnapshot, PathBuf)>,
    /// Files that were skipped, with why.
    pub errors: Vec<(PathBuf, Unreadable)>,
}

/// Loads the newest generation of `zone` that verifies; corrupt files are reported in
/// `errors` and skipped, never served.
pub fn load_newest(dir: &Path, zone: &str) -> Loaded {
    remove_stray_temporaries(dir, zone, SUFFIX);
    let mut loaded = Loaded::default();
    for (rev, path) in generations(dir, zone, SUFFIX) {
        match read(&path).and_then(|s| {
            if s.zone != zone || s.revision != rev {
                Err(Unreadable::MisnamedSnapshot {
                    zone: s.zone,
                    revision: s.revision,
                    named_zone: zone.to_owned(),
                    named_revision: rev,
                })
            } else {
                Ok(s)
            }
        }) {
            Ok(s) => {
                loaded.snapshot = Some((s, path));
                break;
            }
            Err(reason) => {
                warn!(path = %path.display(), %reason, "persisted snapshot skipped");
                loaded.errors.push((path, reason));
            }
        }
    }
    loaded
}

/// The break-glass overrides a replica last read from its store, as kept on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverrideSet {
    /// Counts up by one with every change this replica writes.
    pub generation: u64,
    pub overrides: Vec<Override>,
}

pub fn encode_overrides(set: &OverrideSet) -> Result<Vec<u8>> {
    Ok(frame(
        OVERRIDES_MAGIC,
        OVERRIDES_VERSION,
        &serde_json::to_vec(set)?,
    ))
}

pub fn decode_overrides(bytes: &[u8]) -> Result<OverrideSet, Unreadable> {
    let (digest, body) = unframe(bytes, OVERRIDES_MAGIC, OVERRIDES_VERSION)?;
    if hex::encode(Sha256::digest(body)) != digest {
        return Err(Unreadable::Checksum);
    }
    serde_json::from_slice(body).map_err(Unreadable::Overrides)
}

fn read_overrides(path: &Path) -> Result<OverrideSet, Unreadable> {
    decode_overrides(&fs::read(path)?)
}

/// Writes a new generation of the break-glass overrides and prunes old ones.
pub fn write_overrides(dir: &Path, set: &OverrideSet) -> Result<PathBuf> {
    let bytes = encode_overrides(set)?;
    let path = write_atomic(
        dir,
        &file_name(OVERRIDES_STEM, set.generation, OVERRIDES_SUFFIX),
        &bytes,
    )?;
    prune(dir, OVERRIDES_STEM, OVERRIDES_SUFFIX, set.generation, |p| {
        read_overrides(p).is_ok()
    });
    debug!(generation = set.generation, count = set.overrides.len(), path = %path.display(), "break-glass overrides persisted");
    Ok(path)
}

/// The newest generation of break-glass overrides that verifies, and the files skipped
/// with why. `None` when there is none (never written, or every copy is corrupt).
pub fn load_overrides(dir: &Path) -> (Option<OverrideSet>, Vec<(PathBuf, Unreadable)>) {
    remove_stray_temporaries(dir, OVERRIDES_STEM, OVERRIDES_SUFFIX);
    let mut errors = Vec::new();
    for (generation, path) in generations(dir, OVERRIDES_STEM, OVERRIDES_SUFFIX) {
        match read_overrides(&path).and_then(|s| {
            if s.generation == generation {
                Ok(s)
            } else {
                Err(Unreadable::MisnamedOverrides {
                    generation: s.generation,
                    named: generation,
                })
            }
        }) {
            Ok(set) => return (Some(set), errors),
            Err(reason) => {
                warn!(path = %path.display(), %reason, "persisted break-glass overrides skipped");
                errors.push((path, reason));
            }
        }
    }
    (None, errors)
}
