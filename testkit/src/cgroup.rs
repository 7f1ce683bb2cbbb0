//! A memory limit on a process, in a cgroup the test creates and removes: how a test
//! makes a process run out of memory for real (the kernel's OOM killer, as in a pod over
//! its limit), without touching anything else on the machine.
//!
//! Works with the cgroup v2 unified hierarchy and with v1's memory controller. A
//! process moved into the cgroup keeps the memory it had charged where it was; what it
//! allocates from then on counts against the limit.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

/// A cgroup with a memory limit; removed when dropped (its processes must be gone).
#[derive(Debug)]
pub struct MemoryCage {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCage {
    /// A new cgroup allowing `limit` bytes (swap included where the kernel counts it).
    /// `Err` says why this machine cannot give one (no memory controller, not root).
    pub fn new(limit: u64) -> Result<Self, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "lifeline-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let unified = Path::new("/sys/fs/cgroup");
        let v2 = std::fs::read_to_string(unified.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let dir = if v2 {
            unified.join(&name)
        } else {
            let v1 = unified.join("memory");
            if !v1.join("memory.limit_in_bytes").exists() {
                return Err("no memory cgroup controller (v1 or v2) is mounted".into());
            }
            v1.join(&name)
        };
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let cage = Self { dir, v2 };
        if v2 {
            cage.write("memory.max", &limit.to_string())?;
            // Absent without swap accounting; the limit alone then holds.
            let _ = cage.write("memory.swap.max", "0");
        } else {
            cage.write("memory.limit_in_bytes", &limit.to_string())?;
            if cage.dir.join("memory.memsw.limit_in_bytes").exists() {
                cage.write("memory.memsw.limit_in_bytes", &limit.to_string())?;
            }
        }
        Ok(cage)
    }

    /// Moves process `pid` into the cgroup.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// How many processes the kernel's OOM killer killed in here, where it says.
    pub fn oom_kills(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))?
            .trim()
            .parse()
            .ok()
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        let path = self.dir.join(file);
        std::fs::write(&path, value)
            .map_err(|e| format!("writing {value} to {}: {e}", path.display()))
    }
}

impl Drop for MemoryCage {
    fn drop(&mut self) {
        // A cgroup is removed with rmdir once no process is left in it.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
