//! `experiments tightness`: inequality (5) for one model, a checkpoint or an ONNX import: per test
//! point the certified radius (A), the margin over a global (B) and a local (C) empirical lower bound on
//! the Lipschitz constants, and the DeepFool distance (D), with the paper's error ratios.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lmt_analysis::{write_atomic, Table};
use lmt_eval::tightness::{lower_radii, Inequality};
use lmt_eval::{AttackSpec, CertifyConfig};

use crate::subject::{ModelArgs, Subject};
use crate::DataArgs;

/// Flags of `tightness`.
#[derive(Debug, clap::Args)]
pub struct TightnessArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output directory (default: the checkpoint's directory, or results/onnx/<model name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Points of the test set (the first N).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub test_subset: u64,
    /// (B) and (C) on the first N of them only: they cost `draws` forward and backward passes of K x 50
    /// images per batch of 50.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub lower_points: Option<u64>,
    /// Gaussian draws of the local lower bound per batch (the authors: 100).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub draws: u64,
    #[command(flatten)]
    pub data: DataArgs,
}

/// Writes `tightness.csv` (index, label, A, B, C, D) and `tightness_summary.txt`; fails loudly when a
/// point breaks A <= B <= C or A <= D.
pub fn run(args: &TightnessArgs) -> Result<()> {
    let started = Instant::now();
    let s = Subject::load(&args.model, &args.data)?;
    let n = (args.test_subset as usize).min(s.data.test.len());
    let lower_n = args.lower_points.map_or(n, |l| l as usize).min(n);
    let out = args.out.clone().unwrap_or_else(|| s.dir.clone());
    crate::run::check_writable(&out)?;
    let indices: Vec<usize> = (0..n).collect();
    let model = s.model.as_ref();
    let bar = |what: &str, len: usize| {
        let b = ProgressBar::new(len as u64);
        b.set_style(
            ProgressStyle::with_template(&format!("{what} [{{bar:30}}] {{pos}}/{{len}} ({{eta}})"))
                .expect("valid template"),
        );
        b
    };
    let b = bar("certify", n);
    let certs = lmt_eval::certify(
        model,
        &s.data.test,
        &indices,
        &CertifyConfig::default(),
        &mut |k| b.set_position(k as u64),
    )?;
    b.finish_and_clear();
    let b = bar("deepfool", n);
    let df = lmt_eval::attack(
        model,
        &s.data.test,
        &indices,
        &AttackSpec::DeepFool(Default::default()),
        100,
        &mut |rows| b.set_position(rows.len() as u64),
    )?;
    b.finish_and_clear();
    let b = bar("gradient lower bounds", lower_n);
    let lower = lower_radii(
        model,
        &s.data.test,
        &indices[..lower_n],
        args.draws as usize,
        &mut |k| b.set_position(k as u64),
    )?;
    b.finish_and_clear();
    let d: Vec<f64> = df
        .iter()
        .map(|r| r.distance.unwrap_or(f64::INFINITY))
        .collect();
    let q = Inequality::new(
        certs.rows.iter().map(|c| c.radius).collect(),
        lower,
        d.clone(),
        d,
    )?;
    let mut t = Table::new(&[
        "index",
        "label",
        "A_certified_radius",
        "B_margin_over_global_lower",
        "C_margin_over_local_lower",
        "D_deepfool",
    ]);
    for (i, c) in certs.rows.iter().enumerate() {
        t.push(vec![
            c.index.to_string(),
            c.label.to_string(),
            q.a[i].to_string(),
            q.b[i].to_string(),
            q.c[i].to_string(),
            q.d[i].to_string(),
        ]);
    }
    t.write(&out.join("tightness.csv"))?;
    let [ma, mb, mc, md, _] = q.medians();
    let r = q.ratios();
    let violations = q.violations();
    let summary = format!(
        "model {} ({} profile{}) on {n} {} test points; (B) and (C) on the first {lower_n} with {} draws per batch of 50\n\
         proposition {} ({}); L = {}\n\
         (A) certified radius, a guaranteed lower bound on the distance to the boundary: median {ma:.6}\n\
         (B) margin over the global empirical lower bound: median {mb:.6}\n\
         (C) margin over the local empirical lower bound: median {mc:.6}\n\
         (D) DeepFool distance, an empirical upper bound: median {md:.6}\n\
         medians of per-point ratios: (i) B/A {:.4}, (ii) C/B {:.4}, (iii) D/C {:.4}, overall D/A {:.4}\n\
         points breaking A <= B <= C or A <= D: {}\n",
        s.name, s.profile, s.reduced_tag(), s.data.name, args.draws,
        certs.proposition.name(), certs.why, certs.l,
        r.b_over_a, r.c_over_b, r.d_over_c, r.d_over_a, violations.len()
    );
    print!("{summary}");
    write_atomic(&out.join("tightness_summary.txt"), summary.as_bytes())?;
    let reduced = s.reduced || n < s.data.test.len() || lower_n < n || args.draws < 100;
    s.manifest(
        format!("tightness {}", s.name),
        reduced,
        s.seed,
        started.elapsed().as_secs_f64(),
        None,
    )
    .write(&out.join("tightness_manifest.json"))?;
    if !violations.is_empty() {
        bail!(
            "SOUNDNESS VIOLATION: test points {:?} break A <= B <= C or A <= D",
            &violations[..violations.len().min(10)]
        );
    }
    Ok(())
}
