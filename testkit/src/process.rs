//! A child process a test started: killed when the guard drops, so a failing test never
//! leaves a server running.
//!
//! Servers a test starts with [`owned`] run in a process group of their own (a signal
//! meant for the test's terminal does not reach them twice, and [`kill_group`] takes
//! anything they forked), and, where util-linux's `setpriv` is installed, die with the
//! test thread that started them even when the test process itself is killed.

use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

const SETPRIV: &str = "/usr/bin/setpriv";

/// A command for `program` that runs in a new process group and gets SIGKILL when the
/// thread that spawns it exits (through `setpriv --pdeathsig`, which then execs
/// `program` in the same process). Spawn it from the test's own thread, not from a
/// pool thread that may retire first.
pub fn owned(program: &Path) -> Command {
    let mut cmd = if Path::new(SETPRIV).exists() {
        let mut c = Command::new(SETPRIV);
        c.arg("--pdeathsig").arg("KILL").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.process_group(0);
    cmd
}

/// SIGKILL to the child's whole process group (it leads one when started through
/// [`owned`]), then waits for the child.
pub fn kill_group(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// A running child process, killed on drop.
#[derive(Debug)]
pub struct Process(Child);

impl Process {
    /// Spawns `command`; panics with the program name when it cannot start.
    pub fn spawn(mut command: Command) -> Self {
        let program = command.get_program().to_string_lossy().into_owned();
        Self(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {program}: {e}")),
        )
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// How it ended, once it has (a kill shows as its signal).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// SIGTERM, then up to 10 s to exit (as a rolling restart would), then SIGKILL.
    pub fn stop(mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
