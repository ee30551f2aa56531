//! The drift signals of pairwise preferences (spec 2.2), read like the others from an annotator's
//! exact per-day sums ([`AnnotatorInputs::sides`]: comparisons by the side of the screen chosen)
//! over the last `[preferences] window_days` days:
//! - `position`: the Wilson 95% interval of the left share among decisive comparisons, against
//!   `0.5 ± position_margin`. Its score is the distance of the interval from 0.5 over the margin:
//!   1 (alarm) when the interval lies entirely beyond the margin, which is when the report flags
//!   the annotator; 0.5 (watch) halfway.
//! - `ties`: the Wilson 95% interval of the tie rate against `tie_rate_max`. Its score is the
//!   interval's lower end over the limit: alarm when the whole interval is above it.

use super::{days, percent, sum_range, AnnotatorInputs, Reading};
use crate::preferences::PreferenceSettings;
use crate::source::Day;
use crate::stats::{wilson, WILSON_Z};

/// The `[left, right, ties]` of the window of `day`.
fn window(inputs: &AnnotatorInputs, settings: &PreferenceSettings, day: Day) -> [i64; 3] {
    let first = day - settings.window_days.max(1) as Day + 1;
    sum_range(&inputs.sides, first..=day)
}

/// The position-bias reading of `day`: `None` with fewer than `min_decisive` decisive comparisons.
pub(super) fn position(inputs: &AnnotatorInputs, settings: &PreferenceSettings, day: Day) -> Option<Reading> {
    let [left, right, _] = window(inputs, settings, day);
    let n = left + right;
    if n < settings.min_decisive.max(1) {
        return None;
    }
    let (low, high) = wilson(n, left as f64, WILSON_Z)?;
    let share = left as f64 / n as f64;
    let distance = if low > 0.5 {
        low - 0.5
    } else if high < 0.5 {
        0.5 - high
    } else {
        0.0
    };
    let margin = settings.position_margin.max(1e-9);
    let side = if share >= 0.5 { "left" } else { "right" };
    let side_share = if share >= 0.5 { share } else { 1.0 - share };
    let (side_low, side_high) = if share >= 0.5 { (low, high) } else { (1.0 - high, 1.0 - low) };
    Some(Reading {
        score: distance / margin,
        value: share,
        n,
        baseline: Some(0.5),
        interval: Some([low, high]),
        explanation: format!(
            "chose the {side} side in {} of {n} decisive comparisons over the last {} (95% interval \
             {}-{}); someone who reads both answers picks each side about half the time",
            percent(side_share),
            days(settings.window_days),
            percent(side_low),
            percent(side_high),
        ),
    })
}

/// The tie-rate reading of `day`: `None` with fewer than `min_comparisons` comparisons.
pub(super) fn ties(inputs: &AnnotatorInputs, settings: &PreferenceSettings, day: Day) -> Option<Reading> {
    let [left, right, ties] = window(inputs, settings, day);
    let n = left + right + ties;
    if n < settings.min_comparisons.max(1) {
        return None;
    }
    let (low, high) = wilson(n, ties as f64, WILSON_Z)?;
    let limit = settings.tie_rate_max.max(1e-9);
    Some(Reading {
        score: low / limit,
        value: ties as f64 / n as f64,
        n,
        baseline: Some(settings.tie_rate_max),
        interval: Some([low, high]),
        explanation: format!(
            "said tie in {} of {n} comparisons over the last {} (95% interval {}-{}), against a \
             limit of {}: ties may be a shortcut",
            percent(ties as f64 / n as f64),
            days(settings.window_days),
            percent(low),
            percent(high),
            percent(settings.tie_rate_max),
        ),
    })
}

/// Why a preference signal has no reading.
pub(super) fn not_enough(position: bool, settings: &PreferenceSettings) -> String {
    if position {
        format!(
            "fewer than {} decisive comparisons over the last {}",
            settings.min_decisive,
            days(settings.window_days)
        )
    } else {
        format!(
            "fewer than {} comparisons over the last {}",
            settings.min_comparisons,
            days(settings.window_days)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::{evaluate_with, DriftConfig, ScopeInputs, Signal, SignalState};

    fn inputs(per_day: [i64; 3], days: Day) -> AnnotatorInputs {
        let mut inputs = AnnotatorInputs::default();
        for day in 0..days {
            inputs.sides.insert(day, per_day);
        }
        inputs
    }

    fn state(per_day: [i64; 3], signal: Signal) -> SignalState {
        let settings = PreferenceSettings::default();
        let timeline = evaluate_with(
            &inputs(per_day, 10),
            &ScopeInputs::default(),
            &DriftConfig::default(),
            &settings,
            &|l| l.to_string(),
        );
        timeline.state(signal)
    }

    #[test]
    fn a_side_biased_annotator_is_in_alarm_and_a_careful_one_is_not() {
        assert_eq!(state([17, 3, 1], Signal::Position), SignalState::Alarm);
        assert_eq!(state([3, 17, 1], Signal::Position), SignalState::Alarm);
        assert_eq!(state([10, 10, 1], Signal::Position), SignalState::Ok);
        // Too few decisive comparisons in a week: not judged.
        assert_eq!(state([1, 1, 0], Signal::Position), SignalState::Insufficient);
    }

    #[test]
    fn a_tie_happy_annotator_is_in_alarm() {
        assert_eq!(state([5, 5, 10], Signal::Ties), SignalState::Alarm);
        assert_eq!(state([9, 9, 1], Signal::Ties), SignalState::Ok);
    }

    #[test]
    fn the_reading_says_what_is_wrong() {
        let settings = PreferenceSettings::default();
        let reading = position(&inputs([17, 3, 1], 7), &settings, 6).unwrap();
        assert_eq!((reading.n, reading.value), (140, 0.85));
        assert!(
            reading.explanation.starts_with("chose the left side in 85% of 140"),
            "{}",
            reading.explanation
        );
        let reading = ties(&inputs([5, 5, 10], 7), &settings, 6).unwrap();
        assert!(reading.explanation.starts_with("said tie in 50% of 140"), "{}", reading.explanation);
    }

    #[test]
    fn annotators_without_comparisons_have_no_preference_signals() {
        let mut plain = AnnotatorInputs::default();
        plain.gap.insert(3, [1, 0, 0]);
        let t = evaluate_with(
            &plain,
            &ScopeInputs::default(),
            &DriftConfig::default(),
            &PreferenceSettings::default(),
            &|l| l.to_string(),
        );
        assert!(t.current.iter().all(|(s, _)| !s.is_preference()), "{:?}", t.current);
    }
}
