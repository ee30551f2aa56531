//! The conformance suite: every dataset of `tests/conformance` (a copy of the project's shared
//! conformance data, kept equal to it by `.ci/run`) through the real CLI, whose report must match
//! the expected file within 1e-9 (null where null), with one worker and with two workers and tiny
//! epochs; and the inputs as real producers write them (`cases/`), whose integers must also be
//! equal exactly.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::compare::mismatches;

/// The conformance data: `tests/conformance` in this repository, or `$LABELQC_CONFORMANCE_DIR`.
pub fn conformance_dir() -> PathBuf {
    let dir = std::env::var_os("LABELQC_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance"));
    assert!(
        dir.join("expected").is_dir(),
        "conformance data not found at {} (tests/conformance in the repository, or \
         $LABELQC_CONFORMANCE_DIR)",
        dir.display()
    );
    dir
}

fn datasets() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(conformance_dir().join("expected"))
        .expect("readable expected/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| p.file_stem().expect("file name").to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `labelqc report --items` over `labels` (and `gold`, when it exists): the report, as JSON text.
fn report_text(name: &str, labels: &Path, gold: &Path, extra: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labelqc"));
    cmd.arg("report").arg("--labels").arg(labels).arg("--items");
    if gold.exists() {
        cmd.arg("--gold").arg(gold);
    }
    cmd.args(extra);
    let output = cmd.output().expect("run labelqc");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{name}: {stderr}");
    // Nothing on stderr: no refused line and no warning (but the one about more workers than
    // cores, on a machine with a single core).
    let unexpected: Vec<&str> = stderr.lines().filter(|l| !l.contains("workers on a machine with")).collect();
    assert!(unexpected.is_empty(), "{name} wrote to stderr: {stderr}");
    String::from_utf8(output.stdout).expect("report is UTF-8")
}

fn report(dataset: &str, extra: &[&str]) -> Value {
    let dir = conformance_dir().join("data");
    let labels = dir.join(format!("{dataset}.events.jsonl"));
    let text = report_text(dataset, &labels, &dir.join(format!("{dataset}.gold.jsonl")), extra);
    serde_json::from_str(&text).expect("report is JSON")
}

fn check_all(extra: &[&str]) {
    let names = datasets();
    assert!(names.len() >= 14, "expected the full conformance suite, found {names:?}");
    let mut failures = Vec::new();
    for name in &names {
        let mut expected: Value = serde_json::from_str(
            &std::fs::read_to_string(conformance_dir().join(format!("expected/{name}.json"))).unwrap(),
        )
        .unwrap();
        expected.as_object_mut().unwrap().remove("dataset");
        let report = report(name, extra);
        let scopes = report["scopes"].as_array().expect("scopes array");
        assert_eq!(scopes.len(), 1, "{name}: one scope expected");
        for problem in mismatches(&expected, &scopes[0], 1e-9, false) {
            failures.push(format!("{name}: {problem}"));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn conformance_one_worker() {
    check_all(&[]);
}

#[test]
fn conformance_two_workers_tiny_epochs() {
    check_all(&["--workers", "2", "--epoch-events", "3"]);
}

/// The inputs as real producers write them (`cases/NAME/`): the whole report must match, and
/// its integers exactly (`18446744073709551614` is not `18446744073709551615`).
fn check_cases(extra: &[&str]) {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(conformance_dir().join("cases"))
        .expect("readable cases/")
        .map(|e| e.expect("dir entry").path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 3, "expected the producer cases, found {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy();
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(case.join("expected.json")).unwrap()).unwrap();
        let text = report_text(&name, &case.join("events.jsonl"), &case.join("gold.jsonl"), extra);
        let report: Value = serde_json::from_str(&text).expect("report is JSON");
        for problem in mismatches(&expected, &report, 1e-9, false) {
            failures.push(format!("{name}: {problem}"));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn producer_cases_one_worker() {
    check_cases(&[]);
}

#[test]
fn producer_cases_two_workers_one_event_epochs() {
    check_cases(&["--workers", "2", "--epoch-events", "1"]);
}

/// Labels above 2^53 are printed back as they were sent, digit for digit.
#[test]
fn big_integer_labels_are_printed_exactly() {
    let case = conformance_dir().join("cases/uint64-segment-labels");
    let text = report_text("uint64", &case.join("events.jsonl"), &case.join("gold.jsonl"), &[]);
    for consensus in [
        r#""syn-08":{"consensus":18446744073709551614,"tied":true,"trusted":{"label":18446744073709551614,"#,
        r#""syn-05":{"consensus":9007199254740992,"tied":true,"#,
        r#""syn-02":{"consensus":720575940621039146,"tied":true,"#,
    ] {
        assert!(text.contains(consensus), "{consensus} not in {text}");
    }
}
