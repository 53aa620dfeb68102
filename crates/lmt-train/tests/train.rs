//! The loop on real MNIST: bit-identical resume, NaN stop, configs and schedules.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use lmt_models::{Classifier, KolterWong};
use lmt_train::{
    c_schedule, lr_schedule, train, Method, OptimizerConfig, RunOptions, TrainConfig, TrainError,
};

fn mnist() -> Option<lmt_data::Dataset> {
    let dir = std::env::var_os("MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist"));
    if !dir.is_dir() {
        assert!(
            std::env::var_os("CI").is_none(),
            "MNIST missing under CI; `make test` runs `make data` first"
        );
        eprintln!(
            "SKIPPED: MNIST not found at {} (run `make data`)",
            dir.display()
        );
        return None;
    }
    Some(lmt_data::load_mnist(&dir).unwrap())
}

const SMALL: &str = "
name: t
dataset: mnist
model: { kind: kolter_wong }
method: { kind: lmt, proposition: 2, capped: true, c: 1.0 }
optimizer: { kind: adam, lr: 0.001 }
batch_size: 50
epochs: 2
seed: 3
checkpoint_every: 7
profiles:
  tiny: { train_subset: 500, test_subset: 200 }
";

fn config(text: &str) -> TrainConfig {
    serde_norway::from_str(text).unwrap()
}

fn params(vm: &VarMap) -> Vec<(String, Var)> {
    let d = vm.data().lock().unwrap();
    let mut v: Vec<(String, Var)> = d.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn weights(vm: &VarMap) -> Vec<Vec<f32>> {
    params(vm)
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

fn run(
    plan: &lmt_train::Plan,
    out: &Path,
    opts: RunOptions,
) -> (VarMap, Result<lmt_train::Summary, TrainError>) {
    let data = mnist().unwrap();
    let vm = VarMap::new();
    let model = KolterWong::new(&vm, plan.config.seed, &Device::Cpu).unwrap();
    let r = train(plan, &model, params(&vm), &data, out, opts);
    (vm, r)
}

/// Also the determinism check: the two runs build their models and data order from the seed alone.
#[test]
fn resume_is_bit_identical_to_an_uninterrupted_run() {
    if mnist().is_none() {
        return;
    }
    resume_check(SMALL);
    // The spectral-norm hook keeps its own vectors; they must travel in the checkpoint too.
    resume_check(&SMALL.replace(
        "{ kind: lmt, proposition: 2, capped: true, c: 1.0 }",
        "{ kind: spectral_norm, rate: 0.01 }",
    ));
}

fn resume_check(text: &str) {
    let plan = config(text).plan("tiny").unwrap();
    assert!(plan.reduced);
    let straight = tempfile::tempdir().unwrap();
    let (a, r) = run(&plan, straight.path(), RunOptions::default());
    assert_eq!(r.unwrap().position.step, 20);
    // Stop mid-epoch (step 13: not a checkpoint multiple, not an epoch end), then resume in a fresh model.
    let split = tempfile::tempdir().unwrap();
    let (_, r) = run(
        &plan,
        split.path(),
        RunOptions {
            stop_after_steps: Some(13),
            ..Default::default()
        },
    );
    assert_eq!(r.unwrap().position.step, 13);
    let (b, r) = run(
        &plan,
        split.path(),
        RunOptions {
            resume: true,
            ..Default::default()
        },
    );
    assert_eq!(r.unwrap().position.step, 20);
    assert_eq!(
        weights(&a),
        weights(&b),
        "resumed weights differ from the uninterrupted run"
    );
    // Stopping exactly at an epoch's end finishes that epoch's row first, then resumes cleanly.
    let edge = tempfile::tempdir().unwrap();
    let (_, r) = run(
        &plan,
        edge.path(),
        RunOptions {
            stop_after_steps: Some(10),
            ..Default::default()
        },
    );
    assert_eq!(r.unwrap().position.epoch, 1);
    let (c, _) = run(
        &plan,
        edge.path(),
        RunOptions {
            resume: true,
            ..Default::default()
        },
    );
    assert_eq!(weights(&a), weights(&c));
    let edge_log = std::fs::read_to_string(edge.path().join("log.csv")).unwrap();
    let first: Vec<&str> = edge_log.lines().nth(1).unwrap().split(',').collect();
    assert!(
        first[1].parse::<f64>().unwrap() > 0.0,
        "epoch 1 row has a real loss: {edge_log}"
    );
    let log = std::fs::read_to_string(split.path().join("log.csv")).unwrap();
    assert_eq!(log.lines().count(), 3, "header + 2 epochs:\n{log}");
    assert!(log.starts_with(lmt_train::LOG_HEADER));
    // The resumed epoch logs what the uninterrupted one did (its running sums travel in the checkpoint);
    // only the seconds differ.
    let untimed = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("log.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').map_or(l, |(head, _)| head).to_string())
            .collect()
    };
    assert_eq!(untimed(straight.path()), untimed(split.path()));
    // A row of an epoch the checkpoint does not hold (a kill between the log and the checkpoint) is
    // dropped on resume, not duplicated.
    let lagging = tempfile::tempdir().unwrap();
    let (_, r) = run(
        &plan,
        lagging.path(),
        RunOptions {
            stop_after_steps: Some(13),
            ..Default::default()
        },
    );
    r.unwrap();
    let log_path = lagging.path().join("log.csv");
    let mut text = std::fs::read_to_string(&log_path).unwrap();
    text.push_str("2,9,9,9,9,9,9\n");
    std::fs::write(&log_path, text).unwrap();
    let (_, r) = run(
        &plan,
        lagging.path(),
        RunOptions {
            resume: true,
            ..Default::default()
        },
    );
    r.unwrap();
    assert_eq!(untimed(straight.path()), untimed(lagging.path()));
}

#[test]
fn non_finite_loss_stops_with_epoch_step_and_checkpoint() {
    if mnist().is_none() {
        return;
    }
    let cfg = config(&SMALL.replace("lr: 0.001", "lr: 1.0e30"));
    let dir = tempfile::tempdir().unwrap();
    let (_, r) = run(
        &cfg.plan("tiny").unwrap(),
        dir.path(),
        RunOptions::default(),
    );
    let e = r.unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, TrainError::NonFinite { .. }), "{m}");
    assert!(
        m.contains("epoch") && m.contains("step") && m.contains("checkpoint"),
        "{m}"
    );
}

