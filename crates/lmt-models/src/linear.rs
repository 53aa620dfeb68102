//! Fully connected layer `y = x W^T + b` with its Lipschitz bound ‖W‖_2 (biases do not count).

use candle_core::{Module, Tensor};
use lmt_core::{l2_norm, norms, CertifiedBound};

use crate::lip::{CertifyMethod, Ctx, Lip, LipModule};
use crate::{error::config, tensor_f64, Result};

/// A fully connected layer; `name` keys its power-iteration vector.
#[derive(Debug, Clone)]
pub struct LipLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    name: String,
}

impl LipLinear {
    /// Builds from a weight `(out, in)` and an optional bias `(out)`.
    pub fn new(weight: Tensor, bias: Option<Tensor>, name: impl Into<String>) -> Result<Self> {
        let (out, _) = weight.dims2().map_err(|_| {
            config(
                "linear",
                format!("weight must be 2-D, got {:?}", weight.dims()),
            )
        })?;
        if let Some(b) = &bias {
            if b.dims() != [out] {
                return Err(config(
                    "linear",
                    format!("bias {:?} for {out} outputs", b.dims()),
                ));
            }
        }
        Ok(LipLinear {
            weight,
            bias,
            name: name.into(),
        })
    }

    /// The weight `(out, in)`, e.g. the last layer's `W` for Prop. 2.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The certified bound of this layer alone.
    pub fn certified(&self, method: CertifyMethod) -> Result<CertifiedBound> {
        let (out, inp) = self.weight.dims2()?;
        let w = tensor_f64(&self.weight)?;
        match method {
            CertifyMethod::Power(cfg) => {
                let gram = |x: &[f64], b: usize| -> Vec<f64> {
                    let mut y = vec![0.0; b * out];
                    let mut z = vec![0.0; b * inp];
                    for s in 0..b {
                        for o in 0..out {
                            y[s * out + o] =
                                (0..inp).map(|i| w[o * inp + i] * x[s * inp + i]).sum();
                        }
                        for i in 0..inp {
                            z[s * inp + i] =
                                (0..out).map(|o| w[o * inp + i] * y[s * out + o]).sum();
                        }
                    }
                    z
                };
                Ok(norms::power_bound(inp, gram, &cfg)?.bound)
            }
            CertifyMethod::Auto
                if out * inp > norms::DENSE_MAX_ENTRIES || out.min(inp) > norms::DENSE_MAX_SIDE =>
            {
                self.certified(CertifyMethod::Power(Default::default()))
            }
            _ => Ok(norms::linear_dense(&w, out, inp)?),
        }
    }
}

impl LipLinear {
    /// `x W^T + b`, each parameter passed through `param` (the tracked tensor itself, or [`Ctx::param`],
    /// which detaches it when the context is frozen).
    fn apply(&self, x: &Tensor, param: impl Fn(&Tensor) -> Tensor) -> candle_core::Result<Tensor> {
        let y = crate::matmul(x, &param(&self.weight).t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&param(b)),
            None => Ok(y),
        }
    }
}

impl Module for LipLinear {
    /// The layer with tracked parameters.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(x, Tensor::clone)
    }
}

impl LipModule for LipLinear {
    fn forward_lip(&self, x: &Tensor, lip: Lip, ctx: &Ctx) -> Result<(Tensor, Lip)> {
        let y = self.apply(x, |t| ctx.param(t))?;
        let lip = lip.through(
            || {
                let u = ctx
                    .vectors()?
                    .get(&self.name, (1, self.weight.dim(1)?), x.device())?;
                Ok(l2_norm(&crate::matmul(u.as_tensor(), &self.weight.t()?)?)?)
            },
            || self.certified(ctx.method),
        )?;
        Ok((y, lip))
    }
}
