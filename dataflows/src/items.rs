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
//! The items' live labels and gold answers also leave as rows ([`ItemsConfig::rows`]), for what
//! keeps labels by another key (truth per scope, trust per annotator) and for the item records
//! (consensus, trusted consensus, truth and route), formed downstream ([`crate::trust`]).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use differential_dataflow::{AsCollection, VecCollection};
use foldhash::fast::RandomState;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::annotators::{AnnotatorKey, AnnotatorSum};
use crate::dataflow::{summarize_item, Changes, Diff, ItemFact, Sums, Time};
use crate::keyed::{emit_difference, Emit};
use crate::label::LabelId;
use crate::leaderboard::BoardInput;
use crate::names::Names;
use crate::pairs::PairKey;
use crate::preferences::Compared;
use crate::scopes::ScopeSum;
use crate::source::{
    day_of, is_window, window_id, AnnotatorId, Day, ItemId, ItemKey, ScopeId, Stamp, Update, Window,
};

/// A change to one item, as a reader parsed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ItemEvent {
    /// The label of `annotator` on the item (`None`: deleted); for a preference event (spec
    /// 2.2) also the comparison (`label` is then its normalised outcome).
    Label { annotator: AnnotatorId, seq: u64, value: Option<(LabelId, Stamp)>, compared: Option<Compared> },
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
    /// A live comparison of `annotator` on an item of `scope` (never of a window).
    Compared { scope: ScopeId, annotator: AnnotatorId, day: Day, compared: Compared },
    /// One of the item's live labels or its gold answer, as it is ([`ItemsConfig::rows`]).
    Row(ItemKey, ItemRow),
}

/// An item's live label or gold answer, for the operators that keep labels by another key than
/// the item's (truth per scope, trust per annotator) and the item records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ItemRow {
    /// `annotator`'s live label; `compared`: of a preference event (spec 2.2), whose label is
    /// the comparison's normalised outcome.
    Label { annotator: AnnotatorId, label: LabelId, compared: bool },
    /// The item's gold answer.
    Gold { label: LabelId },
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
    /// Whether the items' records are formed, and when (by [`crate::trust`], downstream);
    /// `None` for none.
    pub records: Option<Emit>,
    /// Whether the items' live labels and gold answers leave as rows ([`Items::rows`]), for
    /// the item records, trust and truth downstream.
    pub rows: bool,
}

/// One identity's latest event, packed (40 bytes): its sequence number and label, with when it
/// was given (a deleted identity is kept only for out-of-order input).
#[derive(Clone, Copy, Debug)]
struct Slot {
    annotator: AnnotatorId,
    seq: u64,
    label: LabelId,
    ts_ms: i64,
    duration_ms: u32,
    /// [`LIVE`]: not deleted; [`TIMED`]: `duration_ms` is known.
    flags: u8,
}

const LIVE: u8 = 1;
const TIMED: u8 = 2;

impl Slot {
    fn new(annotator: AnnotatorId, seq: u64, value: Option<(LabelId, Stamp)>) -> Slot {
        let mut slot = Slot { annotator, seq, label: 0, ts_ms: 0, duration_ms: 0, flags: 0 };
        slot.set(value);
        slot
    }

    /// The label and when it was given; `None` when deleted.
    fn value(&self) -> Option<(LabelId, Stamp)> {
        let duration_ms = (self.flags & TIMED != 0).then_some(self.duration_ms);
        (self.flags & LIVE != 0).then_some((self.label, Stamp { ts_ms: self.ts_ms, duration_ms }))
    }

    fn set(&mut self, value: Option<(LabelId, Stamp)>) {
        match value {
            Some((label, stamp)) => {
                self.label = label;
                self.ts_ms = stamp.ts_ms;
                self.duration_ms = stamp.duration_ms.unwrap_or(0);
                self.flags = LIVE | if stamp.duration_ms.is_some() { TIMED } else { 0 };
            }
            None => self.flags = 0,
        }
    }
}

