use std::collections::BTreeSet;

use super::*;
use crate::event::{parse_gold_event, parse_label_event};
use crate::gates::GateLog;
use crate::records::{Entity, RecordKey, Records};
use crate::source::{Catalog, Source};
use crate::summary::DriftSummary;

const LABELS: &[&str] = &[
    r#"{"item_id":"i1","annotator_id":"a","label":"x","ts":1}"#,
    r#"{"item_id":"i1","annotator_id":"b","label":"x","ts":2}"#,
    r#"{"item_id":"i1","annotator_id":"c","label":"y","ts":3}"#,
    r#"{"item_id":"i2","annotator_id":"a","label":"y","ts":4}"#,
    r#"{"item_id":"i2","annotator_id":"b","label":"x","ts":5}"#,
    r#"{"item_id":"i3","annotator_id":"c","label":"x","ts":6,"task":"other"}"#,
];

fn config(workers: usize, emit: Emit) -> EngineConfig {
    EngineConfig {
        workers,
        max_epochs_in_flight: 1,
        items: ItemsConfig { records: Some(emit), ..ItemsConfig::default() },
        emit,
        ..EngineConfig::default()
    }
}

fn source() -> Source {
    let mut source = Source::default();
    source.catalog = Catalog::recording();
    source
}

/// What a live engine published so far: every record, the drift summary, the gate records.
#[derive(Default)]
struct Reader {
    records: Records,
    drift: DriftSummary,
    gates: GateLog,
}

impl Reader {
    /// Takes the engine's completed epochs; returns the keys they changed.
    fn take(&mut self, engine: &Engine) -> BTreeSet<RecordKey> {
        let mut changed = BTreeSet::new();
        for output in engine.take_completed().1 {
            changed.extend(output.records.iter().map(|(r, _)| r.key.clone()));
            self.records.apply(&output.records);
            self.drift.apply(&output.metrics);
            self.gates.records(&output.records);
        }
        changed
    }
}

