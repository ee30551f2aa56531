//! Dawid–Skene truth against crowd-kit 1.4.2 on every conformance dataset
//! (`tests/conformance/truth/NAME.json`, see `tests/conformance/README.md`, "Truth inference"):
//! posteriors, truth labels, confusion matrices and priors within 1e-6; the same fit whatever the
//! input's order; a warm start from the fixed point stopping at once on the same values; gold
//! clamping against crowd-kit's `fit(df, true_labels)`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use labelqc_dataflows::event::{parse_gold_event, parse_label_event};
use labelqc_dataflows::label::{stable_id, Label, LabelId, LabelTable};
use labelqc_dataflows::truth::{fit, FitOptions, TruthFit};
use serde_json::Value;

const TOL: f64 = 1e-6;

fn conformance() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance")
}

/// One dataset's live labels (the latest event per identity) and gold answers, as ids.
struct Dataset {
    table: LabelTable,
    labels: Vec<(u64, u64, LabelId)>,
    gold: Vec<(u64, LabelId)>,
    names: HashMap<u64, String>,
}

impl Dataset {
    fn load(name: &str) -> Dataset {
        let data = conformance().join("data");
        let mut table = LabelTable::default();
        let mut names = HashMap::new();
        let mut id = |name: &str| {
            let id = stable_id(name.as_bytes());
            names.entry(id).or_insert_with(|| name.to_string());
            id
        };
        let mut live: BTreeMap<(u64, u64), Option<LabelId>> = BTreeMap::new();
        let text = std::fs::read_to_string(data.join(format!("{name}.events.jsonl"))).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let event = parse_label_event(line).unwrap();
            assert_eq!((&*event.project, &*event.task), ("default", "default"));
            let label = event.label.as_ref().map(|raw| table.intern(raw).unwrap());
            live.insert((id(&event.item_id), id(&event.annotator_id)), label);
        }
        let labels = live.into_iter().filter_map(|((i, a), l)| l.map(|l| (i, a, l))).collect();
        let mut gold = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(data.join(format!("{name}.gold.jsonl"))) {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let event = parse_gold_event(line).unwrap();
                let label = event.label.as_ref().map(|raw| table.intern(raw).unwrap());
                gold.insert(id(&event.item_id), label);
            }
        }
        let gold = gold.into_iter().filter_map(|(i, l)| l.map(|l| (i, l))).collect();
        Dataset { table, labels, gold, names }
    }

    fn fit(&self, labels: &[(u64, u64, LabelId)], options: &FitOptions, warm: Option<&TruthFit>) -> TruthFit {
        let order = |a: &LabelId, b: &LabelId| self.table.get(*a).spec_cmp(self.table.get(*b));
        fit(labels, &self.gold, order, options, warm.map(|w| w.warm_start()).as_ref()).unwrap()
    }

    /// Whether `label` is the label crowd-kit printed as `text` (numbers by value).
    fn is(&self, label: LabelId, text: &Value) -> bool {
        let text = match text {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match self.table.get(label) {
            Label::String(s) => **s == *text,
            Label::Number(n) => text.parse::<f64>().is_ok_and(|v| v == n.value()),
            Label::Bool(b) => text.eq_ignore_ascii_case(if *b { "true" } else { "false" }),
            Label::Set(_) => panic!("no set labels in the conformance data"),
        }
    }

    fn label(&self, text: &Value, labels: &[LabelId]) -> LabelId {
        *labels.iter().find(|l| self.is(**l, text)).unwrap_or_else(|| panic!("no label {text}"))
    }

    fn name(&self, id: u64) -> &str {
        &self.names[&id]
    }
}

fn datasets() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(conformance().join("data"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".events.jsonl").map(String::from))
        .collect();
    names.sort();
    assert!(names.len() >= 14, "the conformance datasets are missing");
    names
}

fn close(what: &str, got: f64, want: f64) {
    assert!((got - want).abs() <= TOL, "{what}: {got} != {want}");
}