#[test]
fn every_committed_config_loads_under_every_profile() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let cfg: TrainConfig = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Quick and overnight use the paper's budget where it is cheap on a CPU (MNIST naive and LMT).
        let paper_budget = |p: &str| {
            p == "paper"
                || (p != "smoke"
                    && cfg.dataset == "mnist"
                    && !matches!(cfg.method, Method::Adversarial { .. }))
                || (p == "overnight" && cfg.dataset == "mnist")
        };
        // The modern yardstick's configs sweep on a validation split (reduced) and train longer.
        let modern = cfg.name.starts_with("modern_");
        let profiles = if modern {
            ["smoke", "sweep", "long", "paper"]
        } else {
            ["smoke", "quick", "overnight", "paper"]
        };
        for p in profiles {
            let plan = cfg
                .plan(p)
                .unwrap_or_else(|e| panic!("{} {p}: {e}", path.display()));
            // (4C3F's `long` is 5 epochs, less than the 20 of the config: reduced, and says so.)
            let reduced = if modern {
                p == "smoke" || p == "sweep" || plan.epochs < cfg.epochs
            } else {
                !paper_budget(p)
            };
            assert_eq!(plan.reduced, reduced, "{} {p}", path.display());
            assert_eq!(
                plan.validation > 0,
                p == "sweep" || (modern && p == "smoke")
            );
        }
        n += 1;
    }
    assert!(n >= 2);
}

