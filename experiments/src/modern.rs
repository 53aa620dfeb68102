//! `experiments modern`: where LMT stands on today's yardstick, certified accuracy on MNIST at L2 radii
//! 0.5, 1.0 and 1.58 (the L2 ball with the volume of the Linf 0.1 ball), beside a GloRo-style loss and
//! the published numbers of modern Lipschitz networks.
//!
//! Nothing is chosen on the test set. Three stages, each skipping finished work:
//! 1. **sweep**: every setting of every method family is trained at the paper's MNIST budget on the
//!    first 55,000 training images and certified on the 5,000 held out (the configs' `sweep` profile);
//! 2. **choose**: per family, the setting with the highest validation certified accuracy at 1.58 (ties:
//!    clean accuracy), and the three families whose choice certifies most;
//! 3. **long**: those settings trained on all 60,000 images at the `long` budget, their checkpoints at the
//!    stage epochs certified on the full test set, so the table shows how certified accuracy grows with
//!    training; and the best of them once more on 4C3F with MinMax.
//!
//! Writes `<results>/modern/{table.csv, SUMMARY.md, table_manifest.json}` and
//! `<figures>/modern/clean_vs_certified.{png,svg}`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lmt_analysis::plot::{self, PointGroup, ScatterChart};
use lmt_analysis::{write_atomic, Table};
use lmt_eval::metrics::{certified_accuracy, median, Proportion};
use lmt_eval::CertificateRow;
use lmt_train::{Activation, Method, ModelConfig, TrainConfig};

use crate::certify::{CertifyArgs, MethodName};
use crate::run::{load_config, manifest};
use crate::subject::ModelArgs;
use crate::summary::percent_cell as cell;
use crate::DataArgs;

/// Flags of `modern`.
#[derive(Debug, Clone, clap::Args)]
pub struct ModernArgs {
    /// `modern` (the sweep on a validation split, then the long runs) or `smoke` (one setting per family
    /// on a few images, for tests; every output says REDUCED).
    #[arg(long, default_value = "modern", value_parser = ["modern", "smoke"])]
    pub budget: String,
    /// Root of the result tables (written to <results>/modern/, or <results>/modern-smoke/).
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Root of the figures.
    #[arg(long, default_value = "figures")]
    pub figures: PathBuf,
    /// Stop after the sweep and the choice (no long runs).
    #[arg(long)]
    pub sweep_only: bool,
    #[command(flatten)]
    pub data: DataArgs,
}

/// The radii of the modern yardstick.
pub const RADII: [f64; 3] = [0.5, 1.0, 1.58];

/// What a family sweeps.
#[derive(Debug, Clone, Copy)]
enum Knob {
    /// LMT's c, with the authors' capping on or off.
    LmtC { capped: bool },
    /// The GloRo-style loss's eps.
    GloroEps,
}

/// One method family: a config, the knob it sweeps and the values tried, on the config's network with
/// ReLU or with MinMax.
#[derive(Debug, Clone, Copy)]
struct Family {
    label: &'static str,
    config: &'static str,
    network: &'static str,
    minmax: bool,
    knob: Knob,
    values: &'static [f64],
}

/// The c of the issue, 0.25 to 3.
const C_VALUES: &[f64] = &[0.25, 0.5, 1.0, 1.58, 2.0, 3.0];
/// The capped loss certified most at c = 3, the edge of that grid, on the validation split, so its grid
/// goes on to 4 and 5 (the uncapped loss already collapses to a constant network at 3).
const C_VALUES_CAPPED: &[f64] = &[0.25, 0.5, 1.0, 1.58, 2.0, 3.0, 4.0, 5.0];

