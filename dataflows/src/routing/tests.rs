//! Routing at every boundary of its rule, the scope counts, trusted consensus and the settings.

use super::*;

fn input(trusted: u32, labels: u32, posterior: Option<f64>, gold: bool) -> RouteInput {
    RouteInput { trusted, labels, posterior, gold }
}

fn routed(trusted: u32, posterior: Option<f64>) -> Route {
    route(&input(trusted, trusted, posterior, false), &RoutingSettings::default()).route
}

#[test]
fn settled_needs_min_labels_and_confidence() {
    // Defaults: min 3, max 7, confidence 0.95.
    let below = 0.95 - 1e-12;
    assert_eq!(routed(3, Some(0.95)), Route::Settled, "at min_labels and at confidence");
    assert_eq!(routed(2, Some(0.95)), Route::NeedsLabels, "one trusted label short");
    assert_eq!(routed(2, Some(1.0)), Route::NeedsLabels, "certain, but too few labels");
    assert_eq!(routed(3, Some(below)), Route::NeedsLabels, "just under confidence");
    assert_eq!(routed(6, Some(below)), Route::NeedsLabels, "one below max_labels");
    assert_eq!(routed(7, Some(below)), Route::Escalate, "at max_labels, not settled");
    assert_eq!(routed(8, Some(below)), Route::Escalate, "beyond max_labels");
    assert_eq!(routed(7, Some(0.95)), Route::Settled, "at max_labels but confident");
    assert_eq!(routed(3, None), Route::NeedsLabels, "no truth yet");
    assert_eq!(routed(7, None), Route::Escalate);
    assert_eq!(routed(0, None), Route::NeedsLabels, "no labels at all");
}

#[test]
fn gold_items_are_settled_whatever_their_labels() {
    let settings = RoutingSettings::default();
    for (trusted, posterior) in [(0, None), (1, Some(0.2)), (7, Some(0.5)), (9, None)] {
        let d = route(&input(trusted, trusted, posterior, true), &settings);
        assert_eq!(d.route, Route::Settled, "{trusted} {posterior:?}");
    }
}

#[test]
fn blocked_labels_count_as_paid_not_as_trusted() {
    let settings = RoutingSettings::default();
    // 2 trusted of 4 labels: not settled however confident; nothing saved.
    let d = route(&input(2, 4, Some(0.999), false), &settings);
    assert_eq!(d, RouteDecision { route: Route::NeedsLabels, labels_saved: 0 });
    // 7 labels of which 6 trusted: still below max_labels trusted, so more labels are asked for.
    let d = route(&input(6, 7, Some(0.5), false), &settings);
    assert_eq!(d.route, Route::NeedsLabels);
    // Settled with 3 trusted of 5 labels: fixed overlap at 7 would have asked for 2 more.
    let d = route(&input(3, 5, Some(0.99), false), &settings);
    assert_eq!(d, RouteDecision { route: Route::Settled, labels_saved: 2 });
}

#[test]
fn labels_saved_at_the_boundaries() {
    let settings = RoutingSettings::default();
    let saved =
        |labels: u32, gold| route(&input(labels.min(7), labels, Some(0.99), gold), &settings).labels_saved;
    assert_eq!(saved(3, false), 4);
    assert_eq!(saved(6, false), 1);
    assert_eq!(saved(7, false), 0);
    assert_eq!(saved(9, false), 0, "more than fixed overlap: nothing saved, never negative");
    assert_eq!(saved(0, true), 7, "a gold item without labels saves the whole overlap");
    // Not settled: nothing saved yet.
    assert_eq!(route(&input(2, 2, Some(0.99), false), &settings).labels_saved, 0);
    assert_eq!(route(&input(7, 7, Some(0.5), false), &settings).labels_saved, 0);
}

#[test]
fn other_settings_move_the_boundaries() {
    let settings = RoutingSettings { min_labels: 1, max_labels: 1, confidence: 0.5 };
    settings.validate().unwrap();
    let r = |trusted, p| route(&input(trusted, trusted, Some(p), false), &settings).route;
    assert_eq!(r(0, 0.9), Route::NeedsLabels);
    assert_eq!(r(1, 0.5), Route::Settled);
    assert_eq!(r(1, 0.4999), Route::Escalate);
    let settings = RoutingSettings { min_labels: 2, max_labels: 4, confidence: 1.0 };
    let r = |trusted, p| route(&input(trusted, trusted, Some(p), false), &settings).route;
    assert_eq!(r(2, 1.0), Route::Settled, "a posterior of exactly 1 reaches confidence 1");
    assert_eq!(r(3, 0.999_999), Route::NeedsLabels);
    assert_eq!(r(4, 0.999_999), Route::Escalate);
}

