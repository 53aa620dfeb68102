//! `fig3`, `fig4`, `fig5` and `curves`: the paper's MNIST figures (Section 6.1) from trained checkpoints,
//! each as CSV under results/<profile>/ and PNG + SVG under figures/<profile>/, with a manifest.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use indicatif::{ProgressBar, ProgressStyle};
use lmt_analysis::plot::{self, BarChart, GreyImage, LineChart, Series};
use lmt_analysis::Table;
use lmt_core::{norms, CertifiedBound, ConvGeometry, PowerConfig};
use lmt_data::Dataset;
use lmt_eval::metrics::{accuracy_under_attack, certified_accuracy, ecdf, linspace};
use lmt_eval::tightness::{lower_radii, perturb_by_radius, Inequality};
use lmt_eval::{AttackRow, CertificateRow};

use crate::pipeline::{ensure_attacked, ensure_certified, ensure_trained, AnalysisArgs, Budget};
use crate::run::{load_data, load_trained, manifest};

/// The three MNIST models of Figure 4: (label, config).
pub const MNIST_MODELS: [(&str, &str); 3] = [
    ("naive", "mnist_naive"),
    ("AT", "mnist_at_cw30"),
    ("LMT", "mnist_lmt_c1"),
];

/// `paper` or `REDUCED (<profile> profile)`: written into every output of the analysis.
pub fn budget_label(profile: &str, reduced: bool) -> String {
    if reduced {
        format!("REDUCED ({profile} profile)")
    } else {
        "paper".to_string()
    }
}

fn out_paths(a: &AnalysisArgs, name: &str) -> (PathBuf, PathBuf) {
    (
        a.results.join(&a.profile).join(name),
        a.figures.join(&a.profile).join(name),
    )
}

/// Whether the run of `config` under this profile trained with a reduced budget (its config.yaml says).
fn run_reduced(ckpt: &Path) -> Result<bool> {
    Ok(load_trained(ckpt)?.reduced)
}

fn write_manifest(
    a: &AnalysisArgs,
    name: &str,
    reduced: bool,
    config: String,
    data: &Dataset,
    started: Instant,
) -> Result<()> {
    manifest(
        name.to_string(),
        &a.profile,
        reduced,
        config,
        0,
        data,
        started.elapsed().as_secs_f64(),
    )
    .write(
        &a.results
            .join(&a.profile)
            .join(format!("{name}_manifest.json")),
    )?;
    Ok(())
}

