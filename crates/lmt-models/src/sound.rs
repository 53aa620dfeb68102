//! Logits for certification: an f64 pass over a [`Graph`] with the parameters exactly as the f32 forward
//! pass applies them, and per input a rigorous bound on how far the computed logits lie from the exact
//! logits of that network (`lmt_core::rounding`).
//!
//! Every value carries, beside its computed entries, a bound `delta` on the L2 distance to its exact
//! value. A node's computed output differs from its exact output at the computed input by a local error
//! bounded entry by entry (`gamma(n) |W||x|` for an `n`-term sum, `u |y|` for one rounding), and the
//! carried bound grows as `L delta + ‖local‖` with `L` the node's certified Lipschitz bound; additions add
//! the branches' bounds, concatenations take their root sum of squares. The input (the f32 image) is exact.

use lmt_core::rounding::{carry, dot_error, norm_up, UNIT_ROUNDOFF as U};
use lmt_core::ConvGeometry;
use rayon::prelude::*;

use crate::graph::{Act, Graph, Op};
use crate::lip::{CertifyMethod, Ctx, Lip};
use crate::pool::{PoolCfg, PoolKind};
use crate::{config, tensor_f64, LipConv2d, Result};

/// Computed f64 logits and, per input, a bound on their L2 distance from the exact logits.
#[derive(Debug, Clone, PartialEq)]
pub struct SoundLogits {
    /// Row-major `(batch, classes)`.
    pub logits: Vec<f64>,
    /// Per input: `‖computed - exact‖₂` is at most this.
    pub errors: Vec<f64>,
    /// Classes.
    pub classes: usize,
}

/// Per group of a convolution: its geometry and its kernel (`s K`, as applied).
type ConvGroups = Vec<(ConvGeometry, Vec<f64>)>;

/// A node's parameters in f64, as applied, and its certified Lipschitz bound.
enum Prepared {
    /// Per group: geometry, kernel (`s K`, as applied), bias, then an optional BN affine map
    /// `(y - mean) scale + beta` after it.
    Conv {
        groups: ConvGroups,
        bias: Option<Vec<f64>>,
        bn: Option<Affine>,
        l: f64,
    },
    Bn(Affine, f64),
    Linear {
        w: Vec<f64>,
        b: Option<Vec<f64>>,
        out: usize,
        inp: usize,
        l: f64,
    },
    /// Elementwise scale or shift by a constant broadcast to the sample's entries.
    Scale(Vec<f64>, f64),
    Shift(Vec<f64>),
    Act(Act),
    Pool {
        kind: PoolKind,
        cfg: PoolCfg,
        dims: [usize; 3],
        l: f64,
    },
    /// Entry `i` of the output reads entry `map[i]` of the input (or is 0 when `None`): pad, reshape,
    /// transpose.
    Gather(Vec<Option<usize>>),
    Add,
    Sub,
    /// Concatenation: per output entry, (input, entry).
    Concat(Vec<(usize, usize)>),
}

/// `(y - mean) scale + beta` per channel of `(C, H, W)`.
struct Affine {
    mean: Vec<f64>,
    scale: Vec<f64>,
    beta: Vec<f64>,
    plane: usize,
}

impl Affine {
    fn of(bn: &crate::BatchNorm2d, plane: usize) -> Result<Self> {
        let (mean, beta) = bn.shift_f64()?;
        Ok(Affine {
            mean,
            scale: bn.inference_scale()?,
            beta,
            plane,
        })
    }

    /// Applies the map to `y` (computed, with per-entry local errors `rho` so far); the rounding of the
    /// subtraction, the product and the sum are added, and `rho` is scaled through.
    fn apply(&self, y: &mut [f64], rho: &mut [f64]) {
        for (i, (v, r)) in y.iter_mut().zip(rho.iter_mut()).enumerate() {
            let c = i / self.plane;
            let (m, s, b) = (self.mean[c], self.scale[c], self.beta[c]);
            let d = *v - m;
            let e = d * s;
            let out = e + b;
            *r = *r * s.abs() + U * (d.abs() * s.abs() + e.abs() + out.abs()) * (1.0 + 4.0 * U);
            *v = out;
        }
    }

    fn bound(&self) -> f64 {
        self.scale.iter().fold(0.0f64, |m, s| m.max(s.abs()))
    }
}

fn values(t: &candle_core::Tensor) -> Result<Vec<f64>> {
    tensor_f64(t)
}

