//! Per-input certification: the guarded radius of Prop. 1 and Prop. 2.
//!
//! With logits `z`, label `t` and margin `M = z_t - max_{i != t} z_i`:
//! - Prop. 1: no perturbation with ‖e‖ < M / (sqrt(2) L) changes the prediction, L a bound of the whole
//!   network;
//! - Prop. 2: radius `min_{i != t} (z_t - z_i) / (L_sub ‖w_t - w_i‖)`, L_sub a bound of the network
//!   below the last linear layer `W` (rows `w_i`). Never smaller than Prop. 1's radius with
//!   `L = L_sub ‖W‖`, and what the paper's experiments use.
//!
//! A misclassified input, a tie (margin exactly 0) and any NaN or infinite logit get radius 0: they are
//! never counted as certified. A class pair with `‖w_t - w_i‖ = 0` cannot flip and imposes no limit.
//!
//! Logits computed in floating point are not the network's exact logits: the `_guarded` functions take
//! f64 logits with a bound on their L2 error (see [`crate::rounding`]) and guard every margin by it.

use crate::bound::{BoundMethod, CertifiedBound};
use crate::error::{invalid, Result};

/// Which proposition produced a radius.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proposition {
    /// margin / (sqrt(2) L).
    One,
    /// min over classes of the pairwise margin over L_sub ‖w_t - w_i‖.
    Two,
}

impl Proposition {
    /// "prop1" or "prop2", for CSV files.
    pub fn name(self) -> &'static str {
        match self {
            Proposition::One => "prop1",
            Proposition::Two => "prop2",
        }
    }
}

/// The certificate of one input: a certified lower bound on the L2 distance to any input classified
/// differently.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Certificate {
    /// True label.
    pub label: usize,
    /// Predicted class (first maximal logit); `None` if a logit is NaN or infinite.
    pub prediction: Option<usize>,
    /// `z_t - max_{i != t} z_i` (negative when misclassified, NaN when a logit is not finite).
    pub margin: f64,
    /// Certified radius (0 unless correctly classified with a strictly positive margin).
    pub radius: f64,
    /// Which proposition gave the radius.
    pub proposition: Proposition,
    /// Which method bounded the Lipschitz constant.
    pub method: BoundMethod,
}

/// The one definition of "certified at L2 size `eps`": every perturbation of norm at most `eps` keeps
/// the prediction. Both propositions guarantee it for norms strictly below the radius, and a perturbation
/// of norm exactly the radius can reach a tie, which never counts as correct; so it holds iff
/// `eps < radius`. A radius of 0 (misclassified, tied, non-finite) is certified nowhere, and NaN never.
pub fn certified_at(radius: f64, eps: f64) -> bool {
    radius > eps && eps >= 0.0
}

/// The one definition of an attack result contradicting a certificate: a successful adversarial
/// example at L2 distance `distance <= radius` from an input with a positive radius. In exact arithmetic
/// no such example exists (at distance exactly the radius the margin is at least 0, and a tie is not a
/// success), so one is a bug in a bound, the certifier or the attack. A radius of 0 promises nothing.
pub fn contradicts(radius: f64, distance: f64) -> bool {
    radius > 0.0 && distance <= radius
}

impl Certificate {
    /// True when the input is certified at L2 size `eps` ([`certified_at`]).
    pub fn certified_at(&self, eps: f64) -> bool {
        certified_at(self.radius, eps)
    }
}

fn check(logits: usize, errors: &[f64], classes: usize, labels: &[usize]) -> Result<()> {
    if classes < 2 || logits != labels.len() * classes {
        return Err(invalid(
            "logits",
            format!(
                "{logits} values for {} inputs of {classes} classes (need at least 2 classes)",
                labels.len()
            ),
        ));
    }
    if errors.len() != labels.len() {
        return Err(invalid(
            "logit error bounds",
            format!("{} bounds for {} inputs", errors.len(), labels.len()),
        ));
    }
    if let Some(&l) = labels.iter().find(|&&l| l >= classes) {
        return Err(invalid(
            "labels",
            format!("label {l} with only {classes} classes"),
        ));
    }
    Ok(())
}

/// Shrinks a computed radius by the relative rounding of the few f64 operations that produced it, so the
/// reported radius never exceeds the exact one.
const RADIUS_ROUNDING: f64 = 1.0 - 8.0 * f64::EPSILON;

/// Margin (computed) and prediction of one row, or `None` if a logit or the error bound is not finite.
fn margin_of(z: &[f64], err: f64, t: usize) -> Option<(f64, usize)> {
    if z.iter().any(|v| !v.is_finite()) || !err.is_finite() || err < 0.0 {
        return None;
    }
    let other = z
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != t)
        .map(|(_, &v)| v)
        .fold(f64::NEG_INFINITY, f64::max);
    let pred = z
        .iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > z[best] { i } else { best });
    Some((z[t] - other, pred))
}

