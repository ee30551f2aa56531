//! Annotator drift, gating and alerts: pure functions from an annotator's exact event-time sums
//! (kept by [`crate::annotators`] from the dataflow's drift facts) to signal states, gate decisions and
//! alerts. Everything here depends only on event time and the data, never on wall-clock time or
//! on how updates were batched: an annotator's whole history is re-evaluated, in event-time order,
//! whenever any of its sums change, so a corrected gold answer re-decides everything that rested
//! on it. Floats appear only here, when a final number is formed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};

use crate::dataflow::{DURATION_BUCKETS_PER_E, FIXED_POINT};
use crate::label::LabelId;
use crate::preferences::PreferenceSettings;
use crate::source::{Day, ItemId, DAY_MS};
use crate::stats;

mod sides;

/// The drift signals, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Gold,
    Agreement,
    LabelMix,
    Speed,
    TooFast,
    /// Pairwise preferences: favouring one side of the screen (spec 2.2, [`sides`]).
    Position,
    /// Pairwise preferences: saying tie too often.
    Ties,
}

impl Signal {
    /// Number of signals.
    pub const COUNT: usize = 7;
    pub const ALL: [Signal; Signal::COUNT] = [
        Signal::Gold,
        Signal::Agreement,
        Signal::LabelMix,
        Signal::Speed,
        Signal::TooFast,
        Signal::Position,
        Signal::Ties,
    ];

    /// Whether the signal reads pairwise comparisons (annotators without any have no reading
    /// and no state of it).
    pub fn is_preference(self) -> bool {
        matches!(self, Signal::Position | Signal::Ties)
    }

    /// The signal's name in outputs, metrics and configuration.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Gold => "gold",
            Signal::Agreement => "agreement",
            Signal::LabelMix => "label_mix",
            Signal::Speed => "speed",
            Signal::TooFast => "too_fast",
            Signal::Position => "position",
            Signal::Ties => "ties",
        }
    }

    /// What the signal watches, in plain words (for screens and alert summaries).
    pub fn title(self) -> &'static str {
        match self {
            Signal::Gold => "gold accuracy",
            Signal::Agreement => "agreement with others",
            Signal::LabelMix => "label mix",
            Signal::Speed => "speed",
            Signal::TooFast => "labels too fast",
            Signal::Position => "position bias",
            Signal::Ties => "tie rate",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The state of one (annotator, signal), ordered from least to most telling: a state with data
/// outranks `insufficient`, and `alarm` outranks every other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalState {
    /// The signal lacks its minimum data (see [`SignalReport::note`]): the annotator is not judged
    /// on it, neither `ok` nor flagged.
    #[default]
    Insufficient,
    /// Enough data, and the evidence is under half the alarm level.
    Ok,
    /// Evidence at half the alarm level or more.
    Watch,
    /// Evidence at the alarm level (held for the cool-down, cleared after clean days).
    Alarm,
}

impl SignalState {
    pub const ALL: [SignalState; 4] =
        [SignalState::Insufficient, SignalState::Ok, SignalState::Watch, SignalState::Alarm];

    /// The state's name in outputs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            SignalState::Insufficient => "insufficient",
            SignalState::Ok => "ok",
            SignalState::Watch => "watch",
            SignalState::Alarm => "alarm",
        }
    }
}

/// The gate of one (project, annotator): whether the labelling platform should route work to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateState {
    /// Too few gold answers to judge.
    #[default]
    Warmup,
    Allow,
    /// Re-admitted after a block, watched until it has shown enough good answers.
    Probation,
    Block,
}

impl GateState {
    pub const ALL: [GateState; 4] =
        [GateState::Allow, GateState::Warmup, GateState::Probation, GateState::Block];

    pub fn name(self) -> &'static str {
        match self {
            GateState::Warmup => "warmup",
            GateState::Allow => "allow",
            GateState::Probation => "probation",
            GateState::Block => "block",
        }
    }
}

fn default_true() -> bool {
    true
}