/// Figure 3: the bounds of the second convolution of the naive and LMT models (Thm. 1+2, Cor. 1, Cisse,
/// Peck, plus our exact `dense` and `fft`), and of size-2 pooling on 28x28 (Thm. 3 max and average, Peck).
pub fn fig3(a: &AnalysisArgs) -> Result<()> {
    let started = Instant::now();
    let conv = ConvGeometry::square(16, 32, 4, 2, 1, 14, 14)?;
    let pool = ConvGeometry::square(1, 1, 2, 2, 0, 28, 28)?;
    let methods = [
        "Thm. 1+2 (power)",
        "Cor. 1",
        "Cisse+",
        "Peck+ (reconstructed)",
        "exact (dense; ours)",
        "fft (ours)",
    ];
    let mut reduced = false;
    let mut bars = Vec::new();
    let mut table = Table::new(&["panel", "model", "method", "value", "kind", "budget"]);
    let mut rows = Vec::new();
    for (label, config) in [MNIST_MODELS[0], MNIST_MODELS[2]] {
        let ckpt = ensure_trained(a, config)?;
        reduced |= run_reduced(&ckpt)?;
        let tensors = candle_core::safetensors::load(&ckpt, &Device::Cpu)
            .with_context(|| format!("reading {}", ckpt.display()))?;
        let w: Vec<f64> = tensors
            .get("conv2.weight")
            .context("checkpoint has no conv2.weight")?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        let power = norms::conv_power(&conv, &w, &PowerConfig::default())?;
        let values: Vec<CertifiedBound> = vec![
            power.bound,
            norms::conv_cor1(&conv, &w)?,
            norms::conv_cisse(&conv, &w)?,
            norms::conv_peck(&conv, &w)?,
            norms::conv_dense(&conv, &w)?,
            norms::conv_fft(&conv, &w)?,
        ];
        for (m, v) in methods.iter().zip(&values) {
            rows.push((
                "conv2 (16->32 4x4 stride 2 pad 1 on 14x14)",
                label,
                m.to_string(),
                v.value(),
            ));
        }
        bars.push((
            format!("{label} model"),
            values.iter().map(|v| v.value()).collect::<Vec<_>>(),
        ));
    }
    let pools = [
        ("Thm. 3 max", norms::max_pool_thm3(&pool)?),
        ("Thm. 3 average", norms::avg_pool_thm3(&pool)?),
        ("Peck+ (reconstructed)", norms::pool_peck(&pool)?),
    ];
    for (m, v) in &pools {
        rows.push((
            "pooling 2x2 stride 2 on 28x28",
            "any",
            m.to_string(),
            v.value(),
        ));
    }
    let budget = budget_label(&a.profile, reduced);
    for (panel, model, method, value) in rows {
        // Thm. 1+2 holds only with a probability over its random starts; the others are deterministic.
        let kind = if method.contains("power") {
            "probabilistic upper bound (random starts)"
        } else {
            "certified upper bound"
        };
        table.push(vec![
            panel.into(),
            model.into(),
            method,
            value.to_string(),
            kind.into(),
            budget.clone(),
        ]);
    }
    let (csv, fig) = out_paths(a, "fig3");
    table.write(&csv.with_extension("csv"))?;
    let note = if reduced {
        format!(" [{budget}]")
    } else {
        String::new()
    };
    plot::bar_chart_log(
        &fig.with_file_name("fig3_conv"),
        &BarChart {
            title: format!("Fig. 3: bounds on conv2 of the MNIST CNN{note}"),
            y_label: "certified upper bound on the L2 operator norm".into(),
            categories: methods.iter().map(|m| m.to_string()).collect(),
            bars,
        },
    )?;
    plot::bar_chart_log(
        &fig.with_file_name("fig3_pool"),
        &BarChart {
            title: "Fig. 3: bounds on 2x2 pooling of a 28x28 input".into(),
            y_label: "certified upper bound".into(),
            categories: pools.iter().map(|p| p.0.to_string()).collect(),
            bars: vec![(
                "any input".into(),
                pools.iter().map(|p| p.1.value()).collect(),
            )],
        },
    )?;
    print!("{}", table.to_csv());
    let data = load_data("mnist", &a.data)?;
    write_manifest(
        a,
        "fig3",
        reduced,
        "conv2 of mnist_naive and mnist_lmt_c1; power: 5000 iterations, 8 starts, f64, Thm. 2"
            .into(),
        &data,
        started,
    )
}

/// The certified radii of `certificates.csv` in `dir` (the first `n` rows, or all).
pub fn read_radii(dir: &Path, n: Option<usize>) -> Result<Vec<f64>> {
    let rows: Vec<CertificateRow> = lmt_eval::read_csv_file(&dir.join("certificates.csv"))?;
    Ok(rows
        .iter()
        .take(n.unwrap_or(usize::MAX))
        .map(|r| r.radius)
        .collect())
}

/// The rows of `attack_<label>.csv` in `dir`; `None` when the file is absent or older than the run's
/// checkpoint (an attack on an earlier model).
pub fn attack_rows(dir: &Path, label: &str) -> Result<Option<Vec<AttackRow>>> {
    let p = dir.join(format!("attack_{label}.csv"));
    if !p.is_file() {
        return Ok(None);
    }
    if !crate::pipeline::current(&p) {
        eprintln!("{}: older than the checkpoint, not used", p.display());
        return Ok(None);
    }
    Ok(Some(lmt_eval::read_csv_file(&p)?))
}

