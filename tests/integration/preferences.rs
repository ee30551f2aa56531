//! Pairwise preferences through `labelqc report` (spec 2.2): the conformance comparisons (the
//! leaderboard and the annotators' position numbers within 1e-6 of the reference, with one and
//! two workers, in file order and shuffled), relabels and deletes of comparisons, a scope that
//! mixes plain labels and comparisons, and a leaderboard that drops a biased annotator once its
//! gate blocks it.

use std::path::Path;

use serde_json::{json, Value};

use crate::cli::{json, labelqc};
use crate::compare::{mismatches, shuffled};
use crate::conformance::conformance_dir;

/// The report (`--items` off) over `labels` (and `gold`), with `extra` flags.
fn report(labels: &Path, gold: Option<&Path>, extra: &[&str]) -> Value {
    let mut args = vec!["report", "--labels", labels.to_str().unwrap()];
    if let Some(gold) = gold {
        args.extend(["--gold", gold.to_str().unwrap()]);
    }
    args.extend(extra);
    json(&labelqc(&args, None))
}

/// The lines of `text` in a seeded pseudo-random order (a Fisher–Yates shuffle).
#[test]
fn preference_conformance_one_and_two_workers_shuffled() {
    let dir = conformance_dir().join("preferences");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("comparisons.expected.json")).unwrap())
            .unwrap();
    let events = std::fs::read_to_string(dir.join("comparisons.events.jsonl")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let shuffled_path = tmp.path().join("shuffled.jsonl");
    // Every identity has one event: any order is the same input.
    std::fs::write(&shuffled_path, shuffled(events.lines().collect(), 15)).unwrap();
    let in_order = dir.join("comparisons.events.jsonl");
    let runs: [(&Path, &[&str]); 4] = [
        (&in_order, &["--workers", "1"]),
        (&in_order, &["--workers", "2", "--epoch-events", "7"]),
        (&shuffled_path, &["--workers", "1"]),
        (&shuffled_path, &["--workers", "2", "--epoch-events", "1"]),
    ];
    for (labels, extra) in runs {
        let report = report(labels, None, extra);
        let scopes = report["scopes"].as_array().unwrap();
        assert_eq!(scopes.len(), 1);
        let problems = mismatches(&expected["scopes"][0], &scopes[0], 1e-6, false);
        assert!(problems.is_empty(), "{extra:?} {}: {problems:#?}", labels.display());
        // The scope's own numbers over all comparisons.
        let preferences = &scopes[0]["preferences"];
        assert_eq!(preferences["events"], 1200);
        assert_eq!(
            preferences["position"]["n"].as_i64().unwrap() + preferences["ties"].as_i64().unwrap(),
            1200
        );
    }
}

/// 2026-01-01T00:00:00Z: event times are counted from it.
const T0: i64 = 1_767_225_600_000;

/// A comparison event: `label` is "left", "right", "tie" or a number.
fn comparison(item: &str, annotator: &str, left: &str, right: &str, label: Value, ts: i64) -> String {
    json!({"item_id": item, "annotator_id": annotator, "left": left, "right": right, "label": label,
           "ts": T0 + ts, "task": "prefs"})
    .to_string()
}

fn write(dir: &Path, name: &str, lines: &[String]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn scope(report: &Value) -> &Value {
    let scopes = report["scopes"].as_array().unwrap();
    assert_eq!(scopes.len(), 1, "{report}");
    &scopes[0]
}

fn entry<'v>(scope: &'v Value, system: &str) -> &'v Value {
    scope["leaderboard"].as_array().unwrap().iter().find(|e| e["system"] == system).unwrap()
}

