//! `table1`: clean accuracy and accuracy under C&W at L2 sizes 0.2, 0.5 and 1.0 for the SVHN baselines
//! and LMT (paper Table 1), on the official SVHN files or, without them, on the named MNIST stand-in.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use lmt_analysis::Table;
use lmt_eval::metrics::{accuracy_under_attack, certified_accuracy, median, Proportion};
use lmt_eval::{AttackRow, CertificateRow};

use crate::figures::budget_label;
use crate::pipeline::{ensure_attacked, ensure_certified, ensure_trained, AnalysisArgs, Budget};
use crate::run::{load_data, load_trained, manifest};

/// One Table 1 row: (method, config, paper's clean / 0.2 / 0.5 / 1.0 accuracy in %, paper's median
/// certified radius where it reports one).
pub type Table1Row = (&'static str, &'static str, Option<[f64; 4]>, Option<f64>);

/// Table 1's rows, plus the average-pool LMT run the paper reports in the text.
pub const TABLE1: [Table1Row; 5] = [
    (
        "weight decay",
        "svhn_weight_decay",
        Some([98.31, 72.38, 20.98, 2.02]),
        None,
    ),
    (
        "Parseval",
        "svhn_parseval",
        Some([98.30, 71.35, 17.92, 0.94]),
        None,
    ),
    (
        "spectral norm",
        "svhn_spectral_norm",
        Some([98.27, 73.66, 20.35, 1.39]),
        None,
    ),
    (
        "LMT (c 0.01)",
        "svhn_lmt_c001",
        Some([96.38, 86.90, 55.11, 17.69]),
        Some(0.029),
    ),
    ("LMT avg-pool (c 0.1)", "svhn_avg_lmt_c01", None, Some(0.08)),
];

/// The L2 sizes of Table 1.
pub const SIZES: [f64; 3] = [0.2, 0.5, 1.0];

/// Trains (or resumes), certifies and attacks every Table 1 model, then writes `table1.csv`.
pub fn table1(args: &AnalysisArgs) -> Result<()> {
    let started = Instant::now();
    let mut a = args.clone();
    if a.data.svhn_dir.is_none() {
        a.data.svhn_stand_in = true;
        eprintln!(
            "table1: no --svhn-dir (or SVHN_DIR): running on the STAND-IN {} — these are NOT SVHN numbers",
            crate::run::STAND_IN
        );
    }
    let budget = Budget::of(&a.profile);
    let mut t = Table::new(&[
        "method",
        "dataset",
        "points",
        "clean_accuracy",
        "cw_accuracy_0.2",
        "cw_accuracy_0.5",
        "cw_accuracy_1.0",
        "certified_accuracy_0.2",
        "certified_accuracy_0.5",
        "certified_accuracy_1.0",
        "median_certified_radius",
        "cw_failures",
        "paper_clean",
        "paper_cw_0.2",
        "paper_cw_0.5",
        "paper_cw_1.0",
        "paper_median_radius",
        "budget",
    ]);
    let mut reduced = true; // the paper attacks all 26,032 SVHN test images; we never do on CPU
    let mut dataset = String::new();
    for (method, config, paper, paper_radius) in TABLE1 {
        eprintln!("table1: {method} ({config})");
        let ckpt = ensure_trained(&a, config)?;
        ensure_certified(&a, &ckpt, Some(budget.table1_points))?;
        ensure_attacked(&a, &ckpt, "cw", budget.table1_points, |x| {
            x.cw_iterations = budget.cw_iterations;
            x.cw_binary_steps = budget.cw_binary_steps;
        })?;
        let trained = load_trained(&ckpt)?;
        reduced |= trained.reduced;
        let data = load_data(&trained.config.dataset, &a.data)?;
        dataset = data.name.clone();
        let dir = ckpt.parent().unwrap_or(Path::new("."));
        let certs: Vec<CertificateRow> = lmt_eval::read_csv_file(&dir.join("certificates.csv"))?;
        let att: Vec<AttackRow> = lmt_eval::read_csv_file(&dir.join("attack_cw.csv"))?;
        let n = budget.table1_points.min(att.len()).min(certs.len());
        let (certs, att) = (&certs[..n], &att[..n]);
        let radii: Vec<f64> = certs.iter().map(|c| c.radius).collect();
        let dist: Vec<Option<f64>> = att.iter().map(|a| a.distance).collect();
        let clean = Proportion::count(certs.iter().map(|c| c.prediction == Some(c.label))).value();
        let under = |e: f64| accuracy_under_attack(&dist, e).value();
        let cert = |e: f64| certified_accuracy(&radii, e).value();
        let failures = dist.iter().filter(|d| d.is_none()).count();
        let p = |i: usize| paper.map(|v| v[i].to_string()).unwrap_or_default();
        t.push(vec![
            method.into(),
            data.name.clone(),
            n.to_string(),
            (100.0 * clean).to_string(),
            (100.0 * under(SIZES[0])).to_string(),
            (100.0 * under(SIZES[1])).to_string(),
            (100.0 * under(SIZES[2])).to_string(),
            (100.0 * cert(SIZES[0])).to_string(),
            (100.0 * cert(SIZES[1])).to_string(),
            (100.0 * cert(SIZES[2])).to_string(),
            median(&radii).to_string(),
            failures.to_string(),
            p(0),
            p(1),
            p(2),
            p(3),
            paper_radius.map(|r| r.to_string()).unwrap_or_default(),
            budget_label(&a.profile, true),
        ]);
    }
    let root = a.results.join(&a.profile);
    let name = if a.data.svhn_stand_in {
        "table1_standin"
    } else {
        "table1"
    };
    t.write(&root.join(format!("{name}.csv")))?;
    println!("Table 1 on {dataset} ({}): accuracies in %; C&W accuracy is an empirical upper bound on robust accuracy, certified accuracy a guaranteed lower bound", budget_label(&a.profile, reduced));
    print!("{}", t.to_csv());
    let data = load_data("svhn", &a.data)?;
    manifest(
        name.into(),
        &a.profile,
        reduced,
        format!("{budget:?}; C&W accuracy at size e = fraction of the first {} test points whose C&W distance exceeds e (failures count as robust)", budget.table1_points),
        0,
        &data,
        started.elapsed().as_secs_f64(),
    )
    .write(&root.join(format!("{name}_manifest.json")))?;
    Ok(())
}
