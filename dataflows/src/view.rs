//! The materialised state of the quality dataflow's output, and the report objects of spec
//! sections 3 and 4 formed from it. The view absorbs [`Fact`] updates in any order and batching;
//! [`QualityView::settle`] then refreshes what is derived from many facts (the mean Cohen's
//! kappa of a scope) and says which entities changed, so that only those need to be published.
//! Reading forms the final (float) numbers.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use foldhash::fast::RandomState;
use serde::Serialize;

use crate::alerts;
use crate::dataflow::{Diff, Fact};
use crate::drift::{
    self, Alert, AlertStatus, AnnotatorInputs, Decision, DriftSettings, Gate, GateState, PopulationCounts,
    ScopeInputs, Severity, Signal, SignalReport, SignalState, Timeline,
};
use crate::label::{Label, LabelId};
use crate::source::{is_window, window_size_name, AnnotatorId, Catalog, Day, ItemId, ScopeId};
use crate::stats::{self, Coincidences, GoldAccuracy, Level};

/// Annotators re-evaluated per settle beyond those whose own inputs changed: bounds the work of an
/// epoch after a late gold answer, which touches every annotator of its scope with later readings.
const DRIFT_BUDGET: usize = 16;

/// Fixed-point scale of summed kappas: sums of integers cancel exactly on retraction, so the
/// scope's mean does not depend on the order in which pairs changed. The rounding (1e-18 a pair)
/// stays far below the spec's 1e-9 tolerance.
const KAPPA_SCALE: f64 = 1e18;

/// Adds `delta` into the sum stored under `key`, removing the entry when it returns to zero.
fn add_sum<K: Ord, const N: usize>(map: &mut BTreeMap<K, [i64; N]>, key: K, delta: [i64; N]) {
    use std::collections::btree_map::Entry;
    match map.entry(key) {
        Entry::Vacant(entry) => {
            if delta.iter().any(|d| *d != 0) {
                entry.insert(delta);
            }
        }
        Entry::Occupied(mut entry) => {
            for (sum, d) in entry.get_mut().iter_mut().zip(delta) {
                *sum += d;
            }
            if entry.get().iter().all(|sum| *sum == 0) {
                entry.remove();
            }
        }
    }
}

/// Adds `delta` into the sum stored under `key` in a short list, removing the entry when it
/// returns to zero.
fn add_small<K: PartialEq, const N: usize>(list: &mut Vec<(K, [i64; N])>, key: K, delta: [i64; N]) {
    match list.iter().position(|(k, _)| *k == key) {
        Some(i) => {
            for (sum, d) in list[i].1.iter_mut().zip(delta) {
                *sum += d;
            }
            if list[i].1.iter().all(|sum| *sum == 0) {
                list.swap_remove(i);
            }
        }
        None => {
            if delta.iter().any(|d| *d != 0) {
                list.push((key, delta));
            }
        }
    }
}

/// Adds `delta` to a confusion-table cell, removing the cell when it returns to zero.
fn add_cell(cells: &mut Vec<((LabelId, LabelId), i64)>, key: (LabelId, LabelId), delta: i64) {
    match cells.iter().position(|(k, _)| *k == key) {
        Some(i) => {
            cells[i].1 += delta;
            if cells[i].1 == 0 {
                cells.swap_remove(i);
            }
        }
        None if delta != 0 => cells.push((key, delta)),
        None => {}
    }
}

type Map<K, V> = HashMap<K, V, RandomState>;
type Set<K> = HashSet<K, RandomState>;
/// An item's consensus facts `((top, label), multiplicity)`.
type ConsensusFacts = Vec<((u32, LabelId), Diff)>;

/// Everything the view knows about one annotator within a scope.
#[derive(Debug, Default)]
struct AnnotatorState {
    /// `(raters, [items, same])`.
    by_raters: Vec<(u32, [i64; 2])>,
    /// `[answers, correct]` on gold items.
    gold: [i64; 2],
    /// Event-time sums of the drift signals.
    drift: AnnotatorInputs,
    /// The drift signals as of the last evaluation.
    timeline: Option<Timeline>,
}

impl AnnotatorState {
    /// No labels and no gold answers: the annotator has left the scope.
    fn is_empty(&self) -> bool {
        self.by_raters.is_empty() && self.gold == [0, 0] && self.drift.is_empty()
    }
}

/// One annotator pair (`a < b` by id) within a scope.
#[derive(Debug, Default)]
struct PairState {
    /// Confusion table `((label_a, label_b), count)`.
    cells: Vec<((LabelId, LabelId), i64)>,
    /// This pair's Cohen's kappa as counted in its scope's sum (fixed point), as of the last
    /// settle.
    counted_kappa: Option<i128>,
    /// The pair's statistics as of the last settle.
    stats: Option<stats::PairAgreement>,
}

/// The consolidated aggregates of one scope.
#[derive(Debug, Default)]
struct ScopeState {
    /// `raters -> [items, agreeing_pairs, items with a majority label]`.
    items: BTreeMap<u32, [i64; 3]>,
    /// `(raters, label) -> [count]`.
    shares: BTreeMap<(u32, LabelId), [i64; 1]>,
    /// `(raters, c, k) -> [weight]`, `c <= k`.
    coincidences: BTreeMap<(u32, LabelId, LabelId), [i64; 1]>,
    /// The pairable items, marginals and coincidence weights again, by the day of the items'
    /// newest label (scopes, not windows): the alpha alert's history.
    day_items: BTreeMap<(Day, u32), [i64; 1]>,
    day_shares: BTreeMap<(Day, u32, LabelId), [i64; 1]>,
    day_coincidences: BTreeMap<(Day, u32, LabelId, LabelId), [i64; 1]>,
    annotators: Map<AnnotatorId, AnnotatorState>,
    pairs: Map<(AnnotatorId, AnnotatorId), PairState>,
    /// Consensus facts `((top, label), multiplicity)` per item; at rest one per tied label.
    consensus: Map<ItemId, ConsensusFacts>,
    /// Pooled `[answers, correct]` on gold items.
    gold: [i64; 2],
    /// Sum (fixed point) and count of the defined pair kappas, as of the last settle.
    kappa_sum: i128,
    kappa_count: i64,
    /// Scope-wide sums the drift signals compare against.
    drift: ScopeInputs,
    /// Annotators evaluated and in alarm, per (signal, day), as of the last evaluation.
    population: PopulationCounts,
    /// The scope's alerts as of the last evaluation, by id.
    alerts: BTreeMap<String, Alert>,
}

/// Entities whose published objects changed since the last settle, each list sorted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    pub scopes: Vec<ScopeId>,
    pub pairs: Vec<(ScopeId, AnnotatorId, AnnotatorId)>,
    pub annotators: Vec<(ScopeId, AnnotatorId)>,
    pub items: Vec<(ScopeId, ItemId)>,
    /// Gate records to publish, in order.
    pub gates: Vec<GateRecord>,
    /// Alerts that changed: the alert now, or `None` for an alert whose condition no longer
    /// follows from the data (its earlier record is withdrawn).
    pub alerts: Vec<(String, Option<Alert>)>,
    /// Alerts that started firing (were not firing before): (project, severity).
    pub fired: Vec<(String, Severity)>,
}

/// Drift state per project, for metrics with bounded labels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DriftSummary {
    /// Annotators per (project, gate state).
    pub gates: BTreeMap<(String, GateState), i64>,
    /// Annotators per (project, signal, state): each annotator at its worst state over the
    /// project's scopes.
    pub signals: BTreeMap<(String, Signal, SignalState), i64>,
    /// Firing alerts per (project, severity).
    pub firing: BTreeMap<(String, Severity), i64>,
    /// The most flagged annotators per (project, signal), at watch level or worse.
    pub watchlist: Vec<WatchEntry>,
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

