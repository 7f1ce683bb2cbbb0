//! Saying loudly that a test did not run, and refusing to skip where everything is
//! meant to be present.
//!
//! The test harness captures `eprintln!` of a passing test, so a skip printed that way
//! is seen only with `--nocapture`. [`skipped`] writes to the process's stderr handle
//! directly, which the harness does not capture: a plain `cargo test` shows every skip.
//!
//! With `LIFELINE_REQUIRE_ALL=1` (CI sets it, as it sets
//! `LIFELINE_REQUIRE_CONTROL_PLANE=1`) a skip is a failure: on a machine prepared to run
//! everything (root, etcd, dig, kubectl, cgroups), a test that cannot run is broken,
//! not excused.

use std::io::Write;

/// Reports that the current test is skipped, and why (`SKIPPED <test>: <why>`); panics
/// instead under `LIFELINE_REQUIRE_ALL=1`.
pub fn skipped(why: impl std::fmt::Display) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    if std::env::var("LIFELINE_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{test} cannot run here, and LIFELINE_REQUIRE_ALL=1 allows no skip: {why}");
    }
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}