/// Drift, gate and alert settings of one project. Every field has a default (see
/// `configs/labelqc.toml`, `[drift]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Windows (days) of the gold evidence score; the score is the largest over them.
    pub gold_windows_days: Vec<u32>,
    /// Gold answers a window needs before it counts.
    pub gold_min_answers: i64,
    /// Alarm when the gold evidence (log-likelihood ratio) reaches this; watch at half of it.
    pub gold_threshold: f64,
    /// Length of the annotator's own baseline period, which ends `gold_baseline_lag_days` ago.
    pub gold_baseline_days: u32,
    pub gold_baseline_lag_days: u32,
    /// Own gold answers in the baseline period needed to use the annotator's own error rate
    /// (else the scope's).
    pub gold_baseline_min_answers: i64,
    /// Pseudo-answers at the scope's error rate that shrink the own baseline.
    pub gold_shrink_answers: f64,
    /// Normal quantile of the one-sided upper bound the baseline is raised to (0.8416: 80%).
    pub gold_baseline_z: f64,
    /// Window (days) of the agreement gap and label mix signals.
    pub peer_window_days: u32,
    /// Items the agreement gap needs in its window.
    pub agreement_min_items: i64,
    /// Alarm when the mean gap is at most this (negative) and its z at most `agreement_z`.
    pub agreement_gap: f64,
    pub agreement_z: f64,
    /// Labels the label-mix signal needs in its window.
    pub label_mix_min_labels: i64,
    /// Alarm when the Jensen-Shannon distance reaches this and the G-test p-value is below
    /// `label_mix_p`.
    pub label_mix_distance: f64,
    pub label_mix_p: f64,
    /// Speed: the recent window (days) and the own baseline before it (days).
    pub speed_window_days: u32,
    pub speed_baseline_days: u32,
    /// Timed labels each of the two periods needs.
    pub speed_min_labels: i64,
    /// Flag when the geometric-mean time ratio (recent / baseline) is at most this.
    pub speed_ratio: f64,
    /// Too fast: a label under max(`too_fast_floor_ms`, `too_fast_median_share` x the scope's
    /// median time).
    pub too_fast_floor_ms: f64,
    pub too_fast_median_share: f64,
    /// Flag when the recent too-fast share is at least this multiple of the baseline share with
    /// z above `too_fast_z`.
    pub too_fast_multiple: f64,
    pub too_fast_z: f64,
    /// ... and at least this share of labels too fast.
    pub too_fast_min_share: f64,
    /// Minimum days an alarm lasts.
    pub cooldown_days: u32,
    /// Days without a watch-level reading before an alarm clears.
    pub clear_days: u32,
    /// Population shift: at least this many annotators evaluated on a day ...
    pub population_min_annotators: i64,
    /// ... of whom more than this share are in alarm on the same signal: one scope alert
    /// replaces their individual ones.
    pub population_share: f64,
    /// Gate: the accuracy the project requires of gold answers.
    pub gate_threshold: f64,
    /// Gold answers (in the recent window) before an annotator is judged.
    pub gate_min_answers: i64,
    /// The recent window: gold answers within this many days of the newest one ...
    pub gate_window_days: u32,
    /// ... and at most this many.
    pub gate_window_answers: usize,
    /// Re-admission needs the Wilson lower bound at the threshold plus this margin.
    pub gate_margin: f64,
    /// Days a block lasts at least.
    pub gate_block_days: u32,
    /// Gold answers after re-admission before probation can end in `allow`.
    pub gate_probation_answers: i64,
    /// Signals whose alarm also blocks (besides the gold accuracy rule).
    pub gate_on_alarm: Vec<Signal>,
    /// Scope alerts: nominal alpha under this floor (with enough pairable items) ...
    pub alpha_floor: f64,
    pub alpha_min_items: i64,
    /// ... and pooled gold accuracy under this target (with enough gold answers).
    pub gold_target: f64,
    pub gold_target_min_answers: i64,
    /// Whether annotator alarms raise alerts.
    #[serde(default = "default_true")]
    pub annotator_alerts: bool,
    /// Annotators per signal exported to Prometheus as the watchlist (the K most flagged).
    pub watchlist_size: usize,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            gold_windows_days: vec![1, 3, 7, 14],
            gold_min_answers: 20,
            gold_threshold: 5.0,
            gold_baseline_days: 28,
            gold_baseline_lag_days: 14,
            gold_baseline_min_answers: 200,
            gold_shrink_answers: 50.0,
            gold_baseline_z: 0.8416212335729143,
            peer_window_days: 7,
            agreement_min_items: 50,
            agreement_gap: -0.10,
            agreement_z: -3.0,
            label_mix_min_labels: 200,
            label_mix_distance: 0.10,
            label_mix_p: 1e-4,
            speed_window_days: 7,
            speed_baseline_days: 28,
            speed_min_labels: 50,
            speed_ratio: 0.6,
            too_fast_floor_ms: 2000.0,
            too_fast_median_share: 0.25,
            too_fast_multiple: 3.0,
            too_fast_z: 3.0,
            too_fast_min_share: 0.05,
            cooldown_days: 7,
            clear_days: 3,
            population_min_annotators: 20,
            population_share: 0.2,
            gate_threshold: 0.7,
            gate_min_answers: 10,
            gate_window_days: 14,
            gate_window_answers: 100,
            gate_margin: 0.05,
            gate_block_days: 3,
            gate_probation_answers: 20,
            gate_on_alarm: Vec::new(),
            alpha_floor: 0.667,
            alpha_min_items: 50,
            gold_target: 0.8,
            gold_target_min_answers: 50,
            annotator_alerts: true,
            watchlist_size: 10,
        }
    }
}

/// Why a drift configuration cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("drift setting {field} = {value}: {expected}")]
pub struct DriftConfigError {
    pub field: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl DriftConfig {
    /// Checks that every setting is usable.
    pub fn validate(&self) -> Result<(), DriftConfigError> {
        let fail = |field, value: &dyn std::fmt::Display, expected| {
            Err(DriftConfigError { field, value: value.to_string(), expected })
        };
        if self.gold_windows_days.is_empty() || self.gold_windows_days.contains(&0) {
            return fail(
                "gold_windows_days",
                &format!("{:?}", self.gold_windows_days),
                "a list of positive day counts",
            );
        }
        for (field, value) in [
            ("gate_threshold", self.gate_threshold),
            ("gold_target", self.gold_target),
            ("population_share", self.population_share),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return fail(field, &value, "a number from 0 to 1");
            }
        }
        if !(-1.0..=1.0).contains(&self.alpha_floor) {
            return fail("alpha_floor", &self.alpha_floor, "a number from -1 to 1");
        }
        if !(0.0..1.0).contains(&(self.gate_threshold + self.gate_margin)) || self.gate_margin < 0.0 {
            return fail(
                "gate_margin",
                &self.gate_margin,
                "at least 0, with gate_threshold + gate_margin under 1",
            );
        }
        for (field, value) in [
            ("gold_threshold", self.gold_threshold),
            ("agreement_z", -self.agreement_z),
            ("agreement_gap", -self.agreement_gap),
            ("label_mix_distance", self.label_mix_distance),
            ("label_mix_p", self.label_mix_p),
            ("speed_ratio", self.speed_ratio),
            ("too_fast_multiple", self.too_fast_multiple),
            ("gold_baseline_z", self.gold_baseline_z),
        ] {
            if !(value > 0.0 && value.is_finite()) {
                return fail(field, &value, "a positive number (agreement_gap and agreement_z: negative)");
            }
        }
        for (field, value) in [
            ("gate_min_answers", self.gate_min_answers),
            ("gold_min_answers", self.gold_min_answers),
            ("agreement_min_items", self.agreement_min_items),
            ("label_mix_min_labels", self.label_mix_min_labels),
            ("speed_min_labels", self.speed_min_labels),
            ("population_min_annotators", self.population_min_annotators),
            ("gate_window_answers", self.gate_window_answers as i64),
        ] {
            if value < 1 {
                return fail(field, &value, "at least 1");
            }
        }
        for (field, value) in [
            ("peer_window_days", self.peer_window_days),
            ("speed_window_days", self.speed_window_days),
            ("speed_baseline_days", self.speed_baseline_days),
            ("gate_window_days", self.gate_window_days),
            ("gold_baseline_days", self.gold_baseline_days),
        ] {
            if value < 1 {
                return fail(field, &value, "at least 1 day");
            }
        }
        Ok(())
    }
}

/// Drift settings for every project: defaults, and whole per-project replacements.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DriftSettings {
    pub defaults: DriftConfig,
    /// Settings of named projects; a field a project leaves out takes its built-in default.
    pub projects: BTreeMap<String, DriftConfig>,
}

impl DriftSettings {
    /// The settings of `project`.
    pub fn for_project(&self, project: &str) -> &DriftConfig {
        self.projects.get(project).unwrap_or(&self.defaults)
    }

