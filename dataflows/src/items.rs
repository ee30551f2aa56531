//! Items: the state of every item, kept by the worker that owns it, and what each item contributes.
//!
//! Every label event and gold answer is routed to the worker that owns its item (a hash of the
//! `(scope, item)` key), which keeps, per item, its live labels (the latest event of each
//! `(item, annotator)` identity) and its gold answer. This one compact state replaces an upsert map
//! per reader and the arrangements of labels and gold by item that a join-based dataflow keeps:
//! an item's labels are held once, on one worker.
//!
//! When an epoch's events change an item, the operator re-forms what the item contributes from its
//! state before and after, and emits the difference ([`ItemOutput`], diffs `+1`/`-1`): the facts of
//! the item's summary in its scope and in each tumbling window it has labels in (see
//! [`summarize_item`]), one pair cell per pair of its annotators, and one gold answer per label on
//! a gold item. Work per event is proportional to the labels of its item. Events are processed in
//! epoch order; within an epoch, and across epochs for input read out of order (files read in
//! parallel), an identity's latest event is the one with the greatest sequence number.
//!
//! The item records (spec section 2, per item: its consensus, the label with most votes, ties
//! broken toward the smallest label in the spec's order, with `tied`) are rendered here too, from
//! the item's labels, by the worker that owns the item ([`ItemsConfig::records`]).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use differential_dataflow::{AsCollection, VecCollection};
use foldhash::fast::RandomState;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::dataflow::{summarize_item, Changes, Diff, ItemFact, Time};
use crate::keyed::{emit_difference, Emit};
use crate::label::{JsonLabel, LabelId};
use crate::names::Names;
use crate::objects::ItemConsensus;
use crate::records::{Entity, Record};
use crate::source::{window_id, AnnotatorId, Catalog, ItemId, ItemKey, ScopeId, Stamp, Update, Window};

/// A change to one item, as a reader parsed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ItemEvent {
    /// The label of `annotator` on the item (`None`: deleted).
    Label { annotator: AnnotatorId, seq: u64, value: Option<(LabelId, Stamp)> },
    /// The item's gold answer (`None`: deleted).
    Gold { seq: u64, label: Option<LabelId> },
}

impl ItemEvent {
    fn seq(&self) -> u64 {
        match self {
            ItemEvent::Label { seq, .. } | ItemEvent::Gold { seq, .. } => *seq,
        }
    }
}

/// What one item contributes, as updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ItemOutput {
    /// A fact of the item's summary in `scope`: the item's own scope, or a window scope (then
    /// only the scope-level facts, see [`summarize_item`]).
    Fact { scope: ScopeId, item: u64, fact: ItemFact },
    /// Annotators `a < b` (by id) gave `label_a` and `label_b` on one item of `scope`.
    Pair { scope: ScopeId, a: AnnotatorId, b: AnnotatorId, label_a: LabelId, label_b: LabelId },
    /// A label on a gold item of `scope` (a window scope for windows), when it was given, and
    /// whether it matched the gold answer.
    Gold { scope: ScopeId, annotator: AnnotatorId, item: u64, ts_ms: i64, correct: bool },
}

/// How the items of a dataflow are kept.
#[derive(Clone, Debug, Default)]
pub struct ItemsConfig {
    /// Sizes (ms) of the tumbling event-time windows whose window scopes get every label.
    pub window_sizes: Vec<i64>,
    /// Whether events of one identity may arrive out of order (files read in parallel): then the
    /// sequence number of each identity's latest event is kept, deletes included, and an older
    /// event arriving later is ignored. Otherwise (one reader per identity, in order) arrival
    /// order decides and deleted identities leave nothing behind.
    pub out_of_order: bool,
    /// Whether the items' records (their consensus) are rendered, and when; `None` for none.
    pub records: Option<Emit>,
}

/// One identity's latest event: its sequence number and label (`None`: deleted, kept only for
/// out-of-order input).
#[derive(Clone, Copy, Debug)]
struct Slot {
    annotator: AnnotatorId,
    seq: u64,
    value: Option<(LabelId, Stamp)>,
}

