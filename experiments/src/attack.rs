//! `experiments attack`: C&W, DeepFool or PGD against every test input of a checkpoint, with a check
//! against the certificates of the same inputs.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use lmt_analysis::write_atomic;
use lmt_attacks::{
    carlini_wagner, deepfool, pgd, Adversarial, CwConfig, DeepFoolConfig, LogitsFn, PgdConfig,
};
use lmt_models::Classifier;
use lmt_train::batch_tensors;

use crate::run::{load_data, load_trained, manifest};
use crate::DataArgs;
use lmt_analysis::stats::median;

/// Flags of `attack`.
#[derive(Debug, clap::Args)]
pub struct AttackArgs {
    /// The checkpoint.safetensors written by `train` (its config.yaml must sit beside it).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// cw (C&W L2, the paper's Table 1 attack), deepfool (the paper's Fig. 4 (D)) or pgd (PGD-L2).
    #[arg(long)]
    pub attack: String,
    /// Output directory (default: the checkpoint's directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Attack only the first N test images.
    #[arg(long)]
    pub test_subset: Option<usize>,
    /// Images per attack batch.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// C&W: Adam iterations per binary-search step (the paper's evaluation uses 100).
    #[arg(long, default_value_t = 100)]
    pub cw_iterations: usize,
    /// C&W: binary-search steps over the constant.
    #[arg(long, default_value_t = 9)]
    pub cw_binary_steps: usize,
    /// C&W: the first constant of the binary search.
    #[arg(long, default_value_t = 1e-3)]
    pub cw_initial_const: f64,
    /// C&W: Adam's step size in tanh space (the authors' 0.01 needs ~700 steps to move a saturated MNIST
    /// pixel, whose tanh variable starts at +-7.25).
    #[arg(long, default_value_t = 1e-2)]
    pub cw_lr: f64,
    /// DeepFool: clip iterates to [0, 1] (off, as in the paper).
    #[arg(long)]
    pub deepfool_clip: bool,
    /// PGD: radius of the L2 ball (required for pgd).
    #[arg(long)]
    pub epsilon: Option<f64>,
    /// PGD: steps per restart.
    #[arg(long, default_value_t = 50)]
    pub pgd_steps: usize,
    /// PGD: restarts (the first from the input, the others random).
    #[arg(long, default_value_t = 1)]
    pub restarts: usize,
    /// Seed of PGD's random starts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Certificates to check against (default: certificates.csv in the output directory, if present).
    #[arg(long)]
    pub certificates: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
}

impl AttackArgs {
    /// The defaults of the command line for `checkpoint` and an attack label (`cw`, `deepfool`,
    /// `deepfool_clip` or `pgd`).
    pub fn new(checkpoint: &std::path::Path, label: &str, data: DataArgs) -> Self {
        AttackArgs {
            checkpoint: checkpoint.to_path_buf(),
            attack: label.trim_end_matches("_clip").to_string(),
            out: None,
            test_subset: None,
            batch_size: 100,
            cw_iterations: 100,
            cw_binary_steps: 9,
            cw_initial_const: 1e-3,
            cw_lr: 1e-2,
            deepfool_clip: label.ends_with("_clip"),
            epsilon: None,
            pgd_steps: 50,
            restarts: 1,
            seed: 0,
            certificates: None,
            data,
        }
    }
}

/// One attack, configured from the flags.
enum Attack {
    Cw(CwConfig),
    DeepFool(DeepFoolConfig),
    Pgd(PgdConfig),
}

impl Attack {
    fn from_args(a: &AttackArgs) -> Result<Self> {
        Ok(match a.attack.as_str() {
            "cw" => Attack::Cw(CwConfig {
                iterations: a.cw_iterations,
                binary_steps: a.cw_binary_steps,
                initial_const: a.cw_initial_const,
                lr: a.cw_lr,
                ..CwConfig::default()
            }),
            "deepfool" => Attack::DeepFool(DeepFoolConfig {
                clip: a.deepfool_clip,
                ..DeepFoolConfig::default()
            }),
            "pgd" => {
                let Some(eps) = a.epsilon else {
                    bail!("--attack pgd needs --epsilon (the L2 radius of the ball)");
                };
                let mut cfg = PgdConfig::new(eps, a.pgd_steps);
                cfg.restarts = a.restarts;
                cfg.seed = a.seed;
                Attack::Pgd(cfg)
            }
            other => bail!("--attack {other}: use cw, deepfool or pgd"),
        })
    }