    pub fn validate(&self) -> Result<(), DriftConfigError> {
        self.defaults.validate()?;
        self.projects.values().try_for_each(DriftConfig::validate)
    }
}

/// The exact event-time sums of one annotator within one scope.
#[derive(Clone, Debug, Default)]
pub struct AnnotatorInputs {
    /// `day -> [items, sum d, sum d^2]` of the agreement gap (fixed point).
    pub gap: BTreeMap<Day, [i64; 3]>,
    /// `(day, label) -> [own, peer share]` (peer share in fixed point).
    pub mix: BTreeMap<(Day, LabelId), [i64; 2]>,
    /// `(day, duration bucket) -> [labels]`.
    pub speed: BTreeMap<(Day, u16), [i64; 1]>,
    /// Gold answers `(ts_ms, item, correct) -> multiplicity`.
    pub gold: BTreeMap<(i64, ItemId, bool), i64>,
    /// `day -> [left, right, ties]`: comparisons (preference events) by the side chosen.
    pub sides: BTreeMap<Day, [i64; 3]>,
}

impl AnnotatorInputs {
    pub fn is_empty(&self) -> bool {
        self.gap.is_empty()
            && self.mix.is_empty()
            && self.speed.is_empty()
            && self.gold.is_empty()
            && self.sides.is_empty()
    }

    /// Gold answers per day: `day -> [answers, errors]`.
    fn gold_days(&self) -> BTreeMap<Day, [i64; 2]> {
        let mut days: BTreeMap<Day, [i64; 2]> = BTreeMap::new();
        for (&(ts, _, correct), &m) in &self.gold {
            let d = days.entry(ts.div_euclid(DAY_MS) as Day).or_default();
            d[0] += m;
            d[1] += if correct { 0 } else { m };
        }
        days
    }

    /// The days with any input, ascending.
    fn active_days(&self, gold_days: &BTreeMap<Day, [i64; 2]>) -> Vec<Day> {
        let mut days: Vec<Day> = gold_days
            .keys()
            .copied()
            .chain(self.gap.keys().copied())
            .chain(self.mix.keys().map(|(d, _)| *d))
            .chain(self.speed.keys().map(|(d, _)| *d))
            .chain(self.sides.keys().copied())
            .collect();
        days.sort_unstable();
        days.dedup();
        days
    }
}

/// The scope-wide sums the signals compare against. An annotator's reading on day `d` uses
/// only the scope's days before `d`, so that the scope's current day can change without
/// re-evaluating every annotator.
#[derive(Clone, Debug, Default)]
pub struct ScopeInputs {
    /// Pooled gold answers per day: `day -> [answers, errors]`.
    pub gold_days: BTreeMap<Day, [i64; 2]>,
    /// All timed labels of the scope per day and duration bucket.
    pub speed: BTreeMap<(Day, u16), [i64; 1]>,
}

/// The median label time (ms) of a duration histogram `bucket -> labels`.
fn median_ms(histogram: &BTreeMap<u16, i64>) -> Option<f64> {
    let total: i64 = histogram.values().sum();
    let mut seen = 0;
    for (&bucket, &n) in histogram {
        seen += n;
        if total > 0 && 2 * seen >= total {
            return Some(bucket_center_ms(bucket));
        }
    }
    None
}

fn bucket_center_ms(bucket: u16) -> f64 {
    ((f64::from(bucket) + 0.5) / DURATION_BUCKETS_PER_E).exp()
}

fn sum_range<K: Ord, const N: usize>(
    map: &BTreeMap<K, [i64; N]>,
    range: impl std::ops::RangeBounds<K>,
) -> [i64; N] {
    let mut total = [0; N];
    for v in map.range(range).map(|(_, v)| v) {
        for (t, x) in total.iter_mut().zip(v) {
            *t += x;
        }
    }
    total
}

/// One signal's reading on one day.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reading {
    /// Evidence relative to the alarm threshold: at least 1 is alarm level, at least 0.5 watch.
    pub score: f64,
    /// The signal's own value (log-likelihood ratio, mean gap, distance, ratio or share).
    pub value: f64,
    /// Observations behind it.
    pub n: i64,
    /// The comparison value, when there is one (baseline error rate, share, time).
    pub baseline: Option<f64>,
    /// A 95% interval of the value, when there is one.
    pub interval: Option<[f64; 2]>,
    /// One line a quality manager can act on.
    pub explanation: String,
}

impl Reading {
    fn level(&self) -> SignalState {
        if self.score >= 1.0 {
            SignalState::Alarm
        } else if self.score >= 0.5 {
            SignalState::Watch
        } else {
            SignalState::Ok
        }
    }
}

fn percent(x: f64) -> String {
    format!("{:.0}%", 100.0 * x)
}

/// `N days` (or `1 day`).
fn days(n: u32) -> String {
    if n == 1 {
        "1 day".to_string()
    } else {
        format!("{n} days")
    }
}

/// A difference of shares in plain words: `17 points less often`, `3 points more often`.
fn points_more_or_less(diff: f64, what: &str) -> String {
    let points = (100.0 * diff).round();
    if points < 0.0 {
        format!("{:.0} points less {what}", -points)
    } else {
        format!("{points:.0} points more {what}")
    }
}

/// The range `[low, high]` of a difference of shares in plain words, after a sentence that
/// already said `points less` or `more`: `9-32`, or `from 4 less to 3 more` when it spans zero.
fn points_range(low: f64, high: f64) -> String {
    let (low, high) = ((100.0 * low).round(), (100.0 * high).round());
    if high <= 0.0 {
        format!("{:.0}-{:.0}", -high, -low)
    } else if low >= 0.0 {
        format!("{low:.0}-{high:.0}")
    } else {
        format!("from {:.0} less to {high:.0} more", -low)
    }
}

/// Date of an event-time day, `YYYY-MM-DD`.
pub fn date(day: Day) -> String {
    chrono::DateTime::from_timestamp(i64::from(day) * DAY_MS / 1000, 0)
        .map_or_else(|| day.to_string(), |t| t.format("%Y-%m-%d").to_string())
}

/// RFC 3339 (UTC, milliseconds) of an event time.
pub fn rfc3339(ts_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts_ms)
        .map_or_else(|| ts_ms.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Everything one annotator's signals read on day `day`.
struct DayContext<'a> {
    config: &'a DriftConfig,
    label_name: &'a dyn Fn(LabelId) -> String,
    inputs: &'a AnnotatorInputs,
    gold_days: &'a BTreeMap<Day, [i64; 2]>,
    scope: &'a ScopeInputs,
    median_ms: Option<f64>,
    preferences: &'a PreferenceSettings,
    /// Whether readings carry their explanation: only the ones an output shows need one (a
    /// timeline reads every signal on every day, and formatting them all was most of its cost).
    explain: bool,
}

