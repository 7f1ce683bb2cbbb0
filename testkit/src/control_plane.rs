//! Real Kubernetes control planes for tests: `kube-apiserver` processes on loopback
//! addresses of their own, over one real etcd, envtest-style (no kubelet, no nodes, no
//! controller manager).
//!
//! ```text
//!  ControlPlanes::start(n, opts)   one etcd (3.6, built from tests/control-plane/)
//!                                  n kube-apiservers, each with --etcd-prefix /<name>
//!    [i].url() / ca_pem()          https://127.B.x.y:P, the test CA that signed it
//!    [i].kubeconfig(user)          a kubeconfig for one of the static-token users
//!    [i].restart()                 SIGKILL and start again, same address and flags
//!    etcd()                        the shared etcd (compact, stop)
//! ```
//!
//! Each API server has certificates the test makes (a CA per cluster, a serving leaf for
//! its address), a service-account key pair, RBAC authorisation, and static-token users:
//! `admin` (group `system:masters`) and whatever [`Options::users`] adds. Start-up waits
//! on `/readyz` for every server at once.
//!
//! Binaries come from `KUBEBUILDER_ASSETS` when set (a directory holding `kube-apiserver`
//! and `etcd`, as controller-runtime's envtest uses), else from `target/control-plane/`,
//! where `tests/control-plane/build.sh` puts them. Without them, [`ControlPlanes::start`]
//! prints `SKIPPED` and returns `None`, unless `LIFELINE_REQUIRE_CONTROL_PLANE=1`, when
//! it panics (CI sets that, so a broken build cannot pass as a skip).

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{Etcd, net, process};

/// Where the two binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub kube_apiserver: PathBuf,
    pub etcd: PathBuf,
}

impl Binaries {
    /// `KUBEBUILDER_ASSETS`, else `target/control-plane/` of this workspace.
    pub fn find() -> Result<Binaries, String> {
        let dir = match std::env::var_os("KUBEBUILDER_ASSETS") {
            Some(d) => PathBuf::from(d),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/control-plane"),
        };
        let b = Binaries {
            kube_apiserver: dir.join("kube-apiserver"),
            etcd: dir.join("etcd"),
        };
        for p in [&b.kube_apiserver, &b.etcd] {
            if !p.is_file() {
                return Err(format!(
                    "{} is missing; build it with tests/control-plane/build.sh (needs Go) \
                     or set KUBEBUILDER_ASSETS to a directory of envtest binaries",
                    p.display()
                ));
            }
        }
        Ok(b)
    }
}

/// How the API servers are started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra static-token users: `(name, groups)`. Each gets a token of its own.
    pub users: Vec<(String, Vec<String>)>,
    /// Extra `kube-apiserver` flags, e.g. `--max-requests-inflight=5`.
    pub args: Vec<String>,
}

impl Options {
    pub fn user(mut self, name: &str, groups: &[&str]) -> Self {
        self.users.push((
            name.to_owned(),
            groups.iter().map(|g| (*g).to_owned()).collect(),
        ));
        self
    }

    pub fn arg(mut self, flag: &str) -> Self {
        self.args.push(flag.to_owned());
        self
    }
}

/// N API servers over one etcd; everything is killed on drop.
#[derive(Debug)]
pub struct ControlPlanes {
    // Declared first: API servers go down before their etcd.
    servers: Vec<Arc<ApiServer>>,
    etcd: Etcd,
}

/// One real `kube-apiserver`.
#[derive(Debug)]
pub struct ApiServer {
    name: String,
    dir: tempfile::TempDir,
    ip: IpAddr,
    port: u16,
    args: Vec<String>,
    binary: PathBuf,
    tokens: Vec<(String, String)>,
    ca_pem: String,
    child: parking_lot::Mutex<Option<Child>>,
}

/// How long one API server may take to become ready. Start-up has been seen to take
/// 30 s on slow runners; this is a limit, not an expectation.
const READY_LIMIT: Duration = Duration::from_secs(120);

impl ControlPlanes {
    /// Whether the binaries are present (without starting anything).
    pub fn available() -> bool {
        Binaries::find().is_ok()
    }

