//! The dense core of Dawid–Skene expectation–maximisation: one scope's live labels laid out as
//! flat arrays indexed by small integers (items, annotators, labels and the (annotator, observed
//! label) rows of the confusion matrices), and the EM loop over them, step for step as crowd-kit
//! 1.4.2's `DawidSkene.fit` computes it (see the parent module for the formulas).
//!
//! Layout: the labels sorted by (item, annotator), each reduced to the index of its confusion row;
//! posteriors `items x K`, confusion matrices `rows x K` (row = one label an annotator used,
//! column = the true label), priors `K`, all row-major `f64`. The inner loops read the labels
//! sequentially and gather or scatter rows of the small confusion table, so a pass over a million
//! labels stays in cache-friendly order. Every sum is formed in this fixed order, so the result
//! does not depend on the order of the input.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState;

use super::pass::{pass_all, Model, StripeSums};
use super::{FitOptions, TruthError, WarmStart, EPS};
use crate::label::LabelId;

/// One scope's labels as dense indices.
#[derive(Debug)]
pub(super) struct Problem {
    /// Number of categories `K`.
    pub k: usize,
    /// The categories (labels seen), in the caller's order; index = label index.
    pub labels: Vec<LabelId>,
    /// Item ids, ascending; index = item index.
    pub items: Vec<u64>,
    /// Labels of item `i` are `item_start[i]..item_start[i + 1]` in `label_row`.
    pub item_start: Vec<u32>,
    /// Per label (sorted by item, then annotator): its confusion row.
    pub label_row: Vec<u32>,
    /// Annotator ids, ascending; index = annotator index.
    pub annotators: Vec<u64>,
    /// Rows of annotator `a` are `annotator_rows[a]..annotator_rows[a + 1]`.
    pub annotator_rows: Vec<u32>,
    /// Per row: the observed label's index (ascending within an annotator).
    pub row_label: Vec<u32>,
    /// Majority-vote shares per item (`items x K`): the cold start (taken by
    /// [`Problem::initial_posteriors`]).
    pub counts: Vec<f64>,
    /// Items clamped to a gold answer: (item index, label index), ascending by item.
    pub clamped: Vec<(u32, u32)>,
}

fn too_large(what: &'static str, n: usize) -> TruthError {
    TruthError::TooLarge { what, n }
}

fn index_u32(what: &'static str, n: usize) -> Result<u32, TruthError> {
    u32::try_from(n).map_err(|_| too_large(what, n))
}

impl Problem {
    /// Lays out `labels` (item, annotator, label), ordering categories by `order` (ties between
    /// distinct ids broken by id), with `gold` (item, label) clamped when `clamp` is set.
    pub fn new(
        labels: &[(u64, u64, LabelId)],
        gold: &[(u64, LabelId)],
        order: impl Fn(&LabelId, &LabelId) -> Ordering,
        clamp: bool,
    ) -> Result<Problem, TruthError> {
        index_u32("labels", labels.len())?;
        // The operators pass their labels sorted (a consolidated log): no copy then.
        let sorted: std::borrow::Cow<'_, [(u64, u64, LabelId)]> =
            if labels.is_sorted_by_key(|&(item, annotator, _)| (item, annotator)) {
                labels.into()
            } else {
                let mut sorted = labels.to_vec();
                sorted.sort_unstable_by_key(|&(item, annotator, _)| (item, annotator));
                sorted.into()
            };
        if let Some(w) = sorted.windows(2).find(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1)) {
            return Err(TruthError::DuplicateLabel { item: w[0].0, annotator: w[0].1 });
        }

        // Categories: distinct label ids, in the caller's order; each id's index in a hash map
        // (a pass over the labels, not a sort of them).
        let mut ordered: Vec<LabelId> = distinct(sorted.iter().map(|l| l.2));
        ordered.sort_by(|a, b| order(a, b).then(a.cmp(b)));
        let k = ordered.len();
        index_u32("labels", k)?;
        let label_of: HashMap<LabelId, u32, RandomState> =
            ordered.iter().enumerate().map(|(index, &id)| (id, index as u32)).collect();
        let label_index = |id: &LabelId| label_of.get(id).copied();