/// An item's state: its labels sorted by annotator (exactly as many as it has), and its gold
/// answer (few items have one) with the sequence number of the event that set it.
#[derive(Debug, Default)]
struct ItemState {
    labels: Box<[Slot]>,
    gold: Option<Box<(u64, Option<LabelId>)>>,
    /// The live comparisons of preference events by annotator (few items have any).
    compared: Box<[(AnnotatorId, Compared)]>,
}

impl ItemState {
    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.gold.is_none() && self.compared.is_empty()
    }

    /// Sets (or, with `None`, removes) the comparison of `annotator`; returns whether it changed.
    fn set_compared(&mut self, annotator: AnnotatorId, compared: Option<Compared>) -> bool {
        let list = &mut self.compared;
        match (list.binary_search_by_key(&annotator, |(a, _)| *a), compared) {
            (Ok(i), Some(c)) => std::mem::replace(&mut list[i].1, c) != c,
            (Ok(i), None) => {
                crate::keyed::remove_at(list, i);
                true
            }
            (Err(i), Some(c)) => {
                crate::keyed::insert_at(list, i, (annotator, c));
                true
            }
            (Err(_), None) => false,
        }
    }

    /// Applies an event; returns whether the item's live state changed.
    fn apply(&mut self, event: &ItemEvent, out_of_order: bool) -> bool {
        match *event {
            ItemEvent::Label { annotator, seq, value, compared } => {
                let changed = match self.labels.binary_search_by_key(&annotator, |s| s.annotator) {
                    Ok(i) => {
                        let slot = &mut self.labels[i];
                        if out_of_order && seq < slot.seq {
                            return false;
                        }
                        let changed = slot.value() != value;
                        slot.seq = seq;
                        slot.set(value);
                        if value.is_none() && !out_of_order {
                            crate::keyed::remove_at(&mut self.labels, i);
                        }
                        changed
                    }
                    Err(i) => {
                        if value.is_some() || out_of_order {
                            crate::keyed::insert_at(&mut self.labels, i, Slot::new(annotator, seq, value));
                        }
                        value.is_some()
                    }
                };
                changed | self.set_compared(annotator, compared.filter(|_| value.is_some()))
            }
            ItemEvent::Gold { seq, label } => {
                let old = match self.gold.as_deref() {
                    Some(&(known, _)) if out_of_order && seq < known => return false,
                    Some(&(_, old)) => old,
                    None => None,
                };
                self.gold = (label.is_some() || out_of_order).then(|| Box::new((seq, label)));
                old != label
            }
        }
    }

    /// Everything the item contributes, appended to `out` (unsorted).
    fn contributions(
        &self,
        item: ItemKey,
        window_sizes: &[i64],
        rows_out: bool,
        scratch: &mut Scratch,
        out: &mut Vec<ItemOutput>,
    ) {
        let (scope, id) = item;
        if rows_out {
            for slot in self.labels.iter() {
                if let Some((label, _)) = slot.value() {
                    let compared = self.compared.binary_search_by_key(&slot.annotator, |(a, _)| *a).is_ok();
                    let row = ItemRow::Label { annotator: slot.annotator, label, compared };
                    out.push(ItemOutput::Row(item, row));
                }
            }
            if let Some(label) = self.gold.as_deref().and_then(|&(_, label)| label) {
                out.push(ItemOutput::Row(item, ItemRow::Gold { label }));
            }
        }
        scratch.rows.clear();
        scratch.rows.extend(self.labels.iter().filter_map(|s| s.value().map(|(l, st)| (s.annotator, l, st))));
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
        for &(annotator, compared) in self.compared.iter() {
            let Ok(i) = rows.binary_search_by_key(&annotator, |&(a, ..)| a) else { continue };
            out.push(ItemOutput::Compared { scope, annotator, day: rows[i].2.day(), compared });
        }
        let gold = self.gold.as_deref().and_then(|&(_, label)| label);
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

/// The worker that owns an item of any scope: its id, already a uniform hash. An item's name
/// goes to the same worker ([`crate::names`]), which renders the item's record.
pub fn item_owner(item: ItemId) -> u64 {
    item
}

/// The worker that owns an item: the owner of its id ([`item_owner`]).
pub fn item_route(item: &ItemKey) -> u64 {
    item_owner(item.1)
}

/// An epoch's events, with a capability of each output, kept until the epoch is complete.
type Pending = BTreeMap<Time, (Vec<Capability<Time>>, Vec<Update>)>;

/// A sum an item contributes to a scope (see [`crate::scopes`]).
pub type ScopeUpdate = (ScopeId, ScopeSum);
/// A sum an item contributes to an annotator within its scope (see [`crate::annotators`]).
pub type AnnotatorUpdate = (AnnotatorKey, AnnotatorSum);
/// A cell of a pair's confusion table: the labels of `a` and `b` on one item.
pub type PairCell = (PairKey, (LabelId, LabelId));

/// What the items contribute, each kind to the operator that keeps it, and their rows.
pub struct Items<'s> {
    /// Changes of the scopes' sums, summed per epoch on the worker that owns the items.
    pub scopes: VecCollection<'s, Time, ScopeUpdate, Sums>,
    /// Changes of the annotators' sums, summed likewise.
    pub annotators: VecCollection<'s, Time, AnnotatorUpdate, Sums>,
    /// Changes of the annotators' comparisons per pair of systems and per side (preference
    /// events only), for the leaderboard (not summed, as pair cells).
    pub comparisons: VecCollection<'s, Time, BoardUpdate, Sums>,
    /// Pair cells: `+1` for each item on which `a` and `b` gave those labels (rarely the same
    /// cell twice in an epoch, so not summed).
    pub pairs: VecCollection<'s, Time, PairCell, Diff>,
    /// The items' live labels and gold answers (when asked for, [`ItemsConfig::rows`]).
    pub rows: VecCollection<'s, Time, (ItemKey, ItemRow), Diff>,
}

