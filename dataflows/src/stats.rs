//! The formulas of spec section 2, applied to exact integer aggregates. This is the only place
//! where floats are formed. Every function returns `None` where the spec's value is undefined.

use crate::label::LabelId;
use smallvec::SmallVec;

/// z for a two-sided 95% interval, as the spec fixes it.
pub const WILSON_Z: f64 = 1.959963984540054;

/// Gold accuracy with its Wilson 95% score interval (no continuity correction).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GoldAccuracy {
    pub n: i64,
    pub correct: i64,
    pub accuracy: f64,
    pub wilson_low: f64,
    pub wilson_high: f64,
}

/// Accuracy and Wilson interval of `correct` out of `n`; `None` when `n` is 0.
pub fn gold_accuracy(n: i64, correct: i64) -> Option<GoldAccuracy> {
    let (wilson_low, wilson_high) = wilson(n, correct as f64, WILSON_Z)?;
    Some(GoldAccuracy { n, correct, accuracy: correct as f64 / n as f64, wilson_low, wilson_high })
}

/// The Wilson score interval `(low, high)` of `successes` out of `n` at normal quantile `z`, no
/// continuity correction; `None` when `n` is not positive.
pub fn wilson(n: i64, successes: f64, z: f64) -> Option<(f64, f64)> {
    if n <= 0 {
        return None;
    }
    let nf = n as f64;
    let p = successes / nf;
    let z2 = z * z;
    let denom = 1.0 + z2 / nf;
    let center = (p + z2 / (2.0 * nf)) / denom;
    let half = z * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt() / denom;
    Some(((center - half).max(0.0), (center + half).min(1.0)))
}

/// Agreement statistics of one annotator pair, from its confusion table.
#[derive(Clone, Debug, PartialEq)]
pub struct PairAgreement {
    pub n_shared: i64,
    pub percent_agreement: f64,
    pub cohen_kappa: Option<f64>,
    pub scott_pi: Option<f64>,
}

/// Percent agreement, Cohen's kappa (each annotator's own marginals) and Scott's pi (pooled
/// marginals) of a confusion table given as `((label_a, label_b), count)` cells.
pub fn pair_agreement(cells: &[((LabelId, LabelId), i64)]) -> Option<PairAgreement> {
    let n: i64 = cells.iter().map(|(_, c)| c).sum();
    if n <= 0 {
        return None;
    }
    let agree: i64 = cells.iter().filter(|((a, b), _)| a == b).map(|(_, c)| c).sum();
    // Marginals per label: (row = a's count, col = b's count).
    let mut marginals: SmallVec<[(LabelId, i64, i64); 8]> = SmallVec::new();
    for &((la, lb), count) in cells {
        for (label, is_row) in [(la, true), (lb, false)] {
            let entry = match marginals.iter_mut().position(|(l, _, _)| *l == label) {
                Some(i) => &mut marginals[i],
                None => {
                    marginals.push((label, 0, 0));
                    marginals.last_mut().expect("just pushed")
                }
            };
            if is_row {
                entry.1 += count;
            } else {
                entry.2 += count;
            }
        }
    }
    let nf = n as f64;
    let po = agree as f64 / nf;
    // Chance agreement is exactly 1 iff the products/squares of the marginals fill n^2 (resp. 4n^2).
    let cohen_num: i128 = marginals.iter().map(|&(_, r, c)| i128::from(r) * i128::from(c)).sum();
    let scott_num: i128 = marginals.iter().map(|&(_, r, c)| i128::from(r + c) * i128::from(r + c)).sum();
    let n2 = i128::from(n) * i128::from(n);
    let cohen_kappa = (cohen_num != n2).then(|| {
        let pe = cohen_num as f64 / (nf * nf);
        (po - pe) / (1.0 - pe)
    });
    let scott_pi = (scott_num != 4 * n2).then(|| {
        let pe = scott_num as f64 / (4.0 * nf * nf);
        (po - pe) / (1.0 - pe)
    });
    Some(PairAgreement { n_shared: n, percent_agreement: po, cohen_kappa, scott_pi })
}

/// Chance-corrected agreement `(pa - pe) / (1 - pe)`.
fn chance_corrected(pa: f64, pe: f64) -> f64 {
    (pa - pe) / (1.0 - pe)
}