        let mut annotators: Vec<u64> = distinct(sorted.iter().map(|l| l.1));
        annotators.sort_unstable();
        index_u32("annotators", annotators.len())?;
        let annotator_of: HashMap<u64, u64, RandomState> =
            annotators.iter().enumerate().map(|(index, &id)| (id, index as u64)).collect();

        // Rows: the distinct (annotator index, label index) pairs, ascending.
        let label_key: Vec<u64> = sorted
            .iter()
            .map(|(_, annotator, label)| {
                annotator_of[annotator] * k as u64 + u64::from(label_index(label).expect("a category"))
            })
            .collect();
        let (keys, label_row) = rows(&label_key, annotators.len() * k);
        index_u32("confusion rows", keys.len())?;
        let mut annotator_rows = vec![0u32; annotators.len() + 1];
        let mut row_label = Vec::with_capacity(keys.len());
        for &key in &keys {
            annotator_rows[(key / k as u64) as usize + 1] += 1;
            row_label.push((key % k as u64) as u32);
        }
        for a in 0..annotators.len() {
            annotator_rows[a + 1] += annotator_rows[a];
        }
        drop(label_key);
        drop(keys);

        // Items and their majority-vote shares.
        let mut items = Vec::new();
        let mut item_start = Vec::new();
        let mut counts = Vec::new();
        for (at, &(item, _, label)) in sorted.iter().enumerate() {
            if items.last() != Some(&item) {
                items.push(item);
                item_start.push(at as u32);
                counts.extend(std::iter::repeat_n(0.0, k));
            }
            let base = counts.len() - k;
            counts[base + label_index(&label).expect("a category") as usize] += 1.0;
        }
        item_start.push(sorted.len() as u32);
        for (i, row) in counts.chunks_exact_mut(k.max(1)).enumerate() {
            let n = f64::from(item_start[i + 1] - item_start[i]);
            row.iter_mut().for_each(|c| *c /= n);
        }

        let mut clamped = Vec::new();
        if clamp {
            for &(item, label) in gold {
                // A gold answer no annotator of the scope gave is not a category (spec section 2):
                // it clamps nothing.
                if let (Ok(i), Some(y)) = (items.binary_search(&item), label_index(&label)) {
                    clamped.push((i as u32, y));
                }
            }
            clamped.sort_unstable();
            if let Some(w) = clamped.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(TruthError::DuplicateGold { item: items[w[0].0 as usize] });
            }
        }

        Ok(Problem {
            k,
            labels: ordered,
            items,
            item_start,
            label_row,
            annotators,
            annotator_rows,
            row_label,
            counts,
            clamped,
        })
    }

    /// The starting posteriors: the warm start's for the items it knows (mapped to this scope's
    /// categories and renormalised), majority-vote shares for the others. Takes the shares (they
    /// serve only as the start).
    pub fn initial_posteriors(&mut self, warm: Option<&WarmStart>) -> Vec<f64> {
        let mut post = std::mem::take(&mut self.counts);
        let Some(warm) = warm else { return post };
        let k = self.k;
        // Index in the warm start's labels of each category, if it had it.
        let map: Vec<Option<usize>> =
            self.labels.iter().map(|id| warm.labels.iter().position(|w| w == id)).collect();
        let wk = warm.labels.len();
        let mut j = 0;
        for (i, item) in self.items.iter().enumerate() {
            while j < warm.items.len() && warm.items[j] < *item {
                j += 1;
            }
            if j == warm.items.len() || warm.items[j] != *item {
                continue;
            }
            let old = &warm.posteriors[j * wk..(j + 1) * wk];
            let mut row = vec![0.0; k];
            for (c, m) in map.iter().enumerate() {
                if let Some(m) = m {
                    row[c] = old[*m];
                }
            }
            let total: f64 = row.iter().sum();
            if total > 0.0 && total.is_finite() {
                for (dst, v) in post[i * k..(i + 1) * k].iter_mut().zip(&row) {
                    *dst = v / total;
                }
            }
        }
        post
    }
}

