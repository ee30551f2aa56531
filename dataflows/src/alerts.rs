//! Alerts (spec: the alerts topic), and when each condition began and ended, in event-time days.
//!
//! - Scope alerts, derived by the scope's operator ([`crate::scopes`]) from its sums: nominal
//!   alpha under `alpha_floor` with at least `alpha_min_items` pairable items
//!   (`alpha_below_floor`), pooled gold accuracy under `gold_target` with at least
//!   `gold_target_min_answers` answers (`gold_below_target`); both critical.
//! - Drift alerts, derived here per scope ([`AlertLogic`]) from its annotators' drift timelines:
//!   a day on which more than `population_share` of at least `population_min_annotators`
//!   annotators are in alarm on one signal is a population shift (one warning per run of such
//!   days); an annotator's alarm episode is an `annotator_drift` warning, unless it began during a
//!   population shift of the same signal.
//!
//! A scope alert's condition is read as of the end of each day from exact per-day sums (the
//! scope's items by the day of their newest label, its gold answers by the day they were given,
//! its population counts), so that `started` and `resolved` depend only on the data and its event
//! time, as every other decision does: the report and the live service agree on them, and a
//! restart re-derives the same ones.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dataflow::Diff;
use crate::drift::{self, Alert, AlertStatus, DriftConfig, DriftSettings, Severity, Signal};
use crate::keyed::Keyed;
use crate::label::LabelId;
use crate::objects::ScopeSummary;
use crate::records::{Entity, Record};
use crate::source::{AnnotatorId, Catalog, Day, ScopeId};
use crate::stats::{Coincidences, Level};
use crate::summary::Metric;

/// The runs of a condition over days: `(day, holds)` in day order (days without data are not
/// listed, and do not break a run) give `(first day it held, first later day it did not)` for
/// each run, the second `None` for a run that still holds on the last day.
pub fn runs(days: impl IntoIterator<Item = (Day, bool)>) -> Vec<(Day, Option<Day>)> {
    let mut out: Vec<(Day, Option<Day>)> = Vec::new();
    let mut open: Option<Day> = None;
    for (day, holds) in days {
        match (open, holds) {
            (None, true) => open = Some(day),
            (Some(start), false) => {
                out.push((start, Some(day)));
                open = None;
            }
            _ => {}
        }
    }
    out.extend(open.map(|start| (start, None)));
    out
}

/// The scope's nominal Krippendorff's alpha as of the end of each day: over the items whose
/// newest label is on that day or before, with their current labels. `(day, pairable items,
/// alpha)` for each day with items, ascending; the last equals the scope's alpha now (up to the
/// order of float sums). The inputs are the scope's pairable sums by day: items `(day, raters) ->
/// [items]`, marginals `(day, raters, label) -> [labels]` and coincidence weights `(day, raters,
/// c, k) -> [weight]` (before division by `raters - 1`).
pub fn alpha_by_day(
    items: &BTreeMap<(Day, u32), [i64; 1]>,
    shares: &BTreeMap<(Day, u32, LabelId), [i64; 1]>,
    coincidences: &BTreeMap<(Day, u32, LabelId, LabelId), [i64; 1]>,
) -> Vec<(Day, i64, Option<f64>)> {
    let mut out = Vec::new();
    let (mut n_items, mut marginals, mut weights) = (0i64, BTreeMap::<LabelId, i64>::new(), BTreeMap::new());
    let (mut shares, mut coincidences) = (shares.iter().peekable(), coincidences.iter().peekable());
    let mut days = items.iter().peekable();
    while let Some(&(&(day, _), _)) = days.peek() {
        while let Some((_, [n])) = days.next_if(|((d, _), _)| *d == day) {
            n_items += n;
        }
        while let Some((&(_, _, label), [n])) = shares.next_if(|((d, ..), _)| *d <= day) {
            *marginals.entry(label).or_default() += n;
        }
        while let Some((&(_, raters, c, k), [w])) = coincidences.next_if(|((d, ..), _)| *d <= day) {
            *weights.entry((c, k)).or_insert(0.0) += *w as f64 / f64::from(raters - 1);
        }
        let labels: Vec<(LabelId, i64)> =
            marginals.iter().filter(|(_, n)| **n > 0).map(|(l, n)| (*l, *n)).collect();
        let index: BTreeMap<LabelId, usize> = labels.iter().enumerate().map(|(i, (l, _))| (*l, i)).collect();
        let mut matrix = vec![vec![0.0; labels.len()]; labels.len()];
        for (&(c, k), &o) in &weights {
            if let (Some(&ci), Some(&ki)) = (index.get(&c), index.get(&k)) {
                matrix[ci][ki] += o;
                if ci != ki {
                    matrix[ki][ci] += o;
                }
            }
        }
        let coincidences = Coincidences {
            values: vec![0.0; labels.len()],
            marginals: labels.iter().map(|(_, n)| *n).collect(),
            matrix,
        };
        out.push((day, n_items, coincidences.alpha(Level::Nominal)));
    }
    out
}