#[test]
fn relabels_and_deletes_of_comparisons_count_as_if_the_old_never_was() {
    let tmp = tempfile::tempdir().unwrap();
    let base = vec![
        comparison("c1", "r1", "x", "y", json!("left"), 1),
        comparison("c1", "r2", "y", "x", json!("right"), 2),
        comparison("c2", "r1", "y", "z", json!("tie"), 3),
        comparison("c3", "r2", "z", "x", json!(-2), 4),
    ];
    let mut edited = base.clone();
    // r1 changes its mind on c1 (now y, shown on the right), r2's c3 is deleted, r2 adds c2.
    edited.push(comparison("c1", "r1", "x", "y", json!("right"), 5));
    edited.push(
        json!({"item_id": "c3", "annotator_id": "r2", "op": "delete", "ts": T0 + 6, "task": "prefs"})
            .to_string(),
    );
    edited.push(comparison("c2", "r2", "z", "y", json!(1), 7));
    let same_as = vec![
        comparison("c1", "r1", "x", "y", json!("right"), 5),
        comparison("c1", "r2", "y", "x", json!("right"), 2),
        comparison("c2", "r1", "y", "z", json!("tie"), 3),
        comparison("c2", "r2", "z", "y", json!(1), 7),
    ];
    for workers in ["1", "2"] {
        let flags = ["--workers", workers, "--epoch-events", "1"];
        let before = report(&write(tmp.path(), "base.jsonl", &base), None, &flags);
        let s = scope(&before);
        assert_eq!((entry(s, "x")["wins"].clone(), entry(s, "x")["losses"].clone()), (json!(2), json!(1)));
        assert_eq!(entry(s, "z")["ties"], 1);
        let after = report(&write(tmp.path(), "edited.jsonl", &edited), None, &flags);
        let fresh = report(&write(tmp.path(), "same.jsonl", &same_as), None, &flags);
        assert_eq!(after, fresh, "edits read as if the old events had never been");
        let s = scope(&after);
        // c1: x wins once (r2 picks x on the right), y once (r1 now picks y on the right);
        // c2: a tie and a win of y (r2 shows z left, y right, +1: right better).
        assert_eq!([&entry(s, "x")["wins"], &entry(s, "x")["losses"], &entry(s, "x")["ties"]], [1, 1, 0]);
        assert_eq!([&entry(s, "y")["wins"], &entry(s, "y")["losses"], &entry(s, "y")["ties"]], [2, 1, 1]);
        assert_eq!([&entry(s, "z")["wins"], &entry(s, "z")["losses"], &entry(s, "z")["ties"]], [0, 1, 1]);
        let r2 = s["annotators"].as_array().unwrap().iter().find(|a| a["annotator_id"] == "r2").unwrap();
        assert_eq!((&r2["events"], &r2["ties"], &r2["position"]["left"]), (&json!(2), &json!(0), &json!(0)));
        // Deleting every comparison leaves no leaderboard.
        let mut gone = edited.clone();
        for (item, annotator) in [("c1", "r1"), ("c1", "r2"), ("c2", "r1"), ("c2", "r2")] {
            gone.push(
                json!({"item_id": item, "annotator_id": annotator, "op": "delete", "ts": T0 + 9, "task": "prefs"})
                    .to_string(),
            );
        }
        let empty = report(&write(tmp.path(), "gone.jsonl", &gone), None, &flags);
        assert_eq!(empty["scopes"], json!([]), "{empty}");
    }
}

