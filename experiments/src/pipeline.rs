//! The shared steps of the paper's experiments: budgets per profile, and train / certify / attack steps
//! that skip work already done, so an interrupted `reproduce` resumes where it stopped.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::DataArgs;

/// Flags shared by fig3, fig4, fig5, curves, table1 and reproduce.
#[derive(Debug, Clone, clap::Args)]
pub struct AnalysisArgs {
    /// Budget profile: smoke, quick, overnight or paper (anything but paper is REDUCED and says so).
    #[arg(long, default_value = "quick", value_parser = PROFILES)]
    pub profile: String,
    /// Root of the result tables (written to <results>/<profile>/).
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Root of the figures (written to <figures>/<profile>/).
    #[arg(long, default_value = "figures")]
    pub figures: PathBuf,
    /// fig4: compute (B) and (C) on the first N of its points only (default: all). They cost 100 forward
    /// and backward passes of 10 x 50 images per batch of 50; the outputs say when they cover fewer points.
    #[arg(long)]
    pub lower_points: Option<usize>,
    /// Restrict fig4 to some MNIST models (comma-separated: naive, AT, LMT; default all three).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    #[command(flatten)]
    pub data: DataArgs,
}

/// The profiles: every config has them (`paper` is the config as written).
pub const PROFILES: [&str; 4] = ["smoke", "quick", "overnight", "paper"];

/// How much of the test set each analysis uses, per profile (training budgets live in the configs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Test points of Figure 4 (the paper: all 10,000).
    pub fig4_points: usize,
    /// Gaussian draws of the local lower bound per batch (the authors: 100).
    pub draws: usize,
    /// Test points of Table 1 for the clean, certified and strongest-attack columns (the paper: all
    /// 26,032 SVHN test images).
    pub table1_points: usize,
    /// Of them, the first this many attacked with C&W (the paper's column).
    pub table1_cw_points: usize,
    /// PGD-L2 steps of the strongest attack at each size.
    pub pgd_steps: usize,
    /// PGD-L2 restarts (the first from the input, the others random).
    pub pgd_restarts: usize,
    /// C&W iterations per binary-search step in Table 1 (the paper: 100).
    pub cw_iterations: usize,
    /// C&W binary-search steps in Table 1 (the paper: 9).
    pub cw_binary_steps: usize,
}

impl Budget {
    /// The budget of `profile`; anything but `paper` is reduced.
    pub fn of(profile: &str) -> Budget {
        match profile {
            "paper" => Budget {
                fig4_points: 10_000,
                draws: 100,
                table1_points: usize::MAX,
                table1_cw_points: usize::MAX,
                cw_iterations: 100,
                cw_binary_steps: 9,
                pgd_steps: 100,
                pgd_restarts: 2,
            },
            // The longer CPU profile a user runs overnight (Table 1's training budgets are in the
            // configs' `overnight` profiles).
            "overnight" => Budget {
                fig4_points: 10_000,
                draws: 20,
                table1_points: 2_000,
                table1_cw_points: 500,
                cw_iterations: 100,
                cw_binary_steps: 9,
                pgd_steps: 100,
                pgd_restarts: 2,
            },
            // (B) and (C) with the authors' 100 draws cost ~0.8 s per point on 2 cores; 20 draws keep
            // Figure 4 near 15 minutes. C&W 100 x 9 costs about 1.2 s per image on a WRN-16-1 on 2 cores,
            // so 200 points take 4 minutes per model.
            "quick" => Budget {
                fig4_points: 1_000,
                draws: 20,
                table1_points: 500,
                table1_cw_points: 200,
                cw_iterations: 100,
                cw_binary_steps: 9,
                pgd_steps: 50,
                pgd_restarts: 1,
            },
            _ => Budget {
                fig4_points: 100,
                draws: 3,
                table1_points: 10,
                table1_cw_points: 10,
                cw_iterations: 5,
                cw_binary_steps: 2,
                pgd_steps: 5,
                pgd_restarts: 1,
            },
        }
    }

    /// Whether this budget is below the paper's analysis (Table 1 always is on CPU: the paper attacks all
    /// 26,032 SVHN test images).
    pub fn reduced(&self) -> bool {
        self.fig4_points < 10_000 || self.draws < 100 || self.cw_iterations < 100
    }
}

/// `<results>/<profile>/<config>` (or `standin_<fashion|mnist>_<config>` on the SVHN stand-in, so no
/// two data sets ever mix).
pub fn run_dir(a: &AnalysisArgs, config: &str) -> PathBuf {
    let name = if a.data.svhn_stand_in {
        let base = match crate::run::stand_in(&a.data) {
            crate::StandIn::Fashion => "fashion",
            crate::StandIn::Mnist => "mnist",
        };
        format!("standin_{base}_{config}")
    } else {
        config.to_string()
    };
    a.results.join(&a.profile).join(name)
}

