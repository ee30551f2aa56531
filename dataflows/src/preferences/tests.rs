//! The preference numbers against the conformance data of `tests/conformance/preferences` (an
//! independent numpy implementation; within 1e-6), in file order and shuffled, and on the edge
//! cases: no comparisons, a pair never decided, a system that wins everything, bad counts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use super::*;
use crate::event::{parse_label_event, Op};

/// `tests/conformance/preferences` of the repository, or under `$LABELQC_CONFORMANCE_DIR`.
fn conformance_file(name: &str) -> PathBuf {
    std::env::var_os("LABELQC_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/conformance")))
        .join("preferences")
        .join(name)
}

/// What a scope's preference numbers are computed from: side counts per annotator, result
/// counts per pair of systems (bytewise ordered).
#[derive(Default)]
struct ScopeCounts {
    annotators: BTreeMap<String, SideCounts>,
    pairs: BTreeMap<(String, String), PairCounts>,
}

/// The latest event of every identity (line order), then its counts per scope.
fn counts(lines: &[&str]) -> BTreeMap<(String, String), ScopeCounts> {
    type Identity = (String, String, String, String);
    let mut latest: BTreeMap<Identity, Option<(Side, String, String, PairCounts)>> = BTreeMap::new();
    for line in lines {
        let event = parse_label_event(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let identity = (
            event.project.to_string(),
            event.task.to_string(),
            event.item_id.to_string(),
            event.annotator_id.to_string(),
        );
        let state = match event.op {
            Op::Delete => None,
            Op::Upsert => {
                let preference = event.preference.as_ref().expect("a preference event");
                let outcome = preference.outcome().expect("an upsert has an outcome");
                Some((
                    preference.choice.expect("an upsert has a choice").side(),
                    outcome.first.to_string(),
                    outcome.second.to_string(),
                    outcome.pair_counts(),
                ))
            }
        };
        latest.insert(identity, state);
    }
    let mut scopes: BTreeMap<(String, String), ScopeCounts> = BTreeMap::new();
    for ((project, task, _, annotator), state) in latest {
        let Some((side, first, second, pair)) = state else { continue };
        let scope = scopes.entry((project, task)).or_default();
        *scope.annotators.entry(annotator).or_default() += SideCounts::of(side);
        *scope.pairs.entry((first, second)).or_default() += pair;
    }
    scopes
}

fn close(got: f64, want: &Value, what: &str) {
    let want = want.as_f64().unwrap_or_else(|| panic!("{what}: expected a number, found {want}"));
    assert!((got - want).abs() <= 1e-6, "{what}: got {got}, expected {want}");
}

fn check_against_expected(lines: &[&str], expected: &Value) {
    let scopes = counts(lines);
    let expected_scopes = expected["scopes"].as_array().unwrap();
    assert_eq!(scopes.len(), expected_scopes.len());
    for want in expected_scopes {
        let key = (want["project"].as_str().unwrap().to_string(), want["task"].as_str().unwrap().to_string());
        let scope = &scopes[&key];
        let board = leaderboard(scope.pairs.iter().map(|(pair, counts)| (pair.clone(), *counts))).unwrap();
        let want_board = want["leaderboard"].as_array().unwrap();
        assert_eq!(board.len(), want_board.len());
        for w in want_board {
            let system = w["system"].as_str().unwrap();
            let got = board.iter().find(|e| e.system == system).unwrap_or_else(|| panic!("no {system}"));
            let what = |field: &str| format!("{system} {field}");
            assert_eq!(got.wins, w["wins"].as_i64().unwrap(), "{}", what("wins"));
            assert_eq!(got.losses, w["losses"].as_i64().unwrap(), "{}", what("losses"));
            assert_eq!(got.ties, w["ties"].as_i64().unwrap(), "{}", what("ties"));
            assert_eq!(i64::from(got.rank), w["rank"].as_i64().unwrap(), "{}", what("rank"));
            close(got.strength, &w["strength"], &what("strength"));
            close(got.interval[0], &w["interval"][0], &what("interval low"));
            close(got.interval[1], &w["interval"][1], &what("interval high"));
            close(got.elo, &w["elo"], &what("elo"));
        }
        // The prior makes the strengths sum to 0 at the maximum.
        assert!(board.iter().map(|e| e.strength).sum::<f64>().abs() < 1e-9);
        let want_annotators = want["annotators"].as_array().unwrap();
        assert_eq!(scope.annotators.len(), want_annotators.len());
        for w in want_annotators {
            let id = w["annotator_id"].as_str().unwrap();
            let quality = preference_quality(scope.annotators[id], DEFAULT_POSITION_MARGIN);
            let position = quality.position.as_ref().unwrap();
            let p = &w["position"];
            assert_eq!(position.n, p["n"].as_i64().unwrap(), "{id} n");
            assert_eq!(position.left, p["left"].as_i64().unwrap(), "{id} left");
            assert_eq!(position.flagged, p["flagged"].as_bool().unwrap(), "{id} flagged");
            close(position.wilson_low, &p["wilson_low"], &format!("{id} wilson_low"));
            close(position.wilson_high, &p["wilson_high"], &format!("{id} wilson_high"));
            assert_eq!(quality.ties, w["ties"].as_i64().unwrap(), "{id} ties");
            assert_eq!(quality.events, w["events"].as_i64().unwrap(), "{id} events");
        }
    }
}

/// A seeded Fisher–Yates shuffle (SplitMix64), so that the test needs no generator crate.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        items.swap(i, (next() % (i as u64 + 1)) as usize);
    }
}

