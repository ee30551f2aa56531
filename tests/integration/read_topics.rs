//! `examples/read_topics.py` against a real `labelqc run` on tansu: the topics are made with
//! `labelqc topics create` (two partitions per output, so the script reads several), the service
//! processes a generated stream with deletes and malformed messages, and the script's DataFrames
//! must hold exactly the live keys of each compacted topic (tombstones applied) with the values
//! the topics hold.
//!
//! The Python is `$LABELQC_PYTHON`, else the venv that `.ci/run` makes
//! (`~/.cache/labelqc-examples/venv`), with confluent-kafka and pandas. Without it, or without
//! tansu, the test is skipped outside CI (`CI` set) and fails in CI.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::scenario::{
    assert_outputs_match_report, compacted, produce, produce_malformed, report, start_service,
    wait_for_events, Setup, GOLD, LABELS, MALFORMED, OUTPUTS,
};
use crate::tansu::Tansu;

/// A Python with confluent-kafka and pandas, or `None` (skipped) outside CI.
fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|cache| cache.join("labelqc-examples/venv/bin/python"));
    let candidate = std::env::var_os("LABELQC_PYTHON").map(PathBuf::from).or(venv.filter(|p| p.is_file()));
    let usable = candidate.filter(|python| {
        Command::new(python)
            .args(["-c", "import confluent_kafka, pandas"])
            .status()
            .is_ok_and(|s| s.success())
    });
    if usable.is_none() {
        let missing = "no Python with confluent-kafka and pandas: make one with `python3 -m venv \
                       ~/.cache/labelqc-examples/venv && ~/.cache/labelqc-examples/venv/bin/pip install \
                       confluent-kafka pandas` (as .ci/run does), or point LABELQC_PYTHON at one";
        if std::env::var_os("CI").is_some() {
            panic!("{missing}; CI runs every test");
        }
        eprintln!("skipped: {missing}");
    }
    usable
}

/// Whether two JSON values agree: numbers to 1e-9 (pandas turns integer columns with gaps into
/// floats, and writes 15 significant digits), anything else exactly.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// The field at a flattened column name (`agreement.krippendorff_alpha`) of a JSON object.
fn at<'a>(value: &'a Value, column: &str) -> Option<&'a Value> {
    if let Some(v) = value.get(column) {
        return Some(v);
    }
    let (head, rest) = column.split_once('.')?;
    at(value.get(head)?, rest)
}

/// The flattened names of an object's fields that are not objects themselves.
fn leaves(value: &Value, prefix: String, out: &mut Vec<String>) {
    match value.as_object() {
        Some(object) if !object.is_empty() => {
            for (name, field) in object {
                let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
                leaves(field, path, out);
            }
        }
        _ if !prefix.is_empty() => out.push(prefix),
        _ => {}
    }
}

