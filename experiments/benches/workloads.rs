//! The workloads of issue 6, timed on this machine: training steps (plain, LMT, adversarial; the
//! Kolter-Wong CNN, 4C3F and wide ResNets), inference,
//! attacks per image, the certified bound of a whole network and certification of 10,000 inputs, on
//! random inputs. `cargo bench -p experiments --bench workloads [-- NAME...]`
//! prints one JSON line per workload: median milliseconds per step (or per image for attacks) and the
//! process's peak RSS. Run one workload per process for a meaningful RSS (`bench/compare.py` does).
//! Nothing here asserts a time: timings are reported, never tested.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use lmt_core::{
    certify_prop2, certify_prop2_guarded, cross_entropy, lmt_logits_prop2, CertifiedBound,
    LipEstimate, PowerVectors,
};
use lmt_models::{
    Act, CertifyMethod, Classifier, Ctx, FourCThreeF, KolterWong, Lip, WideResNet, WideResNetCfg,
};
use lmt_train::{Optimizer, OptimizerConfig};
use rand::{Rng, SeedableRng};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const ALL: [&str; 20] = [
    "gemm_peak",
    "kw_plain_step_b50",
    "kw_lmt_step_b50",
    "kw_at_cw30_step_b50",
    "kw_plain_step_b128",
    "c4f3_plain_step_b50",
    "c4f3_lmt_step_b50",
    "kw_inference_b1000",
    "wrn_train_step_b32",
    "wrn_inference_b128",
    "wrn1_train_step_b128",
    "wrn1_cw_iteration_b100",
    "kw_deepfool_per_image",
    "kw_cw100_per_image",
    "kw_certified_bound_dense",
    "wrn_certified_bound_auto",
    "kw_certify_10000",
    "kw_onnx_certify_10000",
    "kw_sound_certify_10000",
    "kw_onnx_sound_certify_10000",
];

fn params(vm: &VarMap) -> Vec<(String, Var)> {
    let d = vm.data().lock().expect("varmap");
    let mut v: Vec<(String, Var)> = d.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn batch(b: usize, c: usize, hw: usize) -> Res<(Tensor, Tensor)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let x: Vec<f32> = (0..b * c * hw * hw).map(|_| rng.random()).collect();
    let y: Vec<u32> = (0..b).map(|_| rng.random_range(0..10)).collect();
    Ok((
        Tensor::from_vec(x, (b, c, hw, hw), &Device::Cpu)?,
        Tensor::from_vec(y, b, &Device::Cpu)?,
    ))
}

/// The model's own predictions from its logits, as attack labels: every input is then attacked.
fn own_labels(logits: &Tensor) -> Res<Vec<usize>> {
    Ok(logits
        .argmax(1)?
        .to_vec1::<u32>()?
        .into_iter()
        .map(|v| v as usize)
        .collect())
}