/// Distances of `attack_<label>.csv` by position (`None`: no adversarial found).
pub fn attack_distances(dir: &Path, label: &str) -> Result<Option<Vec<Option<f64>>>> {
    Ok(attack_rows(dir, label)?.map(|rows| rows.iter().map(|r| r.distance).collect()))
}

/// The attack labels with a file in `dir`: DeepFool (both), C&W, and PGD at every radius run.
pub fn attack_labels(dir: &Path) -> Vec<String> {
    let mut labels: Vec<String> = ["deepfool", "deepfool_clip", "cw"]
        .map(String::from)
        .to_vec();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut pgd: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| Some(n.strip_prefix("attack_")?.strip_suffix(".csv")?.to_string()))
            .filter(|l| l.starts_with("pgd"))
            .collect();
        pgd.sort();
        labels.extend(pgd);
    }
    labels
}

/// Per test index `0..n`, the smallest distance over every attack in `dir` that ran on it (`Some(None)`:
/// attacked, never broken; `None`: no attack ran on it). Attacks may cover different points (a short
/// C&W run, PGD only where nothing else broke the point), so each point takes what ran on it.
pub fn worst_by_index(dir: &Path, n: usize) -> Result<Vec<Option<Option<f64>>>> {
    let mut worst: Vec<Option<Option<f64>>> = vec![None; n];
    for label in attack_labels(dir) {
        for r in attack_rows(dir, &label)?.unwrap_or_default() {
            if let Some(w) = worst.get_mut(r.index) {
                *w = Some(match (w.flatten(), r.distance) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                });
            }
        }
    }
    Ok(worst)
}

/// [`worst_by_index`] over the points any attack ran on, as the distances of a combined attack.
pub fn worst_distances(dir: &Path) -> Result<Option<Vec<Option<f64>>>> {
    let mut n = 0;
    for label in attack_labels(dir) {
        if let Some(rows) = attack_rows(dir, &label)? {
            n = n.max(rows.iter().map(|r| r.index + 1).max().unwrap_or(0));
        }
    }
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(
        worst_by_index(dir, n)?
            .into_iter()
            .map(|w| w.flatten())
            .collect(),
    ))
}

fn infinite_on_failure(d: &[Option<f64>]) -> Vec<f64> {
    d.iter().map(|d| d.unwrap_or(f64::INFINITY)).collect()
}

fn inequality(
    a: &AnalysisArgs,
    budget: &Budget,
    config: &str,
) -> Result<(Inequality, Vec<usize>, bool)> {
    let ckpt = ensure_trained(a, config)?;
    ensure_certified(a, &ckpt, None)?;
    let n = budget.fig4_points;
    ensure_attacked(a, &ckpt, "deepfool", n, |_| {})?;
    ensure_attacked(a, &ckpt, "deepfool_clip", n, |_| {})?;
    let trained = load_trained(&ckpt)?;
    let data = load_data(&trained.config.dataset, &a.data)?;
    let n = n.min(data.test.len());
    let dir = ckpt.parent().unwrap_or(Path::new(".")).to_path_buf();
    let a_vals = read_radii(&dir, Some(n))?;
    let d = attack_distances(&dir, "deepfool")?.context("DeepFool results missing")?;
    let worst = worst_distances(&dir)?.unwrap_or_else(|| d.clone());
    if d.len() < n || worst.len() < n {
        bail!(
            "{}: DeepFool covers {} points, need {n}",
            dir.display(),
            d.len()
        );
    }
    // (B) and (C) by the authors' batch procedure: batches of 50 in test order.
    let lower_n = a.lower_points.unwrap_or(n).min(n);
    let bar = ProgressBar::new(lower_n as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{config}: gradient lower bounds [{{bar:30}}] {{pos}}/{{len}} ({{eta}})"
        ))
        .expect("valid template"),
    );
    let indices: Vec<usize> = (0..lower_n).collect();
    let lower = lower_radii(
        trained.built.model.as_ref(),
        &data.test,
        &indices,
        budget.draws,
        &mut |k| bar.set_position(k as u64),
    )?;
    bar.finish_and_clear();
    let q = Inequality::new(
        a_vals,
        lower,
        infinite_on_failure(&d[..n]),
        infinite_on_failure(&worst[..n]),
    )?;
    let labels = (0..n).map(|i| data.test.labels[i] as usize).collect();
    Ok((q, labels, trained.reduced))
}

