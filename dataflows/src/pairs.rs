//! Annotator pairs (spec section 2, per annotator pair): for two annotators `a < b` with at least
//! one shared item, `n_shared`, `percent_agreement` (the share of shared items with one label),
//! `cohen_kappa` (chance from each annotator's own marginals on the shared items) and `scott_pi`
//! (chance from the pooled marginals), from the pair's confusion table ([`stats::pair_agreement`]).
//!
//! The table is kept by the worker that owns the pair, from the cells the items contribute (one
//! per shared item, `+1`/`-1` as items change). Each pair also contributes its Cohen's kappa, in
//! fixed point, to its scope's mean ([`crate::scopes`]).

use serde::{Deserialize, Serialize};

use crate::dataflow::Diff;
use crate::keyed::Keyed;
use crate::label::LabelId;
use crate::objects::PairReport;
use crate::records::{Entity, Record, RecordKey};
use crate::source::{AnnotatorId, Catalog, ScopeId};
use crate::stats;

/// Fixed-point scale of a pair's kappa in its scope's sum: sums of integers cancel exactly on
/// retraction, so the scope's mean does not depend on the order in which pairs changed. The
/// rounding (1e-18 a pair) stays far below the spec's 1e-9 tolerance.
pub const KAPPA_SCALE: f64 = 1e18;

/// A pair within its scope: `(scope, a, b)`, `a < b` by id.
pub type PairKey = (ScopeId, AnnotatorId, AnnotatorId);

/// A pair's confusion table: `((label of a, label of b), items)`, exactly as many cells as it
/// has (pairs are many).
#[derive(Debug, Default)]
pub struct PairState {
    cells: Box<[((LabelId, LabelId), i64)]>,
}

/// What a pair derives: its record, and its kappa for its scope's mean.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PairOut {
    Record(Record),
    /// The pair's Cohen's kappa in fixed point ([`KAPPA_SCALE`]; kappa is within `[-1, 1]`, so
    /// this is within `±10^18`), when defined.
    Kappa {
        scope: ScopeId,
        kappa: i64,
    },
}

impl PairOut {
    /// The record, if this is one.
    pub fn record(self) -> Option<Record> {
        match self {
            PairOut::Record(record) => Some(record),
            PairOut::Kappa { .. } => None,
        }
    }
}

/// The keyed logic of annotator pairs.
pub struct PairLogic;

impl Keyed for PairLogic {
    type Key = PairKey;
    type Update = (LabelId, LabelId);
    type Diff = Diff;
    type State = PairState;
    type Out = PairOut;
    type Side = ();

    fn route(&(scope, a, b): &PairKey) -> u64 {
        scope.rotate_left(21) ^ a.rotate_left(42) ^ b
    }

    fn apply(&mut self, _: &PairKey, pair: &mut PairState, &cell: &(LabelId, LabelId), &diff: &Diff) {
        match pair.cells.iter().position(|(k, _)| *k == cell) {
            Some(i) => {
                pair.cells[i].1 += diff;
                if pair.cells[i].1 == 0 {
                    crate::keyed::remove_at(&mut pair.cells, i);
                }
            }
            None if diff != 0 => {
                let at = pair.cells.len();
                crate::keyed::insert_at(&mut pair.cells, at, (cell, diff));
            }
            None => {}
        }
    }

    fn derive(
        &mut self,
        &(scope, a, b): &PairKey,
        pair: &mut PairState,
        names: &Catalog,
        out: &mut Vec<PairOut>,
    ) {
        let Some(stats) = stats::pair_agreement(&pair.cells) else { return };
        if let Some(kappa) = stats.cohen_kappa {
            out.push(PairOut::Kappa { scope, kappa: (kappa * KAPPA_SCALE).round() as i64 });
        }
        let (project, task) = names.scope_name(scope);
        // Ids order the pair inside the dataflow; the spec orders it bytewise by name. Every pair
        // statistic is symmetric in the two annotators, so only the names swap.
        let (name_a, name_b) = (names.annotators.shared(a), names.annotators.shared(b));
        let (a, b) = if name_a > name_b { (name_b, name_a) } else { (name_a, name_b) };
        let object = PairReport {
            a: &a,
            b: &b,
            n_shared: stats.n_shared,
            percent_agreement: stats.percent_agreement,
            cohen_kappa: stats.cohen_kappa,
            scott_pi: stats.scott_pi,
        };
        let value = crate::records::json(&object);
        out.push(PairOut::Record(Record { key: RecordKey::new(project, task, Entity::Pair(a, b)), value }));
    }

    fn is_empty(pair: &PairState) -> bool {
        pair.cells.is_empty()
    }

    fn is_record(out: &PairOut) -> bool {
        matches!(out, PairOut::Record(_))
    }
}
