//! Trusted consensus and routing (spec section 2.1), as pure functions of one item's facts, for
//! the labelling platform's dynamic overlap.
//!
//! - **Trusted consensus:** the consensus (most votes, ties toward the smallest label in the
//!   caller's order, as spec section 2 breaks them) over the labels of annotators whose gate in
//!   the item's project is not `block`; `None` when no such label remains.
//! - **Route:** `settled` when the item's gold answer is known, or when it has at least
//!   `min_labels` trusted labels and the Dawid–Skene posterior of its truth label is at least
//!   `confidence`; otherwise `needs_labels` below `max_labels` trusted labels, and `escalate` at
//!   `max_labels` or more.
//! - **Per scope:** the count of items per route, and the labels saved against fixed overlap: for
//!   each settled item, the labels that fixed overlap at `max_labels` would still have asked for
//!   beyond the labels it has (`max_labels - labels`, at least 0). Items not yet settled save
//!   nothing yet: the platform goes on asking for their labels.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::label::LabelId;
use crate::source::AnnotatorId;
use crate::truth::SettingsError;

/// Settings of routing (`[routing]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingSettings {
    /// Trusted labels an item needs before it can be settled (default 3).
    pub min_labels: u32,
    /// Trusted labels at which an unsettled item is escalated instead of labelled again
    /// (default 7); also the fixed overlap the savings are counted against.
    pub max_labels: u32,
    /// The Dawid–Skene posterior of the truth label at which an item with `min_labels` trusted
    /// labels is settled (default 0.95), a probability in (0, 1].
    pub confidence: f64,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        RoutingSettings { min_labels: 3, max_labels: 7, confidence: 0.95 }
    }
}

impl RoutingSettings {
    /// Checks `min_labels >= 1`, `max_labels >= min_labels` and `0 < confidence <= 1`.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.min_labels == 0 {
            return Err(SettingsError {
                field: "routing.min_labels",
                message: "must be at least 1; an item without labels cannot be settled by them".into(),
            });
        }
        if self.max_labels < self.min_labels {
            return Err(SettingsError {
                field: "routing.max_labels",
                message: format!(
                    "{} (the default when unset: {}) is below routing.min_labels ({}); set max_labels to at \
                     least min_labels, or lower min_labels",
                    self.max_labels,
                    RoutingSettings::default().max_labels,
                    self.min_labels
                ),
            });
        }
        if !(self.confidence > 0.0 && self.confidence <= 1.0) {
            return Err(SettingsError {
                field: "routing.confidence",
                message: format!("{} is not a probability in (0, 1]", self.confidence),
            });
        }
        Ok(())
    }
}

/// What the labelling platform should do with an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// Done: no more labels needed.
    Settled,
    /// Ask for another label.
    NeedsLabels,
    /// Labelled `max_labels` times and still not settled: a person should look at it.
    Escalate,
}

impl Route {
    /// Every route, in output order.
    pub const ALL: [Route; 3] = [Route::Settled, Route::NeedsLabels, Route::Escalate];

    /// The route's name in outputs (`settled`, `needs_labels`, `escalate`).
    pub fn name(self) -> &'static str {
        match self {
            Route::Settled => "settled",
            Route::NeedsLabels => "needs_labels",
            Route::Escalate => "escalate",
        }
    }
}

/// The facts about one item that its route depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RouteInput {
    /// Live labels of annotators not blocked (the `n` of the trusted consensus).
    pub trusted: u32,
    /// All live labels of the item, blocked annotators' included: what was paid for.
    pub labels: u32,
    /// The Dawid–Skene posterior of the item's truth label (`None`: no truth yet).
    pub posterior: Option<f64>,
    /// Whether the item has a gold answer.
    pub gold: bool,
}

/// An item's route and the labels it saves against fixed overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RouteDecision {
    pub route: Route,
    /// `max_labels - labels` (at least 0) for a settled item, 0 otherwise.
    pub labels_saved: u32,
}

/// The route of one item (see the module documentation for the rule).
pub fn route(input: &RouteInput, settings: &RoutingSettings) -> RouteDecision {
    let confident = input.posterior.is_some_and(|p| p >= settings.confidence);
    let route = if input.gold || (input.trusted >= settings.min_labels && confident) {
        Route::Settled
    } else if input.trusted < settings.max_labels {
        Route::NeedsLabels
    } else {
        Route::Escalate
    };
    let labels_saved =
        if route == Route::Settled { settings.max_labels.saturating_sub(input.labels) } else { 0 };
    RouteDecision { route, labels_saved }
}

/// A scope's routing: items per route and labels saved, as sums of item decisions with
/// multiplicities (`+1` adds an item's decision, `-1` retracts it, as a collection's diffs do).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingCounts {
    pub settled: i64,
    pub needs_labels: i64,
    pub escalate: i64,
    /// Labels fixed overlap at `max_labels` would have needed beyond those given, over the
    /// settled items.
    pub labels_saved: i64,
}

impl RoutingCounts {
    /// Adds `diff` times one item's decision.
    pub fn apply(&mut self, decision: RouteDecision, diff: i64) {
        match decision.route {
            Route::Settled => self.settled += diff,
            Route::NeedsLabels => self.needs_labels += diff,
            Route::Escalate => self.escalate += diff,
        }
        self.labels_saved += diff * i64::from(decision.labels_saved);
    }

    /// The counts of these decisions.
    pub fn of(decisions: impl IntoIterator<Item = RouteDecision>) -> RoutingCounts {
        let mut counts = RoutingCounts::default();
        decisions.into_iter().for_each(|d| counts.apply(d, 1));
        counts
    }

    /// Items counted.
    pub fn items(&self) -> i64 {
        self.settled + self.needs_labels + self.escalate
    }
}

/// An item's consensus among trusted annotators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TrustedConsensus {
    /// The label with most trusted votes (ties toward the smallest label in the caller's order).
    pub label: LabelId,
    /// Whether another label has as many votes.
    pub tied: bool,
    /// Trusted labels counted.
    pub n: u32,
}

/// The consensus of an item's live labels `(annotator, label)` (one per annotator, any order)
/// over those whose annotator is not `blocked`; `order` is the order of labels for tie-breaks (the
/// spec's label order). `None` when no trusted label remains.
pub fn trusted_consensus(
    labels: &[(AnnotatorId, LabelId)],
    blocked: impl Fn(AnnotatorId) -> bool,
    order: impl Fn(&LabelId, &LabelId) -> Ordering,
) -> Option<TrustedConsensus> {
    let mut votes: SmallVec<[LabelId; 8]> =
        labels.iter().filter(|(annotator, _)| !blocked(*annotator)).map(|(_, label)| *label).collect();
    if votes.is_empty() {
        return None;
    }
    votes.sort_unstable();
    let n = votes.len() as u32;
    let (mut best, mut best_count, mut tied) = (votes[0], 0u32, false);
    for run in votes.chunk_by(|a, b| a == b) {
        let (label, count) = (run[0], run.len() as u32);
        match count.cmp(&best_count) {
            Ordering::Greater => (best, best_count, tied) = (label, count, false),
            Ordering::Equal => {
                tied = true;
                if order(&label, &best).then(label.cmp(&best)) == Ordering::Less {
                    best = label;
                }
            }
            Ordering::Less => {}
        }
    }
    Some(TrustedConsensus { label: best, tied, n })
}

#[cfg(test)]
mod tests;
