//! Layers whose Lipschitz factor is 1: ReLU, MinMax, flatten, and dropout (whose train-time 1/(1-p) rescaling is
//! deliberately not counted, as in the authors' code; at inference dropout is the identity).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rand::Rng;

use crate::cpu::{contiguous_f32, new_chunked, operands};
use crate::lip::{Ctx, Lip, LipModule};
use crate::Act;
use crate::{error::config, Result};

/// max(0, x), 1-Lipschitz.
#[derive(Debug, Clone, Copy, Default)]
pub struct Relu;

impl LipModule for Relu {
    fn forward_lip(&self, x: &Tensor, lip: Lip, _: &Ctx) -> Result<(Tensor, Lip)> {
        Ok((relu(x)?, lip))
    }
}

/// Elements per item of the parallel elementwise loops below (each item writes its own chunk).
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// `out[i] = f(i, a[i])` over all of `a`, in parallel chunks on the compute pool.
fn map_indexed(a: &[f32], f: impl Fn(usize, f32) -> f32 + Sync) -> Vec<f32> {
    let out = new_chunked(
        a.len(),
        ELEMENTWISE_CHUNK,
        0,
        ELEMENTWISE_CHUNK,
        |i, o, _| {
            let start = i * ELEMENTWISE_CHUNK;
            let src = &a[start..start + o.len()];
            for (k, (d, &v)) in o.iter_mut().zip(src).enumerate() {
                *d = f(start + k, v);
            }
        },
    );
    out
}

/// `out[i] = f(a[i], b[i])` over two operands of the same length, in parallel chunks.
fn zip_map(
    op: &str,
    a: &[f32],
    b: &[f32],
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> candle_core::Result<Vec<f32>> {
    if a.len() != b.len() {
        candle_core::bail!("{op}: operands of {} and {} values", a.len(), b.len())
    }
    Ok(map_indexed(a, |i, v| f(v, b[i])))
}

/// max(x, 0) on the CPU: the values of candle's `relu` (`x.max(0)`), and in the backward pass only the
/// input gradient, `g * (x >= 0)`, in one pass, with the same values as candle's relu gradient (which
/// allocates a zero tensor, compares, converts and multiplies: four passes over the activation).
struct ReluOp;

/// `(g, x) -> g * (x >= 0 ? 1 : 0)`: [`ReluOp`]'s input gradient.
struct ReluGrad;

impl CustomOp1 for ReluOp {
    fn name(&self) -> &'static str {
        "lmt-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let y = map_indexed(x, |_, v| v.max(0f32));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op2_no_bwd(x, &ReluGrad)?))
    }
}

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "lmt-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, x) = operands(self.name(), (s1, l1), (s2, l2))?;
        let gx = zip_map(self.name(), g, x, |g, x| {
            g * if x >= 0.0 { 1.0 } else { 0.0 }
        })?;
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}

/// Whether the CPU custom ops of this file apply (f32 on the CPU); otherwise candle's own ops are used.
fn native(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// max(x, 0), elementwise: one fused op on the CPU (see [`ReluOp`]), candle's `relu` elsewhere.
pub(crate) fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    if !native(x) {
        return x.relu();
    }
    x.contiguous()?.apply_op1(ReluOp)
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
    if native(x) && x.rank() >= 2 {
        let outer = x.dim(0)?;
        let half = x.elem_count() / outer.max(1) / 2;
        return Ok(x.contiguous()?.apply_op1(MinMaxOp { half })?);
    }
    let (a, b) = (x.narrow(1, 0, c / 2)?, x.narrow(1, c / 2, c / 2)?);
    Ok(Tensor::cat(&[a.maximum(&b)?, a.minimum(&b)?], 1)?)
}

/// MinMax on the CPU for a contiguous input seen as (batch, 2, half): the values of candle's chain
/// `cat([a.maximum(b), a.minimum(b)])` on the halves `a`, `b` of axis 1 in one pass, and in the backward
/// pass the input gradient in one pass with the values of candle's backward through that chain, which
/// makes about 25 passes over the activation (masks, products, quotients, zero paddings, sums).
struct MinMaxOp {
    half: usize,
}

