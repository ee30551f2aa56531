//! The quality dataflow: a function from the collection of live labels and the collection of gold
//! answers to the collection of exact integer aggregates ([`Fact`]s) from which every number of
//! spec section 2 is formed.
//!
//! Per-item work happens in one `reduce` keyed by item: when an item's labels change, only that
//! item is re-summarised (work proportional to its labels), and the summary's changes flow into
//! `count_total`s that keep per-scope, per-annotator and per-pair sums. Weights such as
//! `1/(r_i - 1)` are never applied here: sums are grouped by the item's label count `r`, so that
//! every aggregate is an integer that cancels exactly on retraction. Floats appear only in
//! [`crate::view`], when a final number is formed.

use differential_dataflow::operators::CountTotal;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::label::LabelId;
use crate::source::{AnnotatorId, ItemId, ItemKey, ScopeId};

/// Logical time: a totally ordered epoch.
pub type Time = u64;
/// Difference type of every collection: an integer multiplicity.
pub type Diff = i64;
/// A live label: `((scope, item), (annotator, label))`.
pub type LabelRow = (ItemKey, (AnnotatorId, LabelId));
/// A live gold answer: `((scope, item), label)`.
pub type GoldRow = (ItemKey, LabelId);

/// What one item contributes, given all of its current labels. `raters` is the item's label
/// count `r`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ItemFact {
    /// The item itself and `sum_k n_k (n_k - 1)`, the number of ordered agreeing label pairs.
    Stats { raters: u32, agreeing_pairs: u64 },
    /// `n_k` labels `label` on the item.
    Share {
        raters: u32,
        label: LabelId,
        count: u32,
    },
    /// Krippendorff coincidence weight before division by `r - 1`, for `c <= k`:
    /// `n_c n_k` when `c != k`, `n_c (n_c - 1)` when `c == k`. Only for pairable items.
    Coincidence {
        raters: u32,
        c: LabelId,
        k: LabelId,
        weight: u64,
    },
    /// One annotator's label on the item and how many others gave the same label.
    Annotator {
        annotator: AnnotatorId,
        raters: u32,
        same: u32,
    },
    /// Two annotators (`a < b` by id) labelled the item `label_a` and `label_b`.
    Pair {
        a: AnnotatorId,
        b: AnnotatorId,
        label_a: LabelId,
        label_b: LabelId,
    },
    /// The most frequent labels (more than one when tied) and their count.
    Consensus { top: u32, labels: Vec<LabelId> },
}

/// An aggregate maintained by the dataflow. Sum-like facts carry their current total; the
/// collection holds exactly one fact per key, so a consumer that adds `total * diff` per key
/// reconstructs the totals whatever the order of updates within an epoch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Fact {
    /// Items of the scope with `raters` labels, and their summed agreeing pairs.
    ScopeItems {
        scope: ScopeId,
        raters: u32,
        items: i64,
        agreeing_pairs: i64,
    },
    /// Summed labels `label` over the scope's items with `raters` labels.
    CategoryShare {
        scope: ScopeId,
        raters: u32,
        label: LabelId,
        count: i64,
    },
    /// Summed coincidence weights (`c <= k`) over the scope's items with `raters` labels.
    Coincidence {
        scope: ScopeId,
        raters: u32,
        c: LabelId,
        k: LabelId,
        weight: i64,
    },
    /// An annotator's labels on items with `raters` labels, and how many other labels agreed.
    AnnotatorItems {
        scope: ScopeId,
        annotator: AnnotatorId,
        raters: u32,
        items: i64,
        same: i64,
    },
    /// A cell of a pair's confusion table: items where `a` said `label_a` and `b` said `label_b`.
    PairCell {
        scope: ScopeId,
        a: AnnotatorId,
        b: AnnotatorId,
        label_a: LabelId,
        label_b: LabelId,
        count: i64,
    },
    /// An annotator's labels on gold items, and how many matched the gold answer.
    AnnotatorGold {
        scope: ScopeId,
        annotator: AnnotatorId,
        answers: i64,
        correct: i64,
    },
    /// An item's consensus (not a sum: one current value per item).
    Consensus {
        scope: ScopeId,
        item: ItemId,
        top: u32,
        labels: Vec<LabelId>,
    },
}

/// Summarises one item from its current `(annotator, label)` rows, sorted by annotator.
pub fn summarize_item(rows: &[(AnnotatorId, LabelId)], out: &mut Vec<(ItemFact, Diff)>) {
    let raters = rows.len() as u32;
    if raters == 0 {
        return;
    }
    let mut counts: Vec<(LabelId, u32)> = Vec::with_capacity(rows.len());
    for &(_, label) in rows {
        match counts.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => counts.push((label, 1)),
        }
    }
    counts.sort_unstable();
    let count_of = |label: LabelId| {
        counts
            .iter()
            .find(|(l, _)| *l == label)
            .map_or(0, |(_, n)| *n)
    };

    let agreeing_pairs = counts
        .iter()
        .map(|&(_, n)| u64::from(n) * u64::from(n - 1))
        .sum();
    out.push((
        ItemFact::Stats {
            raters,
            agreeing_pairs,
        },
        1,
    ));
    for &(label, count) in &counts {
        out.push((
            ItemFact::Share {
                raters,
                label,
                count,
            },
            1,
        ));
    }
    for &(annotator, label) in rows {
        out.push((
            ItemFact::Annotator {
                annotator,
                raters,
                same: count_of(label) - 1,
            },
            1,
        ));
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
                    out.push((
                        ItemFact::Coincidence {
                            raters,
                            c,
                            k,
                            weight,
                        },
                        1,
                    ));
                }
            }
        }
        for (i, &(a, label_a)) in rows.iter().enumerate() {
            for &(b, label_b) in &rows[i + 1..] {
                out.push((
                    ItemFact::Pair {
                        a,
                        b,
                        label_a,
                        label_b,
                    },
                    1,
                ));
            }
        }
    }
    let top = counts.iter().map(|&(_, n)| n).max().unwrap_or(0);
    let labels = counts
        .iter()
        .filter(|&&(_, n)| n == top)
        .map(|&(l, _)| l)
        .collect();
    out.push((ItemFact::Consensus { top, labels }, 1));
}

