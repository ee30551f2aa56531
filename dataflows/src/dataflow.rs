//! The quality dataflow ([`quality`]): from label events, gold answers and the names the readers
//! learnt, to every output record, each derived by a keyed operator on the worker that owns its
//! entity, so that no thread applies every fact and the state is partitioned over workers and
//! processes.
//!
//! Per-item work happens where the item is kept: when an item's labels change, only that item is
//! re-summarised ([`summarize_item`], work proportional to its labels), and the summary's changes
//! become changes of exact integer sums ([`Sums`]) per scope, annotator and pair, summed per epoch
//! on the worker that made them and kept by the operator that owns them. Weights such as
//! `1/(r_i - 1)` are never applied here: sums are grouped by the item's label count `r`, so that
//! every aggregate is an integer that cancels exactly on retraction. Floats appear only when a
//! record's final numbers are formed.

use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::Stream;

use crate::alerts::{AlertLogic, AlertOut};
use crate::annotators::{AnnotatorLogic, AnnotatorOut, AnnotatorSum, JoinInput, JoinLogic};
use crate::combine::combine;
use crate::drift::DriftSettings;
use crate::gates::{GateLogic, GateOut, GoldAnswerLogic};
use crate::items::{items, Items, ItemsConfig};
use crate::keyed::{keyed, Emit};
use crate::label::LabelId;
use crate::leaderboard::{blocks, BoardInput, BoardLogic, BoardOut};
use crate::names::OnError;
use crate::pairs::{PairLogic, PairOut};
use crate::preferences::PreferenceSettings;
use crate::records::{Entity, Record};
use crate::routing::RoutingSettings;
use crate::scope_truth::{ScopePart, ScopePartsLogic};
use crate::scopes::{kappa_sums, ScopeLogic, ScopeOut, ScopeSum};
use crate::source::{scope_id, AnnotatorId, Day, Name, Stamp, Update};
use crate::summary::{Metric, WatchLogic};
use crate::truth::TruthSettings;

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

/// Summarises one item from its current `(annotator, label, stamp)` rows, sorted by annotator;
/// `None` for an item without labels. `counts` is scratch space.
///
/// Without `full` (items of window scopes), only what scope-level numbers need is formed: no drift
/// inputs.
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
    Some(ItemSummary(out))
}

/// A stream of changes: `(data, time, multiplicity)`.
pub type Changes<'s, D> = Stream<'s, Time, Vec<(D, Time, Diff)>>;

/// The sums an epoch adds to: `(x, y, z)`, whose meaning each update kind says.
pub type Sums = (i64, i64, i64);

/// How the quality dataflow runs.
#[derive(Clone, Debug, Default)]
pub struct QualityConfig {
    /// How items are kept, and whether their records are rendered.
    pub items: ItemsConfig,
    /// Drift, gate and alert settings.
    pub drift: DriftSettings,
    /// When the keyed operators derive their records.
    pub emit: Emit,
    /// The `[preferences]` settings.
    pub preferences: PreferenceSettings,
    /// Dawid–Skene truth (`[truth]`): live, `refresh_ms` spaces the refits of a scope.
    pub truth: TruthSettings,
    /// Routing of items (`[routing]`).
    pub routing: RoutingSettings,
    /// Live: the shortest time between two fits of a scope's truth, warm started; `None`: a cold
    /// fit whenever the scope changes.
    pub truth_refresh: Option<std::time::Duration>,
    /// Threads one Dawid–Skene fit may use: the engine gives it the worker threads of its process
    /// (`--workers`), so that a run never uses more threads than it was given; 0 is taken as 1.
    /// The result does not depend on it ([`crate::truth::FitOptions::threads`]).
    pub truth_threads: usize,
    /// Live: the item truths waiting to be published on this process's workers
    /// ([`crate::scope_truth::PUBLISH_PER_EPOCH`]), shared with the engine.
    pub truth_backlog: crate::scope_truth::TruthBacklog,
}

