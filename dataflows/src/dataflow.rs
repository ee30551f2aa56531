//! The quality dataflow: a function from what the items contribute ([`crate::items`]) to the
//! collection of exact integer aggregates ([`Fact`]s) from which every number of spec section 2 is
//! formed.
//!
//! Per-item work happens where the item is kept: when an item's labels change, only that item is
//! re-summarised ([`summarize_item`], work proportional to its labels), and the summary's changes
//! flow into a `count_total` that keeps per-scope, per-annotator and per-day sums. Weights such as
//! `1/(r_i - 1)` are never applied here: sums are grouped by the item's label count `r`, so that
//! every aggregate is an integer that cancels exactly on retraction. Floats appear only in
//! [`crate::view`], when a final number is formed.

use differential_dataflow::operators::CountTotal;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::combine::combine;
use crate::items::ItemOutput;
use crate::label::LabelId;
use crate::source::{is_window, AnnotatorId, Day, ItemId, ScopeId, Stamp};

/// Logical time: a totally ordered epoch.
pub type Time = u64;
/// Difference type of every collection: an integer multiplicity.
pub type Diff = i64;

/// Scale of fixed-point shares in drift facts: a share `x` in `[-1, 1]` is carried as
/// `round(x * FIXED_POINT)`. Each item's contribution is computed from the item alone, so sums
/// of contributions cancel exactly on retraction.
pub const FIXED_POINT: i64 = 1_000_000;

/// Width of the logarithmic duration buckets: bucket `b` holds durations `d` (ms) with
/// `floor(ln(d) * DURATION_BUCKETS_PER_E) == b`.
pub const DURATION_BUCKETS_PER_E: f64 = 8.0;

/// The duration bucket of `ms` milliseconds.
pub fn duration_bucket(ms: u32) -> u16 {
    ((f64::from(ms.max(1))).ln() * DURATION_BUCKETS_PER_E).floor() as u16
}

fn fixed(numerator: i64, denominator: i64) -> i64 {
    // Round half away from zero, in integers.
    let twice = 2 * numerator * FIXED_POINT;
    let sign = if twice < 0 { -1 } else { 1 };
    sign * ((twice.abs() + denominator) / (2 * denominator))
}

/// What one item contributes, given all of its current labels. `raters` is the item's label
/// count `r`; `day` on the scope-level facts is the day of the item's newest label (0 in window
/// scopes), so that the scope's numbers can be read as of the end of each day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ItemFact {
    /// The item itself and `sum_k n_k (n_k - 1)`, the number of ordered agreeing label pairs.
    /// `majority`: one label has more than half of the item's labels (pairable items only).
    Stats { day: Day, raters: u32, agreeing_pairs: u64, majority: bool },
    /// `n_k` labels `label` on the item.
    Share { day: Day, raters: u32, label: LabelId, count: u32 },
    /// Krippendorff coincidence weight before division by `r - 1`, for `c <= k`:
    /// `n_c n_k` when `c != k`, `n_c (n_c - 1)` when `c == k`. Only for pairable items.
    Coincidence { day: Day, raters: u32, c: LabelId, k: LabelId, weight: u64 },
    /// One annotator's label on the item and how many others gave the same label.
    Annotator { annotator: AnnotatorId, raters: u32, same: u32 },
    /// One of the most frequent labels (one fact per label when tied) and their count.
    Consensus { top: u32, label: LabelId },
    /// Agreement gap of one label on an item with at least two other labels, on the label's
    /// day: `d = x - p` in fixed point, `x` the share of the others who gave the same label and
    /// `p` the pairwise agreement among the others.
    Gap { annotator: AnnotatorId, day: Day, gap: i64 },
    /// Label mix of one label on an item with at least one other label, on its day: `own` is 1
    /// for the annotator's label, `peer` the share (fixed point) of the others who gave `label`.
    Mix { annotator: AnnotatorId, day: Day, label: LabelId, own: u32, peer: i64 },
    /// One label's duration bucket, on its day.
    Speed { annotator: AnnotatorId, day: Day, bucket: u16 },
}

