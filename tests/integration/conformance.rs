//! The conformance suite: every dataset of `../shared/conformance` through the real CLI, whose
//! report must match the expected file within 1e-9 (null where null), with one worker and with
//! two workers and tiny epochs.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::compare::mismatches;

fn conformance_dir() -> PathBuf {
    let dir = std::env::var_os("LABELQC_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"));
    assert!(
        dir.join("expected").is_dir(),
        "conformance data not found at {}; set LABELQC_CONFORMANCE_DIR to the shared/conformance folder",
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

fn report(dataset: &str, extra: &[&str]) -> Value {
    let dir = conformance_dir().join("data");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labelqc"));
    cmd.arg("report").arg("--labels").arg(dir.join(format!("{dataset}.events.jsonl"))).arg("--items");
    let gold = dir.join(format!("{dataset}.gold.jsonl"));
    if gold.exists() {
        cmd.arg("--gold").arg(gold);
    }
    cmd.args(extra);
    let output = cmd.output().expect("run labelqc");
    assert!(output.status.success(), "{dataset}: {}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.stderr.is_empty(),
        "{dataset} wrote to stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("report is JSON")
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