/// Checks a fit against crowd-kit's values in `truth/NAME.json`.
fn check(name: &str, data: &Dataset, fit: &TruthFit) {
    let path = conformance().join("truth").join(format!("{name}.json"));
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let labels = fit.labels();
    let priors: Vec<(LabelId, f64)> = fit.priors().collect();
    let want_priors = expected["truth"]["priors"].as_array().unwrap();
    assert_eq!(priors.len(), want_priors.len(), "{name}: categories");
    for want in want_priors {
        let label = data.label(&want["label"], labels);
        let got = priors.iter().find(|(l, _)| *l == label).unwrap().1;
        close(&format!("{name}: prior of {}", want["label"]), got, want["p"].as_f64().unwrap());
    }

    let want_items = expected["items"].as_object().unwrap();
    assert_eq!(fit.n_items(), want_items.len(), "{name}: items");
    for item in fit.items() {
        let want = &want_items[data.name(item.item)]["truth"];
        let what = format!("{name}: item {}", data.name(item.item));
        let want_posterior = want["posterior"].as_array().unwrap();
        assert_eq!(item.posterior.len(), want_posterior.len(), "{what}");
        for w in want_posterior {
            let label = data.label(&w["label"], labels);
            let got = item.posterior.iter().find(|(l, _)| *l == label).unwrap().1;
            close(&format!("{what}, P({})", w["label"]), got, w["p"].as_f64().unwrap());
        }
        // The label is checked unless another label's posterior is within 1e-6 of the top.
        let mut ps: Vec<f64> = want_posterior.iter().map(|w| w["p"].as_f64().unwrap()).collect();
        ps.sort_by(|a, b| b.total_cmp(a));
        if ps.len() < 2 || ps[0] - ps[1] > TOL {
            assert!(data.is(item.label, &want["label"]), "{what}: truth {:?}", data.table.get(item.label));
        }
        assert_eq!(item.p, item.posterior.iter().find(|(l, _)| *l == item.label).unwrap().1);
    }

    let want_confusion = expected["confusion"].as_object().unwrap();
    assert_eq!(fit.annotators().len(), want_confusion.len(), "{name}: annotators");
    for confusion in fit.annotators() {
        let what = format!("{name}: annotator {}", data.name(confusion.annotator));
        let want = want_confusion[data.name(confusion.annotator)].as_array().unwrap();
        assert_eq!(confusion.cells.len(), want.len(), "{what}: cells");
        for w in want {
            let (observed, truth) = (data.label(&w["observed"], labels), data.label(&w["true"], labels));
            let cell = confusion.cells.iter().find(|c| (c.observed, c.truth) == (observed, truth)).unwrap();
            close(&format!("{what}, P({} | {})", w["observed"], w["true"]), cell.p, w["p"].as_f64().unwrap());
        }
    }
}

/// crowd-kit 1.4.2's iteration counts (`len(DawidSkene(n_iter=1000, tol=1e-10).fit(df)
/// .loss_history_)`) on the conformance datasets: agreeing on them shows the bound is the same.
const ITERATIONS: [(&str, u32); 14] = [
    ("artstein_poesio_2008_2x100", 2),
    ("crowdkit_toy_ysda", 7),
    ("edge_constant_pair", 1000),
    ("edge_gold_extremes", 25),
    ("edge_no_pairable", 2),
    ("edge_perfect_two_categories", 2),
    ("edge_single_category", 2),
    ("edge_total_disagreement", 2),
    ("fleiss1971_diagnoses_30x6", 12),
    ("krippendorff2011_4x12", 8),
    ("krippendorff_wikipedia_3x15", 12),
    ("sas_cohen_3x3_table10", 3),
    ("synth_c_nominal_complete5", 478),
    ("textbook_cohen_wikipedia_2x50", 16),
];

#[test]
fn dawid_skene_equals_crowd_kit_on_every_dataset() {
    let names = datasets();
    for name in &names {
        let data = Dataset::load(name);
        let fit = data.fit(&data.labels, &FitOptions::default(), None);
        check(name, &data, &fit);
        let iterations = ITERATIONS.iter().find(|(n, _)| n == name).map(|(_, i)| *i);
        assert_eq!(Some(fit.iterations()), iterations, "{name}: iterations");
        assert_eq!(fit.converged(), fit.iterations() < 1000, "{name}");
    }
}

/// A deterministic permutation (Fisher–Yates with a fixed linear congruential generator).
fn shuffled<T: Clone>(v: &[T], seed: u64) -> Vec<T> {
    let mut out = v.to_vec();
    let mut state = seed;
    for i in (1..out.len()).rev() {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.swap(i, (state >> 33) as usize % (i + 1));
    }
    out
}

