//! Adversarial attacks for lmt-rs: C&W L2 ([`carlini_wagner`]), DeepFool L2 ([`deepfool`]) and PGD-L2
//! ([`pgd`]), generic over [`LogitsFn`], a function from a batch of images to logits.
//!
//! Attacks never see a model type, only this trait, so any network (ours, or one loaded from PyTorch
//! weights) can be attacked, and the empirical distances they find can be checked against certified radii:
//! a successful attack closer than a certified radius is a bug somewhere.
//!
//! Every attack works on a batch, is deterministic (PGD's random starts come from a seed), and returns per
//! input an [`Adversarial`]: whether it succeeded, the L2 distance of the image it actually fed to the model
//! (`None` on failure: failures are never disguised as large numbers), and the iterations it used.
//! Success means the strict inequality `max_{i != t} z_i > z_t`; a tie is not a success.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lmt_attacks::{deepfool, DeepFoolConfig, LogitsFn};
//! // A linear classifier on 2-pixel images: class 0 while x0 > x1.
//! let w = Tensor::new(&[[1f32, -1.0], [-1.0, 1.0]], &Device::Cpu)?;
//! let f = |x: &Tensor| x.flatten_from(1)?.matmul(&w.t()?);
//! let x = Tensor::new(&[[[[0.6f32, 0.4]]]], &Device::Cpu)?;
//! let out = deepfool(&f, &x, &[0], &DeepFoolConfig::default())?;
//! // The closest boundary point is at distance 0.2 / sqrt(2); DeepFool overshoots by 2%.
//! let d = out.per_input[0].distance.unwrap();
//! assert!(d >= 0.2 / 2f64.sqrt() && d <= 1.03 * 0.2 / 2f64.sqrt());
//! # Ok::<(), lmt_attacks::AttackError>(())
//! ```
//!
//! **Invariant:** depends on no model crate; attacks receive a logits function.
#![deny(missing_docs)]

use candle_core::{DType, Tensor, Var};

mod cw;
mod deepfool;
mod lower;
mod pgd;

pub use cw::{carlini_wagner, CwConfig};
// `class_gradients` and `ClassGradients` are defined below and public.
pub use deepfool::{deepfool, DeepFoolConfig};
pub use lower::{gradient_pair_norms, local_lipschitz_lower, PairMatrix};
pub use pgd::{pgd, PgdConfig};

/// A differentiable function from images `(B, C, H, W)` to logits `(B, K)`.
///
/// Attacks assume the function treats the samples of a batch independently (inference mode: no dropout,
/// batch norm with running statistics).
pub trait LogitsFn {
    /// The logits of a batch; gradients must flow back to `images`.
    fn logits(&self, images: &Tensor) -> candle_core::Result<Tensor>;
}

impl<F: Fn(&Tensor) -> candle_core::Result<Tensor>> LogitsFn for F {
    fn logits(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        self(images)
    }
}

/// A failure of an attack: bad arguments, or an error from the tensor engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttackError {
    /// Inputs or hyper-parameters that cannot be attacked as given.
    #[error("invalid attack input: {0}")]
    Invalid(String),
    /// The logits function returned NaN or infinity.
    #[error(
        "the logits function returned a non-finite value ({0}); the model is broken, not robust"
    )]
    NonFinite(&'static str),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of lmt-attacks.
pub type Result<T> = std::result::Result<T, AttackError>;

/// What an attack found for one input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adversarial {
    /// The returned image is classified as a class other than the label (strictly).
    pub success: bool,
    /// L2 distance between the returned image, exactly as fed to the model, and the input; `None` when
    /// the attack failed. An input that is already misclassified succeeds at distance 0.
    pub distance: Option<f64>,
    /// Gradient steps used: for a success, the step (counted over all binary-search steps or restarts)
    /// at which the returned image was found; for a failure, every step run; 0 when already misclassified.
    pub iterations: usize,
}

/// The result of attacking a batch.
#[derive(Debug, Clone)]
pub struct AttackOutcome {
    /// The returned images `(B, C, H, W)`: the best adversarial found, or the input where the attack failed.
    pub images: Tensor,
    /// One entry per input, in batch order.
    pub per_input: Vec<Adversarial>,
}

/// A checked batch: sizes, the images as f32 and their clean logits.
pub(crate) struct Batch {
    /// Batch size.
    pub b: usize,
    /// Classes.
    pub k: usize,
    /// Values per image.
    pub n: usize,
    /// The images, flat.
    pub xs: Vec<f32>,
    /// Which inputs the model already misclassifies (they succeed at distance 0 without an attack).
    pub done: Vec<bool>,
}

