//! The embedded store across crashes and damage, with `lifeline run` and `lifeline ctl`
//! as real processes: an unreadable `overrides.json` never lifts a drain and is never
//! written over; state is private (0700 directories, 0600 files); temporary files a
//! crash left behind are removed at start; a stalled disk under the store delays
//! changes, never answers or readiness.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant},
};

mod common;

use common::{ConfigFile, admin_target, ctl, embedded_store, get, spawn_run};
use hickory_proto::rr::RecordType;
use lifeline_testkit::{
    disk::{FreezableDisk, SmallDisk},
    dns::{answer_a, query_within, wait_for_answer},
    fixtures::{drain, static_cluster},
    free_addr,
    http::status_within,
};
use serde_json::Value;

const ZONE: &str = "state.lifeline.test";
const NAME: &str = "web.state.lifeline.test";

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn write_files(dir: &Path, dns: SocketAddr, admin: SocketAddr) {
    ConfigFile {
        zone: ZONE,
        dns,
        snapshots: dir.join("snapshots"),
        admin,
        store: embedded_store(&dir.join("store")),
        documents: &["docs.yaml"],
    }
    .write(&dir.join("lifeline.yaml"));
    std::fs::write(
        dir.join("docs.yaml"),
        format!(
            "{}---\n{}---\n\
apiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: web, namespace: shop}}\nspec: {{hostname: {NAME}, ttl: 5, targets: [{{cluster: primary, priority: 0}}, {{cluster: secondary, priority: 1}}]}}\n",
            static_cluster("primary", "eu", ip(2)),
            static_cluster("secondary", "us", ip(3)),
        ),
    )
    .unwrap();
}

fn wait_for(dns: SocketAddr, want: IpAddr) {
    wait_for_answer(dns, NAME, Duration::from_secs(20), |ips| ips == [want]);
}

fn status(admin: SocketAddr) -> Value {
    serde_json::from_str(&get(admin, "/v1/status")).unwrap_or(Value::Null)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_corrupt_overrides_file_keeps_the_drain_and_refuses_changes_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (dns, admin) = (free_addr(), free_addr());
    write_files(d, dns, admin);
    let lifeline = spawn_run(&d.join("lifeline.yaml"), false);
    wait_for(dns, ip(2));
    let (ok, text) = ctl(
        &admin_target(admin),
        &["drain", "primary", "--for", "2h", "--reason", "maintenance"],
    );
    assert!(ok, "{text}");
    wait_for(dns, ip(3));
    lifeline.stop();

    // State is private to the user running Lifeline.
    let store = d.join("store");
    assert_eq!(mode(&store), 0o700);
    for entry in std::fs::read_dir(&store).unwrap().flatten() {
        assert_eq!(mode(&entry.path()), 0o600, "{}", entry.path().display());
    }
    let snapshots = d.join("snapshots");
    assert_eq!(mode(&snapshots), 0o700);
    for entry in std::fs::read_dir(&snapshots).unwrap().flatten() {
        assert_eq!(mode(&entry.path()), 0o600, "{}", entry.path().display());
    }

    // The overrides file is damaged while the process is down, and a crash left
    // temporary files behind.
    std::fs::write(
        store.join("overrides.json"),
        b"{\"format\": 1, \"value\": [{\"id\": tr",
    )
    .unwrap();
    std::fs::write(store.join("decision.tmp.4242"), b"half a decision").unwrap();
    std::fs::write(
        snapshots.join(format!(".{ZONE}@00000000000000000009.snapshot.tmp")),
        b"half",
    )
    .unwrap();
    let lifeline = spawn_run(&d.join("lifeline.yaml"), false);
    wait_for(dns, ip(3));
    // Several decisions later the drain still holds.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(
            answer_a(dns, NAME).addresses(),
            [ip(3)],
            "the drain was lifted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !store.join("decision.tmp.4242").exists(),
        "stray temporary file kept"
    );
    assert!(
        !snapshots
            .join(format!(".{ZONE}@00000000000000000009.snapshot.tmp"))
            .exists()
    );
    let s = status(admin);
    let problems = s["storeProblems"].to_string();
    assert!(problems.contains("overrides.json"), "{s}");
    assert!(
        get(admin, "/metrics").contains("lifeline_store_unreadable_files 1"),
        "the unreadable file is counted"
    );

    // No change may overwrite what the operator set while the file is unreadable.
    let (ok, text) = ctl(
        &admin_target(admin),
        &["drain", "secondary", "--reason", "oops"],
    );
    assert!(!ok && text.contains("unreadable"), "{text}");
    let damaged = std::fs::read(store.join("overrides.json")).unwrap();
    assert!(damaged.ends_with(b"tr"), "the damaged file was replaced");

    // Repaired (removed): the good copy stays in force and changes work again.
    std::fs::remove_file(store.join("overrides.json")).unwrap();
    assert_eq!(answer_a(dns, NAME).addresses(), [ip(3)]);
    let (ok, text) = ctl(&admin_target(admin), &["clear", "primary"]);
    assert!(ok && text.contains("cleared 1"), "{text}");
    wait_for(dns, ip(2));
    lifeline.stop();
}

