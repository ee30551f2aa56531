//! The materialised state of the quality dataflow's output, and the report objects of spec
//! section 3 formed from it. The view absorbs [`Fact`] updates in any order and batching; reading
//! it forms the final (float) numbers.

use std::collections::{BTreeMap, HashMap};

use foldhash::fast::RandomState;
use serde::Serialize;

use crate::dataflow::{Diff, Fact};
use crate::label::LabelId;
use crate::source::{AnnotatorId, Catalog, ItemId, ScopeId};
use crate::stats::{self, Coincidences, GoldAccuracy, Level};

/// Adds `delta` into the sum stored under `key`, removing the entry when it returns to zero.
fn add_sum<K: Ord, const N: usize>(map: &mut BTreeMap<K, [i64; N]>, key: K, delta: [i64; N]) {
    use std::collections::btree_map::Entry;
    match map.entry(key) {
        Entry::Vacant(entry) => {
            if delta.iter().any(|d| *d != 0) {
                entry.insert(delta);
            }
        }
        Entry::Occupied(mut entry) => {
            for (sum, d) in entry.get_mut().iter_mut().zip(delta) {
                *sum += d;
            }
            if entry.get().iter().all(|sum| *sum == 0) {
                entry.remove();
            }
        }
    }
}

/// Adds `delta` into the sum stored under `key` in a short list, removing the entry when it
/// returns to zero.
fn add_small<K: PartialEq, const N: usize>(list: &mut Vec<(K, [i64; N])>, key: K, delta: [i64; N]) {
    match list.iter().position(|(k, _)| *k == key) {
        Some(i) => {
            for (sum, d) in list[i].1.iter_mut().zip(delta) {
                *sum += d;
            }
            if list[i].1.iter().all(|sum| *sum == 0) {
                list.swap_remove(i);
            }
        }
        None => {
            if delta.iter().any(|d| *d != 0) {
                list.push((key, delta));
            }
        }
    }
}

/// A pair's confusion table: `((label_a, label_b), [count])`, a short list.
type ConfusionTable = Vec<((LabelId, LabelId), [i64; 1])>;
/// An item's consensus facts `(top count, label)` with their multiplicities; at rest, one per
/// tied label.
type ConsensusValues = Vec<((u32, LabelId), Diff)>;

/// Everything the view knows about one annotator within a scope.
#[derive(Debug, Default)]
struct AnnotatorState {
    /// `raters -> [items, same]`.
    by_raters: BTreeMap<u32, [i64; 2]>,
    /// `[answers, correct]` on gold items.
    gold: [i64; 2],
}

impl AnnotatorState {
    fn is_empty(&self) -> bool {
        self.by_raters.is_empty() && self.gold == [0, 0]
    }
}

/// The consolidated aggregates of one scope.
#[derive(Debug, Default)]
struct ScopeState {
    /// `raters -> [items, agreeing_pairs]`.
    items: BTreeMap<u32, [i64; 2]>,
    /// `(raters, label) -> [count]`.
    shares: BTreeMap<(u32, LabelId), [i64; 1]>,
    /// `(raters, c, k) -> [weight]`, `c <= k`.
    coincidences: BTreeMap<(u32, LabelId, LabelId), [i64; 1]>,
    annotators: HashMap<AnnotatorId, AnnotatorState, RandomState>,
    /// Confusion table per pair `(a, b)`, ordered by id.
    pairs: HashMap<(AnnotatorId, AnnotatorId), ConfusionTable, RandomState>,
    /// Consensus facts per item, with multiplicities (one live value at rest).
    consensus: HashMap<ItemId, ConsensusValues, RandomState>,
}

/// The live quality state: what the dataflow's output says now.
#[derive(Debug, Default)]
pub struct QualityView {
    /// Indexed by scope id.
    scopes: Vec<ScopeState>,
}