#[test]
fn conformance_comparisons_in_file_order_and_shuffled() {
    let events = std::fs::read_to_string(conformance_file("comparisons.events.jsonl")).unwrap();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(conformance_file("comparisons.expected.json")).unwrap(),
    )
    .unwrap();
    let mut lines: Vec<&str> = events.lines().collect();
    assert_eq!(lines.len(), 1200);
    check_against_expected(&lines, &expected);
    for seed in [1, 2, 3] {
        shuffle(&mut lines, seed);
        check_against_expected(&lines, &expected);
    }
    // The planted annotators are the flagged ones: r00 picks left, r01 right.
    let scopes = counts(&lines);
    let flagged: Vec<&String> = scopes
        .values()
        .flat_map(|s| &s.annotators)
        .filter(|(_, c)| position_bias(**c, DEFAULT_POSITION_MARGIN).unwrap().flagged)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(flagged, ["r00", "r01"]);
}

fn pair(a: &str, b: &str, a_wins: i64, b_wins: i64, ties: i64) -> ((String, String), PairCounts) {
    ((a.to_string(), b.to_string()), PairCounts { a_wins, b_wins, ties })
}

#[test]
fn no_comparisons_and_undecided_pairs() {
    assert!(leaderboard(Vec::<((String, String), PairCounts)>::new()).unwrap().is_empty());
    // A pair whose counts are all retracted: both systems stay, on their prior alone.
    let board = leaderboard([pair("b", "a", 0, 0, 0)]).unwrap();
    assert_eq!(board.iter().map(|e| (e.system.as_str(), e.rank)).collect::<Vec<_>>(), [("a", 1), ("b", 2)]);
    for entry in &board {
        assert_eq!((entry.strength, entry.elo, entry.wins, entry.losses, entry.ties), (0.0, 1000.0, 0, 0, 0));
        // The prior's own interval: ±1.96 · 10.
        assert!((entry.interval[1] - WILSON_Z * PRIOR_SD).abs() < 1e-12);
        assert!((entry.interval[0] + WILSON_Z * PRIOR_SD).abs() < 1e-12);
    }
    // Ties only: equal strengths, ranked by name.
    let board = leaderboard([pair("y", "x", 0, 0, 5)]).unwrap();
    assert_eq!((board[0].system.as_str(), board[0].ties, board[0].strength), ("x", 5, 0.0));
}

#[test]
fn a_system_that_wins_everything_stays_finite() {
    // Two systems: the maximum solves w (1 - σ(2s)) = s / PRIOR_SD², found here by bisection.
    let board = leaderboard([pair("a", "b", 10, 0, 0)]).unwrap();
    let score = |s: f64| 10.0 * (1.0 - 1.0 / (1.0 + (-2.0 * s).exp())) - s / (PRIOR_SD * PRIOR_SD);
    let (mut low, mut high) = (0.0, 50.0);
    for _ in 0..200 {
        let mid = (low + high) / 2.0;
        if score(mid) > 0.0 {
            low = mid;
        } else {
            high = mid;
        }
    }
    assert_eq!(board[0].system, "a");
    assert!((board[0].strength - low).abs() < 1e-10, "{} {low}", board[0].strength);
    assert!((board[1].strength + low).abs() < 1e-10);
    // The variance of the Laplace approximation: (H⁻¹)_aa = (q + τ) / (τ (2q + τ)), q = m p (1-p).
    let (tau, p) = (1.0 / (PRIOR_SD * PRIOR_SD), 1.0 / (1.0 + (-2.0 * low).exp()));
    let q = 10.0 * p * (1.0 - p);
    let sd = ((q + tau) / (tau * (2.0 * q + tau))).sqrt();
    assert!((board[0].interval[1] - (low + WILSON_Z * sd)).abs() < 1e-8);
    // Among four systems, one that wins all of its many comparisons: first, finite, far ahead.
    let board = leaderboard([
        pair("top", "b", 500, 0, 0),
        pair("top", "c", 400, 0, 0),
        pair("top", "d", 600, 0, 0),
        pair("b", "c", 30, 20, 5),
        pair("c", "d", 25, 25, 10),
        pair("b", "d", 40, 15, 0),
    ])
    .unwrap();
    assert_eq!(board.iter().map(|e| e.system.as_str()).collect::<Vec<_>>(), ["top", "b", "c", "d"]);
    assert!(board[0].strength.is_finite() && board[0].strength > board[1].strength + 3.0);
    assert!(board.iter().all(|e| e.interval[0].is_finite() && e.interval[1].is_finite()));
    assert!(board.iter().map(|e| e.strength).sum::<f64>().abs() < 1e-9);
    assert_eq!((board[0].wins, board[0].losses), (1500, 0));
}