/// A finite number > 0 (hyper-parameter check; NaN fails).
pub(crate) fn positive(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

/// A finite number >= 0 (hyper-parameter check; NaN fails).
pub(crate) fn non_negative(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

/// Checks a batch and its labels.
pub(crate) fn check_batch(f: &dyn LogitsFn, x: &Tensor, labels: &[usize]) -> Result<Batch> {
    if x.rank() < 2 {
        return Err(AttackError::Invalid(format!(
            "images must be a batch (B, ...), got shape {:?}",
            x.dims()
        )));
    }
    let b = x.dim(0)?;
    if b == 0 || labels.len() != b {
        return Err(AttackError::Invalid(format!(
            "{} labels for a batch of {b} images (need one label per image, and at least one image)",
            labels.len()
        )));
    }
    let z = logits_vec(f, x)?;
    let k = z.len() / b;
    if k < 2 {
        return Err(AttackError::Invalid(format!(
            "the logits function returned {k} classes; an attack needs at least 2"
        )));
    }
    if let Some(&t) = labels.iter().find(|&&t| t >= k) {
        return Err(AttackError::Invalid(format!(
            "label {t} out of range for a model with {k} classes"
        )));
    }
    let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let n = xs.len() / b;
    let done = (0..b)
        .map(|i| misclassified(&z[i * k..(i + 1) * k], labels[i]))
        .collect();
    Ok(Batch { b, k, n, xs, done })
}

/// The logits of `x` as a flat row-major vector, checked to be finite.
pub(crate) fn logits_vec(f: &dyn LogitsFn, x: &Tensor) -> Result<Vec<f32>> {
    let z: Vec<f32> = f
        .logits(x)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    if z.iter().any(|v| !v.is_finite()) {
        return Err(AttackError::NonFinite("logits"));
    }
    Ok(z)
}

/// The largest logit among classes other than `t`, and its class: correct for any sign of the logits
/// (the "best other logit" bug of libraries that multiply by a one-hot mask does not arise).
pub(crate) fn best_other(z: &[f32], t: usize) -> (usize, f32) {
    z.iter().enumerate().filter(|&(i, _)| i != t).fold(
        (usize::MAX, f32::NEG_INFINITY),
        |acc, (i, &v)| {
            if v > acc.1 {
                (i, v)
            } else {
                acc
            }
        },
    )
}

/// Strictly misclassified: some other logit exceeds the label's (ties are not successes).
pub(crate) fn misclassified(z: &[f32], t: usize) -> bool {
    best_other(z, t).1 > z[t]
}

/// L2 distance of two images, accumulated in f64.
pub(crate) fn l2_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&p, &q)| {
            let d = p as f64 - q as f64;
            d * d
        })
        .sum::<f64>()
        .sqrt()
}

/// A `(B, K)` mask that is 1 at `(b, labels[b])`.
pub(crate) fn one_hot(labels: &[usize], k: usize, dev: &candle_core::Device) -> Result<Tensor> {
    let mut m = vec![0f32; labels.len() * k];
    for (b, &t) in labels.iter().enumerate() {
        m[b * k + t] = 1.0;
    }
    Ok(Tensor::from_vec(m, (labels.len(), k), dev)?)
}

/// Per-sample C&W margin `z_t - max_{i != t} z_i`, differentiable, as a `(B,)` tensor.
pub(crate) fn margin_tensor(z: &Tensor, onehot: &Tensor) -> Result<Tensor> {
    let z_t = (z * onehot)?.sum(1)?;
    // Other classes keep their logit; the label's is pushed to the lowest finite f32, whatever the signs.
    let floor = Tensor::full(f32::MIN, z.dims(), z.device())?;
    let others = onehot.ne(0f32)?.where_cond(&floor, z)?;
    Ok((z_t - others.max(1)?)?)
}

/// The logits of a batch and the input gradient of every logit, from ONE backward pass.
#[derive(Debug, Clone)]
pub struct ClassGradients {
    /// Logits, flat `(B, K)`.
    pub logits: Vec<f32>,
    /// Gradients, flat `(B, K, n)`: entry `(b, k)` is the gradient of `z_k` at input `b`.
    pub grads: Vec<f32>,
    /// Values per image.
    pub n: usize,
}

/// All `K` class gradients of a batch in one backward pass: the batch is replicated `K` times and replica
/// `k` back-propagates the sum of its logit `z_k` (samples are independent in inference mode, so each
/// replica receives its own gradient). Costs one forward and backward pass over `K B` images.
pub fn class_gradients(f: &dyn LogitsFn, x: &Tensor, k: usize) -> Result<ClassGradients> {
    let b = x.dim(0)?;
    let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let n = xs.len() / b.max(1);
    let mut rep = Vec::with_capacity(k * b * n);
    for _ in 0..k {
        rep.extend_from_slice(&xs);
    }
    let mut shape = x.dims().to_vec();
    shape[0] = k * b;
    let rep = Tensor::from_vec(rep, shape.as_slice(), x.device())?;
    let mut select = vec![0f32; k * b * k];
    for c in 0..k {
        for j in 0..b {
            select[(c * b + j) * k + c] = 1.0;
        }
    }
    let select = Tensor::from_vec(select, (k * b, k), x.device())?;
    let (z, g) = logits_and_grad(f, &rep, |z| Ok((z * &select)?.sum_all()?))?;
    let z: Vec<f32> = z.flatten_all()?.to_vec1()?;
    if z.len() != k * b * k {
        return Err(AttackError::Invalid(format!(
            "the logits function returned {} values for {} images of {k} classes",
            z.len(),
            k * b
        )));
    }
    if z.iter().any(|v| !v.is_finite()) {
        return Err(AttackError::NonFinite("logits"));
    }
    let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
    // Reorder replica-major (c, b) into input-major (b, c); replica block 0 holds the logits.
    let mut grads = vec![0f32; b * k * n];
    for c in 0..k {
        for j in 0..b {
            grads[(j * k + c) * n..(j * k + c + 1) * n]
                .copy_from_slice(&g[(c * b + j) * n..(c * b + j + 1) * n]);
        }
    }
    Ok(ClassGradients {
        logits: z[..b * k].to_vec(),
        grads,
        n,
    })
}

/// Logits and the gradient of `loss(logits)` with respect to the images.
pub(crate) fn logits_and_grad(
    f: &dyn LogitsFn,
    x: &Tensor,
    loss: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<(Tensor, Tensor)> {
    let v = Var::from_tensor(&x.detach())?;
    let z = f.logits(v.as_tensor())?;
    let grads = loss(&z)?.backward()?;
    let g = grads
        .get(v.as_tensor())
        .cloned()
        .unwrap_or(v.as_tensor().zeros_like()?);
    Ok((z.detach(), g))
}