/// A gate decision as published to the gating topic (spec section 4): one per change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GateRecord {
    pub project: String,
    pub annotator_id: String,
    /// The gate now.
    pub state: GateState,
    /// The state published before this record (none for an annotator's first record).
    pub from: Option<GateState>,
    /// Why the gate is in its state now.
    pub reason: String,
    /// The recent gold accuracy the decision rested on.
    pub evidence: Option<drift::Evidence>,
    /// Event time of the decision (absent while in warm-up).
    pub at: Option<String>,
    /// Set when earlier decisions were re-evaluated because gold answers they rested on were
    /// corrected or deleted: `from` no longer follows from the data.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub revised: bool,
}

#[derive(Debug, Default)]
struct Dirty {
    scopes: Set<ScopeId>,
    pairs: Set<(ScopeId, AnnotatorId, AnnotatorId)>,
    annotators: Set<(ScopeId, AnnotatorId)>,
    items: Set<(ScopeId, ItemId)>,
    /// Annotators whose drift inputs changed.
    drift: Set<(ScopeId, AnnotatorId)>,
    /// Scopes whose scope-wide drift inputs changed, with the earliest day that changed: their
    /// annotators with readings after that day are re-evaluated.
    drift_scopes: Map<ScopeId, Day>,
}

fn sorted<T: Ord>(set: &mut Set<T>) -> Vec<T> {
    let mut list: Vec<T> = set.drain().collect();
    list.sort_unstable();
    list
}

/// The live quality state: what the dataflow's output says now.
#[derive(Debug, Default)]
pub struct QualityView {
    /// Scopes (windows apart), by id.
    scopes: BTreeMap<ScopeId, ScopeState>,
    /// Whether to record which entities changed (for live publishing); a one-shot report
    /// does not need it and runs faster without.
    track_changes: bool,
    dirty: Dirty,
    /// Without change tracking: whether any pair changed since derived state was refreshed.
    untracked_pairs_changed: bool,
    /// Drift, gate and alert settings.
    drift: DriftSettings,
    /// Gates per (project, annotator) as of the last evaluation.
    gates: BTreeMap<(String, AnnotatorId), Gate>,
    /// Annotators to re-evaluate because their scope's inputs changed, not yet done.
    pending_drift: BTreeSet<(ScopeId, AnnotatorId)>,
    /// Window scopes (scope-level numbers only), by id.
    windows: BTreeMap<ScopeId, ScopeState>,
    /// The window scopes with labels, as `(scope, size_ms, start_ms, window)`: a scope's windows,
    /// and the newest of each size, without a scan of every window. Kept up to date by `settle`
    /// (for the windows that changed) and `report` (for all).
    window_index: BTreeSet<(ScopeId, i64, i64, ScopeId)>,
    /// Alerts that started firing since the last settle: (project, severity).
    fired: Vec<(String, Severity)>,
}

impl QualityView {
    /// A view that records which entities change, for [`QualityView::settle`] to report.
    pub fn with_change_tracking() -> QualityView {
        QualityView { track_changes: true, ..QualityView::default() }
    }

    /// Uses `settings` for drift signals, gates and alerts (the built-in defaults otherwise).
    pub fn with_drift(mut self, settings: DriftSettings) -> QualityView {
        self.drift = settings;
        self
    }

    /// Applies one update of the dataflow's output.
    pub fn apply(&mut self, fact: &Fact, diff: Diff) {
        match *fact {
            Fact::ScopeItems { scope, day, raters, items, agreeing_pairs, majority } => {
                let sums = [items * diff, agreeing_pairs * diff, majority * diff];
                let s = self.scope_mut(scope);
                add_sum(&mut s.items, raters, sums);
                if raters >= 2 && !is_window(scope) {
                    add_sum(&mut s.day_items, (day, raters), [items * diff]);
                }
                self.mark_scopes(scope);
            }
            Fact::CategoryShare { scope, day, raters, label, count } => {
                let s = self.scope_mut(scope);
                add_sum(&mut s.shares, (raters, label), [count * diff]);
                if raters >= 2 && !is_window(scope) {
                    add_sum(&mut s.day_shares, (day, raters, label), [count * diff]);
                }
                self.mark_scopes(scope);
            }
            Fact::Coincidence { scope, day, raters, c, k, weight } => {
                let s = self.scope_mut(scope);
                add_sum(&mut s.coincidences, (raters, c, k), [weight * diff]);
                if !is_window(scope) {
                    add_sum(&mut s.day_coincidences, (day, raters, c, k), [weight * diff]);
                }
                self.mark_scopes(scope);
            }
            Fact::AnnotatorItems { scope, annotator, raters, items, same } => {
                let s = self.scope_mut(scope);
                let a = s.annotators.entry(annotator).or_default();
                add_small(&mut a.by_raters, raters, [items * diff, same * diff]);
                self.mark_annotators((scope, annotator));
                self.mark_scopes(scope);
            }
            Fact::AnnotatorGold { scope, annotator, answers, correct } => {
                let s = self.scope_mut(scope);
                s.gold[0] += answers * diff;
                s.gold[1] += correct * diff;
                let a = s.annotators.entry(annotator).or_default();
                a.gold[0] += answers * diff;
                a.gold[1] += correct * diff;
                self.mark_annotators((scope, annotator));
                self.mark_scopes(scope);
            }
            Fact::PairCell { scope, a, b, label_a, label_b, count } => {
                let pair = self.scope_mut(scope).pairs.entry((a, b)).or_default();
                add_cell(&mut pair.cells, (label_a, label_b), count * diff);
                self.mark_pairs((scope, a, b));
            }
            Fact::GapDay { scope, annotator, day, items, sum, sum_sq } => {
                let a = self.scope_mut(scope).annotators.entry(annotator).or_default();
                add_sum(&mut a.drift.gap, day, [items * diff, sum * diff, sum_sq * diff]);
                self.mark_drift((scope, annotator));
            }
            Fact::MixDay { scope, annotator, day, label, own, peer } => {
                let a = self.scope_mut(scope).annotators.entry(annotator).or_default();
                add_sum(&mut a.drift.mix, (day, label), [own * diff, peer * diff]);
                self.mark_drift((scope, annotator));
            }
            Fact::SpeedDay { scope, annotator, day, bucket, count } => {
                let s = self.scope_mut(scope);
                add_sum(
                    &mut s.annotators.entry(annotator).or_default().drift.speed,
                    (day, bucket),
                    [count * diff],
                );
                add_sum(&mut s.drift.speed, (day, bucket), [count * diff]);
                self.mark_drift((scope, annotator));
                self.mark_drift_scope(scope, day);
            }
            Fact::GoldAnswer { scope, annotator, item, ts_ms, correct } => {
                let s = self.scope_mut(scope);
                let day = ts_ms.div_euclid(crate::source::DAY_MS) as Day;
                add_sum(&mut s.drift.gold_days, day, [diff, if correct { 0 } else { diff }]);
                let gold = &mut s.annotators.entry(annotator).or_default().drift.gold;
                let m = gold.entry((ts_ms, item, correct)).or_default();
                *m += diff;
                if *m == 0 {
                    gold.remove(&(ts_ms, item, correct));
                }
                self.mark_drift((scope, annotator));
                self.mark_drift_scope(scope, day);
            }
            Fact::Consensus { scope, item, top, label } => {
                let s = self.scope_mut(scope);
                let values = s.consensus.entry(item).or_default();
                match values.iter().position(|(v, _)| *v == (top, label)) {
                    Some(i) => {
                        values[i].1 += diff;
                        if values[i].1 == 0 {
                            values.swap_remove(i);
                        }
                    }
                    None => values.push(((top, label), diff)),
                }
                if values.is_empty() {
                    s.consensus.remove(&item);
                }
                self.mark_items((scope, item));
            }
        }
    }

