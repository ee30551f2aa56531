//! Truth inference (spec section 2.1): the Dawid–Skene model fitted by expectation–maximisation
//! over one scope's live labels, exactly as crowd-kit 1.4.2's `DawidSkene(n_iter=1000,
//! tol=1e-10).fit(df)` computes it, as a pure function of plain ids.
//!
//! The model (Dawid & Skene 1979, "Maximum likelihood estimation of observer error-rates using
//! the EM algorithm", Applied Statistics 28(1):20–28): each item `i` has a latent true label `z_i`
//! with prior `P(z_i = c) = prior[c]`; annotator `w` answers `y` on an item of true label `c` with
//! probability `err[w][y][c]`, its confusion matrix. The steps, as crowd-kit's source has them
//! (`crowdkit/aggregation/classification/dawid_skene.py`), with `EPS = 1e-10`:
//!
//! 1. **Start:** each item's posterior `post[i][c]` is its majority-vote share, the labels `c` on
//!    it over its label count (or a [`WarmStart`]); gold items are clamped when asked (below).
//!    `prior[c]` = the mean of `post[i][c]` over items; then an M-step.
//! 2. **M-step:** `sums[w][y][c]` = the sum of `post[i][c]` over the items on which `w` answered
//!    `y`, for the labels `y` that `w` used; `err[w][y][c] = max(sums[w][y][c], EPS) / sum over y'
//!    of max(sums[w][y'][c], EPS)`.
//! 3. **E-step:** `L[i][c] = sum over labels (w, y) on i of log2 err[w][y][c] + log2 max(prior[c],
//!    EPS)`; `post[i][c] = 2^(L[i][c] - max_c L[i][c])`, normalised over `c`; gold items clamped
//!    again; `prior` = the mean posterior; an M-step.
//! 4. **Bound:** the evidence lower bound per label, `(sum over labels (i, w, y) and c of
//!    post[i][c] (ln err[w][y][c] + ln max(prior[c], EPS)) - sum over i and c of q ln q) / n_labels`
//!    with `q = max(post[i][c], EPS)`. Step 3 and 4 repeat until the bound rises by less than the
//!    tolerance (`1e-10`; a fall stops too), at most 1,000 times. A bound of `-inf` precedes the
//!    first iteration, so at least two iterations run before the criterion can stop.
//!
//! Results, as crowd-kit reports them: posteriors clipped below at `EPS` (not renormalised: its
//! bound clips its posteriors in place), priors the last mean posterior (unclipped), confusion
//! matrices those of the last M-step. The truth label is the label of highest posterior, ties
//! toward the smallest label in the caller's order (as consensus breaks them).
//!
//! **Gold clamping** (`truth.clamp_gold`, crowd-kit's `true_labels`): a gold item's posterior is
//! set to its gold answer, one for that label and zero elsewhere, at the start and after every
//! E-step. A gold answer that no annotator of the scope gave is not a category of the scope and
//! clamps nothing; gold on an item without labels is not an item of the fit.
//!
//! **Warm start** (live refresh): EM started from a previous fit's posteriors ([`WarmStart`])
//! instead of majority-vote shares, with the same steps and criterion. crowd-kit's bound adds the
//! log-prior once per label rather than once per item, so it is not the objective EM raises: it
//! rises along the cold trajectory, then tops out, and the criterion stops there, which is not
//! always a fixed point of EM (two more iterations move krippendorff_wikipedia_3x15's posteriors
//! by 1e-2). A warm start therefore stops after the two iterations the criterion needs whenever
//! the bound does not rise: on the same values when started at a fixed point, and after a few
//! relabels near the previous fit adjusted to the new labels (on the 1M-label benchmark, 20
//! relabels: 2 iterations, no truth label different from a cold refit, posteriors within 6e-2
//! of it). Only a cold start computes what crowd-kit computes: the report uses the cold start, and
//! a cold refit makes live values equal to the report's.
//!
//! Exactness: categories are ordered by the caller's order, items and annotators by id, and every
//! sum is formed in that order, so the input's order does not change the result; large scopes
//! are summed over a fixed number of stripes of items, so neither does the number of threads
//! ([`FitOptions::threads`]).
//!
//! Cost: one pass over the labels per iteration, on flat arrays. On the benchmark's 1M labels
//! (200k items, 1,000 annotators, 4 classes; `cargo bench --bench truth`) the fit takes 82
//! iterations, as crowd-kit does, in 0.66 s on one thread and 0.39 s on two, and equals
//! crowd-kit's values within 3e-14 (crowd-kit takes 28 s).

