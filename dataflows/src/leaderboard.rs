//! The leaderboard of each scope (spec 2.2) over its trusted annotators' comparisons, and the
//! scope's position bias and tie rate over all of its comparisons.
//!
//! One keyed operator, [`BoardLogic`], per scope. It keeps, as exact integer sums, the scope's
//! comparisons by side chosen, each annotator's counts per pair of systems (wins, losses, ties,
//! from the items), each annotator's gate in the scope's project, and the counts per pair of
//! systems of the annotators whose gate does not block them. A comparison changes those by one
//! cell; a gate that starts or stops blocking moves its annotator's counts out of or into the
//! trusted sums. From the trusted sums the scope's leaderboard is formed when they change (one
//! record per system, [`Entity::System`]: the Bradley–Terry fit re-run over the scope's systems),
//! and from the sides its preference numbers ([`Entity::Preferences`]). Work per comparison is
//! one cell, whatever the number of systems.
//!
//! Every count cancels exactly on retraction, whatever the order of an epoch's updates; floats
//! are formed only when a record is.

use std::collections::{BTreeMap, HashMap};

use foldhash::fast::RandomState;
use serde::{Deserialize, Serialize};

use crate::dataflow::{Diff, Sums};
use crate::keyed::{add_part, Keyed};
use crate::label::{Label, LabelId};
use crate::preferences::{leaderboard, preference_quality, PairCounts, PreferenceSettings, SideCounts};
use crate::records::{Entity, Record};
use crate::source::{AnnotatorId, Catalog, ScopeId};

/// What changes a scope's comparisons or its annotators' trust.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BoardInput {
    /// Comparisons by side chosen: `(left, right, ties)`.
    Sides,
    /// Comparisons of `annotator` of the systems `first < second`: `(wins of first, wins of
    /// second, ties)`.
    Versus { annotator: AnnotatorId, first: LabelId, second: LabelId },
    /// The gate of `annotator` in the scope's project, and whether it blocks: `(multiplicity, 0,
    /// 0)`.
    Gate { annotator: AnnotatorId, blocked: bool },
}

/// Whether a gate, as the gates render it (JSON, its state first), blocks its annotator.
pub fn blocks(gate: &[u8]) -> bool {
    gate.starts_with(br#"{"state":"block""#)
}

/// Counts per pair of systems.
type Pairs = BTreeMap<(LabelId, LabelId), PairCounts>;

/// Adds `counts` times `sign` to the pair's cell, dropping it when it is back to zero.
fn add(pairs: &mut Pairs, pair: (LabelId, LabelId), counts: PairCounts, sign: i64) {
    let cell = pairs.entry(pair).or_default();
    *cell +=
        PairCounts { a_wins: counts.a_wins * sign, b_wins: counts.b_wins * sign, ties: counts.ties * sign };
    if *cell == PairCounts::default() {
        pairs.remove(&pair);
    }
}

/// A scope's comparisons: all of them by side, each annotator's per pair of systems, and the
/// trusted annotators' summed per pair of systems.
#[derive(Debug, Default)]
pub struct BoardState {
    sides: SideCounts,
    by_annotator: HashMap<AnnotatorId, Pairs, RandomState>,
    /// Each annotator's gates (whether it blocks) with their multiplicities.
    gates: HashMap<AnnotatorId, Vec<(bool, Diff)>, RandomState>,
    /// The sum of `by_annotator` over the annotators that are not blocked.
    trusted: Pairs,
}

impl BoardState {
    fn blocked(&self, annotator: AnnotatorId) -> bool {
        self.gates.get(&annotator).is_some_and(|g| g.iter().any(|&(blocked, m)| blocked && m > 0))
    }
}

/// What a scope's comparisons derive.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BoardOut {
    /// A leaderboard entry or the scope's preference numbers.
    Record(Record),
    /// One system's line, for the service's gauges.
    System(SystemMetric),
}

/// One system's leaderboard numbers in a scope, for gauges (floats as bits, to be ordered).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SystemMetric {
    pub project: Box<str>,
    pub task: Box<str>,
    pub system: Box<str>,
    pub strength: u64,
    pub elo: u64,
    pub rank: u32,
}

/// The keyed logic of scopes' leaderboards.
pub struct BoardLogic {
    pub preferences: PreferenceSettings,
}

/// The name of a system, interned as a string label.
fn system_name(names: &Catalog, id: LabelId) -> &str {
    match names.labels.get(id) {
        Label::String(name) => name,
        _ => unreachable!("systems are interned as string labels"),
    }
}

impl Keyed for BoardLogic {
    type Key = ScopeId;
    type Update = BoardInput;
    type Diff = Sums;
    type State = BoardState;
    type Out = BoardOut;
    type Side = ();
    const KEEP_OUTPUTS: bool = true;

    fn route(scope: &ScopeId) -> u64 {
        *scope
    }

