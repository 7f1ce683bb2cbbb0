//! The `lifeline` binary: parse arguments, set up logging, run the command.

use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;
use lifeline_controller::cli::{self, Args};

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Exactly one rustls crypto provider for the whole process (kube, reqwest).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lifeline: {e:#}");
            ExitCode::FAILURE
        }
    }
}
