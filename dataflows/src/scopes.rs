//! Scopes and window scopes: the scope object of spec section 2 (agreement, gold accuracy), its
//! scope alerts, and the drift inputs its annotators compare against, each from the exact integer
//! sums of one scope, kept by the worker that owns the scope.
//!
//! Formulas (spec section 2; `r` an item's label count, `n_k` its labels `k`; sums grouped by `r`
//! so that every sum is an integer and the weights `1/(r-1)` are applied once, here):
//! - `percent_agreement = mean over pairable items of sum_k n_k (n_k - 1) / (r (r - 1))`;
//! - `pi_k = mean over rated items of n_k / r`; Fleiss' kappa and Gwet's AC1 from `pi_k`
//!   ([`crate::stats`]);
//! - Krippendorff's coincidences `o_ck = sum over pairable items of (n_c n_k - [c = k] n_c) /
//!   (r - 1)`, alpha at each level from them ([`crate::stats::Coincidences`]);
//! - `mean_cohen_kappa`: the mean of the pairs' kappas, summed in fixed point
//!   ([`crate::pairs::KAPPA_SCALE`]) so that the sum cancels exactly;
//! - `gold`: pooled over the scope's gold answers, with its Wilson interval.
//!
//! The sums are kept by the day of each item's newest label, so that the scope's alpha can also be
//! read as of the end of each day (its alert's start and end, [`crate::alerts`]). The scope's drift
//! inputs (pooled gold answers and label times per day) go to every worker as [`Basis`] entries,
//! restricted to the days before the scope's newest day: a reading of an annotator on day `d`
//! uses only the scope's days before `d`, so live input on the scope's current day changes no
//! annotator's comparison, and only a new day or a late event on an earlier day re-evaluates them.

use std::collections::{BTreeMap, HashMap};

use foldhash::fast::RandomState;
use serde::{Deserialize, Serialize};

use crate::alerts;
use crate::dataflow::Sums;
use crate::drift::{self, DriftSettings, ScopeInputs};
use crate::keyed::Keyed;
use crate::label::LabelId;
use crate::objects::{Agreement, KrippendorffAlpha, ScopeSummary, WindowSummary};
use crate::pairs::KAPPA_SCALE;
use crate::records::{Entity, Record};
use crate::source::{is_window, window_size_name, AnnotatorId, Catalog, Day, ScopeId};
use crate::stats::{self, Coincidences, Level};
use crate::summary::Metric;

/// What one update adds to a scope's sums (the values are the update's [`Sums`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScopeSum {
    /// Items with `raters` labels whose newest label is on `day` (0 in windows):
    /// `(items, sum_k n_k (n_k - 1), items where one label has more than half of the labels)`.
    Items { day: Day, raters: u32 },
    /// Labels `label` on those items: `(labels, 0, 0)`.
    Share { day: Day, raters: u32, label: LabelId },
    /// Coincidence weights of pairable items (before division by `r - 1`), `c <= k`:
    /// `(weight, 0, 0)`.
    Coincidence { day: Day, raters: u32, c: LabelId, k: LabelId },
    /// One annotator's labels in the scope: `(labels, 0, 0)`.
    Annotator { annotator: AnnotatorId },
    /// Gold answers: `(answers, correct, 0)`.
    Gold,
    /// Gold answers given on `day` (scopes, not windows): `(answers, errors, 0)`.
    GoldDay { day: Day },
    /// Timed labels of `day` in a duration bucket (scopes, not windows): `(labels, 0, 0)`.
    Speed { day: Day, bucket: u16 },
    /// Pairs with a defined Cohen's kappa: `(pairs, high, low)`, the kappas' fixed-point sum in
    /// two parts that sum exactly in 64 bits ([`kappa_sums`]). The kappas are in the differences,
    /// not the data, so that a scope's pairs consolidate to one update an epoch before they are
    /// exchanged: the pairs of a large scope are hundreds of thousands, all sent to one worker.
    Kappa,
}

/// The bits of a pair's fixed-point kappa in the low part of its [`ScopeSum::Kappa`] sums.
const KAPPA_LOW_BITS: u32 = 32;

/// The [`Sums`] of `diff` pairs of fixed-point kappa `kappa` ([`crate::pairs::KAPPA_SCALE`]):
/// `(diff, diff * high, diff * low)` with `kappa = high * 2^32 + low`, `0 <= low < 2^32`. As a
/// pair's kappa is within `±10^18 < 2^60`, each part stays within `2^32` a pair, and the sums of
/// both are exact in 64 bits for up to `2^31` pairs a scope; the scope adds them up in 128 bits.
pub fn kappa_sums(kappa: i64, diff: i64) -> Sums {
    let (high, low) = (kappa >> KAPPA_LOW_BITS, kappa & ((1 << KAPPA_LOW_BITS) - 1));
    (diff, diff * high, diff * low)
}

