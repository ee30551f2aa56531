//! Dawid–Skene on small hand-made inputs: the shapes of the outputs, ties, clamping, refusals and
//! the settings. The conformance tests (`dataflows/tests/truth.rs`) check the values against
//! crowd-kit.

use super::*;

fn by_id(a: &LabelId, b: &LabelId) -> Ordering {
    a.cmp(b)
}

fn cold(labels: &[(u64, u64, LabelId)]) -> TruthFit {
    fit(labels, &[], by_id, &FitOptions::default(), None).unwrap()
}

#[test]
fn no_labels_give_an_empty_fit() {
    let f = cold(&[]);
    assert_eq!((f.n_items(), f.iterations(), f.labels().len()), (0, 0, 0));
    assert_eq!(f.priors().count(), 0);
    assert_eq!(f.items().count(), 0);
    assert_eq!(f.annotators().count(), 0);
    assert!(f.warm_start().is_empty());
}

#[test]
fn outputs_are_in_label_order_and_normalised() {
    // Three annotators, two agreeing on every item, one always answering 7.
    let mut labels = Vec::new();
    for item in 0..6u64 {
        let truth = if item % 2 == 0 { 5 } else { 6 };
        labels.extend([(item, 100, truth), (item, 101, truth), (item, 102, 7)]);
    }
    // The order puts 7 first, then 6, then 5.
    let order = |a: &LabelId, b: &LabelId| b.cmp(a);
    let f = fit(&labels, &[], order, &FitOptions::default(), None).unwrap();
    assert_eq!(f.labels(), &[7, 6, 5]);
    assert!(f.converged() && f.iterations() >= 2);
    let priors: Vec<_> = f.priors().collect();
    assert_eq!(priors.iter().map(|p| p.0).collect::<Vec<_>>(), [7, 6, 5]);
    assert!((priors.iter().map(|p| p.1).sum::<f64>() - 1.0).abs() < 1e-12);
    for t in f.items() {
        assert_eq!(t.label, if t.item % 2 == 0 { 5 } else { 6 });
        assert_eq!(t.posterior.iter().map(|p| p.0).collect::<Vec<_>>(), [7, 6, 5]);
        assert!(t.posterior.iter().all(|p| p.1 >= EPS && p.1 <= 1.0));
        assert!(t.p > 0.99);
    }
    // The constant annotator used one label: one row, a cell per true label, each 1.
    let constant = f.annotator(102).unwrap();
    assert_eq!(constant.cells.len(), 3);
    assert!(constant.cells.iter().all(|c| c.observed == 7 && (c.p - 1.0).abs() < 1e-12));
    // A careful one used two labels: for each true label the cells sum to 1.
    let careful = f.annotator(100).unwrap();
    assert_eq!(
        careful.cells.iter().map(|c| (c.observed, c.truth)).collect::<Vec<_>>(),
        [(6, 7), (6, 6), (6, 5), (5, 7), (5, 6), (5, 5)]
    );
    for truth in [7, 6, 5] {
        let total: f64 = careful.cells.iter().filter(|c| c.truth == truth).map(|c| c.p).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }
    assert!(f.item(99).is_none() && f.annotator(99).is_none());
}

#[test]
fn exact_ties_go_to_the_smallest_label_in_the_order() {
    // One item, two annotators disagreeing: the posterior is exactly one half each.
    let labels = [(1, 10, 3), (1, 11, 4)];
    let t = cold(&labels).item(1).unwrap();
    assert_eq!(t.posterior.as_slice(), &[(3, 0.5), (4, 0.5)]);
    assert_eq!(t.label, 3);
    let reversed =
        fit(&labels, &[], |a: &LabelId, b: &LabelId| b.cmp(a), &FitOptions::default(), None).unwrap();
    assert_eq!(reversed.item(1).unwrap().label, 4);
}

#[test]
fn clamping_fixes_gold_items_and_ignores_gold_outside_the_categories() {
    let labels = [(1, 10, 3), (1, 11, 4), (2, 10, 3), (2, 11, 3)];
    // Item 1 clamped to 4; item 2's gold 9 is no category; item 3 has no labels.
    let gold = [(1, 4), (2, 9), (3, 3)];
    let options = FitOptions { clamp_gold: true, ..FitOptions::default() };
    let f = fit(&labels, &gold, by_id, &options, None).unwrap();
    let one = f.item(1).unwrap();
    assert_eq!((one.label, one.p), (4, 1.0));
    assert_eq!(one.posterior.as_slice(), &[(3, EPS), (4, 1.0)]);
    assert_eq!(f.item(2).unwrap().label, 3);
    assert_eq!(f.n_items(), 2);
    // Without clamping, gold is not used at all.
    let free = fit(&labels, &gold, by_id, &FitOptions::default(), None).unwrap();
    assert_ne!(free.item(1).unwrap().p, 1.0);
    assert_eq!(
        fit(&labels, &[(1, 4), (1, 3)], by_id, &options, None).unwrap_err(),
        TruthError::DuplicateGold { item: 1 }
    );
}

