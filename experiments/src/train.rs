//! `experiments train`: run one paper config under a profile.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use lmt_analysis::write_atomic;
use lmt_models::Classifier;
use lmt_train::{train, Adversary, RunOptions};

use crate::run::{build, load_config, load_data, manifest};
use crate::DataArgs;

/// Flags of `train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Config name in experiments/configs/ (e.g. mnist_lmt_c1) or a path to a YAML file.
    #[arg(long)]
    pub config: String,
    /// Budget profile: one the config defines (smoke, quick, overnight; the modern configs: sweep and
    /// long) or paper (the config as written).
    #[arg(long, default_value = "quick")]
    pub profile: String,
    /// Output directory (default results/<profile>/<config name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from <out>/checkpoint.safetensors (refused if the config or profile differs from the
    /// run's config.yaml).
    #[arg(long)]
    pub resume: bool,
    /// Start over in an output directory that already holds a run (its checkpoint and log are replaced).
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Stop after this many steps (with a checkpoint); resume later with --resume.
    #[arg(long)]
    pub stop_after_steps: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub data: DataArgs,
}

/// Trains and writes checkpoint, log.csv, config.yaml and manifest.json to the output directory.
pub fn run(args: &TrainArgs) -> Result<()> {
    let started = Instant::now();
    let (cfg, cfg_path) = load_config(&args.config)?;
    let plan = cfg
        .plan(&args.profile)
        .with_context(|| format!("in {}", cfg_path.display()))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("results").join(&plan.profile).join(&cfg.name));
    let ckpt = out.join("checkpoint.safetensors");
    let resolved = serde_norway::to_string(&plan)?;
    let has_run = ckpt.is_file() || out.join("log.csv").is_file();
    if has_run && !args.resume && !args.force {
        bail!(
            "{} already holds a run; pass --resume to continue it or --force to start over (its checkpoint and log are replaced)",
            out.display()
        );
    }
    if args.resume && ckpt.is_file() {
        if let Ok(old) = std::fs::read_to_string(out.join("config.yaml")) {
            if !same_run(&old, &resolved) {
                let diff: Vec<String> = resolved
                    .lines()
                    .zip(old.lines().chain(std::iter::repeat("")))
                    .filter(|(a, b)| a != b)
                    .take(5)
                    .map(|(a, b)| format!("now `{}`, was `{}`", a.trim(), b.trim()))
                    .collect();
                bail!(
                    "{}: --resume with another config or profile than the run's ({}); use another --out, or --force to start over",
                    out.display(),
                    diff.join("; ")
                );
            }
        }
    }
    let mut earlier_seconds = 0.0;
    if args.resume && ckpt.is_file() {
        let pos = lmt_train::checkpoint::position(&ckpt)?;
        if pos.epoch >= plan.epochs {
            eprintln!(
                "{}: already trained ({} epochs); nothing to do",
                out.display(),
                pos.epoch
            );
            return Ok(());
        }
        // The manifest's wall time covers every invocation of the run.
        if let Ok(text) = std::fs::read_to_string(out.join("manifest.json")) {
            earlier_seconds = earlier_wall_seconds(&text);
        }
    }
    let data = load_data(&cfg.dataset, &args.data)?;
    // The loop holds the validation images out itself; outputs name the split.
    let data_name = data
        .validation_name(plan.validation)
        .unwrap_or_else(|| data.name.clone());
    let built = build(
        &plan.model,
        cfg.seed,
        matches!(cfg.method, lmt_train::Method::Parseval { .. }),
    )?;
    write_atomic(&out.join("config.yaml"), resolved.as_bytes())?;
    eprintln!(
        "training {} ({} profile{}) on {}: {} epochs, writing to {}",
        cfg.name,
        plan.profile,
        if plan.reduced { ", REDUCED budget" } else { "" },
        data_name,
        plan.epochs,
        out.display()
    );
    let adversary = match cfg.method {
        lmt_train::Method::Adversarial {
            iterations,
            binary_steps,
            initial_const,
        } => Some(CwAdversary(lmt_attacks::CwConfig {
            iterations,
            binary_steps,
            initial_const,
            ..lmt_attacks::CwConfig::default()
        })),
        _ => None,
    };
    let opts = RunOptions {
        resume: args.resume,
        stop_after_steps: args.stop_after_steps,
        progress: !args.no_progress,
        adversary: adversary.as_ref().map(|a| a as &dyn Adversary),
    };
    let summary = train(
        &plan,
        built.model.as_ref(),
        built.params(),
        &data,
        &out,
        opts,
    )?;
    for e in &summary.epochs {
        eprintln!("epoch {:>3}: loss {:.4} train acc {:.4} test acc {:.4} c {} est. bound {:.4} ({:.1} s)", e.epoch, e.train_loss, e.train_accuracy, e.test_accuracy, e.c, e.estimated_bound, e.seconds);
    }
    let wall = earlier_seconds + started.elapsed().as_secs_f64();
    let mut manifest = manifest(
        format!("train {}", cfg.name),
        &plan.profile,
        plan.reduced,
        resolved,
        cfg.seed,
        &data,
        wall,
    );
    manifest.dataset = data_name;
    manifest.write(&out.join("manifest.json"))?;
    eprintln!("checkpoint: {}", summary.checkpoint.display());
    Ok(())
}

/// Adversarial training's attack: C&W L2 against the current model in inference mode; the batch becomes
/// the best adversarial per input, or the clean input where the attack found none.
struct CwAdversary(lmt_attacks::CwConfig);

impl Adversary for CwAdversary {
    fn perturb(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        labels: &[usize],
    ) -> std::result::Result<Tensor, Box<dyn std::error::Error + Send + Sync>> {
        let f = |x: &Tensor| model.eval_logits(x);
        Ok(lmt_attacks::carlini_wagner(&f, x, labels, &self.0)?.images)
    }
}

/// Whether two resolved runs (config.yaml texts) describe the same run: equal as YAML data, with an
/// absent key and a null one alike (an optional field a later version no longer writes when unset).
fn same_run(a: &str, b: &str) -> bool {
    fn strip(v: serde_norway::Value) -> serde_norway::Value {
        use serde_norway::Value;
        match v {
            Value::Mapping(m) => Value::Mapping(
                m.into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k, strip(v)))
                    .collect(),
            ),
            Value::Sequence(s) => Value::Sequence(s.into_iter().map(strip).collect()),
            other => other,
        }
    }
    match (
        serde_norway::from_str::<serde_norway::Value>(a),
        serde_norway::from_str::<serde_norway::Value>(b),
    ) {
        (Ok(x), Ok(y)) => strip(x) == strip(y),
        _ => a == b,
    }
}

/// The `wall_seconds` of an earlier manifest (0 if absent or unreadable; JSON is valid YAML).
fn earlier_wall_seconds(text: &str) -> f64 {
    serde_norway::from_str::<lmt_analysis::Manifest>(text)
        .map(|m| m.wall_seconds)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_null_and_an_absent_key_are_the_same_run_and_values_are_not() {
        let old =
            "config:\n  profiles:\n    long: { epochs: 100, validation: null }\nprofile: sweep\n";
        let new = "config:\n  profiles:\n    long: { epochs: 100 }\nprofile: sweep\n";
        assert!(super::same_run(old, new));
        assert!(!super::same_run(old, &new.replace("100", "101")));
        assert!(!super::same_run(old, &new.replace("sweep", "long")));
    }
}
