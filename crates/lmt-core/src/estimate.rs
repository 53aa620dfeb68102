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
use candle_core::{DType, Device, Shape, Tensor, Var};
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
pub fn l2_norm(v: &Tensor) -> Result<Tensor> {
    Ok(v.sqr()?.sum_all()?.sqrt()?)
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
            let norm = g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?
                .sqrt();
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
