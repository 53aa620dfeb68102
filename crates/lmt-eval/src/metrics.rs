//! Every metric of the evaluation, defined once: certified accuracy, accuracy under attack, clean
//! accuracy, their 95% confidence intervals, medians, cumulative curves, per-point ratios, and the
//! margin-over-Lipschitz radius of inequality (5).
//!
//! Labels: a certified accuracy is a guaranteed lower bound on robust accuracy; an accuracy under attack
//! is an empirical upper bound on it (the attack may miss adversarial examples); a Wilson interval is
//! the sampling uncertainty of either over the test points used.

pub use lmt_core::{certified_at, contradicts};

/// An input counts as robust under an attack at L2 size `eps` unless the attack found an adversarial
/// example at distance `<= eps`; `distance` is `None` when it found none. A misclassified input has
/// distance 0 and is robust nowhere.
pub fn robust_at(distance: Option<f64>, eps: f64) -> bool {
    distance.is_none_or(|d| d > eps)
}

/// `k` of `n` points, with its Wilson score interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proportion {
    /// Points that count.
    pub k: usize,
    /// Points in all.
    pub n: usize,
}

impl Proportion {
    /// How many of `flags` are true.
    pub fn count(flags: impl IntoIterator<Item = bool>) -> Self {
        let (mut k, mut n) = (0, 0);
        for f in flags {
            k += f as usize;
            n += 1;
        }
        Proportion { k, n }
    }

    /// k / n (NaN when n = 0).
    pub fn value(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.k as f64 / self.n as f64
        }
    }

    /// The 95% Wilson score interval (z = 1.959964), which unlike the normal approximation stays inside
    /// [0, 1] and is honest at 0 and 1; (0, 1) when n = 0.
    pub fn wilson95(&self) -> (f64, f64) {
        if self.n == 0 {
            return (0.0, 1.0);
        }
        let z = 1.959_963_984_540_054_f64;
        let (n, p) = (self.n as f64, self.value());
        let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
        let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
        ((centre - half).max(0.0), (centre + half).min(1.0))
    }
}

impl std::fmt::Display for Proportion {
    /// `0.4940 [0.4630, 0.5250] (494/1000)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (lo, hi) = self.wilson95();
        write!(
            f,
            "{:.4} [{lo:.4}, {hi:.4}] ({}/{})",
            self.value(),
            self.k,
            self.n
        )
    }
}

/// Certified accuracy at `eps` over certified radii.
pub fn certified_accuracy(radii: &[f64], eps: f64) -> Proportion {
    Proportion::count(radii.iter().map(|&r| certified_at(r, eps)))
}

/// Accuracy under an attack at `eps` over its per-point distances (`None`: no adversarial found).
pub fn accuracy_under_attack(distances: &[Option<f64>], eps: f64) -> Proportion {
    Proportion::count(distances.iter().map(|&d| robust_at(d, eps)))
}

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

    #[test]
    fn accuracies_use_one_boundary_rule() {
        let radii = [0.0, 0.5, 1.0, f64::NAN, f64::INFINITY];
        // Certified at e iff e < r: the radius itself is not certified (a tie is reachable there).
        assert_eq!(certified_accuracy(&radii, 0.5), Proportion { k: 2, n: 5 });
        assert_eq!(certified_accuracy(&radii, 0.0), Proportion { k: 3, n: 5 });
        // Robust under attack at e unless an adversarial at distance <= e was found.
        let d = [None, Some(0.0), Some(0.5), Some(0.7)];
        assert_eq!(accuracy_under_attack(&d, 0.5), Proportion { k: 2, n: 4 });
        assert_eq!(accuracy_under_attack(&d, 0.0), Proportion { k: 3, n: 4 });
    }

    /// Radii from power iteration, or from a method name this build does not know, are never labelled
    /// guaranteed in the summary; one such row among deterministic ones is enough.
    #[test]
    fn a_summary_over_a_power_iteration_bound_is_labelled_probabilistic() {
        let row = |i: usize, method: &str| crate::CertificateRow {
            index: i,
            label: 0,
            prediction: Some(0),
            margin: 1.0,
            logit_error: 0.0,
            radius: 0.5,
            proposition: "prop2".into(),
            bound_method: method.into(),
        };
        let text = |methods: &[&str]| {
            let rows: Vec<_> = methods.iter().enumerate().map(|(i, m)| row(i, m)).collect();
            crate::CertifySummary::of(&rows).to_string()
        };
        for methods in [
            &["power (probabilistic)"][..],
            &["fft", "mixed with power (probabilistic)"],
            &["dense", "a method this build does not know"],
        ] {
            let t = text(methods);
            assert!(
                t.contains("PROBABILISTIC") && !t.contains("guaranteed"),
                "{t}"
            );
        }
        let t = text(&["dense", "fft", "mixed"]);
        assert!(
            t.contains("guaranteed") && !t.contains("PROBABILISTIC"),
            "{t}"
        );
    }

    #[test]
    fn a_non_finite_radius_counts_as_zero_in_the_summary_median() {
        let row = |i: usize, r: f64| crate::CertificateRow {
            index: i,
            label: 0,
            prediction: Some(0),
            margin: 1.0,
            logit_error: 0.0,
            radius: r,
            proposition: "prop2".into(),
            bound_method: "dense".into(),
        };
        let rows = [row(0, f64::NAN), row(1, f64::INFINITY), row(2, 0.5)];
        let s = crate::CertifySummary::of(&rows);
        assert_eq!(
            s.median_radius, 0.0,
            "NaN and infinity count as 0: median of (0, 0, 0.5)"
        );
        assert_eq!(
            (s.certified[1].0, s.certified[1].1.k),
            (0.2, 1),
            "and certify nothing"
        );
    }

    #[test]
    fn wilson_interval_matches_published_values() {
        // Wilson (1927) / Newcombe (1998) table: 81 of 263 gives 0.2553 to 0.3662; 0 of 10 gives
        // 0 to 0.2775; 10 of 10 gives 0.7225 to 1.
        let check = |k, n, lo: f64, hi: f64| {
            let (a, b) = Proportion { k, n }.wilson95();
            assert!(
                (a - lo).abs() < 5e-4 && (b - hi).abs() < 5e-4,
                "{k}/{n}: {a} {b}"
            );
        };
        check(81, 263, 0.2553, 0.3662);
        check(0, 10, 0.0, 0.2775);
        check(10, 10, 0.7225, 1.0);
        assert_eq!(Proportion { k: 0, n: 0 }.wilson95(), (0.0, 1.0));
    }
}
