//! Empirical LOWER bounds on the per-class-pair Lipschitz constants from input gradients: the (B) and (C)
//! quantities of the paper's inequality (5), by the authors' procedure (reference 9.4 and 9.5).

use candle_core::Tensor;
use rand_distr::{Distribution, StandardNormal};

use crate::{class_gradients, AttackError, ClassGradients, LogitsFn, Result};

/// A symmetric `K x K` matrix over class pairs with a zero diagonal, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct PairMatrix {
    /// Classes.
    pub k: usize,
    /// Entries, `k * k`.
    pub values: Vec<f64>,
}

impl PairMatrix {
    /// All zeros.
    pub fn zeros(k: usize) -> Self {
        Self {
            k,
            values: vec![0.0; k * k],
        }
    }

    /// Entry `(i, j)`.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.values[i * self.k + j]
    }

    /// Element-wise maximum with `other` (how the authors fold batches into the global matrix).
    pub fn max_with(&mut self, other: &PairMatrix) {
        for (a, b) in self.values.iter_mut().zip(&other.values) {
            *a = a.max(*b);
        }
    }
}

/// Per input `b` and class pair `(i, j)`, the norm `||grad z_i(x_b) - grad z_j(x_b)||`: a lower bound on
/// the Lipschitz constant of `z_i - z_j` (any gradient norm is). Returns one matrix per input.
pub fn gradient_pair_norms(f: &dyn LogitsFn, x: &Tensor, k: usize) -> Result<Vec<PairMatrix>> {
    let ClassGradients { grads, n, .. } = class_gradients(f, x, k)?;
    let b = x.dim(0)?;
    Ok((0..b)
        .map(|s| {
            let g = |c: usize| &grads[(s * k + c) * n..(s * k + c + 1) * n];
            let mut m = PairMatrix::zeros(k);
            for i in 0..k {
                for j in (i + 1)..k {
                    let d = g(i)
                        .iter()
                        .zip(g(j))
                        .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    m.values[i * k + j] = d;
                    m.values[j * k + i] = d;
                }
            }
            m
        })
        .collect())
}

/// The authors' "local" lower bound for one batch (reference 9.4): `draws` times, add Gaussian noise
/// normalised to unit L2 norm over the WHOLE batch tensor (about `1/sqrt(B)` per input; not clipped), and
/// keep for every class pair the largest gradient-difference norm over the draws and the batch's inputs.
/// An empirical lower bound on the Lipschitz constant near this batch, shared by all its inputs.
pub fn local_lipschitz_lower(
    f: &dyn LogitsFn,
    x: &Tensor,
    k: usize,
    draws: usize,
    seed: u64,
) -> Result<PairMatrix> {
    if draws == 0 {
        return Err(AttackError::Invalid(
            "the local lower bound needs draws >= 1".into(),
        ));
    }
    let mut rng = lmt_core::named_rng(seed, "local-lipschitz-noise");
    let xs: Vec<f32> = x
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let mut g = PairMatrix::zeros(k);
    for _ in 0..draws {
        let noise: Vec<f64> = (0..xs.len())
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let norm = noise.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
        let pts: Vec<f32> = xs
            .iter()
            .zip(&noise)
            .map(|(&p, e)| (p as f64 + e / norm) as f32)
            .collect();
        let t = Tensor::from_vec(pts, x.dims(), x.device())?;
        for m in gradient_pair_norms(f, &t, k)? {
            g.max_with(&m);
        }
    }
    Ok(g)
}
