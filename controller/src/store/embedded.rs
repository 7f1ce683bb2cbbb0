//! The embedded store: each item one JSON file in a directory, replaced atomically.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use parking_lot::Mutex;
use serde::{Serialize, de::DeserializeOwned};

use lifeline_dns::{ShimHandle, files};
use lifeline_engine::{Decision, Override};

use super::{AuditEntry, Envelope, Error, FORMAT, PolicySnapshot, Result, Unusable};

/// Files of the embedded store.
pub(super) const DECISION: &str = "decision.json";
/// A second copy of the decision, written after the first: a decision file lost or
/// damaged on disk falls back to it, not to no decision at all.
const DECISION_GOOD: &str = "decision.good.json";
pub(super) const POLICIES: &str = "policies.json";

/// Runs `f` on the blocking pool. The embedded store's file I/O, fsync included, takes
/// as long as the disk does (a stalled disk: seconds), and must never hold one of the
/// runtime's few worker threads: the admin API's `/readyz` and `/metrics`, and the
/// leader's loop, run on them.
pub(super) async fn off_runtime<T: Send + 'static>(
    store: &Arc<EmbeddedStore>,
    f: impl FnOnce(&EmbeddedStore) -> T + Send + 'static,
) -> T {
    let store = Arc::clone(store);
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(v) => v,
        // A panic inside stays a panic of the caller (the guards around terms and
        // handlers catch it); cancellation only happens while the runtime shuts down.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("embedded store call cancelled: {e}"),
    }
}

/// A store kept in one directory on local disk.
#[derive(Debug)]
pub struct EmbeddedStore {
    pub(super) dir: PathBuf,
    /// Serialises writers of the audit log and override file.
    lock: Mutex<()>,
    /// Where published records go (the in-process DNS server), when set.
    pub(super) dns: Option<ShimHandle>,
    /// Where each zone is also written whole, for a `lifeline dns` of its own
    /// (`dns.sourceDir`), when set.
    pub(super) export: Option<PathBuf>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store directory, private to this user, and removes
    /// temporary files a crash left behind.
    pub fn open(dir: &Path) -> Result<Self> {
        private_dir(dir)?;
        remove_stray_temporaries(dir);
        Ok(Self {
            dir: dir.to_owned(),
            lock: Mutex::new(()),
            dns: None,
            export: None,
        })
    }

    /// Also writes every zone it publishes, whole, into `dir` as `<zone>.json` (created
    /// private if missing), for a `lifeline dns` watching it.
    pub fn exporting_to(mut self, dir: &Path) -> Result<Self> {
        private_dir(dir)?;
        self.export = Some(dir.to_owned());
        Ok(self)
    }

    pub(super) fn export_zone(&self, zone: &str, bytes: &[u8]) -> Result<()> {
        let Some(dir) = &self.export else {
            return Ok(());
        };
        replace(&dir.join(format!("{zone}.json")), bytes)
    }

    /// Publishes records to `dns`, the DNS server in this process.
    pub fn publishing_to(mut self, dns: ShimHandle) -> Self {
        self.dns = Some(dns);
        self
    }

    /// The last saved decision, if a valid one exists: the decision file, or its good
    /// copy when the file is gone or does not decode.
    pub fn load_decision(&self) -> Option<Decision> {
        self.read(DECISION).or_else(|| {
            let good = self.read(DECISION_GOOD);
            if good.is_some() {
                tracing::warn!(path = %self.dir.join(DECISION).display(), "the decision file is missing or unreadable; resuming from its good copy");
            }
            good
        })
    }

    /// Saves the decision atomically, then its good copy.
    pub fn save_decision(&self, decision: &Decision) -> Result<()> {
        self.write_decision_encoded(&Self::encode(DECISION, decision)?)
    }

    pub(super) fn write_decision_encoded(&self, bytes: &[u8]) -> Result<()> {
        self.write_encoded(DECISION, bytes)?;
        self.write_encoded(DECISION_GOOD, bytes)
    }

    /// The overrides in force (expired ones included; the engine ignores those): the
    /// file's, or its last good copy while the file is unreadable or gone.
    pub fn overrides(&self) -> Vec<Override> {
        match self.read_strict::<Vec<Override>>(OVERRIDES) {
            Ok(Some(all)) => all,
            Ok(None) | Err(_) => self
                .read_strict(OVERRIDES_GOOD)
                .ok()
                .flatten()
                .unwrap_or_default(),
        }
    }