#[test]
fn input_order_does_not_change_the_fit() {
    for name in datasets() {
        let data = Dataset::load(&name);
        let options = FitOptions::default();
        let base = data.fit(&data.labels, &options, None);
        for seed in [1, 2] {
            let mut labels = shuffled(&data.labels, seed);
            if seed == 2 {
                labels.reverse();
            }
            let other = data.fit(&labels, &options, None);
            // Bitwise: every sum is formed in the same order.
            assert_eq!(other.iterations(), base.iterations(), "{name}");
            assert_eq!(other.priors().collect::<Vec<_>>(), base.priors().collect::<Vec<_>>(), "{name}");
            assert!(other.items().eq(base.items()), "{name}: items");
            assert!(other.annotators().eq(base.annotators()), "{name}: confusion");
        }
    }
}

/// Warm starts. crowd-kit's criterion stops when its bound (which adds the log-prior once per
/// label, not once per item, so that EM need not raise it) stops rising, which is not always at a
/// fixed point of EM: started there, EM stops after the two iterations the criterion needs but
/// may move on (by 1e-2 on krippendorff_wikipedia_3x15). Started at a fixed point, it stops after
/// two iterations on the same values.
#[test]
fn warm_start_from_a_fixed_point_stops_at_once_on_the_same_values() {
    let options = FitOptions::default();
    // EM run 3,000 times without stopping: a fixed point (crowd-kit's bound can fall while EM
    // still moves, so no tolerance on it finds one).
    let deep = FitOptions { max_iterations: 3000, tolerance: f64::NEG_INFINITY, ..FitOptions::default() };
    for name in datasets() {
        let data = Dataset::load(&name);
        let cold = data.fit(&data.labels, &options, None);
        if !cold.converged() {
            // edge_constant_pair: crowd-kit stops at the iteration limit, still moving.
            continue;
        }
        let warm = data.fit(&shuffled(&data.labels, 3), &options, Some(&cold));
        assert_eq!(warm.iterations(), 2, "{name}: the least the criterion allows");

        let fixed = data.fit(&data.labels, &deep, None);
        let again = data.fit(&shuffled(&data.labels, 4), &options, Some(&fixed));
        assert_eq!(again.iterations(), 2, "{name}");
        let (largest, _) = distance(&fixed, &again);
        assert!(largest < 1e-9, "{name}: {largest}");
        for (a, b) in fixed.priors().zip(again.priors()) {
            assert!((a.1 - b.1).abs() < 1e-9, "{name}: {a:?} {b:?}");
        }
    }
}

/// Largest posterior difference and number of differing truth labels between two fits of the
/// same items.
fn distance(a: &TruthFit, b: &TruthFit) -> (f64, usize) {
    let (mut largest, mut labels) = (0.0f64, 0);
    for (x, y) in a.items().zip(b.items()) {
        assert_eq!(x.item, y.item);
        labels += usize::from(x.label != y.label);
        for (p, q) in x.posterior.iter().zip(&y.posterior) {
            largest = largest.max((p.1 - q.1).abs());
        }
    }
    (largest, labels)
}

/// A live refresh: after relabels, a warm start from the fit before stops within a few
/// iterations, far closer to the cold fit of the new labels (what the report says) than the fit
/// before is.
#[test]
fn warm_start_after_relabels_approaches_the_cold_fit() {
    let data = Dataset::load("synth_c_nominal_complete5");
    let options = FitOptions::default();
    let before = data.fit(&data.labels, &options, None);
    let categories = before.labels().to_vec();
    for step in [500, 2000] {
        // Every `step`-th label changed to the next category: 20 and 5 of 10,000.
        let mut changed = data.labels.clone();
        for label in changed.iter_mut().step_by(step) {
            let at = categories.iter().position(|c| *c == label.2).unwrap();
            label.2 = categories[(at + 1) % categories.len()];
        }
        let cold = data.fit(&changed, &options, None);
        let warm = data.fit(&changed, &options, Some(&before));
        assert!(warm.iterations() * 10 < cold.iterations(), "{} vs {}", warm.iterations(), cold.iterations());
        let (stale, stale_labels) = distance(&before, &cold);
        let (refreshed, refreshed_labels) = distance(&warm, &cold);
        assert!(refreshed * 3.0 < stale, "step {step}: {refreshed} vs {stale}");
        assert!(refreshed_labels < stale_labels.max(1), "step {step}: {refreshed_labels} vs {stale_labels}");
    }
}

