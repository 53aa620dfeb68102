//! What travels beside the activation: nothing, a train-time estimate, or a certified bound.

use candle_core::Tensor;
use lmt_core::{CertifiedBound, LipEstimate, PowerConfig, PowerVectors};

use crate::Result;

/// The Lipschitz number carried through a forward pass, chosen by the caller.
#[derive(Debug, Clone)]
pub enum Lip {
    /// Plain inference or training: no bound is computed.
    None,
    /// Train-time estimate (differentiable, one power-iteration step per layer).
    Estimate(LipEstimate),
    /// Certified upper bound (computed once per trained model).
    Certified(CertifiedBound),
}

impl Lip {
    /// The certified bound, if this is one.
    pub fn certified(&self) -> Option<CertifiedBound> {
        match self {
            Lip::Certified(c) => Some(*c),
            _ => None,
        }
    }

    /// The estimate, if this is one.
    pub fn estimate(&self) -> Option<&LipEstimate> {
        match self {
            Lip::Estimate(e) => Some(e),
            _ => None,
        }
    }

    /// Passes the carrier through a layer: `estimate` gives the layer's differentiable sigma, `certified`
    /// its certified bound; each is evaluated only when that kind is carried.
    pub fn through(
        self,
        estimate: impl FnOnce() -> Result<Tensor>,
        certified: impl FnOnce() -> Result<CertifiedBound>,
    ) -> Result<Lip> {
        Ok(match self {
            Lip::None => Lip::None,
            Lip::Estimate(e) => Lip::Estimate(e.then(&estimate()?)?),
            Lip::Certified(c) => Lip::Certified(c.then(certified()?)?),
        })
    }

    /// Multiplication of the activation by a scalar tensor `factor` (e.g. a learned residual weight): the
    /// bound is multiplied by |factor|.
    pub fn scaled_by(self, factor: &Tensor) -> Result<Lip> {
        Ok(match self {
            Lip::None => Lip::None,
            Lip::Estimate(e) => Lip::Estimate(e.then(&factor.abs()?)?),
            Lip::Certified(c) => {
                let f = factor
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
                Lip::Certified(c.then(lmt_core::norms::elementwise_scale(&[f])?)?)
            }
        })
    }

    /// Residual addition `f(x) + g(x)`: bounds add. Both sides must carry the same kind.
    pub fn plus(self, other: Lip) -> Result<Lip> {
        Ok(match (self, other) {
            (Lip::None, Lip::None) => Lip::None,
            (Lip::Estimate(a), Lip::Estimate(b)) => Lip::Estimate(a.plus(&b)?),
            (Lip::Certified(a), Lip::Certified(b)) => Lip::Certified(a.plus(b)?),
            _ => return Err(crate::ModelError::MixedLip),
        })
    }

    /// Concatenation `(f(x), g(x))`: sqrt of the sum of squares.
    pub fn concat(self, other: Lip) -> Result<Lip> {
        Ok(match (self, other) {
            (Lip::None, Lip::None) => Lip::None,
            (Lip::Estimate(a), Lip::Estimate(b)) => Lip::Estimate(a.concat(&b)?),
            (Lip::Certified(a), Lip::Certified(b)) => Lip::Certified(a.concat(b)?),
            _ => return Err(crate::ModelError::MixedLip),
        })
    }
}

/// How linear layers are bounded when a certified bound is carried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CertifyMethod {
    /// Exact `dense` where the operator fits the size limit, `fft` for larger convolutions and `power`
    /// for larger fully connected layers.
    Auto,
    /// Exact operator matrix (errors on layers that are too large).
    Dense,
    /// Thm. 1 + 2 power iteration with these settings.
    Power(PowerConfig),
    /// Deterministic circular-embedding bound (convolutions; fully connected layers use `dense`).
    Fft,
    /// Cor. 1 for convolutions (dense for fully connected layers), for the Fig. 3 comparison.
    Cor1,
    /// Cisse et al. for convolutions (dense for fully connected layers).
    Cisse,
    /// Peck et al. as reconstructed, for convolutions and pooling (dense for fully connected layers).
    Peck,
}

/// Settings shared by every layer of one forward pass.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// Training mode: batch statistics in BN, dropout active.
    pub train: bool,
    /// Parameters enter as constants (detached), so a backward pass computes gradients for the inputs
    /// only: attacks, lower bounds and certification skip every weight and bias gradient.
    pub frozen: bool,
    /// The persistent power-iteration vectors; needed when an estimate is carried.
    pub vectors: Option<&'a PowerVectors>,
    /// How certified bounds are computed.
    pub method: CertifyMethod,
    /// Seed of this step's dropout masks (a training loop derives it from its seed and the step, so
    /// masks are reproducible and a resumed run needs no generator state).
    pub seed: u64,
    /// Dropout active (only matters in training mode; off when BN statistics are recalibrated).
    pub dropout: bool,
    /// Overrides BN's decay of its running statistics for this pass (recalibration uses k / (k + 1) at
    /// its k-th batch, so the running statistics become the plain mean over the batches).
    pub bn_decay: Option<f64>,
}

impl<'a> Ctx<'a> {
    /// Inference with frozen parameters, without bounds or with a certified bound by `method`.
    pub fn eval(method: CertifyMethod) -> Self {
        Ctx {
            train: false,
            frozen: true,
            vectors: None,
            method,
            seed: 0,
            dropout: false,
            bn_decay: None,
        }
    }

    /// BN statistics recalibration, batch `k` (0-based): batch statistics and a running-statistics
    /// decay of k / (k + 1) (the mean over the batches seen), dropout off, parameters frozen.
    pub fn recalibrate_bn(k: usize) -> Self {
        Ctx {
            train: true,
            bn_decay: Some(k as f64 / (k as f64 + 1.0)),
            ..Ctx::eval(CertifyMethod::Auto)
        }
    }

    /// Training with the estimate kept in `vectors`.
    pub fn train(vectors: &'a PowerVectors) -> Self {
        Ctx {
            train: true,
            frozen: false,
            vectors: Some(vectors),
            method: CertifyMethod::Auto,
            seed: 0,
            dropout: true,
            bn_decay: None,
        }
    }

    /// The same context with dropout seed `seed`.
    pub fn with_seed(self, seed: u64) -> Self {
        Ctx { seed, ..self }
    }

    /// A parameter as this pass uses it: detached when the context is frozen (a cheap view of the same
    /// storage), else the tracked tensor itself.
    pub fn param(&self, t: &Tensor) -> Tensor {
        if self.frozen {
            t.detach()
        } else {
            t.clone()
        }
    }

    pub(crate) fn vectors(&self) -> Result<&'a PowerVectors> {
        self.vectors.ok_or(crate::ModelError::NoPowerVectors)
    }
}

/// A layer that carries a Lipschitz number beside its activation.
pub trait LipModule {
    /// Maps `(x, lip)` to `(y, lip')`.
    fn forward_lip(&self, x: &Tensor, lip: Lip, ctx: &Ctx) -> Result<(Tensor, Lip)>;
}
