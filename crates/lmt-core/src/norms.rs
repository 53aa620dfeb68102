//! Certified operator norms: the per-layer bounds of the paper and the exact ones we add.
//!
//! | function | bound | source |
//! |---|---|---|
//! | [`dense_spectral_norm`], [`conv_dense`], [`linear_dense`] | exact largest singular value | ours (exact) |
//! | [`conv_power`], [`power_bound`] | power iteration + Thm. 2 correction | Thm. 1, Thm. 2 |
//! | [`conv_fft`] | max singular value over the kernel's DFT on an embedding grid | ours (deterministic) |
//! | [`conv_cor1`] | sqrt(n) ‖W'‖ | Cor. 1 |
//! | [`conv_cisse`] | sqrt(kh kw) ‖W'‖ | Cisse et al. 2017 |
//! | [`conv_peck`], [`pool_peck`] | sqrt(Ho Wo) ‖W‖_F, sqrt(#windows) | Peck et al. 2017, reconstructed |
//! | [`avg_pool_thm3`], [`max_pool_thm3`] | sqrt(n)/sqrt(kh kw), sqrt(n) | Thm. 3 |
//! | [`avg_pool_exact`] | product of the per-axis averaging norms | ours (exact) |
//! | [`batch_norm_inference`] | max_c ‖gamma_c / sqrt(var_c + eps)‖ | Sec. 5.2 |
//! | [`activation`], [`elementwise_scale`] | 1, max(1, ‖alpha‖), 1/4; max ‖c‖ | closed forms |
//!
//! Numerical methods multiply their result by `1 + ROUNDING_MARGIN` so that floating-point error in the
//! eigenvalue computation cannot make a bound fall below the exact norm.

use nalgebra::{ComplexField, DMatrix};
use num_complex::Complex64;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::bound::{BoundMethod, CertifiedBound, LowerBound};
use crate::conv::{gemm, ConvGeometry};
use crate::error::{invalid, CoreError, Result};

/// Relative margin added to numerically computed norms to absorb rounding error (far above f64 eigen
/// solver error for our sizes, far below anything that matters for a radius).
pub const ROUNDING_MARGIN: f64 = 1e-9;

/// Largest `rows x cols` for which `dense` assembles the operator matrix (the smaller Gram side must also
/// stay under [`DENSE_MAX_SIDE`]). Every MNIST layer fits.
pub const DENSE_MAX_ENTRIES: usize = 40_000_000;
/// Largest side of the Gram matrix whose eigenvalues `dense` computes.
pub const DENSE_MAX_SIDE: usize = 2048;

/// Largest singular value of a row-major `rows x cols` matrix, from the eigenvalues of its smaller Gram
/// matrix; exact up to [`ROUNDING_MARGIN`].
pub fn dense_spectral_norm(m: &[f64], rows: usize, cols: usize) -> Result<f64> {
    if m.len() != rows * cols {
        return Err(invalid(
            "matrix",
            format!("{} values for {rows}x{cols}", m.len()),
        ));
    }
    if m.iter().any(|v| !v.is_finite()) {
        return Err(CoreError::NonFinite("matrix"));
    }
    if rows == 0 || cols == 0 {
        return Ok(0.0);
    }
    let side = rows.min(cols);
    if rows * cols > DENSE_MAX_ENTRIES || side > DENSE_MAX_SIDE {
        return Err(CoreError::TooLarge {
            method: "dense",
            rows,
            cols,
            limit: DENSE_MAX_ENTRIES,
        });
    }
    let mut g = vec![0.0; side * side];
    if rows <= cols {
        gemm(rows, cols, rows, m, false, m, true, &mut g); // M M^T
    } else {
        gemm(cols, rows, cols, m, true, m, false, &mut g); // M^T M
    }
    let lambda = DMatrix::from_row_slice(side, side, &g)
        .symmetric_eigenvalues()
        .iter()
        .cloned()
        .fold(0.0f64, f64::max);
    Ok(lambda.max(0.0).sqrt() * (1.0 + ROUNDING_MARGIN))
}

/// `dense`: the exact norm of a convolution on its real input size, stride and padding.
pub fn conv_dense(g: &ConvGeometry, kernel: &[f64]) -> Result<CertifiedBound> {
    g.check_kernel(kernel)?;
    if g.out_dim() * g.in_dim() > DENSE_MAX_ENTRIES || g.out_dim().min(g.in_dim()) > DENSE_MAX_SIDE
    {
        return Err(CoreError::TooLarge {
            method: "dense",
            rows: g.out_dim(),
            cols: g.in_dim(),
            limit: DENSE_MAX_ENTRIES,
        });
    }
    let m = g.dense_matrix(kernel);
    CertifiedBound::new(
        dense_spectral_norm(&m, g.out_dim(), g.in_dim())?,
        BoundMethod::Dense,
    )
}