/// The scope's pooled gold accuracy as of the end of each day, over the gold answers given on
/// that day or before: `(day, answers, accuracy)` for each day with gold answers, ascending, from
/// `day -> [answers, errors]`.
pub fn gold_by_day(gold_days: &BTreeMap<Day, [i64; 2]>) -> Vec<(Day, i64, f64)> {
    let (mut n, mut errors) = (0, 0);
    gold_days
        .iter()
        .filter_map(|(&day, &[answers, wrong])| {
            n += answers;
            errors += wrong;
            (n > 0).then(|| (day, n, (n - errors) as f64 / n as f64))
        })
        .collect()
}

/// A scope alert without its condition's days.
fn scope_alert(
    id: String,
    severity: Severity,
    kind: &'static str,
    project: &str,
    task: &str,
    summary: String,
) -> Alert {
    Alert {
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
    }
}

/// The alpha and gold alerts of a scope (each listed once the scope has the evidence to judge it),
/// from its numbers now and as of the end of each day (`alpha_by_day`, `gold_by_day`).
pub fn scope_alerts(
    summary: &ScopeSummary,
    config: &DriftConfig,
    alpha_days: &[(Day, i64, Option<f64>)],
    gold_days: &[(Day, i64, f64)],
) -> Vec<Alert> {
    let (project, task) = (summary.project.as_str(), summary.task.as_str());
    let mut alerts = Vec::new();
    // Alpha under its floor: as of the end of each day, the last day being now.
    let alpha_now = summary.agreement.krippendorff_alpha.nominal;
    let below_floor = |n: i64, alpha: Option<f64>| {
        n >= config.alpha_min_items && alpha.is_some_and(|a| a < config.alpha_floor)
    };
    let last = alpha_days.len().saturating_sub(1);
    let days = alpha_days.iter().enumerate().map(|(i, &(day, n, alpha))| {
        (
            day,
            if i == last { below_floor(summary.n_pairable_items, alpha_now) } else { below_floor(n, alpha) },
        )
    });
    let run = runs(days).last().copied();
    if let Some(alpha) = alpha_now.filter(|_| summary.n_pairable_items >= config.alpha_min_items) {
        let id = drift::scope_alert_id(project, task, "alpha_below_floor");
        let alert = scope_alert(
            id,
            Severity::Critical,
            "alpha_below_floor",
            project,
            task,
            format!(
                "agreement beyond chance (Krippendorff's alpha) {alpha:.3} on {} items with two or more labels, {} the floor {}",
                summary.n_pairable_items,
                condition_words(run),
                config.alpha_floor
            ),
        );
        alerts.push(with_run(alert, run));
    }
    // Pooled gold accuracy under its target: as of the end of each day, the last being now.
    let under_target =
        |n: i64, accuracy: f64| n >= config.gold_target_min_answers && accuracy < config.gold_target;
    let last = gold_days.len().saturating_sub(1);
    let gold_now = summary.gold.as_ref();
    let days = gold_days.iter().enumerate().map(|(i, &(day, n, accuracy))| {
        let holds = if i == last {
            gold_now.is_some_and(|g| under_target(g.n, g.accuracy))
        } else {
            under_target(n, accuracy)
        };
        (day, holds)
    });
    let run = runs(days).last().copied();
    if let Some(gold) = gold_now.filter(|g| g.n >= config.gold_target_min_answers) {
        let id = drift::scope_alert_id(project, task, "gold_below_target");
        let alert = scope_alert(
            id,
            Severity::Critical,
            "gold_below_target",
            project,
            task,
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
        alerts.push(with_run(alert, run));
    }
    alerts
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

/// What an annotator's drift timeline contributes to its scope's drift alerts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlertInput {
    /// The annotator was evaluated on the signals of `evaluated` on each of its active days, and
    /// was in alarm on those of `alarmed`: `(day, alarmed)` (sets of [`Signal::bit`]). One input
    /// for all its days, so that a re-evaluation that moves no state compares one value.
    Population { evaluated: u8, alarmed: Vec<(Day, u8)> },
    /// An alarm episode of the annotator (only when the project's annotator alerts are on).
    Episode { annotator: AnnotatorId, signal: Signal, start: Day, end: Option<Day>, explanation: String },
}

/// The drift inputs of one scope's alerts.
#[derive(Debug, Default)]
pub struct AlertState {
    /// `(signal, day) -> [annotators evaluated, in alarm]`.
    population: drift::PopulationCounts,
    /// Alarm episodes with their multiplicity.
    episodes: BTreeMap<(AnnotatorId, Signal, Day, Option<Day>, String), Diff>,
}

/// What a scope's drift alerts derive: their records, and the firing ones for the metrics.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AlertOut {
    Record(Record),
    Metric(Metric),
}