/// The broadcast of a constant of shape `(1, d...)` to a sample of shape `shape`, flat.
fn broadcast(c: &candle_core::Tensor, shape: &[usize]) -> Result<Vec<f64>> {
    let d = &c.dims()[1..];
    let v = values(c)?;
    let n: usize = shape.iter().product();
    Ok((0..n)
        .map(|flat| {
            let (mut rem, mut idx, mut stride) = (flat, 0, 1);
            for axis in (0..shape.len()).rev() {
                let coord = rem % shape[axis];
                rem /= shape[axis];
                if d[axis] != 1 {
                    idx += coord * stride;
                }
                stride *= d[axis];
            }
            v[idx]
        })
        .collect())
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Coordinates of flat index `i` in `shape`.
fn coords(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut c = vec![0; shape.len()];
    for axis in (0..shape.len()).rev() {
        c[axis] = i % shape[axis];
        i /= shape[axis];
    }
    c
}

fn conv_prepared(conv: &LipConv2d, dims: &[usize]) -> Result<(ConvGroups, Option<Vec<f64>>)> {
    let g = conv.geometry(&[1, dims[0], dims[1], dims[2]])?;
    let groups = conv.cfg().groups;
    let s = conv.applied_scale();
    let k: Vec<f64> = values(conv.weight())?.into_iter().map(|w| w * s).collect();
    let per = g.kernel_len();
    let parts = k.chunks(per).map(|kg| (g, kg.to_vec())).collect::<Vec<_>>();
    if parts.len() != groups {
        return Err(config(
            "sound pass",
            "kernel does not split into its groups",
        ));
    }
    let bias = conv.bias().map(values).transpose()?;
    Ok((parts, bias))
}

fn prepare(graph: &Graph) -> Result<Vec<Prepared>> {
    let ctx = Ctx::eval(CertifyMethod::Auto);
    let bound_of = |op: &Op, dims: &[usize]| -> Result<f64> {
        let x = crate::graph::probe(op, dims)?;
        let one = Lip::Certified(lmt_core::CertifiedBound::one());
        let lip = match op {
            Op::Conv(c) => crate::LipModule::forward_lip(c, &x, one, &ctx)?.1,
            Op::ConvBn(c) => crate::LipModule::forward_lip(c, &x, one, &ctx)?.1,
            Op::Linear(l) => crate::LipModule::forward_lip(l, &x, one, &ctx)?.1,
            Op::Pool(p) => crate::LipModule::forward_lip(p, &x, one, &ctx)?.1,
            _ => return Err(config("sound pass", "no bound for this op")),
        };
        Ok(lip.certified().map(|b| b.value()).unwrap_or(f64::INFINITY))
    };
    graph
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let dims = graph.shape(node.inputs[0]).to_vec();
            Ok(match &node.op {
                Op::Conv(c) => {
                    let (groups, bias) = conv_prepared(c, &dims)?;
                    Prepared::Conv {
                        groups,
                        bias,
                        bn: None,
                        l: bound_of(&node.op, &dims)?,
                    }
                }
                Op::ConvBn(cb) => {
                    let (groups, bias) = conv_prepared(cb.conv(), &dims)?;
                    let out = graph.shape(i + 1).to_vec();
                    let bn = Affine::of(cb.bn(), out[1] * out[2])?;
                    Prepared::Conv {
                        groups,
                        bias,
                        bn: Some(bn),
                        l: bound_of(&node.op, &dims)?,
                    }
                }
                Op::BatchNorm(b) => {
                    let a = Affine::of(b, dims[1] * dims[2])?;
                    let l = a.bound();
                    Prepared::Bn(a, l)
                }
                Op::Linear(lin) => {
                    let (out, inp) = lin.weight().dims2()?;
                    Prepared::Linear {
                        w: values(lin.weight())?,
                        b: lin.bias().map(values).transpose()?,
                        out,
                        inp,
                        l: bound_of(&node.op, &dims)?,
                    }
                }
                Op::Scale(c) => {
                    let v = broadcast(c, &dims)?;
                    let l = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                    Prepared::Scale(v, l)
                }
                Op::Shift(c) => Prepared::Shift(broadcast(c, &dims)?),
                Op::Activation(a) => Prepared::Act(*a),
                Op::Pool(p) => {
                    let l = bound_of(&node.op, &dims)?;
                    Prepared::Pool {
                        kind: p.kind(),
                        cfg: *p.cfg(),
                        dims: [dims[0], dims[1], dims[2]],
                        l,
                    }
                }
                Op::Pad(pads) => {
                    let out: Vec<usize> =
                        dims.iter().zip(pads).map(|(d, (a, b))| d + a + b).collect();
                    let st = strides(&dims);
                    let n: usize = out.iter().product();
                    Prepared::Gather(
                        (0..n)
                            .map(|i| {
                                let c = coords(i, &out);
                                let mut idx = 0;
                                for axis in 0..c.len() {
                                    let x = c[axis]
                                        .checked_sub(pads[axis].0)
                                        .filter(|&x| x < dims[axis])?;
                                    idx += x * st[axis];
                                }
                                Some(idx)
                            })
                            .collect(),
                    )
                }
                Op::Reshape(_) => Prepared::Gather((0..dims.iter().product()).map(Some).collect()),
                Op::Transpose(perm) => {
                    let out: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
                    let st = strides(&dims);
                    let n: usize = out.iter().product();
                    Prepared::Gather(
                        (0..n)
                            .map(|i| {
                                let c = coords(i, &out);
                                Some(c.iter().zip(perm).map(|(ci, &p)| ci * st[p]).sum())
                            })
                            .collect(),
                    )
                }
                Op::Add => Prepared::Add,
                Op::Sub => Prepared::Sub,
                Op::Concat(axis) => {
                    let shapes: Vec<Vec<usize>> = node
                        .inputs
                        .iter()
                        .map(|&v| graph.shape(v).to_vec())
                        .collect();
                    let mut out_shape = shapes[0].clone();
                    out_shape[*axis] = shapes.iter().map(|s| s[*axis]).sum();
                    let n: usize = out_shape.iter().product();
                    Prepared::Concat(
                        (0..n)
                            .map(|i| {
                                let mut c = coords(i, &out_shape);
                                let mut k = 0;
                                while c[*axis] >= shapes[k][*axis] {
                                    c[*axis] -= shapes[k][*axis];
                                    k += 1;
                                }
                                let st = strides(&shapes[k]);
                                (k, c.iter().zip(&st).map(|(a, b)| a * b).sum())
                            })
                            .collect(),
                    )
                }
            })
        })
        .collect()
}