/// A scope's drift input of one day, as its annotators on every worker receive it (see the
/// module's documentation for the days sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Basis {
    /// The scope's gold answers of `day`.
    Gold { scope: ScopeId, day: Day, answers: i64, errors: i64 },
    /// The scope's timed labels of `day` in a duration bucket.
    Speed { scope: ScopeId, day: Day, bucket: u16, count: i64 },
}

impl Basis {
    /// Adds the entry, `diff` times, to the inputs of its scope.
    pub fn apply(
        &self,
        inputs: &mut HashMap<ScopeId, ScopeInputs, RandomState>,
        diff: i64,
    ) -> (ScopeId, Day) {
        match *self {
            Basis::Gold { scope, day, answers, errors } => {
                inputs.entry(scope).or_default().gold_days.add(day, [answers * diff, errors * diff]);
                (scope, day)
            }
            Basis::Speed { scope, day, bucket, count } => {
                inputs.entry(scope).or_default().speed.add((day, bucket), [count * diff]);
                (scope, day)
            }
        }
    }
}

/// What a scope derives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ScopeOut {
    Record(Record),
    Metric(Metric),
    Basis(Basis),
}

impl ScopeOut {
    /// The record, if this is one.
    pub fn record(self) -> Option<Record> {
        match self {
            ScopeOut::Record(record) => Some(record),
            _ => None,
        }
    }

    /// The drift summary fact, if this is one.
    pub fn metric(self) -> Option<Metric> {
        match self {
            ScopeOut::Metric(metric) => Some(metric),
            _ => None,
        }
    }
}

