//! Per-channel ops on `(N, C, ...)` tensors as candle custom ops: add a bias, multiply by a scale, sum
//! over everything but the channel. Convolution biases and batch normalisation are built from them.
//!
//! Why: candle differentiates a broadcast by reducing the full `(N, C, H, W)` gradient over three axes
//! with a strided fold (17% of a Kolter-Wong training step at batch 128, 20% of a WRN step in BN), and
//! materialises zero gradients for untracked operands. Here every channel reduction is one contiguous
//! sum per `(image, channel)` row, accumulated in f64 in a fixed order (deterministic for any thread
//! count), and each gradient is computed only when its operand is tracked.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::cpu::{contiguous_f32, extend_chunked, new_chunked, operands};

/// `(y, b) -> y + b` per channel.
struct AddChannel;

/// `(x, s) -> x * s` per channel.
struct MulChannel;

/// `x -> (C)`, the sum over every dimension but 1.
struct ChannelSum;

/// `(a, b) -> (C)`, the per-channel sum of `a * b` (the scale gradient of [`MulChannel`]).
struct ChannelDot;

/// `x -> (C)`, the per-channel sum of the f32 squares `x * x`: the values of `channel_sum(x.sqr())`
/// without the squares as a tensor, and a backward pass that is candle's `sqr` gradient of the
/// broadcast sum gradient, `(x * g_c) * 2 + 0`, in one pass.
struct ChannelSumSq;

/// `(x, g) -> (x * (0 + g_c)) * 2 + 0` per channel: [`ChannelSumSq`]'s input gradient, as candle's
/// backward pass computes it for `sqr` after materialising the broadcast gradient into zeros.
struct SumSqGrad;

/// `(x, s, b) -> (x * s_c) + b_c` per channel (BN's scale and shift in training): the values of
/// `add_channel_bias(&mul_channel(x, s)?, b)` bit for bit, and the three gradients that chain's
/// backward pass gives (see [`ScaleShiftGrad`]) without its intermediate product or the zeroed buffer
/// candle accumulates that product's gradient in. With `relu`, then `max(y, 0)`: the values and gradients
/// of ReLU after it, without the pre-activation as a tensor (the backward pass recomputes it).
struct ScaleShift {
    relu: bool,
}

/// `(g, x) -> [(0 + g) * s_c, sum (0 + g) x per channel, sum g per channel]`, packed in that order
/// (`x.len() + 2 C` values): [`ScaleShift`]'s gradients of `x`, `s` and `b`, each rounded as the chain
/// rounds it (candle's `0 + g` into zeros, [`MulChannel`], [`ChannelDot`], [`ChannelSum`]).
///
/// With `relu_bias` (the shift `b` of a [`ScaleShift`] with ReLU), `g` is first the gradient the chain's
/// ReLU passes back, `0 + g * ((x s_c + b_c) >= 0 ? 1 : 0)` (its mask, then candle's `0 + g`).
struct ScaleShiftGrad {
    scale: Vec<f32>,
    relu_bias: Option<Vec<f32>>,
}

/// `x -> z = ((x + shift_c) * scale_c) + bias_c` per channel, each step rounded to f32 as the chain of
/// [`add_channel_bias`], [`mul_channel`], [`add_channel_bias`] rounds it (batch normalisation at
/// inference), then `max(z, 0)` when `relu` is set, with the input gradient only (`g * scale_c`, or
/// `(0 + g * (z >= 0)) * scale_c` after ReLU, the values the chain's backward pass gives): for constant
/// shift, scale and bias.
struct ChannelAffine {
    shift: Vec<f32>,
    scale: Vec<f32>,
    bias: Vec<f32>,
    relu: bool,
}

/// `(g, x) -> (0 + g * (z >= 0)) * scale_c` with `z` the affine map of `x`: the input gradient of a
/// [`ChannelAffine`] with ReLU.
struct AffineReluGrad<'a>(&'a ChannelAffine);

/// `(channels, row length)` of an `(N, C, ...)` shape.
fn channel_rows(shape: &Shape) -> Result<(usize, usize)> {
    let dims = shape.dims();
    if dims.len() < 2 {
        candle_core::bail!("channel op: input must be (N, C, ...), got {dims:?}")
    }
    Ok((dims[1], dims[2..].iter().product()))
}

