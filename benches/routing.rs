//! What routing saves (issue 14, recorded in BENCHMARKS.md): on `labelqc gen` data with a fixed
//! overlap of 7 labels per item, how many labels routing would have asked for, and the accuracy of
//! its truth against the generator's, beside fixed overlap.
//!
//! Fixed overlap: every item gets its 7 labels; its truth is the Dawid–Skene label over all of
//! them (and, for reference, the majority label). Routing (spec section 2.1): the item's labels
//! arrive one by one in the order they were given; after each, the item's posterior is formed with
//! the annotators' confusion matrices and the priors of the fit (what the live service knows from
//! the other items), and the item is `settled` once it has `min_labels` labels and a posterior of
//! at least `confidence`, or stops at `max_labels`. The labels it asked for are those it took.
//!
//! Run with `cargo bench --bench routing` (`-- --events N --annotators N --seed N`).

use std::collections::HashMap;

use labelqc::gen::{GenSpec, Traffic};
use labelqc_dataflows::label::{stable_id, LabelId};
use labelqc_dataflows::routing::{route, Route, RouteInput, RoutingSettings};
use labelqc_dataflows::truth::{fit, FitOptions};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The items' labels in arrival order, and each item's true label.
struct Data {
    /// Per item: `(annotator, label)` in the order given.
    items: Vec<(u64, Vec<(u64, LabelId)>)>,
    truth: HashMap<u64, LabelId>,
}

fn generate(spec: &GenSpec) -> Data {
    let mut traffic = Traffic::new(spec).expect("a valid spec");
    let (mut labels, mut gold) = (Vec::new(), Vec::new());
    let mut items: Vec<(u64, Vec<(u64, LabelId)>)> = Vec::new();
    let mut truth = HashMap::new();
    for _ in 0..spec.events {
        labels.clear();
        gold.clear();
        traffic.next_event(None, &mut labels, &mut gold);
        let (item, true_label) = traffic.current_truth();
        truth.insert(item, stable_id(true_label.as_bytes()));
        let event: serde_json::Value = serde_json::from_slice(&labels).expect("one JSON event");
        let annotator = stable_id(event["annotator_id"].as_str().expect("an annotator").as_bytes());
        let label = stable_id(event["label"].to_string().as_bytes());
        match items.last_mut() {
            Some((last, list)) if *last == item => list.push((annotator, label)),
            _ => items.push((item, vec![(annotator, label)])),
        }
    }
    Data { items, truth }
}

/// The label of highest posterior under `confusion` and `priors`, and its posterior.
fn posterior(
    labels: &[(u64, LabelId)],
    categories: &[LabelId],
    priors: &[f64],
    confusion: &HashMap<(u64, LabelId, LabelId), f64>,
) -> (LabelId, f64) {
    let logs: Vec<f64> = categories
        .iter()
        .zip(priors)
        .map(|(&t, &prior)| {
            let mut log = prior.max(1e-10).ln();
            for &(annotator, observed) in labels {
                log += confusion.get(&(annotator, observed, t)).copied().unwrap_or(1e-10).max(1e-10).ln();
            }
            log
        })
        .collect();
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = logs.iter().map(|l| (l - max).exp()).sum();
    let (best, log) = logs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).expect("categories");
    (categories[best], (log - max).exp() / total)
}

fn main() {
    let spec = GenSpec {
        events: arg("--events", 140_000),
        annotators: arg("--annotators", 200) as u32,
        labels_per_item: 7,
        relabel_rate: 0.0,
        delete_rate: 0.0,
        gold_rate: 0.0,
        seed: arg("--seed", 2026),
        ..GenSpec::default()
    };
    let data = generate(&spec);
    let labels: Vec<(u64, u64, LabelId)> =
        data.items.iter().flat_map(|(item, list)| list.iter().map(move |&(a, l)| (*item, a, l))).collect();
    let model = fit(&labels, &[], |a, b| a.cmp(b), &FitOptions::default(), None).expect("a fit");
    let full: HashMap<u64, LabelId> = model.items().map(|t| (t.item, t.label)).collect();
    let categories: Vec<LabelId> = model.labels().to_vec();
    let priors: Vec<f64> = model.priors().map(|(_, p)| p).collect();
    let confusion: HashMap<(u64, LabelId, LabelId), f64> = model
        .annotators()
        .flat_map(|a| a.cells.into_iter().map(move |c| ((a.annotator, c.observed, c.truth), c.p)))
        .collect();
    let n = data.items.len() as f64;
    let accuracy = |decided: &dyn Fn(u64) -> LabelId| {
        data.items.iter().filter(|(item, _)| decided(*item) == data.truth[item]).count() as f64 / n
    };
    let by_item: HashMap<u64, &Vec<(u64, LabelId)>> = data.items.iter().map(|(i, l)| (*i, l)).collect();
    let majority_accuracy = {
        let decided = |item: u64| {
            let mut counts: HashMap<LabelId, u32> = HashMap::new();
            for &(_, l) in by_item[&item] {
                *counts.entry(l).or_default() += 1;
            }
            counts.into_iter().max_by_key(|&(l, c)| (c, std::cmp::Reverse(l))).expect("labels").0
        };
        accuracy(&decided)
    };
    println!(
        "{} items x 7 labels ({} labels), {} annotators, {} classes, seed {}",
        data.items.len(),
        labels.len(),
        spec.annotators,
        spec.classes,
        spec.seed
    );
    println!(
        "fixed overlap 7: Dawid-Skene accuracy {:.4}, majority vote {:.4}",
        accuracy(&|i| full[&i]),
        majority_accuracy
    );
    println!("| confidence | labels asked | per item | saved vs 7 | settled | escalated | accuracy |");
    println!("|---|---|---|---|---|---|---|");
    for confidence in [0.9, 0.95, 0.99, 0.999] {
        let settings = RoutingSettings { confidence, ..RoutingSettings::default() };
        let (mut asked, mut settled, mut escalated) = (0u64, 0u64, 0u64);
        let mut decided: HashMap<u64, LabelId> = HashMap::new();
        for (item, list) in &data.items {
            let mut taken = 0;
            loop {
                taken += 1;
                let (label, p) = posterior(&list[..taken], &categories, &priors, &confusion);
                let input = RouteInput {
                    trusted: taken as u32,
                    labels: taken as u32,
                    posterior: Some(p),
                    gold: false,
                };
                let decision = route(&input, &settings);
                if decision.route != Route::NeedsLabels || taken == list.len() {
                    decided.insert(*item, label);
                    match decision.route {
                        Route::Settled => settled += 1,
                        _ => escalated += 1,
                    }
                    break;
                }
            }
            asked += taken as u64;
        }
        println!(
            "| {confidence} | {asked} | {:.2} | {:.1}% | {settled} | {escalated} | {:.4} |",
            asked as f64 / n,
            100.0 * (1.0 - asked as f64 / labels.len() as f64),
            accuracy(&|i| decided[&i])
        );
    }
}