impl AlertOut {
    /// The record, if this is one.
    pub fn record(self) -> Option<Record> {
        match self {
            AlertOut::Record(record) => Some(record),
            AlertOut::Metric(_) => None,
        }
    }

    /// The drift summary fact, if this is one.
    pub fn metric(self) -> Option<Metric> {
        match self {
            AlertOut::Metric(metric) => Some(metric),
            AlertOut::Record(_) => None,
        }
    }
}

/// The keyed logic of the drift alerts of each scope.
pub struct AlertLogic {
    pub drift: DriftSettings,
}

impl Keyed for AlertLogic {
    type Key = ScopeId;
    type Update = AlertInput;
    type Diff = Diff;
    type State = AlertState;
    type Out = AlertOut;
    type Side = ();
    const KEEP_OUTPUTS: bool = true;

    fn route(key: &ScopeId) -> u64 {
        *key
    }

    fn apply(&mut self, _: &ScopeId, s: &mut AlertState, update: &AlertInput, &diff: &Diff) {
        match update {
            AlertInput::Population { evaluated, alarmed } => {
                for signal in Signal::ALL.into_iter().filter(|s| evaluated & s.bit() != 0) {
                    for &(day, alarmed) in alarmed {
                        let alarm = i64::from(alarmed & signal.bit() != 0);
                        crate::scopes::add(&mut s.population, (signal, day), [diff, diff * alarm]);
                    }
                }
            }
            AlertInput::Episode { annotator, signal, start, end, explanation } => {
                let key = (*annotator, *signal, *start, *end, explanation.clone());
                let m = s.episodes.entry(key.clone()).or_default();
                *m += diff;
                if *m == 0 {
                    s.episodes.remove(&key);
                }
            }
        }
    }