/// `dense` for a fully connected layer with row-major weight `out x in`.
pub fn linear_dense(weight: &[f64], out: usize, inp: usize) -> Result<CertifiedBound> {
    CertifiedBound::new(dense_spectral_norm(weight, out, inp)?, BoundMethod::Dense)
}

/// Settings of the certified power iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerConfig {
    /// Most iterations of `u <- A^T A u / ‖.‖` (the authors' code runs 5000).
    pub max_iterations: usize,
    /// Independent Gaussian start vectors; the bound is the max over starts (authors: 128 on a GPU).
    pub starts: usize,
    /// Seed of the start vectors.
    pub seed: u64,
    /// Stop once every start's Thm. 2 correction is below this fraction of its estimate, or at most twice
    /// what rounding alone allows (it cannot shrink further). Stopping early never weakens soundness: the
    /// correction, with its rounding allowance, is valid at every iteration.
    pub rel_tolerance: f64,
}

impl Default for PowerConfig {
    fn default() -> Self {
        PowerConfig {
            max_iterations: 5000,
            starts: 8,
            seed: 0,
            rel_tolerance: 1e-7,
        }
    }
}

/// Thm. 2's upper correction for squared-norm estimate `r` after a step that changed it by `delta`,
/// on an input of dimension `n`: `(D + sqrt(D (4 r + D))) / 2` with `D = |delta| n`.
pub fn thm2_correction(r: f64, delta: f64, n: usize) -> f64 {
    let d = delta.abs() * n as f64;
    (d + (d * (4.0 * r + d)).sqrt()) / 2.0
}

/// The change between two computed estimates that rounding alone can hide: each `R = ‖A^T A x‖` is a
/// sum of at most `n` products per entry, so its relative error is below `n` machine epsilons, and a
/// computed change of 0 says only that the true change is below `2 n eps R`. Thm. 2 is applied to
/// `|delta|` plus this, so an iteration stalled by rounding (a spectral gap below the precision) never
/// yields the bare estimate.
pub fn rounding_allowance(r: f64, n: usize) -> f64 {
    2.0 * n as f64 * f64::EPSILON * r.abs()
}

/// What a certified power iteration found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerOutcome {
    /// sqrt(max over starts of R + Thm. 2 correction): the certified bound.
    pub bound: CertifiedBound,
    /// sqrt(max over starts of R): since `R = ‖A^T A u‖ <= ‖A‖^2` for a unit `u`, a guaranteed lower bound.
    pub lower: LowerBound,
    /// Iterations run (fewer than the maximum when the tolerance was met).
    pub iterations: usize,
}

impl PowerOutcome {
    /// True when the bound is within `rel` of the lower bound, i.e. the iteration has converged to `rel`.
    pub fn converged(&self, rel: f64) -> bool {
        self.bound.value() <= self.lower.0 * (1.0 + rel)
    }
}

