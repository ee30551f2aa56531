//! Annotators within a scope (spec section 2, per annotator): `n_labels`; `agreement_with_others`,
//! the mean over the annotator's pairable items of the share of the item's other annotators who
//! gave the same label (`sum over r of same_r / (r - 1)`, divided by the pairable items); `gold`,
//! its accuracy on gold answers with the Wilson interval; and its drift signals, the timeline
//! [`drift::evaluate`] forms from the annotator's exact event-time sums and its scope's
//! ([`crate::scopes::Basis`], which every worker receives).
//!
//! Each (scope, annotator) is kept by the worker that owns it. What it derives goes on: its own
//! record (without its gate) to [`JoinLogic`], which adds the gate of its project; its presence,
//! alarm days and signal states to its project's gate ([`crate::gates`], which has its gold answers
//! from [`crate::gates::GoldAnswerLogic`]); its day-by-day states and alarm episodes to its scope's
//! drift alerts ([`crate::alerts`]). Which readings a change of the scope's drift inputs makes
//! read again is in `reread.rs`; the join that forms the annotator record, in `join.rs`.

use std::collections::{BTreeMap, HashMap};

use foldhash::fast::RandomState;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::alerts::AlertInput;
use crate::dataflow::{Diff, Sums};
use crate::drift::{
    self, AnnotatorInputs, DriftSettings, ScopeInputs, Signal, SignalReport, SignalState, Timeline,
};
use crate::gates::{project_id, GateInput, GateKey};
use crate::keyed::Keyed;
use crate::label::LabelId;
use crate::objects::AnnotatorReport;
use crate::preferences::{preference_quality, PreferenceSettings, SideCounts};
use crate::records::{Entity, Record};
use crate::scopes::{add, Basis};
use crate::source::{AnnotatorId, Catalog, Day, ItemId, ScopeId};
use crate::stats;

mod join;
mod reread;

pub use join::{JoinInput, JoinLogic, JoinState};
use reread::{reads_changed_gold, scope_reread, DaysRead};

/// An annotator within its scope.
pub type AnnotatorKey = (ScopeId, AnnotatorId);

/// What one update adds to an annotator's sums (the values are the update's [`Sums`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AnnotatorSum {
    /// Labels on items with `raters` labels: `(labels, other labels that agreed, 0)`.
    Items { raters: u32 },
    /// Labels on gold items: `(answers, correct, 0)`.
    Gold,
    /// Agreement gaps of `day` (fixed point): `(items, sum d, sum d^2)`.
    Gap { day: Day },
    /// Label mix of `day`: `(own labels, summed peer share (fixed point), 0)`.
    Mix { day: Day, label: LabelId },
    /// Timed labels of `day` in a duration bucket: `(labels, 0, 0)`.
    Speed { day: Day, bucket: u16 },
    /// One gold answer: `(multiplicity, 0, 0)`. The annotator sums it by day for its drift; the
    /// answer itself goes to its gate ([`crate::gates::GoldAnswerLogic`]).
    Answer { ts_ms: i64, item: ItemId, correct: bool },
    /// Comparisons of preference events of `day` by the side chosen: `(left, right, ties)`.
    Side { day: Day },
}

impl AnnotatorSum {
    /// The event-time day of the drift input this adds to; `None` for the sums drift does not
    /// read by day.
    fn day(&self) -> Option<Day> {
        match *self {
            AnnotatorSum::Gap { day } | AnnotatorSum::Side { day } => Some(day),
            AnnotatorSum::Mix { day, .. } | AnnotatorSum::Speed { day, .. } => Some(day),
            AnnotatorSum::Answer { ts_ms, .. } => Some(crate::source::day_of(ts_ms)),
            AnnotatorSum::Items { .. } | AnnotatorSum::Gold => None,
        }
    }
}

/// The exact sums of one annotator in one scope, and its drift timeline as last evaluated.
#[derive(Debug, Default)]
pub struct AnnotatorState {
    /// `raters -> [labels, agreeing others]`.
    by_raters: BTreeMap<u32, [i64; 2]>,
    /// `[answers, correct]` on gold items.
    gold: [i64; 2],
    drift: AnnotatorInputs,
    timeline: Option<Timeline>,
    /// The sides chosen in its comparisons (preference events).
    sides: SideCounts,
    /// Whether an update changed its own sums since it was last derived.
    updated: bool,
    /// The earliest day of its drift inputs an update changed since it was last derived: its
    /// timeline is evaluated again from that day ([`drift::reevaluate`]).
    own_from: Option<Day>,
    /// The JSON of drift signals' current reports in its last record, each kept while its report
    /// stands: when the timeline is evaluated again, those whose report moved are dropped (all of
    /// them where a re-evaluation moved the timeline without this annotator's own inputs), the
    /// gold report's alone when it is restated ([`reports_json`]).
    reports: Vec<(Signal, Box<RawValue>)>,
}