/// The quality dataflow's output: every record, and the drift summary's facts.
pub struct Quality<'s> {
    pub records: VecCollection<'s, Time, Record, Diff>,
    pub metrics: VecCollection<'s, Time, Metric, Diff>,
}

/// The quality dataflow: from label events and gold answers (`events`, routed to their items'
/// owners inside) and the names the readers learnt (`names`), every output record of spec
/// sections 3 and 4, each formed by the worker that owns its entity. `holds` says which epochs
/// are held, from each worker (a rebuild: [`crate::names::Names::holds`]); `None`: none is.
///
/// ```text
/// events -> items -+-> pairs ------------------> pair records
///                  |     | kappas
///                  +-----+-> scopes -----------> scope, window and scope alert records
///                  |           | drift inputs (to every worker)
///                  +-----------+-> annotators -> (own records) --> join --> annotator records
///                  |                |  |                            ^
///                  +-> gold answers +--+-> gates ---> gate records -+-> watchlists
///                  |                +----> alerts --> drift alert records
///                  |                   gates --blocked--+
///                  +-> rows --> truth, trust and routes (crate::trust::derive) --> item records
///                  |              |  confusion to the annotator records; truth and routes to
///                  |              +-> the scope's own record --> join --> scope records
///                  |                                         gates -+
///                  |                                                v
///                  +-> comparisons ---------------------------> leaderboard --> records
/// ```
pub fn quality<'s>(
    events: Stream<'s, Time, Vec<Update>>,
    names: Stream<'s, Time, Vec<Name>>,
    holds: Option<Stream<'s, Time, Vec<bool>>>,
    config: &QualityConfig,
    on_error: OnError,
) -> Quality<'s> {
    let mut names = crate::names::names(names, on_error);
    names.holds = holds.map(|holds| holds.broadcast());
    let emit = config.emit;
    let drift = &config.drift;
    // The items leave their labels as rows; their records are formed downstream, with trust,
    // truth and route.
    let items_config = ItemsConfig { records: None, rows: true, ..config.items.clone() };
    let Items { scopes: scope_sums, annotators: annotator_sums, comparisons, pairs: pair_cells, rows } =
        items(events, &names, items_config);

    let pairs = keyed(pair_cells, None, &names, PairLogic, emit, "Pairs");
    // A scope's pair kappas, summed within each batch before they go to the scope's worker.
    let kappas = pairs
        .others
        .inner
        .flat_map(|(out, time, diff)| match out {
            PairOut::Kappa { scope, kappa } => {
                Some(((scope, ScopeSum::Kappa), time, kappa_sums(kappa, diff)))
            }
            PairOut::Record(_) => None,
        })
        .as_collection()
        .consolidate_stream();

    let scopes =
        keyed(scope_sums.concat(kappas), None, &names, ScopeLogic { drift: drift.clone() }, emit, "Scopes");
    let basis = scopes
        .others
        .clone()
        .flat_map(|out| match out {
            ScopeOut::Basis(basis) => Some(basis),
            _ => None,
        })
        .inner
        .broadcast()
        .as_collection();

    let mut annotator_logic = AnnotatorLogic::new(drift.clone());
    annotator_logic.preferences = config.preferences;
    // Each gold answer goes to its gate once, not with every change of its annotator's record.
    let answers = annotator_sums
        .inner
        .clone()
        .flat_map(|(((scope, annotator), sum), time, (m, _, _))| match sum {
            AnnotatorSum::Answer { ts_ms, item, correct } => {
                Some((((scope, annotator, ts_ms, item, correct), ()), time, m))
            }
            _ => None,
        })
        .as_collection();
    let answers = keyed(answers, None, &names, GoldAnswerLogic, emit, "Gold answers");
    let annotators = keyed(annotator_sums, Some(basis), &names, annotator_logic, emit, "Annotators");
    let gate_inputs = annotators
        .others
        .clone()
        .flat_map(|out| match out {
            AnnotatorOut::Gate(key, input) => Some((key, input)),
            _ => None,
        })
        .concat(answers.others);
    let alert_inputs = annotators.others.clone().flat_map(|out| match out {
        AnnotatorOut::Alert(scope, input) => Some((scope, input)),
        _ => None,
    });
    let own = annotators.records.flat_map(|out| match out {
        AnnotatorOut::Own(key, record) => Some((key, JoinInput::Own(record))),
        _ => None,
    });

    let gates = keyed(gate_inputs, None, &names, GateLogic { drift: drift.clone() }, emit, "Gates");
    let gate_for = gates.others.clone().flat_map(|out| match out {
        GateOut::For { scope, annotator, gate } => Some(((scope, annotator), JoinInput::Gate(gate))),
        _ => None,
    });
    let candidates = gates.others.clone().flat_map(|out| match out {
        GateOut::Watch { project, signal, candidate } => Some(((project, signal), candidate)),
        _ => None,
    });
    let board_gates = gate_for
        .inner
        .clone()
        .flat_map(|(((scope, annotator), input), time, diff)| match input {
            JoinInput::Gate(gate) => {
                let blocked = blocks(&gate);
                Some(((scope, BoardInput::Gate { annotator, blocked }), time, (diff, 0, 0)))
            }
            _ => None,
        })
        .as_collection();
    let board = keyed(
        comparisons.concat(board_gates),
        None,
        &names,
        BoardLogic { preferences: config.preferences },
        emit,
        "Leaderboard",
    );
    let blocked = gates.others.clone().flat_map(|out| match out {
        GateOut::Blocked { scope, annotator } => Some((scope, annotator)),
        _ => None,
    });

    let trust = crate::trust::derive(rows, blocked, &names, config, emit);
    let annotator_records = keyed(
        own.concat(gate_for).concat(trust.confusion),
        None,
        &names,
        JoinLogic,
        emit,
        "AnnotatorRecords",
    );
    let watchlists = keyed(candidates, None, &names, WatchLogic { drift: drift.clone() }, emit, "Watchlists");
    let alert_inputs = combine(alert_inputs, "CombineAlertInputs");
    let alerts = keyed(alert_inputs, None, &names, AlertLogic { drift: drift.clone() }, emit, "Alerts");

    // Scope records: the scope's own object joined with its truth, routing and preferences.
    let scope_records = scopes.records.flat_map(ScopeOut::record);
    let own_scopes = scope_records.clone().flat_map(|record| {
        (record.key.entity == Entity::Scope)
            .then(|| (scope_id(&record.key.project, &record.key.task), ScopePart::Own(record)))
    });
    let board_records = board.records.flat_map(BoardOut::record);
    let preferences = board_records.clone().flat_map(|record| {
        (record.key.entity == Entity::Preferences)
            .then(|| (scope_id(&record.key.project, &record.key.task), ScopePart::Preferences(record.value)))
    });
    let parts = own_scopes.concat(trust.scope_parts).concat(preferences);
    let scope_parts = keyed(parts, None, &names, ScopePartsLogic, emit, "ScopeRecords");
    let records = trust
        .item_records
        .concat(pairs.records.flat_map(PairOut::record))
        .concat(scope_records.filter(|record| record.key.entity != Entity::Scope))
        .concat(scope_parts.records)
        .concat(annotator_records.records)
        .concat(gates.records.flat_map(GateOut::record))
        .concat(alerts.records.flat_map(AlertOut::record))
        .concat(board_records.filter(|record| record.key.entity != Entity::Preferences));
    let metrics = scopes
        .others
        .flat_map(ScopeOut::metric)
        .concat(gates.others.flat_map(GateOut::metric))
        .concat(alerts.others.flat_map(AlertOut::metric))
        .concat(watchlists.others);
    Quality { records, metrics }
}

#[cfg(test)]
mod tests;
