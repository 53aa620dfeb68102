//! Carlini & Wagner's L2 attack, untargeted, with the authors' (LMT reference code) semantics.

use candle_core::{Tensor, Var};

use crate::{
    best_other, check_batch, l2_distance, margin_tensor, one_hot, positive, Adversarial,
    AttackError, AttackOutcome, Batch, LogitsFn, Result,
};

/// Hyper-parameters of C&W L2. The defaults are the paper's evaluation attack (Table 1: 100 iterations,
/// no restart, 9 binary-search steps from the constant 1e-3).
#[derive(Debug, Clone, PartialEq)]
pub struct CwConfig {
    /// Adam steps per binary-search step.
    pub iterations: usize,
    /// Binary-search steps over the constant (x10 while never successful, bisection after).
    pub binary_steps: usize,
    /// The first constant `c` weighing the margin term against the squared distance.
    pub initial_const: f64,
    /// Adam's step size (Chainer defaults for the rest: betas 0.9/0.999, eps 1e-8).
    pub lr: f64,
    /// Confidence kappa: success needs `max_{i != t} z_i > z_t - kappa`; with kappa = 0, a strict win.
    pub confidence: f64,
    /// Optimise the batch *mean* of the per-input objectives, as the authors' code does, instead of the
    /// sum (the default; see [`carlini_wagner`]). Adam is scale-invariant but for its eps, so the two differ
    /// only where gradients approach eps, and an input's result then depends on its batch size.
    pub batch_mean: bool,
}

impl Default for CwConfig {
    fn default() -> Self {
        Self {
            iterations: 100,
            binary_steps: 9,
            initial_const: 1e-3,
            lr: 1e-2,
            confidence: 0.0,
            batch_mean: false,
        }
    }
}

impl CwConfig {
    /// The adversarial-training attack of the paper's AT baseline (`cw_30_1_1_1`): one binary step of
    /// 30 iterations with c = 1.
    pub fn adversarial_training() -> Self {
        Self {
            iterations: 30,
            binary_steps: 1,
            initial_const: 1.0,
            ..Self::default()
        }
    }
}

/// The largest constant the binary search may reach (the authors' `max_c`).
const MAX_CONST: f64 = 1e10;
/// Squeeze of the initial image into the open box before `atanh` (the authors' 0.999999).
const SQUEEZE: f64 = 0.999_999;

