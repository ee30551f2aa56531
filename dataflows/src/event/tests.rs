//! The parser on inputs as producers really write them, and the reasons it gives for what it
//! refuses.

use super::*;

fn number(text: &str) -> RawLabel<'_> {
    RawLabel::Number(RawNumber::parse(text).unwrap())
}

fn reason(record: &str) -> String {
    parse_label_event(record).expect_err(record).to_string()
}

#[test]
fn parses_full_event() {
    let ev = parse_label_event(
        r#"{"item_id":"i1","annotator_id":"a","label":["y","x","y"],"ts":"2025-01-06T08:00:00Z","project":"p","task":"t","duration_ms":1200}"#,
    )
    .unwrap();
    assert_eq!(ev.project, "p");
    assert_eq!(ev.task, "t");
    assert_eq!(ev.label, Some(RawLabel::Set(vec!["x".into(), "y".into()])));
    assert_eq!(ev.ts_ms, 1_736_150_400_000);
    assert_eq!(ev.duration_ms, Some(1200));
    assert_eq!(ev.op, Op::Upsert);
    assert!(ev.warnings.is_empty());
}

#[test]
fn defaults_and_epoch_ms() {
    let ev =
        parse_label_event(r#"{"item_id":"i","annotator_id":"a","label":2.5,"ts":1700000000000}"#).unwrap();
    assert_eq!(ev.project, DEFAULT_SCOPE_NAME);
    assert_eq!(ev.task, DEFAULT_SCOPE_NAME);
    assert_eq!(ev.label, Some(number("2.5")));
    assert_eq!(ev.ts_ms, 1_700_000_000_000);
    // Strings without escapes are borrowed from the record; escaped ones are decoded.
    assert!(matches!(ev.item_id, Cow::Borrowed("i")));
    let ev =
        parse_label_event(r#"{"item_id":"a\"b\u00e9","annotator_id":"a","label":"x","ts":1e12}"#).unwrap();
    assert_eq!(ev.item_id, "a\"bé");
}

#[test]
fn delete_needs_no_label() {
    let ev = parse_label_event(r#"{"item_id":"i","annotator_id":"a","ts":1,"op":"delete"}"#).unwrap();
    assert_eq!(ev.op, Op::Delete);
    assert_eq!(ev.label, None);
}

#[test]
fn inputs_as_producers_write_them() {
    // A UTF-8 byte-order mark at the start (Windows exports).
    let ev = parse_label_event(
        "\u{feff}{\"item_id\":\"m1\",\"annotator_id\":\"c\",\"label\":\"spam\",\"ts\":1764460800000}",
    )
    .unwrap();
    assert_eq!(ev.item_id, "m1");
    let gold = parse_gold_event("\u{feff}{\"item_id\": \"m1\", \"label\": \"spam\"}").unwrap();
    assert_eq!(gold.item_id, "m1");
    // Integer ids (Label Studio) are their decimal strings.
    let ev = parse_label_event(r#"{"item_id":17,"annotator_id":-4,"label":"x","ts":1764460800000}"#).unwrap();
    assert_eq!((&*ev.item_id, &*ev.annotator_id), ("17", "-4"));
    let big = parse_label_event(
        r#"{"item_id":123456789012345678901234567890,"annotator_id":"a","label":"x","ts":1764460800000}"#,
    )
    .unwrap();
    assert_eq!(big.item_id, "123456789012345678901234567890");
    // Fractional ts and duration_ms (pandas) are floored.
    let ev = parse_label_event(
        r#"{"item_id":"e","annotator_id":"r","label":4.0,"ts":1764460800500.5,"duration_ms":1500.9}"#,
    )
    .unwrap();
    assert_eq!(ev.ts_ms, 1_764_460_800_500);
    assert_eq!(ev.duration_ms, Some(1500));
    assert_eq!(ev.label, Some(number("4")));
    assert_eq!(
        parse_label_event(r#"{"item_id":"e","annotator_id":"r","label":3,"ts":1.7644608e12}"#).unwrap().ts_ms,
        1_764_460_800_000
    );
    // Number labels keep their exact value.
    let ev = parse_label_event(
        r#"{"item_id":"s","annotator_id":"p","label":18446744073709551615,"ts":1764460800000}"#,
    )
    .unwrap();
    assert_eq!(ev.label, Some(number("18446744073709551615")));
    assert_ne!(ev.label, Some(number("18446744073709551614")));
}

#[test]
fn refuses_bad_records_with_reasons() {
    let cases = [
        ("not json", "not JSON: expected a JSON value, at `not json`"),
        ("item_id,annotator_id,label,ts", "not JSON: expected a JSON value, at `item_id,annotator_id,label,ts`"),
        (r#"{"item_id":"i","annotator_id":"a","label":"x","ts":1"#, "not JSON: the record ends before"),
        (r#"{"item_id":"i","annotator_id":"a","label":"x","ts":1} x"#, "not JSON: text after the end of the JSON object, at `x`"),
        (r#"{"annotator_id":"a","label":1,"ts":1}"#, "`item_id` is missing or null"),
        (r#"{"item_id":null,"annotator_id":"a","label":1,"ts":1}"#, "`item_id` is missing or null"),
        (r#"{"item_id":"","annotator_id":"a","label":1,"ts":1}"#, "`item_id` is empty"),
        (r#"{"item_id":"i","annotator_id":"","label":1,"ts":1}"#, "`annotator_id` is empty"),
        (r#"{"item_id":true,"annotator_id":"a","label":1,"ts":1}"#, "`item_id` is a boolean (true)"),
        (r#"{"item_id":17.0,"annotator_id":"a","label":1,"ts":1}"#, "`item_id` 17.0 is not an integer; an id is a string or an integer (written as a float: send 17 or \"17\")"),
        (r#"{"item_id":"i","annotator_id":"a","ts":1}"#, "`label` is missing"),
        (r#"{"item_id":"i","annotator_id":"a","label":null,"ts":1}"#, "`label` is missing"),
        (r#"{"item_id":"i","annotator_id":"a","label":{"x":1},"ts":1}"#, "`label` is an object ({\"x\":1})"),
        (r#"{"item_id":"i","annotator_id":"a","label":["x",2],"ts":1}"#, "`label` [\"x\",2] holds a number (2); a multi-label set is an array of strings"),
        (r#"{"item_id":"i","annotator_id":"a","label":1e400,"ts":1}"#, "`label` 1e400 is beyond the range of a 64-bit float"),
        (r#"{"item_id":"i","annotator_id":"a","label":NaN,"ts":1}"#, "`label` is NaN, which is not JSON"),
        (r#"{"item_id":"i","annotator_id":"a","label":1,"ts":-Infinity}"#, "`ts` is -Infinity, which is not JSON"),
        (r#"{"item_id":"i","annotator_id":"a","label":1,"ts":"yesterday"}"#, "`ts` \"yesterday\" is not an RFC 3339 time"),
        (r#"{"item_id":"i","annotator_id":"a","label":1,"ts":"1764460800000"}"#, "`ts` \"1764460800000\" is a string of digits; epoch milliseconds are a JSON number"),
        (r#"{"item_id":"i","annotator_id":"a","label":1,"ts":1e30}"#, "`ts` 1e30 is out of range for epoch milliseconds"),
        (r#"{"item_id":"i","annotator_id":"a","label":1,"ts":[1]}"#, "`ts` is an array ([1])"),
        (r#"{"item_id":"i","annotator_id":"a","label":1}"#, "`ts` is missing or null"),
        (r#"{"item_id":"i","annotator_id":"a","label":1,"ts":1,"op":"remove"}"#, "`op` \"remove\" is neither \"upsert\" nor \"delete\""),
        (r#"{"item_id":"i","annotator_id":"a","label":1,"ts":1,"duration_ms":-4}"#, "`duration_ms` -4 is negative"),
        (r#"{"item_id":"i","annotator_id":"a","label":1,"ts":1,"duration_ms":"4"}"#, "`duration_ms` is a string (\"4\")"),
        (r#"{"item_id":"i","annotator_id":"a","label":1,"ts":1,"project":7}"#, "`project` is a number (7); it must be a string"),
        (r#"{"item_id":"i","annotator_id":"a","label":1,"ts":1,"ts":2}"#, "not JSON: duplicate field `ts`"),
        (r#"[{"item_id":"i","annotator_id":"a","label":1,"ts":1}]"#, "a JSON array, not a JSON object"),
        (r#"["i","a","x",1]"#, "a JSON array, not a JSON object"),
        ("42", "a JSON number, not a JSON object"),
        (r#"{"item_id":"i","label":"x"}"#, "`annotator_id` is missing: this looks like a gold answer"),
        (r#"{"item_id":"i","label":"x","ts":1}"#, "`annotator_id` is missing or null"),
        ("{\"item_id\":\"i\",\u{feff}\"annotator_id\":\"a\"}", "not JSON: a byte-order mark (U+FEFF) inside the record"),
        ("\u{feff}", "the record is empty"),
    ];
    for (record, expected) in cases {
        let got = reason(record);
        assert!(got.starts_with(expected), "{record}:\n  got      {got}\n  expected {expected}…");
        // Reasons name the problem, never a position inside the record or a type of this code.
        assert!(!got.contains("line 1") && !got.contains("column"), "{record}: {got}");
        assert!(
            !got.contains("Raw") && !got.contains("struct") && !got.contains("Fields"),
            "{record}: {got}"
        );
    }
    let big =
        format!(r#"{{"item_id":"{}","annotator_id":"a","label":1,"ts":1}}"#, "x".repeat(MAX_RECORD_BYTES));
    assert!(matches!(parse_label_event(&big), Err(ParseError::TooLarge { .. })));
}

#[test]
fn messages_that_are_not_text() {
    assert_eq!(record_text(None).unwrap_err(), ParseError::Tombstone);
    assert!(record_text(None).unwrap_err().to_string().starts_with("a Kafka tombstone"));
    assert_eq!(record_text(Some(b"")).unwrap_err().to_string(), "the record is empty");
    let latin1 = record_text(Some(b"{\"item_id\":\"caf\xe9\"}")).unwrap_err().to_string();
    assert!(
        latin1.starts_with(r#"not UTF-8 text: byte 0xE9 after "{\"item_id\":\"caf" (Latin-1"#),
        "{latin1}"
    );
    let utf16: Vec<u8> =
        [0xff, 0xfe].into_iter().chain("{\"a\":1}".encode_utf16().flat_map(u16::to_le_bytes)).collect();
    assert!(record_text(Some(&utf16)).unwrap_err().to_string().starts_with("UTF-16 text"));
    // A later line of a UTF-16 file has no byte-order mark: NUL bytes between the characters.
    let line: Vec<u8> = "{\"a\":1}".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let text = record_text(Some(&line[1..])).unwrap();
    assert!(reason(text).contains("NUL bytes: UTF-16 text?"), "{}", reason(text));
    assert_eq!(record_text(Some(b"{}")).unwrap(), "{}");
}

#[test]
fn warnings_for_likely_mistakes() {
    // Epoch seconds sent as milliseconds.
    let ev = parse_label_event(r#"{"item_id":"i","annotator_id":"a","label":"x","ts":1764460800}"#).unwrap();
    assert_eq!(ev.warnings.iter().collect::<Vec<_>>(), [InputWarning::TsBefore1973]);
    let ev =
        parse_label_event(r#"{"item_id":"i","annotator_id":"a","label":"x","ts":"1973-01-01T00:00:00Z"}"#)
            .unwrap();
    assert!(ev.warnings.is_empty());
    // A gold answer that carries an annotator: a label file given as gold?
    let gold =
        parse_gold_event(r#"{"item_id":"i","annotator_id":"a","label":"x","ts":1764460800000}"#).unwrap();
    assert!(gold.warnings.contains(InputWarning::GoldWithAnnotator));
    assert!(parse_gold_event(r#"{"item_id":"i","label":"x"}"#).unwrap().warnings.is_empty());
    // A label event that looks like a gold answer is refused, and counts as that warning.
    let refused = parse_label_event(r#"{"item_id":"i","label":"x"}"#).unwrap_err();
    assert_eq!(refused.kind(), ReasonKind::LooksLikeGold);
    assert_eq!(refused.warning(), Some(InputWarning::LabelLooksLikeGold));
}

#[test]
fn gold_answers() {
    let g = parse_gold_event(r#"{"item_id":"g1","label":"x","task":"t"}"#).unwrap();
    assert_eq!(g.label, Some(RawLabel::String("x".into())));
    assert_eq!(g.task, "t");
    assert_eq!(g.project, DEFAULT_SCOPE_NAME);
    assert!(parse_gold_event(r#"{"item_id":"g1"}"#).is_err());
    assert_eq!(parse_gold_event(r#"{"item_id":"g1","op":"delete"}"#).unwrap().op, Op::Delete);
    assert_eq!(
        parse_gold_event(r#"{"item_id":5,"label":9007199254740993}"#).unwrap().label,
        Some(number("9007199254740993"))
    );
    assert!(parse_gold_event(r#"{"item_id":"","label":"x"}"#)
        .unwrap_err()
        .to_string()
        .contains("`item_id` is empty"));
}

#[test]
fn names_and_labels_over_their_limits_are_refused() {
    let long = "i".repeat(MAX_NAME_BYTES + 1);
    let record = format!(r#"{{"item_id":"{long}","annotator_id":"a","label":"x","ts":1}}"#);
    let error = parse_label_event(&record).unwrap_err().to_string();
    assert!(error.starts_with("`item_id` is 1025 bytes"), "{error}");
    assert!(error.len() < 300, "the reason stays short: {error}");
    let record = format!(r#"{{"item_id":"i","annotator_id":"a","label":"x","ts":1,"project":"{long}"}}"#);
    assert!(parse_label_event(&record).unwrap_err().to_string().starts_with("`project` is 1025 bytes"));
    let label = "l".repeat(MAX_LABEL_BYTES + 1);
    let record = format!(r#"{{"item_id":"i","annotator_id":"a","label":"{label}","ts":1}}"#);
    assert!(parse_label_event(&record).unwrap_err().to_string().starts_with("`label` is 4097 bytes"));
    let set = format!(r#"["{}","{}"]"#, "s".repeat(2048), "t".repeat(2049));
    let record = format!(r#"{{"item_id":"i","annotator_id":"a","label":{set},"ts":1}}"#);
    assert!(parse_label_event(&record).unwrap_err().to_string().starts_with("`label` is 4097 bytes"));
    // At the limit, accepted.
    let name = "n".repeat(MAX_NAME_BYTES);
    let record = format!(r#"{{"item_id":"{name}","annotator_id":"a","label":"x","ts":1}}"#);
    assert_eq!(parse_label_event(&record).unwrap().item_id.len(), MAX_NAME_BYTES);
}

fn preference_of(record: &str) -> Preference<'_> {
    parse_label_event(record)
        .unwrap_or_else(|e| panic!("{record}: {e}"))
        .preference
        .expect("a preference event")
}

#[test]
fn preference_events() {
    let ev = parse_label_event(
        r#"{"item_id":"c1","annotator_id":"r1","ts":1764460800000,"left":"model-x","right":"model-y","label":"left"}"#,
    )
    .unwrap();
    // The label is kept as given; the comparison is beside it.
    assert_eq!(ev.label, Some(RawLabel::String("left".into())));
    let preference = ev.preference.unwrap();
    assert_eq!((&*preference.left, &*preference.right), ("model-x", "model-y"));
    assert_eq!(preference.choice, Some(Choice::Left));
    for (label, choice) in [
        (r#""right""#, Choice::Right),
        (r#""tie""#, Choice::Tie),
        ("-2", Choice::Scale(RawNumber::parse("-2").unwrap())),
    ] {
        let record =
            format!(r#"{{"item_id":"c","annotator_id":"r","ts":1,"left":"a","right":"b","label":{label}}}"#);
        assert_eq!(preference_of(&record).choice, Some(choice), "{label}");
    }
    // Plain label events are unchanged.
    assert_eq!(
        parse_label_event(r#"{"item_id":"i","annotator_id":"a","label":"left","ts":1}"#).unwrap().preference,
        None
    );
    // A delete needs no label and may or may not name the systems.
    let delete =
        preference_of(r#"{"item_id":"c","annotator_id":"r","ts":1,"op":"delete","left":"a","right":"b"}"#);
    assert_eq!(delete.choice, None);
    assert_eq!(delete.outcome(), None);
    assert_eq!(
        parse_label_event(r#"{"item_id":"c","annotator_id":"r","ts":1,"op":"delete"}"#).unwrap().preference,
        None
    );
}

fn comparison(left: &str, right: &str, label: &str) -> String {
    format!(
        r#"{{"item_id":"c","annotator_id":"r","ts":1,"left":"{left}","right":"{right}","label":{label}}}"#
    )
}

/// The normalised outcome of a comparison, owned: (first, second, result, oriented strength).
fn outcome_of(left: &str, right: &str, label: &str) -> (String, String, PairResult, Option<String>) {
    let record = comparison(left, right, label);
    let preference = preference_of(&record);
    let outcome = normalised_outcome(&preference.left, &preference.right, preference.choice.unwrap());
    assert_eq!(Some(outcome), preference.outcome());
    let strength = outcome.strength.map(|s| s.to_number().to_json_text());
    (outcome.first.to_string(), outcome.second.to_string(), outcome.result, strength)
}

#[test]
fn outcomes_are_normalised_to_systems() {
    // One comparison shown in opposite orders, the same system picked: one outcome.
    let shown = outcome_of("sys-b", "sys-a", r#""left""#);
    assert_eq!(shown, outcome_of("sys-a", "sys-b", r#""right""#));
    assert_eq!(shown, ("sys-a".into(), "sys-b".into(), PairResult::SecondWins, None));
    let record = comparison("sys-b", "sys-a", r#""left""#);
    let preference = preference_of(&record);
    let outcome = preference.outcome().unwrap();
    assert_eq!(outcome.winner(), Some("sys-b"));
    assert_eq!(outcome.agreement_label(), RawLabel::String("sys-b".into()));
    assert_eq!(outcome.pair_counts(), crate::preferences::PairCounts { a_wins: 0, b_wins: 1, ties: 0 });
    let record = comparison("sys-b", "sys-a", r#""tie""#);
    let preference = preference_of(&record);
    let tie = preference.outcome().unwrap();
    assert_eq!((tie.winner(), tie.agreement_label()), (None, RawLabel::String(TIE.into())));
    assert_eq!(tie.pair_counts().ties, 1);
    // A scale: the strength oriented to (first, second), exactly; its sign decides the winner.
    let scale = outcome_of("sys-b", "sys-a", "-3");
    assert_eq!(scale, outcome_of("sys-a", "sys-b", "3"));
    assert_eq!(scale, ("sys-a".into(), "sys-b".into(), PairResult::SecondWins, Some("3".into())));
    let record = comparison("sys-b", "sys-a", "-3");
    let preference = preference_of(&record);
    assert_eq!(preference.outcome().unwrap().agreement_label(), number("3"));
    let exact = outcome_of("z", "a", "-18446744073709551615.5");
    assert_eq!(exact.3.as_deref(), Some("18446744073709551615.5"));
    assert_eq!(outcome_of("a", "z", "0.0").2, PairResult::Tie);
    assert_eq!(outcome_of("a", "z", "-0.5").2, PairResult::FirstWins);
    assert_eq!(outcome_of("z", "a", "-0.5").2, PairResult::SecondWins);
    // Position counts read the side as shown.
    assert_eq!(Choice::Scale(RawNumber::parse("-0.5").unwrap()).side(), crate::preferences::Side::Left);
    assert_eq!(Choice::Scale(RawNumber::parse("0").unwrap()).side(), crate::preferences::Side::Tie);
}

#[test]
fn bad_preference_events_are_refused_with_reasons() {
    let base = r#""item_id":"c","annotator_id":"r","ts":1"#;
    let cases = [
        (r#""left":"a","label":"left""#, "`right` is missing or null; a preference event names both systems it compares, `left` and `right`"),
        (r#""right":"a","label":"left""#, "`left` is missing or null; a preference event names both"),
        (r#""left":"a","right":"b","label":"up""#, "`label` is a string (\"up\") on a preference event (one with `left` and `right`); it must be \"left\", \"right\", \"tie\", or a number"),
        (r#""left":"a","right":"b","label":true"#, "`label` is a boolean (true) on a preference event"),
        (r#""left":"a","right":"b","label":["left"]"#, "`label` is an array ([\"left\"]) on a preference event"),
        (r#""left":"a","right":"b""#, "`label` is missing"),
        (r#""left":"a","right":"a","label":"tie""#, "`right` is \"a\", the same system as `left`"),
        (r#""left":"","right":"b","label":"tie""#, "`left` is empty (\"\")"),
        (r#""left":3,"right":"b","label":"tie""#, "`left` is a number (3); a system is named by a string"),
        (r#""left":"a","right":null,"label":"tie""#, "`right` is missing or null"),
        (r#""left":"tie","right":"b","label":"left""#, "`left` is \"tie\", which is the outcome of a tie"),
        (r#""left":"a","right":"b","label":NaN"#, "`label` is NaN, which is not JSON"),
    ];
    for (fields, expected) in cases {
        let record = format!("{{{base},{fields}}}");
        let got = reason(&record);
        assert!(got.starts_with(expected), "{record}:\n  got      {got}\n  expected {expected}…");
    }
    let long = "s".repeat(MAX_NAME_BYTES + 1);
    let record = format!(r#"{{{base},"left":"a","right":"{long}","label":"tie"}}"#);
    assert!(reason(&record).starts_with("`right` is 1025 bytes"), "{}", reason(&record));
    let record = format!(r#"{{{base},"left":"a","right":"{}","label":"tie"}}"#, &long[1..]);
    assert_eq!(preference_of(&record).right.len(), MAX_NAME_BYTES);
}