/// `(K x, |K| |x|)` of a convolution (per group, channels of the groups one after another).
fn conv_apply(groups: &[(ConvGeometry, Vec<f64>)], x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut a) = (Vec::new(), Vec::new());
    for (i, (g, k)) in groups.iter().enumerate() {
        let xg = &x[i * g.in_dim()..(i + 1) * g.in_dim()];
        y.extend(g.apply(k, xg, 1));
        let ka: Vec<f64> = k.iter().map(|v| v.abs()).collect();
        let xa: Vec<f64> = xg.iter().map(|v| v.abs()).collect();
        a.extend(g.apply(&ka, &xa, 1));
    }
    (y, a)
}

/// One node on one sample: the computed output and its local error per entry.
fn run(p: &Prepared, x: &[&[f64]]) -> (Vec<f64>, Vec<f64>) {
    let x0 = x[0];
    match p {
        Prepared::Conv {
            groups, bias, bn, ..
        } => {
            let (mut y, a) = conv_apply(groups, x0);
            // The taps of one output, plus the bias: an (n + 1)-term sum.
            let n = groups[0].0.c_in * groups[0].0.kh * groups[0].0.kw + 1;
            let plane = y.len() / groups.iter().map(|(gg, _)| gg.c_out).sum::<usize>().max(1);
            let mut rho: Vec<f64> = a.iter().map(|&v| dot_error(n, v)).collect();
            if let Some(b) = bias {
                for (i, (v, r)) in y.iter_mut().zip(rho.iter_mut()).enumerate() {
                    *v += b[i / plane];
                    *r = dot_error(n, a[i] + b[i / plane].abs());
                }
            }
            if let Some(affine) = bn {
                affine.apply(&mut y, &mut rho);
            }
            (y, rho)
        }
        Prepared::Bn(affine, _) => {
            let mut y = x0.to_vec();
            let mut rho = vec![0.0; y.len()];
            affine.apply(&mut y, &mut rho);
            (y, rho)
        }
        Prepared::Linear { w, b, out, inp, .. } => {
            let mut y = vec![0.0; *out];
            let mut rho = vec![0.0; *out];
            for o in 0..*out {
                let row = &w[o * inp..(o + 1) * inp];
                let (mut s, mut a) = (0.0, 0.0);
                for (wv, xv) in row.iter().zip(x0) {
                    s += wv * xv;
                    a += (wv * xv).abs();
                }
                let bias = b.as_ref().map_or(0.0, |b| b[o]);
                y[o] = s + bias;
                rho[o] = dot_error(inp + 1, a + bias.abs());
            }
            (y, rho)
        }
        Prepared::Scale(c, _) => {
            let y: Vec<f64> = x0.iter().zip(c).map(|(a, b)| a * b).collect();
            let rho = y.iter().map(|v| U * v.abs()).collect();
            (y, rho)
        }
        Prepared::Shift(c) => {
            let y: Vec<f64> = x0.iter().zip(c).map(|(a, b)| a + b).collect();
            let rho = y.iter().map(|v| U * v.abs()).collect();
            (y, rho)
        }
        Prepared::Act(a) => {
            let (y, rel): (Vec<f64>, f64) = match a {
                Act::Relu => (x0.iter().map(|v| v.max(0.0)).collect(), 0.0),
                Act::LeakyRelu(alpha) => {
                    let al = *alpha as f64;
                    (
                        x0.iter()
                            .map(|&v| if v >= 0.0 { v } else { al * v })
                            .collect(),
                        U,
                    )
                }
                // libm's exp and tanh are within a few ulps; 16 u covers them and the 1 + e and the division.
                Act::Sigmoid => (
                    x0.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
                    16.0 * U,
                ),
                Act::Tanh => (x0.iter().map(|v| v.tanh()).collect(), 16.0 * U),
                Act::Clip(lo, hi) => (
                    x0.iter().map(|v| v.clamp(*lo as f64, *hi as f64)).collect(),
                    0.0,
                ),
                // Axis 0 leads the sample's row-major layout, so its halves are the vector's halves;
                // max and min are exact.
                Act::MinMax => {
                    let h = x0.len() / 2;
                    let (a, b) = x0.split_at(h);
                    let hi = a.iter().zip(b).map(|(p, q)| p.max(*q));
                    let lo = a.iter().zip(b).map(|(p, q)| p.min(*q));
                    (hi.chain(lo).collect(), 0.0)
                }
            };
            let rho = y.iter().map(|v| rel * v.abs()).collect();
            (y, rho)
        }
        Prepared::Pool {
            kind, cfg, dims, ..
        } => {
            let [c, h, w] = *dims;
            let [pt, pl, pb, pr] = cfg.pads;
            let (kh, kw) = cfg.kernel;
            let (sh, sw) = cfg.stride;
            let oh = (h + pt + pb - kh) / sh + 1;
            let ow = (w + pl + pr - kw) / sw + 1;
            let mut y = Vec::with_capacity(c * oh * ow);
            let mut rho = Vec::with_capacity(c * oh * ow);
            for ch in 0..c {
                for i in 0..oh {
                    for j in 0..ow {
                        let mut taps = Vec::new();
                        for a in 0..kh {
                            for b in 0..kw {
                                let (yy, xx) =
                                    ((i * sh + a).checked_sub(pt), (j * sw + b).checked_sub(pl));
                                if let (Some(yy), Some(xx)) = (yy, xx) {
                                    if yy < h && xx < w {
                                        taps.push(x0[(ch * h + yy) * w + xx]);
                                    }
                                }
                            }
                        }
                        match kind {
                            PoolKind::Max => {
                                y.push(taps.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
                                rho.push(0.0);
                            }
                            PoolKind::Avg => {
                                let n = if cfg.count_include_pad {
                                    kh * kw
                                } else {
                                    taps.len()
                                };
                                // The exact average divides by n; the sum and the one division round.
                                let s: f64 = taps.iter().sum();
                                let a: f64 = taps.iter().map(|v| v.abs()).sum();
                                let v = s / n as f64;
                                y.push(v);
                                rho.push(
                                    dot_error(taps.len(), a) / n as f64
                                        + U * v.abs() * (1.0 + 2.0 * U),
                                );
                            }
                        }
                    }
                }
            }
            (y, rho)
        }
        Prepared::Gather(map) => {
            let y = map
                .iter()
                .map(|m| m.map_or(0.0, |i| x0[i]))
                .collect::<Vec<_>>();
            let n = y.len();
            (y, vec![0.0; n])
        }
        Prepared::Add | Prepared::Sub => {
            let sign = if matches!(p, Prepared::Add) {
                1.0
            } else {
                -1.0
            };
            let y: Vec<f64> = x0.iter().zip(x[1]).map(|(a, b)| a + sign * b).collect();
            let rho = y.iter().map(|v| U * v.abs()).collect();
            (y, rho)
        }
        Prepared::Concat(map) => {
            let y = map.iter().map(|&(k, i)| x[k][i]).collect::<Vec<_>>();
            let n = y.len();
            (y, vec![0.0; n])
        }
    }
}

/// A graph ready for the sound pass: its parameters in f64 as applied and each node's certified bound,
/// computed once, then reused for every batch.
pub struct SoundPass<'a> {
    graph: &'a Graph,
    prepared: Vec<Prepared>,
}