#[test]
fn bad_configs_name_the_key() {
    let unknown = serde_norway::from_str::<TrainConfig>(
        &SMALL.replace("seed: 3", "seed: 3\nlearning_rate: 1"),
    )
    .unwrap_err()
    .to_string();
    assert!(unknown.contains("learning_rate"), "{unknown}");
    let cases = [
        ("lr: 0.001", "lr: -1.0", "optimizer.lr"),
        ("batch_size: 50", "batch_size: 0", "batch_size"),
        ("proposition: 2", "proposition: 3", "method.proposition"),
        ("c: 1.0", "c: 0.0", "method.c"),
        ("dataset: mnist", "dataset: cifar", "dataset"),
    ];
    for (from, to, key) in cases {
        let e = config(&SMALL.replace(from, to))
            .plan("tiny")
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{to}: {e}");
    }
    let e = config(SMALL).plan("huge").unwrap_err().to_string();
    assert!(e.contains("huge") && e.contains("tiny"), "{e}");
    let e = config(&SMALL.replace("test_subset: 200", "validation: 0"))
        .plan("tiny")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("profiles.tiny") && e.contains("validation"),
        "{e}"
    );
    let gloro = SMALL.replace(
        "{ kind: lmt, proposition: 2, capped: true, c: 1.0 }",
        "{ kind: gloro, eps: 0.0 }",
    );
    let e = config(&gloro).plan("tiny").unwrap_err().to_string();
    assert!(e.contains("method.eps"), "{e}");
}

/// A validation split is part of the resolved run only when asked for, so the config.yaml of every
/// earlier run reads back unchanged; asked for, it marks the run reduced.
#[test]
fn validation_profiles_hold_images_out_and_say_so() {
    let plain = config(SMALL).plan("tiny").unwrap();
    assert_eq!(plain.validation, 0);
    assert!(!serde_norway::to_string(&plain)
        .unwrap()
        .contains("validation"));
    let held = config(&SMALL.replace("test_subset: 200", "validation: 100"))
        .plan("tiny")
        .unwrap();
    assert_eq!(held.validation, 100);
    assert!(held.reduced);
    assert!(serde_norway::to_string(&held)
        .unwrap()
        .contains("validation: 100"));
    // The default activation is not written either (so `kind: kolter_wong` stays as it was).
    let yaml = serde_norway::to_string(&plain.model).unwrap();
    assert!(!yaml.contains("activation"), "{yaml}");
}

#[test]
fn schedules_are_the_authors() {
    let lmt = Method::Lmt {
        proposition: 2,
        capped: true,
        c: 0.01,
        c_start: Some(1e-5),
        warmup_epochs: 5.0,
    };
    assert_eq!(c_schedule(&lmt, 0.0), 1e-5);
    assert!((c_schedule(&lmt, 2.5) - (0.005 + 0.5e-5)).abs() < 1e-12);
    assert_eq!(c_schedule(&lmt, 5.0), 0.01);
    assert_eq!(c_schedule(&Method::Plain, 3.0), 0.0);
    let nag = OptimizerConfig::Nesterov {
        lr: 0.01,
        momentum: 0.9,
        drop_epochs: vec![80.0, 120.0],
        drop_ratio: 0.1,
    };
    assert_eq!(lr_schedule(&nag, 79.99), 0.01);
    assert!((lr_schedule(&nag, 80.0) - 1e-3).abs() < 1e-15);
    assert!((lr_schedule(&nag, 150.0) - 1e-4).abs() < 1e-15);
}

#[test]
fn profiles_keep_the_schedules_shape_and_name_their_departures() {
    let cfg = config(
        "
name: w
dataset: svhn
model: { kind: wide_resnet, depth: 10, width: 4, dropout: 0.4 }
method: { kind: lmt, proposition: 2, capped: true, c: 0.01, c_start: 0.00001, warmup_epochs: 5 }
optimizer: { kind: nesterov, lr: 0.01, momentum: 0.9, drop_epochs: [80, 120], drop_ratio: 0.1 }
batch_size: 128
epochs: 160
profiles:
  short: { epochs: 8, width: 1, lr: 0.1, recalibrate_bn: 4096 }
  plain: { epochs: 16 }
",
    );
    let paper = cfg.plan("paper").unwrap();
    assert!(paper.departures.is_empty() && paper.recalibrate_bn == 0);
    let p = cfg.plan("short").unwrap();
    // Drops at 1/2 and 3/4 of training, c's warm-up over 5/160 of it.
    let OptimizerConfig::Nesterov {
        lr, drop_epochs, ..
    } = &p.optimizer
    else {
        panic!("nesterov")
    };
    assert_eq!((*lr, drop_epochs.as_slice()), (0.1, &[4.0, 6.0][..]));
    assert_eq!(lr_schedule(&p.optimizer, 3.99), 0.1);
    assert!((lr_schedule(&p.optimizer, 4.0) - 0.01).abs() < 1e-15);
    assert!(
        (c_schedule(&p.method, 0.25) - 0.01).abs() < 1e-12,
        "warm-up over 0.25 epochs"
    );
    assert!(c_schedule(&p.method, 0.125) < 0.0051);
    assert_eq!(p.recalibrate_bn, 4096);
    assert_eq!(p.departures.len(), 2, "{:?}", p.departures);
    assert!(p.departures[0].contains("learning rate 0.1") && p.departures[1].contains("BN"));
    assert!(cfg.plan("plain").unwrap().departures.is_empty());
}

