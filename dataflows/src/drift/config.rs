//! Drift, gate and alert settings: one project's [`DriftConfig`] (every field with its default and
//! range) and the per-project [`DriftSettings`].

use super::*;

pub(super) fn default_true() -> bool {
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
