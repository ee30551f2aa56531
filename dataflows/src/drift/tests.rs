//! Drift, gates and alerts against hand-computed readings.

use super::*;

fn gold_inputs(days: impl IntoIterator<Item = (Day, i64, i64)>) -> (AnnotatorInputs, ScopeInputs) {
    let mut a = AnnotatorInputs::default();
    let mut s = ScopeInputs::default();
    for (day, n, errors) in days {
        for i in 0..n {
            a.add_gold(i64::from(day) * DAY_MS + i, i >= errors, 1);
        }
        s.gold_days.add(day, [n, errors]);
    }
    (a, s)
}

#[test]
fn gold_evidence_alarms_on_a_doubled_error_rate_and_clears() {
    // 40 days at 10% errors, then 10 days at 30%, then 20 days at 10% again.
    let days =
        (0..40).map(|d| (d, 20, 2)).chain((40..50).map(|d| (d, 20, 6))).chain((50..70).map(|d| (d, 20, 2)));
    let (a, s) = gold_inputs(days);
    let t = evaluate(&a, &s, &DriftConfig::default(), &|l| format!("#{l}"));
    let gold: Vec<&Episode> = t.episodes.iter().filter(|e| e.signal == Signal::Gold).collect();
    assert_eq!(gold.len(), 1, "{:?}", t.episodes);
    assert!((40..44).contains(&gold[0].start), "alarm on day {}", gold[0].start);
    let end = gold[0].end.expect("the alarm clears once the annotator recovers");
    assert!(end >= gold[0].start + 7 && end < 60, "cleared on day {end}");
    assert!(gold[0].explanation.starts_with("gold accuracy"), "{}", gold[0].explanation);
    assert_eq!(t.state(Signal::Gold), SignalState::Ok);
    // Before the change, nothing was flagged; on the first day there was no baseline yet.
    assert_eq!(t.days[0].1[0], SignalState::Insufficient);
    assert!(t.days.iter().filter(|(d, _)| (1..40).contains(d)).all(|(_, s)| s[0] == SignalState::Ok));
}

#[test]
fn gate_blocks_a_spammer_and_readmits_after_recovery() {
    let c = DriftConfig::default();
    // 10 answers at 25%, then 120 correct answers, six a day.
    let mut answers: Vec<(i64, bool)> = (0..10).map(|i| (i * 1000, i % 4 == 0)).collect();
    answers.extend((0..120).map(|i| (DAY_MS * (1 + i / 6) + i, true)));
    let gate = decide_gate(&answers, |_| false, &c);
    let states: Vec<GateState> = gate.history.iter().map(|d| d.to).collect();
    assert_eq!(states, vec![GateState::Block, GateState::Probation, GateState::Allow]);
    assert_eq!(gate.history[0].evidence.n, 10);
    assert!(
        gate.history[0].reason.contains("even at best under the required 70%"),
        "{}",
        gate.history[0].reason
    );
    assert!(gate.history[1].at_ms >= gate.history[0].at_ms + i64::from(c.gate_block_days) * DAY_MS);
    assert_eq!(gate.state, GateState::Allow);
}

#[test]
fn gate_warmup_until_enough_answers() {
    let gate = decide_gate(&[(0, false), (1, false)], |_| false, &DriftConfig::default());
    assert_eq!(gate.state, GateState::Warmup);
    assert!(gate.history.is_empty());
    assert!(gate.reason.contains("fewer than the 10"));
}

#[test]
fn label_mix_names_the_overused_label() {
    let mut a = AnnotatorInputs::default();
    // 300 items; peers say label 1 on all, the annotator says label 2 on 100 of them.
    a.mix.insert((5, 1), [200, 300 * FIXED_POINT]);
    a.mix.insert((5, 2), [100, 0]);
    let t = evaluate(&a, &ScopeInputs::default(), &DriftConfig::default(), &|l| format!("#{l}"));
    assert_eq!(t.state(Signal::LabelMix), SignalState::Alarm);
    let (_, report) = &t.current[Signal::LabelMix.index()];
    let explanation = &report.reading.as_ref().unwrap().explanation;
    assert!(
        explanation.starts_with(
            "gives #2 to 33% of items, the others to 0% of the same items; #1 to 67%, the others to 100%"
        ),
        "{explanation}"
    );
}