impl DayContext<'_> {
    fn explained(&self, explanation: impl FnOnce() -> String) -> String {
        if self.explain {
            explanation()
        } else {
            String::new()
        }
    }

    fn read(&self, signal: Signal, day: Day) -> Option<Reading> {
        match signal {
            Signal::Gold => self.gold(day),
            Signal::Agreement => self.agreement(day),
            Signal::LabelMix => self.label_mix(day),
            Signal::Speed => self.speed(day),
            Signal::TooFast => self.too_fast(day),
            Signal::Position => sides::position(self.inputs, self.preferences, day),
            Signal::Ties => sides::ties(self.inputs, self.preferences, day),
        }
    }

    /// The error rate the gold evidence compares against, on `day`.
    fn gold_baseline(&self, day: Day) -> Option<f64> {
        let c = self.config;
        let end = day - c.gold_baseline_lag_days as Day;
        let range = (end - c.gold_baseline_days as Day + 1)..=end;
        let [scope_n, scope_errors] = sum_range(&self.scope.gold_days, range.clone());
        // The scope's rate over the same period, or over everything before today if that is thin.
        let scope_rate = if scope_n >= c.gold_baseline_min_answers {
            scope_errors as f64 / scope_n as f64
        } else {
            let [n, errors] = sum_range(&self.scope.gold_days, ..day);
            if n == 0 {
                return None;
            }
            errors as f64 / n as f64
        };
        let [own_n, own_errors] = sum_range(self.gold_days, range);
        let (rate, n_eff) = if own_n >= c.gold_baseline_min_answers {
            let shrunk = (own_errors as f64 + c.gold_shrink_answers * scope_rate)
                / (own_n as f64 + c.gold_shrink_answers);
            (shrunk, own_n + c.gold_shrink_answers as i64)
        } else {
            (scope_rate, scope_n.max(c.gold_baseline_min_answers))
        };
        let (_, high) = stats::wilson(n_eff, rate * n_eff as f64, c.gold_baseline_z)?;
        Some(high.clamp(0.02, 0.45))
    }

    fn gold(&self, day: Day) -> Option<Reading> {
        let c = self.config;
        let e0 = self.gold_baseline(day)?;
        let e1 = (2.0 * e0).min(0.6);
        let mut best: Option<(f64, u32, i64, i64)> = None;
        for &w in &c.gold_windows_days {
            let [n, k] = sum_range(self.gold_days, (day - w as Day + 1)..=day);
            if n < c.gold_min_answers {
                continue;
            }
            let llr = k as f64 * (e1 / e0).ln() + (n - k) as f64 * ((1.0 - e1) / (1.0 - e0)).ln();
            if best.is_none_or(|(b, ..)| llr > b) {
                best = Some((llr, w, n, k));
            }
        }
        let (llr, w, n, k) = best?;
        let correct = n - k;
        let (low, high) = stats::wilson(n, correct as f64, stats::WILSON_Z)?;
        Some(Reading {
            score: llr / c.gold_threshold,
            value: llr,
            n,
            baseline: Some(1.0 - e0),
            interval: Some([low, high]),
            explanation: self.explained(|| format!(
                "gold accuracy {} on {n} gold questions, last {} (likely {}-{}), usually {}; evidence {llr:.1}, alarm at {}",
                percent(correct as f64 / n as f64),
                days(w),
                percent(low),
                percent(high),
                percent(1.0 - e0),
                c.gold_threshold
            )),
        })
    }

    fn agreement(&self, day: Day) -> Option<Reading> {
        let c = self.config;
        let [n, sum, sum_sq] = sum_range(&self.inputs.gap, (day - c.peer_window_days as Day + 1)..=day);
        if n < c.agreement_min_items {
            return None;
        }
        let fp = FIXED_POINT as f64;
        let nf = n as f64;
        let mean = sum as f64 / fp / nf;
        let variance = ((sum_sq as f64 / (fp * fp)) - nf * mean * mean) / (nf - 1.0);
        let se = (variance.max(0.0) / nf).sqrt();
        // Without spread (every item the same gap) the mean alone decides.
        let z = (se > 0.0).then(|| mean / se);
        let size = mean / c.agreement_gap;
        let score = z.map_or(size, |z| size.min(z / c.agreement_z)).max(0.0);
        let half = stats::WILSON_Z * se;
        Some(Reading {
            score,
            value: mean,
            n,
            baseline: Some(0.0),
            interval: Some([mean - half, mean + half]),
            explanation: self.explained(|| format!(
                "agrees with the others on the same items {} than they agree with each other (likely {}; {n} items, last {})",
                points_more_or_less(mean, "often"),
                points_range(mean - half, mean + half),
                days(c.peer_window_days)
            )),
        })
    }

    fn label_mix(&self, day: Day) -> Option<Reading> {
        let c = self.config;
        let from = day - c.peer_window_days as Day + 1;
        let mut by_label: BTreeMap<LabelId, [i64; 2]> = BTreeMap::new();
        for (&(d, label), &[own, peer]) in self.inputs.mix.range((from, 0)..=(day, LabelId::MAX)) {
            debug_assert!(d >= from && d <= day);
            let e = by_label.entry(label).or_default();
            e[0] += own;
            e[1] += peer;
        }
        let n: i64 = by_label.values().map(|[own, _]| own).sum();
        if n < c.label_mix_min_labels {
            return None;
        }
        let peer_total: f64 = by_label.values().map(|[_, peer]| *peer as f64).sum();
        if peer_total <= 0.0 {
            return None;
        }
        let nf = n as f64;
        let (mut js, mut g) = (0.0, 0.0);
        // (own share - peer share, label, own share, peer share)
        let mut over: Option<(f64, LabelId, f64, f64)> = None;
        let mut under: Option<(f64, LabelId, f64, f64)> = None;
        let mut categories = 0;
        for (&label, &[own, peer]) in &by_label {
            let p = own as f64 / nf;
            let q = peer as f64 / peer_total;
            categories += 1;
            let m = (p + q) / 2.0;
            if p > 0.0 {
                js += 0.5 * p * (p / m).log2();
            }
            if q > 0.0 {
                js += 0.5 * q * (q / m).log2();
            }
            let expected = q * nf;
            if own > 0 {
                g += if expected > 0.0 {
                    2.0 * own as f64 * (own as f64 / expected).ln()
                } else {
                    f64::INFINITY
                };
            }
            let diff = p - q;
            if over.is_none_or(|(d, ..)| diff > d) {
                over = Some((diff, label, p, q));
            }
            if under.is_none_or(|(d, ..)| diff < d) {
                under = Some((diff, label, p, q));
            }
        }
        let distance = js.max(0.0).sqrt();
        let p_value = if categories < 2 {
            1.0
        } else if g.is_infinite() {
            0.0
        } else {
            ChiSquared::new(f64::from(categories - 1)).map_or(1.0, |chi| chi.sf(g.max(0.0)))
        };
        let distance_score = distance / c.label_mix_distance;
        // Significance as a score: p at the threshold scores 1, p at 100x the threshold 0.5.
        let p_score =
            if p_value <= 0.0 { f64::INFINITY } else { (p_value.log10() / c.label_mix_p.log10()).max(0.0) };
        let (_, over_label, over_own, over_peer) = over?;
        let (_, under_label, under_own, under_peer) = under?;
        Some(Reading {
            score: distance_score.min(p_score),
            value: distance,
            n,
            baseline: None,
            interval: None,
            explanation: self.explained(|| format!(
                "gives {} to {} of items, the others to {} of the same items; {} to {}, the others to {} ({n} labels, last {})",
                (self.label_name)(over_label),
                percent(over_own),
                percent(over_peer),
                (self.label_name)(under_label),
                percent(under_own),
                percent(under_peer),
                days(c.peer_window_days)
            )),
        })
    }

    /// Timed labels `(count, sum of ln ms)` in `days`, and those under `limit_ms`.
    fn timing(&self, days: std::ops::RangeInclusive<Day>, limit_ms: f64) -> (i64, f64, i64) {
        let (mut n, mut sum_ln, mut fast) = (0, 0.0, 0);
        for (&(_, bucket), &[count]) in self.inputs.speed.range((*days.start(), 0)..=(*days.end(), u16::MAX))
        {
            n += count;
            let center = bucket_center_ms(bucket);
            sum_ln += count as f64 * center.ln();
            if center < limit_ms {
                fast += count;
            }
        }
        (n, sum_ln, fast)
    }

    fn periods(&self, day: Day) -> (std::ops::RangeInclusive<Day>, std::ops::RangeInclusive<Day>) {
        let c = self.config;
        let recent_start = day - c.speed_window_days as Day + 1;
        (recent_start..=day, (recent_start - c.speed_baseline_days as Day)..=(recent_start - 1))
    }

    fn speed(&self, day: Day) -> Option<Reading> {
        let c = self.config;
        let (recent, baseline) = self.periods(day);
        let (n, sum_ln, _) = self.timing(recent, 0.0);
        let (nb, sum_ln_b, _) = self.timing(baseline, 0.0);
        if n < c.speed_min_labels || nb < c.speed_min_labels {
            return None;
        }
        let (recent_ms, usual_ms) = ((sum_ln / n as f64).exp(), (sum_ln_b / nb as f64).exp());
        let ratio = recent_ms / usual_ms;
        // Ratio 1 scores 0, the threshold ratio scores 1.
        let score = ((1.0 - ratio) / (1.0 - c.speed_ratio)).max(0.0);
        Some(Reading {
            score,
            value: ratio,
            n,
            baseline: Some(usual_ms),
            interval: None,
            explanation: self.explained(|| format!(
                "takes a typical {:.1} s a label ({n} labels, last {}), usually {:.1} s: {:.0}% of the usual time",
                recent_ms / 1000.0,
                days(c.speed_window_days),
                usual_ms / 1000.0,
                100.0 * ratio
            )),
        })
    }

    fn too_fast(&self, day: Day) -> Option<Reading> {
        let c = self.config;
        let limit = self
            .median_ms
            .map_or(c.too_fast_floor_ms, |m| (c.too_fast_median_share * m).max(c.too_fast_floor_ms));
        let (recent, baseline) = self.periods(day);
        let (n, _, fast) = self.timing(recent, limit);
        let (nb, _, fast_b) = self.timing(baseline, limit);
        if n < c.speed_min_labels || nb < c.speed_min_labels {
            return None;
        }
        let share = fast as f64 / n as f64;
        // The baseline share, with half a label added so that a clean baseline is not zero.
        let base = (fast_b as f64 + 0.5) / (nb as f64 + 1.0);
        let z = (fast as f64 - n as f64 * base) / (n as f64 * base * (1.0 - base)).sqrt();
        let score = (share / (c.too_fast_multiple * base))
            .min(z / c.too_fast_z)
            .min(share / c.too_fast_min_share)
            .max(0.0);
        Some(Reading {
            score,
            value: share,
            n,
            baseline: Some(base),
            interval: stats::wilson(n, fast as f64, stats::WILSON_Z).map(|(l, h)| [l, h]),
            explanation: self.explained(|| {
                format!(
                    "{} of {n} labels in the last {} took under {:.1} s, usually {}",
                    percent(share),
                    days(c.speed_window_days),
                    limit / 1000.0,
                    percent(base)
                )
            }),
        })
    }
}