/// One epoch's sums per key, reused from epoch to epoch.
type Accumulator<K> = HashMap<K, Sums, RandomState>;

/// A sum an item's comparison contributes to its scope's leaderboard (see [`crate::leaderboard`]).
pub type BoardUpdate = (ScopeId, BoardInput);

/// One epoch's sums of each kind.
#[derive(Default)]
struct Accumulators {
    scopes: Accumulator<ScopeUpdate>,
    annotators: Accumulator<AnnotatorUpdate>,
}

/// An output of changes with multiplicity `R`.
type Output<D, R> = OutputBuilder<Time, CapacityContainerBuilder<Vec<(D, Time, R)>>>;

fn accumulate<K: Hash + Eq>(sums: &mut Accumulator<K>, key: K, (x, y, z): Sums, diff: Diff) {
    let sum = sums.entry(key).or_insert((0, 0, 0));
    *sum = (sum.0 + x * diff, sum.1 + y * diff, sum.2 + z * diff);
}

/// Where one contribution of an item goes: the sums of its scope, of its annotators, or a cell of
/// a pair's table (passed to `pair`).
fn distribute(
    output: ItemOutput,
    diff: Diff,
    sums: &mut Accumulators,
    mut pair: impl FnMut(PairCell, Diff),
    mut board: impl FnMut(BoardUpdate, Sums),
) {
    let Accumulators { scopes, annotators } = sums;
    match output {
        ItemOutput::Fact { scope, fact, .. } => match fact {
            ItemFact::Stats { day, raters, agreeing_pairs, majority } => accumulate(
                scopes,
                (scope, ScopeSum::Items { day, raters }),
                (1, agreeing_pairs as i64, i64::from(majority)),
                diff,
            ),
            ItemFact::Share { day, raters, label, count } => accumulate(
                scopes,
                (scope, ScopeSum::Share { day, raters, label }),
                (i64::from(count), 0, 0),
                diff,
            ),
            ItemFact::Coincidence { day, raters, c, k, weight } => accumulate(
                scopes,
                (scope, ScopeSum::Coincidence { day, raters, c, k }),
                (weight as i64, 0, 0),
                diff,
            ),
            ItemFact::Annotator { annotator, raters, same } => {
                accumulate(scopes, (scope, ScopeSum::Annotator { annotator }), (1, 0, 0), diff);
                if !is_window(scope) {
                    let key = ((scope, annotator), AnnotatorSum::Items { raters });
                    accumulate(annotators, key, (1, i64::from(same), 0), diff);
                }
            }
            ItemFact::Speed { annotator, day, bucket } => {
                accumulate(scopes, (scope, ScopeSum::Speed { day, bucket }), (1, 0, 0), diff);
                accumulate(
                    annotators,
                    ((scope, annotator), AnnotatorSum::Speed { day, bucket }),
                    (1, 0, 0),
                    diff,
                );
            }
            ItemFact::Gap { annotator, day, gap } => accumulate(
                annotators,
                ((scope, annotator), AnnotatorSum::Gap { day }),
                (1, gap, gap * gap),
                diff,
            ),
            ItemFact::Mix { annotator, day, label, own, peer } => {
                let key = ((scope, annotator), AnnotatorSum::Mix { day, label });
                accumulate(annotators, key, (i64::from(own), peer, 0), diff)
            }
        },
        ItemOutput::Pair { scope, a, b, label_a, label_b } => pair(((scope, a, b), (label_a, label_b)), diff),
        ItemOutput::Row(..) => unreachable!("rows leave by their own output"),
        ItemOutput::Gold { scope, annotator, item, ts_ms, correct } => {
            accumulate(scopes, (scope, ScopeSum::Gold), (1, i64::from(correct), 0), diff);
            if !is_window(scope) {
                let day = day_of(ts_ms);
                accumulate(scopes, (scope, ScopeSum::GoldDay { day }), (1, i64::from(!correct), 0), diff);
                let key = (scope, annotator);
                accumulate(annotators, (key, AnnotatorSum::Gold), (1, i64::from(correct), 0), diff);
                accumulate(annotators, (key, AnnotatorSum::Answer { ts_ms, item, correct }), (1, 0, 0), diff);
            }
        }
        ItemOutput::Compared { scope, annotator, day, compared } => {
            let key = (scope, annotator);
            let s = compared.sides();
            accumulate(annotators, (key, AnnotatorSum::Side { day }), (s.left, s.right, s.ties), diff);
            // Not summed here: one (annotator, pair of systems) rarely comes twice in an epoch,
            // and a large table of them costs a cache miss per comparison.
            board((scope, BoardInput::Sides), (s.left * diff, s.right * diff, s.ties * diff));
            let p = compared.pair();
            let versus = BoardInput::Versus { annotator, first: compared.first, second: compared.second };
            board((scope, versus), (p.a_wins * diff, p.b_wins * diff, p.ties * diff));
        }
    }
}

