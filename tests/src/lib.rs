//! Lifeline's test support: harnesses that start real servers on loopback, and helpers
//! shared by the end-to-end tests and benchmarks.

pub mod churn;
pub mod harness;
pub mod kube;
pub mod real;
pub mod storm;

/// The number after `name` on a benchmark's command line, or `default` when absent.
pub fn number_arg(args: &[String], name: &str, default: usize) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .with_context(|| format!("{name} takes a number")),
        None => Ok(default),
    }
}