/// An item's state: its labels sorted by annotator, and its gold answer.
#[derive(Debug, Default)]
struct ItemState {
    labels: SmallVec<[Slot; 4]>,
    gold: Option<(u64, Option<LabelId>)>,
}

impl ItemState {
    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.gold.is_none()
    }

    /// Applies an event; returns whether the item's live state changed.
    fn apply(&mut self, event: &ItemEvent, out_of_order: bool) -> bool {
        match *event {
            ItemEvent::Label { annotator, seq, value } => {
                match self.labels.binary_search_by_key(&annotator, |s| s.annotator) {
                    Ok(i) => {
                        let slot = &mut self.labels[i];
                        if out_of_order && seq < slot.seq {
                            return false;
                        }
                        let changed = slot.value != value;
                        slot.seq = seq;
                        slot.value = value;
                        if value.is_none() && !out_of_order {
                            self.labels.remove(i);
                        }
                        changed
                    }
                    Err(i) => {
                        if value.is_some() || out_of_order {
                            self.labels.insert(i, Slot { annotator, seq, value });
                        }
                        value.is_some()
                    }
                }
            }
            ItemEvent::Gold { seq, label } => {
                let old = match self.gold {
                    Some((known, _)) if out_of_order && seq < known => return false,
                    Some((_, old)) => old,
                    None => None,
                };
                self.gold = (label.is_some() || out_of_order).then_some((seq, label));
                old != label
            }
        }
    }

    /// Everything the item contributes, appended to `out` (unsorted).
    fn contributions(
        &self,
        item: ItemKey,
        window_sizes: &[i64],
        scratch: &mut Scratch,
        out: &mut Vec<ItemOutput>,
    ) {
        let (scope, id) = item;
        scratch.rows.clear();
        scratch.rows.extend(self.labels.iter().filter_map(|s| s.value.map(|(l, st)| (s.annotator, l, st))));
        let rows = &scratch.rows;
        if rows.is_empty() {
            return;
        }
        if let Some(summary) = summarize_item(rows, &mut scratch.counts, true) {
            out.extend(summary.0.into_iter().map(|fact| ItemOutput::Fact { scope, item: id, fact }));
        }
        for (i, &(a, label_a, _)) in rows.iter().enumerate() {
            for &(b, label_b, _) in &rows[i + 1..] {
                out.push(ItemOutput::Pair { scope, a, b, label_a, label_b });
            }
        }
        let gold = self.gold.and_then(|(_, label)| label);
        if let Some(gold) = gold {
            for &(annotator, label, stamp) in rows {
                out.push(ItemOutput::Gold {
                    scope,
                    annotator,
                    item: id,
                    ts_ms: stamp.ts_ms,
                    correct: label == gold,
                });
            }
        }
        // Window scopes: the item's labels that fall in each window.
        for &size_ms in window_sizes {
            scratch.windows.clear();
            for &(annotator, label, stamp) in rows {
                let start_ms = stamp.ts_ms - stamp.ts_ms.rem_euclid(size_ms);
                scratch.windows.push((start_ms, annotator, label, stamp));
            }
            scratch.windows.sort_unstable_by_key(|&(start, annotator, ..)| (start, annotator));
            let mut rest = &scratch.windows[..];
            while let Some(&(start_ms, ..)) = rest.first() {
                let len = rest.iter().take_while(|w| w.0 == start_ms).count();
                let window = window_id(&Window { scope, size_ms, start_ms });
                scratch.window_rows.clear();
                scratch.window_rows.extend(rest[..len].iter().map(|&(_, a, l, s)| (a, l, s)));
                if let Some(summary) = summarize_item(&scratch.window_rows, &mut scratch.counts, false) {
                    out.extend(summary.0.into_iter().map(|fact| ItemOutput::Fact {
                        scope: window,
                        item: id,
                        fact,
                    }));
                }
                if let Some(gold) = gold {
                    for &(annotator, label, stamp) in &scratch.window_rows {
                        out.push(ItemOutput::Gold {
                            scope: window,
                            annotator,
                            item: id,
                            ts_ms: stamp.ts_ms,
                            correct: label == gold,
                        });
                    }
                }
                rest = &rest[len..];
            }
        }
    }
}

