//! How tight the certificates are: inequality (5) of the paper (A <= B <= C <= D per point) and the
//! Figure-5 check that an input moved by exactly its certified radius keeps its class.
//!
//! - (A) the certified radius (a guaranteed lower bound on the distance to the decision boundary);
//! - (B) margin over a *global* empirical lower bound on the per-class-pair Lipschitz constants, the
//!   largest gradient-difference norm over every batch;
//! - (C) margin over a *local* one, per batch of 50 with Gaussian noise (the authors' procedure);
//! - (D) an attack distance (an empirical upper bound on the distance to the boundary).
//!
//! (B) and (C) are empirical, not certified: they say how far (A) can at most be from the truth.

use candle_core::Tensor;
use lmt_attacks::{deepfool, local_lipschitz_lower, DeepFoolConfig, PairMatrix};
use lmt_data::ImageSet;
use lmt_models::Classifier;
use rand_distr::Distribution;

use crate::certify::batch;
use crate::error::{invalid, Result};
use crate::metrics::{margin_radius, median, median_ratio};

/// The inputs per batch of the local lower bound (the authors': 50).
pub const LOWER_BATCH: usize = 50;

/// (B) and (C) per input, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub struct LowerRadii {
    /// Margin over the global lower bound.
    pub b: Vec<f64>,
    /// Margin over the local lower bound of the input's batch.
    pub c: Vec<f64>,
}

