//! One pass of EM over a scope's items: the E-step fused with the sums of the M-step, by blocks
//! of items, over fixed stripes of items that threads may share.
//!
//! Stripes make the sums independent of the number of threads: the items are cut into a number
//! of stripes fixed by the problem alone ([`stripes`]), each stripe sums into its own buffers in
//! item order, and the stripes' sums are added in stripe order. One thread or several, the same
//! floating-point operations happen in the same order, so the result is bitwise the same.

use std::ops::Range;

use rayon::prelude::*;

use super::approx::{exp2_block, weighted_ln, LogProduct};
use super::em::Problem;
use super::EPS;

/// The E-step's inputs: `log2 max(prior, EPS)` and `log2 err`.
pub(super) struct Model<'a> {
    pub log2_prior: &'a [f64],
    pub log2_err: &'a [f64],
}

/// Items per block of [`pass`]: a block's logits and posteriors stay in the L1 cache.
pub(super) const BLOCK: usize = 256;

/// The most stripes of a problem: as many as the threads of a 32-core machine can share, few
/// enough that their buffers stay small next to the labels.
const MAX_STRIPES: usize = 32;

/// Items in a stripe, at least: 16 blocks, so that a stripe is worth a thread.
const STRIPE_ITEMS: usize = 16 * BLOCK;

/// The number of stripes of `problem`, a function of its size alone (never of the threads, so
/// that the sums are the same on any machine): one per [`STRIPE_ITEMS`] items, at most
/// [`MAX_STRIPES`], and no more than keeps the adding up of the stripes' confusion sums under a
/// quarter of a pass over the labels. 1 for a problem too small to share.
pub(super) fn stripes(problem: &Problem) -> usize {
    let rows = problem.row_label.len().max(1);
    let by_items = problem.items.len() / STRIPE_ITEMS;
    let by_cost = problem.label_row.len() / (rows * 4);
    by_items.min(by_cost).clamp(1, MAX_STRIPES)
}

/// The entropy term's parts over a range of items (see [`pass`]).
#[derive(Debug, Default)]
pub(super) struct Entropy {
    /// The sum of q (L - max) over entries q >= EPS (times ln 2 at the end).
    linear: f64,
    /// The count of entries q < EPS (each contributes EPS ln EPS).
    small: usize,
    /// The product of the items' normalisers z (its logarithm is the sum of ln z).
    log_product: LogProduct,
    /// `(1 - the item's entries q >= EPS) ln z` over the items with an entry under EPS.
    correction: f64,
}

impl Entropy {
    /// Adds the parts of the items after these.
    fn merge(&mut self, other: &Entropy) {
        self.linear += other.linear;
        self.small += other.small;
        self.log_product.merge(&other.log_product);
        self.correction += other.correction;
    }

    /// `sum over items and c of q ln q`, `q = max(post, EPS)`.
    pub fn sum_q_ln_q(&self) -> f64 {
        self.linear * std::f64::consts::LN_2 - (self.log_product.ln() - self.correction)
            + self.small as f64 * (EPS * EPS.ln())
    }
}

