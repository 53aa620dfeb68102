//! `gpu-check`: the GPU path against the CPU path, in one process on a machine with a CUDA device.
//! Built by `make gpu` (feature `cuda`) on a CPU machine and run by `scripts/gpu-check.sh` on the GPU
//! machine, which needs no Rust toolchain. Prints one table and exits non-zero when a check fails.
//!
//! Checks: logits, loss, LMT estimate and every gradient of each built-in network (every layer kind:
//! convolutions of stride 1 and 2, 1x1 shortcuts, batch normalisation, ReLU, MinMax, average pooling,
//! linear layers) within 1e-4 relative; one Adam step; bit-reproducibility of GPU steps; DeepFool and
//! C&W on a trained Kolter-Wong CNN; certificates identical. Times a WRN-16-4 training step at batch
//! 128 and a Kolter-Wong LMT step at batch 50 on both devices.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use lmt_core::{cross_entropy, lmt_logits_prop2, LipEstimate, PowerVectors};
use lmt_models::{Act, Classifier, Ctx, FourCThreeF, KolterWong, Lip, WideResNet, WideResNetCfg};
use lmt_train::{Optimizer, OptimizerConfig};
use rand::{Rng, SeedableRng};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Relative agreement asked of f32 values computed on the two devices.
const TOL: f64 = 1e-4;

/// The table: one row per check.
struct Report {
    rows: Vec<(String, String, bool)>,
}

impl Report {
    fn add(&mut self, what: impl Into<String>, value: impl Into<String>, ok: bool) {
        let (what, value) = (what.into(), value.into());
        println!(
            "{:<58} {:<34} {}",
            what,
            value,
            if ok { "ok" } else { "FAIL" }
        );
        self.rows.push((what, value, ok));
    }
    fn rel(&mut self, what: &str, a: &Tensor, b: &Tensor) -> Res<()> {
        let r = rel(a, b)?;
        self.add(what, format!("max rel. difference {r:.2e}"), r <= TOL);
        Ok(())
    }
}