    fn mark_scopes(&mut self, scope: ScopeId) {
        if self.track_changes {
            self.dirty.scopes.insert(scope);
        }
    }

    fn mark_annotators(&mut self, key: (ScopeId, AnnotatorId)) {
        if self.track_changes {
            self.dirty.annotators.insert(key);
        }
    }

    fn mark_drift(&mut self, key: (ScopeId, AnnotatorId)) {
        if self.track_changes {
            self.dirty.drift.insert(key);
        }
    }

    fn mark_drift_scope(&mut self, scope: ScopeId, day: Day) {
        if self.track_changes {
            let earliest = self.dirty.drift_scopes.entry(scope).or_insert(day);
            *earliest = (*earliest).min(day);
        }
    }

    fn mark_pairs(&mut self, key: (ScopeId, AnnotatorId, AnnotatorId)) {
        if self.track_changes {
            self.dirty.pairs.insert(key);
        } else {
            self.untracked_pairs_changed = true;
        }
    }

    fn mark_items(&mut self, key: (ScopeId, ItemId)) {
        if self.track_changes {
            self.dirty.items.insert(key);
        }
    }

    fn scope_mut(&mut self, scope: ScopeId) -> &mut ScopeState {
        if is_window(scope) {
            return self.windows.entry(scope).or_default();
        }
        self.scopes.entry(scope).or_default()
    }

    /// Brings derived state up to date with the facts applied so far and returns the entities
    /// whose objects changed since the last settle. Call it once the facts of an epoch are all
    /// applied; readers see settled state.
    pub fn settle(&mut self, catalog: &Catalog) -> Changes {
        self.refresh_derived();
        let (gates, alerts) = self.refresh_drift(catalog, false);
        // Windows are published as scope objects only.
        self.dirty.annotators.retain(|&(scope, _)| !is_window(scope));
        let scopes = sorted(&mut self.dirty.scopes);
        for &scope in scopes.iter().filter(|&&s| is_window(s)) {
            self.index_window(scope, catalog);
        }
        Changes {
            scopes,
            pairs: sorted(&mut self.dirty.pairs),
            annotators: sorted(&mut self.dirty.annotators),
            items: sorted(&mut self.dirty.items),
            gates,
            alerts,
            fired: std::mem::take(&mut self.fired),
        }
    }

    /// Re-evaluates drift, gates and alerts: for the annotators whose inputs changed (or all of
    /// them), then the gates of their projects and the alerts of their scopes. Returns the gate
    /// records and alert changes to publish, and marks the annotator objects that changed.
    fn refresh_drift(
        &mut self,
        catalog: &Catalog,
        all: bool,
    ) -> (Vec<GateRecord>, Vec<(String, Option<Alert>)>) {
        let mut targets: Vec<(ScopeId, AnnotatorId)> = if all {
            self.scopes.iter().flat_map(|(&s, state)| state.annotators.keys().map(move |&a| (s, a))).collect()
        } else {
            let mut t: Vec<_> = self.dirty.drift.drain().collect();
            for (scope, changed) in self.dirty.drift_scopes.drain() {
                if let Some(s) = self.scopes.get(&scope) {
                    // Readings on a day use the scope's earlier days only.
                    let affected = |a: &AnnotatorState| {
                        a.timeline.as_ref().and_then(|t| t.days.last()).is_some_and(|&(day, _)| day > changed)
                    };
                    self.pending_drift
                        .extend(s.annotators.iter().filter(|(_, a)| affected(a)).map(|(&a, _)| (scope, a)));
                }
            }
            // Annotators whose own inputs changed go first; those touched only through their
            // scope's inputs (a late gold answer) are re-evaluated a bounded number per settle.
            for key in &t {
                self.pending_drift.remove(key);
            }
            while t.len() < DRIFT_BUDGET {
                let Some(key) = self.pending_drift.pop_first() else { break };
                t.push(key);
            }
            t
        };
        targets.sort_unstable();
        targets.dedup();
        let label_name = |l: LabelId| catalog.labels.get(l).to_json_text();
        let mut gate_keys: BTreeSet<(String, AnnotatorId)> = BTreeSet::new();
        let mut alert_scopes: Vec<ScopeId> = Vec::new();
        for &(scope, annotator) in &targets {
            let project = catalog.scope_name(scope).0;
            let config = self.drift.for_project(project);
            let s = self.scopes.get_mut(&scope).expect("the scope has state");
            // Gold answers can change the gate without changing any signal.
            gate_keys.insert((project.to_string(), annotator));
            let Some(a) = s.annotators.get_mut(&annotator) else { continue };
            let new = (!a.drift.is_empty()).then(|| drift::evaluate(&a.drift, &s.drift, config, &label_name));
            if new == a.timeline {
                continue;
            }
            let old = std::mem::replace(&mut a.timeline, new);
            for (timeline, sign) in [(old.as_ref(), -1), (a.timeline.as_ref(), 1)] {
                for (day, states) in timeline.map(|t| t.days.as_slice()).unwrap_or_default() {
                    for signal in Signal::ALL {
                        let alarm = i64::from(states[signal as usize] == SignalState::Alarm);
                        add_sum(&mut s.population, (signal, *day), [sign, sign * alarm]);
                    }
                }
            }
            alert_scopes.push(scope);
            if a.timeline.is_none() && a.is_empty() {
                s.annotators.remove(&annotator);
            }
            if self.track_changes {
                self.dirty.annotators.insert((scope, annotator));
            }
        }
        let mut records = Vec::new();
        if all {
            self.pending_drift.clear();
            self.gates.clear();
            for (&scope, state) in &self.scopes {
                let project = catalog.scope_name(scope).0;
                for &annotator in state.annotators.keys() {
                    gate_keys.insert((project.to_string(), annotator));
                }
            }
        }
        // An epoch that touched no annotator's drift inputs re-decides no gate: skip the scan.
        let project_scopes =
            if gate_keys.is_empty() { BTreeMap::new() } else { self.project_scopes(catalog) };
        for (project, annotator) in gate_keys {
            let scopes = project_scopes.get(project.as_str()).map(Vec::as_slice).unwrap_or_default();
            let new = self.decide_gate(&project, annotator, scopes);
            let old = self.gates.remove(&(project.clone(), annotator));
            if new.as_ref() != old.as_ref() {
                records.extend(gate_records_since(
                    &project,
                    catalog.annotators.name(annotator),
                    old.as_ref().map(PublishedGate::of_gate).as_ref(),
                    new.as_ref(),
                ));
                if self.track_changes {
                    for &scope in scopes {
                        if self.scopes[&scope].annotators.contains_key(&annotator) {
                            self.dirty.annotators.insert((scope, annotator));
                        }
                    }
                }
            }
            if let Some(gate) = new {
                self.gates.insert((project, annotator), gate);
            }
        }
        // Scope alerts depend on the scope's numbers too: re-derive them for every changed scope.
        alert_scopes.extend(self.dirty.scopes.iter().copied().filter(|&s| !is_window(s)));
        if all {
            alert_scopes.extend(self.scopes.keys().copied());
        }
        alert_scopes.sort_unstable();
        alert_scopes.dedup();
        let mut alerts = Vec::new();
        for scope in alert_scopes {
            let new = self.derive_alerts(scope, catalog);
            let s = self.scopes.get_mut(&scope).expect("the scope has state");
            let old = std::mem::take(&mut s.alerts);
            for (id, alert) in &new {
                let was = old.get(id);
                if was != Some(alert) {
                    alerts.push((id.clone(), Some(alert.clone())));
                }
                if alert.status == AlertStatus::Firing && was.is_none_or(|a| a.status != AlertStatus::Firing)
                {
                    self.fired.push((alert.project.clone(), alert.severity));
                }
            }
            alerts.extend(old.into_keys().filter(|id| !new.contains_key(id)).map(|id| (id, None)));
            s.alerts = new;
        }
        alerts.sort_by(|a, b| a.0.cmp(&b.0));
        (records, alerts)
    }