/// `(g, x) -> grad x` of [`MinMaxOp`].
struct MinMaxGrad {
    half: usize,
}

/// candle's `maximum` and `minimum` on f32 (`a` the left operand): a NaN on the left wins, one on the
/// right loses.
fn max_min(a: f32, b: f32) -> (f32, f32) {
    (if a < b { b } else { a }, if a > b { b } else { a })
}

/// The input gradient of one (a, b) pair from the output gradients `gmax`, `gmin`, as candle's backward
/// computes it: each output sends `mask * g / (other mask + 1)` to each operand, the mask being 1 where
/// the output equals the operand (so a tie splits the gradient in halves); the minimum's share reaches
/// an operand first (candle visits the later argument of the concatenation first), every sum starts at
/// +0, and the two narrows of x add their zero-padded gradients, b's first.
fn min_max_grad(a: f32, b: f32, gmax: f32, gmin: f32) -> (f32, f32) {
    let (mx, mn) = max_min(a, b);
    let mask = |y: f32, v: f32| if y == v { 1f32 } else { 0f32 };
    let (gmax, gmin) = (0.0 + gmax, 0.0 + gmin);
    let (max_a, max_b, min_a, min_b) = (mask(mx, a), mask(mx, b), mask(mn, a), mask(mn, b));
    let ga = (0.0 + min_a * gmin / (min_b + 1.0)) + max_a * gmax / (max_b + 1.0);
    let gb = (0.0 + min_b * gmin / (min_a + 1.0)) + max_b * gmax / (max_a + 1.0);
    ((0.0 + 0.0) + ga, (0.0 + gb) + 0.0)
}