    /// Stored files that cannot be read and whose last good copy is in force.
    pub fn unreadable(&self) -> Vec<String> {
        match self.read_strict::<Vec<Override>>(OVERRIDES) {
            Err(problem) => vec![format!("{OVERRIDES}: {problem}")],
            Ok(_) => Vec::new(),
        }
    }

    /// The overrides to change, refusing while `overrides.json` is unreadable: writing
    /// over it would replace what an operator set with a guess.
    fn overrides_for_change(&self) -> Result<Vec<Override>> {
        match self.read_strict::<Vec<Override>>(OVERRIDES) {
            Ok(Some(all)) => Ok(all),
            Ok(None) => Ok(self.overrides()),
            Err(problem) => Err(Error::Unreadable {
                path: self.dir.join(OVERRIDES),
                problem,
            }),
        }
    }

    fn save_overrides(&self, all: &[Override]) -> Result<()> {
        self.write(OVERRIDES, &all)?;
        self.write(OVERRIDES_GOOD, &all)
    }

    /// Adds or replaces (by id) an override and records it in the audit log.
    pub fn put_override(&self, o: Override, by: &str) -> Result<()> {
        self.put_override_within(o, by, usize::MAX).map(drop)
    }

    /// [`Self::put_override`] while fewer than `max` other overrides are in force at
    /// `o.created_at`, counted under the same lock as the write. `Some(in force)` when
    /// there is no room.
    pub fn put_override_within(&self, o: Override, by: &str, max: usize) -> Result<Option<usize>> {
        let _guard = self.lock.lock();
        let mut all = self.overrides_for_change()?;
        let in_force = all
            .iter()
            .filter(|x| x.id != o.id && x.is_active(o.created_at))
            .count();
        if in_force >= max {
            return Ok(Some(in_force));
        }
        all.retain(|x| x.id != o.id);
        all.push(o.clone());
        self.save_overrides(&all)?;
        self.audit_append(AuditEntry::set(o, by, SystemTime::now()))?;
        Ok(None)
    }

    /// Removes overrides matching `pred`, records each in the audit log, and returns them.
    pub fn remove_overrides(
        &self,
        pred: impl Fn(&Override) -> bool,
        by: &str,
    ) -> Result<Vec<Override>> {
        let _guard = self.lock.lock();
        let (removed, kept): (Vec<Override>, Vec<Override>) = self
            .overrides_for_change()?
            .into_iter()
            .partition(|o| pred(o));
        if removed.is_empty() {
            return Ok(removed);
        }
        self.save_overrides(&kept)?;
        for o in &removed {
            self.audit_append(AuditEntry::cleared(o.clone(), by, SystemTime::now()))?;
        }
        Ok(removed)
    }