/// A period during which a signal was in alarm.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Episode {
    pub signal: Signal,
    pub start: Day,
    /// The day the alarm cleared, if it has.
    pub end: Option<Day>,
    /// The reading that raised it.
    pub explanation: String,
}

/// One signal's current state with the reading behind it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SignalReport {
    pub state: SignalState,
    /// The day the current state began (`YYYY-MM-DD`).
    pub since: Option<String>,
    /// The latest reading; absent while there are too few observations.
    #[serde(flatten)]
    pub reading: Option<Reading>,
    /// Why there is no reading, when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An annotator's drift within a scope: every signal's state, day by day.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    /// `(day, state per signal)` on every day the annotator was active.
    pub days: Vec<(Day, [SignalState; Signal::COUNT])>,
    /// Alarm episodes, in order of start.
    pub episodes: Vec<Episode>,
    /// The current state of every signal.
    pub current: Vec<(Signal, SignalReport)>,
}

impl Timeline {
    /// The state of `signal` now.
    pub fn state(&self, signal: Signal) -> SignalState {
        self.current.iter().find(|(s, _)| *s == signal).map_or(SignalState::Insufficient, |(_, r)| r.state)
    }

    /// The score of `signal`'s latest reading.
    pub fn score(&self, signal: Signal) -> Option<f64> {
        self.current.iter().find(|(s, _)| *s == signal)?.1.reading.as_ref().map(|r| r.score)
    }