    fn derive(&mut self, &scope: &ScopeId, s: &mut AlertState, names: &Catalog, out: &mut Vec<AlertOut>) {
        let (project, task) = names.scope_name(scope);
        let config = self.drift.for_project(project);
        let base = |id: String, kind, summary: String| {
            scope_alert(id, Severity::Warning, kind, project, task, summary)
        };
        let mut alerts = Vec::new();
        // Population shifts: each run of days on which one held, as one alert.
        let mut shifts: Vec<(Signal, Day, Option<Day>)> = Vec::new();
        for signal in Signal::ALL {
            let days = s
                .population
                .range((signal, Day::MIN)..=(signal, Day::MAX))
                .map(|(&(_, day), &counts)| (day, drift::population_shift(counts, config)));
            for (start, end) in runs(days) {
                let [active, alarmed] = s.population[&(signal, start)];
                let id =
                    drift::alert_id(&[project, task, "population_shift", signal.name(), &drift::date(start)]);
                let mut alert = base(
                    id,
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
                alerts.push(alert);
                shifts.push((signal, start, end));
            }
        }
        for (annotator, signal, start, end, explanation) in s.episodes.keys() {
            // An alarm that began during a population shift is the shift's, not the annotator's.
            let during = |&&(shift, from, to): &&(Signal, Day, Option<Day>)| {
                shift == *signal && from <= *start && to.is_none_or(|e| *start < e)
            };
            if shifts.iter().any(|shift| during(&shift)) {
                continue;
            }
            let name = names.annotators.name(*annotator);
            let started = drift::date(*start);
            let id = drift::alert_id(&[project, task, "annotator_drift", name, signal.name(), &started]);
            let mut alert = base(id, "annotator_drift", format!("{name}: {explanation}"));
            alert.annotator_id = Some(name.to_string());
            alert.signal = Some(*signal);
            alert.started = Some(started);
            if let Some(end) = end {
                alert.status = AlertStatus::Resolved;
                alert.resolved = Some(drift::date(*end));
            }
            alerts.push(alert);
        }
        for alert in alerts {
            if alert.status == AlertStatus::Firing {
                out.push(AlertOut::Metric(Metric::Firing {
                    project: project.into(),
                    severity: alert.severity,
                }));
            }
            let entity = Entity::Alert(alert.id.as_str().into());
            out.push(AlertOut::Record(Record::new(project, task, entity, &alert)));
        }
    }

    fn is_empty(s: &AlertState) -> bool {
        s.population.is_empty() && s.episodes.is_empty()
    }

    fn is_record(out: &AlertOut) -> bool {
        matches!(out, AlertOut::Record(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_a_condition() {
        let days = [(1, false), (2, true), (3, true), (5, false), (6, true)];
        assert_eq!(runs(days), vec![(2, Some(5)), (6, None)]);
        assert_eq!(runs([(1, false)]), vec![]);
        assert_eq!(runs([(4, true), (9, true)]), vec![(4, None)]);
    }

    #[test]
    fn alpha_and_gold_as_of_each_day() {
        // Day 1: two items labelled (a, a) and (b, b): perfect agreement. Day 2: two items
        // labelled (a, b): alpha drops to 1 - (n-1) Do/De with n = 8, Do = 4, De = 2*16 = 32.
        let (a, b) = (1, 2);
        let items = BTreeMap::from([((1, 2), [2]), ((2, 2), [2])]);
        let shares = BTreeMap::from([((1, 2, a), [2]), ((1, 2, b), [2]), ((2, 2, a), [2]), ((2, 2, b), [2])]);
        let coincidences = BTreeMap::from([((1, 2, a, a), [2]), ((1, 2, b, b), [2]), ((2, 2, a, b), [2])]);
        let by_day = alpha_by_day(&items, &shares, &coincidences);
        assert_eq!(by_day.len(), 2);
        assert_eq!((by_day[0].0, by_day[0].1, by_day[0].2), (1, 2, Some(1.0)));
        let (day, n, alpha) = by_day[1];
        assert_eq!((day, n), (2, 4));
        assert!((alpha.unwrap() - (1.0 - 7.0 * 4.0 / 32.0)).abs() < 1e-12, "{alpha:?}");

        let gold = gold_by_day(&BTreeMap::from([(3, [10, 1]), (4, [10, 5])]));
        assert_eq!(gold, vec![(3, 10, 0.9), (4, 20, 0.7)]);
    }
}
