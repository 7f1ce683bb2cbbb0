//! Saying loudly that a test did not run.
//!
//! The test harness captures `eprintln!` of a passing test, so a skip printed that way
//! is seen only with `--nocapture`. [`skipped`] writes to the process's stderr handle
//! directly, which the harness does not capture: a plain `cargo test` shows every skip.

use std::io::Write;

/// Reports that the current test is skipped, and why (`SKIPPED <test>: <why>`).
pub fn skipped(why: impl std::fmt::Display) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}
