//! `fig3`, `fig4`, `fig5` and `curves`: the paper's MNIST figures (Section 6.1) from trained checkpoints,
//! each as CSV under results/<profile>/ and PNG + SVG under figures/<profile>/, with a manifest.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use lmt_analysis::plot::{self, BarChart, GreyImage, LineChart, Series};
use lmt_analysis::stats::{ecdf, linspace, margin_radius, median, median_ratio};
use lmt_analysis::Table;
use lmt_attacks::{deepfool, local_lipschitz_lower, DeepFoolConfig, PairMatrix};
use lmt_core::{norms, CertifiedBound, ConvGeometry, PowerConfig};
use lmt_data::Dataset;
use lmt_train::batch_tensors;

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
        table.push(vec![
            panel.into(),
            model.into(),
            method,
            value.to_string(),
            "certified upper bound".into(),
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

/// Per point of one model: (A) certified radius, (B) margin / global lower bound, (C) margin / local
/// lower bound, (D) DeepFool distance and the smallest over all attacks run.
struct Inequality {
    a: Vec<f64>,
    b: Vec<f64>,
    c: Vec<f64>,
    d: Vec<f64>,
    d_worst: Vec<f64>,
    labels: Vec<usize>,
}

/// Distances of `attack_<label>.csv`, failures as infinity; `None` when the file is absent or older
/// than the run's checkpoint (an attack on an earlier model).
fn attack_distances(dir: &Path, label: &str, n: usize) -> Result<Option<Vec<f64>>> {
    let p = dir.join(format!("attack_{label}.csv"));
    if !p.is_file() {
        return Ok(None);
    }
    if !crate::pipeline::current(&p) {
        eprintln!("{}: older than the checkpoint, not used", p.display());
        return Ok(None);
    }
    let t = Table::read(&p)?;
    let d: Vec<f64> = t
        .numbers("distance", &p)?
        .into_iter()
        .map(|d| d.unwrap_or(f64::INFINITY))
        .collect();
    if d.len() < n {
        bail!("{} has {} rows, need {n}", p.display(), d.len());
    }
    Ok(Some(d[..n].to_vec()))
}

fn inequality(a: &AnalysisArgs, budget: &Budget, config: &str) -> Result<(Inequality, bool)> {
    let ckpt = ensure_trained(a, config)?;
    ensure_certified(a, &ckpt, None)?;
    let n = budget.fig4_points;
    ensure_attacked(a, &ckpt, "deepfool", n, |_| {})?;
    ensure_attacked(a, &ckpt, "deepfool_clip", n, |_| {})?;
    let trained = load_trained(&ckpt)?;
    let data = load_data(&trained.config.dataset, &a.data)?;
    let n = n.min(data.test.len());
    let dir = ckpt.parent().unwrap_or(Path::new(".")).to_path_buf();
    let cert_path = dir.join("certificates.csv");
    let certs = Table::read(&cert_path)?;
    let a_vals: Vec<f64> = certs
        .numbers("radius", &cert_path)?
        .into_iter()
        .take(n)
        .map(|r| r.unwrap_or(0.0))
        .collect();
    let d = attack_distances(&dir, "deepfool", n)?.context("DeepFool results missing")?;
    let mut d_worst = d.clone();
    for other in ["deepfool_clip", "cw", "pgd"] {
        if let Ok(Some(o)) = attack_distances(&dir, other, n) {
            for (w, v) in d_worst.iter_mut().zip(o) {
                *w = w.min(v);
            }
        }
    }
    // (B) and (C) by the authors' batch procedure: batches of 50 in test order.
    let model = trained.built.model.as_ref();
    let f = |x: &Tensor| model.eval_logits(x);
    let k = 10;
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{config}: gradient lower bounds [{{bar:30}}] {{pos}}/{{len}} ({{eta}})"
        ))
        .expect("valid template"),
    );
    let (mut logits, mut labels, mut c_vals) = (Vec::new(), Vec::new(), Vec::new());
    let mut global = PairMatrix::zeros(k);
    let lower_n = a.lower_points.unwrap_or(n).min(n);
    bar.set_length(lower_n as u64);
    for (bi, start) in (0..lower_n).step_by(50).enumerate() {
        let idx: Vec<usize> = (start..(start + 50).min(lower_n)).collect();
        let (x, _) = batch_tensors(&data.test, &idx, &Device::Cpu)?;
        let l: Vec<usize> = idx.iter().map(|&i| data.test.labels[i] as usize).collect();
        let z: Vec<f32> = f(&x)?.flatten_all()?.to_vec1()?;
        let g = local_lipschitz_lower(&f, &x, k, budget.draws, bi as u64)?;
        c_vals.extend(margin_radius(&z, k, &l, |t, i| g.get(t, i)));
        global.max_with(&g);
        logits.extend(z);
        labels.extend(l);
        bar.set_position((start + idx.len()) as u64);
    }
    bar.finish_and_clear();
    let mut b_vals = margin_radius(&logits, k, &labels, |t, i| global.get(t, i));
    // Points beyond `lower_n` have no (B), (C): NaN, left out of medians, ratios and curves.
    b_vals.resize(n, f64::NAN);
    c_vals.resize(n, f64::NAN);
    labels = (0..n).map(|i| data.test.labels[i] as usize).collect();
    Ok((
        Inequality {
            a: a_vals,
            b: b_vals,
            c: c_vals,
            d,
            d_worst,
            labels,
        },
        trained.reduced,
    ))
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
        let (q, r) = inequality(a, &budget, config)?;
        reduced |= r;
        let tag = budget_label(&a.profile, reduced);
        let n = q.a.len();
        let lower_n = q.b.iter().filter(|v| !v.is_nan()).count();
        // The authors assert A <= B <= C and A <= D per point; A > B or A > D would mean a bound or the
        // certifier is wrong (B <= C holds by construction).
        let tol = 1e-6;
        let violations = (0..n)
            .filter(|&i| {
                q.a[i] > q.b[i] * (1.0 + tol) + 1e-12
                    || q.b[i] > q.c[i] * (1.0 + tol) + 1e-12
                    || q.a[i] > q.d_worst[i]
            })
            .count();
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
        for i in 0..n {
            t.push(vec![
                i.to_string(),
                q.labels[i].to_string(),
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
        let (r1, _) = median_ratio(&q.b, &q.a);
        let (r2, _) = median_ratio(&q.c, &q.b);
        let (r3, _) = median_ratio(&q.d, &q.c);
        let (rda, _) = median_ratio(&q.d, &q.a);
        summary.push(vec![
            label.into(),
            n.to_string(),
            median(&q.a).to_string(),
            median(&q.b).to_string(),
            median(&q.c).to_string(),
            median(&q.d).to_string(),
            median(&q.d_worst).to_string(),
            r1.to_string(),
            r2.to_string(),
            r3.to_string(),
            rda.to_string(),
            violations.to_string(),
            lower_n.to_string(),
            tag.clone(),
        ]);
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
    let cert_path = ckpt.with_file_name("certificates.csv");
    let certs = Table::read(&cert_path)?;
    let radii = certs.numbers("radius", &cert_path)?;
    let pool = 1000.min(radii.len());
    // The 8 largest certified radii among the first 1000 test images (ties by index).
    let mut order: Vec<usize> = (0..pool)
        .filter(|&i| radii[i].unwrap_or(0.0) > 0.0)
        .collect();
    order.sort_by(|&i, &j| {
        radii[j]
            .unwrap_or(0.0)
            .total_cmp(&radii[i].unwrap_or(0.0))
            .then(i.cmp(&j))
    });
    order.truncate(8);
    if order.is_empty() {
        bail!("the LMT model certifies none of the first {pool} test images; train it longer");
    }
    let (x, _) = batch_tensors(&data.test, &order, &Device::Cpu)?;
    let labels: Vec<usize> = order
        .iter()
        .map(|&i| data.test.labels[i] as usize)
        .collect();
    let model = trained.built.model.as_ref();
    let f = |x: &Tensor| model.eval_logits(x);
    let adv = deepfool(&f, &x, &labels, &DeepFoolConfig::default())?;
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let advs: Vec<f32> = adv.images.flatten_all()?.to_vec1()?;
    let n = 784;
    let mut perturbed = Vec::with_capacity(xs.len());
    let mut directions = Vec::new();
    for (j, &i) in order.iter().enumerate() {
        let r = radii[i].unwrap_or(0.0);
        let mut delta: Vec<f64> = (0..n)
            .map(|p| advs[j * n + p] as f64 - xs[j * n + p] as f64)
            .collect();
        let mut kind = "DeepFool direction";
        if !adv.per_input[j].success || delta.iter().all(|v| *v == 0.0) {
            // No adversarial found: a fixed pseudo-random direction instead.
            let mut rng = lmt_core::named_rng(0, &format!("fig5-{i}"));
            use rand_distr::Distribution;
            delta = (0..n)
                .map(|_| rand_distr::StandardNormal.sample(&mut rng))
                .collect();
            kind = "random direction";
        }
        let norm = delta.iter().map(|v| v * v).sum::<f64>().sqrt();
        // 1 - 1e-6 of the radius, so that rounding each pixel to f32 cannot push the norm past it (the
        // certificate covers norms strictly below the radius).
        let scale = r * (1.0 - 1e-6) / norm;
        perturbed.extend((0..n).map(|p| (xs[j * n + p] as f64 + delta[p] * scale) as f32));
        directions.push(kind);
    }
    let xp = Tensor::from_vec(perturbed.clone(), x.dims(), &Device::Cpu)?;
    let z: Vec<f32> = f(&xp)?.flatten_all()?.to_vec1()?;
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
    for (j, &i) in order.iter().enumerate() {
        let zi = &z[j * 10..(j + 1) * 10];
        let t_ = labels[j];
        let other = (0..10)
            .filter(|&c| c != t_)
            .map(|c| zi[c])
            .fold(f32::NEG_INFINITY, f32::max);
        let pred = (0..10)
            .max_by(|&p, &q| zi[p].total_cmp(&zi[q]))
            .unwrap_or(0);
        let p_img = &perturbed[j * n..(j + 1) * n];
        let pn = p_img
            .iter()
            .zip(&xs[j * n..(j + 1) * n])
            .map(|(p, q)| (*p as f64 - *q as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        if zi[t_] <= other || pn >= radii[i].unwrap_or(0.0) {
            flipped.push(i);
        }
        let (lo, hi) = p_img
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        t.push(vec![
            i.to_string(),
            t_.to_string(),
            radii[i].unwrap_or(0.0).to_string(),
            pn.to_string(),
            directions[j].into(),
            pred.to_string(),
            (zi[t_] - other).to_string(),
            lo.to_string(),
            hi.to_string(),
        ]);
        images.push(GreyImage {
            caption: format!("test #{i}, label {t_}, R = {:.3}", radii[i].unwrap_or(0.0)),
            height: 28,
            width: 28,
            pixels: xs[j * n..(j + 1) * n].to_vec(),
        });
        images.push(GreyImage {
            caption: format!("+ perturbation of norm {pn:.3}: class {pred}"),
            height: 28,
            width: 28,
            pixels: p_img.to_vec(),
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
        let certs = Table::read(&cert_path)?;
        let radii: Vec<f64> = certs
            .numbers("radius", &cert_path)?
            .into_iter()
            .map(|r| r.unwrap_or(0.0))
            .collect();
        let mut worst: Option<Vec<f64>> = None;
        for label in ["deepfool", "deepfool_clip", "cw", "pgd"] {
            let p = dir.join(format!("attack_{label}.csv"));
            if !p.is_file() || !crate::pipeline::current(&p) {
                continue;
            }
            let tb = Table::read(&p)?;
            let d: Vec<f64> = tb
                .numbers("distance", &p)?
                .into_iter()
                .map(|d| d.unwrap_or(f64::INFINITY))
                .collect();
            // Attacks may cover different prefixes of the test set: each point takes the minimum over
            // the attacks that ran on it, so a short C&W run does not truncate a full DeepFool run.
            worst = Some(match worst {
                None => d,
                Some(w) => (0..w.len().max(d.len()))
                    .map(|i| {
                        let at = |v: &Vec<f64>| v.get(i).copied().unwrap_or(f64::INFINITY);
                        at(&w).min(at(&d))
                    })
                    .collect(),
            });
        }
        if let Ok(cfg) = std::fs::read_to_string(dir.join("config.yaml")) {
            reduced |= cfg.contains("reduced: true");
        }
        let cert_acc: Vec<f64> = grid
            .iter()
            .map(|&e| {
                // Prop. 1 guards perturbations strictly smaller than the radius.
                radii.iter().filter(|&&r| r > e).count() as f64 / radii.len().max(1) as f64
            })
            .collect();
        let att_acc: Option<Vec<f64>> = worst.as_ref().map(|w| {
            grid.iter()
                .map(|&e| w.iter().filter(|&&d| d > e).count() as f64 / w.len().max(1) as f64)
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
