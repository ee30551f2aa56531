use super::*;
use crate::event::parse_label_event;
use crate::source::{scope_id, Source};

/// An annotator whose timeline has these active days.
fn active_on(days: &[Day]) -> AnnotatorState {
    let days = days.iter().map(|&day| (day, [SignalState::Ok; Signal::COUNT])).collect();
    AnnotatorState { timeline: Some(Timeline { days, ..Timeline::default() }), ..AnnotatorState::default() }
}

/// A source that has seen one label, by annotator `a`, in the default scope.
fn one_label() -> (Source, ScopeId) {
    let mut source = Source::default();
    let label = parse_label_event(r#"{"item_id":"i","annotator_id":"a","label":"x","ts":0}"#).unwrap();
    source.apply_label(&label, &mut Vec::new()).unwrap();
    (source, scope_id("default", "default"))
}

#[test]
fn a_day_read_is_computed_once_whichever_side_of_the_others_it_falls() {
    let mut memo = DaysRead::default();
    let mut computed = Vec::new();
    for day in [10, 7, 12, 10, 7, 300_000, 8, 12, 300_000, -5, 10] {
        let read = memo.get(day, || {
            computed.push(day);
            day % 2 == 0
        });
        assert_eq!(read, day % 2 == 0, "day {day}");
    }
    // Day 300,000 lies beyond the days one memo covers (from day 7): computed each time.
    assert_eq!(computed, [10, 7, 12, 300_000, 8, 300_000, -5]);
}

#[test]
fn a_changed_scope_day_touches_only_the_annotators_whose_readings_read_it() {
    let (source, scope) = one_label();
    let names = &source.catalog;
    let key = (scope, 1);
    let mut logic = AnnotatorLogic::new(DriftSettings::default());
    // 100 gold answers a day on days 0-59.
    for day in 0..60 {
        logic.side(&Basis::Gold { scope, day, answers: 100, errors: 10 }, 1);
    }
    logic.side_done();
    // Day 50 corrected. With the defaults (a 28-day baseline ending 14 days back) the readings
    // of days 64-91 read it, and those of a day whose baseline period is thin (under 200
    // answers) read every day before theirs: from day 100 on the period holds day 59 alone.
    logic.side(&Basis::Gold { scope, day: 50, answers: 0, errors: 1 }, 1);
    for (days, touched) in [
        (&[10, 50, 59, 63][..], false),
        (&[64], true),
        (&[30, 91], true),
        (&[86], true),
        (&[92, 99], false),
        (&[100], true),
        (&[40, 49], false),
    ] {
        assert_eq!(logic.touched(&key, &active_on(days), names), touched, "active on {days:?}");
    }
    logic.side_done();
    // Only day 20 corrected, and the thin periods read it too.
    logic.side(&Basis::Gold { scope, day: 20, answers: 0, errors: 1 }, 1);
    assert!(!logic.touched(&key, &active_on(&[20, 33, 62, 70]), names));
    assert!(logic.touched(&key, &active_on(&[34]), names));
    assert!(logic.touched(&key, &active_on(&[120]), names));
    logic.side_done();
    // Label times of a day: every reading on or after it.
    logic.side(&Basis::Speed { scope, day: 50, bucket: 60, count: 1 }, 1);
    assert!(logic.touched(&key, &active_on(&[50]), names));
    assert!(!logic.touched(&key, &active_on(&[10, 49]), names));
    logic.side_done();
    // Nothing changed: nobody.
    assert!(!logic.touched(&key, &active_on(&[50, 80]), names));
}

#[test]
fn a_re_evaluation_that_moves_no_reading_keeps_every_output_and_one_that_does_is_the_full_evaluation() {
    let (source, scope) = one_label();
    let names = &source.catalog;
    let key = (scope, names.annotators.lookup("a").unwrap());
    let mut logic = AnnotatorLogic::new(DriftSettings::default());
    // The scope at 10% gold errors for 70 days, and the annotator too, with 10 answers a day.
    for day in 0..70 {
        logic.side(&Basis::Gold { scope, day, answers: 400, errors: 40 }, 1);
    }
    logic.side_done();
    let mut a = AnnotatorState::default();
    logic.apply(&key, &mut a, &AnnotatorSum::Items { raters: 3 }, &(700, 400, 0));
    for day in 0..70i64 {
        for i in 0..10 {
            let answer =
                AnnotatorSum::Answer { ts_ms: day * crate::source::DAY_MS + i, item: 0, correct: i > 0 };
            logic.apply(&key, &mut a, &answer, &(1, 0, 0));
        }
    }
    let derived = |logic: &mut AnnotatorLogic, a: &mut AnnotatorState| {
        let mut out = Vec::new();
        logic.derive(&key, a, names, &mut out);
        out
    };
    let first = derived(&mut logic, &mut a);
    let full = |logic: &AnnotatorLogic, a: &AnnotatorState| {
        let config = logic.drift.for_project("default");
        let name = |l: LabelId| names.labels.get(l).to_json_text();
        drift::evaluate_with(&a.drift, &logic.basis[&scope], config, &logic.preferences, &name)
    };
    let gold_score = |a: &AnnotatorState| a.timeline.as_ref().unwrap().score(Signal::Gold).unwrap();
    let score = gold_score(&a);
    // One more error on day 20: read by the days whose baseline (28 days, ending 14 days
    // back) holds it, 34-61, where it moves no level; the last day, 69, does not read it.
    logic.side(&Basis::Gold { scope, day: 20, answers: 0, errors: 1 }, 1);
    assert!(logic.touched(&key, &a, names));
    logic.side_done();
    assert!(logic.unchanged(&key, &mut a, names), "nothing moved: the outputs stand");
    assert_eq!(a.timeline.as_ref(), Some(&full(&logic, &a)));
    assert_eq!(gold_score(&a), score);
    // One more on day 50, which the last day reads: its current score moves.
    logic.side(&Basis::Gold { scope, day: 50, answers: 0, errors: 1 }, 1);
    assert!(logic.touched(&key, &a, names));
    logic.side_done();
    assert!(!logic.unchanged(&key, &mut a, names), "the current gold reading moved");
    assert_eq!(a.timeline.as_ref(), Some(&full(&logic, &a)));
    assert_ne!(gold_score(&a), score);
    let second = derived(&mut logic, &mut a);
    assert_eq!(a.timeline.as_ref(), Some(&full(&logic, &a)), "derived from the re-evaluation");
    assert_ne!(second, first);
    assert_eq!(second.len(), first.len());
}
