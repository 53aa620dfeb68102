//! Average and max pooling without padding, bounded by Thm. 3: an input element lies in at most n
//! windows; a window mean is 1/sqrt(kh kw) Lipschitz and a window max 1-Lipschitz.

use candle_core::Tensor;
use lmt_core::{norms, CertifiedBound, ConvGeometry};

use crate::lip::{CertifyMethod, Ctx, Lip, LipModule};
use crate::{error::config, Result};

/// Which pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// Mean over each window (divisor k^2).
    Avg,
    /// Maximum over each window.
    Max,
}

/// A square pooling layer.
#[derive(Debug, Clone, Copy)]
pub struct Pool2d {
    kind: PoolKind,
    kernel: usize,
    stride: usize,
}

impl Pool2d {
    /// Builds a pooling layer; kernel and stride must be positive. Max pooling must not overlap
    /// (stride = kernel): candle has no gradient for overlapping max pooling.
    pub fn new(kind: PoolKind, kernel: usize, stride: usize) -> Result<Self> {
        if kernel == 0 || stride == 0 {
            return Err(config("pooling", "kernel and stride must be positive"));
        }
        if kind == PoolKind::Max && kernel != stride {
            return Err(config("pooling", format!("max pooling needs stride = kernel (got kernel {kernel}, stride {stride}): candle has no gradient for overlapping max pooling")));
        }
        Ok(Pool2d {
            kind,
            kernel,
            stride,
        })
    }

    fn geometry(&self, dims: &[usize]) -> Result<ConvGeometry> {
        let &[_, _, h, w] = dims else {
            return Err(config(
                "pooling",
                format!("input must be NCHW, got {dims:?}"),
            ));
        };
        let g = ConvGeometry {
            c_in: 1,
            c_out: 1,
            kh: self.kernel,
            kw: self.kernel,
            stride: (self.stride, self.stride),
            pad: (0, 0),
            pad_end: (0, 0),
            dilation: (1, 1),
            in_h: h,
            in_w: w,
        };
        g.validate()?;
        Ok(g)
    }

    /// The certified bound on an input of shape `dims` (Thm. 3, or Peck's reconstructed bound).
    pub fn certified(&self, dims: &[usize], method: CertifyMethod) -> Result<CertifiedBound> {
        let g = self.geometry(dims)?;
        Ok(match (method, self.kind) {
            (CertifyMethod::Peck, _) => norms::pool_peck(&g)?,
            (_, PoolKind::Avg) => norms::avg_pool_thm3(&g)?,
            (_, PoolKind::Max) => norms::max_pool_thm3(&g)?,
        })
    }
}

impl LipModule for Pool2d {
    fn forward_lip(&self, x: &Tensor, lip: Lip, ctx: &Ctx) -> Result<(Tensor, Lip)> {
        let k = (self.kernel, self.kernel);
        let s = (self.stride, self.stride);
        let y = match self.kind {
            // A depthwise convolution with a constant kernel: same values as avg_pool2d, but with a
            // gradient for every stride (candle's avg_pool2d has none when stride != kernel).
            PoolKind::Avg => {
                let c = x.dim(1)?;
                let w = Tensor::full(
                    1.0 / (self.kernel * self.kernel) as f32,
                    (c, 1, self.kernel, self.kernel),
                    x.device(),
                )?
                .to_dtype(x.dtype())?;
                x.conv2d(&w, 0, self.stride, 1, c)?
            }
            PoolKind::Max => x.max_pool2d_with_stride(k, s)?,
        };
        let bound = || self.certified(x.dims(), CertifyMethod::Auto);
        let lip = lip.through(
            || Ok(Tensor::new(bound()?.value() as f32, x.device())?),
            || self.certified(x.dims(), ctx.method),
        )?;
        Ok((y, lip))
    }
}
