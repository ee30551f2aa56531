//! The `labelqc` command line end to end: bad input, `--strict`, standard input, configuration
//! errors and the generator.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub fn labelqc(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_labelqc"))
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start labelqc");
    if let Some(input) = stdin {
        // A run that fails early (bad config) exits without reading its input.
        match child.stdin.take().unwrap().write_all(input) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            result => result.unwrap(),
        }
    }
    child.wait_with_output().unwrap()
}

pub fn json(output: &Output) -> Value {
    assert!(output.status.success(), "labelqc failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("JSON report")
}

const GOOD: &str = r#"{"item_id":"i1","annotator_id":"a","label":"x","ts":"2025-01-06T08:00:00Z"}
{"item_id":"i1","annotator_id":"b","label":"x","ts":"2025-01-06T08:00:01Z"}
{"item_id":"i2","annotator_id":"a","label":"y","ts":1736150402000}
{"item_id":"i2","annotator_id":"b","label":"x","ts":1736150403000}
"#;

#[test]
fn bad_lines_are_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels.jsonl");
    let mut bytes = Vec::new();
    let good: Vec<&str> = GOOD.lines().collect();
    writeln!(bytes, "{}", good[0]).unwrap();
    writeln!(bytes, "this is not json").unwrap();
    writeln!(bytes, "{}", good[1]).unwrap();
    writeln!(bytes, r#"{{"item_id":"i9","annotator_id":"a","label":"x"}}"#).unwrap();
    bytes.extend_from_slice(b"{\"item_id\":\"\xff\"}\n");
    writeln!(bytes).unwrap();
    for line in &good[2..] {
        writeln!(bytes, "{line}").unwrap();
    }
    std::fs::write(&path, bytes).unwrap();
    let out = labelqc(&["report", "--labels", path.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = json(&out);
    let p = path.display();
    assert!(
        stderr.contains(&format!("{p}:2: not JSON: expected a JSON value, at `this is not json`")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{p}:4: `ts` is missing or null")), "{stderr}");
    assert!(stderr.contains(&format!("{p}:5: not UTF-8 text: byte 0xFF after")), "{stderr}");
    assert!(stderr.contains(&format!("{p}: 3 of 7 line(s) refused; the report covers the rest")), "{stderr}");
    // The good lines around the bad ones all count.
    let clean = json(&labelqc(&["report", "--labels", "-"], Some(GOOD.as_bytes())));
    assert_eq!(report, clean);
    assert_eq!(report["scopes"][0]["n_labels"], 4);
    assert_eq!(report["scopes"][0]["agreement"]["percent_agreement"], 0.5);
}

#[test]
fn strict_stops_at_the_first_bad_line() {
    let input = format!("{GOOD}{{\"item_id\":\"i3\",\"annotator_id\":\"a\",\"label\":{{}},\"ts\":1}}\n");
    let out = labelqc(&["report", "--labels", "-", "--strict"], Some(input.as_bytes()));
    assert_eq!(out.status.code(), Some(3), "bad input");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("-:5: `label` is an object ({}); a label is a string, number"), "{stderr}");
    assert!(stderr.contains("--strict stops at the first bad line"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn report_shape_and_options() {
    let out = labelqc(&["report", "--labels", "-"], Some(GOOD.as_bytes()));
    let report = json(&out);
    let scope = &report["scopes"][0];
    assert_eq!(scope["project"], "default");
    assert_eq!(scope["task"], "default");
    assert!(scope.get("items").is_none(), "items only with --items");
    assert_eq!(scope["gold"], Value::Null);
    assert_eq!(scope["pairs"][0]["a"], "a");
    assert_eq!(scope["pairs"][0]["n_shared"], 2);
    let with_items =
        json(&labelqc(&["report", "--labels", "-", "--items", "--pretty"], Some(GOOD.as_bytes())));
    let item = &with_items["scopes"][0]["items"]["i2"];
    assert_eq!((&item["consensus"], &item["tied"]), (&serde_json::json!("x"), &serde_json::json!(true)));
    // Nobody is blocked: the trusted consensus is the consensus, over every label.
    assert_eq!(item["trusted"], serde_json::json!({"label": "x", "tied": true, "n": 2}));
    assert_eq!(item["truth"]["posterior"].as_array().map(Vec::len), Some(2));
    assert_eq!(item["route"], "needs_labels");
}

#[test]
fn config_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("labelqc.toml");
    std::fs::write(&config, "[engine]\nworkers = 2\nbatch = 5\n").unwrap();
    let out =
        labelqc(&["report", "--labels", "-", "--config", config.to_str().unwrap()], Some(GOOD.as_bytes()));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field `batch`"), "{stderr}");
    let out = labelqc(&["report", "--labels", "-", "--workers", "0"], Some(GOOD.as_bytes()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("engine.workers"));
    let out = labelqc(&["report", "--labels", "-", "--gold", "-"], Some(GOOD.as_bytes()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot both read standard input"));
    let out = labelqc(&["report", "--labels", "/nonexistent/labels.jsonl"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open /nonexistent/labels.jsonl"));
}

#[test]
fn shipped_config_is_valid() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/labelqc.toml");
    let out = labelqc(&["report", "--labels", "-", "--config", config], Some(GOOD.as_bytes()));
    assert_eq!(json(&out)["scopes"][0]["n_labels"], 4);
}

#[test]
fn generated_traffic_reports_consistently() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.jsonl");
    let gold = dir.path().join("gold.jsonl");
    let gen = |seed: &str| {
        let out = labelqc(
            &[
                "gen",
                "--out",
                labels.to_str().unwrap(),
                "--gold-out",
                gold.to_str().unwrap(),
                "--events",
                "3000",
                "--annotators",
                "30",
                "--projects",
                "2",
                "--tasks",
                "2",
                "--seed",
                seed,
            ],
            None,
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (std::fs::read(&labels).unwrap(), std::fs::read(&gold).unwrap())
    };
    let first = gen("5");
    assert_eq!(first, gen("5"), "same seed, same bytes");
    assert_eq!(first.0.iter().filter(|b| **b == b'\n').count(), 3000);
    let args = ["report", "--labels", labels.to_str().unwrap(), "--gold", gold.to_str().unwrap(), "--strict"];
    let one = json(&labelqc(&args, None));
    let scopes = one["scopes"].as_array().unwrap();
    assert_eq!(scopes.len(), 4);
    assert!(scopes.iter().all(|s| s["gold"]["n"].as_i64().unwrap() > 0));
    let mut more = args.to_vec();
    more.extend(["--workers", "2", "--epoch-events", "97"]);
    let two = json(&labelqc(&more, None));
    let problems = crate::compare::mismatches(&one, &two, 1e-9, true);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn generated_preferences_are_preference_events() {
    let gen = |extra: &[&str]| {
        let mut args =
            vec!["gen", "--preferences", "--events", "600", "--annotators", "20", "--systems", "5"];
        args.extend_from_slice(extra);
        labelqc(&args, None)
    };
    let out = gen(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, gen(&[]).stdout, "same seed, same bytes");
    assert_ne!(out.stdout, gen(&["--seed", "9"]).stdout);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut systems = std::collections::BTreeSet::new();
    for line in text.lines() {
        let event = labelqc_dataflows::event::parse_label_event(line).unwrap();
        let preference = event.preference.expect("a preference event");
        systems.extend([preference.left.to_string(), preference.right.to_string()]);
    }
    assert_eq!(text.lines().count(), 600);
    assert_eq!(systems.len(), 5);
    // Flags of one mode are refused in the other, as usage errors.
    for args in [&["gen", "--systems", "3"][..], &["gen", "--preferences", "--gold-out", "g.jsonl"]] {
        assert_eq!(labelqc(args, None).status.code(), Some(2), "{args:?}");
    }
}