/// What an annotator derives, and where it goes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AnnotatorOut {
    /// The annotator's record without its gate, for [`JoinLogic`].
    Own(AnnotatorKey, Record),
    /// An input of the gate of the annotator in the scope's project.
    Gate(GateKey, GateInput),
    /// An input of the scope's drift alerts.
    Alert(ScopeId, AlertInput),
}

/// The keyed logic of annotators within scopes; its side input is the scopes' drift inputs.
pub struct AnnotatorLogic {
    pub drift: DriftSettings,
    /// The `[preferences]` settings (the position-bias flag's margin).
    pub preferences: PreferenceSettings,
    /// The drift inputs of every scope (restricted as [`crate::scopes`] says).
    basis: HashMap<ScopeId, ScopeInputs, RandomState>,
    /// Scopes whose drift inputs changed in this epoch, and the days changed.
    changed: HashMap<ScopeId, ChangedDays, RandomState>,
    /// Of a changed scope in this epoch: whether its annotators' gold readings on a day read one
    /// of its changed gold days (the same for all of them: computed once per scope and day, when
    /// touched and when re-evaluated).
    gold_read: HashMap<ScopeId, DaysRead, RandomState>,
    /// Touched in this epoch by its scope's drift inputs alone: its timeline is re-evaluated
    /// from its last one, reading again only the readings that read a changed day
    /// ([`drift::reevaluate`]).
    reread: std::collections::HashSet<AnnotatorKey, RandomState>,
    /// What changed of each scope's drift inputs in this epoch, for [`AnnotatorLogic::reread`].
    reread_days: HashMap<ScopeId, ChangedDays, RandomState>,
    /// Re-evaluated in this epoch ([`Keyed::unchanged`]) to a timeline that differs from its
    /// last one: derived from it as it is.
    fresh: std::collections::HashSet<AnnotatorKey, RandomState>,
    /// Each scope's median label time as its annotators' too-fast readings read it, day by day
    /// ([`drift::scope_medians`]), as of the last epoch that changed its label times.
    medians: HashMap<ScopeId, Vec<(Day, Option<u16>)>, RandomState>,
    /// Whether this epoch's changed label times were narrowed to the medians they move
    /// ([`AnnotatorLogic::narrow_speed`]).
    narrowed: bool,
}

/// The days of a scope's drift inputs an epoch changed.
#[derive(Debug, Default)]
struct ChangedDays {
    /// Days of pooled gold answers, ascending, each once.
    gold: Vec<Day>,
    /// The earliest day of label times.
    speed: Option<Day>,
}

impl AnnotatorLogic {
    pub fn new(drift: DriftSettings) -> AnnotatorLogic {
        AnnotatorLogic {
            drift,
            preferences: PreferenceSettings::default(),
            basis: HashMap::default(),
            changed: HashMap::default(),
            gold_read: HashMap::default(),
            reread: Default::default(),
            reread_days: HashMap::default(),
            fresh: Default::default(),
            medians: HashMap::default(),
            narrowed: false,
        }
    }

    /// Narrows the changed label times of each scope to what its annotators' too-fast readings
    /// read of them, the scope's median label time of the days before theirs: `speed` becomes the
    /// last day before the first median that moved, or `None` if none did (a relabel that moves
    /// one label's time among millions moves no median, and then re-evaluates nobody). Keeps the
    /// medians for the next epoch. Once per epoch with side updates, before any key is touched.
    fn narrow_speed(&mut self) {
        if std::mem::replace(&mut self.narrowed, true) {
            return;
        }
        for (scope, changed) in &mut self.changed {
            let Some(from) = changed.speed else { continue };
            let empty = ScopeInputs::default();
            let basis = self.basis.get(scope).unwrap_or(&empty);
            match self.medians.get_mut(scope) {
                // The first label times of the scope seen: every day counts as changed.
                None => {
                    self.medians.insert(*scope, drift::scope_medians(basis, Day::MIN));
                }
                Some(kept) => {
                    let at = kept.partition_point(|&(day, _)| day < from);
                    let now = drift::scope_medians(basis, from);
                    // Entries before the first difference are read alike by every day up to
                    // and including the earlier of the two days that differ.
                    let moved = kept[at..].iter().zip(&now).find(|(was, is)| was != is);
                    changed.speed = match moved {
                        Some((was, is)) => Some(was.0.min(is.0)),
                        None if kept.len() - at == now.len() => None,
                        None => kept.get(at + now.len()).or(now.get(kept.len() - at)).map(|&(day, _)| day),
                    };
                    kept.truncate(at);
                    kept.extend(now);
                }
            }
        }
    }
}

