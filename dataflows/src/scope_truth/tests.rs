use super::*;

fn interval(cost_ms: u64) -> u64 {
    let s = ScopeLabels { cost: Duration::from_millis(cost_ms), ..ScopeLabels::default() };
    s.interval(Duration::from_secs(1)).as_millis() as u64
}

#[test]
fn refits_are_spaced_by_their_cost_within_twice_the_refresh() {
    // Small scopes: every `refresh`.
    assert_eq!(interval(20), 1_000);
    assert_eq!(interval(100), 1_000);
    // Ten times the fit, up to what keeps two refits within twice `refresh`.
    assert_eq!(interval(150), 1_500);
    assert_eq!(interval(200), 1_600);
    for cost in (0..=400).step_by(10) {
        assert!(interval(cost) + 2 * cost <= 2_000, "a fit of {cost} ms");
    }
    // At 0.4 s, refits shortened to keep within twice `refresh` would take more than a
    // quarter of the time: a scope that large is refitted every ten fits again.
    assert_eq!(interval(400), 1_200);
    assert_eq!(interval(410), 4_100);
    assert_eq!(interval(2_000), 20_000);
}

/// The live truth logic, refitting every second on one thread.
fn live() -> TruthLogic {
    TruthLogic {
        settings: TruthSettings::default(),
        refresh: Some(Duration::from_secs(1)),
        threads: 1,
        item_json: false,
        once: false,
        staged: VecDeque::new(),
        backlog: TruthBacklog::default(),
    }
}

#[test]
fn waiting_item_truths_go_out_in_order_at_most_the_bound_per_epoch_across_fits() {
    let mut logic = live();
    let truth = |item: ItemId| TruthOut::Item { scope: 1, item, label: 0, p: 0, json: Arc::from(&[][..]) };
    // Two fits' changes: 300 items inserted; then those 300 moved to other truths, and 100
    // items more.
    let first = (0..300).map(|i| ItemChange { retract: None, insert: Some(truth(i)) }).collect();
    let moved = (0..300).map(|i| ItemChange { retract: Some(truth(i)), insert: Some(truth(1000 + i)) });
    let added = (300..400).map(|i| ItemChange { retract: None, insert: Some(truth(i)) });
    let second = moved.chain(added).collect();
    logic.stage(first);
    logic.stage(second);
    assert_eq!(logic.backlog.waiting(), 700);
    let mut epochs: Vec<Vec<(TruthOut, Diff)>> = Vec::new();
    while logic.backlog.waiting() > 0 {
        let mut epoch = Vec::new();
        logic.drain(&mut |out, diff| epoch.push((out, diff)));
        epochs.push(epoch);
    }
    // The bound counts items, each whole: 512, then the 188 left.
    let items = |epoch: &[(TruthOut, Diff)]| epoch.iter().filter(|(_, diff)| *diff > 0).count();
    assert_eq!(epochs.iter().map(|e| items(e)).collect::<Vec<_>>(), [PUBLISH_PER_EPOCH, 188]);
    // In order: everything the first fit inserted comes before the second retracts it.
    let all: Vec<(TruthOut, Diff)> = epochs.concat();
    assert_eq!(all[..300], (0..300).map(|i| (truth(i), 1)).collect::<Vec<_>>()[..]);
    assert_eq!(all[300..302], [(truth(0), -1), (truth(1000), 1)]);
    // What is out at the end: the second fit's truths alone, each item once.
    let mut out = all;
    differential_dataflow::consolidation::consolidate(&mut out);
    let expected: Vec<(TruthOut, Diff)> = (300..400).chain(1000..1300).map(|i| (truth(i), 1)).collect();
    assert!(out == expected, "{} outputs out", out.len());
    assert!(logic.staged.is_empty());
}