/// max |a - b| / max |a| over all elements (0 when both are 0), with `b` brought to `a`'s device.
fn rel(a: &Tensor, b: &Tensor) -> Res<f64> {
    let a: Vec<f64> = a.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
    let b: Vec<f64> = b.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
    if a.len() != b.len() {
        return Err(format!("{} vs {} elements", a.len(), b.len()).into());
    }
    let scale = a.iter().fold(0f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    Ok(if scale == 0.0 { diff } else { diff / scale })
}

fn params(vm: &VarMap) -> Vec<(String, Var)> {
    let d = vm.data().lock().expect("varmap");
    let mut v: Vec<(String, Var)> = d.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Random images in [0, 1] and labels, the same on every device.
fn batch(b: usize, c: usize, hw: usize, dev: &Device) -> Res<(Tensor, Tensor)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let x: Vec<f32> = (0..b * c * hw * hw).map(|_| rng.random()).collect();
    let y: Vec<u32> = (0..b).map(|_| rng.random_range(0..10)).collect();
    Ok((
        Tensor::from_vec(x, (b, c, hw, hw), dev)?,
        Tensor::from_vec(y, b, dev)?,
    ))
}

/// A network of each kind, built from the same seed on `dev`.
fn network(kind: &str, dev: &Device) -> Res<(Box<dyn Classifier>, VarMap, usize, usize)> {
    let vm = VarMap::new();
    let wrn = |depth, width, avg| WideResNetCfg {
        depth,
        width,
        dropout: 0.0,
        avg_pool_shortcut: avg,
        ..Default::default()
    };
    let m: (Box<dyn Classifier>, usize, usize) = match kind {
        "kolter_wong" => (Box::new(KolterWong::new(&vm, 3, dev)?), 1, 28),
        "kolter_wong_minmax" => (
            Box::new(KolterWong::with_activation(&vm, 3, Act::MinMax, dev)?),
            1,
            28,
        ),
        "four_c_three_f_minmax" => (Box::new(FourCThreeF::new(&vm, 3, Act::MinMax, dev)?), 1, 28),
        "wrn_16_1" => (
            Box::new(WideResNet::new(wrn(16, 1, false), &vm, 3, dev)?),
            3,
            32,
        ),
        "wrn_10_1_avg_pool_shortcut" => (
            Box::new(WideResNet::new(wrn(10, 1, true), &vm, 3, dev)?),
            3,
            32,
        ),
        _ => return Err(format!("unknown network {kind}").into()),
    };
    Ok((m.0, vm, m.1, m.2))
}

/// One LMT (Prop. 2, capped) training step: logits, loss, estimate, gradients, and the parameters
/// after one Adam step.
struct Step {
    logits: Tensor,
    eval_logits: Tensor,
    loss: Tensor,
    estimate: Tensor,
    input_grad: Tensor,
    grads: Vec<(String, Tensor)>,
    after: Vec<(String, Tensor)>,
}

fn lmt_step(model: &dyn Classifier, vm: &VarMap, x: &Tensor, y: &Tensor) -> Res<Step> {
    let dev = x.device();
    let x = Var::from_tensor(x)?;
    let vectors = PowerVectors::new(11);
    let ctx = Ctx::train(&vectors);
    let out = model.forward(x.as_tensor(), Lip::Estimate(LipEstimate::one(dev)?), &ctx)?;
    let l = out.l_sub.estimate().ok_or("no estimate")?.tensor().clone();
    let w = model.last_weight().ok_or("no last layer")?;
    let z = lmt_logits_prop2(&out.logits, y, &(l.clone() * 0.1)?, w, true)?;
    let loss = cross_entropy(&z, y)?;
    let g = loss.backward()?;
    let ps = params(vm);
    let grads = ps
        .iter()
        .map(|(n, p)| {
            Ok((
                n.clone(),
                g.get(p).ok_or(format!("no gradient of {n}"))?.clone(),
            ))
        })
        .collect::<Res<Vec<_>>>()?;
    let input_grad = g.get(&x).ok_or("no input gradient")?.clone();
    let mut opt = Optimizer::new(OptimizerConfig::Adam { lr: 1e-3 }, ps.clone())?;
    opt.step(&g, 1e-3, 0.0)?;
    let after = ps
        .iter()
        .map(|(n, p)| (n.clone(), p.as_tensor().copy().expect("copy")))
        .collect();
    let eval_logits = model.eval_logits(x.as_tensor())?;
    Ok(Step {
        logits: out.logits,
        eval_logits,
        loss,
        estimate: l,
        input_grad,
        grads,
        after,
    })
}

fn compare_networks(r: &mut Report, gpu: &Device) -> Res<()> {
    for kind in [
        "kolter_wong",
        "kolter_wong_minmax",
        "four_c_three_f_minmax",
        "wrn_16_1",
        "wrn_10_1_avg_pool_shortcut",
    ] {
        let (mc, vc, ch, hw) = network(kind, &Device::Cpu)?;
        let (mg, vg, _, _) = network(kind, gpu)?;
        let (xc, yc) = batch(16, ch, hw, &Device::Cpu)?;
        let (xg, yg) = batch(16, ch, hw, gpu)?;
        let init = params(&vc)
            .iter()
            .zip(params(&vg))
            .map(|((_, a), (_, b))| rel(a.as_tensor(), b.as_tensor()))
            .collect::<Res<Vec<_>>>()?;
        r.add(
            format!("{kind}: initial weights"),
            format!(
                "max rel. difference {:.2e}",
                init.iter().fold(0f64, |m, v| m.max(*v))
            ),
            init.iter().all(|v| *v == 0.0),
        );
        let c = lmt_step(mc.as_ref(), &vc, &xc, &yc)?;
        let g = lmt_step(mg.as_ref(), &vg, &xg, &yg)?;
        r.rel(&format!("{kind}: train-mode logits"), &c.logits, &g.logits)?;
        r.rel(&format!("{kind}: LMT loss"), &c.loss, &g.loss)?;
        r.rel(
            &format!("{kind}: LMT estimate L_sub"),
            &c.estimate,
            &g.estimate,
        )?;
        r.rel(
            &format!("{kind}: input gradient"),
            &c.input_grad,
            &g.input_grad,
        )?;
        let worst = |a: &[(String, Tensor)], b: &[(String, Tensor)]| -> Res<(f64, String)> {
            let mut w = (0f64, String::new());
            for ((n, x), (_, y)) in a.iter().zip(b) {
                let v = rel(x, y)?;
                if v >= w.0 {
                    w = (v, n.clone());
                }
            }
            Ok(w)
        };
        let (v, n) = worst(&c.grads, &g.grads)?;
        r.add(
            format!("{kind}: every weight gradient ({} tensors)", c.grads.len()),
            format!("worst {v:.2e} ({n})"),
            v <= TOL,
        );
        let (v, n) = worst(&c.after, &g.after)?;
        r.add(
            format!("{kind}: weights after one Adam step"),
            format!("worst {v:.2e} ({n})"),
            v <= TOL,
        );
        r.rel(
            &format!("{kind}: eval-mode logits"),
            &c.eval_logits,
            &g.eval_logits,
        )?;
        // Bit-reproducibility on the GPU: the same step again from the same initialisation.
        let (mg2, vg2, _, _) = network(kind, gpu)?;
        let g2 = lmt_step(mg2.as_ref(), &vg2, &xg, &yg)?;
        let same = g
            .after
            .iter()
            .zip(&g2.after)
            .map(|((_, a), (_, b))| Ok(rel(a, b)? == 0.0))
            .collect::<Res<Vec<bool>>>()?
            .into_iter()
            .all(|s| s)
            && rel(&g.loss, &g2.loss)? == 0.0;
        r.add(
            format!("{kind}: GPU step repeated"),
            if same {
                "bit-identical"
            } else {
                "differs in the last bits"
            },
            true,
        );
    }
    Ok(())
}

/// MNIST's test file (the GPU machine gets only the 10,000 test images, to keep what travels small).
fn mnist_test(dir: &std::path::Path) -> Res<lmt_data::ImageSet> {
    let file = |stem: &str| {
        let raw = dir.join(stem);
        let gz = dir.join(format!("{stem}.gz"));
        if raw.is_file() {
            raw
        } else {
            gz
        }
    };
    let d = lmt_data::load_idx_pair(
        &file("t10k-images-idx3-ubyte"),
        &file("t10k-labels-idx1-ubyte"),
    )?;
    Ok(d.test)
}

/// A Kolter-Wong CNN trained 3 epochs on MNIST test images 0..8000 on the GPU (a model to attack,
/// not a result), then attacked and certified on both devices on images 8000..8200.
fn compare_attacks(r: &mut Report, gpu: &Device, mnist: &std::path::Path) -> Res<()> {
    let set = mnist_test(mnist)?;
    let vm = VarMap::new();
    let model = KolterWong::new(&vm, 0, gpu)?;
    let mut opt = Optimizer::new(OptimizerConfig::Adam { lr: 1e-3 }, params(&vm))?;
    let vectors = PowerVectors::new(0);
    let started = Instant::now();
    let order: Vec<usize> = (0..8000).collect();
    for _ in 0..3 {
        for idx in order.chunks(50) {
            let (x, y) = lmt_train::batch_tensors(&set, idx, gpu)?;
            let out = model.forward(&x, Lip::None, &Ctx::train(&vectors))?;
            opt.step(&cross_entropy(&out.logits, &y)?.backward()?, 1e-3, 0.0)?;
        }
    }
    let held: Vec<usize> = (8000..10_000).collect();
    let (x, y) = lmt_train::batch_tensors(&set, &held, gpu)?;
    let hits = model
        .eval_logits(&x)?
        .argmax(1)?
        .eq(&y)?
        .to_dtype(DType::F64)?
        .sum_all()?;
    let acc = hits.to_scalar::<f64>()? / held.len() as f64;
    r.add(
        "KW, 3 epochs on 8k MNIST images on the GPU: held-out acc.",
        format!(
            "{:.2}% in {:.1} s",
            100.0 * acc,
            started.elapsed().as_secs_f64()
        ),
        acc > 0.9,
    );
    // The same weights on the CPU.
    let vc = VarMap::new();
    let cpu_model = KolterWong::new(&vc, 0, &Device::Cpu)?;
    for ((_, a), (_, b)) in params(&vc).iter().zip(params(&vm)) {
        a.set(&b.as_tensor().to_device(&Device::Cpu)?)?;
    }
    let idx: Vec<usize> = (8000..8200).collect();
    let specs = [
        (
            "DeepFool",
            lmt_eval::AttackSpec::DeepFool(Default::default()),
        ),
        (
            "C&W (100 x 9)",
            lmt_eval::AttackSpec::Cw(Default::default()),
        ),
    ];
    for (name, spec) in specs {
        let t = Instant::now();
        let on_gpu = lmt_eval::attack(&model, &set, &idx, &spec, 200, &mut |_| {})?;
        let tg = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let on_cpu = lmt_eval::attack(&cpu_model, &set, &idx, &spec, 200, &mut |_| {})?;
        let tc = t.elapsed().as_secs_f64();
        let agree = on_gpu
            .iter()
            .zip(&on_cpu)
            .filter(|(a, b)| a.success == b.success)
            .count();
        let close = on_gpu
            .iter()
            .zip(&on_cpu)
            .filter(|(a, b)| match (a.distance, b.distance) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-2 * y.abs().max(1e-6),
                (None, None) => true,
                _ => false,
            })
            .count();
        let n = idx.len();
        r.add(
            format!("{name}, 200 images: same success / distance within 1%"),
            format!("{agree}/{n}, {close}/{n} (GPU {tg:.1} s, CPU {tc:.1} s)"),
            agree * 100 >= 98 * n && close * 100 >= 95 * n,
        );
    }
    let cfg = lmt_eval::CertifyConfig::default();
    let cg = lmt_eval::certify(&model, &set, &idx, &cfg, &mut |_| {})?;
    let cc = lmt_eval::certify(&cpu_model, &set, &idx, &cfg, &mut |_| {})?;
    let same = cg
        .rows
        .iter()
        .zip(&cc.rows)
        .all(|(a, b)| a.radius.to_bits() == b.radius.to_bits() && a.prediction == b.prediction)
        && cg.l.value().to_bits() == cc.l.value().to_bits();
    r.add(
        "certificates of the same weights, model on GPU vs CPU",
        if same {
            "identical (200 radii, L)"
        } else {
            "DIFFER"
        },
        same,
    );
    Ok(())
}

