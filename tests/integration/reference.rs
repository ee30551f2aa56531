//! A plain, non-incremental recomputation of the report, written from the spec's definitions
//! independently of the dataflows: replay the events into final state, then compute every number
//! directly with floats. The property test holds the incremental engine to it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Map, Value};

/// A label's identity under the spec's equality.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Identity {
    Num(u64),
    Str(String),
    Bool(bool),
    Set(Vec<String>),
}

fn identity(v: &Value) -> Identity {
    match v {
        Value::Number(n) => {
            let f = n.as_f64().unwrap();
            Identity::Num(if f == 0.0 { 0u64 } else { f.to_bits() })
        }
        Value::String(s) => Identity::Str(s.clone()),
        Value::Bool(b) => Identity::Bool(*b),
        Value::Array(items) => {
            let set: BTreeSet<String> = items.iter().map(|i| i.as_str().unwrap().to_string()).collect();
            Identity::Set(set.into_iter().collect())
        }
        other => panic!("not a label: {other}"),
    }
}

fn rank(v: &Value) -> u8 {
    match v {
        Value::Number(_) => 0,
        Value::String(_) => 1,
        Value::Bool(_) => 2,
        _ => 3,
    }
}

/// The spec's consensus order.
fn spec_order(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64().unwrap().total_cmp(&y.as_f64().unwrap()),
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(_), Value::Array(_)) => identity(a).cmp(&identity(b)),
        _ => rank(a).cmp(&rank(b)),
    }
}

fn wilson(n: usize, correct: usize) -> Value {
    if n == 0 {
        return Value::Null;
    }
    let z = 1.959963984540054f64;
    let (nf, p) = (n as f64, correct as f64 / n as f64);
    let center = (p + z * z / (2.0 * nf)) / (1.0 + z * z / nf);
    let half = z / (1.0 + z * z / nf) * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt();
    json!({"n": n, "correct": correct, "accuracy": p, "wilson_low": center - half, "wilson_high": center + half})
}

fn scope_field(v: &Value, field: &str) -> String {
    v.get(field).and_then(Value::as_str).unwrap_or("default").to_string()
}

type ScopeName = (String, String);

/// The live label of each (scope, item, annotator) after these records, in order: the latest
/// wins, a delete removes.
fn live_labels(label_records: &[Value]) -> BTreeMap<(ScopeName, String, String), Value> {
    let mut labels: BTreeMap<(ScopeName, String, String), Value> = BTreeMap::new();
    for r in label_records {
        let key = (
            (scope_field(r, "project"), scope_field(r, "task")),
            r["item_id"].as_str().unwrap().to_string(),
            r["annotator_id"].as_str().unwrap().to_string(),
        );
        if r.get("op").and_then(Value::as_str) == Some("delete") {
            labels.remove(&key);
        } else {
            labels.insert(key, r["label"].clone());
        }
    }
    labels
}

/// The report the spec defines for these label and gold records (already valid JSON objects).
pub fn report(label_records: &[Value], gold_records: &[Value], with_items: bool) -> Value {
    let labels = live_labels(label_records);
    let mut gold: HashMap<(ScopeName, String), Value> = HashMap::new();
    for r in gold_records {
        let key =
            ((scope_field(r, "project"), scope_field(r, "task")), r["item_id"].as_str().unwrap().to_string());
        if r.get("op").and_then(Value::as_str) == Some("delete") {
            gold.remove(&key);
        } else {
            gold.insert(key, r["label"].clone());
        }
    }
    // scope -> item -> [(annotator, label)]
    let mut scopes: BTreeMap<ScopeName, BTreeMap<String, Vec<(String, Value)>>> = BTreeMap::new();
    for ((scope, item, annotator), label) in labels {
        scopes.entry(scope).or_default().entry(item).or_default().push((annotator, label));
    }
    let scopes: Vec<Value> =
        scopes.into_iter().map(|(scope, items)| scope_report(&scope, &items, &gold, with_items)).collect();
    json!({ "scopes": scopes })
}

/// Per scope and item, the trusted consensus of spec section 2.1 for these label records, given
/// the annotators blocked per project `(project, annotator)`: `{label, tied, n}` over the labels
/// of annotators not blocked, or null when none remains.
pub fn trusted(
    label_records: &[Value],
    blocked: &BTreeSet<(String, String)>,
) -> BTreeMap<(ScopeName, String), Value> {
    let labels = live_labels(label_records);
    let mut items: BTreeMap<(ScopeName, String), Vec<(String, Value)>> = BTreeMap::new();
    for ((scope, item, annotator), label) in labels {
        items.entry((scope, item)).or_default().push((annotator, label));
    }
    items
        .into_iter()
        .map(|((scope, item), all)| {
            let kept: Vec<(String, Value)> =
                all.into_iter().filter(|(a, _)| !blocked.contains(&(scope.0.clone(), a.clone()))).collect();
            let value = if kept.is_empty() {
                Value::Null
            } else {
                let c = counts(&kept);
                let top = *c.values().max().unwrap();
                let mut best: Vec<Value> = c
                    .iter()
                    .filter(|(_, &n)| n == top)
                    .map(|(k, _)| kept.iter().find(|(_, l)| identity(l) == *k).unwrap().1.clone())
                    .collect();
                best.sort_by(spec_order);
                let shown = match identity(&best[0]) {
                    Identity::Set(elements) => json!(elements),
                    _ => best[0].clone(),
                };
                json!({"label": shown, "tied": best.len() > 1, "n": kept.len()})
            };
            ((scope, item), value)
        })
        .collect()
}

