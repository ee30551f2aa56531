//! Tests of `dataflow`.

use std::collections::BTreeMap;

use super::*;
use crate::annotators::{AnnotatorKey, AnnotatorSum};
use crate::items::ItemEvent;
use crate::label::LabelId;
use crate::pairs::PairKey;
use crate::scopes::ScopeSum;
use crate::source::{ItemId, ItemKey, ScopeId};
use timely::dataflow::operators::capture::Extract;
use timely::dataflow::operators::{Capture, Concat};

/// A sum the items contribute to, and the operator that keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
enum Sum {
    Scope(ScopeId, ScopeSum),
    Annotator(AnnotatorKey, AnnotatorSum),
    /// A cell of a pair's table: `(items, 0, 0)`.
    Pair(PairKey, LabelId, LabelId),
}

/// Changes of the sums: `(sum, time, change)`.
type Captured = Vec<(Sum, Time, Sums)>;
/// A live label: `((scope, item), (annotator, label, stamp))`.
type LabelRow = (ItemKey, (AnnotatorId, LabelId, Stamp));

/// Runs the items and their sums over events at times, returning every change of a sum,
/// consolidated per (sum, time).
fn run_events(events: Vec<(Time, ItemKey, ItemEvent)>) -> Captured {
    let captured = timely::execute_directly(move |worker| {
        let mut input = timely::dataflow::InputHandle::<
            Time,
            timely::container::CapacityContainerBuilder<Vec<(ItemKey, ItemEvent)>>,
        >::new();
        let mut names = timely::dataflow::InputHandle::<
            Time,
            timely::container::CapacityContainerBuilder<Vec<Name>>,
        >::new();
        let captured = worker.dataflow::<Time, _, _>(|scope| {
            let names = crate::names::names(names.to_stream(scope), std::sync::Arc::new(|e| panic!("{e}")));
            let items = crate::items::items(input.to_stream(scope), &names, ItemsConfig::default());
            let scopes = items.scopes.map(|(scope, sum)| Sum::Scope(scope, sum)).inner;
            let annotators = items.annotators.map(|(key, sum)| Sum::Annotator(key, sum)).inner;
            let pairs = items.pairs.inner.map(|((key, (a, b)), t, d)| (Sum::Pair(key, a, b), t, (d, 0, 0)));
            scopes.concat(annotators).concat(pairs).capture()
        });
        drop(names);
        let last = events.iter().map(|(t, ..)| *t).max().unwrap_or(0);
        for time in 0..=last {
            input.advance_to(time);
            for &(_, item, event) in events.iter().filter(|(t, ..)| *t == time) {
                input.send((item, event));
            }
        }
        captured
    });
    let mut updates: Captured = captured.extract().into_iter().flat_map(|(_, batch)| batch).collect();
    differential_dataflow::consolidation::consolidate_updates(&mut updates);
    updates
}

/// Runs the dataflow over label updates given as `(time, row, diff)` (a row added, removed,
/// or both for a relabel) and gold rows at time 0.
fn run(label_updates: Vec<(Time, LabelRow, Diff)>, gold_rows: Vec<(ItemKey, LabelId)>) -> Captured {
    let mut events: Vec<(Time, ItemKey, ItemEvent)> = gold_rows
        .into_iter()
        .map(|(item, label)| (0, item, ItemEvent::Gold { seq: 0, label: Some(label) }))
        .collect();
    for (seq, &(time, (item, (annotator, label, stamp)), diff)) in label_updates.iter().enumerate() {
        // A removal replaced by an addition at the same time is that addition (a relabel).
        let replaced = label_updates
            .iter()
            .any(|&(t, (i, (a, ..)), d)| t == time && i == item && a == annotator && d > 0);
        let value = match diff {
            1 => Some((label, stamp)),
            _ if replaced => continue,
            _ => None,
        };
        events.push((time, item, ItemEvent::Label { annotator, seq: seq as u64 + 1, value, compared: None }));
    }
    run_events(events)
}

/// Every sum's total over all times (non-zero ones).
fn totals(captured: &Captured) -> BTreeMap<Sum, Sums> {
    let mut totals: BTreeMap<Sum, Sums> = BTreeMap::new();
    for &(sum, _, (x, y, z)) in captured {
        let t = totals.entry(sum).or_default();
        *t = (t.0 + x, t.1 + y, t.2 + z);
    }
    totals.retain(|_, t| *t != (0, 0, 0));
    totals
}

const S: ScopeId = 0;

fn label(item: ItemId, annotator: AnnotatorId, label: LabelId) -> LabelRow {
    ((S, item), (annotator, label, Stamp::default()))
}