/// `power`: Thm. 1 power iteration on `A^T A` given as `gram(x, batch)` over inputs of dimension `n`,
/// with the Thm. 2 correction; the bound is sqrt(max over starts of R + correction).
pub fn power_bound(
    n: usize,
    gram: impl Fn(&[f64], usize) -> Vec<f64>,
    cfg: &PowerConfig,
) -> Result<PowerOutcome> {
    if cfg.starts == 0 || cfg.max_iterations < 2 || n == 0 {
        return Err(invalid("power iteration", format!("{cfg:?} on dimension {n}: needs at least 1 start, 2 iterations (Thm. 2 uses the last change) and a positive dimension")));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let b = cfg.starts;
    let mut x: Vec<f64> = (0..b * n)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    normalize_rows(&mut x, n);
    let mut r_prev = vec![0.0; b];
    let (mut upper, mut lower) = (f64::INFINITY, 0.0f64);
    let mut iterations = 0;
    for it in 0..cfg.max_iterations {
        iterations = it + 1;
        let mut y = gram(&x, b);
        let r = normalize_rows(&mut y, n);
        if r.iter().any(|v| !v.is_finite()) {
            return Err(CoreError::NonFinite("power iteration"));
        }
        lower = r.iter().cloned().fold(lower, f64::max);
        if it > 0 {
            let mut worst_rel: f64 = 0.0;
            let mut at_rounding = true;
            upper = 0.0;
            for s in 0..b {
                let allowance = rounding_allowance(r[s], n);
                let delta = (r[s] - r_prev[s]).abs() + allowance;
                let err = thm2_correction(r[s], delta, n);
                upper = upper.max(r[s] + err);
                worst_rel = worst_rel.max(if r[s] > 0.0 { err / r[s] } else { 0.0 });
                // Changes at the level of rounding cannot shrink the correction further.
                at_rounding &= err <= 2.0 * thm2_correction(r[s], allowance, n);
            }
            if worst_rel < cfg.rel_tolerance || at_rounding {
                break;
            }
        }
        if r.iter().all(|&v| v == 0.0) {
            // Gaussian starts almost surely have a component along every direction, so A^T A x = 0 for
            // all of them means A = 0.
            upper = 0.0;
            break;
        }
        r_prev = r;
        x = y;
    }
    Ok(PowerOutcome {
        bound: CertifiedBound::new(upper.sqrt() * (1.0 + ROUNDING_MARGIN), BoundMethod::Power)?,
        lower: LowerBound(lower.sqrt() * (1.0 - ROUNDING_MARGIN)),
        iterations,
    })
}

/// Normalises each row of `x` (rows of length `n`) to unit norm and returns the norms before.
fn normalize_rows(x: &mut [f64], n: usize) -> Vec<f64> {
    x.chunks_mut(n)
        .map(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|v| *v /= norm);
            }
            norm
        })
        .collect()
}

/// `power` for a convolution: Thm. 1 + 2 on the real operator and its exact adjoint.
pub fn conv_power(g: &ConvGeometry, kernel: &[f64], cfg: &PowerConfig) -> Result<PowerOutcome> {
    g.check_kernel(kernel)?;
    power_bound(
        g.in_dim(),
        |x, b| g.adjoint(kernel, &g.apply(kernel, x, b), b),
        cfg,
    )
}

/// `fft`: the zero-padded convolution equals crop . circular convolution . zero-embedding on the
/// `(H + pt + pb) x (W + pl + pr)` grid, and striding only subsamples the output, so its norm is at most the
/// circular convolution's: the largest singular value over the per-frequency `c_out x c_in` matrices of
/// the kernel's 2-D DFT. Deterministic and never below the exact norm.
pub fn conv_fft(g: &ConvGeometry, kernel: &[f64]) -> Result<CertifiedBound> {
    g.check_kernel(kernel)?;
    let (nh, nw) = g.padded();
    // A dilated tap `a` sits at offset `a d` on the grid; no window wraps around, since the last output
    // reads at most position padded - 1.
    let phase = |n: usize, k: usize, d: usize| -> Vec<Complex64> {
        (0..n * k)
            .map(|i| {
                Complex64::from_polar(
                    1.0,
                    -2.0 * std::f64::consts::PI * ((i / k) * (i % k) * d % n) as f64 / n as f64,
                )
            })
            .collect()
    };
    // ph[u * kh + a] = exp(-2 pi i u a dh / nh)
    let (ph, pw) = (phase(nh, g.kh, g.dilation.0), phase(nw, g.kw, g.dilation.1));
    let (co, ci) = (g.c_out, g.c_in);
    let mut best: f64 = 0.0;
    let mut a = vec![Complex64::new(0.0, 0.0); co * ci];
    for u in 0..nh {
        for v in 0..nw {
            // A real kernel's DFT at -f is the conjugate of that at f: same singular values.
            if ((nh - u) % nh, (nw - v) % nw) < (u, v) {
                continue;
            }
            for (oc, slot) in a.iter_mut().enumerate() {
                let k = &kernel[oc * g.kh * g.kw..][..g.kh * g.kw];
                let mut acc = Complex64::new(0.0, 0.0);
                for r in 0..g.kh {
                    let pr = ph[u * g.kh + r];
                    for s in 0..g.kw {
                        acc += pr * pw[v * g.kw + s] * k[r * g.kw + s];
                    }
                }
                *slot = acc;
            }
            let m = DMatrix::from_row_slice(co, ci, &a);
            let gram = if co <= ci {
                &m * m.adjoint()
            } else {
                m.adjoint() * &m
            };
            let lambda = gram
                .symmetric_eigenvalues()
                .iter()
                .cloned()
                .fold(0.0f64, f64::max);
            best = best.max(lambda);
        }
    }
    CertifiedBound::new(
        best.max(0.0).sqrt() * (1.0 + ROUNDING_MARGIN),
        BoundMethod::Fft,
    )
}

