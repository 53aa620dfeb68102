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

fn check(logits: &[f32], classes: usize, labels: &[usize]) -> Result<()> {
    if classes < 2 || logits.len() != labels.len() * classes {
        return Err(invalid(
            "logits",
            format!(
                "{} values for {} inputs of {classes} classes (need at least 2 classes)",
                logits.len(),
                labels.len()
            ),
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

/// Margin and prediction of one row, or `None` if a logit is not finite.
fn margin_of(z: &[f32], t: usize) -> Option<(f64, usize)> {
    if z.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let other = z
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != t)
        .map(|(_, &v)| v as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let pred = z
        .iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > z[best] { i } else { best });
    Some((z[t] as f64 - other, pred))
}

/// Builds one certificate per input: non-finite logits, misclassification and ties get radius 0; otherwise
/// `radius(z, t, margin)` gives it.
fn certify_rows(
    logits: &[f32],
    classes: usize,
    labels: &[usize],
    proposition: Proposition,
    bound: &CertifiedBound,
    radius: impl Fn(&[f32], usize, f64) -> f64,
) -> Vec<Certificate> {
    labels
        .iter()
        .enumerate()
        .map(|(b, &t)| {
            let z = &logits[b * classes..][..classes];
            let (margin, prediction, radius) = match margin_of(z, t) {
                None => (f64::NAN, None, 0.0),
                // A radius that is not a number (which finite inputs cannot produce) is never
                // counted as certified.
                Some((m, p)) if m > 0.0 => (
                    m,
                    Some(p),
                    Some(radius(z, t, m)).filter(|r| *r >= 0.0).unwrap_or(0.0),
                ),
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

/// Prop. 1 certificates for row-major `logits` (`labels.len() x classes`) under a whole-network bound.
pub fn certify_prop1(
    logits: &[f32],
    classes: usize,
    labels: &[usize],
    lipschitz: &CertifiedBound,
) -> Result<Vec<Certificate>> {
    check(logits, classes, labels)?;
    let radius = |_: &[f32], _: usize, m: f64| m / (std::f64::consts::SQRT_2 * lipschitz.value());
    Ok(certify_rows(
        logits,
        classes,
        labels,
        Proposition::One,
        lipschitz,
        radius,
    ))
}

/// Prop. 2 certificates: `l_sub` bounds the network below the last linear layer, whose row-major weight
/// `last_weight` is `classes x dim`.
pub fn certify_prop2(
    logits: &[f32],
    classes: usize,
    labels: &[usize],
    l_sub: &CertifiedBound,
    last_weight: &[f64],
    dim: usize,
) -> Result<Vec<Certificate>> {
    check(logits, classes, labels)?;
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
    let dist = |i: usize, j: usize| {
        w(i).iter()
            .zip(w(j))
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt()
    };
    let radius = |z: &[f32], t: usize, _: f64| {
        (0..classes)
            .filter(|&i| i != t)
            .map(|i| {
                let d = l_sub.value() * dist(t, i);
                if d > 0.0 {
                    (z[t] as f64 - z[i] as f64) / d
                } else {
                    f64::INFINITY
                }
            })
            .fold(f64::INFINITY, f64::min)
    };
    Ok(certify_rows(
        logits,
        classes,
        labels,
        Proposition::Two,
        l_sub,
        radius,
    ))
}
