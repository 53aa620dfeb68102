//! DeepFool L2 (Moosavi-Dezfooli et al.) on logits, over all classes, with the authors' per-step overshoot.

use candle_core::Tensor;

use crate::{
    check_batch, class_gradients, l2_distance, misclassified, non_negative, Adversarial,
    AttackError, AttackOutcome, Batch, ClassGradients, LogitsFn, Result,
};

/// Hyper-parameters of DeepFool. The defaults are the paper's: overshoot 0.02, 50 iterations, no clipping.
#[derive(Debug, Clone, PartialEq)]
pub struct DeepFoolConfig {
    /// Each step is multiplied by `1 + overshoot` to cross the linearised boundary.
    pub overshoot: f64,
    /// Steps before giving up.
    pub max_iterations: usize,
    /// Clip every iterate to [0, 1]. Off by default, as in the authors' and the original DeepFool code
    /// whose distances the paper reports (0.97 median on MNIST); clipping breaks the linearisation that
    /// makes a step land on the boundary and so needs more steps. With clipping on, the distance is that of
    /// the clipped image, which is the one fed to the model.
    pub clip: bool,
}

impl Default for DeepFoolConfig {
    fn default() -> Self {
        Self {
            overshoot: 0.02,
            max_iterations: 50,
            clip: false,
        }
    }
}

/// The authors' offset in the step length `(|f_k| + 1e-4) / ||w_k||^2`, which makes a step land past the
/// linearised boundary rather than on it.
const STEP_OFFSET: f64 = 1e-4;

/// Untargeted DeepFool L2 on a batch of images with their labels.
///
/// Per iteration, the gradients of all `K` logits of every active input come from ONE backward pass
/// ([`class_gradients`]). The step moves
/// toward the nearest linearised boundary `l* = argmin_k |f_k| / ||w_k||` with `f_k = z_k - z_t` and
/// `w_k = grad z_k - grad z_t`, by `(1 + overshoot) (|f| + 1e-4) / ||w||^2 * w`.
pub fn deepfool(
    f: &dyn LogitsFn,
    x: &Tensor,
    labels: &[usize],
    cfg: &DeepFoolConfig,
) -> Result<AttackOutcome> {
    if !non_negative(cfg.overshoot) || cfg.max_iterations == 0 {
        return Err(AttackError::Invalid(format!(
            "DeepFool needs overshoot >= 0 and max_iterations >= 1, got {cfg:?}"
        )));
    }
    let Batch { b, k, n, xs, done } = check_batch(f, x, labels)?;
    let dev = x.device();
    let shape = x.dims().to_vec();
    let mut cur = xs.clone();
    let mut result: Vec<Option<Adversarial>> = (0..b)
        .map(|i| {
            done[i].then_some(Adversarial {
                success: true,
                distance: Some(0.0),
                iterations: 0,
            })
        })
        .collect();

    for it in 0..=cfg.max_iterations {
        let active: Vec<usize> = (0..b).filter(|&i| result[i].is_none()).collect();
        if active.is_empty() {
            break;
        }
        let a = active.len();
        let mut pts = Vec::with_capacity(a * n);
        for &i in &active {
            pts.extend_from_slice(&cur[i * n..(i + 1) * n]);
        }
        let mut pts_shape = shape.clone();
        pts_shape[0] = a;
        let ClassGradients {
            logits: z,
            grads: g,
            ..
        } = class_gradients(f, &Tensor::from_vec(pts, pts_shape.as_slice(), dev)?, k)?;
        for (j, &i) in active.iter().enumerate() {
            let t = labels[i];
            let zi = &z[j * k..(j + 1) * k];
            let img = i * n..(i + 1) * n;
            if misclassified(zi, t) {
                result[i] = Some(Adversarial {
                    success: true,
                    distance: Some(l2_distance(&cur[img.clone()], &xs[img])),
                    iterations: it,
                });
                continue;
            }
            if it == cfg.max_iterations {
                result[i] = Some(Adversarial {
                    success: false,
                    distance: None,
                    iterations: it,
                });
                continue;
            }
            let grad = |c: usize| &g[(j * k + c) * n..(j * k + c + 1) * n];
            let gt = grad(t);
            // Nearest linearised boundary among classes with a non-zero gradient difference.
            let mut best: Option<(f64, f64, usize)> = None; // (distance, |f|, class)
            for c in (0..k).filter(|&c| c != t) {
                let wn2: f64 = grad(c)
                    .iter()
                    .zip(gt)
                    .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
                    .sum();
                if wn2.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                    continue;
                }
                let fk = (zi[c] as f64 - zi[t] as f64).abs();
                let dist = fk / wn2.sqrt();
                if best.is_none_or(|(d, _, _)| dist < d) {
                    best = Some((dist, fk, c));
                }
            }
            let Some((_, fk, c)) = best else {
                // Every gradient difference is zero: the model is locally constant and cannot be moved.
                result[i] = Some(Adversarial {
                    success: false,
                    distance: None,
                    iterations: it,
                });
                continue;
            };
            let gc = grad(c);
            let wn2: f64 = gc
                .iter()
                .zip(gt)
                .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
                .sum();
            let coef = (1.0 + cfg.overshoot) * (fk + STEP_OFFSET) / wn2;
            for (p, (&gp, &gq)) in cur[i * n..(i + 1) * n].iter_mut().zip(gc.iter().zip(gt)) {
                let mut v = *p as f64 + coef * (gp as f64 - gq as f64);
                if cfg.clip {
                    v = v.clamp(0.0, 1.0);
                }
                *p = v as f32;
            }
        }
    }

    let per_input: Vec<Adversarial> = result
        .into_iter()
        .map(|r| {
            // The last iteration resolves every input; the fallback only keeps this free of panics.
            r.unwrap_or(Adversarial {
                success: false,
                distance: None,
                iterations: cfg.max_iterations,
            })
        })
        .collect();
    // Failed inputs return the original image, successful ones the image that was classified wrongly.
    let mut images = xs.clone();
    for (i, r) in per_input.iter().enumerate() {
        if r.success {
            images[i * n..(i + 1) * n].copy_from_slice(&cur[i * n..(i + 1) * n]);
        }
    }
    Ok(AttackOutcome {
        images: Tensor::from_vec(images, shape.as_slice(), dev)?.to_dtype(x.dtype())?,
        per_input,
    })
}
