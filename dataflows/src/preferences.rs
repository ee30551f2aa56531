//! The numbers of pairwise preferences (spec section 2.2), from exact integer counts: per
//! annotator (and per scope) **position bias**, the share of decisive comparisons in which the
//! left side was chosen with its Wilson interval and a flag, and the **tie rate** with its Wilson
//! interval; per scope the **Bradley–Terry leaderboard** ([`leaderboard`], in
//! [`bradley_terry`]). Pure functions over counts that a keyed operator keeps as integer sums
//! (which cancel exactly on retraction); floats are formed only here, when a final number is.
//!
//! Counts come from single events through [`SideCounts::of`] (one event's side, from
//! [`Choice::side`](crate::event::Choice::side)) and
//! [`Outcome::pair_counts`](crate::event::Outcome::pair_counts) (one event's result for its pair
//! of systems); sums of them are what the functions here take.

use std::iter::Sum;
use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

use crate::stats::{wilson, WILSON_Z};

pub mod bradley_terry;

pub use bradley_terry::{leaderboard, BradleyTerryFit, LeaderboardEntry, PRIOR_SD};

#[cfg(test)]
mod tests;

/// The default `[preferences] position_margin`: an annotator is flagged when the Wilson interval
/// of its left share lies entirely above `0.5 + margin` or entirely below `0.5 - margin`.
pub const DEFAULT_POSITION_MARGIN: f64 = 0.1;

/// The `[preferences]` settings: the margin of the position-bias flag.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreferenceSettings {
    /// See [`DEFAULT_POSITION_MARGIN`].
    pub position_margin: f64,
    /// The drift signals `position` and `ties` read the last this many days ...
    pub window_days: u32,
    /// ... `position` once there are this many decisive comparisons in them ...
    pub min_decisive: i64,
    /// ... and `ties` once there are this many comparisons; it alarms when the tie rate's Wilson
    /// interval lies entirely above `tie_rate_max`.
    pub min_comparisons: i64,
    pub tie_rate_max: f64,
}

impl Default for PreferenceSettings {
    fn default() -> Self {
        PreferenceSettings {
            position_margin: DEFAULT_POSITION_MARGIN,
            window_days: 7,
            min_decisive: 30,
            min_comparisons: 30,
            tie_rate_max: 0.25,
        }
    }
}

/// One live comparison as an item keeps it for its annotator: the two systems (ids of their
/// names, interned as labels; `first` the bytewise smaller), the side of the screen chosen, and
/// how it came out for the systems. Its counts are [`Compared::sides`] and [`Compared::pair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Compared {
    pub first: crate::label::LabelId,
    pub second: crate::label::LabelId,
    pub side: Side,
    pub result: crate::event::PairResult,
}

impl Compared {
    /// This comparison's side, as counts.
    pub fn sides(&self) -> SideCounts {
        SideCounts::of(self.side)
    }

    /// This comparison's result for the pair `(first, second)`, as counts.
    pub fn pair(&self) -> PairCounts {
        use crate::event::PairResult;
        PairCounts {
            a_wins: i64::from(self.result == PairResult::FirstWins),
            b_wins: i64::from(self.result == PairResult::SecondWins),
            ties: i64::from(self.result == PairResult::Tie),
        }
    }
}

/// The side of the screen an annotator chose in one comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Side {
    Left,
    Right,
    /// Neither side: a tie (`"tie"`, or 0 on a scale).
    Tie,
}

/// How often each side was chosen: the exact sums behind position bias and tie rate, of one
/// annotator or of a scope. Decisive comparisons are `left + right`, events `left + right + ties`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SideCounts {
    /// Comparisons in which the left system was chosen.
    pub left: i64,
    /// Comparisons in which the right system was chosen.
    pub right: i64,
    /// Ties.
    pub ties: i64,
}

impl SideCounts {
    /// The counts of one comparison in which `side` was chosen.
    pub fn of(side: Side) -> SideCounts {
        SideCounts {
            left: i64::from(side == Side::Left),
            right: i64::from(side == Side::Right),
            ties: i64::from(side == Side::Tie),
        }
    }

    /// Decisive comparisons (not ties).
    pub fn decisive(&self) -> i64 {
        self.left + self.right
    }

    /// All comparisons.
    pub fn events(&self) -> i64 {
        self.left + self.right + self.ties
    }
}