#[test]
fn a_profile_warmup_fraction_replaces_the_scaled_warmup_and_says_so() {
    let text = |extra: &str, method: &str| {
        format!(
            "
name: w
dataset: svhn
model: {{ kind: wide_resnet, depth: 10, width: 4, dropout: 0.4 }}
method: {method}
optimizer: {{ kind: nesterov, lr: 0.01, momentum: 0.9, drop_epochs: [80, 120], drop_ratio: 0.1 }}
batch_size: 128
epochs: 160
profiles:
  short: {{ epochs: 2{extra} }}
"
        )
    };
    let lmt =
        "{ kind: lmt, proposition: 2, capped: true, c: 0.01, c_start: 0.00001, warmup_epochs: 5 }";
    let p = config(&text(", warmup_fraction: 0.5", lmt))
        .plan("short")
        .unwrap();
    // Over the first epoch of two: half-way at 0.5, full from 1.0 on.
    let half = 0.5 * 0.01 + 0.5 * 0.00001;
    assert!((c_schedule(&p.method, 0.5) - half).abs() < 1e-12);
    assert!(c_schedule(&p.method, 0.99) < 0.01);
    assert_eq!(c_schedule(&p.method, 1.0), 0.01);
    assert_eq!(p.departures.len(), 1, "{:?}", p.departures);
    assert!(
        p.departures[0].contains("c warmed up over the first 0.5")
            && p.departures[0].contains("0.0312 (5 of 160 epochs)"),
        "{:?}",
        p.departures
    );
    // Without it, the warm-up keeps the paper's fraction: 5/160 of 2 epochs.
    let q = config(&text("", lmt)).plan("short").unwrap();
    assert_eq!(c_schedule(&q.method, 0.0625), 0.01);
    assert!(c_schedule(&q.method, 0.06) < 0.01 && q.departures.is_empty());
    // The config's own fraction (5/160) is no departure.
    let same = config(&text(", warmup_fraction: 0.03125", lmt))
        .plan("short")
        .unwrap();
    assert_eq!(same.method, q.method);
    assert!(same.departures.is_empty(), "{:?}", same.departures);
    for (bad, method, says) in [
        (", warmup_fraction: 0", lmt, "(0, 1]"),
        (", warmup_fraction: 1.5", lmt, "(0, 1]"),
        (
            ", warmup_fraction: 0.5",
            "{ kind: plain }",
            "only LMT and GloRo",
        ),
    ] {
        let err = config(&text(bad, method))
            .plan("short")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("warmup_fraction") && err.contains(says),
            "{err}"
        );
    }
}

#[test]
fn optimiser_steps_match_the_chainer_formulas() {
    use candle_core::backprop::GradStore;
    let dev = Device::Cpu;
    let grads_for = |p: &Var, g: f32| -> GradStore {
        // loss = g * p has gradient g.
        (p.as_tensor() * g as f64)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    };
    let p = Var::from_tensor(&Tensor::new(&[1.0f32], &dev).unwrap()).unwrap();
    let mut adam = lmt_train::Optimizer::new(
        OptimizerConfig::Adam { lr: 0.1 },
        vec![("p".into(), p.clone())],
    )
    .unwrap();
    adam.step(&grads_for(&p, 2.0), 0.1, 0.0).unwrap();
    // m = 0.2, v = 0.004, lr_t = 0.1 sqrt(0.001)/0.1; p = 1 - lr_t m/(sqrt(v)+1e-8)
    let lr_t = 0.1 * (0.001f64).sqrt() / 0.1;
    let want = 1.0 - lr_t * 0.2 / ((0.004f64).sqrt() + 1e-8);
    let got = p.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    let q = Var::from_tensor(&Tensor::new(&[1.0f32], &dev).unwrap()).unwrap();
    let mut nag = lmt_train::Optimizer::new(
        OptimizerConfig::Nesterov {
            lr: 0.1,
            momentum: 0.9,
            drop_epochs: vec![],
            drop_ratio: 0.1,
        },
        vec![("q".into(), q.clone())],
    )
    .unwrap();
    nag.step(&grads_for(&q, 2.0), 0.1, 0.5).unwrap();
    // g = 2 + 0.5 * 1 = 2.5; v = -0.25; p = 1 + 0.81 * (-0.25) - 1.9 * 0.1 * 2.5
    let want = 1.0 + 0.81 * -0.25 - 1.9 * 0.1 * 2.5;
    let got = q.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
}