impl Keyed for AnnotatorLogic {
    type Key = AnnotatorKey;
    type Update = AnnotatorSum;
    type Diff = Sums;
    type State = AnnotatorState;
    type Out = AnnotatorOut;
    type Side = Basis;
    const KEEP_OUTPUTS: bool = true;

    fn route(&(scope, annotator): &AnnotatorKey) -> u64 {
        scope.rotate_left(32) ^ annotator
    }

    fn apply(&mut self, _: &AnnotatorKey, a: &mut AnnotatorState, update: &AnnotatorSum, &(x, y, z): &Sums) {
        a.updated = true;
        if let Some(day) = update.day() {
            a.own_from = Some(a.own_from.map_or(day, |from| from.min(day)));
        }
        match *update {
            AnnotatorSum::Items { raters } => add(&mut a.by_raters, raters, [x, y]),
            AnnotatorSum::Gold => {
                a.gold[0] += x;
                a.gold[1] += y;
            }
            AnnotatorSum::Gap { day } => add(&mut a.drift.gap, day, [x, y, z]),
            AnnotatorSum::Mix { day, label } => add(&mut a.drift.mix, (day, label), [x, y]),
            AnnotatorSum::Speed { day, bucket } => add(&mut a.drift.speed, (day, bucket), [x]),
            AnnotatorSum::Answer { ts_ms, correct, .. } => a.drift.add_gold(ts_ms, correct, x),
            AnnotatorSum::Side { day } => {
                a.sides += SideCounts { left: x, right: y, ties: z };
                add(&mut a.drift.sides, day, [x, y, z]);
            }
        }
    }

