//! `labelqc report` on inputs as users really send them (issue 10's reproductions): a CSV file, a
//! JSON array file, a gold file given as labels, swapped files, many bad lines, binary lines,
//! likely mistakes, integer ids; what it says on stderr, what `--dead-letters` keeps, and its
//! exit codes.

use std::path::Path;

use labelqc::deadletter::RawExcerpt;
use serde_json::Value;

use crate::cli::{json, labelqc};

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A label event on line `i` (two annotators, ten items).
fn event(i: usize) -> String {
    format!(
        r#"{{"item_id":"i{}","annotator_id":"a{}","label":"{}","ts":{}}}"#,
        i % 10,
        i % 2,
        if i.is_multiple_of(3) { "x" } else { "y" },
        1_764_460_800_000u64 + i as u64
    )
}

#[test]
fn a_csv_file_stops_with_its_likely_cause() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("item_id,annotator_id,label,ts\n");
    for i in 0..5000 {
        csv.push_str(&format!("i{},a{},x,1764460800000\n", i % 100, i % 7));
    }
    let labels = write(dir.path(), "labels.csv", csv);
    let out = labelqc(&["report", "--labels", &labels], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(out.stdout.is_empty(), "no report");
    assert!(err.lines().count() < 30, "a few lines, not one per CSV line:\n{err}");
    // A few examples lead up to the cause, which explains every line.
    assert_eq!(err.matches("bad line: ").count(), 3, "{err}");
    assert!(
        err.contains("no record of ") && err.contains("labels.csv is a valid label event: it looks like"),
        "{err}"
    );
    assert!(err.contains("5001 line(s) refused:\n"), "{err}");
    assert!(err.contains("5001  not JSON"), "{err}");
    assert!(err.contains("it looks like a CSV file (line 1 is `item_id,annotator_id,label,ts`)"), "{err}");
}

#[test]
fn a_json_array_file_stops_with_its_likely_cause() {
    let dir = tempfile::tempdir().unwrap();
    let objects: Vec<Value> = (0..4).map(|i| serde_json::from_str(&event(i)).unwrap()).collect();
    for (name, text) in [
        ("one-line.json", serde_json::to_string(&objects).unwrap()),
        ("pretty.json", serde_json::to_string_pretty(&objects).unwrap()),
    ] {
        let labels = write(dir.path(), name, text);
        let out = labelqc(&["report", "--labels", &labels], None);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{name}: {err}");
        assert!(err.contains("it looks like one JSON array (a .json file), not JSON Lines"), "{name}: {err}");
        assert!(err.contains("jq -c '.[]'"), "{err}");
    }
}

#[test]
fn gold_given_as_labels_and_swapped_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let gold = write(
        dir.path(),
        "gold.jsonl",
        "{\"item_id\":\"i1\",\"label\":\"x\"}\n{\"item_id\":\"i2\",\"label\":\"y\"}\n",
    );
    let labels = write(dir.path(), "labels.jsonl", (0..6).map(|i| event(i) + "\n").collect::<String>());
    let out = labelqc(&["report", "--labels", &gold], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("a gold file given as --labels? give it as --gold"), "{err}");
    assert!(err.contains("`annotator_id` is missing: this looks like a gold answer"), "{err}");
    let out = labelqc(&["report", "--labels", &gold, "--gold", &labels], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("--labels and --gold look swapped"), "{err}");
}

