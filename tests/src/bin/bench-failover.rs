//! Failover latency and engine cost. A benchmark: it measures and prints; it asserts
//! nothing about speed.
//!
//! ```text
//! cargo run --release -p lifeline-tests --bin bench-failover [-- --rounds 20]
//! ```
//!
//! 1. Failover latency: `lifeline run` (a real process) with a Failover policy probing
//!    every 1 s (`fastInterval: 100ms`, `unhealthyThreshold: 2`, timeout `--timeout-ms`,
//!    100 by default), and PowerDNS's Lua `ifurlup` beside it when `pdns_server` is
//!    installed, both probing the same backends. The primary runs in a network namespace
//!    the bench creates (root and iproute2 needed) and dies two ways: its process killed
//!    (connections refused) and a black hole (its replies dropped). DNS is polled every
//!    10 ms until the answer changes. Repeated `--rounds` times each way.
//! 2. `engine::decide` time for 10,000 policies × 10 targets.
//! 3. Resident memory of `lifeline run` holding 10,000 policies.
//! 4. `--only wide`: memory and CPU of `lifeline run` with one target of 10,000 static
//!    addresses under an HTTPS check whose servers never answer (listeners on
//!    127.3.0.0/16 that never accept, so handshakes hang until the probe's timeout),
//!    against the same process with the same policy and no health check (the idle
//!    figure).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RData, RecordType},
};
use lifeline_engine::{self as engine, Decision, EngineConfig, Observation, Signals, TargetKey};
use lifeline_testkit::{
    backend::{Backend, Behaviour},
    netns::Netns,
};

const ZONE: &str = "bench.lifeline.test";
const NAME: &str = "app.bench.lifeline.test";

fn main() -> Result<()> {
    let mut rounds = 20usize;
    let mut timeout_ms = 100u64;
    let mut parts: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = args.next().context("--rounds N")?.parse()?,
            "--timeout-ms" => timeout_ms = args.next().context("--timeout-ms N")?.parse()?,
            "--only" => parts.push(args.next().context("--only failover|decide|memory|wide")?),
            "--serve-backend" => {
                return serve_backend(&args.next().context("--serve-backend ADDR")?);
            }
            other => bail!(
                "unknown argument {other:?} (known: --rounds N, --timeout-ms N, --only failover|decide|memory|wide)"
            ),
        }
    }
    let run = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    if run("decide") {
        println!("== engine::decide, 10,000 policies x 10 targets");
        decide_cost();
    }
    if !run("failover") && !run("memory") && !run("wide") {
        return Ok(());
    }
    let lifeline = lifeline_binary()?;
    let rt = tokio::runtime::Runtime::new()?;

    if run("failover") {
        println!(
            "\n== failover latency, from the primary's death to the first answer of only the secondary (DNS polled every 10ms), {rounds} rounds each"
        );
        let pdns = which("pdns_server");
        rt.block_on(failover_side_by_side(
            &lifeline,
            pdns.as_deref(),
            rounds,
            timeout_ms,
        ))?;
    }
    if run("memory") {
        println!("\n== memory of `lifeline run` with 10,000 policies (no health checks)");
        memory_with_policies(&lifeline, 10_000)?;
    }
    if run("wide") {
        println!(
            "\n== `lifeline run`, one target of 10,000 addresses, HTTPS check, servers that never answer"
        );
        wide_target(&lifeline, 10_000)?;
    }
    Ok(())
}