/// Untargeted C&W L2 on a batch of images in [0, 1] with their labels.
///
/// Optimises `||x' - x||^2 + c_b max(z_t - max_{i != t} z_i + kappa, 0)` over `x' = tanh(w)/2 + 1/2`
/// with Adam, restarting from the input at every binary-search step, and keeps per input the smallest
/// successful iterate. Each iterate is tested before its step, on exactly the image fed to the model.
///
/// One departure from the authors' code, on purpose: the objective is the batch *sum* rather than the
/// batch mean, so an input's result does not depend on the batch it is in (Adam is invariant to the
/// scale apart from its eps). An input that is already misclassified is returned unchanged at distance 0
/// (the authors' squeeze gives a tiny non-zero distance instead).
pub fn carlini_wagner(
    f: &dyn LogitsFn,
    x: &Tensor,
    labels: &[usize],
    cfg: &CwConfig,
) -> Result<AttackOutcome> {
    if cfg.iterations == 0
        || cfg.binary_steps == 0
        || !positive(cfg.lr)
        || !positive(cfg.initial_const)
    {
        return Err(AttackError::Invalid(format!(
            "C&W needs iterations >= 1, binary_steps >= 1, lr > 0 and initial_const > 0, got {cfg:?}"
        )));
    }
    let Batch { b, k, n, xs, done } = check_batch(f, x, labels)?;
    if !cfg.batch_mean && done.iter().any(|&d| d) {
        return attack_the_rest(f, x, labels, cfg, &done, &xs);
    }
    let dev = x.device();
    let shape = x.dims().to_vec();
    let onehot = one_hot(labels, k, dev)?;

    let x32 = Tensor::from_vec(xs.clone(), shape.as_slice(), dev)?;
    // w0 = atanh((x - 1/2) * 2 * 0.999999), in f64 so the squeeze is not lost to rounding.
    let w0: Vec<f32> = xs
        .iter()
        .map(|&p| (((p as f64 - 0.5) * 2.0 * SQUEEZE).clamp(-SQUEEZE, SQUEEZE)).atanh() as f32)
        .collect();
    let w0 = Tensor::from_vec(w0, shape.as_slice(), dev)?;

    let mut consts = vec![cfg.initial_const; b];
    let mut lower = vec![0.0f64; b];
    let mut upper = vec![MAX_CONST; b];
    let mut best_dist = vec![f64::INFINITY; b];
    let mut best_img = xs.clone();
    let mut iterations = vec![0usize; b];
    let (beta1, beta2, eps) = (0.9f64, 0.999f64, 1e-8f64);

    for _step in 0..cfg.binary_steps {
        let mut step_success = vec![false; b];
        let c = Tensor::from_vec(consts.iter().map(|&c| c as f32).collect::<Vec<_>>(), b, dev)?;
        let w = Var::from_tensor(&w0)?;
        let mut m = w0.zeros_like()?;
        let mut v = w0.zeros_like()?;
        for it in 1..=cfg.iterations {
            let xp = ((w.as_tensor().tanh()? * 0.5)? + 0.5)?;
            let xp_vals: Vec<f32> = xp.flatten_all()?.to_vec1()?;
            let zt = f.logits(&xp)?;
            let zs: Vec<f32> = zt.detach().flatten_all()?.to_vec1()?;
            if zs.iter().any(|v| !v.is_finite()) {
                return Err(AttackError::NonFinite("logits"));
            }
            for i in 0..b {
                if done[i] {
                    continue;
                }
                let zi = &zs[i * k..(i + 1) * k];
                let t = labels[i];
                let adversarial = best_other(zi, t).1 > zi[t] - cfg.confidence as f32;
                if adversarial {
                    let d = l2_distance(&xp_vals[i * n..(i + 1) * n], &xs[i * n..(i + 1) * n]);
                    step_success[i] = true;
                    if d < best_dist[i] {
                        best_dist[i] = d;
                        best_img[i * n..(i + 1) * n].copy_from_slice(&xp_vals[i * n..(i + 1) * n]);
                        iterations[i] = _step * cfg.iterations + it;
                    }
                }
            }
            let d2 = (&xp - &x32)?.sqr()?.flatten_from(1)?.sum(1)?;
            let hinge = (margin_tensor(&zt, &onehot)? + cfg.confidence)?.relu()?;
            let objective = (d2 + (hinge * &c)?)?;
            let objective = if cfg.batch_mean {
                objective.mean_all()?
            } else {
                objective.sum_all()?
            };
            let grads = objective.backward()?;
            let Some(gw) = grads.get(w.as_tensor()) else {
                break;
            };
            let gw = gw.detach();
            m = ((m * beta1)? + (&gw * (1.0 - beta1))?)?;
            v = ((v * beta2)? + (gw.sqr()? * (1.0 - beta2))?)?;
            let lr_t =
                cfg.lr * (1.0 - beta2.powi(it as i32)).sqrt() / (1.0 - beta1.powi(it as i32));
            let step = (&m / (v.sqrt()? + eps)?)?;
            w.set(&(w.as_tensor() - (step * lr_t)?)?)?;
        }
        for i in 0..b {
            if step_success[i] {
                upper[i] = upper[i].min(consts[i]);
            } else {
                lower[i] = lower[i].max(consts[i]);
            }
            consts[i] = if upper[i] < MAX_CONST - 1.0 {
                (upper[i] + lower[i]) / 2.0
            } else {
                (consts[i] * 10.0).min(MAX_CONST)
            };
        }
    }

    let per_input = (0..b)
        .map(|i| {
            if done[i] {
                Adversarial {
                    success: true,
                    distance: Some(0.0),
                    iterations: 0,
                }
            } else if best_dist[i].is_finite() {
                Adversarial {
                    success: true,
                    distance: Some(best_dist[i]),
                    iterations: iterations[i],
                }
            } else {
                Adversarial {
                    success: false,
                    distance: None,
                    iterations: cfg.iterations * cfg.binary_steps,
                }
            }
        })
        .collect();
    Ok(AttackOutcome {
        images: Tensor::from_vec(best_img, shape.as_slice(), dev)?.to_dtype(x.dtype())?,
        per_input,
    })
}

/// C&W on the inputs of a batch that are not misclassified already (`done`), the others returned as
/// they are at distance 0. Under the batch-sum objective an input's iterates do not depend on the other
/// inputs of its batch, so leaving the misclassified ones out changes no result; it saves their forward
/// and backward passes (a tenth to a third of the batch for the quick Table 1 models, of 68-91%
/// accuracy).
fn attack_the_rest(
    f: &dyn LogitsFn,
    x: &Tensor,
    labels: &[usize],
    cfg: &CwConfig,
    done: &[bool],
    xs: &[f32],
) -> Result<AttackOutcome> {
    let b = done.len();
    let n = xs.len() / b;
    let shape = x.dims().to_vec();
    let at_zero = Adversarial {
        success: true,
        distance: Some(0.0),
        iterations: 0,
    };
    let rest: Vec<usize> = (0..b).filter(|&i| !done[i]).collect();
    let mut per_input = vec![at_zero; b];
    let mut images = xs.to_vec();
    if !rest.is_empty() {
        let idx: Vec<u32> = rest.iter().map(|&i| i as u32).collect();
        let idx = Tensor::from_vec(idx, rest.len(), x.device())?;
        let sub_labels: Vec<usize> = rest.iter().map(|&i| labels[i]).collect();
        let out = carlini_wagner(f, &x.index_select(&idx, 0)?, &sub_labels, cfg)?;
        let sub: Vec<f32> = out
            .images
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        for (j, (&i, a)) in rest.iter().zip(out.per_input).enumerate() {
            per_input[i] = a;
            images[i * n..(i + 1) * n].copy_from_slice(&sub[j * n..(j + 1) * n]);
        }
    }
    Ok(AttackOutcome {
        images: Tensor::from_vec(images, shape.as_slice(), x.device())?.to_dtype(x.dtype())?,
        per_input,
    })
}