#[test]
fn config_validation_names_the_field() {
    let c = DriftConfig { gate_threshold: 1.5, ..DriftConfig::default() };
    assert_eq!(c.validate().unwrap_err().field, "gate_threshold");
    assert!(DriftConfig::default().validate().is_ok());
}

#[test]
fn a_timeline_re_evaluated_after_a_gold_change_of_the_scope_is_the_full_evaluation() {
    // An annotator at 20% errors for 70 days, too few answers for a baseline of its own; the
    // scope's pooled answers at 10%, its usual rate, against which 20% is evidence. Then the
    // scope's day 20 turns out much worse (a corrected answer key), which raises the baseline,
    // and changes the evidence, of the days whose baseline period holds day 20.
    let (a, mut s) = gold_inputs((0..70).map(|d| (d, 5, 1)));
    for day in 0..70 {
        s.gold_days.insert(day, [400, 40]);
    }
    let config = DriftConfig::default();
    let name = |l: LabelId| format!("#{l}");
    let before = evaluate(&a, &s, &config, &name);
    s.gold_days.insert(20, [2000, 1500]);
    let full = evaluate(&a, &s, &config, &name);
    assert_ne!(full, before, "the change should move some reading");
    let reads = |day| reads_scope_gold_of(&config, &s, day, 20);
    assert_eq!(reevaluated(&a, &s, &before, &reads, None), full);
    // Reading again only the days outside the baseline periods that hold day 20 misses them.
    let misses = |day| !reads(day);
    assert_ne!(reevaluated(&a, &s, &before, &misses, None), full);
}

/// [`reevaluate`] with the default settings: gold read again on the days `gold` says, too-fast on
/// the days after `speed_from`.
fn reevaluated(
    a: &AnnotatorInputs,
    s: &ScopeInputs,
    before: &Timeline,
    gold: &dyn Fn(Day) -> bool,
    speed_from: Option<Day>,
) -> Timeline {
    let (config, prefs) = (DriftConfig::default(), PreferenceSettings::default());
    let name = |l: LabelId| format!("#{l}");
    reevaluate(a, s, &config, &prefs, &name, before, Reread { gold, speed_from, own_from: None })
}

/// An annotator at 20% gold errors for 70 days against its scope's 10%, whose labels take 1 s from
/// day 40 (20 s before, as the scope's): too-fast and speed have readings from then on.
fn fast_from_day_40() -> (AnnotatorInputs, ScopeInputs) {
    let (mut a, mut s) = gold_inputs((0..70).map(|d| (d, 5, 1)));
    let (usual, fast) = (crate::dataflow::duration_bucket(20_000), crate::dataflow::duration_bucket(1_000));
    for day in 0..70 {
        s.gold_days.insert(day, [400, 40]);
        s.speed.insert((day, usual), [400]);
        a.speed.insert((day, if day < 40 { usual } else { fast }), [20]);
    }
    (a, s)
}

#[test]
fn a_timeline_re_evaluated_from_the_first_day_its_own_inputs_changed_is_the_full_evaluation() {
    let (mut a, s) = fast_from_day_40();
    let (config, prefs) = (DriftConfig::default(), PreferenceSettings::default());
    let name = |l: LabelId| format!("#{l}");
    let no_gold = |_| false;
    let from = |before: &Timeline, a: &AnnotatorInputs, own_from: Day| {
        let reread = Reread { gold: &no_gold, speed_from: None, own_from: Some(own_from) };
        reevaluate(a, &s, &config, &prefs, &name, before, reread)
    };
    // Twenty wrong gold answers on day 30, which the gold readings of days 30 on read.
    let before = evaluate(&a, &s, &config, &name);
    for i in 0..20 {
        a.add_gold(30 * DAY_MS + 100 + i, false, 1);
    }
    let full = evaluate(&a, &s, &config, &name);
    assert_ne!(full, before, "the change should move some reading");
    assert_eq!(from(&before, &a, 30), full);
    assert_eq!(from(&before, &a, 10), full, "from an earlier day, the same");
    assert_ne!(from(&before, &a, 31), full, "from the day after, day 30 is missed");
    // The last day's inputs withdrawn: its day goes, and the current readings are the day before's.
    let before = full;
    for i in 0..5 {
        a.add_gold(69 * DAY_MS + i, i >= 1, -1);
    }
    a.speed.retain(|&(day, _), _| day != 69);
    let full = evaluate(&a, &s, &config, &name);
    assert_eq!(full.days.last().map(|(day, _)| *day), Some(68));
    assert_eq!(from(&before, &a, 69), full);
}