impl Add for SideCounts {
    type Output = SideCounts;
    fn add(self, other: SideCounts) -> SideCounts {
        SideCounts {
            left: self.left + other.left,
            right: self.right + other.right,
            ties: self.ties + other.ties,
        }
    }
}

impl AddAssign for SideCounts {
    fn add_assign(&mut self, other: SideCounts) {
        *self = *self + other;
    }
}

impl Sum for SideCounts {
    fn sum<I: Iterator<Item = SideCounts>>(iter: I) -> SideCounts {
        iter.fold(SideCounts::default(), Add::add)
    }
}

/// Counts of the comparisons of one pair of systems `(a, b)`: wins of `a`, wins of `b`, ties.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PairCounts {
    pub a_wins: i64,
    pub b_wins: i64,
    pub ties: i64,
}

impl PairCounts {
    /// The same counts for the pair `(b, a)`.
    pub fn swapped(self) -> PairCounts {
        PairCounts { a_wins: self.b_wins, b_wins: self.a_wins, ties: self.ties }
    }

    /// Comparisons of the pair.
    pub fn total(&self) -> i64 {
        self.a_wins + self.b_wins + self.ties
    }
}

impl Add for PairCounts {
    type Output = PairCounts;
    fn add(self, other: PairCounts) -> PairCounts {
        PairCounts {
            a_wins: self.a_wins + other.a_wins,
            b_wins: self.b_wins + other.b_wins,
            ties: self.ties + other.ties,
        }
    }
}

impl AddAssign for PairCounts {
    fn add_assign(&mut self, other: PairCounts) {
        *self = *self + other;
    }
}

/// Position bias (spec 2.2): among `n` decisive comparisons, `left` chose the left side; the
/// Wilson 95% score interval of the left share (z = [`WILSON_Z`], no continuity correction), and
/// `flagged` when that interval lies entirely above `0.5 + margin` or entirely below
/// `0.5 - margin`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PositionBias {
    pub n: i64,
    pub left: i64,
    /// `left / n`.
    pub left_share: f64,
    pub wilson_low: f64,
    pub wilson_high: f64,
    pub flagged: bool,
}

/// Position bias of `counts` with the flag's `margin` (a share, in `[0, 0.5)`; the spec's default
/// is [`DEFAULT_POSITION_MARGIN`]); `None` without a decisive comparison.
pub fn position_bias(counts: SideCounts, margin: f64) -> Option<PositionBias> {
    let n = counts.decisive();
    let (wilson_low, wilson_high) = wilson(n, counts.left as f64, WILSON_Z)?;
    Some(PositionBias {
        n,
        left: counts.left,
        left_share: counts.left as f64 / n as f64,
        wilson_low,
        wilson_high,
        flagged: wilson_low > 0.5 + margin || wilson_high < 0.5 - margin,
    })
}

/// The tie rate: `ties / events`, with its Wilson 95% score interval (z = [`WILSON_Z`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TieRate {
    pub rate: f64,
    pub wilson_low: f64,
    pub wilson_high: f64,
}

/// The tie rate of `counts`; `None` without a comparison.
pub fn tie_rate(counts: SideCounts) -> Option<TieRate> {
    let events = counts.events();
    let (wilson_low, wilson_high) = wilson(events, counts.ties as f64, WILSON_Z)?;
    Some(TieRate { rate: counts.ties as f64 / events as f64, wilson_low, wilson_high })
}

/// The preference numbers of one annotator, or of a scope over all its events (spec 2.2), with
/// the spec's field names: `position` (`null` without a decisive comparison), `ties`, `events`,
/// and `tie_rate` (`null` without a comparison).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreferenceQuality {
    pub position: Option<PositionBias>,
    pub ties: i64,
    pub events: i64,
    pub tie_rate: Option<TieRate>,
}

/// The preference numbers of `counts`, flagged with `margin` (see [`position_bias`]).
pub fn preference_quality(counts: SideCounts, margin: f64) -> PreferenceQuality {
    PreferenceQuality {
        position: position_bias(counts, margin),
        ties: counts.ties,
        events: counts.events(),
        tie_rate: tie_rate(counts),
    }
}

/// Why pair counts cannot give a leaderboard.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PreferenceError {
    /// A pair of one system with itself.
    #[error("a pair of counts compares a system with itself")]
    SelfPair,
    /// A count below zero: counts not yet consolidated, or more retractions than insertions.
    #[error("a pair's counts hold a negative count ({0}); the leaderboard needs consolidated counts")]
    NegativeCount(i64),
}