/// The distinct values of `values`, in no particular order.
fn distinct<T: Copy + Eq + std::hash::Hash>(values: impl Iterator<Item = T>) -> Vec<T> {
    let set: HashSet<T, RandomState> = values.collect();
    set.into_iter().collect()
}

/// The distinct keys of `label_key` (each below `span`), ascending, and each label's index among
/// them. A table indexed by key when `span` is small next to the labels (annotators times
/// categories: the usual case), a sort otherwise.
fn rows(label_key: &[u64], span: usize) -> (Vec<u64>, Vec<u32>) {
    if span <= 4 * label_key.len().max(1 << 14) {
        let mut row_of = vec![u32::MAX; span];
        for &key in label_key {
            row_of[key as usize] = 0;
        }
        let mut keys = Vec::new();
        for (key, row) in row_of.iter_mut().enumerate() {
            if *row == 0 {
                *row = keys.len() as u32;
                keys.push(key as u64);
            }
        }
        let label_row = label_key.iter().map(|&key| row_of[key as usize]).collect();
        (keys, label_row)
    } else {
        let mut keys = label_key.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let label_row = label_key.iter().map(|key| keys.binary_search(key).expect("a row") as u32).collect();
        (keys, label_row)
    }
}

/// The EM state and its result.
#[derive(Debug)]
pub(super) struct Em {
    /// Posteriors `items x K`, unclipped.
    pub post: Vec<f64>,
    /// Priors: the mean posterior, unclipped.
    pub prior: Vec<f64>,
    /// Confusion matrices `rows x K`: P(observed = row's label | true = column).
    pub err: Vec<f64>,
    /// Completed iterations (E-step, M-step and bound each).
    pub iterations: u32,
    /// Whether the bound's change fell under the tolerance before the iteration limit.
    pub converged: bool,
    /// The evidence lower bound per label at the last iteration (`-inf` with none).
    pub elbo: f64,
}

/// Sets the posteriors of clamped items to their gold answer.
fn clamp(problem: &Problem, post: &mut [f64]) {
    let k = problem.k;
    for &(i, y) in &problem.clamped {
        let row = &mut post[i as usize * k..(i as usize + 1) * k];
        row.fill(0.0);
        row[y as usize] = 1.0;
    }
}

/// The rest of the M-step and the priors: `err[row][c]` = `max(sums[row][c], EPS)` over the sum
/// of that over the annotator's rows; `log2_err` its base-2 logarithm; `prior` = `prior_sum` over
/// the number of items, and `log2_prior` = `log2 max(prior, EPS)`.
fn finish(problem: &Problem, state: &mut State) {
    let k = problem.k;
    let n = problem.items.len() as f64;
    for ((p, l), s) in state.prior.iter_mut().zip(&mut state.log2_prior).zip(&state.prior_sum) {
        *p = s / n;
        *l = p.max(EPS).log2();
    }
    let mut total = vec![0.0; k];
    for rows in problem.annotator_rows.windows(2) {
        let (start, end) = (rows[0] as usize * k, rows[1] as usize * k);
        total.fill(0.0);
        for row in state.sums[start..end].chunks_exact(k) {
            for (t, s) in total.iter_mut().zip(row) {
                *t += s.max(EPS);
            }
        }
        let sums = state.sums[start..end].chunks_exact(k);
        for (row, out) in sums.zip(state.err[start..end].chunks_exact_mut(k)) {
            for ((e, s), t) in out.iter_mut().zip(row).zip(&total) {
                *e = s.max(EPS) / t;
            }
        }
    }
    for (l, e) in state.log2_err.iter_mut().zip(&state.err) {
        *l = e.log2();
    }
}