impl QualityView {
    /// Applies one update of the dataflow's output.
    pub fn apply(&mut self, fact: &Fact, diff: Diff) {
        match fact {
            Fact::ScopeItems {
                scope,
                raters,
                items,
                agreeing_pairs,
            } => {
                let s = self.scope_mut(*scope);
                add_sum(&mut s.items, *raters, [items * diff, agreeing_pairs * diff]);
            }
            Fact::CategoryShare {
                scope,
                raters,
                label,
                count,
            } => {
                let s = self.scope_mut(*scope);
                add_sum(&mut s.shares, (*raters, *label), [count * diff]);
            }
            Fact::Coincidence {
                scope,
                raters,
                c,
                k,
                weight,
            } => {
                let s = self.scope_mut(*scope);
                add_sum(&mut s.coincidences, (*raters, *c, *k), [weight * diff]);
            }
            Fact::AnnotatorItems {
                scope,
                annotator,
                raters,
                items,
                same,
            } => {
                let s = self.scope_mut(*scope);
                let a = s.annotators.entry(*annotator).or_default();
                add_sum(&mut a.by_raters, *raters, [items * diff, same * diff]);
                if a.is_empty() {
                    s.annotators.remove(annotator);
                }
            }
            Fact::AnnotatorGold {
                scope,
                annotator,
                answers,
                correct,
            } => {
                let s = self.scope_mut(*scope);
                let a = s.annotators.entry(*annotator).or_default();
                a.gold[0] += answers * diff;
                a.gold[1] += correct * diff;
                if a.is_empty() {
                    s.annotators.remove(annotator);
                }
            }
            Fact::PairCell {
                scope,
                a,
                b,
                label_a,
                label_b,
                count,
            } => {
                let s = self.scope_mut(*scope);
                let cells = s.pairs.entry((*a, *b)).or_default();
                add_small(cells, (*label_a, *label_b), [count * diff]);
                if cells.is_empty() {
                    s.pairs.remove(&(*a, *b));
                }
            }
            Fact::Consensus {
                scope,
                item,
                top,
                label,
            } => {
                let s = self.scope_mut(*scope);
                let values = s.consensus.entry(*item).or_default();
                let value = (*top, *label);
                match values.iter_mut().position(|(v, _)| *v == value) {
                    Some(i) => {
                        values[i].1 += diff;
                        if values[i].1 == 0 {
                            values.swap_remove(i);
                        }
                    }
                    None => values.push((value, diff)),
                }
                if values.is_empty() {
                    s.consensus.remove(item);
                }
            }
        }
    }

    fn scope_mut(&mut self, scope: ScopeId) -> &mut ScopeState {
        let index = scope as usize;
        if index >= self.scopes.len() {
            self.scopes.resize_with(index + 1, ScopeState::default);
        }
        &mut self.scopes[index]
    }

    /// Forms the report of spec section 3 for every scope that has labels.
    pub fn report(&self, catalog: &Catalog, with_items: bool) -> Report {
        let mut scopes: Vec<ScopeReport> = self
            .scopes
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.items.is_empty())
            .map(|(id, s)| s.report(id as ScopeId, catalog, with_items))
            .collect();
        scopes.sort_by(|a, b| (&a.project, &a.task).cmp(&(&b.project, &b.task)));
        Report { scopes }
    }

    /// Forms the report of one scope, if it has labels.
    pub fn scope_report(
        &self,
        scope: ScopeId,
        catalog: &Catalog,
        with_items: bool,
    ) -> Option<ScopeReport> {
        self.scopes
            .get(scope as usize)
            .filter(|s| !s.items.is_empty())
            .map(|s| s.report(scope, catalog, with_items))
    }
}

impl ScopeState {
    fn percent_agreement(&self) -> (i64, Option<f64>) {
        let pairable: i64 = self.items.range(2..).map(|(_, [items, _])| items).sum();
        if pairable == 0 {
            return (0, None);
        }
        let sum: f64 = self
            .items
            .range(2..)
            .map(|(&r, [_, agreeing])| *agreeing as f64 / (f64::from(r) * f64::from(r - 1)))
            .sum();
        (pairable, Some(sum / pairable as f64))
    }

    /// Category shares `pi_k` over all rated items, by label id.
    fn category_shares(&self) -> BTreeMap<LabelId, f64> {
        let rated: i64 = self.items.values().map(|[items, _]| items).sum();
        let mut shares: BTreeMap<LabelId, f64> = BTreeMap::new();
        for (&(r, label), [count]) in &self.shares {
            *shares.entry(label).or_default() += *count as f64 / f64::from(r);
        }
        for v in shares.values_mut() {
            *v /= rated as f64;
        }
        shares
    }

