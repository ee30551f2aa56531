//! The Bradley–Terry leaderboard of spec section 2.2: from win, loss and tie counts per pair of
//! systems, each system's maximum a posteriori strength under `P(i beats j) = 1 / (1 + exp(s_j -
//! s_i))` (Bradley and Terry 1952; a tie counted as half a win for each side, as Chatbot Arena
//! does) with an independent normal prior N(0, [`PRIOR_SD`]²) on every strength, found by
//! Newton's method; its 95% interval from the inverse of the negative Hessian of the log-posterior
//! at the maximum (the Laplace approximation); its Elo rating and its rank.
//!
//! The log-posterior is strictly concave (the prior adds `1 / PRIOR_SD²` to a negative Hessian
//! that is otherwise positive semi-definite), so the maximum is unique and finite, also for a
//! system that wins every comparison. The negative Hessian is symmetric and strictly diagonally
//! dominant with a positive diagonal, hence positive definite: Newton's steps and the interval
//! need only a Cholesky factorisation, written out here (about 40 lines) rather than taken from a
//! linear-algebra crate, for matrices of one row per system of a scope (tens, at most a few
//! hundred). The cost per Newton step is O(pairs + systems³).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{PairCounts, PreferenceError};
use crate::stats::WILSON_Z;

/// Standard deviation of the normal prior on each strength (spec 2.2: N(0, 10²)).
pub const PRIOR_SD: f64 = 10.0;

/// Newton's method stops when no strength moves by more than this.
const STEP_TOLERANCE: f64 = 1e-13;
/// A step below this is taken whole, without the line search (the quadratic region, where the
/// log-posterior's changes are below its rounding).
const FULL_STEP_BELOW: f64 = 1e-6;
/// Below this, a step that does not shrink is rounding noise: the maximum is reached.
const NOISE_FLOOR: f64 = 1e-9;
/// A bound on Newton steps; quadratic convergence takes a few dozen at most.
const MAX_ITERATIONS: u32 = 500;

/// One system's line of the leaderboard (spec 2.2), with the spec's field names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaderboardEntry<K> {
    /// The system (its name, or whatever key the caller gave).
    pub system: K,
    /// Comparisons it won, lost and tied.
    pub wins: i64,
    pub losses: i64,
    pub ties: i64,
    /// The maximum a posteriori Bradley–Terry strength (natural-log odds scale).
    pub strength: f64,
    /// `strength ∓ 1.959963984540054 · sqrt((H⁻¹)_ii)`, H the negative Hessian of the
    /// log-posterior at the maximum: `[low, high]`.
    pub interval: [f64; 2],
    /// `1000 + 400 · strength / ln 10`: the strength on the Elo scale.
    pub elo: f64,
    /// 1 for the strongest; systems of exactly equal strength are ranked by their key.
    pub rank: u32,
}

/// The leaderboard of a scope from its counts per pair of systems: `((a, b), counts)` with
/// `counts` the wins of `a`, the wins of `b` and the ties between them. A pair may come in either
/// order and more than once (its counts are summed); a system named only in pairs whose counts
/// are zero is ranked by its prior alone (strength 0). The entries come in rank order. The result
/// depends on the counts only, not on the order of `pairs`.
///
/// Errors: [`PreferenceError::SelfPair`] for a pair `(a, a)`, [`PreferenceError::NegativeCount`]
/// when a pair's summed counts hold a negative number.
pub fn leaderboard<K: Ord + Clone>(
    pairs: impl IntoIterator<Item = ((K, K), PairCounts)>,
) -> Result<Vec<LeaderboardEntry<K>>, PreferenceError> {
    let mut merged: BTreeMap<(K, K), PairCounts> = BTreeMap::new();
    for ((a, b), counts) in pairs {
        match a.cmp(&b) {
            Ordering::Less => *merged.entry((a, b)).or_default() += counts,
            Ordering::Greater => *merged.entry((b, a)).or_default() += counts.swapped(),
            Ordering::Equal => return Err(PreferenceError::SelfPair),
        }
    }
    let mut systems: Vec<K> = merged.keys().flat_map(|(a, b)| [a.clone(), b.clone()]).collect();
    systems.sort();
    systems.dedup();
    let index = |system: &K| systems.binary_search(system).expect("every system of a pair is listed");
    let n = systems.len();
    let mut record = vec![(0i64, 0i64, 0i64); n];
    let mut comparisons = Vec::with_capacity(merged.len());
    for ((a, b), counts) in &merged {
        if let Some(&negative) = [counts.a_wins, counts.b_wins, counts.ties].iter().find(|c| **c < 0) {
            return Err(PreferenceError::NegativeCount(negative));
        }
        let (i, j) = (index(a), index(b));
        record[i].0 += counts.a_wins;
        record[i].1 += counts.b_wins;
        record[i].2 += counts.ties;
        record[j].0 += counts.b_wins;
        record[j].1 += counts.a_wins;
        record[j].2 += counts.ties;
        comparisons.push(PairWeights::new(i, j, *counts));
    }
    let fit = BradleyTerryFit::new(n, &comparisons);
    let mut order: Vec<usize> = (0..n).collect();
    // Strongest first; equal strengths by key (the index order).
    order.sort_by(|&x, &y| fit.strengths[y].total_cmp(&fit.strengths[x]).then(x.cmp(&y)));
    Ok(order
        .into_iter()
        .enumerate()
        .map(|(position, i)| {
            let strength = fit.strengths[i];
            let half = WILSON_Z * fit.variances[i].sqrt();
            let (wins, losses, ties) = record[i];
            LeaderboardEntry {
                system: systems[i].clone(),
                wins,
                losses,
                ties,
                strength,
                interval: [strength - half, strength + half],
                elo: elo(strength),
                rank: position as u32 + 1,
            }
        })
        .collect())
}

