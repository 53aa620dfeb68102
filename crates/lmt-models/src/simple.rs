//! Layers whose Lipschitz factor is 1: ReLU, flatten, and dropout (whose train-time 1/(1-p) rescaling is
//! deliberately not counted, as in the authors' code; at inference dropout is the identity).

use candle_core::Tensor;

use crate::lip::{Ctx, Lip, LipModule};
use crate::{error::config, Result};

/// max(0, x), 1-Lipschitz.
#[derive(Debug, Clone, Copy, Default)]
pub struct Relu;

impl LipModule for Relu {
    fn forward_lip(&self, x: &Tensor, lip: Lip, _: &Ctx) -> Result<(Tensor, Lip)> {
        Ok((x.relu()?, lip))
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

/// Dropout with drop probability `p` in training, identity at inference.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    p: f32,
}

impl Dropout {
    /// Builds a dropout layer; `p` must lie in [0, 1).
    pub fn new(p: f32) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(config("dropout", format!("p = {p} must lie in [0, 1)")));
        }
        Ok(Dropout { p })
    }
}

impl LipModule for Dropout {
    fn forward_lip(&self, x: &Tensor, lip: Lip, ctx: &Ctx) -> Result<(Tensor, Lip)> {
        let y = if ctx.train && self.p > 0.0 {
            candle_nn::ops::dropout(x, self.p)?
        } else {
            x.clone()
        };
        Ok((y, lip))
    }
}
