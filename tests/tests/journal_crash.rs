//! `kill -9` of a DNS server while it appends to its journal and while it compacts the
//! journal into a snapshot: no update it called durable is lost, and what a restart
//! serves is exactly one revision of the history, never a change half applied.
//!
//! The writer is a process of its own (`journal-writer`), killed at random moments; a
//! temporary snapshot file left behind shows the kill landed in a compaction.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use lifeline_dns::{DnsConfig, Shim, StartOptions};
use lifeline_testkit::{fixtures::ZONE, process::owned};
use lifeline_tests::churn;
use rand::Rng as _;

/// Names in the zone: enough that writing a snapshot takes a while to land a kill in.
const NAMES: usize = 20_000;
/// Journal entries between snapshots.
const COMPACT_AFTER: &str = "25";
/// Kills at random moments, then kills aimed at compactions.
const RANDOM_KILLS: usize = 8;
const COMPACTION_KILLS: usize = 4;

/// When to kill the writer.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// This long after its first durable revision: anywhere, appends included.
    After(Duration),
    /// As soon as a temporary snapshot file shows a compaction under way.
    Compacting,
}

/// Runs the writer on `dir` and kills it at `moment`; returns the last revision it
/// called durable.
fn run_and_kill(dir: &Path, moment: Moment) -> Option<u64> {
    let mut child = owned(Path::new(env!("CARGO_BIN_EXE_journal-writer")))
        .args([
            dir.to_str().unwrap(),
            &NAMES.to_string(),
            COMPACT_AFTER,
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("journal-writer starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(r) = line.strip_prefix("durable ") {
                let _ = tx.send(r.parse::<u64>().unwrap());
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(120));
    match moment {
        Moment::After(after) => std::thread::sleep(after),
        Moment::Compacting => {
            // Bounded: the writer stops by itself after 60 s.
            let start = Instant::now();
            while !mid_compaction(dir) && start.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    let _ = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status();
    let _ = child.wait();
    reader.join().unwrap();
    let mut last = first.ok();
    while let Ok(r) = rx.try_recv() {
        last = Some(r);
    }
    last
}

fn mid_compaction(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains(".snapshot.tmp."))
}

#[test]
fn a_kill_during_append_or_compaction_loses_nothing_durable_and_serves_no_half_change() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut in_append, mut in_compaction) = (0, 0);
    let mut rng = rand::rng();
    for round in 0..RANDOM_KILLS + COMPACTION_KILLS {
        let moment = if round < RANDOM_KILLS {
            Moment::After(Duration::from_millis(rng.random_range(0..1500)))
        } else {
            Moment::Compacting
        };
        let acked = run_and_kill(dir, moment);
        let compacting = mid_compaction(dir);
        if compacting {
            in_compaction += 1;
        } else {
            in_append += 1;
        }
        let dns = DnsConfig {
            data_dir: dir.to_owned(),
            ..DnsConfig::default()
        };
        let options = StartOptions {
            no_sockets: true,
            ..StartOptions::default()
        };
        let shim = rt
            .block_on(Shim::start_with(
                &dns,
                &[lifeline_testkit::fixtures::zone_config()],
                options,
            ))
            .unwrap();
        let snapshot = shim
            .snapshot(ZONE)
            .expect("a revision is served after the kill");
        println!(
            "round {round}: killed {} at durable {acked:?}; restart serves {}",
            if compacting {
                "mid-compaction"
            } else {
                "elsewhere (appends included)"
            },
            snapshot.revision
        );
        if let Some(acked) = acked {
            assert!(
                snapshot.revision >= acked,
                "revision {acked} was durable, the restart serves {}",
                snapshot.revision
            );
        }
        assert!(
            snapshot.names == churn::expected(NAMES, snapshot.revision),
            "round {round}: the zone at revision {} is not that revision's content",
            snapshot.revision
        );
        shim.shutdown();
    }
    println!("kills elsewhere {in_append}, mid-compaction {in_compaction}");
    assert!(
        in_compaction >= 1,
        "no kill landed in a compaction: a temporary snapshot file was never seen"
    );
}
