//! Trusted consensus through the engine: a gate that flips re-decides every item its annotator
//! labelled, in both directions, in the epoch of the flip, and the live records equal a report of
//! the same input.

use crate::engine::{Engine, EngineConfig};
use crate::event::{parse_gold_event, parse_label_event};
use crate::items::ItemsConfig;
use crate::keyed::Emit;
use crate::records::{Entity, Record, RecordKey, Records};
use crate::source::{Catalog, Source};

fn config(emit: Emit, workers: usize) -> EngineConfig {
    EngineConfig {
        truth_refresh: None,
        workers,
        max_epochs_in_flight: 1,
        items: ItemsConfig { records: Some(emit), ..ItemsConfig::default() },
        emit,
        ..EngineConfig::default()
    }
}

/// Twelve gold questions answered `x` by `g1` and `g2` and `y` by `s`, and two plain items.
fn labels() -> Vec<String> {
    let mut lines = Vec::new();
    for q in 0..12 {
        for (who, label) in [("g1", "x"), ("g2", "x"), ("s", "y")] {
            lines.push(format!(r#"{{"item_id":"q{q}","annotator_id":"{who}","label":"{label}","ts":{q}}}"#));
        }
    }
    for (item, who, label) in [("t", "s", "z"), ("t", "g1", "x"), ("u", "s", "z"), ("u", "g2", "z")] {
        lines.push(format!(r#"{{"item_id":"{item}","annotator_id":"{who}","label":"{label}","ts":20}}"#));
    }
    lines
}

fn gold(answer: &str) -> Vec<String> {
    (0..12).map(|q| format!(r#"{{"item_id":"q{q}","label":"{answer}"}}"#)).collect()
}

struct Run {
    engine: Engine,
    source: Source,
    records: Records,
}

impl Run {
    fn new(emit: Emit, workers: usize) -> Run {
        Run::with(config(emit, workers))
    }

    fn with(config: EngineConfig) -> Run {
        let mut source = Source::default();
        source.catalog = Catalog::recording();
        Run { engine: Engine::start(&config).unwrap(), source, records: Records::default() }
    }

    fn scope_truth(&self) -> serde_json::Value {
        let key = RecordKey { project: "default".into(), task: "default".into(), entity: Entity::Scope };
        let scope: serde_json::Value = serde_json::from_slice(self.records.get(&key).unwrap()).unwrap();
        scope["truth"].clone()
    }

    /// The live records, in key order, once the engine has finished.
    fn finish(self) -> Vec<Record> {
        let live = self
            .records
            .iter()
            .map(|(key, value)| Record { key: key.clone(), value: value.to_vec() })
            .collect();
        self.engine.finish().unwrap();
        live
    }

    /// Submits one epoch of label and gold lines; returns the keys of the records it changed.
    fn epoch(&mut self, labels: &[String], gold: &[String]) -> Vec<RecordKey> {
        let mut updates = Vec::new();
        for line in gold {
            self.source.apply_gold(&parse_gold_event(line).unwrap(), &mut updates).unwrap();
        }
        for line in labels {
            self.source.apply_label(&parse_label_event(line).unwrap(), &mut updates).unwrap();
        }
        self.engine.submit(updates, self.source.catalog.take_new()).unwrap();
        self.engine.sync().unwrap();
        let mut changed = Vec::new();
        for output in self.engine.take_completed().1 {
            changed.extend(output.records.iter().map(|(r, _)| r.key.clone()));
            self.records.apply(&output.records);
        }
        changed
    }

    /// The live records, in key order.
    fn current(&self) -> Vec<Record> {
        self.records.iter().map(|(key, value)| Record { key: key.clone(), value: value.to_vec() }).collect()
    }

    /// Live truth is refitted in the background ([`crate::scope_truth`]): closes empty epochs
    /// (ticks) until `done` holds of the records, failing after 20 s.
    fn tick_until(&mut self, mut done: impl FnMut(&Run) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !done(self) {
            assert!(std::time::Instant::now() < deadline, "not reached in 20 s of epochs");
            std::thread::sleep(std::time::Duration::from_millis(5));
            self.epoch(&[], &[]);
        }
    }

    fn item(&self, item: &str) -> serde_json::Value {
        let key = RecordKey {
            project: "default".into(),
            task: "default".into(),
            entity: Entity::Item(item.into()),
        };
        serde_json::from_slice(self.records.get(&key).expect("the item's record")).unwrap()
    }

    fn gate(&self, annotator: &str) -> String {
        let key =
            RecordKey { project: "default".into(), task: "".into(), entity: Entity::Gate(annotator.into()) };
        let gate: serde_json::Value = serde_json::from_slice(self.records.get(&key).unwrap()).unwrap();
        gate["state"].as_str().unwrap().to_string()
    }
}

fn trusted(item: &serde_json::Value) -> (String, u64) {
    (item["trusted"]["label"].as_str().unwrap().to_string(), item["trusted"]["n"].as_u64().unwrap())
}

#[test]
fn a_gate_flip_re_decides_the_annotators_items_in_both_directions() {
    for workers in [1, 2] {
        let mut run = Run::new(Emit::Changes, workers);
        // Before any gold answer: nobody is blocked, every label is trusted.
        run.epoch(&labels(), &[]);
        assert_eq!(trusted(&run.item("t")), ("x".into(), 2));
        assert_eq!(run.item("t")["consensus"], "x");
        assert_eq!(trusted(&run.item("u")), ("z".into(), 2));

        // Gold x: s is wrong on all 12 gold questions and blocked; its labels leave the trusted
        // consensus of all its items, in this epoch.
        let changed = run.epoch(&[], &gold("x"));
        assert_eq!(run.gate("s"), "block");
        assert_eq!(run.gate("g1"), "allow");
        assert_eq!(trusted(&run.item("t")), ("x".into(), 1));
        assert_eq!(trusted(&run.item("u")), ("z".into(), 1));
        assert_eq!(trusted(&run.item("q0")), ("x".into(), 2));
        assert_eq!(run.item("q0")["consensus"], "x", "the plain consensus keeps every label");
        let item = |name: &str| RecordKey {
            project: "default".into(),
            task: "default".into(),
            entity: Entity::Item(name.into()),
        };
        assert!(changed.contains(&item("t")) && changed.contains(&item("u")), "{changed:?}");

        // The gold answers corrected to y: s was right all along and g1, g2 wrong. s's labels come
        // back, g1's and g2's leave, in this epoch.
        run.epoch(&[], &gold("y"));
        assert_eq!(run.gate("s"), "allow");
        assert_eq!(run.gate("g1"), "block");
        assert_eq!(trusted(&run.item("t")), ("z".into(), 1));
        assert_eq!(trusted(&run.item("u")), ("z".into(), 1));
        assert_eq!(trusted(&run.item("q0")), ("y".into(), 1));
        assert_eq!(run.item("t")["consensus"], "x", "ties toward the smallest label");

        // Everyone blocked on an item: no trusted label remains.
        let both_wrong = vec![r#"{"item_id":"w","annotator_id":"g1","label":"x","ts":21}"#.to_string()];
        run.epoch(&both_wrong, &[]);
        assert!(run.item("w")["trusted"].is_null());
        assert_eq!(run.item("w")["route"], "needs_labels");

        // The live records equal a report of the same input.
        let mut report = Run::new(Emit::Final, workers);
        let mut updates = Vec::new();
        for line in gold("x").iter().chain(&gold("y")) {
            report.source.apply_gold(&parse_gold_event(line).unwrap(), &mut updates).unwrap();
        }
        for line in labels().iter().chain(&both_wrong) {
            report.source.apply_label(&parse_label_event(line).unwrap(), &mut updates).unwrap();
        }
        report.engine.submit(updates, report.source.catalog.take_new()).unwrap();
        let mut finals: Vec<Record> = report.engine.finish().unwrap().into_iter().flatten().collect();
        finals.sort();
        let live = run.finish();
        assert_eq!(live, finals, "{workers} workers");
    }
}

/// The final records of a report over `labels` and `gold` lines.
fn report(labels: &[String], gold: &[String], workers: usize) -> Vec<Record> {
    let mut report = Run::new(Emit::Final, workers);
    let mut updates = Vec::new();
    for line in gold {
        report.source.apply_gold(&parse_gold_event(line).unwrap(), &mut updates).unwrap();
    }
    for line in labels {
        report.source.apply_label(&parse_label_event(line).unwrap(), &mut updates).unwrap();
    }
    report.engine.submit(updates, report.source.catalog.take_new()).unwrap();
    let mut finals: Vec<Record> = report.engine.finish().unwrap().into_iter().flatten().collect();
    finals.sort();
    finals
}

#[test]
fn live_truth_is_refreshed_at_most_every_interval_and_converges_to_the_report() {
    let refresh = std::time::Duration::from_millis(800);
    for workers in [1, 2] {
        let mut run =
            Run::with(EngineConfig { truth_refresh: Some(refresh), ..config(Emit::Changes, workers) });
        run.epoch(&labels(), &[]);
        let first = run.scope_truth();
        assert!(first["iterations"].as_u64().unwrap() >= 2, "{first}");
        // A relabel within the interval leaves the truth as it is ...
        let relabel = vec![r#"{"item_id":"u","annotator_id":"g2","label":"x","ts":30}"#.to_string()];
        run.epoch(&relabel, &[]);
        assert_eq!(run.scope_truth(), first, "{workers} workers: refitted within the interval");
        // ... until an epoch after the interval, even an empty one (a tick), starts a warm refit
        // in the background, which a later epoch publishes ...
        std::thread::sleep(refresh + std::time::Duration::from_millis(50));
        run.epoch(&[], &[]);
        run.tick_until(|run| run.scope_truth() != first);
        // ... and once the scope has stopped changing, one cold fit makes every record the report's.
        let all: Vec<String> = labels().into_iter().chain(relabel.clone()).collect();
        let report = report(&all, &[], workers);
        run.tick_until(|run| run.current() == report);
        assert_eq!(run.finish(), report, "{workers} workers");
    }
}

/// Each item's `truth` object, by item.
fn item_truths(run: &Run) -> std::collections::BTreeMap<String, serde_json::Value> {
    run.records
        .iter()
        .filter_map(|(key, value)| match &key.entity {
            Entity::Item(item) => {
                let record: serde_json::Value = serde_json::from_slice(value).unwrap();
                Some((item.to_string(), record["truth"].clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_warm_refit_republishes_only_the_items_whose_truth_moved_beyond_the_tolerance() {
    let refresh = std::time::Duration::from_millis(300);
    let relabel = vec![r#"{"item_id":"u","annotator_id":"g2","label":"x","ts":30}"#.to_string()];
    let all: Vec<String> = labels().into_iter().chain(relabel.clone()).collect();
    // Per tolerance: the items whose published truth the warm refit changed, and whose truth
    // label it changed.
    let mut moved = Vec::new();
    for tolerance in [0.0, 1.0] {
        let truth = crate::truth::TruthSettings { live_tolerance: tolerance, ..Default::default() };
        let mut run =
            Run::with(EngineConfig { truth_refresh: Some(refresh), truth, ..config(Emit::Changes, 1) });
        run.epoch(&labels(), &[]);
        let before = item_truths(&run);
        let first = run.scope_truth();
        run.epoch(&relabel, &[]);
        std::thread::sleep(refresh + std::time::Duration::from_millis(50));
        run.epoch(&[], &[]);
        run.tick_until(|run| run.scope_truth() != first);
        let warm = item_truths(&run);
        let changed: Vec<&String> = warm.keys().filter(|item| warm[*item] != before[*item]).collect();
        let relabelled: Vec<&String> =
            warm.keys().filter(|item| warm[*item]["label"] != before[*item]["label"]).collect();
        moved.push((changed.len(), relabelled.len()));
        if tolerance == 1.0 {
            // Only a changed truth label is republished; every other item keeps its published truth.
            assert_eq!(changed, relabelled, "tolerance {tolerance}");
        }
        // Once the scope stops changing, the cold fit publishes every change: the report's records.
        let report = report(&all, &[], 1);
        run.tick_until(|run| run.current() == report);
        assert_eq!(run.finish(), report, "tolerance {tolerance}");
    }
    // Republishing every change moves more items than the labels that changed.
    assert!(moved[0].0 > moved[1].0, "{moved:?}");
}

#[test]
fn live_with_truth_off_fits_nothing_and_trust_still_follows_the_gates() {
    let refresh = std::time::Duration::from_millis(100);
    let truth = crate::truth::TruthSettings { enabled: false, ..Default::default() };
    let mut run = Run::with(EngineConfig { truth_refresh: Some(refresh), truth, ..config(Emit::Changes, 2) });
    run.epoch(&labels(), &gold("x"));
    // Past the refresh interval, with and without changes: still nothing fitted.
    std::thread::sleep(refresh + std::time::Duration::from_millis(50));
    run.epoch(&[r#"{"item_id":"u","annotator_id":"g2","label":"x","ts":30}"#.to_string()], &[]);
    std::thread::sleep(refresh + std::time::Duration::from_millis(50));
    run.epoch(&[], &[]);
    assert!(run.scope_truth().is_null(), "{}", run.scope_truth());
    let truths = item_truths(&run);
    assert!(!truths.is_empty() && truths.values().all(|t| t.is_null()), "{truths:?}");
    for (key, value) in run.records.iter() {
        if let Entity::Annotator(who) = &key.entity {
            let record: serde_json::Value = serde_json::from_slice(value).unwrap();
            assert!(record["confusion"].is_null(), "{who}: {}", record["confusion"]);
        }
    }
    // `s` answers every gold question wrong: blocked, its labels leave the trusted consensus of
    // `t` (where only `g1`'s `x` remains), with or without truth.
    assert_eq!(run.gate("s"), "block");
    assert_eq!(trusted(&run.item("t")), ("x".to_string(), 1));
    assert_eq!(run.item("t")["route"], "needs_labels");
    assert_eq!(run.item("q0")["route"], "settled", "a gold item settles");
}

#[test]
fn live_item_truths_are_published_at_most_a_bound_per_epoch_and_in_full() {
    use crate::scope_truth::PUBLISH_PER_EPOCH;
    let items = PUBLISH_PER_EPOCH + 100;
    let mut lines = Vec::new();
    for item in 0..items {
        for (who, label) in [("a", "x"), ("b", if item % 3 == 0 { "y" } else { "x" }), ("c", "y")] {
            lines.push(format!(r#"{{"item_id":"i{item}","annotator_id":"{who}","label":"{label}","ts":0}}"#));
        }
    }
    let refresh = std::time::Duration::from_secs(3600);
    let mut run = Run::with(EngineConfig { truth_refresh: Some(refresh), ..config(Emit::Changes, 1) });
    let with_truth = |run: &Run| item_truths(run).values().filter(|truth| !truth.is_null()).count();
    // The scope's first fit, in place: its items' truths come out in this epoch up to the bound,
    // and the rest wait for the next epoch, empty or not.
    run.epoch(&lines, &[]);
    assert_eq!(item_truths(&run).len(), items, "every item has its record");
    assert_eq!(with_truth(&run), PUBLISH_PER_EPOCH);
    assert_eq!(run.engine.truth_backlog(), 100);
    run.epoch(&[], &[]);
    assert_eq!(with_truth(&run), items);
    assert_eq!(run.engine.truth_backlog(), 0);
    // That fit was cold, from every label: the records are the report's.
    assert_eq!(run.finish(), report(&lines, &[], 1));
}

/// An item's parts are kept inline, every item of a report until the end: a part with its
/// multiplicity stays within four words (the truth, the largest, is behind a pointer; a label's
/// fields are inline, not an [`crate::items::ItemRow`] with a tag of its own).
#[test]
fn an_item_part_is_four_words() {
    assert_eq!(std::mem::size_of::<(super::ItemUpdate, crate::dataflow::Diff)>(), 32);
}