    /// The audit log, oldest first. Undecodable lines are skipped.
    pub fn audit(&self) -> Vec<AuditEntry> {
        let path = self.dir.join("audit.jsonl");
        let Ok(text) = fs::read_to_string(&path) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Rewrites the audit log without entries older than `before` (and without lines
    /// that do not decode); returns how many went.
    pub fn prune_audit(&self, before: SystemTime) -> Result<usize> {
        let _guard = self.lock.lock();
        let path = self.dir.join("audit.jsonl");
        let Ok(text) = fs::read_to_string(&path) else {
            return Ok(0);
        };
        let mut kept = String::with_capacity(text.len());
        let mut removed = 0;
        for line in text.lines() {
            match serde_json::from_str::<AuditEntry>(line) {
                Ok(e) if e.at >= before => {
                    kept.push_str(line);
                    kept.push('\n');
                }
                _ => removed += 1,
            }
        }
        if removed > 0 {
            replace(&path, kept.as_bytes())?;
        }
        Ok(removed)
    }

    /// The last good policy documents.
    pub fn load_policies(&self) -> Option<PolicySnapshot> {
        self.read(POLICIES)
    }

    /// Saves the policy documents atomically.
    pub fn save_policies(&self, snapshot: &PolicySnapshot) -> Result<()> {
        self.write(POLICIES, snapshot)
    }

    fn audit_append(&self, entry: AuditEntry) -> Result<()> {
        let path = self.dir.join("audit.jsonl");
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(&entry).map_err(|source| Error::Encode {
            path: path.clone(),
            source,
        })?;
        line.push(b'\n');
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        f.write_all(&line).map_err(io)?;
        f.sync_data().map_err(io)
    }

    pub(super) fn read<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        match self.read_strict(name) {
            Ok(v) => v,
            Err(problem) => {
                tracing::warn!(path = %self.dir.join(name).display(), %problem, "stored value ignored");
                None
            }
        }
    }

    /// `Ok(None)` when the file does not exist; `Err` says why an existing one is
    /// unusable.
    fn read_strict<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Unusable> {
        let path = self.dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Unusable::Read(e)),
        };
        match serde_json::from_slice::<Envelope<T>>(&bytes) {
            Ok(env) if env.format == FORMAT => Ok(Some(env.value)),
            Ok(env) => Err(Unusable::Format(env.format)),
            Err(e) => Err(Unusable::Decode(e)),
        }
    }

    fn write<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let bytes = Self::encode(name, value)?;
        self.write_encoded(name, &bytes)
    }

    /// The bytes [`EmbeddedStore::write_encoded`] stores for `value` under `name` (pure:
    /// encoding happens where the caller is, the write where it may block).
    pub(super) fn encode<T: Serialize + ?Sized>(name: &str, value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(&Envelope {
            format: FORMAT,
            value,
        })
        .map_err(|source| Error::Encode {
            path: PathBuf::from(name),
            source,
        })
    }

    pub(super) fn write_encoded(&self, name: &str, bytes: &[u8]) -> Result<()> {
        replace(&self.dir.join(name), bytes)
    }
}

/// The file of a cluster's cached kubeconfig; the name must be a plain file name.
pub(super) fn credential_file(cluster: &str) -> Result<String> {
    if cluster.is_empty() || cluster.contains('/') || cluster.starts_with('.') {
        return Err(Error::BadName(cluster.to_owned()));
    }
    Ok(format!("credential-{cluster}.json"))
}

const OVERRIDES: &str = "overrides.json";
const OVERRIDES_GOOD: &str = "overrides.good.json";

/// Creates `dir` (mode 0700) or narrows an existing one to 0700.
fn private_dir(dir: &Path) -> Result<()> {
    let io = |source| Error::Io {
        path: dir.to_owned(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let mode = fs::metadata(dir).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        tracing::info!(dir = %dir.display(), from = format!("{mode:o}"), "store directory narrowed to 0700");
    }
    Ok(())
}

/// [`files::replace`], failing with the store's error.
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    files::replace(path, bytes)
        .map_err(|files::WriteError { path, source }| Error::Io { path, source })
}

