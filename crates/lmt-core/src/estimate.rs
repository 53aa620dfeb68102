//! The train-time Lipschitz estimate: one power-iteration step per layer per training step (Alg. 2).
//!
//! Each linear layer keeps a persistent unit vector `u` of its real input shape (batch 1). Its estimate is
//! `sigma = ‖A u‖` (differentiable in the weights). Because `u` is a leaf of the graph, the training
//! backward gives `dloss/du = (dloss/dsigma) A^T A u / sigma`, a positive multiple of one power-iteration
//! step; [`PowerVectors::refresh`] replaces `u` by that gradient, normalised, so the next step costs no
//! extra transposed convolution. Unlike the authors' code we keep the old `u` when the gradient is zero or
//! not finite (e.g. a batch where every sample was misclassified under capping), instead of producing NaN.
//!
//! The estimate is a lower approximation of the true norm while `u` converges and is never a certified
//! bound: it is a [`LipEstimate`] (a tensor), which does not convert into a `CertifiedBound`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::cpu::kernels::VecOps;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var, WithDType};
use rand_distr::{Distribution, StandardNormal};

use crate::error::Result;

/// A differentiable train-time estimate of a Lipschitz constant (a scalar f32 tensor).
#[derive(Debug, Clone)]
pub struct LipEstimate(Tensor);

impl LipEstimate {
    /// The estimate of the identity map; training starts from `c` by scaling this (reference 5).
    pub fn one(device: &Device) -> Result<Self> {
        Ok(LipEstimate(Tensor::new(1f32, device)?))
    }

    /// Wraps a scalar tensor computed from a layer's weights (e.g. `‖A u‖` or a closed form).
    pub fn from_tensor(t: Tensor) -> Self {
        LipEstimate(t)
    }

    /// The scalar tensor, for use in a loss.
    pub fn tensor(&self) -> &Tensor {
        &self.0
    }

    /// The current value as f64 (for logs).
    pub fn value(&self) -> Result<f64> {
        Ok(self.0.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    }

    /// Composition with a layer whose estimate is `sigma`: the product.
    pub fn then(&self, sigma: &Tensor) -> Result<Self> {
        Ok(LipEstimate(self.0.mul(sigma)?))
    }

    /// Residual addition: the sum.
    pub fn plus(&self, other: &LipEstimate) -> Result<Self> {
        Ok(LipEstimate(self.0.add(&other.0)?))
    }

    /// Concatenation: sqrt(a^2 + b^2).
    pub fn concat(&self, other: &LipEstimate) -> Result<Self> {
        Ok(LipEstimate((self.0.sqr()? + other.0.sqr()?)?.sqrt()?))
    }

    /// Multiplication by a known constant.
    pub fn scale(&self, factor: f64) -> Result<Self> {
        Ok(LipEstimate(self.0.affine(factor.abs(), 0.0)?))
    }
}

/// ‖v‖_2 over all elements of `v`, as a scalar tensor (differentiable).
///
/// On the CPU in f32 or f64 this is one fused op (forward and backward) instead of candle's `sqr`,
/// `sum_all`, `sqrt` and their backward nodes, a dozen small ops per layer of the train-time estimate.
/// It rounds exactly as that chain does (the same squares, candle's own reduction kernel, the same
/// quotient in the gradient), so results do not change; elsewhere the chain itself is used.
pub fn l2_norm(v: &Tensor) -> Result<Tensor> {
    if v.device().is_cpu() && matches!(v.dtype(), DType::F32 | DType::F64) {
        return Ok(v.contiguous()?.apply_op1(L2Norm)?);
    }
    Ok(v.sqr()?.sum_all()?.sqrt()?)
}

/// The fused [`l2_norm`] on the CPU.
struct L2Norm;

/// `sum(x_i^2)` of a tensor as f64, summed as `sqr().sum_all()` sums it (in the tensor's dtype); one op
/// on the CPU in f32 or f64.
pub(crate) fn sum_of_squares(x: &Tensor) -> Result<f64> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        let s = x.contiguous()?.apply_op1_no_bwd(&SumOfSquares)?;
        return Ok(match s.dtype() {
            DType::F32 => s.to_scalar::<f32>()? as f64,
            _ => s.to_scalar::<f64>()?,
        });
    }
    Ok(x.sqr()?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?)
}

/// The sum of squares of [`sum_of_squares`] as an op (no gradient).
struct SumOfSquares;

impl CustomOp1 for SumOfSquares {
    fn name(&self) -> &'static str {
        "lmt-sum-of-squares"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(x) => CpuStorage::F32(vec![norm_of(x, l, |v| v)?]),
            CpuStorage::F64(x) => CpuStorage::F64(vec![norm_of(x, l, |v| v)?]),
            _ => candle_core::bail!("{}: f32 or f64 only", self.name()),
        };
        Ok((out, Shape::from(())))
    }
}

