//! Batch normalisation as the authors implement it (reference 4.4): biased batch variance in training,
//! running statistics updated with decay `momentum` and the unbiased correction m/(m-1), eps 2e-5 in the
//! paper's networks. At inference it is the per-channel scaling gamma / sqrt(running_var + eps) plus a
//! shift, so its Lipschitz bound is the largest |scale|.

use candle_core::{Tensor, Var};
use lmt_core::{norms, CertifiedBound};

use crate::channel::{
    add_channel_bias, channel_affine, channel_sum, channel_sum_sq, scale_shift_act,
};
use crate::lip::{Ctx, Lip, LipModule};
use crate::{error::config, tensor_f64, Result};

/// BN over the channels of NCHW activations.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    gamma: Tensor,
    beta: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// Builds from `gamma`, `beta` and the running statistics (all of shape `(C)`); `momentum` is the
    /// decay of the running averages (0.9 in the reference).
    pub fn new(
        gamma: Tensor,
        beta: Tensor,
        running_mean: Var,
        running_var: Var,
        eps: f64,
        momentum: f64,
    ) -> Result<Self> {
        let c = gamma
            .dims1()
            .map_err(|_| config("batch norm", "gamma must be 1-D"))?;
        for (n, t) in [
            ("beta", &beta),
            ("running mean", running_mean.as_tensor()),
            ("running var", running_var.as_tensor()),
        ] {
            if t.dims() != [c] {
                return Err(config(
                    "batch norm",
                    format!("{n} has shape {:?}, expected [{c}]", t.dims()),
                ));
            }
        }
        if eps <= 0.0 || !(0.0..1.0).contains(&momentum) {
            return Err(config(
                "batch norm",
                format!("eps {eps} must be positive and momentum {momentum} in [0, 1)"),
            ));
        }
        Ok(BatchNorm2d {
            gamma,
            beta,
            running_mean,
            running_var,
            eps,
            momentum,
        })
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.gamma.dim(0).unwrap_or(0)
    }

    /// gamma.
    pub fn gamma(&self) -> &Tensor {
        &self.gamma
    }

    /// The running variance.
    pub fn running_var(&self) -> &Var {
        &self.running_var
    }

    /// beta.
    pub fn beta(&self) -> &Tensor {
        &self.beta
    }

    /// The running mean.
    pub fn running_mean(&self) -> &Var {
        &self.running_mean
    }

    /// The per-channel scale at inference, `gamma_c / sqrt(running_var_c + eps)`, exactly as the f32
    /// forward pass computes and applies it (the network the certificate is about uses these values).
    pub fn inference_scale(&self) -> Result<Vec<f64>> {
        let var = tensor_f64(self.running_var.as_tensor())?;
        if var.iter().any(|v| v.is_nan() || *v < 0.0) || var.len() != self.channels() {
            return Err(config(
                "batch norm",
                "running variances must be non-negative numbers",
            ));
        }
        let var = self.running_var.as_tensor().detach();
        tensor_f64(&self.gamma.detach().div(&(var + self.eps)?.sqrt()?)?)
    }

    /// The running mean and beta as f64 (their f32 values).
    pub(crate) fn shift_f64(&self) -> Result<(Vec<f64>, Vec<f64>)> {
        Ok((
            tensor_f64(self.running_mean.as_tensor())?,
            tensor_f64(&self.beta)?,
        ))
    }

    /// eps.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Normalises `x`; returns the output and the per-channel scale gamma / sqrt(var + eps) that was
    /// applied (batch variance, differentiable, in training; running variance at inference). Training
    /// also updates the running statistics.
    pub fn normalize(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        self.normalize_act(x, ctx, false)
    }

    /// [`normalize`](Self::normalize), then ReLU when `relu` is set, inside the last per-channel pass (the
    /// same bits as the two steps): in training the scale and shift, at inference with frozen parameters
    /// the whole affine map.
    pub(crate) fn normalize_act(
        &self,
        x: &Tensor,
        ctx: &Ctx,
        relu: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (b, _, h, w) = x.dims4()?;
        let (xc, var) = if ctx.train {
            let m = (b * h * w) as f64;
            let mean = (channel_sum(x)? / m)?;
            let xc = add_channel_bias(x, &mean.neg()?)?;
            let var = (channel_sum_sq(&xc)? / m)?;
            let unbiased = m / (m - 1.0).max(1.0);
            let d = ctx.bn_decay.unwrap_or(self.momentum);
            self.running_mean
                .set(&((self.running_mean.as_tensor() * d)? + (mean.detach() * (1.0 - d))?)?)?;
            self.running_var.set(
                &((self.running_var.as_tensor() * d)? + (var.detach() * ((1.0 - d) * unbiased))?)?,
            )?;
            (xc, var)
        } else {
            // The running statistics are state, never differentiated: detached, so an inference pass
            // records no graph (tracked, they kept every activation of a WRN batch alive: 1.3 GB).
            let shift = self.running_mean.as_tensor().detach().neg()?;
            let var = self.running_var.as_tensor().detach();
            let scale = ctx.param(&self.gamma).div(&(&var + self.eps)?.sqrt()?)?;
            // With frozen parameters the whole map is one per-channel affine pass.
            if let Some(y) = channel_affine(x, &shift, &scale, &ctx.param(&self.beta), relu)? {
                return Ok((y, scale));
            }
            (add_channel_bias(x, &shift)?, var)
        };
        let scale = ctx.param(&self.gamma).div(&(var + self.eps)?.sqrt()?)?;
        let y = scale_shift_act(&xc, &scale, &ctx.param(&self.beta), relu)?;
        Ok((y, scale))
    }

    /// The certified bound at inference: max_c |scale_c|, the scale as applied.
    pub fn certified(&self) -> Result<CertifiedBound> {
        Ok(norms::elementwise_scale(&self.inference_scale()?)?)
    }
}

impl LipModule for BatchNorm2d {
    /// The estimate is the exact max |scale| (differentiable), not a power iteration: for a diagonal map
    /// it is cheaper and cannot lock onto a wrong coordinate (the authors perturb a vector instead).
    fn forward_lip(&self, x: &Tensor, lip: Lip, ctx: &Ctx) -> Result<(Tensor, Lip)> {
        self.forward_lip_act(x, lip, ctx, false)
    }
}

impl BatchNorm2d {
    /// [`LipModule::forward_lip`], then ReLU when `relu` is set (1-Lipschitz: the bound is unchanged),
    /// fused at inference (see [`BatchNorm2d::normalize_act`]).
    pub(crate) fn forward_lip_act(
        &self,
        x: &Tensor,
        lip: Lip,
        ctx: &Ctx,
        relu: bool,
    ) -> Result<(Tensor, Lip)> {
        let (y, scale) = self.normalize_act(x, ctx, relu)?;
        let lip = lip.through(|| Ok(scale.abs()?.max(0)?), || self.certified())?;
        Ok((y, lip))
    }
}
