//! The `lifeline` command line. Every flag can also be set through a `LIFELINE_*`
//! environment variable.

use std::{io::Write, net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Deserialize;

use crate::{config::Config, documents, run};

pub mod ctl;
pub mod demo;
pub mod preview;

/// Lifeline: multi-cluster traffic failover with an authoritative DNS server that keeps
/// answering when control planes fail.
#[derive(Debug, Parser)]
#[command(name = "lifeline", version, about, long_about = None)]
pub struct Args {
    /// Log filter (tracing-subscriber syntax), e.g. `info` or `lifeline=debug`.
    #[arg(long, global = true, env = "LIFELINE_LOG", default_value = "info")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller with the embedded DNS server (the main job).
    Run {
        /// Configuration file.
        #[arg(long, env = "LIFELINE_CONFIG")]
        config: PathBuf,
    },
    /// Run the DNS server alone, answering from its persisted snapshot and `dns.sourceDir`.
    Dns {
        /// Configuration file (its `zones`, `dns` and `admin` sections are used).
        #[arg(long, env = "LIFELINE_CONFIG")]
        config: PathBuf,
    },
    /// A self-contained demo: three simulated clusters, real probes, real DNS.
    Demo {
        /// DNS listen address (UDP and TCP).
        #[arg(long, env = "LIFELINE_DEMO_DNS", default_value = "127.0.0.1:5353")]
        dns: SocketAddr,
        /// Admin API listen address.
        #[arg(long, env = "LIFELINE_DEMO_ADMIN", default_value = "127.0.0.1:8080")]
        admin: SocketAddr,
        /// Port of the simulated clusters' HTTP backends (on 127.0.0.2-4).
        #[arg(long, env = "LIFELINE_DEMO_BACKEND_PORT", default_value_t = 18080)]
        backend_port: u16,
        /// Keep state here instead of a temporary directory.
        #[arg(long, env = "LIFELINE_DEMO_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Do not print the status table as it changes.
        #[arg(long, env = "LIFELINE_DEMO_QUIET")]
        quiet: bool,
    },
    /// Operate a running Lifeline through its admin API.
    Ctl {
        /// Admin API base URL of any replica.
        #[arg(long, env = "LIFELINE_ADMIN", default_value = "http://127.0.0.1:8080")]
        admin: String,
        /// Bearer token.
        #[arg(long, env = "LIFELINE_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Break-glass: talk to etcd directly (comma-separated endpoints) instead of the
        /// admin API. Needs no Kubernetes API and no running leader.
        #[arg(long, env = "LIFELINE_ETCD", value_delimiter = ',')]
        etcd: Vec<String>,
        /// Key prefix of Lifeline's data in etcd.
        #[arg(long, env = "LIFELINE_ETCD_PREFIX", default_value = "/lifeline")]
        etcd_prefix: String,
        /// CA bundle for etcd TLS.
        #[arg(long, env = "LIFELINE_ETCD_CA")]
        etcd_ca: Option<PathBuf>,
        /// Client certificate for etcd TLS.
        #[arg(long, env = "LIFELINE_ETCD_CERT")]
        etcd_cert: Option<PathBuf>,
        /// Client key for etcd TLS.
        #[arg(long, env = "LIFELINE_ETCD_KEY")]
        etcd_key: Option<PathBuf>,
        /// etcd user name (the password comes from LIFELINE_ETCD_PASSWORD).
        #[arg(long, env = "LIFELINE_ETCD_USER")]
        etcd_user: Option<String>,
        #[command(subcommand)]
        command: ctl::CtlCommand,
    },
    /// Print the CustomResourceDefinitions (FailoverPolicy, MemberCluster) as YAML.
    Crds,
    /// Check configuration files and FailoverPolicy/MemberCluster documents.
    ///
    /// Prints one `file: field.path: problem` line per problem and exits 1 when any
    /// is found; exits 0 when every file is valid.
    Validate {
        /// Files to check (configuration and policy documents, in any order).
        #[arg(
            required = true,
            env = "LIFELINE_VALIDATE_FILES",
            value_delimiter = ','
        )]
        files: Vec<PathBuf>,
    },
}

/// Runs the parsed command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Args { log: _, command } = args;
    match command {
        Command::Crds => print_crds(),
        Command::Validate { files } => Ok(validate(&files)),
        Command::Run { config: path } => run_controller(&path),
        Command::Dns { config: path } => serve_dns(&path),
        Command::Demo {
            dns,
            admin,
            backend_port,
            data_dir,
            quiet,
        } => run_demo(demo::DemoOptions {
            dns,
            admin,
            backend_port,
            data_dir,
            watch: !quiet,
        }),
        Command::Ctl {
            admin,
            token,
            etcd,
            etcd_prefix,
            etcd_ca,
            etcd_cert,
            etcd_key,
            etcd_user,
            command,
        } => {
            let target = if etcd.is_empty() {
                ctl::Target::Admin { url: admin, token }
            } else {
                let tls = etcd_ca.map(|ca_file| lifeline_etcd::source::EtcdTlsFiles {
                    ca_file,
                    cert_file: etcd_cert,
                    key_file: etcd_key,
                });
                etcd_target(etcd, etcd_prefix, tls, etcd_user)
            };
            run_ctl(target, command)
        }
    }
}