const FAMILIES: [Family; 5] = [
    Family {
        label: "LMT (Prop. 2, capped: the authors' code)",
        config: "modern_kw_lmt",
        network: "Kolter-Wong CNN",
        minmax: false,
        knob: Knob::LmtC { capped: true },
        values: C_VALUES_CAPPED,
    },
    Family {
        label: "LMT (Prop. 2, uncapped: the paper's Alg. 1)",
        config: "modern_kw_lmt",
        network: "Kolter-Wong CNN",
        minmax: false,
        knob: Knob::LmtC { capped: false },
        values: C_VALUES,
    },
    Family {
        label: "GloRo-style loss",
        config: "modern_kw_gloro",
        network: "Kolter-Wong CNN",
        minmax: false,
        knob: Knob::GloroEps,
        values: &[1.0, 1.58, 2.0, 2.5],
    },
    // MinMax in place of ReLU (gradient-norm preserving, as in GloRo and BCOP), on a coarser grid.
    Family {
        label: "LMT (Prop. 2, capped), MinMax",
        config: "modern_kw_lmt",
        network: "Kolter-Wong CNN (MinMax)",
        minmax: true,
        knob: Knob::LmtC { capped: true },
        values: &[3.0, 1.58, 5.0],
    },
    Family {
        label: "GloRo-style loss, MinMax",
        config: "modern_kw_gloro",
        network: "Kolter-Wong CNN (MinMax)",
        minmax: true,
        knob: Knob::GloroEps,
        values: &[1.58, 2.5],
    },
];

/// The larger network for each family's config: 4C3F with MinMax, trained once with the setting the
/// family chose on the Kolter-Wong CNN (its configs' `long` budget), for the family that certified most at
/// 1.58 on the validation split.
const LARGER: [(&str, &str); 2] = [
    ("modern_kw_lmt", "modern_4c3f_lmt"),
    ("modern_kw_gloro", "modern_4c3f_gloro"),
];

/// Published certified accuracies at 1.58 (clean %, certified %, label, network), from
/// ../shared/reference/prior-art.md; drawn as labelled reference points, never mixed with ours.
pub const PUBLISHED: [(f64, f64, &str, &str); 9] = [
    (97.54, 45.84, "BCOP-Small", "Kolter-Wong CNN"),
    (97.28, 43.58, "RKO", "Kolter-Wong CNN"),
    (96.86, 42.95, "OSSN", "Kolter-Wong CNN"),
    (95.85, 39.77, "L2NNN", "Kolter-Wong CNN"),
    (98.77, 56.66, "BCOP-Large", "4C3F"),
    (97.0, 62.8, "GloRo (clean unverified)", "4C3F"),
    (92.54, 48.20, "BCP", "4C3F"),
    (88.39, 43.95, "CAP (Wong et al.)", "4C3F"),
    (86.48, 40.55, "LMT re-run by BCP", "4C3F"),
];

impl Family {
    /// The run name of one setting (also its directory and its config's `name`).
    fn run_name(&self, v: f64) -> String {
        let base = if self.minmax {
            format!("{}_minmax", self.config)
        } else {
            self.config.to_string()
        };
        match self.knob {
            Knob::LmtC { capped } => {
                format!("{base}_{}_c{v}", if capped { "capped" } else { "uncapped" })
            }
            Knob::GloroEps => format!("{base}_eps{v}"),
        }
    }

    fn setting(&self, v: f64) -> String {
        match self.knob {
            Knob::LmtC { .. } => format!("c = {v}"),
            Knob::GloroEps => format!("eps = {v}"),
        }
    }

    /// The family's config with the setting applied.
    fn config_with(&self, v: f64) -> Result<TrainConfig> {
        let (mut cfg, path) = load_config(self.config)?;
        cfg.name = self.run_name(v);
        if self.minmax {
            match &mut cfg.model {
                ModelConfig::KolterWong { activation }
                | ModelConfig::FourCThreeF { activation } => *activation = Activation::Minmax,
                other => bail!("{}: {other:?} has no MinMax variant here", path.display()),
            }
        }
        match (&mut cfg.method, self.knob) {
            (Method::Lmt { c, capped, .. }, Knob::LmtC { capped: want }) => {
                *c = v;
                *capped = want;
            }
            (Method::Gloro { eps, .. }, Knob::GloroEps) => *eps = v,
            (m, k) => bail!(
                "{}: method {m:?} cannot take the sweep's {k:?}",
                path.display()
            ),
        }
        Ok(cfg)
    }
}