    fn apply(&mut self, _: &ScopeId, s: &mut BoardState, update: &BoardInput, &(x, y, z): &Sums) {
        match *update {
            BoardInput::Sides => s.sides += SideCounts { left: x, right: y, ties: z },
            BoardInput::Versus { annotator, first, second } => {
                let counts = PairCounts { a_wins: x, b_wins: y, ties: z };
                let pairs = s.by_annotator.entry(annotator).or_default();
                add(pairs, (first, second), counts, 1);
                if pairs.is_empty() {
                    s.by_annotator.remove(&annotator);
                }
                if !s.blocked(annotator) {
                    add(&mut s.trusted, (first, second), counts, 1);
                }
            }
            BoardInput::Gate { annotator, blocked } => {
                let before = s.blocked(annotator);
                let gates = s.gates.entry(annotator).or_default();
                add_part(gates, &blocked, x);
                if gates.is_empty() {
                    s.gates.remove(&annotator);
                }
                let after = s.blocked(annotator);
                if before != after {
                    // Its comparisons leave the trusted sums, or come back.
                    let sign = if after { -1 } else { 1 };
                    for (&pair, &counts) in s.by_annotator.get(&annotator).into_iter().flatten() {
                        add(&mut s.trusted, pair, counts, sign);
                    }
                }
            }
        }
    }

    fn derive(&mut self, &scope: &ScopeId, s: &mut BoardState, names: &Catalog, out: &mut Vec<BoardOut>) {
        let (project, task) = names.scope_name(scope);
        if s.sides != SideCounts::default() {
            let object = preference_quality(s.sides, self.preferences.position_margin);
            out.push(BoardOut::Record(Record::new(project, task, Entity::Preferences, &object)));
        }
        let pairs = s
            .trusted
            .iter()
            .map(|(&(a, b), &counts)| ((system_name(names, a), system_name(names, b)), counts));
        let board = match leaderboard(pairs) {
            Ok(board) => board,
            Err(error) => {
                tracing::error!(project, task, %error, "no leaderboard: the scope's counts are inconsistent");
                return;
            }
        };
        for entry in board {
            out.push(BoardOut::System(SystemMetric {
                project: project.into(),
                task: task.into(),
                system: entry.system.into(),
                strength: entry.strength.to_bits(),
                elo: entry.elo.to_bits(),
                rank: entry.rank,
            }));
            out.push(BoardOut::Record(Record::new(
                project,
                task,
                Entity::System(entry.system.into()),
                &entry,
            )));
        }
    }

    fn is_empty(s: &BoardState) -> bool {
        s.sides == SideCounts::default() && s.by_annotator.is_empty() && s.gates.is_empty()
    }

    fn is_record(out: &BoardOut) -> bool {
        matches!(out, BoardOut::Record(_))
    }
}

impl BoardOut {
    /// The record, if this is one.
    pub fn record(self) -> Option<Record> {
        match self {
            BoardOut::Record(record) => Some(record),
            BoardOut::System(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_sums_follow_the_gates_in_any_order_of_updates() {
        let versus = |annotator, second| BoardInput::Versus { annotator, first: 10, second };
        let gate = |annotator, blocked| BoardInput::Gate { annotator, blocked };
        // Annotator 1 is re-gated from allow to block; annotator 2 stays trusted.
        let updates = [
            (versus(1, 11), (2, 1, 0)),
            (versus(2, 11), (0, 3, 1)),
            (gate(1, false), (1, 0, 0)),
            (gate(2, false), (1, 0, 0)),
            (gate(1, false), (-1, 0, 0)),
            (gate(1, true), (1, 0, 0)),
            (versus(1, 12), (1, 0, 0)),
        ];
        let expected: Pairs = [((10, 11), PairCounts { a_wins: 0, b_wins: 3, ties: 1 })].into();
        for reversed in [false, true] {
            for rotation in 0..updates.len() {
                let mut order: Vec<_> = updates.to_vec();
                if reversed {
                    order.reverse();
                }
                order.rotate_left(rotation);
                let mut logic = BoardLogic { preferences: PreferenceSettings::default() };
                let mut state = BoardState::default();
                for (update, sums) in &order {
                    logic.apply(&0, &mut state, update, sums);
                }
                assert_eq!(state.trusted, expected, "{order:?}");
                // Unblocking brings annotator 1's comparisons back.
                logic.apply(&0, &mut state, &gate(1, true), &(-1, 0, 0));
                assert_eq!(state.trusted[&(10, 11)], PairCounts { a_wins: 2, b_wins: 4, ties: 1 });
                assert_eq!(state.trusted[&(10, 12)], PairCounts { a_wins: 1, b_wins: 0, ties: 0 });
            }
        }
    }

    #[test]
    fn a_blocking_gate_is_told_from_its_json() {
        let gate = crate::drift::Gate {
            state: crate::drift::GateState::Block,
            reason: String::new(),
            evidence: Default::default(),
            since: None,
            history: Vec::new(),
        };
        assert!(blocks(&serde_json::to_vec(&gate).unwrap()));
        let allow = crate::drift::Gate { state: crate::drift::GateState::Allow, ..gate };
        assert!(!blocks(&serde_json::to_vec(&allow).unwrap()));
    }
}
