//! An annotator's drift timeline: every signal evaluated on every active day, in event-time order,
//! with the state rules (ok, watch, alarm, insufficient) and the alarm episodes.

use super::*;

/// A period during which a signal was in alarm.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Episode {
    pub signal: Signal,
    pub start: Day,
    /// The day the alarm cleared, if it has.
    pub end: Option<Day>,
    /// The reading that raised it.
    pub explanation: String,
}

/// One signal's current state with the reading behind it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SignalReport {
    pub state: SignalState,
    /// The day the current state began, written `YYYY-MM-DD` ([`date`]). Kept as the day: an
    /// annotator's timeline is re-evaluated with every label it gives, and its record is written
    /// only where a report moved, so the dates are formed when written, not at each evaluation.
    #[serde(serialize_with = "serialize_since")]
    pub since: Option<Day>,
    /// The latest reading; absent while there are too few observations.
    #[serde(flatten)]
    pub reading: Option<Reading>,
    /// Why there is no reading, when there is none. Shared: the words depend on the settings
    /// alone, and a re-evaluation keeps them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<std::sync::Arc<str>>,
}

/// [`SignalReport::since`] as `YYYY-MM-DD`, or `null`.
fn serialize_since<S: serde::Serializer>(since: &Option<Day>, serializer: S) -> Result<S::Ok, S::Error> {
    match since {
        Some(day) => serializer.serialize_str(&date(*day)),
        None => serializer.serialize_none(),
    }
}

/// An annotator's drift within a scope: every signal's state, day by day.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    /// `(day, state per signal)` on every day the annotator was active.
    pub days: Vec<(Day, [SignalState; Signal::COUNT])>,
    /// Alarm episodes, in order of start.
    pub episodes: Vec<Episode>,
    /// The current state of every signal.
    pub current: Vec<(Signal, SignalReport)>,
    /// Each signal's level from its own reading on each day of `days` (before speed and
    /// too-fast are held at watch): what [`reevaluate`] reuses.
    pub levels: Vec<[SignalState; Signal::COUNT]>,
}

impl Timeline {
    /// The current report of `signal`; `None` for a preference signal of an annotator without
    /// comparisons.
    pub fn report(&self, signal: Signal) -> Option<&SignalReport> {
        self.current.iter().find(|(s, _)| *s == signal).map(|(_, r)| r)
    }

    /// The state of `signal` now.
    pub fn state(&self, signal: Signal) -> SignalState {
        self.report(signal).map_or(SignalState::Insufficient, |r| r.state)
    }

    /// The score of `signal`'s latest reading.
    pub fn score(&self, signal: Signal) -> Option<f64> {
        self.report(signal)?.reading.as_ref().map(|r| r.score)
    }

    /// Whether `signal` was in alarm on `day`.
    pub fn alarm_on(&self, signal: Signal, day: Day) -> bool {
        self.episodes
            .iter()
            .any(|e| e.signal == signal && e.start <= day && e.end.is_none_or(|end| day < end))
    }
}

/// Evaluates an annotator's signals on every active day, in order, with the state rules: ok ->
/// watch at half the threshold -> alarm at the threshold; an alarm lasts at least
/// `cooldown_days` and clears after `clear_days` without a watch-level reading. Speed and too-fast
/// are context: alone they reach watch at most, and alarm only while gold or agreement is at
/// watch or worse.
/// `label_name` names a label in explanations.
pub fn evaluate(
    inputs: &AnnotatorInputs,
    scope: &ScopeInputs,
    config: &DriftConfig,
    label_name: &dyn Fn(LabelId) -> String,
) -> Timeline {
    evaluate_with(inputs, scope, config, &PreferenceSettings::default(), label_name)
}