    /// The scopes of every project, by project name.
    fn project_scopes<'c>(&self, catalog: &'c Catalog) -> BTreeMap<&'c str, Vec<ScopeId>> {
        let mut map: BTreeMap<&str, Vec<ScopeId>> = BTreeMap::new();
        for &scope in self.scopes.keys() {
            map.entry(catalog.scope_name(scope).0).or_default().push(scope);
        }
        map
    }

    /// The gate of `annotator` in `project` from its gold answers in the project's scopes, or
    /// `None` when it has neither labels nor gold answers there.
    fn decide_gate(&self, project: &str, annotator: AnnotatorId, scopes: &[ScopeId]) -> Option<Gate> {
        let config = self.drift.for_project(project);
        let mut answers: Vec<(i64, ScopeId, ItemId, bool)> = Vec::new();
        let mut timelines: Vec<&Timeline> = Vec::new();
        let mut present = false;
        for &scope in scopes {
            let Some(a) = self.scopes[&scope].annotators.get(&annotator) else { continue };
            present = true;
            for (&(ts, item, correct), &m) in &a.drift.gold {
                for _ in 0..m.max(0) {
                    answers.push((ts, scope, item, correct));
                }
            }
            timelines.extend(a.timeline.as_ref());
        }
        if !present {
            return None;
        }
        answers.sort_unstable();
        let answers: Vec<(i64, bool)> = answers.into_iter().map(|(ts, _, _, c)| (ts, c)).collect();
        let gated = |day| timelines.iter().any(|t| config.gate_on_alarm.iter().any(|&s| t.alarm_on(s, day)));
        Some(drift::decide_gate(&answers, gated, config))
    }

    /// Every alert of a scope, derived from its numbers and its annotators' drift.
    fn derive_alerts(&self, scope: ScopeId, catalog: &Catalog) -> BTreeMap<String, Alert> {
        let mut alerts = BTreeMap::new();
        let Some(s) = self.scope(scope) else { return alerts };
        let (project, task) = catalog.scope_name(scope);
        let config = self.drift.for_project(project);
        let base = |id: String, severity, kind, summary: String| Alert {
            id,
            status: AlertStatus::Firing,
            severity,
            kind,
            project: project.to_string(),
            task: task.to_string(),
            annotator_id: None,
            signal: None,
            summary,
            started: None,
            resolved: None,
        };
        // Population shifts: each run of days on which one held, as one alert.
        let mut shifts: Vec<(Signal, Day, Option<Day>)> = Vec::new();
        for signal in Signal::ALL {
            let days = s
                .population
                .range((signal, Day::MIN)..=(signal, Day::MAX))
                .map(|(&(_, day), &counts)| (day, drift::population_shift(counts, config)));
            for (start, end) in alerts::runs(days) {
                let [active, alarmed] = s.population[&(signal, start)];
                let id =
                    drift::alert_id(&[project, task, "population_shift", signal.name(), &drift::date(start)]);
                let mut alert = base(
                    id.clone(),
                    Severity::Warning,
                    "population_shift",
                    format!(
                        "{alarmed} of {active} annotators raised an alarm on {} on {}: more likely a change in the data or the task than in the people",
                        signal.title(),
                        drift::date(start)
                    ),
                );
                alert.signal = Some(signal);
                alert.started = Some(drift::date(start));
                if let Some(end) = end {
                    alert.status = AlertStatus::Resolved;
                    alert.resolved = Some(drift::date(end));
                }
                alerts.insert(id, alert);
                shifts.push((signal, start, end));
            }
        }
        if config.annotator_alerts {
            for (&annotator, a) in &s.annotators {
                let Some(timeline) = &a.timeline else { continue };
                let name = catalog.annotators.name(annotator);
                for episode in &timeline.episodes {
                    // An alarm that began during a population shift is the shift's, not the
                    // annotator's.
                    let during = |&&(signal, start, end): &&(Signal, Day, Option<Day>)| {
                        signal == episode.signal
                            && start <= episode.start
                            && end.is_none_or(|e| episode.start < e)
                    };
                    if shifts.iter().any(|shift| during(&shift)) {
                        continue;
                    }
                    let started = drift::date(episode.start);
                    let id = drift::alert_id(&[
                        project,
                        task,
                        "annotator_drift",
                        name,
                        episode.signal.name(),
                        &started,
                    ]);
                    let mut alert = base(
                        id.clone(),
                        Severity::Warning,
                        "annotator_drift",
                        format!("{name}: {}", episode.explanation),
                    );
                    alert.annotator_id = Some(name.to_string());
                    alert.signal = Some(episode.signal);
                    alert.started = Some(started);
                    if let Some(end) = episode.end {
                        alert.status = AlertStatus::Resolved;
                        alert.resolved = Some(drift::date(end));
                    }
                    alerts.insert(id, alert);
                }
            }
        }
        let summary = s.summary(scope, catalog);
        // Alpha under its floor: as of the end of each day, the last day being now.
        let alpha_now = summary.agreement.krippendorff_alpha.nominal;
        let below_floor = |n: i64, alpha: Option<f64>| {
            n >= config.alpha_min_items && alpha.is_some_and(|a| a < config.alpha_floor)
        };
        let by_day = alerts::alpha_by_day(&s.day_items, &s.day_shares, &s.day_coincidences);
        let last = by_day.len().saturating_sub(1);
        let days = by_day.iter().enumerate().map(|(i, &(day, n, alpha))| {
            (
                day,
                if i == last {
                    below_floor(summary.n_pairable_items, alpha_now)
                } else {
                    below_floor(n, alpha)
                },
            )
        });
        // Listed once the scope has the items to judge (so that the set of alerts only grows
        // with the data), resolved while alpha is not under the floor.
        let run = alerts::runs(days).last().copied();
        if let Some(alpha) = alpha_now.filter(|_| summary.n_pairable_items >= config.alpha_min_items) {
            let id = drift::scope_alert_id(project, task, "alpha_below_floor");
            let alert = base(
                id.clone(),
                Severity::Critical,
                "alpha_below_floor",
                format!(
                    "agreement beyond chance (Krippendorff's alpha) {alpha:.3} on {} items with two or more labels, {} the floor {}",
                    summary.n_pairable_items,
                    condition_words(run),
                    config.alpha_floor
                ),
            );
            alerts.insert(id, with_run(alert, run));
        }
        // Pooled gold accuracy under its target: as of the end of each day, the last being now.
        let under_target =
            |n: i64, accuracy: f64| n >= config.gold_target_min_answers && accuracy < config.gold_target;
        let by_day = alerts::gold_by_day(&s.drift.gold_days);
        let last = by_day.len().saturating_sub(1);
        let gold_now = summary.gold.as_ref();
        let days = by_day.iter().enumerate().map(|(i, &(day, n, accuracy))| {
            let holds = if i == last {
                gold_now.is_some_and(|g| under_target(g.n, g.accuracy))
            } else {
                under_target(n, accuracy)
            };
            (day, holds)
        });
        let run = alerts::runs(days).last().copied();
        if let Some(gold) = gold_now.filter(|g| g.n >= config.gold_target_min_answers) {
            let id = drift::scope_alert_id(project, task, "gold_below_target");
            let alert = base(
                id.clone(),
                Severity::Critical,
                "gold_below_target",
                format!(
                    "gold accuracy {:.1}% on {} gold answers (likely {:.1}-{:.1}%), {} the target {:.1}%",
                    100.0 * gold.accuracy,
                    gold.n,
                    100.0 * gold.wilson_low,
                    100.0 * gold.wilson_high,
                    condition_words(run),
                    100.0 * config.gold_target
                ),
            );
            alerts.insert(id, with_run(alert, run));
        }
        alerts
    }

    /// Whether drift re-evaluations are still queued: settle again (even without new input) until
    /// this is false, and the drift outputs equal a full evaluation of the data.
    pub fn drift_pending(&self) -> bool {
        !self.pending_drift.is_empty()
    }

    /// The gate of `annotator` in `project`, as of the last evaluation.
    pub fn gate(&self, project: &str, annotator: AnnotatorId) -> Option<&Gate> {
        self.gates.get(&(project.to_string(), annotator))
    }

    /// The gates of every annotator, by (project, annotator id).
    pub fn gates(&self) -> impl Iterator<Item = (&str, AnnotatorId, &Gate)> {
        self.gates.iter().map(|((p, a), g)| (p.as_str(), *a, g))
    }

    /// The alerts of a scope as of the last evaluation, by id.
    pub fn alerts(&self, scope: ScopeId) -> Vec<Alert> {
        self.scopes.get(&scope).map(|s| s.alerts.values().cloned().collect()).unwrap_or_default()
    }

    /// Counts of gates, signal states and firing alerts per project, and the watchlist (the
    /// `watchlist_size` annotators with the highest score per project and signal), for metrics.
    pub fn drift_summary(&self, catalog: &Catalog) -> DriftSummary {
        let mut summary = DriftSummary::default();
        for ((project, _), gate) in &self.gates {
            *summary.gates.entry((project.clone(), gate.state)).or_default() += 1;
        }
        // Per project, each annotator's worst state and best score per signal over its scopes.
        let mut worst: BTreeMap<(&str, AnnotatorId, Signal), (SignalState, Option<f64>)> = BTreeMap::new();
        for (&scope, s) in &self.scopes {
            let project = catalog.scope_name(scope).0;
            for (&annotator, a) in &s.annotators {
                let Some(t) = &a.timeline else { continue };
                for signal in Signal::ALL {
                    let e = worst
                        .entry((project, annotator, signal))
                        .or_insert((SignalState::Insufficient, None));
                    e.0 = e.0.max(t.state(signal));
                    if let Some(score) = t.score(signal) {
                        e.1 = Some(e.1.map_or(score, |b: f64| b.max(score)));
                    }
                }
            }
            for alert in s.alerts.values().filter(|a| a.status == AlertStatus::Firing) {
                *summary.firing.entry((project.to_string(), alert.severity)).or_default() += 1;
            }
        }
        let mut candidates: BTreeMap<(&str, Signal), Vec<(f64, &str)>> = BTreeMap::new();
        for (&(project, annotator, signal), &(state, score)) in &worst {
            *summary.signals.entry((project.to_string(), signal, state)).or_default() += 1;
            if let Some(score) = score.filter(|s| *s >= 0.5) {
                candidates
                    .entry((project, signal))
                    .or_default()
                    .push((score, catalog.annotators.name(annotator)));
            }
        }
        for ((project, signal), mut list) in candidates {
            list.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
            list.truncate(self.drift.for_project(project).watchlist_size);
            summary.watchlist.extend(list.into_iter().map(|(score, name)| WatchEntry {
                project: project.to_string(),
                signal,
                annotator_id: name.to_string(),
                score,
                gold_accuracy: None,
            }));
        }
        for entry in &mut summary.watchlist {
            let Some(id) = catalog.annotators.lookup(&entry.annotator_id) else { continue };
            if let Some(gate) = self.gate(&entry.project, id) {
                entry.gold_accuracy = gate.evidence.accuracy;
            }
        }
        summary
    }

    /// Every annotator's drift timeline, by (scope, annotator), as of the last evaluation.
    pub fn timelines(&self) -> impl Iterator<Item = (ScopeId, AnnotatorId, &Timeline)> {
        self.scopes.iter().flat_map(|(&scope, s)| {
            s.annotators.iter().filter_map(move |(&a, state)| Some((scope, a, state.timeline.as_ref()?)))
        })
    }

    /// The drift timeline of an annotator in a scope, as of the last evaluation.
    pub fn timeline(&self, scope: ScopeId, annotator: AnnotatorId) -> Option<&Timeline> {
        self.scopes.get(&scope)?.annotators.get(&annotator)?.timeline.as_ref()
    }

    /// Recomputes what derives from many facts (pair kappas in their scope's mean) for the
    /// entities marked dirty, and drops entities that became empty. Leaves the dirty marks.
    fn refresh_derived(&mut self) {
        if !self.track_changes {
            if std::mem::take(&mut self.untracked_pairs_changed) {
                for s in self.scopes.values_mut() {
                    s.recount_kappas();
                }
            }
            return;
        }
        for &(scope, a, b) in &self.dirty.pairs {
            let s = self.scopes.get_mut(&scope).expect("the scope has state");
            let Some(pair) = s.pairs.get_mut(&(a, b)) else {
                continue;
            };
            pair.refresh();
            let kappa = pair.kappa_fixed();
            if let Some(old) = pair.counted_kappa {
                s.kappa_sum -= old;
                s.kappa_count -= 1;
            }
            if let Some(new) = kappa {
                s.kappa_sum += new;
                s.kappa_count += 1;
            }
            pair.counted_kappa = kappa;
            if pair.cells.is_empty() {
                s.pairs.remove(&(a, b));
            }
            self.dirty.scopes.insert(scope);
        }
        for &(scope, annotator) in &self.dirty.annotators {
            let s = if is_window(scope) {
                let Some(s) = self.windows.get_mut(&scope) else { continue };
                s
            } else {
                self.scopes.get_mut(&scope).expect("the scope has state")
            };
            // An annotator with a drift timeline is dropped once its timeline is retracted.
            if s.annotators.get(&annotator).is_some_and(|a| a.is_empty() && a.timeline.is_none()) {
                s.annotators.remove(&annotator);
            }
        }
        // A window whose last label left is dropped.
        for scope in self.dirty.scopes.iter().filter(|&&s| is_window(s)) {
            if self.windows.get(scope).is_some_and(|w| w.items.is_empty() && w.annotators.is_empty()) {
                self.windows.remove(scope);
            }
        }
    }

    fn scope(&self, scope: ScopeId) -> Option<&ScopeState> {
        if is_window(scope) {
            return self.windows.get(&scope).filter(|s| !s.items.is_empty());
        }
        self.scopes.get(&scope).filter(|s| !s.items.is_empty())
    }

    /// The numbers of a window scope, if it has labels.
    pub fn window_summary(&self, scope: ScopeId, catalog: &Catalog) -> Option<WindowSummary> {
        let window = catalog.window(scope)?;
        let summary = self.scope(scope)?.summary(scope, catalog);
        Some(WindowSummary {
            size: window_size_name(window.size_ms),
            start: drift::rfc3339(window.start_ms),
            end: drift::rfc3339(window.start_ms + window.size_ms),
            summary,
        })
    }

    /// Records whether the window scope `window` has labels, in `window_index`.
    fn index_window(&mut self, window: ScopeId, catalog: &Catalog) {
        let Some(w) = catalog.window(window) else { return };
        let key = (w.scope, w.size_ms, w.start_ms, window);
        if self.windows.get(&window).is_some_and(|s| !s.items.is_empty()) {
            self.window_index.insert(key);
        } else {
            self.window_index.remove(&key);
        }
    }

    /// The window scopes of `scope` that have labels, by (size, start), as of the last settle.
    pub fn windows_of(&self, scope: ScopeId) -> Vec<ScopeId> {
        self.window_index
            .range((scope, i64::MIN, i64::MIN, 0)..=(scope, i64::MAX, i64::MAX, ScopeId::MAX))
            .map(|&(_, _, _, window)| window)
            .collect()
    }

    /// The newest window with labels of `scope` of size `size_ms`, as of the last settle.
    pub fn newest_window(&self, scope: ScopeId, size_ms: i64) -> Option<ScopeId> {
        self.window_index
            .range((scope, size_ms, i64::MIN, 0)..=(scope, size_ms, i64::MAX, ScopeId::MAX))
            .next_back()
            .map(|&(_, _, _, window)| window)
    }

    /// The scope object (spec section 4: no pairs, annotators or items), if the scope has labels.
    pub fn scope_summary(&self, scope: ScopeId, catalog: &Catalog) -> Option<ScopeSummary> {
        self.scope(scope).map(|s| s.summary(scope, catalog))
    }

    /// The pair object of annotators `a` and `b` (ids, either order), if they share an item.
    pub fn pair(
        &self,
        scope: ScopeId,
        a: AnnotatorId,
        b: AnnotatorId,
        catalog: &Catalog,
    ) -> Option<PairReport> {
        let key = (a.min(b), a.max(b));
        let pair = self.scope(scope)?.pairs.get(&key)?;
        pair_report(key, pair, catalog)
    }

    /// The annotator object, if the annotator has labels in the scope.
    pub fn annotator(
        &self,
        scope: ScopeId,
        annotator: AnnotatorId,
        catalog: &Catalog,
    ) -> Option<AnnotatorReport> {
        let state = self.scope(scope)?.annotators.get(&annotator)?;
        annotator_report(annotator, state, catalog, self.gate(catalog.scope_name(scope).0, annotator))
    }

    /// The objects of every annotator with labels in the scope, by id.
    pub fn annotators(&self, scope: ScopeId, catalog: &Catalog) -> Vec<AnnotatorReport> {
        let Some(s) = self.scope(scope) else { return Vec::new() };
        let project = catalog.scope_name(scope).0;
        let mut annotators: Vec<AnnotatorReport> = s
            .annotators
            .iter()
            .filter_map(|(&id, a)| annotator_report(id, a, catalog, self.gate(project, id)))
            .collect();
        annotators.sort_by(|x, y| x.annotator_id.cmp(&y.annotator_id));
        annotators
    }

    /// The consensus object of an item, if it has labels.
    pub fn item(&self, scope: ScopeId, item: ItemId, catalog: &Catalog) -> Option<ItemConsensus> {
        item_consensus(self.scope(scope)?.consensus.get(&item)?, catalog)
    }

    /// Brings every derived number up to date, not only those of what changed: every annotator's
    /// drift, every gate and alert, every window's place in the index (what [`QualityView::report`]
    /// reads). The changes recorded so far are dropped: the caller reads the whole state instead.
    pub fn settle_all(&mut self, catalog: &Catalog) {
        self.refresh_derived();
        self.refresh_drift(catalog, true);
        self.dirty = Dirty::default();
        self.fired.clear();
        let windows: Vec<ScopeId> = self.windows.keys().copied().collect();
        for window in windows {
            self.index_window(window, catalog);
        }
    }

    /// The live labels of every scope (windows apart).
    pub fn live_labels(&self) -> i64 {
        self.scopes
            .values()
            .flat_map(|s| &s.items)
            .map(|(&raters, [items, ..])| i64::from(raters) * items)
            .sum()
    }

    /// The scopes (windows apart) that have labels, by id.
    pub fn scope_ids(&self) -> impl Iterator<Item = ScopeId> + '_ {
        self.scopes.iter().filter(|(_, s)| !s.items.is_empty()).map(|(&id, _)| id)
    }

    /// Forms the report of spec section 3 for every scope that has labels.
    pub fn report(&mut self, catalog: &Catalog, with_items: bool) -> Report {
        self.settle_all(catalog);
        let mut scopes: Vec<ScopeReport> =
            self.scopes.keys().filter_map(|&id| self.scope_report(id, catalog, with_items)).collect();
        scopes.sort_by(|a, b| {
            (&a.summary.project, &a.summary.task).cmp(&(&b.summary.project, &b.summary.task))
        });
        Report { scopes }
    }

    /// Forms the full report of one scope, if it has labels. Reads settled state.
    pub fn scope_report(&self, scope: ScopeId, catalog: &Catalog, with_items: bool) -> Option<ScopeReport> {
        let s = self.scope(scope)?;
        // Order pairs bytewise by name, via each annotator's rank among the scope's names.
        let mut names: Vec<(&str, AnnotatorId)> =
            s.annotators.keys().map(|&id| (catalog.annotators.name(id), id)).collect();
        names.sort_unstable();
        let rank: Map<AnnotatorId, usize> = names.iter().enumerate().map(|(i, &(_, id))| (id, i)).collect();
        let rank_of = |id: AnnotatorId| rank.get(&id).copied().unwrap_or(usize::MAX);
        let mut keys: Vec<((usize, usize), (AnnotatorId, AnnotatorId))> = s
            .pairs
            .keys()
            .map(|&(a, b)| {
                let (ra, rb) = (rank_of(a), rank_of(b));
                ((ra.min(rb), ra.max(rb)), (a, b))
            })
            .collect();
        keys.sort_unstable();
        let pairs: Vec<PairReport> =
            keys.iter().filter_map(|&(_, key)| pair_report(key, &s.pairs[&key], catalog)).collect();
        let annotators = self.annotators(scope, catalog);
        let items = with_items.then(|| {
            s.consensus
                .iter()
                .filter_map(|(&item, values)| {
                    Some((catalog.items.name(item).to_string(), item_consensus(values, catalog)?))
                })
                .collect()
        });
        let alerts = s.alerts.values().cloned().collect();
        let windows: Vec<WindowSummary> =
            self.windows_of(scope).into_iter().filter_map(|w| self.window_summary(w, catalog)).collect();
        let windows = (!windows.is_empty()).then_some(windows);
        Some(ScopeReport { summary: s.summary(scope, catalog), pairs, annotators, items, alerts, windows })
    }
}