    /// The file-name label: the attack, plus `_clip` for DeepFool with clipping.
    fn label(&self) -> &'static str {
        match self {
            Attack::Cw(_) => "cw",
            Attack::DeepFool(d) if d.clip => "deepfool_clip",
            Attack::DeepFool(_) => "deepfool",
            Attack::Pgd(_) => "pgd",
        }
    }

    fn describe(&self) -> String {
        match self {
            Attack::Cw(c) => format!(
                "C&W L2: {} iterations x {} binary steps, initial constant {}, lr {}, confidence {}",
                c.iterations, c.binary_steps, c.initial_const, c.lr, c.confidence
            ),
            Attack::DeepFool(d) => format!(
                "DeepFool L2: overshoot {}, at most {} iterations, clipping {}",
                d.overshoot,
                d.max_iterations,
                if d.clip { "on" } else { "off" }
            ),
            Attack::Pgd(p) => format!(
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
            Attack::Cw(c) => carlini_wagner(f, x, labels, c)?.per_input,
            Attack::DeepFool(d) => deepfool(f, x, labels, d)?.per_input,
            Attack::Pgd(p) => {
                let cfg = PgdConfig {
                    seed: p.seed.wrapping_add(start as u64),
                    ..p.clone()
                };
                pgd(f, x, labels, &cfg)?.per_input
            }
        })
    }
}

/// Reads the radius column of a certificates.csv written by `certify`, keyed by index.
fn read_radii(path: &std::path::Path) -> Result<Vec<(usize, usize, f64)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("{}: no `{name}` column", path.display()))
    };
    let (ci, cl, cr) = (col("index")?, col("label")?, col("radius")?);
    lines
        .enumerate()
        .map(|(row, line)| {
            let f: Vec<&str> = line.split(',').collect();
            let get = |c: usize| {
                f.get(c)
                    .with_context(|| format!("{} row {}: too few fields", path.display(), row + 2))
            };
            Ok((
                get(ci)?.parse()?,
                get(cl)?.parse()?,
                get(cr)?.parse::<f64>()?,
            ))
        })
        .collect()
}

