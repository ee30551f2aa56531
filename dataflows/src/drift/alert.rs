//! Alerts: their severity, status and ids, and the population-shift rule of a scope's signals.

use super::*;

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
