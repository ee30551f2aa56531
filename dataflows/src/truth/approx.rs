//! The numerics of an EM pass ([`super::pass`]): a product of many normalisers kept as its
//! logarithm ([`LogProduct`]), and `2^x` and `ln z` as loops the compiler vectorises, with their
//! error bounds tested.

use super::pass::BLOCK;

/// The logarithm of a product of many numbers of at least 1 (the E-step's normalisers, each
/// between 1 and K) without a logarithm per factor and without overflow: the product is kept as a
/// mantissa and a power of two, rescaled exactly when it grows large.
#[derive(Debug)]
pub(super) struct LogProduct {
    mantissa: f64,
    exponent: i64,
}

impl Default for LogProduct {
    fn default() -> Self {
        LogProduct { mantissa: 1.0, exponent: 0 }
    }
}

impl LogProduct {
    pub(super) fn push(&mut self, factor: f64) {
        self.mantissa *= factor;
        if self.mantissa > 1e300 {
            self.rescale();
        }
    }

    /// Splits off the binary exponent: the mantissa becomes [1, 2), exactly.
    fn rescale(&mut self) {
        let bits = self.mantissa.to_bits();
        self.exponent += ((bits >> 52) & 0x7ff) as i64 - 1023;
        self.mantissa = f64::from_bits((bits & !(0x7ff << 52)) | (1023 << 52));
    }

    /// Multiplies in `factors` (each in `[1, K]`): four running products side by side, each
    /// over at most a quarter of a block, so at most `K^64`, rescaled once at the end.
    pub(super) fn push_all(&mut self, factors: &[f64]) {
        if factors.len() > BLOCK || factors.iter().any(|f| !(1.0..=4096.0).contains(f)) {
            factors.iter().for_each(|&f| self.push(f));
            return;
        }
        let mut lanes = [1.0; 4];
        let mut chunks = factors.chunks_exact(4);
        for chunk in &mut chunks {
            for (lane, f) in lanes.iter_mut().zip(chunk) {
                *lane *= f;
            }
        }
        for (lane, f) in lanes.iter_mut().zip(chunks.remainder()) {
            *lane *= f;
        }
        for lane in lanes {
            let mut part = LogProduct { mantissa: lane, exponent: 0 };
            part.rescale();
            self.merge(&part);
        }
    }

    pub(super) fn merge(&mut self, other: &LogProduct) {
        self.rescale();
        self.mantissa *= other.mantissa;
        self.exponent += other.exponent;
        self.rescale();
    }

    pub(super) fn ln(&self) -> f64 {
        self.mantissa.ln() + self.exponent as f64 * std::f64::consts::LN_2
    }
}

/// `out[j] = 2^x[j]` for the E-step's shifted logits (`x[j] <= 0`), in a loop the compiler
/// vectorises: no call and no branch per value, where `f64::exp2` is a call into the C library
/// per value (a third of a pass). `x = n + f` with `n` the nearest integer and `|f| <= 1/2`;
/// `2^f = e^(f ln 2)` by its Taylor series to degree 13 (truncation under 2e-17, Horner's rule),
/// times `2^n` built in the exponent field. Within 4 ulp of `f64::exp2` (tested), far inside the
/// 1e-6 the spec allows. Arguments under -1022 (results under 2.3e-308, where `2^n` would need a
/// subnormal) give 0: the E-step clips probabilities at 1e-10 anyway.
#[inline(always)]
pub(super) fn exp2_block(x: &[f64], out: &mut [f64]) {
    // Adding 1.5 * 2^52 rounds to the nearest integer and leaves it in the mantissa's low bits.
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    // 1 / i! for i = 13 down to 2.
    const INVERSE_FACTORIALS: [f64; 12] = [
        1.0 / 6_227_020_800.0,
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
    ];
    for (o, &v) in out.iter_mut().zip(x) {
        let clamped = v.max(-1022.0);
        let t = clamped + SHIFT;
        let n = t - SHIFT;
        let y = (clamped - n) * std::f64::consts::LN_2;
        let mut e = 0.0;
        for c in INVERSE_FACTORIALS {
            e = e * y + c;
        }
        let e = (e * y + 1.0) * y + 1.0;
        // The exponent field of 2^n: the low bits of t hold n, as two's complement.
        let scale = f64::from_bits(t.to_bits().wrapping_add(1023) << 52);
        *o = if v < -1022.0 { 0.0 } else { e * scale };
    }
}

/// `ln z` for a normaliser `z >= 1`, within 1e-10 absolute, with no call: the entropy term's
/// correction multiplies it by the posterior mass under EPS (at most `(K - 1) 1e-10`), so its
/// error there is under 1e-19 per item, where a call of `f64::ln` per item was an eighth of a
/// pass. `z = m 2^e` with `m` in `[1/sqrt 2, sqrt 2)`; `ln m = 2 atanh s = 2 (s + s^3/3 + ... +
/// s^11/11)` for `s = (m - 1)/(m + 1)`, `|s| < 0.172` (truncation under 2e-11).
#[inline(always)]
pub(super) fn ln_approx(z: f64) -> f64 {
    let bits = z.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & !(0x7ff << 52)) | (1023 << 52));
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series =
        1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0 + s2 * (1.0 / 11.0)))));
    e as f64 * std::f64::consts::LN_2 + 2.0 * s * series
}