#[test]
fn a_refit_gives_its_labels_back_as_the_run_and_the_updates_since_stay_apart() {
    let mut logic = live();
    let mut catalog = Catalog::default();
    let ids: Vec<LabelId> = ["a", "b", "c"]
        .iter()
        .map(|n| catalog.label(&crate::label::RawLabel::String((*n).into())).unwrap())
        .collect();
    let label = |item: u64, annotator: u64| ids[((item + annotator * (item % 3)) % 3) as usize];
    let scope = 7;
    let mut s = ScopeLabels::default();
    let mut all: LabelLog = Vec::new();
    // Applies a label's change, and keeps it in `all`.
    let update = |logic: &mut TruthLogic, s: &mut ScopeLabels, all: &mut LabelLog, key: FitLabel, diff| {
        let (item, annotator, label) = key;
        logic.apply(&scope, s, &(item, ItemRow::Label { annotator, label, compared: false }), &diff);
        all.push((key, diff));
    };
    for item in 0..40 {
        for annotator in 0..5 {
            update(&mut logic, &mut s, &mut all, (item, annotator, label(item, annotator)), 1);
        }
    }
    // The scope's first fit, in place.
    let mut out = Vec::new();
    assert!(!logic.unchanged(&scope, &mut s, &catalog));
    logic.derive(&scope, &mut s, &catalog, &mut out);
    // A relabel makes it due; the refit starts in the background with every label so far.
    update(&mut logic, &mut s, &mut all, (3, 1, label(3, 1)), -1);
    update(&mut logic, &mut s, &mut all, (3, 1, ids[2]), 1);
    s.last = Instant::now().checked_sub(Duration::from_secs(60));
    assert!(logic.unchanged(&scope, &mut s, &catalog), "the refit runs in the background");
    assert!(s.run.is_empty() && s.log.is_empty(), "the refit holds the labels");
    let mut as_of_refit = all.clone();
    differential_dataflow::consolidation::consolidate(&mut as_of_refit);
    // Updates while it runs: a label added, another deleted.
    update(&mut logic, &mut s, &mut all, (50, 0, ids[0]), 1);
    update(&mut logic, &mut s, &mut all, (4, 4, label(4, 4)), -1);
    while !s.refit.as_ref().is_some_and(Refit::finished) {
        std::thread::sleep(Duration::from_millis(1));
    }
    logic.derive(&scope, &mut s, &catalog, &mut out);
    assert_eq!(s.run, as_of_refit, "the refit's labels, consolidated, are the run");
    assert_eq!(s.log, all[all.len() - 2..], "the updates since stay after it");
    // A fit in place then takes both: every live label.
    let (labels, _) = logic.snapshot(&mut s);
    let mut live = all;
    differential_dataflow::consolidation::consolidate(&mut live);
    assert_eq!(labels, live.iter().map(|&(k, _)| k).collect::<Vec<_>>());
    assert!(s.run.is_empty());
}

#[test]
fn a_refit_names_the_categories_of_the_live_labels_from_their_counts() {
    let mut logic = live();
    let mut catalog = Catalog::default();
    let [a, b, c]: [LabelId; 3] =
        ["a", "b", "c"].map(|n| catalog.label(&crate::label::RawLabel::String(n.into())).unwrap());
    let scope = 7;
    let mut s = ScopeLabels::default();
    let update = |logic: &mut TruthLogic, s: &mut ScopeLabels, (item, annotator, label): FitLabel, diff| {
        logic.apply(&scope, s, &(item, ItemRow::Label { annotator, label, compared: false }), &diff);
    };
    // Items 0-19 labelled `a` by annotator 0, `b` by the others; items 20-39 `b` by everyone.
    let first = |item: u64, annotator: u64| if item < 20 && annotator == 0 { a } else { b };
    for item in 0..40 {
        for annotator in 0..3 {
            update(&mut logic, &mut s, (item, annotator, first(item, annotator)), 1);
        }
    }
    let mut out = Vec::new();
    assert!(!logic.unchanged(&scope, &mut s, &catalog));
    logic.derive(&scope, &mut s, &catalog, &mut out);
    // Every `a` relabelled `c`, with a label added and deleted in `a` meanwhile: `a` is used
    // by no live label, `c` by twenty.
    for item in 0..20 {
        update(&mut logic, &mut s, (item, 0, a), -1);
        update(&mut logic, &mut s, (item, 0, c), 1);
    }
    update(&mut logic, &mut s, (99, 5, a), 1);
    update(&mut logic, &mut s, (99, 5, a), -1);
    let mut counted: Vec<(LabelId, Diff)> = s.categories.iter().map(|(&l, &n)| (l, n)).collect();
    counted.sort_unstable();
    let mut expected = vec![(b, 100), (c, 20)];
    expected.sort_unstable();
    assert_eq!(counted, expected);
    // The refit fits them with those categories alone: its priors name `b` and `c`.
    s.last = Instant::now().checked_sub(Duration::from_secs(60));
    assert!(logic.unchanged(&scope, &mut s, &catalog), "the refit runs in the background");
    while !s.refit.as_ref().is_some_and(Refit::finished) {
        std::thread::sleep(Duration::from_millis(1));
    }
    out.clear();
    logic.derive(&scope, &mut s, &catalog, &mut out);
    let priors = out
        .iter()
        .find_map(|o| match o {
            TruthOut::Scope { json, .. } => Some(String::from_utf8(json.clone()).unwrap()),
            _ => None,
        })
        .expect("the refit's scope truth");
    assert!(priors.contains(r#""label":"b""#) && priors.contains(r#""label":"c""#), "{priors}");
    assert!(!priors.contains(r#""label":"a""#), "{priors}");
}