/// Everything one item contributes, as one value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ItemSummary(pub Vec<ItemFact>);

/// An aggregate maintained by the dataflow. Sum-like facts carry a count: most carry their key's
/// current total (the collection then holds one fact per key), pair cells carry deltas of one
/// (the collection holds one fact per co-labelled item). Either way a consumer that adds
/// `count * diff` per key holds the exact totals, whatever the order of updates in an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Fact {
    /// Items of the scope with `raters` labels whose newest label is on `day` (0 in window
    /// scopes), their summed agreeing pairs, and how many have a majority label.
    /// `majority` counts the items where one label has more than half of the labels.
    ScopeItems { scope: ScopeId, day: Day, raters: u32, items: i64, agreeing_pairs: i64, majority: i64 },
    /// Summed labels `label` over the scope's items with `raters` labels, newest label on `day`.
    CategoryShare { scope: ScopeId, day: Day, raters: u32, label: LabelId, count: i64 },
    /// Summed coincidence weights (`c <= k`) over the scope's items with `raters` labels, newest
    /// label on `day`.
    Coincidence { scope: ScopeId, day: Day, raters: u32, c: LabelId, k: LabelId, weight: i64 },
    /// An annotator's labels on items with `raters` labels, and how many other labels agreed.
    AnnotatorItems { scope: ScopeId, annotator: AnnotatorId, raters: u32, items: i64, same: i64 },
    /// A cell of a pair's confusion table: items where `a` said `label_a` and `b` said `label_b`
    /// (here a delta: `count` is 1 for each such item).
    PairCell {
        scope: ScopeId,
        a: AnnotatorId,
        b: AnnotatorId,
        label_a: LabelId,
        label_b: LabelId,
        count: i64,
    },
    /// An annotator's labels on gold items, and how many matched the gold answer.
    AnnotatorGold { scope: ScopeId, annotator: AnnotatorId, answers: i64, correct: i64 },
    /// One of an item's most frequent labels, with its count (not a sum: an item has one such
    /// fact per tied label).
    Consensus { scope: ScopeId, item: ItemId, top: u32, label: LabelId },
    /// An annotator's agreement gaps on one day: items, and the sums of `d` and `d^2` (fixed
    /// point, `d^2` at `FIXED_POINT^2`).
    GapDay { scope: ScopeId, annotator: AnnotatorId, day: Day, items: i64, sum: i64, sum_sq: i64 },
    /// An annotator's label mix on one day: own labels `label`, and the summed peer share of
    /// `label` (fixed point) over the same items.
    MixDay { scope: ScopeId, annotator: AnnotatorId, day: Day, label: LabelId, own: i64, peer: i64 },
    /// An annotator's labels on one day whose duration fell in `bucket`.
    SpeedDay { scope: ScopeId, annotator: AnnotatorId, day: Day, bucket: u16, count: i64 },
    /// One gold answer: the annotator's label on a gold item, when it was given, and whether it
    /// matched (not a sum: one fact per gold answer).
    GoldAnswer { scope: ScopeId, annotator: AnnotatorId, item: ItemId, ts_ms: i64, correct: bool },
}

