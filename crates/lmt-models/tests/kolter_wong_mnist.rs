//! The Kolter-Wong CNN on real MNIST: a few hundred steps of plain training learn, LMT training gives a
//! smaller certified bound from the same start, and the same seed gives bit-identical weights.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use lmt_core::{cross_entropy, lmt_logits_prop2, CertifiedBound, LipEstimate, PowerVectors};
use lmt_models::{CertifyMethod, Classifier, Ctx, KolterWong, Lip};

const DEV: Device = Device::Cpu;

fn mnist() -> Option<lmt_data::Dataset> {
    let dir = std::env::var_os("MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist"));
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

fn batch(set: &lmt_data::ImageSet, idx: &[usize]) -> (Tensor, Tensor) {
    let (x, y) = set.batch_f32(idx);
    let x = Tensor::from_vec(x, (idx.len(), 1, 28, 28), &DEV).unwrap();
    let y = Tensor::from_vec(
        y.iter().map(|&v| v as u32).collect::<Vec<_>>(),
        idx.len(),
        &DEV,
    )
    .unwrap();
    (x, y)
}

/// Trains `steps` Adam steps (lr 1e-3, batch 50) on the first 10,000 training images; `lmt_c` switches
/// on the LMT loss (Prop. 2, authors' capping). Returns the model, its variables and the loss per step.
fn train(
    data: &lmt_data::Dataset,
    steps: usize,
    lmt_c: Option<f64>,
) -> (KolterWong, VarMap, Vec<f32>) {
    let vm = VarMap::new();
    let model = KolterWong::new(&vm, 0, &DEV).unwrap();
    let mut opt = AdamW::new(
        vm.all_vars(),
        ParamsAdamW {
            lr: 1e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let pv = PowerVectors::new(1);
    let batches = lmt_data::epoch_batches(10_000, 50, 7, 0);
    let mut losses = Vec::new();
    for idx in batches.iter().take(steps) {
        let (x, y) = batch(&data.train, idx);
        let loss = match lmt_c {
            None => cross_entropy(
                &model
                    .forward(&x, Lip::None, &Ctx::train(&pv))
                    .unwrap()
                    .logits,
                &y,
            )
            .unwrap(),
            Some(c) => {
                let start = Lip::Estimate(LipEstimate::one(&DEV).unwrap().scale(c).unwrap());
                let out = model.forward(&x, start, &Ctx::train(&pv)).unwrap();
                let c_lsub = out.l_sub.estimate().unwrap().tensor().clone();
                cross_entropy(
                    &lmt_logits_prop2(&out.logits, &y, &c_lsub, model.last_weight(), true).unwrap(),
                    &y,
                )
                .unwrap()
            }
        };
        losses.push(loss.to_scalar::<f32>().unwrap());
        let grads = loss.backward().unwrap();
        opt.step(&grads).unwrap();
        pv.refresh(&grads).unwrap();
    }
    (model, vm, losses)
}

fn accuracy(model: &KolterWong, data: &lmt_data::Dataset, n: usize) -> f64 {
    let idx: Vec<usize> = (0..n).collect();
    let (x, y) = batch(&data.test, &idx);
    let logits = model
        .forward(&x, Lip::None, &Ctx::eval(CertifyMethod::Auto))
        .unwrap()
        .logits;
    let pred = logits.argmax(1).unwrap();
    pred.eq(&y)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64
}

fn certified_l_sub(model: &KolterWong) -> f64 {
    let x = Tensor::zeros((1, 1, 28, 28), DType::F32, &DEV).unwrap();
    let out = model
        .forward(
            &x,
            Lip::Certified(CertifiedBound::one()),
            &Ctx::eval(CertifyMethod::Dense),
        )
        .unwrap();
    out.l_sub.certified().unwrap().value()
}

#[test]
fn plain_training_learns_and_lmt_lowers_the_certified_bound() {
    let Some(data) = mnist() else { return };
    let (plain, _, losses) = train(&data, 200, None);
    let first: f32 = losses[..20].iter().sum::<f32>() / 20.0;
    let last: f32 = losses[180..].iter().sum::<f32>() / 20.0;
    assert!(last < 0.5 * first, "loss did not fall: {first} -> {last}");
    let acc = accuracy(&plain, &data, 1000);
    assert!(acc > 0.85, "test accuracy {acc} after 200 steps");

    let (lmt, _, _) = train(&data, 200, Some(1.0));
    let (l_plain, l_lmt) = (certified_l_sub(&plain), certified_l_sub(&lmt));
    eprintln!("200 steps: plain acc {acc:.3}, certified L_sub plain {l_plain:.3}, LMT (c = 1) {l_lmt:.3}, LMT acc {:.3}", accuracy(&lmt, &data, 1000));
    assert!(
        l_lmt < l_plain,
        "LMT bound {l_lmt} not below plain {l_plain}"
    );
}

#[test]
fn same_seed_gives_bit_identical_weights() {
    let Some(data) = mnist() else { return };
    let weights = |vm: &VarMap| -> Vec<Vec<f32>> {
        let data = vm.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        names
            .iter()
            .map(|n| {
                data[*n]
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect()
    };
    let (_, a, _) = train(&data, 10, Some(1.0));
    let (_, b, _) = train(&data, 10, Some(1.0));
    assert_eq!(weights(&a), weights(&b));
}
