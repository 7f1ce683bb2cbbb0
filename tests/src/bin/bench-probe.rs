//! Probing a fleet from one process. A benchmark: it measures and prints; it asserts
//! nothing about speed.
//!
//! ```text
//! cargo run --release -p lifeline-tests --bin bench-probe [-- --targets 100000 \
//!     --interval-s 10 --seconds 60 --concurrency 64 --backends 500 --warmup-s 30]
//! ```
//!
//! Lifeline's prober (the one `lifeline run` uses) probes `--targets` HTTP targets every
//! `--interval-s`, each round on a fresh connection, against `--backends` HTTP servers on
//! loopback addresses. The servers run in a child process (this program, re-executed
//! with `--serve-backends`), so their CPU is not counted as the prober's. Every target
//! starts at once, as when a leader takes over, and is probed again at the fast interval
//! once (two successes confirm it up): that backlog is what `--warmup-s` (30 s) lets
//! pass. Then it reports over `--seconds`:
//! - probes per second and failed probes;
//! - CPU cores used by this process (utime + stime from /proc over wall time);
//! - resident memory before the targets were set and with them running;
//! - the gap between consecutive rounds of one target (against the interval), and the
//!   probes started in each second (how evenly the load is spread).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use lifeline_controller::probe::{Check, ProbeResult, ProbeSpec, Prober, TargetKey};
use lifeline_testkit::backend::{Backend, Behaviour};
use tokio::sync::mpsc;

struct Args {
    targets: usize,
    interval: Duration,
    seconds: u64,
    concurrency: usize,
    backends: usize,
    warmup: Duration,
}

fn main() -> Result<()> {
    let mut a = Args {
        targets: 100_000,
        interval: Duration::from_secs(10),
        seconds: 60,
        concurrency: 64,
        backends: 500,
        warmup: Duration::from_secs(30),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--targets" => a.targets = value()?.parse()?,
            "--interval-s" => a.interval = Duration::from_secs(value()?.parse()?),
            "--seconds" => a.seconds = value()?.parse()?,
            "--concurrency" => a.concurrency = value()?.parse()?,
            "--backends" => a.backends = value()?.parse()?,
            "--warmup-s" => a.warmup = Duration::from_secs(value()?.parse()?),
            "--serve-backends" => {
                let n: usize = value()?.parse()?;
                let port: u16 = value()?.parse()?;
                return serve_backends(n, port);
            }
            other => bail!(
                "unknown argument {other:?} (known: --targets N, --interval-s S, --seconds S, --concurrency N, --backends N, --warmup-s S)"
            ),
        }
    }
    if a.targets == 0 || a.backends == 0 || a.backends > 60_000 {
        bail!("--targets must be > 0 and --backends between 1 and 60000");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = lifeline_testkit::free_port(&[backend_ip(0)]);
    let backends = Backends::start(a.backends, port)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(measure(&a, port))?;
    drop(backends);
    Ok(())
}

/// The address of backend `i`: 127.1.0.1, 127.1.0.2, ... (250 per /24).
fn backend_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (i / 62_500) as u8,
        ((i / 250) % 250) as u8,
        (i % 250 + 1) as u8,
    ))
}

/// `--serve-backends N PORT`: N HTTP servers answering 200, until killed.
fn serve_backends(n: usize, port: u16) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut held = Vec::with_capacity(n);
        for i in 0..n {
            let addr = SocketAddr::new(backend_ip(i), port);
            held.push(
                Backend::try_serve(&Behaviour::default(), addr)
                    .await
                    .with_context(|| format!("binding backend {addr}"))?,
            );
        }
        println!("ready");
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// The backends' process, killed on drop.
struct Backends(Child);

impl Backends {
    fn start(n: usize, port: u16) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--serve-backends", &n.to_string(), &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the backends")?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("backend stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            bail!("the backends did not start");
        }
        Ok(Backends(child))
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// utime + stime of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ") ".
    (ticks(11) + ticks(12)) / 100.0
}

/// VmRSS and VmHWM of this process, in MiB.
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