/// Writes `attack_<label>.csv` (index, label, success, distance, iterations, certified_radius) and
/// `attack_<label>_summary.txt` (label: cw, deepfool, deepfool_clip or pgd); fails loudly if a successful attack lies inside a certified radius.
pub fn run(args: &AttackArgs) -> Result<()> {
    let started = Instant::now();
    let attack = Attack::from_args(args)?;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let trained = load_trained(&args.checkpoint)?;
    let model: &dyn Classifier = trained.built.model.as_ref();
    let f = |x: &candle_core::Tensor| model.eval_logits(x);
    let data = load_data(&trained.config.dataset, &args.data)?;
    let n = args
        .test_subset
        .unwrap_or(data.test.len())
        .min(data.test.len());
    let out_dir = args.out.clone().unwrap_or(trained.dir.clone());
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let cert_path = args
        .certificates
        .clone()
        .unwrap_or(out_dir.join("certificates.csv"));
    let radii = if cert_path.is_file() {
        Some(read_radii(&cert_path)?)
    } else if args.certificates.is_some() {
        bail!("--certificates {}: no such file", cert_path.display());
    } else {
        None
    };

    eprintln!(
        "attacking {n} {} test images of {} with {}",
        data.name,
        trained.config.name,
        attack.describe()
    );
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("attack [{bar:30}] {pos}/{len} images {msg} ({eta})")
            .expect("valid template"),
    );
    let t_attack = Instant::now();
    let mut results: Vec<Adversarial> = Vec::with_capacity(n);
    let mut labels: Vec<usize> = Vec::with_capacity(n);
    for start in (0..n).step_by(args.batch_size) {
        let idx: Vec<usize> = (start..(start + args.batch_size).min(n)).collect();
        let (x, _) = batch_tensors(&data.test, &idx, &Device::Cpu)?;
        let l: Vec<usize> = idx.iter().map(|&i| data.test.labels[i] as usize).collect();
        results.extend(attack.run(&f, &x, &l, start)?);
        labels.extend(l);
        let found = results.iter().filter(|a| a.success).count();
        bar.set_position(results.len() as u64);
        bar.set_message(format!("{found} succeeded"));
    }
    bar.finish_and_clear();
    let attack_seconds = t_attack.elapsed().as_secs_f64();

    // Consistency with the certificates: no success inside a certified radius.
    let mut violations = Vec::new();
    let mut radius_of = vec![None; n];
    if let Some(r) = &radii {
        for &(i, label, radius) in r {
            if i < n {
                if label != labels[i] {
                    bail!(
                        "{}: row {i} has label {label} but test image {i} has label {}; the certificates are for other inputs",
                        cert_path.display(),
                        labels[i]
                    );
                }
                radius_of[i] = Some(radius);
            }
        }
        for (i, a) in results.iter().enumerate() {
            if let (Some(d), Some(r)) = (a.distance, radius_of[i]) {
                if a.success && d < r {
                    violations.push((i, d, r));
                }
            }
        }
    }

    let mut csv = String::from("index,label,success,distance,iterations,certified_radius\n");
    for (i, a) in results.iter().enumerate() {
        csv.push_str(&format!(
            "{i},{},{},{},{},{}\n",
            labels[i],
            a.success,
            a.distance.map(|d| d.to_string()).unwrap_or_default(),
            a.iterations,
            radius_of[i].map(|r| r.to_string()).unwrap_or_default()
        ));
    }
    let name = attack.label();
    write_atomic(&out_dir.join(format!("attack_{name}.csv")), csv.as_bytes())?;

    let successes: Vec<f64> = results.iter().filter_map(|a| a.distance).collect();
    let failures = n - successes.len();
    // Failures count as infinitely far: the median over all inputs is then honest.
    let all: Vec<f64> = results
        .iter()
        .map(|a| a.distance.unwrap_or(f64::INFINITY))
        .collect();
    let clean_wrong = results.iter().filter(|a| a.distance == Some(0.0)).count();
    let mut summary = format!(
        "model {} ({} profile{}), checkpoint {}\n{n} {} test images; {}\n\
         attack distances are empirical UPPER bounds on each input's minimal adversarial distance\n\
         succeeded {} (of which {clean_wrong} already misclassified, distance 0), failed {failures}\n\
         median distance over all inputs (failures count as infinite): {:.6}\n\
         median distance over successes: {:.6}\n\
         attack time {attack_seconds:.1} s, {:.2} ms per image\n",
        trained.config.name,
        trained.profile,
        if trained.reduced { ", REDUCED budget" } else { "" },
        args.checkpoint.display(),
        data.name,
        attack.describe(),
        successes.len(),
        median(&all),
        median(&successes),
        1000.0 * attack_seconds / n.max(1) as f64,
    );
    for eps in [0.2, 0.5, 1.0] {
        let robust = all.iter().filter(|&&d| d > eps).count();
        summary.push_str(&format!(
            "accuracy under this attack at L2 size {eps}: {:.4} (an empirical upper bound on robust accuracy)\n",
            robust as f64 / n.max(1) as f64
        ));
    }
    match &radii {
        None => summary.push_str("no certificates found beside the checkpoint; run `experiments certify` first to check consistency\n"),
        Some(_) if violations.is_empty() => summary.push_str(&format!(
            "consistency with {}: no successful attack inside a certified radius\n",
            cert_path.display()
        )),
        Some(_) => summary.push_str(&format!(
            "VIOLATION: {} successful attacks inside their certified radius (a bug in a bound, the certifier or the attack): {:?}\n",
            violations.len(),
            &violations[..violations.len().min(10)]
        )),
    }
    print!("{summary}");
    write_atomic(
        &out_dir.join(format!("attack_{name}_summary.txt")),
        summary.as_bytes(),
    )?;
    manifest(
        format!("attack {name} {}", trained.config.name),
        &trained.profile,
        trained.reduced || n < data.test.len(),
        trained.config_text.clone(),
        args.seed,
        &data,
        started.elapsed().as_secs_f64(),
    )
    .write(&out_dir.join(format!("attack_{name}_manifest.json")))?;
    if !violations.is_empty() {
        bail!(
            "{} successful attacks lie inside certified radii; see {}",
            violations.len(),
            out_dir.join(format!("attack_{name}_summary.txt")).display()
        );
    }
    Ok(())
}