/// How a scope alert's summary says where the scope stands, from the latest run of days on which
/// it was under its floor or target.
fn condition_words(run: Option<(Day, Option<Day>)>) -> &'static str {
    match run {
        Some((_, None)) => "under",
        Some((_, Some(_))) => "back at or above",
        None => "never under",
    }
}

/// A scope alert with the latest run of days on which its condition held: firing since its
/// start while it still holds, else resolved (on the day it ended, if it ever held).
fn with_run(mut alert: Alert, run: Option<(Day, Option<Day>)>) -> Alert {
    alert.status = AlertStatus::Resolved;
    if let Some((start, end)) = run {
        alert.started = Some(drift::date(start));
        match end {
            Some(end) => alert.resolved = Some(drift::date(end)),
            None => alert.status = AlertStatus::Firing,
        }
    }
    alert
}

/// What the gating topic last said of an annotator in a project: the state and the time of the
/// decision (absent for a record made in warm-up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedGate {
    pub state: GateState,
    pub at: Option<String>,
}

impl PublishedGate {
    /// What a gate record says.
    pub fn of(record: &GateRecord) -> PublishedGate {
        PublishedGate { state: record.state, at: record.at.clone() }
    }

    /// What the records of `gate` left the gating topic saying.
    fn of_gate(gate: &Gate) -> PublishedGate {
        PublishedGate { state: gate.state, at: gate.history.last().map(|d| d.at.clone()) }
    }
}

