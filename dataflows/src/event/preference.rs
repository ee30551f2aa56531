//! Preference events (spec section 2.2): a label event that names the two systems it compares in
//! display order (`left`, `right`) and says which was better (`label`: `"left"`, `"right"`,
//! `"tie"`, or a number on a symmetric scale). This module owns their fields' rules, the reasons
//! for bad ones, and the **normalised outcome**: the comparison as it came out for the two
//! systems, whatever side each was shown on, so that two annotators shown one comparison in
//! opposite orders agree when they pick the same system.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::value::RawValue;

use super::{check_length, invalid, json_kind, string_of, MAX_NAME_BYTES};
use crate::label::RawLabel;
use crate::number::RawNumber;
use crate::preferences::{PairCounts, Side};
use crate::reason::{excerpt, ParseError};

/// The normalised outcome of a tie (spec 2.2: "the winning system's name, or `"tie"`"). No system
/// may be named so: its wins could not be told from ties.
pub const TIE: &str = "tie";

/// What an annotator said about a comparison, as it was shown.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Choice<'a> {
    /// `"left"`: the system shown on the left is better.
    Left,
    /// `"right"`: the system shown on the right is better.
    Right,
    /// `"tie"`: neither is better.
    Tie,
    /// A number on a symmetric scale: negative, the left system is better; positive, the right
    /// one; zero, a tie. The magnitude is how much better, in the scale's own units.
    Scale(RawNumber<'a>),
}

impl Choice<'_> {
    /// The side chosen: a scale's sign read as a side (what position bias and tie rate count).
    pub fn side(&self) -> Side {
        match self {
            Choice::Left => Side::Left,
            Choice::Right => Side::Right,
            Choice::Tie => Side::Tie,
            Choice::Scale(number) => match number.sign() {
                Ordering::Less => Side::Left,
                Ordering::Equal => Side::Tie,
                Ordering::Greater => Side::Right,
            },
        }
    }
}

/// The comparison of a preference event: the two systems in display order and, for an upsert,
/// what the annotator said.
#[derive(Clone, Debug, PartialEq)]
pub struct Preference<'a> {
    /// The system shown on the left (a non-empty name of at most
    /// [`MAX_NAME_BYTES`](super::MAX_NAME_BYTES) bytes, not `"tie"`).
    pub left: Cow<'a, str>,
    /// The system shown on the right (same rules; never equal to `left`).
    pub right: Cow<'a, str>,
    /// `Some` for an upsert, `None` for a delete (which may name the systems or not).
    pub choice: Option<Choice<'a>>,
}

impl Preference<'_> {
    /// The normalised outcome of an upsert ([`normalised_outcome`]); `None` for a delete.
    pub fn outcome(&self) -> Option<Outcome<'_>> {
        self.choice.map(|choice| normalised_outcome(&self.left, &self.right, choice))
    }
}

/// How a comparison came out for its two systems.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum PairResult {
    /// The bytewise smaller system won.
    FirstWins,
    /// The bytewise larger system won.
    SecondWins,
    Tie,
}

/// A comparison normalised to its systems (spec 2.2): independent of which system was shown on
/// which side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome<'p> {
    /// The bytewise smaller of the two systems.
    pub first: &'p str,
    /// The bytewise larger of the two systems.
    pub second: &'p str,
    pub result: PairResult,
    /// For a number label, the signed strength oriented to the system order: negative when
    /// `first` is better, positive when `second` is, its magnitude the label's. It is the label's
    /// exact value when `first` was shown on the left, the value negated otherwise.
    pub strength: Option<RawNumber<'p>>,
}

impl<'p> Outcome<'p> {
    /// The winning system, `None` for a tie.
    pub fn winner(&self) -> Option<&'p str> {
        match self.result {
            PairResult::FirstWins => Some(self.first),
            PairResult::SecondWins => Some(self.second),
            PairResult::Tie => None,
        }
    }

    /// The label that the agreement numbers of spec section 2 are computed on in place of the
    /// event's own: for a number label the oriented strength (so that nominal, ordinal, interval
    /// and ratio alpha all apply to it), otherwise the winning system's name or [`TIE`].
    pub fn agreement_label(&self) -> RawLabel<'p> {
        match (self.strength, self.winner()) {
            (Some(strength), _) => RawLabel::Number(strength),
            (None, Some(winner)) => RawLabel::String(Cow::Borrowed(winner)),
            (None, None) => RawLabel::String(Cow::Borrowed(TIE)),
        }
    }

    /// This one comparison as counts of the pair `(first, second)`: one win for the winner, or
    /// one tie (what the leaderboard's pair counts sum).
    pub fn pair_counts(&self) -> PairCounts {
        let one = |result| i64::from(self.result == result);
        PairCounts {
            a_wins: one(PairResult::FirstWins),
            b_wins: one(PairResult::SecondWins),
            ties: one(PairResult::Tie),
        }
    }
}

