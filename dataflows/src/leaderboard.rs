//! The leaderboard of each scope (spec 2.2) over its trusted annotators' comparisons, and the
//! scope's position bias and tie rate over all of its comparisons.
//!
//! Two keyed operators:
//! - [`TrustLogic`], per (scope, annotator): the annotator's comparisons as exact counts (sides
//!   chosen, and wins, losses and ties per pair of systems, from the items' sums) and its gate in
//!   the scope's project. It passes its side counts on to its scope always, and its pair counts
//!   only while its gate does not block it: blocking an annotator retracts its comparisons from
//!   the leaderboard, re-admitting it brings them back.
//! - [`BoardLogic`], per scope: the sums of what its annotators pass on, and from them the
//!   scope's leaderboard (one record per system, [`Entity::System`]; the Bradley–Terry fit is
//!   re-run when the scope's counts change) and its preference numbers ([`Entity::Preferences`]).
//!
//! Every count is an integer sum that cancels exactly on retraction; floats are formed only when
//! a record is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::annotators::AnnotatorKey;
use crate::dataflow::{Diff, Sums};
use crate::keyed::Keyed;
use crate::label::{Label, LabelId};
use crate::preferences::{leaderboard, preference_quality, PairCounts, PreferenceSettings, SideCounts};
use crate::records::{Entity, Record};
use crate::source::{Catalog, ScopeId};

/// What changes an annotator's comparisons or its trust.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TrustInput {
    /// Comparisons by side chosen: `(left, right, ties)`.
    Side,
    /// Comparisons of the systems `first < second`: `(wins of first, wins of second, ties)`.
    Versus { first: LabelId, second: LabelId },
    /// The annotator's gate in the scope's project, and whether it blocks: `(multiplicity, 0, 0)`.
    Gate { blocked: bool },
}

/// Whether a gate, as the gates render it (JSON, its state first), blocks its annotator.
pub fn blocks(gate: &[u8]) -> bool {
    gate.starts_with(br#"{"state":"block""#)
}

/// One annotator's comparisons in one scope, and its gate's multiplicities.
#[derive(Debug, Default)]
pub struct TrustState {
    sides: SideCounts,
    /// Counts per pair of systems, in order: the operator compares the outputs sorted, and a
    /// touched annotator derives all of them every epoch.
    pairs: BTreeMap<(LabelId, LabelId), PairCounts>,
    gates: Vec<(bool, Diff)>,
}

/// What an annotator passes on to its scope's leaderboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BoardInput {
    /// Its comparisons by side (every annotator's, trusted or not).
    Sides(SideCounts),
    /// Its comparisons of a pair of systems (while it is trusted).
    Pair { first: LabelId, second: LabelId, counts: PairCounts },
}

/// The keyed logic of annotators' comparisons and trust.
pub struct TrustLogic;

impl Keyed for TrustLogic {
    type Key = AnnotatorKey;
    type Update = TrustInput;
    type Diff = Sums;
    type State = TrustState;
    type Out = (ScopeId, BoardInput);
    type Side = ();
    const KEEP_OUTPUTS: bool = true;

    fn route(&(scope, annotator): &AnnotatorKey) -> u64 {
        scope.rotate_left(32) ^ annotator
    }

    fn apply(&mut self, _: &AnnotatorKey, s: &mut TrustState, update: &TrustInput, &(x, y, z): &Sums) {
        match *update {
            TrustInput::Side => s.sides += SideCounts { left: x, right: y, ties: z },
            TrustInput::Versus { first, second } => {
                let counts = s.pairs.entry((first, second)).or_default();
                *counts += PairCounts { a_wins: x, b_wins: y, ties: z };
                if *counts == PairCounts::default() {
                    s.pairs.remove(&(first, second));
                }
            }
            TrustInput::Gate { blocked } => match s.gates.iter().position(|(b, _)| *b == blocked) {
                Some(i) => {
                    s.gates[i].1 += x;
                    if s.gates[i].1 == 0 {
                        s.gates.swap_remove(i);
                    }
                }
                None => s.gates.push((blocked, x)),
            },
        }
    }

    fn derive(
        &mut self,
        &(scope, _): &AnnotatorKey,
        s: &mut TrustState,
        _: &Catalog,
        out: &mut Vec<Self::Out>,
    ) {
        if s.sides != SideCounts::default() {
            out.push((scope, BoardInput::Sides(s.sides)));
        }
        if s.gates.iter().any(|&(blocked, m)| blocked && m > 0) {
            return;
        }
        for (&(first, second), &counts) in &s.pairs {
            out.push((scope, BoardInput::Pair { first, second, counts }));
        }
    }

    fn is_empty(s: &TrustState) -> bool {
        s.sides == SideCounts::default() && s.pairs.is_empty() && s.gates.is_empty()
    }
}

/// A scope's comparisons: all of them by side, its trusted annotators' per pair of systems.
#[derive(Debug, Default)]
pub struct BoardState {
    sides: SideCounts,
    pairs: BTreeMap<(LabelId, LabelId), PairCounts>,
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
    type Diff = Diff;
    type State = BoardState;
    type Out = BoardOut;
    type Side = ();
    const KEEP_OUTPUTS: bool = true;

    fn route(scope: &ScopeId) -> u64 {
        *scope
    }

    fn apply(&mut self, _: &ScopeId, s: &mut BoardState, update: &BoardInput, &diff: &Diff) {
        match *update {
            BoardInput::Sides(sides) => {
                s.sides +=
                    SideCounts { left: sides.left * diff, right: sides.right * diff, ties: sides.ties * diff }
            }
            BoardInput::Pair { first, second, counts } => {
                let sum = s.pairs.entry((first, second)).or_default();
                *sum += PairCounts {
                    a_wins: counts.a_wins * diff,
                    b_wins: counts.b_wins * diff,
                    ties: counts.ties * diff,
                };
                if *sum == PairCounts::default() {
                    s.pairs.remove(&(first, second));
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
        let pairs =
            s.pairs.iter().map(|(&(a, b), &counts)| ((system_name(names, a), system_name(names, b)), counts));
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
        s.sides == SideCounts::default() && s.pairs.is_empty()
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