/// One policy, one static cluster of `n` addresses; measured once without a health check
/// (idle) and once with an HTTPS check against listeners that never accept.
fn wide_target(lifeline: &Path, n: usize) -> Result<()> {
    raise_fd_limit();
    let address = |i: usize| Ipv4Addr::new(127, 3, (i / 250) as u8, (i % 250 + 1) as u8);
    // Listeners that are never accepted from: the kernel completes a few handshakes per
    // address into the backlog and then drops SYNs, and no TLS byte is ever sent back.
    let first = std::net::TcpListener::bind((address(0), 0))?;
    let port = first.local_addr()?.port();
    let mut silent = vec![first];
    for i in 1..n {
        silent.push(
            std::net::TcpListener::bind((address(i), port))
                .with_context(|| format!("binding {}:{port}", address(i)))?,
        );
    }
    let addresses: Vec<String> = (0..n).map(|i| format!("\"{}\"", address(i))).collect();
    let mut figures = Vec::new();
    for check in [
        "",
        "\n  healthCheck: {http: {scheme: https, port: PORT, path: /healthz}, interval: 10s, timeout: 2s}",
    ] {
        let dir = tempfile::tempdir()?;
        let dns = write_config(dir.path(), &["docs.yaml"])?;
        std::fs::write(
            dir.path().join("docs.yaml"),
            format!(
                "apiVersion: lifeline.dev/v1alpha1\nkind: MemberCluster\nmetadata: {{name: wide}}\nspec: {{region: r0, addressSource: Static, addresses: [{}]}}\n---\n\
apiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: app, namespace: b}}\nspec:\n  hostname: {NAME}\n  targets: [{{cluster: wide}}]{}\n",
                addresses.join(", "),
                check.replace("PORT", &port.to_string())
            ),
        )?;
        let child = Process(
            Command::new(lifeline)
                .args(["--log", "warn", "run", "--config"])
                .arg(dir.path().join("lifeline.yaml"))
                .stdout(Stdio::null())
                .spawn()?,
        );
        let pid = child.0.id();
        let started = Instant::now();
        wait_for_answer(dns, NAME, started)?;
        // Warm-up: the first rounds, and the fast re-checks a first failure brings.
        std::thread::sleep(Duration::from_secs(20));
        let window = Duration::from_secs(30);
        let before = cpu_ticks(pid).context("reading CPU time")?;
        std::thread::sleep(window);
        let after = cpu_ticks(pid).context("reading CPU time")?;
        let rss = rss_kib(pid).context("reading VmRSS")? as f64 / 1024.0;
        let peak = peak_kib(pid).context("reading VmHWM")? as f64 / 1024.0;
        let core = (after - before) as f64 / 100.0 / window.as_secs_f64();
        let label = if check.is_empty() {
            "no health check (idle)"
        } else {
            "HTTPS check, never answered"
        };
        println!(
            "{label}: resident {rss:.1} MiB, peak {peak:.1} MiB, CPU {core:.3} cores over {}s",
            window.as_secs()
        );
        figures.push((rss, peak, core));
    }
    if let [idle, wide] = figures[..] {
        println!(
            "over idle: resident +{:.1} MiB, peak +{:.1} MiB, CPU +{:.3} cores (targets: +64 MiB, 0.1 core)",
            wide.0 - idle.0,
            wide.1 - idle.1,
            wide.2 - idle.2
        );
    }
    drop(silent);
    Ok(())
}

/// `lifeline.yaml` in `dir`: the bench zone on a free loopback port, the embedded store,
/// and `paths` as the policy files. Returns the DNS address.
fn write_config(dir: &Path, paths: &[&str]) -> Result<SocketAddr> {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let dns = SocketAddr::new(lo, free_port(lo)?);
    let admin = SocketAddr::new(lo, free_port(lo)?);
    let d = dir.display();
    std::fs::write(
        dir.join("lifeline.yaml"),
        format!(
            "zones:\n  - {{origin: {ZONE}, primaryNs: ns1.{ZONE}, hostmaster: h.{ZONE}, nameservers: [ns1.{ZONE}]}}\n\
dns: {{udp: [\"{dns}\"], tcp: [\"{dns}\"], dataDir: {d}/snap}}\nadmin: {{listen: \"{admin}\"}}\n\
store: {{type: embedded, dataDir: {d}/store}}\npolicySource: {{type: files, paths: [{}]}}\n",
            paths.join(", ")
        ),
    )?;
    Ok(dns)
}

/// 10,000 listeners need more descriptors than the usual soft limit of 1,024.
fn raise_fd_limit() {
    let pid = std::process::id().to_string();
    let hard = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
        })
        .unwrap_or_else(|| "65536".to_owned());
    let _ = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status();
}

