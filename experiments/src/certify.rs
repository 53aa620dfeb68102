//! `experiments certify`: certified radius of every test input for a trained checkpoint.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use lmt_analysis::write_atomic;
use lmt_core::{certify_prop1, certify_prop2, Certificate, CertifiedBound, PowerConfig};
use lmt_models::{CertifyMethod, Ctx, Lip};
use lmt_train::batch_tensors;

use crate::run::{load_data, load_trained, manifest};
use crate::DataArgs;
use lmt_analysis::stats::median;

/// Flags of `certify`.
#[derive(Debug, clap::Args)]
pub struct CertifyArgs {
    /// The checkpoint.safetensors written by `train` (its config.yaml must sit beside it).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output directory for certificates.csv, summary and manifest (default: the checkpoint's directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Bound method: auto (dense where it fits), dense, power, fft, cor1, cisse, peck.
    #[arg(long, default_value = "auto")]
    pub method: String,
    /// 2 (per class pair, the paper's) or 1 (whole network).
    #[arg(long, default_value_t = 2)]
    pub proposition: u8,
    /// Certify only the first N test images.
    #[arg(long)]
    pub test_subset: Option<usize>,
    #[command(flatten)]
    pub data: DataArgs,
}

fn method(name: &str) -> Result<CertifyMethod> {
    Ok(match name {
        "auto" => CertifyMethod::Auto,
        "dense" => CertifyMethod::Dense,
        "power" => CertifyMethod::Power(PowerConfig::default()),
        "fft" => CertifyMethod::Fft,
        "cor1" => CertifyMethod::Cor1,
        "cisse" => CertifyMethod::Cisse,
        "peck" => CertifyMethod::Peck,
        other => bail!("--method {other}: use one of auto, dense, power, fft, cor1, cisse, peck"),
    })
}

/// Writes `certificates.csv` (index, label, prediction, margin, radius, proposition, bound_method) and
/// `certify_summary.txt`, and prints the summary.
pub fn run(args: &CertifyArgs) -> Result<()> {
    let started = Instant::now();
    let trained = load_trained(&args.checkpoint)?;
    let (cfg, built, dir) = (&trained.config, &trained.built, trained.dir.clone());
    let m = method(&args.method)?;
    let dev = Device::Cpu;

    let data = load_data(&cfg.dataset, &args.data)?;
    let t_bound = Instant::now();
    let [c, h, w] = data.test.image_shape();
    let x0 = Tensor::zeros((1, c, h, w), DType::F32, &dev)?;
    let out = built
        .model
        .forward(&x0, Lip::Certified(CertifiedBound::one()), &Ctx::eval(m))?;
    let (l_sub, l) = (
        out.l_sub
            .certified()
            .context("the model returned no certified bound")?,
        out.l
            .certified()
            .context("the model returned no certified bound")?,
    );
    let bound_seconds = t_bound.elapsed().as_secs_f64();

    let n = args
        .test_subset
        .unwrap_or(data.test.len())
        .min(data.test.len());
    let last = built
        .model
        .last_weight()
        .context("the model has no last linear layer")?;
    let w: Vec<f64> = last.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
    let (classes, dim) = last.dims2()?;
    let mut certs: Vec<Certificate> = Vec::with_capacity(n);
    for start in (0..n).step_by(1000) {
        let idx: Vec<usize> = (start..(start + 1000).min(n)).collect();
        let (x, _) = batch_tensors(&data.test, &idx, &dev)?;
        let z: Vec<f32> = built
            .model
            .forward(&x, Lip::None, &Ctx::eval(m))?
            .logits
            .flatten_all()?
            .to_vec1()?;
        let labels: Vec<usize> = idx.iter().map(|&i| data.test.labels[i] as usize).collect();
        certs.extend(match args.proposition {
            1 => certify_prop1(&z, classes, &labels, &l)?,
            2 => certify_prop2(&z, classes, &labels, &l_sub, &w, dim)?,
            p => bail!("--proposition {p}: use 1 or 2"),
        });
    }
    let out_dir = args.out.clone().unwrap_or(dir);
    let mut csv = String::from("index,label,prediction,margin,radius,proposition,bound_method\n");
    for (i, c) in certs.iter().enumerate() {
        let pred = c.prediction.map(|p| p.to_string()).unwrap_or_default();
        csv.push_str(&format!(
            "{i},{},{pred},{},{},{},{}\n",
            c.label,
            c.margin,
            c.radius,
            c.proposition.name(),
            c.method
        ));
    }
    write_atomic(&out_dir.join("certificates.csv"), csv.as_bytes())?;

    let radii: Vec<f64> = certs.iter().map(|c| c.radius).collect();
    let median = median(&radii);
    let acc = certs
        .iter()
        .filter(|c| c.prediction == Some(c.label))
        .count() as f64
        / n as f64;
    let mut summary = format!(
        "model {} ({} profile{}), checkpoint {}\n{n} {} test images; proposition {}; bound method {}\n\
         certified upper bounds: L_sub = {:.6} ({}), L = {:.6} ({}), computed in {bound_seconds:.1} s\n\
         clean accuracy {acc:.4}\nmedian certified radius (misclassified count as 0): {median:.6}\n",
        cfg.name, trained.profile, if trained.reduced { ", REDUCED budget" } else { "" }, args.checkpoint.display(),
        data.name, args.proposition, l_sub.method(), l_sub.value(), l_sub.method(), l.value(), l.method()
    );
    for eps in [0.1, 0.3, 0.5, 1.0] {
        let k = certs.iter().filter(|c| c.certified_at(eps)).count();
        summary.push_str(&format!(
            "certified accuracy at L2 radius {eps}: {:.4}\n",
            k as f64 / n as f64
        ));
    }
    print!("{summary}");
    write_atomic(&out_dir.join("certify_summary.txt"), summary.as_bytes())?;
    let reduced = trained.reduced || n < data.test.len();
    let wall = started.elapsed().as_secs_f64();
    manifest(
        format!("certify {}", cfg.name),
        &trained.profile,
        reduced,
        trained.config_text.clone(),
        cfg.seed,
        &data,
        wall,
    )
    .write(&out_dir.join("certify_manifest.json"))?;
    Ok(())
}