#[test]
fn pairs_in_any_order_and_split_give_one_leaderboard() {
    let whole =
        leaderboard([pair("a", "b", 3, 1, 2), pair("b", "c", 4, 4, 1), pair("a", "c", 0, 2, 0)]).unwrap();
    let split = leaderboard([
        pair("c", "a", 2, 0, 0),
        pair("b", "a", 1, 3, 0),
        pair("c", "b", 4, 4, 1),
        pair("a", "b", 0, 0, 2),
    ])
    .unwrap();
    assert_eq!(whole, split);
    // Retractions that cancel within a pair are fine; a count that stays negative is not.
    let with_retraction = leaderboard([
        pair("a", "b", 5, 1, 2),
        pair("a", "b", -2, 0, 0),
        pair("b", "c", 4, 4, 1),
        pair("c", "a", 2, 0, 0),
    ])
    .unwrap();
    assert_eq!(whole, with_retraction);
    assert_eq!(leaderboard([pair("a", "b", -1, 0, 0)]), Err(PreferenceError::NegativeCount(-1)));
    assert_eq!(leaderboard([pair("a", "a", 1, 0, 0)]), Err(PreferenceError::SelfPair));
}

#[test]
fn fifty_systems_converge() {
    // Every pair of 50 systems compared 20 times, the stronger (lower index) winning by a margin.
    let names: Vec<String> = (0..50).map(|i| format!("s{i:02}")).collect();
    let mut pairs = Vec::new();
    for i in 0..50 {
        for j in i + 1..50 {
            let edge = (j - i).min(8) as i64;
            pairs.push((
                (names[i].clone(), names[j].clone()),
                PairCounts { a_wins: 10 + edge, b_wins: 10 - edge, ties: 2 },
            ));
        }
    }
    let board = leaderboard(pairs.clone()).unwrap();
    assert_eq!(board.iter().map(|e| &e.system).collect::<Vec<_>>(), names.iter().collect::<Vec<_>>());
    let weights: Vec<_> = pairs
        .iter()
        .map(|((a, b), c)| {
            let index = |s: &String| names.iter().position(|n| n == s).unwrap();
            bradley_terry::PairWeights::new(index(a), index(b), *c)
        })
        .collect();
    let fit = BradleyTerryFit::new(50, &weights);
    assert!(fit.iterations < 30, "{} Newton steps", fit.iterations);
    assert!(fit.strengths.iter().all(|s| s.is_finite()) && fit.variances.iter().all(|v| *v > 0.0));
}

#[test]
fn position_bias_and_tie_rate() {
    let counts = SideCounts { left: 34, right: 5, ties: 1 };
    let bias = position_bias(counts, DEFAULT_POSITION_MARGIN).unwrap();
    assert_eq!((bias.n, bias.left, bias.flagged), (39, 34, true));
    assert!((bias.left_share - 34.0 / 39.0).abs() < 1e-15);
    // A wider margin no longer flags it (its interval starts at 0.733).
    assert!(!position_bias(counts, 0.25).unwrap().flagged);
    // An even annotator is not flagged; one that always picks right is.
    assert!(!position_bias(SideCounts { left: 50, right: 50, ties: 0 }, 0.1).unwrap().flagged);
    assert!(position_bias(SideCounts { left: 0, right: 30, ties: 0 }, 0.1).unwrap().flagged);
    // Ties only: no position, a tie rate of 1.
    let quality = preference_quality(SideCounts { left: 0, right: 0, ties: 4 }, 0.1);
    assert_eq!(quality.position, None);
    assert_eq!((quality.ties, quality.events), (4, 4));
    let rate = quality.tie_rate.unwrap();
    assert_eq!((rate.rate, rate.wilson_high), (1.0, 1.0));
    assert!(rate.wilson_low > 0.5 && rate.wilson_low < 0.6, "{}", rate.wilson_low);
    assert_eq!(preference_quality(SideCounts::default(), 0.1).tie_rate, None);
    // Counts of single events add up.
    let summed: SideCounts =
        [Side::Left, Side::Tie, Side::Left, Side::Right].into_iter().map(SideCounts::of).sum();
    assert_eq!(summed, SideCounts { left: 2, right: 1, ties: 1 });
    // The serialized names are the spec's.
    let json = serde_json::to_value(preference_quality(counts, 0.1)).unwrap();
    assert_eq!(json["position"]["n"], 39);
    assert_eq!(json["position"]["flagged"], true);
    assert_eq!(json["events"], 40);
    assert!(json["tie_rate"]["wilson_low"].is_f64());
}
