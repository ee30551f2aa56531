//! Logs as an operator collects them: one JSON object per line with `--log-format json`, and no
//! ANSI colour codes when stderr is not a terminal.

use std::process::Command;

fn report(extra: &[&str]) -> String {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sample-labels.jsonl");
    let output = Command::new(env!("CARGO_BIN_EXE_labelqc"))
        .args(extra)
        .args(["report", "--labels", sample])
        .env("LABELQC_LOG", "debug")
        .output()
        .expect("run labelqc");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn json_logs_are_one_object_per_line() {
    let stderr = report(&["--log-format", "json"]);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "no log lines at debug level");
    for line in lines {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(event["level"].is_string() && event["fields"].is_object(), "{line}");
    }
}

#[test]
fn text_logs_have_no_colour_codes_off_a_terminal() {
    let stderr = report(&[]);
    assert!(stderr.contains("report computed"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}