/// Figure 4 and the error ratios of inequality (5) for the naive, AT and LMT MNIST models.
pub fn fig4(a: &AnalysisArgs) -> Result<()> {
    let started = Instant::now();
    let budget = Budget::of(&a.profile);
    let grid = linspace(0.0, 4.0, 201);
    let mut panels = Vec::new();
    let mut summary = Table::new(&[
        "model",
        "points",
        "median_A_certified",
        "median_B_global_lower",
        "median_C_local_lower",
        "median_D_deepfool",
        "median_D_worst",
        "ratio_i_B_over_A",
        "ratio_ii_C_over_B",
        "ratio_iii_D_over_C",
        "ratio_D_over_A",
        "violations",
        "lower_bound_points",
        "budget",
    ]);
    let mut reduced = budget.reduced() || a.lower_points.is_some_and(|l| l < budget.fig4_points);
    let mut problems = Vec::new();
    let chosen = MNIST_MODELS
        .iter()
        .filter(|(l, _)| a.models.is_empty() || a.models.iter().any(|m| m.eq_ignore_ascii_case(l)));
    for &(label, config) in chosen {
        let (q, labels, r) = inequality(a, &budget, config)?;
        reduced |= r;
        let tag = budget_label(&a.profile, reduced);
        let n = q.a.len();
        let lower_n = q.b.iter().filter(|v| !v.is_nan()).count();
        // The authors assert A <= B <= C and A <= D per point; A > B or A > D would mean a bound or the
        // certifier is wrong (B <= C holds by construction).
        let violations = q.violations().len();
        if violations > 0 {
            problems.push(format!(
                "{label}: {violations} points violate A <= B <= C, A <= D"
            ));
        }
        let mut t = Table::new(&[
            "index",
            "label",
            "A_certified_radius",
            "B_margin_over_global_lower",
            "C_margin_over_local_lower",
            "D_deepfool",
            "D_worst_attack",
            "budget",
        ]);
        for (i, label) in labels.iter().enumerate() {
            t.push(vec![
                i.to_string(),
                label.to_string(),
                q.a[i].to_string(),
                q.b[i].to_string(),
                q.c[i].to_string(),
                q.d[i].to_string(),
                q.d_worst[i].to_string(),
                tag.clone(),
            ]);
        }
        t.write(
            &a.results
                .join(&a.profile)
                .join(format!("fig4_{}.csv", label.to_lowercase())),
        )?;
        let ratios = q.ratios();
        let mut row = vec![label.to_string(), n.to_string()];
        row.extend(q.medians().iter().map(f64::to_string));
        row.extend(
            [
                ratios.b_over_a,
                ratios.c_over_b,
                ratios.d_over_c,
                ratios.d_over_a,
            ]
            .iter()
            .map(f64::to_string),
        );
        row.extend([violations.to_string(), lower_n.to_string(), tag.clone()]);
        summary.push(row);
        let curve = |name: &str, v: &[f64], color: usize, dashed: bool| {
            let v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
            Series {
                name: if v.len() < n {
                    format!("{name} [first {} points]", v.len())
                } else {
                    name.into()
                },
                points: grid.iter().copied().zip(ecdf(&v, &grid)).collect(),
                color,
                dashed,
            }
        };
        panels.push(LineChart {
            title: format!("{label} model ({n} test points)"),
            x_label: "L2 radius / perturbation size".into(),
            y_label: "fraction of test points at or below".into(),
            x: (0.0, 4.0),
            y: (0.0, 1.0),
            series: vec![
                curve("(A) certified radius (bound)", &q.a, 0, false),
                curve("(B) margin / global lower L (empirical)", &q.b, 1, true),
                curve("(C) margin / local lower L (empirical)", &q.c, 2, true),
                curve("(D) DeepFool distance", &q.d, 3, false),
                curve("(D) worst case over attacks", &q.d_worst, 4, true),
            ],
        });
    }
    if panels.is_empty() {
        bail!("--models {:?}: choose among naive, AT, LMT", a.models);
    }
    let tag = budget_label(&a.profile, reduced);
    summary.write(&a.results.join(&a.profile).join("fig4_summary.csv"))?;
    plot::line_panels(
        &a.figures.join(&a.profile).join("fig4"),
        &format!("Fig. 4: inequality (5) on MNIST, cumulative over test points [{tag}]"),
        &panels,
    )?;
    print!("{}", summary.to_csv());
    let data = load_data("mnist", &a.data)?;
    write_manifest(a, "fig4", reduced, format!("{budget:?}; (B) and (C): the authors' batch procedure, batches of 50 in test order, noise normalised over the batch tensor"), &data, started)?;
    if !problems.is_empty() {
        bail!("SOUNDNESS VIOLATION: {}", problems.join("; "));
    }
    Ok(())
}