/// [`evaluate`] with the `[preferences]` settings of the preference signals.
pub fn evaluate_with(
    inputs: &AnnotatorInputs,
    scope: &ScopeInputs,
    config: &DriftConfig,
    preferences: &PreferenceSettings,
    label_name: &dyn Fn(LabelId) -> String,
) -> Timeline {
    evaluate_reusing(inputs, scope, config, preferences, label_name, None)
}

/// What a re-evaluation ([`reevaluate`]) reads again, after a change of its scope's inputs or of
/// its own.
#[derive(Clone, Copy)]
pub struct Reread<'a> {
    /// Whether the gold reading of a day reads a changed day of the scope's pooled gold answers
    /// ([`reads_scope_gold_of`]).
    pub gold: &'a dyn Fn(Day) -> bool,
    /// The earliest day of the scope's label times that changed: the too-fast readings of the
    /// days after it read the scope's median label time of the days before theirs.
    pub speed_from: Option<Day>,
    /// The earliest day of the annotator's own inputs that changed: every reading from it on is
    /// read again (a reading reads its own day and the days before it, never a later one).
    pub own_from: Option<Day>,
}

/// [`evaluate_with`] after a change of the scope's inputs, or of the annotator's own inputs on
/// `reread.own_from` and later days, from `previous`, this annotator's timeline before the
/// change: only the readings `reread` names are read again (gold on the days it says; too-fast
/// on the days after `speed_from`; every signal on the days from `own_from` on, and on the last
/// day), every other reading's level is `previous`'s, and the state rules, the alarm episodes
/// and the current readings are formed again from the first day read again. The result is
/// [`evaluate_with`]'s when `reread.gold` holds for every day whose gold reading reads a changed
/// day of the scope ([`reads_scope_gold_of`]), `speed_from` is at or before the earliest changed
/// day of its label times, and no own input of a day before `own_from` changed (none changed
/// where it is `None`): no other reading reads the scope's inputs.
pub fn reevaluate(
    inputs: &AnnotatorInputs,
    scope: &ScopeInputs,
    config: &DriftConfig,
    preferences: &PreferenceSettings,
    label_name: &dyn Fn(LabelId) -> String,
    previous: &Timeline,
    reread: Reread<'_>,
) -> Timeline {
    evaluate_reusing(inputs, scope, config, preferences, label_name, Some((previous, reread)))
}

/// [`reevaluate`] in place after a change of the scope's gold answers alone, where no gold
/// reading read again changes its level: the state rules read levels alone, so the days' states
/// and the alarm episodes stand, and only what shows a gold reading's numbers is read again (the
/// explanation of a gold alarm that began on a day `gold` names, and the current gold reading if
/// the last day is one). Most re-evaluations after a gold answer are such: the scope's gold
/// accuracy moves a reading's score, rarely its level.
///
/// `gold` holds for no day before `gold_from` (the earliest changed day of the scope's gold
/// answers: a gold reading reads no later day of the scope's than its own), so the days before
/// it are not looked at: weeks of history of each of a scope's annotators.
///
/// Returns whether `timeline` changed; `None`, leaving it as it was, where a level moved (then
/// the state rules must run again: [`reevaluate`]). The result is [`evaluate_with`]'s under the
/// same condition as [`reevaluate`]'s, with no label times changed.
#[allow(clippy::too_many_arguments)]
pub fn restate(
    inputs: &AnnotatorInputs,
    scope: &ScopeInputs,
    config: &DriftConfig,
    preferences: &PreferenceSettings,
    label_name: &dyn Fn(LabelId) -> String,
    timeline: &mut Timeline,
    gold: &dyn Fn(Day) -> bool,
    gold_from: Day,
) -> Option<bool> {
    let mut context = DayContext::new(config, label_name, inputs, scope, preferences);
    let g = Signal::Gold.index();
    let from = timeline.days.partition_point(|&(day, _)| day < gold_from);
    debug_assert!(timeline.days[..from].iter().all(|&(day, _)| !gold(day)));
    for (&(day, _), levels) in timeline.days[from..].iter().zip(&timeline.levels[from..]) {
        if gold(day) && context.gold_level(day) != levels[g] {
            return None;
        }
    }
    context.explain = true;
    let mut changed = false;
    for episode in timeline.episodes.iter_mut().filter(|e| e.signal == Signal::Gold && gold(e.start)) {
        let explanation =
            context.read(Signal::Gold, episode.start).map(|r| r.explanation).unwrap_or_default();
        if explanation != episode.explanation {
            episode.explanation = explanation;
            changed = true;
        }
    }
    if let Some(&(last, _)) = timeline.days.last().filter(|(last, _)| gold(*last)) {
        // The same level, so a reading as before (a day without one is insufficient).
        if let Some((_, report)) = timeline.current.iter_mut().find(|(s, _)| *s == Signal::Gold) {
            let reading = context.read(Signal::Gold, last);
            if reading != report.reading {
                report.reading = reading;
                changed = true;
            }
        }
    }
    Some(changed)
}

