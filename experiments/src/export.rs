//! `experiments export`: a trained checkpoint as an ONNX file that onnxruntime and other verifiers read;
//! the file is read back and must give the same logits and the same certified bound.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lmt_analysis::write_atomic;
use lmt_models::CertifyMethod;

use crate::run::load_trained;
use crate::DataArgs;

/// Flags of `export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The checkpoint.safetensors written by `train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The ONNX file to write (default: model.onnx beside the checkpoint).
    #[arg(long)]
    pub onnx: Option<PathBuf>,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub data: DataArgs,
}

/// Writes the model, then checks the written file against the checkpoint on 100 test images.
pub fn run(args: &ExportArgs) -> Result<()> {
    let t = load_trained(&args.checkpoint)?;
    let path = args
        .onnx
        .clone()
        .unwrap_or_else(|| t.dir.join("model.onnx"));
    if path.exists() && !args.force {
        bail!("{} exists; pass --force to overwrite it", path.display());
    }
    let graph = t.built.model.to_graph()?;
    let bytes = lmt_onnx::export(&graph, &t.config.name)?;
    write_atomic(&path, &bytes)?;
    let back = lmt_onnx::load(&path).with_context(|| format!("reading back {}", path.display()))?;
    let data = crate::run::load_data(&t.config.dataset, &args.data)?;
    let idx: Vec<usize> = (0..100.min(data.test.len())).collect();
    let (x, _) = lmt_eval::batch(&data.test, &idx, &t.built.model.device())?;
    let ours: Vec<f32> = t.built.model.eval_logits(&x)?.flatten_all()?.to_vec1()?;
    let x_back = x.to_device(&lmt_models::Classifier::device(&back.graph))?;
    let theirs: Vec<f32> = lmt_models::Classifier::eval_logits(&back.graph, &x_back)?
        .flatten_all()?
        .to_vec1()?;
    let worst = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = ours.iter().fold(1f32, |m, v| m.max(v.abs()));
    let shape = data.test.image_shape();
    let (_, l) = lmt_eval::certified_bounds(t.built.model.as_ref(), shape, CertifyMethod::Auto)?;
    let (_, l_back) = lmt_eval::certified_bounds(&back.graph, shape, CertifyMethod::Auto)?;
    println!(
        "wrote {} ({} nodes, opset {}, sha256 {}): logits on {} test images within {worst:.2e} of the checkpoint's; certified L {} vs {}",
        path.display(),
        back.graph.nodes().len(),
        back.opset,
        back.sha256,
        idx.len(),
        l,
        l_back
    );
    if worst > 1e-5 * scale || (l.value() - l_back.value()).abs() > 1e-6 * l.value() {
        bail!("the exported file does not reproduce the checkpoint (logits differ by {worst}, L {} vs {}): a bug in the exporter", l.value(), l_back.value());
    }
    // The images and the checkpoint's logits beside the file, so any runtime can check it
    // (scripts/check-onnx-export.py does with onnxruntime).
    let check = path.with_extension("check.safetensors");
    let tmp = path.with_extension("check.safetensors.tmp");
    let z = t.built.model.eval_logits(&x)?;
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("inputs".to_string(), x), ("logits".to_string(), z)]),
        &tmp,
    )
    .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &check).with_context(|| format!("writing {}", check.display()))?;
    println!(
        "wrote {} (the {} images and the checkpoint's logits)",
        check.display(),
        idx.len()
    );
    Ok(())
}