/// Builds the quality dataflow over live labels and gold answers.
///
/// Both inputs must hold at most one row per identity (`(item, annotator)` for labels, `item` for
/// gold), as [`crate::source::Source`] guarantees.
pub fn quality_facts<'s>(
    labels: VecCollection<'s, Time, LabelRow, Diff>,
    gold: VecCollection<'s, Time, GoldRow, Diff>,
) -> VecCollection<'s, Time, Fact, Diff> {
    let labels_by_item = labels.arrange_by_key_named("LabelsByItem");

    let item_facts = labels_by_item
        .clone()
        .reduce_abelian::<_, ValBuilder<ItemKey, ItemFact, Time, Diff>, ValSpine<ItemKey, ItemFact, Time, Diff>, _, _>(
            "SummarizeItem",
            |_item, input, output| {
                let rows: Vec<(AnnotatorId, LabelId)> =
                    input.iter().filter(|(_, diff)| *diff > 0).map(|(row, _)| **row).collect();
                summarize_item(&rows, output);
            },
            |vec, key, upds| {
                vec.clear();
                vec.extend(upds.drain(..).map(|(v, t, r)| ((*key, v), t, r)));
            },
        )
        .as_collection(|item: &ItemKey, fact: &ItemFact| (*item, fact.clone()));

    let scope_items = item_facts
        .clone()
        .explode(|((scope, _), fact)| match fact {
            ItemFact::Stats {
                raters,
                agreeing_pairs,
            } => Some(((scope, raters), (1i64, agreeing_pairs as i64))),
            _ => None,
        })
        .count_total_core::<Diff>()
        .map(
            |((scope, raters), (items, agreeing_pairs))| Fact::ScopeItems {
                scope,
                raters,
                items,
                agreeing_pairs,
            },
        );

    let shares = item_facts
        .clone()
        .explode(|((scope, _), fact)| match fact {
            ItemFact::Share {
                raters,
                label,
                count,
            } => Some(((scope, raters, label), i64::from(count))),
            _ => None,
        })
        .count_total_core::<Diff>()
        .map(|((scope, raters, label), count)| Fact::CategoryShare {
            scope,
            raters,
            label,
            count,
        });

    let coincidences = item_facts
        .clone()
        .explode(|((scope, _), fact)| match fact {
            ItemFact::Coincidence {
                raters,
                c,
                k,
                weight,
            } => Some(((scope, raters, c, k), weight as i64)),
            _ => None,
        })
        .count_total_core::<Diff>()
        .map(|((scope, raters, c, k), weight)| Fact::Coincidence {
            scope,
            raters,
            c,
            k,
            weight,
        });

    let annotators = item_facts
        .clone()
        .explode(|((scope, _), fact)| match fact {
            ItemFact::Annotator {
                annotator,
                raters,
                same,
            } => Some(((scope, annotator, raters), (1i64, i64::from(same)))),
            _ => None,
        })
        .count_total_core::<Diff>()
        .map(
            |((scope, annotator, raters), (items, same))| Fact::AnnotatorItems {
                scope,
                annotator,
                raters,
                items,
                same,
            },
        );

    let pairs = item_facts
        .clone()
        .explode(|((scope, _), fact)| match fact {
            ItemFact::Pair {
                a,
                b,
                label_a,
                label_b,
            } => Some(((scope, a, b, label_a, label_b), 1i64)),
            _ => None,
        })
        .count_total_core::<Diff>()
        .map(|((scope, a, b, label_a, label_b), count)| Fact::PairCell {
            scope,
            a,
            b,
            label_a,
            label_b,
            count,
        });

    let consensus = item_facts.flat_map(|((scope, item), fact)| match fact {
        ItemFact::Consensus { top, labels } => Some(Fact::Consensus {
            scope,
            item,
            top,
            labels,
        }),
        _ => None,
    });

    let gold_by_item = gold.arrange_by_key_named("GoldByItem");
    let gold_answers = labels_by_item
        .join_core(
            gold_by_item,
            |item: &ItemKey, &(annotator, label): &(AnnotatorId, LabelId), gold: &LabelId| {
                Some(((item.0, annotator), label == *gold))
            },
        )
        .explode(|(key, correct)| Some((key, (1i64, i64::from(correct)))))
        .count_total_core::<Diff>()
        .map(
            |((scope, annotator), (answers, correct))| Fact::AnnotatorGold {
                scope,
                annotator,
                answers,
                correct,
            },
        );

    scope_items
        .concat(shares)
        .concat(coincidences)
        .concat(annotators)
        .concat(pairs)
        .concat(consensus)
        .concat(gold_answers)
}