#[test]
fn two_labels_of_one_identity_are_refused() {
    let err =
        fit(&[(1, 10, 3), (2, 10, 3), (1, 10, 4)], &[], by_id, &FitOptions::default(), None).unwrap_err();
    assert_eq!(err, TruthError::DuplicateLabel { item: 1, annotator: 10 });
    assert!(err.to_string().contains("item 1 has two labels of annotator 10"));
}

#[test]
fn the_iteration_limit_bounds_the_work() {
    let labels = [(1, 10, 3), (1, 11, 4), (2, 10, 3), (2, 11, 3), (3, 10, 4), (3, 11, 3)];
    let options = FitOptions { max_iterations: 1, ..FitOptions::default() };
    let f = fit(&labels, &[], by_id, &options, None).unwrap();
    assert_eq!((f.iterations(), f.converged()), (1, false));
    let none = FitOptions { max_iterations: 0, ..FitOptions::default() };
    let f = fit(&labels, &[], by_id, &none, None).unwrap();
    assert_eq!(f.iterations(), 0);
    // Majority-vote shares, as the start.
    assert_eq!(f.item(1).unwrap().posterior.as_slice(), &[(3, 0.5), (4, 0.5)]);
}

#[test]
fn a_warm_start_maps_labels_and_items_by_id() {
    let labels = [(1, 10, 3), (1, 11, 3), (2, 10, 4), (2, 11, 4), (3, 10, 3), (3, 11, 4)];
    let before = cold(&labels);
    let warm = before.warm_start();
    assert_eq!(warm.len(), 3);
    // A new label 5 and a new item 4: item 4 starts from its majority-vote shares.
    let mut more = labels.to_vec();
    more.extend([(4, 10, 5), (4, 11, 5)]);
    let after = fit(&more, &[], by_id, &FitOptions::default(), Some(&warm)).unwrap();
    assert_eq!(after.labels(), &[3, 4, 5]);
    assert_eq!(after.item(4).unwrap().label, 5);
    assert_eq!(after.item(1).unwrap().label, 3);
    assert_eq!(after.item(2).unwrap().label, 4);
}

#[test]
fn settings_defaults_and_validation() {
    let defaults: TruthSettings = serde_json::from_str("{}").unwrap();
    assert_eq!(
        defaults,
        TruthSettings { enabled: true, refresh_ms: 1000, clamp_gold: false, live_tolerance: 0.001 }
    );
    defaults.validate().unwrap();
    assert_eq!(defaults.fit_options(), FitOptions::default());
    let clamp: TruthSettings = serde_json::from_str(r#"{"clamp_gold": true}"#).unwrap();
    assert!(clamp.fit_options().clamp_gold);
    assert!(serde_json::from_str::<TruthSettings>(r#"{"refresh": 5}"#).is_err(), "unknown field");
    for refresh_ms in [0, 3_600_001] {
        let err = TruthSettings { refresh_ms, ..TruthSettings::default() }.validate().unwrap_err();
        assert_eq!(err.field, "truth.refresh_ms");
    }
    for live_tolerance in [-0.1, 1.5, f64::NAN] {
        let err = TruthSettings { live_tolerance, ..TruthSettings::default() }.validate().unwrap_err();
        assert_eq!(err.field, "truth.live_tolerance");
    }
    TruthSettings { enabled: false, refresh_ms: 1, clamp_gold: true, live_tolerance: 0.0 }
        .validate()
        .unwrap();
}

#[test]
fn threads_do_not_change_the_fit() {
    let labels = super::pass::tests::generated(20_000);
    let base = fit(&labels, &[], by_id, &FitOptions::default(), None).unwrap();
    assert!(super::pass::stripes(&base.problem) > 1, "the striped path");
    assert!(base.converged());
    for threads in [2, 3, 4] {
        let other = fit(&labels, &[], by_id, &FitOptions { threads, ..FitOptions::default() }, None).unwrap();
        assert_eq!(other.iterations(), base.iterations());
        assert_eq!(other.priors().collect::<Vec<_>>(), base.priors().collect::<Vec<_>>());
        assert!(other.items().eq(base.items()), "{threads} threads: items");
        assert!(other.annotators().eq(base.annotators()), "{threads} threads: confusion");
    }
}