#[test]
fn a_leader_prunes_audit_entries_past_their_retention_so_the_trail_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (dns, admin) = (free_addr(), free_addr());
    write_files(dir.path(), dns, admin);
    // Retention 30 days (default 90); a trail with entries 100, 40 and 1 day old.
    let config = dir.path().join("lifeline.yaml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("audit: {retention: 720h}\n");
    std::fs::write(&config, text).unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o700)).unwrap();
    let day = Duration::from_secs(86_400);
    let entry = |age_days: u32, id: &str| {
        let at = std::time::SystemTime::now() - day * age_days;
        serde_json::to_string(&lifeline_model::overrides::AuditEntry {
            at,
            action: "set".into(),
            by: "oncall".into(),
            r#override: lifeline_engine::Override {
                id: id.into(),
                created_at: at,
                expires_at: at + Duration::from_secs(600),
                ..drain("primary")
            },
        })
        .unwrap()
    };
    let audit = store.join("audit.jsonl");
    std::fs::write(
        &audit,
        format!(
            "{}\n{}\n{}\n",
            entry(100, "old"),
            entry(40, "older-than-retention"),
            entry(1, "recent")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o600)).unwrap();

    let _run = spawn_run(&config, false);
    wait_for(dns, ip(2));
    let ids = || -> Vec<String> {
        std::fs::read_to_string(&audit)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["override"]["id"].to_string())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while ids().len() > 1 {
        assert!(
            Instant::now() < deadline,
            "entries past the retention were kept: {:?}",
            ids()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        ids(),
        ["\"recent\""],
        "only the entry inside the retention stays"
    );
}