fn percentile<T: Copy + Ord>(sorted: &[T], p: f64) -> T {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn measure(a: &Args, port: u16) -> Result<()> {
    let (tx, mut rx) = mpsc::channel::<ProbeResult>(8192);
    let prober = Prober::new(a.concurrency, tx)?;
    let (rss_before, _) = memory_mib();
    let specs: Vec<ProbeSpec> = (0..a.targets)
        .map(|i| ProbeSpec {
            key: TargetKey {
                policy: format!("bench/p{i}"),
                cluster: "c".to_owned(),
            },
            addresses: vec![backend_ip(i % a.backends)],
            check: Check::Http {
                https: false,
                port,
                path: "/healthz".to_owned(),
                host: Some(format!("p{i}.bench.lifeline.test")),
                expected_status: vec![200],
                insecure_skip_verify: false,
            },
            interval: a.interval,
            fast_interval: Duration::from_millis(100),
            timeout: Duration::from_secs(2),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
        })
        .collect();
    prober.set_targets(specs);
    println!(
        "== {} targets every {:?}, concurrency {}, {} backends; warm-up {:?}, then {} s measured",
        a.targets, a.interval, a.concurrency, a.backends, a.warmup, a.seconds
    );

    // Per target: when its last round finished (None before the first).
    let mut last: Vec<Option<Instant>> = vec![None; a.targets];
    let warm_until = Instant::now() + a.warmup;
    let mut t0: Option<Instant> = None;
    let mut cpu_at_start = 0.0;
    let mut gaps_ms: Vec<u32> = Vec::new();
    let mut per_second: Vec<u32> = vec![0; a.seconds as usize];
    let (mut probes, mut failed) = (0u64, 0u64);
    let mut first_failure = None;
    loop {
        let now = Instant::now();
        if t0.is_none() && now >= warm_until {
            t0 = Some(now);
            cpu_at_start = cpu_seconds();
        }
        if let Some(t0) = t0
            && now >= t0 + Duration::from_secs(a.seconds)
        {
            let cpu = cpu_seconds() - cpu_at_start;
            let wall = now.duration_since(t0).as_secs_f64();
            let (rss, hwm) = memory_mib();
            gaps_ms.sort_unstable();
            let mut secs = per_second.clone();
            secs.sort_unstable();
            println!(
                "probes: {probes} in {wall:.1} s = {:.0}/s (planned {:.0}/s); failed {failed}{}",
                probes as f64 / wall,
                a.targets as f64 / a.interval.as_secs_f64(),
                first_failure
                    .map(|d: String| format!(", e.g. {d}"))
                    .unwrap_or_default()
            );
            println!(
                "cpu: {:.2} cores ({cpu:.1} s of CPU in {wall:.1} s)",
                cpu / wall
            );
            println!(
                "memory: {rss_before:.1} MiB before the targets, {rss:.1} MiB running (peak {hwm:.1} MiB); {:.2} KiB per target",
                (rss - rss_before) * 1024.0 / a.targets as f64
            );
            if !gaps_ms.is_empty() {
                println!(
                    "gap between one target's rounds: p1 {} ms, p50 {} ms, p99 {} ms, max {} ms (interval {} ms, jitter ±10%)",
                    percentile(&gaps_ms, 0.01),
                    percentile(&gaps_ms, 0.5),
                    percentile(&gaps_ms, 0.99),
                    gaps_ms[gaps_ms.len() - 1],
                    a.interval.as_millis()
                );
            }
            println!(
                "probes finished per second: min {}, p50 {}, max {}",
                secs[0],
                percentile(&secs, 0.5),
                secs[secs.len() - 1]
            );
            return Ok(());
        }
        let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await else {
            continue;
        };
        let at = Instant::now();
        let Some(i) = r
            .key
            .policy
            .strip_prefix("bench/p")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|i| *i < a.targets)
        else {
            continue;
        };
        if let Some(t0) = t0 {
            probes += 1;
            if !r.ok {
                failed += 1;
                first_failure.get_or_insert(r.detail.clone());
            }
            let second = at.duration_since(t0).as_secs() as usize;
            if let Some(slot) = per_second.get_mut(second) {
                *slot += 1;
            }
            if let Some(prev) = last[i] {
                gaps_ms.push(at.duration_since(prev).as_millis().min(u32::MAX as u128) as u32);
            }
        }
        last[i] = Some(at);
    }
}