#[test]
fn a_re_evaluation_keeps_the_readings_that_do_not_read_the_scope_gold() {
    // As above, and the annotator's labels turn fast (1 s against a scope median of 20 s) from
    // day 40: too-fast and speed have readings, too-fast alarms while gold is at watch or worse
    // (so a re-evaluation reads the scope's median where that alarm starts), and the current
    // readings of those signals are the last evaluation's.
    let (a, s) = fast_from_day_40();
    let config = DriftConfig::default();
    let name = |l: LabelId| format!("#{l}");
    let before = evaluate(&a, &s, &config, &name);
    assert!(before.episodes.iter().any(|e| e.signal == Signal::TooFast), "{:?}", before.episodes);
    assert!(before.current.iter().any(|(signal, r)| *signal == Signal::Speed && r.reading.is_some()));
    for changed in [20, 50] {
        let mut s = s.clone();
        s.gold_days.insert(changed, [2000, 1500]);
        let full = evaluate(&a, &s, &config, &name);
        assert_ne!(full, before, "a change of day {changed} should move some reading");
        let reads = |day| reads_scope_gold_of(&config, &s, day, changed);
        assert_eq!(reevaluated(&a, &s, &before, &reads, None), full, "day {changed}");
    }
}

#[test]
fn a_timeline_re_evaluated_after_a_change_of_the_scope_label_times_is_the_full_evaluation() {
    // The annotator of the test above, fast from day 40 against a scope median of 20 s. Then the
    // scope's labels of day 45 turn out fast too (its producer had sent the wrong durations), which
    // moves the scope's median, and too-fast, on the days after it.
    let (a, mut s) = fast_from_day_40();
    let (usual, fast) = (crate::dataflow::duration_bucket(20_000), crate::dataflow::duration_bucket(1_000));
    let config = DriftConfig::default();
    let name = |l: LabelId| format!("#{l}");
    let before = evaluate(&a, &s, &config, &name);
    s.speed.remove(&(45, usual));
    s.speed.insert((45, fast), [40_000]);
    let full = evaluate(&a, &s, &config, &name);
    assert_ne!(full.current, before.current, "the change should move the current too-fast reading");
    let no_gold = |_| false;
    assert_eq!(reevaluated(&a, &s, &before, &no_gold, Some(45)), full);
    // Reading too-fast again only after the last day misses them all.
    assert_ne!(reevaluated(&a, &s, &before, &no_gold, Some(69)), full);
}

#[test]
fn a_timeline_restated_after_a_gold_change_of_the_scope_is_the_full_evaluation() {
    // The annotator of the first test: 10% errors, 30% on days 40-49 (a gold alarm from day 42,
    // explained against its usual rate), 10% again; its scope's answers are its own. Then the
    // scope's answers of one day change.
    let days =
        (0..40).map(|d| (d, 20, 2)).chain((40..50).map(|d| (d, 20, 6))).chain((50..70).map(|d| (d, 20, 2)));
    let (a, s) = gold_inputs(days);
    let (config, prefs) = (DriftConfig::default(), PreferenceSettings::default());
    let name = |l: LabelId| format!("#{l}");
    let before = evaluate(&a, &s, &config, &name);
    assert_eq!(
        before.episodes.iter().filter(|e| e.signal == Signal::Gold).count(),
        1,
        "{:?}",
        before.episodes
    );
    // (day changed, its answers and errors, whether a level moves, the episode's explanation, the
    // current reading)
    let cases = [
        (5, [20, 3], false, false, false),
        (10, [200, 40], false, true, false),
        (28, [200, 40], false, true, true),
        (20, [400, 200], true, true, false),
    ];
    for (changed, answers, level_moves, explanation_moves, current_moves) in cases {
        let mut s = s.clone();
        s.gold_days.insert(changed, answers);
        let full = evaluate(&a, &s, &config, &name);
        assert_eq!(full.levels != before.levels, level_moves, "day {changed}");
        assert_eq!(full.episodes != before.episodes, explanation_moves, "day {changed}");
        assert_eq!(full.current != before.current, current_moves, "day {changed}");
        let reads = |day| reads_scope_gold_of(&config, &s, day, changed);
        let mut timeline = before.clone();
        let restated = restate(&a, &s, &config, &prefs, &name, &mut timeline, &reads, changed);
        if level_moves {
            // The state rules must run again; the timeline is left as it was.
            assert_eq!(restated, None, "day {changed}");
            assert_eq!(timeline, before);
        } else {
            assert_eq!(restated, Some(explanation_moves || current_moves), "day {changed}");
            assert_eq!(timeline, full, "day {changed}");
        }
    }
}