/// Polls `name` over UDP until it has an answer (two minutes at most).
fn wait_for_answer(dns: SocketAddr, name: &str, started: Instant) -> Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut id = 0u16;
    loop {
        id = id.wrapping_add(1);
        let mut msg = Message::query();
        msg.metadata.id = id;
        msg.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
        socket.send_to(&msg.to_vec()?, dns)?;
        let mut buf = [0u8; 4096];
        if let Ok((len, _)) = socket.recv_from(&mut buf)
            && Message::from_vec(&buf[..len]).is_ok_and(|m| !m.answers.is_empty())
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("lifeline did not answer for {name} within 120s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Peak resident memory of a process, in KiB.
fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Builds (if needed) and returns the release `lifeline` binary next to this one.
fn lifeline_binary() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "lifeline-controller",
            "--bin",
            "lifeline",
        ])
        .status()
        .context("running cargo build for the lifeline binary")?;
    if !status.success() {
        bail!("building lifeline failed");
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("executable directory")?
        .join("lifeline");
    if !bin.exists() {
        bail!(
            "{} not found; run: cargo build --release -p lifeline-controller",
            bin.display()
        );
    }
    Ok(bin)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists())
}

fn free_port(ip: IpAddr) -> Result<u16> {
    Ok(lifeline_testkit::free_port(&[ip]))
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn query(dns: SocketAddr, name: &str, socket: &UdpSocket, id: u16) -> Option<Vec<IpAddr>> {
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    socket.send_to(&msg.to_vec().ok()?, dns).ok()?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        let resp = Message::from_vec(&buf[..n]).ok()?;
        if resp.metadata.id != id {
            continue; // a late reply to an earlier poll
        }
        return Some(
            resp.answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .collect(),
        );
    }
}

/// Polls every 10 ms until `want` holds; returns when it first did.
fn poll_until(
    dns: SocketAddr,
    want: impl Fn(&[IpAddr]) -> bool,
    limit: Duration,
) -> Result<Instant> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let start = Instant::now();
    let mut id = 1u16;
    while start.elapsed() < limit {
        id = id.wrapping_add(1);
        if let Some(ips) = query(dns, NAME, &socket, id)
            && want(&ips)
        {
            return Ok(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("answer did not change within {limit:?}")
}

async fn backend(addr: SocketAddr) -> Result<Backend> {
    Ok(Backend::try_serve(&Behaviour::default(), addr).await?)
}

/// How the primary dies in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Death {
    /// Its process is killed: connections are refused at once.
    Refused,
    /// Its host drops every packet: connections and requests get no answer at all.
    BlackHole,
}

impl Death {
    fn name(self) -> &'static str {
        match self {
            Death::Refused => "refused (process killed)",
            Death::BlackHole => "black hole (packets dropped)",
        }
    }
}

/// The primary backend: a copy of this program serving HTTP inside a network namespace,
/// so it can be killed (refused) or cut off (black hole) like a real remote host.
struct Primary {
    ns: Netns,
    port: u16,
    process: Option<Process>,
}

impl Primary {
    fn start(port: u16) -> Result<Self> {
        let ns = Netns::create().map_err(|e| anyhow::anyhow!("network namespace: {e}"))?;
        let mut primary = Primary {
            ns,
            port,
            process: None,
        };
        primary.revive()?;
        Ok(primary)
    }

    fn addr(&self) -> IpAddr {
        self.ns.addr()
    }

    fn die(&mut self, death: Death) -> Result<()> {
        match death {
            Death::Refused => drop(self.process.take()),
            Death::BlackHole => self.ns.black_hole(true).map_err(anyhow::Error::msg)?,
        }
        Ok(())
    }

