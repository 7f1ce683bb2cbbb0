//! Snapshots on disk: one file per zone and revision, checksummed, written atomically.
//!
//! File `<zone>@<revision>.snapshot` in the data directory holds one line of header
//! (`lifeline-snapshot 1 sha256=<hex> len=<bytes>`) and the JSON [`ZoneSnapshot`]. A
//! new generation is written to a temporary file, fsynced, renamed into place, and the
//! directory fsynced, so a crash leaves either the old or the new file, never half of
//! one. The newest two valid generations are kept: if the newest turns out unreadable
//! (disk trouble, truncation by hand), the one before it is served instead.

use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::{
    Error, Result,
    model::{FORMAT_VERSION, ZoneSnapshot},
};

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

/// Serialises a snapshot into the on-disk format.
pub fn encode(snapshot: &ZoneSnapshot) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(snapshot)?;
    let digest = hex::encode(Sha256::digest(&body));
    let mut out = format!(
        "{MAGIC} {FORMAT_VERSION} sha256={digest} len={}\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads the on-disk format, verifying length and checksum before parsing.
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
        .ok_or("bad format version")?;
    if version != FORMAT_VERSION {
        return Err(format!("format version {version} not supported"));
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
    if hex::encode(Sha256::digest(body)) != digest {
        return Err("checksum mismatch".into());
    }
    let snapshot: ZoneSnapshot =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    if snapshot.format != FORMAT_VERSION {
        return Err(format!("format version {} not supported", snapshot.format));
    }
    Ok(snapshot)
}

/// Writes a new generation for the snapshot's zone and prunes old ones.
pub fn write(dir: &Path, snapshot: &ZoneSnapshot) -> Result<PathBuf> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let bytes = encode(snapshot)?;
    let name = file_name(&snapshot.zone, snapshot.revision);
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(&name);
    {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
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