mod approx;
mod em;
mod pass;

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::label::LabelId;

/// crowd-kit's clipping floor of probabilities (`_EPS = 10^-10`).
pub const EPS: f64 = 1e-10;

/// The iteration limit the spec fixes (crowd-kit's `n_iter=1000`).
pub const MAX_ITERATIONS: u32 = 1000;

/// The tolerance on the change of the evidence lower bound per label that the spec fixes
/// (crowd-kit's `tol=1e-10`).
pub const TOLERANCE: f64 = 1e-10;

/// Why a scope's labels cannot be fitted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TruthError {
    /// Live labels have one label per (item, annotator); two are a caller's error.
    #[error(
        "item {item} has two labels of annotator {annotator}; live labels have one per (item, annotator)"
    )]
    DuplicateLabel { item: u64, annotator: u64 },
    /// Gold answers have one per item.
    #[error("item {item} has two gold answers; a gold answer has one per item")]
    DuplicateGold { item: u64 },
    /// More labels, annotators, categories or confusion rows than 32-bit indices address.
    #[error("{n} {what} in one scope; at most 4294967295 fit")]
    TooLarge { what: &'static str, n: usize },
}

/// How EM runs. The spec's values are the [`Default`]: 1,000 iterations, tolerance `1e-10`, no
/// clamping.
#[derive(Clone, Debug, PartialEq)]
pub struct FitOptions {
    /// The most iterations (E-step, M-step, bound) to run.
    pub max_iterations: u32,
    /// Stop when the bound per label rises by less than this.
    pub tolerance: f64,
    /// Clamp gold items' posteriors to their gold answers (`truth.clamp_gold`).
    pub clamp_gold: bool,
    /// Threads a pass over the items may use (at least 1). The result does not depend on it:
    /// large scopes are cut into a fixed number of stripes of items whatever the threads, and
    /// their sums added in one order.
    pub threads: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions { max_iterations: MAX_ITERATIONS, tolerance: TOLERANCE, clamp_gold: false, threads: 1 }
    }
}

/// Settings of truth inference (`[truth]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TruthSettings {
    /// Whether Dawid–Skene truth is inferred at all (default `true`). Off, no scope is fitted:
    /// every `truth` (item and scope) and every annotator's `confusion` is `null`, and routing,
    /// which settles an item on its posterior, settles only items with a gold answer. Consensus,
    /// trusted consensus and every other number are unchanged. For reports and services that do
    /// not use truth or routes: the fit is the report's largest single cost, and live refits of
    /// large scopes take a share of the workers.
    pub enabled: bool,
    /// Live: the shortest time between two refreshes of one scope's truth, in milliseconds
    /// (default 1000); a changed scope is refreshed within about twice this while a warm fit of
    /// it takes at most a fifth of that (see [`crate::scope_truth`]). The report always computes
    /// the converged values once.
    pub refresh_ms: u64,
    /// Clamp gold items' posteriors to their gold answers (default `false`: crowd-kit's
    /// `fit(df)` without `true_labels`).
    pub clamp_gold: bool,
    /// Live: a warm refit republishes an item's truth only when its truth label changes or one of
    /// its posterior probabilities moves by at least this much from the published one (default
    /// 0.001; 0 republishes every change). The cold fit that settles a scope publishes every
    /// change, so settled values are the report's.
    pub live_tolerance: f64,
}

impl Default for TruthSettings {
    fn default() -> Self {
        TruthSettings { enabled: true, refresh_ms: 1000, clamp_gold: false, live_tolerance: 0.001 }
    }
}

