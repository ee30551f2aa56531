//! Property test: random streams of labels, relabels, deletes and gold corrections give, through
//! the incremental engine, the same report as the plain recomputation in `reference`, for 1 and
//! 2 workers and for different epoch sizes.

use std::collections::BTreeMap;
use std::io::Write;

use labelqc::config::EngineSettings;
use labelqc::report::{self, ReportRequest};
use proptest::prelude::*;
use serde_json::Value;

use crate::compare::mismatches;
use crate::reference;

/// Scope 0 has only numeric labels (so every alpha level applies); scope 1 mixes every type.
const NUMERIC_LABELS: &[&str] = &["1", "1.0", "2", "3.5", "0", "-1"];
const MIXED_LABELS: &[&str] =
    &[r#""a""#, r#""b""#, "true", "false", "1", r#""1""#, r#"["x","y"]"#, r#"["y","x","y"]"#];

#[derive(Clone, Debug)]
enum Op {
    Label { scope: usize, item: u8, annotator: u8, label: usize, delete: bool },
    Gold { scope: usize, item: u8, label: usize, delete: bool },
}

fn pool(scope: usize) -> &'static [&'static str] {
    if scope == 0 {
        NUMERIC_LABELS
    } else {
        MIXED_LABELS
    }
}

fn scope_fields(scope: usize) -> &'static str {
    if scope == 0 {
        ""
    } else {
        r#","project":"p2","task":"t""#
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, 0..6u8, 0..5u8, 0..8usize, prop::bool::weighted(0.15)).prop_map(
            |(scope, item, annotator, label, delete)| Op::Label { scope, item, annotator, label: label % pool(scope).len(), delete }
        ),
        1 => (0..2usize, 0..6u8, 0..8usize, prop::bool::weighted(0.2)).prop_map(
            |(scope, item, label, delete)| Op::Gold { scope, item, label: label % pool(scope).len(), delete }
        ),
    ]
}

