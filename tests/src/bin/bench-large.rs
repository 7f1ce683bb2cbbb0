//! Large names: resident memory and time, from decision to compiled answers, for one
//! name backed by 10,000 and by 100,000 addresses.
//!
//! ```text
//! cargo run --release -p lifeline-tests --bin bench-large -- [--sizes 10000,100000] [--rounds 3]
//! ```
//!
//! Each size runs in a fresh process (this binary re-executes itself), so resident
//! memory is not muddied by an earlier size. Reported per size: the time of `decide`,
//! of building the zone's records from the decision, and of compiling them into wire
//! answers (best of `--rounds`); resident memory before and after, with all three held;
//! the bytes the compiled answers hold for the name; and bytes per address. Memory per
//! address should stay flat from one size to the next: answers are linear in targets.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    process::Command,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use lifeline_controller::publish::Publisher;
use lifeline_dns::{
    ZoneConfig, ZoneSnapshot,
    zone::{CompileOptions, GeoTable, compile_zone},
};
use lifeline_engine::{
    Decision, EngineConfig, OnSourceUnavailable, Policy, Signals, TargetSpec, WhenAllUnhealthy,
    decide,
};
use lifeline_model::{Strategy, limits};

const ZONE: &str = "bench.example.com";
/// Member clusters the addresses are spread over, with unequal weights.
const CLUSTERS: u32 = 10;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let rounds: usize = value("--rounds").map_or(Ok(3), |v| v.parse())?;
    if let Some(n) = value("--one") {
        return one(n.parse()?, rounds);
    }
    let sizes: Vec<u32> = value("--sizes")
        .unwrap_or_else(|| "10000,100000".to_owned())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "targets",
        "decide",
        "records",
        "compile",
        "rss before",
        "rss after",
        "answer bytes",
        "rss/addr"
    );
    let exe = std::env::current_exe()?;
    for n in sizes {
        let out = Command::new(&exe)
            .args(["--one", &n.to_string(), "--rounds", &rounds.to_string()])
            .output()
            .context("re-running the benchmark for one size")?;
        if !out.status.success() {
            bail!("size {n}: {}", String::from_utf8_lossy(&out.stderr));
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}

fn rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS in /proc/self/status")
}

fn policy(n: u32) -> Policy {
    let per = n / CLUSTERS;
    let targets = (0..CLUSTERS)
        .map(|c| TargetSpec {
            cluster: format!("c{c}").into(),
            region: format!("r{c}").into(),
            priority: 0,
            weight: 100 + c * 10,
            addresses: (0..per)
                .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + c * per + i)))
                .collect(),
        })
        .collect();
    Policy {
        id: "bench/large".to_owned(),
        hostname: format!("large.{ZONE}"),
        ttl: 30,
        max_answers: limits::MAX_ANSWERS_DEFAULT,
        strategy: Strategy::Weighted,
        targets,
        unhealthy_threshold: 3,
        healthy_threshold: 2,
        when_all_unhealthy: WhenAllUnhealthy::ServeAll,
        on_source_unavailable: OnSourceUnavailable::Freeze,
        hold_down: Duration::from_secs(60),
        ramp_duration: Duration::from_secs(120),
        ramp_steps: 4,
    }
}

fn best<T>(rounds: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..rounds.max(1) {
        let start = Instant::now();
        let v = f();
        best = best.min(start.elapsed());
        last = Some(v);
    }
    (best, last.expect("at least one round"))
}

fn one(n: u32, rounds: usize) -> Result<()> {
    let zone: ZoneConfig = serde_json::from_value(serde_json::json!({
        "origin": ZONE, "primaryNs": format!("ns1.{ZONE}"),
        "hostmaster": format!("h.{ZONE}"), "nameservers": [format!("ns1.{ZONE}")],
    }))?;
    let policies = vec![policy(n)];
    let before = rss_kib()?;
    let now = SystemTime::now();
    let (t_decide, decision) = best(rounds, || {
        decide(
            &EngineConfig::default(),
            &policies,
            &Signals::default(),
            &[],
            &Decision::default(),
            now,
        )
    });
    let answered = decision.policies["bench/large"].answers.len();
    if answered != (n / CLUSTERS * CLUSTERS) as usize {
        bail!("{answered} addresses answered, expected {n}");
    }
    let publisher = Publisher::new(&[ZONE.to_owned()], 0);
    let (t_records, records) = best(rounds, || publisher.records(&decision));
    let snapshot = ZoneSnapshot {
        format: lifeline_model::FORMAT_VERSION,
        zone: ZONE.to_owned(),
        revision: 1,
        decided_at: now,
        names: records.get(ZONE).cloned().unwrap_or_else(BTreeMap::new),
    };
    let geo = Arc::new(GeoTable::new(&[]));
    let (t_compile, table) = best(rounds, || {
        compile_zone(&zone, &snapshot, &geo, CompileOptions::default())
    });
    let after = rss_kib()?;
    let name = lifeline_dns::wire::encode(&format!("large.{ZONE}")).map_err(anyhow::Error::msg)?;
    let entry = table.entry(&name).context("the name is compiled")?;
    let answer_bytes: usize = entry.typed.iter().map(|(_, a)| a.choice.heap_bytes()).sum();
    let grown = after.saturating_sub(before) * 1024;
    println!(
        "{:>8} {:>10.1?} {:>10.1?} {:>10.1?} {:>7} MiB {:>7} MiB {:>12} {:>8} B",
        n,
        t_decide,
        t_records,
        t_compile,
        before / 1024,
        after / 1024,
        answer_bytes,
        grown / u64::from(n.max(1)),
    );
    // Keep everything alive until memory was read.
    drop((decision, records, table));
    Ok(())
}
