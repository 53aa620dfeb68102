//! Attack sweeps over test inputs and the check of their results against certificates.

use lmt_attacks::{
    carlini_wagner, deepfool, pgd, Adversarial, CwConfig, DeepFoolConfig, LogitsFn, PgdConfig,
};
use lmt_data::ImageSet;
use lmt_models::Classifier;

use crate::certify::batch;
use crate::error::{invalid, Result};
use crate::metrics::{accuracy_under_attack, contradicts, median, Proportion};
use crate::rows::{AttackRow, CertificateRow};

/// One attack with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum AttackSpec {
    /// C&W L2 (the paper's Table 1 attack).
    Cw(CwConfig),
    /// DeepFool L2 (the paper's Fig. 4 (D)).
    DeepFool(DeepFoolConfig),
    /// PGD-L2 at one radius; its seed is offset by the test index of each batch's first input, so a
    /// resumed sweep draws the same random starts as an uninterrupted one.
    Pgd(PgdConfig),
}

impl AttackSpec {
    /// The file-name label: `cw`, `deepfool`, `deepfool_clip` or `pgd_<epsilon>` (one file per radius).
    pub fn label(&self) -> String {
        match self {
            AttackSpec::Cw(_) => "cw".into(),
            AttackSpec::DeepFool(d) if d.clip => "deepfool_clip".into(),
            AttackSpec::DeepFool(_) => "deepfool".into(),
            AttackSpec::Pgd(p) => format!("pgd_{}", p.epsilon),
        }
    }

    /// The attack and its settings, in words.
    pub fn describe(&self) -> String {
        match self {
            AttackSpec::Cw(c) => format!(
                "C&W L2: {} iterations x {} binary steps, initial constant {}, lr {}, confidence {}{}",
                c.iterations,
                c.binary_steps,
                c.initial_const,
                c.lr,
                c.confidence,
                if c.batch_mean {
                    ", batch-mean objective (the authors')"
                } else {
                    ""
                }
            ),
            AttackSpec::DeepFool(d) => format!(
                "DeepFool L2: overshoot {}, at most {} iterations, clipping {}",
                d.overshoot,
                d.max_iterations,
                if d.clip { "on" } else { "off" }
            ),
            AttackSpec::Pgd(p) => format!(
                "PGD-L2: epsilon {}, {} steps of {}, {} restarts, seed {}",
                p.epsilon, p.steps, p.step_size, p.restarts, p.seed
            ),
        }
    }

    fn run(
        &self,
        f: &dyn LogitsFn,
        x: &candle_core::Tensor,
        labels: &[usize],
        start: usize,
    ) -> Result<Vec<Adversarial>> {
        Ok(match self {
            AttackSpec::Cw(c) => carlini_wagner(f, x, labels, c)?.per_input,
            AttackSpec::DeepFool(d) => deepfool(f, x, labels, d)?.per_input,
            AttackSpec::Pgd(p) => {
                let cfg = PgdConfig {
                    seed: p.seed.wrapping_add(start as u64),
                    ..p.clone()
                };
                pgd(f, x, labels, &cfg)?.per_input
            }
        })
    }
}

/// Attacks inputs `indices` of `set` in batches of `batch`; `progress` gets the rows so far after each
/// batch (to show progress, or to save them so a killed sweep resumes). The rows carry no certified
/// radius; [`check_against`] adds them.
pub fn attack(
    model: &dyn Classifier,
    set: &ImageSet,
    indices: &[usize],
    spec: &AttackSpec,
    batch_size: usize,
    progress: &mut dyn FnMut(&[AttackRow]),
) -> Result<Vec<AttackRow>> {
    if batch_size == 0 {
        return Err(invalid("the attack batch must hold at least 1 input"));
    }
    let f = |x: &candle_core::Tensor| model.eval_logits(x);
    let mut rows: Vec<AttackRow> = Vec::with_capacity(indices.len());
    let device = model.device();
    for chunk in indices.chunks(batch_size) {
        let (x, labels) = batch(set, chunk, &device)?;
        let found = spec.run(&f, &x, &labels, chunk[0])?;
        rows.extend(
            chunk
                .iter()
                .zip(labels)
                .zip(found)
                .map(|((&index, label), a)| AttackRow {
                    index,
                    label,
                    success: a.success,
                    distance: a.distance,
                    iterations: a.iterations,
                    certified_radius: None,
                }),
        );
        progress(&rows);
    }
    Ok(rows)
}