/// Submits `lines` in epochs of `epoch` lines (after a gold answer for i1).
fn submit(engine: &mut Engine, source: &mut Source, epoch: usize) {
    let mut updates = Vec::new();
    source.apply_gold(&parse_gold_event(r#"{"item_id":"i1","label":"x"}"#).unwrap(), &mut updates).unwrap();
    for chunk in LABELS.chunks(epoch) {
        for line in chunk {
            source.apply_label(&parse_label_event(line).unwrap(), &mut updates).unwrap();
        }
        engine.submit(std::mem::take(&mut updates), source.catalog.take_new()).unwrap();
    }
    engine.sync().unwrap();
    assert_eq!(engine.completed(), LABELS.len().div_ceil(epoch) as Time);
}

/// The final records of a report over the labels (every worker's, merged and sorted).
fn report(workers: usize, epoch: usize) -> Vec<Record> {
    let mut engine = Engine::start(&config(workers, Emit::Final)).unwrap();
    submit(&mut engine, &mut source(), epoch);
    let mut records: Vec<Record> = engine.finish().unwrap().into_iter().flatten().collect();
    records.sort();
    records
}

/// The live engine over the labels, and what it published.
fn live(workers: usize, epoch: usize) -> (Engine, Source, Reader) {
    let mut engine = Engine::start(&config(workers, Emit::Changes)).unwrap();
    let mut source = source();
    submit(&mut engine, &mut source, epoch);
    let mut reader = Reader::default();
    reader.take(&engine);
    (engine, source, reader)
}

fn sorted(records: &Records) -> Vec<Record> {
    records.iter().map(|(key, value)| Record { key: key.clone(), value: value.to_vec() }).collect()
}

#[test]
fn same_records_for_any_workers_epochs_and_mode() {
    let expected = report(1, 1);
    assert!(expected.iter().any(|r| r.key.entity == Entity::Pair("a".into(), "c".into())));
    assert!(String::from_utf8_lossy(&expected.iter().find(|r| r.key.entity == Entity::Scope).unwrap().value)
        .contains(r#""n_labels":5"#));
    for (workers, epoch) in [(1, 6), (2, 1), (2, 4), (3, 2)] {
        assert_eq!(report(workers, epoch), expected, "report, {workers} workers, epochs of {epoch}");
        let (engine, _, reader) = live(workers, epoch);
        engine.finish().unwrap();
        assert_eq!(sorted(&reader.records), expected, "live, {workers} workers, epochs of {epoch}");
    }
}

#[test]
fn a_relabel_changes_exactly_the_records_it_touched() {
    let (mut engine, mut source, mut reader) = live(2, 3);
    // Annotator c changes its label on i1 from y to x: the default scope, i1's three annotators
    // and the pairs (a, c) and (b, c) change; the pair (a, b) and the other scope do not, except
    // c's object in the other scope, which carries c's project-wide gate (its gold answer
    // changed), and c's gate. i1's consensus is x before and after, but its trusted count and
    // the scope's Dawid–Skene truth, global to the scope, change: both items of the scope are
    // re-decided.
    let mut updates = Vec::new();
    let line = r#"{"item_id":"i1","annotator_id":"c","label":"x","ts":9}"#;
    source.apply_label(&parse_label_event(line).unwrap(), &mut updates).unwrap();
    engine.submit(updates, source.catalog.take_new()).unwrap();
    engine.sync().unwrap();
    let changed = reader.take(&engine);
    let key = |task: &str, entity| RecordKey { project: "default".into(), task: task.into(), entity };
    let expected: BTreeSet<RecordKey> = [
        key("default", Entity::Scope),
        key("default", Entity::Annotator("a".into())),
        key("default", Entity::Annotator("b".into())),
        key("default", Entity::Annotator("c".into())),
        key("other", Entity::Annotator("c".into())),
        key("default", Entity::Pair("a".into(), "c".into())),
        key("default", Entity::Pair("b".into(), "c".into())),
        key("default", Entity::Item("i1".into())),
        key("default", Entity::Item("i2".into())),
        key("", Entity::Gate("c".into())),
    ]
    .into_iter()
    .collect();
    assert_eq!(changed, expected);
    let value = |key: &RecordKey| -> serde_json::Value {
        serde_json::from_slice(reader.records.get(key).unwrap()).unwrap()
    };
    let c = value(&key("default", Entity::Annotator("c".into())));
    assert_eq!(c["gold"]["correct"], 1);
    assert_eq!(c["gate"]["evidence"]["correct"], 1);
    assert_eq!(value(&key("default", Entity::Item("i1".into())))["consensus"], "x");
    assert_eq!(value(&key("default", Entity::Scope))["gold"]["correct"], 3);
    assert_eq!(value(&key("default", Entity::Pair("b".into(), "c".into())))["n_shared"], 1);
    // Nothing changes without input.
    engine.submit(Vec::new(), Vec::new()).unwrap();
    engine.sync().unwrap();
    assert_eq!(reader.take(&engine), BTreeSet::new());
    engine.finish().unwrap();
}

#[test]
fn deleting_every_label_leaves_nothing() {
    let (mut engine, mut source, mut reader) = live(2, 3);
    assert!(!reader.drift.gates.is_empty());
    let mut updates = Vec::new();
    for line in LABELS {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let mut delete = event.as_object().unwrap().clone();
        delete.remove("label");
        delete.insert("op".into(), "delete".into());
        let delete = serde_json::Value::Object(delete).to_string();
        source.apply_label(&parse_label_event(&delete).unwrap(), &mut updates).unwrap();
    }
    engine.submit(updates, source.catalog.take_new()).unwrap();
    engine.sync().unwrap();
    let mut gate_records = Vec::new();
    for output in engine.take_completed().1 {
        reader.records.apply(&output.records);
        reader.drift.apply(&output.metrics);
        gate_records.extend(reader.gates.records(&output.records));
    }
    // Every annotator was still in warm-up, where it stays: leaving is no new decision.
    assert_eq!(gate_records, vec![]);
    assert_eq!(reader.drift, DriftSummary::default());
    assert!(reader.records.is_empty(), "{:?}", reader.records);
    engine.finish().unwrap();
}

#[test]
fn completed_epochs_are_handed_out_whole_while_later_ones_run() {
    // The records after each prefix of epochs (one label per epoch), from separate runs.
    let expected: Vec<Vec<Record>> = (0..=LABELS.len())
        .map(|n| {
            let mut engine = Engine::start(&config(1, Emit::Final)).unwrap();
            let mut source = source();
            let mut updates = Vec::new();
            for line in &LABELS[..n] {
                source.apply_label(&parse_label_event(line).unwrap(), &mut updates).unwrap();
            }
            engine.submit(updates, source.catalog.take_new()).unwrap();
            let mut records: Vec<Record> = engine.finish().unwrap().into_iter().flatten().collect();
            records.sort();
            records
        })
        .collect();
    let mut engine =
        Engine::start(&EngineConfig { max_epochs_in_flight: 1, ..config(2, Emit::Changes) }).unwrap();
    let mut source = source();
    for line in LABELS {
        let mut updates = Vec::new();
        source.apply_label(&parse_label_event(line).unwrap(), &mut updates).unwrap();
        engine.submit_nowait(updates, source.catalog.take_new()).unwrap();
    }
    assert_eq!(engine.submitted(), LABELS.len() as Time);
    // Whenever outputs are taken, they take the records to the state after whole epochs.
    let mut records = Records::default();
    let mut seen = Vec::new();
    loop {
        let (applied, outputs) = engine.take_completed();
        for output in &outputs {
            assert!(output.epoch < applied);
            records.apply(&output.records);
        }
        let applied = applied.min(LABELS.len() as Time) as usize;
        assert_eq!(sorted(&records), expected[applied], "after {applied} epochs");
        seen.push(applied);
        if applied == LABELS.len() {
            break;
        }
        std::thread::yield_now();
    }
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    engine.check().unwrap();
    engine.finish().unwrap();
}

/// A feed over a share of the label lines: worker `w` of `peers` reads lines `w, w + peers, ...`,
/// a few per read; its report's meta is the number of lines it read in the epoch.
struct LinesFeed {
    lines: Vec<&'static str>,
    next: usize,
    read: u8,
    source: Source,
    /// Whether it holds its epochs until it has read every line (as the service does while it
    /// rebuilds); its meta is then `[lines, held]`.
    holds: bool,
    /// Whether the gold answer for i1 is still to be read, first.
    gold: bool,
}

impl Feed for LinesFeed {
    fn read(&mut self, out: &mut Vec<Update>) -> Result<usize, String> {
        let mut n = 0;
        if std::mem::take(&mut self.gold) {
            let gold = parse_gold_event(r#"{"item_id":"i1","label":"x"}"#).map_err(|e| e.to_string())?;
            self.source.apply_gold(&gold, out).map_err(|e| e.to_string())?;
        }
        // Holding, a line per epoch: several epochs are held.
        while n < 2 && self.next < self.lines.len() && !(self.holds && self.read > 0) {
            let event = parse_label_event(self.lines[self.next]).map_err(|e| e.to_string())?;
            self.source.apply_label(&event, out).map_err(|e| e.to_string())?;
            self.next += 1;
            self.read += 1;
            n += 1;
        }
        Ok(n)
    }

    fn close(&mut self, _: Time, _: &mut Vec<Update>) -> EpochReport {
        let hold = self.holds && self.next < self.lines.len();
        let mut meta = vec![std::mem::take(&mut self.read)];
        if self.holds {
            meta.push(u8::from(hold));
        }
        EpochReport { names: self.source.catalog.take_new(), meta, hold }
    }
}

fn lines_feed() -> FeedFactory {
    Arc::new(|worker, peers| {
        let lines = LABELS.iter().copied().skip(worker).step_by(peers).collect();
        let feed = LinesFeed { lines, next: 0, read: 0, source: source(), holds: false, gold: false };
        Ok(Box::new(feed) as Box<dyn Feed>)
    })
}

/// [`lines_feed`], holding each worker's epochs until it has read its lines, with the gold
/// answer for i1 on the first worker.
fn held_lines_feed() -> FeedFactory {
    Arc::new(|worker, peers| {
        let lines = LABELS.iter().copied().skip(worker).step_by(peers).collect();
        let feed = LinesFeed { lines, next: 0, read: 0, source: source(), holds: true, gold: worker == 0 };
        Ok(Box::new(feed) as Box<dyn Feed>)
    })
}

/// Closes epochs on a fed engine until its workers have reported every line; returns the
/// records it published.
fn run_fed(mut engine: Engine) -> Vec<Record> {
    let (mut lines, mut records) = (0, Records::default());
    while lines < LABELS.len() {
        let epoch = engine.close_epoch().unwrap();
        engine.wait_for(epoch + 1).unwrap();
        let (applied, outputs) = engine.take_completed();
        assert!(applied > epoch);
        for output in outputs {
            lines += output.reports.iter().map(|meta| usize::from(meta[0])).sum::<usize>();
            records.apply(&output.records);
        }
    }
    assert_eq!(lines, LABELS.len(), "every line read once");
    engine.finish().unwrap();
    sorted(&records)
}

#[test]
fn fed_workers_and_clusters_equal_the_submitted_input() {
    let mut engine = Engine::start(&config(1, Emit::Final)).unwrap();
    let mut source = source();
    let mut updates = Vec::new();
    for line in LABELS {
        source.apply_label(&parse_label_event(line).unwrap(), &mut updates).unwrap();
    }
    engine.submit(updates, source.catalog.take_new()).unwrap();
    let mut expected: Vec<Record> = engine.finish().unwrap().into_iter().flatten().collect();
    expected.sort();

    for workers in [1, 3] {
        let engine = Engine::start_fed(&config(workers, Emit::Changes), None, lines_feed()).unwrap();
        assert_eq!(run_fed(engine), expected, "{workers} workers");
    }

    // Two processes of two workers each, on 127.0.0.1, here as two engines in one process.
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let config = config(2, Emit::Changes);
    let later = {
        let (config, addresses) = (config.clone(), addresses.clone());
        std::thread::spawn(move || {
            let cluster = ClusterConfig { process: 1, addresses };
            let engine = Engine::start_fed(&config, Some(&cluster), lines_feed()).unwrap();
            // It runs until the first process finishes.
            while !engine.stopped() {
                std::thread::sleep(Duration::from_millis(10));
            }
            let (_, outputs) = engine.take_completed();
            engine.finish().unwrap();
            outputs.len()
        })
    };
    let cluster = ClusterConfig { process: 0, addresses };
    let engine = Engine::start_fed(&config, Some(&cluster), lines_feed()).unwrap();
    assert_eq!(run_fed(engine), expected, "two processes");
    assert_eq!(later.join().unwrap(), 0, "the later process publishes nothing");
}

#[test]
fn held_epochs_derive_nothing_and_the_first_epoch_after_them_derives_the_whole_state() {
    let expected = report(1, 1);
    for workers in [1, 2, 3] {
        let mut engine = Engine::start_fed(&config(workers, Emit::Changes), None, held_lines_feed()).unwrap();
        let (mut lines, mut records, mut held_epochs, mut held) = (0, Records::default(), 0, true);
        while held {
            let epoch = engine.close_epoch().unwrap();
            engine.wait_for(epoch + 1).unwrap();
            for output in engine.take_completed().1 {
                lines += output.reports.iter().map(|meta| usize::from(meta[0])).sum::<usize>();
                held = output.reports.iter().any(|meta| meta[1] == 1);
                if held {
                    held_epochs += 1;
                    assert_eq!(output.records, Vec::new(), "a held epoch derives nothing");
                }
                records.apply(&output.records);
            }
        }
        assert_eq!(lines, LABELS.len(), "{workers} workers: every line read by the epoch that ends the hold");
        assert!(held_epochs > 0, "{workers} workers: some epochs held");
        assert_eq!(sorted(&records), expected, "{workers} workers");
        engine.finish().unwrap();
    }
}

/// Worker `w` claims id 7 for the item name `w{w}`.
struct ClashingFeed(usize);

impl Feed for ClashingFeed {
    fn read(&mut self, _: &mut Vec<Update>) -> Result<usize, String> {
        Ok(0)
    }

    fn close(&mut self, _: Time, _: &mut Vec<Update>) -> EpochReport {
        let names = vec![crate::source::Name::Item { id: 7, name: format!("w{}", self.0).into() }];
        EpochReport { names, meta: Vec::new(), hold: false }
    }
}

#[test]
fn names_that_clash_across_workers_stop_the_engine() {
    let feed: FeedFactory = Arc::new(|worker, _| Ok(Box::new(ClashingFeed(worker)) as Box<dyn Feed>));
    let mut engine = Engine::start_fed(&config(2, Emit::Changes), None, feed).unwrap();
    let epoch = engine.close_epoch().unwrap();
    engine.wait_for(epoch + 1).unwrap();
    let error = engine.check().unwrap_err().to_string();
    assert!(error.contains(r#""w0" and "w1""#) || error.contains(r#""w1" and "w0""#), "{error}");
}

#[test]
fn window_records_follow_the_labels() {
    const HOUR: i64 = 3_600_000;
    let items =
        ItemsConfig { window_sizes: vec![HOUR], records: Some(Emit::Changes), ..ItemsConfig::default() };
    let mut engine = Engine::start(&EngineConfig { items, ..config(1, Emit::Changes) }).unwrap();
    let mut source = Source::with_windows(&[HOUR]);
    source.catalog = Catalog::recording();
    let mut reader = Reader::default();
    let mut apply = |engine: &mut Engine, lines: &[&str]| {
        let mut updates = Vec::new();
        for line in lines {
            source.apply_label(&parse_label_event(line).unwrap(), &mut updates).unwrap();
        }
        engine.submit(updates, source.catalog.take_new()).unwrap();
        engine.sync().unwrap();
        reader.take(engine);
        reader
            .records
            .iter()
            .filter_map(|(k, _)| match k.entity {
                Entity::Window { size_ms, start_ms } => Some((size_ms, start_ms)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let windows = apply(
        &mut engine,
        &[
            r#"{"item_id":"i","annotator_id":"a","label":"x","ts":1}"#,
            r#"{"item_id":"j","annotator_id":"a","label":"x","ts":3600001}"#,
        ],
    );
    assert_eq!(windows, vec![(HOUR, 0), (HOUR, HOUR)]);
    // The newest window loses its only label: its record goes.
    let windows = apply(&mut engine, &[r#"{"item_id":"j","annotator_id":"a","ts":3600002,"op":"delete"}"#]);
    assert_eq!(windows, vec![(HOUR, 0)]);
    engine.finish().unwrap();
}

#[test]
fn refuses_zero_workers() {
    assert!(matches!(Engine::start(&config(0, Emit::Changes)), Err(EngineError::NoWorkers)));
}

/// How often the report handed freed memory back ([`crate::freed`]).
static RELEASED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn a_report_hands_back_the_memory_of_a_large_operator_once_it_is_derived() {
    crate::freed::set_release(|| {
        RELEASED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    // 200 annotators on one item: 19,900 pairs, more than an operator may hold before its final
    // derivation hands its freed states back.
    let mut engine = Engine::start(&config(1, Emit::Final)).unwrap();
    let mut source = source();
    let mut updates = Vec::new();
    for a in 0..200 {
        let line = format!(r#"{{"item_id":"i","annotator_id":"a{a:03}","label":"x","ts":{a}}}"#);
        source.apply_label(&parse_label_event(&line).unwrap(), &mut updates).unwrap();
    }
    engine.submit(updates, source.catalog.take_new()).unwrap();
    let records: Vec<Record> = engine.finish().unwrap().into_iter().flatten().collect();
    let pairs = records.iter().filter(|r| matches!(r.key.entity, Entity::Pair(..))).count();
    assert_eq!(pairs, 19_900);
    assert!(RELEASED.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the pairs' memory was not handed back");
    // The records of a scope share its names, and a pair's names are the catalog's.
    let first = records.iter().find(|r| matches!(r.key.entity, Entity::Pair(..))).unwrap();
    assert!(records.iter().all(|r| std::sync::Arc::ptr_eq(&r.key.project, &first.key.project)));
    let Entity::Pair(a, _) = &first.key.entity else { unreachable!() };
    let same_a = records.iter().filter_map(|r| match &r.key.entity {
        Entity::Pair(x, _) if x == a => Some(x),
        _ => None,
    });
    assert!(same_a.clone().count() > 1 && same_a.clone().all(|x| std::sync::Arc::ptr_eq(x, a)));
}