impl ItemState {
    /// The item's record: its consensus among its live labels (none without labels).
    fn record(
        &self,
        (scope, item): ItemKey,
        names: &Catalog,
        counts: &mut Vec<(LabelId, u32)>,
    ) -> Option<Record> {
        counts.clear();
        for slot in &self.labels {
            let Some((label, _)) = slot.value else { continue };
            match counts.iter_mut().find(|(l, _)| *l == label) {
                Some((_, n)) => *n += 1,
                None => counts.push((label, 1)),
            }
        }
        let top = counts.iter().map(|&(_, n)| n).max()?;
        let mut tops = counts.iter().filter(|&&(_, n)| n == top).map(|&(label, _)| names.labels.get(label));
        let first = tops.next()?;
        let (best, tied) = tops.fold((first, false), |(best, _), label| {
            (if label.spec_cmp(best).is_lt() { label } else { best }, true)
        });
        let (project, task) = names.scope_name(scope);
        let object = ItemConsensus { consensus: JsonLabel(best), tied };
        Some(Record::new(project, task, Entity::Item(names.items.name(item).into()), &object))
    }
}

/// Reused allocations of [`ItemState::contributions`].
#[derive(Default)]
struct Scratch {
    rows: Vec<(AnnotatorId, LabelId, Stamp)>,
    window_rows: Vec<(AnnotatorId, LabelId, Stamp)>,
    windows: Vec<(i64, AnnotatorId, LabelId, Stamp)>,
    counts: Vec<(LabelId, u32)>,
}

/// The worker that owns an item of any scope: its id, already a uniform hash. An item's name
/// goes to the same worker ([`crate::names`]), which renders the item's records.
pub fn item_owner(item: ItemId) -> u64 {
    item
}

/// The worker that owns an item: the owner of its id ([`item_owner`]).
pub fn item_route(item: &ItemKey) -> u64 {
    item_owner(item.1)
}

/// An epoch's events, kept until the epoch is complete.
type Pending = BTreeMap<Time, (Capability<Time>, Capability<Time>, Vec<Update>)>;