/// `sum over j of weights[j] ln_approx(z[j])`, in four running sums side by side (a loop the
/// compiler vectorises, with no branch per item).
#[inline(always)]
pub(super) fn weighted_ln(weights: &[f64], z: &[f64]) -> f64 {
    let mut lanes = [0.0; 4];
    let (w, zc) = (weights.chunks_exact(4), z.chunks_exact(4));
    let (w_rest, z_rest) = (w.remainder(), zc.remainder());
    for (w, z) in w.zip(zc) {
        for l in 0..4 {
            lanes[l] += w[l] * ln_approx(z[l]);
        }
    }
    for (w, z) in w_rest.iter().zip(z_rest) {
        lanes[0] += w * ln_approx(*z);
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp2_block_is_within_4_ulp_of_exp2() {
        let mut x: Vec<f64> = (0..=2_000_000).map(|i| -(i as f64) * 1022.0 / 2_000_000.0).collect();
        x.extend([
            0.0,
            -0.5,
            -0.499_999_999_999,
            -1.5,
            -1021.999,
            -1022.0,
            -1022.5,
            -2000.0,
            f64::NEG_INFINITY,
        ]);
        let mut out = vec![f64::NAN; x.len()];
        exp2_block(&x, &mut out);
        for (&v, &got) in x.iter().zip(&out) {
            if v < -1022.0 {
                assert_eq!(got, 0.0, "2^{v}");
                continue;
            }
            let want = v.exp2();
            let ulp = f64::from_bits(want.to_bits() + 1) - want;
            assert!((got - want).abs() <= 4.0 * ulp, "2^{v}: {got} against {want}");
        }
    }

    #[test]
    fn ln_approx_is_within_1e_10_of_ln() {
        for i in 0..=1_000_000 {
            let z = 1.0 + i as f64 * 63.0 / 1_000_000.0;
            assert!((ln_approx(z) - z.ln()).abs() <= 1e-10, "ln {z}");
        }
        assert_eq!(ln_approx(1.0), 0.0);
    }

    #[test]
    fn log_products_merge_exactly() {
        let mut whole = LogProduct::default();
        let mut parts = [LogProduct::default(), LogProduct::default()];
        for i in 0..5000 {
            let factor = 1.0 + (i % 97) as f64 / 31.0;
            whole.push(factor);
            parts[usize::from(i >= 2500)].push(factor);
        }
        let mut merged = LogProduct::default();
        parts.iter().for_each(|p| merged.merge(p));
        let exact: f64 = (0..5000).map(|i| (1.0 + (i % 97) as f64 / 31.0).ln()).sum();
        assert!((whole.ln() - exact).abs() < 1e-9 && (merged.ln() - exact).abs() < 1e-9);
    }

    #[test]
    fn a_block_of_factors_multiplies_in_as_one_by_one() {
        // A full block of the largest normalisers the fast path takes (4096^64 per lane, far
        // from overflow), a short block, and a block with a factor outside [1, 4096].
        let full: Vec<f64> =
            (0..BLOCK).map(|i| if i % 3 == 0 { 4096.0 } else { 1.0 + i as f64 / 7.0 }).collect();
        let short: Vec<f64> = (0..7).map(|i| 1.5 + i as f64).collect();
        let outside: Vec<f64> = (0..BLOCK).map(|i| if i == 9 { 1e6 } else { 2.0 }).collect();
        for factors in [&full, &short, &outside] {
            let (mut by_block, mut one_by_one) = (LogProduct::default(), LogProduct::default());
            for _ in 0..50 {
                by_block.push_all(factors);
                factors.iter().for_each(|&f| one_by_one.push(f));
            }
            let exact: f64 = 50.0 * factors.iter().map(|f| f.ln()).sum::<f64>();
            assert!((by_block.ln() - exact).abs() <= 1e-12 * exact, "{} against {exact}", by_block.ln());
            assert!((one_by_one.ln() - exact).abs() <= 1e-12 * exact);
        }
    }

    #[test]
    fn the_weighted_logarithms_sum_in_lanes_as_one_by_one() {
        for n in [0, 1, 5, 8, BLOCK] {
            let z: Vec<f64> = (0..n).map(|i| 1.0 + (i % 13) as f64 / 4.0).collect();
            let weights: Vec<f64> =
                (0..n).map(|i| if i % 3 == 0 { 0.0 } else { 1e-10 * (i % 5) as f64 }).collect();
            let exact: f64 = weights.iter().zip(&z).map(|(w, z)| w * z.ln()).sum();
            let got = weighted_ln(&weights, &z);
            assert!((got - exact).abs() <= 1e-9 * exact.abs().max(1e-30), "{n}: {got} against {exact}");
        }
    }
}