/// Whether a sum is a drift input (of an annotator's signals or its scope's comparisons).
fn is_drift(sum: &Sum) -> bool {
    matches!(
        sum,
        Sum::Annotator(_, AnnotatorSum::Gap { .. } | AnnotatorSum::Mix { .. } | AnnotatorSum::Speed { .. })
            | Sum::Annotator(_, AnnotatorSum::Answer { .. })
            | Sum::Scope(_, ScopeSum::Speed { .. } | ScopeSum::GoldDay { .. })
    )
}

fn scope(sum: ScopeSum) -> Sum {
    Sum::Scope(S, sum)
}

fn annotator(a: AnnotatorId, sum: AnnotatorSum) -> Sum {
    Sum::Annotator((S, a), sum)
}

#[test]
fn one_item_summary() {
    // Item 7: annotators 1, 2 say label 10; annotator 3 says 11. Gold answer 10.
    let out = run(
        vec![(0, label(7, 1, 10), 1), (0, label(7, 2, 10), 1), (0, label(7, 3, 11), 1)],
        vec![((S, 7), 10)],
    );
    let quality: BTreeMap<Sum, Sums> = totals(&out).into_iter().filter(|(s, _)| !is_drift(s)).collect();
    let expected: BTreeMap<Sum, Sums> = [
        (scope(ScopeSum::Items { day: 0, raters: 3 }), (1, 2, 1)),
        (scope(ScopeSum::Share { day: 0, raters: 3, label: 10 }), (2, 0, 0)),
        (scope(ScopeSum::Share { day: 0, raters: 3, label: 11 }), (1, 0, 0)),
        (scope(ScopeSum::Coincidence { day: 0, raters: 3, c: 10, k: 10 }), (2, 0, 0)),
        (scope(ScopeSum::Coincidence { day: 0, raters: 3, c: 10, k: 11 }), (2, 0, 0)),
        (scope(ScopeSum::Annotator { annotator: 1 }), (1, 0, 0)),
        (scope(ScopeSum::Annotator { annotator: 2 }), (1, 0, 0)),
        (scope(ScopeSum::Annotator { annotator: 3 }), (1, 0, 0)),
        (scope(ScopeSum::Gold), (3, 2, 0)),
        (annotator(1, AnnotatorSum::Items { raters: 3 }), (1, 1, 0)),
        (annotator(2, AnnotatorSum::Items { raters: 3 }), (1, 1, 0)),
        (annotator(3, AnnotatorSum::Items { raters: 3 }), (1, 0, 0)),
        (annotator(1, AnnotatorSum::Gold), (1, 1, 0)),
        (annotator(2, AnnotatorSum::Gold), (1, 1, 0)),
        (annotator(3, AnnotatorSum::Gold), (1, 0, 0)),
        (Sum::Pair((S, 1, 2), 10, 10), (1, 0, 0)),
        (Sum::Pair((S, 1, 3), 10, 11), (1, 0, 0)),
        (Sum::Pair((S, 2, 3), 10, 11), (1, 0, 0)),
    ]
    .into_iter()
    .collect();
    assert_eq!(quality, expected);
}

#[test]
fn relabel_touches_only_its_item() {
    // Two items with two labels each; at time 1 annotator 2 relabels item 1 from 10 to 11.
    let out = run(
        vec![
            (0, label(1, 1, 10), 1),
            (0, label(1, 2, 10), 1),
            (0, label(2, 1, 10), 1),
            (0, label(2, 2, 10), 1),
            (1, label(1, 2, 10), -1),
            (1, label(1, 2, 11), 1),
        ],
        vec![],
    );
    let at_one: BTreeMap<Sum, Sums> =
        out.into_iter().filter(|(s, t, _)| *t == 1 && !is_drift(s)).map(|(s, _, d)| (s, d)).collect();
    let expected: BTreeMap<Sum, Sums> = [
        // Two items with 2 agreeing pairs each, then only one of them agreeing.
        (scope(ScopeSum::Items { day: 0, raters: 2 }), (0, -2, -1)),
        (scope(ScopeSum::Share { day: 0, raters: 2, label: 10 }), (-1, 0, 0)),
        (scope(ScopeSum::Share { day: 0, raters: 2, label: 11 }), (1, 0, 0)),
        (scope(ScopeSum::Coincidence { day: 0, raters: 2, c: 10, k: 10 }), (-2, 0, 0)),
        (scope(ScopeSum::Coincidence { day: 0, raters: 2, c: 10, k: 11 }), (1, 0, 0)),
        (annotator(1, AnnotatorSum::Items { raters: 2 }), (0, -1, 0)),
        (annotator(2, AnnotatorSum::Items { raters: 2 }), (0, -1, 0)),
        // Item 1 leaves cell (10, 10) of the pair and enters cell (10, 11).
        (Sum::Pair((S, 1, 2), 10, 10), (-1, 0, 0)),
        (Sum::Pair((S, 1, 2), 10, 11), (1, 0, 0)),
    ]
    .into_iter()
    .collect();
    assert_eq!(at_one, expected);
}

