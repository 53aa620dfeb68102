//! The LMT loss: softmax cross-entropy on logits whose non-target entries are raised by the margin the
//! requested robustness needs (Alg. 1).
//!
//! - Prop. 1: add `sqrt(2) c L` to every non-target logit (`c_l` = c L).
//! - Prop. 2: add `c L_sub ‖w_i - w_t‖` to logit i (`c_l` = c L_sub, `w` the last layer's weight).
//!
//! `capped = true` reproduces the authors' code (reference 6.1/6.2): each sample's addition is scaled by
//! a constant `f_b` in [0, 1], 0 for a misclassified sample and otherwise the smallest ratio of its current
//! pairwise margin to the required one, so the added margin never makes another class overtake the target.
//! The paper's text (Alg. 1) adds the full amount: `capped = false`. The paper's runs used the authors'
//! code, i.e. Prop. 2 with capping.

use candle_core::{DType, Tensor, D};

use crate::error::{invalid, Result};

/// Which proposition the loss enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LmtProposition {
    /// Whole-network bound, `sqrt(2) c L` on every non-target logit.
    One,
    /// Per class pair through the last layer, `c L_sub ‖w_i - w_t‖`.
    Two,
}

fn one_hot(labels: &Tensor, classes: usize) -> Result<Tensor> {
    Ok(candle_nn::encoding::one_hot(
        labels.to_dtype(DType::U32)?,
        classes,
        1f32,
        0f32,
    )?)
}

fn check(logits: &Tensor, labels: &Tensor) -> Result<(usize, usize)> {
    let (b, k) = logits.dims2()?;
    if labels.dims() != [b] {
        return Err(invalid(
            "LMT loss",
            format!(
                "labels of shape {:?} for logits {:?}",
                labels.dims(),
                logits.dims()
            ),
        ));
    }
    Ok((b, k))
}

/// Prop. 1 logits: `z + f_b sqrt(2) c L (1 - onehot)`, with `f_b = 1` unless `capped`.
pub fn lmt_logits_prop1(
    logits: &Tensor,
    labels: &Tensor,
    c_l: &Tensor,
    capped: bool,
) -> Result<Tensor> {
    let (_, k) = check(logits, labels)?;
    let hot = one_hot(labels, k)?;
    let gap = c_l.affine(std::f64::consts::SQRT_2, 0.0)?.reshape((1, 1))?;
    let others = (1.0 - &hot)?;
    let mut add = others.broadcast_mul(&gap)?;
    if capped {
        let target = (logits * &hot)?.sum_keepdim(1)?;
        let best_other = (logits + (&hot * -1e30)?)?.max_keepdim(1)?;
        let f = (target - best_other)?
            .broadcast_div(&gap)?
            .clamp(0f32, 1f32)?
            .detach();
        add = add.broadcast_mul(&f)?;
    }
    Ok((logits + add)?)
}

/// Distances ‖w_i - w_j‖ between the rows of the last layer's weight `w` (`classes x dim`), with a
/// gradient that stays finite on the zero diagonal.
pub fn class_distances(w: &Tensor) -> Result<Tensor> {
    let (k, _) = w.dims2()?;
    let diff = w.unsqueeze(1)?.broadcast_sub(&w.unsqueeze(0)?)?;
    let sq = diff.sqr()?.sum(D::Minus1)?;
    let eye = Tensor::eye(k, DType::F32, w.device())?;
    Ok(((sq + &eye)?.sqrt()? * (1.0 - eye)?)?)
}

/// Prop. 2 logits: `z_i + f_b c L_sub ‖w_i - w_t‖`, with `f_b = 1` unless `capped`.
pub fn lmt_logits_prop2(
    logits: &Tensor,
    labels: &Tensor,
    c_lsub: &Tensor,
    last_weight: &Tensor,
    capped: bool,
) -> Result<Tensor> {
    let (_, k) = check(logits, labels)?;
    if last_weight.dims2()?.0 != k {
        return Err(invalid(
            "LMT loss",
            format!("last weight {:?} for {k} classes", last_weight.dims()),
        ));
    }
    let rows = class_distances(last_weight)?.index_select(&labels.to_dtype(DType::U32)?, 0)?;
    let mut add = rows.broadcast_mul(&c_lsub.reshape((1, 1))?)?;
    if capped {
        let hot = one_hot(labels, k)?;
        let target = (logits * &hot)?.sum_keepdim(1)?;
        let m = target.broadcast_sub(logits)?;
        // f_bi = m_bi / L_bi clipped to [0, 1]; the target's own entry (m = L = 0) counts as 1, as in the
        // authors' kernel (m >= L), so it never forces f_b to 0.
        let ratio = (m / add.clamp(1e-30f32, f32::MAX)?)?.clamp(0f32, 1f32)?;
        let f = (ratio + hot)?.clamp(0f32, 1f32)?.min_keepdim(1)?.detach();
        add = add.broadcast_mul(&f)?;
    }
    Ok((logits + add)?)
}

/// GloRo-style logits (Leino et al. 2021) for cross-entropy over K + 1 classes: `z` with one more
/// column, the "bottom" logit `max_{j != t} (z_j + eps_lsub ||w_t - w_j||)` (`eps_lsub` = eps L_sub,
/// `w` the last layer's weight). Its softmax wins unless every other class stays below the target by
/// its Prop. 2 margin at radius eps, so a correctly classified training point is certified at eps
/// exactly when the target beats the bottom logit. LMT ([`lmt_logits_prop2`]) instead raises every
/// non-target logit by its own margin and keeps K classes.
pub fn gloro_logits(
    logits: &Tensor,
    labels: &Tensor,
    eps_lsub: &Tensor,
    last_weight: &Tensor,
) -> Result<Tensor> {
    let (_, k) = check(logits, labels)?;
    if last_weight.dims2()?.0 != k {
        return Err(invalid(
            "GloRo loss",
            format!("last weight {:?} for {k} classes", last_weight.dims()),
        ));
    }
    let rows = class_distances(last_weight)?.index_select(&labels.to_dtype(DType::U32)?, 0)?;
    let raised = (logits + rows.broadcast_mul(&eps_lsub.reshape((1, 1))?)?)?;
    // The target's own entry is pushed far below every other, so the maximum is over j != t.
    let hot = one_hot(labels, k)?;
    let bottom = (raised + (hot * -1e30)?)?.max_keepdim(1)?;
    Ok(Tensor::cat(&[logits, &bottom], 1)?)
}

/// Mean softmax cross-entropy of `logits` (`B x K`) against `labels` (`B`).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::loss::cross_entropy(
        logits,
        &labels.to_dtype(DType::U32)?,
    )?)
}