/// Builds one certificate per input. `errors[b]` bounds the L2 distance between the computed logits of
/// input b and the exact ones, so every pairwise margin `z_t - z_i` is guarded by `sqrt(2) errors[b]`
/// (|e_t - e_i| <= sqrt 2 ‖e‖): an input whose guarded margin is not positive (misclassified, tied, or
/// within rounding of a tie) gets radius 0, and so does a non-finite logit; otherwise
/// `radius(z, t, guard)` gives it.
fn certify_rows(
    logits: &[f64],
    errors: &[f64],
    classes: usize,
    labels: &[usize],
    proposition: Proposition,
    bound: &CertifiedBound,
    radius: impl Fn(&[f64], usize, f64) -> f64,
) -> Vec<Certificate> {
    labels
        .iter()
        .enumerate()
        .map(|(b, &t)| {
            let z = &logits[b * classes..][..classes];
            let guard = std::f64::consts::SQRT_2 * errors[b] * (1.0 + 4.0 * f64::EPSILON);
            let (margin, prediction, radius) = match margin_of(z, errors[b], t) {
                None => (f64::NAN, None, 0.0),
                // A radius that is not a number (which finite inputs cannot produce) is never
                // counted as certified.
                Some((m, p)) if m - guard > 0.0 => {
                    let r = radius(z, t, guard) * RADIUS_ROUNDING;
                    (m, Some(p), if r >= 0.0 { r } else { 0.0 })
                }
                Some((m, p)) => (m, Some(p), 0.0),
            };
            Certificate {
                label: t,
                prediction,
                margin,
                radius,
                proposition,
                method: bound.method(),
            }
        })
        .collect()
}

/// Prop. 1 certificates for row-major f32 `logits` (`labels.len() x classes`) taken as exact (as when they
/// come from exact arithmetic; an f32 forward pass is not: see [`certify_prop1_guarded`]).
pub fn certify_prop1(
    logits: &[f32],
    classes: usize,
    labels: &[usize],
    lipschitz: &CertifiedBound,
) -> Result<Vec<Certificate>> {
    let z: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
    certify_prop1_guarded(&z, &vec![0.0; labels.len()], classes, labels, lipschitz)
}

/// Prop. 1 certificates for computed f64 `logits` whose L2 distance from the exact logits is at most
/// `errors[b]` for input b (from [`crate::rounding`]): the margin is guarded by that error.
pub fn certify_prop1_guarded(
    logits: &[f64],
    errors: &[f64],
    classes: usize,
    labels: &[usize],
    lipschitz: &CertifiedBound,
) -> Result<Vec<Certificate>> {
    check(logits.len(), errors, classes, labels)?;
    let radius = |z: &[f64], t: usize, guard: f64| {
        let m = (0..classes)
            .filter(|&i| i != t)
            .map(|i| z[t] - z[i] - guard)
            .fold(f64::INFINITY, f64::min);
        m / (std::f64::consts::SQRT_2 * lipschitz.value())
    };
    Ok(certify_rows(
        logits,
        errors,
        classes,
        labels,
        Proposition::One,
        lipschitz,
        radius,
    ))
}

/// Prop. 2 certificates for f32 `logits` taken as exact (see [`certify_prop1`]): `l_sub` bounds the
/// network below the last linear layer, whose row-major weight `last_weight` is `classes x dim`.
pub fn certify_prop2(
    logits: &[f32],
    classes: usize,
    labels: &[usize],
    l_sub: &CertifiedBound,
    last_weight: &[f64],
    dim: usize,
) -> Result<Vec<Certificate>> {
    let z: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
    certify_prop2_guarded(
        &z,
        &vec![0.0; labels.len()],
        classes,
        labels,
        l_sub,
        last_weight,
        dim,
    )
}

/// Prop. 2 certificates for computed f64 `logits` within `errors[b]` (L2) of the exact ones: every
/// pairwise margin is guarded by that error before it is divided by `L_sub ‖w_t - w_i‖`.
pub fn certify_prop2_guarded(
    logits: &[f64],
    errors: &[f64],
    classes: usize,
    labels: &[usize],
    l_sub: &CertifiedBound,
    last_weight: &[f64],
    dim: usize,
) -> Result<Vec<Certificate>> {
    check(logits.len(), errors, classes, labels)?;
    if last_weight.len() != classes * dim || last_weight.iter().any(|v| !v.is_finite()) {
        return Err(invalid(
            "last layer weight",
            format!(
                "{} values (finite) needed for {classes} x {dim}",
                classes * dim
            ),
        ));
    }
    let w = |i: usize| &last_weight[i * dim..][..dim];
    // ‖w_t - w_i‖ computed in f64, enlarged by its rounding so the divisor is never too small.
    let dist = |i: usize, j: usize| {
        w(i).iter()
            .zip(w(j))
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt()
            * (1.0 + (dim as f64 + 4.0) * f64::EPSILON)
    };
    let radius = |z: &[f64], t: usize, guard: f64| {
        (0..classes)
            .filter(|&i| i != t)
            .map(|i| {
                let d = l_sub.value() * dist(t, i);
                if d > 0.0 {
                    (z[t] - z[i] - guard) / d
                } else {
                    f64::INFINITY
                }
            })
            .fold(f64::INFINITY, f64::min)
    };
    Ok(certify_rows(
        logits,
        errors,
        classes,
        labels,
        Proposition::Two,
        l_sub,
        radius,
    ))
}