/// The normalised outcome of spec 2.2 of a comparison of `left` and `right` (two different
/// systems, in display order) where the annotator said `choice`. Pure: the same systems and the
/// same choice of the same system give the same outcome in either display order.
pub fn normalised_outcome<'p>(left: &'p str, right: &'p str, choice: Choice<'p>) -> Outcome<'p> {
    let left_first = left.as_bytes() <= right.as_bytes();
    let (first, second) = if left_first { (left, right) } else { (right, left) };
    let result = match (choice.side(), left_first) {
        (Side::Tie, _) => PairResult::Tie,
        (Side::Left, true) | (Side::Right, false) => PairResult::FirstWins,
        (Side::Left, false) | (Side::Right, true) => PairResult::SecondWins,
    };
    let strength = match choice {
        Choice::Scale(number) if left_first => Some(number),
        Choice::Scale(number) => Some(number.negated()),
        _ => None,
    };
    Outcome { first, second, result, strength }
}

/// `left` or `right`: a non-empty string of at most [`MAX_NAME_BYTES`] bytes, not [`TIE`].
fn system_field<'a>(field: &'static str, raw: &'a RawValue) -> Result<Cow<'a, str>, ParseError> {
    let text = raw.get();
    if !text.starts_with('"') {
        return Err(invalid(
            field,
            format!("is {} ({}); a system is named by a string", json_kind(text), excerpt(text)),
        ));
    }
    let name = string_of(field, text)?;
    if name.is_empty() {
        return Err(invalid(field, "is empty (\"\"); a system's name has at least one character".into()));
    }
    check_length(field, &name, name.len(), MAX_NAME_BYTES)?;
    if name == TIE {
        return Err(invalid(
            field,
            "is \"tie\", which is the outcome of a tie and cannot also name a system: rename the system"
                .into(),
        ));
    }
    Ok(name)
}

/// What a preference event's label says; `label_text` is its raw JSON, for the reason.
fn choice_of<'a>(label: &RawLabel<'a>, label_text: &str) -> Result<Choice<'a>, ParseError> {
    match label {
        RawLabel::String(s) if s == "left" => Ok(Choice::Left),
        RawLabel::String(s) if s == "right" => Ok(Choice::Right),
        RawLabel::String(s) if s == TIE => Ok(Choice::Tie),
        RawLabel::Number(number) => Ok(Choice::Scale(*number)),
        _ => Err(invalid(
            "label",
            format!(
                "is {} ({}) on a preference event (one with `left` and `right`); it must be \"left\", \
                 \"right\", \"tie\", or a number (negative: left better, positive: right better, 0: a tie)",
                json_kind(label_text),
                excerpt(label_text)
            ),
        )),
    }
}

/// The comparison of a label event from its `left`, `right` and (already read) `label` fields:
/// `None` when it names neither system (a plain label event), refused when it names one only, one
/// system twice, or has a label that is not a preference.
pub(super) fn preference<'a>(
    left: Option<&'a RawValue>,
    right: Option<&'a RawValue>,
    label: Option<&RawLabel<'a>>,
    label_raw: Option<&RawValue>,
) -> Result<Option<Preference<'a>>, ParseError> {
    let (left, right) = match (left, right) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(ParseError::Missing { field: "right" }),
        (None, Some(_)) => return Err(ParseError::Missing { field: "left" }),
        (Some(left), Some(right)) => (system_field("left", left)?, system_field("right", right)?),
    };
    if left == right {
        return Err(invalid(
            "right",
            format!(
                "is \"{}\", the same system as `left`; a comparison is of two different systems",
                excerpt(&right)
            ),
        ));
    }
    let choice = match (label, label_raw) {
        (Some(label), Some(raw)) => Some(choice_of(label, raw.get())?),
        _ => None,
    };
    Ok(Some(Preference { left, right, choice }))
}
