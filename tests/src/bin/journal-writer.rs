//! Writes the [`lifeline_tests::churn`] history into a DNS server's data directory, one
//! revision after the other, and prints `durable <revision>` once each is on disk.
//! Crash tests kill it at random moments.
//!
//! ```text
//! journal-writer <data-dir> <names> <compact-after-entries> <max-seconds>
//! ```
//!
//! It carries on from whatever the directory holds, so successive runs on one
//! directory continue one history.

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lifeline_dns::{DnsConfig, JournalConfig, Shim, StartOptions, Update};
use lifeline_tests::churn;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, names, compact, seconds] = args.as_slice() else {
        bail!("usage: journal-writer <data-dir> <names> <compact-after-entries> <max-seconds>");
    };
    let names: usize = names.parse().context("names")?;
    let limit = Duration::from_secs(seconds.parse().context("max-seconds")?);
    let dns = DnsConfig {
        data_dir: dir.into(),
        journal: JournalConfig {
            compact_after_entries: compact.parse().context("compact-after-entries")?,
            ..JournalConfig::default()
        },
        ..DnsConfig::default()
    };
    let rt = tokio::runtime::Runtime::new()?;
    let options = StartOptions {
        no_sockets: true,
        ..StartOptions::default()
    };
    let zone = lifeline_testkit::fixtures::zone_config();
    let shim = rt.block_on(Shim::start_with(&dns, &[zone], options))?;
    let mut revision = shim.state().zones[0].revision.unwrap_or(0);
    if revision == 0 {
        shim.apply(Update::Replace(churn::first(names)))?;
        revision = 1;
    }
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    writeln!(out, "started at {revision}")?;
    while started.elapsed() < limit {
        revision += 1;
        shim.apply(Update::Patch(churn::patch(names, revision)))?;
        if shim.flush(Duration::from_secs(30)) != Some(true) {
            bail!("revision {revision} was not written");
        }
        writeln!(out, "durable {revision}")?;
        out.flush()?;
    }
    Ok(())
}
