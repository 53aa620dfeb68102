//! `experiments attack`: C&W, DeepFool or PGD against every test input of a checkpoint or an ONNX
//! model, with a check against the certificates of the same inputs.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lmt_analysis::write_atomic;
use lmt_attacks::{CwConfig, DeepFoolConfig, PgdConfig};
use lmt_eval::{AttackSpec, AttackSummary, CertificateRow};

use crate::subject::{ModelArgs, Subject};
use crate::DataArgs;

/// The attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttackName {
    /// C&W L2 (the paper's Table 1 attack).
    Cw,
    /// DeepFool L2 (the paper's Fig. 4 (D)).
    Deepfool,
    /// PGD-L2 at one radius (--epsilon).
    Pgd,
}

/// Flags of `attack`.
#[derive(Debug, clap::Args)]
pub struct AttackArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The attack.
    #[arg(long, value_enum)]
    pub attack: AttackName,
    /// Output directory (default: the checkpoint's directory, or results/onnx/<model name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Attack only the first N test images.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub test_subset: Option<u64>,
    /// Images per attack batch.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
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
    /// C&W: optimise the batch mean of the objectives, as the authors' code does (default: the sum, so
    /// an input's result does not depend on its batch).
    #[arg(long)]
    pub cw_batch_mean: bool,
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
    /// `deepfool_clip` or `pgd_<epsilon>`).
    pub fn new(checkpoint: &std::path::Path, label: &str, data: DataArgs) -> Self {
        let epsilon = label.strip_prefix("pgd_").and_then(|e| e.parse().ok());
        let attack = match label.trim_end_matches("_clip") {
            "cw" => AttackName::Cw,
            _ if epsilon.is_some() => AttackName::Pgd,
            _ => AttackName::Deepfool,
        };
        AttackArgs {
            model: ModelArgs::checkpoint(checkpoint),
            attack,
            out: None,
            test_subset: None,
            batch_size: 100,
            cw_iterations: 100,
            cw_binary_steps: 9,
            cw_initial_const: 1e-3,
            cw_lr: 1e-2,
            cw_batch_mean: false,
            deepfool_clip: label.ends_with("_clip"),
            epsilon,
            pgd_steps: 50,
            restarts: 1,
            seed: 0,
            certificates: None,
            data,
        }
    }

    /// The attack the flags describe.
    pub fn spec(&self) -> Result<AttackSpec> {
        Ok(match self.attack {
            AttackName::Cw => AttackSpec::Cw(CwConfig {
                iterations: self.cw_iterations,
                binary_steps: self.cw_binary_steps,
                initial_const: self.cw_initial_const,
                lr: self.cw_lr,
                batch_mean: self.cw_batch_mean,
                ..CwConfig::default()
            }),
            AttackName::Deepfool => AttackSpec::DeepFool(DeepFoolConfig {
                clip: self.deepfool_clip,
                ..DeepFoolConfig::default()
            }),
            AttackName::Pgd => {
                let Some(eps) = self.epsilon else {
                    bail!("--attack pgd needs --epsilon (the L2 radius of the ball)");
                };
                let mut cfg = PgdConfig::new(eps, self.pgd_steps);
                cfg.restarts = self.restarts;
                cfg.seed = self.seed;
                AttackSpec::Pgd(cfg)
            }
        })
    }
}

