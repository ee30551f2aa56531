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

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use differential_dataflow::{AsCollection, VecCollection};
use foldhash::fast::RandomState;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::dataflow::{summarize_item, Diff, ItemFact, Time};
use crate::label::LabelId;
use crate::source::{window_id, AnnotatorId, ItemKey, ScopeId, Stamp, Update, Window};

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

/// Reused allocations of [`ItemState::contributions`].
#[derive(Default)]
struct Scratch {
    rows: Vec<(AnnotatorId, LabelId, Stamp)>,
    window_rows: Vec<(AnnotatorId, LabelId, Stamp)>,
    windows: Vec<(i64, AnnotatorId, LabelId, Stamp)>,
    counts: Vec<(LabelId, u32)>,
}

/// The worker that owns an item: a hash of its key.
pub fn item_route(item: &ItemKey) -> u64 {
    // Both halves are already uniform hashes; mix them so that neither alone decides.
    item.0.rotate_left(32) ^ item.1
}

/// The items of a dataflow: routes `events` to the workers that own their items, keeps each item's
/// state there, and returns what the items contribute, as a collection.
pub fn items<'s>(
    events: Stream<'s, Time, Vec<(ItemKey, ItemEvent)>>,
    config: ItemsConfig,
) -> VecCollection<'s, Time, ItemOutput, Diff> {
    let pact = Exchange::new(|(item, _): &(ItemKey, ItemEvent)| item_route(item));
    events
        .unary_frontier(pact, "Items", move |_capability, _info| {
            let mut state: HashMap<ItemKey, ItemState, RandomState> = HashMap::default();
            let mut stash: BTreeMap<Time, (Capability<Time>, Vec<Update>)> = BTreeMap::new();
            let mut scratch = Scratch::default();
            let (mut before, mut after) = (Vec::new(), Vec::new());
            move |(input, frontier), output| {
                input.for_each(|capability, data| {
                    let Some(capability) = capability.retain_least(0) else { return };
                    let time = *capability.time();
                    stash.entry(time).or_insert_with(|| (capability, Vec::new())).1.append(data);
                });
                while let Some(entry) = stash.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let time = *entry.key();
                    let (capability, mut events) = entry.remove();
                    // Each item once, its events in sequence order (stable: arrival order for ties).
                    events.sort_by(|(a, x), (b, y)| a.cmp(b).then(x.seq().cmp(&y.seq())));
                    let mut session = output.session(&capability);
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
                        if entry.get().is_empty() {
                            entry.remove();
                        }
                        emit_difference(&mut before, &mut after, |output, diff| {
                            session.give((output, time, diff))
                        });
                    }
                }
            }
        })
        .as_collection()
}

/// Emits `after - before` (both consumed), consolidated: what stayed the same is not sent.
fn emit_difference(
    before: &mut Vec<ItemOutput>,
    after: &mut Vec<ItemOutput>,
    mut emit: impl FnMut(ItemOutput, Diff),
) {
    before.sort_unstable();
    after.sort_unstable();
    let (mut b, mut a) = (before.drain(..).peekable(), after.drain(..).peekable());
    loop {
        match (b.peek(), a.peek()) {
            (Some(x), Some(y)) if x == y => {
                b.next();
                a.next();
            }
            (Some(x), Some(y)) if x < y => emit(b.next().expect("peeked"), -1),
            (Some(_), Some(_)) => emit(a.next().expect("peeked"), 1),
            (Some(_), None) => emit(b.next().expect("peeked"), -1),
            (None, Some(_)) => emit(a.next().expect("peeked"), 1),
            (None, None) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::Capture;

    /// Runs the items over `(time, item, event)`s with `workers` workers; returns what the items
    /// contribute at the end, accumulated over all times.
    fn run(
        workers: usize,
        config: ItemsConfig,
        events: Vec<(Time, ItemKey, ItemEvent)>,
    ) -> Vec<(ItemOutput, Diff)> {
        let (send, receive) = std::sync::mpsc::channel();
        let send = std::sync::Mutex::new(send);
        timely::execute(timely::Config::process(workers), move |worker| {
            let mut input = timely::dataflow::InputHandle::<
                Time,
                timely::container::CapacityContainerBuilder<Vec<Update>>,
            >::new();
            let captured = worker.dataflow::<Time, _, _>(|scope| {
                items(input.to_stream(scope), config.clone()).inner.capture()
            });
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
            send.lock().unwrap().send(captured.extract()).unwrap();
        })
        .unwrap();
        let mut all: Vec<(ItemOutput, Diff)> =
            receive.iter().flatten().flat_map(|(_, batch)| batch).map(|(o, _, d)| (o, d)).collect();
        differential_dataflow::consolidation::consolidate(&mut all);
        all
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
}