    fn coincidences(&self, catalog: &Catalog, numeric: bool) -> Coincidences {
        let mut marginals: BTreeMap<LabelId, i64> = BTreeMap::new();
        for (&(_, label), [count]) in self.shares.range((2, 0)..) {
            *marginals.entry(label).or_default() += count;
        }
        let mut categories: Vec<(LabelId, i64)> = marginals.into_iter().collect();
        if numeric {
            categories.sort_by(|a, b| catalog.labels.get(a.0).spec_cmp(catalog.labels.get(b.0)));
        }
        let index: HashMap<LabelId, usize> = categories
            .iter()
            .enumerate()
            .map(|(i, (l, _))| (*l, i))
            .collect();
        let q = categories.len();
        let mut matrix = vec![vec![0.0; q]; q];
        for (&(r, c, k), [weight]) in &self.coincidences {
            let (ci, ki) = (index[&c], index[&k]);
            let o = *weight as f64 / f64::from(r - 1);
            matrix[ci][ki] += o;
            if ci != ki {
                matrix[ki][ci] += o;
            }
        }
        Coincidences {
            values: categories
                .iter()
                .map(|(l, _)| catalog.labels.get(*l).as_number().unwrap_or(0.0))
                .collect(),
            marginals: categories.iter().map(|(_, n)| *n).collect(),
            matrix,
        }
    }

    fn report(&self, scope: ScopeId, catalog: &Catalog, with_items: bool) -> ScopeReport {
        let (project, task) = catalog.scope_name(scope);
        let n_items: i64 = self.items.values().map(|[items, _]| items).sum();
        let n_labels: i64 = self
            .items
            .iter()
            .map(|(&r, [items, _])| i64::from(r) * items)
            .sum();
        let (n_pairable_items, percent_agreement) = self.percent_agreement();

        let shares: Vec<f64> = self.category_shares().into_values().collect();
        let numeric = self
            .shares
            .keys()
            .all(|(_, label)| catalog.labels.get(*label).as_number().is_some());
        let coincidences = self.coincidences(catalog, numeric);
        let alpha_at = |level| Some(coincidences.alpha(level));
        let krippendorff_alpha = KrippendorffAlpha {
            nominal: coincidences.alpha(Level::Nominal),
            ordinal: if numeric {
                alpha_at(Level::Ordinal)
            } else {
                None
            },
            interval: if numeric {
                alpha_at(Level::Interval)
            } else {
                None
            },
            ratio: if numeric {
                alpha_at(Level::Ratio)
            } else {
                None
            },
        };

        let mut pairs: Vec<PairReport> = self
            .pairs
            .iter()
            .filter_map(|(&(a, b), cells)| {
                let (name_a, name_b) = (catalog.annotators.name(a), catalog.annotators.name(b));
                let swap = name_a > name_b;
                let cells: Vec<((u32, u32), i64)> = cells
                    .iter()
                    .map(|&((la, lb), [n])| (if swap { (lb, la) } else { (la, lb) }, n))
                    .collect();
                let stats = stats::pair_agreement(&cells)?;
                let (a, b) = if swap {
                    (name_b, name_a)
                } else {
                    (name_a, name_b)
                };
                Some(PairReport {
                    a: a.to_string(),
                    b: b.to_string(),
                    n_shared: stats.n_shared,
                    percent_agreement: stats.percent_agreement,
                    cohen_kappa: stats.cohen_kappa,
                    scott_pi: stats.scott_pi,
                })
            })
            .collect();
        pairs.sort_by(|x, y| (&x.a, &x.b).cmp(&(&y.a, &y.b)));
        let kappas: Vec<f64> = pairs.iter().filter_map(|p| p.cohen_kappa).collect();
        let mean_cohen_kappa =
            (!kappas.is_empty()).then(|| kappas.iter().sum::<f64>() / kappas.len() as f64);

        let mut annotators: Vec<AnnotatorReport> = self
            .annotators
            .iter()
            .filter(|(_, a)| !a.by_raters.is_empty())
            .map(|(&id, a)| {
                let n_labels: i64 = a.by_raters.values().map(|[items, _]| items).sum();
                let pairable: i64 = a.by_raters.range(2..).map(|(_, [items, _])| items).sum();
                let agreement_with_others = (pairable > 0).then(|| {
                    a.by_raters
                        .range(2..)
                        .map(|(&r, [_, same])| *same as f64 / f64::from(r - 1))
                        .sum::<f64>()
                        / pairable as f64
                });
                AnnotatorReport {
                    annotator_id: catalog.annotators.name(id).to_string(),
                    n_labels,
                    agreement_with_others,
                    gold: stats::gold_accuracy(a.gold[0], a.gold[1]),
                }
            })
            .collect();
        annotators.sort_by(|x, y| x.annotator_id.cmp(&y.annotator_id));

        let (answers, correct) = self
            .annotators
            .values()
            .fold((0, 0), |(n, c), a| (n + a.gold[0], c + a.gold[1]));

        let items = with_items.then(|| {
            self.consensus
                .iter()
                .filter_map(|(&item, values)| {
                    let live = values.iter().filter(|(_, d)| *d > 0);
                    let best = live
                        .clone()
                        .map(|((_, label), _)| catalog.labels.get(*label))
                        .min_by(|x, y| x.spec_cmp(y))?;
                    Some((
                        catalog.items.name(item).to_string(),
                        ItemConsensus {
                            consensus: best.to_json(),
                            tied: live.count() > 1,
                        },
                    ))
                })
                .collect()
        });

        ScopeReport {
            project: project.to_string(),
            task: task.to_string(),
            n_labels,
            n_items,
            n_annotators: annotators.len(),
            n_pairable_items,
            agreement: Agreement {
                percent_agreement,
                krippendorff_alpha,
                fleiss_kappa: stats::fleiss_kappa(percent_agreement, &shares),
                gwet_ac1: stats::gwet_ac1(percent_agreement, &shares),
                mean_cohen_kappa,
            },
            gold: stats::gold_accuracy(answers, correct),
            pairs,
            annotators,
            items,
        }
    }
}

