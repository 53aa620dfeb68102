//! Spectral-norm regularisation as the authors implement it (reference 7.2): a gradient hook that, for
//! each parameter with at least two dimensions reshaped to `M (out x in)`, keeps a vector `a (out)` and per
//! update does `a <- a / ‖a‖; u = a M; v = u M^T; s = ‖u‖ / ‖v‖; grad += rate s^k (v^T u); a <- v`, with
//! `k = 1` for the authors' scaling (rate sigma^2 a b^T once converged) and `k = 2` for the usual one
//! (rate sigma a b^T, the gradient of (rate / 2) sigma^2).

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use rand::Rng;

use crate::config::SpectralScaling;
use crate::Result;

/// The hook and its per-parameter vectors.
#[derive(Debug)]
pub struct SpectralNormHook {
    rate: f64,
    scaling: SpectralScaling,
    /// The persistent left vectors, by parameter name (checkpointed as `snreg.<name>`).
    pub vectors: BTreeMap<String, Tensor>,
}

impl SpectralNormHook {
    /// Vectors start Uniform[0, 1) from a stream keyed by `seed` and the parameter name.
    pub fn new(
        rate: f64,
        scaling: SpectralScaling,
        params: &[(String, Var)],
        seed: u64,
    ) -> Result<Self> {
        let mut vectors = BTreeMap::new();
        for (name, p) in params.iter().filter(|(_, p)| p.rank() >= 2) {
            let out = p.dim(0)?;
            let mut rng = lmt_core::named_rng(seed, name);
            let a: Vec<f32> = (0..out).map(|_| rng.random::<f32>()).collect();
            vectors.insert(name.clone(), Tensor::from_vec(a, (1, out), p.device())?);
        }
        Ok(SpectralNormHook {
            rate,
            scaling,
            vectors,
        })
    }

    /// Adds the regularisation gradient to `grads` for every matrix-shaped parameter.
    pub fn apply(&mut self, grads: &mut GradStore, params: &[(String, Var)]) -> Result<()> {
        for (name, p) in params {
            let Some(a) = self.vectors.get(name) else {
                continue;
            };
            let m = p.as_tensor().detach().flatten_from(1)?; // out x in
            let a = a.broadcast_div(&a.sqr()?.sum_all()?.sqrt()?)?;
            let u = lmt_models::matmul(&a, &m)?; // 1 x in
            let v = lmt_models::matmul(&u, &m.t()?)?; // 1 x out
            let norm = |t: &Tensor| -> Result<f64> {
                Ok(t.sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?
                    .sqrt())
            };
            let (nu, nv) = (norm(&u)?, norm(&v)?);
            if nv > 0.0 && nu.is_finite() && nv.is_finite() {
                let s = nu / nv;
                let factor = self.rate
                    * match self.scaling {
                        SpectralScaling::Authors => s,
                        SpectralScaling::Usual => s * s,
                    };
                let add = (v.t()?.matmul(&u)? * factor)?.reshape(p.shape())?;
                let g = match grads.get(p.as_tensor()) {
                    Some(g) => (g + add)?,
                    None => add,
                };
                grads.insert(p.as_tensor(), g);
                self.vectors.insert(name.clone(), v);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// For M = diag(3, 1) the converged hook adds rate sigma^2 a b^T (authors) or rate sigma a b^T (usual)
    /// with sigma = 3 on the (0, 0) entry only.
    #[test]
    fn converged_gradient_is_sigma_squared_or_sigma() {
        for (scaling, want) in [
            (SpectralScaling::Authors, 0.01 * 9.0),
            (SpectralScaling::Usual, 0.01 * 3.0),
        ] {
            let p =
                Var::from_tensor(&Tensor::new(&[[3f32, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap())
                    .unwrap();
            let params = vec![("w".to_string(), p.clone())];
            let mut hook = SpectralNormHook::new(0.01, scaling, &params, 0).unwrap();
            let mut g: Vec<Vec<f32>> = Vec::new();
            for _ in 0..60 {
                let mut grads = (p.as_tensor() * 0.0)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                hook.apply(&mut grads, &params).unwrap();
                g = grads.get(p.as_tensor()).unwrap().to_vec2().unwrap();
            }
            let last = g[0][0] as f64;
            assert!(
                g[1][1].abs() < 1e-6 && g[0][1].abs() < 1e-6 && g[1][0].abs() < 1e-6,
                "{g:?}"
            );
            assert!(
                (last - want).abs() < 1e-4 * want.max(1.0),
                "{scaling:?}: {last} vs {want}"
            );
        }
    }
}