/// Spectral norm of the kernel reshaped to `c_out x (c_in kh kw)` (the W' of Cor. 1).
pub fn reshaped_kernel_norm(g: &ConvGeometry, kernel: &[f64]) -> Result<f64> {
    g.check_kernel(kernel)?;
    dense_spectral_norm(kernel, g.c_out, g.c_in * g.kh * g.kw)
}

/// `cor1` (Cor. 1): sqrt(n) ‖W'‖ with Thm. 3's n.
pub fn conv_cor1(g: &ConvGeometry, kernel: &[f64]) -> Result<CertifiedBound> {
    let w = reshaped_kernel_norm(g, kernel)?;
    CertifiedBound::new(
        (g.windows_per_element() as f64).sqrt() * w,
        BoundMethod::Cor1,
    )
}

/// `cisse` (Parseval networks): sqrt(kh kw) ‖W'‖, ignoring stride and input size.
pub fn conv_cisse(g: &ConvGeometry, kernel: &[f64]) -> Result<CertifiedBound> {
    let w = reshaped_kernel_norm(g, kernel)?;
    CertifiedBound::new(((g.kh * g.kw) as f64).sqrt() * w, BoundMethod::Cisse)
}

/// `peck` (Peck et al. 2017, reconstructed): Cauchy-Schwarz on every output element gives
/// sqrt(Ho Wo) ‖W‖_F. Sound, but not checked against Peck's text: label it as reconstructed.
pub fn conv_peck(g: &ConvGeometry, kernel: &[f64]) -> Result<CertifiedBound> {
    g.check_kernel(kernel)?;
    let frob = kernel.iter().map(|v| v * v).sum::<f64>().sqrt();
    CertifiedBound::new(
        ((g.out_h() * g.out_w()) as f64).sqrt() * frob,
        BoundMethod::PeckReconstructed,
    )
}

/// Thm. 3 for average pooling (divisor kh kw, padding counted): each window mean is 1/sqrt(kh kw)
/// Lipschitz and an element lies in at most n windows, so sqrt(n) / sqrt(kh kw).
pub fn avg_pool_thm3(g: &ConvGeometry) -> Result<CertifiedBound> {
    g.validate()?;
    CertifiedBound::new(
        ((g.windows_per_element() as f64) / (g.kh * g.kw) as f64).sqrt(),
        BoundMethod::ClosedForm,
    )
}

/// The exact norm of average pooling of one channel (every channel alike): the operator is the
/// Kronecker product of one averaging matrix per axis, so its norm is the product of theirs. Each output
/// divides by its window size (`count_include_pad`, ONNX's and PyTorch's flag) or by the number of real
/// input pixels in it (then the divisor of a window is the product of the per-axis counts). An output
/// whose window lies entirely in the padding is an error when the padding is not counted.
pub fn avg_pool_exact(g: &ConvGeometry, count_include_pad: bool) -> Result<CertifiedBound> {
    g.validate()?;
    let axis = |k: usize, s: usize, d: usize, p: usize, size: usize, outs: usize| {
        let mut m = vec![0.0; outs * size];
        for o in 0..outs {
            let taps: Vec<usize> = (0..k)
                .filter_map(|a| (o * s + a * d).checked_sub(p).filter(|&i| i < size))
                .collect();
            let div = if count_include_pad { k } else { taps.len() };
            if div == 0 {
                return Err(invalid(
                    "average pooling",
                    format!("{g:?}: output {o} averages only padding, which count_include_pad = 0 cannot divide by"),
                ));
            }
            for i in taps {
                m[o * size + i] += 1.0 / div as f64;
            }
        }
        dense_spectral_norm(&m, outs, size)
    };
    let h = axis(g.kh, g.stride.0, g.dilation.0, g.pad.0, g.in_h, g.out_h())?;
    let w = axis(g.kw, g.stride.1, g.dilation.1, g.pad.1, g.in_w, g.out_w())?;
    CertifiedBound::new(h * w, BoundMethod::Dense)
}

/// Thm. 3 for max pooling: each window max is 1-Lipschitz, so sqrt(n).
pub fn max_pool_thm3(g: &ConvGeometry) -> Result<CertifiedBound> {
    g.validate()?;
    CertifiedBound::new(
        (g.windows_per_element() as f64).sqrt(),
        BoundMethod::ClosedForm,
    )
}