/// Summarises one item from its current `(annotator, label, stamp)` rows, sorted by annotator;
/// `None` for an item without labels. `counts` is scratch space.
///
/// Without `full` (items of window scopes), only what scope-level numbers need is formed: no drift
/// inputs and no consensus.
pub fn summarize_item(
    rows: &[(AnnotatorId, LabelId, Stamp)],
    counts: &mut Vec<(LabelId, u32)>,
    full: bool,
) -> Option<ItemSummary> {
    let raters = rows.len() as u32;
    if raters == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(3 * rows.len());
    counts.clear();
    for &(_, label, _) in rows {
        match counts.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => counts.push((label, 1)),
        }
    }
    counts.sort_unstable();
    let counts = &*counts;
    let count_of = |label: LabelId| counts.iter().find(|(l, _)| *l == label).map_or(0, |(_, n)| *n);

    let agreeing_pairs = counts.iter().map(|&(_, n)| u64::from(n) * u64::from(n - 1)).sum();
    let majority = raters >= 2 && counts.iter().any(|&(_, n)| 2 * n > raters);
    let item_day = if full { rows.iter().map(|(_, _, stamp)| stamp.day()).max().unwrap_or(0) } else { 0 };
    out.push(ItemFact::Stats { day: item_day, raters, agreeing_pairs, majority });
    for &(label, count) in counts {
        out.push(ItemFact::Share { day: item_day, raters, label, count });
    }
    let all_pairs = counts.iter().map(|&(_, n)| i64::from(n) * i64::from(n) - i64::from(n)).sum::<i64>();
    for &(annotator, label, stamp) in rows {
        let same = count_of(label) - 1;
        out.push(ItemFact::Annotator { annotator, raters, same });
        if !full {
            continue;
        }
        let day = stamp.day();
        if let Some(ms) = stamp.duration_ms {
            out.push(ItemFact::Speed { annotator, day, bucket: duration_bucket(ms) });
        }
        if raters >= 2 {
            let others = i64::from(raters - 1);
            // Removing this label from the item: its label's count drops by one.
            let n = i64::from(same + 1);
            let others_pairs = all_pairs - (n * (n - 1)) + ((n - 1) * (n - 2));
            if raters >= 3 {
                // d = same/(r-1) - others_pairs/((r-1)(r-2)), over the common denominator.
                let numerator = i64::from(same) * (others - 1) - others_pairs;
                out.push(ItemFact::Gap { annotator, day, gap: fixed(numerator, others * (others - 1)) });
            }
            for &(k, n_k) in counts {
                let m_k = i64::from(n_k) - i64::from(k == label);
                let own = u32::from(k == label);
                if m_k > 0 || own > 0 {
                    out.push(ItemFact::Mix { annotator, day, label: k, own, peer: fixed(m_k, others) });
                }
            }
        }
    }
    if raters >= 2 {
        for (i, &(c, n_c)) in counts.iter().enumerate() {
            for &(k, n_k) in &counts[i..] {
                let weight = if c == k {
                    u64::from(n_c) * u64::from(n_c - 1)
                } else {
                    u64::from(n_c) * u64::from(n_k)
                };
                if weight > 0 {
                    out.push(ItemFact::Coincidence { day: item_day, raters, c, k, weight });
                }
            }
        }
    }
    if !full {
        return Some(ItemSummary(out));
    }
    let top = counts.iter().map(|&(_, n)| n).max().unwrap_or(0);
    for &(label, _) in counts.iter().filter(|&&(_, n)| n == top) {
        out.push(ItemFact::Consensus { top, label });
    }
    Some(ItemSummary(out))
}