/// Writes `attack_<label>.csv` (index, label, success, distance, iterations, certified_radius) and
/// `attack_<label>_summary.txt` (label: cw, deepfool, deepfool_clip or pgd); fails loudly if a
/// successful attack lies inside a certified radius.
pub fn run(args: &AttackArgs) -> Result<()> {
    let started = Instant::now();
    let spec = args.spec()?;
    let s = Subject::load(&args.model, &args.data)?;
    let n = args
        .test_subset
        .map_or(s.data.test.len(), |k| k as usize)
        .min(s.data.test.len());
    let out_dir = args.out.clone().unwrap_or_else(|| s.dir.clone());
    crate::run::check_writable(&out_dir)?;
    let cert_path = args
        .certificates
        .clone()
        .unwrap_or(out_dir.join("certificates.csv"));
    let certs: Option<Vec<CertificateRow>> = if cert_path.is_file() {
        // Certificates of another model would make the check meaningless: their manifest must name the
        // model attacked here.
        let recorded =
            lmt_analysis::Manifest::provenance_at(&crate::pipeline::manifest_of(&cert_path));
        match recorded {
            Some(p) if p.model_sha256 == s.model_sha256 => {
                Some(lmt_eval::read_csv_file(&cert_path)?)
            }
            Some(_) => bail!(
                "{}: these certificates are of another model than {} (their manifest records another digest); certify this model first",
                cert_path.display(),
                s.name
            ),
            None => bail!(
                "{}: no manifest records which model these certificates are of; certify this model again (experiments certify)",
                cert_path.display()
            ),
        }
    } else if args.certificates.is_some() {
        bail!("--certificates {}: no such file", cert_path.display());
    } else {
        None
    };

    eprintln!(
        "attacking {n} {} test images of {} with {}",
        s.data.name,
        s.name,
        spec.describe()
    );
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("attack [{bar:30}] {pos}/{len} images {msg} ({eta})")
            .expect("valid template"),
    );
    let t_attack = Instant::now();
    let indices: Vec<usize> = (0..n).collect();
    // A killed sweep resumes from the whole batches it saved, if they are of this model and attack.
    let name = spec.label();
    let batch = args.batch_size as usize;
    let partial = out_dir.join(format!("attack_{name}.partial.csv"));
    let partial_key = out_dir.join(format!("attack_{name}.partial.key"));
    let key = format!(
        "{}\nmodel sha256 {}\nbatch {batch}\npoints {n}\n",
        spec.describe(),
        s.model_sha256
    );
    let mut rows: Vec<lmt_eval::AttackRow> = match std::fs::read_to_string(&partial_key) {
        Ok(k) if k == key && partial.is_file() => lmt_eval::read_csv_file(&partial)?,
        _ => Vec::new(),
    };
    rows.truncate(rows.len() / batch * batch);
    if !rows.is_empty() {
        eprintln!(
            "resuming after the {} inputs saved in {}",
            rows.len(),
            partial.display()
        );
    }
    write_atomic(&partial_key, key.as_bytes())?;
    let saved = rows.clone();
    let mut save_error = None;
    let fresh = lmt_eval::attack(
        s.model.as_ref(),
        &s.data.test,
        &indices[rows.len()..],
        &spec,
        batch,
        &mut |new| {
            let found = saved.iter().chain(new).filter(|r| r.success).count();
            bar.set_position((saved.len() + new.len()) as u64);
            bar.set_message(format!("{found} succeeded"));
            let all: Vec<lmt_eval::AttackRow> = saved.iter().chain(new).cloned().collect();
            if let Err(e) = lmt_eval::to_csv(&all).map(|b| write_atomic(&partial, &b)) {
                save_error.get_or_insert(e.to_string());
            }
        },
    )?;
    if let Some(e) = save_error {
        bail!("saving progress to {}: {e}", partial.display());
    }
    rows.extend(fresh);
    bar.finish_and_clear();
    let attack_seconds = t_attack.elapsed().as_secs_f64();
    let violations = match &certs {
        Some(c) => lmt_eval::check_against(&mut rows, c)
            .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?,
        None => Vec::new(),
    };
    write_atomic(
        &out_dir.join(format!("attack_{name}.csv")),
        &lmt_eval::to_csv(&rows)?,
    )?;

    let mut summary = format!(
        "model {} ({} profile{})\n{n} {} test images; {}\n{}attack time {attack_seconds:.1} s, {:.2} ms per image\n",
        s.name,
        s.profile,
        s.reduced_tag(),
        s.data.name,
        spec.describe(),
        AttackSummary::of(&rows, &[0.2, 0.5, 1.0, 1.58]),
        1000.0 * attack_seconds / n.max(1) as f64,
    );
    match &certs {
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
    s.manifest(
        format!("attack {name} {}", s.name),
        s.reduced || n < s.data.test.len(),
        args.seed,
        started.elapsed().as_secs_f64(),
        Some((spec.describe(), n)),
    )
    .write(&out_dir.join(format!("attack_{name}_manifest.json")))?;
    let _ = std::fs::remove_file(&partial);
    let _ = std::fs::remove_file(&partial_key);
    if !violations.is_empty() {
        bail!(
            "{} successful attacks lie inside certified radii; see {}",
            violations.len(),
            out_dir.join(format!("attack_{name}_summary.txt")).display()
        );
    }
    Ok(())
}