/// One certified evaluation: a table row.
struct Evaluated {
    stage: String,
    /// The profile the run trained under, and whether that budget is reduced.
    profile: String,
    reduced: bool,
    family: Family,
    value: f64,
    epochs: usize,
    rows: Vec<CertificateRow>,
    train_seconds: f64,
    dir: PathBuf,
}

impl Evaluated {
    fn radii(&self) -> Vec<f64> {
        self.rows
            .iter()
            .map(|r| if r.radius.is_finite() { r.radius } else { 0.0 })
            .collect()
    }
    fn clean(&self) -> Proportion {
        Proportion::count(self.rows.iter().map(|r| r.prediction == Some(r.label)))
    }
    fn certified(&self, e: f64) -> Proportion {
        certified_accuracy(&self.radii(), e)
    }
    /// What the choice maximises: certified accuracy at 1.58, then clean accuracy.
    fn rank(&self) -> (f64, f64) {
        (self.certified(1.58).value(), self.clean().value())
    }
}

/// The plan of a budget: profiles, stage epochs, values per family, output names.
struct Stages {
    sweep_profile: &'static str,
    long_profile: &'static str,
    long_epochs: &'static [usize],
    all_values: bool,
    /// Test points certified in the long stage (None: all 10,000).
    test_points: Option<usize>,
    /// How many families (the best by validation certified accuracy at 1.58) train long.
    long_families: usize,
    name: &'static str,
}

fn stages(budget: &str) -> Stages {
    if budget == "smoke" {
        Stages {
            sweep_profile: "smoke",
            long_profile: "smoke",
            long_epochs: &[1],
            all_values: false,
            test_points: Some(500),
            long_families: FAMILIES.len(),
            name: "modern-smoke",
        }
    } else {
        Stages {
            sweep_profile: "sweep",
            long_profile: "long",
            long_epochs: &[20, 50, 100],
            all_values: true,
            test_points: None,
            long_families: 3,
            name: "modern",
        }
    }
}

/// Trains one setting under `profile` into `dir` (resuming; `stop_epoch` stops there with a checkpoint;
/// `train_images`: the training set's size, which fixes the steps per epoch).
fn train_setting(
    a: &ModernArgs,
    cfg: &TrainConfig,
    profile: &str,
    dir: &Path,
    stop_epoch: Option<usize>,
    train_images: usize,
) -> Result<()> {
    let file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .context("writing a sweep config to a temporary file")?;
    std::fs::write(file.path(), serde_norway::to_string(cfg)?)?;
    let stop_after_steps = match stop_epoch {
        Some(e) => {
            let plan = cfg.plan(profile)?;
            let n = train_images - plan.validation;
            let n = plan.train_subset.map_or(n, |s| s.min(n));
            Some(e * n.div_ceil(cfg.batch_size))
        }
        None => None,
    };
    crate::train::run(&crate::train::TrainArgs {
        config: file.path().display().to_string(),
        profile: profile.to_string(),
        out: Some(dir.to_path_buf()),
        resume: true,
        force: false,
        stop_after_steps,
        no_progress: false,
        data: a.data.clone(),
    })
    .with_context(|| format!("training {}", cfg.name))
}

/// Certifies `ckpt` (on its validation split, or the first `points` test images, all when `None`)
/// unless its certificates of that computation cover them.
fn certify(
    a: &ModernArgs,
    ckpt: &Path,
    validation: bool,
    points: Option<usize>,
) -> Result<Vec<CertificateRow>> {
    let dir = ckpt.parent().unwrap_or(Path::new("."));
    let file = dir.join("certificates.csv");
    let step = crate::certify::step(MethodName::Auto, Some(2), validation);
    if !crate::pipeline::reusable(&file, ckpt, &step, points.unwrap_or(1)) {
        let mut model = ModelArgs::checkpoint(ckpt);
        model.validation = validation;
        crate::certify::run(&CertifyArgs {
            model,
            out: None,
            method: MethodName::Auto,
            proposition: Some(2),
            test_subset: points.map(|p| p as u64),
            data: a.data.clone(),
        })
        .with_context(|| format!("certifying {}", ckpt.display()))?;
    }
    let rows: Vec<CertificateRow> = lmt_eval::read_csv_file(&file)?;
    Ok(rows
        .into_iter()
        .take(points.unwrap_or(usize::MAX))
        .collect())
}