fn print_crds() -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    out.write_all(lifeline_crds::crds_yaml().as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// `lifeline run`: the controller, with the admin API bound before anything starts.
fn run_controller(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = load_config(path)?;
    let documents = run::documents_of(&config, path)?;
    runtime()?.block_on(async move {
        let admin = tokio::net::TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("binding the admin API on {}", config.admin.listen))?;
        let admin_token = std::env::var(&config.admin.token_env)
            .ok()
            .filter(|t| !t.is_empty());
        let options = run::Options {
            config,
            documents,
            admin,
            admin_token,
            admin_routes: Vec::new(),
            on_ready: None,
            test_faults: std::env::var_os("LIFELINE_TEST_FAULTS").is_some_and(|v| v == "1"),
        };
        run::run(options, shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `lifeline dns`: the DNS server alone, following etcd when the store is etcd.
fn serve_dns(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let parts = load_dns_parts(path)?;
    let mut sources: Vec<Box<dyn lifeline_dns::source::SnapshotSource>> = Vec::new();
    if let Some((connect, prefix)) = parts.store.as_ref().and_then(|s| s.etcd_connect()) {
        sources.push(Box::new(lifeline_etcd::source::EtcdSource::new(
            connect.clone(),
            prefix.clone(),
        )));
        sources.push(Box::new(lifeline_etcd::overrides::EtcdOverrides::new(
            connect, prefix,
        )));
    }
    runtime()?.block_on(async move {
        lifeline_dns::standalone::run_with_sources(
            &parts.dns,
            &parts.zones,
            Some(parts.dns_server.admin.unwrap_or(parts.admin.listen)),
            sources,
            shutdown_signal(),
        )
        .await
        .context("DNS server")
    })?;
    Ok(ExitCode::SUCCESS)
}

fn run_demo(options: demo::DemoOptions) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(demo::run(options, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// Break-glass access straight to etcd, for when neither the Kubernetes API nor a leader
/// is there to answer.
fn etcd_target(
    endpoints: Vec<String>,
    prefix: String,
    tls: Option<lifeline_etcd::source::EtcdTlsFiles>,
    user: Option<String>,
) -> ctl::Target {
    let mut connect = lifeline_etcd::source::EtcdConnect::new(endpoints);
    connect.tls = tls;
    connect.user = user.map(|u| {
        let password = crate::config::etcd_password("LIFELINE_ETCD_PASSWORD");
        (u, password)
    });
    ctl::Target::Etcd { connect, prefix }
}

fn run_ctl(target: ctl::Target, command: ctl::CtlCommand) -> anyhow::Result<ExitCode> {
    let out = runtime()?.block_on(ctl::run_on(target, command))?;
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|problems| {
        let lines: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {p}", path.display()))
            .collect();
        anyhow::anyhow!("invalid configuration:\n{}", lines.join("\n"))
    })
}

/// The sections `lifeline dns` reads; the rest of the file belongs to `run`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DnsParts {
    zones: Vec<lifeline_dns::ZoneConfig>,
    #[serde(default)]
    dns: lifeline_dns::DnsConfig,
    #[serde(default)]
    admin: crate::config::AdminConfig,
    /// With an etcd store, the shim follows the leader's records in etcd.
    #[serde(default)]
    store: Option<crate::config::StoreConfig>,
    /// Its own admin address, when `lifeline run` shares the network namespace.
    #[serde(default)]
    dns_server: crate::config::DnsServer,
}

fn load_dns_parts(path: &std::path::Path) -> anyhow::Result<DnsParts> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let problem = |p: lifeline_crds::validate::Problem| anyhow::anyhow!("{}: {p}", path.display());
    lifeline_crds::document::check_size(&bytes).map_err(problem)?;
    let text =
        std::str::from_utf8(&bytes).with_context(|| format!("{} is not UTF-8", path.display()))?;
    let mut docs = lifeline_crds::document::parse_yaml_stream(text).map_err(problem)?;
    let parts: DnsParts = lifeline_crds::document::decode(docs.remove(0)).map_err(problem)?;
    Ok(parts)
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let loaded = documents::load(files, &[]);
    if loaded.is_valid() {
        println!(
            "ok: {} file(s), {} configuration(s), {} FailoverPolicy, {} MemberCluster",
            files.len(),
            loaded.configs.len(),
            loaded.policies.len(),
            loaded.clusters.len()
        );
        ExitCode::SUCCESS
    } else {
        for report in &loaded.problems {
            println!("{report}");
        }
        ExitCode::FAILURE
    }
}