/// (B) and (C) for inputs `indices` of `set` by the authors' batch procedure: batches of 50 in the
/// order given, `draws` noise draws per batch, seeded by the batch number. `progress` gets the inputs
/// done.
pub fn lower_radii(
    model: &dyn Classifier,
    set: &ImageSet,
    indices: &[usize],
    draws: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<LowerRadii> {
    let f = |x: &Tensor| model.eval_logits(x);
    let (mut logits, mut labels, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let mut global: Option<PairMatrix> = None;
    let mut k = 0;
    let device = model.device();
    for (bi, chunk) in indices.chunks(LOWER_BATCH).enumerate() {
        let (x, l) = batch(set, chunk, &device)?;
        let zt = f(&x)?;
        k = zt.dim(1)?;
        let z: Vec<f32> = zt.flatten_all()?.to_vec1()?;
        let g = local_lipschitz_lower(&f, &x, k, draws, bi as u64)?;
        c.extend(margin_radius(&z, k, &l, |t, i| g.get(t, i)));
        global
            .get_or_insert_with(|| PairMatrix::zeros(k))
            .max_with(&g);
        logits.extend(z);
        labels.extend(l);
        progress(labels.len());
    }
    let b = match &global {
        Some(g) => margin_radius(&logits, k, &labels, |t, i| g.get(t, i)),
        None => Vec::new(),
    };
    Ok(LowerRadii { b, c })
}

/// Inequality (5) per point. Points without (B), (C) hold NaN there, which medians and ratios skip.
#[derive(Debug, Clone, PartialEq)]
pub struct Inequality {
    /// (A) certified radii.
    pub a: Vec<f64>,
    /// (B), NaN where not computed.
    pub b: Vec<f64>,
    /// (C), NaN where not computed.
    pub c: Vec<f64>,
    /// (D) DeepFool distances (failures infinite).
    pub d: Vec<f64>,
    /// The smallest distance over every attack run (failures infinite).
    pub d_worst: Vec<f64>,
}

/// The medians of the paper's error ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratios {
    /// (i) B / A: the looseness of the certified bound against the global lower bound.
    pub b_over_a: f64,
    /// (ii) C / B.
    pub c_over_b: f64,
    /// (iii) D / C.
    pub d_over_c: f64,
    /// D / A overall.
    pub d_over_a: f64,
}

impl Inequality {
    /// Assembles the columns; (B) and (C) cover a prefix of the points (`--lower-points`).
    pub fn new(a: Vec<f64>, lower: LowerRadii, d: Vec<f64>, d_worst: Vec<f64>) -> Result<Self> {
        let n = a.len();
        if d.len() != n || d_worst.len() != n || lower.b.len() > n || lower.c.len() != lower.b.len()
        {
            return Err(invalid(format!(
                "inequality (5) needs equal point counts: {n} radii, {} DeepFool, {} worst, {} lower",
                d.len(),
                d_worst.len(),
                lower.b.len()
            )));
        }
        let (mut b, mut c) = (lower.b, lower.c);
        b.resize(n, f64::NAN);
        c.resize(n, f64::NAN);
        Ok(Inequality {
            a,
            b,
            c,
            d,
            d_worst,
        })
    }

    /// Points that break A <= B <= C or A <= D: a certified radius above an empirical upper bound on the
    /// distance to the boundary means a bound or the certifier is wrong (B <= C holds by construction;
    /// 1e-6 relative slack for rounding in B and C).
    pub fn violations(&self) -> Vec<usize> {
        let tol = 1e-6;
        (0..self.a.len())
            .filter(|&i| {
                self.a[i] > self.b[i] * (1.0 + tol) + 1e-12
                    || self.b[i] > self.c[i] * (1.0 + tol) + 1e-12
                    || lmt_core::contradicts(self.a[i], self.d_worst[i])
            })
            .collect()
    }

    /// The medians of the per-point ratios.
    pub fn ratios(&self) -> Ratios {
        Ratios {
            b_over_a: median_ratio(&self.b, &self.a).0,
            c_over_b: median_ratio(&self.c, &self.b).0,
            d_over_c: median_ratio(&self.d, &self.c).0,
            d_over_a: median_ratio(&self.d, &self.a).0,
        }
    }

    /// Medians of A, B, C, D and the worst attack.
    pub fn medians(&self) -> [f64; 5] {
        [&self.a, &self.b, &self.c, &self.d, &self.d_worst].map(|v| median(v))
    }
}

/// An input moved by its certified radius (Figure 5).
#[derive(Debug, Clone, PartialEq)]
pub struct Perturbed {
    /// Test index.
    pub index: usize,
    /// Label.
    pub label: usize,
    /// Certified radius.
    pub radius: f64,
    /// Norm of the perturbation actually applied (f32 pixels).
    pub norm: f64,
    /// `DeepFool direction`, or `random direction` where DeepFool found nothing.
    pub direction: &'static str,
    /// Class predicted after the move.
    pub prediction: usize,
    /// Margin after the move.
    pub margin: f32,
    /// The original pixels and the moved ones (not clipped to [0, 1]).
    pub before: Vec<f32>,
    /// The moved pixels.
    pub after: Vec<f32>,
}

impl Perturbed {
    /// Whether the certificate's promise held: same class, and the move stayed inside the radius.
    pub fn kept(&self) -> bool {
        self.prediction == self.label && self.margin > 0.0 && self.norm < self.radius
    }
}

/// Moves each input by (1 - 1e-6) of its certified radius along the direction DeepFool found (the
/// hardest we know; a fixed pseudo-random one where it fails), so rounding each pixel to f32 cannot
/// push the norm to the radius, and classifies the result.
pub fn perturb_by_radius(
    model: &dyn Classifier,
    set: &ImageSet,
    indices: &[usize],
    radii: &[f64],
) -> Result<Vec<Perturbed>> {
    if radii.len() != indices.len() || indices.is_empty() {
        return Err(invalid("one radius per input, and at least one input"));
    }
    let (x, labels) = batch(set, indices, &model.device())?;
    let f = |x: &Tensor| model.eval_logits(x);
    let adv = deepfool(&f, &x, &labels, &DeepFoolConfig::default())?;
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let advs: Vec<f32> = adv.images.flatten_all()?.to_vec1()?;
    let n = set.image_size();
    let mut moved = Vec::with_capacity(xs.len());
    let mut directions = Vec::new();
    for (j, &i) in indices.iter().enumerate() {
        let mut delta: Vec<f64> = (0..n)
            .map(|p| advs[j * n + p] as f64 - xs[j * n + p] as f64)
            .collect();
        let mut kind = "DeepFool direction";
        if !adv.per_input[j].success || delta.iter().all(|v| *v == 0.0) {
            let mut rng = lmt_core::named_rng(0, &format!("fig5-{i}"));
            delta = (0..n)
                .map(|_| rand_distr::StandardNormal.sample(&mut rng))
                .collect();
            kind = "random direction";
        }
        let norm = delta.iter().map(|v| v * v).sum::<f64>().sqrt();
        let scale = radii[j] * (1.0 - 1e-6) / norm;
        moved.extend((0..n).map(|p| (xs[j * n + p] as f64 + delta[p] * scale) as f32));
        directions.push(kind);
    }
    let xp = Tensor::from_vec(moved.clone(), x.dims(), x.device())?;
    let zt = f(&xp)?;
    let k = zt.dim(1)?;
    let z: Vec<f32> = zt.flatten_all()?.to_vec1()?;
    Ok(indices
        .iter()
        .enumerate()
        .map(|(j, &index)| {
            let zi = &z[j * k..(j + 1) * k];
            let t = labels[j];
            let other = (0..k)
                .filter(|&c| c != t)
                .map(|c| zi[c])
                .fold(f32::NEG_INFINITY, f32::max);
            let prediction = (0..k).max_by(|&p, &q| zi[p].total_cmp(&zi[q])).unwrap_or(0);
            let (before, after) = (
                xs[j * n..(j + 1) * n].to_vec(),
                moved[j * n..(j + 1) * n].to_vec(),
            );
            let norm = before
                .iter()
                .zip(&after)
                .map(|(p, q)| (*q as f64 - *p as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            Perturbed {
                index,
                label: t,
                radius: radii[j],
                norm,
                direction: directions[j],
                prediction,
                margin: zi[t] - other,
                before,
                after,
            }
        })
        .collect())
}