/// One pass over `items` (their posteriors `post`, in item order). With a model, the E-step: each
/// item's posterior `post[i][c]` = `2^(L[i][c] - max_c L[i][c])` normalised, `L[i][c]` = the sum
/// over its labels' rows of `log2 err[row][c]`, plus `log2 prior[c]` (crowd-kit sums the labels
/// first); clamped items set to their gold answer. Then, for every item, the first half of the
/// M-step: its posterior added to `prior_sum` and to `sums` of each of its labels' rows (both
/// zeroed first). Returns the parts of the E-step's entropy term (none without a model).
///
/// `K` is the number of categories, or 0 for any number (`problem.k`): the common small `K` get
/// their own unrolled copy. The E-step runs by blocks of [`BLOCK`] items: their shifted logits,
/// then `2^x` over the whole block ([`exp2_block`], a vectorised loop), then normalisation and the M-step's sums. Fusing the E-step with
/// the M-step's sums leaves every sum in the order of separate passes and reads each item's
/// labels once. The entropy term `sum q ln q` (q clipped at EPS) uses ln q = (L - max) ln 2 -
/// ln z for an item's normaliser z, with the sum of ln z taken as the logarithm of the product
/// of the z (no logarithm per item; see [`Entropy`]). No running sum or product waits on each
/// item: the linear part is summed per category, and a block's normalisers and corrections are
/// multiplied and summed after it, four at a time ([`LogProduct::push_all`], [`weighted_ln`]).
// Index loops over `0..k` with `k` a constant let the compiler unroll them across several arrays.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn pass<const K: usize>(
    problem: &Problem,
    model: Option<&Model<'_>>,
    items: Range<usize>,
    post: &mut [f64],
    prior_sum: &mut [f64],
    sums: &mut [f64],
) -> Entropy {
    let k = if K == 0 { problem.k } else { K };
    assert_eq!(k, problem.k);
    assert_eq!(post.len(), items.len() * k);
    prior_sum.fill(0.0);
    sums.fill(0.0);
    let prior_sum = &mut prior_sum[..k];
    let mut logits = vec![0.0; BLOCK * k];
    // Per item of a block: its normaliser z (1 for a clamped item), and the weight of its ln z in
    // the entropy term's correction (0 unless an entry fell under EPS).
    let (mut normalisers, mut weights) = ([0.0; BLOCK], [0.0; BLOCK]);
    let mut entropy = Entropy::default();
    // The linear part of the entropy term per category: one chain of additions per category
    // (not one for all) keeps the additions from waiting on each other.
    let (mut fixed, mut heap) = ([0.0; 8], Vec::new());
    let linear: &mut [f64] = if k <= 8 {
        &mut fixed[..k]
    } else {
        heap.resize(k, 0.0);
        &mut heap
    };
    let from = problem.clamped.partition_point(|c| (c.0 as usize) < items.start);
    let mut clamped = problem.clamped[from..].iter().peekable();
    let labels_of =
        |i: usize| &problem.label_row[problem.item_start[i] as usize..problem.item_start[i + 1] as usize];
    for first in items.clone().step_by(BLOCK) {
        let last = (first + BLOCK).min(items.end);
        let block = &mut post[(first - items.start) * k..(last - items.start) * k];
        let logits = &mut logits[..(last - first) * k];
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
            exp2_block(logits, block);
        }
        for (i, (out, shifted)) in (first..last).zip(block.chunks_exact_mut(k).zip(logits.chunks_exact(k))) {
            let out = &mut out[..k];
            // A clamped item's (and, without a model, an unused) normaliser and weight. Written
            // for every item, then over: measured 8% sooner than writing them in the branch.
            normalisers[i - first] = 1.0;
            weights[i - first] = 0.0;
            if let Some(&&(_, y)) = clamped.peek().filter(|c| c.0 as usize == i) {
                clamped.next();
                if model.is_some() {
                    out.fill(0.0);
                    out[y as usize] = 1.0;
                    // The clipped one-hot posterior: k - 1 entries at EPS, and 1 ln 1 = 0.
                    entropy.small += k - 1;
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
                    linear[c] += q * shifted[c];
                    kept += q;
                    under += usize::from(below);
                }
                entropy.small += under;
                normalisers[i - first] = z;
                weights[i - first] = if under > 0 { 1.0 - kept } else { 0.0 };
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
        if model.is_some() {
            let n = last - first;
            entropy.log_product.push_all(&normalisers[..n]);
            entropy.correction += weighted_ln(&weights[..n], &normalisers[..n]);
        }
    }
    entropy.linear = linear.iter().sum();
    entropy
}

/// Defines a copy of [`pass_k_generic`] compiled with the target features `$features`, to be
/// called only where the CPU has them.
macro_rules! compiled_for {
    ($(#[$doc:meta])* $name:ident, $features:literal) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        fn $name(
            problem: &Problem,
            model: Option<&Model<'_>>,
            items: Range<usize>,
            post: &mut [f64],
            prior_sum: &mut [f64],
            sums: &mut [f64],
        ) -> Entropy {
            pass_k_generic(problem, model, items, post, prior_sum, sums)
        }
    };
}

compiled_for!(
    /// [`pass_k_generic`] compiled for AVX2: the same IEEE operations in the same order on wider
    /// vectors (no fused multiply-add), so the same bits as without it, 8% sooner on the benchmark.
    pass_k_avx2,
    "avx2"
);

compiled_for!(
    /// [`pass_k_generic`] compiled for AVX-512: the same IEEE operations in the same order (no
    /// fused multiply-add), so the same bits. Its 32 vector registers hold the E-step's `2^x`
    /// polynomial without spilling: 30% sooner than the AVX2 copy on the truth benchmark.
    pass_k_avx512,
    "avx2,avx512f,avx512vl,avx512dq"
);

/// Whether the CPU runs [`pass_k_avx512`].
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
}

