//! One signal's reading on one day ([`Reading`]): each signal's formula over an annotator's sums
//! against its scope's, with the plain-words explanation of what it saw.

use super::*;

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
    pub(super) fn level(&self) -> SignalState {
        level(self.score)
    }
}

/// The level of a reading's score: at least 1 is alarm, at least 0.5 watch.
fn level(score: f64) -> SignalState {
    if score >= 1.0 {
        SignalState::Alarm
    } else if score >= 0.5 {
        SignalState::Watch
    } else {
        SignalState::Ok
    }
}

/// A share as a whole percentage, `42%`, written where it is formatted (explanations are formed
/// for every annotator whose record changes).
pub(super) fn percent(x: f64) -> impl std::fmt::Display {
    struct Percent(f64);
    impl std::fmt::Display for Percent {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:.0}%", 100.0 * self.0)
        }
    }
    Percent(x)
}

/// `N days` (or `1 day`).
pub(super) fn days(n: u32) -> impl std::fmt::Display {
    struct Days(u32);
    impl std::fmt::Display for Days {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self.0 {
                1 => f.write_str("1 day"),
                n => write!(f, "{n} days"),
            }
        }
    }
    Days(n)
}

/// A difference of shares in plain words: `17 points less often`, `3 points more often`.
pub(super) fn points_more_or_less(diff: f64, what: &str) -> String {
    let points = (100.0 * diff).round();
    if points < 0.0 {
        format!("{:.0} points less {what}", -points)
    } else {
        format!("{points:.0} points more {what}")
    }
}

/// The range `[low, high]` of a difference of shares in plain words, after a sentence that
/// already said `points less` or `more`: `9-32`, or `from 4 less to 3 more` when it spans zero.
pub(super) fn points_range(low: f64, high: f64) -> String {
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
    use chrono::Datelike;
    let Some(t) = chrono::DateTime::from_timestamp(i64::from(day) * DAY_MS / 1000, 0) else {
        return day.to_string();
    };
    let (year, month, dom) = (t.year(), t.month(), t.day());
    if !(0..=9999).contains(&year) {
        return t.format("%Y-%m-%d").to_string();
    }
    // `%Y-%m-%d` without parsing the format each time: every re-evaluation of an annotator forms
    // the dates its signals' states hold since.
    let digits = [
        year / 1000,
        year / 100 % 10,
        year / 10 % 10,
        year % 10,
        -1,
        month as i32 / 10,
        month as i32 % 10,
        -1,
        dom as i32 / 10,
        dom as i32 % 10,
    ];
    digits.iter().map(|&d| if d < 0 { '-' } else { char::from(b'0' + d as u8) }).collect()
}