/// The gate records that take what the gating topic last said of `annotator` in `project`
/// (`published`; `None` when it said nothing) to the gate now (`new`; `None` once the annotator has
/// neither labels nor gold answers in the project): one record per decision made since the
/// published one, none when no decision was made (later evidence alone is no decision), or one
/// record marked `revised` when the published decision is no longer in the gate's history (gold
/// answers it rested on were corrected or deleted).
pub fn gate_records_since(
    project: &str,
    annotator: &str,
    published: Option<&PublishedGate>,
    new: Option<&Gate>,
) -> Vec<GateRecord> {
    let warm_up = |p: &PublishedGate| p.state == GateState::Warmup && p.at.is_none();
    let Some(new) = new else {
        // The annotator left the project: its gate goes back to warm-up, once.
        return match published {
            Some(p) if !warm_up(p) => vec![GateRecord {
                project: project.to_string(),
                annotator_id: annotator.to_string(),
                state: GateState::Warmup,
                from: Some(p.state),
                reason: "no labels or gold answers left in the project".to_string(),
                evidence: None,
                at: None,
                revised: true,
            }],
            _ => Vec::new(),
        };
    };
    let record = |decision: Option<&Decision>, from: Option<GateState>, revised, reason: String| GateRecord {
        project: project.to_string(),
        annotator_id: annotator.to_string(),
        state: decision.map_or(new.state, |d| d.to),
        from,
        reason,
        evidence: Some(decision.map_or(&new.evidence, |d| &d.evidence).clone()),
        at: decision.map(|d| d.at.clone()),
        revised,
    };
    let fresh = match published {
        // First sight of the annotator: every decision so far, or its warm-up.
        None if new.history.is_empty() => return vec![record(None, None, false, new.reason.clone())],
        None => &new.history[..],
        Some(p) if warm_up(p) => &new.history[..],
        Some(p) => {
            let found = new.history.iter().rposition(|d| d.to == p.state && Some(&d.at) == p.at.as_ref());
            match found {
                Some(i) => &new.history[i + 1..],
                None => {
                    let why = format!("re-evaluated after gold answers it rested on changed: {}", new.reason);
                    return vec![record(new.history.last(), Some(p.state), true, why)];
                }
            }
        }
    };
    fresh.iter().map(|d| record(Some(d), d.from, false, d.reason.clone())).collect()
}