/// Emits an epoch's non-zero sums and empties the accumulator (keeping its capacity).
fn flush<K: timely::ExchangeData>(
    sums: &mut Accumulator<K>,
    output: &mut Output<K, Sums>,
    capability: &Capability<Time>,
) {
    let time = *capability.time();
    let mut handle = output.activate();
    let mut session = handle.session(capability);
    session
        .give_iterator(sums.drain().filter(|(_, sum)| *sum != (0, 0, 0)).map(|(key, sum)| (key, time, sum)));
}

/// The items of a dataflow: routes `events` to the workers that own their items, keeps each item's
/// state there, and returns what the items contribute and, when [`ItemsConfig::rows`] asks for
/// them, their rows. `names` orders the operator after the names of each epoch.
pub fn items<'s>(
    events: Stream<'s, Time, Vec<(ItemKey, ItemEvent)>>,
    names: &Names<'s>,
    config: ItemsConfig,
) -> Items<'s> {
    let mut builder = OperatorBuilder::new("Items".to_owned(), events.scope());
    let pact = Exchange::new(|(item, _): &(ItemKey, ItemEvent)| item_route(item));
    let mut input = builder.new_input(events, pact);
    let mut gate = builder.new_input(names.gate.clone(), Pipeline);
    let (scope_sums, scope_stream) = builder.new_output();
    let (annotator_sums, annotator_stream) = builder.new_output();
    let (pair_cells, pair_stream): (_, Changes<'s, PairCell>) = builder.new_output();
    let (comparison_sums, comparison_stream) = builder.new_output();
    let (rows, rows_stream): (_, Changes<'s, (ItemKey, ItemRow)>) = builder.new_output();
    let mut rows =
        OutputBuilder::<Time, CapacityContainerBuilder<Vec<((ItemKey, ItemRow), Time, Diff)>>>::from(rows);
    let mut scope_sums =
        OutputBuilder::<Time, CapacityContainerBuilder<Vec<(ScopeUpdate, Time, Sums)>>>::from(scope_sums);
    let mut annotator_sums = OutputBuilder::<
        Time,
        CapacityContainerBuilder<Vec<(AnnotatorUpdate, Time, Sums)>>,
    >::from(annotator_sums);
    let mut comparison_sums =
        OutputBuilder::<Time, CapacityContainerBuilder<Vec<(BoardUpdate, Time, Sums)>>>::from(
            comparison_sums,
        );
    let mut pair_cells =
        OutputBuilder::<Time, CapacityContainerBuilder<Vec<(PairCell, Time, Diff)>>>::from(pair_cells);
    builder.build(move |initial| {
        // Every output goes out at the capabilities of its epochs.
        drop(initial);
        let mut state: HashMap<ItemKey, ItemState, RandomState> = HashMap::default();
        let mut stash: Pending = BTreeMap::new();
        let mut scratch = Scratch::default();
        let (mut before, mut after) = (Vec::new(), Vec::new());
        let mut sums = Accumulators::default();
        move |frontiers| {
            input.for_each(|capability, data| {
                let Some(capabilities) = (0..5).map(|output| capability.retain_least(output)).collect()
                else {
                    return;
                };
                let capabilities: Vec<Capability<Time>> = capabilities;
                let time = *capabilities[0].time();
                stash.entry(time).or_insert_with(|| (capabilities, Vec::new())).1.append(data);
            });
            gate.for_each(|_, _| {});
            // The contributions and rows need no names.
            let complete = |time: &Time| !frontiers[0].less_equal(time);
            while let Some(entry) = stash.first_entry() {
                if !complete(entry.key()) {
                    break;
                }
                let time = *entry.key();
                let (capabilities, mut events) = entry.remove();
                // Each item once, its events in sequence order (stable: arrival order for ties).
                events.sort_by(|(a, x), (b, y)| a.cmp(b).then(x.seq().cmp(&y.seq())));
                let mut pair_handle = pair_cells.activate();
                let mut pair_session = pair_handle.session(&capabilities[2]);
                let mut comparison_handle = comparison_sums.activate();
                let mut comparison_session = comparison_handle.session(&capabilities[3]);
                let mut row_handle = rows.activate();
                let mut row_session = row_handle.session(&capabilities[4]);
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
                    entry.get().contributions(
                        item,
                        &config.window_sizes,
                        config.rows,
                        &mut scratch,
                        &mut before,
                    );
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
                    entry.get().contributions(
                        item,
                        &config.window_sizes,
                        config.rows,
                        &mut scratch,
                        &mut after,
                    );
                    if entry.get().is_empty() {
                        entry.remove();
                    }
                    emit_difference(&mut before, &mut after, |output, diff| match output {
                        ItemOutput::Row(item, row) => row_session.give(((item, row), time, diff)),
                        output => distribute(
                            output,
                            diff,
                            &mut sums,
                            |cell, diff| pair_session.give((cell, time, diff)),
                            |update, sums| comparison_session.give((update, time, sums)),
                        ),
                    });
                }
                drop((pair_session, comparison_session, row_session));
                flush(&mut sums.scopes, &mut scope_sums, &capabilities[0]);
                flush(&mut sums.annotators, &mut annotator_sums, &capabilities[1]);
            }
            if frontiers.iter().all(|f| f.is_empty()) {
                // Nothing follows: the items are no longer needed.
                state = HashMap::default();
            }
        }
    });
    Items {
        scopes: scope_stream.as_collection(),
        annotators: annotator_stream.as_collection(),
        comparisons: comparison_stream.as_collection(),
        pairs: pair_stream.as_collection(),
        rows: rows_stream.as_collection(),
    }
}

#[cfg(test)]
mod tests;