#[test]
fn drift_inputs_of_one_item() {
    // Item 7 on day 2: annotators 1, 2 say 10, 3 says 11; annotator 1 took 1 s. Gold 10.
    let ts_ms = 2 * crate::source::DAY_MS + 5;
    let at = |annotator, label, duration_ms| ((S, 7), (annotator, label, Stamp { ts_ms, duration_ms }));
    let out = run(
        vec![(0, at(1, 10, Some(1000)), 1), (0, at(2, 10, None), 1), (0, at(3, 11, None), 1)],
        vec![((S, 7), 10)],
    );
    let drift: BTreeMap<Sum, Sums> = totals(&out).into_iter().filter(|(s, _)| is_drift(s)).collect();
    let half = FIXED_POINT / 2;
    let fp = FIXED_POINT;
    let bucket = duration_bucket(1000);
    let answer = |correct| AnnotatorSum::Answer { ts_ms, item: 7, correct };
    let expected: BTreeMap<Sum, Sums> = [
        // Annotator 1: the others (2: 10, 3: 11) agree with it half the time and with each
        // other never: d = 1/2 - 0.
        (annotator(1, AnnotatorSum::Gap { day: 2 }), (1, half, half * half)),
        (annotator(2, AnnotatorSum::Gap { day: 2 }), (1, half, half * half)),
        // Annotator 3: the others agree with each other (p = 1) and not with it: d = -1.
        (annotator(3, AnnotatorSum::Gap { day: 2 }), (1, -fp, fp * fp)),
        (annotator(1, AnnotatorSum::Mix { day: 2, label: 10 }), (1, half, 0)),
        (annotator(1, AnnotatorSum::Mix { day: 2, label: 11 }), (0, half, 0)),
        (annotator(2, AnnotatorSum::Mix { day: 2, label: 10 }), (1, half, 0)),
        (annotator(2, AnnotatorSum::Mix { day: 2, label: 11 }), (0, half, 0)),
        (annotator(3, AnnotatorSum::Mix { day: 2, label: 10 }), (0, fp, 0)),
        (annotator(3, AnnotatorSum::Mix { day: 2, label: 11 }), (1, 0, 0)),
        (annotator(1, AnnotatorSum::Speed { day: 2, bucket }), (1, 0, 0)),
        (scope(ScopeSum::Speed { day: 2, bucket }), (1, 0, 0)),
        (annotator(1, answer(true)), (1, 0, 0)),
        (annotator(2, answer(true)), (1, 0, 0)),
        (annotator(3, answer(false)), (1, 0, 0)),
        // Three gold answers on day 2, one of them wrong.
        (scope(ScopeSum::GoldDay { day: 2 }), (3, 1, 0)),
    ]
    .into_iter()
    .collect();
    assert_eq!(drift, expected);
}

#[test]
fn deleting_everything_retracts_everything() {
    let out = run(
        vec![
            (0, label(1, 1, 10), 1),
            (0, label(1, 2, 11), 1),
            (1, label(1, 1, 10), -1),
            (1, label(1, 2, 11), -1),
        ],
        vec![((S, 1), 10)],
    );
    // Accumulated over all times, nothing remains.
    assert_eq!(totals(&out), BTreeMap::new());
}

#[test]
fn gold_correction_rescored() {
    // The gold answer changes from 10 to 11 at time 1: the annotator's correct count follows.
    let (item, label_11) = ((S, 1), 11);
    let out = run_events(vec![
        (
            0,
            item,
            ItemEvent::Label {
                annotator: 1,
                seq: 0,
                value: Some((label_11, Stamp::default())),
                compared: None,
            },
        ),
        (0, item, ItemEvent::Gold { seq: 1, label: Some(10) }),
        (1, item, ItemEvent::Gold { seq: 2, label: Some(11) }),
    ]);
    let gold: Vec<_> = out.into_iter().filter(|(s, _, _)| *s == annotator(1, AnnotatorSum::Gold)).collect();
    assert_eq!(
        gold,
        vec![
            (annotator(1, AnnotatorSum::Gold), 0, (1, 0, 0)),
            (annotator(1, AnnotatorSum::Gold), 1, (0, 1, 0))
        ]
    );
}