fn pair_report(
    (a, b): (AnnotatorId, AnnotatorId),
    pair: &PairState,
    catalog: &Catalog,
) -> Option<PairReport> {
    let (name_a, name_b) = (catalog.annotators.name(a), catalog.annotators.name(b));
    // Ids order the pair inside the dataflow; the spec orders it bytewise by name. Every pair
    // statistic is symmetric in the two annotators, so only the names swap.
    let stats = pair.stats.as_ref()?;
    let (a, b) = if name_a > name_b { (name_b, name_a) } else { (name_a, name_b) };
    Some(PairReport {
        a: a.to_string(),
        b: b.to_string(),
        n_shared: stats.n_shared,
        percent_agreement: stats.percent_agreement,
        cohen_kappa: stats.cohen_kappa,
        scott_pi: stats.scott_pi,
    })
}

fn annotator_report(
    id: AnnotatorId,
    a: &AnnotatorState,
    catalog: &Catalog,
    gate: Option<&Gate>,
) -> Option<AnnotatorReport> {
    if a.by_raters.is_empty() {
        return None;
    }
    let n_labels: i64 = a.by_raters.iter().map(|(_, [items, ..])| items).sum();
    let pairable: i64 = a.by_raters.iter().filter(|(r, _)| *r >= 2).map(|(_, [items, ..])| items).sum();
    let agreement_with_others = (pairable > 0).then(|| {
        a.by_raters
            .iter()
            .filter(|(r, _)| *r >= 2)
            .map(|&(r, [_, same])| same as f64 / f64::from(r - 1))
            .sum::<f64>()
            / pairable as f64
    });
    Some(AnnotatorReport {
        annotator_id: catalog.annotators.name(id).to_string(),
        n_labels,
        agreement_with_others,
        gold: stats::gold_accuracy(a.gold[0], a.gold[1]),
        drift: a.timeline.as_ref().map(|t| t.current.iter().map(|(s, r)| (s.name(), r.clone())).collect()),
        gate: gate.cloned(),
    })
}

fn item_consensus(values: &[((u32, LabelId), Diff)], catalog: &Catalog) -> Option<ItemConsensus> {
    let live = values.iter().filter(|(_, d)| *d > 0);
    let best = live.clone().map(|((_, label), _)| catalog.labels.get(*label)).min_by(|x, y| x.spec_cmp(y))?;
    Some(ItemConsensus { consensus: best.clone(), tied: live.count() > 1 })
}

impl PairState {
    fn refresh(&mut self) {
        self.stats = stats::pair_agreement(&self.cells);
    }

    /// Cohen's kappa in fixed point, from the refreshed statistics.
    fn kappa_fixed(&self) -> Option<i128> {
        self.stats.as_ref().and_then(|p| p.cohen_kappa).map(|k| (k * KAPPA_SCALE).round() as i128)
    }
}

impl ScopeState {
    /// Recomputes the kappa sum over every pair, dropping empty pairs and annotators.
    fn recount_kappas(&mut self) {
        self.pairs.retain(|_, p| !p.cells.is_empty());
        self.annotators.retain(|_, a| !a.is_empty());
        let (mut sum, mut count) = (0i128, 0i64);
        for pair in self.pairs.values_mut() {
            pair.refresh();
            pair.counted_kappa = pair.kappa_fixed();
            if let Some(k) = pair.counted_kappa {
                sum += k;
                count += 1;
            }
        }
        self.kappa_sum = sum;
        self.kappa_count = count;
    }

    fn percent_agreement(&self) -> (i64, Option<f64>) {
        let pairable: i64 = self.items.range(2..).map(|(_, [items, ..])| items).sum();
        if pairable == 0 {
            return (0, None);
        }
        let sum: f64 = self
            .items
            .range(2..)
            .map(|(&r, [_, agreeing, _])| *agreeing as f64 / (f64::from(r) * f64::from(r - 1)))
            .sum();
        (pairable, Some(sum / pairable as f64))
    }

    /// Category shares `pi_k` over all rated items, by label id.
    fn category_shares(&self) -> BTreeMap<LabelId, f64> {
        let rated: i64 = self.items.values().map(|[items, ..]| items).sum();
        let mut shares: BTreeMap<LabelId, f64> = BTreeMap::new();
        for (&(r, label), [count]) in &self.shares {
            *shares.entry(label).or_default() += *count as f64 / f64::from(r);
        }
        for v in shares.values_mut() {
            *v /= rated as f64;
        }
        shares
    }

    fn coincidences(&self, catalog: &Catalog, numeric: bool) -> Coincidences {
        let mut marginals: BTreeMap<LabelId, i64> = BTreeMap::new();
        for (&(_, label), [count]) in self.shares.range((2, 0)..) {
            *marginals.entry(label).or_default() += count;
        }
        let mut categories: Vec<(LabelId, i64)> = marginals.into_iter().collect();
        if numeric {
            categories.sort_by(|a, b| catalog.labels.get(a.0).spec_cmp(catalog.labels.get(b.0)));
        }
        let index: HashMap<LabelId, usize> =
            categories.iter().enumerate().map(|(i, (l, _))| (*l, i)).collect();
        let q = categories.len();
        let mut matrix = vec![vec![0.0; q]; q];
        for (&(r, c, k), [weight]) in &self.coincidences {
            let (ci, ki) = (index[&c], index[&k]);
            let o = *weight as f64 / f64::from(r - 1);
            matrix[ci][ki] += o;
            if ci != ki {
                matrix[ki][ci] += o;
            }
        }
        Coincidences {
            values: categories
                .iter()
                .map(|(l, _)| catalog.labels.get(*l).as_number().unwrap_or(0.0))
                .collect(),
            marginals: categories.iter().map(|(_, n)| *n).collect(),
            matrix,
        }
    }

