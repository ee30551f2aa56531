//! Tests of `gen`.

use super::*;

fn run(spec: &GenSpec) -> (Vec<u8>, Vec<u8>, GenSummary) {
    let (mut labels, mut gold) = (Vec::new(), Vec::new());
    let summary = generate(spec, &mut labels, Some(&mut gold)).unwrap();
    (labels, gold, summary)
}

#[test]
fn same_seed_same_bytes_and_valid_events() {
    let spec = GenSpec { events: 2_000, annotators: 20, projects: 2, tasks: 2, ..GenSpec::default() };
    let (a, gold, summary) = run(&spec);
    let (b, _, _) = run(&spec);
    assert_eq!(a, b);
    let text = String::from_utf8(a).unwrap();
    assert_eq!(text.lines().count(), 2_000);
    for line in text.lines() {
        labelqc_dataflows::event::parse_label_event(line).unwrap();
    }
    for line in String::from_utf8(gold).unwrap().lines() {
        labelqc_dataflows::event::parse_gold_event(line).unwrap();
    }
    assert_eq!(summary.labels + summary.relabels + summary.deletes, 2_000);
    assert!(summary.relabels > 0 && summary.gold_items > 0);
    let (c, _, _) = run(&GenSpec { seed: 7, ..spec });
    assert_ne!(text.as_bytes(), c.as_slice());
}

#[test]
fn planted_problems_are_exact_and_the_careless_turn_at_the_given_time() {
    let planted = Planted { spammers: 2, biased: 1, careless: 1 };
    let spec = GenSpec {
        annotators: 40,
        careful_accuracy_range: Some((0.94, 0.97)),
        planted: Some(planted),
        spammer_share: 0.5,
        careless_factor: 8.0,
        ..GenSpec::default()
    };
    let traffic = Traffic::new(&spec).unwrap();
    let roster = traffic.roster();
    let count = |kind| roster.iter().filter(|(_, k)| *k == kind).count();
    assert_eq!((count("spammer"), count("biased"), count("careless"), count("careful")), (2, 1, 1, 36));
    for annotator in &traffic.workforce {
        if let Behaviour::Careful { accuracy, careless_from_ms: None } = annotator.behaviour {
            assert!((0.94..=0.97).contains(&accuracy), "{accuracy}");
        }
    }
    // Given event times, the careless annotator errs from `careless_from_ms` on.
    let careless = roster.iter().position(|(_, k)| *k == "careless").unwrap() as u32;
    let mut traffic = Traffic::new(&spec).unwrap();
    let errors = |traffic: &mut Traffic, ts: i64| {
        traffic.next_event(Some(ts), &mut Vec::new(), &mut Vec::new());
        (0..2000).filter(|_| traffic.answer(careless, 0) != 0).count()
    };
    let before = errors(&mut traffic, spec.careless_from_ms - 1);
    let after = errors(&mut traffic, spec.careless_from_ms);
    assert!(before < 250 && after > 800, "{before} {after} errors of 2000");
    let too_many = GenSpec { planted: Some(Planted { spammers: 30, ..planted }), ..spec };
    assert!(Traffic::new(&too_many).is_err());
}

#[test]
fn refuses_bad_specs() {
    let err = generate(&GenSpec { classes: 1, ..GenSpec::default() }, &mut Vec::new(), None).unwrap_err();
    assert!(err.to_string().contains("classes"));
}