#[test]
fn a_scope_mixing_plain_labels_and_comparisons_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let lines = vec![
        comparison("c1", "r1", "x", "y", json!("left"), 1),
        comparison("c1", "r2", "x", "y", json!("left"), 2),
        json!({"item_id": "i1", "annotator_id": "r1", "label": "cat", "ts": T0 + 3, "task": "prefs"})
            .to_string(),
        json!({"item_id": "i1", "annotator_id": "r2", "label": "cat", "ts": T0 + 4, "task": "prefs"})
            .to_string(),
    ];
    let path = write(tmp.path(), "mixed.jsonl", &lines);
    let output = labelqc(&["report", "--labels", path.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("preference events") && stderr.contains("(first at line 3)"), "{stderr}");
    let report = json(&output);
    let s = scope(&report);
    // The preference numbers use the comparisons only; agreement uses every label.
    assert_eq!(s["preferences"]["events"], 2);
    assert_eq!(s["n_labels"], 4);
    // The report says so in the scope.
    assert_eq!(s["warnings"][0]["kind"], "mixed_kinds", "{s}");
    assert_eq!(entry(s, "x")["wins"], 2);
    // Comparisons alone, or plain labels alone, do not warn.
    let path = write(tmp.path(), "plain.jsonl", &lines[..2]);
    let output = labelqc(&["report", "--labels", path.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.lines().all(|l| l.contains("workers on a machine with")), "{stderr}");
    assert!(scope(&json(&output)).get("warnings").is_none());
}

#[test]
fn dawid_skene_fits_class_labels_and_leaves_comparisons_out() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = |item: &str, annotator: &str, label: &str, ts: i64| {
        json!({"item_id": item, "annotator_id": annotator, "label": label, "ts": T0 + ts, "task": "prefs"})
            .to_string()
    };
    let comparisons = vec![
        comparison("c1", "r1", "x", "y", json!("left"), 1),
        comparison("c1", "r2", "y", "x", json!("right"), 2),
        comparison("c2", "r1", "x", "y", json!("tie"), 3),
    ];
    // Comparisons alone: no truth, no confusion matrices, but trusted consensus on the outcome.
    let path = write(tmp.path(), "comparisons.jsonl", &comparisons);
    let report = json(&labelqc(&["report", "--labels", path.to_str().unwrap(), "--items"], None));
    let s = scope(&report);
    assert!(s["truth"].is_null(), "{s}");
    assert!(s["annotators"].as_array().unwrap().iter().all(|a| a["confusion"].is_null()), "{s}");
    assert!(s["items"]["c1"]["truth"].is_null(), "{s}");
    assert_eq!(s["items"]["c1"]["trusted"]["label"], "x", "{s}");
    // A mixed scope fits the plain labels only: the same truth as the plain labels alone.
    let mut plain_lines =
        vec![plain("i1", "r1", "cat", 4), plain("i1", "r2", "cat", 5), plain("i2", "r1", "dog", 6)];
    plain_lines.push(plain("i2", "r2", "cat", 7));
    let alone = write(tmp.path(), "plain.jsonl", &plain_lines);
    let alone = json(&labelqc(&["report", "--labels", alone.to_str().unwrap()], None));
    let mixed: Vec<String> = comparisons.iter().chain(&plain_lines).cloned().collect();
    let mixed = write(tmp.path(), "mixed.jsonl", &mixed);
    let mixed = json(&labelqc(&["report", "--labels", mixed.to_str().unwrap()], None));
    assert!(!scope(&alone)["truth"].is_null());
    assert_eq!(scope(&mixed)["truth"], scope(&alone)["truth"]);
}

/// Comparisons of `a > b > c` by three careful annotators and one who always picks the left side,
/// shown the worse system on the left: `(events, gold answers)`.
fn biased_workload() -> (Vec<String>, Vec<String>) {
    let systems = ["a", "b", "c"];
    let (mut events, mut gold) = (Vec::new(), Vec::new());
    let mut ts = 0;
    for n in 0..60 {
        let (i, j) = [(0, 1), (1, 2), (0, 2)][n % 3];
        let (better, worse) = (systems[i], systems[j]);
        let item = format!("c{n}");
        for annotator in ["good1", "good2", "good3", "lefty"] {
            ts += 1000;
            // A careful annotator is wrong on one comparison in ten (good1 on n = 1, 11, ...).
            let wrong = match annotator {
                "good1" => n % 10 == 1,
                "good2" => n % 10 == 2,
                "good3" => n % 10 == 3,
                _ => true,
            };
            let label = if wrong { "left" } else { "right" };
            events.push(comparison(&item, annotator, worse, better, json!(label), ts));
        }
        gold.push(json!({"item_id": item, "label": better, "task": "prefs"}).to_string());
    }
    (events, gold)
}

