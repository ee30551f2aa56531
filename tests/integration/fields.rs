//! Every field is documented: the keys of a real report (with `--items` and `--windows`, and
//! drift readings on every signal), the value keys of every output topic of `labelqc run` on
//! librdkafka's in-process mock cluster (on 127.0.0.1), and every metric on its /metrics, with
//! its labels and type, must be described by docs/reference.md (report and topics) and
//! docs/metrics.md (metrics). A field or metric added without its documentation fails here.
//!
//! The pages' convention, which this test reads: a heading names the objects its tables describe
//! as backticked paths (`scopes[].annotators[]`, `labelqc.gating`; `[]` is every element of an
//! array, `<signal>` and `<item_id>` the keys of an object); the first cell of a table row names
//! fields relative to them. In docs/metrics.md the first cell names metrics, the second their
//! type and the third their labels.

use std::collections::{BTreeMap, BTreeSet};

use labelqc::gen::preferences::{PreferenceSpec, PreferenceTraffic};
use labelqc::gen::{generate, GenSpec, Planted};
use rdkafka::config::ClientConfig;
use rdkafka::producer::BaseProducer;
use serde_json::Value;

use crate::scenario::{
    compacted, metrics, produce, produce_malformed, report, start_service, wait_for_events, MALFORMED,
};
use crate::topics::{GOLD, LABELS, OUTPUTS};

const DAY_MS: f64 = 86_400_000.0;

fn read(path: &str) -> String {
    let path = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The backticked words of `text`.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).filter(|t| !t.is_empty()).collect()
}

/// The cells of a table row.
fn cells(row: &str) -> Vec<&str> {
    row.trim().trim_matches('|').split('|').map(str::trim).collect()
}

/// Every path a page documents: each table row's backticked first-cell fields under each of the
/// backticked paths of the heading above it (the field alone under a heading without one).
fn documented_paths(page: &str) -> BTreeSet<String> {
    let mut prefixes: Vec<String> = vec![String::new()];
    let mut paths = BTreeSet::new();
    for line in page.lines() {
        if line.starts_with('#') {
            prefixes = backticked(line).into_iter().map(String::from).collect();
            if prefixes.is_empty() {
                prefixes.push(String::new());
            }
        } else if line.starts_with('|') && !line.starts_with("|---") {
            for field in backticked(cells(line)[0]) {
                for prefix in &prefixes {
                    paths.insert(if prefix.is_empty() {
                        field.to_string()
                    } else {
                        format!("{prefix}.{field}")
                    });
                }
            }
        }
    }
    paths
}

