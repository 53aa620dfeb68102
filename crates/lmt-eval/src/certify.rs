//! Certification of a classifier on test inputs: one certified bound per model, then one guarded
//! radius per input (Prop. 1 or Prop. 2), and the summary numbers.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use lmt_core::{
    certify_prop1_guarded, certify_prop2_guarded, BoundMethod, CertifiedBound, Proposition,
};
use lmt_data::ImageSet;
use lmt_models::{CertifyMethod, Classifier, Ctx, Lip};

use crate::error::{invalid, Result};
use crate::metrics::{certified_accuracy, median, Proportion};
use crate::rows::CertificateRow;

/// The L2 sizes every certification summary reports: the paper's Table 1 sizes, 1.0 and 1.58 (the L2
/// ball with the volume of the Linf 0.1 ball on MNIST, today's yardstick).
pub const SUMMARY_SIZES: [f64; 5] = [0.1, 0.2, 0.5, 1.0, 1.58];

/// How to certify.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CertifyConfig {
    /// How linear layers are bounded.
    pub method: CertifyMethod,
    /// Prop. 1 or Prop. 2; `None` picks Prop. 2 when the network ends in a linear layer (the paper's
    /// choice, tighter), else Prop. 1.
    pub proposition: Option<Proposition>,
    /// Inputs per forward pass.
    pub batch: usize,
}

impl Default for CertifyConfig {
    fn default() -> Self {
        CertifyConfig {
            method: CertifyMethod::Auto,
            proposition: None,
            batch: 1000,
        }
    }
}

/// The certificates of a set of inputs and what they rest on.
#[derive(Debug, Clone)]
pub struct Certification {
    /// The proposition used.
    pub proposition: Proposition,
    /// Why that proposition (for outputs).
    pub why: String,
    /// Certified bound of the network below its last linear layer (Prop. 2's L_sub), if it has one.
    pub l_sub: Option<CertifiedBound>,
    /// Certified bound of the whole network (Prop. 1's L).
    pub l: CertifiedBound,
    /// Seconds spent computing the bounds.
    pub bound_seconds: f64,
    /// One row per input, in the order given.
    pub rows: Vec<CertificateRow>,
}

/// Images `indices` of `set` as an f32 batch `(B, C, H, W)` in [0, 1] on `device`, and their labels.
pub fn batch(set: &ImageSet, indices: &[usize], device: &Device) -> Result<(Tensor, Vec<usize>)> {
    if let Some(&i) = indices.iter().find(|&&i| i >= set.len()) {
        return Err(invalid(format!(
            "test index {i} is outside the set of {} images",
            set.len()
        )));
    }
    let (x, _) = lmt_train::batch_tensors(set, indices, device)?;
    Ok((x, indices.iter().map(|&i| set.labels[i] as usize).collect()))
}

/// The proposition `requested` (or the best available) for `model`, with the reason.
pub fn choose_proposition(
    model: &dyn Classifier,
    requested: Option<Proposition>,
) -> Result<(Proposition, String)> {
    let last = model.last_weight().is_some();
    Ok(match (requested, last) {
        (Some(Proposition::Two), false) => {
            return Err(invalid(
                "Prop. 2 needs a network whose last node is a fully connected layer with nothing after it; this one has none (use Prop. 1)",
            ))
        }
        (Some(Proposition::Two), true) => (Proposition::Two, "requested".into()),
        (Some(Proposition::One), _) => (Proposition::One, "requested".into()),
        (None, true) => (
            Proposition::Two,
            "the network ends in a fully connected layer, so the per-class-pair Prop. 2 applies".into(),
        ),
        (None, false) => (
            Proposition::One,
            "the network does not end in a fully connected layer, so only Prop. 1 applies".into(),
        ),
    })
}

/// Certified bounds (L_sub, L) of `model` on inputs of shape `[c, h, w]`.
pub fn certified_bounds(
    model: &dyn Classifier,
    shape: [usize; 3],
    method: CertifyMethod,
) -> Result<(CertifiedBound, CertifiedBound)> {
    let dims = (1, shape[0], shape[1], shape[2]);
    let x0 = Tensor::zeros(dims, DType::F32, &model.device())?;
    let out = model.forward(
        &x0,
        Lip::Certified(CertifiedBound::one()),
        &Ctx::eval(method),
    )?;
    let get = |l: &Lip| {
        l.certified()
            .ok_or_else(|| invalid("the model returned no certified bound"))
    };
    Ok((get(&out.l_sub)?, get(&out.l)?))
}