/// Removes the temporary files a crash during a write leaves (see [`files::replace`]).
fn remove_stray_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stray = files::temporary_of(&name).is_some();
        if stray && fs::remove_file(entry.path()).is_ok() {
            tracing::info!(file = %entry.path().display(), "removed a temporary file left by a crash");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use lifeline_engine::OverrideAction;

    fn an_override(id: &str) -> Override {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Override {
            id: id.to_owned(),
            cluster: "eu-west-1".to_owned(),
            policy: None,
            action: OverrideAction::Drain,
            created_at: now,
            expires_at: now + Duration::from_secs(60),
            author: "oncall".to_owned(),
            reason: "maintenance".to_owned(),
        }
    }

    #[test]
    fn decision_survives_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert!(store.load_decision().is_none());
        let decision = Decision {
            revision: 7,
            ..Decision::default()
        };
        store.save_decision(&decision).unwrap();
        let reopened = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(reopened.load_decision(), Some(decision));
    }

    #[test]
    fn a_damaged_or_lost_decision_file_falls_back_to_its_good_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let decision = Decision {
            revision: 9,
            ..Decision::default()
        };
        store.save_decision(&decision).unwrap();
        fs::write(
            dir.path().join("decision.json"),
            b"{\"format\":1,\"value\":{\"revis",
        )
        .unwrap();
        assert_eq!(store.load_decision(), Some(decision.clone()), "damaged");
        fs::remove_file(dir.path().join("decision.json")).unwrap();
        assert_eq!(store.load_decision(), Some(decision), "lost");
        fs::remove_file(dir.path().join("decision.good.json")).unwrap();
        assert_eq!(store.load_decision(), None, "both gone");
    }

    #[test]
    fn a_corrupt_file_is_ignored_and_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        fs::write(
            dir.path().join("decision.json"),
            b"{\"format\":1,\"value\":{\"revis",
        )
        .unwrap();
        assert!(store.load_decision().is_none());
        fs::write(dir.path().join("overrides.json"), b"\x00\xff garbage").unwrap();
        assert!(store.overrides().is_empty());
        fs::write(
            dir.path().join("decision.json"),
            b"{\"format\":99,\"value\":{}}",
        )
        .unwrap();
        assert!(
            store.load_decision().is_none(),
            "unknown format versions are not read"
        );
    }

    #[test]
    fn an_unreadable_overrides_file_keeps_its_good_copy_and_refuses_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.put_override(an_override("a"), "alice").unwrap();
        fs::write(
            dir.path().join("overrides.json"),
            b"{\"format\":1,\"value\":[{",
        )
        .unwrap();
        assert_eq!(store.overrides().len(), 1, "the good copy is in force");
        assert_eq!(store.unreadable().len(), 1);
        let refused = store.put_override(an_override("b"), "bob");
        assert!(
            matches!(refused, Err(Error::Unreadable { .. })),
            "{refused:?}"
        );
        assert!(store.remove_overrides(|_| true, "bob").is_err());
        fs::remove_file(dir.path().join("overrides.json")).unwrap();
        assert!(store.unreadable().is_empty());
        assert_eq!(store.remove_overrides(|_| true, "bob").unwrap().len(), 1);
        assert!(store.overrides().is_empty());
    }

    #[test]
    fn writers_racing_for_the_last_places_never_pass_the_override_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let mut expired = an_override("old");
        expired.expires_at = expired.created_at;
        store.put_override(expired, "alice").unwrap();
        let racers: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    store
                        .put_override_within(an_override(&format!("o{i}")), "alice", 5)
                        .unwrap()
                })
            })
            .collect();
        let taken = racers
            .into_iter()
            .map(|r| r.join().unwrap())
            .filter(Option::is_none)
            .count();
        assert_eq!(taken, 5, "the expired one takes no place");
        let now = an_override("x").created_at;
        let in_force = store
            .overrides()
            .iter()
            .filter(|o| o.is_active(now))
            .count();
        assert_eq!(in_force, 5);
        // Replacing one in force takes no new place.
        let kept = store
            .overrides()
            .into_iter()
            .find(|o| o.is_active(now))
            .unwrap();
        assert_eq!(store.put_override_within(kept, "bob", 5).unwrap(), None);
    }

    #[test]
    fn pruning_keeps_the_audit_trail_bounded_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for i in 0..50 {
            store
                .put_override(an_override(&format!("o{i}")), "alice")
                .unwrap();
        }
        assert_eq!(store.audit().len(), 50);
        assert_eq!(store.prune_audit(SystemTime::UNIX_EPOCH).unwrap(), 0);
        let removed = store
            .prune_audit(SystemTime::now() + Duration::from_secs(1))
            .unwrap();
        assert_eq!(removed, 50);
        assert!(store.audit().is_empty());
        let mode = fs::metadata(dir.path().join("audit.jsonl"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn overrides_are_audited_when_set_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.put_override(an_override("a"), "alice").unwrap();
        store.put_override(an_override("b"), "bob").unwrap();
        assert_eq!(store.overrides().len(), 2);
        let removed = store.remove_overrides(|o| o.id == "a", "carol").unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(
            store
                .overrides()
                .iter()
                .map(|o| o.id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        let audit = store.audit();
        let trail: Vec<(&str, &str, &str)> = audit
            .iter()
            .map(|e| (e.action.as_str(), e.by.as_str(), e.r#override.id.as_str()))
            .collect();
        assert_eq!(
            trail,
            [
                ("set", "alice", "a"),
                ("set", "bob", "b"),
                ("cleared", "carol", "a")
            ]
        );
    }
}