fn render(ops: &[Op]) -> (Vec<String>, Vec<String>) {
    let (mut labels, mut gold) = (Vec::new(), Vec::new());
    for (ts, op) in ops.iter().enumerate() {
        match op {
            Op::Label { scope, item, annotator, label, delete } => labels.push(if *delete {
                format!(
                    r#"{{"item_id":"i{item}","annotator_id":"a{annotator}","op":"delete","ts":{ts}{}}}"#,
                    scope_fields(*scope)
                )
            } else {
                format!(
                    r#"{{"item_id":"i{item}","annotator_id":"a{annotator}","label":{},"ts":{ts}{}}}"#,
                    pool(*scope)[*label],
                    scope_fields(*scope)
                )
            }),
            Op::Gold { scope, item, label, delete } => gold.push(if *delete {
                format!(r#"{{"item_id":"i{item}","op":"delete"{}}}"#, scope_fields(*scope))
            } else {
                format!(r#"{{"item_id":"i{item}","label":{}{}}}"#, pool(*scope)[*label], scope_fields(*scope))
            }),
        }
    }
    (labels, gold)
}

fn engine_report(labels: &[String], gold: &[String], workers: usize, epoch_events: usize) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, lines: &[String]| {
        let path = dir.path().join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        for line in lines {
            writeln!(f, "{line}").unwrap();
        }
        path
    };
    let request = ReportRequest {
        labels: write("labels.jsonl", labels),
        gold: Some(write("gold.jsonl", gold)),
        with_items: true,
        strict: true,
        engine: EngineSettings { workers, epoch_events, max_epochs_in_flight: 2 },
        drift: Default::default(),
        windows: WINDOWS_MS.to_vec(),
        progress: false,
        truth: Default::default(),
        routing: Default::default(),
    };
    let outcome = report::run(&request, |letter| panic!("unexpected bad line {letter}")).unwrap();
    serde_json::to_value(&outcome.report).unwrap()
}

/// Window sizes (ms) of the property test: event times are 0, 1, 2, ... ms.
const WINDOWS_MS: [i64; 2] = [10, 25];

/// The final label records (latest event per identity) whose `ts` is in `[start, end)`.
fn window_records(records: &[Value], start: i64, end: i64) -> Vec<Value> {
    let mut last: BTreeMap<(String, String, String, String), Value> = BTreeMap::new();
    for r in records {
        let field = |name: &str| r.get(name).and_then(Value::as_str).unwrap_or("default").to_string();
        let key = (field("project"), field("task"), field("item_id"), field("annotator_id"));
        if r.get("op").and_then(Value::as_str) == Some("delete") {
            last.remove(&key);
        } else {
            last.insert(key, r.clone());
        }
    }
    last.into_values().filter(|r| (start..end).contains(&r["ts"].as_i64().unwrap())).collect()
}

/// Checks every window of every scope against the reference over that window's labels, and that
/// every window with labels is there. Returns the problems found.
fn check_windows(report: &Value, labels: &[Value], gold: &[Value]) -> Vec<String> {
    let millis =
        |t: &Value| chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap()).unwrap().timestamp_millis();
    let mut problems = Vec::new();
    let mut seen = 0;
    for scope in report["scopes"].as_array().unwrap() {
        for window in scope["windows"].as_array().map(Vec::as_slice).unwrap_or_default() {
            seen += 1;
            let (start, end) = (millis(&window["start"]), millis(&window["end"]));
            let expected = reference::report(&window_records(labels, start, end), gold, false);
            let Some(mut expected) = expected["scopes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["project"] == scope["project"] && s["task"] == scope["task"])
                .cloned()
            else {
                problems.push(format!("window {window} has no labels in the reference"));
                continue;
            };
            let mut actual = window.clone();
            for field in ["pairs", "annotators", "items"] {
                expected.as_object_mut().unwrap().remove(field);
            }
            for field in ["size", "start", "end"] {
                actual.as_object_mut().unwrap().remove(field);
            }
            // Windows have no pairs, hence no mean Cohen's kappa.
            expected["agreement"].as_object_mut().unwrap().remove("mean_cohen_kappa");
            actual["agreement"].as_object_mut().unwrap().remove("mean_cohen_kappa");
            problems.extend(
                mismatches(&expected, &actual, 1e-9, true).into_iter().map(|p| format!("{window}: {p}")),
            );
        }
    }
    // Every (scope, size, start) with a final label is reported.
    let mut windows = std::collections::BTreeSet::new();
    for r in window_records(labels, i64::MIN, i64::MAX) {
        for size in WINDOWS_MS {
            let ts = r["ts"].as_i64().unwrap();
            windows.insert((r.get("project").map(Value::to_string), size, ts - ts.rem_euclid(size)));
        }
    }
    if windows.len() != seen {
        problems.push(format!("{seen} windows reported, {} have labels", windows.len()));
    }
    problems
}

/// Removes the drift, gate and alert fields from a report and returns them.
fn take_drift(report: &mut Value) -> Value {
    let mut taken = Vec::new();
    for scope in report["scopes"].as_array_mut().unwrap() {
        let scope = scope.as_object_mut().unwrap();
        taken.push(scope.remove("alerts").unwrap_or(Value::Null));
        taken.push(scope.remove("windows").unwrap_or(Value::Null));
        for annotator in scope["annotators"].as_array_mut().unwrap() {
            let annotator = annotator.as_object_mut().unwrap();
            taken.push(annotator.remove("drift").unwrap_or(Value::Null));
            taken.push(annotator.remove("gate").unwrap_or(Value::Null));
        }
    }
    Value::Array(taken)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_recomputation(ops in prop::collection::vec(op_strategy(), 0..70)) {
        let (labels, gold) = render(&ops);
        let parse = |lines: &[String]| -> Vec<Value> { lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect() };
        let expected = reference::report(&parse(&labels), &parse(&gold), true);
        let mut first_drift: Option<Value> = None;
        for (workers, epoch_events) in [(1, 1), (1, 5), (2, 1), (2, 1000)] {
            let mut actual = engine_report(&labels, &gold, workers, epoch_events);
            let problems = check_windows(&actual, &parse(&labels), &parse(&gold));
            prop_assert!(problems.is_empty(), "windows, workers {} epoch {}: {:#?}\nlabels {:#?}\ngold {:#?}", workers, epoch_events, problems, labels, gold);
            // Drift, gates and alerts have no reference here; they must not depend on workers or
            // epochs, though (their own tests check their values).
            let drift = take_drift(&mut actual);
            let problems = mismatches(&expected, &actual, 1e-9, true);
            prop_assert!(problems.is_empty(), "workers {} epoch {}: {:#?}\nlabels {:#?}\ngold {:#?}", workers, epoch_events, problems, labels, gold);
            match &first_drift {
                None => first_drift = Some(drift),
                Some(first) => prop_assert_eq!(first, &drift, "drift differs at workers {} epoch {}", workers, epoch_events),
            }
        }
    }
}