fn wall_seconds(manifest: &Path) -> f64 {
    std::fs::read_to_string(manifest)
        .ok()
        .and_then(|t| serde_norway::from_str::<lmt_analysis::Manifest>(&t).ok())
        .map_or(f64::NAN, |m| m.wall_seconds)
}

/// Runs the three stages and writes the table, the figure and SUMMARY.md.
pub fn modern(a: &ModernArgs) -> Result<()> {
    let started = Instant::now();
    let st = stages(&a.budget);
    let data = lmt_data::load_mnist(&a.data.mnist_dir).context("loading MNIST")?;
    let root = a.results.join(st.name);
    let mut evaluated = Vec::new();
    for f in FAMILIES {
        let values = if st.all_values {
            f.values
        } else {
            &f.values[..1]
        };
        for &v in values {
            let cfg = f.config_with(v)?;
            let dir = root.join("sweep").join(&cfg.name);
            eprintln!("== modern sweep: {} {}", f.label, f.setting(v));
            train_setting(a, &cfg, st.sweep_profile, &dir, None, data.train.len())?;
            let rows = certify(a, &dir.join("checkpoint.safetensors"), true, None)?;
            evaluated.push(Evaluated {
                stage: "sweep (validation)".into(),
                profile: st.sweep_profile.into(),
                reduced: cfg.plan(st.sweep_profile)?.reduced,
                family: f,
                value: v,
                epochs: cfg.plan(st.sweep_profile)?.epochs,
                rows,
                train_seconds: wall_seconds(&dir.join("manifest.json")),
                dir,
            });
        }
    }
    // The choice, on validation numbers only: the best setting per family, families ranked by it.
    let mut chosen: Vec<(Family, f64, (f64, f64))> = Vec::new();
    for f in FAMILIES {
        let best = evaluated
            .iter()
            .filter(|e| e.family.label == f.label)
            .max_by(|x, y| {
                x.rank()
                    .partial_cmp(&y.rank())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
        if let Some(b) = best {
            eprintln!(
                "chosen on the validation split: {} {} (certified at 1.58: {})",
                f.label,
                f.setting(b.value),
                b.certified(1.58)
            );
            chosen.push((f, b.value, b.rank()));
        }
    }
    chosen.sort_by(|x, y| y.2.partial_cmp(&x.2).unwrap_or(std::cmp::Ordering::Equal));
    chosen.truncate(st.long_families);
    let chosen: Vec<(Family, f64)> = chosen.into_iter().map(|(f, v, _)| (f, v)).collect();
    if !a.sweep_only {
        let mut long: Vec<(Family, f64, Vec<usize>)> = chosen
            .iter()
            .map(|&(f, v)| (f, v, st.long_epochs.to_vec()))
            .collect();
        let best = evaluated
            .iter()
            .filter(|e| {
                chosen
                    .iter()
                    .any(|(f, v)| f.label == e.family.label && *v == e.value)
            })
            .max_by(|x, y| {
                x.rank()
                    .partial_cmp(&y.rank())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
        if let Some(b) = best {
            if let Some(&(_, large)) = LARGER.iter().find(|(kw, _)| *kw == b.family.config) {
                // The 4C3F configs have MinMax already.
                let f = Family {
                    config: large,
                    network: "4C3F (MinMax)",
                    minmax: false,
                    ..b.family
                };
                let epochs = f.config_with(b.value)?.plan(st.long_profile)?.epochs;
                long.push((f, b.value, vec![epochs]));
            }
        }
        for (f, v, stage_epochs) in long {
            let cfg = f.config_with(v)?;
            let dir = root.join("long").join(&cfg.name);
            for e in stage_epochs {
                let at = dir.join(format!("epoch_{e}"));
                let ckpt = at.join("checkpoint.safetensors");
                if !ckpt.is_file() {
                    let run_ckpt = dir.join("checkpoint.safetensors");
                    let done = if run_ckpt.is_file() {
                        lmt_train::checkpoint::position(&run_ckpt)?.epoch
                    } else {
                        0
                    };
                    if done > e {
                        bail!("{}: trained to epoch {done}, past the stage at epoch {e} whose copy is missing; delete the directory to train it again", dir.display());
                    }
                    if done < e {
                        eprintln!(
                            "== modern long: {} {} on the {} to epoch {e}",
                            f.label,
                            f.setting(v),
                            f.network
                        );
                        train_setting(a, &cfg, st.long_profile, &dir, Some(e), data.train.len())?;
                    }
                    std::fs::create_dir_all(&at)?;
                    for name in ["config.yaml", "manifest.json"] {
                        std::fs::copy(dir.join(name), at.join(name))
                            .with_context(|| format!("copying {name} to {}", at.display()))?;
                    }
                    // The checkpoint last, so a copy that exists is complete.
                    let tmp = at.join("checkpoint.safetensors.tmp");
                    std::fs::copy(dir.join("checkpoint.safetensors"), &tmp)?;
                    std::fs::rename(&tmp, &ckpt)?;
                }
                let rows = certify(a, &ckpt, false, st.test_points)?;
                evaluated.push(Evaluated {
                    stage: "long (test)".into(),
                    profile: st.long_profile.into(),
                    reduced: cfg.plan(st.long_profile)?.reduced,
                    family: f,
                    value: v,
                    epochs: e,
                    rows,
                    train_seconds: wall_seconds(&at.join("manifest.json")),
                    dir: at,
                });
            }
        }
    }
    write_outputs(a, &st, &evaluated, &chosen, &data, started)
}

fn write_outputs(
    a: &ModernArgs,
    st: &Stages,
    evaluated: &[Evaluated],
    chosen: &[(Family, f64)],
    data: &lmt_data::Dataset,
    started: Instant,
) -> Result<()> {
    let root = a.results.join(st.name);
    // Every row says whether its run is reduced (the sweep's runs are: they hold images out).
    let reduced = evaluated.iter().any(|e| e.reduced) || a.budget == "smoke";
    let budget = if a.budget == "smoke" {
        "REDUCED (smoke budget)".to_string()
    } else {
        "modern".to_string()
    };
    let mut header = vec![
        "stage", "method", "network", "setting", "epochs", "points", "clean", "clean_lo",
        "clean_hi",
    ];
    let cols: Vec<String> = RADII
        .iter()
        .flat_map(|e| {
            [
                format!("certified_{e}"),
                format!("certified_{e}_lo"),
                format!("certified_{e}_hi"),
            ]
        })
        .collect();
    header.extend(cols.iter().map(String::as_str));
    header.extend(["median_radius", "train_seconds", "chosen", "run", "budget"]);
    let mut t = Table::new(&header);
    for e in evaluated {
        let clean = e.clean();
        let (lo, hi) = clean.wilson95();
        let mut row = vec![
            e.stage.clone(),
            e.family.label.to_string(),
            e.family.network.to_string(),
            e.family.setting(e.value),
            e.epochs.to_string(),
            e.rows.len().to_string(),
            format!("{:.4}", clean.value()),
            format!("{lo:.4}"),
            format!("{hi:.4}"),
        ];
        for r in RADII {
            let p = e.certified(r);
            let (lo, hi) = p.wilson95();
            row.extend([
                format!("{:.4}", p.value()),
                format!("{lo:.4}"),
                format!("{hi:.4}"),
            ]);
        }
        let is_chosen = chosen
            .iter()
            .any(|(f, v)| f.label == e.family.label && *v == e.value);
        row.extend([
            format!("{:.4}", median(&e.radii())),
            format!("{:.1}", e.train_seconds),
            if is_chosen { "yes" } else { "no" }.to_string(),
            e.dir.display().to_string(),
            if e.reduced {
                format!("REDUCED ({} profile)", e.profile)
            } else {
                format!("{} profile, whole training set", e.profile)
            },
        ]);
        t.push(row);
    }
    std::fs::create_dir_all(&root)?;
    t.write(&root.join("table.csv"))?;

    // The figure: one point per run and stage, the published numbers as hollow labelled points.
    let pct = |p: Proportion| 100.0 * p.value();
    let ours = |radius: f64| -> Vec<PointGroup> {
        let mut groups: Vec<PointGroup> = Vec::new();
        for (i, f) in FAMILIES.iter().enumerate() {
            for (stage, network, offset) in [
                ("sweep (validation)", f.network, 0),
                ("long (test)", f.network, 5),
                ("long (test)", "4C3F (MinMax)", 10),
            ] {
                let points: Vec<(f64, f64, String)> = evaluated
                    .iter()
                    .filter(|e| {
                        e.family.label == f.label && e.stage == stage && e.family.network == network
                    })
                    .map(|e| {
                        let label = if stage == "long (test)" {
                            format!("{} ep", e.epochs)
                        } else {
                            e.family.setting(e.value)
                        };
                        (pct(e.clean()), pct(e.certified(radius)), label)
                    })
                    .filter(|p| p.0 >= 80.0)
                    .collect();
                if !points.is_empty() {
                    groups.push(PointGroup {
                        name: format!("{} — {network}, {stage}", f.label),
                        points,
                        color: if offset == 10 { 10 } else { i + offset },
                        hollow: false,
                    });
                }
            }
        }
        groups
    };
    let mut at158 = ours(1.58);
    at158.push(PointGroup {
        name: "published (test set; see SUMMARY.md)".into(),
        points: PUBLISHED
            .iter()
            .map(|&(c, r, l, n)| (c, r, format!("{l} [{n}]")))
            .collect(),
        color: 11,
        hollow: true,
    });
    // Runs below 80% clean (collapsed ones) would squeeze the rest; they are left out and counted.
    let hidden = evaluated.iter().filter(|e| pct(e.clean()) < 80.0).count();
    let panel = |radius: f64, groups: Vec<PointGroup>| ScatterChart {
        title: format!(
            "certified accuracy at L2 {radius} against clean accuracy{}",
            if hidden > 0 {
                format!(" ({hidden} runs below 80% clean not drawn)")
            } else {
                String::new()
            }
        ),
        x_label: "clean accuracy (%)".into(),
        y_label: format!("certified accuracy at {radius} (%)"),
        x: (80.0, 100.0),
        y: (0.0, 100.0),
        groups,
    };
    let fig = a.figures.join(st.name).join("clean_vs_certified");
    plot::scatter_panels(
        &fig,
        &format!(
            "MNIST, Prop. 2 certificates{} (ours: validation split for the sweep, test set for the long runs)",
            if reduced { ", REDUCED smoke budget" } else { "" }
        ),
        &[panel(1.58, at158), panel(1.0, ours(1.0))],
    )?;
    write_summary(&root, evaluated, chosen, &budget)?;

    let config = FAMILIES
        .iter()
        .map(|f| format!("{}: {} over {:?}", f.label, f.config, f.values))
        .collect::<Vec<_>>()
        .join("\n");
    manifest(
        "modern".into(),
        st.name,
        reduced,
        config,
        0,
        data,
        started.elapsed().as_secs_f64(),
    )
    .write(&root.join("table_manifest.json"))?;
    eprintln!(
        "wrote {}, {} and {}.png/.svg",
        root.join("table.csv").display(),
        root.join("SUMMARY.md").display(),
        fig.display()
    );
    Ok(())
}

fn write_summary(
    root: &Path,
    evaluated: &[Evaluated],
    chosen: &[(Family, f64)],
    budget: &str,
) -> Result<()> {
    let mut s = String::from(
        "# LMT on today's yardstick: certified accuracy on MNIST at L2 0.5, 1.0 and 1.58\n\n\
         Generated by `experiments modern` (`make modern`) from the certificates under this directory; \
         nothing here is typed by hand. Certified accuracy at e counts the test points whose Prop. 2 \
         certified radius exceeds e (sound f64 margins, exact layer bounds; see ARCHITECTURE.md), with \
         95% Wilson intervals.\n\n",
    );
    s.push_str(&format!("Budget: {budget}. Settings were chosen on a validation split (the last 5,000 training images, \
        held out of training), never on the test set; the long runs then train on all 60,000 training \
        images and are evaluated once per stage on the 10,000 test images.\n\n"));
    s.push_str("## Ours: the chosen settings on the test set\n\n| method | network | setting | epochs | clean % | certified % at 0.5 | at 1.0 | at 1.58 | training time (s) |\n|---|---|---|---|---|---|---|---|---|\n");
    for e in evaluated.iter().filter(|e| e.stage == "long (test)") {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
            e.family.label,
            e.family.network,
            e.family.setting(e.value),
            e.epochs,
            cell(e.clean()),
            cell(e.certified(0.5)),
            cell(e.certified(1.0)),
            cell(e.certified(1.58)),
            e.train_seconds
        ));
    }
    s.push_str("\n## The sweep on the validation split\n\n| method | setting | clean % | certified % at 1.0 | at 1.58 | chosen |\n|---|---|---|---|---|---|\n");
    for e in evaluated.iter().filter(|e| e.stage != "long (test)") {
        let is_chosen = chosen
            .iter()
            .any(|(f, v)| f.label == e.family.label && *v == e.value);
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            e.family.label,
            e.family.setting(e.value),
            cell(e.clean()),
            cell(e.certified(1.0)),
            cell(e.certified(1.58)),
            if is_chosen { "yes" } else { "" }
        ));
    }
    s.push_str("\n## Published numbers at 1.58 (test set; ../shared/reference/prior-art.md)\n\n| method | network | clean % | certified % at 1.58 |\n|---|---|---|---|\n");
    for (c, r, l, n) in PUBLISHED {
        s.push_str(&format!("| {l} | {n} | {c} | {r} |\n"));
    }
    for (network, reference, published) in [
        (
            "Kolter-Wong CNN",
            "BCOP-Small's 45.84 % on the same network",
            0.4584,
        ),
        ("4C3F (MinMax)", "GloRo's 62.8 % on the same network", 0.628),
    ] {
        // Only each run's full budget counts: picking the best stage would choose epochs on the test set.
        let last = |e: &Evaluated| {
            evaluated
                .iter()
                .filter(|o| o.dir.parent() == e.dir.parent())
                .all(|o| o.epochs <= e.epochs)
        };
        let best = evaluated
            .iter()
            .filter(|e| {
                e.stage == "long (test)" && e.family.network.starts_with(network) && last(e)
            })
            .max_by(|x, y| {
                x.certified(1.58)
                    .value()
                    .partial_cmp(&y.certified(1.58).value())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
        if let Some(b) = best {
            let (lo, hi) = b.certified(1.58).wilson95();
            s.push_str(&format!(
                "\n**Best certified accuracy at 1.58 on the {network}, at a run's full budget: {} % ({} {}, {} epochs, {:.0} s of training)**, against {reference}: {}. (Intermediate stages are reported above, not chosen.)\n",
                cell(b.certified(1.58)),
                b.family.label,
                b.family.setting(b.value),
                b.epochs,
                b.train_seconds,
                if lo > published {
                    "above it (the whole interval)"
                } else if hi < published {
                    "below it (the whole interval)"
                } else {
                    "not distinguishable from it"
                }
            ));
        }
    }
    write_atomic(&root.join("SUMMARY.md"), s.as_bytes())?;
    Ok(())
}