/// [`pass_k_generic`], in its AVX-512 copy when the CPU has AVX-512, else in its AVX2 copy when
/// it has AVX2.
fn pass_k(
    problem: &Problem,
    model: Option<&Model<'_>>,
    items: Range<usize>,
    post: &mut [f64],
    prior_sum: &mut [f64],
    sums: &mut [f64],
) -> Entropy {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512 F, VL and DQ (and so AVX2).
        return unsafe { pass_k_avx512(problem, model, items, post, prior_sum, sums) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { pass_k_avx2(problem, model, items, post, prior_sum, sums) };
    }
    pass_k_generic(problem, model, items, post, prior_sum, sums)
}

/// [`pass`] with the copy for the problem's number of categories.
#[inline(always)]
fn pass_k_generic(
    problem: &Problem,
    model: Option<&Model<'_>>,
    items: Range<usize>,
    post: &mut [f64],
    prior_sum: &mut [f64],
    sums: &mut [f64],
) -> Entropy {
    match problem.k {
        2 => pass::<2>(problem, model, items, post, prior_sum, sums),
        3 => pass::<3>(problem, model, items, post, prior_sum, sums),
        4 => pass::<4>(problem, model, items, post, prior_sum, sums),
        5 => pass::<5>(problem, model, items, post, prior_sum, sums),
        6 => pass::<6>(problem, model, items, post, prior_sum, sums),
        _ => pass::<0>(problem, model, items, post, prior_sum, sums),
    }
}

/// One stripe's items, their posteriors, and where its sums go.
struct Stripe<'a> {
    items: Range<usize>,
    post: &'a mut [f64],
    prior: &'a mut [f64],
    sums: &'a mut [f64],
}

/// Confusion sums per chunk when the stripes' sums are added up: 16 KiB of the first stripe's,
/// kept in the L1 cache while each other stripe's chunk streams past.
const MERGE_CHUNK: usize = 2048;

/// The sums of one stripe: `K` prior sums, then `rows x K` confusion sums.
pub(super) type StripeSums = Vec<f64>;

