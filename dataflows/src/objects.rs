//! The JSON objects of spec sections 3 and 4 (the scope object, the window object, the pair, the
//! annotator and the item object), as the keyed operators render them into [`crate::records`].
//! Field order is the report's: serde writes the fields in declaration order. The scope object
//! can be read back ([`ScopeSummary`] is `Deserialize`) by consumers that need its numbers (the
//! service's gauges, the demo's screen).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stats::GoldAccuracy;

/// The scope object: the numbers of one (project, task) scope, without its entities.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Agreement {
    pub percent_agreement: Option<f64>,
    pub krippendorff_alpha: KrippendorffAlpha,
    pub fleiss_kappa: Option<f64>,
    pub gwet_ac1: Option<f64>,
    pub mean_cohen_kappa: Option<f64>,
}

/// Krippendorff's alpha per level; ordinal, interval and ratio appear only when every label of the
/// scope is a number (and are then `null` when undefined).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KrippendorffAlpha {
    pub nominal: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub ordinal: Option<Option<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub interval: Option<Option<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub ratio: Option<Option<f64>>,
}

/// A field that is present (`null` included): `Some`; an absent one takes the default, `None`.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(deserializer).map(Some)
}

/// Agreement of two annotators on their shared items (`a < b` bytewise).
#[derive(Clone, Debug, Serialize)]
pub struct PairReport<'a> {
    pub a: &'a str,
    pub b: &'a str,
    pub n_shared: i64,
    pub percent_agreement: f64,
    pub cohen_kappa: Option<f64>,
    pub scott_pi: Option<f64>,
}

/// One annotator's numbers within a scope, without its gate (which the annotator's record gets
/// from its project's gate, see [`crate::annotators`]).
#[derive(Clone, Debug, Serialize)]
pub struct AnnotatorReport<'a> {
    pub annotator_id: &'a str,
    pub n_labels: i64,
    pub agreement_with_others: Option<f64>,
    pub gold: Option<GoldAccuracy>,
    /// Every drift signal's state and latest reading, by signal name: each
    /// [`crate::drift::SignalReport`] as its JSON (an annotator's record is formed again whenever
    /// one of them moves, and the others' JSON is kept).
    pub drift: Option<BTreeMap<&'static str, &'a serde_json::value::RawValue>>,
    /// For an annotator of preference events (spec 2.2): `position`, `ties`, `events`,
    /// `tie_rate`, as fields of its own.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub preferences: Option<crate::preferences::PreferenceQuality>,
}