#[test]
fn read_topics_py_reads_the_compacted_topics_into_dataframes() {
    let Some(python) = python() else { return };
    let Some((tansu, brokers)) = Tansu::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("labelqc.toml");
    std::fs::write(&config, "[topics]\nlabels_partitions = 2\ngold_partitions = 1\noutput_partitions = 2\n")
        .unwrap();
    let config = config.to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_labelqc"))
        .args(["topics", "create", "--config", config, "--brokers", &brokers])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let s = Setup::new(tansu, brokers.clone(), 53);
    produce(&s.producer, GOLD, &s.gold);
    produce(&s.producer, LABELS, &s.labels);
    produce_malformed(&s.producer, LABELS);
    // Two labels of a scope of their own, deleted once published: that scope's objects get
    // tombstones.
    let event = |annotator: &str, op: &str| {
        format!(
            r#"{{"project":"gone","item_id":"i1","annotator_id":"{annotator}","label":"a","ts":1767225600000,"op":"{op}"}}"#
        )
    };
    produce(&s.producer, LABELS, &[event("z1", "upsert"), event("z2", "upsert")]);
    let service = start_service(&brokers, &["--config", config]);
    let labels = (s.labels.len() + MALFORMED.len() + 2) as u64;
    wait_for_events(&service, labels, s.gold.len() as u64);
    assert!(compacted(&brokers, OUTPUTS[0]).keys().any(|k| k.contains("gone")), "the scope was published");
    produce(&s.producer, LABELS, &[event("z1", "delete"), event("z2", "delete")]);
    wait_for_events(&service, labels + 2, s.gold.len() as u64);
    // Live truth settles (its cold fit once the scopes stop changing) before the topics are read.
    assert_outputs_match_report(&brokers, &report(&s.labels, &s.gold));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/read_topics.py");
    let out =
        Command::new(&python).args([script, "--brokers", &brokers, "--format", "json"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "read_topics.py failed: {stderr}");
    let frames: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();

    let mut tombstones = 0;
    for topic in OUTPUTS {
        let short = topic.strip_prefix("labelqc.").unwrap();
        let held = compacted(&brokers, topic);
        tombstones += held.values().filter(|v| v.is_none()).count();
        let live: BTreeMap<&String, &Value> =
            held.iter().filter_map(|(k, v)| Some((k, v.as_ref()?))).collect();
        let frame = &frames[short];
        let rows = frame["rows"].as_object().unwrap();
        let keys: Vec<&String> = rows.keys().collect();
        assert_eq!(keys, live.keys().copied().collect::<Vec<_>>(), "{topic}: the DataFrame's keys");
        let columns: Vec<&str> =
            frame["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        for (key, value) in &live {
            let row = &rows[key.as_str()];
            for column in &columns {
                let cell = &row[*column];
                match at(value, column) {
                    // An object here (null in other values): its fields have their own columns.
                    Some(field) if field.is_object() => {
                        assert!(cell.is_null(), "{topic} {key} {column}: {cell}")
                    }
                    Some(field) if !field.is_null() => {
                        assert!(
                            same(cell, field),
                            "{topic} {key} {column}: {cell} in the DataFrame, {field} in the topic"
                        )
                    }
                    // Absent from this value (present in others), or null: a missing cell.
                    _ => assert!(
                        cell.is_null(),
                        "{topic} {key} {column}: {cell}, absent from the topic's value"
                    ),
                }
            }
        }
        // Every field of every value has its column.
        for (key, value) in &live {
            let mut fields = Vec::new();
            leaves(value, String::new(), &mut fields);
            for field in fields {
                assert!(columns.contains(&field.as_str()), "{topic} {key}: no column {field} in {columns:?}");
            }
        }
    }
    assert!(frames["scopes"]["rows"].as_object().unwrap().len() >= 2, "{}", frames["scopes"]);
    assert_eq!(frames["deadletter"]["rows"].as_object().unwrap().len(), MALFORMED.len());
    // Entities whose last label was deleted: their tombstones were applied, not shown.
    assert!(tombstones >= 5, "{tombstones} tombstones: scope, annotators, pair and item of `gone`");
    for topic in ["scopes", "annotators", "pairs", "items"] {
        let rows = frames[topic]["rows"].as_object().unwrap();
        assert!(rows.keys().all(|k| !k.contains("gone")), "{topic} shows a deleted entity");
    }

    // The summary and CSV formats run too (what a person uses first).
    let csv = tempfile::tempdir().unwrap();
    let out = Command::new(&python)
        .args([script, "--brokers", &brokers, "--topic", "scopes", "--format", "csv", "--out"])
        .arg(csv.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(csv.path().join("scopes.csv")).unwrap();
    assert_eq!(text.lines().count(), 1 + frames["scopes"]["rows"].as_object().unwrap().len(), "{text}");
    let out =
        Command::new(&python).args([script, "--brokers", &brokers, "--topic", "alerts"]).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("== alerts: "));
    drop(service);
}