/// `out[n, c, r] = f(x[n, c, r], v[c])` for a per-channel vector `v`.
fn per_channel(
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<(CpuStorage, Shape)> {
    let (x, v) = operands(op, (s1, l1), (s2, l2))?;
    let (c, row) = channel_rows(l1.shape())?;
    if v.len() != c {
        candle_core::bail!("{op}: {} values for {c} channels", v.len())
    }
    let image = c * row;
    let out = new_chunked(x.len(), image, 0, image, |i, o, _| {
        let xi = &x[i * image..(i + 1) * image];
        let rows = o.chunks_mut(row.max(1)).zip(xi.chunks(row.max(1)));
        for ((or, xr), &vc) in rows.zip(v) {
            or.iter_mut().zip(xr).for_each(|(d, &u)| *d = f(u, vc));
        }
    });
    Ok((CpuStorage::F32(out), l1.shape().clone()))
}

/// `sums[c] = sum over n, r of f(n, c, r)`, each channel's terms added in a fixed order in f64.
fn channel_reduce(
    shape: &Shape,
    len: usize,
    f: impl Fn(usize) -> f64 + Sync,
) -> Result<(CpuStorage, Shape)> {
    let sums = channel_sums(shape, len, f)?;
    let c = sums.len();
    Ok((CpuStorage::F32(sums), Shape::from(c)))
}

/// The sums of [`channel_reduce`] as a vector: per channel, over images in order, each image's row
/// summed in f64, then rounded to f32.
fn channel_sums(shape: &Shape, len: usize, f: impl Fn(usize) -> f64 + Sync) -> Result<Vec<f32>> {
    channel_sums_by(shape, len, |_, i| f(i))
}

/// [`channel_sums`] of `f(c, i)`, for terms that depend on their channel `c`.
fn channel_sums_by(
    shape: &Shape,
    len: usize,
    f: impl Fn(usize, usize) -> f64 + Sync,
) -> Result<Vec<f32>> {
    let (c, row) = channel_rows(shape)?;
    let images = len.checked_div(c * row).unwrap_or(0);
    let sums = new_chunked(c, 1, 0, images * row, |ch, sum, _| {
        let mut acc = 0f64;
        for n in 0..images {
            let start = (n * c + ch) * row;
            acc += (start..start + row).map(|i| f(ch, i)).sum::<f64>();
        }
        sum[0] = acc as f32;
    });
    Ok(sums)
}

impl CustomOp2 for AddChannel {
    fn name(&self) -> &'static str {
        "lmt-add-channel"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        per_channel(self.name(), (s1, l1), (s2, l2), |u, b| u + b)
    }

    fn bwd(
        &self,
        y: &Tensor,
        b: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = y.track_op().then(|| grad.clone());
        let gb = if b.track_op() {
            Some(bias_grad(grad)?)
        } else {
            None
        };
        Ok((gy, gb))
    }
}

impl CustomOp2 for MulChannel {
    fn name(&self) -> &'static str {
        "lmt-mul-channel"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        per_channel(self.name(), (s1, l1), (s2, l2), |u, s| u * s)
    }

    fn bwd(
        &self,
        x: &Tensor,
        s: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(s, &MulChannel)?)
        } else {
            None
        };
        let gs = if s.track_op() {
            Some(grad.apply_op2_no_bwd(x, &ChannelDot)?)
        } else {
            None
        };
        Ok((gx, gs))
    }
}

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "lmt-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(s, l, self.name())?;
        channel_reduce(l.shape(), g.len(), |i| g[i] as f64)
    }

    fn bwd(&self, x: &Tensor, _sum: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let mut shape = vec![1; x.rank()];
        shape[1] = grad.elem_count();
        Ok(Some(grad.reshape(shape)?.broadcast_as(x.shape())?))
    }
}

impl CustomOp1 for ChannelSumSq {
    fn name(&self) -> &'static str {
        "lmt-channel-sum-sq"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        channel_reduce(l.shape(), x.len(), |i| (x[i] * x[i]) as f64)
    }

    fn bwd(&self, x: &Tensor, _sum: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(x.apply_op2_no_bwd(&g, &SumSqGrad)?))
    }
}

