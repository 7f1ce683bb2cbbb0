//! A child process a test started: killed when the guard drops, so a failing test never
//! leaves a server running.

use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

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