    /// Whether `signal` was in alarm on `day`.
    pub fn alarm_on(&self, signal: Signal, day: Day) -> bool {
        self.episodes
            .iter()
            .any(|e| e.signal == signal && e.start <= day && e.end.is_none_or(|end| day < end))
    }
}

/// Evaluates an annotator's signals on every active day, in order, with the state rules: ok ->
/// watch at half the threshold -> alarm at the threshold; an alarm lasts at least
/// `cooldown_days` and clears after `clear_days` without a watch-level reading. Speed and too-fast
/// are context: alone they reach watch at most, and alarm only while gold or agreement is at
/// watch or worse.
/// `label_name` names a label in explanations.
pub fn evaluate(
    inputs: &AnnotatorInputs,
    scope: &ScopeInputs,
    config: &DriftConfig,
    label_name: &dyn Fn(LabelId) -> String,
) -> Timeline {
    evaluate_with(inputs, scope, config, &PreferenceSettings::default(), label_name)
}

/// [`evaluate`] with the `[preferences]` settings of the preference signals.
pub fn evaluate_with(
    inputs: &AnnotatorInputs,
    scope: &ScopeInputs,
    config: &DriftConfig,
    preferences: &PreferenceSettings,
    label_name: &dyn Fn(LabelId) -> String,
) -> Timeline {
    let gold_days = inputs.gold_days();
    let mut context = DayContext {
        config,
        label_name,
        inputs,
        gold_days: &gold_days,
        scope,
        median_ms: None,
        preferences,
        explain: false,
    };
    // The scope's duration histogram of the days before the one being evaluated.
    let mut scope_speed = scope.speed.iter().peekable();
    let mut histogram: BTreeMap<u16, i64> = BTreeMap::new();
    let mut timeline = Timeline::default();
    let mut state = [SignalState::Insufficient; Signal::COUNT];
    let mut since: [Option<Day>; Signal::COUNT] = [None; Signal::COUNT];
    let mut last_bad: [Option<Day>; Signal::COUNT] = [None; Signal::COUNT];
    let mut open: [Option<usize>; Signal::COUNT] = [None; Signal::COUNT];
    let mut latest: [Option<Reading>; Signal::COUNT] = Default::default();
    let mut last_day = None;
    for day in inputs.active_days(&gold_days) {
        while let Some((&(_, bucket), &[n])) = scope_speed.next_if(|((d, _), _)| *d < day) {
            *histogram.entry(bucket).or_default() += n;
        }
        context.median_ms = median_ms(&histogram);
        let mut levels = [SignalState::Insufficient; Signal::COUNT];
        for signal in Signal::ALL {
            let i = signal.index();
            latest[i] = context.read(signal, day);
            levels[i] = latest[i].as_ref().map_or(SignalState::Insufficient, Reading::level);
        }
        let primary = levels[Signal::Gold.index()].max(levels[Signal::Agreement.index()]);
        for signal in [Signal::Speed, Signal::TooFast] {
            let i = signal.index();
            if levels[i] == SignalState::Alarm && primary < SignalState::Watch {
                levels[i] = SignalState::Watch;
            }
        }
        for signal in Signal::ALL {
            let i = signal.index();
            let level = levels[i];
            if level >= SignalState::Watch {
                last_bad[i] = Some(day);
            }
            let next = match (state[i], level) {
                (_, SignalState::Alarm) => SignalState::Alarm,
                (SignalState::Alarm, _) => {
                    let start = open[i].map_or(day, |e| timeline.episodes[e].start);
                    let cooled = day >= start + config.cooldown_days as Day;
                    let clean = last_bad[i].is_none_or(|b| day >= b + config.clear_days as Day);
                    if cooled && clean {
                        level
                    } else {
                        SignalState::Alarm
                    }
                }
                (_, level) => level,
            };
            if next == SignalState::Alarm && state[i] != SignalState::Alarm {
                open[i] = Some(timeline.episodes.len());
                context.explain = true;
                let explanation = context.read(signal, day).map(|r| r.explanation).unwrap_or_default();
                context.explain = false;
                timeline.episodes.push(Episode { signal, start: day, end: None, explanation });
            }
            if next != SignalState::Alarm && state[i] == SignalState::Alarm {
                if let Some(e) = open[i].take() {
                    timeline.episodes[e].end = Some(day);
                }
            }
            if next != state[i] || since[i].is_none() {
                since[i] = Some(day);
            }
            state[i] = next;
        }
        timeline.days.push((day, state));
        last_day = Some(day);
    }
    // The current readings, now with their explanations.
    if let Some(day) = last_day {
        context.explain = true;
        for signal in Signal::ALL {
            if latest[signal.index()].is_some() {
                latest[signal.index()] = context.read(signal, day);
            }
        }
    }
    timeline.current = Signal::ALL
        .iter()
        .filter(|signal| !signal.is_preference() || !inputs.sides.is_empty())
        .map(|&signal| {
            let i = signal.index();
            let reading = latest[i].take();
            let note = reading.is_none().then(|| match signal {
                Signal::Position | Signal::Ties => sides::not_enough(signal == Signal::Position, preferences),
                _ => not_enough(signal, config),
            });
            (signal, SignalReport { state: state[i], since: since[i].map(date), reading, note })
        })
        .collect();
    timeline
}

/// Why `signal` has no reading: the minimum data it lacks, in plain words.
fn not_enough(signal: Signal, c: &DriftConfig) -> String {
    match signal {
        Signal::Gold => {
            let windows: Vec<String> = c.gold_windows_days.iter().map(u32::to_string).collect();
            format!(
                "fewer than {} gold questions over each of the last {} days, or no earlier gold answers in the scope to compare with",
                c.gold_min_answers,
                windows.join(", ")
            )
        }
        Signal::Agreement => format!(
            "fewer than {} items shared with at least two other annotators over the last {}",
            c.agreement_min_items,
            days(c.peer_window_days)
        ),
        Signal::LabelMix => format!(
            "fewer than {} labels on items shared with other annotators over the last {}",
            c.label_mix_min_labels,
            days(c.peer_window_days)
        ),
        Signal::Speed | Signal::TooFast => format!(
            "fewer than {} labels with a duration over the last {}, or over the {} before them (the usual pace)",
            c.speed_min_labels,
            days(c.speed_window_days),
            days(c.speed_baseline_days)
        ),
        Signal::Position | Signal::Ties => String::new(),
    }
}