/// The quality dataflow: from what the items contribute ([`crate::items`]) to the exact integer
/// aggregates every number is formed from. Summed facts go through one `count_total`, keyed by
/// what they sum (one pass over the item facts instead of one per kind); pair cells, consensus
/// facts and gold answers pass through.
pub fn quality_facts<'s>(
    items: VecCollection<'s, Time, ItemOutput, Diff>,
) -> VecCollection<'s, Time, Fact, Diff> {
    let sums = items.clone().explode(|output| match output {
        ItemOutput::Fact { scope, fact, .. } => sum_of(scope, fact),
        ItemOutput::Gold { scope, annotator, correct, .. } => {
            Some((SumKey::Gold { scope, annotator }, (1i64, i64::from(correct), 0i64)))
        }
        ItemOutput::Pair { .. } => None,
    });
    let totals =
        combine(sums, "CombineSums").count_total_core::<Diff>().map(|(key, (x, y, z))| key.fact(x, y, z));
    // Pair cells are many (up to pairs x categories^2) and each changes rarely, so they are not
    // counted here: every co-labelled item contributes a delta of one, and the consumer sums
    // them. Consensus facts and gold answers are one per item or label, not sums.
    let passed = items.flat_map(|output| match output {
        ItemOutput::Pair { scope, a, b, label_a, label_b } => {
            Some(Fact::PairCell { scope, a, b, label_a, label_b, count: 1 })
        }
        ItemOutput::Fact { scope, item, fact: ItemFact::Consensus { top, label } } => {
            Some(Fact::Consensus { scope, item, top, label })
        }
        ItemOutput::Gold { scope, annotator, item, ts_ms, correct } if !is_window(scope) => {
            Some(Fact::GoldAnswer { scope, annotator, item, ts_ms, correct })
        }
        _ => None,
    });
    totals.concat(combine(passed, "CombineFacts"))
}

/// What a summed fact sums over: the key of its total.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum SumKey {
    Items { scope: ScopeId, day: Day, raters: u32 },
    Share { scope: ScopeId, day: Day, raters: u32, label: LabelId },
    Coincidence { scope: ScopeId, day: Day, raters: u32, c: LabelId, k: LabelId },
    Annotator { scope: ScopeId, annotator: AnnotatorId, raters: u32 },
    Gold { scope: ScopeId, annotator: AnnotatorId },
    Gap { scope: ScopeId, annotator: AnnotatorId, day: Day },
    Mix { scope: ScopeId, annotator: AnnotatorId, day: Day, label: LabelId },
    Speed { scope: ScopeId, annotator: AnnotatorId, day: Day, bucket: u16 },
}

/// The total an item fact adds to, and what it adds (up to three sums).
fn sum_of(scope: ScopeId, fact: ItemFact) -> Option<(SumKey, (i64, i64, i64))> {
    Some(match fact {
        ItemFact::Stats { day, raters, agreeing_pairs, majority } => {
            (SumKey::Items { scope, day, raters }, (1, agreeing_pairs as i64, i64::from(majority)))
        }
        ItemFact::Share { day, raters, label, count } => {
            (SumKey::Share { scope, day, raters, label }, (i64::from(count), 0, 0))
        }
        ItemFact::Coincidence { day, raters, c, k, weight } => {
            (SumKey::Coincidence { scope, day, raters, c, k }, (weight as i64, 0, 0))
        }
        ItemFact::Annotator { annotator, raters, same } => {
            (SumKey::Annotator { scope, annotator, raters }, (1, i64::from(same), 0))
        }
        ItemFact::Gap { annotator, day, gap } => (SumKey::Gap { scope, annotator, day }, (1, gap, gap * gap)),
        ItemFact::Mix { annotator, day, label, own, peer } => {
            (SumKey::Mix { scope, annotator, day, label }, (i64::from(own), peer, 0))
        }
        ItemFact::Speed { annotator, day, bucket } => {
            (SumKey::Speed { scope, annotator, day, bucket }, (1, 0, 0))
        }
        ItemFact::Consensus { .. } => return None,
    })
}