    /// Undoes either death and waits (bounded) until the backend answers again.
    fn revive(&mut self) -> Result<()> {
        let _ = self.ns.black_hole(false);
        if self.process.is_none() {
            let exe = std::env::current_exe()?;
            let addr = SocketAddr::new(self.addr(), self.port);
            self.process = Some(Process(
                self.ns
                    .command(exe)
                    .args(["--serve-backend", &addr.to_string()])
                    .stdout(Stdio::null())
                    .spawn()
                    .context("starting the backend in its namespace")?,
            ));
        }
        let addr = SocketAddr::new(self.addr(), self.port);
        let start = Instant::now();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("the primary backend at {addr} did not come up within 10s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// `--serve-backend ADDR`: the primary's process, run inside its namespace.
fn serve_backend(addr: &str) -> Result<()> {
    let addr: SocketAddr = addr.parse()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let _backend = backend(addr).await?;
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// A DNS server under test, answering for `NAME`.
struct Contender {
    name: String,
    dns: SocketAddr,
    _process: Process,
}

/// Lifeline and PowerDNS (when installed) probe the same primary and secondary; the
/// primary dies `rounds` times each way, and each server is timed from the death to its
/// first answer of only the secondary.
async fn failover_side_by_side(
    lifeline: &Path,
    pdns: Option<&Path>,
    rounds: usize,
    timeout_ms: u64,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let secondary = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let port = free_port(secondary)?;
    let _secondary = backend(SocketAddr::new(secondary, port)).await?;
    let mut primary = Primary::start(port)?;
    let mut contenders = vec![start_lifeline(
        lifeline,
        dir.path(),
        primary.addr(),
        secondary,
        port,
        timeout_ms,
    )?];
    match pdns {
        Some(pdns) => contenders.push(start_pdns(
            pdns,
            dir.path(),
            primary.addr(),
            secondary,
            port,
        )?),
        None => println!(
            "powerdns: pdns_server not installed, skipped (apt-get install pdns-server pdns-backend-bind)"
        ),
    }
    let dns: Vec<SocketAddr> = contenders.iter().map(|c| c.dns).collect();
    all_answer(&dns, primary.addr(), Duration::from_secs(30)).await?;

    for death in [Death::Refused, Death::BlackHole] {
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
        for round in 0..rounds {
            primary.die(death)?;
            let died = Instant::now();
            let mut waits = Vec::new();
            for &server in &dns {
                waits.push(tokio::task::spawn_blocking(move || {
                    poll_until(server, |ips| ips == [secondary], Duration::from_secs(15))
                }));
            }
            for (i, wait) in waits.into_iter().enumerate() {
                samples[i].push(wait.await?? - died);
            }
            primary.revive()?;
            all_answer(&dns, primary.addr(), Duration::from_secs(30)).await?;
            // Let the probe phase drift so rounds do not all die at the same point of it.
            tokio::time::sleep(Duration::from_millis(137 * (round as u64 % 7))).await;
        }
        println!("\n{}:", death.name());
        for (c, s) in contenders.iter().zip(&samples) {
            print_latency(&c.name, s);
        }
    }
    Ok(())
}

/// Waits until every server answers only `ip`.
async fn all_answer(dns: &[SocketAddr], ip: IpAddr, limit: Duration) -> Result<()> {
    for &server in dns {
        tokio::task::spawn_blocking(move || poll_until(server, |ips| ips == [ip], limit)).await??;
    }
    Ok(())
}

fn start_lifeline(
    lifeline: &Path,
    dir: &Path,
    primary: IpAddr,
    secondary: IpAddr,
    port: u16,
    timeout_ms: u64,
) -> Result<Contender> {
    let dns = write_config(dir, &["docs.yaml"])?;
    std::fs::write(
        dir.join("docs.yaml"),
        format!(
            "apiVersion: lifeline.dev/v1alpha1\nkind: MemberCluster\nmetadata: {{name: primary}}\nspec: {{region: a, addressSource: Static, addresses: [\"{primary}\"]}}\n---\n\
apiVersion: lifeline.dev/v1alpha1\nkind: MemberCluster\nmetadata: {{name: secondary}}\nspec: {{region: b, addressSource: Static, addresses: [\"{secondary}\"]}}\n---\n\
apiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: app, namespace: bench}}\nspec:\n  hostname: {NAME}\n  ttl: 5\n  targets: [{{cluster: primary, priority: 0}}, {{cluster: secondary, priority: 1}}]\n  healthCheck: {{http: {{port: {port}}}, interval: 1s, fastInterval: 100ms, timeout: {timeout_ms}ms, unhealthyThreshold: 2, healthyThreshold: 2}}\n  failback: {{holdDown: 0s, rampDuration: 0s}}\n"
        ),
    )?;
    let process = Process(
        Command::new(lifeline)
            .args(["--log", "warn", "run", "--config"])
            .arg(dir.join("lifeline.yaml"))
            .stdout(Stdio::null())
            .spawn()
            .context("starting lifeline run")?,
    );
    Ok(Contender {
        name: format!(
            "lifeline (interval 1s, fastInterval 100ms, timeout {timeout_ms}ms, unhealthyThreshold 2)"
        ),
        dns,
        _process: process,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn print_latency(who: &str, samples: &[Duration]) {
    let mut s = samples.to_vec();
    s.sort();
    println!(
        "{who}: n={} p50={:.0}ms p99={:.0}ms min={:.0}ms max={:.0}ms",
        s.len(),
        percentile(&s, 0.5).as_secs_f64() * 1e3,
        percentile(&s, 0.99).as_secs_f64() * 1e3,
        s[0].as_secs_f64() * 1e3,
        s[s.len() - 1].as_secs_f64() * 1e3
    );
}

fn decide_cost() {
    let policies: Vec<engine::Policy> = (0..10_000)
        .map(|i| engine::Policy {
            id: format!("bench/p{i}"),
            hostname: format!("p{i}.{ZONE}"),
            ttl: 30,
            max_answers: 8,
            strategy: if i % 2 == 0 {
                lifeline_crds::Strategy::Failover
            } else {
                lifeline_crds::Strategy::Weighted
            },
            targets: (0..10)
                .map(|t| engine::TargetSpec {
                    cluster: format!("c{t}").into(),
                    region: format!("r{}", t % 3).into(),
                    priority: t / 3,
                    weight: 10 + t,
                    addresses: vec![IpAddr::V4(Ipv4Addr::new(
                        10,
                        (i / 256) as u8,
                        (i % 256) as u8,
                        t as u8,
                    ))],
                })
                .collect(),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            when_all_unhealthy: engine::WhenAllUnhealthy::ServeAll,
            on_source_unavailable: engine::OnSourceUnavailable::Freeze,
            hold_down: Duration::from_secs(30),
            ramp_duration: Duration::from_secs(60),
            ramp_steps: 4,
        })
        .collect();
    let config = EngineConfig::default();
    let now = SystemTime::now();
    let t = Instant::now();
    let first = engine::decide(
        &config,
        &policies,
        &Signals::default(),
        &[],
        &Decision::default(),
        now,
    );
    println!(
        "first decision (nothing to reuse): {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let observe = |which: &mut dyn Iterator<Item = &engine::Policy>, ok: bool| {
        let mut signals = Signals::default();
        for p in which {
            for target in &p.targets {
                signals
                    .targets
                    .entry(TargetKey::new(&p.id, &*target.cluster))
                    .or_default()
                    .observations
                    .push(Observation {
                        at: now,
                        ok,
                        detail: if ok { "200 OK" } else { "connect refused" }.into(),
                    });
            }
        }
        signals
    };
    // Every target reports (100,000 observations): every policy is decided again.
    let all = observe(&mut policies.iter(), true);
    // One policy's targets report a failure; nothing else is new.
    let one = observe(&mut policies.iter().skip(5_000).take(1), false);
    let quiet = Signals::default();
    // Settle first: two rounds of successes make every target healthy.
    let mut settled = first;
    for i in 1..=2 {
        settled = engine::decide(
            &config,
            &policies,
            &all,
            &[],
            &settled,
            now + Duration::from_secs(i),
        );
    }
    println!(
        "{:<44} {:>16} {:>16} {:>7}",
        "10,000 policies x 10 targets, median of 9", "only what changed", "all afresh", "ratio"
    );
    for (what, signals) in [
        ("nothing new", &quiet),
        ("one policy's 10 targets report", &one),
        ("all 100,000 targets report", &all),
    ] {
        let median = |f: &dyn Fn() -> Decision| {
            let mut times: Vec<Duration> = (0..9)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(f());
                    t.elapsed()
                })
                .collect();
            times.sort();
            times[4]
        };
        let at = now + Duration::from_secs(3);
        let incremental =
            median(&|| engine::decide(&config, &policies, signals, &[], &settled, at));
        let afresh =
            median(&|| engine::decide_afresh(&config, &policies, signals, &[], &settled, at));
        println!(
            "{what:<44} {:>13.3} ms {:>13.3} ms {:>6.1}x",
            incremental.as_secs_f64() * 1e3,
            afresh.as_secs_f64() * 1e3,
            afresh.as_secs_f64() / incremental.as_secs_f64()
        );
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn memory_with_policies(lifeline: &Path, n: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dns = write_config(
        dir.path(),
        &[
            "clusters.yaml",
            "p0.yaml",
            "p1.yaml",
            "p2.yaml",
            "p3.yaml",
            "p4.yaml",
            "p5.yaml",
            "p6.yaml",
            "p7.yaml",
        ],
    )?;
    let mut clusters = String::new();
    for c in 0..10 {
        clusters += &format!(
            "apiVersion: lifeline.dev/v1alpha1\nkind: MemberCluster\nmetadata: {{name: c{c}}}\nspec: {{region: r{}, addressSource: Static, addresses: [\"127.0.1.{}\"]}}\n---\n",
            c % 3,
            c + 1
        );
    }
    std::fs::write(dir.path().join("clusters.yaml"), clusters)?;
    // Eight files: each stays under the 1 MiB document file limit.
    for f in 0..8 {
        let mut text = String::new();
        for i in (f * n / 8)..((f + 1) * n / 8) {
            let targets: Vec<String> = (0..10)
                .map(|t| format!("{{cluster: c{t}, priority: {}}}", t / 3))
                .collect();
            text += &format!(
                "apiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: p{i}, namespace: b}}\nspec: {{hostname: p{i}.{ZONE}, targets: [{}]}}\n---\n",
                targets.join(", ")
            );
        }
        std::fs::write(dir.path().join(format!("p{f}.yaml")), text)?;
    }
    let started = Instant::now();
    let child = Process(
        Command::new(lifeline)
            .args(["--log", "warn", "run", "--config"])
            .arg(dir.path().join("lifeline.yaml"))
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_for_answer(dns, &format!("p{}.{ZONE}", n - 1), started)?;
    println!(
        "all {n} policies answered {:.1}s after start",
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));
    let rss = rss_kib(child.0.id()).context("reading VmRSS")?;
    println!("resident memory: {:.1} MiB", rss as f64 / 1024.0);
    // At rest: nothing changes, and the leader still decides once a second.
    let window = Duration::from_secs(20);
    let before = cpu_ticks(child.0.id()).context("reading CPU time")?;
    std::thread::sleep(window);
    let after = cpu_ticks(child.0.id()).context("reading CPU time")?;
    // Clock ticks are 1/100 s on Linux.
    let busy = (after - before) as f64 / 100.0;
    println!(
        "CPU at rest: {:.2} s in {} s ({:.1}% of a core)",
        busy,
        window.as_secs(),
        busy / window.as_secs_f64() * 100.0
    );
    Ok(())
}

/// User plus system CPU time of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// PowerDNS with the Lua `ifurlup` record, checking every 1 s
/// (`lua-health-checks-interval=1`) with its shortest timeout (1 s; it takes whole
/// seconds); one failed check marks an address down.
fn start_pdns(
    pdns: &Path,
    dir: &Path,
    primary: IpAddr,
    secondary: IpAddr,
    port: u16,
) -> Result<Contender> {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let dns_port = free_port(lo)?;
    let dns = SocketAddr::new(lo, dns_port);
    let d = dir.join("pdns");
    std::fs::create_dir_all(&d)?;
    std::fs::write(
        d.join("zone"),
        format!(
            "$ORIGIN {ZONE}.\n@ 3600 IN SOA ns1 h 1 3600 600 604800 5\n@ 3600 IN NS ns1\nns1 3600 IN A 127.0.0.1\n\
app 5 IN LUA A \"ifurlup('http://{NAME}:{port}/healthz', {{{{'{primary}'}}, {{'{secondary}'}}}}, {{timeout='1'}})\"\n"
        ),
    )?;
    std::fs::write(
        d.join("named.conf"),
        format!(
            "zone \"{ZONE}\" {{ type master; file \"{}\"; }};\n",
            d.join("zone").display()
        ),
    )?;
    std::fs::write(
        d.join("pdns.conf"),
        format!(
            "launch=bind\nbind-config={}\nenable-lua-records=yes\nlua-health-checks-interval=1\nlocal-address=127.0.0.1\nlocal-port={dns_port}\n\
socket-dir={}\ndaemon=no\nguardian=no\ndisable-syslog=yes\nloglevel=3\n",
            d.join("named.conf").display(),
            d.display()
        ),
    )?;
    let process = Process(
        Command::new(pdns)
            .arg(format!("--config-dir={}", d.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pdns_server")?,
    );
    Ok(Contender {
        name: "powerdns lua ifurlup (interval 1s, timeout 1s, one failure)".to_owned(),
        dns,
        _process: process,
    })
}
