//! Saying that a test skipped itself for a missing tool, where the person running the tests sees
//! it: libtest captures what a passing test prints with `eprintln!`, but not what it writes to the
//! process's standard error directly.

use std::io::Write;

/// Writes `SKIPPED <why>` to the process's standard error, past libtest's output capture, so that
/// the line shows in `cargo test`'s output even though the test passes.
pub fn skipped(why: &str) {
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {why}");
}