/// The gold accuracy a gate decision rested on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub n: i64,
    pub correct: i64,
    pub accuracy: Option<f64>,
    pub wilson_low: Option<f64>,
    pub wilson_high: Option<f64>,
    pub threshold: f64,
}

/// One gate change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub from: Option<GateState>,
    pub to: GateState,
    pub reason: String,
    pub evidence: Evidence,
    /// Event time of the gold answer (or alarm day) that decided it.
    pub at: String,
    #[serde(skip, default)]
    pub at_ms: i64,
}

/// The gate of one (project, annotator), with the decisions that led to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub state: GateState,
    /// Why the gate is in its state now.
    pub reason: String,
    pub evidence: Evidence,
    /// Event time of the decision that set the state (absent in warm-up).
    pub since: Option<String>,
    pub history: Vec<Decision>,
}

fn evidence(window: &std::collections::VecDeque<(i64, bool)>, threshold: f64) -> Evidence {
    let n = window.len() as i64;
    let correct = window.iter().filter(|(_, c)| *c).count() as i64;
    let interval = stats::wilson(n, correct as f64, stats::WILSON_Z);
    Evidence {
        n,
        correct,
        accuracy: (n > 0).then(|| correct as f64 / n as f64),
        wilson_low: interval.map(|(l, _)| l),
        wilson_high: interval.map(|(_, h)| h),
        threshold,
    }
}

fn describe(e: &Evidence) -> String {
    match (e.accuracy, e.wilson_low, e.wilson_high) {
        (Some(a), Some(l), Some(h)) => {
            format!(
                "recent gold accuracy {} on {} gold questions (likely {}-{})",
                percent(a),
                e.n,
                percent(l),
                percent(h)
            )
        }
        _ => "no recent gold answers".to_string(),
    }
}

/// Decides the gate from a project's gold answers `(ts_ms, correct)` (in event-time order) and
/// the alarms the project gates on (`gated_alarm(day)` says whether one covers `day`).
///
/// Rules: `warmup` until `gate_min_answers` gold answers; then `block` when the Wilson upper
/// bound of recent accuracy is under the threshold (or a gated alarm is on), else `allow`. A
/// block lasts at least `gate_block_days`, and is lifted to `probation` only when the lower bound
/// clears the threshold plus the margin and no gated alarm is on; probation becomes `allow` after
/// `gate_probation_answers` more answers with the lower bound at the threshold, and `block` again
/// by the blocking rules.
pub fn decide_gate(answers: &[(i64, bool)], gated_alarm: impl Fn(Day) -> bool, config: &DriftConfig) -> Gate {
    let c = config;
    let theta = c.gate_threshold;
    let mut window: std::collections::VecDeque<(i64, bool)> = std::collections::VecDeque::new();
    let mut state = GateState::Warmup;
    let mut history: Vec<Decision> = Vec::new();
    let mut blocked_at = i64::MIN;
    let mut probation_answers = 0;
    let mut seen = 0;
    let mut reason = format!("fewer than {} gold answers", c.gate_min_answers);
    for &(ts, correct) in answers {
        seen += 1;
        window.push_back((ts, correct));
        while window.len() > c.gate_window_answers
            || window.front().is_some_and(|&(t, _)| t <= ts - i64::from(c.gate_window_days) * DAY_MS)
        {
            window.pop_front();
        }
        let e = evidence(&window, theta);
        let alarm = gated_alarm(ts.div_euclid(DAY_MS) as Day);
        if state == GateState::Probation {
            probation_answers += 1;
        }
        let judged = e.n >= c.gate_min_answers;
        let (low, high) = (e.wilson_low.unwrap_or(0.0), e.wilson_high.unwrap_or(1.0));
        let block_reason = if judged && high < theta {
            Some(format!("{}: even at best under the required {}", describe(&e), percent(theta)))
        } else if alarm && seen >= c.gate_min_answers {
            let signals: Vec<&str> = c.gate_on_alarm.iter().map(|s| s.title()).collect();
            Some(format!(
                "an alarm on {}, which the project blocks on; {}",
                signals.join(" or "),
                describe(&e)
            ))
        } else {
            None
        };
        let next: Option<(GateState, String)> = match state {
            GateState::Warmup | GateState::Allow | GateState::Probation if block_reason.is_some() => {
                Some((GateState::Block, block_reason.unwrap_or_default()))
            }
            GateState::Warmup if judged => Some((
                GateState::Allow,
                format!("{}: enough to judge, and not under the required {}", describe(&e), percent(theta)),
            )),
            GateState::Block
                if judged
                    && !alarm
                    && ts >= blocked_at + i64::from(c.gate_block_days) * DAY_MS
                    && low >= theta + c.gate_margin =>
            {
                Some((
                    GateState::Probation,
                    format!(
                        "{}: even at worst at the required {} plus the margin, {}",
                        describe(&e),
                        percent(theta),
                        percent(theta + c.gate_margin)
                    ),
                ))
            }
            GateState::Probation if probation_answers >= c.gate_probation_answers && low >= theta => Some((
                GateState::Allow,
                format!(
                    "{} after {probation_answers} gold questions on probation: even at worst at the required {}",
                    describe(&e),
                    percent(theta)
                ),
            )),
            _ => None,
        };
        if let Some((to, why)) = next {
            if to == GateState::Block {
                blocked_at = ts;
            }
            if to == GateState::Probation {
                probation_answers = 0;
            }
            history.push(Decision {
                from: Some(state),
                to,
                reason: why.clone(),
                evidence: e.clone(),
                at: rfc3339(ts),
                at_ms: ts,
            });
            reason = why;
            state = to;
        }
    }
    let evidence = evidence(&window, theta);
    if state == GateState::Warmup {
        reason = format!("{} gold answer(s), fewer than the {} needed to judge", seen, c.gate_min_answers);
    }
    Gate { state, reason, evidence, since: history.last().map(|d| d.at.clone()), history }
}

/// How urgent an alert is, ordered from least to most urgent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Something to review: one annotator's drift, or a population shift.
    Warning,
    /// A scope's quality is under its floor or target: every label of the scope is affected.
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 2] = [Severity::Warning, Severity::Critical];

    /// The severity's name in outputs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Whether an alert's condition holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// An alert: a condition of a scope or of one of its annotators. Its id is derived from the