fn counts(labels: &[(String, Value)]) -> BTreeMap<Identity, usize> {
    let mut c = BTreeMap::new();
    for (_, l) in labels {
        *c.entry(identity(l)).or_insert(0) += 1;
    }
    c
}

fn scope_report(
    scope: &ScopeName,
    items: &BTreeMap<String, Vec<(String, Value)>>,
    gold: &HashMap<(ScopeName, String), Value>,
    with_items: bool,
) -> Value {
    let n_labels: usize = items.values().map(Vec::len).sum();
    let annotators: BTreeSet<&String> = items.values().flatten().map(|(a, _)| a).collect();
    let pairable: Vec<&Vec<(String, Value)>> = items.values().filter(|l| l.len() >= 2).collect();
    let mut values: HashMap<Identity, Value> = HashMap::new();
    for (_, l) in items.values().flatten() {
        // A set prints as its distinct elements, sorted.
        let shown = match identity(l) {
            Identity::Set(elements) => json!(elements),
            _ => l.clone(),
        };
        values.entry(identity(l)).or_insert(shown);
    }

    // Consensus rate: pairable items whose most frequent label has more than half of the labels.
    let consensus_rate = (!pairable.is_empty()).then(|| {
        let clear = pairable.iter().filter(|l| counts(l).values().any(|&n| 2 * n > l.len())).count();
        clear as f64 / pairable.len() as f64
    });

    // Percent agreement.
    let pa = (!pairable.is_empty()).then(|| {
        pairable
            .iter()
            .map(|l| {
                let r = l.len() as f64;
                counts(l).values().map(|&n| (n * (n - 1)) as f64).sum::<f64>() / (r * (r - 1.0))
            })
            .sum::<f64>()
            / pairable.len() as f64
    });

    // Krippendorff: coincidence matrix over pairable items.
    let mut o: BTreeMap<(Identity, Identity), f64> = BTreeMap::new();
    let mut marg: BTreeMap<Identity, f64> = BTreeMap::new();
    for l in &pairable {
        let c = counts(l);
        let r = l.len() as f64;
        for (a, &na) in &c {
            *marg.entry(a.clone()).or_default() += na as f64;
            for (b, &nb) in &c {
                let w = if a == b { (na * na - na) as f64 } else { (na * nb) as f64 };
                *o.entry((a.clone(), b.clone())).or_default() += w / (r - 1.0);
            }
        }
    }
    let numeric = values.values().all(Value::is_number);
    let num = |i: &Identity| values[i].as_f64().unwrap();
    let mut cats: Vec<Identity> = marg.keys().cloned().collect();
    if numeric {
        cats.sort_by(|a, b| num(a).total_cmp(&num(b)));
    }
    let alpha = |d: &dyn Fn(usize, usize) -> f64| -> Value {
        let n: f64 = marg.values().sum();
        let (mut dobs, mut dexp) = (0.0, 0.0);
        for (i, a) in cats.iter().enumerate() {
            for (j, b) in cats.iter().enumerate() {
                dobs += o.get(&(a.clone(), b.clone())).copied().unwrap_or(0.0) * d(i, j);
                dexp += marg[a] * marg[b] * d(i, j);
            }
        }
        if dexp == 0.0 {
            Value::Null
        } else {
            json!(1.0 - (n - 1.0) * dobs / dexp)
        }
    };
    let mut kalpha = Map::new();
    kalpha.insert("nominal".into(), alpha(&|i, j| if i == j { 0.0 } else { 1.0 }));
    if numeric {
        let v: Vec<f64> = cats.iter().map(num).collect();
        let m: Vec<f64> = cats.iter().map(|c| marg[c]).collect();
        kalpha.insert("interval".into(), alpha(&|i, j| (v[i] - v[j]).powi(2)));
        kalpha.insert(
            "ratio".into(),
            alpha(&|i, j| {
                if v[i] + v[j] == 0.0 {
                    0.0
                } else {
                    ((v[i] - v[j]) / (v[i] + v[j])).powi(2)
                }
            }),
        );
        kalpha.insert(
            "ordinal".into(),
            alpha(&|i, j| {
                let (lo, hi) = (i.min(j), i.max(j));
                (m[lo..=hi].iter().sum::<f64>() - (m[i] + m[j]) / 2.0).powi(2)
            }),
        );
    }

    // Fleiss (missing-data form) and Gwet's AC1 over all rated items.
    let mut pi: BTreeMap<Identity, f64> = BTreeMap::new();
    for l in items.values() {
        for (k, n) in counts(l) {
            *pi.entry(k).or_default() += n as f64 / l.len() as f64 / items.len() as f64;
        }
    }
    let q = pi.len();
    let (fleiss, gwet) = match pa {
        Some(pa) if q >= 2 => {
            let pe_f: f64 = pi.values().map(|p| p * p).sum();
            let pe_g: f64 = pi.values().map(|p| p * (1.0 - p)).sum::<f64>() / (q - 1) as f64;
            (json!((pa - pe_f) / (1.0 - pe_f)), json!((pa - pe_g) / (1.0 - pe_g)))
        }
        _ => (Value::Null, Value::Null),
    };

    // Pairs.
    let by_annotator: BTreeMap<&String, BTreeMap<&String, Identity>> = {
        let mut m: BTreeMap<&String, BTreeMap<&String, Identity>> = BTreeMap::new();
        for (item, l) in items {
            for (a, v) in l {
                m.entry(a).or_default().insert(item, identity(v));
            }
        }
        m
    };
    let mut pairs = Vec::new();
    let mut kappas = Vec::new();
    let names: Vec<&&String> = by_annotator.keys().collect();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            let shared: Vec<(&Identity, &Identity)> = by_annotator[**a]
                .iter()
                .filter_map(|(item, la)| by_annotator[**b].get(item).map(|lb| (la, lb)))
                .collect();
            if shared.is_empty() {
                continue;
            }
            let n = shared.len() as f64;
            let po = shared.iter().filter(|(x, y)| x == y).count() as f64 / n;
            let mut ma: HashMap<&Identity, f64> = HashMap::new();
            let mut mb: HashMap<&Identity, f64> = HashMap::new();
            for (x, y) in &shared {
                *ma.entry(x).or_default() += 1.0 / n;
                *mb.entry(y).or_default() += 1.0 / n;
            }
            let keys: BTreeSet<&&Identity> = ma.keys().chain(mb.keys()).collect();
            let get = |m: &HashMap<&Identity, f64>, k: &Identity| m.get(k).copied().unwrap_or(0.0);
            let pe_c: f64 = keys.iter().map(|k| get(&ma, k) * get(&mb, k)).sum();
            let pe_s: f64 = keys.iter().map(|k| ((get(&ma, k) + get(&mb, k)) / 2.0).powi(2)).sum();
            let undefined = |pe: f64| (1.0 - pe).abs() < 1e-12;
            let kappa = (!undefined(pe_c)).then(|| (po - pe_c) / (1.0 - pe_c));
            if let Some(k) = kappa {
                kappas.push(k);
            }
            pairs.push(json!({
                "a": a, "b": b, "n_shared": shared.len(), "percent_agreement": po,
                "cohen_kappa": kappa, "scott_pi": (!undefined(pe_s)).then(|| (po - pe_s) / (1.0 - pe_s)),
            }));
        }
    }

    // Annotators and gold.
    let (mut pooled_n, mut pooled_correct) = (0, 0);
    let annotator_reports: Vec<Value> = annotators
        .iter()
        .map(|a| {
            let mut shares = Vec::new();
            let (mut n, mut correct) = (0, 0);
            let mut n_labels = 0;
            for (item, l) in items {
                let Some((_, mine)) = l.iter().find(|(x, _)| x == *a) else { continue };
                n_labels += 1;
                if l.len() >= 2 {
                    let same = l.iter().filter(|(x, v)| x != *a && identity(v) == identity(mine)).count();
                    shares.push(same as f64 / (l.len() - 1) as f64);
                }
                if let Some(g) = gold.get(&(scope.clone(), item.clone())) {
                    n += 1;
                    correct += usize::from(identity(g) == identity(mine));
                }
            }
            pooled_n += n;
            pooled_correct += correct;
            json!({
                "annotator_id": a,
                "n_labels": n_labels,
                "agreement_with_others": (!shares.is_empty()).then(|| shares.iter().sum::<f64>() / shares.len() as f64),
                "gold": wilson(n, correct),
            })
        })
        .collect();

    let mut report = json!({
        "project": scope.0, "task": scope.1,
        "n_labels": n_labels, "n_items": items.len(), "n_annotators": annotators.len(),
        "n_pairable_items": pairable.len(),
        "consensus_rate": consensus_rate,
        "agreement": {
            "percent_agreement": pa,
            "krippendorff_alpha": Value::Object(kalpha),
            "fleiss_kappa": fleiss,
            "gwet_ac1": gwet,
            "mean_cohen_kappa": (!kappas.is_empty()).then(|| kappas.iter().sum::<f64>() / kappas.len() as f64),
        },
        "gold": wilson(pooled_n, pooled_correct),
        "pairs": pairs,
        "annotators": annotator_reports,
    });
    if with_items {
        let consensus: Map<String, Value> = items
            .iter()
            .map(|(item, l)| {
                let c = counts(l);
                let top = *c.values().max().unwrap();
                let mut best: Vec<&Value> =
                    c.iter().filter(|(_, &n)| n == top).map(|(k, _)| &values[k]).collect();
                best.sort_by(|x, y| spec_order(x, y));
                (item.clone(), json!({"consensus": best[0], "tied": best.len() > 1}))
            })
            .collect();
        report["items"] = Value::Object(consensus);
    }
    report
}
