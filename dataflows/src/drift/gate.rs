//! Gates: the decision, from a project's gold answers in event-time order and the signals gated on,
//! of whether the labelling platform should route work to an annotator, with its evidence.

use super::*;

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

/// The evidence of `n` gold answers of which `correct` were right.
pub(super) fn evidence(n: i64, correct: i64, threshold: f64) -> Evidence {
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

pub(super) fn describe(e: &Evidence) -> String {
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

/// Why a gate blocks: its recent gold accuracy, or an alarm the project blocks on.
#[derive(Clone, Copy)]
enum BlockCause {
    Accuracy,
    Alarm,
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
    // The right answers in the window, counted as answers enter and leave it.
    let mut right = 0i64;
    let mut state = GateState::Warmup;
    let mut history: Vec<Decision> = Vec::new();
    let mut blocked_at = i64::MIN;
    let mut probation_answers = 0;
    let mut seen = 0;
    let mut reason = format!("fewer than {} gold answers", c.gate_min_answers);
    for &(ts, correct) in answers {
        seen += 1;
        window.push_back((ts, correct));
        right += i64::from(correct);
        while window.len() > c.gate_window_answers
            || window.front().is_some_and(|&(t, _)| t <= ts - i64::from(c.gate_window_days) * DAY_MS)
        {
            if let Some((_, left)) = window.pop_front() {
                right -= i64::from(left);
            }
        }
        let e = evidence(window.len() as i64, right, theta);
        let alarm = gated_alarm(day_of(ts));
        if state == GateState::Probation {
            probation_answers += 1;
        }
        let judged = e.n >= c.gate_min_answers;
        let (low, high) = (e.wilson_low.unwrap_or(0.0), e.wilson_high.unwrap_or(1.0));
        // Why it would block now; its words are formed only when it does (a blocked annotator's
        // every answer would otherwise format one).
        let block_reason = if judged && high < theta {
            Some(BlockCause::Accuracy)
        } else if alarm && seen >= c.gate_min_answers {
            Some(BlockCause::Alarm)
        } else {
            None
        };
        let block_words = |cause: BlockCause| match cause {
            BlockCause::Accuracy => {
                format!("{}: even at best under the required {}", describe(&e), percent(theta))
            }
            BlockCause::Alarm => {
                let signals: Vec<&str> = c.gate_on_alarm.iter().map(|s| s.title()).collect();
                format!("an alarm on {}, which the project blocks on; {}", signals.join(" or "), describe(&e))
            }
        };
        let next: Option<(GateState, String)> = match (state, block_reason) {
            (GateState::Warmup | GateState::Allow | GateState::Probation, Some(cause)) => {
                Some((GateState::Block, block_words(cause)))
            }
            (GateState::Warmup, _) if judged => Some((
                GateState::Allow,
                format!("{}: enough to judge, and not under the required {}", describe(&e), percent(theta)),
            )),
            (GateState::Block, _)
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
            (GateState::Probation, _) if probation_answers >= c.gate_probation_answers && low >= theta => Some((
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
    let evidence = evidence(window.len() as i64, right, theta);
    if state == GateState::Warmup {
        reason = format!("{} gold answer(s), fewer than the {} needed to judge", seen, c.gate_min_answers);
    }
    Gate { state, reason, evidence, since: history.last().map(|d| d.at.clone()), history }
}