/// One pass over every item, stripe by stripe, the stripes shared by the threads of `pool` (in
/// the caller's thread without one): fills `prior_sum` and `sums` (see [`pass`]) and returns the
/// E-step's `sum q ln q` (0 without a model). `buffers` holds one [`StripeSums`] per stripe
/// beyond the first (grown on first use).
pub(super) fn pass_all(
    problem: &Problem,
    model: Option<&Model<'_>>,
    post: &mut [f64],
    prior_sum: &mut [f64],
    sums: &mut [f64],
    buffers: &mut Vec<StripeSums>,
    pool: Option<&rayon::ThreadPool>,
) -> f64 {
    let (n, k) = (problem.items.len(), problem.k);
    let stripes = stripes(problem);
    if stripes == 1 {
        return pass_k(problem, model, 0..n, post, prior_sum, sums).sum_q_ln_q();
    }
    buffers.resize_with(stripes - 1, || vec![0.0; k + sums.len()]);
    // Stripe s holds items bounds[s]..bounds[s + 1]; the first sums into the outputs.
    let bounds: Vec<usize> = (0..=stripes).map(|s| s * n / stripes).collect();
    let mut outputs =
        std::iter::once((prior_sum, sums)).chain(buffers.iter_mut().map(|buffer| buffer.split_at_mut(k)));
    let mut work: Vec<Stripe<'_>> = Vec::with_capacity(stripes);
    let mut rest = post;
    for s in 0..stripes {
        let (post, after) = rest.split_at_mut((bounds[s + 1] - bounds[s]) * k);
        rest = after;
        let (prior, sums) = outputs.next().expect("a buffer per stripe");
        work.push(Stripe { items: bounds[s]..bounds[s + 1], post, prior, sums });
    }
    let one = |s: &mut Stripe<'_>| pass_k(problem, model, s.items.clone(), s.post, s.prior, s.sums);
    // Each stripe is summed by one thread, in item order; the parts come back in stripe order.
    let parts: Vec<Entropy> = match pool {
        Some(pool) => pool.install(|| work.par_iter_mut().map(one).collect()),
        None => work.iter_mut().map(one).collect(),
    };
    // Add the stripes' sums into the first's, each sum in stripe order (so the same bits on any
    // number of threads), the confusion sums in chunks that the pool's threads share.
    let (first, rest) = work.split_at_mut(1);
    let first = &mut first[0];
    for stripe in rest.iter() {
        first.prior.iter_mut().zip(stripe.prior.iter()).for_each(|(a, b)| *a += b);
    }
    let rest: Vec<&[f64]> = rest.iter().map(|stripe| &*stripe.sums).collect();
    let add = |(j, chunk): (usize, &mut [f64])| {
        let span = j * MERGE_CHUNK..j * MERGE_CHUNK + chunk.len();
        for sums in &rest {
            chunk.iter_mut().zip(&sums[span.clone()]).for_each(|(a, b)| *a += b);
        }
    };
    match pool {
        Some(pool) if first.sums.len() > MERGE_CHUNK => {
            pool.install(|| first.sums.par_chunks_mut(MERGE_CHUNK).enumerate().for_each(add))
        }
        _ => first.sums.chunks_mut(MERGE_CHUNK).enumerate().for_each(add),
    }
    let mut entropy = Entropy::default();
    parts.iter().for_each(|part| entropy.merge(part));
    if model.is_some() {
        entropy.sum_q_ln_q()
    } else {
        0.0
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// `items` items labelled by 3 of 40 annotators each, 4 categories, most labels right.
    pub(crate) fn generated(items: u64) -> Vec<(u64, u64, u64)> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let mut labels = Vec::new();
        for item in 0..items {
            let truth = next(4);
            let first = next(40);
            for j in 0..3 {
                let annotator = (first + j * 7) % 40;
                let label = if next(10) < 8 { truth } else { next(4) };
                labels.push((item, 1000 + annotator, 50 + label));
            }
        }
        labels
    }

    /// `items` items labelled by 3 of `annotators` annotators each (4 categories).
    fn spread(items: u64, annotators: u64) -> Vec<(u64, u64, u64)> {
        (0..items)
            .flat_map(|i| (0..3).map(move |j| (i, (i * 7 + j * 13) % annotators, 50 + (i + j) % 4)))
            .collect()
    }

    #[test]
    fn stripes_follow_the_problem_not_the_threads() {
        let order = |a: &u64, b: &u64| a.cmp(b);
        // Under 16 blocks of items: one stripe.
        let small = Problem::new(&spread(4_000, 40), &[], order, false).unwrap();
        assert_eq!(stripes(&small), 1);
        // One stripe per 4,096 items: 40,000 items make 9.
        let middle = Problem::new(&spread(40_000, 40), &[], order, false).unwrap();
        assert_eq!(stripes(&middle), 9);
        // Capped at 32, however many items.
        let large = Problem::new(&spread(200_000, 40), &[], order, false).unwrap();
        assert_eq!(stripes(&large), MAX_STRIPES);
        // About as many confusion rows as labels: adding up the stripes' sums would cost more than
        // a quarter of a pass, so one stripe.
        let sparse = Problem::new(&spread(40_000, 40_000), &[], order, false).unwrap();
        assert_eq!(stripes(&sparse), 1);
    }

    #[test]
    fn threads_give_the_same_bits() {
        // 2,000 annotators: 32,000 confusion sums, added up in chunks that the threads share.
        let mut problem = Problem::new(&spread(40_000, 2_000), &[], |a, b| a.cmp(b), false).unwrap();
        let (k, rows) = (problem.k, problem.row_label.len());
        assert!(stripes(&problem) > 1 && rows * k > MERGE_CHUNK, "the shared passes and merge");
        let post = problem.initial_posteriors(None);
        let log2_prior = vec![-2.0; k];
        let log2_err: Vec<f64> = (0..rows * k).map(|j| -1.0 - (j % 7) as f64 * 0.3).collect();
        let model = Model { log2_prior: &log2_prior, log2_err: &log2_err };
        let run = |pool: Option<&rayon::ThreadPool>| {
            let (mut post, mut prior, mut sums) = (post.clone(), vec![0.0; k], vec![0.0; rows * k]);
            let entropy =
                pass_all(&problem, Some(&model), &mut post, &mut prior, &mut sums, &mut Vec::new(), pool);
            (post, prior, sums, entropy.to_bits())
        };
        let alone = run(None);
        for threads in [2, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            assert!(run(Some(&pool)) == alone, "{threads} threads");
        }
    }

    #[test]
    fn stripes_sum_what_one_pass_sums() {
        let labels = generated(20_000);
        let mut problem = Problem::new(&labels, &[], |a, b| a.cmp(b), false).unwrap();
        // 20,000 items: one stripe per 4,096 items.
        assert_eq!(stripes(&problem), 4);
        let post = problem.initial_posteriors(None);
        let (k, rows) = (problem.k, problem.row_label.len());
        let log2_prior = vec![-2.0; k];
        let log2_err: Vec<f64> = (0..rows * k).map(|j| -1.0 - (j % 5) as f64 * 0.7).collect();
        let model = Model { log2_prior: &log2_prior, log2_err: &log2_err };
        let n = problem.items.len();
        let (mut one, mut prior_one, mut sums_one) = (post.clone(), vec![0.0; k], vec![0.0; rows * k]);
        let whole =
            pass_k(&problem, Some(&model), 0..n, &mut one, &mut prior_one, &mut sums_one).sum_q_ln_q();
        // The copy the CPU picked (AVX-512 or AVX2 here, as a rule) and the plain one: the same
        // bits (every copy, every number of categories: `every_copy_gives_the_same_bits`).
        let (mut plain, mut prior_plain, mut sums_plain) = (post.clone(), vec![0.0; k], vec![0.0; rows * k]);
        let plain_entropy =
            pass_k_generic(&problem, Some(&model), 0..n, &mut plain, &mut prior_plain, &mut sums_plain)
                .sum_q_ln_q();
        assert_eq!((&plain, &prior_plain, &sums_plain), (&one, &prior_one, &sums_one));
        assert_eq!(plain_entropy.to_bits(), whole.to_bits());
        for threads in [1, 2, 3, 4, 8] {
            let (mut striped, mut prior, mut sums) = (post.clone(), vec![0.0; k], vec![0.0; rows * k]);
            let mut buffers = Vec::new();
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let by_stripes = pass_all(
                &problem,
                Some(&model),
                &mut striped,
                &mut prior,
                &mut sums,
                &mut buffers,
                Some(&pool),
            );
            assert_eq!(striped, one, "posteriors are per item");
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1.0);
            assert!(prior.iter().zip(&prior_one).all(|(a, b)| close(*a, *b)));
            assert!(sums.iter().zip(&sums_one).all(|(a, b)| close(*a, *b)));
            assert!(close(by_stripes, whole), "{by_stripes} vs {whole}");
        }
    }

    #[test]
    fn every_copy_gives_the_same_bits() {
        type Copy = unsafe fn(
            &Problem,
            Option<&Model<'_>>,
            Range<usize>,
            &mut [f64],
            &mut [f64],
            &mut [f64],
        ) -> Entropy;
        let mut copies: Vec<(&str, Copy)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                copies.push(("AVX2", pass_k_avx2));
            }
            if has_avx512() {
                copies.push(("AVX-512", pass_k_avx512));
            }
        }
        // 2 and 4 categories (copies unrolled for them) and 7 (the copy for any number).
        for classes in [2u64, 4, 7] {
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            let mut next = |n: u64| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 33) % n
            };
            let labels: Vec<(u64, u64, u64)> = (0..3_000u64)
                .flat_map(|item| {
                    let truth = item % classes;
                    (0..4).map(move |j| (item, (item * 5 + j * 11) % 60, truth)).collect::<Vec<_>>()
                })
                .map(|(item, annotator, truth)| {
                    (item, annotator, 50 + if next(10) < 7 { truth } else { next(classes) })
                })
                .collect();
            // Some items clamped to a gold answer.
            let gold: Vec<(u64, u64)> =
                (0..3_000u64).step_by(17).map(|item| (item, 50 + item % classes)).collect();
            let mut problem = Problem::new(&labels, &gold, |a, b| a.cmp(b), true).unwrap();
            assert_eq!(problem.k, classes as usize);
            let post = problem.initial_posteriors(None);
            let (k, rows, n) = (problem.k, problem.row_label.len(), problem.items.len());
            let log2_prior: Vec<f64> = (0..k).map(|c| -1.0 - c as f64 * 0.25).collect();
            // Entries far apart, so that some posteriors fall under EPS (the entropy's correction).
            let log2_err: Vec<f64> = (0..rows * k).map(|j| -1.0 - (j % 9) as f64 * 1.2).collect();
            let model = Model { log2_prior: &log2_prior, log2_err: &log2_err };
            let run = |copy: Option<Copy>| {
                let (mut post, mut prior, mut sums) = (post.clone(), vec![0.0; k], vec![0.0; rows * k]);
                let entropy = match copy {
                    // SAFETY: each copy is listed only when the CPU has its features.
                    Some(copy) => unsafe {
                        copy(&problem, Some(&model), 0..n, &mut post, &mut prior, &mut sums)
                    },
                    None => pass_k_generic(&problem, Some(&model), 0..n, &mut post, &mut prior, &mut sums),
                };
                assert!(entropy.small > 0 && entropy.correction != 0.0, "the correction is exercised");
                (post, prior, sums, entropy.sum_q_ln_q().to_bits())
            };
            let plain = run(None);
            for (name, copy) in &copies {
                assert!(run(Some(*copy)) == plain, "{name}, {classes} categories");
            }
        }
    }
}
