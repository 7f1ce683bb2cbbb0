//! `lifeline run` inside the test process: a configuration text in, a handle out that
//! stops it and checks that it stopped cleanly.

use std::{path::Path, time::Duration};

use lifeline_controller::{config::Config, run};

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

    /// Asks it to stop and waits up to `limit` for a clean exit; panics otherwise.
    pub async fn stop_within(self, limit: Duration) {
        let _ = self.stop.send(());
        tokio::time::timeout(limit, self.task)
            .await
            .expect("lifeline stops in time")
            .expect("the task does not panic")
            .expect("lifeline exits cleanly");
    }

    /// [`Running::stop_within`] 10 s.
    pub async fn stop(self) {
        self.stop_within(Duration::from_secs(10)).await;
    }
}

/// The `zones:` entry of a zone named `origin`, with its SOA and NS names under it.
pub fn zone_line(origin: &str) -> String {
    format!(
        "  - {{origin: {origin}, primaryNs: ns1.{origin}, hostmaster: h.{origin}, nameservers: [ns1.{origin}]}}\n"
    )
}
