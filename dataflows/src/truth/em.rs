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
    /// Majority-vote shares per item (`items x K`): the cold start.
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
        let mut sorted = labels.to_vec();
        sorted.sort_unstable_by_key(|&(item, annotator, _)| (item, annotator));
        if let Some(w) = sorted.windows(2).find(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1)) {
            return Err(TruthError::DuplicateLabel { item: w[0].0, annotator: w[0].1 });
        }

        // Categories: distinct label ids, in the caller's order.
        let mut by_id: Vec<LabelId> = sorted.iter().map(|l| l.2).collect();
        by_id.sort_unstable();
        by_id.dedup();
        let mut ordered = by_id.clone();
        ordered.sort_by(|a, b| order(a, b).then(a.cmp(b)));
        let k = ordered.len();
        index_u32("labels", k)?;
        // Label index of the id at each position of `by_id`.
        let mut index_by_id = vec![0u32; k];
        for (index, id) in ordered.iter().enumerate() {
            let at = by_id.binary_search(id).expect("a category");
            index_by_id[at] = index as u32;
        }
        let label_index = |id: &LabelId| by_id.binary_search(id).ok().map(|at| index_by_id[at]);

        let mut annotators: Vec<u64> = sorted.iter().map(|l| l.1).collect();
        annotators.sort_unstable();
        annotators.dedup();
        index_u32("annotators", annotators.len())?;

        // Rows: the distinct (annotator index, label index) pairs, ascending.
        let mut keys: Vec<u64> = Vec::with_capacity(sorted.len());
        let mut label_key: Vec<u64> = Vec::with_capacity(sorted.len());
        for &(_, annotator, label) in &sorted {
            let a = annotators.binary_search(&annotator).expect("an annotator") as u64;
            let y = u64::from(label_index(&label).expect("a category"));
            let key = a * k as u64 + y;
            label_key.push(key);
            keys.push(key);
        }
        keys.sort_unstable();
        keys.dedup();
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
        let label_row: Vec<u32> =
            label_key.iter().map(|key| keys.binary_search(key).expect("a row") as u32).collect();
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
    /// categories and renormalised), majority-vote shares for the others.
    pub fn initial_posteriors(&self, warm: Option<&WarmStart>) -> Vec<f64> {
        let mut post = self.counts.clone();
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

/// The E-step's inputs: `log2 max(prior, EPS)` and `log2 err`.
struct Model<'a> {
    log2_prior: &'a [f64],
    log2_err: &'a [f64],
}

/// Items per block of [`pass`]: a block's logits and posteriors stay in the L1 cache.
const BLOCK: usize = 256;