#[test]
fn the_first_bad_lines_then_counts_and_every_line_in_the_dead_letter_file() {
    let dir = tempfile::tempdir().unwrap();
    // A PNG header (without its line feed, which would end the line).
    let binary: &[u8] = b"\x89PNG\r\x1a\x00\x00\x00\rIHDR\xff";
    let mut bytes = Vec::new();
    let mut refused = Vec::new();
    for i in 0..60 {
        let line: Vec<u8> = match i % 3 {
            0 => event(i).into_bytes(),
            1 => format!(r#"{{"item_id":"i{i}","annotator_id":"a","label":NaN,"ts":1}}"#).into_bytes(),
            _ => binary.to_vec(),
        };
        if i % 3 != 0 {
            refused.push((i + 1, line.clone()));
        }
        bytes.extend_from_slice(&line);
        bytes.push(b'\n');
    }
    let labels = write(dir.path(), "labels.jsonl", &bytes);
    let letters = dir.path().join("refused.jsonl");
    let out = labelqc(&["report", "--labels", &labels, "--dead-letters", letters.to_str().unwrap()], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    // The 20 good lines, on 10 identities (the later ones replace the earlier), all count.
    assert_eq!(json(&out)["scopes"][0]["n_labels"], 10);
    assert_eq!(err.matches("bad line: ").count(), 20, "{err}");
    assert!(
        err.contains(&format!("{labels}:2: `label` is NaN, which is not JSON (pandas writes NaN")),
        "{err}"
    );
    assert!(err.contains(&format!("{labels}:3: not UTF-8 text: byte 0x89")), "{err}");
    assert!(err.contains("40 of 60 line(s) refused, the first 20 shown above"), "{err}");
    assert!(err.contains(&format!("all of them are in {}", letters.display())), "{err}");
    assert!(
        err.contains("       20  not UTF-8 text\n")
            && err.contains("       20  a field with a value that is not allowed\n"),
        "{err}"
    );
    // Every refused line, its bytes intact: text as text, binary as base64.
    let written = std::fs::read_to_string(&letters).unwrap();
    let letters: Vec<Value> = written.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(letters.len(), refused.len());
    for (letter, (line, raw)) in letters.iter().zip(&refused) {
        assert_eq!(letter["file"], labels.as_str());
        assert_eq!(letter["line"], *line);
        assert!(letter["reason"].as_str().is_some_and(|r| !r.is_empty()), "{letter}");
        let excerpt: RawExcerpt = serde_json::from_value(letter.clone()).unwrap();
        assert_eq!(&excerpt.bytes().unwrap(), raw, "{letter}");
        assert_eq!(excerpt.raw_bytes, raw.len() as u64);
        assert_eq!(excerpt, RawExcerpt::new(raw, usize::MAX));
    }
    assert_eq!(letters[0]["kind"], "invalid_value");
    assert_eq!(letters[1]["kind"], "not_utf8");
    assert_eq!(letters[1]["raw_encoding"], "base64");
    assert!(letters[0].get("raw_encoding").is_none(), "text stays text");
}

#[test]
fn warnings_for_likely_mistakes_come_after_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let labels = write(
        dir.path(),
        "labels.jsonl",
        [
            r#"{"item_id":"i1","annotator_id":"a","label":1,"ts":1764460800}"#,
            r#"{"item_id":"i1","annotator_id":"b","label":"1","ts":1764460801}"#,
            r#"{"item_id":"i2","annotator_id":"a","label":2,"ts":1764460802}"#,
        ]
        .join("\n"),
    );
    let gold = write(dir.path(), "gold.jsonl", r#"{"item_id":"i1","annotator_id":"a","label":1}"#);
    let out = labelqc(&["report", "--labels", &labels, "--gold", &gold], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "warning: {gold}: 1 gold answer carries an `annotator_id`, which gold answers do not have \
                 (ignored): is a label file given as gold? (first at line 1)"
            ),
            format!(
                "warning: {labels}: 3 label events have a `ts` before 1973: epoch seconds sent as \
                 milliseconds? (multiply by 1000) (first at line 1)"
            ),
            format!(
                "warning: {labels}: 1 label event sends a value both as a number and as a string in one \
                 scope (`1` and \"1\" are two different labels): make the producers agree on one (first at line 2)"
            ),
        ],
        "{err}"
    );
    assert_eq!(json(&out)["scopes"][0]["n_labels"], 3);
}

#[test]
fn more_workers_than_cores_is_named() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let workers = (cores + 1).to_string();
    let input: String = (0..4).map(|i| event(i) + "\n").collect();
    let out = labelqc(&["report", "--labels", "-", "--workers", &workers], Some(input.as_bytes()));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("warning: {workers} workers on a machine with {cores} cores")), "{err}");
    let out = labelqc(&["report", "--labels", "-", "--workers", "1"], Some(input.as_bytes()));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn inputs_as_producers_write_them() {
    // A byte-order mark and CRLF line ends (Windows), integer ids (Label Studio) that equal their
    // string form, a fractional `ts` (pandas): all accepted.
    let input = "\u{feff}{\"item_id\":17,\"annotator_id\":1,\"label\":\"x\",\"ts\":1764460800000.0}\r\n\
                 {\"item_id\":\"17\",\"annotator_id\":\"2\",\"label\":\"x\",\"ts\":1764460800500.5}\r\n";
    let out = labelqc(&["report", "--labels", "-", "--items"], Some(input.as_bytes()));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let report = json(&out);
    let scope = &report["scopes"][0];
    assert_eq!((scope["n_items"].as_i64(), scope["n_labels"].as_i64()), (Some(1), Some(2)));
    assert_eq!(scope["items"]["17"]["consensus"], "x");
    assert_eq!(scope["agreement"]["percent_agreement"], 1.0);
    // An empty id and an array for a record are refused, each with its reason.
    let input = format!(
        "{}\n{}\n{}\n",
        event(0),
        r#"{"item_id":"","annotator_id":"a","label":"x","ts":1764460800000}"#,
        r#"["i1","a","x",1764460800000]"#
    );
    let out = labelqc(&["report", "--labels", "-"], Some(input.as_bytes()));
    let err = stderr(&out);
    assert!(err.contains("-:2: `item_id` is empty"), "{err}");
    assert!(err.contains("-:3: a JSON array, not a JSON object"), "{err}");
    assert_eq!(json(&out)["scopes"][0]["n_labels"], 1);
}

#[test]
fn exit_codes() {
    let input = event(0) + "\n";
    let code = |args: &[&str]| labelqc(args, Some(input.as_bytes())).status.code();
    assert_eq!(code(&["report", "--labels", "-"]), Some(0));
    assert_eq!(code(&["report", "--labels", "/nonexistent/labels.jsonl"]), Some(1), "an error");
    assert_eq!(code(&["report", "--labels", "-", "--no-such-flag"]), Some(2), "usage");
    assert_eq!(
        labelqc(&["report", "--labels", "-"], Some(b"a,b\n")).status.code(),
        Some(3),
        "no valid record"
    );
    // An empty input is no error: nothing was refused.
    let out = labelqc(&["report", "--labels", "-"], Some(b""));
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("warning: - holds no records"), "{}", stderr(&out));
}