/// Peck et al.'s pooling bound as reconstructed: |Δ window| <= ‖r‖_inf <= ‖r‖_2 per window, so
/// sqrt(#windows); depends on the input size, unlike Thm. 3.
pub fn pool_peck(g: &ConvGeometry) -> Result<CertifiedBound> {
    g.validate()?;
    CertifiedBound::new(
        ((g.out_h() * g.out_w()) as f64).sqrt(),
        BoundMethod::PeckReconstructed,
    )
}

/// An activation whose Lipschitz constant has a closed form (elementwise, or MinMax on pairs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// max(0, x): 1.
    Relu,
    /// x for x >= 0, alpha x otherwise: max(1, |alpha|).
    LeakyRelu(f64),
    /// 1 / (1 + e^-x): its derivative peaks at 1/4.
    Sigmoid,
    /// tanh: its derivative peaks at 1.
    Tanh,
    /// min(max(x, lo), hi): 1.
    Clip,
    /// MinMax (GroupSort with groups of two, Anil et al. 2019): each pair (a, b) becomes (max, min). On
    /// either side of a = b it is a permutation of the pair, and it is continuous across, so it is
    /// 1-Lipschitz in L2 (and its Jacobian, where defined, is orthogonal: gradient norm preserving).
    MinMax,
}

/// The Lipschitz constant of an elementwise activation (exact: each is attained).
pub fn activation(a: Activation) -> Result<CertifiedBound> {
    let v = match a {
        Activation::Relu | Activation::Tanh | Activation::Clip | Activation::MinMax => 1.0,
        Activation::LeakyRelu(alpha) => alpha.abs().max(1.0),
        Activation::Sigmoid => 0.25,
    };
    CertifiedBound::new(v, BoundMethod::ClosedForm)
}

/// Multiplication by a constant, elementwise after broadcasting (a diagonal operator): max |c|. Input
/// normalisation `(x - mean) / std` is this with c = 1 / std, plus a shift that does not count.
pub fn elementwise_scale(values: &[f64]) -> Result<CertifiedBound> {
    if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
        return Err(CoreError::NonFinite("elementwise scale"));
    }
    CertifiedBound::new(
        values.iter().fold(0.0f64, |m, v| m.max(v.abs())),
        BoundMethod::ClosedForm,
    )
}

/// Batch normalisation at inference, a per-channel scaling: max_c |gamma_c| / sqrt(var_c + eps).
pub fn batch_norm_inference(
    gamma: &[f64],
    running_var: &[f64],
    eps: f64,
) -> Result<CertifiedBound> {
    if gamma.len() != running_var.len() || gamma.is_empty() {
        return Err(invalid(
            "batch norm",
            format!("{} gammas and {} variances", gamma.len(), running_var.len()),
        ));
    }
    if eps <= 0.0 || running_var.iter().any(|&v| v < 0.0) {
        return Err(invalid(
            "batch norm",
            "eps must be positive and variances non-negative",
        ));
    }
    let m = gamma
        .iter()
        .zip(running_var)
        .map(|(g, v)| g.abs() / (v + eps).sqrt())
        .fold(0.0, f64::max);
    CertifiedBound::new(m, BoundMethod::ClosedForm)
}

/// Folds batch normalisation at inference into the preceding convolution's kernel: output channel `o` is
/// scaled by `gamma_o / sqrt(var_o + eps)`. The fused operator's norm is at most (and usually below) the
/// product of the two norms.
pub fn fuse_batch_norm(
    g: &ConvGeometry,
    kernel: &[f64],
    gamma: &[f64],
    running_var: &[f64],
    eps: f64,
) -> Result<Vec<f64>> {
    g.check_kernel(kernel)?;
    if gamma.len() != g.c_out || running_var.len() != g.c_out || eps <= 0.0 {
        return Err(invalid(
            "conv+BN fusion",
            format!(
                "{} gammas, {} variances for {} output channels, eps {eps}",
                gamma.len(),
                running_var.len(),
                g.c_out
            ),
        ));
    }
    let per = g.c_in * g.kh * g.kw;
    Ok(kernel
        .chunks(per)
        .zip(gamma.iter().zip(running_var))
        .flat_map(|(k, (gm, v))| {
            let z = gm / (v + eps).sqrt();
            k.iter().map(move |w| w * z)
        })
        .collect())
}
