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
        // Gates judge after two gold answers, so that blocks happen, and flip, in short streams.
        drift: labelqc_dataflows::drift::DriftSettings {
            defaults: labelqc_dataflows::drift::DriftConfig { gate_min_answers: 2, ..Default::default() },
            projects: BTreeMap::new(),
        },
        windows: WINDOWS_MS.to_vec(),
        progress: false,
        preferences: Default::default(),
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

/// Each item's trusted consensus against the reference's, given the gates the report shows
/// (annotators whose gate is `block`, per project); returns the mismatches and how many
/// annotators were blocked.
fn check_trusted(report: &Value, labels: &[Value]) -> (Vec<String>, usize) {
    let mut blocked = std::collections::BTreeSet::new();
    for scope in report["scopes"].as_array().unwrap() {
        for annotator in scope["annotators"].as_array().unwrap() {
            if annotator["gate"]["state"] == "block" {
                let project = scope["project"].as_str().unwrap().to_string();
                blocked.insert((project, annotator["annotator_id"].as_str().unwrap().to_string()));
            }
        }
    }
    let expected = reference::trusted(labels, &blocked);
    let mut problems = Vec::new();
    let mut seen = 0;
    for scope in report["scopes"].as_array().unwrap() {
        let name =
            (scope["project"].as_str().unwrap().to_string(), scope["task"].as_str().unwrap().to_string());
        for (item, object) in scope["items"].as_object().unwrap() {
            seen += 1;
            let want = &expected[&(name.clone(), item.clone())];
            let got = &object["trusted"];
            if !mismatches(want, got, 0.0, false).is_empty() {
                problems.push(format!("{name:?} {item}: trusted {got} != {want}"));
            }
        }
    }
    if seen != expected.len() {
        problems.push(format!("{seen} items reported, {} have labels", expected.len()));
    }
    (problems, blocked.len())
}

/// Removes the drift, gate and alert fields, and the truth, trust and routing fields (checked
/// against crowd-kit in `truth.rs`, and by `check_trusted` here), from a report and returns
/// them.
fn take_drift(report: &mut Value) -> Value {
    let mut taken = Vec::new();
    for scope in report["scopes"].as_array_mut().unwrap() {
        let scope = scope.as_object_mut().unwrap();
        for field in ["alerts", "windows", "truth", "routing"] {
            taken.push(scope.remove(field).unwrap_or(Value::Null));
        }
        for annotator in scope["annotators"].as_array_mut().unwrap() {
            let annotator = annotator.as_object_mut().unwrap();
            for field in ["drift", "gate", "confusion"] {
                taken.push(annotator.remove(field).unwrap_or(Value::Null));
            }
        }
        for item in
            scope.get_mut("items").and_then(Value::as_object_mut).into_iter().flat_map(|i| i.values_mut())
        {
            let item = item.as_object_mut().unwrap();
            for field in ["trusted", "truth", "route"] {
                taken.push(item.remove(field).unwrap_or(Value::Null));
            }
        }
    }
    Value::Array(taken)
}

/// The trusted consensus is checked with gates that block, and flip back: annotator a0 is wrong
/// on two gold items of scope 0 (blocked), then the gold answers are corrected (allowed again)
/// while a1 becomes wrong on them (blocked).
#[test]
fn trusted_consensus_follows_gates_that_flip() {
    let label =
        |item: u8, annotator: u8, label: usize| Op::Label { scope: 0, item, annotator, label, delete: false };
    let gold = |item: u8, label: usize| Op::Gold { scope: 0, item, label, delete: false };
    let mut ops =
        vec![label(0, 0, 2), label(1, 0, 2), label(0, 1, 0), label(1, 1, 0), label(2, 0, 3), label(2, 1, 4)];
    ops.extend([gold(0, 0), gold(1, 0)]);
    for (stage, extra) in [(1, vec![]), (2, vec![gold(0, 2), gold(1, 2)])] {
        ops.extend(extra);
        let (labels, gold_lines) = render(&ops);
        let parsed: Vec<Value> = labels.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        for workers in [1, 2] {
            let report = engine_report(&labels, &gold_lines, workers, 1);
            let (problems, blocked) = check_trusted(&report, &parsed);
            assert!(problems.is_empty(), "stage {stage}, {workers} workers: {problems:#?}");
            assert_eq!(blocked, 1, "stage {stage}: one annotator blocked");
            let gate = |a: &str| {
                let annotators = report["scopes"][0]["annotators"].as_array().unwrap();
                annotators.iter().find(|x| x["annotator_id"] == a).unwrap()["gate"]["state"].clone()
            };
            let (wrong, right) = if stage == 1 { ("a0", "a1") } else { ("a1", "a0") };
            assert_eq!(
                (gate(wrong), gate(right)),
                (Value::from("block"), Value::from("allow")),
                "stage {stage}"
            );
        }
    }
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
            let (problems, _) = check_trusted(&actual, &parse(&labels));
            prop_assert!(problems.is_empty(), "trusted, workers {} epoch {}: {:#?}\nlabels {:#?}\ngold {:#?}", workers, epoch_events, problems, labels, gold);
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
