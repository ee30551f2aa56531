//! The source's upsert semantics, windows, catalogs and warnings.

use super::*;
use crate::event::{parse_gold_event, parse_label_event};
use crate::label::RawLabel;

fn at(ts_ms: i64) -> Stamp {
    Stamp { ts_ms, duration_ms: None }
}

#[test]
fn events_become_item_updates_in_sequence() {
    let mut source = Source::default();
    let mut out = Vec::new();
    for line in [
        r#"{"item_id":"i","annotator_id":"a","label":"x","ts":1}"#,
        r#"{"item_id":"i","annotator_id":"a","ts":4,"op":"delete"}"#,
    ] {
        source.apply_label(&parse_label_event(line).unwrap(), &mut out).unwrap();
    }
    source.set_seq(100);
    source.apply_gold(&parse_gold_event(r#"{"item_id":"i","label":"y"}"#).unwrap(), &mut out).unwrap();
    let item = (scope_id("default", "default"), stable_id(b"i"));
    let annotator = stable_id(b"a");
    let [x, y] = ["x", "y"].map(|l| source.catalog.label(&RawLabel::String(l.into())).unwrap());
    assert_eq!(
        out,
        vec![
            (item, ItemEvent::Label { annotator, seq: 0, value: Some((x, at(1))), compared: None }),
            (item, ItemEvent::Label { annotator, seq: 1, value: None, compared: None }),
            (item, ItemEvent::Gold { seq: 100, label: Some(y) }),
        ]
    );
    assert_eq!(source.catalog.scope_name(item.0), ("default", "default"));
}

#[test]
fn windows_are_named() {
    let mut source = Source::with_windows(&[3_600_000]);
    let mut out = Vec::new();
    let line = r#"{"item_id":"i","annotator_id":"a","label":"x","ts":7200001}"#;
    source.apply_label(&parse_label_event(line).unwrap(), &mut out).unwrap();
    let scope = scope_id("default", "default");
    let window = window_id(&Window { scope, size_ms: 3_600_000, start_ms: 7_200_000 });
    assert_eq!(source.catalog.window(window).unwrap().scope, scope);
    assert_eq!(source.catalog.scope_name(window), ("default", "default"));
}

#[test]
fn one_value_as_number_and_string_in_a_scope_is_a_warning() {
    let mut source = Source::default();
    let mut out = Vec::new();
    let mut apply = |stream, record: &str| source.apply_record(stream, record, &mut out).unwrap().warnings;
    let mixed = |w: Warnings| w.contains(InputWarning::NumberAndString);
    assert!(!mixed(apply(Stream::Labels, r#"{"item_id":"i","annotator_id":"a","label":1.0,"ts":1e12}"#)));
    assert!(!mixed(apply(Stream::Labels, r#"{"item_id":"i","annotator_id":"b","label":"x1","ts":1e12}"#)));
    // Another scope is another matter.
    let other = r#"{"item_id":"i","annotator_id":"a","label":"1","ts":1e12,"task":"t2"}"#;
    assert!(!mixed(apply(Stream::Labels, other)));
    // `"1"` where `1.0` was sent, here a gold answer; then every later `1` also says so.
    assert!(mixed(apply(Stream::Gold, r#"{"item_id":"i","label":"1"}"#)));
    assert!(mixed(apply(Stream::Labels, r#"{"item_id":"j","annotator_id":"a","label":1,"ts":1e12}"#)));
    assert!(!mixed(apply(Stream::Labels, r#"{"item_id":"j","annotator_id":"c","label":"01","ts":1e12}"#)));
}

#[test]
fn catalogs_learn_names_from_each_other() {
    let mut reader = Source { catalog: Catalog::recording(), ..Source::with_windows(&[DAY_MS]) };
    let mut out = Vec::new();
    let line = r#"{"item_id":"i","annotator_id":"a","label":["p","q"],"ts":1,"project":"p"}"#;
    reader.apply_label(&parse_label_event(line).unwrap(), &mut out).unwrap();
    let names = reader.catalog.take_new();
    assert_eq!(names.len(), 5, "scope, item, annotator, label, window: {names:?}");
    assert!(reader.catalog.take_new().is_empty());
    let mut publisher = Catalog::default();
    for name in &names {
        publisher.learn(name).unwrap();
        publisher.learn(name).unwrap();
    }
    let (item, ItemEvent::Label { annotator, value: Some((label, _)), .. }) = out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(publisher.scope_name(item.0), ("p", "default"));
    assert_eq!(publisher.items.name(item.1), "i");
    assert_eq!(publisher.annotators.name(annotator), "a");
    assert_eq!(publisher.labels.get(label).to_json_text(), r#"["p","q"]"#);
    // An id already standing for another name is refused.
    let clash = Name::Item { id: item.1, name: "j".into() };
    let error = publisher.learn(&clash).unwrap_err();
    assert!(error.to_string().contains("\"i\" and \"j\""), "{error}");
}
