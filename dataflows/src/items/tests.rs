use super::*;
use timely::dataflow::operators::capture::Extract;
use timely::dataflow::operators::Capture;

/// What the items contribute, accumulated over all times: the sums' totals (non-zero), the
/// pair cells, and the rows.
#[derive(Default)]
struct Run {
    scopes: BTreeMap<ScopeUpdate, Sums>,
    annotators: BTreeMap<AnnotatorUpdate, Sums>,
    pairs: Vec<(PairCell, Diff)>,
    rows: Vec<((ItemKey, ItemRow), Diff)>,
}

fn total<K: Ord>(totals: &mut BTreeMap<K, Sums>, key: K, (x, y, z): Sums) {
    let t = totals.entry(key).or_insert((0, 0, 0));
    *t = (t.0 + x, t.1 + y, t.2 + z);
}

/// Runs the items over `(time, item, event)`s with `workers` workers, the names given at time
/// 0.
fn run_with_names(
    workers: usize,
    config: ItemsConfig,
    events: Vec<(Time, ItemKey, ItemEvent)>,
    names: Vec<crate::source::Name>,
) -> Run {
    let (send, receive) = std::sync::mpsc::channel();
    let send = std::sync::Mutex::new(send);
    timely::execute(timely::Config::process(workers), move |worker| {
        let mut input = timely::dataflow::InputHandle::<
            Time,
            timely::container::CapacityContainerBuilder<Vec<Update>>,
        >::new();
        let mut names_input = timely::dataflow::InputHandle::<
            Time,
            timely::container::CapacityContainerBuilder<Vec<crate::source::Name>>,
        >::new();
        let captured = worker.dataflow::<Time, _, _>(|scope| {
            let on_error: crate::names::OnError = std::sync::Arc::new(|e| panic!("{e}"));
            let names = crate::names::names(names_input.to_stream(scope), on_error);
            let items = items(input.to_stream(scope), &names, config.clone());
            (
                items.scopes.inner.capture(),
                items.annotators.inner.capture(),
                items.pairs.inner.capture(),
                items.rows.inner.capture(),
            )
        });
        if worker.index() == 0 {
            for name in &names {
                names_input.send(name.clone());
            }
        }
        drop(names_input);
        // Worker w feeds events w, w + workers, ...: one identity's events come from several.
        let last = events.iter().map(|(t, ..)| *t).max().unwrap_or(0);
        for time in 0..=last {
            input.advance_to(time);
            for (i, &(_, item, event)) in events.iter().enumerate().filter(|(_, (t, ..))| *t == time) {
                if i % worker.peers() == worker.index() {
                    input.send((item, event));
                }
            }
        }
        drop(input);
        while worker.step() {}
        let (scopes, annotators, pairs, rows) = captured;
        send.lock()
            .unwrap()
            .send((scopes.extract(), annotators.extract(), pairs.extract(), rows.extract()))
            .unwrap();
    })
    .unwrap();
    let mut run = Run::default();
    for (scopes, annotators, pairs, rows) in receive.iter() {
        for (key, _, sums) in scopes.into_iter().flat_map(|(_, batch)| batch) {
            total(&mut run.scopes, key, sums);
        }
        for (key, _, sums) in annotators.into_iter().flat_map(|(_, batch)| batch) {
            total(&mut run.annotators, key, sums);
        }
        run.pairs.extend(pairs.into_iter().flat_map(|(_, batch)| batch).map(|(c, _, d)| (c, d)));
        run.rows.extend(rows.into_iter().flat_map(|(_, batch)| batch).map(|(r, _, d)| (r, d)));
    }
    run.scopes.retain(|_, t| *t != (0, 0, 0));
    run.annotators.retain(|_, t| *t != (0, 0, 0));
    differential_dataflow::consolidation::consolidate(&mut run.pairs);
    differential_dataflow::consolidation::consolidate(&mut run.rows);
    run
}

fn run(workers: usize, config: ItemsConfig, events: Vec<(Time, ItemKey, ItemEvent)>) -> Run {
    run_with_names(workers, config, events, Vec::new())
}

const ITEM: ItemKey = (0, 7);

fn label(annotator: AnnotatorId, seq: u64, label: Option<LabelId>) -> ItemEvent {
    ItemEvent::Label {
        annotator,
        seq,
        value: label.map(|l| (l, Stamp { ts_ms: 1, duration_ms: None })),
        compared: None,
    }
}

fn pairs(run: &Run) -> Vec<(AnnotatorId, AnnotatorId, LabelId, LabelId)> {
    run.pairs
        .iter()
        .map(|&(((_, a, b), (label_a, label_b)), d)| {
            assert_eq!(d, 1);
            (a, b, label_a, label_b)
        })
        .collect()
}

#[test]
fn the_latest_event_of_each_identity_wins() {
    // In order: annotator 1 relabels 10 -> 11, annotator 2 says 10 and deletes it, 3 says 12.
    let events = vec![
        (0, ITEM, label(1, 0, Some(10))),
        (0, ITEM, label(2, 1, Some(10))),
        (1, ITEM, label(1, 2, Some(11))),
        (1, ITEM, label(2, 3, None)),
        (2, ITEM, label(3, 4, Some(12))),
    ];
    for workers in [1, 3] {
        let out = run(workers, ItemsConfig::default(), events.clone());
        assert_eq!(pairs(&out), vec![(1, 3, 11, 12)], "{workers} workers");
    }
}

