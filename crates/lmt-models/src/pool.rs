//! Average and max pooling, bounded by Thm. 3 (an input element lies in at most n windows; a window mean
//! of k pixels is 1/sqrt(k) Lipschitz and a window max 1-Lipschitz) or, for average pooling, by its exact
//! norm (a Kronecker product of one averaging matrix per axis), whichever is smaller. The general form is
//! ONNX's: per-axis kernel and stride, zero (average) or minus-infinity (max) padding on each side, and
//! for average pooling whether padded pixels count in the divisor.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use lmt_core::{norms, CertifiedBound, ConvGeometry};

use crate::cpu::{contiguous_f32, new_chunked};

use crate::lip::{CertifyMethod, Ctx, Lip, LipModule};
use crate::{error::config, ConvCfg, Result};

/// Which pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// Mean over each window.
    Avg,
    /// Maximum over each window.
    Max,
}

/// Kernel, stride and padding of a pooling layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolCfg {
    /// Window (rows, columns).
    pub kernel: (usize, usize),
    /// Stride (rows, columns).
    pub stride: (usize, usize),
    /// Padding: top, left, bottom, right.
    pub pads: [usize; 4],
    /// Average pooling: padded pixels count in the divisor (ONNX's `count_include_pad`). Irrelevant
    /// without padding.
    pub count_include_pad: bool,
}

impl PoolCfg {
    /// A square window with equal stride and no padding.
    pub fn square(kernel: usize, stride: usize) -> Self {
        PoolCfg {
            kernel: (kernel, kernel),
            stride: (stride, stride),
            pads: [0; 4],
            count_include_pad: true,
        }
    }

    fn padded(&self) -> bool {
        self.pads != [0; 4]
    }
}

/// A pooling layer.
#[derive(Debug, Clone, Copy)]
pub struct Pool2d {
    kind: PoolKind,
    cfg: PoolCfg,
}

impl Pool2d {
    /// A square pooling layer without padding; kernel and stride must be positive.
    pub fn new(kind: PoolKind, kernel: usize, stride: usize) -> Result<Self> {
        Self::general(kind, PoolCfg::square(kernel, stride))
    }

    /// A pooling layer in ONNX's general form; kernels and strides must be positive.
    pub fn general(kind: PoolKind, cfg: PoolCfg) -> Result<Self> {
        let (k, s) = (cfg.kernel, cfg.stride);
        if k.0 == 0 || k.1 == 0 || s.0 == 0 || s.1 == 0 {
            return Err(config("pooling", "kernel and stride must be positive"));
        }
        Ok(Pool2d { kind, cfg })
    }

    /// Average or max.
    pub fn kind(&self) -> PoolKind {
        self.kind
    }

    /// Kernel, stride and padding.
    pub fn cfg(&self) -> &PoolCfg {
        &self.cfg
    }

    /// The geometry of one channel on an input of shape `(_, _, h, w)`, checked: every window must hold
    /// at least one input pixel (a window of padding only has no maximum, and no mean without counting
    /// the padding).
    pub fn geometry(&self, dims: &[usize]) -> Result<ConvGeometry> {
        let &[_, _, h, w] = dims else {
            return Err(config(
                "pooling",
                format!("input must be NCHW, got {dims:?}"),
            ));
        };
        let [pt, pl, pb, pr] = self.cfg.pads;
        let g = ConvGeometry {
            c_in: 1,
            c_out: 1,
            kh: self.cfg.kernel.0,
            kw: self.cfg.kernel.1,
            stride: self.cfg.stride,
            pad: (pt, pl),
            pad_end: (pb, pr),
            dilation: (1, 1),
            in_h: h,
            in_w: w,
        };
        g.validate()?;
        // The last window along an axis starts at (out - 1) * s - pad_begin; it must reach the input, and
        // the first window (starting at -pad_begin) must too.
        let reaches = |k: usize, p: usize, size: usize, s: usize, out: usize| {
            p < k && (out - 1) * s < size + p
        };
        if !reaches(g.kh, pt, h, g.stride.0, g.out_h())
            || !reaches(g.kw, pl, w, g.stride.1, g.out_w())
        {
            return Err(config(
                "pooling",
                format!(
                    "{:?} on {h}x{w}: a window lies entirely in the padding",
                    self.cfg
                ),
            ));
        }
        Ok(g)
    }

    /// The certified bound on an input of shape `dims` (Thm. 3 or, for average pooling, the exact norm if
    /// smaller; Peck's reconstructed bound for `CertifyMethod::Peck`).
    pub fn certified(&self, dims: &[usize], method: CertifyMethod) -> Result<CertifiedBound> {
        let g = self.geometry(dims)?;
        Ok(match (method, self.kind) {
            (CertifyMethod::Peck, _) => norms::pool_peck(&g)?,
            (_, PoolKind::Max) => norms::max_pool_thm3(&g)?,
            (_, PoolKind::Avg) => {
                let exact = norms::avg_pool_exact(&g, self.cfg.count_include_pad)?;
                // Thm. 3 divides by the full window, so it holds only when every divisor is the window.
                if self.cfg.count_include_pad || !self.cfg.padded() {
                    let thm3 = norms::avg_pool_thm3(&g)?;
                    if thm3.value() <= exact.value() {
                        thm3
                    } else {
                        exact
                    }
                } else {
                    exact
                }
            }
        })
    }