/// 200 steps of the real loop on 10,000 MNIST images: plain training learns, and LMT from the same
/// start ends with a smaller certified (dense) bound below the last layer.
#[test]
fn plain_training_learns_and_lmt_lowers_the_certified_bound() {
    let Some(data) = mnist() else { return };
    let profile = "\n  steps200: { epochs: 1, train_subset: 10000, test_subset: 1000 }\n";
    let certified_l_sub = |text: &str| -> (f64, f64) {
        let plan = config(&(text.to_string() + profile))
            .plan("steps200")
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let vm = VarMap::new();
        let model = KolterWong::new(&vm, plan.config.seed, &Device::Cpu).unwrap();
        let s = train(
            &plan,
            &model,
            params(&vm),
            &data,
            dir.path(),
            RunOptions::default(),
        )
        .unwrap();
        assert_eq!(s.position.step, 200);
        let x = Tensor::zeros((1, 1, 28, 28), candle_core::DType::F32, &Device::Cpu).unwrap();
        let ctx = lmt_models::Ctx::eval(lmt_models::CertifyMethod::Dense);
        let out = model
            .forward(
                &x,
                lmt_models::Lip::Certified(lmt_core::CertifiedBound::one()),
                &ctx,
            )
            .unwrap();
        (
            out.l_sub.certified().unwrap().value(),
            s.epochs[0].test_accuracy,
        )
    };
    let plain = SMALL.replace(
        "{ kind: lmt, proposition: 2, capped: true, c: 1.0 }",
        "{ kind: plain }",
    );
    let (l_plain, acc_plain) = certified_l_sub(&plain);
    let (l_lmt, acc_lmt) = certified_l_sub(SMALL);
    eprintln!("200 steps: plain acc {acc_plain:.3} L_sub {l_plain:.3}; LMT c = 1 acc {acc_lmt:.3} L_sub {l_lmt:.3}");
    assert!(
        acc_plain > 0.85,
        "plain test accuracy {acc_plain} after 200 steps"
    );
    assert!(
        l_lmt < l_plain,
        "LMT bound {l_lmt} not below plain {l_plain}"
    );
}

/// Records every call; returns all-zero images so the effect on training is visible.
struct ZeroAdversary(std::sync::Mutex<Vec<Vec<usize>>>);

impl lmt_train::Adversary for ZeroAdversary {
    fn perturb(
        &self,
        _model: &dyn Classifier,
        x: &Tensor,
        labels: &[usize],
    ) -> Result<Tensor, Box<dyn std::error::Error + Send + Sync>> {
        self.0.lock().unwrap().push(labels.to_vec());
        Ok(x.zeros_like()?)
    }
}