/// Adds `delta` into the sums under `key`, removing the entry when it returns to zero.
pub fn add<K: Ord, const N: usize>(map: &mut BTreeMap<K, [i64; N]>, key: K, delta: [i64; N]) {
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

/// The exact sums of one scope.
#[derive(Debug, Default)]
pub struct ScopeState {
    /// `(day, raters) -> [items, agreeing pairs, items with a majority label]`.
    items: BTreeMap<(Day, u32), [i64; 3]>,
    /// `(day, raters, label) -> [labels]`.
    shares: BTreeMap<(Day, u32, LabelId), [i64; 1]>,
    /// `(day, raters, c, k) -> [weight]`, `c <= k`.
    coincidences: BTreeMap<(Day, u32, LabelId, LabelId), [i64; 1]>,
    /// Labels per annotator.
    annotators: BTreeMap<AnnotatorId, [i64; 1]>,
    /// Pooled `[answers, correct]`.
    gold: [i64; 2],
    /// `day -> [answers, errors]`.
    gold_days: BTreeMap<Day, [i64; 2]>,
    /// `(day, bucket) -> [labels]`.
    speed: BTreeMap<(Day, u16), [i64; 1]>,
    /// `[pairs with a defined kappa]` and their kappas' sum (fixed point).
    kappa_count: i64,
    kappa_sum: i128,
}

/// The sums of a scope regardless of day.
struct Totals {
    /// `raters -> [items, agreeing pairs, majority]`.
    items: BTreeMap<u32, [i64; 3]>,
    /// `(raters, label) -> labels`.
    shares: BTreeMap<(u32, LabelId), i64>,
    /// `(raters, c, k) -> weight`.
    coincidences: BTreeMap<(u32, LabelId, LabelId), i64>,
}

impl ScopeState {
    fn totals(&self) -> Totals {
        let mut items: BTreeMap<u32, [i64; 3]> = BTreeMap::new();
        for (&(_, raters), sums) in &self.items {
            let total = items.entry(raters).or_default();
            for (t, s) in total.iter_mut().zip(sums) {
                *t += s;
            }
        }
        let mut shares: BTreeMap<(u32, LabelId), i64> = BTreeMap::new();
        for (&(_, raters, label), [count]) in &self.shares {
            *shares.entry((raters, label)).or_default() += count;
        }
        let mut coincidences: BTreeMap<(u32, LabelId, LabelId), i64> = BTreeMap::new();
        for (&(_, raters, c, k), [weight]) in &self.coincidences {
            *coincidences.entry((raters, c, k)).or_default() += weight;
        }
        Totals { items, shares, coincidences }
    }

    /// The scope object (windows too: their mean Cohen's kappa is null, they have no pairs).
    fn summary(&self, totals: &Totals, project: &str, task: &str, names: &Catalog) -> ScopeSummary {
        let n_items: i64 = totals.items.values().map(|[items, ..]| items).sum();
        let n_labels: i64 = totals.items.iter().map(|(&r, [items, ..])| i64::from(r) * items).sum();
        let (n_pairable_items, percent_agreement) = percent_agreement(&totals.items);
        let majority: i64 = totals.items.range(2..).map(|(_, [.., majority])| majority).sum();
        let shares: Vec<f64> = category_shares(totals).into_values().collect();
        let numeric = totals.shares.keys().all(|(_, label)| names.labels.get(*label).as_number().is_some());
        let coincidences = coincidences(totals, names, numeric);
        let level = |level| numeric.then(|| coincidences.alpha(level));
        ScopeSummary {
            project: project.to_string(),
            task: task.to_string(),
            n_labels,
            n_items,
            n_annotators: self.annotators.len(),
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

/// Pairable items and percent agreement over them, from `raters -> [items, agreeing pairs, _]`.
fn percent_agreement(items: &BTreeMap<u32, [i64; 3]>) -> (i64, Option<f64>) {
    let pairable: i64 = items.range(2..).map(|(_, [items, ..])| items).sum();
    if pairable == 0 {
        return (0, None);
    }
    let sum: f64 = items
        .range(2..)
        .map(|(&r, [_, agreeing, _])| *agreeing as f64 / (f64::from(r) * f64::from(r - 1)))
        .sum();
    (pairable, Some(sum / pairable as f64))
}

/// Category shares `pi_k` over all rated items, by label id.
fn category_shares(totals: &Totals) -> BTreeMap<LabelId, f64> {
    let rated: i64 = totals.items.values().map(|[items, ..]| items).sum();
    let mut shares: BTreeMap<LabelId, f64> = BTreeMap::new();
    for (&(r, label), count) in &totals.shares {
        *shares.entry(label).or_default() += *count as f64 / f64::from(r);
    }
    for v in shares.values_mut() {
        *v /= rated as f64;
    }
    shares
}

/// The pairable marginals and coincidences, categories in the spec's order when `numeric`.
fn coincidences(totals: &Totals, names: &Catalog, numeric: bool) -> Coincidences {
    let mut marginals: BTreeMap<LabelId, i64> = BTreeMap::new();
    for (&(_, label), count) in totals.shares.range((2, 0)..) {
        *marginals.entry(label).or_default() += count;
    }
    let mut categories: Vec<(LabelId, i64)> = marginals.into_iter().collect();
    if numeric {
        categories.sort_by(|a, b| names.labels.get(a.0).spec_cmp(names.labels.get(b.0)));
    }
    let index: HashMap<LabelId, usize, RandomState> =
        categories.iter().enumerate().map(|(i, (l, _))| (*l, i)).collect();
    let q = categories.len();
    let mut matrix = vec![vec![0.0; q]; q];
    for (&(r, c, k), weight) in &totals.coincidences {
        let (ci, ki) = (index[&c], index[&k]);
        let o = *weight as f64 / f64::from(r - 1);
        matrix[ci][ki] += o;
        if ci != ki {
            matrix[ki][ci] += o;
        }
    }
    Coincidences {
        values: categories.iter().map(|(l, _)| names.labels.get(*l).as_number().unwrap_or(0.0)).collect(),
        marginals: categories.iter().map(|(_, n)| *n).collect(),
        matrix,
    }
}

/// The keyed logic of scopes (and window scopes).
pub struct ScopeLogic {
    pub drift: DriftSettings,
}

impl Keyed for ScopeLogic {
    type Key = ScopeId;
    type Update = ScopeSum;
    type Diff = Sums;
    type State = ScopeState;
    type Out = ScopeOut;
    type Side = ();
    const KEEP_OUTPUTS: bool = true;

    fn route(key: &ScopeId) -> u64 {
        *key
    }

    fn apply(&mut self, _: &ScopeId, s: &mut ScopeState, update: &ScopeSum, &(x, y, z): &Sums) {
        match *update {
            ScopeSum::Items { day, raters } => add(&mut s.items, (day, raters), [x, y, z]),
            ScopeSum::Share { day, raters, label } => add(&mut s.shares, (day, raters, label), [x]),
            ScopeSum::Coincidence { day, raters, c, k } => add(&mut s.coincidences, (day, raters, c, k), [x]),
            ScopeSum::Annotator { annotator } => add(&mut s.annotators, annotator, [x]),
            ScopeSum::Gold => {
                s.gold[0] += x;
                s.gold[1] += y;
            }
            ScopeSum::GoldDay { day } => add(&mut s.gold_days, day, [x, y]),
            ScopeSum::Speed { day, bucket } => add(&mut s.speed, (day, bucket), [x]),
            ScopeSum::Kappa => {
                s.kappa_count += x;
                s.kappa_sum += (i128::from(y) << KAPPA_LOW_BITS) + i128::from(z);
            }
        }
    }

    fn derive(&mut self, &scope: &ScopeId, s: &mut ScopeState, names: &Catalog, out: &mut Vec<ScopeOut>) {
        if s.items.is_empty() {
            return;
        }
        let (project, task) = names.scope_name(scope);
        let totals = s.totals();
        let summary = s.summary(&totals, project, task, names);
        if is_window(scope) {
            let Some(window) = names.window(scope) else { return };
            let object = WindowSummary {
                size: window_size_name(window.size_ms),
                start: drift::rfc3339(window.start_ms),
                end: drift::rfc3339(window.start_ms + window.size_ms),
                summary,
            };
            let entity = Entity::Window { size_ms: window.size_ms, start_ms: window.start_ms };
            out.push(ScopeOut::Record(Record::new(project, task, entity, &object)));
            return;
        }
        let config = self.drift.for_project(project);
        let pairable = |map: &BTreeMap<(Day, u32), [i64; 3]>| -> BTreeMap<(Day, u32), [i64; 1]> {
            map.iter().filter(|((_, r), _)| *r >= 2).map(|(&k, &[n, ..])| (k, [n])).collect()
        };
        let shares: BTreeMap<(Day, u32, LabelId), [i64; 1]> =
            s.shares.iter().filter(|((_, r, _), _)| *r >= 2).map(|(&k, &v)| (k, v)).collect();
        let by_day = alerts::alpha_by_day(&pairable(&s.items), &shares, &s.coincidences);
        let gold_by_day = alerts::gold_by_day(&s.gold_days);
        for alert in alerts::scope_alerts(&summary, config, &by_day, &gold_by_day) {
            if alert.status == drift::AlertStatus::Firing {
                let firing = Metric::Firing { project: project.into(), severity: alert.severity };
                out.push(ScopeOut::Metric(firing));
            }
            out.push(ScopeOut::Record(Record::new(
                project,
                task,
                Entity::Alert(alert.id.as_str().into()),
                &alert,
            )));
        }
        out.push(ScopeOut::Record(Record::new(project, task, Entity::Scope, &summary)));
        // The drift inputs of the days before the newest (all gold days without a baseline lag:
        // then a reading on a day uses that day's gold answers too).
        let newest = s.items.keys().next_back().map_or(Day::MIN, |&(day, _)| day);
        let gold_until = if config.gold_baseline_lag_days == 0 { Day::MAX } else { newest };
        for (&day, &[answers, errors]) in s.gold_days.range(..gold_until) {
            out.push(ScopeOut::Basis(Basis::Gold { scope, day, answers, errors }));
        }
        for (&(day, bucket), &[count]) in s.speed.range(..(newest, 0)) {
            out.push(ScopeOut::Basis(Basis::Speed { scope, day, bucket, count }));
        }
    }

    fn is_empty(s: &ScopeState) -> bool {
        s.items.is_empty()
            && s.shares.is_empty()
            && s.coincidences.is_empty()
            && s.annotators.is_empty()
            && s.gold == [0, 0]
            && s.gold_days.is_empty()
            && s.speed.is_empty()
            && s.kappa_count == 0
            && s.kappa_sum == 0
    }

    fn is_record(out: &ScopeOut) -> bool {
        matches!(out, ScopeOut::Record(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The split kappas add up to the fixed-point sum exactly, whatever their signs, and cancel
    /// on retraction.
    #[test]
    fn kappa_parts_sum_to_the_exact_fixed_point_sum() {
        let kappas: Vec<i64> = vec![
            1_000_000_000_000_000_000,
            -1_000_000_000_000_000_000,
            0,
            1,
            -1,
            (1 << 32) - 1,
            -(1 << 32),
            333_333_333_333_333_333,
            -999_999_999_999_999_999,
            123_456_789,
        ];
        let mut state = ScopeState::default();
        let mut logic = ScopeLogic { drift: DriftSettings::default() };
        let mut exact: i128 = 0;
        for (i, &kappa) in kappas.iter().cycle().take(1000).enumerate() {
            let diff = if i % 7 == 3 { 2 } else { 1 };
            exact += i128::from(kappa) * i128::from(diff);
            logic.apply(&0, &mut state, &ScopeSum::Kappa, &kappa_sums(kappa, diff));
        }
        assert_eq!((state.kappa_count, state.kappa_sum), (1000 + 1000 / 7 + 1, exact));
        for (i, &kappa) in kappas.iter().cycle().take(1000).enumerate() {
            let diff = if i % 7 == 3 { 2 } else { 1 };
            logic.apply(&0, &mut state, &ScopeSum::Kappa, &kappa_sums(kappa, -diff));
        }
        assert!(ScopeLogic::is_empty(&state));
    }
}