/// Adds the path of every field of `value` under `path` to `out`. The keys of `drift` objects are
/// `<signal>`, the keys of the report's `items` object `<item_id>`.
fn walk(value: &Value, path: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                let key = if path.ends_with("drift") {
                    "<signal>"
                } else if path == "scopes[].items" {
                    "<item_id>"
                } else {
                    key
                };
                let child = if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
                out.insert(child.clone());
                walk(field, &child, out);
            }
        }
        Value::Array(elements) => {
            for element in elements {
                walk(element, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

/// The report object each topic's values carry, if any.
fn report_object(topic: &str) -> Option<&'static str> {
    Some(match topic {
        "labelqc.scopes" => "scopes[]",
        "labelqc.annotators" => "scopes[].annotators[]",
        "labelqc.pairs" => "scopes[].pairs[]",
        "labelqc.items" => "scopes[].items.<item_id>",
        "labelqc.scope_windows" => "scopes[].windows[]",
        "labelqc.alerts" => "scopes[].alerts[]",
        "labelqc.leaderboard" => "scopes[].leaderboard[]",
        _ => return None,
    })
}

/// 40 days of a dozen annotators (one spammer, one biased, one careless from day 25), three
/// labels per item, a third of the items gold questions, with durations: every drift signal has
/// readings by the end, and there are gates, decisions and alerts.
fn input() -> (Vec<String>, Vec<String>) {
    let start = GenSpec::default().start_ms;
    let spec = GenSpec {
        events: 24_000,
        annotators: 12,
        labels_per_item: 3,
        gold_rate: 0.35,
        careful_accuracy: Some(0.9),
        planted: Some(Planted { spammers: 1, biased: 1, careless: 1 }),
        careless_from_ms: start + 25 * DAY_MS as i64,
        careless_factor: 4.0,
        mean_gap_ms: 40.0 * DAY_MS / 24_000.0,
        seed: 7,
        ..GenSpec::default()
    };
    let (mut labels, mut gold) = (Vec::new(), Vec::new());
    generate(&spec, &mut labels, Some(&mut gold)).unwrap();
    // And comparisons of systems (a scope of their own): the preference fields and the
    // leaderboard.
    let comparisons =
        PreferenceSpec { start_ms: start, mean_gap_ms: 40.0 * DAY_MS / 3_000.0, ..Default::default() };
    let mut traffic = PreferenceTraffic::new(&comparisons).unwrap();
    for _ in 0..3_000 {
        traffic.next_event(None, &mut labels);
    }
    let lines =
        |bytes: Vec<u8>| String::from_utf8(bytes).unwrap().lines().map(String::from).collect::<Vec<_>>();
    (lines(labels), lines(gold))
}

#[test]
fn every_report_field_topic_field_and_metric_is_documented() {
    let reference = documented_paths(&read("docs/reference.md"));
    let (labels, gold) = input();

    // The report.
    let mut fields = BTreeSet::new();
    walk(&report(&labels, &gold), "", &mut fields);
    for expected in [
        "scopes[].annotators[].drift.<signal>.score",
        "scopes[].annotators[].drift.<signal>.value",
        "scopes[].annotators[].drift.<signal>.baseline",
        "scopes[].annotators[].drift.<signal>.interval",
        "scopes[].annotators[].gate.history[].to",
        "scopes[].alerts[].started",
        "scopes[].windows[].size",
        "scopes[].items.<item_id>.tied",
    ] {
        assert!(fields.contains(expected), "the input gives no {expected}: {fields:#?}");
    }
    let mut missing: Vec<String> =
        fields.iter().filter(|f| !reference.contains(*f)).map(|f| format!("report: {f}")).collect();

    // Every output topic of `labelqc run` over the same input.
    let (_cluster, brokers) = crate::scenario::mock_cluster();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    produce(&producer, GOLD, &gold);
    produce(&producer, LABELS, &labels);
    produce_malformed(&producer, LABELS);
    let service = start_service(&brokers, &[]);
    wait_for_events(&service, (labels.len() + MALFORMED.len()) as u64, gold.len() as u64);
    for topic in OUTPUTS {
        let values: Vec<Value> = compacted(&brokers, topic).into_values().flatten().collect();
        assert!(!values.is_empty(), "nothing on {topic}");
        let mut keys = BTreeSet::new();
        for value in &values {
            walk(value, "", &mut keys);
        }
        for key in keys {
            let own = format!("{topic}.{key}");
            let shared = report_object(topic).map(|object| format!("{object}.{key}"));
            if !reference.contains(&own) && !shared.is_some_and(|s| reference.contains(&s)) {
                missing.push(format!("{topic}: {key}"));
            }
        }
    }

    // Every metric of the service (and every one declared, though without a series yet), with
    // its type and labels.
    let exposition = metrics(&service.1);
    let page = read("docs/metrics.md");
    let rows: Vec<Vec<&str>> = page.lines().filter(|l| l.starts_with("| `labelqc_")).map(cells).collect();
    let row = |name: &str| rows.iter().find(|r| backticked(r[0]).contains(&name));
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in exposition.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name = line.split(['{', ' ']).next().unwrap();
        let labels = line.split_once('{').map_or("", |(_, rest)| rest.split('}').next().unwrap());
        let names = labels.split(',').filter_map(|pair| pair.split_once('=')).map(|(k, _)| k.to_string());
        seen.entry(name.to_string()).or_default().extend(names);
    }
    let telemetry = read("src/telemetry.rs") + &read("src/telemetry/systems.rs");
    for declared in telemetry
        .split('"')
        .filter(|s| s.starts_with("labelqc_") && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        seen.entry(declared.to_string()).or_default();
    }
    assert!(seen.len() > 40, "{seen:?}");
    for (name, labels) in &seen {
        let Some(row) = row(name) else {
            missing.push(format!("metric {name}"));
            continue;
        };
        for label in labels {
            if !backticked(row[2]).contains(&label.as_str()) {
                missing.push(format!("metric {name}: label {label}"));
            }
        }
    }
    for line in exposition.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').unwrap();
        if let Some(row) = row(name) {
            if !row[1].contains(kind) {
                missing.push(format!("metric {name}: type {kind}, documented as {}", row[1]));
            }
        }
    }
    assert!(missing.is_empty(), "{} undocumented:\n{}", missing.len(), missing.join("\n"));
}
