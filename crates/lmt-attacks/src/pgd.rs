//! Projected gradient descent in an L2 ball (Madry et al.), on the C&W margin, with restarts.

use candle_core::Tensor;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::{
    check_batch, l2_distance, logits_and_grad, margin_tensor, misclassified, non_negative, one_hot,
    positive, Adversarial, AttackError, AttackOutcome, Batch, LogitsFn, Result,
};

/// Hyper-parameters of PGD-L2.
#[derive(Debug, Clone, PartialEq)]
pub struct PgdConfig {
    /// Radius of the L2 ball around the input.
    pub epsilon: f64,
    /// Length of each normalised gradient step.
    pub step_size: f64,
    /// Steps per restart.
    pub steps: usize,
    /// Runs per input: the first starts at the input, the others at a uniform random point of the ball.
    pub restarts: usize,
    /// Seed of the random starts.
    pub seed: u64,
    /// Clip every iterate to [0, 1] (on by default: images live in the box).
    pub clip: bool,
}

impl PgdConfig {
    /// A common choice: `steps` steps of size `2.5 epsilon / steps`, one restart, clipped to [0, 1].
    pub fn new(epsilon: f64, steps: usize) -> Self {
        Self {
            epsilon,
            step_size: 2.5 * epsilon / steps.max(1) as f64,
            steps,
            restarts: 1,
            seed: 0,
            clip: true,
        }
    }
}

/// PGD-L2 on a batch: ascends the margin `max_{i != t} z_i - z_t` by normalised gradient steps, projecting
/// each iterate into the box (when `clip`) and then into the ball of radius `epsilon` (shrinking toward the
/// input keeps it in the box, so the result lies in both). Every iterate is tested before its step; per
/// input the closest successful iterate over all restarts is returned. A success is always within
/// `epsilon` of the input, so PGD can never succeed below the minimal adversarial distance.
pub fn pgd(
    f: &dyn LogitsFn,
    x: &Tensor,
    labels: &[usize],
    cfg: &PgdConfig,
) -> Result<AttackOutcome> {
    if !non_negative(cfg.epsilon) || !positive(cfg.step_size) || cfg.restarts == 0 {
        return Err(AttackError::Invalid(format!(
            "PGD needs epsilon >= 0, step_size > 0 and restarts >= 1, got {cfg:?}"
        )));
    }
    let Batch { b, k, n, xs, done } = check_batch(f, x, labels)?;
    let dev = x.device();
    let shape = x.dims().to_vec();
    let onehot = one_hot(labels, k, dev)?;
    let mut best: Vec<Option<(f64, usize)>> = vec![None; b];
    let mut best_img = xs.clone();

    for restart in 0..cfg.restarts {
        let mut cur = xs.clone();
        if restart > 0 {
            let mut rng = lmt_core::named_rng(cfg.seed, &format!("pgd-start-{restart}"));
            for i in 0..b {
                let dir: Vec<f64> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
                let norm = dir.iter().map(|d| d * d).sum::<f64>().sqrt().max(1e-300);
                let radius = cfg.epsilon * rng.random::<f64>().powf(1.0 / n as f64);
                for (p, d) in cur[i * n..(i + 1) * n].iter_mut().zip(&dir) {
                    *p = (*p as f64 + radius * d / norm) as f32;
                }
            }
            project(&mut cur, &xs, n, cfg);
        }
        for step in 0..=cfg.steps {
            let t = Tensor::from_vec(cur.clone(), shape.as_slice(), dev)?;
            let (z, g) = logits_and_grad(f, &t, |z| {
                Ok(margin_tensor(z, &onehot)?.neg()?.sum_all()?)
            })?;
            let z: Vec<f32> = z.flatten_all()?.to_vec1()?;
            if z.iter().any(|v| !v.is_finite()) {
                return Err(AttackError::NonFinite("logits"));
            }
            for i in (0..b).filter(|&i| !done[i]) {
                if misclassified(&z[i * k..(i + 1) * k], labels[i]) {
                    let img = i * n..(i + 1) * n;
                    let d = l2_distance(&cur[img.clone()], &xs[img.clone()]);
                    if best[i].is_none_or(|(bd, _)| d < bd) {
                        best[i] = Some((d, restart * (cfg.steps + 1) + step));
                        best_img[img.clone()].copy_from_slice(&cur[img]);
                    }
                }
            }
            if step == cfg.steps {
                break;
            }
            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
            for i in 0..b {
                let gi = &g[i * n..(i + 1) * n];
                let norm = gi.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
                if norm > 0.0 {
                    for (p, &gv) in cur[i * n..(i + 1) * n].iter_mut().zip(gi) {
                        *p = (*p as f64 + cfg.step_size * gv as f64 / norm) as f32;
                    }
                }
            }
            project(&mut cur, &xs, n, cfg);
        }
    }
    let total = cfg.restarts * (cfg.steps + 1);
    let per_input = (0..b)
        .map(|i| match (done[i], best[i]) {
            (true, _) => Adversarial {
                success: true,
                distance: Some(0.0),
                iterations: 0,
            },
            (false, Some((d, it))) => Adversarial {
                success: true,
                distance: Some(d),
                iterations: it,
            },
            (false, None) => Adversarial {
                success: false,
                distance: None,
                iterations: total,
            },
        })
        .collect();
    Ok(AttackOutcome {
        images: Tensor::from_vec(best_img, shape.as_slice(), dev)?.to_dtype(x.dtype())?,
        per_input,
    })
}

/// Clips to [0, 1] (when asked) and then scales each perturbation into the ball of radius epsilon, with a
/// relative margin so that f32 rounding never leaves the ball.
fn project(cur: &mut [f32], xs: &[f32], n: usize, cfg: &PgdConfig) {
    for (c, x) in cur.chunks_mut(n).zip(xs.chunks(n)) {
        if cfg.clip {
            c.iter_mut().for_each(|p| *p = p.clamp(0.0, 1.0));
        }
        let d = l2_distance(c, x);
        if d > cfg.epsilon {
            let s = cfg.epsilon / d * (1.0 - 1e-6);
            for (p, &q) in c.iter_mut().zip(x) {
                *p = (q as f64 + s * (*p as f64 - q as f64)) as f32;
            }
        }
    }
}
