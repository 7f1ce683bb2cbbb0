//! `kube-emulator`: the test suite's Kubernetes API emulator as a standalone server, for
//! poking at it with kubectl by hand.
//!
//! ```text
//! cargo run -p lifeline-tests --bin kube-emulator -- --listen 127.0.0.1:6443 --tls --kubeconfig-out kc.yaml
//! kubectl --kubeconfig kc.yaml apply --validate=false -f crds/
//! curl -s localhost:6443/_emulator/requests          # counters (use https + CA with --tls)
//! curl -s -XPOST localhost:6443/_emulator/faults -d '{"fault":{"type":"tooManyRequests","retryAfterSeconds":2}}'
//! curl -s -XDELETE localhost:6443/_emulator/faults   # clear
//! curl -s -XPOST 'localhost:6443/_emulator/outage?seconds=10'
//! curl -s -XPOST localhost:6443/_emulator/drop-watches      # end watch streams cleanly
//! curl -s -XPOST localhost:6443/_emulator/drop-connections  # cut every connection
//! curl -s -XPOST localhost:6443/_emulator/compact           # old resourceVersions -> 410
//! curl -s localhost:6443/_emulator/watches                  # open watch streams
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use lifeline_tests::kube::{Emulator, EmulatorConfig};

/// Serve an emulated Kubernetes API.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on; keep it on loopback.
    #[arg(
        long,
        env = "LIFELINE_EMULATOR_LISTEN",
        default_value = "127.0.0.1:6443"
    )]
    listen: SocketAddr,
    /// Serve HTTPS with a generated CA (embedded in the kubeconfig).
    #[arg(long, env = "LIFELINE_EMULATOR_TLS")]
    tls: bool,
    /// Write a kubeconfig for this server here.
    #[arg(long, env = "LIFELINE_EMULATOR_KUBECONFIG_OUT")]
    kubeconfig_out: Option<PathBuf>,
    /// Watch events kept for resuming; older resourceVersions get 410 Gone.
    #[arg(long, env = "LIFELINE_EMULATOR_HISTORY", default_value_t = 1000)]
    history: usize,
    /// Seconds between watch bookmarks.
    #[arg(long, env = "LIFELINE_EMULATOR_BOOKMARK_SECONDS", default_value_t = 5)]
    bookmark_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    run(Args::parse()).await
}

async fn run(args: Args) -> anyhow::Result<()> {
    let Args {
        listen,
        tls,
        kubeconfig_out,
        history,
        bookmark_seconds,
    } = args;
    let config = EmulatorConfig {
        listen,
        tls,
        history,
        bookmark_interval: Duration::from_secs(bookmark_seconds.max(1)),
        ..EmulatorConfig::default()
    };
    let emulator = Emulator::start(config).await?;
    if let Some(path) = &kubeconfig_out {
        emulator.write_kubeconfig(path)?;
        tracing::info!(path = %path.display(), "kubeconfig written");
    }
    println!("kube-emulator serving {}", emulator.url());
    tokio::signal::ctrl_c().await?;
    tracing::info!("interrupted; stopping");
    Ok(())
}
