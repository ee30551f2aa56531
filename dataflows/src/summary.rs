//! The drift summary the service's metrics need (spec: `/metrics`), as keyed outputs: annotators
//! per gate state per project (from [`crate::gates`]), annotators per signal state per project
//! (each at its worst state over the project's scopes), firing alerts per project and severity
//! (from [`crate::scopes`] and [`crate::alerts`]), and the watchlist: per project and signal, the
//! `watchlist_size` annotators with the highest score at watch level or above ([`WatchLogic`]).
//! Each is a [`Metric`] with a multiplicity; [`DriftSummary`] adds them up.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dataflow::Diff;
use crate::drift::{DriftSettings, GateState, Severity, Signal, SignalState};
use crate::keyed::Keyed;
use crate::source::Catalog;

/// One fact of the drift summary; its multiplicity is a count.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Metric {
    /// An annotator whose gate in `project` is `state`.
    Gate { project: Box<str>, state: GateState },
    /// An annotator whose worst state of `signal` over the project's scopes is `state`.
    Signal { project: Box<str>, signal: Signal, state: SignalState },
    /// A firing alert.
    Firing { project: Box<str>, severity: Severity },
    /// An annotator on the project's watchlist of `signal`: its score and the recent gold
    /// accuracy behind its gate (`f64` bits).
    Watch { project: Box<str>, signal: Signal, annotator: Box<str>, score: u64, gold_accuracy: Option<u64> },
}

/// An annotator that may be on a watchlist: its best score over the project's scopes (`f64` bits,
/// at least 0.5) and the recent gold accuracy behind its gate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WatchCandidate {
    pub score: u64,
    pub annotator: Box<str>,
    pub gold_accuracy: Option<u64>,
}

/// The candidates of one watchlist, with multiplicities.
#[derive(Debug, Default)]
pub struct Candidates {
    candidates: BTreeMap<WatchCandidate, Diff>,
}

/// The keyed logic of the watchlists, one per (project id, signal).
pub struct WatchLogic {
    pub drift: DriftSettings,
}

impl Keyed for WatchLogic {
    type Key = (u64, Signal);
    type Update = WatchCandidate;
    type Diff = Diff;
    type State = Candidates;
    type Out = Metric;
    type Side = ();

    fn route(&(project, signal): &(u64, Signal)) -> u64 {
        project ^ signal as u64
    }

    fn apply(&mut self, _: &(u64, Signal), s: &mut Candidates, candidate: &WatchCandidate, &diff: &Diff) {
        let m = s.candidates.entry(candidate.clone()).or_default();
        *m += diff;
        if *m == 0 {
            s.candidates.remove(candidate);
        }
    }

    fn derive(
        &mut self,
        &(project, signal): &(u64, Signal),
        s: &mut Candidates,
        names: &Catalog,
        out: &mut Vec<Metric>,
    ) {
        let project = names.project(project);
        let mut list: Vec<&WatchCandidate> =
            s.candidates.iter().filter(|(_, m)| **m > 0).map(|(c, _)| c).collect();
        list.sort_by(|a, b| {
            f64::from_bits(b.score).total_cmp(&f64::from_bits(a.score)).then(a.annotator.cmp(&b.annotator))
        });
        list.truncate(self.drift.for_project(project).watchlist_size);
        out.extend(list.into_iter().map(|c| Metric::Watch {
            project: project.into(),
            signal,
            annotator: c.annotator.clone(),
            score: c.score,
            gold_accuracy: c.gold_accuracy,
        }));
    }

    fn is_empty(s: &Candidates) -> bool {
        s.candidates.is_empty()
    }
}

/// Drift state per project, for metrics with bounded labels: the [`Metric`]s added up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DriftSummary {
    /// Annotators per (project, gate state).
    pub gates: BTreeMap<(String, GateState), i64>,
    /// Annotators per (project, signal, state): each annotator at its worst state over the
    /// project's scopes.
    pub signals: BTreeMap<(String, Signal, SignalState), i64>,
    /// Firing alerts per (project, severity).
    pub firing: BTreeMap<(String, Severity), i64>,
    /// The watchlists' entries, with multiplicities.
    watch: BTreeMap<(String, Signal, String, u64, Option<u64>), i64>,
}

/// One annotator on the watchlist.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchEntry {
    pub project: String,
    pub signal: Signal,
    pub annotator_id: String,
    /// The signal's evidence relative to its alarm threshold.
    pub score: f64,
    /// Recent gold accuracy behind the annotator's gate.
    pub gold_accuracy: Option<f64>,
}

fn add<K: Ord>(map: &mut BTreeMap<K, i64>, key: K, diff: Diff) {
    use std::collections::btree_map::Entry;
    match map.entry(key) {
        Entry::Vacant(entry) => {
            if diff != 0 {
                entry.insert(diff);
            }
        }
        Entry::Occupied(mut entry) => {
            *entry.get_mut() += diff;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

impl DriftSummary {
    /// Adds changes of the drift summary.
    pub fn apply<'a>(&mut self, changes: impl IntoIterator<Item = &'a (Metric, Diff)>) {
        for (metric, diff) in changes {
            match metric {
                Metric::Gate { project, state } => add(&mut self.gates, (project.to_string(), *state), *diff),
                Metric::Signal { project, signal, state } => {
                    add(&mut self.signals, (project.to_string(), *signal, *state), *diff)
                }
                Metric::Firing { project, severity } => {
                    add(&mut self.firing, (project.to_string(), *severity), *diff)
                }
                Metric::Watch { project, signal, annotator, score, gold_accuracy } => add(
                    &mut self.watch,
                    (project.to_string(), *signal, annotator.to_string(), *score, *gold_accuracy),
                    *diff,
                ),
            }
        }
    }

    /// The watchlists, per (project, signal), highest score first.
    pub fn watchlist(&self) -> Vec<WatchEntry> {
        let mut list: Vec<WatchEntry> = self
            .watch
            .keys()
            .map(|(project, signal, annotator, score, gold)| WatchEntry {
                project: project.clone(),
                signal: *signal,
                annotator_id: annotator.clone(),
                score: f64::from_bits(*score),
                gold_accuracy: gold.map(f64::from_bits),
            })
            .collect();
        list.sort_by(|a, b| {
            (&a.project, a.signal)
                .cmp(&(&b.project, b.signal))
                .then(b.score.total_cmp(&a.score))
                .then(a.annotator_id.cmp(&b.annotator_id))
        });
        list
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.gates.is_empty() && self.signals.is_empty() && self.firing.is_empty() && self.watch.is_empty()
    }
}