#[test]
fn scope_counts_add_and_retract() {
    let settings = RoutingSettings::default();
    let items = [
        input(3, 3, Some(0.99), false), // settled, saves 4
        input(5, 6, Some(0.96), false), // settled, saves 1
        input(1, 1, Some(0.99), false), // needs labels
        input(7, 7, Some(0.6), false),  // escalate
        input(0, 0, None, true),        // settled (gold), saves 7
    ];
    let mut counts = RoutingCounts::of(items.iter().map(|i| route(i, &settings)));
    assert_eq!(counts, RoutingCounts { settled: 3, needs_labels: 1, escalate: 1, labels_saved: 12 });
    assert_eq!(counts.items(), 5);
    // The first item gets a fourth label and stays settled: retract the old decision, add the new.
    counts.apply(route(&items[0], &settings), -1);
    counts.apply(route(&input(4, 4, Some(0.99), false), &settings), 1);
    assert_eq!(counts, RoutingCounts { settled: 3, needs_labels: 1, escalate: 1, labels_saved: 11 });
}

#[test]
fn route_names() {
    let names: Vec<_> = Route::ALL.iter().map(|r| r.name()).collect();
    assert_eq!(names, ["settled", "needs_labels", "escalate"]);
    assert_eq!(serde_json::to_string(&Route::NeedsLabels).unwrap(), "\"needs_labels\"");
}

/// Labels 10, 20, 30 whose order is the reverse of their ids: 30 < 20 < 10.
fn reverse(a: &LabelId, b: &LabelId) -> Ordering {
    b.cmp(a)
}

#[test]
fn trusted_consensus_leaves_blocked_annotators_out() {
    let labels = [(1, 10), (2, 10), (3, 20), (4, 20), (5, 20)];
    let everyone = trusted_consensus(&labels, |_| false, reverse).unwrap();
    assert_eq!(everyone, TrustedConsensus { label: 20, tied: false, n: 5 });
    // Blocking 5 ties 10 and 20: the smaller in the order (20 here, not the smaller id) wins.
    let tied = trusted_consensus(&labels, |a| a == 5, reverse).unwrap();
    assert_eq!(tied, TrustedConsensus { label: 20, tied: true, n: 4 });
    let tied = trusted_consensus(&labels, |a| a == 5, |a, b| a.cmp(b)).unwrap();
    assert_eq!(tied, TrustedConsensus { label: 10, tied: true, n: 4 });
    // Blocking 3 and 4 flips the consensus to 10.
    let flipped = trusted_consensus(&labels, |a| a == 3 || a == 4, reverse).unwrap();
    assert_eq!(flipped, TrustedConsensus { label: 10, tied: false, n: 3 });
    // Unblocking flips it back: the function has no memory.
    assert_eq!(trusted_consensus(&labels, |_| false, reverse).unwrap(), everyone);
    assert_eq!(trusted_consensus(&labels, |_| true, reverse), None, "no trusted label remains");
    assert_eq!(trusted_consensus(&[], |_| false, reverse), None);
}

#[test]
fn trusted_consensus_does_not_depend_on_label_order() {
    let labels = [(1, 30), (2, 10), (3, 20), (4, 10), (5, 30), (6, 20), (7, 40)];
    let want = TrustedConsensus { label: 30, tied: true, n: 7 };
    let mut permuted = labels;
    for shift in 0..labels.len() {
        permuted.rotate_left(1);
        assert_eq!(trusted_consensus(&permuted, |_| false, reverse), Some(want), "{shift}");
        let mut backwards = permuted;
        backwards.reverse();
        assert_eq!(trusted_consensus(&backwards, |_| false, reverse), Some(want));
    }
    let single = trusted_consensus(&[(9, 40)], |_| false, reverse).unwrap();
    assert_eq!(single, TrustedConsensus { label: 40, tied: false, n: 1 });
}

#[test]
fn settings_defaults_and_validation() {
    let defaults: RoutingSettings = serde_json::from_str("{}").unwrap();
    assert_eq!(defaults, RoutingSettings { min_labels: 3, max_labels: 7, confidence: 0.95 });
    defaults.validate().unwrap();
    let partial: RoutingSettings = serde_json::from_str(r#"{"max_labels": 5}"#).unwrap();
    assert_eq!((partial.min_labels, partial.max_labels), (3, 5));
    assert!(serde_json::from_str::<RoutingSettings>(r#"{"max_label": 5}"#).is_err(), "unknown field");
    let invalid = |s: RoutingSettings| s.validate().unwrap_err().field;
    assert_eq!(invalid(RoutingSettings { min_labels: 0, ..defaults.clone() }), "routing.min_labels");
    assert_eq!(invalid(RoutingSettings { max_labels: 2, ..defaults.clone() }), "routing.max_labels");
    RoutingSettings { max_labels: 3, ..defaults.clone() }.validate().unwrap();
    for confidence in [0.0, -0.1, 1.0 + 1e-9, f64::NAN, f64::INFINITY] {
        assert_eq!(invalid(RoutingSettings { confidence, ..defaults.clone() }), "routing.confidence");
    }
    let message = RoutingSettings { max_labels: 2, ..defaults }.validate().unwrap_err().to_string();
    assert_eq!(
        message,
        "invalid setting `routing.max_labels`: 2 (the default when unset: 7) is below routing.min_labels (3); \
         set max_labels to at least min_labels, or lower min_labels"
    );
}
