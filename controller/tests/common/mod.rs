//! What the controller's process-level tests share: `lifeline run` and `lifeline ctl`
//! as real processes, and plain HTTP to the admin API.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
};

use lifeline_testkit::process::Process;

/// `lifeline run --config <config>`, killed when dropped; `faults` turns on the
/// test-only fault annotation.
pub fn spawn_run(config: &Path, faults: bool) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lifeline"));
    command
        .args(["run", "--config"])
        .arg(config)
        .env("LIFELINE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if faults {
        command.env("LIFELINE_TEST_FAULTS", "1");
    }
    Process::spawn(command)
}

/// `lifeline ctl <target> <args>`: whether it succeeded, and what it printed.
pub fn ctl(target: &[String], args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .arg("ctl")
        .args(target)
        .args(args)
        .output()
        .expect("run lifeline ctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The `--admin` arguments for `ctl` against `admin`.
pub fn admin_target(admin: SocketAddr) -> Vec<String> {
    vec!["--admin".to_owned(), format!("http://{admin}")]
}

/// The body of `GET http://<admin><path>` (empty when unreachable), never through a proxy.
pub fn get(admin: SocketAddr, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", &format!("http://{admin}{path}")])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