    fn derive(
        &mut self,
        &key: &AnnotatorKey,
        a: &mut AnnotatorState,
        names: &Catalog,
        out: &mut Vec<AnnotatorOut>,
    ) {
        let (scope, annotator) = key;
        let (project, task) = names.scope_name(scope);
        let config = self.drift.for_project(project);
        let label_name = |l: LabelId| names.labels.get(l).to_json_text();
        let empty = ScopeInputs::default();
        let basis = self.basis.get(&scope).unwrap_or(&empty);
        let full = || drift::evaluate_with(&a.drift, basis, config, &self.preferences, &label_name);
        if !self.fresh.remove(&key) {
            a.timeline = match a.timeline.take() {
                // Evaluated before: again from the first day its own inputs changed, and where
                // its scope's changes of this epoch are read.
                Some(previous) if !a.drift.is_empty() => {
                    let (gold, _, speed_from) =
                        scope_reread(&mut self.gold_read, &self.reread_days, scope, config, basis);
                    let reread = drift::Reread { gold: &gold, speed_from, own_from: a.own_from };
                    let timeline = drift::reevaluate(
                        &a.drift,
                        basis,
                        config,
                        &self.preferences,
                        &label_name,
                        &previous,
                        reread,
                    );
                    // A report that reads as before keeps its JSON: a label moves two or three
                    // of its annotator's current readings, seldom all of them.
                    a.reports.retain(|&(signal, _)| previous.report(signal) == timeline.report(signal));
                    Some(timeline)
                }
                _ => {
                    a.reports.clear();
                    (!a.drift.is_empty()).then(full)
                }
            };
            debug_assert!(a.timeline.as_ref().is_none_or(|timeline| *timeline == full()));
        }
        (a.updated, a.own_from) = (false, None);
        let name = names.annotators.name(annotator);
        if !a.by_raters.is_empty() {
            let object = AnnotatorReport {
                annotator_id: name,
                n_labels: a.by_raters.values().map(|[labels, _]| labels).sum(),
                agreement_with_others: agreement_with_others(&a.by_raters),
                gold: stats::gold_accuracy(a.gold[0], a.gold[1]),
                drift: a.timeline.as_ref().map(|t| {
                    reports_json(&mut a.reports, &t.current);
                    a.reports.iter().map(|(s, json)| (s.name(), &**json)).collect()
                }),
                preferences: (a.sides != SideCounts::default())
                    .then(|| preference_quality(a.sides, self.preferences.position_margin)),
            };
            out.push(AnnotatorOut::Own(
                key,
                Record::new(project, task, Entity::Annotator(names.annotators.shared(annotator)), &object),
            ));
        } else {
            // No record shows this timeline's reports: none is kept for the next one.
            a.reports.clear();
        }
        let gate = (project_id(project), annotator);
        out.push(AnnotatorOut::Gate(gate, GateInput::Present { scope }));
        let Some(timeline) = &a.timeline else { return };
        for episode in &timeline.episodes {
            if config.gate_on_alarm.contains(&episode.signal) {
                let (signal, start, end) = (episode.signal, episode.start, episode.end);
                out.push(AnnotatorOut::Gate(gate, GateInput::Alarm { scope, signal, start, end }));
            }
            if config.annotator_alerts {
                let explanation = episode.explanation.clone();
                let (signal, start, end) = (episode.signal, episode.start, episode.end);
                out.push(AnnotatorOut::Alert(
                    scope,
                    AlertInput::Episode { annotator, signal, start, end, explanation },
                ));
            }
        }
        for (signal, report) in &timeline.current {
            let score = report.reading.as_ref().map(|r| r.score.to_bits());
            out.push(AnnotatorOut::Gate(
                gate,
                GateInput::Signal { scope, signal: *signal, state: report.state, score },
            ));
        }
        // One input for all its days and signals (a re-evaluation compares them all again).
        let counted = Signal::ALL.into_iter().filter(|s| !s.is_preference() || !a.drift.sides.is_empty());
        let evaluated = counted.clone().fold(0u8, |mask, signal| mask | signal.bit());
        let alarmed = timeline
            .days
            .iter()
            .map(|(day, states)| {
                let alarmed = counted
                    .clone()
                    .filter(|&signal| states[signal as usize] == SignalState::Alarm)
                    .fold(0u8, |mask, signal| mask | signal.bit());
                (*day, alarmed)
            })
            .collect();
        out.push(AnnotatorOut::Alert(scope, AlertInput::Population { evaluated, alarmed }));
    }

    /// Touched by its scope's drift inputs alone: its timeline is re-evaluated from its last one,
    /// reading again only the readings that read a changed day ([`drift::reevaluate`]); after a
    /// change of the scope's gold answers alone, where no level moves, it is restated in place
    /// ([`drift::restate`]: the states stand, and only the numbers shown are read again). When
    /// that moves nothing (often: a scope's gold accuracy moves a reading's score, rarely its
    /// level), every output stands as it was.
    fn unchanged(&mut self, &key: &AnnotatorKey, a: &mut AnnotatorState, names: &Catalog) -> bool {
        if !self.reread.remove(&key) || a.updated || a.drift.is_empty() {
            return false;
        }
        let Some(previous) = a.timeline.as_mut() else { return false };
        let (scope, _) = key;
        let config = self.drift.for_project(names.scope_name(scope).0);
        let label_name = |l: LabelId| names.labels.get(l).to_json_text();
        let empty = ScopeInputs::default();
        let basis = self.basis.get(&scope).unwrap_or(&empty);
        let (gold, gold_from, speed_from) =
            scope_reread(&mut self.gold_read, &self.reread_days, scope, config, basis);
        // Gold alone, where most often no level moves: the timeline is restated in place.
        let restated = speed_from
            .is_none()
            .then(|| {
                let preferences = &self.preferences;
                drift::restate(&a.drift, basis, config, preferences, &label_name, previous, &gold, gold_from)
            })
            .flatten();
        // Of the reports its record shows, a restatement moves only gold's.
        if restated == Some(true) {
            a.reports.retain(|(signal, _)| *signal != Signal::Gold);
        }
        let moved = restated.unwrap_or_else(|| {
            let reread = drift::Reread { gold: &gold, speed_from, own_from: None };
            let timeline =
                drift::reevaluate(&a.drift, basis, config, &self.preferences, &label_name, previous, reread);
            let moved = timeline != *previous;
            *previous = timeline;
            a.reports.clear();
            moved
        });
        debug_assert_eq!(
            *previous,
            drift::evaluate_with(&a.drift, basis, config, &self.preferences, &label_name)
        );
        if moved {
            self.fresh.insert(key);
        }
        !moved
    }

