//! The generated comparisons: valid preference events, the same bytes for the same seed, planted
//! annotators that the position and tie statistics single out, and a leaderboard that recovers
//! the true order of the systems.

use std::collections::BTreeMap;

use labelqc_dataflows::event::parse_label_event;
use labelqc_dataflows::preferences::{
    leaderboard, position_bias, tie_rate, PairCounts, SideCounts, DEFAULT_POSITION_MARGIN,
};

use super::*;

fn run(spec: &PreferenceSpec) -> String {
    let mut out = Vec::new();
    assert_eq!(generate(spec, &mut out).unwrap(), spec.events);
    String::from_utf8(out).unwrap()
}

/// Side counts per annotator and result counts per pair of systems, over every event.
fn counts(text: &str) -> (BTreeMap<String, SideCounts>, BTreeMap<(String, String), PairCounts>) {
    let (mut annotators, mut pairs) = (BTreeMap::new(), BTreeMap::<(String, String), PairCounts>::new());
    for line in text.lines() {
        let event = parse_label_event(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(event.task, PREFERENCE_TASK);
        let preference = event.preference.expect("a preference event");
        let outcome = preference.outcome().expect("an upsert");
        *annotators.entry(event.annotator_id.to_string()).or_insert_with(SideCounts::default) +=
            SideCounts::of(preference.choice.unwrap().side());
        *pairs.entry((outcome.first.to_string(), outcome.second.to_string())).or_default() +=
            outcome.pair_counts();
    }
    (annotators, pairs)
}

#[test]
fn same_seed_same_bytes_and_valid_events() {
    let spec = PreferenceSpec { events: 3_000, ..PreferenceSpec::default() };
    let text = run(&spec);
    assert_eq!(text, run(&spec));
    assert_ne!(text, run(&PreferenceSpec { seed: 7, ..spec.clone() }));
    assert_eq!(text.lines().count(), 3_000);
    let (annotators, pairs) = counts(&text);
    assert_eq!(annotators.len(), 40);
    // 8 systems: every one of the 28 pairs compared.
    assert_eq!(pairs.len(), 28);
    // Each comparison is answered by 3 distinct annotators, each in its own display order.
    let first: Vec<&str> = text.lines().take(3).collect();
    let item = |l: &str| parse_label_event(l).unwrap().item_id.to_string();
    assert!(first.iter().all(|l| item(l) == item(first[0])));
    let traffic = PreferenceTraffic::new(&spec).unwrap();
    let strengths: f64 = traffic.true_strengths().iter().map(|(_, s)| s).sum();
    assert!(strengths.abs() < 1e-12);
}

#[test]
fn planted_annotators_are_the_ones_flagged() {
    let spec = PreferenceSpec { events: 30_000, side_biased: 3, tie_happy: 2, ..PreferenceSpec::default() };
    let roster = PreferenceTraffic::new(&spec).unwrap().roster();
    let kind = |name: &str| roster.iter().find(|(n, _)| n == name).unwrap().1;
    let (annotators, _) = counts(&run(&spec));
    let mut flagged: Vec<(&str, bool)> = annotators
        .iter()
        .filter_map(|(name, c)| {
            let bias = position_bias(*c, DEFAULT_POSITION_MARGIN).unwrap();
            bias.flagged.then_some((kind(name), bias.left_share > 0.5))
        })
        .collect();
    flagged.sort();
    assert_eq!(flagged, [("left_biased", true), ("left_biased", true), ("right_biased", false)]);
    // The tie-happy annotators' tie rates lie above every other annotator's, intervals apart.
    let (happy, others): (Vec<_>, Vec<_>) =
        annotators.iter().partition(|(name, _)| kind(name) == "tie_happy");
    assert_eq!(happy.len(), 2);
    let highest_other = others.iter().map(|(_, c)| tie_rate(**c).unwrap().wilson_high).fold(0.0, f64::max);
    for (name, c) in happy {
        let rate = tie_rate(*c).unwrap();
        assert!(rate.wilson_low > highest_other, "{name}: {rate:?} against {highest_other}");
    }
}

#[test]
fn the_leaderboard_recovers_the_true_order() {
    let spec = PreferenceSpec { events: 60_000, ..PreferenceSpec::default() };
    let traffic = PreferenceTraffic::new(&spec).unwrap();
    let mut truth = traffic.true_strengths().to_vec();
    truth.sort_by(|a, b| b.1.total_cmp(&a.1));
    // The seeded order is not the order of the names.
    assert!(truth.windows(2).any(|w| w[0].0 > w[1].0));
    let (_, pairs) = counts(&run(&spec));
    let board = leaderboard(pairs).unwrap();
    let recovered: Vec<&str> = board.iter().map(|e| e.system.as_str()).collect();
    let expected: Vec<&str> = truth.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(recovered, expected);
    // Strengths come back as the truth scaled toward 0 (ties, about 9% of the answers, count as
    // half a win each way, and the side-biased annotators' blind clicks carry no signal), and
    // otherwise close to it.
    let true_of = |system: &str| truth.iter().find(|(n, _)| n == system).unwrap().1;
    let scale = board.iter().map(|e| e.strength * true_of(&e.system)).sum::<f64>()
        / truth.iter().map(|(_, s)| s * s).sum::<f64>();
    assert!((0.7..1.0).contains(&scale), "{scale}");
    for entry in &board {
        let expected = scale * true_of(&entry.system);
        assert!(
            (entry.strength - expected).abs() < 0.1,
            "{}: {} vs {expected}",
            entry.system,
            entry.strength
        );
    }
}

#[test]
fn refuses_bad_specs() {
    let bad = |spec: PreferenceSpec| PreferenceTraffic::new(&spec).err().map(|e| e.to_string());
    assert!(bad(PreferenceSpec { systems: 1, ..PreferenceSpec::default() }).unwrap().contains("systems"));
    assert!(bad(PreferenceSpec { side_biased: 15, tie_happy: 10, ..PreferenceSpec::default() })
        .unwrap()
        .contains("half"));
    assert!(bad(PreferenceSpec { side_bias: 0.3, ..PreferenceSpec::default() })
        .unwrap()
        .contains("side_bias"));
    assert!(bad(PreferenceSpec::default()).is_none());
}