impl CustomOp2 for SumSqGrad {
    fn name(&self) -> &'static str {
        "lmt-channel-sum-sq-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        per_channel(self.name(), (s1, l1), (s2, l2), |u, g| {
            (u * (0.0 + g)) * 2.0 + 0.0
        })
    }
}

impl CustomOp1 for ChannelAffine {
    fn name(&self) -> &'static str {
        "lmt-channel-affine"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let (c, row) = channel_rows(l.shape())?;
        if [&self.shift, &self.scale, &self.bias]
            .iter()
            .any(|v| v.len() != c)
        {
            candle_core::bail!("{}: per-channel vectors for {c} channels", self.name())
        }
        let image = c * row;
        let out = new_chunked(x.len(), image, 0, image, |i, o, _| {
            let xi = &x[i * image..(i + 1) * image];
            let rows = o.chunks_mut(row.max(1)).zip(xi.chunks(row.max(1)));
            for (ch, (or, xr)) in rows.enumerate() {
                let (a, s, b) = (self.shift[ch], self.scale[ch], self.bias[ch]);
                let pairs = or.iter_mut().zip(xr);
                if self.relu {
                    pairs.for_each(|(d, &u)| *d = (((u + a) * s) + b).max(0f32));
                } else {
                    pairs.for_each(|(d, &u)| *d = ((u + a) * s) + b);
                }
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        if self.relu {
            return Ok(Some(grad.apply_op2_no_bwd(x, &AffineReluGrad(self))?));
        }
        let s = Tensor::from_slice(&self.scale, self.scale.len(), grad.device())?;
        Ok(Some(grad.apply_op2_no_bwd(&s, &MulChannel)?))
    }
}

impl CustomOp2 for AffineReluGrad<'_> {
    fn name(&self) -> &'static str {
        "lmt-channel-affine-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, x) = operands(self.name(), (s1, l1), (s2, l2))?;
        let (c, row) = channel_rows(l1.shape())?;
        let op = self.0;
        if g.len() != x.len() || op.scale.len() != c {
            candle_core::bail!("{}: operands do not match", self.name())
        }
        let image = c * row;
        let out = new_chunked(x.len(), image, 0, image, |i, o, _| {
            let range = i * image..(i + 1) * image;
            let (gi, xi) = (&g[range.clone()], &x[range]);
            let rows = o
                .chunks_mut(row.max(1))
                .zip(gi.chunks(row.max(1)).zip(xi.chunks(row.max(1))));
            for (ch, (or, (gr, xr))) in rows.enumerate() {
                let (a, s, b) = (op.shift[ch], op.scale[ch], op.bias[ch]);
                for ((d, &g), &u) in or.iter_mut().zip(gr).zip(xr) {
                    let on = if ((u + a) * s) + b >= 0.0 { 1.0 } else { 0.0 };
                    *d = (0.0 + g * on) * s;
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

impl CustomOp3 for ScaleShift {
    fn name(&self) -> &'static str {
        "lmt-scale-shift"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, s) = operands(self.name(), (s1, l1), (s2, l2))?;
        let b = contiguous_f32(s3, l3, self.name())?;
        let (c, row) = channel_rows(l1.shape())?;
        if s.len() != c || b.len() != c {
            candle_core::bail!("{}: per-channel vectors for {c} channels", self.name())
        }
        let image = c * row;
        let out = new_chunked(x.len(), image, 0, image, |i, o, _| {
            let xi = &x[i * image..(i + 1) * image];
            let rows = o.chunks_mut(row.max(1)).zip(xi.chunks(row.max(1)));
            for (ch, (or, xr)) in rows.enumerate() {
                let (sc, bc) = (s[ch], b[ch]);
                match self.relu {
                    true => or
                        .iter_mut()
                        .zip(xr)
                        .for_each(|(d, &u)| *d = ((u * sc) + bc).max(0f32)),
                    false => or.iter_mut().zip(xr).for_each(|(d, &u)| *d = (u * sc) + bc),
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        s: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c) = (x.elem_count(), s.elem_count());
        let op = ScaleShiftGrad {
            scale: s.flatten_all()?.to_vec1::<f32>()?,
            relu_bias: match self.relu {
                true => Some(b.flatten_all()?.to_vec1::<f32>()?),
                false => None,
            },
        };
        let packed = grad.contiguous()?.apply_op2_no_bwd(&x.contiguous()?, &op)?;
        let gx = x
            .track_op()
            .then(|| packed.narrow(0, 0, n)?.reshape(x.shape()));
        let gs = s
            .track_op()
            .then(|| packed.narrow(0, n, c)?.reshape(s.shape()));
        let gb = b
            .track_op()
            .then(|| packed.narrow(0, n + c, c)?.reshape(b.shape()));
        Ok((gx.transpose()?, gs.transpose()?, gb.transpose()?))
    }
}

impl CustomOp2 for ScaleShiftGrad {
    fn name(&self) -> &'static str {
        "lmt-scale-shift-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, x) = operands(self.name(), (s1, l1), (s2, l2))?;
        let (c, row) = channel_rows(l1.shape())?;
        if g.len() != x.len() || self.scale.len() != c {
            candle_core::bail!("{}: operands do not match", self.name())
        }
        let n = x.len();
        if self.relu_bias.as_ref().is_some_and(|b| b.len() != c) {
            candle_core::bail!("{}: a shift of the wrong length", self.name())
        }
        // The output gradient as the chain's scale-and-shift sees it: after ReLU's mask, where there is
        // one, and candle's `0 + g`, for entry `i` of channel `ch`.
        let g_at = |ch: usize, i: usize| match &self.relu_bias {
            None => g[i],
            Some(b) => {
                let t = (x[i] * self.scale[ch]) + b[ch];
                0.0 + g[i] * if t >= 0.0 { 1.0 } else { 0.0 }
            }
        };
        let mut out = Vec::with_capacity(n + 2 * c);
        let image = c * row;
        extend_chunked(&mut out, n, image, 0, image, |i, o, _| {
            for (ch, or) in o.chunks_mut(row.max(1)).enumerate() {
                let (start, sc) = (i * image + ch * row, self.scale[ch]);
                match &self.relu_bias {
                    None => or
                        .iter_mut()
                        .zip(&g[start..])
                        .for_each(|(d, &u)| *d = (0.0 + u) * sc),
                    Some(_) => or
                        .iter_mut()
                        .enumerate()
                        .for_each(|(k, d)| *d = (0.0 + g_at(ch, start + k)) * sc),
                }
            }
        });
        out.extend(channel_sums_by(l1.shape(), n, |ch, i| {
            (0.0 + g_at(ch, i)) as f64 * x[i] as f64
        })?);
        out.extend(channel_sums_by(l1.shape(), n, |ch, i| g_at(ch, i) as f64)?);
        Ok((CpuStorage::F32(out), Shape::from(n + 2 * c)))
    }
}

impl CustomOp2 for ChannelDot {
    fn name(&self) -> &'static str {
        "lmt-channel-dot"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = operands(self.name(), (s1, l1), (s2, l2))?;
        if a.len() != b.len() {
            candle_core::bail!(
                "{}: operands of {} and {} values",
                self.name(),
                a.len(),
                b.len()
            )
        }
        channel_reduce(l1.shape(), a.len(), |i| a[i] as f64 * b[i] as f64)
    }
}

/// Whether the custom ops apply (f32 on the CPU); otherwise candle's broadcast ops are used.
fn native(x: &Tensor, v: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && v.dtype() == x.dtype()
}

/// `v` (C) reshaped to broadcast along dimension 1 of a rank-`rank` tensor.
fn as_channels(v: &Tensor, rank: usize) -> Result<Tensor> {
    let mut shape = vec![1; rank];
    if rank >= 2 {
        shape[1] = v.elem_count();
    }
    v.reshape(shape)
}

/// `y + b` with `b` (C) added along dimension 1 of `y` (N, C, ...).
pub fn add_channel_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !native(y, b) {
        return y.broadcast_add(&as_channels(b, y.rank())?);
    }
    y.contiguous()?.apply_op2(&b.contiguous()?, AddChannel)
}

/// The gradient of a per-channel bias for the output gradient `grad` (N, C, ...): its per-channel sum,
/// in f64 in a fixed order ([`AddChannel`]'s and the biased convolution's).
pub(crate) fn bias_grad(grad: &Tensor) -> Result<Tensor> {
    grad.contiguous()?.apply_op1_no_bwd(&ChannelSum)
}

/// `x * s` with `s` (C) multiplied along dimension 1 of `x` (N, C, ...).
pub fn mul_channel(x: &Tensor, s: &Tensor) -> Result<Tensor> {
    if !native(x, s) {
        return x.broadcast_mul(&as_channels(s, x.rank())?);
    }
    x.contiguous()?.apply_op2(&s.contiguous()?, MulChannel)
}

/// `(x * s) + b` with `s` and `b` (C) applied along dimension 1 of `x` (N, C, ...), then ReLU when
/// `relu` is set: the values and gradients of `add_channel_bias(&mul_channel(x, s)?, b)` (and of ReLU
/// after it) in one pass each way (see [`ScaleShift`]); BN's scale and shift in training.
pub(crate) fn scale_shift_act(x: &Tensor, s: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
    if !native(x, s) || !native(x, b) {
        let y = add_channel_bias(&mul_channel(x, s)?, b)?;
        return if relu { crate::simple::relu(&y) } else { Ok(y) };
    }
    x.contiguous()?
        .apply_op3(&s.contiguous()?, &b.contiguous()?, ScaleShift { relu })
}

/// The per-channel sum of the squares of `x` (N, C, ...), shape (C): the values and gradient of
/// `channel_sum(&x.sqr()?)` in fewer passes (see [`ChannelSumSq`]).
pub(crate) fn channel_sum_sq(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        return channel_sum(&x.sqr()?);
    }
    x.contiguous()?.apply_op1(ChannelSumSq)
}

/// `((x + shift) * scale) + bias` per channel of `x` (N, C, ...) for constant (untracked) vectors of
/// length C, then ReLU when `relu` is set: the values of
/// `add_channel_bias(&mul_channel(&add_channel_bias(x, shift)?, scale)?, bias)` (and of ReLU of it) bit
/// for bit, and its input gradient, in one pass each way; `None` when a vector is tracked (then the
/// chain is needed for its gradient) or the tensors are not f32 on the CPU.
pub(crate) fn channel_affine(
    x: &Tensor,
    shift: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    relu: bool,
) -> Result<Option<Tensor>> {
    let vectors = [shift, scale, bias];
    if vectors.iter().any(|v| v.track_op() || !native(x, v)) {
        return Ok(None);
    }
    let [shift, scale, bias] = vectors.map(|v| v.flatten_all()?.to_vec1::<f32>());
    let op = ChannelAffine {
        shift: shift?,
        scale: scale?,
        bias: bias?,
        relu,
    };
    Ok(Some(x.contiguous()?.apply_op1(op)?))
}

/// The per-channel sum of `x` (N, C, ...) over every other dimension, shape (C).
pub fn channel_sum(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        let mut t = x.transpose(0, 1)?;
        t = t.flatten_from(1)?;
        return t.sum(1);
    }
    x.contiguous()?.apply_op1(ChannelSum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Random values with signed zeros and exact ties mixed in, (3, 4, 5, 6).
    fn input() -> Tensor {
        let n = 3 * 4 * 5 * 6;
        let v: Vec<f32> = (0..n)
            .map(|i| match i % 11 {
                0 => 0.0,
                1 => -0.0,
                _ => ((i * 7919 % 1000) as f32 - 500.0) / 97.0,
            })
            .collect();
        Tensor::from_vec(v, (3, 4, 5, 6), &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.into_iter().map(f32::to_bits).collect()
    }

    /// The fused sum of squares gives `channel_sum(x.sqr())` and its input gradient bit for bit.
    #[test]
    fn sum_of_squares_equals_the_chain_bit_for_bit() {
        let x = Var::from_tensor(&input()).unwrap();
        let w = Tensor::new(&[0.3f32, -1.7, 0.0, 2.5], &Device::Cpu).unwrap();
        let fused = channel_sum_sq(x.as_tensor()).unwrap();
        let chain = channel_sum(&x.as_tensor().sqr().unwrap()).unwrap();
        assert_eq!(bits(&fused), bits(&chain));
        let grad = |s: &Tensor| {
            let g = (s * &w).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(x.as_tensor()).unwrap().clone()
        };
        assert_eq!(bits(&grad(&fused)), bits(&grad(&chain)));
    }

    /// The fused scale and shift gives `add_channel_bias(mul_channel(x, s), b)`, alone and with ReLU after
    /// it, and the gradients of all three operands bit for bit.
    #[test]
    fn scale_shift_equals_the_chain_bit_for_bit() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&input()).unwrap();
        let s = Var::new(&[1.0f32 / 3.0, -2.0, 0.0, 1e-3], &dev).unwrap();
        let b = Var::new(&[0.1f32, -0.0, -4.0, 2.0], &dev).unwrap();
        let (xt, st, bt) = (x.as_tensor(), s.as_tensor(), b.as_tensor());
        // An output gradient with signed zeros, nonzero where the input is zero (so ReLU's mask on zero
        // pre-activations shows).
        let g: Vec<f32> = (0..360)
            .map(|i| match i % 13 {
                0 => -0.0,
                1 => 0.0,
                _ => ((i * 4057 % 1000) as f32 - 480.0) / 89.0,
            })
            .collect();
        let g = Tensor::from_vec(g, (3, 4, 5, 6), &dev).unwrap();
        let grads = |y: &Tensor| {
            let gs = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            [xt, st, bt].map(|t| bits(gs.get(t).unwrap()))
        };
        let chain = add_channel_bias(&mul_channel(xt, st).unwrap(), bt).unwrap();
        let fused = scale_shift_act(xt, st, bt, false).unwrap();
        assert_eq!(bits(&fused), bits(&chain));
        assert_eq!(grads(&fused), grads(&chain));
        // With ReLU after it: pre-activations of +0 and -0 (zero inputs, a zero scale, a -0 shift) keep
        // their gradient, negative ones lose it, as ReLU's mask `x >= 0` says.
        let chain = crate::simple::relu(&chain).unwrap();
        let fused = scale_shift_act(xt, st, bt, true).unwrap();
        assert_eq!(bits(&fused), bits(&chain));
        assert_eq!(grads(&fused), grads(&chain));
    }

    /// The fused per-channel affine map gives the chain add, multiply, add and its input gradient bit for
    /// bit, and declines tracked vectors.
    #[test]
    fn affine_equals_the_chain_bit_for_bit() {
        let x = Var::from_tensor(&input()).unwrap();
        let dev = Device::Cpu;
        let shift = Tensor::new(&[-0.25f32, 1.5, -0.0, 3.0], &dev).unwrap();
        let scale = Tensor::new(&[1.0f32 / 3.0, -2.0, 0.7, 1e-3], &dev).unwrap();
        let bias = Tensor::new(&[0.1f32, 0.0, -4.0, 2.0], &dev).unwrap();
        let fused = channel_affine(x.as_tensor(), &shift, &scale, &bias, false)
            .unwrap()
            .expect("constant vectors");
        let chain = add_channel_bias(
            &mul_channel(&add_channel_bias(x.as_tensor(), &shift).unwrap(), &scale).unwrap(),
            &bias,
        )
        .unwrap();
        assert_eq!(bits(&fused), bits(&chain));
        let g = input().affine(0.5, -0.25).unwrap();
        let grad = |y: &Tensor| {
            let gs = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            gs.get(x.as_tensor()).unwrap().clone()
        };
        assert_eq!(bits(&grad(&fused)), bits(&grad(&chain)));
        let tracked = Var::from_tensor(&scale).unwrap();
        let declined = channel_affine(x.as_tensor(), &shift, tracked.as_tensor(), &bias, false);
        assert!(declined.unwrap().is_none());
        // With ReLU: the chain followed by ReLU, values and input gradient.
        let fused = channel_affine(x.as_tensor(), &shift, &scale, &bias, true)
            .unwrap()
            .expect("constant vectors");
        let chain = crate::simple::relu(&chain).unwrap();
        assert_eq!(bits(&fused), bits(&chain));
        assert_eq!(bits(&grad(&fused)), bits(&grad(&chain)));
    }
}
