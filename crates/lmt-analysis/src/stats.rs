//! The statistics of the paper's Section 6: medians, cumulative "error ratio" curves, per-point ratios,
//! and the margin-over-Lipschitz radius shared by (A), (B) and (C) of inequality (5).

/// The median of the non-NaN values (infinities count; NaN when there are none).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The fraction of values `<= x` at every `x` of `grid`: Figure 4's curves (a point is "in error" at
/// radius x when its certified or attack value is at most x; misclassified points have value 0).
pub fn ecdf(values: &[f64], grid: &[f64]) -> Vec<f64> {
    let n = values.len().max(1) as f64;
    grid.iter()
        .map(|&x| values.iter().filter(|&&v| v <= x).count() as f64 / n)
        .collect()
}

/// `count` evenly spaced points from `lo` to `hi` inclusive.
pub fn linspace(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    (0..count)
        .map(|i| lo + (hi - lo) * i as f64 / (count.max(2) - 1) as f64)
        .collect()
}

/// The median over points of `num / den`, over points where both are finite and positive (a ratio with a
/// zero, e.g. a misclassified point, is undefined and left out). Returns (median, points used).
pub fn median_ratio(num: &[f64], den: &[f64]) -> (f64, usize) {
    let r: Vec<f64> = num
        .iter()
        .zip(den)
        .filter(|(a, b)| a.is_finite() && b.is_finite() && **a > 0.0 && **b > 0.0)
        .map(|(a, b)| a / b)
        .collect();
    (median(&r), r.len())
}

/// The authors' margin function (reference 9.2): per input `min_{i != t} max(0, (z_t - z_i) / lambda_ti)`
/// with `lambda` a per-class-pair Lipschitz value; a pair with `lambda == 0` is skipped. With an upper
/// bound this is a certified radius; with an empirical lower bound, an empirical upper bound on it.
/// `logits` is flat `(B, K)`; `lambda(t, i)` gives the pair value.
pub fn margin_radius(
    logits: &[f32],
    k: usize,
    labels: &[usize],
    lambda: impl Fn(usize, usize) -> f64,
) -> Vec<f64> {
    labels
        .iter()
        .enumerate()
        .map(|(b, &t)| {
            let z = &logits[b * k..(b + 1) * k];
            (0..k)
                .filter(|&i| i != t)
                .filter_map(|i| {
                    let l = lambda(t, i);
                    (l > 0.0).then(|| ((z[t] as f64 - z[i] as f64) / l).max(0.0))
                })
                .fold(f64::INFINITY, f64::min)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_forms() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, f64::INFINITY, 2.0]), 3.0);
        assert!(median(&[]).is_nan());
        assert_eq!(
            ecdf(&[0.0, 1.0, 2.0, 3.0], &[0.0, 1.5, 3.0]),
            [0.25, 0.5, 1.0]
        );
        assert_eq!(linspace(0.0, 4.0, 5), [0.0, 1.0, 2.0, 3.0, 4.0]);
        let (m, n) = median_ratio(&[2.0, 6.0, 1.0, 5.0], &[1.0, 2.0, 0.0, f64::INFINITY]);
        assert_eq!((m, n), (2.5, 2));
        // Logits (3, 1, 0), label 0, pair values 2 and 1: min(2/2, 3/1) = 1. A wrong label gives 0.
        let r = margin_radius(&[3.0, 1.0, 0.0, 3.0, 1.0, 0.0], 3, &[0, 1], |_, i| {
            [0.0f64, 2.0, 1.0][i].max(1.0)
        });
        assert_eq!(r, [1.0, 0.0]);
    }
}