/// Certifies inputs `indices` of `set`; `progress` is told how many are done after each batch.
pub fn certify(
    model: &dyn Classifier,
    set: &ImageSet,
    indices: &[usize],
    cfg: &CertifyConfig,
    progress: &mut dyn FnMut(usize),
) -> Result<Certification> {
    if cfg.batch == 0 {
        return Err(invalid(
            "the certification batch must hold at least 1 input",
        ));
    }
    let (proposition, why) = choose_proposition(model, cfg.proposition)?;
    let started = Instant::now();
    let (l_sub, l) = certified_bounds(model, set.image_shape(), cfg.method)?;
    let bound_seconds = started.elapsed().as_secs_f64();
    let last = match proposition {
        Proposition::Two => {
            let w = model
                .last_weight()
                .ok_or_else(|| invalid("no last linear layer"))?;
            let (classes, dim) = w.dims2()?;
            let v: Vec<f64> = w.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
            Some((v, classes, dim))
        }
        Proposition::One => None,
    };
    // Margins come from the sound f64 pass on the CPU, each with a bound on its distance from the
    // exact logits (so certificates do not depend on the device the model runs on).
    let graph = model.to_graph().map_err(|e| {
        invalid(format!(
            "certification computes sound margins from the model's graph, and this model has none: {e}"
        ))
    })?;
    let mut rows = Vec::with_capacity(indices.len());
    let pass = graph.sound_pass()?;
    for chunk in indices.chunks(cfg.batch) {
        let (x, labels) = batch(set, chunk, &Device::Cpu)?;
        let xs: Vec<f64> = x.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
        let sound = pass.logits(&xs, chunk.len())?;
        let (z, errors, classes) = (&sound.logits, &sound.errors, sound.classes);
        let certs = match &last {
            Some((w, k, dim)) => certify_prop2_guarded(z, errors, *k, &labels, &l_sub, w, *dim)?,
            None => certify_prop1_guarded(z, errors, classes, &labels, &l)?,
        };
        rows.extend(
            chunk
                .iter()
                .zip(certs)
                .zip(errors)
                .map(|((&index, c), &err)| CertificateRow {
                    index,
                    label: c.label,
                    prediction: c.prediction,
                    margin: c.margin,
                    logit_error: err,
                    radius: c.radius,
                    proposition: c.proposition.name().into(),
                    bound_method: c.method.name().into(),
                }),
        );
        progress(rows.len());
    }
    Ok(Certification {
        proposition,
        why,
        l_sub: last.is_some().then_some(l_sub),
        l,
        bound_seconds,
        rows,
    })
}

/// The numbers a certification summary reports.
#[derive(Debug, Clone, PartialEq)]
pub struct CertifySummary {
    /// Clean accuracy.
    pub clean: Proportion,
    /// Median certified radius (misclassified inputs count as 0).
    pub median_radius: f64,
    /// Certified accuracy at each of [`SUMMARY_SIZES`].
    pub certified: Vec<(f64, Proportion)>,
    /// Whether some radius rests on a probabilistic bound (power iteration) or on a method this build
    /// does not know: its certified accuracies are then not labelled guaranteed.
    pub probabilistic: bool,
}

impl CertifySummary {
    /// The summary of certificate rows.
    pub fn of(rows: &[CertificateRow]) -> Self {
        // A radius that is not finite (from a file, say) counts as 0 here, never as large.
        let radii: Vec<f64> = rows
            .iter()
            .map(|r| if r.radius.is_finite() { r.radius } else { 0.0 })
            .collect();
        CertifySummary {
            clean: Proportion::count(rows.iter().map(|r| r.prediction == Some(r.label))),
            median_radius: median(&radii),
            certified: SUMMARY_SIZES
                .iter()
                .map(|&e| (e, certified_accuracy(&radii, e)))
                .collect(),
            probabilistic: rows.iter().any(|r| {
                BoundMethod::from_name(&r.bound_method).is_none_or(BoundMethod::is_probabilistic)
            }),
        }
    }
}

impl std::fmt::Display for CertifySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "clean accuracy {} (95% Wilson interval)", self.clean)?;
        writeln!(
            f,
            "median certified radius (misclassified count as 0): {:.6}",
            self.median_radius
        )?;
        let kind = if self.probabilistic {
            "a PROBABILISTIC lower bound: power iteration (or an unknown method) bounded a layer"
        } else {
            "a guaranteed lower bound"
        };
        for (e, p) in &self.certified {
            writeln!(
                f,
                "certified accuracy at L2 radius {e} ({kind}; perturbations of norm <= {e}): {p}"
            )?;
        }
        Ok(())
    }
}
