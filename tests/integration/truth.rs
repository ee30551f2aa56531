//! Dawid–Skene truth through the real CLI: `labelqc report --items` on every conformance dataset
//! (`tests/conformance/truth/NAME.json`, crowd-kit 1.4.2's values) with one worker, with two
//! workers and tiny epochs, and on the dataset's live labels shuffled: each item's `truth`, each
//! annotator's `confusion` and the scope's `truth.priors` within 1e-6, the scope's `routing`
//! counting every item once; and with truth off, nothing fitted and nothing else changed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::conformance::conformance_dir;

const TOL: f64 = 1e-6;

fn datasets() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(conformance_dir().join("truth"))
        .expect("readable truth/")
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json").map(String::from))
        .collect();
    names.sort();
    assert!(names.len() >= 14, "the conformance truth values are missing: {names:?}");
    names
}

/// `labelqc report --items` over `labels` (and `gold`, when it exists), as JSON.
fn report(labels: &Path, gold: &Path, extra: &[&str]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labelqc"));
    cmd.arg("report").arg("--labels").arg(labels).arg("--items");
    if gold.exists() {
        cmd.arg("--gold").arg(gold);
    }
    let output = cmd.args(extra).output().expect("run labelqc");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("report is JSON")
}

/// A label's text as crowd-kit prints it (numbers by value).
fn same_label(got: &Value, want: &Value) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let (g, w) = (text(got), text(want));
    g == w
        || g.eq_ignore_ascii_case(&w)
        || matches!((g.parse::<f64>(), w.parse::<f64>()), (Ok(a), Ok(b)) if a == b)
}

/// The `p` of `label` in a list of `{label, p}`.
fn p_of(list: &Value, label: &Value) -> Option<f64> {
    list.as_array()?.iter().find(|e| same_label(&e["label"], label))?["p"].as_f64()
}

fn close(problems: &mut Vec<String>, what: String, got: Option<f64>, want: f64) {
    match got {
        Some(got) if (got - want).abs() <= TOL => {}
        _ => problems.push(format!("{what}: {got:?} != {want}")),
    }
}

/// The differences between a report's only scope and crowd-kit's values.
fn check(name: &str, report: &Value, expected: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let scope = &report["scopes"][0];
    let priors = expected["truth"]["priors"].as_array().unwrap();
    assert_eq!(scope["truth"]["priors"].as_array().map(Vec::len), Some(priors.len()), "{name}: priors");
    for want in priors {
        let got = p_of(&scope["truth"]["priors"], &want["label"]);
        close(&mut problems, format!("{name}: prior {}", want["label"]), got, want["p"].as_f64().unwrap());
    }
    let items = scope["items"].as_object().unwrap();
    let want_items = expected["items"].as_object().unwrap();
    assert_eq!(items.len(), want_items.len(), "{name}: items");
    for (id, want) in want_items {
        let (got, want) = (&items[id]["truth"], &want["truth"]);
        let want_posterior = want["posterior"].as_array().unwrap();
        assert_eq!(got["posterior"].as_array().map(Vec::len), Some(want_posterior.len()), "{name}: {id}");
        for w in want_posterior {
            let got = p_of(&got["posterior"], &w["label"]);
            close(
                &mut problems,
                format!("{name}: item {id} P({})", w["label"]),
                got,
                w["p"].as_f64().unwrap(),
            );
        }
        let mut ps: Vec<f64> = want_posterior.iter().map(|w| w["p"].as_f64().unwrap()).collect();
        ps.sort_by(|a, b| b.total_cmp(a));
        if (ps.len() < 2 || ps[0] - ps[1] > TOL) && !same_label(&got["label"], &want["label"]) {
            problems.push(format!("{name}: item {id} truth {} != {}", got["label"], want["label"]));
        }
    }
    let annotators: BTreeMap<&str, &Value> = scope["annotators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["annotator_id"].as_str().unwrap(), &a["confusion"]))
        .collect();
    let want_confusion = expected["confusion"].as_object().unwrap();
    assert_eq!(annotators.len(), want_confusion.len(), "{name}: annotators");
    for (annotator, want) in want_confusion {
        let got = annotators[annotator.as_str()].as_array().unwrap();
        let want = want.as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{name}: {annotator}'s cells");
        for w in want {
            let cell = got
                .iter()
                .find(|c| same_label(&c["observed"], &w["observed"]) && same_label(&c["true"], &w["true"]));
            let what = format!("{name}: {annotator} P({} | {})", w["observed"], w["true"]);
            close(&mut problems, what, cell.and_then(|c| c["p"].as_f64()), w["p"].as_f64().unwrap());
        }
    }
    let routing = &scope["routing"];
    let routed: i64 =
        ["settled", "needs_labels", "escalate"].iter().map(|r| routing[r].as_i64().unwrap()).sum();
    assert_eq!(routed, items.len() as i64, "{name}: every item has one route");
    problems
}

/// The live labels of an events file (the latest line per identity), in a shuffled order.
fn shuffled_live_lines(text: &str, seed: u64) -> String {
    let mut latest: BTreeMap<(String, String, String, String), Option<&str>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let field = |k: &str| match &v[k] {
            Value::Null => String::new(),
            other => other.to_string(),
        };
        let live = (v["op"] != "delete").then_some(line);
        latest.insert((field("project"), field("task"), field("item_id"), field("annotator_id")), live);
    }
    crate::compare::shuffled(latest.into_values().flatten().collect(), seed)
}