/// `finish(sum(x_i^2))` of a contiguous `x`, with the squares summed by candle's reduction kernel, as
/// `sqr().sum_all()` computes it (`finish`: the square root for the norm).
fn norm_of<T: WithDType + VecOps>(
    x: &[T],
    l: &Layout,
    finish: fn(T) -> T,
) -> candle_core::Result<T> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("lmt-l2-norm: a contiguous input only");
    };
    let squares: Vec<T> = x[a..b].iter().map(|&v| v * v).collect();
    let mut sum = T::zero();
    // SAFETY: `squares` holds `squares.len()` values and `sum` is a valid element.
    unsafe { T::vec_reduce_sum(squares.as_ptr(), &mut sum, squares.len()) };
    Ok(finish(sum))
}

impl CustomOp1 for L2Norm {
    fn name(&self) -> &'static str {
        "lmt-l2-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(x) => CpuStorage::F32(vec![norm_of(x, l, f32::sqrt)?]),
            CpuStorage::F64(x) => CpuStorage::F64(vec![norm_of(x, l, f64::sqrt)?]),
            _ => candle_core::bail!("{}: f32 or f64 only", self.name()),
        };
        Ok((out, Shape::from(())))
    }

    /// `d‖v‖/dv = v / ‖v‖`, rounded as candle's chain rounds it: `(g / ‖v‖) * 0.5` for the square root,
    /// broadcast by the sum, times `2 v` for the square; the factors 0.5 and 2 are exact, so each entry
    /// is `v_i * (g / ‖v‖)` rounded once.
    fn bwd(&self, v: &Tensor, norm: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(v.broadcast_mul(&grad.div(norm)?)?))
    }
}

/// The persistent power-iteration vectors of a model, by layer name. Kept apart from the model's
/// trainable variables so no optimiser ever updates them.
#[derive(Debug)]
pub struct PowerVectors {
    seed: u64,
    vars: Mutex<BTreeMap<String, Var>>,
}

impl PowerVectors {
    /// An empty store whose vectors start from N(0, 1) draws seeded by `seed` and the layer name.
    pub fn new(seed: u64) -> Self {
        PowerVectors {
            seed,
            vars: Mutex::new(BTreeMap::new()),
        }
    }

    /// The unit vector of layer `name`, created on first use with `shape` (the layer's input shape with
    /// batch 1). A later call with another shape replaces it (the input size changed).
    pub fn get(&self, name: &str, shape: impl Into<Shape>, device: &Device) -> Result<Var> {
        let shape = shape.into();
        let mut vars = self.vars.lock().expect("power-vector lock poisoned");
        if let Some(v) = vars.get(name) {
            if v.shape() == &shape {
                return Ok(v.clone());
            }
        }
        let mut rng = crate::named_rng(self.seed, name);
        let mut data: Vec<f32> = (0..shape.elem_count())
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let norm = data
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt()
            .max(f32::MIN_POSITIVE);
        data.iter_mut().for_each(|v| *v /= norm);
        let var = Var::from_tensor(&Tensor::from_vec(data, shape, device)?)?;
        vars.insert(name.to_string(), var.clone());
        Ok(var)
    }

    /// After a training backward: replaces each vector by its normalised gradient (one power-iteration
    /// step). Vectors whose gradient is missing, zero or not finite keep their value. Returns how many were
    /// kept for that reason.
    pub fn refresh(&self, grads: &GradStore) -> Result<usize> {
        let vars = self.vars.lock().expect("power-vector lock poisoned");
        let mut kept = 0;
        for var in vars.values() {
            let Some(g) = grads.get(var.as_tensor()) else {
                kept += 1;
                continue;
            };
            let norm = sum_of_squares(g)?.sqrt();
            if norm.is_finite() && norm > 0.0 {
                var.set(&g.affine(1.0 / norm, 0.0)?)?;
            } else {
                kept += 1;
            }
        }
        Ok(kept)
    }

    /// Every vector by name, for checkpoints.
    pub fn all(&self) -> Vec<(String, Var)> {
        let vars = self.vars.lock().expect("power-vector lock poisoned");
        vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Sets (or creates) the vector of `name`, e.g. when restoring a checkpoint.
    pub fn insert(&self, name: &str, value: &Tensor) -> Result<()> {
        let mut vars = self.vars.lock().expect("power-vector lock poisoned");
        vars.insert(name.to_string(), Var::from_tensor(value)?);
        Ok(())
    }
}
