//! What one update costs the standalone DNS server (`lifeline dns`) holding a large
//! zone, and how fast it starts with a journal to replay.
//!
//! ```text
//! cargo run --release -p lifeline-dns --example bench-update -- [--names 100000] [--updates 20] [--pending 10000]
//! ```
//!
//! The server is this program run again as `serve <config>`: the same code as
//! `lifeline dns` (`standalone::run`), fed by a source directory, logging only warnings.
//! Reported:
//! - per one-name patch dropped into the source directory: the server's CPU (user +
//!   system, from `/proc/<pid>/stat`) and the bytes it wrote (`wchar` of
//!   `/proc/<pid>/io`: every `write`, journal, snapshot and sockets alike), measured from
//!   before the file is written until the new answer is served and the journal has
//!   grown; median and max over `--updates`;
//! - warm start: exec to the first correct answer, with `--pending` journal entries on
//!   top of the snapshot, median of three; and the CPU used by then.
//!
//! Figures only; nothing here asserts a time.

use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RData, RecordType},
};
use lifeline_dns::{
    AddressSet, DnsConfig, NameRecords, Target, Update, ZoneConfig, ZonePatch, ZoneSnapshot,
    journal,
};

const ZONE: &str = "bench.example.com";

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn arg(args: &[String], name: &str, default: usize) -> Result<usize> {
    Ok(match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .ok_or(format!("{name} needs a value"))?
            .parse()?,
        None => default,
    })
}

fn zone() -> ZoneConfig {
    serde_json::from_value(serde_json::json!({
        "origin": ZONE,
        "primaryNs": format!("ns1.{ZONE}"),
        "hostmaster": format!("hostmaster.{ZONE}"),
        "nameservers": [format!("ns1.{ZONE}")],
    }))
    .expect("zone config")
}

fn records(a: [u8; 4]) -> NameRecords {
    NameRecords {
        address: Some(AddressSet {
            ttl: 30,
            targets: vec![Target {
                address: a.into(),
                cluster: "c1".into(),
                region: "r1".into(),
                weight: 1,
                share: None,
            }],
            max_answers: None,
            geo: false,
            standby: Vec::new(),
        }),
        ..NameRecords::default()
    }
}

fn snapshot(names: usize) -> ZoneSnapshot {
    let mut s = ZoneSnapshot::empty(ZONE, 1, SystemTime::now());
    for i in 0..names {
        let b = (i as u32).to_be_bytes();
        s.names
            .insert(format!("w{i}"), records([10, b[1], b[2], b[3]]));
    }
    s
}

/// Revision `r` moves `w0` to an address that tells the revision.
fn patch(r: u64) -> ZonePatch {
    let b = (r as u32).to_be_bytes();
    ZonePatch {
        zone: ZONE.into(),
        revision: r,
        decided_at: SystemTime::now(),
        upsert: [("w0".to_owned(), records([11, b[1], b[2], b[3]]))].into(),
        delete: Vec::new(),
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn answer(port: u16) -> Option<[u8; 4]> {
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    // Connected, so a port not open yet fails at once (ICMP) instead of timing out.
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .ok()?;
    let mut m = Message::query();
    m.metadata.id = rand::random();
    m.add_query(Query::query(
        Name::from_ascii(format!("w0.{ZONE}.")).ok()?,
        RecordType::A,
    ));
    socket.send(&m.to_vec().ok()?).ok()?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).ok()?;
    let reply = Message::from_vec(&buf[..n]).ok()?;
    reply.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0.octets()),
        _ => None,
    })
}

/// Waits (bounded) until the server answers `want` for `w0`; when it did.
fn wait_for(port: u16, want: [u8; 4], limit: Duration) -> Result<Instant> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if answer(port) == Some(want) {
            return Ok(Instant::now());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Err(format!("no answer {want:?} within {limit:?}").into())
}

fn cpu_seconds(pid: u32) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / ticks
}

fn written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn journal_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".journal"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, port: u16, source: Option<&Path>) -> Result<Server> {
    let dns = DnsConfig {
        udp: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        tcp: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        data_dir: dir.join("data"),
        source_dir: source.map(Path::to_owned),
        ..DnsConfig::default()
    };
    let config = dir.join(format!("serve-{port}.json"));
    std::fs::write(
        &config,
        serde_json::to_vec(&serde_json::json!({"dns": dns, "zones": [zone()]}))?,
    )?;
    let child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    Ok(Server(child))
}