/// RFC 3339 (UTC, milliseconds) of an event time.
pub fn rfc3339(ts_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts_ms)
        .map_or_else(|| ts_ms.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Everything one annotator's signals read on day `day`.
pub(super) struct DayContext<'a> {
    pub(super) config: &'a DriftConfig,
    pub(super) label_name: &'a dyn Fn(LabelId) -> String,
    pub(super) inputs: &'a AnnotatorInputs,
    /// The annotator's gold answers by day, and its scope's, as running sums.
    pub(super) gold_days: &'a DaySums,
    pub(super) scope_gold_days: &'a DaySums,
    /// The annotator's timed labels (`inputs.speed`) over the recent and the baseline period of
    /// the day read, where it reads them at every day in order: each window slides forward,
    /// where summing weeks of the tree on every day took most of an evaluation (a re-evaluation,
    /// which reads them on few days, sums the tree).
    pub(super) speed: Option<std::cell::RefCell<[SlidingTiming<'a>; 2]>>,
    /// The scope's label times, whose median of the days before a day too-fast reads.
    pub(super) scope_speed: &'a ScopeSpeed,
    pub(super) preferences: &'a PreferenceSettings,
    /// Whether readings carry their explanation: only the ones an output shows need one (a
    /// timeline reads every signal on every day, and formatting them all was most of its cost).
    pub(super) explain: bool,
}

impl<'a> DayContext<'a> {
    /// The context of `inputs` in `scope`, its label times read from their tree and readings
    /// without explanations, until set.
    pub(super) fn new(
        config: &'a DriftConfig,
        label_name: &'a dyn Fn(LabelId) -> String,
        inputs: &'a AnnotatorInputs,
        scope: &'a ScopeInputs,
        preferences: &'a PreferenceSettings,
    ) -> DayContext<'a> {
        DayContext {
            config,
            label_name,
            inputs,
            gold_days: inputs.gold_days.sums(),
            scope_gold_days: scope.gold_days.sums(),
            speed: None,
            scope_speed: &scope.speed,
            preferences,
            explain: false,
        }
    }

    pub(super) fn explained(&self, explanation: impl FnOnce() -> String) -> String {
        if self.explain {
            explanation()
        } else {
            String::new()
        }
    }

    pub(super) fn read(&self, signal: Signal, day: Day) -> Option<Reading> {
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

    /// The error rate the gold evidence compares against, on `day` (which of the scope's days it
    /// reads: [`reads_scope_gold_of`]).
    pub(super) fn gold_baseline(&self, day: Day) -> Option<f64> {
        let c = self.config;
        let range = gold_baseline_period(c, day);
        let [scope_n, scope_errors] = self.scope_gold_days.sum(range.clone());
        // The scope's rate over the same period, or over everything before today if that is thin.
        let scope_rate = if scope_n >= c.gold_baseline_min_answers {
            scope_errors as f64 / scope_n as f64
        } else {
            let [n, errors] = self.scope_gold_days.sum(..day);
            if n == 0 {
                return None;
            }
            errors as f64 / n as f64
        };
        let [own_n, own_errors] = self.gold_days.sum(range);
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

    /// The gold evidence on `day`: of the windows (`gold_windows_days`) with at least
    /// `gold_min_answers` answers, the one with the most evidence that the annotator's error
    /// rate is `e1 = min(2 e0, 0.6)` rather than the baseline `e0` ([`DayContext::gold_baseline`]).
    /// `None` without such a window or without a baseline (the windows are summed first: where
    /// none has enough answers, the baseline is not formed).
    fn gold_evidence(&self, day: Day) -> Option<GoldEvidence> {
        let c = self.config;
        let mut windows = self
            .gold_days
            .windows_ending(day, &c.gold_windows_days)
            .filter(|&(_, [n, _])| n >= c.gold_min_answers)
            .peekable();
        windows.peek()?;
        let baseline_error = self.gold_baseline(day)?;
        let e1 = (2.0 * baseline_error).min(0.6);
        // The log-likelihood ratio of an error and of a correct answer, the same in every window.
        let (error_llr, correct_llr) =
            ((e1 / baseline_error).ln(), ((1.0 - e1) / (1.0 - baseline_error)).ln());
        let mut best: Option<GoldEvidence> = None;
        for (window_days, [answers, errors]) in windows {
            let llr = errors as f64 * error_llr + (answers - errors) as f64 * correct_llr;
            if best.as_ref().is_none_or(|b| llr > b.llr) {
                best = Some(GoldEvidence { llr, window_days, answers, errors, baseline_error });
            }
        }
        best
    }

    /// The level of the gold reading on `day` ([`DayContext::gold`]'s), without forming it.
    pub(super) fn gold_level(&self, day: Day) -> SignalState {
        self.gold_evidence(day)
            .map_or(SignalState::Insufficient, |evidence| level(evidence.llr / self.config.gold_threshold))
    }

    pub(super) fn gold(&self, day: Day) -> Option<Reading> {
        let c = self.config;
        let GoldEvidence { llr, window_days: w, answers: n, errors: k, baseline_error: e0 } =
            self.gold_evidence(day)?;
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

    pub(super) fn agreement(&self, day: Day) -> Option<Reading> {
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

    pub(super) fn label_mix(&self, day: Day) -> Option<Reading> {
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

    /// Timed labels `(count, sum of ln ms, those under limit_ms)` in `days`, the recent period
    /// (`window` 0) or the baseline period (1) of a day ([`DayContext::periods`]).
    pub(super) fn timing(
        &self,
        window: usize,
        days: std::ops::RangeInclusive<Day>,
        limit_ms: f64,
    ) -> (i64, f64, i64) {
        match &self.speed {
            Some(windows) => windows.borrow_mut()[window].over(days).timing(limit_ms),
            None => {
                let mut histogram = Histogram::default();
                let range = self.inputs.speed.range((*days.start(), 0)..=(*days.end(), u16::MAX));
                range.for_each(|(&(_, bucket), &[count])| histogram.add(bucket, count));
                histogram.timing(limit_ms)
            }
        }
    }

    pub(super) fn periods(&self, day: Day) -> (std::ops::RangeInclusive<Day>, std::ops::RangeInclusive<Day>) {
        let c = self.config;
        let recent_start = day - c.speed_window_days as Day + 1;
        (recent_start..=day, (recent_start - c.speed_baseline_days as Day)..=(recent_start - 1))
    }

    pub(super) fn speed(&self, day: Day) -> Option<Reading> {
        let c = self.config;
        let (recent, baseline) = self.periods(day);
        let (n, sum_ln, _) = self.timing(0, recent, 0.0);
        let (nb, sum_ln_b, _) = self.timing(1, baseline, 0.0);
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

    pub(super) fn too_fast(&self, day: Day) -> Option<Reading> {
        let c = self.config;
        // The scope's median label time of the days before this one.
        let limit = self
            .scope_speed
            .median_ms_before(day)
            .map_or(c.too_fast_floor_ms, |m| (c.too_fast_median_share * m).max(c.too_fast_floor_ms));
        let (recent, baseline) = self.periods(day);
        let (n, _, fast) = self.timing(0, recent, limit);
        let (nb, _, fast_b) = self.timing(1, baseline, limit);
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

/// The evidence of a gold reading ([`DayContext::gold_evidence`]): of its best window, the
/// log-likelihood ratio `llr = errors ln(e1 / e0) + (answers - errors) ln((1 - e1) / (1 - e0))`
/// (natural log; `e0` the baseline error rate, `e1 = min(2 e0, 0.6)`), the window's length in
/// days, and its answers and errors.
#[derive(Clone, Copy, Debug, PartialEq)]
struct GoldEvidence {
    llr: f64,
    window_days: u32,
    answers: i64,
    errors: i64,
    /// `e0`: the annotator's usual error rate, raised to its upper bound ([`DayContext::gold_baseline`]).
    baseline_error: f64,
}

/// The days of a gold reading's baseline period on `day`: the `gold_baseline_days` that end
/// `gold_baseline_lag_days` before it.
fn gold_baseline_period(config: &DriftConfig, day: Day) -> std::ops::RangeInclusive<Day> {
    let end = day - config.gold_baseline_lag_days as Day;
    (end - config.gold_baseline_days as Day + 1)..=end
}

/// Whether an annotator's gold reading on `day` reads the scope's gold answers of `changed`, as
/// [`DayContext::gold_baseline`] does: the scope's baseline period `[day - lag - days + 1,
/// day - lag]` (`gold_baseline_lag_days`, `gold_baseline_days`), or, where that period has fewer
/// than `gold_baseline_min_answers` answers, every day before `day`. No other reading reads the
/// scope's gold answers, so a corrected gold answer re-evaluates only the annotators with such a
/// day (for an answer of the scope's latest days, none but its own annotators).
pub fn reads_scope_gold_of(config: &DriftConfig, scope: &ScopeInputs, day: Day, changed: Day) -> bool {
    let period = gold_baseline_period(config, day);
    period.contains(&changed)
        || (changed < day && scope.gold_days.sums().sum(period)[0] < config.gold_baseline_min_answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_as_strftime_writes_them() {
        let strftime = |day: Day| {
            chrono::DateTime::from_timestamp(i64::from(day) * DAY_MS / 1000, 0)
                .map_or_else(|| day.to_string(), |t| t.format("%Y-%m-%d").to_string())
        };
        // From before 1 CE to past 9999, across leap years and every month.
        for day in (-800_000..3_000_000).step_by(7).chain([-719_528, -719_529, 0, 2_932_896, 2_932_897]) {
            assert_eq!(date(day), strftime(day), "day {day}");
        }
        assert_eq!(date(20_454), "2026-01-01");
    }
}