/// One pass over the items, in item order. With a model, the E-step: each item's posterior
/// `post[i][c]` = `2^(L[i][c] - max_c L[i][c])` normalised, `L[i][c]` = the sum over its labels'
/// rows of `log2 err[row][c]`, plus `log2 prior[c]` (crowd-kit sums the labels first); clamped
/// items set to their gold answer. Then, for every item, the first half of the M-step: its
/// posterior added to `prior_sum` and to `sums` of each of its labels' rows. Returns the E-step's
/// `sum over items and c of q ln q`, `q = max(post, EPS)` (0 without a model).
///
/// `K` is the number of categories, or 0 for any number (`problem.k`): the common small `K` get
/// their own unrolled copy. The E-step runs by blocks of [`BLOCK`] items: their shifted logits,
/// then `exp2` over the whole block (a tight loop of C library calls, three times faster than a
/// call amid each item's work), then normalisation and the M-step's sums. Fusing the E-step with
/// the M-step's sums leaves every sum in the order of separate passes (the bitwise result is the
/// same) and reads each item's labels once.
// Index loops over `0..k` with `k` a constant let the compiler unroll them across several arrays.
#[allow(clippy::needless_range_loop)]
fn pass<const K: usize>(
    problem: &Problem,
    model: Option<&Model<'_>>,
    post: &mut [f64],
    prior_sum: &mut [f64],
    sums: &mut [f64],
) -> f64 {
    let k = if K == 0 { problem.k } else { K };
    assert_eq!(k, problem.k);
    let n_items = problem.items.len();
    let prior_sum = &mut prior_sum[..k];
    let mut logits = vec![0.0; BLOCK * k];
    // The entropy term `sum q ln q` (q clipped at EPS), with ln q = (L - max) ln 2 - ln z for an
    // item's normaliser z, in parts: `linear`, the sum of q (L - max) over entries q >= EPS (times
    // ln 2 at the end); `small`, the count of entries q < EPS (each EPS ln EPS); the sum of ln z
    // over items, as the logarithm of their product (no logarithm per item); and `correction`,
    // (1 - the item's entries q >= EPS) ln z for the items with an entry under EPS, whose kept
    // entries do not sum to 1.
    let (mut linear, mut small, mut correction) = (0.0, 0usize, 0.0);
    let mut log_product = LogProduct::default();
    let mut clamped = problem.clamped.iter().peekable();
    for first in (0..n_items).step_by(BLOCK) {
        let last = (first + BLOCK).min(n_items);
        let block = &mut post[first * k..last * k];
        let logits = &mut logits[..(last - first) * k];
        let labels_of =
            |i: usize| &problem.label_row[problem.item_start[i] as usize..problem.item_start[i + 1] as usize];
        if let Some(model) = model {
            for (i, shifted) in (first..last).zip(logits.chunks_exact_mut(k)) {
                let acc = &mut shifted[..k];
                acc.fill(0.0);
                for &row in labels_of(i) {
                    let l = &model.log2_err[row as usize * k..row as usize * k + k];
                    for c in 0..k {
                        acc[c] += l[c];
                    }
                }
                let mut max = f64::NEG_INFINITY;
                for c in 0..k {
                    acc[c] += model.log2_prior[c];
                    max = max.max(acc[c]);
                }
                for a in acc.iter_mut() {
                    *a -= max;
                }
            }
            for (out, l) in block.iter_mut().zip(logits.iter()) {
                *out = l.exp2();
            }
        }
        for (i, (out, shifted)) in (first..last).zip(block.chunks_exact_mut(k).zip(logits.chunks_exact(k))) {
            let out = &mut out[..k];
            if let Some(&&(_, y)) = clamped.peek().filter(|c| c.0 as usize == i) {
                clamped.next();
                if model.is_some() {
                    out.fill(0.0);
                    out[y as usize] = 1.0;
                    // The clipped one-hot posterior: k - 1 entries at EPS, and 1 ln 1 = 0.
                    small += k - 1;
                }
            } else if model.is_some() {
                let mut z = 0.0;
                for o in out.iter() {
                    z += o;
                }
                let (mut kept, mut under) = (0.0, 0);
                for c in 0..k {
                    out[c] /= z;
                    // Branch-free: which entries fall under EPS is unpredictable.
                    let below = out[c] < EPS;
                    let q = if below { 0.0 } else { out[c] };
                    linear += q * shifted[c];
                    kept += q;
                    under += usize::from(below);
                }
                log_product.push(z);
                if under > 0 {
                    small += under;
                    correction += (1.0 - kept) * z.ln();
                }
            }
            for c in 0..k {
                prior_sum[c] += out[c];
            }
            for &row in labels_of(i) {
                let s = &mut sums[row as usize * k..row as usize * k + k];
                for c in 0..k {
                    s[c] += out[c];
                }
            }
        }
    }
    if model.is_none() {
        return 0.0;
    }
    linear * std::f64::consts::LN_2 - (log_product.ln() - correction) + small as f64 * (EPS * EPS.ln())
}

/// The logarithm of a product of many numbers of at least 1 (the E-step's normalisers, each
/// between 1 and K) without a logarithm per factor and without overflow: the product is kept as a
/// mantissa and a power of two, rescaled exactly when it grows large.
#[derive(Debug)]
struct LogProduct {
    mantissa: f64,
    exponent: i64,
}

impl Default for LogProduct {
    fn default() -> Self {
        LogProduct { mantissa: 1.0, exponent: 0 }
    }
}

impl LogProduct {
    fn push(&mut self, factor: f64) {
        self.mantissa *= factor;
        if self.mantissa > 1e300 {
            // Split off the binary exponent; the mantissa becomes [1, 2), exactly.
            let bits = self.mantissa.to_bits();
            self.exponent += ((bits >> 52) & 0x7ff) as i64 - 1023;
            self.mantissa = f64::from_bits((bits & !(0x7ff << 52)) | (1023 << 52));
        }
    }

    fn ln(&self) -> f64 {
        self.mantissa.ln() + self.exponent as f64 * std::f64::consts::LN_2
    }
}

/// [`pass`] with the copy for the problem's number of categories.
fn pass_any(
    problem: &Problem,
    model: Option<&Model<'_>>,
    post: &mut [f64],
    prior_sum: &mut [f64],
    sums: &mut [f64],
) -> f64 {
    prior_sum.fill(0.0);
    sums.fill(0.0);
    match problem.k {
        2 => pass::<2>(problem, model, post, prior_sum, sums),
        3 => pass::<3>(problem, model, post, prior_sum, sums),
        4 => pass::<4>(problem, model, post, prior_sum, sums),
        5 => pass::<5>(problem, model, post, prior_sum, sums),
        6 => pass::<6>(problem, model, post, prior_sum, sums),
        _ => pass::<0>(problem, model, post, prior_sum, sums),
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
    pass_any(problem, None, &mut post, &mut state.prior_sum, &mut state.sums);
    finish(problem, &mut state);
    let n_labels = problem.label_row.len() as f64;
    let mut loss = f64::NEG_INFINITY;
    let mut iterations = 0;
    let mut converged = false;
    while iterations < options.max_iterations {
        let model = Model { log2_prior: &state.log2_prior, log2_err: &state.log2_err };
        let neg_entropy = pass_any(problem, Some(&model), &mut post, &mut state.prior_sum, &mut state.sums);
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