/// The output of `labelqc report` (spec section 3).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scopes: Vec<ScopeReport>,
}

/// Quality numbers of one (project, task) scope.
#[derive(Clone, Debug, Serialize)]
pub struct ScopeReport {
    pub project: String,
    pub task: String,
    pub n_labels: i64,
    pub n_items: i64,
    pub n_annotators: usize,
    pub n_pairable_items: i64,
    pub agreement: Agreement,
    pub gold: Option<GoldAccuracy>,
    pub pairs: Vec<PairReport>,
    pub annotators: Vec<AnnotatorReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<BTreeMap<String, ItemConsensus>>,
}

/// Scope-level agreement.
#[derive(Clone, Debug, Serialize)]
pub struct Agreement {
    pub percent_agreement: Option<f64>,
    pub krippendorff_alpha: KrippendorffAlpha,
    pub fleiss_kappa: Option<f64>,
    pub gwet_ac1: Option<f64>,
    pub mean_cohen_kappa: Option<f64>,
}

/// Krippendorff's alpha per level; ordinal, interval and ratio appear only when every label of the
/// scope is a number (and are then `null` when undefined).
#[derive(Clone, Debug, Serialize)]
pub struct KrippendorffAlpha {
    pub nominal: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<Option<f64>>,
}

/// Agreement of two annotators on their shared items (`a < b` bytewise).
#[derive(Clone, Debug, Serialize)]
pub struct PairReport {
    pub a: String,
    pub b: String,
    pub n_shared: i64,
    pub percent_agreement: f64,
    pub cohen_kappa: Option<f64>,
    pub scott_pi: Option<f64>,
}

/// One annotator's numbers within a scope.
#[derive(Clone, Debug, Serialize)]
pub struct AnnotatorReport {
    pub annotator_id: String,
    pub n_labels: i64,
    pub agreement_with_others: Option<f64>,
    pub gold: Option<GoldAccuracy>,
}

/// An item's consensus label.
#[derive(Clone, Debug, Serialize)]
pub struct ItemConsensus {
    pub consensus: serde_json::Value,
    pub tied: bool,
}