/// True when `file` exists and is at least as new as `than`.
fn fresh(file: &Path, than: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((m(file), m(than)), (Some(f), Some(t)) if f >= t)
}

/// Whether a result file in a run directory belongs to the run's current checkpoint: it is at least as
/// new as `<dir>/checkpoint.safetensors`, or there is no checkpoint (committed results on a fresh clone,
/// where files carry checkout times). A file older than the checkpoint came from an earlier model.
pub fn current(file: &Path) -> bool {
    let ckpt = file.with_file_name("checkpoint.safetensors");
    !ckpt.is_file() || fresh(file, &ckpt)
}

/// Trains `config` under the profile (resuming; nothing to do when complete); returns the checkpoint.
pub fn ensure_trained(a: &AnalysisArgs, config: &str) -> Result<PathBuf> {
    let out = run_dir(a, config);
    crate::train::run(&crate::train::TrainArgs {
        config: config.to_string(),
        profile: a.profile.clone(),
        out: Some(out.clone()),
        resume: true,
        force: false,
        stop_after_steps: None,
        no_progress: false,
        data: a.data.clone(),
    })
    .with_context(|| format!("training {config}"))?;
    Ok(out.join("checkpoint.safetensors"))
}

/// Certifies the first `points` test inputs of `ckpt` (all when `None`) unless certificates newer than
/// the checkpoint cover them.
pub fn ensure_certified(a: &AnalysisArgs, ckpt: &Path, points: Option<usize>) -> Result<()> {
    let dir = ckpt.parent().unwrap_or(Path::new("."));
    let certs = dir.join("certificates.csv");
    if fresh(&certs, ckpt) {
        let rows = std::fs::read_to_string(&certs)
            .map(|t| t.lines().count().saturating_sub(1))
            .unwrap_or(0);
        if points.is_some_and(|p| rows >= p)
            || (points.is_none() && rows > 0 && rows_complete(ckpt, rows))
        {
            return Ok(());
        }
    }
    crate::certify::run(&crate::certify::CertifyArgs {
        model: crate::subject::ModelArgs::checkpoint(ckpt),
        out: None,
        method: crate::certify::MethodName::Auto,
        proposition: Some(2),
        test_subset: points.map(|p| p as u64),
        data: a.data.clone(),
    })
    .with_context(|| format!("certifying {}", ckpt.display()))
}

/// Whether `rows` certificates cover the whole test set of the run (its certify summary says how many).
fn rows_complete(ckpt: &Path, rows: usize) -> bool {
    let summary = ckpt.with_file_name("certify_summary.txt");
    std::fs::read_to_string(summary)
        .ok()
        .and_then(|t| {
            t.lines()
                .nth(1)
                .and_then(|l| l.split_whitespace().next()?.parse::<usize>().ok())
        })
        .is_some_and(|n| n == rows && n >= 10_000)
}

/// The rows of `attack_<label>.csv` beside `ckpt`, if it is newer than the checkpoint.
pub fn attack_rows(ckpt: &Path, label: &str) -> usize {
    let dir = ckpt.parent().unwrap_or(Path::new("."));
    let f = dir.join(format!("attack_{label}.csv"));
    if !fresh(&f, ckpt) {
        return 0;
    }
    std::fs::read_to_string(&f)
        .map(|t| t.lines().count().saturating_sub(1))
        .unwrap_or(0)
}

/// Runs an attack on the first `points` test inputs unless a result at least that large is on disk.
/// `label` is the file label (`deepfool`, `deepfool_clip`, `cw`), `attack` the `--attack` value.
pub fn ensure_attacked(
    a: &AnalysisArgs,
    ckpt: &Path,
    label: &str,
    points: usize,
    configure: impl FnOnce(&mut crate::attack::AttackArgs),
) -> Result<()> {
    if attack_rows(ckpt, label) >= points {
        return Ok(());
    }
    let mut args = crate::attack::AttackArgs::new(ckpt, label, a.data.clone());
    args.test_subset = Some(points as u64);
    configure(&mut args);
    crate::attack::run(&args).with_context(|| format!("attacking {} ({label})", ckpt.display()))
}

#[cfg(test)]
mod tests {
    use super::current;
    use std::time::{Duration, SystemTime};

    fn touch(path: &std::path::Path, age_s: u64) {
        let f = std::fs::File::create(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_s))
            .unwrap();
    }

    #[test]
    fn a_result_older_than_the_checkpoint_is_not_current() {
        let dir = tempfile::tempdir().unwrap();
        let attack = dir.path().join("attack_cw.csv");
        touch(&attack, 100);
        assert!(current(&attack), "no checkpoint: committed results count");
        touch(&dir.path().join("checkpoint.safetensors"), 50);
        assert!(
            !current(&attack),
            "made before the checkpoint: an earlier model"
        );
        touch(&attack, 10);
        assert!(current(&attack), "made after the checkpoint");
    }
}