/// `POST /v1/overrides` draining `cluster`, waiting as long as `limit` for the answer:
/// the HTTP status curl saw (0 when none came).
fn post_drain(admin: SocketAddr, cluster: &str, reason: &str, limit: Duration) -> u16 {
    let body = format!(
        r#"{{"cluster":"{cluster}","action":"drain","for":"1h","author":"oncall","reason":"{reason}"}}"#
    );
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["--max-time", &limit.as_secs().to_string()])
        .args(["-H", "content-type: application/json", "-d", &body])
        .arg(format!("http://{admin}/v1/overrides"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn a_stalled_store_disk_stops_neither_answers_nor_readiness_and_changes_land_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(disk) = FreezableDisk::mount(&d.join("store")) else {
        lifeline_testkit::skipped(
            "cannot loop-mount an ext4 image here (needs root, mkfs.ext4, loop devices)",
        );
        return;
    };
    let (dns, admin) = (free_addr(), free_addr());
    write_files(d, dns, admin);
    let _lifeline = spawn_run(&d.join("lifeline.yaml"), false);
    wait_for(dns, ip(2));

    // The store's disk stops answering for 10 s. Operators drain meanwhile: each drain
    // waits for the disk, more of them than the process has runtime workers.
    let thawer = disk
        .stall_for(Duration::from_secs(10))
        .expect("fsfreeze the store's disk");
    let drains: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                post_drain(
                    admin,
                    "primary",
                    &format!("stall {i}"),
                    Duration::from_secs(30),
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let within = Duration::from_secs(1);
    for second in 0..5 {
        assert_eq!(
            status_within(admin, "/readyz", within),
            Ok(200),
            "/readyz, {second} s into the stall"
        );
        assert_eq!(
            status_within(admin, "/metrics", within),
            Ok(200),
            "/metrics, {second} s into the stall"
        );
        for tcp in [false, true] {
            let got = query_within(dns, NAME, RecordType::A, tcp, within);
            assert_eq!(
                got.addresses(),
                [ip(2)],
                "tcp={tcp}, {second} s into the stall: {got:?}"
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    // The stall is real: no drain has been stored yet.
    assert!(
        drains.iter().all(|d| !d.is_finished()),
        "a drain finished while the store's disk was frozen"
    );

    // Once the disk answers, every drain is stored and the answer moves.
    thawer.join().unwrap();
    for d in drains {
        assert_eq!(d.join().unwrap(), 201, "a drain made during the stall");
    }
    wait_for(dns, ip(3));
}

/// Fills the filesystem holding `dir` with one file (removed by the caller to free it).
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    // Bounded: a disk of a few hundred KiB fills long before this.
    for _ in 0..100_000 {
        if f.write_all(&block).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    path
}

#[test]
fn what_the_store_cannot_save_is_published_counted_and_saved_once_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = d.join("store");
    let Some(_disk) = SmallDisk::mount(&store, "512k") else {
        lifeline_testkit::skipped("cannot mount a small tmpfs here (needs root)");
        return;
    };
    let (dns, admin) = (free_addr(), free_addr());
    write_files(d, dns, admin);
    let _lifeline = spawn_run(&d.join("lifeline.yaml"), false);
    wait_for(dns, ip(2));
    let counter = |name: &str| {
        get(admin, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix("_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let errors = || counter("lifeline_decision_save_errors");
    let policy_errors = || counter("lifeline_policy_save_errors");
    assert_eq!(errors(), Some(0.0));
    assert_eq!(policy_errors(), Some(0.0));
    // The primary's priority in the last good policy set on disk.
    let saved_priority = || {
        let text = std::fs::read_to_string(store.join("policies.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v["value"]["policies"][0]["spec"]["targets"]
            .as_array()?
            .iter()
            .find(|t| t["cluster"] == "primary")?["priority"]
            .as_u64()
    };
    assert_eq!(saved_priority(), Some(0));

    // The store's disk is full; the policy now prefers the secondary.
    let filler = fill(&store);
    let docs = std::fs::read_to_string(d.join("docs.yaml")).unwrap();
    std::fs::write(
        d.join("docs.yaml"),
        docs.replace(
            "{cluster: primary, priority: 0}",
            "{cluster: primary, priority: 2}",
        ),
    )
    .unwrap();
    // Answers move all the same, and the failed save is counted.
    wait_for(dns, ip(3));
    assert!(errors().is_some_and(|n| n >= 1.0), "{:?}", errors());
    assert!(
        policy_errors().is_some_and(|n| n >= 1.0),
        "{:?}",
        policy_errors()
    );
    assert_eq!(saved_priority(), Some(0), "the edit cannot have been saved");

    // With room again, the next decision is saved: it is what a restart starts from.
    std::fs::remove_file(filler).unwrap();
    let saved = Instant::now() + Duration::from_secs(20);
    loop {
        let decision = std::fs::read_to_string(store.join("decision.json")).unwrap_or_default();
        if decision.contains(&ip(3).to_string()) {
            break;
        }
        assert!(
            Instant::now() < saved,
            "the decision was never saved: {decision}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // So is the policy set in force: a restart without the policy source starts from
    // it, not from the set before the edit.
    while saved_priority() != Some(2) {
        assert!(
            Instant::now() < saved,
            "the policy set in force was never saved: primary at priority {:?}",
            saved_priority()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