/// A strength on the Elo scale: `1000 + 400 · strength / ln 10` (so that a difference of 400 Elo
/// points is odds of 10 to 1).
pub fn elo(strength: f64) -> f64 {
    1000.0 + 400.0 * strength / std::f64::consts::LN_10
}

/// The comparisons of systems `i < j` as win weights: `w_ij` the wins of `i` plus half the ties,
/// `w_ji` the same for `j` (exact: halves of integers).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairWeights {
    pub i: usize,
    pub j: usize,
    pub w_ij: f64,
    pub w_ji: f64,
}

impl PairWeights {
    /// The weights of `counts` of the pair `(i, j)` (`a` is `i`).
    pub fn new(i: usize, j: usize, counts: PairCounts) -> PairWeights {
        PairWeights {
            i,
            j,
            w_ij: (2 * counts.a_wins + counts.ties) as f64 / 2.0,
            w_ji: (2 * counts.b_wins + counts.ties) as f64 / 2.0,
        }
    }
}

/// The maximum a posteriori strengths of `n` systems and the diagonal of the inverse negative
/// Hessian there (each strength's posterior variance under the Laplace approximation).
#[derive(Clone, Debug, PartialEq)]
pub struct BradleyTerryFit {
    pub strengths: Vec<f64>,
    pub variances: Vec<f64>,
    /// Newton steps taken.
    pub iterations: u32,
}

impl BradleyTerryFit {
    /// Fits `n` systems (indices `0..n`) to `pairs`. Newton's method from all strengths 0, each
    /// step halved while it would lower the log-posterior (until steps are below 1e-6, where full
    /// steps converge quadratically), until no strength moves by more than 1e-13 (or by less than
    /// rounding lets it).
    pub fn new(n: usize, pairs: &[PairWeights]) -> BradleyTerryFit {
        let mut strengths = vec![0.0; n];
        let mut iterations = 0;
        let mut last_step = f64::INFINITY;
        while n > 0 && iterations < MAX_ITERATIONS {
            iterations += 1;
            let (gradient, hessian) = derivatives(&strengths, pairs);
            let direction = Cholesky::new(hessian, n).solve(&gradient);
            let size = direction.iter().fold(0.0f64, |m, d| m.max(d.abs()));
            let mut scale = 1.0;
            if size >= FULL_STEP_BELOW {
                let before = log_posterior(&strengths, pairs);
                let moved =
                    |t: f64| strengths.iter().zip(&direction).map(|(s, d)| s + t * d).collect::<Vec<_>>();
                while scale > 1e-12 && log_posterior(&moved(scale), pairs) < before {
                    scale /= 2.0;
                }
            }
            for (s, d) in strengths.iter_mut().zip(&direction) {
                *s += scale * d;
            }
            let step = scale * size;
            if step < STEP_TOLERANCE || (step < NOISE_FLOOR && step >= last_step) {
                break;
            }
            last_step = step;
        }
        let (_, hessian) = derivatives(&strengths, pairs);
        let variances = Cholesky::new(hessian, n).inverse_diagonal();
        BradleyTerryFit { strengths, variances, iterations }
    }
}

/// The logistic function `1 / (1 + exp(-x))`, without overflow.
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `ln sigmoid(x)`, without overflow or loss for large `|x|`.
fn ln_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// The log-posterior at `s`, up to a constant: `Σ w_ij ln σ(s_i - s_j) + w_ji ln σ(s_j - s_i) -
/// Σ s_i² / (2 · PRIOR_SD²)`.
fn log_posterior(s: &[f64], pairs: &[PairWeights]) -> f64 {
    let likelihood: f64 = pairs
        .iter()
        .map(|p| {
            let x = s[p.i] - s[p.j];
            p.w_ij * ln_sigmoid(x) + p.w_ji * ln_sigmoid(-x)
        })
        .sum();
    likelihood - s.iter().map(|v| v * v).sum::<f64>() / (2.0 * PRIOR_SD * PRIOR_SD)
}

