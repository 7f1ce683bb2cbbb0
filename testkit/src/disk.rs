//! Disks that misbehave on demand: a tiny one that fills up, and one that stalls.
//!
//! Both mount a real filesystem (root needed); `mount` returns `None` where this process
//! may not mount, and the caller says so and skips. Each is unmounted when dropped.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

fn run(cmd: &str, args: &[&OsStr]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn unmount(dir: &Path) {
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}

/// A tmpfs of a given size mounted at a directory: writes past the size fail with
/// "no space left on device".
#[derive(Debug)]
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `"256k"`) at `dir`.
    pub fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        let options = format!("size={size},mode=0700");
        let ok = run(
            "mount",
            &[
                "-t".as_ref(),
                "tmpfs".as_ref(),
                "-o".as_ref(),
                options.as_ref(),
                "tmpfs".as_ref(),
                dir.as_ref(),
            ],
        );
        ok.then(|| Self(dir.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

/// An ext4 filesystem in a file, loop-mounted at a directory, that the test can freeze
/// with `fsfreeze`: while frozen, every write and fsync on it blocks in the kernel, as on
/// a disk that has stopped answering. Dropping it thaws and unmounts.
#[derive(Debug)]
pub struct FreezableDisk {
    mount: PathBuf,
    _image: tempfile::TempDir,
}

impl FreezableDisk {
    /// Makes a 16 MiB image and mounts it at `dir` (created if needed).
    pub fn mount(dir: &Path) -> Option<Self> {
        let image_dir = tempfile::tempdir().ok()?;
        let image = image_dir.path().join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(16 << 20))
            .ok()?;
        std::fs::create_dir_all(dir).ok()?;
        let ok = run("mkfs.ext4", &["-q".as_ref(), "-F".as_ref(), image.as_ref()])
            && run(
                "mount",
                &["-o".as_ref(), "loop".as_ref(), image.as_ref(), dir.as_ref()],
            );
        ok.then(|| Self {
            mount: dir.to_owned(),
            _image: image_dir,
        })
    }

    /// Freezes the filesystem: writes and fsyncs block until [`FreezableDisk::thaw`].
    pub fn freeze(&self) -> bool {
        run("fsfreeze", &["-f".as_ref(), self.mount.as_ref()])
    }

    /// Thaws it again.
    pub fn thaw(&self) -> bool {
        run("fsfreeze", &["-u".as_ref(), self.mount.as_ref()])
    }

    /// Freezes now and thaws on a thread of its own after `stall`, whatever the test
    /// is doing then; join the handle to wait for the thaw.
    pub fn stall_for(&self, stall: std::time::Duration) -> Option<std::thread::JoinHandle<()>> {
        if !self.freeze() {
            return None;
        }
        let mount = self.mount.clone();
        Some(std::thread::spawn(move || {
            std::thread::sleep(stall);
            run("fsfreeze", &["-u".as_ref(), mount.as_ref()]);
        }))
    }
}

impl Drop for FreezableDisk {
    fn drop(&mut self) {
        // Thawed already, unless the test failed while the disk was frozen.
        self.thaw();
        unmount(&self.mount);
    }
}