#[test]
fn out_of_order_input_keeps_the_greatest_sequence_number() {
    // Read out of order: the delete (seq 5) and the relabel (seq 9) arrive before the events
    // they follow; the older events change nothing.
    let events = vec![
        (0, ITEM, label(2, 5, None)),
        (0, ITEM, label(1, 9, Some(11))),
        (1, ITEM, label(1, 3, Some(10))),
        (1, ITEM, label(2, 1, Some(10))),
        (2, ITEM, label(3, 4, Some(12))),
        (2, ITEM, ItemEvent::Gold { seq: 8, label: Some(12) }),
        (3, ITEM, ItemEvent::Gold { seq: 2, label: Some(11) }),
    ];
    let config = ItemsConfig { out_of_order: true, ..ItemsConfig::default() };
    for workers in [1, 2] {
        let out = run(workers, config.clone(), events.clone());
        assert_eq!(pairs(&out), vec![(1, 3, 11, 12)], "{workers} workers");
        let gold: Vec<_> = out
            .annotators
            .keys()
            .filter_map(|&((_, annotator), sum)| match sum {
                AnnotatorSum::Answer { correct, .. } => Some((annotator, correct)),
                _ => None,
            })
            .collect();
        assert_eq!(gold, vec![(1, false), (3, true)], "gold answer 12, not the older 11");
    }
}

#[test]
fn windows_get_their_labels_and_the_gold_answer() {
    const HOUR: i64 = 3_600_000;
    let at = |annotator, ts_ms| ItemEvent::Label {
        annotator,
        seq: annotator,
        value: Some((10, Stamp { ts_ms, duration_ms: None })),
        compared: None,
    };
    let events = vec![
        (0, ITEM, at(1, 5)),
        (0, ITEM, at(2, HOUR + 5)),
        (0, ITEM, ItemEvent::Gold { seq: 9, label: Some(10) }),
    ];
    let config = ItemsConfig { window_sizes: vec![HOUR], ..ItemsConfig::default() };
    let out = run(1, config, events);
    let windows: Vec<ScopeId> =
        [0, HOUR].map(|start_ms| window_id(&Window { scope: 0, size_ms: HOUR, start_ms })).to_vec();
    for (window, annotator) in windows.iter().zip([1, 2]) {
        let stats = out.scopes.get(&(*window, ScopeSum::Items { day: 0, raters: 1 }));
        assert_eq!(stats, Some(&(1, 0, 0)), "window {window:#x} has the item with one label");
        let labels = out.scopes.get(&(*window, ScopeSum::Annotator { annotator }));
        assert_eq!(labels, Some(&(1, 0, 0)), "window {window:#x} has annotator {annotator}'s label");
        let gold = out.scopes.get(&(*window, ScopeSum::Gold));
        assert_eq!(gold, Some(&(1, 1, 0)), "window {window:#x} scores its label against the gold answer");
    }
    // Windows carry no pairs and no annotators' sums (drift inputs).
    assert!(out.pairs.iter().all(|(((scope, ..), _), _)| *scope == 0));
    assert!(out.annotators.keys().all(|((scope, _), _)| *scope == 0));
}

#[test]
fn the_rows_are_the_live_labels_and_the_gold_answer() {
    // Annotators 1 and 2 say 11 and 10; then 3 says 11; then 3 deletes it, and the gold answer
    // (10) is corrected to 11. With one or two workers, and out-of-order input or not, the rows
    // accumulated up to each stage are the item's live labels and gold answer.
    let events = vec![
        (0, ITEM, label(1, 0, Some(11))),
        (0, ITEM, label(2, 1, Some(10))),
        (0, ITEM, ItemEvent::Gold { seq: 2, label: Some(10) }),
        (1, ITEM, label(3, 3, Some(11))),
        (2, ITEM, label(3, 4, None)),
        (2, ITEM, ItemEvent::Gold { seq: 5, label: Some(11) }),
    ];
    let row = |annotator, label| (ITEM, ItemRow::Label { annotator, label, compared: false });
    let gold = |label| (ITEM, ItemRow::Gold { label });
    for workers in [1, 2] {
        for out_of_order in [false, true] {
            let config = ItemsConfig { rows: true, out_of_order, ..ItemsConfig::default() };
            let rows = |n: usize| {
                let mut rows = run(workers, config.clone(), events[..n].to_vec()).rows;
                rows.sort();
                rows
            };
            let mut expected = vec![(row(1, 11), 1), (row(2, 10), 1), (gold(10), 1)];
            expected.sort();
            assert_eq!(rows(3), expected, "{workers} workers");
            expected.push((row(3, 11), 1));
            expected.sort();
            assert_eq!(rows(4), expected, "{workers} workers");
            let mut expected = vec![(row(1, 11), 1), (row(2, 10), 1), (gold(11), 1)];
            expected.sort();
            assert_eq!(rows(6), expected, "{workers} workers");
        }
    }
    // Without `rows`, none.
    assert!(run(1, ItemsConfig::default(), events).rows.is_empty());
}
