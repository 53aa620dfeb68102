//! 2-D convolution, alone or followed by batch normalisation (bounded fused), on its real input size.

use candle_core::{Module, Tensor};
use lmt_core::{l2_norm, norms, CertifiedBound, ConvGeometry};

use crate::batch_norm::BatchNorm2d;
use crate::lip::{CertifyMethod, Ctx, Lip, LipModule};
use crate::{error::config, tensor_f64, Result};

/// Strides, zero padding, dilation and groups of a convolution (the attributes ONNX's `Conv` has).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvCfg {
    /// Stride (rows, columns).
    pub stride: (usize, usize),
    /// Zero padding: top, left, bottom, right (ONNX's order).
    pub pads: [usize; 4],
    /// Dilation (rows, columns), 1 for an ordinary convolution.
    pub dilation: (usize, usize),
    /// Groups: input and output channels split into this many independent convolutions (depthwise when
    /// it equals the input channels).
    pub groups: usize,
}

impl ConvCfg {
    /// Equal stride and padding on every side, no dilation, one group.
    pub fn square(stride: usize, padding: usize) -> Self {
        ConvCfg {
            stride: (stride, stride),
            pads: [padding; 4],
            dilation: (1, 1),
            groups: 1,
        }
    }
}

impl Default for ConvCfg {
    fn default() -> Self {
        ConvCfg::square(1, 0)
    }
}

/// A convolution `(c_out, c_in / groups, kh, kw)`; `name` keys its power-iteration vector.
#[derive(Debug, Clone)]
pub struct LipConv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: ConvCfg,
    name: String,
    /// Fixed factor on the output before the bias (Parseval networks: 1/sqrt(kh kw)); part of the bound.
    scale: f64,
}

