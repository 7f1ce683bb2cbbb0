//! Files replaced whole, the way both the DNS server's snapshots and the controller's
//! embedded store are written: a crash leaves the old file or the new one, never a torn
//! one, and what a crash leaves behind is recognised and removed.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

/// Where a write failed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> WriteError {
    let path = path.to_owned();
    move |source| WriteError { path, source }
}

/// What a temporary file's name carries after the name of the file it is for.
const TMP_MARK: &str = ".tmp.";

/// Replaces `path` with `bytes`: written to a private (0600) temporary file beside it
/// (`<name>.tmp.<pid>`), fsynced, renamed into place, and the directory fsynced. The
/// rename is durable only once the directory entry is, so a failure of that last fsync
/// is a failed write too.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!("{TMP_MARK}{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        // A write that failed (a full disk) leaves nothing behind to fill it further.
        let _ = fs::remove_file(&tmp);
        return Err(at(&tmp)(e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(at(path)(e));
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at(dir))
}

/// The name of the file that `name` is a temporary of, when `name` is one that
/// [`replace`] writes, or one that the DNS server's older writer left (`.<name>.tmp`,
/// still removed after an upgrade); `None` for every other name.
pub fn temporary_of(name: &str) -> Option<&str> {
    if let Some(file) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) {
        return (!file.is_empty()).then_some(file);
    }
    let (file, pid) = name.rsplit_once(TMP_MARK)?;
    (!file.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(file)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_replaced_file_holds_the_new_bytes_and_its_temporary_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decision.json");
        replace(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "no temporary stays behind");
        assert_eq!(
            temporary_of("decision.json.tmp.4242"),
            Some("decision.json")
        );
        assert_eq!(temporary_of("decision.json"), None);
        assert_eq!(temporary_of("decision.json.tmp."), None);
        assert_eq!(temporary_of("decision.json.tmp.12a"), None);
        assert_eq!(
            temporary_of(".zone@9.snapshot.tmp"),
            Some("zone@9.snapshot")
        );
        assert_eq!(temporary_of(".tmp"), None);
    }
}
