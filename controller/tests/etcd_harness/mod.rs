//! A real etcd for tests, on loopback ports with a temporary data directory, plus a TCP
//! proxy that can cut one client off (a partition) while etcd itself keeps running.
//!
//! ```text
//!  test ──► Etcd::start()  /usr/bin/etcd --data-dir <tmp> client 127.0.0.1:C peer 127.0.0.1:P
//!            │ stop()  kill + wait (a crash: etcd recovers from its WAL)
//!            │ start_again()  same ports, same data dir
//!            │ compact(rev)
//!  client ──► Proxy (127.0.0.1:X) ──► etcd   set_blocked(true) drops every connection
//! ```
//!
//! Tests call [`Etcd::start`] and return early when it gives `None` (no etcd binary).

#![allow(dead_code)]

use std::{
    future::Future,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use etcd_client::{Client, CompactionOptions};
use lifeline_dns::{
    DnsConfig, EtcdConnect, Shim, ShimHandle, ZoneConfig, etcd_source::EtcdTlsFiles,
};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

pub const ETCD: &str = "/usr/bin/etcd";

/// A running (or stopped) etcd server owned by a test.
#[derive(Debug)]
pub struct Etcd {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    /// With TLS: clients must present a certificate signed by the test CA.
    tls: Option<EtcdTlsFiles>,
}

fn free_port() -> u16 {
    // Released right away; etcd binds it a moment later. A collision would make the
    // start fail loudly, not silently.
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Starts etcd and waits until it answers; `None` (with a message) when the binary
    /// is not installed.
    pub async fn start() -> Option<Etcd> {
        Self::start_with(false).await
    }

    /// Like [`Etcd::start`], but clients speak TLS and must present a client
    /// certificate; [`Etcd::connect`] carries the CA and a client certificate.
    pub async fn start_tls() -> Option<Etcd> {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Option<Etcd> {
        init_tracing();
        if !std::path::Path::new(ETCD).exists() {
            eprintln!("SKIPPED: {ETCD} is not installed (Debian package etcd-server)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let tls = tls.then(|| write_pki(dir.path()));
        let mut etcd = Etcd {
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
            tls,
        };
        etcd.start_again().await;
        Some(etcd)
    }

    /// `http(s)://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// Connection options for this etcd.
    pub fn connect(&self) -> EtcdConnect {
        EtcdConnect {
            tls: self.tls.clone(),
            ..EtcdConnect::new([self.endpoint()])
        }
    }

    /// A fresh client for the test's own calls; each request times out after 5 s so a
    /// test fails instead of hanging.
    pub async fn client(&self) -> Client {
        let connect = self.connect();
        let opts = connect
            .options()
            .unwrap()
            .with_timeout(Duration::from_secs(5));
        within(
            Duration::from_secs(10),
            Client::connect(&connect.endpoints, Some(opts)),
        )
        .await
        .unwrap()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server (again) on the same ports and data directory, and waits until
    /// it answers.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let mut cmd = Command::new(ETCD);
        if let Some(tls) = &self.tls {
            let dir = self.dir.path();
            cmd.arg(format!("--cert-file={}", dir.join("server.pem").display()))
                .arg(format!("--key-file={}", dir.join("server.key").display()))
                .arg(format!("--trusted-ca-file={}", tls.ca_file.display()))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={}", self.endpoint()))
            .arg(format!("--advertise-client-urls={}", self.endpoint()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--log-level=warn")
            .arg("--logger=zap")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let connect = self.connect();
        // Bounded: 150 tries, about 15 s.
        for _ in 0..150 {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("etcd exited early ({status}); log: {}", self.log());
            }
            let ready = tokio::time::timeout(Duration::from_secs(1), async {
                let mut c = connect.connect().await.ok()?;
                c.get("/ready-probe", None).await.ok()
            })
            .await;
            if matches!(ready, Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("etcd did not become ready; log: {}", self.log());
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Compacts the history up to `revision`.
    pub async fn compact(&self, revision: i64) {
        let mut c = self.client().await;
        within(
            Duration::from_secs(5),
            c.compact(revision, Some(CompactionOptions::new().with_physical())),
        )
        .await
        .unwrap();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes a CA, a server certificate for 127.0.0.1 and a client certificate (PEM) into
/// `dir`; returns the client's files.
fn write_pki(dir: &std::path::Path) -> EtcdTlsFiles {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "lifeline etcd test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    // Separate leaves: rustls refuses a CA certificate as the server's own.
    let leaf = |name: &str, file: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    };
    leaf("127.0.0.1", "server");
    leaf("lifeline", "client");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    EtcdTlsFiles {
        ca_file: dir.join("ca.pem"),
        cert_file: Some(dir.join("client.pem")),
        key_file: Some(dir.join("client.key")),
    }
}

/// Logs to the test output, filtered by `RUST_LOG` (nothing when unset).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// Awaits `f` for at most `limit`; panics with a clear message on timeout.
pub async fn within<T>(limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}"))
}

/// Polls `check` every 20 ms until it returns `Some` or `limit` passes (then panics
/// naming `what`).
pub async fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = tokio::time::Instant::now();
    // Bounded by `limit` and by a count (limit / 20 ms + 1).
    let max = (limit.as_millis() / 20) as usize + 1;
    for _ in 0..max {
        if let Some(v) = check() {
            return v;
        }
        if start.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check().unwrap_or_else(|| panic!("timed out after {limit:?} waiting for {what}"))
}

// === proxy ===

/// A loopback TCP proxy in front of etcd that a test can block.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    blocked: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blocked = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let target = Arc::new(Mutex::new(target));
        let accept = {
            let (blocked, conns, target) = (blocked.clone(), conns.clone(), target.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if blocked.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let to = *target.lock();
                    conns.lock().push(tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    }));
                }
            })
        };
        Proxy {
            addr,
            target,
            blocked,
            conns,
            accept,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends new connections to `target` and drops the open ones (another etcd
    /// appearing behind the same endpoint).
    pub fn set_target(&self, target: SocketAddr) {
        *self.target.lock() = target;
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }

    /// Blocking drops every open connection and refuses new ones.
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
        if blocked {
            for c in self.conns.lock().drain(..) {
                c.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }
}

// === shim ===

pub const ZONE: &str = "global.example.com";

pub fn zone_config() -> ZoneConfig {
    serde_json::from_value(serde_json::json!({
        "origin": ZONE,
        "primaryNs": "ns1.global.example.com",
        "hostmaster": "hostmaster.example.com",
        "nameservers": ["ns1.global.example.com"],
    }))
    .unwrap()
}

/// A real shim on 127.0.0.1 port 0 persisting into `data_dir`.
pub async fn start_shim(data_dir: &std::path::Path) -> ShimHandle {
    let dns = DnsConfig {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp: vec!["127.0.0.1:0".parse().unwrap()],
        data_dir: data_dir.to_owned(),
        ..DnsConfig::default()
    };
    Shim::start(&dns, &[zone_config()]).await.unwrap()
}
