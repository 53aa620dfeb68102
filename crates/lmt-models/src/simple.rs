//! Layers whose Lipschitz factor is 1: ReLU, MinMax, flatten, and dropout (whose train-time 1/(1-p) rescaling is
//! deliberately not counted, as in the authors' code; at inference dropout is the identity).

use candle_core::Tensor;
use rand::Rng;

use crate::lip::{Ctx, Lip, LipModule};
use crate::Act;
use crate::{error::config, Result};

/// max(0, x), 1-Lipschitz.
#[derive(Debug, Clone, Copy, Default)]
pub struct Relu;

impl LipModule for Relu {
    fn forward_lip(&self, x: &Tensor, lip: Lip, _: &Ctx) -> Result<(Tensor, Lip)> {
        Ok((x.relu()?, lip))
    }
}

/// MinMax (GroupSort with groups of two; Anil et al. 2019, used by GloRo and BCOP): along axis 1
/// (channels of an NCHW activation, features of a flat one), channel i and channel i + C/2 become their
/// maximum and their minimum. 1-Lipschitz, with an orthogonal Jacobian wherever it is differentiable, so
/// it preserves gradient norms where ReLU halves them; C must be even.
#[derive(Debug, Clone, Copy, Default)]
pub struct MinMax;

/// The MinMax map of [`MinMax`] on axis 1 of `x`.
pub(crate) fn min_max(x: &Tensor) -> Result<Tensor> {
    let c = x.dim(1)?;
    if c % 2 != 0 {
        return Err(config(
            "MinMax",
            format!(
                "needs an even number of channels, got {c} (shape {:?})",
                x.dims()
            ),
        ));
    }
    let (a, b) = (x.narrow(1, 0, c / 2)?, x.narrow(1, c / 2, c / 2)?);
    Ok(Tensor::cat(&[a.maximum(&b)?, a.minimum(&b)?], 1)?)
}

impl LipModule for MinMax {
    fn forward_lip(&self, x: &Tensor, lip: Lip, _: &Ctx) -> Result<(Tensor, Lip)> {
        Ok((min_max(x)?, lip))
    }
}

/// The activations a built-in network takes between its layers.
pub(crate) fn hidden_activation(act: Act) -> Result<Act> {
    match act {
        Act::Relu | Act::MinMax => Ok(act),
        other => Err(config(
            "activation",
            format!("{other:?} is not offered for built-in networks; use ReLU or MinMax"),
        )),
    }
}

/// The module of a hidden activation (see [`hidden_activation`]).
pub(crate) fn activation_module(act: Act) -> &'static dyn LipModule {
    match act {
        Act::MinMax => &MinMax,
        _ => &Relu,
    }
}

/// Flattens all but the batch dimension, an isometry.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flatten;

impl LipModule for Flatten {
    fn forward_lip(&self, x: &Tensor, lip: Lip, _: &Ctx) -> Result<(Tensor, Lip)> {
        Ok((x.flatten_from(1)?, lip))
    }
}

/// Inverted dropout with drop probability `p` in training (kept values scaled by 1/(1-p)), identity at
/// inference. The mask is drawn from a ChaCha8 stream keyed by the context's seed and the layer's name
/// (candle's own dropout uses an unseedable generator).
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f32,
    name: String,
}

impl Dropout {
    /// Builds a dropout layer; `p` must lie in [0, 1).
    pub fn new(p: f32, name: impl Into<String>) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(config("dropout", format!("p = {p} must lie in [0, 1)")));
        }
        Ok(Dropout {
            p,
            name: name.into(),
        })
    }
}

impl LipModule for Dropout {
    fn forward_lip(&self, x: &Tensor, lip: Lip, ctx: &Ctx) -> Result<(Tensor, Lip)> {
        if !ctx.train || !ctx.dropout || self.p == 0.0 {
            return Ok((x.clone(), lip));
        }
        let mut rng = lmt_core::named_rng(ctx.seed, &self.name);
        let keep = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.random::<f32>() >= self.p {
                    keep
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(((x * mask)?, lip))
    }
}