    /// The pooled values: candle's own ops for the square unpadded windows of the built-in networks,
    /// otherwise average pooling as a convolution of each channel with a constant kernel (divided by
    /// the real-pixel count where padding does not count) and max pooling as the maximum over the
    /// window's taps of the minus-infinity padded input.
    fn pool(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.geometry(x.dims())?;
        let (b, c, h, w) = x.dims4()?;
        let PoolCfg {
            kernel: (kh, kw),
            stride: (sh, sw),
            pads: [pt, pl, pb, pr],
            ..
        } = self.cfg;
        let square = kh == kw && sh == sw && !self.cfg.padded();
        Ok(match self.kind {
            // A depthwise convolution with a constant kernel: same values as avg_pool2d, but with a
            // gradient for every stride (candle's avg_pool2d has none when stride != kernel).
            PoolKind::Avg if square => {
                let tiles = |k: usize, s: usize, out: usize, size: usize| {
                    (s == k || out == 1) && out * k == size
                };
                let cpu_f32 = x.device().is_cpu() && x.dtype() == candle_core::DType::F32;
                if cpu_f32 && tiles(kh, sh, g.out_h(), h) && tiles(kw, sw, g.out_w(), w) {
                    x.contiguous()?.apply_op1(TiledAvgPool {
                        kernel: (kh, kw),
                        stride: (sh, sw),
                    })?
                } else {
                    candle_avg_pool(x, (kh, kw), (sh, sw))?
                }
            }
            PoolKind::Avg => {
                let cfg = ConvCfg {
                    stride: self.cfg.stride,
                    pads: self.cfg.pads,
                    dilation: (1, 1),
                    groups: 1,
                };
                let ones = Tensor::ones((1, 1, kh, kw), x.dtype(), x.device())?;
                let sums = crate::im2col::conv2d(&x.reshape((b * c, 1, h, w))?, &ones, &cfg)?
                    .reshape((b, c, g.out_h(), g.out_w()))?;
                let div: Vec<f32> = (0..g.out_h() * g.out_w())
                    .map(|o| {
                        let count = |o: usize, k: usize, s: usize, p: usize, size: usize| {
                            (0..k)
                                .filter(|a| (o * s + a).checked_sub(p).is_some_and(|i| i < size))
                                .count()
                        };
                        let n = if self.cfg.count_include_pad {
                            kh * kw
                        } else {
                            count(o / g.out_w(), kh, sh, pt, h)
                                * count(o % g.out_w(), kw, sw, pl, w)
                        };
                        1.0 / n as f32
                    })
                    .collect();
                let div = Tensor::from_vec(div, (1, 1, g.out_h(), g.out_w()), x.device())?
                    .to_dtype(x.dtype())?;
                sums.broadcast_mul(&div)?
            }
            PoolKind::Max if square && kh == sh => x.max_pool2d_with_stride((kh, kw), (sh, sw))?,
            PoolKind::Max => {
                let mut xp = x.clone();
                for (dim, before, after) in [(2, pt, pb), (3, pl, pr)] {
                    let side = |n: usize| -> Result<Tensor> {
                        let mut shape = xp.dims().to_vec();
                        shape[dim] = n;
                        Ok(Tensor::full(f32::NEG_INFINITY, shape, x.device())?
                            .to_dtype(x.dtype())?)
                    };
                    let mut parts = Vec::new();
                    if before > 0 {
                        parts.push(side(before)?);
                    }
                    parts.push(xp.clone());
                    if after > 0 {
                        parts.push(side(after)?);
                    }
                    xp = Tensor::cat(&parts, dim)?;
                }
                let pick = |out: usize, s: usize, a: usize| {
                    let idx: Vec<u32> = (0..out).map(|o| (o * s + a) as u32).collect();
                    Tensor::from_vec(idx, out, x.device())
                };
                let mut best: Option<Tensor> = None;
                for a in 0..kh {
                    let rows = xp.index_select(&pick(g.out_h(), sh, a)?, 2)?;
                    for bb in 0..kw {
                        let tap = rows.index_select(&pick(g.out_w(), sw, bb)?, 3)?;
                        best = Some(match best {
                            None => tap,
                            Some(m) => m.maximum(&tap)?,
                        });
                    }
                }
                best.ok_or_else(|| config("pooling", "empty window"))?
            }
        })
    }
}