    /// Starts one etcd and `n` API servers named `cluster-0`.. and waits until all are
    /// ready. `None` (after printing why) when the binaries are absent.
    pub async fn start(n: usize, opts: Options) -> Option<ControlPlanes> {
        crate::init_tracing();
        let bins = match Binaries::find() {
            Ok(b) => b,
            Err(why) => {
                if std::env::var("LIFELINE_REQUIRE_CONTROL_PLANE").as_deref() == Ok("1") {
                    panic!("real control planes are required here: {why}");
                }
                crate::skipped(format_args!("no real control plane: {why}"));
                return None;
            }
        };
        let etcd = Etcd::start_binary(&bins.etcd, false).await;
        let mut servers = Vec::with_capacity(n);
        for i in 0..n {
            let s = ApiServer::prepare(&format!("cluster-{i}"), &bins, &etcd, &opts);
            s.spawn();
            servers.push(Arc::new(s));
        }
        let planes = ControlPlanes { servers, etcd };
        for s in &planes.servers {
            s.wait_ready().await;
        }
        Some(planes)
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// A shared handle on server `i`, for a harness that keeps its parts apart.
    pub fn server(&self, i: usize) -> Arc<ApiServer> {
        self.servers[i].clone()
    }

    pub fn etcd_mut(&mut self) -> &mut Etcd {
        &mut self.etcd
    }

    /// Resident memory of every process (API servers and etcd), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.servers
            .iter()
            .filter_map(|s| s.pid())
            .chain(self.etcd.pid())
            .map(rss_of)
            .sum()
    }
}

impl std::ops::Index<usize> for ControlPlanes {
    type Output = ApiServer;
    fn index(&self, i: usize) -> &ApiServer {
        &self.servers[i]
    }
}

impl ApiServer {
    fn prepare(name: &str, bins: &Binaries, etcd: &Etcd, opts: &Options) -> ApiServer {
        let dir = tempfile::tempdir().unwrap();
        let ip = net::loopback();
        // The address is this process's alone, so the port cannot be taken by a test.
        let port = net::free_port(&[ip]);
        let ca_pem = write_pki(dir.path(), ip);

        let mut users = vec![("admin".to_owned(), vec!["system:masters".to_owned()])];
        users.extend(opts.users.iter().cloned());
        let mut tokens = Vec::new();
        let mut csv = String::new();
        for (i, (user, groups)) in users.iter().enumerate() {
            let token = format!("{name}-{user}-{:016x}", rand::random::<u64>());
            writeln!(csv, "{token},{user},uid-{i},\"{}\"", groups.join(",")).unwrap();
            tokens.push((user.clone(), token));
        }
        std::fs::write(dir.path().join("tokens.csv"), csv).unwrap();

        let d = dir.path().display();
        let mut args = vec![
            format!("--etcd-servers={}", etcd.endpoint()),
            format!("--etcd-prefix=/{name}"),
            format!("--bind-address={ip}"),
            format!("--advertise-address={ip}"),
            format!("--secure-port={port}"),
            format!("--cert-dir={d}/certs"),
            format!("--tls-cert-file={d}/serving.pem"),
            format!("--tls-private-key-file={d}/serving.key"),
            format!("--token-auth-file={d}/tokens.csv"),
            format!("--service-account-key-file={d}/sa.pub"),
            format!("--service-account-signing-key-file={d}/sa.key"),
            "--service-account-issuer=https://kubernetes.default.svc".to_owned(),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            "--authorization-mode=RBAC".to_owned(),
            "--disable-admission-plugins=ServiceAccount".to_owned(),
            "--allow-privileged=true".to_owned(),
            // The default reconciler publishes the advertise address as the `kubernetes`
            // Service's endpoint, which refuses a loopback address, every 10 s.
            "--endpoint-reconciler-type=none".to_owned(),
            "--v=1".to_owned(),
        ];
        args.extend(opts.args.iter().cloned());
        ApiServer {
            name: name.to_owned(),
            dir,
            ip,
            port,
            args,
            binary: bins.kube_apiserver.clone(),
            tokens,
            ca_pem,
            child: parking_lot::Mutex::new(None),
        }
    }

