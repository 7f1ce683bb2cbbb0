//! A real etcd server for tests, on an address of its own with a temporary data
//! directory.
//!
//! ```text
//!  Etcd::start()      etcd --data-dir <tmp>  client http://127.B.x.y:C  peer http://127.B.x.y:P
//!  Etcd::start_tls()  the same with server TLS and required client certificates
//!    stop()           SIGKILL + wait: a crash, recovered from the WAL on the next start
//!    start_again()    same address, ports and data directory
//!    compact(rev)     compacts the history (a watch from before it gets "compacted")
//!    store(prefix)    Lifeline's EtcdStore on it
//!  lead(store, ..)    a won election, or a panic after 10 s
//! ```
//!
//! The first start retries on a new address when etcd reports its address taken, so a
//! port claimed by another process between choosing and binding cannot fail a test.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use etcd_client::{Client, CompactionOptions};
use lifeline_etcd::{EtcdConnect, EtcdStore, EtcdTlsFiles, Leader, Leadership};

use crate::{net, wait::within};

/// Where Debian's `etcd-server` package puts the binary.
pub const ETCD_BINARY: &str = "/usr/bin/etcd";

/// A running (or stopped) etcd owned by a test; killed on drop.
#[derive(Debug)]
pub struct Etcd {
    dir: tempfile::TempDir,
    ip: IpAddr,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    /// With TLS: clients must present a certificate signed by the test CA.
    tls: Option<EtcdTlsFiles>,
    /// The etcd binary: Debian's, or the one built for the real control planes.
    binary: PathBuf,
}

/// Why a start failed: the address was taken (worth a retry elsewhere), or anything else.
enum StartError {
    AddrInUse(String),
    Other(String),
}

impl Etcd {
    /// Whether the etcd binary is installed.
    pub fn available() -> bool {
        Path::new(ETCD_BINARY).exists()
    }

    /// Starts etcd and waits until it answers; `None` (with a message) when the binary
    /// is not installed. Panics when it cannot start.
    pub async fn start() -> Option<Etcd> {
        Self::start_with(false).await
    }

    /// Like [`Etcd::start`], but clients speak TLS and must present a client
    /// certificate; [`Etcd::connect`] carries the CA and a client certificate.
    pub async fn start_tls() -> Option<Etcd> {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Option<Etcd> {
        crate::init_tracing();
        if !Self::available() {
            crate::skipped(format_args!(
                "{ETCD_BINARY} is not installed (Debian package etcd-server)"
            ));
            return None;
        }
        Some(Self::start_binary(Path::new(ETCD_BINARY), tls).await)
    }

    /// Starts the etcd at `binary` (without TLS unless `tls`) and waits until it
    /// answers. Panics when it cannot start.
    pub async fn start_binary(binary: &Path, tls: bool) -> Etcd {
        crate::init_tracing();
        // Bounded: 5 addresses, each with a directory of its own.
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let ip = net::loopback();
            let tls = tls.then(|| write_pki(dir.path(), ip));
            let ports = net::free_ports(ip, 2);
            let mut etcd = Etcd {
                dir,
                ip,
                client_port: ports[0],
                peer_port: ports[1],
                child: None,
                tls,
                binary: binary.to_owned(),
            };
            match etcd.try_start().await {
                Ok(()) => return etcd,
                Err(StartError::AddrInUse(log)) => last = log,
                Err(StartError::Other(msg)) => panic!("{msg}"),
            }
        }
        panic!("etcd found its address taken five times; last log: {last}");
    }

    /// `http(s)://<address>:<client port>`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr())
    }

    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.client_port)
    }

    /// Lifeline's connection options for this etcd.
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

    /// Lifeline's store on this etcd under `prefix`.
    pub async fn store(&self, prefix: &str) -> EtcdStore {
        EtcdStore::connect(&self.connect(), prefix).await.unwrap()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Starts the server again on the same address, ports and data directory, and waits
    /// until it answers. Panics when it cannot.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        match self.try_start().await {
            Ok(()) => {}
            Err(StartError::AddrInUse(msg) | StartError::Other(msg)) => panic!("{msg}"),
        }
    }

    async fn try_start(&mut self) -> Result<(), StartError> {
        let peer = format!("http://{}:{}", self.ip, self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let mut cmd = crate::process::owned(&self.binary);
        if let Some(tls) = &self.tls {
            let dir = tls.ca_file.parent().unwrap();
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
            .map_err(|e| StartError::Other(format!("cannot run {}: {e}", self.binary.display())))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), StartError> {
        let connect = self.connect();
        // Bounded: 150 tries, about 15 s at most plus the timeouts.
        for _ in 0..150 {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = self.log();
                return Err(if net::is_addr_in_use(&log) {
                    StartError::AddrInUse(log)
                } else {
                    StartError::Other(format!("etcd exited early ({status}); log: {log}"))
                });
            }
            let ready = tokio::time::timeout(Duration::from_secs(1), async {
                let mut c = connect.connect().await.ok()?;
                c.get("/ready-probe", None).await.ok()
            })
            .await;
            if matches!(ready, Ok(Some(_))) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop();
        Err(StartError::Other(format!(
            "etcd did not become ready; log: {}",
            self.log()
        )))
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::process::kill_group(child);
        }
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
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

/// Campaigns as `identity` with a lease of `ttl` and returns the won leadership; panics
/// when no election is won within 10 s.
pub async fn lead(store: &EtcdStore, identity: &str, ttl: Duration) -> Leader {
    within(
        Duration::from_secs(10),
        Leadership::new(store, identity, ttl).campaign(),
    )
    .await
    .unwrap()
}

/// Writes a CA, a server certificate for `ip` and a client certificate (PEM) into
/// `dir`; returns the client's files.
fn write_pki(dir: &Path, ip: IpAddr) -> EtcdTlsFiles {
    let ca = crate::pki::TestCa::new("lifeline etcd test CA");
    for (name, file) in [
        (ip.to_string(), "server"),
        ("lifeline".to_owned(), "client"),
    ] {
        let leaf = ca.leaf(&name, std::slice::from_ref(&name), false);
        std::fs::write(dir.join(format!("{file}.pem")), leaf.cert_pem).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), leaf.key_pem).unwrap();
    }
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    EtcdTlsFiles {
        ca_file: dir.join("ca.pem"),
        cert_file: Some(dir.join("client.pem")),
        key_file: Some(dir.join("client.key")),
    }
}