#[test]
fn adversarial_training_trains_on_the_adversary_batches_and_needs_one() {
    let Some(data) = mnist() else { return };
    let text = SMALL.replace(
        "{ kind: lmt, proposition: 2, capped: true, c: 1.0 }",
        "{ kind: adversarial, iterations: 30, binary_steps: 1, initial_const: 1.0 }",
    );
    let plan = config(&text).plan("tiny").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = run(&plan, dir.path(), RunOptions::default()).1.unwrap_err();
    assert!(err.to_string().contains("needs an attack"), "{err}");

    let adv = ZeroAdversary(Default::default());
    let (vm, r) = run(
        &plan,
        dir.path(),
        RunOptions {
            adversary: Some(&adv),
            ..Default::default()
        },
    );
    assert_eq!(r.unwrap().position.step, 20);
    let calls = adv.0.into_inner().unwrap();
    assert_eq!(calls.len(), 20, "one adversarial batch per step");
    // The labels handed over are the batch's true labels (the first batch of epoch 0).
    let first = lmt_data::epoch_batches(500, 50, plan.config.seed, 0).remove(0);
    let want: Vec<usize> = first
        .iter()
        .map(|&i| data.train.labels[i] as usize)
        .collect();
    assert_eq!(calls[0], want);
    // Trained on all-zero images only the biases can move: every weight keeps its initial value.
    let fresh = VarMap::new();
    KolterWong::new(&fresh, plan.config.seed, &Device::Cpu).unwrap();
    let conv1 = |vm: &VarMap| -> Vec<f32> {
        let d = vm.data().lock().unwrap();
        d["conv1.weight"]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    assert_eq!(conv1(&vm), conv1(&fresh));
}

/// Damaged checkpoints and configs (truncated at random offsets, bytes flipped): clean errors or valid
/// files, never a panic.
#[test]
fn damaged_checkpoints_and_configs_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    let mut damage = |good: &[u8], case: usize| -> Vec<u8> {
        let mut b = good.to_vec();
        if case % 2 == 0 {
            b.truncate(rng.random_range(0..good.len()));
        } else {
            for _ in 0..rng.random_range(1..=8) {
                let at = rng.random_range(0..b.len());
                b[at] ^= rng.random_range(1..=255u8);
            }
        }
        b
    };
    let mut counts = [0usize; 4];
    // Configs: every committed one, 40 damaged copies each.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/configs");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let good = std::fs::read(entry.unwrap().path()).unwrap();
        for case in 0..40 {
            let b = damage(&good, case);
            let r = std::panic::catch_unwind(|| {
                let text = String::from_utf8_lossy(&b);
                serde_norway::from_str::<TrainConfig>(&text)
                    .map_err(|e| e.to_string())
                    .and_then(|c| c.plan("quick").map_err(|e| e.to_string()))
                    .map(|_| ())
            });
            match r {
                Ok(Ok(())) => counts[1] += 1,
                Ok(Err(e)) => {
                    assert!(!e.is_empty());
                    counts[0] += 1
                }
                Err(_) => panic!("config case {case}: panicked"),
            }
        }
    }
    // A checkpoint of the small Kolter-Wong run.
    if mnist().is_some() {
        let plan = config(SMALL).plan("tiny").unwrap();
        let out = tempfile::tempdir().unwrap();
        let (_, r) = run(
            &plan,
            out.path(),
            RunOptions {
                stop_after_steps: Some(3),
                ..Default::default()
            },
        );
        r.unwrap();
        let ckpt = out.path().join("checkpoint.safetensors");
        let good = std::fs::read(&ckpt).unwrap();
        for case in 0..200 {
            let b = damage(&good, case);
            let p = out.path().join("damaged.safetensors");
            std::fs::write(&p, &b).unwrap();
            let r = std::panic::catch_unwind(|| {
                let vm = VarMap::new();
                let model = KolterWong::new(&vm, 3, &Device::Cpu).unwrap();
                let mut opt =
                    lmt_train::Optimizer::new(plan.optimizer.clone(), params(&vm)).unwrap();
                let vectors = lmt_core::PowerVectors::new(0);
                lmt_train::checkpoint::metadata(&p)?;
                lmt_train::checkpoint::load(&p, &mut opt, &vectors, &model.buffers()).map(|_| ())
            });
            match r {
                Ok(Ok(())) => counts[3] += 1,
                Ok(Err(e)) => {
                    assert!(!e.to_string().is_empty());
                    counts[2] += 1
                }
                Err(_) => panic!("checkpoint case {case} ({} bytes): panicked", b.len()),
            }
        }
    }
    eprintln!(
        "configs: {} clean errors, {} still valid; checkpoints: {} clean errors, {} still loadable",
        counts[0], counts[1], counts[2], counts[3]
    );
    assert!(counts[0] > 100 && counts[2] > 50);
}