/// A setting outside its range; `field` is its dotted name (`truth.refresh_ms`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{field}`: {message}")]
pub struct SettingsError {
    pub field: &'static str,
    pub message: String,
}

impl TruthSettings {
    /// Checks `refresh_ms` (1 ms to one hour) and `live_tolerance` (0 to 1).
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !(1..=3_600_000).contains(&self.refresh_ms) {
            return Err(SettingsError {
                field: "truth.refresh_ms",
                message: format!("{} is out of range; use 1 to 3600000 milliseconds", self.refresh_ms),
            });
        }
        if !(0.0..=1.0).contains(&self.live_tolerance) {
            return Err(SettingsError {
                field: "truth.live_tolerance",
                message: format!(
                    "{} is out of range; use 0 (republish every change) to 1 (republish only when an item's truth label changes)",
                    self.live_tolerance
                ),
            });
        }
        Ok(())
    }

    /// The options of a fit under these settings (the spec's iteration limit and tolerance).
    pub fn fit_options(&self) -> FitOptions {
        FitOptions { clamp_gold: self.clamp_gold, ..FitOptions::default() }
    }
}

/// The posteriors of a previous fit, to start the next one from (live refresh).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WarmStart {
    /// The categories of the previous fit, in its order.
    labels: Vec<LabelId>,
    /// Item ids, ascending.
    items: Vec<u64>,
    /// Unclipped posteriors, `items x labels`, row-major.
    posteriors: Vec<f64>,
}

impl WarmStart {
    /// Number of items it holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds no item (a warm start from it is a cold start).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// One item's truth: the label of highest posterior and the posterior of every category.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemTruth {
    pub item: u64,
    /// The label of highest posterior (ties toward the smallest label in the caller's order).
    pub label: LabelId,
    /// The posterior of `label` (clipped at [`EPS`]).
    pub p: f64,
    /// `(label, P(true label = label | labels))` for every category, in the caller's order,
    /// clipped below at [`EPS`].
    pub posterior: SmallVec<[(LabelId, f64); 4]>,
}

/// One cell of a confusion matrix.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfusionCell {
    /// The label the annotator gave.
    pub observed: LabelId,
    /// The true label.
    pub truth: LabelId,
    /// `P(annotator answers observed | true label is truth)`.
    pub p: f64,
}

/// One annotator's confusion matrix: a cell for every label it used and every category, ordered
/// by observed label, then true label (both in the caller's order). For each true label the
/// cells over the labels it used sum to 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnotatorConfusion {
    pub annotator: u64,
    pub cells: Vec<ConfusionCell>,
}

/// The Dawid–Skene fit of one scope.
#[derive(Debug)]
pub struct TruthFit {
    problem: em::Problem,
    em: em::Em,
}

/// `threads` threads for a fit's work (its passes, the report's sort of a scope's labels), named
/// `labelqc-fit-N`; `None` for one thread, or, with a warning, when the system refuses them: the
/// caller then does the work itself, to the same result.
pub(crate) fn fit_threads(threads: usize) -> Option<rayon::ThreadPool> {
    if threads <= 1 {
        return None;
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("labelqc-fit-{i}"))
        .build()
        .inspect_err(
            |error| tracing::warn!(%error, threads, "cannot start the fit's threads; working on one"),
        )
        .ok()
}

/// Fits Dawid–Skene to one scope's live labels.
///
/// - `labels`: `(item, annotator, label)`, one per (item, annotator), in any order.
/// - `gold`: `(item, label)` gold answers, one per item; used only with `options.clamp_gold`.
/// - `order`: the order of labels for output and tie-breaks (the spec's label order), a total
///   order; distinct ids it calls equal are ordered by id.
/// - `warm`: a previous fit's posteriors to start from instead of majority-vote shares.
///
/// Errors: [`TruthError::DuplicateLabel`], [`TruthError::DuplicateGold`] (clamping only),
/// [`TruthError::TooLarge`]. No labels give an empty fit (no items, no priors, 0 iterations).
pub fn fit(
    labels: &[(u64, u64, LabelId)],
    gold: &[(u64, LabelId)],
    order: impl Fn(&LabelId, &LabelId) -> Ordering,
    options: &FitOptions,
    warm: Option<&WarmStart>,
) -> Result<TruthFit, TruthError> {
    let mut problem = em::Problem::new(labels, gold, order, options.clamp_gold)?;
    let start = problem.initial_posteriors(warm);
    let em = em::run(&problem, start, options);
    Ok(TruthFit { problem, em })
}