/// condition and the event time it began, so it is the same whenever it is re-derived.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub id: String,
    pub status: AlertStatus,
    pub severity: Severity,
    /// `annotator_drift`, `population_shift`, `alpha_below_floor` or `gold_below_target`.
    pub kind: &'static str,
    pub project: String,
    pub task: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotator_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<Signal>,
    pub summary: String,
    /// The event-time day (`YYYY-MM-DD`) the condition began: an annotator's alarm, the first
    /// day of a population shift, or the first day as of whose end a scope was under its floor
    /// or target (in the latest run of such days). Absent only on a scope alert whose condition
    /// never held (listed, resolved, once the scope has the evidence to judge).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// The event-time day the condition stopped holding, when `status` is `resolved`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved: Option<String>,
}

/// Per-day population counts of one scope and signal: `[annotators evaluated, in alarm]`.
pub type PopulationCounts = BTreeMap<(Signal, Day), [i64; 2]>;

/// Whether a day's population counts `[annotators evaluated, in alarm]` of one signal are a
/// population shift: more than `population_share` of at least `population_min_annotators`
/// annotators in alarm.
pub fn population_shift([active, alarmed]: [i64; 2], config: &DriftConfig) -> bool {
    active >= config.population_min_annotators && alarmed as f64 > config.population_share * active as f64
}

/// Alert id of a scope-level condition: `["project","task","kind"]` (see [`alert_id`]).
pub fn scope_alert_id(project: &str, task: &str, kind: &str) -> String {
    alert_id(&[project, task, kind])
}

/// An alert id: the JSON array of the parts that identify the condition (its scope, its kind,
/// the annotator and signal it concerns, the day it began), so that no name, whatever it
/// contains, makes two conditions share an id. It is also the alert's key on the alerts topic.
pub fn alert_id(parts: &[&str]) -> String {
    serde_json::to_string(parts).expect("strings serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gold_inputs(days: impl IntoIterator<Item = (Day, i64, i64)>) -> (AnnotatorInputs, ScopeInputs) {
        let mut a = AnnotatorInputs::default();
        let mut s = ScopeInputs::default();
        let mut item = 0;
        for (day, n, errors) in days {
            for i in 0..n {
                item += 1;
                a.gold.insert((i64::from(day) * DAY_MS + i, item, i >= errors), 1);
            }
            let e = s.gold_days.entry(day).or_default();
            e[0] += n;
            e[1] += errors;
        }
        (a, s)
    }

    #[test]
    fn gold_evidence_alarms_on_a_doubled_error_rate_and_clears() {
        // 40 days at 10% errors, then 10 days at 30%, then 20 days at 10% again.
        let days = (0..40)
            .map(|d| (d, 20, 2))
            .chain((40..50).map(|d| (d, 20, 6)))
            .chain((50..70).map(|d| (d, 20, 2)));
        let (a, s) = gold_inputs(days);
        let t = evaluate(&a, &s, &DriftConfig::default(), &|l| format!("#{l}"));
        let gold: Vec<&Episode> = t.episodes.iter().filter(|e| e.signal == Signal::Gold).collect();
        assert_eq!(gold.len(), 1, "{:?}", t.episodes);
        assert!((40..44).contains(&gold[0].start), "alarm on day {}", gold[0].start);
        let end = gold[0].end.expect("the alarm clears once the annotator recovers");
        assert!(end >= gold[0].start + 7 && end < 60, "cleared on day {end}");
        assert!(gold[0].explanation.starts_with("gold accuracy"), "{}", gold[0].explanation);
        assert_eq!(t.state(Signal::Gold), SignalState::Ok);
        // Before the change, nothing was flagged; on the first day there was no baseline yet.
        assert_eq!(t.days[0].1[0], SignalState::Insufficient);
        assert!(t.days.iter().filter(|(d, _)| (1..40).contains(d)).all(|(_, s)| s[0] == SignalState::Ok));
    }

    #[test]
    fn gate_blocks_a_spammer_and_readmits_after_recovery() {
        let c = DriftConfig::default();
        // 10 answers at 25%, then 120 correct answers, six a day.
        let mut answers: Vec<(i64, bool)> = (0..10).map(|i| (i * 1000, i % 4 == 0)).collect();
        answers.extend((0..120).map(|i| (DAY_MS * (1 + i / 6) + i, true)));
        let gate = decide_gate(&answers, |_| false, &c);
        let states: Vec<GateState> = gate.history.iter().map(|d| d.to).collect();
        assert_eq!(states, vec![GateState::Block, GateState::Probation, GateState::Allow]);
        assert_eq!(gate.history[0].evidence.n, 10);
        assert!(
            gate.history[0].reason.contains("even at best under the required 70%"),
            "{}",
            gate.history[0].reason
        );
        assert!(gate.history[1].at_ms >= gate.history[0].at_ms + i64::from(c.gate_block_days) * DAY_MS);
        assert_eq!(gate.state, GateState::Allow);
    }

    #[test]
    fn gate_warmup_until_enough_answers() {
        let gate = decide_gate(&[(0, false), (1, false)], |_| false, &DriftConfig::default());
        assert_eq!(gate.state, GateState::Warmup);
        assert!(gate.history.is_empty());
        assert!(gate.reason.contains("fewer than the 10"));
    }

    #[test]
    fn label_mix_names_the_overused_label() {
        let mut a = AnnotatorInputs::default();
        // 300 items; peers say label 1 on all, the annotator says label 2 on 100 of them.
        a.mix.insert((5, 1), [200, 300 * FIXED_POINT]);
        a.mix.insert((5, 2), [100, 0]);
        let t = evaluate(&a, &ScopeInputs::default(), &DriftConfig::default(), &|l| format!("#{l}"));
        assert_eq!(t.state(Signal::LabelMix), SignalState::Alarm);
        let (_, report) = &t.current[Signal::LabelMix.index()];
        let explanation = &report.reading.as_ref().unwrap().explanation;
        assert!(
            explanation.starts_with(
                "gives #2 to 33% of items, the others to 0% of the same items; #1 to 67%, the others to 100%"
            ),
            "{explanation}"
        );
    }

    #[test]
    fn config_validation_names_the_field() {
        let c = DriftConfig { gate_threshold: 1.5, ..DriftConfig::default() };
        assert_eq!(c.validate().unwrap_err().field, "gate_threshold");
        assert!(DriftConfig::default().validate().is_ok());
    }
}