#[test]
fn a_blocked_biased_annotator_leaves_the_leaderboard() {
    let tmp = tempfile::tempdir().unwrap();
    let (events, gold) = biased_workload();
    let labels = write(tmp.path(), "labels.jsonl", &events);
    let gold = write(tmp.path(), "gold.jsonl", &gold);
    let trusted: Vec<String> = events.iter().filter(|e| !e.contains("lefty")).cloned().collect();
    let trusted = write(tmp.path(), "trusted.jsonl", &trusted);
    for workers in ["1", "2"] {
        let flags = ["--workers", workers, "--epoch-events", "5"];
        let gated = report(&labels, Some(&gold), &flags);
        let s = scope(&gated);
        let lefty =
            s["annotators"].as_array().unwrap().iter().find(|a| a["annotator_id"] == "lefty").unwrap();
        assert_eq!(lefty["gate"]["state"], "block", "{lefty}");
        assert_eq!(lefty["position"]["flagged"], true);
        assert_eq!(lefty["position"]["left"], 60);
        // The gated leaderboard is the leaderboard of the others' comparisons alone...
        let others = report(&trusted, None, &flags);
        assert_eq!(s["leaderboard"], scope(&others)["leaderboard"]);
        assert_eq!(entry(s, "a")["rank"], 1);
        // ... while the scope's position numbers keep every comparison.
        assert_eq!(s["preferences"]["events"], 240);
        // Without gold answers nobody is blocked: lefty's comparisons count, and change it.
        let ungated = report(&labels, None, &flags);
        let u = scope(&ungated);
        assert_eq!(entry(u, "a")["wins"].as_i64().unwrap() + entry(u, "a")["losses"].as_i64().unwrap(), 160);
        assert_ne!(u["leaderboard"], s["leaderboard"]);
    }
}

/// Careful annotators see each comparison in either order; "lefty" always sees the better
/// system on the left and picks the left side: every gold answer right, and a position bias that
/// only the `position` drift signal sees.
fn lefty_with_perfect_gold() -> (Vec<String>, Vec<String>) {
    let systems = ["a", "b", "c"];
    let (mut events, mut gold) = (Vec::new(), Vec::new());
    let mut ts = 0;
    for n in 0..60 {
        let (i, j) = [(0, 1), (1, 2), (0, 2)][n % 3];
        let (better, worse) = (systems[i], systems[j]);
        let item = format!("c{n}");
        for (k, annotator) in ["good1", "good2", "good3", "lefty"].into_iter().enumerate() {
            ts += 1000;
            let better_left = annotator == "lefty" || (n + k) % 2 == 0;
            let (left, right, label) =
                if better_left { (better, worse, "left") } else { (worse, better, "right") };
            events.push(comparison(&item, annotator, left, right, json!(label), ts));
        }
        gold.push(json!({"item_id": item, "label": better, "task": "prefs"}).to_string());
    }
    (events, gold)
}

#[test]
fn position_bias_is_a_drift_signal_that_can_gate() {
    let tmp = tempfile::tempdir().unwrap();
    let (events, gold) = lefty_with_perfect_gold();
    let labels = write(tmp.path(), "labels.jsonl", &events);
    let gold = write(tmp.path(), "gold.jsonl", &gold);
    let config = tmp.path().join("gate-on-position.toml");
    std::fs::write(&config, "[drift]\ngate_on_alarm = [\"position\"]\n").unwrap();
    let trusted: Vec<String> = events.iter().filter(|e| !e.contains("lefty")).cloned().collect();
    let trusted = write(tmp.path(), "trusted.jsonl", &trusted);
    let annotator = |report: &Value, name: &str| -> Value {
        scope(report)["annotators"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["annotator_id"] == name)
            .unwrap()
            .clone()
    };
    // Gold alone lets lefty through (every answer right) though its position signal is in alarm.
    let plain = report(&labels, Some(&gold), &[]);
    let lefty = annotator(&plain, "lefty");
    assert_eq!(lefty["gate"]["state"], "allow", "{lefty}");
    assert_eq!(lefty["drift"]["position"]["state"], "alarm", "{lefty}");
    assert_eq!(lefty["drift"]["position"]["n"], 60, "{lefty}");
    assert!(
        lefty["drift"]["position"]["explanation"].as_str().unwrap().contains("left side in 100%"),
        "{lefty}"
    );
    assert_eq!(lefty["drift"]["ties"]["state"], "ok", "{lefty}");
    let good = annotator(&plain, "good1");
    assert_eq!(good["drift"]["position"]["state"], "ok", "{good}");
    // Its alarm raises an alert.
    let alerts = scope(&plain)["alerts"].as_array().unwrap().clone();
    assert!(alerts.iter().any(|a| a["annotator_id"] == "lefty" && a["signal"] == "position"), "{alerts:#?}");
    // A project that gates on the position signal blocks it, and the leaderboard drops it.
    for workers in ["1", "2"] {
        let gated =
            report(&labels, Some(&gold), &["--config", config.to_str().unwrap(), "--workers", workers]);
        let lefty = annotator(&gated, "lefty");
        assert_eq!(lefty["gate"]["state"], "block", "{lefty}");
        assert!(lefty["gate"]["reason"].as_str().unwrap().contains("position bias"), "{lefty}");
        let others = report(&trusted, None, &["--workers", workers]);
        assert_eq!(scope(&gated)["leaderboard"], scope(&others)["leaderboard"]);
        assert_ne!(scope(&gated)["leaderboard"], scope(&plain)["leaderboard"]);
    }
    // Plain label events have no preference signals.
    let plain_labels = [
        json!({"item_id": "i1", "annotator_id": "r1", "label": "cat", "ts": T0}).to_string(),
        json!({"item_id": "i1", "annotator_id": "r2", "label": "dog", "ts": T0}).to_string(),
    ];
    let report = report(&write(tmp.path(), "plain.jsonl", &plain_labels), None, &[]);
    let r1 = annotator(&report, "r1");
    assert!(r1["drift"].get("position").is_none() && r1.get("position").is_none(), "{r1}");
}