impl CustomOp1 for MinMaxOp {
    fn name(&self) -> &'static str {
        "lmt-min-max"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let h = self.half;
        let y = new_chunked(x.len(), 2 * h, 0, 2 * h, |o, yo, _| {
            let (a, b) = x[2 * o * h..2 * (o + 1) * h].split_at(h);
            let (ymax, ymin) = yo.split_at_mut(h);
            for (((mx, mn), &a), &b) in ymax.iter_mut().zip(ymin).zip(a).zip(b) {
                (*mx, *mn) = max_min(a, b);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = MinMaxGrad { half: self.half };
        Ok(Some(g.contiguous()?.apply_op2_no_bwd(x, &grad)?))
    }
}

impl CustomOp2 for MinMaxGrad {
    fn name(&self) -> &'static str {
        "lmt-min-max-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, x) = operands(self.name(), (s1, l1), (s2, l2))?;
        if g.len() != x.len() {
            candle_core::bail!(
                "{}: {} gradients for {} inputs",
                self.name(),
                g.len(),
                x.len()
            )
        }
        let h = self.half;
        let gx = new_chunked(x.len(), 2 * h, 0, 2 * h, |o, go, _| {
            let range = 2 * o * h..2 * (o + 1) * h;
            let ((a, b), (gmax, gmin)) = (x[range.clone()].split_at(h), g[range].split_at(h));
            let (ga, gb) = go.split_at_mut(h);
            for (k, (ga, gb)) in ga.iter_mut().zip(gb).enumerate() {
                (*ga, *gb) = min_max_grad(a[k], b[k], gmax[k], gmin[k]);
            }
        });
        Ok((CpuStorage::F32(gx), l2.shape().clone()))
    }
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

impl Dropout {
    /// The mask of a pass with dropout seed `seed` over `n` elements: element `i` keeps (value 1/(1-p))
    /// when the `i`-th f32 of the layer's ChaCha8 stream is at least `p`, else 0. Drawn in parallel
    /// chunks, each starting at its own word of the stream (one 32-bit word per f32 draw), so the mask
    /// is the serial draw's whatever the thread count.
    fn mask(&self, seed: u64, n: usize) -> Vec<f32> {
        let keep = 1.0 / (1.0 - self.p);
        let mask = new_chunked(n, ELEMENTWISE_CHUNK, 0, ELEMENTWISE_CHUNK, |i, m, _| {
            let mut rng = lmt_core::named_rng(seed, &self.name);
            rng.set_word_pos((i * ELEMENTWISE_CHUNK) as u128);
            for v in m.iter_mut() {
                *v = if rng.random::<f32>() >= self.p {
                    keep
                } else {
                    0.0
                };
            }
        });
        mask
    }
}

/// `(x, mask) -> x * mask` with a backward pass that computes only the gradient of `x` (`g * mask`):
/// candle's product would also compute and accumulate the gradient of the constant mask.
struct MaskMul;

impl CustomOp2 for MaskMul {
    fn name(&self) -> &'static str {
        "lmt-mask-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, m) = operands(self.name(), (s1, l1), (s2, l2))?;
        let y = zip_map(self.name(), a, m, |a, m| a * m)?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        mask: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gx = if x.track_op() {
            Some(g.contiguous()?.apply_op2_no_bwd(mask, &MaskMul)?)
        } else {
            None
        };
        Ok((gx, None))
    }
}

impl LipModule for Dropout {
    fn forward_lip(&self, x: &Tensor, lip: Lip, ctx: &Ctx) -> Result<(Tensor, Lip)> {
        if !ctx.train || !ctx.dropout || self.p == 0.0 {
            return Ok((x.clone(), lip));
        }
        let mask = self.mask(ctx.seed, x.elem_count());
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        if !native(x) {
            return Ok(((x * mask)?, lip));
        }
        Ok((x.contiguous()?.apply_op2(&mask, MaskMul)?, lip))
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

    /// Values with signed zeros, NaN, infinities and more than one parallel chunk.
    fn input(n: usize) -> Tensor {
        let v: Vec<f32> = (0..n)
            .map(|i| match i % 13 {
                0 => 0.0,
                1 => -0.0,
                2 => f32::NAN,
                3 => f32::NEG_INFINITY,
                _ => ((i * 7919 % 1000) as f32 - 500.0) / 97.0,
            })
            .collect();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap()
    }

    /// The fused ReLU gives candle's relu and its input gradient bit for bit, also where the upstream
    /// gradient is a signed zero, NaN or infinite.
    #[test]
    fn relu_equals_candles_relu_bit_for_bit() {
        let n = 3 * ELEMENTWISE_CHUNK + 700;
        let x = Var::from_tensor(&input(n)).unwrap();
        let ours = relu(x.as_tensor()).unwrap();
        let candle = x.as_tensor().relu().unwrap();
        assert_eq!(bits(&ours), bits(&candle));
        let g = input(n).affine(-1.0, 0.0).unwrap();
        let grad = |y: &Tensor| {
            let gs = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            gs.get(x.as_tensor()).unwrap().clone()
        };
        assert_eq!(bits(&grad(&ours)), bits(&grad(&candle)));
    }

    /// The fused MinMax gives candle's chain (narrow, maximum, minimum, cat) and its input gradient bit
    /// for bit, on an NCHW activation and a flat one, with ties, signed zeros, NaN and infinities among
    /// the inputs and the upstream gradients, also when the input has a second consumer whose gradient
    /// candle adds to MinMax's. A NaN's sign aside: where two NaNs meet in a sum or product, x86 keeps
    /// one operand's, and the compiler may swap the operands.
    #[test]
    fn min_max_equals_candles_chain_bit_for_bit() {
        for dims in [
            vec![3, 8, 5, 7],
            vec![2, 6, ELEMENTWISE_CHUNK + 5],
            vec![4, 10],
        ] {
            let n: usize = dims.iter().product();
            // Pairs that tie: every 5th entry of the second half repeats its partner.
            let mut v: Vec<f32> = input(n).to_vec1().unwrap();
            let half = n / dims[0] / 2;
            for o in 0..dims[0] {
                for k in (0..half).step_by(5) {
                    v[(2 * o + 1) * half + k] = v[2 * o * half + k];
                }
            }
            let x = Var::from_vec(v, dims.as_slice(), &Device::Cpu).unwrap();
            let chain = |x: &Tensor| {
                let c = x.dim(1).unwrap();
                let (a, b) = (
                    x.narrow(1, 0, c / 2).unwrap(),
                    x.narrow(1, c / 2, c / 2).unwrap(),
                );
                Tensor::cat(&[a.maximum(&b).unwrap(), a.minimum(&b).unwrap()], 1).unwrap()
            };
            let ours = min_max(x.as_tensor()).unwrap();
            assert_eq!(bits(&ours), bits(&chain(x.as_tensor())), "{dims:?}");
            // Upstream gradients with signed zeros, NaN and infinities too, at other places than x's.
            let mut gv: Vec<f32> = input(n).to_vec1().unwrap();
            gv.rotate_left(5);
            let g = Tensor::from_vec(gv, dims.as_slice(), &Device::Cpu).unwrap();
            let other = input(n)
                .affine(0.5, 0.25)
                .unwrap()
                .reshape(dims.as_slice())
                .unwrap();
            let grad = |y: &Tensor, second: bool| {
                let mut loss = (y * &g).unwrap().sum_all().unwrap();
                if second {
                    loss = (loss + (x.as_tensor() * &other).unwrap().sum_all().unwrap()).unwrap();
                }
                let gs = loss.backward().unwrap();
                gs.get(x.as_tensor()).unwrap().clone()
            };
            for second in [false, true] {
                let (ours, want) = (grad(&ours, second), grad(&chain(x.as_tensor()), second));
                let same = |a: u32, b: u32| {
                    a == b || (f32::from_bits(a).is_nan() && f32::from_bits(b).is_nan())
                };
                let differ = bits(&ours)
                    .into_iter()
                    .zip(bits(&want))
                    .filter(|&(a, b)| !same(a, b));
                assert_eq!(differ.count(), 0, "{dims:?}, second consumer {second}");
            }
        }
    }

    /// Dropout's mask drawn in parallel chunks equals the serial draw of the layer's stream, and the
    /// masked product and its gradient equal candle's `x * mask`.
    #[test]
    fn dropout_mask_and_product_equal_the_serial_draw_and_candles_product() {
        let d = Dropout::new(0.4, "group1.0.dropout").unwrap();
        let n = 5 * ELEMENTWISE_CHUNK + 123;
        let mask = d.mask(42, n);
        let mut rng = lmt_core::named_rng(42, "group1.0.dropout");
        let keep = 1.0 / (1.0 - 0.4f32);
        let serial: Vec<f32> = (0..n)
            .map(|_| {
                if rng.random::<f32>() >= 0.4 {
                    keep
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(mask, serial);
        let kept = mask.iter().filter(|&&m| m > 0.0).count() as f64 / n as f64;
        assert!((kept - 0.6).abs() < 0.01, "kept share {kept}");
        let vectors = lmt_core::PowerVectors::new(0);
        let ctx = Ctx::train(&vectors).with_seed(42);
        let x = Var::from_tensor(&input(n)).unwrap();
        let (ours, _) = d.forward_lip(x.as_tensor(), Lip::None, &ctx).unwrap();
        let m = Tensor::from_vec(d.mask(42, x.elem_count()), x.shape(), &Device::Cpu).unwrap();
        let candle = (x.as_tensor() * &m).unwrap();
        assert_eq!(bits(&ours), bits(&candle));
        let g = x.as_tensor().affine(0.5, 1.0).unwrap();
        let grad = |y: &Tensor| {
            let gs = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            gs.get(x.as_tensor()).unwrap().clone()
        };
        assert_eq!(bits(&grad(&ours)), bits(&grad(&candle)));
    }
}