/// candle's average pooling as the built-in networks compute it: a depthwise convolution of every
/// channel with a constant kernel 1/(kh kw).
fn candle_avg_pool(
    x: &Tensor,
    (kh, kw): (usize, usize),
    (sh, _): (usize, usize),
) -> candle_core::Result<Tensor> {
    let c = x.dim(1)?;
    let k =
        Tensor::full(1.0 / (kh * kw) as f32, (c, 1, kh, kw), x.device())?.to_dtype(x.dtype())?;
    x.conv2d(&k, 0, sh, 1, c)
}

/// Average pooling over windows that tile the input exactly (stride = window, or one window per axis),
/// as a custom op: the forward pass is candle's own [`candle_avg_pool`] (so its values), and the
/// backward pass gives each input pixel `0 + g * (1 / (kh kw))`, the value candle's backward pass
/// computes for it, in one pass. candle's own backward of the depthwise convolution runs one transposed
/// convolution and one kernel gradient per channel and pads each channel's gradient to the whole
/// tensor before adding it: for the WRN's 8x8 pool over 64 channels, 64 full-size copies and additions.
struct TiledAvgPool {
    kernel: (usize, usize),
    stride: (usize, usize),
}

/// `g -> gx`: [`TiledAvgPool`]'s input gradient on an input of `(h, w)` pixels per channel.
struct TiledAvgPoolGrad {
    kernel: (usize, usize),
    input: (usize, usize),
}

impl CustomOp1 for TiledAvgPool {
    fn name(&self) -> &'static str {
        "lmt-tiled-avg-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let x = Tensor::from_slice(x, l.shape(), &candle_core::Device::Cpu)?;
        let y = candle_avg_pool(&x, self.kernel, self.stride)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1()?), shape))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let op = TiledAvgPoolGrad {
            kernel: self.kernel,
            input: (h, w),
        };
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

impl CustomOp1 for TiledAvgPoolGrad {
    fn name(&self) -> &'static str {
        "lmt-tiled-avg-pool-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(s, l, self.name())?;
        let (b, c, oh, ow) = l.shape().dims4()?;
        let ((kh, kw), (h, w)) = (self.kernel, self.input);
        if oh * kh != h || ow * kw != w {
            candle_core::bail!("{}: {oh}x{ow} windows of {kh}x{kw} on {h}x{w}", self.name())
        }
        // The kernel value exactly as candle_avg_pool builds it.
        let k = 1.0 / (kh * kw) as f32;
        let gx = new_chunked(b * c * h * w, h * w, 0, h * w, |i, plane, _| {
            let gi = &g[i * oh * ow..(i + 1) * oh * ow];
            for (y, row) in plane.chunks_mut(w).enumerate() {
                for (x, d) in row.iter_mut().enumerate() {
                    *d = 0.0 + gi[(y / kh) * ow + x / kw] * k;
                }
            }
        });
        Ok((CpuStorage::F32(gx), Shape::from((b, c, h, w))))
    }
}

impl LipModule for Pool2d {
    fn forward_lip(&self, x: &Tensor, lip: Lip, ctx: &Ctx) -> Result<(Tensor, Lip)> {
        let y = self.pool(x)?;
        let bound = || self.certified(x.dims(), CertifyMethod::Auto);
        let lip = lip.through(
            || Ok(Tensor::new(bound()?.value() as f32, x.device())?),
            || self.certified(x.dims(), ctx.method),
        )?;
        Ok((y, lip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn bits(t: &Tensor) -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.into_iter().map(f32::to_bits).collect()
    }

    /// The tiled average pool gives candle's depthwise-convolution pool and its input gradient bit for
    /// bit: the WRN's global 8x8 pool and the average-pool shortcut's 2x2 stride 2, with signed zeros in
    /// the upstream gradient.
    #[test]
    fn tiled_average_pool_equals_candles_bit_for_bit() {
        for (c, hw, k, s) in [(64, 8, 8, 1), (6, 12, 2, 2), (3, 6, 3, 3)] {
            let n = 3 * c * hw * hw;
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 997) as f32 - 498.0) / 61.0)
                .collect();
            let x = Var::from_vec(v, (3, c, hw, hw), &Device::Cpu).unwrap();
            let pool = Pool2d::new(PoolKind::Avg, k, s).unwrap();
            let ours = pool.pool(x.as_tensor()).unwrap();
            let candle = candle_avg_pool(x.as_tensor(), (k, k), (s, s)).unwrap();
            assert_eq!(
                bits(&ours),
                bits(&candle),
                "{c} channels, {hw}x{hw}, {k}/{s}"
            );
            let m = ours.elem_count();
            let g: Vec<f32> = (0..m)
                .map(|i| match i % 5 {
                    0 => -0.0,
                    1 => 0.0,
                    _ => (i as f32 - 40.0) / 7.0,
                })
                .collect();
            let g = Tensor::from_vec(g, ours.shape(), &Device::Cpu).unwrap();
            let grad = |y: &Tensor| {
                let gs = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                bits(gs.get(x.as_tensor()).unwrap())
            };
            assert_eq!(
                grad(&ours),
                grad(&candle),
                "{c} channels, {hw}x{hw}, {k}/{s}"
            );
        }
    }
}
