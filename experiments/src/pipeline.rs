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
    /// table1: train, certify and attack the rows in up to N processes at once, each with 1/N of the
    /// threads. The numbers are those of --jobs 1 (results do not depend on the thread count); on 2
    /// cores 2 jobs are faster, since one process leaves a core idle in its serial phases. Peak memory
    /// grows about N-fold (--jobs 1: one process, for machines short of memory).
    #[arg(long, default_value_t = 2, env = "LMT_JOBS", value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: u64,
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

/// The manifest of a derived file: `certificates.csv` -> `certify_manifest.json`,
/// `attack_<label>.csv` -> `attack_<label>_manifest.json`.
pub fn manifest_of(file: &Path) -> PathBuf {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let name = match stem.as_str() {
        "certificates" => "certify".to_string(),
        other => other.to_string(),
    };
    file.with_file_name(format!("{name}_manifest.json"))
}

/// Whether a derived file in a run directory belongs to the run's current checkpoint: its manifest
/// names the checkpoint's digest. Without a checkpoint (committed results on a fresh clone, whose
/// checkpoints are not committed) the file stands as committed.
pub fn current(file: &Path) -> bool {
    let ckpt = file.with_file_name("checkpoint.safetensors");
    if !ckpt.is_file() {
        return true;
    }
    let digest = lmt_analysis::file_sha256(&ckpt).ok();
    lmt_analysis::Manifest::provenance_at(&manifest_of(file))
        .is_some_and(|p| Some(p.model_sha256) == digest)
}

/// Whether `file` can be reused for `step` on `points` test points of `ckpt`: its manifest records this
/// checkpoint's digest, the same computation and at least as many points. Without the checkpoint (a
/// committed run read as it stands, `table1 --only`), the same computation and enough points suffice:
/// the file is then the committed result of the committed checkpoint.
pub fn reusable(file: &Path, ckpt: &Path, step: &str, points: usize) -> bool {
    let digest = if ckpt.is_file() {
        match lmt_analysis::file_sha256(ckpt) {
            Ok(d) => Some(d),
            Err(_) => return false,
        }
    } else {
        None
    };
    file.is_file()
        && lmt_analysis::Manifest::provenance_at(&manifest_of(file)).is_some_and(|p| {
            digest.as_ref().is_none_or(|d| &p.model_sha256 == d)
                && p.step == step
                && p.points >= points
        })
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

/// Certifies the first `points` test inputs of `ckpt` (all when `None`) by `auto` and Prop. 2, unless
/// certificates of this checkpoint, method and proposition cover them.
pub fn ensure_certified(a: &AnalysisArgs, ckpt: &Path, points: Option<usize>) -> Result<()> {
    let dir = ckpt.parent().unwrap_or(Path::new("."));
    let (method, proposition) = (crate::certify::MethodName::Auto, Some(2));
    let n = match points {
        Some(p) => p,
        None => {
            let t = crate::run::load_trained(ckpt)?;
            crate::run::load_data(&t.config.dataset, &a.data)?
                .test
                .len()
        }
    };
    let step = crate::certify::step(method, proposition, false);
    if reusable(&dir.join("certificates.csv"), ckpt, &step, n) {
        return Ok(());
    }
    crate::certify::run(&crate::certify::CertifyArgs {
        model: crate::subject::ModelArgs::checkpoint(ckpt),
        out: None,
        method,
        proposition,
        test_subset: points.map(|p| p as u64),
        data: a.data.clone(),
    })
    .with_context(|| format!("certifying {}", ckpt.display()))
}

/// Runs an attack on the first `points` test inputs unless a result of this checkpoint and attack
/// covers them. `label` is the file label (`deepfool`, `deepfool_clip`, `cw`, `pgd_<epsilon>`).
pub fn ensure_attacked(
    a: &AnalysisArgs,
    ckpt: &Path,
    label: &str,
    points: usize,
    configure: impl FnOnce(&mut crate::attack::AttackArgs),
) -> Result<()> {
    let mut args = crate::attack::AttackArgs::new(ckpt, label, a.data.clone());
    args.test_subset = Some(points as u64);
    configure(&mut args);
    let dir = ckpt.parent().unwrap_or(Path::new("."));
    if reusable(
        &dir.join(format!("attack_{label}.csv")),
        ckpt,
        &args.spec()?.describe(),
        points,
    ) {
        return Ok(());
    }
    crate::attack::run(&args).with_context(|| format!("attacking {} ({label})", ckpt.display()))
}

#[cfg(test)]
mod tests {
    use super::{current, manifest_of, reusable};

    fn manifest(dir: &std::path::Path, name: &str, digest: &str, step: &str, points: usize) {
        let m = lmt_analysis::Manifest {
            experiment: "t".into(),
            profile: "smoke".into(),
            reduced: true,
            config: String::new(),
            git_revision: String::new(),
            seed: 0,
            dataset: "mnist".into(),
            data_checksums: vec![],
            machine: String::new(),
            wall_seconds: 0.0,
            command: String::new(),
            model: None,
            provenance: Some(lmt_analysis::Provenance {
                model_sha256: digest.into(),
                step: step.into(),
                points,
            }),
        };
        m.write(&dir.join(name)).unwrap();
    }

    #[test]
    fn derived_files_are_reused_only_for_their_checkpoint_computation_and_points() {
        let dir = tempfile::tempdir().unwrap();
        let attack = dir.path().join("attack_cw.csv");
        std::fs::write(&attack, "index\n").unwrap();
        assert_eq!(
            manifest_of(&attack),
            dir.path().join("attack_cw_manifest.json")
        );
        assert_eq!(
            manifest_of(&dir.path().join("certificates.csv")),
            dir.path().join("certify_manifest.json")
        );
        assert!(current(&attack), "no checkpoint: committed results count");
        let ckpt = dir.path().join("checkpoint.safetensors");
        std::fs::write(&ckpt, b"model A").unwrap();
        let a = lmt_analysis::file_sha256(&ckpt).unwrap();
        assert!(!current(&attack), "no manifest: unknown provenance");
        manifest(dir.path(), "attack_cw_manifest.json", &a, "C&W 100", 500);
        assert!(current(&attack));
        assert!(reusable(&attack, &ckpt, "C&W 100", 200));
        assert!(
            !reusable(&attack, &ckpt, "C&W 100", 501),
            "fewer points than asked"
        );
        assert!(!reusable(&attack, &ckpt, "C&W 30", 200), "another attack");
        // Retraining (another checkpoint, even one written earlier) invalidates the file.
        std::fs::write(&ckpt, b"model B").unwrap();
        assert!(!current(&attack) && !reusable(&attack, &ckpt, "C&W 100", 200));
        // Without the checkpoint (a committed run read as it stands) the computation and the points
        // still have to match.
        std::fs::remove_file(&ckpt).unwrap();
        assert!(reusable(&attack, &ckpt, "C&W 100", 500));
        assert!(!reusable(&attack, &ckpt, "C&W 100", 501));
        assert!(!reusable(&attack, &ckpt, "C&W 30", 200));
        std::fs::remove_file(manifest_of(&attack)).unwrap();
        assert!(!reusable(&attack, &ckpt, "C&W 100", 200), "no manifest");
    }
}