/// Figure 5: test images the LMT model is certified to classify correctly, beside the image moved by
/// the certified radius (times 1 - 1e-6, for f32 rounding) along the direction DeepFool found (the
/// hardest direction we know).
pub fn fig5(a: &AnalysisArgs) -> Result<()> {
    let started = Instant::now();
    let ckpt = ensure_trained(a, "mnist_lmt_c1")?;
    ensure_certified(a, &ckpt, None)?;
    let trained = load_trained(&ckpt)?;
    let data = load_data("mnist", &a.data)?;
    let radii = read_radii(ckpt.parent().unwrap_or(Path::new(".")), None)?;
    let pool = 1000.min(radii.len());
    // The 8 largest certified radii among the first 1000 test images (ties by index).
    let mut order: Vec<usize> = (0..pool).filter(|&i| radii[i] > 0.0).collect();
    order.sort_by(|&i, &j| radii[j].total_cmp(&radii[i]).then(i.cmp(&j)));
    order.truncate(8);
    if order.is_empty() {
        bail!("the LMT model certifies none of the first {pool} test images; train it longer");
    }
    let r: Vec<f64> = order.iter().map(|&i| radii[i]).collect();
    let moved = perturb_by_radius(trained.built.model.as_ref(), &data.test, &order, &r)?;
    let mut t = Table::new(&[
        "index",
        "label",
        "certified_radius",
        "perturbation_norm",
        "direction",
        "prediction_after",
        "margin_after",
        "min_pixel_after",
        "max_pixel_after",
    ]);
    let mut images = Vec::new();
    let mut flipped = Vec::new();
    for p in &moved {
        if !p.kept() {
            flipped.push(p.index);
        }
        let (lo, hi) = p
            .after
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        t.push(vec![
            p.index.to_string(),
            p.label.to_string(),
            p.radius.to_string(),
            p.norm.to_string(),
            p.direction.into(),
            p.prediction.to_string(),
            p.margin.to_string(),
            lo.to_string(),
            hi.to_string(),
        ]);
        images.push(GreyImage {
            caption: format!("test #{}, label {}, R = {:.3}", p.index, p.label, p.radius),
            height: 28,
            width: 28,
            pixels: p.before.clone(),
        });
        images.push(GreyImage {
            caption: format!(
                "+ perturbation of norm {:.3}: class {}",
                p.norm, p.prediction
            ),
            height: 28,
            width: 28,
            pixels: p.after.clone(),
        });
    }
    let reduced = trained.reduced;
    let tag = budget_label(&a.profile, reduced);
    t.write(&a.results.join(&a.profile).join("fig5.csv"))?;
    plot::image_grid(
        &a.figures.join(&a.profile).join("fig5"),
        &format!("Fig. 5: certified LMT predictions under a perturbation of exactly the certified radius [{tag}]"),
        &images,
        4,
    )?;
    print!("{}", t.to_csv());
    write_manifest(a, "fig5", reduced, "8 largest certified radii among the first 1000 test images; perturbation = DeepFool's direction (random if DeepFool fails) scaled to (1 - 1e-6) x the certified radius, not clipped (pixels outside [0, 1] are shown clamped)".into(), &data, started)?;
    if !flipped.is_empty() {
        bail!("SOUNDNESS VIOLATION: the prediction changed inside the certified radius (or the perturbation left it) for test images {flipped:?}");
    }
    Ok(())
}