    /// Its own records leave apart, for [`JoinLogic`] alone: the other outputs go to two readers,
    /// each of which gets a copy of what it reads.
    fn is_record(out: &AnnotatorOut) -> bool {
        matches!(out, AnnotatorOut::Own(..))
    }

    fn is_empty(a: &AnnotatorState) -> bool {
        a.by_raters.is_empty() && a.gold == [0, 0] && a.drift.is_empty() && a.sides == SideCounts::default()
    }

    fn side(&mut self, update: &Basis, diff: Diff) {
        self.gold_read.clear();
        let (scope, day) = update.apply(&mut self.basis, diff);
        let changed = self.changed.entry(scope).or_default();
        match update {
            Basis::Gold { .. } => {
                if let Err(at) = changed.gold.binary_search(&day) {
                    changed.gold.insert(at, day);
                }
            }
            Basis::Speed { .. } => changed.speed = Some(changed.speed.map_or(day, |d| d.min(day))),
        }
    }

    /// An annotator is touched when it has a day whose readings read a changed day of its scope:
    /// for label times, any day on or after the earliest changed ([`drift`]'s speed signals
    /// compare with the scope's days before theirs); for gold answers, a day whose gold baseline
    /// reads a changed day ([`drift::reads_scope_gold_of`]).
    fn touched(&mut self, &key: &AnnotatorKey, a: &AnnotatorState, names: &Catalog) -> bool {
        self.narrow_speed();
        let (scope, _) = key;
        let Some(changed) = self.changed.get(&scope) else { return false };
        let Some(days) = a.timeline.as_ref().map(|t| &t.days) else { return false };
        let Some(&(last, _)) = days.last() else { return false };
        let touched = changed.speed.is_some_and(|day| last >= day) || {
            let Some(&first) = changed.gold.first() else { return false };
            let config = self.drift.for_project(names.scope_name(scope).0);
            let empty = ScopeInputs::default();
            let basis = self.basis.get(&scope).unwrap_or(&empty);
            let from = days.partition_point(|&(day, _)| day < first);
            let memo = self.gold_read.entry(scope).or_default();
            days[from..].iter().any(|&(day, _)| reads_changed_gold(memo, day, &changed.gold, config, basis))
        };
        if touched && !a.updated {
            self.reread.insert(key);
        }
        touched
    }

    /// The scopes' changes of an epoch are read by the keys it derives alone.
    fn drain(&mut self, _: &mut dyn FnMut(AnnotatorOut, Diff)) {
        self.reread_days.clear();
    }

    fn side_done(&mut self) {
        // The medians follow every change, whether or not this worker has a key to touch.
        self.narrow_speed();
        self.narrowed = false;
        self.reread_days.clear();
        self.reread_days.extend(self.changed.drain());
        self.basis.retain(|_, inputs| !(inputs.gold_days.is_empty() && inputs.speed.is_empty()));
        self.medians.retain(|scope, _| self.basis.contains_key(scope));
    }
}

/// Brings `reports` to the JSON of each report of `current`, in its order: a report whose JSON
/// `reports` holds is not serialised again (its JSON is dropped whenever the report may have
/// moved, see [`AnnotatorState::reports`]). After a change of a scope's gold accuracy most of its
/// annotators' gold readings move and nothing else of theirs, and serialising every signal's
/// explanation again was most of forming their records.
fn reports_json(reports: &mut Vec<(Signal, Box<RawValue>)>, current: &[(Signal, SignalReport)]) {
    let mut last = std::mem::take(reports);
    for (signal, report) in current {
        let json = match last.iter().position(|(s, _)| s == signal) {
            Some(i) => last.swap_remove(i).1,
            None => serde_json::value::to_raw_value(report).expect("a signal's report serialises"),
        };
        debug_assert_eq!(json.get(), serde_json::to_string(report).expect("serialises"), "{signal:?}");
        reports.push((*signal, json));
    }
}

/// `agreement_with_others` from `raters -> [labels, agreeing others]`: `None` without a pairable
/// item.
fn agreement_with_others(by_raters: &BTreeMap<u32, [i64; 2]>) -> Option<f64> {
    let pairable: i64 = by_raters.range(2..).map(|(_, [labels, _])| labels).sum();
    (pairable > 0).then(|| {
        by_raters.range(2..).map(|(&r, &[_, same])| same as f64 / f64::from(r - 1)).sum::<f64>()
            / pairable as f64
    })
}

#[cfg(test)]
mod tests;