/// Median milliseconds of `f` over `reps` timed runs after `warm` untimed ones.
fn time(warm: usize, reps: usize, mut f: impl FnMut() -> Res<()>) -> Res<f64> {
    for _ in 0..warm {
        f()?;
    }
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn train_step(
    model: &dyn Classifier,
    vm: &VarMap,
    b: usize,
    c: usize,
    hw: usize,
    lmt: bool,
) -> Res<f64> {
    let (x, y) = batch(b, c, hw)?;
    let mut opt = Optimizer::new(OptimizerConfig::Adam { lr: 1e-3 }, params(vm))?;
    let vectors = PowerVectors::new(0);
    let (warm, reps) = if hw > 28 { (1, 5) } else { (5, 30) };
    time(warm, reps, || {
        let ctx = Ctx::train(&vectors);
        let loss = if lmt {
            let out = model.forward(&x, Lip::Estimate(LipEstimate::one(&Device::Cpu)?), &ctx)?;
            let l = out.l_sub.estimate().ok_or("no estimate")?.tensor().clone();
            let z = lmt_logits_prop2(
                &out.logits,
                &y,
                &l,
                model.last_weight().ok_or("no last layer")?,
                true,
            )?;
            cross_entropy(&z, &y)?
        } else {
            cross_entropy(&model.forward(&x, Lip::None, &ctx)?.logits, &y)?
        };
        let grads = loss.backward()?;
        opt.step(&grads, 1e-3, 0.0)?;
        vectors.refresh(&grads)?;
        Ok(())
    })
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Table 1's quick-profile network: WRN-16-1 (the paper's WRN-16-4 at width 1).
fn wrn1() -> WideResNetCfg {
    WideResNetCfg {
        width: 1,
        ..WideResNetCfg::default()
    }
}

/// Side of the square f32 matrices whose product measures this host's sustained gemm rate.
const PEAK_N: usize = 2048;

/// Multiply-adds of one forward pass of `model` on one `(c, hw, hw)` image: every convolution and fully
/// connected layer (elementwise ops are not counted).
fn forward_macs(model: &dyn Classifier) -> Res<f64> {
    let g = model.to_graph()?;
    let mut macs = 0f64;
    for (i, node) in g.nodes().iter().enumerate() {
        let out: f64 = g.shape(i + 1).iter().product::<usize>() as f64;
        let per_output = match &node.op {
            lmt_models::Op::Conv(c) => c.weight().dims()[1..].iter().product::<usize>(),
            lmt_models::Op::ConvBn(c) => c.conv().weight().dims()[1..].iter().product::<usize>(),
            lmt_models::Op::Linear(l) => l.weight().dims2()?.1,
            _ => 0,
        };
        macs += out * per_output as f64;
    }
    Ok(macs)
}

/// Floating-point operations (2 per multiply-add) a workload counts per timed call: a training step is
/// the forward pass, the input gradient and the weight gradient (3x the forward count) per image, LMT's
/// power iteration not included; inference is the forward pass; the adversarial-training step adds its
/// 30 C&W iterations (forward and input gradient each). `None` where no count is kept (attacks per
/// image, certification).
fn flop(name: &str) -> Res<Option<f64>> {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let kw = || -> Res<f64> { forward_macs(&KolterWong::new(&vm, 0, &dev)?) };
    let wrn =
        || -> Res<f64> { forward_macs(&WideResNet::new(WideResNetCfg::default(), &vm, 0, &dev)?) };
    let c4f3 = || -> Res<f64> { forward_macs(&FourCThreeF::new(&vm, 0, Act::MinMax, &dev)?) };
    let macs = match name {
        "gemm_peak" => (PEAK_N as f64).powi(3),
        "kw_plain_step_b50" | "kw_lmt_step_b50" => 3.0 * 50.0 * kw()?,
        "kw_plain_step_b128" => 3.0 * 128.0 * kw()?,
        "c4f3_plain_step_b50" | "c4f3_lmt_step_b50" => 3.0 * 50.0 * c4f3()?,
        "kw_at_cw30_step_b50" => (30.0 * 2.0 + 3.0) * 50.0 * kw()?,
        "kw_inference_b1000" => 1000.0 * kw()?,
        "wrn_train_step_b32" => 3.0 * 32.0 * wrn()?,
        "wrn_inference_b128" => 128.0 * wrn()?,
        "wrn1_train_step_b128" => {
            3.0 * 128.0 * forward_macs(&WideResNet::new(wrn1(), &vm, 0, &dev)?)?
        }
        // Forward and input gradient (no weight gradient) per C&W iteration.
        "wrn1_cw_iteration_b100" => {
            2.0 * 100.0 * forward_macs(&WideResNet::new(wrn1(), &vm, 0, &dev)?)?
        }
        _ => return Ok(None),
    };
    Ok(Some(2.0 * macs))
}

fn run(name: &str) -> Res<f64> {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    match name {
        "gemm_peak" => {
            // This host's sustained f32 gemm rate through the gemm crate (what candle's matmul and our
            // convolution call): the reference for the fraction-of-peak column.
            let a = Tensor::rand(0f32, 1.0, (PEAK_N, PEAK_N), &dev)?;
            let b = Tensor::rand(0f32, 1.0, (PEAK_N, PEAK_N), &dev)?;
            time(2, 7, || {
                a.matmul(&b)?;
                Ok(())
            })
        }
        "kw_plain_step_b50" => train_step(&KolterWong::new(&vm, 0, &dev)?, &vm, 50, 1, 28, false),
        "kw_lmt_step_b50" => train_step(&KolterWong::new(&vm, 0, &dev)?, &vm, 50, 1, 28, true),
        "kw_at_cw30_step_b50" => {
            // Adversarial training's step: C&W-30 (one binary step, c = 1) replaces the batch, then a
            // plain step on it, as `experiments train --config mnist_at_cw30` does.
            let model = KolterWong::new(&vm, 0, &dev)?;
            let (x, y) = batch(50, 1, 28)?;
            let labels: Vec<usize> = y
                .to_vec1::<u32>()?
                .into_iter()
                .map(|v| v as usize)
                .collect();
            let cw = lmt_attacks::CwConfig {
                iterations: 30,
                binary_steps: 1,
                initial_const: 1.0,
                ..Default::default()
            };
            let mut opt = Optimizer::new(OptimizerConfig::Adam { lr: 1e-3 }, params(&vm))?;
            let vectors = PowerVectors::new(0);
            time(1, 5, || {
                let f = |x: &Tensor| model.eval_logits(x);
                let adv = lmt_attacks::carlini_wagner(&f, &x, &labels, &cw)?.images;
                let ctx = Ctx::train(&vectors);
                let loss = cross_entropy(&model.forward(&adv, Lip::None, &ctx)?.logits, &y)?;
                opt.step(&loss.backward()?, 1e-3, 0.0)?;
                Ok(())
            })
        }
        "kw_plain_step_b128" => train_step(&KolterWong::new(&vm, 0, &dev)?, &vm, 128, 1, 28, false),
        // The modern yardstick's larger MNIST network, with MinMax as `modern_4c3f_lmt` trains it.
        "c4f3_plain_step_b50" | "c4f3_lmt_step_b50" => {
            let m = FourCThreeF::new(&vm, 0, Act::MinMax, &dev)?;
            train_step(&m, &vm, 50, 1, 28, name == "c4f3_lmt_step_b50")
        }
        "wrn_train_step_b32" => {
            let m = WideResNet::new(WideResNetCfg::default(), &vm, 0, &dev)?;
            train_step(&m, &vm, 32, 3, 32, false)
        }
        "wrn1_train_step_b128" => {
            let m = WideResNet::new(wrn1(), &vm, 0, &dev)?;
            train_step(&m, &vm, 128, 3, 32, false)
        }
        "wrn1_cw_iteration_b100" => {
            // One C&W iteration (forward and input gradient, frozen weights) on a batch of 100, as Table 1's
            // quick profile runs it: 10 iterations of one binary step, per iteration.
            let model = WideResNet::new(wrn1(), &vm, 0, &dev)?;
            let (x, _) = batch(100, 3, 32)?;
            let f = |x: &Tensor| model.eval_logits(x);
            let labels = own_labels(&f(&x)?)?;
            let cw = lmt_attacks::CwConfig {
                iterations: 10,
                binary_steps: 1,
                ..Default::default()
            };
            let ms = time(0, 3, || {
                lmt_attacks::carlini_wagner(&f, &x, &labels, &cw)?;
                Ok(())
            })?;
            Ok(ms / 10.0)
        }
        "kw_inference_b1000" | "wrn_inference_b128" => {
            let (model, b, c, hw): (Box<dyn Classifier>, _, _, _) = if name.starts_with("kw") {
                (Box::new(KolterWong::new(&vm, 0, &dev)?), 1000, 1, 28)
            } else {
                (
                    Box::new(WideResNet::new(WideResNetCfg::default(), &vm, 0, &dev)?),
                    128,
                    3,
                    32,
                )
            };
            let (x, _) = batch(b, c, hw)?;
            time(1, if hw > 28 { 3 } else { 20 }, || {
                model.eval_logits(&x)?.to_dtype(DType::F32)?;
                Ok(())
            })
        }
        "kw_deepfool_per_image" | "kw_cw100_per_image" => {
            let model = KolterWong::new(&vm, 0, &dev)?;
            let (x, _) = batch(100, 1, 28)?;
            let f = |x: &Tensor| model.eval_logits(x);
            let labels = own_labels(&f(&x)?)?;
            let ms = time(0, 1, || {
                if name.contains("deepfool") {
                    lmt_attacks::deepfool(&f, &x, &labels, &Default::default())?;
                } else {
                    lmt_attacks::carlini_wagner(&f, &x, &labels, &Default::default())?;
                }
                Ok(())
            })?;
            Ok(ms / 100.0)
        }
        "kw_certified_bound_dense" | "wrn_certified_bound_auto" => {
            // The certified L_sub and L of the whole network, as `experiments certify` computes them.
            let (model, c, hw, method): (Box<dyn Classifier>, _, _, _) = if name.starts_with("kw") {
                (
                    Box::new(KolterWong::new(&vm, 0, &dev)?),
                    1,
                    28,
                    CertifyMethod::Dense,
                )
            } else {
                let m = WideResNet::new(WideResNetCfg::default(), &vm, 0, &dev)?;
                (Box::new(m), 3, 32, CertifyMethod::Auto)
            };
            let x0 = Tensor::zeros((1, c, hw, hw), DType::F32, &dev)?;
            time(0, 1, || {
                let one = Lip::Certified(CertifiedBound::one());
                let out = model.forward(&x0, one, &Ctx::eval(method))?;
                out.l.certified().ok_or("no certified bound")?;
                Ok(())
            })
        }
        "kw_certify_10000" | "kw_onnx_certify_10000" => {
            // Logits of 10,000 inputs in batches of 1000 and their Prop. 2 radii (bound given); the
            // ONNX row runs the same network written to ONNX and imported, as a user's model would be.
            let built = KolterWong::new(&vm, 0, &dev)?;
            let model: Box<dyn Classifier> = if name == "kw_onnx_certify_10000" {
                let bytes = lmt_onnx::export(&built.to_graph()?, "kw")?;
                Box::new(lmt_onnx::import(&bytes, "kw.onnx", None)?.graph)
            } else {
                Box::new(built)
            };
            let last = model.last_weight().ok_or("no last layer")?;
            let w: Vec<f64> = last.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
            let (classes, dim) = last.dims2()?;
            let l_sub = CertifiedBound::one();
            let (x, _) = batch(1000, 1, 28)?;
            let labels: Vec<usize> = (0..1000).map(|i| i % classes).collect();
            time(1, 3, || {
                for _ in 0..10 {
                    let z: Vec<f32> = model
                        .forward(&x, Lip::None, &Ctx::eval(CertifyMethod::Dense))?
                        .logits
                        .flatten_all()?
                        .to_vec1()?;
                    certify_prop2(&z, classes, &labels, &l_sub, &w, dim)?;
                }
                Ok(())
            })
        }
        "kw_sound_certify_10000" | "kw_onnx_sound_certify_10000" => {
            // What `certify` runs: the f64 pass with its rounding-error bound (prepared once: the
            // per-layer bounds), then guarded Prop. 2 radii; 10,000 inputs in batches of 1000.
            let built = KolterWong::new(&vm, 0, &dev)?;
            let graph = if name == "kw_onnx_sound_certify_10000" {
                let bytes = lmt_onnx::export(&built.to_graph()?, "kw")?;
                lmt_onnx::import(&bytes, "kw.onnx", None)?.graph
            } else {
                built.to_graph()?
            };
            let last = graph.last_weight().ok_or("no last layer")?;
            let w: Vec<f64> = last.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
            let (classes, dim) = last.dims2()?;
            let l_sub = CertifiedBound::one();
            let (x, _) = batch(1000, 1, 28)?;
            let xs: Vec<f64> = x.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
            let labels: Vec<usize> = (0..1000).map(|i| i % classes).collect();
            time(1, 3, || {
                let pass = graph.sound_pass()?;
                for _ in 0..10 {
                    let z = pass.logits(&xs, 1000)?;
                    certify_prop2_guarded(&z.logits, &z.errors, classes, &labels, &l_sub, &w, dim)?;
                }
                Ok(())
            })
        }
        other => Err(format!("unknown workload {other}; known: {ALL:?}").into()),
    }
}

fn main() -> Res<()> {
    // `--untuned` measures candle as shipped; otherwise the start-up tuning `experiments` applies.
    let tuned = !std::env::args().any(|a| a == "--untuned");
    if tuned {
        lmt_train::tune_cpu_runtime();
    }
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let names: Vec<&str> = if names.is_empty() {
        ALL.to_vec()
    } else {
        names.iter().map(String::as_str).collect()
    };
    for name in names {
        let ms = run(name)?;
        let flop = flop(name)?.map_or("null".to_string(), |f| format!("{f:.0}"));
        println!(
            "{{\"workload\": \"{name}\", \"impl\": \"lmt-rs{}\", \"ms\": {ms:.3}, \"peak_rss_mb\": {:.1}, \"flop\": {flop}}}",
            if tuned { "" } else { " (untuned)" },
            peak_rss_mb()
        );
    }
    Ok(())
}
