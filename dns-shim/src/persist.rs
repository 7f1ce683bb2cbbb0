//! Snapshots on disk: one file per zone and revision, checksummed, written atomically.
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

use std::{
    fs::{self, File},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};
use lifeline_model::{FORMAT_VERSION, NameRecords, ZoneSnapshot};

const MAGIC: &str = "lifeline-snapshot";
const SUFFIX: &str = ".snapshot";

fn file_name(zone: &str, revision: u64) -> String {
    format!("{zone}@{revision:020}{SUFFIX}")
}

/// Parses `<zone>@<revision>.snapshot`.
fn parse_file_name(name: &str) -> Option<(&str, u64)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (zone, rev) = stem.rsplit_once('@')?;
    Some((zone, rev.parse().ok()?))
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
    let digest = hex::encode(Sha256::digest(&body));
    let mut out = format!(
        "{MAGIC} {FILE_VERSION} sha256={digest} len={}\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads the on-disk format: length and checksum are verified, and nothing parsed is
/// used unless both hold.
pub fn decode(bytes: &[u8]) -> Result<ZoneSnapshot, String> {
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| "header is not UTF-8")?;
    let body = &bytes[nl + 1..];
    let mut parts = header.split(' ');
    if parts.next() != Some(MAGIC) {
        return Err("not a lifeline snapshot".into());
    }
    let version: u32 = parts
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or("bad file version")?;
    if version != FILE_VERSION {
        return Err(format!("file version {version} not supported"));
    }
    let digest = parts
        .next()
        .and_then(|p| p.strip_prefix("sha256="))
        .ok_or("no checksum")?;
    let len: usize = parts
        .next()
        .and_then(|p| p.strip_prefix("len="))
        .and_then(|l| l.parse().ok())
        .ok_or("no length")?;
    if body.len() != len {
        return Err(format!(
            "truncated or padded: {} bytes, header says {len}",
            body.len()
        ));
    }
    let meta_end = body
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no snapshot header")?;
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
            let second = second
                .join()
                .unwrap_or_else(|_| Err("parser failed".into()));
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
        return Err("checksum mismatch".into());
    }
    let meta: Meta = serde_json::from_slice(&body[..meta_end])
        .map_err(|e| format!("invalid snapshot header: {e}"))?;
    if meta.format != FORMAT_VERSION {
        return Err(format!("format version {} not supported", meta.format));
    }
    Ok(ZoneSnapshot {
        format: meta.format,
        zone: meta.zone,
        revision: meta.revision,
        decided_at: meta.decided_at,
        names: parsed?.into_iter().collect(),
    })
}

fn parse_lines(lines: &[u8]) -> Result<Vec<(String, NameRecords)>, String> {
    lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).map_err(|e| format!("invalid record line: {e}")))
        .collect()
}

/// Writes a new generation for the snapshot's zone and prunes old ones.
pub fn write(dir: &Path, snapshot: &ZoneSnapshot) -> Result<PathBuf> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let bytes = encode(snapshot)?;
    let name = file_name(&snapshot.zone, snapshot.revision);
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(&name);
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io(&path))?;
    // The rename is durable only once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    prune(dir, &snapshot.zone, snapshot.revision);
    debug!(zone = %snapshot.zone, revision = snapshot.revision, path = %path.display(), "snapshot persisted");
    Ok(path)
}

/// Removes `.<zone>@<revision>.snapshot.tmp` files: what a crash during [`write`] leaves.
fn remove_stray_temporaries(dir: &Path, zone: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stray = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(parse_file_name)
            .is_some_and(|(z, _)| z == zone);
        if stray && fs::remove_file(entry.path()).is_ok() {
            debug!(file = %entry.path().display(), "removed a temporary file left by a crash");
        }
    }
}

/// Generations of `zone` in `dir`, newest first.
fn generations(dir: &Path, zone: &str) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (z, rev) = parse_file_name(&name)?;
            (z == zone).then(|| (rev, e.path()))
        })
        .collect();
    out.sort_by_key(|g| std::cmp::Reverse(g.0));
    out
}

/// Keeps `keep` (just written) and the newest valid older generation; removes the rest.
fn prune(dir: &Path, zone: &str, keep: u64) {
    let mut kept_previous = false;
    for (rev, path) in generations(dir, zone) {
        if rev == keep {
            continue;
        }
        if !kept_previous && rev < keep && read(&path).is_ok() {
            kept_previous = true;
            continue;
        }
        if let Err(e) = fs::remove_file(&path) {
            warn!(path = %path.display(), error = %e, "could not remove old snapshot");
        }
    }
}

fn read(path: &Path) -> Result<ZoneSnapshot, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    decode(&bytes)
}

/// Result of looking for the newest usable generation of a zone.
#[derive(Debug, Default)]
pub struct Loaded {
    pub snapshot: Option<(ZoneSnapshot, PathBuf)>,
    /// Files that were skipped, with why.
    pub errors: Vec<(PathBuf, String)>,
}

/// Loads the newest generation of `zone` that verifies; corrupt files are reported in
/// `errors` and skipped, never served.
pub fn load_newest(dir: &Path, zone: &str) -> Loaded {
    remove_stray_temporaries(dir, zone);
    let mut loaded = Loaded::default();
    for (rev, path) in generations(dir, zone) {
        match read(&path).and_then(|s| {
            if s.zone != zone || s.revision != rev {
                Err(format!(
                    "content is zone {} revision {}, file name says {zone} {rev}",
                    s.zone, s.revision
                ))
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