/// Median milliseconds of a training step on `dev`.
fn time_step(kind: &str, b: usize, lmt: bool, dev: &Device, reps: usize) -> Res<f64> {
    let vm = VarMap::new();
    let (model, c, hw): (Box<dyn Classifier>, usize, usize) = match kind {
        "wrn_16_4" => (
            Box::new(WideResNet::new(WideResNetCfg::default(), &vm, 0, dev)?),
            3,
            32,
        ),
        _ => (Box::new(KolterWong::new(&vm, 0, dev)?), 1, 28),
    };
    let (x, y) = batch(b, c, hw, dev)?;
    let mut opt = Optimizer::new(OptimizerConfig::Adam { lr: 1e-3 }, params(&vm))?;
    let vectors = PowerVectors::new(0);
    let mut times = Vec::new();
    for i in 0..reps + 2 {
        let t = Instant::now();
        let ctx = Ctx::train(&vectors);
        let loss = if lmt {
            let out = model.forward(&x, Lip::Estimate(LipEstimate::one(dev)?), &ctx)?;
            let l = out.l_sub.estimate().ok_or("no estimate")?.tensor().clone();
            let w = model.last_weight().ok_or("no last layer")?;
            cross_entropy(&lmt_logits_prop2(&out.logits, &y, &l, w, true)?, &y)?
        } else {
            cross_entropy(&model.forward(&x, Lip::None, &ctx)?.logits, &y)?
        };
        let grads = loss.backward()?;
        opt.step(&grads, 1e-3, 0.0)?;
        vectors.refresh(&grads)?;
        // Reading the loss back waits for the device to finish the step.
        let _ = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mnist = args
        .iter()
        .position(|a| a == "--mnist-dir")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| PathBuf::from(lmt_data::MNIST_DEFAULT_DIR), PathBuf::from);
    // `--dry-run`: the CPU in the GPU's place, to test this harness on a machine without a GPU.
    let dry = args.iter().any(|a| a == "--dry-run");
    let mut r = Report { rows: Vec::new() };
    if let Err(e) = run(&mut r, &mnist, dry) {
        r.add("gpu-check stopped", e.to_string(), false);
    }
    let failed = r.rows.iter().filter(|(_, _, ok)| !ok).count();
    println!("\n{} checks, {failed} failed", r.rows.len());
    std::process::exit(i32::from(failed > 0));
}

