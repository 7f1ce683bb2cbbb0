//! `lifeline run` inside the test process: a configuration text in, a handle out that
//! stops it and checks that it stopped cleanly.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use lifeline_controller::{
    config::Config,
    run::{self, Documents},
};
/// The `zones:` entry of a zone, as the test kit writes it for every crate's tests.
pub use lifeline_testkit::fixtures::zone_line;

/// A running in-process `lifeline run`.
#[derive(Debug)]
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Starts `lifeline run` with the configuration `config` (YAML); relative paths in
    /// it resolve against `dir`. The admin API listens on a loopback address of its own.
    pub async fn start(config: &str, dir: &Path) -> Running {
        Self::start_with(config, dir, false).await
    }

    /// [`Running::start`] with the test-only fault annotation honoured.
    pub async fn start_with_faults(config: &str, dir: &Path) -> Running {
        Self::start_with(config, dir, true).await
    }

    async fn start_with(config: &str, dir: &Path, test_faults: bool) -> Running {
        let config = Config::from_bytes(config.as_bytes()).expect("a valid test configuration");
        let documents = run::documents_of(&config, &dir.join("lifeline.yaml"))
            .expect("the configuration's documents");
        let admin = tokio::net::TcpListener::bind((lifeline_testkit::loopback(), 0))
            .await
            .expect("an admin listener");
        Self::spawn(config, documents, admin, test_faults)
    }

    /// Runs `lifeline run` on a task of its own with what is given: the admin API on
    /// `admin`, and the test-only fault annotation honoured when `test_faults`.
    pub fn spawn(
        config: Config,
        documents: Documents,
        admin: tokio::net::TcpListener,
        test_faults: bool,
    ) -> Running {
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let options = run::Options {
            config,
            documents,
            admin,
            admin_token: None,
            admin_routes: Vec::new(),
            on_ready: None,
            test_faults,
        };
        let task = tokio::spawn(run::run(options, async move {
            let _ = rx.await;
        }));
        Running { stop, task }
    }

    /// Asks it to stop and waits up to `limit`; an error when it does not stop in time,
    /// panics, or exits with an error.
    pub async fn shutdown(self, limit: Duration) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(limit, self.task)
            .await
            .with_context(|| format!("lifeline did not stop within {limit:?}"))?
            .context("the lifeline task panicked")?
            .context("lifeline exited with an error")
    }

    /// Drops the task without a clean shutdown, as close to `kill -9` as one process
    /// allows, and waits up to 5 s for it to end.
    pub async fn abort(self) {
        self.task.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }

    /// Asks it to stop and waits up to `limit` for a clean exit; panics otherwise.
    pub async fn stop_within(self, limit: Duration) {
        self.shutdown(limit)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// [`Running::stop_within`] 10 s.
    pub async fn stop(self) {
        self.stop_within(Duration::from_secs(10)).await;
    }
}