/// crowd-kit 1.4.2's `DawidSkene(n_iter=1000, tol=1e-10).fit(df, true_labels=gold)` with the
/// gold answers whose items have labels, on three datasets: iterations, priors, and a few
/// posteriors and confusion cells (`label` printed as crowd-kit prints it).
/// One dataset's reference values with gold clamped: name, iterations, `(label, prior)`,
/// `(item, [(label, posterior)])`, `(annotator, observed, true, p)`.
type Clamped = (&'static str, u32, Priors, Posteriors, Cells);
type Priors = &'static [(&'static str, f64)];
type Posteriors = &'static [(&'static str, Priors)];
type Cells = &'static [(&'static str, &'static str, &'static str, f64)];

#[test]
fn clamping_gold_equals_crowd_kit_true_labels() {
    let options = FitOptions { clamp_gold: true, ..FitOptions::default() };
    let cases: [Clamped; 3] = [
        (
            "crowdkit_toy_ysda",
            5,
            &[("no", 0.4), ("yes", 0.6)],
            &[("t1", &[("no", 1e-10), ("yes", 1.0)]), ("t3", &[("no", 1.0), ("yes", 1e-10)])],
            &[("w1", "no", "yes", 0.3333333333333333), ("w2", "no", "yes", 3.3333333332222224e-11)],
        ),
        (
            "edge_no_pairable",
            9,
            &[("x", 0.6666669845581055), ("y", 0.33333301544189453)],
            &[
                ("i3", &[("x", 0.6666679382324219), ("y", 0.3333320617675781)]),
                ("i4", &[("x", 1e-10), ("y", 1.0)]),
            ],
            &[("a", "x", "x", 0.9999999999), ("a", "y", "x", 9.999999999e-11)],
        ),
        (
            "synth_c_nominal_complete5",
            83,
            &[
                ("pos", 0.3093590418704758),
                ("neu", 0.359346691069881),
                ("neg", 0.2713674053721154),
                ("spam", 0.05992686168752735),
            ],
            &[
                (
                    "it_00000",
                    &[
                        ("pos", 5.7979063168362905e-06),
                        ("neu", 2.1308981249945283e-06),
                        ("neg", 0.9999920711955582),
                        ("spam", 1e-10),
                    ],
                ),
                (
                    "it_00001",
                    &[
                        ("pos", 0.9998716691765064),
                        ("neu", 1.6177419721392327e-05),
                        ("neg", 1.8677481596437918e-05),
                        ("spam", 9.34759221757966e-05),
                    ],
                ),
            ],
            &[
                ("ann_00", "pos", "pos", 0.6344352572076231),
                ("ann_00", "neg", "spam", 0.40452949306066),
                ("ann_01", "spam", "spam", 0.7235988936527258),
                ("ann_02", "neu", "pos", 1.4805565714080338e-12),
            ],
        ),
    ];
    for (name, iterations, priors, items, cells) in cases {
        let data = Dataset::load(name);
        let fit = data.fit(&data.labels, &options, None);
        let labels = fit.labels().to_vec();
        let label = |text: &str| data.label(&Value::String(text.into()), &labels);
        assert_eq!(fit.iterations(), iterations, "{name}");
        for (l, p) in priors {
            close(name, fit.priors().find(|x| x.0 == label(l)).unwrap().1, *p);
        }
        for (item, posterior) in items {
            let truth = fit.item(stable_id(item.as_bytes())).unwrap();
            for (l, p) in posterior.iter() {
                close(name, truth.posterior.iter().find(|x| x.0 == label(l)).unwrap().1, *p);
            }
        }
        for (annotator, observed, truth, p) in cells {
            let confusion = fit.annotator(stable_id(annotator.as_bytes())).unwrap();
            let cell =
                confusion.cells.iter().find(|c| c.observed == label(observed) && c.truth == label(truth));
            close(name, cell.unwrap().p, *p);
        }
        // Every gold item with labels is its gold answer, with posterior 1.
        for (item, gold) in &data.gold {
            if let Some(truth) = fit.item(*item) {
                if labels.contains(gold) {
                    assert_eq!(
                        (truth.label, truth.p),
                        (*gold, 1.0),
                        "{name}: gold item {}",
                        data.name(*item)
                    );
                }
            }
        }
    }
}