fn serve(config: &Path) -> Result<()> {
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(config)?)?;
    let dns: DnsConfig = serde_json::from_value(doc["dns"].clone())?;
    let zones: Vec<ZoneConfig> = serde_json::from_value(doc["zones"].clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(lifeline_dns::standalone::run(&dns, &zones, None, async {
        let _ = tokio::signal::ctrl_c().await;
    }))?;
    Ok(())
}

fn median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

fn updates(work: &Path, names: usize, count: usize) -> Result<()> {
    let source = work.join("source");
    std::fs::create_dir_all(&source)?;
    std::fs::write(
        source.join("000-zone.json"),
        serde_json::to_vec(&snapshot(names))?,
    )?;
    let port = free_port()?;
    let server = start(work, port, Some(&source))?;
    let pid = server.0.id();
    let first = {
        let b = 0u32.to_be_bytes();
        [10, b[1], b[2], b[3]]
    };
    wait_for(port, first, Duration::from_secs(120))?;
    // The first whole snapshot goes to disk after the answer; let it land.
    let data = work.join("data");
    let settle = Instant::now();
    while journal_bytes(&data) == 0 && settle.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (mut cpu, mut bytes) = (Vec::new(), Vec::new());
    for k in 0..count {
        let r = 2 + k as u64;
        let (cpu0, w0, j0) = (cpu_seconds(pid), written(pid), journal_bytes(&data));
        std::fs::write(
            source.join(format!("{r:06}-patch.json")),
            serde_json::to_vec(&Update::Patch(patch(r)))?,
        )?;
        let b = (r as u32).to_be_bytes();
        wait_for(port, [11, b[1], b[2], b[3]], Duration::from_secs(30))?;
        let grown = Instant::now();
        while journal_bytes(&data) == j0 && grown.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        cpu.push((cpu_seconds(pid) - cpu0) * 1e3);
        bytes.push((written(pid) - w0) as f64);
    }
    let (cpu_med, cpu_max) = median(cpu);
    let (w_med, w_max) = median(bytes);
    println!(
        "one-name update at {names} names through the source directory ({count} updates): \
         CPU median {cpu_med:.0} ms, max {cpu_max:.0} ms (target ≤ 1 ms); \
         written median {w_med:.0} B, max {w_max:.0} B (target ≤ 4096 B)"
    );
    println!("  (CPU has a 10 ms resolution and includes the directory poll and the 1 s ticker)");
    Ok(())
}

fn warm_start(work: &Path, names: usize, pending: usize) -> Result<()> {
    let dir = work.join("warm");
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    // The files a server leaves after `pending` one-name changes on a snapshot that was
    // never compacted: written here directly, as its writer thread writes them.
    let base = snapshot(names);
    lifeline_dns::snapshots::write(&data, &base)?;
    let mut journal = journal::Appender::start(&data, ZONE, base.revision)?;
    let last = 1 + pending as u64;
    let entries: Vec<journal::Entry> = (2..=last)
        .map(|r| journal::Entry {
            from: r - 1,
            patch: patch(r),
            serials: None,
        })
        .collect();
    for chunk in entries.chunks(1000) {
        journal.append(chunk)?;
    }
    let b = (last as u32).to_be_bytes();
    // With nothing pending, w0 still has its first address.
    let want = if pending == 0 {
        [10, 0, 0, 0]
    } else {
        [11, b[1], b[2], b[3]]
    };
    let (mut times, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let port = free_port()?;
        let started = Instant::now();
        let server = start(&dir, port, None)?;
        let at = wait_for(port, want, Duration::from_secs(60))?;
        times.push(at.duration_since(started).as_secs_f64() * 1e3);
        cpu.push(cpu_seconds(server.0.id()) * 1e3);
    }
    let (t_med, t_max) = median(times);
    let (c_med, _) = median(cpu);
    println!(
        "warm start at {names} names with {pending} journal entries (exec → first correct answer): \
         median {t_med:.0} ms, max {t_max:.0} ms (target ≤ 100 ms); CPU by then median {c_med:.0} ms"
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        return serve(&PathBuf::from(args.get(2).ok_or("serve <config>")?));
    }
    let names = arg(&args, "--names", 100_000)?;
    let count = arg(&args, "--updates", 20)?;
    let pending = arg(&args, "--pending", 10_000)?;
    let work = tempfile::tempdir()?;
    updates(work.path(), names, count)?;
    warm_start(work.path(), names, pending)?;
    Ok(())
}