/// A successful attack inside a certified radius: a bug in a bound, the certifier or the attack.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Violation {
    /// Test index.
    pub index: usize,
    /// Distance of the adversarial example found.
    pub distance: f64,
    /// The certified radius it lies within.
    pub radius: f64,
}

/// Puts each input's certified radius into its attack row and returns every contradiction
/// ([`contradicts`]); inputs without a certificate are left unchecked. Certificates for other inputs
/// (a label that differs at the same index) are an error.
pub fn check_against(
    attacks: &mut [AttackRow],
    certificates: &[CertificateRow],
) -> Result<Vec<Violation>> {
    let by_index: std::collections::HashMap<usize, &CertificateRow> =
        certificates.iter().map(|c| (c.index, c)).collect();
    let mut violations = Vec::new();
    for a in attacks.iter_mut() {
        let Some(c) = by_index.get(&a.index) else {
            continue;
        };
        if c.label != a.label {
            return Err(invalid(format!(
                "test input {} has label {} in the attack but {} in the certificates: they are for different inputs",
                a.index, a.label, c.label
            )));
        }
        a.certified_radius = Some(c.radius);
        if let (true, Some(d)) = (a.success, a.distance) {
            if contradicts(c.radius, d) {
                violations.push(Violation {
                    index: a.index,
                    distance: d,
                    radius: c.radius,
                });
            }
        }
    }
    Ok(violations)
}

/// The numbers an attack summary reports.
#[derive(Debug, Clone, PartialEq)]
pub struct AttackSummary {
    /// Inputs attacked.
    pub points: usize,
    /// Successes, and of them those already misclassified (distance 0).
    pub successes: usize,
    /// Successes at distance 0.
    pub already_wrong: usize,
    /// Median distance over all inputs, failures counting as infinite.
    pub median_all: f64,
    /// Median distance over successes.
    pub median_successes: f64,
    /// Accuracy under this attack at each L2 size (an empirical upper bound on robust accuracy).
    pub under_attack: Vec<(f64, Proportion)>,
}

impl AttackSummary {
    /// The summary of attack rows at the L2 sizes `sizes`.
    pub fn of(rows: &[AttackRow], sizes: &[f64]) -> Self {
        let dist: Vec<Option<f64>> = rows.iter().map(|r| r.distance).collect();
        let all: Vec<f64> = dist.iter().map(|d| d.unwrap_or(f64::INFINITY)).collect();
        let succ: Vec<f64> = dist.iter().flatten().copied().collect();
        AttackSummary {
            points: rows.len(),
            successes: succ.len(),
            already_wrong: succ.iter().filter(|&&d| d == 0.0).count(),
            median_all: median(&all),
            median_successes: median(&succ),
            under_attack: sizes
                .iter()
                .map(|&e| (e, accuracy_under_attack(&dist, e)))
                .collect(),
        }
    }
}

impl std::fmt::Display for AttackSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "attack distances are empirical UPPER bounds on each input's minimal adversarial distance")?;
        writeln!(
            f,
            "succeeded {} (of which {} already misclassified, distance 0), failed {}",
            self.successes,
            self.already_wrong,
            self.points - self.successes
        )?;
        writeln!(
            f,
            "median distance over all inputs (failures count as infinite): {:.6}",
            self.median_all
        )?;
        writeln!(
            f,
            "median distance over successes: {:.6}",
            self.median_successes
        )?;
        for (e, p) in &self.under_attack {
            writeln!(f, "accuracy under this attack at L2 size {e} (an empirical upper bound on robust accuracy): {p}")?;
        }
        Ok(())
    }
}