impl LipConv2d {
    /// Builds from a kernel `(c_out, c_in / groups, kh, kw)` and an optional bias `(c_out)`.
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        cfg: ConvCfg,
        name: impl Into<String>,
    ) -> Result<Self> {
        let (co, _, _, _) = weight.dims4().map_err(|_| {
            config(
                "conv2d",
                format!("kernel must be 4-D, got {:?}", weight.dims()),
            )
        })?;
        let ((sh, sw), (dh, dw)) = (cfg.stride, cfg.dilation);
        if sh == 0 || sw == 0 || dh == 0 || dw == 0 {
            return Err(config("conv2d", "strides and dilations must be positive"));
        }
        if cfg.groups == 0 || co % cfg.groups != 0 {
            return Err(config(
                "conv2d",
                format!(
                    "{co} output channels do not split into {} groups",
                    cfg.groups
                ),
            ));
        }
        if let Some(b) = &bias {
            if b.dims() != [co] {
                return Err(config(
                    "conv2d",
                    format!("bias {:?} for {co} output channels", b.dims()),
                ));
            }
        }
        Ok(LipConv2d {
            weight,
            bias,
            cfg,
            name: name.into(),
            scale: 1.0,
        })
    }

    /// The same layer with its output (before the bias) multiplied by `scale`, e.g. Parseval networks'
    /// 1/sqrt(kh kw). The bound includes the factor.
    pub fn with_output_scale(self, scale: f64) -> Self {
        LipConv2d { scale, ..self }
    }

    /// The output scale as the forward pass applies it: an f32 multiplier (exact in f64).
    pub(crate) fn applied_scale(&self) -> f64 {
        self.scale as f32 as f64
    }

    /// The kernel times the output scale as the forward pass applies them, in f64 (a product of two f32
    /// values, so exact): the operator the certified bounds and the f64 pass see.
    fn kernel_f64(&self) -> Result<Vec<f64>> {
        let s = self.applied_scale();
        Ok(tensor_f64(&self.weight)?
            .into_iter()
            .map(|w| w * s)
            .collect())
    }

    /// The kernel.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The geometry of one group of this convolution on an input of shape `(_, c, h, w)` (all groups share
    /// it; with one group, the whole convolution).
    pub fn geometry(&self, input_dims: &[usize]) -> Result<ConvGeometry> {
        let (co, ci, kh, kw) = self.weight.dims4()?;
        let &[_, c, h, w] = input_dims else {
            return Err(config(
                "conv2d",
                format!("input must be NCHW, got {input_dims:?}"),
            ));
        };
        let g = self.cfg.groups;
        if c != ci * g {
            return Err(config(
                "conv2d",
                format!("input has {c} channels, kernel expects {ci} x {g} groups"),
            ));
        }
        let [pt, pl, pb, pr] = self.cfg.pads;
        let geom = ConvGeometry {
            c_in: ci,
            c_out: co / g,
            kh,
            kw,
            stride: self.cfg.stride,
            pad: (pt, pl),
            pad_end: (pb, pr),
            dilation: self.cfg.dilation,
            in_h: h,
            in_w: w,
        };
        geom.validate()?;
        Ok(geom)
    }

    /// The convolution (im2col + gemm with our own gradients; see `im2col`) with kernel `weight` (this
    /// layer's, tracked or detached), times the Parseval scale.
    fn conv(&self, x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
        let y = crate::im2col::conv2d(x, weight, &self.cfg)?;
        if self.scale == 1.0 {
            Ok(y)
        } else {
            y.affine(self.scale, 0.0)
        }
    }

    /// The certified bound on an input of shape `input_dims`.
    pub fn certified(&self, input_dims: &[usize], method: CertifyMethod) -> Result<CertifiedBound> {
        self.certified_scaled(input_dims, method, None)
    }

    /// The certified bound of this convolution followed by a per-output-channel scaling (batch norm at
    /// inference, or a multiplication by a per-channel constant), bounded as one operator: the scale is
    /// folded into the kernel, which is tighter than the product of the two norms.
    pub fn certified_scaled(
        &self,
        input_dims: &[usize],
        method: CertifyMethod,
        channel_scale: Option<&[f64]>,
    ) -> Result<CertifiedBound> {
        let g = self.geometry(input_dims)?;
        let mut kernel = self.kernel_f64()?;
        if let Some(s) = channel_scale {
            let per = kernel.len() / s.len().max(1);
            if s.len() != self.weight.dim(0)? || s.iter().any(|v| !v.is_finite()) {
                return Err(config(
                    "conv2d",
                    format!(
                        "{} finite channel scales for {} output channels",
                        s.len(),
                        self.weight.dim(0)?
                    ),
                ));
            }
            for (row, v) in kernel.chunks_mut(per).zip(s) {
                row.iter_mut().for_each(|k| *k *= v);
            }
        }
        grouped_certified(&g, self.cfg.groups, &kernel, method)
    }

    /// Stride, padding, dilation and groups.
    pub fn cfg(&self) -> &ConvCfg {
        &self.cfg
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The fixed output scale (1 unless a Parseval network's 1/sqrt(kh kw)).
    pub fn output_scale(&self) -> f64 {
        self.scale
    }
}

/// The certified norm of a convolution of `groups` groups that share geometry `g`, `kernel` holding the
/// groups' kernels one after another: the operator is block diagonal (after ordering channels by group),
/// so its norm is the largest over the groups.
pub fn grouped_certified(
    g: &ConvGeometry,
    groups: usize,
    kernel: &[f64],
    method: CertifyMethod,
) -> Result<CertifiedBound> {
    let per = g.kernel_len();
    if groups == 0 || kernel.len() != per * groups {
        return Err(config(
            "conv2d",
            format!(
                "{} kernel values for {groups} groups of {per}",
                kernel.len()
            ),
        ));
    }
    let mut best: Option<CertifiedBound> = None;
    for k in kernel.chunks(per) {
        let b = conv_certified(g, k, method)?;
        best = Some(match best {
            Some(a) => a.max(b)?,
            None => b,
        });
    }
    best.ok_or_else(|| config("conv2d", "no groups"))
}

/// The certified norm of a convolution with `kernel` by `method`.
pub fn conv_certified(
    g: &ConvGeometry,
    kernel: &[f64],
    method: CertifyMethod,
) -> Result<CertifiedBound> {
    Ok(match method {
        CertifyMethod::Auto => {
            if g.in_dim() * g.out_dim() <= norms::DENSE_MAX_ENTRIES
                && g.in_dim().min(g.out_dim()) <= norms::DENSE_MAX_SIDE
            {
                norms::conv_dense(g, kernel)?
            } else {
                norms::conv_fft(g, kernel)?
            }
        }
        CertifyMethod::Dense => norms::conv_dense(g, kernel)?,
        CertifyMethod::Power(cfg) => norms::conv_power(g, kernel, &cfg)?.bound,
        CertifyMethod::Fft => norms::conv_fft(g, kernel)?,
        CertifyMethod::Cor1 => norms::conv_cor1(g, kernel)?,
        CertifyMethod::Cisse => norms::conv_cisse(g, kernel)?,
        CertifyMethod::Peck => norms::conv_peck(g, kernel)?,
    })
}

impl LipConv2d {
    /// Convolution plus bias, each parameter passed through `param` (the tracked tensor itself, or
    /// [`Ctx::param`], which detaches it when the context is frozen).
    fn apply(&self, x: &Tensor, param: impl Fn(&Tensor) -> Tensor) -> candle_core::Result<Tensor> {
        match &self.bias {
            Some(b) if self.scale == 1.0 => {
                crate::im2col::conv2d_bias(x, &param(&self.weight), &param(b), &self.cfg)
            }
            Some(b) => {
                crate::channel::add_channel_bias(&self.conv(x, &param(&self.weight))?, &param(b))
            }
            None => self.conv(x, &param(&self.weight)),
        }
    }
}

impl Module for LipConv2d {
    /// The layer with tracked parameters.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(x, Tensor::clone)
    }
}