fn run(r: &mut Report, mnist: &std::path::Path, dry: bool) -> Res<()> {
    let gpu = if dry {
        Device::Cpu
    } else {
        Device::new_cuda(0)?
    };
    let what = if dry {
        "DRY RUN: the CPU in the GPU's place"
    } else {
        "device under test"
    };
    r.add(what, format!("{gpu:?}"), true);
    println!("{:<58} {:<34} result", "check", "value");
    compare_networks(r, &gpu)?;
    compare_attacks(r, &gpu, mnist)?;
    for (kind, b, lmt, cpu_reps) in [("wrn_16_4", 128, false, 3), ("kolter_wong", 50, true, 20)] {
        let g = time_step(kind, b, lmt, &gpu, 20)?;
        let c = time_step(kind, b, lmt, &Device::Cpu, cpu_reps)?;
        let what = format!(
            "time: {kind} {} step, batch {b}",
            if lmt { "LMT" } else { "training" }
        );
        let threads = candle_core::utils::get_num_threads();
        r.add(
            what,
            format!(
                "GPU {g:.1} ms, CPU ({threads} thr.) {c:.1} ms, {:.1}x",
                c / g
            ),
            true,
        );
        if kind == "wrn_16_4" {
            // The paper's SVHN budget: 604,388 images (train + extra) x 160 epochs at batch 128.
            let steps = (604_388f64 / 128.0).ceil() * 160.0;
            r.add(
                "estimate: one Table 1 model at the paper's budget",
                format!(
                    "{:.1} h ({steps:.0} plain steps as above)",
                    steps * g / 3.6e6
                ),
                true,
            );
        }
    }
    Ok(())
}