/// Fleiss' kappa in Gwet's missing-data form, from percent agreement and the category shares
/// `pi_k` over all rated items. `None` when undefined (no pairable item, or one category).
pub fn fleiss_kappa(percent_agreement: Option<f64>, shares: &[f64]) -> Option<f64> {
    let pa = percent_agreement?;
    if shares.len() < 2 {
        return None;
    }
    let pe: f64 = shares.iter().map(|p| p * p).sum();
    Some(chance_corrected(pa, pe))
}

/// Gwet's AC1 from percent agreement and the category shares over all rated items.
pub fn gwet_ac1(percent_agreement: Option<f64>, shares: &[f64]) -> Option<f64> {
    let pa = percent_agreement?;
    let q = shares.len();
    if q < 2 {
        return None;
    }
    let pe: f64 = shares.iter().map(|p| p * (1.0 - p)).sum::<f64>() / (q - 1) as f64;
    Some(chance_corrected(pa, pe))
}

/// Levels of measurement for Krippendorff's alpha.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Nominal,
    Ordinal,
    Interval,
    Ratio,
}

/// The pairable values of a scope in coincidence form.
#[derive(Clone, Debug, Default)]
pub struct Coincidences {
    /// Numeric value of each category (used by ordinal, interval and ratio levels; sorted
    /// ascending when those levels are asked for).
    pub values: Vec<f64>,
    /// Pairable marginal `n_c` of each category.
    pub marginals: Vec<i64>,
    /// `o[c][k]`, symmetric, indexed like `values`.
    pub matrix: Vec<Vec<f64>>,
}

impl Coincidences {
    /// Krippendorff's alpha at `level`; `None` when expected disagreement is zero (fewer than two
    /// distinct pairable values) or there is nothing pairable. For ordinal, `values` must be sorted.
    pub fn alpha(&self, level: Level) -> Option<f64> {
        let q = self.marginals.len();
        let n: i64 = self.marginals.iter().sum();
        if n < 2 {
            return None;
        }
        let distance = |c: usize, k: usize| -> f64 {
            if c == k {
                return 0.0;
            }
            let (vc, vk) = (self.values[c], self.values[k]);
            match level {
                Level::Nominal => 1.0,
                Level::Interval => (vc - vk) * (vc - vk),
                Level::Ratio => {
                    let s = vc + vk;
                    if s == 0.0 {
                        0.0
                    } else {
                        ((vc - vk) / s).powi(2)
                    }
                }
                Level::Ordinal => {
                    let (lo, hi) = if c < k { (c, k) } else { (k, c) };
                    let between: i64 = self.marginals[lo..=hi].iter().sum();
                    let d = between as f64 - (self.marginals[c] + self.marginals[k]) as f64 / 2.0;
                    d * d
                }
            }
        };
        let mut observed = 0.0;
        let mut expected = 0.0;
        for c in 0..q {
            for k in 0..q {
                if c == k {
                    continue;
                }
                let d = distance(c, k);
                observed += self.matrix[c][k] * d;
                expected += (self.marginals[c] * self.marginals[k]) as f64 * d;
            }
        }
        if expected == 0.0 {
            return None;
        }
        Some(1.0 - (n - 1) as f64 * observed / expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_reference() {
        let g = gold_accuracy(9, 5).unwrap();
        assert!((g.wilson_low - 0.26665129349549305).abs() < 1e-12);
        assert!((g.wilson_high - 0.8112214789023355).abs() < 1e-12);
        assert_eq!(gold_accuracy(0, 0), None);
        assert_eq!(gold_accuracy(3, 3).unwrap().wilson_high, 1.0);
    }

    #[test]
    fn cohen_textbook() {
        // Wikipedia: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> kappa 0.4.
        let cells = [((0, 0), 20), ((0, 1), 5), ((1, 0), 10), ((1, 1), 15)];
        let p = pair_agreement(&cells).unwrap();
        assert!((p.cohen_kappa.unwrap() - 0.4).abs() < 1e-12);
        assert!((p.percent_agreement - 0.7).abs() < 1e-12);
        // A pair that used one identical label throughout: kappa undefined.
        let p = pair_agreement(&[((3, 3), 4)]).unwrap();
        assert_eq!(p.cohen_kappa, None);
        assert_eq!(p.scott_pi, None);
    }
}
