//! `experiments certify`: the certified radius of every test input of a checkpoint or an ONNX model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lmt_analysis::write_atomic;
use lmt_core::{PowerConfig, Proposition};
use lmt_eval::{CertifyConfig, CertifySummary};
use lmt_models::CertifyMethod;

use crate::subject::{ModelArgs, Subject};
use crate::DataArgs;

/// How linear layers are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodName {
    /// `dense` where the operator fits the size limit, else `fft` (convolutions) or `power`.
    Auto,
    /// The exact operator norm.
    Dense,
    /// Power iteration with the Thm. 2 correction (probabilistic).
    Power,
    /// The deterministic circular-embedding bound.
    Fft,
    /// Cor. 1 (Fig. 3 comparison).
    Cor1,
    /// Cisse et al. (Fig. 3 comparison).
    Cisse,
    /// Peck et al., reconstructed (Fig. 3 comparison).
    Peck,
}

impl MethodName {
    fn method(self) -> CertifyMethod {
        match self {
            MethodName::Auto => CertifyMethod::Auto,
            MethodName::Dense => CertifyMethod::Dense,
            MethodName::Power => CertifyMethod::Power(PowerConfig::default()),
            MethodName::Fft => CertifyMethod::Fft,
            MethodName::Cor1 => CertifyMethod::Cor1,
            MethodName::Cisse => CertifyMethod::Cisse,
            MethodName::Peck => CertifyMethod::Peck,
        }
    }
}

/// Flags of `certify`.
#[derive(Debug, clap::Args)]
pub struct CertifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output directory for certificates.csv, summary and manifest (default: the checkpoint's
    /// directory, or results/onnx/<model name> for an ONNX model).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// How linear layers are bounded.
    #[arg(long, value_enum, default_value = "auto")]
    pub method: MethodName,
    /// 2 (per class pair, the paper's; needs a last linear layer) or 1 (whole network); default: 2
    /// where the network ends in a linear layer, else 1.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub proposition: Option<u8>,
    /// Certify only the first N test images.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub test_subset: Option<u64>,
    #[command(flatten)]
    pub data: DataArgs,
}

/// The computation `certify` records in its manifest, for reuse checks (a validation split is another
/// computation: other points).
pub fn step(method: MethodName, proposition: Option<u8>, validation: bool) -> String {
    format!(
        "certify, method {method:?}, proposition {}{}",
        proposition.map_or("auto".to_string(), |p| p.to_string()),
        if validation { ", validation split" } else { "" }
    )
}

/// Writes `certificates.csv` (index, label, prediction, margin, radius, proposition, bound_method) and
/// `certify_summary.txt`, and prints the summary.
pub fn run(args: &CertifyArgs) -> Result<()> {
    let started = Instant::now();
    let s = Subject::load(&args.model, &args.data)?;
    let n = args
        .test_subset
        .map_or(s.data.test.len(), |k| k as usize)
        .min(s.data.test.len());
    if n == 0 {
        bail!("{}: the test set is empty", s.data.name);
    }
    let out_dir = args.out.clone().unwrap_or_else(|| s.dir.clone());
    crate::run::check_writable(&out_dir)?;
    let cfg = CertifyConfig {
        method: args.method.method(),
        proposition: args.proposition.map(|p| {
            if p == 1 {
                Proposition::One
            } else {
                Proposition::Two
            }
        }),
        ..CertifyConfig::default()
    };
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("certify [{bar:30}] {pos}/{len} ({eta})")
            .expect("valid template"),
    );
    let indices: Vec<usize> = (0..n).collect();
    let c = lmt_eval::certify(s.model.as_ref(), &s.data.test, &indices, &cfg, &mut |d| {
        bar.set_position(d as u64)
    })?;
    bar.finish_and_clear();
    write_atomic(
        &out_dir.join("certificates.csv"),
        &lmt_eval::to_csv(&c.rows)?,
    )?;

    let bounds = match c.l_sub {
        Some(l_sub) => format!(
            "L_sub = {:.6} ({}), L = {:.6} ({})",
            l_sub.value(),
            l_sub.method(),
            c.l.value(),
            c.l.method()
        ),
        None => format!("L = {:.6} ({})", c.l.value(), c.l.method()),
    };
    let sum = CertifySummary::of(&c.rows);
    let summary = format!(
        "model {} ({} profile{}), {}\n{n} {} {} images; proposition {} ({}); bound method {}\n\
         certified upper bounds: {bounds}, computed in {:.1} s\n{}",
        s.name,
        s.profile,
        s.reduced_tag(),
        args.model
            .checkpoint
            .as_ref()
            .or(args.model.onnx.as_ref())
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        s.data.name,
        if args.model.validation {
            "validation"
        } else {
            "test"
        },
        c.proposition.name().trim_start_matches("prop"),
        c.why,
        c.l.method(),
        c.bound_seconds,
        sum,
    );
    let summary = if sum.probabilistic {
        format!(
            "{summary}WARNING: a layer was bounded by power iteration, so these radii are PROBABILISTIC: they hold only if a random start had enough weight on the top singular vector (use --method dense or fft for deterministic bounds)\n"
        )
    } else {
        summary
    };
    print!("{summary}");
    write_atomic(&out_dir.join("certify_summary.txt"), summary.as_bytes())?;
    let reduced = s.reduced || n < s.data.test.len();
    s.manifest(
        format!("certify {}", s.name),
        reduced,
        s.seed,
        started.elapsed().as_secs_f64(),
        Some((
            step(args.method, args.proposition, args.model.validation),
            n,
        )),
    )
    .write(&out_dir.join("certify_manifest.json"))?;
    Ok(())
}
