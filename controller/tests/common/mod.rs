//! What the controller's process-level tests share: `lifeline run` and `lifeline ctl`
//! as real processes, the `lifeline.yaml` they read, and plain HTTP to the admin API
//! (with curl, or with reqwest from async tests).

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use lifeline_testkit::{fixtures::zone_line, process::Process};

// === processes ===

/// `lifeline <args> --config <config>` logging at `info` to the test's stderr, ready to
/// be given more settings and spawned.
pub fn lifeline(args: &[&str], config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lifeline"));
    command
        .args(args)
        .arg("--config")
        .arg(config)
        .env("LIFELINE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

/// [`lifeline`] started, killed when dropped.
pub fn spawn(args: &[&str], config: &Path) -> Process {
    Process::spawn(lifeline(args, config))
}

/// `lifeline run --config <config>`, killed when dropped; `faults` turns on the
/// test-only fault annotation.
pub fn spawn_run(config: &Path, faults: bool) -> Process {
    let mut command = lifeline(&["run"], config);
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

/// The `--etcd` arguments for `ctl` straight against etcd at `endpoint`, under `prefix`.
pub fn etcd_target(endpoint: &str, prefix: &str) -> Vec<String> {
    ["--etcd", endpoint, "--etcd-prefix", prefix]
        .map(str::to_owned)
        .to_vec()
}

// === lifeline.yaml ===

/// A `lifeline.yaml` of the shape most process tests use: one zone, DNS and the admin API
/// on addresses of the test's own, a store, and policy documents from files.
#[derive(Debug)]
pub struct ConfigFile<'a> {
    pub zone: &'a str,
    /// DNS over UDP and TCP.
    pub dns: SocketAddr,
    /// Where DNS keeps its snapshots.
    pub snapshots: PathBuf,
    pub admin: SocketAddr,
    /// The `store:` section, YAML flow text (`{type: embedded, dataDir: ...}`).
    pub store: String,
    /// The policy documents' files, relative to the configuration's directory.
    pub documents: &'a [&'a str],
}

impl ConfigFile<'_> {
    /// Writes it to `path`.
    pub fn write(&self, path: &Path) {
        let Self {
            zone,
            dns,
            snapshots,
            admin,
            store,
            documents,
        } = self;
        let text = format!(
            "zones:\n{zone}dns: {{udp: [\"{dns}\"], tcp: [\"{dns}\"], dataDir: {snapshots}}}\n\
admin: {{listen: \"{admin}\"}}\n\
store: {store}\n\
policySource: {{type: files, paths: [{documents}]}}\n",
            zone = zone_line(zone),
            snapshots = snapshots.display(),
            documents = documents.join(", "),
        );
        std::fs::write(path, text).unwrap();
    }
}

/// The `store:` section of an embedded store in `dir`.
pub fn embedded_store(dir: &Path) -> String {
    format!("{{type: embedded, dataDir: {}}}", dir.display())
}

/// The `store:` section of an etcd store at `endpoint`, under `prefix`, with leases of
/// `lease_ttl` (`2s`).
pub fn etcd_store(endpoint: &str, prefix: &str, lease_ttl: &str) -> String {
    format!("{{type: etcd, endpoints: [\"{endpoint}\"], prefix: {prefix}, leaseTtl: {lease_ttl}}}")
}

// === HTTP ===

/// The body of `GET http://<admin><path>` (empty when unreachable), never through a proxy.
pub fn get(admin: SocketAddr, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", &format!("http://{admin}{path}")])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The JSON body of the response to `request`; panics when there is none.
pub async fn json_body(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// The text body of the response to `request`; panics when there is none.
pub async fn text_body(request: reqwest::RequestBuilder) -> String {
    request.send().await.unwrap().text().await.unwrap()
}