#[test]
fn the_scope_medians_move_only_where_enough_label_times_move() {
    let (usual, fast) = (crate::dataflow::duration_bucket(20_000), crate::dataflow::duration_bucket(1_000));
    let mut s = ScopeInputs::default();
    for day in 0..10 {
        s.speed.insert((day, usual), [100]);
    }
    let before = scope_medians(&s, 3);
    assert_eq!(before, (3..10).map(|day| (day, Some(usual))).collect::<Vec<_>>());
    // One label of day 3 made fast: no median moves.
    s.speed.insert((3, usual), [99]);
    s.speed.insert((3, fast), [1]);
    assert_eq!(scope_medians(&s, 3), before);
    // 2,000 fast labels on day 6: the medians from day 6 on are fast, those before stand.
    s.speed.insert((6, fast), [2_000]);
    let after = scope_medians(&s, 3);
    assert_eq!(after[..3], before[..3]);
    assert!(after[3..].iter().all(|&(_, median)| median == Some(fast)), "{after:?}");
    // From the first day, a day without label times has no entry.
    s.speed.retain(|&(day, _), _| day != 8);
    let days: Vec<Day> = scope_medians(&s, Day::MIN).iter().map(|&(day, _)| day).collect();
    assert_eq!(days, [0, 1, 2, 3, 4, 5, 6, 7, 9]);
}

#[test]
fn the_median_label_time_before_a_day_is_the_median_of_every_label_time_before_it() {
    let mut s = ScopeInputs::default();
    // Days 2, 3, 5 and 9, each with labels in buckets that move the median from day to day.
    for (day, bucket, n) in [(2, 40, 3), (2, 60, 1), (3, 80, 5), (5, 20, 2), (5, 90, 1), (9, 10, 50)] {
        s.speed.add((day, bucket), [n]);
    }
    // The median of the labels of the days before `day`, from the labels one by one.
    let expected = |s: &ScopeInputs, day: Day| {
        let mut times: Vec<u16> = Vec::new();
        for (&(d, bucket), &[n]) in s.speed.by_day().range(..(day, 0)) {
            assert!(d < day);
            times.extend(std::iter::repeat_n(bucket, n as usize));
        }
        // The first bucket by which half the labels are counted.
        times.sort_unstable();
        (!times.is_empty()).then(|| super::inputs::bucket_center_ms(times[(times.len() - 1) / 2]))
    };
    for day in 0..12 {
        assert_eq!(s.speed.median_ms_before(day), expected(&s, day), "day {day}");
    }
    // A change drops the medians formed before it.
    s.speed.add((3, 80), [-5]);
    s.speed.add((4, 15), [7]);
    for day in 0..12 {
        assert_eq!(s.speed.median_ms_before(day), expected(&s, day), "day {day} after the change");
    }
}

#[test]
fn active_days_are_the_days_with_an_input_from_the_day_asked_on() {
    let mut a = AnnotatorInputs::default();
    a.gap.insert(3, [1, 0, 0]);
    a.mix.insert((5, 2), [1, 0]);
    a.mix.insert((5, 7), [1, 0]);
    a.mix.insert((9, 0), [1, 0]);
    a.speed.insert((5, 40), [1]);
    a.speed.insert((12, 0), [1]);
    a.speed.insert((12, u16::MAX), [1]);
    a.speed.insert((Day::MAX, 3), [1]);
    a.sides.insert(-4, [1, 0, 0]);
    a.add_gold(20 * DAY_MS, true, 1);
    let gold = a.gold_days.by_day();
    assert_eq!(a.active_days(gold), [-4, 3, 5, 9, 12, 20, Day::MAX]);
    assert_eq!(a.active_days_from(gold, 5), [5, 9, 12, 20, Day::MAX]);
    assert_eq!(a.active_days_from(gold, 6), [9, 12, 20, Day::MAX]);
    assert_eq!(a.active_days_from(gold, Day::MAX), [Day::MAX]);
}