/// The items of a dataflow: routes `events` to the workers that own their items, keeps each item's
/// state there, and returns what the items contribute, as a collection, and the items' records
/// (when [`ItemsConfig::records`] asks for them; `names` has the names they need).
pub fn items<'s>(
    events: Stream<'s, Time, Vec<(ItemKey, ItemEvent)>>,
    names: &Names<'s>,
    config: ItemsConfig,
) -> (VecCollection<'s, Time, ItemOutput, Diff>, VecCollection<'s, Time, Record, Diff>) {
    let mut builder = OperatorBuilder::new("Items".to_owned(), events.scope());
    let pact = Exchange::new(|(item, _): &(ItemKey, ItemEvent)| item_route(item));
    let mut input = builder.new_input(events, pact);
    let mut gate = builder.new_input(names.gate.clone(), Pipeline);
    let (contributions, contributions_stream): (_, Changes<'s, ItemOutput>) = builder.new_output();
    let (records, records_stream): (_, Changes<'s, Record>) = builder.new_output();
    let mut contributions =
        OutputBuilder::<Time, CapacityContainerBuilder<Vec<(ItemOutput, Time, Diff)>>>::from(contributions);
    let mut records =
        OutputBuilder::<Time, CapacityContainerBuilder<Vec<(Record, Time, Diff)>>>::from(records);
    let catalog = names.catalog.clone();
    builder.build(move |mut initial| {
        // Emit::Final: a capability of the records' output kept at the inputs' frontier.
        let mut held: Option<Capability<Time>> =
            initial.pop().filter(|_| config.records == Some(Emit::Final));
        let mut state: HashMap<ItemKey, ItemState, RandomState> = HashMap::default();
        let mut stash: Pending = BTreeMap::new();
        let mut scratch = Scratch::default();
        let (mut before, mut after) = (Vec::new(), Vec::new());
        move |frontiers| {
            input.for_each(|capability, data| {
                let (Some(facts), Some(rendered)) = (capability.retain_least(0), capability.retain_least(1))
                else {
                    return;
                };
                let time = *facts.time();
                stash.entry(time).or_insert_with(|| (facts, rendered, Vec::new())).2.append(data);
            });
            gate.for_each(|_, _| {});
            // Rendering waits for the epoch's names; the contributions need none.
            let gated = config.records == Some(Emit::Changes);
            let complete =
                |time: &Time| !(frontiers[0].less_equal(time) || gated && frontiers[1].less_equal(time));
            let names = catalog.borrow();
            while let Some(entry) = stash.first_entry() {
                if !complete(entry.key()) {
                    break;
                }
                let time = *entry.key();
                let (facts, rendered, mut events) = entry.remove();
                // Each item once, its events in sequence order (stable: arrival order for ties).
                events.sort_by(|(a, x), (b, y)| a.cmp(b).then(x.seq().cmp(&y.seq())));
                let mut contributions = contributions.activate();
                let mut session = contributions.session(&facts);
                let mut records = records.activate();
                let mut record_session = records.session(&rendered);
                let mut rest = &events[..];
                while let Some(&(item, _)) = rest.first() {
                    let len = rest.iter().take_while(|(i, _)| *i == item).count();
                    let (changes, tail) = rest.split_at(len);
                    rest = tail;
                    let mut entry = match state.entry(item) {
                        Entry::Occupied(entry) => entry,
                        Entry::Vacant(entry) => entry.insert_entry(ItemState::default()),
                    };
                    before.clear();
                    entry.get().contributions(item, &config.window_sizes, &mut scratch, &mut before);
                    let record_before =
                        gated.then(|| entry.get().record(item, &names, &mut scratch.counts)).flatten();
                    let mut changed = false;
                    for (_, event) in changes {
                        changed |= entry.get_mut().apply(event, config.out_of_order);
                    }
                    if !changed {
                        if entry.get().is_empty() {
                            entry.remove();
                        }
                        continue;
                    }
                    after.clear();
                    entry.get().contributions(item, &config.window_sizes, &mut scratch, &mut after);
                    if gated {
                        let record_after = entry.get().record(item, &names, &mut scratch.counts);
                        if record_before != record_after {
                            record_session.give_iterator(record_before.map(|r| (r, time, -1)).into_iter());
                            record_session.give_iterator(record_after.map(|r| (r, time, 1)).into_iter());
                        }
                    }
                    if entry.get().is_empty() {
                        entry.remove();
                    }
                    emit_difference(&mut before, &mut after, |output, diff| {
                        session.give((output, time, diff))
                    });
                }
                drop(record_session);
            }
            crate::keyed::hold_at_frontier(&mut held, frontiers);
            if config.records == Some(Emit::Final) && frontiers.iter().all(|f| f.is_empty()) {
                if let Some(capability) = held.take() {
                    let time = *capability.time();
                    let mut records = records.activate();
                    let mut session = records.session(&capability);
                    for (&item, item_state) in &state {
                        if let Some(record) = item_state.record(item, &names, &mut scratch.counts) {
                            session.give((record, time, 1));
                        }
                    }
                    // Nothing follows the final records: the items are no longer needed.
                    state = HashMap::default();
                }
            }
        }
    });
    (contributions_stream.as_collection(), records_stream.as_collection())
}

#[cfg(test)]
mod tests {
    use super::*;
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::Capture;

    /// What the items contribute and their records.
    type Run = (Vec<(ItemOutput, Diff)>, Vec<(Record, Diff)>);

    /// Runs the items over `(time, item, event)`s with `workers` workers, the names given at time
    /// 0; returns what the items contribute and their records at the end, accumulated over all
    /// times.
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
            let (contributions, records) = worker.dataflow::<Time, _, _>(|scope| {
                let on_error: crate::names::OnError = std::sync::Arc::new(|e| panic!("{e}"));
                let names = crate::names::names(names_input.to_stream(scope), on_error);
                let (contributions, records) = items(input.to_stream(scope), &names, config.clone());
                (contributions.inner.capture(), records.inner.capture())
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
            send.lock().unwrap().send((contributions.extract(), records.extract())).unwrap();
        })
        .unwrap();
        let (mut all, mut records) = (Vec::new(), Vec::new());
        for (contributions, rendered) in receive.iter() {
            all.extend(contributions.into_iter().flat_map(|(_, batch)| batch).map(|(o, _, d)| (o, d)));
            records.extend(rendered.into_iter().flat_map(|(_, batch)| batch).map(|(r, _, d)| (r, d)));
        }
        differential_dataflow::consolidation::consolidate(&mut all);
        differential_dataflow::consolidation::consolidate(&mut records);
        (all, records)
    }

    fn run(
        workers: usize,
        config: ItemsConfig,
        events: Vec<(Time, ItemKey, ItemEvent)>,
    ) -> Vec<(ItemOutput, Diff)> {
        run_with_names(workers, config, events, Vec::new()).0
    }

    const ITEM: ItemKey = (0, 7);

    fn label(annotator: AnnotatorId, seq: u64, label: Option<LabelId>) -> ItemEvent {
        ItemEvent::Label { annotator, seq, value: label.map(|l| (l, Stamp { ts_ms: 1, duration_ms: None })) }
    }

    fn pairs(outputs: &[(ItemOutput, Diff)]) -> Vec<(AnnotatorId, AnnotatorId, LabelId, LabelId)> {
        outputs
            .iter()
            .filter_map(|(o, d)| match *o {
                ItemOutput::Pair { a, b, label_a, label_b, .. } => {
                    assert_eq!(*d, 1);
                    Some((a, b, label_a, label_b))
                }
                _ => None,
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
                .iter()
                .filter_map(|(o, _)| match *o {
                    ItemOutput::Gold { annotator, correct, .. } => Some((annotator, correct)),
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
            let stats = out.iter().any(|(o, _)| {
                matches!(o, ItemOutput::Fact { scope, fact: ItemFact::Stats { raters: 1, .. }, .. } if scope == window)
            });
            assert!(stats, "window {window:#x} has the item with one label");
            let gold = out.iter().any(|(o, _)| {
                matches!(o, ItemOutput::Gold { scope, annotator: a, correct: true, .. } if scope == window && *a == annotator)
            });
            assert!(gold, "window {window:#x} scores annotator {annotator} against the gold answer");
        }
        // Windows carry no pairs, drift inputs or consensus.
        assert!(!out.iter().any(|(o, _)| matches!(o, ItemOutput::Pair { scope, .. } if *scope != 0)));
    }

    #[test]
    fn the_record_is_the_consensus_of_the_live_labels() {
        use crate::label::Label;
        use crate::source::Name;
        // Annotators 1 and 2 say "y" and "x": a tie, toward "x"; then 3 says "y"; then leaves.
        let (x, y) = (crate::label::stable_id(b"x"), crate::label::stable_id(b"y"));
        let names = vec![
            Name::Scope { id: 0, project: "p".into(), task: "t".into() },
            Name::Item { id: 7, name: "i7".into() },
            Name::Label { id: x, label: Label::String("x".into()) },
            Name::Label { id: y, label: Label::String("y".into()) },
        ];
        let events = vec![
            (0, ITEM, label(1, 0, Some(y))),
            (0, ITEM, label(2, 1, Some(x))),
            (1, ITEM, label(3, 2, Some(y))),
            (2, ITEM, label(3, 3, None)),
        ];
        for (emit, workers) in [(Emit::Changes, 1), (Emit::Changes, 2), (Emit::Final, 2)] {
            let config = ItemsConfig { records: Some(emit), ..ItemsConfig::default() };
            let value = |events: &[(Time, ItemKey, ItemEvent)]| {
                let (_, records) = run_with_names(workers, config.clone(), events.to_vec(), names.clone());
                assert_eq!(records.len(), 1, "{emit:?}: {records:?}");
                assert_eq!(records[0].0.key.entity, Entity::Item("i7".into()));
                assert_eq!(records[0].1, 1);
                String::from_utf8(records[0].0.value.clone()).unwrap()
            };
            assert_eq!(value(&events[..2]), r#"{"consensus":"x","tied":true}"#, "{emit:?}");
            assert_eq!(value(&events[..3]), r#"{"consensus":"y","tied":false}"#, "{emit:?}");
            assert_eq!(value(&events), r#"{"consensus":"x","tied":true}"#, "{emit:?}");
        }
    }
}