/// Live, as `labelqc run` drives the engine: a new comparison changes its scope's leaderboard in
/// the output of the very epoch that carries it, and a system whose last comparison is deleted
/// loses its record (a tombstone on `labelqc.leaderboard`).
#[test]
fn the_live_leaderboard_changes_in_the_epoch_of_a_comparison() {
    use labelqc_dataflows::dataflow::Diff;
    use labelqc_dataflows::engine::{Engine, EngineConfig};
    use labelqc_dataflows::records::{Entity, Record, RecordKey, Records};
    use labelqc_dataflows::source::{Catalog, Source, Stream};

    let mut engine = Engine::start(&EngineConfig { workers: 2, ..EngineConfig::default() }).unwrap();
    let mut source = Source::default();
    source.catalog = Catalog::recording();
    let mut records = Records::default();
    let mut epoch = |records: &mut Records, lines: &[String]| -> Vec<(Record, Diff)> {
        let mut updates = Vec::new();
        for line in lines {
            source.apply_record(Stream::Labels, line, &mut updates).unwrap();
        }
        engine.submit(updates, source.catalog.take_new()).unwrap();
        engine.sync().unwrap();
        let changes: Vec<(Record, Diff)> =
            engine.take_completed().1.into_iter().flat_map(|output| output.records).collect();
        records.apply(&changes);
        changes
    };
    let key = |system: &str| RecordKey {
        project: "default".into(),
        task: "prefs".into(),
        entity: Entity::System(system.into()),
    };
    let entry = |records: &Records, system: &str| -> Option<Value> {
        records.get(&key(system)).map(|v| serde_json::from_slice(v).unwrap())
    };
    let added = |changes: &[(Record, Diff)], system: &str| {
        changes.iter().any(|(r, d)| *d > 0 && r.key == key(system))
    };

    let changes = epoch(
        &mut records,
        &[
            comparison("c1", "r1", "x", "y", json!("left"), 1),
            comparison("c1", "r2", "y", "x", json!("right"), 2),
        ],
    );
    assert!(added(&changes, "x") && added(&changes, "y"));
    assert_eq!(entry(&records, "x").unwrap()["wins"], 2);
    assert_eq!(entry(&records, "x").unwrap()["rank"], 1);

    // One comparison: y beats z. The epoch's output carries z's new entry and y's changed one.
    let changes = epoch(&mut records, &[comparison("c2", "r1", "y", "z", json!("left"), 3)]);
    assert!(added(&changes, "z") && added(&changes, "y"), "{changes:?}");
    assert_eq!(entry(&records, "y").unwrap()["wins"], 1);
    assert_eq!(entry(&records, "z").unwrap()["losses"], 1);

    // Its deletion withdraws z's entry in the next epoch.
    let delete =
        json!({"item_id": "c2", "annotator_id": "r1", "op": "delete", "ts": T0 + 4, "task": "prefs"});
    let changes = epoch(&mut records, &[delete.to_string()]);
    assert!(changes.iter().any(|(r, d)| *d < 0 && r.key == key("z")) && !added(&changes, "z"));
    assert!(entry(&records, "z").is_none());
    assert_eq!(entry(&records, "y").unwrap()["wins"], 0);
    engine.finish().unwrap();
}