/// Certified accuracy against radius, with the accuracy under the strongest attack we ran on the same
/// axes, for every model with results under this profile.
pub fn curves(a: &AnalysisArgs) -> Result<()> {
    let started = Instant::now();
    let grid = linspace(0.0, 2.0, 201);
    let mut t = Table::new(&[
        "model",
        "radius",
        "certified_accuracy",
        "attack_accuracy",
        "attack_points",
        "budget",
    ]);
    let mut panels = Vec::new();
    let mut reduced = Budget::of(&a.profile).reduced();
    let root = a.results.join(&a.profile);
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .with_context(|| format!("reading {} (run fig4 or table1 first)", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("certificates.csv").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let cert_path = dir.join("certificates.csv");
        if !crate::pipeline::current(&cert_path) {
            bail!(
                "{} is older than the run's checkpoint: certify the model again (run fig4)",
                cert_path.display()
            );
        }
        let radii = read_radii(&dir, None)?;
        let worst = worst_distances(&dir)?;
        if let Ok(cfg) = std::fs::read_to_string(dir.join("config.yaml")) {
            reduced |= cfg.contains("reduced: true");
        }
        let cert_acc: Vec<f64> = grid
            .iter()
            .map(|&e| certified_accuracy(&radii, e).value())
            .collect();
        let att_acc: Option<Vec<f64>> = worst.as_ref().map(|w| {
            grid.iter()
                .map(|&e| accuracy_under_attack(w, e).value())
                .collect()
        });
        let points = worst.as_ref().map(|w| w.len()).unwrap_or(0);
        for (i, &e) in grid.iter().enumerate() {
            t.push(vec![
                name.clone(),
                e.to_string(),
                cert_acc[i].to_string(),
                att_acc
                    .as_ref()
                    .map(|v| v[i].to_string())
                    .unwrap_or_default(),
                points.to_string(),
                budget_label(&a.profile, reduced),
            ]);
        }
        let mut series = vec![Series {
            name: format!("certified ({} points)", radii.len()),
            points: grid.iter().copied().zip(cert_acc).collect(),
            color: 0,
            dashed: false,
        }];
        if let Some(v) = att_acc {
            series.push(Series {
                name: format!("under attack, empirical ({points} points)"),
                points: grid.iter().copied().zip(v).collect(),
                color: 1,
                dashed: true,
            });
        }
        // The modern yardstick's radii, where certified accuracy is compared today.
        for (k, r) in crate::modern::RADII.iter().enumerate() {
            series.push(Series {
                name: if k == 0 {
                    "radii 0.5 / 1.0 / 1.58".into()
                } else {
                    String::new()
                },
                points: vec![(*r, 0.0), (*r, 1.0)],
                color: 5,
                dashed: true,
            });
        }
        panels.push(LineChart {
            title: name,
            x_label: "L2 radius".into(),
            y_label: "accuracy".into(),
            x: (0.0, 2.0),
            y: (0.0, 1.0),
            series,
        });
    }
    if panels.is_empty() {
        bail!(
            "no certified runs under {}; run fig4 or table1 first",
            root.display()
        );
    }
    let tag = budget_label(&a.profile, reduced);
    t.write(&root.join("curves.csv"))?;
    for (i, chunk) in panels.chunks(4).enumerate() {
        plot::line_panels(
            &a.figures.join(&a.profile).join(format!("curves_{}", i + 1)),
            &format!(
                "Certified accuracy (lower bound) and accuracy under attack (upper bound) [{tag}]"
            ),
            chunk,
        )?;
    }
    let data = load_data("mnist", &a.data)?;
    write_manifest(a, "curves", reduced, "every run under this profile with certificates.csv; attack = per-point minimum over the attacks run".into(), &data, started)
}
