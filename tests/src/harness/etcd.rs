//! A real etcd (`/usr/bin/etcd`) on free loopback ports with a temporary data directory.
//!
//! ```text
//!  Etcd::start() ──► etcd --data-dir <tmp> (client 127.0.0.1:C, peer 127.0.0.1:P)
//!    stop()        SIGKILL + wait: a crash, recovered from the WAL on the next start
//!    start_again() same ports, same data directory
//! ```

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use lifeline_dns::EtcdConnect;

/// Where Debian's `etcd-server` package puts the binary.
pub const ETCD_BINARY: &str = "/usr/bin/etcd";

/// A running (or stopped) etcd owned by a scenario; killed on drop.
#[derive(Debug)]
pub struct Etcd {
    dir: tempfile::TempDir,
    ports: (u16, u16),
    child: Option<Child>,
}

fn free_port() -> anyhow::Result<u16> {
    // Released at once and bound by etcd a moment later; a clash fails the start loudly.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    /// Whether the etcd binary is installed (scenarios are skipped without it).
    pub fn available() -> bool {
        std::path::Path::new(ETCD_BINARY).exists()
    }

    /// Starts etcd and waits until it answers.
    pub async fn start() -> anyhow::Result<Etcd> {
        let mut etcd = Etcd {
            dir: tempfile::tempdir()?,
            ports: (free_port()?, free_port()?),
            child: None,
        };
        etcd.start_again().await?;
        Ok(etcd)
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.0)
    }

    /// Connection options for Lifeline's etcd clients.
    pub fn connect(&self) -> EtcdConnect {
        EtcdConnect::new([self.endpoint()])
    }

    /// Starts the server again on the same ports and data, and waits until it answers.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "etcd is already running");
        let peer = format!("http://127.0.0.1:{}", self.ports.1);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))?;
        let client = self.endpoint();
        self.child = Some(
            Command::new(ETCD_BINARY)
                .arg("--name=harness")
                .arg(format!(
                    "--data-dir={}",
                    self.dir.path().join("data").display()
                ))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=harness={peer}"))
                .arg("--log-level=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
        // Bounded: 100 tries of at most ~1.1 s each.
        for _ in 0..100 {
            let ready = tokio::time::timeout(Duration::from_secs(1), async {
                let mut c = self.connect().connect().await.ok()?;
                c.get("/harness-ready", None).await.ok()
            })
            .await;
            if matches!(ready, Ok(Some(_))) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("etcd did not become ready")
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
