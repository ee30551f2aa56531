//! Annotator drift, gating and alerts: pure functions from an annotator's exact event-time sums
//! (kept by [`crate::annotators`] from the dataflow's drift facts) to signal states, gate decisions and
//! alerts. Everything here depends only on event time and the data, never on wall-clock time or
//! on how updates were batched: an annotator's whole history is re-evaluated, in event-time order,
//! whenever any of its sums change, so a corrected gold answer re-decides everything that rested
//! on it. Floats appear only here, when a final number is formed.
//!
//! Here: the signals and states. Beside it: `config` (the `[drift]` settings), `inputs` (the
//! sums), `reading` (each signal's formula and explanation), `sides` (the preference signals,
//! position and ties), `timeline` (the state rules over days), `gate` (gate decisions) and `alert`
//! (alert ids and the population-shift rule).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};

use crate::dataflow::{DURATION_BUCKETS_PER_E, FIXED_POINT};
use crate::label::LabelId;
use crate::preferences::PreferenceSettings;
use crate::source::{day_of, Day, DAY_MS};
use crate::stats;

mod alert;
mod config;
mod gate;
mod inputs;
mod reading;
mod sides;
#[cfg(test)]
mod tests;
mod timeline;

pub use alert::*;
pub use config::*;
pub use gate::*;
pub use inputs::*;
pub use reading::*;
pub use timeline::*;

/// The drift signals, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Gold,
    Agreement,
    LabelMix,
    Speed,
    TooFast,
    /// Pairwise preferences: favouring one side of the screen (spec 2.2; its formula is in `drift/sides.rs`).
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

    /// The signal's bit in a set of signals held as a `u8` (there are fewer than eight).
    pub fn bit(self) -> u8 {
        const _: () = assert!(Signal::COUNT <= 8);
        1 << self.index()
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