    fn spawn(&self) {
        let mut slot = self.child.lock();
        assert!(slot.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = process::owned(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        *slot = Some(child);
    }

    /// Polls `/readyz` until it says ok; panics with the log's tail when the server exits
    /// or does not become ready in time.
    async fn wait_ready(&self) {
        let start = Instant::now();
        // Bounded: READY_LIMIT / 200 ms tries.
        for _ in 0..READY_LIMIT.as_millis() / 200 {
            if let Some(pid) = self.pid()
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                panic!(
                    "{} exited while starting; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if self.get("admin", "/readyz").await.as_deref() == Some("ok") {
                return;
            }
            if start.elapsed() > READY_LIMIT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "{} was not ready within {READY_LIMIT:?}; log:\n{}",
            self.name,
            self.log_tail()
        );
    }

    /// `GET path` as `user` (through curl, trusting only this server's CA); the body on
    /// a 2xx answer.
    pub async fn get(&self, user: &str, path: &str) -> Option<String> {
        let ca = self.dir.path().join("ca.pem");
        let out = tokio::process::Command::new("curl")
            .args(["-sf", "--noproxy", "*", "--max-time", "5", "--cacert"])
            .arg(&ca)
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", self.token(user)))
            .arg(format!("{}{path}", self.url()))
            .stdin(Stdio::null())
            .output()
            .await
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    pub fn url(&self) -> String {
        format!("https://{}:{}", self.ip, self.port)
    }

    /// The PEM of the CA that signed this server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The bearer token of a static-token user; panics for an unknown user.
    pub fn token(&self, user: &str) -> &str {
        self.tokens
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, t)| t.as_str())
            .unwrap_or_else(|| panic!("{} has no user {user}", self.name))
    }

    /// A kubeconfig that reaches this server as `user`.
    pub fn kubeconfig(&self, user: &str) -> String {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let (name, url, token) = (&self.name, self.url(), self.token(user));
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: {name}\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\n\
             users:\n- name: {user}\n  user:\n    token: {token}\n\
             contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {user}\n    namespace: default\n\
             current-context: {name}\n"
        )
    }

    /// Writes [`ApiServer::kubeconfig`] for `user` into the server's directory and returns
    /// its path.
    pub fn kubeconfig_file(&self, user: &str) -> PathBuf {
        let path = self.dir.path().join(format!("kubeconfig-{user}"));
        std::fs::write(&path, self.kubeconfig(user)).unwrap();
        path
    }

    /// `kubectl` as `user` against this server, with `args`; `(success, stdout, stderr)`.
    pub fn kubectl(
        &self,
        user: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> (bool, String, String) {
        use std::io::Write as _;
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig_file(user))
            .arg("--request-timeout=30s")
            .args(args)
            .env("NO_PROXY", "*")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl is installed");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// SIGKILL (a crash); the address stays this server's.
    pub fn kill(&self) {
        let child = self.child.lock().take();
        if let Some(child) = child {
            process::kill_group(child);
        }
    }

    /// Starts a killed server again with the same address and flags, and waits until it
    /// is ready.
    pub async fn start_again(&self) {
        self.spawn();
        self.wait_ready().await;
    }

    /// [`ApiServer::kill`] then [`ApiServer::start_again`].
    pub async fn restart(&self) {
        self.kill();
        self.start_again().await;
    }

    pub fn is_running(&self) -> bool {
        self.child.lock().is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.lock().as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("kube-apiserver.log")
    }

    /// The last 60 lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resident set size of a process in bytes (0 when it is gone).
pub fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Writes the CA, a serving leaf for `ip` and the service-account key pair into `dir`;
/// returns the CA's PEM.
fn write_pki(dir: &Path, ip: IpAddr) -> String {
    let ca = crate::pki::TestCa::new("lifeline test cluster CA");
    let names = [
        ip.to_string(),
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "kubernetes.default.svc".to_owned(),
    ];
    let serving = ca.leaf("kube-apiserver", &names, true);
    let sa = rcgen::KeyPair::generate().unwrap();
    for (file, text) in [
        ("ca.pem", ca.pem()),
        ("serving.pem", serving.cert_pem),
        ("serving.key", serving.key_pem),
        ("sa.key", sa.serialize_pem()),
        ("sa.pub", sa.public_key_pem()),
    ] {
        std::fs::write(dir.join(file), text).unwrap();
    }
    ca.pem()
}