impl SumKey {
    /// The fact that carries this key's totals.
    fn fact(self, x: i64, y: i64, z: i64) -> Fact {
        match self {
            SumKey::Items { scope, day, raters } => {
                Fact::ScopeItems { scope, day, raters, items: x, agreeing_pairs: y, majority: z }
            }
            SumKey::Share { scope, day, raters, label } => {
                Fact::CategoryShare { scope, day, raters, label, count: x }
            }
            SumKey::Coincidence { scope, day, raters, c, k } => {
                Fact::Coincidence { scope, day, raters, c, k, weight: x }
            }
            SumKey::Annotator { scope, annotator, raters } => {
                Fact::AnnotatorItems { scope, annotator, raters, items: x, same: y }
            }
            SumKey::Gold { scope, annotator } => {
                Fact::AnnotatorGold { scope, annotator, answers: x, correct: y }
            }
            SumKey::Gap { scope, annotator, day } => {
                Fact::GapDay { scope, annotator, day, items: x, sum: y, sum_sq: z }
            }
            SumKey::Mix { scope, annotator, day, label } => {
                Fact::MixDay { scope, annotator, day, label, own: x, peer: y }
            }
            SumKey::Speed { scope, annotator, day, bucket } => {
                Fact::SpeedDay { scope, annotator, day, bucket, count: x }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::ItemEvent;
    use crate::source::ItemKey;
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::Capture;

    type Captured = Vec<(Fact, Time, Diff)>;
    /// A live label: `((scope, item), (annotator, label, stamp))`.
    type LabelRow = (ItemKey, (AnnotatorId, LabelId, Stamp));

    /// Runs the dataflow (items and facts) over events at times, returning every output update,
    /// consolidated per (fact, time).
    fn run_events(events: Vec<(Time, ItemKey, ItemEvent)>) -> Captured {
        let captured = timely::execute_directly(move |worker| {
            let mut input = timely::dataflow::InputHandle::<
                Time,
                timely::container::CapacityContainerBuilder<Vec<(ItemKey, ItemEvent)>>,
            >::new();
            let captured = worker.dataflow::<Time, _, _>(|scope| {
                let items = crate::items::items(input.to_stream(scope), crate::items::ItemsConfig::default());
                quality_facts(items).inner.capture()
            });
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
            events.push((time, item, ItemEvent::Label { annotator, seq: seq as u64 + 1, value }));
        }
        run_events(events)
    }

    const S: ScopeId = 0;

    fn label(item: ItemId, annotator: AnnotatorId, label: LabelId) -> LabelRow {
        ((S, item), (annotator, label, Stamp::default()))
    }

    /// The facts of the original quality dataflow, without drift inputs.
    fn quality_only(captured: Captured) -> Captured {
        captured
            .into_iter()
            .filter(|(f, _, _)| {
                !matches!(
                    f,
                    Fact::GapDay { .. }
                        | Fact::MixDay { .. }
                        | Fact::SpeedDay { .. }
                        | Fact::GoldAnswer { .. }
                )
            })
            .collect()
    }

    #[test]
    fn one_item_summary() {
        // Item 7: annotators 1, 2 say label 10; annotator 3 says 11. Gold answer 10.
        let out = run(
            vec![(0, label(7, 1, 10), 1), (0, label(7, 2, 10), 1), (0, label(7, 3, 11), 1)],
            vec![((S, 7), 10)],
        );
        let expected: Captured = vec![
            (
                Fact::ScopeItems { scope: S, day: 0, raters: 3, items: 1, agreeing_pairs: 2, majority: 1 },
                0,
                1,
            ),
            (Fact::CategoryShare { scope: S, day: 0, raters: 3, label: 10, count: 2 }, 0, 1),
            (Fact::CategoryShare { scope: S, day: 0, raters: 3, label: 11, count: 1 }, 0, 1),
            (Fact::Coincidence { scope: S, day: 0, raters: 3, c: 10, k: 10, weight: 2 }, 0, 1),
            (Fact::Coincidence { scope: S, day: 0, raters: 3, c: 10, k: 11, weight: 2 }, 0, 1),
            (Fact::AnnotatorItems { scope: S, annotator: 1, raters: 3, items: 1, same: 1 }, 0, 1),
            (Fact::AnnotatorItems { scope: S, annotator: 2, raters: 3, items: 1, same: 1 }, 0, 1),
            (Fact::AnnotatorItems { scope: S, annotator: 3, raters: 3, items: 1, same: 0 }, 0, 1),
            (Fact::PairCell { scope: S, a: 1, b: 2, label_a: 10, label_b: 10, count: 1 }, 0, 1),
            (Fact::PairCell { scope: S, a: 1, b: 3, label_a: 10, label_b: 11, count: 1 }, 0, 1),
            (Fact::PairCell { scope: S, a: 2, b: 3, label_a: 10, label_b: 11, count: 1 }, 0, 1),
            (Fact::AnnotatorGold { scope: S, annotator: 1, answers: 1, correct: 1 }, 0, 1),
            (Fact::AnnotatorGold { scope: S, annotator: 2, answers: 1, correct: 1 }, 0, 1),
            (Fact::AnnotatorGold { scope: S, annotator: 3, answers: 1, correct: 0 }, 0, 1),
            (Fact::Consensus { scope: S, item: 7, top: 2, label: 10 }, 0, 1),
        ];
        let mut expected = expected;
        differential_dataflow::consolidation::consolidate_updates(&mut expected);
        assert_eq!(quality_only(out), expected);
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
        let at_one: Vec<_> = quality_only(out).into_iter().filter(|(_, t, _)| *t == 1).collect();
        let mut expected: Captured = vec![
            // Scope totals for r = 2: two items with 2 agreeing pairs each, then only one agreeing.
            (
                Fact::ScopeItems { scope: S, day: 0, raters: 2, items: 2, agreeing_pairs: 4, majority: 2 },
                1,
                -1,
            ),
            (
                Fact::ScopeItems { scope: S, day: 0, raters: 2, items: 2, agreeing_pairs: 2, majority: 1 },
                1,
                1,
            ),
            (Fact::CategoryShare { scope: S, day: 0, raters: 2, label: 10, count: 4 }, 1, -1),
            (Fact::CategoryShare { scope: S, day: 0, raters: 2, label: 10, count: 3 }, 1, 1),
            (Fact::CategoryShare { scope: S, day: 0, raters: 2, label: 11, count: 1 }, 1, 1),
            (Fact::Coincidence { scope: S, day: 0, raters: 2, c: 10, k: 10, weight: 4 }, 1, -1),
            (Fact::Coincidence { scope: S, day: 0, raters: 2, c: 10, k: 10, weight: 2 }, 1, 1),
            (Fact::Coincidence { scope: S, day: 0, raters: 2, c: 10, k: 11, weight: 1 }, 1, 1),
            (Fact::AnnotatorItems { scope: S, annotator: 1, raters: 2, items: 2, same: 2 }, 1, -1),
            (Fact::AnnotatorItems { scope: S, annotator: 1, raters: 2, items: 2, same: 1 }, 1, 1),
            (Fact::AnnotatorItems { scope: S, annotator: 2, raters: 2, items: 2, same: 2 }, 1, -1),
            (Fact::AnnotatorItems { scope: S, annotator: 2, raters: 2, items: 2, same: 1 }, 1, 1),
            // Pair cells are deltas: item 1 leaves cell (10, 10) and enters cell (10, 11).
            (Fact::PairCell { scope: S, a: 1, b: 2, label_a: 10, label_b: 10, count: 1 }, 1, -1),
            (Fact::PairCell { scope: S, a: 1, b: 2, label_a: 10, label_b: 11, count: 1 }, 1, 1),
            (Fact::Consensus { scope: S, item: 1, top: 2, label: 10 }, 1, -1),
            (Fact::Consensus { scope: S, item: 1, top: 1, label: 10 }, 1, 1),
            (Fact::Consensus { scope: S, item: 1, top: 1, label: 11 }, 1, 1),
        ];
        differential_dataflow::consolidation::consolidate_updates(&mut expected);
        assert_eq!(at_one, expected);
    }

    #[test]
    fn drift_inputs_of_one_item() {
        // Item 7 on day 2: annotators 1, 2 say 10, 3 says 11; annotator 1 took 1 s. Gold 10.
        let at = |annotator, label, duration_ms| {
            let stamp = Stamp { ts_ms: 2 * crate::source::DAY_MS + 5, duration_ms };
            ((S, 7), (annotator, label, stamp))
        };
        let out = run(
            vec![(0, at(1, 10, Some(1000)), 1), (0, at(2, 10, None), 1), (0, at(3, 11, None), 1)],
            vec![((S, 7), 10)],
        );
        let drift: Vec<Fact> = out
            .into_iter()
            .filter(|(f, _, _)| !matches!(quality_only(vec![(*f, 0, 1)]).as_slice(), [_]))
            .map(|(f, _, d)| {
                assert_eq!(d, 1);
                f
            })
            .collect();
        let ts_ms = 2 * crate::source::DAY_MS + 5;
        let half = FIXED_POINT / 2;
        let mut expected = vec![
            // Annotator 1: the others (2: 10, 3: 11) agree with it half the time and with each
            // other never: d = 1/2 - 0.
            Fact::GapDay { scope: S, annotator: 1, day: 2, items: 1, sum: half, sum_sq: half * half },
            Fact::GapDay { scope: S, annotator: 2, day: 2, items: 1, sum: half, sum_sq: half * half },
            // Annotator 3: the others agree with each other (p = 1) and not with it: d = -1.
            Fact::GapDay {
                scope: S,
                annotator: 3,
                day: 2,
                items: 1,
                sum: -FIXED_POINT,
                sum_sq: FIXED_POINT * FIXED_POINT,
            },
            Fact::MixDay { scope: S, annotator: 1, day: 2, label: 10, own: 1, peer: half },
            Fact::MixDay { scope: S, annotator: 1, day: 2, label: 11, own: 0, peer: half },
            Fact::MixDay { scope: S, annotator: 2, day: 2, label: 10, own: 1, peer: half },
            Fact::MixDay { scope: S, annotator: 2, day: 2, label: 11, own: 0, peer: half },
            Fact::MixDay { scope: S, annotator: 3, day: 2, label: 10, own: 0, peer: FIXED_POINT },
            Fact::MixDay { scope: S, annotator: 3, day: 2, label: 11, own: 1, peer: 0 },
            Fact::SpeedDay { scope: S, annotator: 1, day: 2, bucket: duration_bucket(1000), count: 1 },
            Fact::GoldAnswer { scope: S, annotator: 1, item: 7, ts_ms, correct: true },
            Fact::GoldAnswer { scope: S, annotator: 2, item: 7, ts_ms, correct: true },
            Fact::GoldAnswer { scope: S, annotator: 3, item: 7, ts_ms, correct: false },
        ];
        expected.sort();
        let mut drift = drift;
        drift.sort();
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
        let mut total: Vec<(Fact, Diff)> = out.into_iter().map(|(f, _, d)| (f, d)).collect();
        differential_dataflow::consolidation::consolidate(&mut total);
        assert_eq!(total, vec![]);
    }

    #[test]
    fn gold_correction_rescored() {
        // The gold answer changes from 10 to 11 at time 1: the annotator's correct count follows.
        let (item, label_11) = ((S, 1), 11);
        let out = run_events(vec![
            (0, item, ItemEvent::Label { annotator: 1, seq: 0, value: Some((label_11, Stamp::default())) }),
            (0, item, ItemEvent::Gold { seq: 1, label: Some(10) }),
            (1, item, ItemEvent::Gold { seq: 2, label: Some(11) }),
        ]);
        let gold: Vec<_> =
            out.into_iter().filter(|(f, _, _)| matches!(f, Fact::AnnotatorGold { .. })).collect();
        assert_eq!(
            gold,
            vec![
                (Fact::AnnotatorGold { scope: S, annotator: 1, answers: 1, correct: 0 }, 0, 1),
                (Fact::AnnotatorGold { scope: S, annotator: 1, answers: 1, correct: 0 }, 1, -1),
                (Fact::AnnotatorGold { scope: S, annotator: 1, answers: 1, correct: 1 }, 1, 1),
            ]
        );
    }
}