/// The bound's first term: `sum over labels (item i, row r) and c of post[i][c] (ln err[r][c] +
/// ln max(prior[c], EPS))` (crowd-kit adds the log-prior once per label, not once per item),
/// formed per row from the M-step's sums of the same posteriors.
fn joint_expectation(problem: &Problem, state: &State) -> f64 {
    let k = problem.k;
    let mut by_label = vec![0.0; k];
    let mut joint = 0.0;
    for (s, e) in state.sums.chunks_exact(k).zip(state.err.chunks_exact(k)) {
        for ((b, s), e) in by_label.iter_mut().zip(s).zip(e) {
            joint += s * e.ln();
            *b += s;
        }
    }
    for (b, p) in by_label.iter().zip(&state.prior) {
        joint += b * p.max(EPS).ln();
    }
    joint
}

/// The parameters and work buffers of EM.
struct State {
    prior: Vec<f64>,
    log2_prior: Vec<f64>,
    prior_sum: Vec<f64>,
    sums: Vec<f64>,
    err: Vec<f64>,
    log2_err: Vec<f64>,
    /// The sums of the stripes after the first (see [`super::pass`]).
    buffers: Vec<StripeSums>,
}

/// The threads that share a fit's passes for its whole run: `threads` of them, at most one per
/// stripe ([`super::pass::stripes`]); none for a problem of one stripe.
fn pool(problem: &Problem, threads: usize) -> Option<rayon::ThreadPool> {
    super::fit_threads(threads.min(super::pass::stripes(problem)))
}

/// Runs EM from `post` (the starting posteriors): clamping, priors and M-step, then up to
/// `options.max_iterations` times E-step, priors, M-step and the bound per label, stopping when
/// the bound rises by less than `options.tolerance` or falls.
pub(super) fn run(problem: &Problem, mut post: Vec<f64>, options: &FitOptions) -> Em {
    let (k, rows) = (problem.k, problem.row_label.len());
    let mut state = State {
        prior: vec![0.0; k],
        log2_prior: vec![0.0; k],
        prior_sum: vec![0.0; k],
        sums: vec![0.0; rows * k],
        err: vec![0.0; rows * k],
        log2_err: vec![0.0; rows * k],
        buffers: Vec::new(),
    };
    if problem.items.is_empty() {
        return Em {
            post,
            prior: state.prior,
            err: state.err,
            iterations: 0,
            converged: true,
            elbo: f64::NEG_INFINITY,
        };
    }
    clamp(problem, &mut post);
    let pool = pool(problem, options.threads);
    let pool = pool.as_ref();
    pass_all(problem, None, &mut post, &mut state.prior_sum, &mut state.sums, &mut state.buffers, pool);
    finish(problem, &mut state);
    let n_labels = problem.label_row.len() as f64;
    let mut loss = f64::NEG_INFINITY;
    let mut iterations = 0;
    let mut converged = false;
    while iterations < options.max_iterations {
        let model = Model { log2_prior: &state.log2_prior, log2_err: &state.log2_err };
        let (prior_sum, sums, buffers) = (&mut state.prior_sum, &mut state.sums, &mut state.buffers);
        let neg_entropy = pass_all(problem, Some(&model), &mut post, prior_sum, sums, buffers, pool);
        finish(problem, &mut state);
        let elbo = (joint_expectation(problem, &state) - neg_entropy) / n_labels;
        iterations += 1;
        // crowd-kit stops on a rise under the tolerance, and on any fall.
        let change = elbo - loss;
        loss = elbo;
        if change < options.tolerance {
            converged = true;
            break;
        }
    }
    Em { post, prior: state.prior, err: state.err, iterations, converged, elbo: loss }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_by_table_and_by_sort_agree() {
        let label_key: Vec<u64> = vec![7, 3, 7, 12, 0, 3, 40_000];
        // A span this small next to the labels uses the table; a huge one the sort.
        let by_table = rows(&label_key, 40_001);
        let by_sort = rows(&label_key, usize::MAX / 2);
        assert_eq!(by_table, by_sort);
        assert_eq!(by_table, (vec![0, 3, 7, 12, 40_000], vec![2, 1, 2, 3, 0, 1, 4]));
    }
}