    fn summary(&self, scope: ScopeId, catalog: &Catalog) -> ScopeSummary {
        let (project, task) = catalog.scope_name(scope);
        let n_items: i64 = self.items.values().map(|[items, ..]| items).sum();
        let n_labels: i64 = self.items.iter().map(|(&r, [items, ..])| i64::from(r) * items).sum();
        let (n_pairable_items, percent_agreement) = self.percent_agreement();
        let majority: i64 = self.items.range(2..).map(|(_, [.., majority])| majority).sum();
        let shares: Vec<f64> = self.category_shares().into_values().collect();
        let numeric = self.shares.keys().all(|(_, label)| catalog.labels.get(*label).as_number().is_some());
        let coincidences = self.coincidences(catalog, numeric);
        let level = |level| numeric.then(|| coincidences.alpha(level));
        ScopeSummary {
            project: project.to_string(),
            task: task.to_string(),
            n_labels,
            n_items,
            n_annotators: self.annotators.values().filter(|a| !a.by_raters.is_empty()).count(),
            n_pairable_items,
            consensus_rate: (n_pairable_items > 0).then(|| majority as f64 / n_pairable_items as f64),
            agreement: Agreement {
                percent_agreement,
                krippendorff_alpha: KrippendorffAlpha {
                    nominal: coincidences.alpha(Level::Nominal),
                    ordinal: level(Level::Ordinal),
                    interval: level(Level::Interval),
                    ratio: level(Level::Ratio),
                },
                fleiss_kappa: stats::fleiss_kappa(percent_agreement, &shares),
                gwet_ac1: stats::gwet_ac1(percent_agreement, &shares),
                mean_cohen_kappa: (self.kappa_count > 0)
                    .then(|| self.kappa_sum as f64 / KAPPA_SCALE / self.kappa_count as f64),
            },
            gold: stats::gold_accuracy(self.gold[0], self.gold[1]),
        }
    }
}

/// The output of `labelqc report` (spec section 3).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scopes: Vec<ScopeReport>,
}

/// The scope object: the numbers of one (project, task) scope, without its entities.
#[derive(Clone, Debug, Serialize)]
pub struct ScopeSummary {
    pub project: String,
    pub task: String,
    pub n_labels: i64,
    pub n_items: i64,
    pub n_annotators: usize,
    pub n_pairable_items: i64,
    /// Share of pairable items on which one label has more than half of the labels.
    pub consensus_rate: Option<f64>,
    pub agreement: Agreement,
    pub gold: Option<GoldAccuracy>,
}

/// Quality numbers of one (project, task) scope with its pairs, annotators and (optionally) items.
#[derive(Clone, Debug, Serialize)]
pub struct ScopeReport {
    #[serde(flatten)]
    pub summary: ScopeSummary,
    pub pairs: Vec<PairReport>,
    pub annotators: Vec<AnnotatorReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<BTreeMap<String, ItemConsensus>>,
    /// The scope's alerts, firing and resolved, by id.
    pub alerts: Vec<Alert>,
    /// The scope's numbers per tumbling event-time window, by (size, start), when windows are on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<Vec<WindowSummary>>,
}

/// The scope object of one tumbling event-time window: `[start, end)` of the labels' `ts`.
/// Windows have no pairs, so `mean_cohen_kappa` is null.
#[derive(Clone, Debug, Serialize)]
pub struct WindowSummary {
    /// `1h`, `1d`, ...
    pub size: String,
    pub start: String,
    pub end: String,
    #[serde(flatten)]
    pub summary: ScopeSummary,
}
/// Scope-level agreement.
#[derive(Clone, Debug, Serialize)]
pub struct Agreement {
    pub percent_agreement: Option<f64>,
    pub krippendorff_alpha: KrippendorffAlpha,
    pub fleiss_kappa: Option<f64>,
    pub gwet_ac1: Option<f64>,
    pub mean_cohen_kappa: Option<f64>,
}

/// Krippendorff's alpha per level; ordinal, interval and ratio appear only when every label of the
/// scope is a number (and are then `null` when undefined).
#[derive(Clone, Debug, Serialize)]
pub struct KrippendorffAlpha {
    pub nominal: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<Option<f64>>,
}

/// Agreement of two annotators on their shared items (`a < b` bytewise).
#[derive(Clone, Debug, Serialize)]
pub struct PairReport {
    pub a: String,
    pub b: String,
    pub n_shared: i64,
    pub percent_agreement: f64,
    pub cohen_kappa: Option<f64>,
    pub scott_pi: Option<f64>,
}

/// One annotator's numbers within a scope.
#[derive(Clone, Debug, Serialize)]
pub struct AnnotatorReport {
    pub annotator_id: String,
    pub n_labels: i64,
    pub agreement_with_others: Option<f64>,
    pub gold: Option<GoldAccuracy>,
    /// Every drift signal's state and latest reading, by signal name.
    pub drift: Option<BTreeMap<&'static str, SignalReport>>,
    /// The annotator's gate in the scope's project.
    pub gate: Option<Gate>,
}

/// An item's consensus label.
#[derive(Clone, Debug, Serialize)]
pub struct ItemConsensus {
    /// The consensus label, as JSON (a number exactly as its value).
    #[serde(serialize_with = "crate::label::serialize_json")]
    pub consensus: Label,
    pub tied: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::Evidence;

    fn decision(from: Option<GateState>, to: GateState, at: &str) -> Decision {
        Decision {
            from,
            to,
            reason: format!("to {}", to.name()),
            evidence: Evidence::default(),
            at: at.to_string(),
            at_ms: 0,
        }
    }

    fn gate(history: Vec<Decision>) -> Gate {
        let state = history.last().map_or(GateState::Warmup, |d| d.to);
        Gate {
            state,
            reason: "now".into(),
            evidence: Evidence::default(),
            since: history.last().map(|d| d.at.clone()),
            history,
        }
    }

    fn states(records: &[GateRecord]) -> Vec<(Option<GateState>, GateState, bool)> {
        records.iter().map(|r| (r.from, r.state, r.revised)).collect()
    }

    #[test]
    fn gate_records_are_the_decisions_since_the_published_one() {
        use GateState::*;
        let d1 = decision(Some(Warmup), Allow, "2026-01-01T00:00:00Z");
        let d2 = decision(Some(Allow), Block, "2026-01-02T00:00:00Z");
        let d3 = decision(Some(Block), Probation, "2026-01-03T00:00:00Z");
        let now = gate(vec![d1.clone(), d2.clone(), d3.clone()]);
        let since =
            |p: Option<PublishedGate>, g: Option<&Gate>| states(&gate_records_since("p", "a", p.as_ref(), g));
        // Nothing published: every decision, or the warm-up of a new annotator.
        assert_eq!(
            since(None, Some(&now)),
            vec![(Some(Warmup), Allow, false), (Some(Allow), Block, false), (Some(Block), Probation, false)]
        );
        assert_eq!(since(None, Some(&gate(vec![]))), vec![(None, Warmup, false)]);
        // The published decision is in the history: only those after it; none when it is the last.
        let published = |d: &Decision| Some(PublishedGate { state: d.to, at: Some(d.at.clone()) });
        assert_eq!(since(published(&d2), Some(&now)), vec![(Some(Block), Probation, false)]);
        assert_eq!(since(published(&d3), Some(&now)), vec![]);
        let warm = Some(PublishedGate { state: Warmup, at: None });
        assert_eq!(since(warm.clone(), Some(&gate(vec![]))), vec![]);
        assert_eq!(since(warm.clone(), Some(&gate(vec![d1.clone()]))), vec![(Some(Warmup), Allow, false)]);
        // It is not: one revised record from what was published to the gate now.
        let gone = decision(Some(Allow), Block, "2026-01-05T00:00:00Z");
        assert_eq!(since(published(&gone), Some(&now)), vec![(Some(Block), Probation, true)]);
        // The annotator left the project: back to warm-up once, unless already there.
        assert_eq!(since(published(&d2), None), vec![(Some(Block), Warmup, true)]);
        assert_eq!(since(warm, None), vec![]);
        assert_eq!(since(None, None), vec![]);
    }
}