impl TruthFit {
    /// The scope's categories (the labels seen), in the caller's order.
    pub fn labels(&self) -> &[LabelId] {
        &self.problem.labels
    }

    /// Iterations run (at most the limit; 0 without labels).
    pub fn iterations(&self) -> u32 {
        self.em.iterations
    }

    /// Whether the bound's change fell under the tolerance before the iteration limit.
    pub fn converged(&self) -> bool {
        self.em.converged
    }

    /// The evidence lower bound per label at the last iteration (`-inf` without iterations).
    pub fn elbo(&self) -> f64 {
        self.em.elbo
    }

    /// `(label, prior)` per category, in the caller's order: the mean posterior over items.
    pub fn priors(&self) -> impl ExactSizeIterator<Item = (LabelId, f64)> + '_ {
        self.problem.labels.iter().copied().zip(self.em.prior.iter().copied())
    }

    /// Number of items (items with at least one label).
    pub fn n_items(&self) -> usize {
        self.problem.items.len()
    }

    /// Every item's truth, by item id ascending.
    pub fn items(&self) -> impl ExactSizeIterator<Item = ItemTruth> + '_ {
        (0..self.problem.items.len()).map(|i| self.item_at(i))
    }

    /// The truth of `item`, if it has labels.
    pub fn item(&self, item: u64) -> Option<ItemTruth> {
        self.problem.items.binary_search(&item).ok().map(|i| self.item_at(i))
    }

    fn item_at(&self, i: usize) -> ItemTruth {
        let k = self.problem.k;
        let row = &self.em.post[i * k..(i + 1) * k];
        let mut best = 0;
        for (c, p) in row.iter().enumerate() {
            if *p > row[best] {
                best = c;
            }
        }
        let labels = &self.problem.labels;
        ItemTruth {
            item: self.problem.items[i],
            label: labels[best],
            p: row[best].max(EPS),
            posterior: labels.iter().zip(row).map(|(l, p)| (*l, p.max(EPS))).collect(),
        }
    }

    /// Every annotator's confusion matrix, by annotator id ascending.
    pub fn annotators(&self) -> impl ExactSizeIterator<Item = AnnotatorConfusion> + '_ {
        (0..self.problem.annotators.len()).map(|a| self.annotator_at(a))
    }

    /// The confusion matrix of `annotator`, if it has labels.
    pub fn annotator(&self, annotator: u64) -> Option<AnnotatorConfusion> {
        self.problem.annotators.binary_search(&annotator).ok().map(|a| self.annotator_at(a))
    }

    fn annotator_at(&self, a: usize) -> AnnotatorConfusion {
        let (k, labels) = (self.problem.k, &self.problem.labels);
        let rows = self.problem.annotator_rows[a] as usize..self.problem.annotator_rows[a + 1] as usize;
        let mut cells = Vec::with_capacity(rows.len() * k);
        for r in rows {
            let observed = labels[self.problem.row_label[r] as usize];
            for (c, truth) in labels.iter().enumerate() {
                cells.push(ConfusionCell { observed, truth: *truth, p: self.em.err[r * k + c] });
            }
        }
        AnnotatorConfusion { annotator: self.problem.annotators[a], cells }
    }

    /// The posteriors to start the next fit of this scope from.
    pub fn warm_start(&self) -> WarmStart {
        WarmStart {
            labels: self.problem.labels.clone(),
            items: self.problem.items.clone(),
            posteriors: self.em.post.clone(),
        }
    }

    /// [`TruthFit::warm_start`], without copying.
    pub fn into_warm_start(self) -> WarmStart {
        WarmStart { labels: self.problem.labels, items: self.problem.items, posteriors: self.em.post }
    }
}

#[cfg(test)]
mod tests;
