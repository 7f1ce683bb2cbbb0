//! The `lifeline` binary: parse arguments, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;
use lifeline_controller::cli::{self, Args};

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lifeline: {e:#}");
            ExitCode::FAILURE
        }
    }
}