impl Graph {
    /// Prepares the sound pass (the per-layer bounds are computed here, once).
    pub fn sound_pass(&self) -> Result<SoundPass<'_>> {
        Ok(SoundPass {
            graph: self,
            prepared: prepare(self)?,
        })
    }

    /// The logits of `x` (`batch` samples of the input shape, flat, as f64: the f32 images fed to the
    /// network, which are exact) computed in f64, with per sample a bound on their L2 distance from the
    /// exact logits of the network the stored weights define. Prepares the pass on every call; for many
    /// batches use [`Graph::sound_pass`].
    pub fn sound_logits(&self, x: &[f64], batch: usize) -> Result<SoundLogits> {
        self.sound_pass()?.logits(x, batch)
    }
}

impl SoundPass<'_> {
    /// The sound logits of `batch` samples (see [`Graph::sound_logits`]).
    pub fn logits(&self, x: &[f64], batch: usize) -> Result<SoundLogits> {
        let (graph, prepared) = (self.graph, &self.prepared);
        let per: usize = graph.input_shape().iter().product();
        if x.len() != per * batch || x.iter().any(|v| !v.is_finite()) {
            return Err(config(
                "sound pass",
                format!("{} finite values for {batch} samples of {per}", x.len()),
            ));
        }
        let classes = graph.classes();
        let rows: Vec<(Vec<f64>, f64)> = (0..batch)
            .into_par_iter()
            .map(|b| {
                let mut vals: Vec<(Vec<f64>, f64)> = Vec::with_capacity(graph.nodes().len() + 1);
                vals.push((x[b * per..(b + 1) * per].to_vec(), 0.0));
                for (node, p) in graph.nodes().iter().zip(prepared) {
                    let inputs: Vec<&[f64]> =
                        node.inputs.iter().map(|&v| vals[v].0.as_slice()).collect();
                    let deltas: Vec<f64> = node.inputs.iter().map(|&v| vals[v].1).collect();
                    let (y, rho) = run(p, &inputs);
                    let local = norm_up(&rho);
                    let delta = match p {
                        Prepared::Conv { l, .. }
                        | Prepared::Linear { l, .. }
                        | Prepared::Pool { l, .. } => carry(deltas[0], *l, local),
                        Prepared::Bn(_, l) | Prepared::Scale(_, l) => carry(deltas[0], *l, local),
                        Prepared::Shift(_) | Prepared::Gather(_) => carry(deltas[0], 1.0, local),
                        Prepared::Act(a) => {
                            let l = lmt_core::norms::activation(a_core(*a))
                                .map(|b| b.value())
                                .unwrap_or(f64::INFINITY);
                            carry(deltas[0], l, local)
                        }
                        Prepared::Add | Prepared::Sub => carry(deltas[0] + deltas[1], 1.0, local),
                        Prepared::Concat(_) => carry(norm_up(&deltas), 1.0, local),
                    };
                    vals.push((y, delta));
                }
                vals.pop().unwrap_or_default()
            })
            .collect();
        let mut logits = Vec::with_capacity(batch * classes);
        let mut errors = Vec::with_capacity(batch);
        for (z, d) in rows {
            logits.extend(z);
            errors.push(if d.is_finite() { d } else { f64::INFINITY });
        }
        Ok(SoundLogits {
            logits,
            errors,
            classes,
        })
    }
}

fn a_core(a: Act) -> lmt_core::norms::Activation {
    match a {
        Act::Relu => lmt_core::norms::Activation::Relu,
        Act::LeakyRelu(al) => lmt_core::norms::Activation::LeakyRelu(al as f64),
        Act::Sigmoid => lmt_core::norms::Activation::Sigmoid,
        Act::Tanh => lmt_core::norms::Activation::Tanh,
        Act::Clip(..) => lmt_core::norms::Activation::Clip,
        Act::MinMax => lmt_core::norms::Activation::MinMax,
    }
}