#[test]
fn dawid_skene_in_the_report_equals_crowd_kit_whatever_the_workers_epochs_and_order() {
    let data = conformance_dir().join("data");
    let dir = tempfile::tempdir().unwrap();
    let mut problems = Vec::new();
    for name in datasets() {
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(conformance_dir().join(format!("truth/{name}.json"))).unwrap(),
        )
        .unwrap();
        let labels = data.join(format!("{name}.events.jsonl"));
        let gold = data.join(format!("{name}.gold.jsonl"));
        let shuffled = dir.path().join(format!("{name}.shuffled.jsonl"));
        std::fs::write(&shuffled, shuffled_live_lines(&std::fs::read_to_string(&labels).unwrap(), 7))
            .unwrap();
        for (input, extra) in [
            (&labels, &["--workers", "1"][..]),
            (&labels, &["--workers", "2", "--epoch-events", "3"][..]),
            (&shuffled, &["--workers", "2", "--epoch-events", "5"][..]),
        ] {
            let report = report(input, &gold, extra);
            problems.extend(check(&name, &report, &expected).into_iter().map(|p| format!("{extra:?}: {p}")));
        }
    }
    assert!(problems.is_empty(), "{} mismatches:\n{}", problems.len(), problems.join("\n"));
}

/// `report` without what Dawid–Skene truth decides: every scope's `truth` and `routing`, every
/// annotator's `confusion`, every item's `truth` and `route`.
pub(crate) fn without_truth(report: &Value) -> Value {
    let mut report = report.clone();
    for scope in report["scopes"].as_array_mut().unwrap() {
        let scope = scope.as_object_mut().unwrap();
        scope.remove("truth");
        scope.remove("routing");
        for annotator in scope["annotators"].as_array_mut().unwrap() {
            annotator.as_object_mut().unwrap().remove("confusion");
        }
        if let Some(items) = scope.get_mut("items").and_then(Value::as_object_mut) {
            for item in items.values_mut() {
                let item = item.as_object_mut().unwrap();
                item.remove("truth");
                item.remove("route");
            }
        }
    }
    report
}

/// `truth.enabled = false` on generated traffic with gold answers (two projects): nothing is
/// fitted (every scope's and item's `truth` and every annotator's `confusion` null), only items
/// with a gold answer are settled, and every other number is what the report with truth says.
#[test]
fn truth_off_fits_nothing_and_changes_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (labels, gold, config) =
        (dir.path().join("labels.jsonl"), dir.path().join("gold.jsonl"), dir.path().join("off.toml"));
    let gen = Command::new(env!("CARGO_BIN_EXE_labelqc"))
        .args(["gen", "--events", "3000", "--annotators", "30", "--projects", "2", "--seed", "11"])
        .arg("--out")
        .arg(&labels)
        .arg("--gold-out")
        .arg(&gold)
        .output()
        .expect("run labelqc gen");
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    std::fs::write(&config, "[truth]\nenabled = false\n").unwrap();
    let on = report(&labels, &gold, &[]);
    let off = report(&labels, &gold, &["--config", config.to_str().unwrap()]);

    let gold_items: std::collections::HashSet<(String, String)> = std::fs::read_to_string(&gold)
        .unwrap()
        .lines()
        .map(|line| {
            let g: Value = serde_json::from_str(line).unwrap();
            (g["project"].as_str().unwrap().to_owned(), g["item_id"].as_str().unwrap().to_owned())
        })
        .collect();
    let scopes = off["scopes"].as_array().unwrap();
    assert_eq!(scopes.len(), 2, "two projects");
    let mut gold_seen = 0;
    for (scope, with_truth) in scopes.iter().zip(on["scopes"].as_array().unwrap()) {
        assert!(with_truth["truth"]["iterations"].as_u64().unwrap() > 0, "fitted with truth on");
        assert!(scope["truth"].is_null(), "{}", scope["truth"]);
        for annotator in scope["annotators"].as_array().unwrap() {
            assert!(annotator["confusion"].is_null(), "{}", annotator["confusion"]);
        }
        let project = scope["project"].as_str().unwrap().to_owned();
        let items = scope["items"].as_object().unwrap();
        for (id, item) in items {
            assert!(item["truth"].is_null(), "{id}: {}", item["truth"]);
            let has_gold = gold_items.contains(&(project.clone(), id.clone()));
            assert_eq!(item["route"] == "settled", has_gold, "{id}: {}", item["route"]);
            gold_seen += usize::from(has_gold);
        }
        let routing = &scope["routing"];
        let counted = ["settled", "needs_labels", "escalate"].map(|r| routing[r].as_u64().unwrap());
        assert_eq!(counted.iter().sum::<u64>(), items.len() as u64, "every item routed once");
    }
    assert!(gold_seen > 0, "some items have a gold answer");
    assert_eq!(without_truth(&off), without_truth(&on), "everything truth does not decide is the same");
}