/// The gradient of the log-posterior at `s` and its negative Hessian (row-major `n × n`):
/// `g_i = Σ_j (w_ij - m_ij p_ij) - s_i / PRIOR_SD²`, `H_ii = Σ_j m_ij p_ij p_ji + 1 / PRIOR_SD²`,
/// `H_ij = -m_ij p_ij p_ji`, with `m_ij = w_ij + w_ji` and `p_ij = σ(s_i - s_j)`.
fn derivatives(s: &[f64], pairs: &[PairWeights]) -> (Vec<f64>, Vec<f64>) {
    let n = s.len();
    let precision = 1.0 / (PRIOR_SD * PRIOR_SD);
    let mut gradient: Vec<f64> = s.iter().map(|v| -v * precision).collect();
    let mut hessian = vec![0.0; n * n];
    for i in 0..n {
        hessian[i * n + i] = precision;
    }
    for p in pairs {
        let x = s[p.i] - s[p.j];
        let (p_ij, p_ji) = (sigmoid(x), sigmoid(-x));
        let m = p.w_ij + p.w_ji;
        let residual = p.w_ij - m * p_ij;
        gradient[p.i] += residual;
        gradient[p.j] -= residual;
        let curvature = m * p_ij * p_ji;
        hessian[p.i * n + p.i] += curvature;
        hessian[p.j * n + p.j] += curvature;
        hessian[p.i * n + p.j] -= curvature;
        hessian[p.j * n + p.i] -= curvature;
    }
    (gradient, hessian)
}

/// The Cholesky factor `L` (lower triangular, row-major) of a symmetric positive definite matrix:
/// `A = L Lᵀ`.
struct Cholesky {
    l: Vec<f64>,
    n: usize,
}

impl Cholesky {
    /// Factors `a` (row-major `n × n`, symmetric positive definite; only its lower triangle is
    /// read). Panics on a matrix that is not positive definite: the negative Hessians factored
    /// here are strictly diagonally dominant, so every pivot is at least `1 / PRIOR_SD²`.
    fn new(mut a: Vec<f64>, n: usize) -> Cholesky {
        for j in 0..n {
            let pivot = a[j * n + j] - (0..j).map(|k| a[j * n + k] * a[j * n + k]).sum::<f64>();
            assert!(pivot > 0.0, "a negative Hessian of the Bradley–Terry posterior is positive definite");
            let diagonal = pivot.sqrt();
            a[j * n + j] = diagonal;
            for i in j + 1..n {
                let dot: f64 = (0..j).map(|k| a[i * n + k] * a[j * n + k]).sum();
                a[i * n + j] = (a[i * n + j] - dot) / diagonal;
            }
        }
        for i in 0..n {
            for j in i + 1..n {
                a[i * n + j] = 0.0;
            }
        }
        Cholesky { l: a, n }
    }

    /// `x` with `L y = b` (forward substitution), entries before `from` known to be 0.
    fn forward(&self, b: &[f64], from: usize) -> Vec<f64> {
        let n = self.n;
        let mut y = vec![0.0; n];
        for i in from..n {
            let dot: f64 = (from..i).map(|k| self.l[i * n + k] * y[k]).sum();
            y[i] = (b[i] - dot) / self.l[i * n + i];
        }
        y
    }

    /// `x` with `A x = b`.
    fn solve(&self, b: &[f64]) -> Vec<f64> {
        let n = self.n;
        let mut x = self.forward(b, 0);
        for i in (0..n).rev() {
            let dot: f64 = (i + 1..n).map(|k| self.l[k * n + i] * x[k]).sum();
            x[i] = (x[i] - dot) / self.l[i * n + i];
        }
        x
    }

    /// The diagonal of `A⁻¹ = L⁻ᵀ L⁻¹`: `(A⁻¹)_ii` is the squared norm of column `i` of `L⁻¹`,
    /// the solution of `L x = e_i`.
    fn inverse_diagonal(&self) -> Vec<f64> {
        (0..self.n)
            .map(|i| {
                let mut unit = vec![0.0; self.n];
                unit[i] = 1.0;
                self.forward(&unit, i).iter().map(|v| v * v).sum()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_and_inverts() {
        // A = [[4, 2, 0], [2, 5, 1], [0, 1, 3]], det 44: A⁻¹ diagonal (14, 12, 16) / 44.
        let a = vec![4.0, 2.0, 0.0, 2.0, 5.0, 1.0, 0.0, 1.0, 3.0];
        let c = Cholesky::new(a, 3);
        let x = c.solve(&[6.0, 8.0, 4.0]);
        for (got, want) in x.iter().zip([1.0, 1.0, 1.0]) {
            assert!((got - want).abs() < 1e-14, "{x:?}");
        }
        for (got, want) in c.inverse_diagonal().iter().zip([14.0 / 44.0, 12.0 / 44.0, 16.0 / 44.0]) {
            assert!((got - want).abs() < 1e-14, "{got} {want}");
        }
    }

    #[test]
    fn stable_logistic() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(sigmoid(800.0), 1.0);
        assert_eq!(sigmoid(-800.0), 0.0);
        assert!((ln_sigmoid(-800.0) + 800.0).abs() < 1e-12);
        assert!(ln_sigmoid(800.0) == 0.0);
        assert!((ln_sigmoid(1.0) - (1.0 / (1.0 + (-1.0f64).exp())).ln()).abs() < 1e-15);
    }
}