impl LipModule for LipConv2d {
    fn forward_lip(&self, x: &Tensor, lip: Lip, ctx: &Ctx) -> Result<(Tensor, Lip)> {
        let y = self.apply(x, |t| ctx.param(t))?;
        let lip = lip.through(
            || {
                let (_, c, h, w) = x.dims4()?;
                let u = ctx.vectors()?.get(&self.name, (1, c, h, w), x.device())?;
                Ok(l2_norm(&self.conv(u.as_tensor(), &self.weight)?)?)
            },
            || self.certified(x.dims(), ctx.method),
        )?;
        Ok((y, lip))
    }
}

/// A bias-free convolution followed by batch normalisation, bounded as one linear map: the per-channel
/// BN scale `gamma / sqrt(var + eps)` is folded into the kernel (batch variance in training, running
/// variance at inference), which is tighter than bounding the two separately.
#[derive(Debug, Clone)]
pub struct ConvBn {
    conv: LipConv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    /// Joins a convolution (its bias, if any, is rejected: BN's shift replaces it) and a BN layer.
    pub fn new(conv: LipConv2d, bn: BatchNorm2d) -> Result<Self> {
        if conv.bias.is_some() {
            return Err(config(
                "conv+BN",
                "the convolution must have no bias (BN's beta replaces it)",
            ));
        }
        if bn.channels() != conv.weight.dim(0)? {
            return Err(config(
                "conv+BN",
                format!(
                    "BN has {} channels, conv outputs {}",
                    bn.channels(),
                    conv.weight.dim(0)?
                ),
            ));
        }
        Ok(ConvBn { conv, bn })
    }

    /// The certified bound of the fused operator (running variance) on an input of shape `input_dims`.
    pub fn certified(&self, input_dims: &[usize], method: CertifyMethod) -> Result<CertifiedBound> {
        self.conv
            .certified_scaled(input_dims, method, Some(&self.bn.inference_scale()?))
    }

    /// The convolution.
    pub fn conv(&self) -> &LipConv2d {
        &self.conv
    }

    /// The batch normalisation.
    pub fn bn(&self) -> &BatchNorm2d {
        &self.bn
    }
}

impl LipModule for ConvBn {
    fn forward_lip(&self, x: &Tensor, lip: Lip, ctx: &Ctx) -> Result<(Tensor, Lip)> {
        self.forward_lip_act(x, lip, ctx, false)
    }
}

impl ConvBn {
    /// [`LipModule::forward_lip`], then ReLU when `relu` is set (1-Lipschitz: the bound is unchanged),
    /// fused into BN's pass at inference (see [`BatchNorm2d::normalize_act`]).
    pub(crate) fn forward_lip_act(
        &self,
        x: &Tensor,
        lip: Lip,
        ctx: &Ctx,
        relu: bool,
    ) -> Result<(Tensor, Lip)> {
        let conv = self.conv.conv(x, &ctx.param(&self.conv.weight))?;
        let (y, scale) = self.bn.normalize_act(&conv, ctx, relu)?;
        let lip = lip.through(
            || {
                let (_, c, h, w) = x.dims4()?;
                let u = ctx
                    .vectors()?
                    .get(&self.conv.name, (1, c, h, w), x.device())?;
                let v = self.conv.conv(u.as_tensor(), &self.conv.weight)?;
                let v = crate::channel::mul_channel(&v, &scale)?;
                Ok(l2_norm(&v)?)
            },
            || self.certified(x.dims(), ctx.method),
        )?;
        Ok((y, lip))
    }
}
