//! The `lifeline` command line. Every flag can also be set through a `LIFELINE_*`
//! environment variable.

use std::{io::Write, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::documents;

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
        Command::Crds => {
            let mut out = std::io::stdout().lock();
            out.write_all(lifeline_crds::crds_yaml().as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files } => Ok(validate(&files)),
    }
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