fn evaluate_reusing(
    inputs: &AnnotatorInputs,
    scope: &ScopeInputs,
    config: &DriftConfig,
    preferences: &PreferenceSettings,
    label_name: &dyn Fn(LabelId) -> String,
    reuse: Option<(&Timeline, Reread<'_>)>,
) -> Timeline {
    let gold_days = inputs.gold_days.by_day();
    let active = match reuse {
        // The same inputs of its own before `own_from`: the same days before it.
        Some((previous, reread)) => {
            let kept = previous.days.iter().map(|(day, _)| *day);
            match reread.own_from {
                None => kept.collect(),
                Some(from) => {
                    let mut active = kept.take_while(|&day| day < from).collect::<Vec<_>>();
                    active.extend(inputs.active_days_from(gold_days, from));
                    active
                }
            }
        }
        None => inputs.active_days(gold_days),
    };
    debug_assert_eq!(active, inputs.active_days(gold_days));
    // Every signal is read again from this day on (every day in a full evaluation). The last day
    // always is, where the own inputs changed: the current readings are of the last day.
    let all_from = match reuse {
        None => Some(Day::MIN),
        Some((_, reread)) => reread.own_from.map(|from| active.last().map_or(from, |&last| from.min(last))),
    };
    let reads_all = |day: Day| all_from.is_some_and(|from| day >= from);
    // Days after this one read too-fast again.
    let too_fast_after = match reuse {
        None => Some(Day::MIN),
        Some((_, reread)) => reread.speed_from,
    };
    let reads_too_fast = |day: Day| too_fast_after.is_some_and(|after| day > after) || reads_all(day);
    // A re-evaluation resumes at the first day it reads again: the state rules read only the days
    // before, so the states of the days before it and the alarm episodes begun before it are the
    // last timeline's.
    let resume = reuse.map_or(0, |(_, reread)| {
        let reads_again = |day: Day| (reread.gold)(day) || reads_too_fast(day) || reads_all(day);
        active.iter().position(|&day| reads_again(day)).unwrap_or(active.len())
    });
    // Read day after day where too-fast is: laid out flat once, for windows that slide, from the
    // first day the periods of the days read again reach back to (not weeks of history for a
    // re-evaluation of the last days). A re-evaluation of gold alone reads the label times on few
    // days, from the tree.
    let speed: Option<Vec<((Day, u16), i64)>> = (too_fast_after.is_some() || all_from.is_some()).then(|| {
        let reach = i64::from(config.speed_window_days) + i64::from(config.speed_baseline_days);
        let from = active.get(resume).map_or(Day::MAX, |&day| {
            (i64::from(day) - reach + 1).clamp(i64::from(Day::MIN), i64::from(Day::MAX)) as Day
        });
        inputs.speed.range((from, u16::MIN)..).map(|(&key, &[count])| (key, count)).collect()
    });
    let mut context = DayContext {
        speed: speed
            .as_deref()
            .map(|s| std::cell::RefCell::new([SlidingTiming::new(s), SlidingTiming::new(s)])),
        ..DayContext::new(config, label_name, inputs, scope, preferences)
    };
    let mut timeline = Timeline::default();
    let days = reuse.map_or(0, |(previous, _)| previous.days.len());
    (timeline.days, timeline.levels) = (Vec::with_capacity(days), Vec::with_capacity(days));
    let mut state = [SignalState::Insufficient; Signal::COUNT];
    let mut since: [Option<Day>; Signal::COUNT] = [None; Signal::COUNT];
    let mut last_bad: [Option<Day>; Signal::COUNT] = [None; Signal::COUNT];
    let mut open: [Option<usize>; Signal::COUNT] = [None; Signal::COUNT];
    let mut latest: [Option<Reading>; Signal::COUNT] = Default::default();
    let mut last_day = None;
    // The days before the resumed one, their states and the episodes begun before it.
    if let Some((previous, _)) = reuse.filter(|_| resume > 0) {
        let kept = &previous.days[..resume];
        timeline.days.extend_from_slice(kept);
        timeline.levels.extend_from_slice(&previous.levels[..resume]);
        state = kept[resume - 1].1;
        for i in 0..Signal::COUNT {
            // The day the state began: the first of the run of days that end in it.
            let run = kept.iter().rev().take_while(|(_, states)| states[i] == state[i]).count();
            since[i] = Some(kept[resume - run].0);
            // Speed and too-fast are held at watch at most, which is still a watch-level day.
            last_bad[i] = kept
                .iter()
                .zip(&previous.levels[..resume])
                .rev()
                .find(|(_, levels)| levels[i] >= SignalState::Watch)
                .map(|((day, _), _)| *day);
        }
        // Episodes begun before the resumed day; one that ended on or after it is open there.
        let from = active.get(resume).copied().unwrap_or(Day::MAX);
        for episode in previous.episodes.iter().take_while(|e| e.start < from) {
            let end = episode.end.filter(|&end| end < from);
            if end.is_none() {
                open[episode.signal.index()] = Some(timeline.episodes.len());
            }
            timeline.episodes.push(Episode { end, ..episode.clone() });
        }
        last_day = Some(kept[resume - 1].0);
    }
    for (at, &day) in active.iter().enumerate().skip(resume) {
        let mut levels = [SignalState::Insufficient; Signal::COUNT];
        match reuse.filter(|_| !reads_all(day)) {
            Some((previous, reread)) => {
                levels = previous.levels[at];
                if (reread.gold)(day) {
                    levels[Signal::Gold.index()] = context.gold_level(day);
                }
                if reads_too_fast(day) {
                    let reading = context.read(Signal::TooFast, day);
                    levels[Signal::TooFast.index()] =
                        reading.as_ref().map_or(SignalState::Insufficient, Reading::level);
                }
            }
            None => {
                // The last day's readings are the current ones: read once, with their
                // explanations.
                context.explain = at + 1 == active.len();
                for signal in Signal::ALL {
                    let i = signal.index();
                    latest[i] = context.read(signal, day);
                    levels[i] = latest[i].as_ref().map_or(SignalState::Insufficient, Reading::level);
                }
                context.explain = false;
            }
        }
        timeline.levels.push(levels);
        let primary = levels[Signal::Gold.index()].max(levels[Signal::Agreement.index()]);
        for signal in [Signal::Speed, Signal::TooFast] {
            let i = signal.index();
            if levels[i] == SignalState::Alarm && primary < SignalState::Watch {
                levels[i] = SignalState::Watch;
            }
        }
        for signal in Signal::ALL {
            let i = signal.index();
            let level = levels[i];
            if level >= SignalState::Watch {
                last_bad[i] = Some(day);
            }
            let next = match (state[i], level) {
                (_, SignalState::Alarm) => SignalState::Alarm,
                (SignalState::Alarm, _) => {
                    let start = open[i].map_or(day, |e| timeline.episodes[e].start);
                    let cooled = day >= start + config.cooldown_days as Day;
                    let clean = last_bad[i].is_none_or(|b| day >= b + config.clear_days as Day);
                    if cooled && clean {
                        level
                    } else {
                        SignalState::Alarm
                    }
                }
                (_, level) => level,
            };
            if next == SignalState::Alarm && state[i] != SignalState::Alarm {
                open[i] = Some(timeline.episodes.len());
                context.explain = true;
                let explanation = context.read(signal, day).map(|r| r.explanation).unwrap_or_default();
                context.explain = false;
                timeline.episodes.push(Episode { signal, start: day, end: None, explanation });
            }
            if next != SignalState::Alarm && state[i] == SignalState::Alarm {
                if let Some(e) = open[i].take() {
                    timeline.episodes[e].end = Some(day);
                }
            }
            if next != state[i] || since[i].is_none() {
                since[i] = Some(day);
            }
            state[i] = next;
        }
        timeline.days.push((day, state));
        last_day = Some(day);
    }
    // The current readings, with their explanations. A last day read in full was read with
    // them. Otherwise a re-evaluation reads gold and too-fast again where its last day read them
    // again; no other reading reads the scope's inputs, so the others are the last evaluation's,
    // on the same last day.
    let previous_current = reuse.map_or(&[][..], |(previous, _)| &previous.current[..]);
    if let Some((day, (_, reread))) = last_day.zip(reuse).filter(|&(day, _)| !reads_all(day)) {
        context.explain = true;
        let (gold, too_fast) = ((reread.gold)(day), reads_too_fast(day));
        for (signal, report) in previous_current {
            latest[signal.index()] = match signal {
                Signal::Gold if gold => context.read(Signal::Gold, day),
                Signal::TooFast if too_fast => context.read(Signal::TooFast, day),
                _ => report.reading.clone(),
            };
        }
    }
    timeline.current = Signal::ALL
        .iter()
        .filter(|signal| !signal.is_preference() || !inputs.sides.is_empty())
        .map(|&signal| {
            let i = signal.index();
            let reading = latest[i].take();
            // What a signal lacks depends on the settings alone: a re-evaluation keeps the words.
            let kept =
                || previous_current.iter().find(|(s, _)| *s == signal).and_then(|(_, r)| r.note.clone());
            let note = reading.is_none().then(|| {
                kept().unwrap_or_else(|| {
                    match signal {
                        Signal::Position | Signal::Ties => {
                            sides::not_enough(signal == Signal::Position, preferences)
                        }
                        _ => not_enough(signal, config),
                    }
                    .into()
                })
            });
            (signal, SignalReport { state: state[i], since: since[i], reading, note })
        })
        .collect();
    timeline
}

/// Why `signal` has no reading: the minimum data it lacks, in plain words.
pub(super) fn not_enough(signal: Signal, c: &DriftConfig) -> String {
    match signal {
        Signal::Gold => {
            let windows: Vec<String> = c.gold_windows_days.iter().map(u32::to_string).collect();
            format!(
                "fewer than {} gold questions over each of the last {} days, or no earlier gold answers in the scope to compare with",
                c.gold_min_answers,
                windows.join(", ")
            )
        }
        Signal::Agreement => format!(
            "fewer than {} items shared with at least two other annotators over the last {}",
            c.agreement_min_items,
            days(c.peer_window_days)
        ),
        Signal::LabelMix => format!(
            "fewer than {} labels on items shared with other annotators over the last {}",
            c.label_mix_min_labels,
            days(c.peer_window_days)
        ),
        Signal::Speed | Signal::TooFast => format!(
            "fewer than {} labels with a duration over the last {}, or over the {} before them (the usual pace)",
            c.speed_min_labels,
            days(c.speed_window_days),
            days(c.speed_baseline_days)
        ),
        Signal::Position | Signal::Ties => String::new(),
    }
}
